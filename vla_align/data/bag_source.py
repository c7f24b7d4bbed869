"""Frames of any rosbag2 (ours or ``ros2 bag record``'s) as arrays the policy can be scored on.

``read_bag_frames`` turns one bag into a ``BagFrames``: one row per camera frame, with the
instruction in force at that frame, the robot state and the recorded action paired with it.
Unlike ``bag_io.read_episode_bag`` (the exact inverse of our own writer) it accepts what real
recordings hold:

* topic names are configurable (``SourceTopics``); only the image and action topics are
  required, and an instruction can be given instead of read (``instruction=``);
* ``sensor_msgs/Image`` in rgb8, bgr8, mono8, rgba8 or bgra8 (any row padding), or
  ``sensor_msgs/CompressedImage`` (jpeg/png, decoded with OpenCV);
* sqlite3 and MCAP storage (``rosbags`` reads both);
* a message that cannot be decoded is counted in ``BagFrames.skipped`` and left out, never
  fatal; a missing required topic, an empty bag or a bag that is not a bag raise
  ``BagSourceError`` with a one-line reason.

Pairing rules (log times, i.e. when the recorder received each message):
* instruction in force at a frame: the newest non-empty ``std_msgs/String`` on the instruction
  topic received at or before the frame; frames before the first one are not scored;
* robot state: the newest ``PoseStamped`` at or before the frame (NaN before the first);
* recorded action of a frame: the first ``Float32MultiArray`` received at or after the frame
  and before the next frame (our bags stamp both with the same time; a live recording
  receives the action a few ms after its frame); a frame without one is not scored;
* gripper command in force at a frame: the previous frame's recorded action gripper; at the
  first frame, the opening measured on ``/joint_states`` (as the policy node does), else 0.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_align.actions import ACTION_DIM, GRIPPER
from vla_align.data import bag_io
from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import open_bag_reader, read_bag_messages
from vla_align.ros import topics as contract
from vla_align.sim.types import STATE_DIM

COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
#: Channels and channel order of the raw encodings accepted (8 bits per channel).
RAW_ENCODINGS: dict[str, tuple[int, tuple[int, int, int]]] = {
    'rgb8': (3, (0, 1, 2)), 'bgr8': (3, (2, 1, 0)), 'rgba8': (4, (0, 1, 2)),
    'bgra8': (4, (2, 1, 0)), 'mono8': (1, (0, 0, 0)),
}
#: Panda finger joints whose positions add up to the gripper opening; fully open width (m).
GRIPPER_JOINTS = ('panda_finger_joint1', 'panda_finger_joint2')
GRIPPER_OPEN_WIDTH = 0.08


class BagSourceError(ValueError):
    """A bag that cannot be scored as asked (missing topic, empty, unreadable)."""


@dataclass(frozen=True)
class SourceTopics:
    """Topics read from a bag; defaults are the node graph's (DESIGN.md section 3)."""

    image: str = contract.IMAGE
    instruction: str = contract.INSTRUCTION
    action: str = contract.ACTION
    ee_pose: str = contract.EE_POSE
    joint_states: str = contract.JOINT_STATES

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


# -- decoding single messages ---------------------------------------------------------------------
def raw_image_to_rgb(msg: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a deserialized ``sensor_msgs/Image`` (any row padding)."""
    encoding = str(msg.encoding).lower()
    if encoding not in RAW_ENCODINGS:
        raise ValueError(f'image encoding {msg.encoding!r} is not supported '
                         f'({", ".join(RAW_ENCODINGS)}, or CompressedImage)')
    channels, order = RAW_ENCODINGS[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    if height <= 0 or width <= 0 or step < width * channels or data.size < height * step:
        raise ValueError(f'{encoding} image of {data.size} bytes does not fit {width}x{height} '
                         f'with step {step}')
    pixels = data[:height * step].reshape(height, step)[:, :width * channels]
    pixels = pixels.reshape(height, width, channels)
    return np.ascontiguousarray(pixels[..., list(order)])


def compressed_image_to_rgb(msg: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a deserialized ``sensor_msgs/CompressedImage`` (jpeg, png)."""
    import cv2

    data = np.asarray(msg.data, dtype=np.uint8).reshape(-1)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise ValueError(f'compressed image ({msg.format!r}, {data.size} bytes) cannot be '
                         f'decoded')
    return np.ascontiguousarray(bgr[..., ::-1])


def gripper_from_joint_state(msg: Any, joints: tuple[str, ...] = GRIPPER_JOINTS,
                             open_width: float = GRIPPER_OPEN_WIDTH) -> Optional[float]:
    """Gripper closure in [0, 1] measured from finger joint positions; None if not listed."""
    index = {name: i for i, name in enumerate(msg.name)}
    if not all(j in index and index[j] < len(msg.position) for j in joints):
        return None
    opening = sum(float(msg.position[index[j]]) for j in joints)
    if not np.isfinite(opening):
        return None
    return float(np.clip(1.0 - opening / open_width, 0.0, 1.0))


# -- reading a bag --------------------------------------------------------------------------------
_EXPECTED_TYPES = {
    'image': (rm.IMAGE, COMPRESSED_IMAGE),
    'instruction': (rm.STRING,),
    'action': (rm.FLOAT32_MULTI_ARRAY,),
    'ee_pose': (rm.POSE_STAMPED,),
    'joint_states': (rm.JOINT_STATE,),
}


def read_bag_frames(path: Path, topics: SourceTopics = SourceTopics(),
                    instruction: Optional[str] = None) -> BagFrames:
    """Every camera frame of the bag at ``path`` with what is needed to score a policy on it.

    ``instruction`` (if given) is in force at every frame and the bag's instruction topic is
    not read. Raises ``BagSourceError`` naming the bag and what is wrong.
    """
    path = Path(path)
    try:
        reader = open_bag_reader(path)
    except ValueError as exc:
        raise BagSourceError(str(exc)) from None
    try:
        return _read(reader, path, topics, instruction)
    finally:
        reader.close()


def _read(reader: Any, path: Path, topics: SourceTopics,
          instruction: Optional[str]) -> BagFrames:
    if reader.message_count == 0:
        raise BagSourceError(f'rosbag2 {path} is empty (0 messages)')
    available = {topic: info.msgtype for topic, info in reader.topics.items()}
    roles = {role: getattr(topics, role) for role in _EXPECTED_TYPES}
    required = ['image', 'action'] + ([] if instruction is not None else ['instruction'])
    absent = [role for role in required if roles[role] not in available]
    if absent:
        missing = [f'{roles[role]} ({role})' for role in absent]
        hint = '; or give the instruction as text' if 'instruction' in absent else ''
        raise BagSourceError(f'rosbag2 {path} lacks {", ".join(missing)}; it has '
                             f'{", ".join(sorted(available)) or "no topics"} (set the topic '
                             f'names to the recorded ones{hint})')
    for role, topic in roles.items():
        if topic in available and available[topic] not in _EXPECTED_TYPES[role]:
            raise BagSourceError(f'rosbag2 {path}: {topic} has type {available[topic]}, '
                                 f'expected {" or ".join(_EXPECTED_TYPES[role])}')
    wanted = {topic: role for role, topic in roles.items() if topic in available
              and not (role == 'instruction' and instruction is not None)}
    connections = [c for c in reader.connections if c.topic in wanted]

    skipped: Counter = Counter()
    images: list[np.ndarray] = []
    image_times: list[int] = []
    header_stamps: list[int] = []
    events: dict[str, list[tuple[int, Any]]] = {r: [] for r in _EXPECTED_TYPES if r != 'image'}
    try:
        for connection, timestamp, data in reader.messages(connections=connections):
            role = wanted[connection.topic]
            try:
                msg = rm.deserialize(data, connection.msgtype)
                value = _decode(role, msg, connection.msgtype)
            except Exception:  # noqa: BLE001 - corrupt bytes raise many kinds; count, go on
                skipped[f'undecodable {connection.topic}'] += 1
                continue
            if role == 'image':
                if images and value.shape != images[0].shape:
                    skipped[f'{connection.topic} frame of another size'] += 1
                    continue
                images.append(value)
                image_times.append(int(timestamp))
                header_stamps.append(rm.stamp_to_ns(msg.header))
            else:
                events[role].append((int(timestamp), value))
    except Exception as exc:  # noqa: BLE001 - a truncated storage file fails mid-iteration
        raise BagSourceError(f'cannot read rosbag2 {path}: {type(exc).__name__}: '
                             f'{exc}') from None
    if not images:
        raise BagSourceError(f'rosbag2 {path} has no decodable images on {topics.image} '
                             f'({dict(skipped) or "no messages"})')
    order = np.argsort(np.asarray(image_times), kind='stable')
    times = np.asarray(image_times, dtype=np.int64)[order]
    frames = np.stack(images)[order]
    stamps = np.asarray(header_stamps, dtype=np.int64)[order]
    for items in events.values():
        items.sort(key=lambda item: item[0])

    if instruction is not None:
        texts = [' '.join(instruction.split())] * len(times)
    else:
        texts = _newest_at(times, events['instruction'], default='')
    actions = _pair_actions(times, events['action'], skipped)
    states = np.full((len(times), STATE_DIM), np.nan, dtype=np.float32)
    poses = _newest_at(times, events['ee_pose'], default=None)
    for i, pose in enumerate(poses):
        if pose is not None:
            states[i, :7] = pose
    joint_grippers = _newest_at(times, events['joint_states'], default=None)
    first = joint_grippers[0] if joint_grippers[0] is not None else 0.0
    states[:, 7] = np.concatenate([[first], actions[:-1, GRIPPER]])
    missing_prev = ~np.isfinite(states[:, 7])  # previous frame had no action: measured value
    states[missing_prev, 7] = [g if g is not None else 0.0
                               for g, m in zip(joint_grippers, missing_prev, strict=True) if m]
    skipped['frame without instruction'] += sum(not t for t in texts)
    skipped['frame without action'] += int(np.sum(~np.all(np.isfinite(actions), axis=1)))
    return BagFrames(path=path, storage=_storage(path), images=frames, log_times_ns=times,
                     header_stamps_ns=stamps, instructions=texts, actions=actions,
                     states=states, skipped=Counter({k: v for k, v in skipped.items() if v}))


def _decode(role: str, msg: Any, msgtype: str) -> Any:
    if role == 'image':
        return compressed_image_to_rgb(msg) if msgtype == COMPRESSED_IMAGE else \
            raw_image_to_rgb(msg)
    if role == 'instruction':
        return ' '.join(str(msg.data).split())
    if role == 'action':
        action = rm.action_from_msg(msg)
        if not np.all(np.isfinite(action)):
            raise ValueError('non-finite action')
        return action
    if role == 'ee_pose':
        position, quaternion = rm.pose_from_msg(msg)
        return np.concatenate([position, quaternion]).astype(np.float32)
    return gripper_from_joint_state(msg)


def _newest_at(times: np.ndarray, items: list[tuple[int, Any]], default: Any) -> list[Any]:
    """For each time, the value of the newest item logged at or before it (else ``default``)."""
    if not items:
        return [default] * len(times)
    item_times = np.array([t for t, _ in items], dtype=np.int64)
    index = np.searchsorted(item_times, times, side='right') - 1
    values: list[Any] = []
    for i in index:
        # An empty instruction clears it; an undecodable gripper reading leaves it unknown.
        values.append(items[i][1] if i >= 0 else default)
    return values


def _pair_actions(times: np.ndarray, items: list[tuple[int, np.ndarray]],
                  skipped: Counter) -> np.ndarray:
    """(N, 7): the first action logged in [frame time, next frame time), NaN where none."""
    actions = np.full((len(times), ACTION_DIM), np.nan, dtype=np.float32)
    if not items:
        return actions
    item_times = np.array([t for t, _ in items], dtype=np.int64)
    first = np.searchsorted(item_times, times, side='left')
    ends = np.append(times[1:], np.iinfo(np.int64).max)
    used = 0
    for i, (start, end) in enumerate(zip(first, ends, strict=True)):
        if start < len(items) and item_times[start] < end:
            actions[i] = items[start][1]
            used += 1
    skipped['action not paired with a frame'] += len(items) - used
    return actions


def _storage(path: Path) -> str:
    from vla_align.data.bag_io import bag_storage

    try:
        return bag_storage(path)
    except (OSError, KeyError, TypeError, ValueError):
        return 'unknown'


# -- recordings of the policy node's output -------------------------------------------------------
TWIST_STAMPED = 'geometry_msgs/msg/TwistStamped'


@dataclass
class RecordedPredictions:
    """The policy node's actions in a recording, matched to the frames of the replayed bag."""

    actions: np.ndarray  # (N, 7) float32 per frame of the replayed bag (NaN: no action for it)
    latencies_ms: list[float]  # action received - frame received, where both were recorded
    unmatched: int  # actions whose stamp is no replayed frame's (holds, other sources)


def read_policy_recording(path: Path, frames: BagFrames,
                          action_topic: str = contract.ACTION,
                          twist_topic: str = contract.EE_TWIST,
                          image_topic: str = contract.IMAGE) -> RecordedPredictions:
    """Match the policy's recorded actions to the frames of ``frames`` (the replayed bag).

    The policy node publishes, per decision, one ``/vla/action`` and one ``/vla/ee_twist``
    whose header carries the stamp of the image the action was computed from (holds carry the
    current time). The k-th action is paired with the k-th twist, and its frame is the one
    whose image header stamp equals the twist's. Latency is measured when the recording also
    holds the replayed images: action log time - image log time.
    """
    wanted = {action_topic: rm.FLOAT32_MULTI_ARRAY, twist_topic: TWIST_STAMPED}
    try:
        messages = _read_optional(path, {**wanted, image_topic: rm.IMAGE}, required=wanted)
    except ValueError as exc:
        raise BagSourceError(str(exc)) from None
    actions, twists = messages[action_topic], messages[twist_topic]
    if len(actions) != len(twists):
        raise BagSourceError(f'recording {path} has {len(actions)} messages on {action_topic} '
                             f'but {len(twists)} on {twist_topic}; the policy node publishes '
                             f'one of each per decision')
    frame_of = {int(stamp): i for i, stamp in enumerate(frames.header_stamps_ns)}
    image_time = {rm.stamp_to_ns(msg.header): t for t, msg in messages.get(image_topic, [])}
    out = np.full((len(frames), ACTION_DIM), np.nan, dtype=np.float32)
    latencies: list[float] = []
    unmatched = 0
    for (action_time, action_msg), (_twist_time, twist_msg) in zip(actions, twists,
                                                                   strict=True):
        stamp = rm.stamp_to_ns(twist_msg.header)
        index = frame_of.get(stamp)
        if index is None or np.isfinite(out[index, 0]):
            unmatched += 1  # a hold, or a second answer to the same frame
            continue
        out[index] = rm.action_from_msg(action_msg)
        if stamp in image_time:
            latencies.append((action_time - image_time[stamp]) / 1e6)
    return RecordedPredictions(actions=out, latencies_ms=latencies, unmatched=unmatched)


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
