"""Any rosbag2 -> training frames and episodes, through a topic contract (``data.contract``).

The project's one bag reader for learning and scoring: training (``vla-align train --contract``),
offline scoring (``bag_source.read_bag_frames``) and tests read bags here; the simulator's own
bags are the ``sim_panda`` contract. Messages are read with ``bag_io.open_bag_reader`` (which
recovers unclosed recordings) and images decoded by ``data.images.decode_image``.

Timing: images, poses, TF and twists by their header stamps (the sensor's or sender's time;
``timestamps: log`` uses when the recorder received them instead), everything else (gripper
arrays, strings) by log time. A pose published just before its frame can reach a recorder just
after it, so log times would pair a frame with the previous state. Camera frames are put on the
control grid: a frame is kept when at least 3/4 of a control period has passed since the last
kept one (a 30 Hz camera at a 10 Hz contract keeps every third). For a kept frame at time t:

* state: the newest pose (or TF chain) at or before t, at most ``max_skew_s`` old; quaternion
  made unit length (the policy's statistics pick its sign, ``data.state``); a pose in another
  frame than ``base_frame`` is refused;
* instruction: given on the command line, else the newest non-empty message of the instruction
  topic at or before t, else the episode metadata's;
* action ``array``: the first 7-value array logged in [t, t + period + skew) and before the next
  kept frame (the simulator logs it with its frame; a live policy a few ms after);
* action ``twist`` (MoveIt Servo's input, speed units): the command in force at the end of the
  step, i.e. the newest twist at or before t + period, logged after t - max_skew (an older one
  means the stream had stopped), times the period -> metres and radians per step;
* action ``pose_delta``: the change of the state to the next kept frame (when there is one
  within 1.5 periods);
* gripper (topic or finger joints): state = the value in force at t; action = the value in
  force at t + period; before the first message, its value. ``action``: the array's 7th value,
  and the state is the previous kept frame's.

A frame without a valid pairing is dropped and counted by reason (``dropped``); a bag that cannot
meet the contract (missing topic, wrong type, another robot) raises ``ContractBagError`` with one
line saying why.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_align.actions import ACTION_DIM, GRIPPER
from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import bag_storage, open_bag_reader
from vla_align.data.contract import TopicContract
from vla_align.data.episode import CameraGeometry, Episode, TaskInfo
from vla_align.data.episode_meta import EpisodeMetadata, EpisodeMetadataError
from vla_align.data.images import decode_image
from vla_align.data.state import STATE_DIM, unit_quaternion
from vla_align.data.tf_buffer import TransformBuffer

#: Types each role accepts (the bag's own type decides how it is read).
ROLE_TYPES: dict[str, tuple[str, ...]] = {
    'image': (rm.IMAGE, rm.COMPRESSED_IMAGE),
    'camera_info': (rm.CAMERA_INFO,),
    'instruction': (rm.STRING,),
    'pose': (rm.POSE_STAMPED,),
    'tf': (rm.TF_MESSAGE,),
    'twist': (rm.TWIST_STAMPED,),
    'array': (rm.FLOAT32_MULTI_ARRAY,),
    'gripper': (rm.FLOAT64_MULTI_ARRAY, rm.FLOAT32_MULTI_ARRAY, rm.FLOAT32, rm.FLOAT64),
    'joints': (rm.JOINT_STATE,),
    'metadata': (rm.STRING,),
    'markers': (rm.STRING,),
}
#: What a role is called in messages to the user.
ROLE_LABELS = {'array': 'action', 'twist': 'action', 'pose': 'state', 'tf': 'state',
               'joints': 'gripper'}
KEEP_FRACTION = 0.75  # of a control period between kept frames
#: Roles whose messages carry a header: timed by header.stamp (``timestamps: header``).
HEADER_TIMED = ('image', 'pose', 'twist')


class ContractBagError(ValueError):
    """A bag that does not meet the contract; the message is one line naming why."""


@dataclass
class ContractFrames:
    """The kept frames of one bag, in time order, with what was paired to each (NaN: nothing)."""

    path: Path
    storage: str
    images: np.ndarray  # (N, H, W, 3) uint8 RGB
    times_ns: np.ndarray  # (N,) int64 log times
    header_stamps_ns: np.ndarray  # (N,) int64 image header stamps
    instructions: list[str]
    states: np.ndarray  # (N, STATE_DIM) float32
    actions: np.ndarray  # (N, 7) float32
    segments: np.ndarray  # (N,) int64 episode index within the bag (-1: outside an episode)
    metadata: Optional[EpisodeMetadata]
    camera: Optional[CameraGeometry]
    dropped: Counter = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: frames with an instruction, a state (where the contract has one) and an
        action."""
        return (np.all(np.isfinite(self.actions), axis=1)
                & np.all(np.isfinite(self.states), axis=1)
                & np.array([bool(t) for t in self.instructions], dtype=bool)
                & (self.segments >= 0))


@dataclass
class BagEpisodes:
    """What one bag gave: its episodes, and why frames or episodes were left out."""

    path: Path
    episodes: list[Episode]
    frames_read: int
    dropped: Counter

    @property
    def frames_used(self) -> int:
        return sum(len(e) for e in self.episodes)


# -- reading ------------------------------------------------------------------------------------
def read_contract_frames(path: Path, contract: TopicContract, instruction: Optional[str] = None,
                         every_frame: bool = False) -> ContractFrames:
    """The frames of the bag at ``path`` paired as the contract says (module docstring).

    ``every_frame`` keeps every camera frame (scoring a recording frame by frame) instead of
    one per control period.
    """
    path = Path(path)
    if contract.instruction.source == 'given' and not (instruction or '').strip():
        raise ContractBagError(f'contract {contract.name!r} takes the instruction from the '
                               f'command line (--instruction TEXT)')
    try:
        reader = open_bag_reader(path)
    except ValueError as exc:
        raise ContractBagError(str(exc)) from None
    try:
        streams = _read_streams(reader, path, contract, instruction)
    finally:
        reader.close()
    return _pair(path, contract, streams, instruction, every_frame)


def read_contract_episodes(path: Path, contract: TopicContract,
                           instruction: Optional[str] = None) -> BagEpisodes:
    """The bag's episodes (one per bag, or per start/end marker pair), valid frames only."""
    frames = read_contract_frames(path, contract, instruction)
    dropped = Counter(frames.dropped)
    meta = frames.metadata
    if meta is not None and meta.robot and meta.robot != contract.robot:
        raise ContractBagError(f'{path}: recorded on robot {meta.robot!r}, the contract '
                               f'{contract.name!r} is for {contract.robot!r}')
    if contract.episodes.success_only and meta is not None and meta.outcome != 'success':
        dropped[f'episode outcome {meta.outcome}'] += len(frames)
        return BagEpisodes(path, [], len(frames), dropped)
    valid = frames.valid
    episodes = []
    for segment in sorted(set(frames.segments[frames.segments >= 0].tolist())):
        rows = np.flatnonzero(valid & (frames.segments == segment))
        if rows.size == 0:
            continue
        episodes.append(_episode(frames, rows, contract, segment))
    return BagEpisodes(path, episodes, len(frames), dropped)


def _episode(frames: ContractFrames, rows: np.ndarray, contract: TopicContract,
             segment: int) -> Episode:
    meta = frames.metadata
    task = (TaskInfo.from_dict({**meta.task, 'instruction': frames.instructions[rows[0]]})
            if meta is not None and meta.task else
            TaskInfo(instruction=frames.instructions[rows[0]]))
    states = frames.states[rows]
    return Episode(
        task=task, seed=int(meta.seed) if meta is not None and meta.seed is not None else 0,
        images=frames.images[rows], actions=frames.actions[rows].astype(np.float32),
        ee_positions=states[:, :3].copy(), ee_orientations=states[:, 3:7].copy(),
        grippers=states[:, 7].copy(), success=meta is None or meta.outcome == 'success',
        control_hz=contract.control_rate_hz, camera=frames.camera,
        metadata={**((meta.extra.get('metadata') or {}) if meta is not None else {}),
                  'bag': str(frames.path), 'contract': contract.name, 'segment': segment,
                  **({'recorded_by': meta.source, 'operator': meta.operator}
                     if meta is not None else {})})


@dataclass
class _Streams:
    images: list[np.ndarray] = field(default_factory=list)
    image_times: list[int] = field(default_factory=list)
    image_stamps: list[int] = field(default_factory=list)
    image_frame: str = ''
    instructions: list[tuple[int, str]] = field(default_factory=list)
    poses: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (7,) xyz + quat
    tf: Optional[TransformBuffer] = None
    actions: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (6,) or (7,)
    grippers: list[tuple[int, float]] = field(default_factory=list)
    metadata: Optional[EpisodeMetadata] = None
    intrinsics: Optional[tuple[float, float, float, float]] = None  # first CameraInfo's K
    markers: list[tuple[int, str]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def _roles(contract: TopicContract, instruction: Optional[str]) -> dict[str, tuple[str, bool]]:
    """role -> (topic, required)."""
    c = contract
    roles = {'image': (c.image.topic, True), 'metadata': (c.episodes.metadata_topic, False)}
    if c.image.camera_info:
        roles['camera_info'] = (c.image.camera_info, False)
    if c.instruction.source == 'topic' and instruction is None:
        roles['instruction'] = (c.instruction.topic, c.instruction.source == 'topic')
    if c.state.source == 'pose':
        roles['pose'] = (c.state.topic, True)
    elif c.state.source == 'tf':
        roles['tf'] = (c.state.topic, True)
        roles['tf_static'] = (c.state.static_topic, False)
    if c.action.source in ('twist', 'array'):
        roles[c.action.source] = (c.action.topic, True)
    if c.gripper.source == 'topic':
        roles['gripper'] = (c.gripper.topic, True)
    elif c.gripper.source == 'joints':
        roles['joints'] = (c.gripper.topic, True)
    if c.episodes.boundaries == 'markers':
        roles['markers'] = (c.episodes.markers_topic, True)
    return roles


def _read_streams(reader: Any, path: Path, contract: TopicContract,
                  instruction: Optional[str]) -> _Streams:
    if reader.message_count == 0:
        raise ContractBagError(f'rosbag2 {path} is empty (0 messages)')
    available = {topic: info.msgtype for topic, info in reader.topics.items()}
    roles = _roles(contract, instruction)
    missing = [f'{topic} ({ROLE_LABELS.get(role, role)})'
               for role, (topic, required) in roles.items()
               if required and topic not in available]
    if missing:
        hint = ('; or give the instruction (--instruction)' if any('instruction' in m
                                                                   for m in missing) else '')
        raise ContractBagError(f'rosbag2 {path} does not meet contract {contract.name!r}: '
                               f'missing {", ".join(missing)}{hint}')
    by_topic: dict[str, list[str]] = {}
    for role, (topic, _required) in roles.items():
        if topic not in available:
            continue
        expected = ROLE_TYPES['tf' if role == 'tf_static' else role]
        if available[topic] not in expected:
            raise ContractBagError(f'rosbag2 {path}: {topic} ({ROLE_LABELS.get(role, role)}) '
                                   f'has type '
                                   f'{available[topic]}, the contract needs '
                                   f'{" or ".join(expected)}')
        by_topic.setdefault(topic, []).append(role)
    streams = _Streams()
    if 'tf' in roles:
        streams.tf = TransformBuffer()
    connections = [c for c in reader.connections if c.topic in by_topic]
    try:
        for connection, timestamp, data in reader.messages(connections=connections):
            for role in by_topic[connection.topic]:
                try:
                    msg = rm.deserialize(data, connection.msgtype)
                    when = int(timestamp)
                    if contract.timestamps == 'header' and role in HEADER_TIMED:
                        when = rm.stamp_to_ns(msg.header) or when  # 0: an unstamped sender
                    _take(streams, role, when, msg, connection.msgtype, contract)
                except Exception:  # noqa: BLE001 - corrupt bytes raise many kinds
                    streams.skipped[f'undecodable {connection.topic}'] += 1
    except Exception as exc:  # noqa: BLE001 - a truncated storage file fails mid-iteration
        raise ContractBagError(f'cannot read rosbag2 {path}: {type(exc).__name__}: '
                               f'{exc}') from None
    if not streams.images:
        raise ContractBagError(f'rosbag2 {path} has no decodable images on '
                               f'{contract.image.topic} ({dict(streams.skipped) or "none"})')
    return streams


def _take(s: _Streams, role: str, t: int, msg: Any, msgtype: str,
          contract: TopicContract) -> None:
    """Decode one message into its stream (raises on a message that is unusable)."""
    if role == 'image':
        image = decode_image(msg)
        if s.images and image.shape != s.images[0].shape:
            s.skipped[f'{contract.image.topic} frame of another size'] += 1
            return
        s.images.append(np.array(image))
        s.image_times.append(t)
        s.image_stamps.append(rm.stamp_to_ns(msg.header))
        s.image_frame = s.image_frame or str(msg.header.frame_id)
    elif role == 'camera_info':
        if s.intrinsics is None:
            k = np.asarray(msg.k, dtype=np.float64).reshape(-1)
            s.intrinsics = (float(k[0]), float(k[4]), float(k[2]), float(k[5]))
    elif role == 'instruction':
        s.instructions.append((t, ' '.join(str(msg.data).split())))
    elif role == 'metadata':
        try:
            s.metadata = EpisodeMetadata.from_json(str(msg.data))
        except EpisodeMetadataError:
            s.skipped[f'{contract.episodes.metadata_topic} message that is not episode '
                      f'metadata'] += 1
    elif role == 'markers':
        s.markers.append((t, str(msg.data)))
    elif role == 'pose':
        frame = str(msg.header.frame_id)
        if frame and contract.base_frame and frame.lstrip('/') != contract.base_frame:
            s.skipped[f'pose in frame {frame!r}, not {contract.base_frame!r}'] += 1
            return
        position, quaternion = rm.pose_from_msg(msg)
        if not np.all(np.isfinite(position)):
            raise ValueError('non-finite position')
        s.poses.append((t, np.concatenate([position, unit_quaternion(quaternion)])))
    elif role in ('tf', 'tf_static'):
        s.tf.add_message(msg, t, static=role == 'tf_static',
                         use_header=contract.timestamps == 'header')
    elif role == 'twist':
        frame = str(msg.header.frame_id)
        if frame and contract.base_frame and frame.lstrip('/') != contract.base_frame:
            s.skipped[f'twist in frame {frame!r}, not {contract.base_frame!r}'] += 1
            return
        lin, ang = msg.twist.linear, msg.twist.angular
        velocity = np.array([lin.x, lin.y, lin.z, ang.x, ang.y, ang.z], np.float64)
        if not np.all(np.isfinite(velocity)):
            raise ValueError('non-finite twist')
        s.actions.append((t, velocity))
    elif role == 'array':
        action = rm.action_from_msg(msg)
        if not np.all(np.isfinite(action)):
            raise ValueError('non-finite action')
        s.actions.append((t, action))
    elif role == 'gripper':
        values = np.asarray(msg.data, dtype=np.float64).reshape(-1)
        value = float(values[contract.gripper.index])
        if not np.isfinite(value):
            raise ValueError('non-finite gripper command')
        s.grippers.append((t, contract.gripper.closure(value)))
    elif role == 'joints':
        index = {name: i for i, name in enumerate(msg.name)}
        if not all(n in index and index[n] < len(msg.position) for n in contract.gripper.names):
            return  # joint states without the finger joints are normal (arm-only messages)
        opening = sum(float(msg.position[index[n]]) for n in contract.gripper.names)
        if not np.isfinite(opening):
            raise ValueError('non-finite finger positions')
        s.grippers.append((t, contract.gripper.closure(opening)))


# -- pairing ------------------------------------------------------------------------------------
def _pair(path: Path, contract: TopicContract, s: _Streams, instruction: Optional[str],
          every_frame: bool) -> ContractFrames:
    order = np.argsort(np.asarray(s.image_times, dtype=np.int64), kind='stable')
    all_times = np.asarray(s.image_times, dtype=np.int64)[order]
    period = int(round(contract.period_s * 1e9))
    skew = int(round(contract.max_skew_s * 1e9))
    keep = _control_grid(all_times, period, every_frame)
    rows = order[keep]
    times = all_times[keep]
    dropped = Counter(s.skipped)
    if len(times) < len(all_times):
        dropped['frames between control steps (not dropped: subsampled)'] += \
            len(all_times) - len(times)
    for stream in (s.instructions, s.poses, s.actions, s.grippers, s.markers):
        stream.sort(key=lambda item: item[0])
    n = len(times)
    next_times = np.append(times[1:], np.iinfo(np.int64).max)

    # instruction
    if instruction is not None:
        texts = [' '.join(instruction.split())] * n
    else:
        texts = [text for text in _newest(times, [(t, x) for t, x in s.instructions if x],
                                          None, default='')]
        if contract.instruction.source in ('metadata', 'topic') and s.metadata is not None:
            texts = [text or s.metadata.instruction for text in texts]

    # state
    states = np.full((n, STATE_DIM), np.nan, dtype=np.float32)
    if contract.state.source == 'pose':
        for i, pose in enumerate(_newest(times, s.poses, skew, default=None)):
            if pose is not None:
                states[i, :7] = pose
    elif contract.state.source == 'tf':
        for i, t in enumerate(times):
            pose = s.tf.lookup(contract.state.parent, contract.state.child, int(t), skew)
            if pose is not None:
                states[i, :7] = pose
    else:
        states[:, :7] = 0.0

    # actions (arm part; gripper below)
    actions = np.full((n, ACTION_DIM), np.nan, dtype=np.float32)
    source = contract.action.source
    if source == 'array':
        _pair_arrays(times, next_times, s.actions, period + skew, actions)
    elif source == 'twist':
        commands = _newest(times + period, s.actions, period + skew, default=None)
        for i, velocity in enumerate(commands):
            if velocity is not None:
                actions[i, :6] = velocity * contract.period_s
    else:  # pose_delta
        for i in range(n - 1):
            if times[i + 1] - times[i] <= 1.5 * period:
                actions[i, :6] = _pose_delta(states[i, :7], states[i + 1, :7])

    # gripper
    if contract.gripper.source == 'action':
        previous = np.concatenate([[0.0], actions[:-1, GRIPPER]]).astype(np.float32)
        states[:, 7] = np.where(np.isfinite(previous), previous, 0.0)
    else:
        first = s.grippers[0][1] if s.grippers else np.nan
        in_force = _newest(times, s.grippers, None, default=first)
        after = _newest(times + period, s.grippers, None, default=first)
        states[:, 7] = np.asarray(in_force, dtype=np.float32)
        actions[:, GRIPPER] = np.where(np.isfinite(actions[:, 0]),
                                       np.asarray(after, np.float32), np.nan)

    segments = _segments(times, s.markers, contract)
    for reason, bad in (('frame without instruction', [not t for t in texts]),
                        ('frame without state', ~np.all(np.isfinite(states), axis=1)),
                        ('frame without action', ~np.all(np.isfinite(actions), axis=1)),
                        ('frame outside an episode (markers)', segments < 0)):
        count = int(np.sum(bad))
        if count:
            dropped[reason] += count
    camera = None
    if s.images:
        height, width = s.images[0].shape[:2]
        fx, fy, cx, cy = s.intrinsics or (0.0, 0.0, 0.0, 0.0)
        camera = CameraGeometry(width=width, height=height, fx=fx, fy=fy, cx=cx, cy=cy,
                                frame_id=s.image_frame or 'camera')
    return ContractFrames(
        path=path, storage=_storage(path), images=np.stack([s.images[i] for i in rows]),
        times_ns=times, header_stamps_ns=np.asarray(s.image_stamps, np.int64)[rows],
        instructions=texts, states=states, actions=actions, segments=segments,
        metadata=s.metadata, camera=camera, dropped=dropped)


def _control_grid(times: np.ndarray, period: int, every_frame: bool) -> np.ndarray:
    if every_frame or len(times) == 0:
        return np.arange(len(times))
    kept = [0]
    for i in range(1, len(times)):
        if times[i] - times[kept[-1]] >= KEEP_FRACTION * period:
            kept.append(i)
    return np.asarray(kept)


def _newest(times: np.ndarray, items: list[tuple[int, Any]], max_age: Optional[int],
            default: Any) -> list[Any]:
    """Per time: the newest item logged at or before it (no older than ``max_age`` ns)."""
    if not items:
        return [default] * len(times)
    item_times = np.array([t for t, _ in items], dtype=np.int64)
    index = np.searchsorted(item_times, times, side='right') - 1
    out = []
    for t, i in zip(times, index, strict=True):
        if i < 0 or (max_age is not None and t - item_times[i] > max_age):
            out.append(default if i < 0 else None)
        else:
            out.append(items[i][1])
    return out


def _pair_arrays(times: np.ndarray, next_times: np.ndarray, items: list[tuple[int, Any]],
                 window: int, out: np.ndarray) -> None:
    if not items:
        return
    item_times = np.array([t for t, _ in items], dtype=np.int64)
    first = np.searchsorted(item_times, times, side='left')
    for i, (start, t, end) in enumerate(zip(first, times, next_times, strict=True)):
        if start < len(items) and item_times[start] < min(end, t + window):
            out[i] = items[start][1]


def _pose_delta(current: np.ndarray, following: np.ndarray) -> np.ndarray:
    """Translation and rotation (rotation vector, as roll/pitch/yaw deltas) from current to
    following, in the base frame."""
    from scipy.spatial.transform import Rotation

    rotation = (Rotation.from_quat(following[3:]) * Rotation.from_quat(current[3:]).inv())
    return np.concatenate([following[:3] - current[:3], rotation.as_rotvec()])


def _segments(times: np.ndarray, markers: list[tuple[int, str]],
              contract: TopicContract) -> np.ndarray:
    """Episode index per frame: 0 for a bag-per-episode contract; with markers, the k-th
    start..end span (JSON ``{"event": "start"}`` / ``{"event": "end"}``), -1 outside."""
    if contract.episodes.boundaries == 'bag':
        return np.zeros(len(times), dtype=np.int64)
    import json

    spans: list[list[int]] = []
    for t, text in markers:
        try:
            event = json.loads(text).get('event')
        except (ValueError, AttributeError):
            continue
        if event == 'start':
            spans.append([t, np.iinfo(np.int64).max])
        elif event == 'end' and spans and spans[-1][1] == np.iinfo(np.int64).max:
            spans[-1][1] = t
    out = np.full(len(times), -1, dtype=np.int64)
    for k, (start, end) in enumerate(spans):
        out[(times >= start) & (times < end)] = k
    return out


def _storage(path: Path) -> str:
    try:
        return bag_storage(path)
    except (OSError, KeyError, TypeError, ValueError):
        return 'unknown'
