"""`vla-align eval-bag`: score a policy's actions against the actions recorded in rosbags.

::

    vla-align eval-bag runs/demos --checkpoint checkpoints/default --out runs/eval_bag
    vla-align eval-bag my_robot_bag --checkpoint C --image-topic /camera/color/image_raw \\
        --instruction 'pick up the red block' --out runs/robot
    vla-align eval-bag BAG --predictions RECORDING --out runs/live   # a live replay's output

For every frame with an instruction in force and a recorded action (pairing rules in
``data/bag_source.py``), the policy sees the frame, the instruction and the robot state and its
action is compared with the recorded one (``bag_report.score_actions``): error per dimension,
translation/rotation error, gripper accuracy and the cosine of the translation deltas.

Offline, frames go through ``Policy.step_batch`` (``--batch-size``) and the outputs are clamped
to the policy node's limits, so the numbers are those of the node. The gripper part of the state
is, by default, the recorded command in force at the frame (``--gripper-state recorded``: how the
policy was trained). ``--gripper-state policy`` feeds back the policy's own previous gripper
command, as the live policy node does; it is computed by fixed-point iteration (recompute the
frames whose input changed until none does), so it stays batched. Latency is the wall time of
``Policy.step`` at batch 1 on ``--latency-samples`` frames (instruction cached, as in the node).

With ``--predictions``, the actions come from a recording of the policy node during a live
replay (``launch/replay.launch.py``; see docs/REPLAY.md) instead of a checkpoint; latency is then
the time from a frame's arrival to the action's, as the recorder saw them.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
import sys
import time
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from vla_align.actions import GRIPPER, ActionLimits
from vla_align.data.bag_source import (
    BagFrames,
    BagSourceError,
    SourceTopics,
    find_bags,
    read_bag_frames,
    read_policy_recording,
)
from vla_align.data.contract import load_contract
from vla_align.evaluation.bag_report import (
    REPORT_MD,
    BagEvalReport,
    EpisodeScore,
    format_summary,
    score_actions,
    write_bag_report,
)
from vla_align.evaluation.stats import summarize_latency

GRIPPER_STATES = ('recorded', 'policy')


@dataclass(frozen=True)
class EvalBagOptions:
    """How frames are read and predictions made (defaults: the replay graph's policy node)."""

    topics: SourceTopics = field(default_factory=SourceTopics)
    instruction: Optional[str] = None  # in force at every frame instead of the bag's topic
    #: Read the bags through this topic contract (robot bags) instead of ``topics``.
    contract: Optional[Any] = None
    batch_size: int = 32
    gripper_state: str = 'recorded'
    limits: ActionLimits = field(default_factory=ActionLimits)
    latency_samples: int = 50  # batch-1 steps timed, spread over all bags

    def __post_init__(self) -> None:
        if self.gripper_state not in GRIPPER_STATES:
            raise ValueError(f'gripper_state must be one of {GRIPPER_STATES}, got '
                             f'{self.gripper_state!r}')
        if self.batch_size < 1 or self.latency_samples < 0:
            raise ValueError('batch_size must be >= 1 and latency_samples >= 0')

    def to_dict(self) -> dict[str, Any]:
        return {'topics': asdict(self.topics), 'instruction': self.instruction,
                'batch_size': self.batch_size, 'gripper_state': self.gripper_state,
                'limits': asdict(self.limits), 'latency_samples': self.latency_samples}


@dataclass
class Predictions:
    """Actions for the frames of one bag (NaN rows: not predicted) and what they cost."""

    actions: np.ndarray  # (N, 7)
    inference_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)


# -- offline prediction ---------------------------------------------------------------------------
def predict_offline(policy: Any, frames: BagFrames, options: EvalBagOptions,
                    latency_frames: int = 0) -> Predictions:
    """The policy's clamped action for every scorable frame of ``frames``.

    ``latency_frames`` frames (evenly spaced) are also run alone through ``Policy.step`` and
    timed. Raises ``BagSourceError`` when the policy needs a state the bag does not have.
    """
    index = np.flatnonzero(frames.scorable)
    out = np.full(frames.actions.shape, np.nan, dtype=np.float32)
    if index.size == 0:
        return Predictions(out)
    needs_state = bool(getattr(policy.config, 'use_proprio', False))
    states = frames.states[index].copy()
    if needs_state and not np.all(np.isfinite(states)):
        raise BagSourceError(f'{frames.path}: the policy needs the robot state but '
                             f'{options.topics.ee_pose} is missing before some frames '
                             f'(record geometry_msgs/PoseStamped of the end effector)')
    started = time.perf_counter()
    predicted = _run(policy, frames, index, states if needs_state else None, options)
    if options.gripper_state == 'policy':
        # The live node's gripper state is its own previous command: iterate to a fixed point.
        for _ in range(len(index)):
            wanted = states[:, 7].copy()
            wanted[1:] = predicted[:-1, GRIPPER]
            changed = np.flatnonzero(wanted != states[:, 7])
            if changed.size == 0:
                break
            states[changed, 7] = wanted[changed]
            predicted[changed] = _run(policy, frames, index[changed],
                                      states[changed] if needs_state else None, options)
    inference_s = time.perf_counter() - started
    out[index] = predicted
    latencies = _time_steps(policy, frames, index, states if needs_state else None,
                            latency_frames)
    return Predictions(out, inference_s, latencies)


def _run(policy: Any, frames: BagFrames, index: np.ndarray, states: Optional[np.ndarray],
         options: EvalBagOptions) -> np.ndarray:
    """(len(index), 7) clamped actions, in batches of ``options.batch_size``."""
    actions = []
    for start in range(0, len(index), options.batch_size):
        chunk = index[start:start + options.batch_size]
        steps = policy.step_batch(frames.images[chunk], [frames.instructions[i] for i in chunk],
                                  None if states is None else
                                  states[start:start + options.batch_size])
        actions.extend(options.limits.clamp(step.action) for step in steps)
    return np.stack(actions).astype(np.float32)


def _time_steps(policy: Any, frames: BagFrames, index: np.ndarray,
                states: Optional[np.ndarray], count: int) -> list[float]:
    if count <= 0:
        return []
    picks = np.unique(np.linspace(0, len(index) - 1, min(count, len(index))).round().astype(int))
    latencies = []
    for k in picks:
        i = index[k]
        policy.encode_instruction(frames.instructions[i])  # the node encodes on change only
        state = None if states is None else states[k]
        started = time.perf_counter()
        policy.step(frames.images[i], frames.instructions[i], state)
        latencies.append((time.perf_counter() - started) * 1e3)
    return latencies


# -- scoring --------------------------------------------------------------------------------------
def episode_scores(frames: BagFrames, predicted: np.ndarray, name: str) -> list[EpisodeScore]:
    """One ``EpisodeScore`` per run of frames under one instruction (a frame left without a
    prediction, e.g. dropped live, does not split a run)."""
    valid = frames.scorable & np.all(np.isfinite(predicted), axis=1)
    times = (frames.log_times_ns - frames.log_times_ns[0]) / 1e9
    runs: list[list[int]] = []
    previous = ''
    for i, text in enumerate(frames.instructions):
        if text and text != previous:
            runs.append([])
        previous = text
        if valid[i]:
            runs[-1].append(i)
    episodes: list[EpisodeScore] = []
    for rows in (r for r in runs if r):
        episodes.append(EpisodeScore(
            bag=name, segment=len(episodes), instruction=frames.instructions[rows[0]],
            times_s=times[rows], predicted=predicted[rows].copy(),
            recorded=frames.actions[rows].copy(),
            errors=score_actions(predicted[rows], frames.actions[rows])))
    return episodes


def evaluate_bags(bags: Sequence[Path], options: EvalBagOptions, policy: Any = None,
                  recordings: Optional[Sequence[Path]] = None, source: str = 'policy',
                  progress: bool = True) -> BagEvalReport:
    """Score ``policy`` (offline) or the ``recordings`` (one per bag) on ``bags``.

    A bag that cannot be read is listed in ``report.failures`` and the others are scored.
    """
    if (policy is None) == (recordings is None):
        raise ValueError('give either a policy or one recording per bag')
    if recordings is not None and len(recordings) != len(bags):
        raise ValueError(f'{len(bags)} bags but {len(recordings)} recordings: give one '
                         f'recording per bag, in the same order')
    started = time.perf_counter()
    names = _unique_names(bags)
    episodes: list[EpisodeScore] = []
    latencies: list[float] = []
    skipped: dict[str, dict[str, int]] = {}
    failures: list[dict[str, str]] = []
    inference_s = 0.0
    if policy is not None and bags:
        _warm_up(policy)
    per_bag = -(-options.latency_samples // max(1, len(bags)))
    for k, bag in enumerate(tqdm(bags, desc='eval-bag', unit='bag', disable=not progress)):
        try:
            frames = read_bag_frames(bag, options.topics, options.instruction,
                                     options.contract)
            if policy is not None:
                predictions = predict_offline(policy, frames, options, per_bag)
            else:
                recorded = read_policy_recording(recordings[k], frames,
                                                 image_topic=options.topics.image)
                predictions = Predictions(recorded.actions, 0.0, recorded.latencies_ms)
                if recorded.unmatched:
                    frames.skipped['policy action not for a replayed frame'] += \
                        recorded.unmatched
                if recorded.cut_short:
                    frames.skipped['recording ended inside a decision'] += recorded.cut_short
                missing = int(np.sum(frames.scorable
                                     & ~np.all(np.isfinite(recorded.actions), axis=1)))
                if missing:
                    frames.skipped['frame without policy action'] += missing
        except (BagSourceError, ValueError) as exc:
            failures.append({'bag': str(bag), 'error': str(exc)})
            continue
        scored = episode_scores(frames, predictions.actions, names[k])
        if not scored:
            failures.append({'bag': str(bag), 'error': 'no frame has both an instruction in '
                                                       'force and a recorded action'})
        episodes.extend(scored)
        inference_s += predictions.inference_s
        latencies.extend(predictions.latencies_ms)
        skipped[names[k]] = dict(frames.skipped)
    return BagEvalReport(source=source, config=options.to_dict(), episodes=episodes,
                         latency=summarize_latency(latencies), inference_s=inference_s,
                         wall_time_s=time.perf_counter() - started, bags=len(bags),
                         skipped=skipped, failures=failures)


def _warm_up(policy: Any) -> None:
    """One throw-away step so lazy initialisation is not timed."""
    size = int(getattr(policy.config, 'image_size', 64))
    state = None
    if getattr(policy.config, 'use_proprio', False):
        state = np.zeros(8, np.float32)
        state[6] = 1.0  # the identity orientation: an all-zero quaternion is refused
    policy.step(np.zeros((size, size, 3), np.uint8), 'warm up', state)


def _unique_names(bags: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for bag in bags:
        name = Path(bag).name or str(bag)
        candidate, n = name, 1
        while candidate in names:
            n += 1
            candidate = f'{name}~{n}'
        names.append(candidate)
    return names


# -- CLI ------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('bags', nargs='+', type=Path, metavar='BAG',
                        help='rosbag2 folders (sqlite3 or mcap), or folders searched for them')
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument('--checkpoint', help='policy checkpoint folder to score offline')
    what.add_argument('--predictions', nargs='+', type=Path, metavar='RECORDING',
                      help="recordings of the policy node's output during a live replay, one "
                           'per BAG in the same order (vla-align record / the replay graph)')
    parser.add_argument('--out', type=Path, required=True, help='report folder')
    defaults = SourceTopics()
    for role in ('image', 'instruction', 'action', 'ee_pose', 'joint_states'):
        parser.add_argument(f'--{role.replace("_", "-")}-topic', dest=f'{role}_topic',
                            default=getattr(defaults, role),
                            help=f'recorded {role.replace("_", " ")} topic (default: %(default)s)')
    parser.add_argument('--instruction', help='instruction in force at every frame (for bags '
                                              'without an instruction topic)')
    parser.add_argument('--contract', default=None, metavar='FILE',
                        help='read the bags through this topic contract (a file or a shipped '
                             'name, e.g. panda_servo_teleop: Servo twists, TF...) instead of '
                             'the --*-topic options')
    parser.add_argument('--batch-size', type=int, default=32, help='frames per policy batch')
    parser.add_argument('--gripper-state', choices=GRIPPER_STATES, default='recorded',
                        help="gripper part of the state: the recorded command (default) or "
                             "the policy's own previous command (as the live node)")
    parser.add_argument('--latency-samples', type=int, default=50,
                        help='batch-1 policy steps timed for latency (0: none)')
    parser.add_argument('--device', default='auto', help='torch device: auto, cpu, cuda')
    parser.add_argument('--precision', default='auto', choices=('auto', 'fp32'))
    parser.add_argument('--torch-threads', type=int, default=0,
                        help='torch CPU threads (0: torch default)')
    parser.add_argument('--max-translation', type=float, default=ActionLimits().max_translation,
                        help='clamp of the policy node, m per step (default: %(default)s)')
    parser.add_argument('--max-rotation', type=float, default=ActionLimits().max_rotation,
                        help='clamp of the policy node, rad per step (default: %(default)s)')
    parser.add_argument('--max-plots', type=int, default=20, help='episode figures to draw')


def run(args: argparse.Namespace) -> int:
    try:
        options = EvalBagOptions(
            topics=SourceTopics(image=args.image_topic, instruction=args.instruction_topic,
                                action=args.action_topic, ee_pose=args.ee_pose_topic,
                                joint_states=args.joint_states_topic),
            instruction=args.instruction, batch_size=args.batch_size,
            gripper_state=args.gripper_state,
            limits=ActionLimits(args.max_translation, args.max_rotation),
            latency_samples=args.latency_samples if args.checkpoint else 0,
            contract=None if args.contract is None else load_contract(args.contract))
        bags = find_bags(args.bags)
    except ValueError as exc:
        print(f'vla-align eval-bag: {exc}', file=sys.stderr)
        return 2
    policy, recordings = None, None
    if args.checkpoint:
        policy = _load_policy(args)
        if policy is None:
            return 2
        source = f'checkpoint {args.checkpoint}'
    else:
        recordings = list(args.predictions)
        if len(recordings) != len(bags):
            print(f'vla-align eval-bag: {len(bags)} bags but {len(recordings)} recordings; '
                  f'give one recording per bag', file=sys.stderr)
            return 2
        source = 'recorded policy output: ' + ', '.join(map(str, recordings))
    report = evaluate_bags(bags, options, policy=policy, recordings=recordings, source=source)
    write_bag_report(report, args.out, max_plots=args.max_plots)
    print(format_summary(report))
    print(f'report: {args.out / REPORT_MD}')
    if not report.episodes:
        return 1
    return 1 if report.failures else 0


def _load_policy(args: argparse.Namespace) -> Any:
    import torch

    from vla_align.model.checkpoint import CheckpointError
    from vla_align.model.policy import Policy
    from vla_align.ros.sources import resolve_checkpoint_path

    if args.torch_threads > 0:
        torch.set_num_threads(args.torch_threads)
    path = resolve_checkpoint_path(args.checkpoint)
    try:
        return Policy.from_checkpoint(path, device=args.device, precision=args.precision)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f'vla-align eval-bag: cannot load checkpoint {str(path)!r}: {exc}',
              file=sys.stderr)
        return None

