"""rosbag2 folders: opening (with recovery), finding, making durable, and writing episodes.

``open_bag_reader`` and ``find_bags`` are how every part of the project opens and finds bags;
reading a bag into training frames is ``data.contract_reader``'s job. ``write_episode_bag``
writes one ``Episode`` (the simulator's collector, failure bags of evaluation) in the layout the
``sim_panda`` contract reads (names from ``BagTopics``):

=========================  ==============================  =============================
topic                      type                            messages
=========================  ==============================  =============================
``/vla/episode``           std_msgs/String (JSON)          1, at the start time (EpisodeMetadata)
``/vla/instruction``       std_msgs/String                 1, at the start time
``/camera/camera_info``    sensor_msgs/CameraInfo          one per control step
``/camera/image_raw``      sensor_msgs/Image (rgb8)        one per control step
``/joint_states``          sensor_msgs/JointState          one per step, where recorded
``/vla/ee_pose``           geometry_msgs/PoseStamped       one per control step
``/vla/gripper``           std_msgs/Float32                one per control step
``/vla/action``            std_msgs/Float32MultiArray      one per control step
=========================  ==============================  =============================

Time: step ``t`` is stamped ``start_ns + round(t * 1e9 / control_hz)`` in every header and as
the bag log time; messages without a header (action, gripper) carry the stamp of the image of
their step as log time, so an action is always paired with the frame it was computed from.
``start_ns`` defaults to 1 s (``DEFAULT_START_NS``) so that bags are byte-for-byte reproducible.

Format version: bags are written as rosbag2 metadata **version 8** (``BAG_VERSION``). Jazzy
writes version 8 and Kilted reads it; version 9 (Kilted's own) stores offered QoS profiles as a
YAML list that Jazzy's parser cannot read. Humble's parser reads only the fields it knows (up to
version 5) and does not reject higher numbers, but reading mcap there needs the
``rosbag2_storage_mcap`` plugin (sqlite3 is built in). We checked the Jazzy/Kilted metadata
parsers' source, not a Humble install.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
import logging
import os
from pathlib import Path
import shutil
from typing import Any

import numpy as np
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.rosbag2.storage_mcap import McapWriter
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Writer
from rosbags.serde import SerdeError
import yaml

from vla_align.data import ros_messages as rm
from vla_align.data.bag_recovery import RECOVERY_SUFFIX, recover_bag, unclosed_reason
from vla_align.data.episode import Episode
from vla_align.data.episode_meta import EpisodeMetadata

BAG_VERSION = 8
DEFAULT_START_NS = 1_000_000_000
#: Robot base frame of end-effector poses and joint states.
BASE_FRAME = 'panda_link0'
#: Bumped when the bag layout changes; stored in metadata.yaml ``custom_data``.
LAYOUT_VERSION = '2'
STORAGES: tuple[str, ...] = ('mcap', 'sqlite3')
#: Where ``collect`` stages episodes before moving them into place; never searched for bags.
STAGING_DIR = '.incomplete'
LOG = logging.getLogger('vla_align.data')


@dataclass(frozen=True)
class BagTopics:
    """Topic names of the episode bags the project writes: the node graph's names
    (``vla_align.ros.topics``; a test keeps the two equal) and the ``sim_panda`` contract's.

    ``episode`` holds the episode's ``EpisodeMetadata`` JSON (what it was, how it ended).
    """

    image: str = '/camera/image_raw'
    camera_info: str = '/camera/camera_info'
    instruction: str = '/vla/instruction'
    action: str = '/vla/action'
    joint_states: str = '/joint_states'
    ee_pose: str = '/vla/ee_pose'
    gripper: str = '/vla/gripper'
    episode: str = '/vla/episode'

    def __post_init__(self) -> None:
        names = self.per_step() + self.once()
        if len(set(names)) != len(names) or not all(n.startswith('/') for n in names):
            raise ValueError(f'bag topics must be distinct absolute names, got {names}')

    def per_step(self) -> tuple[str, ...]:
        """Topics with one message per control step (joint states only when recorded)."""
        return (self.camera_info, self.image, self.joint_states, self.ee_pose, self.gripper,
                self.action)

    def once(self) -> tuple[str, ...]:
        """Topics with exactly one message per episode."""
        return (self.episode, self.instruction)


DEFAULT_TOPICS = BagTopics()


@dataclass
class BagStats:
    """What a bag holds: messages per topic (written, or counted when read back)."""

    path: Path
    storage: str
    message_counts: dict[str, int]
    duration_ns: int
    start_ns: int

    @property
    def total_messages(self) -> int:
        return sum(self.message_counts.values())


def _qos(reliability: QosReliability, durability: QosDurability, history: QosHistory,
         depth: int) -> Qos:
    infinite = QosTime(0x7FFFFFFF, 0xFFFFFFFF)
    return Qos(history, depth, reliability, durability, infinite, infinite,
               QosLiveliness.AUTOMATIC, infinite, False)


#: Offered QoS recorded per topic role, so ``ros2 bag play`` republishes with DESIGN.md QoS.
SENSOR_QOS = _qos(QosReliability.BEST_EFFORT, QosDurability.VOLATILE, QosHistory.KEEP_LAST, 1)
LATCHED_QOS = _qos(QosReliability.RELIABLE, QosDurability.TRANSIENT_LOCAL,
                   QosHistory.KEEP_LAST, 1)
#: rclpy's default profile (reliable, volatile, keep last 10).
DEFAULT_QOS = _qos(QosReliability.RELIABLE, QosDurability.VOLATILE, QosHistory.KEEP_LAST, 10)


def _topic_types(topics: BagTopics) -> dict[str, tuple[str, Qos]]:
    """topic -> (message type, offered QoS), in the order connections are created."""
    return {
        topics.episode: (rm.STRING, LATCHED_QOS),
        topics.instruction: (rm.STRING, LATCHED_QOS),
        topics.camera_info: (rm.CAMERA_INFO, SENSOR_QOS),
        topics.image: (rm.IMAGE, SENSOR_QOS),
        topics.joint_states: (rm.JOINT_STATE, DEFAULT_QOS),
        topics.ee_pose: (rm.POSE_STAMPED, DEFAULT_QOS),
        topics.gripper: (rm.FLOAT32, DEFAULT_QOS),
        topics.action: (rm.FLOAT32_MULTI_ARRAY, DEFAULT_QOS),
    }


def step_stamps_ns(num_steps: int, control_hz: float,
                   start_ns: int = DEFAULT_START_NS) -> np.ndarray:
    """(T,) int64 stamps of control steps: ``start_ns + round(t * 1e9 / control_hz)``."""
    if not control_hz > 0:
        raise ValueError(f'control_hz must be positive, got {control_hz!r}')
    return start_ns + np.round(np.arange(num_steps) * (1e9 / control_hz)).astype(np.int64)


def episode_metadata(episode: Episode, robot: str = '', source: str = '') -> EpisodeMetadata:
    """The ``/vla/episode`` record of ``episode``: everything that is not a per-step array."""
    camera = episode.camera
    return EpisodeMetadata(
        instruction=episode.task.instruction,
        outcome='success' if episode.success else 'failure', robot=robot,
        control_hz=float(episode.control_hz), contract='sim_panda', source=source,
        task=episode.task.to_dict(), seed=int(episode.seed),
        extra={'num_steps': len(episode), 'metadata': episode.metadata,
               'camera': None if camera is None else {
                   'width': camera.width, 'height': camera.height,
                   'intrinsics': list(camera.intrinsics()), 'frame_id': camera.frame_id}})


def write_episode_bag(episode: Episode, path: Path, storage: str = 'mcap',
                      topics: BagTopics = DEFAULT_TOPICS,
                      start_ns: int = DEFAULT_START_NS, robot: str = '',
                      source: str = '') -> BagStats:
    """Write ``episode`` as a new rosbag2 folder at ``path`` (which must not exist).

    The layout is what the ``sim_panda`` contract reads (``config/contracts/sim_panda.yaml``):
    training reads these bags through the same contract reader as any robot's.
    ``storage`` is ``'mcap'`` (default) or ``'sqlite3'``. Returns the messages written per
    topic, which a reader can compare against to prove nothing was lost.
    """
    path = Path(path)
    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
    if path.exists():
        raise ValueError(f'{path} already exists; a bag is always written to a new folder')
    if len(episode) == 0:
        raise ValueError('cannot write an episode with no steps')
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    stamps = step_stamps_ns(len(episode), episode.control_hz, start_ns)
    metadata_text = episode_metadata(episode, robot, source).to_json()
    counts: dict[str, int] = defaultdict(int)
    writer = Writer(path, version=BAG_VERSION, storage_plugin=plugin)
    writer.set_custom_data('vla_align.layout_version', LAYOUT_VERSION)
    types = _topic_types(topics)
    if episode.joint_positions is None:
        types.pop(topics.joint_states)
    if episode.camera is None:
        types.pop(topics.camera_info)
    try:
        with writer:
            connections = {
                topic: writer.add_connection(topic, msgtype, typestore=rm.TYPESTORE,
                                             offered_qos_profiles=[qos])
                for topic, (msgtype, qos) in types.items()}

            def put(topic: str, stamp_ns: int, message: Any) -> None:
                writer.write(connections[topic], int(stamp_ns), rm.serialize(message))
                counts[topic] += 1

            put(topics.episode, start_ns, rm.string_msg(metadata_text))
            put(topics.instruction, start_ns, rm.string_msg(episode.task.instruction))
            camera = episode.camera
            frame_id = camera.frame_id if camera is not None else 'camera'
            for t, stamp in enumerate(stamps):
                if camera is not None:
                    put(topics.camera_info, stamp, rm.camera_info_msg(camera, stamp))
                put(topics.image, stamp, rm.image_msg(episode.images[t], stamp, frame_id))
                if episode.joint_positions is not None:
                    put(topics.joint_states, stamp,
                        rm.joint_state_msg(episode.joint_names, episode.joint_positions[t],
                                           stamp))
                put(topics.ee_pose, stamp,
                    rm.pose_msg(episode.ee_positions[t], episode.ee_orientations[t], stamp,
                                BASE_FRAME))
                put(topics.gripper, stamp, rm.float32_msg(episode.grippers[t]))
                put(topics.action, stamp, rm.action_msg(episode.actions[t]))
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)  # never leave a bag without its metadata
        raise
    return BagStats(path=path, storage=storage, message_counts=dict(counts),
                    duration_ns=int(stamps[-1] - start_ns), start_ns=int(start_ns))


def make_durable(writer: Writer) -> None:
    """Put everything written so far to an open rosbags ``Writer`` on disk.

    rosbags' McapWriter keeps up to 1 MiB of messages in an in-memory chunk and Sqlite3Writer
    commits only at close: a writer killed without this loses all of it. Afterwards the folder
    is an unclosed bag that ``open_bag_reader`` recovers up to this point.
    """
    storage = writer.storage
    if isinstance(storage, McapWriter):
        if storage.chunk.bio.tell():
            storage.close_chunk()
        storage.bio.flush()
        os.fsync(storage.bio.fileno())
    elif isinstance(storage, Sqlite3Writer):
        storage.conn.commit()
    elif storage is not None:
        raise TypeError(f'cannot make a {type(storage).__name__} durable')


def open_bag_reader(path: Path) -> Reader:
    """An opened ``rosbags`` Reader (close it); ``ValueError`` naming what is wrong.

    An unclosed recording (a recorder killed before closing its bag) is recovered first, with
    one WARNING on the ``vla_align.data`` logger saying what was recovered.
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f'no rosbag2 at {path}: the path does not exist')
    try:
        report = recover_bag(path)
    except ValueError as exc:
        raise ValueError(f'cannot recover unclosed rosbag2 {path}: {exc}') from None
    if report is not None:
        LOG.warning(report.summary())
    if not (path / 'metadata.yaml').is_file():
        raise ValueError(f'{path} is not a rosbag2 folder (it has no metadata.yaml)')
    try:
        reader = Reader(path)
        reader.open()
    except (ReaderError, OSError, KeyError) as exc:
        raise ValueError(f'cannot open rosbag2 {path}: {exc}') from None
    return reader


def is_bag_folder(path: Path) -> bool:
    """A rosbag2 folder: it has metadata.yaml, or it is an unclosed recording."""
    path = Path(path)
    return (path / 'metadata.yaml').is_file() or unclosed_reason(path) is not None


def find_bags(paths: Sequence[str | Path]) -> list[Path]:
    """Bag folders at or under each of ``paths``, in the order given, sorted under each path.

    A path that is a bag is returned as it is; a folder is searched (not below the bags found,
    nor in ``STAGING_DIR`` or unfinished recoveries); anything else yields nothing.
    """
    found: list[Path] = []
    for root in map(Path, paths):
        if is_bag_folder(root):
            found.append(root)
            continue
        under = []
        for folder, subfolders, _files in os.walk(root):
            subfolders[:] = [name for name in subfolders if name != STAGING_DIR
                             and not name.endswith(RECOVERY_SUFFIX)]
            for name in list(subfolders):
                if is_bag_folder(Path(folder, name)):
                    under.append(Path(folder, name))
                    subfolders.remove(name)
        found.extend(sorted(under))
    return list(dict.fromkeys(found))


def bag_stats(path: Path) -> BagStats:
    """Counts per topic found by reading every message (not the metadata's claims)."""
    reader = open_bag_reader(path)
    try:
        counts = {topic: 0 for topic in reader.topics}
        first, last = None, None
        for connection, timestamp, _data in reader.messages():
            counts[connection.topic] += 1
            first = timestamp if first is None else min(first, timestamp)
            last = timestamp if last is None else max(last, timestamp)
    except (ReaderError, OSError) as exc:
        raise ValueError(f'cannot read rosbag2 {path}: {exc}') from None
    finally:
        reader.close()
    return BagStats(path=Path(path), storage=bag_storage(path), message_counts=counts,
                    duration_ns=0 if first is None else last - first,
                    start_ns=0 if first is None else first)


def bag_storage(path: Path) -> str:
    """The storage plugin named in a bag's metadata.yaml (``'mcap'``, ``'sqlite3'``...)."""
    info = yaml.safe_load((Path(path) / 'metadata.yaml').read_text())
    return str(info['rosbag2_bagfile_information']['storage_identifier'])


def read_bag_messages(path: Path, wanted: dict[str, str]) -> dict[str, list[tuple[int, Any]]]:
    """Deserialized ``(log_time_ns, message)`` lists per topic, each sorted by log time.

    ``wanted`` maps topic -> expected message type; a missing topic or another type is a
    ``ValueError`` that names the topic.
    """
    reader = open_bag_reader(path)
    try:
        if reader.message_count == 0:
            raise ValueError(f'rosbag2 {path} is empty (0 messages)')
        available = reader.topics
        missing = [topic for topic in wanted if topic not in available]
        if missing:
            raise ValueError(f'rosbag2 {path} lacks required topics {missing} '
                             f'(it has {sorted(available)})')
        for topic, msgtype in wanted.items():
            if available[topic].msgtype != msgtype:
                raise ValueError(f'topic {topic} in {path} has type '
                                 f'{available[topic].msgtype}, expected {msgtype}')
        connections = [c for c in reader.connections if c.topic in wanted]
        messages: dict[str, list[tuple[int, Any]]] = {topic: [] for topic in wanted}
        for connection, timestamp, data in reader.messages(connections=connections):
            messages[connection.topic].append(
                (timestamp, rm.deserialize(data, connection.msgtype)))
    except (ReaderError, SerdeError, OSError) as exc:
        raise ValueError(f'cannot read rosbag2 {path}: {exc}') from None
    finally:
        reader.close()
    for items in messages.values():
        items.sort(key=lambda item: item[0])
    return messages
