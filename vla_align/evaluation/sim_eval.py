"""`vla-align eval-sim`: closed-loop success rates of a policy in the simulator (DESIGN.md §5).

::

    vla-align eval-sim --checkpoint runs/train/best --out runs/eval/best
    vla-align eval-sim --zero-policy --families reach pick --episodes 10   # the floor

Protocol: for every split and family, the seeds ``suite.seeds(split, 'eval', N)``; episode
``i`` of a cell is the same task and layout whatever the worker count. Success per cell with a
95 % Wilson interval (``stats.py``); files written as described in ``sim_report.py``.

Besides success, each episode measures
- latency: wall time of every policy step (``Agent.act``), inside the worker;
- grounding: the policy's V-L score on up to ``ALIGNMENT_FRAMES`` evenly spaced frames, with
  the true instruction and with the instruction of another family's task for the same seed;
- for the first episode of each cell, its first/middle/last frames (filmstrips).

Failure analysis: once every episode has run, up to ``keep_failures`` failed episodes, taken
round-robin over the cells (lowest seeds first), are run again with recording and written as
rosbag2 under ``OUT/failures/``. Running them again rather than recording every episode keeps
memory flat; it relies on episodes being reproducible from their seed, and each ``FailureBag``
says whether the replay failed again.

Workers are ``spawn``ed processes (no inherited PyBullet or CUDA state); each builds its agent
once (with one torch thread) and one env. ``workers=1`` runs in this process with the caller's
torch settings.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
import datetime
import multiprocessing
import os
from pathlib import Path
import pickle
import sys
import time
from typing import Any, Optional, Union
import zlib

import numpy as np
from tqdm import tqdm

from vla_align.actions import hold_action
from vla_align.data.bag_io import write_episode_bag
from vla_align.evaluation.embedding_probe import collect_embedding_sample
from vla_align.evaluation.sim_report import (
    FAILURES_DIR,
    REPORT_JSON,
    AttentionExample,
    EpisodeRecord,
    EvalReport,
    FailureBag,
    Filmstrip,
    format_summary,
    write_report,
)
from vla_align.model.chunking import (
    DEFAULT_EXECUTION,
    EXECUTION_MODES,
    ChunkExecution,
    ChunkRunner,
)
from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.rollout import run_policy_episode
from vla_align.sim.suite import TaskSuite, load_suite
from vla_align.sim.types import Observation, TaskSpec

#: Frames per episode scored for V-L alignment (true vs wrong instruction).
ALIGNMENT_FRAMES = 4
#: Filmstrips: the first this many episodes of each cell return their frames.
FILMSTRIP_EPISODES = 1


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says why."""


# -- what is evaluated ---------------------------------------------------------------------------
class Agent:
    """What the evaluation drives: one action per observation, plus optional introspection.

    Subclasses override ``act``; the other methods have do-nothing defaults.
    """

    description = 'agent'
    #: True when ``embeddings`` returns something (the report then embeds expert frames).
    has_embeddings = False

    def start_episode(self, env: ManipulationEnv, task: TaskSpec) -> None:
        """Called before each episode, before ``env`` is reset for ``task``."""

    def act(self, observation: Observation) -> np.ndarray:
        raise NotImplementedError

    def alignment_scores(self, images: np.ndarray, states: np.ndarray,
                         instructions: Sequence[str]) -> Optional[np.ndarray]:
        """(B,) V-L score of image i with instruction i; None when the agent has none."""
        return None

    def attention_map(self, image: np.ndarray, instruction: str,
                      state: np.ndarray) -> Optional[np.ndarray]:
        """(h, w) attention of the instruction over the image; None when the agent has none."""
        return None

    def embeddings(self, images: np.ndarray, instructions: Sequence[str], actions: np.ndarray,
                   states: np.ndarray) -> Any:
        """Shared-space embeddings (``.vision``, ``.language``, ``.action``: (N, A) arrays) of
        N (image, instruction, action) triples; None when the agent has none."""
        return None


#: A picklable zero-argument callable that builds an Agent (once per worker process).
AgentFactory = Callable[[], Agent]


class ExpertAgent(Agent):
    """The scripted expert as an agent (privileged state): the reference both paths can run.

    Through ROS it is the policy node's ``source: expert`` relaying the sim node's
    /vla/expert_action.
    """

    description = 'scripted expert'

    def __init__(self) -> None:
        self._env: Optional[ManipulationEnv] = None

    def start_episode(self, env: ManipulationEnv, task: TaskSpec) -> None:
        self._env = env

    def act(self, observation: Observation) -> np.ndarray:
        assert self._env is not None, 'start_episode was not called'
        return self._env.expert_action()


class ZeroAgent(Agent):
    """The floor: never moves, gripper open. No task should succeed with it."""

    description = 'zero policy (no motion, gripper open)'

    def act(self, observation: Observation) -> np.ndarray:
        return hold_action(0.0)


class PolicyAgent(Agent):
    """A ``vla_align.model.policy.Policy`` fed the camera frame, instruction and proprioception."""

    has_embeddings = True

    def __init__(self, policy: Any, description: str = 'policy',
                 execution: ChunkExecution = DEFAULT_EXECUTION) -> None:
        self.policy = policy
        self.description = description
        self.execution = execution
        self._runner: Optional[ChunkRunner] = None
        self._steps = 0

    def start_episode(self, env: ManipulationEnv, task: TaskSpec) -> None:
        # As the policy node does when an instruction arrives: encode it once, up front, so
        # step latency is 'image + cached instruction -> action' (DESIGN.md §6). A new
        # episode also forgets the chunks of the last one.
        if self._runner is None or self._runner.ensembler.period_s != 1.0 / env.config.control_hz:
            self._runner = ChunkRunner(self.policy, env.config.control_hz, self.execution)
        self._runner.encode_instruction(task.instruction)
        self._steps = 0

    def act(self, observation: Observation) -> np.ndarray:
        assert self._runner is not None, 'start_episode was not called'
        time_s = self._steps * self._runner.ensembler.period_s
        self._steps += 1
        return self._runner.step(observation.image, observation.instruction,
                                 observation.state(), time_s).action

    def alignment_scores(self, images: np.ndarray, states: np.ndarray,
                         instructions: Sequence[str]) -> Optional[np.ndarray]:
        steps = self.policy.step_batch(images, list(instructions), states)
        return np.array([step.alignment for step in steps], dtype=np.float64)

    def attention_map(self, image: np.ndarray, instruction: str,
                      state: np.ndarray) -> Optional[np.ndarray]:
        return self.policy.attention_maps(image, instruction, state)

    def embeddings(self, images: np.ndarray, instructions: Sequence[str], actions: np.ndarray,
                   states: np.ndarray) -> Any:
        return self.policy.embed(images, list(instructions), actions, states)


@dataclass(frozen=True)
class CheckpointAgentFactory:
    """Loads a checkpoint folder into a ``PolicyAgent`` (picklable, for worker processes)."""

    path: str
    device: str = 'auto'
    execution: ChunkExecution = DEFAULT_EXECUTION

    def __call__(self) -> PolicyAgent:
        from vla_align.model.policy import Policy  # torch only where a policy runs

        policy = Policy.from_checkpoint(self.path, device=self.device)
        description = f'checkpoint {self.path}'
        if policy.config.chunk_size > 1:
            description += (f' (chunks of {policy.config.chunk_size}, execution '
                            f'{self.execution.mode}, decay {self.execution.decay:g})')
        return PolicyAgent(policy, description, self.execution)


# -- jobs and the worker -------------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodeJob:
    split: str
    family: str
    seed: int
    index: int  # position in the cell's seed list


@dataclass(frozen=True)
class RecordJob:
    """Run ``episode`` again with recording and write it as a bag at ``bag_path``."""

    episode: EpisodeJob
    root: str  # the evaluation folder
    bag_path: str  # relative to root


@dataclass
class EpisodeResult:
    record: EpisodeRecord
    filmstrip: Optional[Filmstrip] = None


class _Worker:
    """Per-process state: one agent and one env, reused for every episode."""

    def __init__(self, agent: Agent, suite: TaskSuite, env_config: EnvConfig) -> None:
        self.agent = agent
        self.suite = suite
        self.env = ManipulationEnv(env_config)

    def run(self, job: Union[EpisodeJob, RecordJob]) -> Union[EpisodeResult, FailureBag]:
        return self.record(job) if isinstance(job, RecordJob) else self.evaluate(job)

    def evaluate(self, job: EpisodeJob) -> EpisodeResult:
        record = EpisodeRecord(job.split, job.family, job.seed, job.index)
        try:
            task = self.suite.sample_task(job.family, job.split, job.seed)
            record.instruction = task.instruction
            images: list[np.ndarray] = []
            states: list[np.ndarray] = []
            agent = self.agent

            def act(observation: Observation) -> np.ndarray:
                images.append(observation.image)
                states.append(observation.state())
                start = time.perf_counter()
                action = agent.act(observation)
                record.latencies_ms.append(1e3 * (time.perf_counter() - start))
                return action

            agent.start_episode(self.env, task)
            outcome = run_policy_episode(self.env, task, job.seed, act)
            record.success, record.steps = outcome.success, outcome.steps
            record.unsafe_actions = outcome.unsafe_actions
            self._score_alignment(record, task, images, states)
            strip = None
            if job.index < FILMSTRIP_EPISODES:
                middle = len(images) // 2
                strip = Filmstrip(job.split, job.family, job.seed, task.instruction,
                                  outcome.success,
                                  np.stack([images[0], images[middle], self.env.render()]),
                                  (0, middle, outcome.steps), states[0])
            return EpisodeResult(record, strip)
        except Exception as exc:  # noqa: BLE001 - one crashed episode must not stop the run
            record.error = f'{type(exc).__name__}: {exc}'
            return EpisodeResult(record)

    def _score_alignment(self, record: EpisodeRecord, task: TaskSpec,
                         images: list[np.ndarray], states: list[np.ndarray]) -> None:
        wrong = self.wrong_instruction(task, record.split, record.seed)
        if wrong is None or not images:
            return
        picks = np.unique(np.linspace(0, len(images) - 1, ALIGNMENT_FRAMES).round().astype(int))
        frames = np.stack([images[i] for i in picks])
        state = np.stack([states[i] for i in picks])
        scores = self.agent.alignment_scores(
            np.concatenate([frames, frames]), np.concatenate([state, state]),
            [task.instruction] * len(picks) + [wrong] * len(picks))
        if scores is None:
            return
        record.alignment_true = [float(v) for v in scores[:len(picks)]]
        record.alignment_wrong = [float(v) for v in scores[len(picks):]]
        record.wrong_instruction = wrong

    def wrong_instruction(self, task: TaskSpec, split: str, seed: int) -> Optional[str]:
        """The instruction of another family's task for the same split and seed."""
        others = [f for f in self.suite.families if f != task.family]
        rng = np.random.default_rng([int(seed), zlib.crc32(task.family.encode())])
        for family in rng.permutation(others) if others else []:
            try:
                other = self.suite.sample_task(str(family), split, seed)
            except ValueError:  # a user split that lists no task of this family
                continue
            if other.instruction != task.instruction:
                return other.instruction
        return None

    def record(self, job: RecordJob) -> FailureBag:
        spec = job.episode
        bag = FailureBag(spec.split, spec.family, spec.seed, '', job.bag_path, 0, False)
        try:
            task = self.suite.sample_task(spec.family, spec.split, spec.seed)
            bag.instruction = task.instruction
            self.agent.start_episode(self.env, task)
            outcome = run_policy_episode(self.env, task, spec.seed, self.agent.act, record=True)
            episode = outcome.episode
            episode.metadata.update(source='policy-evaluation', policy=self.agent.description)
            write_episode_bag(episode, Path(job.root) / job.bag_path)
            bag.steps, bag.failed_again = outcome.steps, not outcome.success
        except Exception as exc:  # noqa: BLE001 - a lost bag must not lose the evaluation
            bag.error = f'{type(exc).__name__}: {exc}'
        return bag

    def close(self) -> None:
        self.env.close()


_WORKER: Optional[_Worker] = None


def _init_worker(factory: AgentFactory, suite: TaskSuite, env_config: EnvConfig) -> None:
    global _WORKER
    agent = factory()
    if 'torch' in sys.modules:  # one thread per worker: workers, not threads, share the cores
        sys.modules['torch'].set_num_threads(1)
    _WORKER = _Worker(agent, suite, env_config)


def _run_job(job: Union[EpisodeJob, RecordJob]) -> Union[EpisodeResult, FailureBag]:
    assert _WORKER is not None, 'worker not initialised'
    return _WORKER.run(job)


class _Runner:
    """Runs jobs in this process (one worker) or in a pool of spawned worker processes."""

    def __init__(self, agent: Agent, factory: AgentFactory, suite: TaskSuite,
                 env_config: EnvConfig, workers: int) -> None:
        self.inline = _Worker(agent, suite, env_config) if workers == 1 else None
        self.pool = None if workers == 1 else ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context('spawn'),
            initializer=_init_worker, initargs=(factory, suite, env_config))

    def results(self, jobs: Sequence[Any]) -> Iterator[Any]:
        """Each job's result, in completion order."""
        if self.inline is not None:
            for job in jobs:
                yield self.inline.run(job)
            return
        futures = [self.pool.submit(_run_job, job) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BrokenProcessPool as exc:
            raise EvalError(f'a simulator worker process died ({exc}); see its output '
                            f'above') from None
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        if self.inline is not None:
            self.inline.close()
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# -- the evaluation ------------------------------------------------------------------------------
def evaluate(policy: Union[str, os.PathLike, AgentFactory],
             suite: Union[TaskSuite, str, os.PathLike, None] = None, *,
             splits: Optional[Sequence[str]] = None,
             families: Optional[Sequence[str]] = None, episodes: int = 50, workers: int = 1,
             out: Optional[Path] = None, keep_failures: int = 10,
             env_config: Optional[EnvConfig] = None, device: str = 'auto',
             execution: ChunkExecution = DEFAULT_EXECUTION,
             progress: bool = True, plots: bool = True) -> EvalReport:
    """Evaluate ``policy`` closed-loop on ``episodes`` seeded eval episodes per split x family.

    ``policy`` is a checkpoint folder or a picklable zero-argument factory of an ``Agent``
    (e.g. ``ZeroAgent``). ``splits`` default to the suite's evaluation splits (those with eval
    seeds), ``families`` to all of its. With ``out``, writes report.json, report.md, figures
    and failure bags there (``keep_failures`` at most); without it, only returns the report.
    ``env_config`` (camera, step budget) defaults to ``EnvConfig()``, the configuration
    demonstrations are collected with. ``execution`` says how a checkpoint with action chunks
    executes them (`vla_align.model.chunking`).
    """
    env_config = env_config or EnvConfig()
    factory, checkpoint = _resolve_policy(policy, device, execution)
    suite = suite if isinstance(suite, TaskSuite) else load_suite(suite)
    plan = EvalPlan.make(suite, splits, families, episodes)
    if workers < 1:
        raise EvalError(f'workers must be >= 1, got {workers}')
    if keep_failures < 0:
        raise EvalError(f'keep_failures must be >= 0, got {keep_failures}')
    if out is not None:
        out = Path(out)
        if (out / REPORT_JSON).exists() or any((out / FAILURES_DIR).glob('*')):
            raise EvalError(f'{out} already holds an evaluation; choose a new output folder')
    jobs = plan.jobs()
    workers = min(workers, len(jobs))
    if workers > 1:
        _check_picklable(factory)
    agent = factory()  # in this process: a bad checkpoint fails here, with its own message

    started = time.perf_counter()
    runner = _Runner(agent, factory, suite, env_config, workers)
    try:
        results = _run_episodes(runner, jobs, progress)
        records = [r.record for r in results]
        failures = []
        if out is not None and keep_failures:
            failures = _record_failures(runner, records, plan, keep_failures, out, progress)
    finally:
        runner.close()
    report = EvalReport(
        policy=agent.description, checkpoint=checkpoint, suite=str(suite.path or 'in memory'),
        splits=plan.splits, families=plan.families, episodes_per_cell=episodes,
        workers=workers, wall_time_s=time.perf_counter() - started,
        records=sorted(records, key=lambda r: (plan.cell_index(r.split, r.family), r.index)),
        config={'keep_failures': keep_failures, 'device': device,
                'execution': {'mode': execution.mode, 'decay': execution.decay},
                'seeds': {s: [seeds[0], seeds[-1]] for s, seeds in plan.seeds.items()},
                'env': {'camera': [env_config.camera.width, env_config.camera.height],
                        'control_hz': env_config.control_hz,
                        'max_steps': env_config.max_steps}},
        failures=sorted(failures, key=lambda f: (plan.cell_index(f.split, f.family), f.seed)),
        filmstrips=sorted((r.filmstrip for r in results if r.filmstrip is not None),
                          key=lambda s: (plan.cell_index(s.split, s.family), s.seed)))
    if out is not None:
        if plots:
            report.attention = attention_examples(agent, report.filmstrips, plan.splits[0])
        if agent.has_embeddings:  # else the expert episodes below would be wasted
            with ManipulationEnv(env_config) as env:
                report.embeddings = collect_embedding_sample(agent, suite, plan.splits,
                                                             plan.families, env)
        write_report(report, out, plots=plots)
    return report


@dataclass(frozen=True)
class EvalPlan:
    """The cells (split x family) to evaluate and the seeds of each split."""

    splits: tuple[str, ...]
    families: tuple[str, ...]
    seeds: dict[str, list[int]]  # split -> its first ``episodes`` eval seeds
    episodes: int

    @classmethod
    def make(cls, suite: TaskSuite, splits: Optional[Sequence[str]],
             families: Optional[Sequence[str]], episodes: int) -> EvalPlan:
        splits = tuple(dict.fromkeys(splits or suite.eval_splits))
        families = tuple(dict.fromkeys(families or suite.families))
        bad_splits = [s for s in splits if s not in suite.splits]
        if bad_splits:
            raise EvalError(f'unknown splits {bad_splits}; the suite has {list(suite.splits)}')
        bad_families = [f for f in families if f not in suite.families]
        if bad_families:
            raise EvalError(f'unknown families {bad_families}; the suite has '
                            f'{list(suite.families)}')
        if episodes < 1:
            raise EvalError(f'episodes must be >= 1, got {episodes}')
        seeds = {split: suite.seeds(split, 'eval', episodes) for split in splits}
        for split in splits:  # fail before starting workers on a family a split cannot draw
            for family in families:
                suite.sample_task(family, split, seeds[split][0])
        return cls(splits, families, seeds, episodes)

    def jobs(self) -> list[EpisodeJob]:
        """Every episode, interleaved over the cells so progress is representative early."""
        return [EpisodeJob(split, family, self.seeds[split][index], index)
                for index in range(self.episodes)
                for split in self.splits for family in self.families]

    def cell_index(self, split: str, family: str) -> int:
        return self.splits.index(split) * len(self.families) + self.families.index(family)


def _resolve_policy(policy: Union[str, os.PathLike, AgentFactory],
                    device: str, execution: ChunkExecution = DEFAULT_EXECUTION
                    ) -> tuple[AgentFactory, Optional[str]]:
    if isinstance(policy, (str, os.PathLike)):
        path = Path(policy)
        if not path.is_dir():
            raise EvalError(f'checkpoint {path} is not a folder (a checkpoint is the folder '
                            f'written by training, with config.json and model.safetensors)')
        return CheckpointAgentFactory(str(path), device, execution), str(path)
    if not callable(policy):
        raise EvalError(f'policy must be a checkpoint folder or an agent factory, got '
                        f'{type(policy).__name__}')
    return policy, None


def _check_picklable(factory: AgentFactory) -> None:
    try:
        pickle.dumps(factory)
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise EvalError(f'the agent factory cannot be sent to worker processes ({exc}); '
                        f'use a module-level class or function, or workers=1') from None


def _run_episodes(runner: _Runner, jobs: list[EpisodeJob], progress: bool) -> list[EpisodeResult]:
    results: list[EpisodeResult] = []
    successes = 0
    with tqdm(total=len(jobs), unit='ep', desc='eval-sim', disable=not progress) as bar:
        for result in runner.results(jobs):
            results.append(result)
            successes += int(result.record.success)
            bar.update(1)
            bar.set_postfix(success=f'{successes}/{len(results)}')
    return results


def select_failures(records: Iterable[EpisodeRecord], splits: Sequence[str],
                    families: Sequence[str], limit: int) -> list[EpisodeRecord]:
    """Up to ``limit`` failed (not crashed) episodes, round-robin over the cells in
    split x family order, lowest seed index first within a cell."""
    by_cell = {(s, f): [] for s in splits for f in families}
    for record in sorted(records, key=lambda r: r.index):
        if not record.success and record.error is None:
            by_cell[(record.split, record.family)].append(record)
    chosen: list[EpisodeRecord] = []
    depth = 0
    while len(chosen) < limit and any(len(cell) > depth for cell in by_cell.values()):
        for cell in by_cell.values():
            if len(cell) > depth and len(chosen) < limit:
                chosen.append(cell[depth])
        depth += 1
    return chosen


def _record_failures(runner: _Runner, records: list[EpisodeRecord], plan: EvalPlan, limit: int,
                     out: Path, progress: bool) -> list[FailureBag]:
    chosen = select_failures(records, plan.splits, plan.families, limit)
    if not chosen:
        return []
    (out / FAILURES_DIR).mkdir(parents=True, exist_ok=True)
    jobs = [RecordJob(EpisodeJob(r.split, r.family, r.seed, r.index), str(out),
                      f'{FAILURES_DIR}/{r.split}_{r.family}_{r.seed}') for r in chosen]
    bags = []
    with tqdm(total=len(jobs), unit='ep', desc='record failures', disable=not progress) as bar:
        for bag in runner.results(jobs):
            bags.append(bag)
            bar.update(1)
    return bags


def attention_examples(agent: Agent, strips: Sequence[Filmstrip],
                       split: str) -> list[AttentionExample]:
    """The agent's attention on the first frame of each family's filmstrip in ``split``."""
    examples = []
    for strip in strips:
        if strip.split != split:
            continue
        heat = agent.attention_map(strip.frames[0], strip.instruction, strip.first_state)
        if heat is None:
            return []
        examples.append(AttentionExample(strip.family, strip.instruction, strip.frames[0],
                                         np.asarray(heat, dtype=np.float32)))
    return examples


# -- command line --------------------------------------------------------------------------------
def _names(values: Optional[list[str]]) -> Optional[list[str]]:
    """``--families reach,pick`` and ``--families reach pick`` mean the same."""
    if not values:
        return None
    return [name for value in values for name in value.split(',') if name]


def configure_parser(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', type=Path, help='checkpoint folder to evaluate')
    source.add_argument('--zero-policy', action='store_true',
                        help='evaluate a policy that never moves (gripper open): the floor')
    parser.add_argument('--suite', type=Path, default=None,
                        help='task-suite YAML (default: the shipped suite)')
    parser.add_argument('--splits', nargs='+', default=None,
                        help='splits to evaluate, e.g. seen,paraphrase (default: all)')
    parser.add_argument('--families', nargs='+', default=None,
                        help='task families, e.g. reach,pick (default: all)')
    parser.add_argument('--episodes', type=int, default=50,
                        help='seeded episodes per family and split (default 50)')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='parallel simulator processes (default: CPU count)')
    parser.add_argument('--out', type=Path, default=None,
                        help='new folder for the report (default: runs/eval_sim/<name>-<time>)')
    parser.add_argument('--keep-failures', type=int, default=10,
                        help='failed episodes to record as bags under OUT/failures (default 10)')
    parser.add_argument('--device', default='auto',
                        help="torch device of the policy in each worker (default 'auto')")
    parser.add_argument('--execution', choices=EXECUTION_MODES, default=DEFAULT_EXECUTION.mode,
                        help='how a checkpoint with action chunks executes them: the first '
                             'action of the newest chunk (default) or temporal ensembling')
    parser.add_argument('--ensemble-decay', type=float, default=ChunkExecution.decay,
                        help='temporal ensembling weight exp(decay x age) of older predictions '
                             f'(default {ChunkExecution.decay:g}, as ACT)')
    parser.add_argument('--no-plots', action='store_true', help='write no PNG figures')
    parser.add_argument('--via-ros', action='store_true',
                        help='also run the episodes through the ROS 2 node graph (sim node + '
                             'policy node) and report how the two paths agree (ros_eval.py)')
    parser.add_argument('--ros-rate', type=float, default=0.0, metavar='HZ',
                        help='--via-ros: control ticks per second of the graph; 0 (default): '
                             'lockstep, the simulator waits for each action')
    parser.add_argument('--ros-timeout', type=float, default=None, metavar='S',
                        help='--via-ros: stop the graph after S seconds (default: 60 + 20 per '
                             'episode)')


def run(args: argparse.Namespace) -> int:
    name = 'zero-policy' if args.zero_policy else args.checkpoint.name
    stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
    out = args.out or Path('runs') / 'eval_sim' / f'{name}-{stamp}'
    if args.via_ros:
        from vla_align.evaluation.ros_eval import run_cli

        return run_cli(args, out, _names(args.splits), _names(args.families))
    expected: tuple[type[Exception], ...] = (ValueError,)  # SuiteError, ConfigError, EvalError
    if not args.zero_policy:
        from vla_align.model.checkpoint import CheckpointError

        expected += (CheckpointError,)
    try:
        execution = ChunkExecution(args.execution, args.ensemble_decay)
        report = evaluate(ZeroAgent if args.zero_policy else args.checkpoint, args.suite,
                          splits=_names(args.splits), families=_names(args.families),
                          episodes=args.episodes, workers=args.workers, out=out,
                          keep_failures=args.keep_failures, device=args.device,
                          execution=execution, plots=not args.no_plots)
    except expected as exc:
        print(f'vla-align eval-sim: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('vla-align eval-sim: interrupted', file=sys.stderr)
        return 130
    print(format_summary(report))
    print(f'report: {out / REPORT_JSON}')
    return 1 if report.errors else 0

