"""Frames of any rosbag2 (ours or ``ros2 bag record``'s) as arrays a policy can be scored on.

``read_bag_frames`` turns one bag into a ``BagFrames``: one row per camera frame, with the
instruction in force at that frame, the robot state and the recorded action paired with it. It
reads through the project's one bag reader, ``data.contract_reader``, with a contract made
from the topic names given (``SourceTopics``): every camera frame is kept (not one per control
period), the recorded action of a frame is the first 7-value ``/vla/action`` array logged at or
after the frame and before the next one, the robot state the newest ``PoseStamped`` at or
before it, the gripper part of the state the previous frame's recorded gripper command (open at
the first frame). Only the image and action topics are required; the instruction may be given
instead of read; a message that cannot be decoded is counted in ``BagFrames.skipped`` and left
out; a missing required topic, an empty bag or a folder that is not a bag raise
``BagSourceError`` with a one-line reason.

``read_policy_recording`` matches what the policy node published during a live replay to the
replayed bag's frames.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_align.actions import ACTION_DIM
from vla_align.data import bag_io
from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import DEFAULT_TOPICS, open_bag_reader, read_bag_messages
from vla_align.data.contract import (
    ActionSpec,
    EpisodeSpec,
    GripperSpec,
    ImageSpec,
    InstructionSpec,
    StateSpec,
    TopicContract,
)
from vla_align.data.contract_reader import ContractBagError, read_contract_frames

COMPRESSED_IMAGE = rm.COMPRESSED_IMAGE


class BagSourceError(ValueError):
    """A bag that cannot be scored as asked (missing topic, empty, unreadable)."""


@dataclass(frozen=True)
class SourceTopics:
    """Topics read from a bag; defaults are the node graph's (DESIGN.md section 3)."""

    image: str = DEFAULT_TOPICS.image
    instruction: str = DEFAULT_TOPICS.instruction
    action: str = DEFAULT_TOPICS.action
    ee_pose: str = DEFAULT_TOPICS.ee_pose
    joint_states: str = DEFAULT_TOPICS.joint_states

    def __post_init__(self) -> None:
        for name, topic in self.__dict__.items():
            if not isinstance(topic, str) or not topic.startswith('/'):
                raise BagSourceError(f'topic {name} must be an absolute name, got {topic!r}')


@dataclass
class BagFrames:
    """One row per camera frame of a bag, aligned by frame index ``i``."""

    path: Path
    storage: str
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    log_times_ns: np.ndarray  # (N,) int64, when each frame was recorded
    header_stamps_ns: np.ndarray  # (N,) int64, the image header stamps
    instructions: list[str]  # (N,) instruction in force ('' where none)
    actions: np.ndarray  # (N, 7) float32 recorded action paired with the frame (NaN: none)
    states: np.ndarray  # (N, STATE_DIM) float32 ee xyz, quaternion xyzw, gripper (NaN: unknown)
    #: Messages left out, by reason ('undecodable /camera/image_raw', 'frame without action'...).
    skipped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def scorable(self) -> np.ndarray:
        """(N,) bool: frames with an instruction in force and a recorded action."""
        has_action = np.all(np.isfinite(self.actions), axis=1)
        return has_action & np.array([bool(text) for text in self.instructions], dtype=bool)

    @property
    def has_state(self) -> bool:
        return bool(len(self)) and bool(np.all(np.isfinite(self.states[:, :7])))


def find_bags(paths: list[Path]) -> list[Path]:
    """Bag folders named by ``paths``: a bag itself, or a folder searched for bags (sorted)."""
    bags: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            bags.append(path)  # not-a-bag paths are reported when read
            continue
        found = bag_io.find_bags([path])
        if not found:
            raise BagSourceError(f'{path} is neither a rosbag2 folder nor a folder of them')
        bags.extend(found)
    return bags


def scoring_contract(topics: SourceTopics, has_pose: bool, given_instruction: bool
                     ) -> TopicContract:
    """The contract ``read_bag_frames`` reads with: the given topic names, per-step action
    arrays, the pose where the bag has one. Its 0.1 Hz rate makes every action window end at
    the next frame, and its 5 s skew takes the newest pose however old (as the node does)."""
    return TopicContract(
        name='scoring', robot='any', control_rate_hz=0.1, max_skew_s=5.0, base_frame='',
        timestamps='log',
        image=ImageSpec(topics.image),
        instruction=InstructionSpec('given' if given_instruction else 'topic',
                                    topics.instruction),
        state=StateSpec('pose' if has_pose else 'none', topics.ee_pose),
        action=ActionSpec('array', topics.action), gripper=GripperSpec('action'),
        episodes=EpisodeSpec(success_only=False))


def read_bag_frames(path: Path, topics: SourceTopics = SourceTopics(),
                    instruction: Optional[str] = None,
                    contract: Optional[TopicContract] = None) -> BagFrames:
    """Every camera frame of the bag at ``path`` with what is needed to score a policy on it.

    ``instruction`` (if given) is in force at every frame and the bag's instruction topic is
    not read. With a ``contract`` (a robot's bags: Servo twists, TF, ...) the bag is read as
    training reads it -- one frame per control period, paired as the contract says -- and
    ``topics`` are not used. Raises ``BagSourceError`` naming the bag and what is wrong.
    """
    path = Path(path)
    try:
        reader = open_bag_reader(path)
        available = {topic: info.msgtype for topic, info in reader.topics.items()}
        reader.close()
    except ValueError as exc:
        raise BagSourceError(str(exc)) from None
    has_pose = (contract.state.source != 'none' if contract is not None
                else available.get(topics.ee_pose) == rm.POSE_STAMPED)
    every_frame = contract is None
    if contract is None:
        contract = scoring_contract(topics, has_pose, instruction is not None)
    try:
        frames = read_contract_frames(path, contract, instruction, every_frame=every_frame)
    except ContractBagError as exc:
        raise BagSourceError(str(exc).replace(" does not meet contract 'scoring'", '')) \
            from None
    states = frames.states
    if not has_pose:
        states[:, :7] = np.nan  # unknown, not zero: a policy that needs it cannot be scored
    skipped = Counter(frames.dropped)
    skipped.pop('frame without state', None)  # the scorer says when a policy needs it
    return BagFrames(path=path, storage=frames.storage, images=frames.images,
                     log_times_ns=frames.times_ns, header_stamps_ns=frames.header_stamps_ns,
                     instructions=frames.instructions, actions=frames.actions, states=states,
                     skipped=Counter({k: v for k, v in skipped.items() if v}))


# -- recordings of the policy node's output -------------------------------------------------------
HEADER = 'std_msgs/msg/Header'
#: The policy node's per-decision record of the frame it answers (ros.topics.ACTION_FRAME).
ACTION_FRAME = '/vla/action_frame'


@dataclass
class RecordedPredictions:
    """The policy node's actions in a recording, matched to the frames of the replayed bag."""

    actions: np.ndarray  # (N, 7) float32 per frame of the replayed bag (NaN: no action for it)
    latencies_ms: list[float]  # action received - frame received, where both were recorded
    unmatched: int  # actions whose stamp is no replayed frame's (holds, other sources)
    cut_short: int = 0  # 1 when the recording stopped between a decision's two messages


def read_policy_recording(path: Path, frames: BagFrames,
                          action_topic: str = DEFAULT_TOPICS.action,
                          frame_topic: str = ACTION_FRAME,
                          image_topic: str = DEFAULT_TOPICS.image) -> RecordedPredictions:
    """Match the policy's recorded actions to the frames of ``frames`` (the replayed bag).

    The policy node publishes, per decision, one ``/vla/action`` and one ``/vla/action_frame``
    (std_msgs/Header: the stamp of the image the action was computed from; holds carry the
    current time and frame_id 'hold'). The k-th action is paired with the k-th header, and its
    frame is the one whose image header stamp equals the header's. Latency is measured when
    the recording also holds the replayed images: action log time - image log time.

    A recorder stopped together with the policy (Ctrl-C on ``ros2 launch``) can end between the
    two messages of the last decision: one trailing unpaired message is left out and counted in
    ``cut_short``; any other difference in the counts is an error.
    """
    wanted = {action_topic: rm.FLOAT32_MULTI_ARRAY, frame_topic: HEADER}
    try:
        messages = _read_optional(path, {**wanted, image_topic: rm.IMAGE}, required=wanted)
    except ValueError as exc:
        raise BagSourceError(str(exc)) from None
    actions, headers = messages[action_topic], messages[frame_topic]
    cut_short = abs(len(actions) - len(headers))
    if cut_short == 1:
        paired = min(len(actions), len(headers))
        actions, headers = actions[:paired], headers[:paired]
    elif cut_short:
        raise BagSourceError(f'recording {path} has {len(actions)} messages on {action_topic} '
                             f'but {len(headers)} on {frame_topic}; the policy node publishes '
                             f'one of each per decision')
    frame_of = {int(stamp): i for i, stamp in enumerate(frames.header_stamps_ns)}
    image_time = {rm.stamp_to_ns(msg.header): t for t, msg in messages.get(image_topic, [])}
    out = np.full((len(frames), ACTION_DIM), np.nan, dtype=np.float32)
    latencies: list[float] = []
    unmatched = 0
    for (action_time, action_msg), (_header_time, header_msg) in zip(actions, headers,
                                                                   strict=True):
        stamp = rm.stamp_to_ns(header_msg)
        index = frame_of.get(stamp)
        if index is None or np.isfinite(out[index, 0]):
            unmatched += 1  # a hold, or a second answer to the same frame
            continue
        out[index] = rm.action_from_msg(action_msg)
        if stamp in image_time:
            latencies.append((action_time - image_time[stamp]) / 1e6)
    return RecordedPredictions(actions=out, latencies_ms=latencies, unmatched=unmatched,
                               cut_short=cut_short)


def _read_optional(path: Path, types: dict[str, str],
                   required: dict[str, str]) -> dict[str, list[tuple[int, Any]]]:
    """Like ``bag_io.read_bag_messages`` but topics outside ``required`` may be absent."""
    reader = open_bag_reader(path)
    try:
        present = {topic: msgtype for topic, msgtype in types.items()
                   if topic in reader.topics and reader.topics[topic].msgtype == msgtype}
    finally:
        reader.close()
    missing = [topic for topic in required if topic not in present]
    if missing:
        raise ValueError(f'recording {path} lacks {missing} (of types '
                         f'{[required[t] for t in missing]})')
    return read_bag_messages(path, present)
