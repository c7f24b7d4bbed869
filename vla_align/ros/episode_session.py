"""Episodes as rosbag2 folders: numbering, topics of a contract, keys, and one bag per episode.

The plain half of the episode recorder (``episode_recorder`` is the ROS node): nothing here
needs rclpy, so the tests drive it with bytes and a fake clock.

* ``EpisodeSession`` writes each episode to ``output_dir/episode_NNNN/`` through a
  ``record.BagRecorder`` (a writer thread, durable every ``flush_period_s``), numbered after the
  highest existing folder, so a restarted recorder never overwrites one. Messages are routed
  to the running episode only: nothing before ``start`` or after ``end`` is written. Ending
  writes one ``std_msgs/String`` on ``/vla/episode`` (``EpisodeMetadata`` JSON) with the end time
  as log time, then closes the bag; discarding closes it and deletes the folder.
* Latched topics (transient local publishers publish once): their newest message is kept
  while idle and written at the start of each episode with the start time, so every episode
  has them.
* ``KeyReader`` reads single key presses from a terminal (no Enter, no echo; Ctrl-C still
  interrupts) or characters from a pipe, without blocking, for the node's timer to poll.
"""
from __future__ import annotations

import atexit
import codecs
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
import os
from pathlib import Path
import re
import select
import shutil
import sys
import threading
import time
from typing import Any, Optional

from vla_align.data import ros_messages as rm
from vla_align.data.contract import TopicContract
from vla_align.data.episode_meta import OUTCOMES, EpisodeMetadata
from vla_align.ros import topics
from vla_align.ros.record import FLUSH_PERIOD_S, KNOWN_TYPES, BagRecorder, RecordStats

EPISODE_PREFIX = 'episode_'
#: A folder (or anything) named episode_<digits>, possibly with a suffix (a recovery's).
_EPISODE_NAME = re.compile(r'^episode_(\d+)(?!\d)')
#: Longest operator note stored in the metadata (characters); longer ones are cut.
MAX_NOTES_LENGTH = 2000


class EpisodeError(RuntimeError):
    """A request the session refuses (no instruction, nothing running, ...): the reason."""


# -- naming ---------------------------------------------------------------------------------------
def episode_name(number: int) -> str:
    return f'{EPISODE_PREFIX}{number:04d}'


def next_episode_number(output_dir: Path) -> int:
    """One more than the highest episode number in ``output_dir`` (0 when there is none)."""
    numbers = [int(match.group(1)) for entry in Path(output_dir).iterdir()
               if (match := _EPISODE_NAME.match(entry.name))]
    return max(numbers, default=-1) + 1


# -- topics ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopicSpec:
    """A topic to record: its type if known in advance (else learnt from its publishers) and
    its QoS kind (record.subscription_qos: sensor, latched or reliable)."""

    topic: str
    msgtype: Optional[str]
    kind: str


def contract_topic_specs(contract: TopicContract) -> list[TopicSpec]:
    """What a recorder records for ``contract``: its topics but the metadata topic (the
    recorder writes that one), each with the type its role implies where there is one."""
    roles: dict[str, tuple[Optional[str], str]] = {}
    image = contract.image.topic
    roles[image] = (rm.IMAGE if not image.endswith('compressed')
                    else 'sensor_msgs/msg/CompressedImage', 'sensor')
    if contract.instruction.source == 'topic':
        roles[contract.instruction.topic] = (rm.STRING, 'latched')
    if contract.state.source == 'pose':
        roles[contract.state.topic] = (rm.POSE_STAMPED, 'reliable')
    elif contract.state.source == 'tf':
        roles[contract.state.topic] = ('tf2_msgs/msg/TFMessage', 'reliable')
        roles[contract.state.static_topic] = ('tf2_msgs/msg/TFMessage', 'latched')
    if contract.action.source == 'twist':
        roles[contract.action.topic] = ('geometry_msgs/msg/TwistStamped', 'reliable')
    elif contract.action.source == 'array':
        roles[contract.action.topic] = (rm.FLOAT32_MULTI_ARRAY, 'reliable')
    if contract.gripper.source == 'joints':
        roles[contract.gripper.topic] = (rm.JOINT_STATE, 'reliable')
    elif contract.gripper.source == 'topic':  # Float64MultiArray, Float32 or Float64
        roles[contract.gripper.topic] = (KNOWN_TYPES.get(contract.gripper.topic), 'reliable')
    if contract.episodes.boundaries == 'markers':
        roles[contract.episodes.markers_topic] = (rm.STRING, 'reliable')
    return [TopicSpec(topic, *roles.get(topic, (KNOWN_TYPES.get(topic), 'reliable')))
            for topic in contract.topics() if topic != contract.episodes.metadata_topic]


# -- keys -----------------------------------------------------------------------------------------
class KeyCommand(str, Enum):
    """What each key does; the value is the key."""

    START = 's'
    SUCCESS = 'y'
    FAILURE = 'n'
    DISCARD = 'd'
    QUIT = 'q'


KEY_HELP = 'keys: s start, y end as success, n end as failure, d discard, q quit'


def key_command(key: str) -> Optional[KeyCommand]:
    """The command of a key (either case), None for any other key."""
    try:
        return KeyCommand(key.lower())
    except ValueError:
        return None


class KeyReader:
    """Key presses from ``stream`` (a file object or descriptor), polled without blocking.

    A terminal is put in cbreak mode (no Enter needed, no echo; Ctrl-C still sends SIGINT) and
    restored by ``close`` or at interpreter exit; from a pipe or file each non-space character
    is a key as lines arrive. ``OSError`` when the terminal belongs to another process group
    (a background job reading it would be stopped by the kernel).
    """

    def __init__(self, stream: Any = None) -> None:
        stream = sys.stdin if stream is None else stream
        self._fd = stream if isinstance(stream, int) else stream.fileno()
        self.is_tty = os.isatty(self._fd)
        self.finished = False
        self._decoder = codecs.getincrementaldecoder('utf-8')(errors='replace')
        self._saved: Optional[list] = None
        if self.is_tty:
            import termios

            if os.tcgetpgrp(self._fd) != os.getpgrp():
                raise OSError('the terminal is not in the foreground (background job)')
            self._saved = termios.tcgetattr(self._fd)
            mode = termios.tcgetattr(self._fd)
            mode[3] &= ~(termios.ICANON | termios.ECHO)
            mode[6][termios.VMIN], mode[6][termios.VTIME] = 1, 0
            termios.tcsetattr(self._fd, termios.TCSANOW, mode)
            atexit.register(self.close)

    def poll(self) -> list[str]:
        keys: list[str] = []
        while not self.finished and select.select([self._fd], [], [], 0)[0]:
            try:
                data = os.read(self._fd, 256)
            except OSError:
                data = b''
            if not data:
                self.finished = True
                break
            keys += [c for c in self._decoder.decode(data) if not c.isspace()]
        return keys

    def close(self) -> None:
        """Give the terminal its settings back (idempotent)."""
        if self._saved is not None:
            import termios

            saved, self._saved = self._saved, None
            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, saved)
            except (OSError, termios.error):
                pass
            atexit.unregister(self.close)


# -- episodes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EpisodeSettings:
    output_dir: Path
    contract: str  # the contract's name, stored in the metadata
    robot: str
    operator: str = ''
    control_hz: Optional[float] = None
    storage: str = 'mcap'
    flush_period_s: float = FLUSH_PERIOD_S


@dataclass
class _Running:
    name: str
    path: Path
    instruction: str
    start_ns: int
    recorder: BagRecorder


@dataclass
class ClosedEpisode:
    """An episode that ended (outcome success / failure / unknown) or was discarded."""

    name: str
    path: Path
    outcome: str  # an EpisodeMetadata outcome, or 'discarded'
    stats: RecordStats
    metadata: Optional[EpisodeMetadata] = None  # None when discarded

    @property
    def lost(self) -> int:
        return self.stats.lost

    def summary(self) -> str:
        written = sum(self.stats.written.values())
        if self.outcome == 'discarded':
            return f'{self.name} discarded ({written} messages deleted)'
        line = f'{self.name} saved as {self.outcome}: {written} messages'
        if self.lost or self.stats.error:
            line += (f'; {self.lost} of {sum(self.stats.received.values())} NOT written'
                     + (f' ({self.stats.error})' if self.stats.error else ''))
        return line


class EpisodeSession:
    """Routes recorded messages to the running episode's bag; thread-safe.

    ``now_ns`` is the clock of start and end times (the node's clock; wall time by default).
    """

    def __init__(self, settings: EpisodeSettings,
                 now_ns: Callable[[], int] = time.time_ns) -> None:
        self.settings = settings
        Path(settings.output_dir).mkdir(parents=True, exist_ok=True)
        self._now_ns = now_ns
        self._lock = threading.Lock()
        self._topics: dict[str, tuple[str, str]] = {}
        self._latched: dict[str, bytes] = {}
        self._running: Optional[_Running] = None
        self.closed: list[ClosedEpisode] = []

    # -- state ------------------------------------------------------------------------------------
    @property
    def recording(self) -> bool:
        return self._running is not None

    @property
    def current(self) -> str:
        """The running episode's name, '' when idle."""
        running = self._running
        return running.name if running is not None else ''

    @property
    def current_instruction(self) -> str:
        running = self._running
        return running.instruction if running is not None else ''

    def messages(self) -> tuple[int, int]:
        """(received, written) of the running episode so far; (0, 0) when idle."""
        running = self._running
        if running is None:
            return 0, 0
        stats = running.recorder.stats  # sums of ints run without releasing the GIL
        return sum(stats.received.values()), sum(stats.written.values())

    @property
    def lost(self) -> int:
        """Messages received but not written, over the episodes kept."""
        return sum(e.lost for e in self.closed if e.outcome != 'discarded')

    # -- topics and messages ----------------------------------------------------------------------
    def add_topic(self, topic: str, msgtype: str, kind: str) -> None:
        """Record ``topic`` from now on (in the running episode too)."""
        with self._lock:
            self._topics[topic] = (msgtype, kind)
            if kind != 'latched':
                self._latched.pop(topic, None)
            if self._running is not None:
                self._running.recorder.add_topic(topic, msgtype, kind)

    def put(self, topic: str, log_time_ns: int, data: bytes) -> None:
        with self._lock:
            spec = self._topics.get(topic)
            if spec is not None and spec[1] == 'latched':
                self._latched[topic] = bytes(data)
            running = self._running
            if running is not None:
                running.recorder.put(topic, max(log_time_ns, running.start_ns), data)

    # -- episodes ---------------------------------------------------------------------------------
    def start(self, instruction: str) -> str:
        """Start the next episode; returns its name. ``EpisodeError`` says why not."""
        if not instruction:
            raise EpisodeError(f'no instruction: publish one on {topics.INSTRUCTION} first')
        settings = self.settings
        with self._lock:
            if self._running is not None:
                raise EpisodeError(f'{self._running.name} is recording: end or discard it '
                                   f'first')
            try:
                name = episode_name(next_episode_number(settings.output_dir))
                path = Path(settings.output_dir) / name
                recorder = BagRecorder(path, settings.storage, settings.flush_period_s)
            except (OSError, ValueError) as exc:
                raise EpisodeError(f'cannot create an episode in {settings.output_dir}: '
                                   f'{exc}') from None
            start_ns = self._now_ns()
            for topic, (msgtype, kind) in self._topics.items():
                recorder.add_topic(topic, msgtype, kind)
            recorder.add_topic(topics.EPISODE_METADATA, rm.STRING, 'latched')
            for topic, data in self._latched.items():
                recorder.put(topic, start_ns, data)
            self._running = _Running(name, path, instruction, start_ns, recorder)
        return name

    def _take(self) -> tuple[_Running, int]:
        with self._lock:
            running, self._running = self._running, None
            if running is None:
                raise EpisodeError('no episode is recording')
            return running, self._now_ns()

    def end(self, outcome: str, notes: str = '') -> ClosedEpisode:
        """Close the running episode with its outcome and metadata."""
        if outcome not in OUTCOMES:
            raise EpisodeError(f'outcome must be one of {OUTCOMES}, got {outcome!r}')
        running, end_ns = self._take()
        settings, stats = self.settings, running.recorder.stats
        metadata = EpisodeMetadata(
            instruction=running.instruction, outcome=outcome, robot=settings.robot,
            operator=settings.operator, notes=notes[:MAX_NOTES_LENGTH],
            control_hz=settings.control_hz, contract=settings.contract,
            source='episode_recorder',
            extra={'start_ns': running.start_ns, 'end_ns': end_ns,
                   'messages': {topic: stats.received[topic] for topic in self._topics}})
        running.recorder.put(topics.EPISODE_METADATA, end_ns,
                             bytes(rm.serialize(rm.string_msg(metadata.to_json()))))
        closed = ClosedEpisode(running.name, running.path, outcome, running.recorder.close(),
                               metadata)
        self.closed.append(closed)
        return closed

    def discard(self) -> ClosedEpisode:
        """Stop the running episode and delete its folder."""
        running, _end_ns = self._take()
        closed = ClosedEpisode(running.name, running.path, 'discarded', running.recorder.close())
        self.closed.append(closed)
        try:
            shutil.rmtree(running.path)
        except OSError as exc:
            raise EpisodeError(f'{running.name} stopped but its folder could not be deleted: '
                               f'{exc}') from None
        return closed

    def close(self, notes: str = '') -> Optional[ClosedEpisode]:
        """At shutdown: end a running episode as 'unknown' (kept, not judged)."""
        if self._running is None:
            return None
        return self.end('unknown', notes)
