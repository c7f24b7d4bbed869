"""`vla-align eval-sim --via-ros`: the same seeded episodes through the ROS 2 node graph.

In-process evaluation (``sim_eval.evaluate``) calls the policy directly. This module runs the
very same plan (``suite.seeds(split, 'eval', N)`` per split, every family) through the graph
``make demo`` runs (config/sim_graph.yaml): a ``sim_node`` process (the PyBullet world as camera
+ robot, sending each episode's instruction as a person would), the ``instruction_node`` and a
``policy_node`` process (image/instruction/proprioception topics -> safety gate ->
/vla/action), started with the project's launcher (``ros.launcher.GraphRunner``) in a DDS
domain of their own, discovery on localhost only. Each finished episode is read from
/vla/episode_status and becomes an ``EpisodeRecord``, so the usual report code writes
report.json / report.md; an *agreement* section then compares every episode with the
in-process outcome of the same seed.

Timing (``tick_rate``):
- ``0`` (default): **lockstep**. The sim node publishes an observation and steps only when the
  action answering it has arrived. Timing plays no part, so a disagreement means the graph
  computed different actions (message conversion, safety gate, proprioception over topics).
- ``R`` Hz: **free running**, as on a robot, at R control ticks per second (each tick still one
  ``1 / control_hz`` simulated step). A late action becomes a hold, so timing adds differences.

Layout of ``out``: the ROS run's report files (``sim_report.py``), plus ``agreement.json``,
``in_process/`` (the in-process evaluation of the same plan, full report) and ``ros_graph.log``
(every node's output). ``report.json`` gains an ``agreement`` key and ``report.md`` a section.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field
import json
import os
from pathlib import Path
import sys
import tempfile
import time
from typing import Any, Optional, Union

import numpy as np
from tqdm import tqdm

from vla_align.evaluation.sim_eval import (
    EvalError,
    EvalPlan,
    ExpertAgent,
    evaluate,
)
from vla_align.evaluation.sim_report import (
    REPORT_JSON,
    REPORT_MD,
    EpisodeRecord,
    EvalReport,
    format_summary,
    success_table,
    write_report,
)
from vla_align.evaluation.stats import mcnemar_exact_p
from vla_align.model.chunking import DEFAULT_EXECUTION, ChunkExecution
from vla_align.sim.env import EnvConfig
from vla_align.sim.suite import TaskSuite, load_suite

AGREEMENT_JSON = 'agreement.json'
IN_PROCESS_DIR = 'in_process'
GRAPH_LOG = 'ros_graph.log'
#: Lockstep: how often the sim node looks for the awaited action (Hz); bounds the step rate.
LOCKSTEP_TICK_RATE = 100.0
#: Domains used here: 101..200 (tests take 1..100 in ``test/ros_isolation.py``; 0 is the
#: interactive default).
DOMAIN_BASE, DOMAIN_RANGE = 101, 100


@dataclass(frozen=True)
class RosTiming:
    """How the graph is clocked (see the module docstring)."""

    tick_rate: float = 0.0  # 0: lockstep
    action_timeout_s: float = 2.0  # lockstep: a hold after this long without an action

    @property
    def lockstep(self) -> bool:
        return self.tick_rate == 0

    def describe(self) -> str:
        return ('lockstep (the simulator waits for each action)' if self.lockstep
                else f'free running at {self.tick_rate:g} control ticks per second')


@dataclass(frozen=True)
class EpisodeComparison:
    """One seeded episode as run in-process and through the graph."""

    split: str
    family: str
    seed: int
    in_process_success: bool
    ros_success: bool
    in_process_steps: int
    ros_steps: int

    @property
    def agree(self) -> bool:
        return self.in_process_success == self.ros_success

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, 'agree': self.agree}


@dataclass
class Agreement:
    """Per-episode agreement of the two paths on the episodes both finished."""

    comparisons: list[EpisodeComparison]
    not_compared: list[str] = field(default_factory=list)  # crashed or unfinished, and why

    @property
    def rate(self) -> Optional[float]:
        if not self.comparisons:
            return None
        return sum(c.agree for c in self.comparisons) / len(self.comparisons)

    @property
    def same_steps(self) -> Optional[float]:
        """Fraction with equal step counts too (a sign of identical trajectories)."""
        if not self.comparisons:
            return None
        return float(np.mean([c.in_process_steps == c.ros_steps for c in self.comparisons]))

    @classmethod
    def compare(cls, in_process: Sequence[EpisodeRecord],
                ros: Sequence[EpisodeRecord]) -> Agreement:
        by_key = {(r.split, r.family, r.seed): r for r in in_process}
        comparisons, skipped = [], []
        for record in ros:
            key = (record.split, record.family, record.seed)
            other = by_key.get(key)
            if other is None:
                skipped.append(f'{"/".join(map(str, key))}: not run in-process')
            elif record.error is not None or other.error is not None:
                skipped.append(f'{"/".join(map(str, key))}: '
                               f'{record.error or other.error}')
            else:
                comparisons.append(EpisodeComparison(
                    record.split, record.family, record.seed, other.success, record.success,
                    other.steps, record.steps))
        return cls(comparisons, skipped)

    @property
    def only_in_process(self) -> int:
        """Episodes that succeeded in-process and failed through the graph."""
        return sum(c.in_process_success and not c.ros_success for c in self.comparisons)

    @property
    def only_ros(self) -> int:
        return sum(c.ros_success and not c.in_process_success for c in self.comparisons)

    @property
    def systematic_p(self) -> float:
        """Exact McNemar p-value: how likely disagreements this one-sided arise by chance
        (small: one way is systematically better, as when episodes leaked into each other)."""
        return mcnemar_exact_p(self.only_in_process, self.only_ros)

    def to_dict(self) -> dict[str, Any]:
        return {'episodes_compared': len(self.comparisons),
                'agreed': sum(c.agree for c in self.comparisons),
                'agreement_rate': self.rate, 'same_step_count_rate': self.same_steps,
                'only_in_process_succeeded': self.only_in_process,
                'only_ros_succeeded': self.only_ros,
                'mcnemar_exact_p': self.systematic_p,
                'disagreements': [c.to_dict() for c in self.comparisons if not c.agree],
                'not_compared': list(self.not_compared),
                'episodes': [c.to_dict() for c in self.comparisons]}


@dataclass
class RosEvalResult:
    """What ``evaluate_via_ros`` measured: the graph run, the in-process run, their agreement."""

    ros: EvalReport
    in_process: Optional[EvalReport]
    agreement: Optional[Agreement]
    timing: RosTiming
    log_path: Path


# -- the evaluation ------------------------------------------------------------------------------
def evaluate_via_ros(policy: Union[str, os.PathLike, type[ExpertAgent]],
                     suite: Union[TaskSuite, str, os.PathLike, None] = None, *,
                     splits: Optional[Sequence[str]] = None,
                     families: Optional[Sequence[str]] = None, episodes: int = 50,
                     workers: int = 1, out: Optional[Path] = None,
                     timing: RosTiming = RosTiming(), timeout_s: Optional[float] = None,
                     compare: bool = True, env_config: Optional[EnvConfig] = None,
                     device: str = 'auto', domain_id: Optional[int] = None,
                     execution: ChunkExecution = DEFAULT_EXECUTION,
                     progress: bool = True, plots: bool = True) -> RosEvalResult:
    """Run the ``evaluate`` plan through the ROS 2 graph (and, with ``compare``, in-process).

    ``policy`` is a checkpoint folder or ``ExpertAgent``. ``workers`` is for the in-process
    run; the graph runs one episode at a time. ``timeout_s`` bounds the graph run (default:
    60 s to start plus 20 s per episode); episodes unfinished by then are recorded as errors.
    ``domain_id`` defaults to one derived from this process id (101..200).
    """
    env_config = env_config or EnvConfig()
    suite = suite if isinstance(suite, TaskSuite) else load_suite(suite)
    if suite.path is None:
        raise EvalError('evaluation through ROS needs a task-suite file (the sim node loads '
                        'it by path), not an in-memory suite')
    plan = EvalPlan.make(suite, splits, families, episodes)
    jobs = plan.jobs()
    source = _policy_parameters(policy, device, execution)
    if timing.tick_rate < 0:
        raise EvalError(f'tick rate must be >= 0 (0: lockstep), got {timing.tick_rate}')
    timeout_s = timeout_s if timeout_s is not None else 60.0 + 20.0 * len(jobs)
    if timeout_s <= 0:
        raise EvalError(f'the ROS timeout must be positive, got {timeout_s}')
    if out is not None:
        out = Path(out)
        if (out / REPORT_JSON).exists() or (out / IN_PROCESS_DIR).exists():
            raise EvalError(f'{out} already holds an evaluation; choose a new output folder')

    in_process = None
    if compare:
        in_process = evaluate(policy, suite, splits=plan.splits, families=plan.families,
                              episodes=episodes, workers=workers,
                              out=out / IN_PROCESS_DIR if out is not None else None,
                              keep_failures=0, env_config=env_config, device=device,
                              execution=execution, progress=progress, plots=plots)

    log_dir = out if out is not None else Path(tempfile.mkdtemp(prefix='vla_align_ros_eval_'))
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / GRAPH_LOG
    started = time.perf_counter()
    graph_run = _run_graph(jobs, suite, env_config, source, timing, timeout_s, domain_id,
                          log_path, progress)
    wall_time = time.perf_counter() - started

    records = _records(jobs, graph_run)
    description = (ExpertAgent.description if source['source'] == 'expert'
                   else f'checkpoint {policy}')
    report = EvalReport(
        policy=f'{description}, through the ROS 2 graph ({timing.describe()})',
        checkpoint=None if source['source'] == 'expert' else str(policy),
        suite=str(suite.path), splits=plan.splits, families=plan.families,
        episodes_per_cell=episodes, workers=1, records=records, wall_time_s=wall_time,
        config={'via_ros': {'timing': 'lockstep' if timing.lockstep else 'free running',
                            'tick_rate_hz': timing.tick_rate or None,
                            'action_timeout_s': timing.action_timeout_s if timing.lockstep
                            else None, 'timeout_s': timeout_s, 'graph_log': str(log_path)},
                'seeds': {s: [seeds[0], seeds[-1]] for s, seeds in plan.seeds.items()},
                'env': {'camera': [env_config.camera.width, env_config.camera.height],
                        'control_hz': env_config.control_hz,
                        'max_steps': env_config.max_steps}})
    agreement = (Agreement.compare(in_process.records, records) if in_process is not None
                 else None)
    if out is not None:
        write_report(report, out, plots=plots)
        if in_process is not None and agreement is not None:
            write_agreement(out, report, in_process, agreement)
    return RosEvalResult(report, in_process, agreement, timing, log_path)


def _policy_parameters(policy: Any, device: str,
                       execution: ChunkExecution = DEFAULT_EXECUTION) -> dict[str, Any]:
    """The policy node's parameters for ``policy``."""
    if policy is ExpertAgent:
        return {'source': 'expert'}
    if isinstance(policy, (str, os.PathLike)):
        path = Path(policy)
        if not path.is_dir():
            raise EvalError(f'checkpoint {path} is not a folder (a checkpoint is the folder '
                            f'written by training, with config.json and model.safetensors)')
        return {'source': 'checkpoint', 'checkpoint': str(path.resolve()), 'device': device,
                'chunk_execution': execution.mode, 'ensemble_decay': execution.decay}
    raise EvalError(f'through ROS the policy must be a checkpoint folder or ExpertAgent, got '
                    f'{policy!r}')


def graph_config(jobs: Sequence[Any], suite: TaskSuite, env_config: EnvConfig,
                 source: dict[str, Any], timing: RosTiming) -> Any:
    """The shipped simulation graph (config/sim_graph.yaml, what ``make demo`` and
    ``sim.launch.py`` run) with its sim node set to run ``jobs`` in order.

    The graph is the main job's own, instruction node included: evaluation measures what a
    user runs, not a variant of it.
    """
    from vla_align.paths import share_path
    from vla_align.ros.graph_config import load_graph_config
    from vla_align.ros.sim_node import PlannedEpisode

    config = load_graph_config(share_path('config', 'sim_graph.yaml')).with_arguments({})
    tick_rate = LOCKSTEP_TICK_RATE if timing.lockstep else timing.tick_rate
    sim = {
        'episode_list': [PlannedEpisode(j.split, j.family, j.seed).entry() for j in jobs],
        'suite': str(suite.path), 'control_rate': float(env_config.control_hz),
        'image_width': env_config.camera.width, 'image_height': env_config.camera.height,
        'max_steps': env_config.max_steps or 0, 'auto_reset': True, 'reset_delay_s': 0.0,
        'start_on_launch': True, 'wait_for_policy': True,
        'publish_expert_action': source['source'] == 'expert',
        'tick_rate': float(tick_rate), 'lockstep': timing.lockstep,
        'action_timeout_s': float(timing.action_timeout_s)}
    # The policy's frame pacer must accept every frame: in lockstep frames come at most once a
    # tick, so pace at twice the tick rate; free running, at the tick rate (its tolerance
    # absorbs jitter), as on a robot. Its control rate stays the simulated one: twists are
    # delta x control rate.
    policy = {**source, 'control_rate': float(env_config.control_hz),
              'pace_rate_hz': float(2 * tick_rate if timing.lockstep else tick_rate),
              # Lockstep: the first twist after a frame answers it, so no stream between
              # decisions; free running: the Servo stream, as on a robot.
              'command_rate_hz': 0.0 if timing.lockstep else 50.0,
              # Grounding only flags (refuse_ungrounded is off), so actions do not depend on
              # it; -1 keeps the flag, and its logging, out of the evaluation.
              'alignment_threshold': -1.0}
    return config.with_parameters('sim_node', sim).with_parameters('policy_node', policy)


@dataclass(frozen=True)
class GraphRun:
    statuses: list[Any]  # EpisodeStatus of each finished episode
    stop_reason: str  # why the graph stopped


def _run_graph(jobs: Sequence[Any], suite: TaskSuite, env_config: EnvConfig,
               source: dict[str, Any], timing: RosTiming, timeout_s: float,
               domain_id: Optional[int], log_path: Path, progress: bool) -> GraphRun:
    """Run the graph until every job finished (or the timeout); the EpisodeStatus of each."""
    from vla_align.ros.launcher import GraphRunner, LineSink, graph_environment

    config = graph_config(jobs, suite, env_config, source, timing)
    domain = domain_id if domain_id is not None else DOMAIN_BASE + os.getpid() % DOMAIN_RANGE
    env = graph_environment(config.settings, domain)
    successes = 0
    with open(log_path, 'w') as log, tqdm(total=len(jobs), unit='ep', desc='eval-sim via ROS',
                                          disable=not progress) as bar:
        def on_episode(status: Any) -> None:
            nonlocal successes
            successes += int(status.success)
            bar.update(1)
            bar.set_postfix(success=f'{successes}/{bar.n}')

        runner = GraphRunner(config, env, LineSink(log))
        outcome = runner.run(episodes=len(jobs), timeout=timeout_s, on_episode=on_episode)
    if outcome.status != 0 and not outcome.episodes:
        raise EvalError(f'the ROS 2 graph stopped before any episode finished: '
                        f'{outcome.reason}\n{_tail(log_path)}')
    if outcome.status != 0 and progress:
        print(f'the ROS 2 graph stopped early: {outcome.reason}\n{_tail(log_path)}',
              file=sys.stderr)
    return GraphRun(list(outcome.episodes), outcome.reason)


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors='replace').splitlines()
    return '\n'.join(['last lines of ' + str(path) + ':', *text[-lines:]])


def _records(jobs: Sequence[Any], graph_run: GraphRun) -> list[EpisodeRecord]:
    """One record per job, in plan order; a job with no finished status is an error."""
    by_key = {(s.split, s.family, s.seed): s for s in graph_run.statuses}
    records = []
    for job in jobs:
        record = EpisodeRecord(job.split, job.family, job.seed, job.index)
        status = by_key.get((job.split, job.family, job.seed))
        if status is None:
            record.error = f'did not finish through ROS ({graph_run.stop_reason})'
        else:
            record.instruction, record.success = status.instruction, bool(status.success)
            record.steps = int(status.step)
        records.append(record)
    return records


# -- the agreement section -----------------------------------------------------------------------
def agreement_markdown(ros: EvalReport, in_process: EvalReport, agreement: Agreement) -> str:
    data = agreement.to_dict()
    rate = agreement.rate
    lines = ['## Agreement with in-process evaluation', '',
             f'The same {len(ros.records)} seeded episodes, run in-process '
             f'({in_process.wall_time_s:.1f} s, {in_process.workers} worker(s)) and through '
             f'the ROS 2 graph ({ros.wall_time_s:.1f} s, one episode at a time).', '',
             '- per-episode agreement (same success outcome): '
             + ('-' if rate is None else f'{data["agreed"]}/{data["episodes_compared"]} = '
                                         f'{100 * rate:.0f} %'),
             '- same step count too: '
             + ('-' if agreement.same_steps is None else f'{100 * agreement.same_steps:.0f} %'),
             f'- succeeded only in-process / only through ROS 2: {agreement.only_in_process} / '
             f'{agreement.only_ros} (exact McNemar p = {agreement.systematic_p:.3f}; small means '
             f'one path is systematically better)',
             '', '### In-process', '', success_table(in_process, markdown=True), '',
             '### Through ROS 2', '', success_table(ros, markdown=True)]
    if data['disagreements']:
        lines += ['', '### Episodes that disagree', '',
                  '| split | family | seed | in-process | ROS 2 | steps (in-process / ROS) |',
                  '|---|---|---|---|---|---|']
        lines += [f'| {d["split"]} | {d["family"]} | {d["seed"]} | '
                  f'{"success" if d["in_process_success"] else "failure"} | '
                  f'{"success" if d["ros_success"] else "failure"} | '
                  f'{d["in_process_steps"]} / {d["ros_steps"]} |'
                  for d in data['disagreements']]
    if agreement.not_compared:
        lines += ['', 'Not compared: ' + '; '.join(agreement.not_compared)]
    return '\n'.join(lines) + '\n'


def write_agreement(out: Path, ros: EvalReport, in_process: EvalReport,
                    agreement: Agreement) -> None:
    """agreement.json, plus an ``agreement`` key in report.json and a section in report.md."""
    data = {**agreement.to_dict(), 'in_process': {
        'report': f'{IN_PROCESS_DIR}/{REPORT_JSON}', 'wall_time_s': in_process.wall_time_s,
        'workers': in_process.workers,
        'splits': in_process.to_dict()['splits']}, 'ros_wall_time_s': ros.wall_time_s}
    _write(out / AGREEMENT_JSON, json.dumps(data, indent=2) + '\n')
    report = json.loads((out / REPORT_JSON).read_text())
    report['agreement'] = {k: v for k, v in data.items() if k != 'episodes'}
    _write(out / REPORT_JSON, json.dumps(report, indent=2) + '\n')
    markdown = (out / REPORT_MD).read_text()
    _write(out / REPORT_MD, markdown.rstrip('\n') + '\n\n'
           + agreement_markdown(ros, in_process, agreement))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)


def format_agreement(result: RosEvalResult) -> str:
    """What the command prints after the ROS run's summary."""
    if result.agreement is None or result.in_process is None:
        return ''
    data = result.agreement.to_dict()
    rate = result.agreement.rate
    lines = ['', 'in-process (same seeds):', success_table(result.in_process), '',
             'agreement with in-process: '
             + ('-' if rate is None else f'{data["agreed"]}/{data["episodes_compared"]} '
                                         f'episodes ({100 * rate:.0f} %)')
             + f'; wall time {result.in_process.wall_time_s:.1f} s in-process vs '
               f'{result.ros.wall_time_s:.1f} s through ROS 2',
             f'succeeded only in-process / only through ROS 2: '
             f'{result.agreement.only_in_process} / {result.agreement.only_ros} (exact '
             f'McNemar p = {result.agreement.systematic_p:.3f})']
    for d in data['disagreements'][:10]:
        lines.append(f'disagree: {d["split"]}/{d["family"]} seed {d["seed"]}: in-process '
                     f'{"success" if d["in_process_success"] else "failure"} '
                     f'({d["in_process_steps"]} steps), ROS '
                     f'{"success" if d["ros_success"] else "failure"} ({d["ros_steps"]} steps)')
    return '\n'.join(lines)


# -- command line (called from sim_eval.run) ------------------------------------------------------
def run_cli(args: argparse.Namespace, out: Path, splits: Optional[list[str]],
            families: Optional[list[str]]) -> int:
    """``vla-align eval-sim --via-ros``: the ROS run, the in-process run and their agreement."""
    if args.zero_policy:
        print('vla-align eval-sim: --via-ros needs --checkpoint (the policy node has no '
              'zero-policy source)', file=sys.stderr)
        return 2
    from vla_align.model.checkpoint import CheckpointError

    try:
        result = evaluate_via_ros(
            args.checkpoint, args.suite, splits=splits, families=families,
            episodes=args.episodes, workers=args.workers, out=out,
            timing=RosTiming(tick_rate=args.ros_rate), timeout_s=args.ros_timeout,
            device=args.device, execution=ChunkExecution(args.execution, args.ensemble_decay),
            plots=not args.no_plots)
    except (ValueError, CheckpointError) as exc:  # EvalError, SuiteError
        print(f'vla-align eval-sim: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('vla-align eval-sim: interrupted', file=sys.stderr)
        return 130
    print(format_summary(result.ros))
    print(format_agreement(result))
    print(f'report: {out / REPORT_JSON} (node output: {result.log_path})')
    return 1 if result.ros.errors else 0
