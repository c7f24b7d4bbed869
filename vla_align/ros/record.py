"""`vla-align record OUT`: record the live graph's topics to a rosbag2, losing nothing.

::

    vla-align record runs/rec                       # the contract topics, until Ctrl-C
    vla-align record runs/rec --topics /vla/action /vla/action_frame --duration 30
    vla-align record runs/rec --all --storage sqlite3
    vla-align record --episodes runs/episodes --contract panda_servo_teleop   # one bag each

With ``--episodes DIR`` the episode recorder runs instead (``episode_recorder``: one rosbag2 per
episode, started and ended by keys or services, with its metadata); it shares this module's
``BagRecorder`` and ``RawSubscriptions``.

Also a node named ``record`` (``ros2 run vla_align record``, ``python -m vla_align.ros.record``)
for graph files, with the parameters ``output``, ``topics``, ``all_topics``, ``storage`` and
``flush_period_s``.

How nothing is lost: subscriptions take the serialized bytes (``raw=True``), the callback only
counts and queues them, and a writer thread writes them with ``rosbags`` (rosbag2 metadata
version 8, MCAP by default). Reliable topics are subscribed reliable with KEEP_ALL history (a
fast publisher is slowed down rather than overrun); topics whose publishers are best effort
(cameras) are subscribed best effort, latched ones transient local. On Ctrl-C / SIGTERM the
queue is drained and the bag closed; the summary compares messages received and written per
topic (they differ only if writing failed). A recorder killed hard (SIGKILL, power loss) loses at
most the last ``flush_period_s`` (0.5 s) plus what was still queued: the writer thread makes the
bag durable that often (``bag_io.make_durable``), and the project's bag readers recover the
unclosed folder (``bag_recovery.recover_bag``). Topics of the DESIGN.md contract are subscribed at
start; others (``--topics``, ``--all``) once a publisher is discovered, so messages published
before discovery are not recorded (as with ``ros2 bag record``). A topic whose publishers turn
out to have another type, or a QoS the subscription cannot receive (a best-effort publisher of
a reliable topic), is re-subscribed to match them, with a warning, instead of recording nothing.
"""
from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
import queue
import signal
import sys
import threading
import time
from typing import Any, Optional

from rosbags.rosbag2 import StoragePlugin, Writer

from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import (
    BAG_VERSION,
    DEFAULT_QOS,
    LATCHED_QOS,
    SENSOR_QOS,
    STORAGES,
    make_durable,
)
from vla_align.ros import topics as contract

NODE_NAME = 'record'
#: Topics of the node graph and their types: subscribed as soon as the recorder starts.
CONTRACT_TYPES: dict[str, str] = {
    contract.IMAGE: rm.IMAGE,
    contract.CAMERA_INFO: rm.CAMERA_INFO,
    contract.INSTRUCTION: rm.STRING,
    contract.JOINT_STATES: rm.JOINT_STATE,
    contract.EE_POSE: rm.POSE_STAMPED,
    contract.ACTION: rm.FLOAT32_MULTI_ARRAY,
    contract.ACTION_FRAME: 'std_msgs/msg/Header',
    contract.SERVO_TWIST: 'geometry_msgs/msg/TwistStamped',
    contract.GRIPPER_COMMAND: 'std_msgs/msg/Float64MultiArray',
    contract.GRIPPER: rm.FLOAT32,
    contract.ALIGNMENT: rm.FLOAT32,
    contract.DIAGNOSTICS: 'diagnostic_msgs/msg/DiagnosticArray',
}
#: Recorded by default: the contract minus /diagnostics (text-heavy, not needed to score).
DEFAULT_TOPICS: tuple[str, ...] = tuple(t for t in CONTRACT_TYPES if t != contract.DIAGNOSTICS)
#: Types of the standard topics: those of a robot cell too (MoveIt Servo, a forward command
#: gripper controller, joy). A subscription of the wrong type is re-made once a publisher shows
#: its own (``RawSubscriptions.discover``).
KNOWN_TYPES: dict[str, str] = {
    **CONTRACT_TYPES,
    contract.JOY: 'sensor_msgs/msg/Joy',
    contract.EPISODE_METADATA: rm.STRING,
}
KINDS = ('sensor', 'latched', 'reliable')
#: Longest time, in seconds, a written message stays only in memory (what a SIGKILL loses).
FLUSH_PERIOD_S = 0.5


@dataclass
class RecordStats:
    """Messages received from DDS and written to the bag, per topic."""

    path: Path
    received: Counter = field(default_factory=Counter)
    written: Counter = field(default_factory=Counter)
    error: str = ''

    @property
    def lost(self) -> int:
        return sum(self.received.values()) - sum(self.written.values())

    def table(self) -> str:
        lines = [f'{"topic":32} {"received":>9} {"written":>9}']
        for topic in sorted(set(self.received) | set(self.written)):
            lines.append(f'{topic:32} {self.received[topic]:9d} {self.written[topic]:9d}')
        return '\n'.join(lines)


class BagRecorder:
    """Thread-safe front of a rosbags ``Writer``: ``put`` queues, a thread writes.

    ``add_topic`` and ``put`` may be called from any thread; ``close`` drains the queue and
    closes the bag (call it once). What was written is made durable every ``flush_period_s``.
    A topic's bag connection is made with its first message (at close for a topic that got
    none) from its newest declaration: a topic declared again with another type before any
    message (a recorder that re-subscribed) has one connection, and the bag's readers one type.
    """

    def __init__(self, path: Path, storage: str = 'mcap',
                 flush_period_s: float = FLUSH_PERIOD_S) -> None:
        if storage not in STORAGES:
            raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
        if not flush_period_s > 0:
            raise ValueError(f'flush_period_s must be positive, got {flush_period_s!r}')
        self.flush_period_s = float(flush_period_s)
        path = Path(path)
        if path.exists():
            raise ValueError(f'{path} already exists; a recording goes to a new folder')
        plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
        self.stats = RecordStats(path=path)
        # Opened, written and closed in the writer thread: sqlite3 handles stay in one thread.
        self._writer = Writer(path, version=BAG_VERSION, storage_plugin=plugin)
        self._connections: dict[str, Any] = {}
        self._connected_as: dict[str, tuple[str, Any]] = {}
        self._declared: dict[str, tuple[str, Any]] = {}  # declarations not yet connections
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._opened = threading.Event()
        self._open_error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._write_loop, daemon=True,
                                        name='bag-writer')
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            raise ValueError(f'cannot create {path}: {self._open_error}')

    def add_topic(self, topic: str, msgtype: str, kind: str) -> None:
        """Declare a topic (``kind`` is its QoS role: sensor, latched or reliable)."""
        offered = {'sensor': SENSOR_QOS, 'latched': LATCHED_QOS}.get(kind, DEFAULT_QOS)
        self._queue.put(('topic', topic, (msgtype, offered)))

    def put(self, topic: str, log_time_ns: int, data: bytes) -> None:
        with self._lock:
            self.stats.received[topic] += 1
        self._queue.put(('message', topic, (log_time_ns, data)))

    def _write_loop(self) -> None:
        try:
            self._writer.open()
        except Exception as exc:  # noqa: BLE001 - reported by the constructor
            self._open_error = exc
            return
        finally:
            self._opened.set()
        next_flush, dirty = time.monotonic() + self.flush_period_s, False
        while True:
            try:
                kind, topic, payload = self._queue.get(
                    timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                kind = ''
            if time.monotonic() >= next_flush:  # also while messages keep arriving
                if dirty:
                    try:
                        make_durable(self._writer)
                    except Exception as exc:  # noqa: BLE001 - the summary says what failed
                        self.stats.error = self.stats.error or f'flush: {exc}'
                next_flush, dirty = time.monotonic() + self.flush_period_s, False
            if not kind:
                continue
            if kind == 'stop':
                for topic in [t for t in self._declared if t not in self._connections]:
                    self._connect(topic)  # topics without messages are listed too
                self._writer.close()
                return
            if kind == 'topic':
                if self._connected_as.get(topic) == payload:
                    self._declared.pop(topic, None)
                else:
                    self._declared[topic] = payload
                continue
            dirty = True
            try:
                if topic in self._declared:
                    self._connect(topic)
                self._writer.write(self._connections[topic], payload[0], payload[1])
                self.stats.written[topic] += 1
            except Exception as exc:  # noqa: BLE001 - keep draining; the summary says what failed
                self._error(topic, exc)

    def _connect(self, topic: str) -> None:
        msgtype, offered = self._declared.pop(topic)
        try:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=rm.TYPESTORE, offered_qos_profiles=[offered])
            self._connected_as[topic] = (msgtype, offered)
        except Exception as exc:  # noqa: BLE001 - its messages are then counted as not written
            self._error(topic, exc)

    def _error(self, topic: str, exc: Exception) -> None:
        self.stats.error = self.stats.error or f'{topic}: {type(exc).__name__}: {exc}'

    def close(self) -> RecordStats:
        self._queue.put(('stop', '', None))
        self._thread.join()
        return self.stats


# -- the ROS side ---------------------------------------------------------------------------------
def topic_kind(topic: str) -> str:
    """QoS role of a contract topic, by name: cameras best effort, the instruction latched."""
    if topic in (contract.IMAGE, contract.CAMERA_INFO):
        return 'sensor'
    return 'latched' if topic == contract.INSTRUCTION else 'reliable'


def subscription_qos(kind: str) -> Any:
    """Subscription QoS of a kind: best effort for sensors (never refuses a publisher),
    reliable KEEP_ALL otherwise (a fast publisher is slowed down rather than overrun)."""
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    if kind == 'sensor':
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                          reliability=ReliabilityPolicy.BEST_EFFORT,
                          durability=DurabilityPolicy.VOLATILE)
    return QoSProfile(history=HistoryPolicy.KEEP_ALL,
                      reliability=ReliabilityPolicy.RELIABLE,
                      durability=(DurabilityPolicy.TRANSIENT_LOCAL if kind == 'latched'
                                  else DurabilityPolicy.VOLATILE))


def publishers_kind(infos: Sequence[Any]) -> str:
    """The kind whose subscription matches every one of these publishers (rclpy endpoint infos):
    sensor if one is best effort, latched if all are transient local, reliable otherwise."""
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    if any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for i in infos):
        return 'sensor'
    if all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos):
        return 'latched'
    return 'reliable'


def _matches(kind: str, publisher_kind: str) -> bool:
    """Whether a subscription of ``kind`` receives from publishers of ``publisher_kind``."""
    if kind == 'sensor':
        return True
    if kind == 'latched':
        return publisher_kind == 'latched'
    return publisher_kind != 'sensor'


class RawSubscriptions:
    """A node's recording subscriptions: serialized bytes (``raw=True``) handed to ``sink``.

    ``sink(topic, log_time_ns, data)`` gets every message with the node clock's time of
    reception; ``on_subscribed(topic, msgtype, kind)`` is told of each subscription (the
    recorder declares the topic in its bag). ``discover`` subscribes to wanted topics once a
    publisher appears, and re-subscribes a topic whose publishers turn out to have another type
    or a QoS the first subscription cannot receive (DDS would drop their messages silently).
    """

    def __init__(self, node: Any, sink: Callable[[str, int, bytes], None],
                 on_subscribed: Callable[[str, str, str], None]) -> None:
        self._node = node
        self._sink = sink
        self._on_subscribed = on_subscribed
        #: topic -> (msgtype, kind); None for a topic whose type is not installed.
        self.subscribed: dict[str, Optional[tuple[str, str]]] = {}
        self._subscriptions: dict[str, Any] = {}

    def subscribe(self, topic: str, msgtype: str, kind: str) -> bool:
        from vla_align.ros.bag_player_node import message_class

        try:
            cls = message_class(msgtype)
        except ValueError as exc:
            self._node.get_logger().warning(f'not recording {topic}: {exc}')
            self.subscribed[topic] = None
            return False
        old = self._subscriptions.pop(topic, None)
        if old is not None:
            self._node.destroy_subscription(old)
        self.subscribed[topic] = (msgtype, kind)
        self._on_subscribed(topic, msgtype, kind)
        clock, sink = self._node.get_clock(), self._sink

        def on_message(data: bytes) -> None:
            sink(topic, clock.now().nanoseconds, data)

        self._subscriptions[topic] = self._node.create_subscription(
            cls, topic, on_message, subscription_qos(kind), raw=True)
        return True

    def discover(self, wanted: Optional[Collection[str]]) -> None:
        """Subscribe to ``wanted`` topics (None: every topic) that have publishers."""
        for topic, _types in self._node.get_topic_names_and_types():
            if wanted is not None and topic not in wanted:
                continue
            if topic in self.subscribed and self.subscribed[topic] is None:
                continue  # type not installed: said once
            infos = self._node.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            offered = publishers_kind(infos)
            types = [i.topic_type for i in infos]
            current = self.subscribed.get(topic)
            if current is None:
                self.subscribe(topic, types[0], offered)
                continue
            msgtype, kind = current
            if msgtype in types and _matches(kind, offered):
                continue
            new_type = msgtype if msgtype in types else types[0]
            self._node.get_logger().warning(
                f're-subscribing {topic} as {new_type} ({offered}): its publishers offer that, '
                f'not {msgtype} ({kind}); nothing they sent before was received')
            self.subscribe(topic, new_type, offered)

    def without_publishers(self, wanted: Collection[str]) -> list[str]:
        """The ``wanted`` topics that no publisher is matched with yet (sorted).

        Matched, not merely discovered: DDS matches each reliable endpoint pair on its own, so on
        a busy machine a recorder can receive camera frames for a second before the pose and
        the commands of the same episode -- which then cannot be paired and are lost to
        training. rclpy's ``Subscription.get_publisher_count`` (Iron on) counts matched
        publishers; older rclpy falls back to the graph's publisher count.
        """
        missing = []
        for topic in wanted:
            subscription = self._subscriptions.get(topic)
            if subscription is None:
                missing.append(topic)
                continue
            count = getattr(subscription, 'get_publisher_count', None)
            if (count() if count is not None else self._node.count_publishers(topic)) == 0:
                missing.append(topic)
        return sorted(missing)

    def destroy(self) -> None:
        for subscription in self._subscriptions.values():
            self._node.destroy_subscription(subscription)
        self._subscriptions.clear()


def _node_class() -> type:
    """The rclpy node class (built on demand so the module imports without rclpy)."""
    from rclpy.node import Node

    from vla_align.ros.params import (
        StartupError,
        declare_bool,
        declare_float,
        declare_str,
        declare_str_list,
    )

    class RecorderNode(Node):
        """Subscribes to topics as raw bytes and hands them to a ``BagRecorder``."""

        def __init__(self, output: Optional[str] = None, topics: Optional[list[str]] = None,
                     all_topics: Optional[bool] = None, storage: Optional[str] = None,
                     flush_period_s: Optional[float] = None, **node_kwargs: Any) -> None:
            super().__init__(NODE_NAME, **node_kwargs)
            self.recorder: Optional[BagRecorder] = None
            output = output or declare_str(self, 'output', '',
                                           'rosbag2 folder to create (required)')
            wanted = topics or declare_str_list(self, 'topics', list(DEFAULT_TOPICS),
                                                'topics to record')
            if all_topics is None:
                all_topics = declare_bool(self, 'all_topics', False,
                                          'record every topic that appears')
            storage = storage or declare_str(self, 'storage', 'mcap', 'bag storage',
                                             STORAGES)
            if flush_period_s is None:
                flush_period_s = declare_float(
                    self, 'flush_period_s', FLUSH_PERIOD_S,
                    'seconds between making the bag durable (what a SIGKILL loses)', low=0.01)
            if not output:
                raise StartupError(f'{NODE_NAME}: set the parameter output to a new folder')
            try:
                self.recorder = BagRecorder(Path(output), storage, flush_period_s)
            except (ValueError, OSError) as exc:
                raise StartupError(f'{NODE_NAME}: cannot record to {output}: {exc}') from None
            self._wanted = list(dict.fromkeys(wanted))
            self._all = bool(all_topics)
            self._raw = RawSubscriptions(self, self.recorder.put, self.recorder.add_topic)
            for topic in self._wanted:
                if topic in CONTRACT_TYPES:
                    self._raw.subscribe(topic, CONTRACT_TYPES[topic], topic_kind(topic))
            self._discover()
            self.create_timer(0.5, self._discover)
            self.get_logger().info(f'recording to {output} ({storage}): '
                                   f'{"all topics" if self._all else self._wanted}')

        def _discover(self) -> None:
            self._raw.discover(None if self._all else self._wanted)

        def destroy_node(self) -> None:
            if getattr(self, 'recorder', None) is None:  # start-up failed before recording
                super().destroy_node()
                return
            self._raw.destroy()
            stats = self.recorder.close()
            self.recorder = None
            log = self.get_logger().error if stats.lost or stats.error else self.get_logger().info
            log(f'bag closed: {stats.path}, {sum(stats.written.values())} of '
                f'{sum(stats.received.values())} messages written'
                + (f'; error: {stats.error}' if stats.error else '') + '\n' + stats.table())
            super().destroy_node()

    return RecorderNode


def main(args: Optional[list[str]] = None) -> int:
    """Entry point of the ``record`` node (graph files, ``ros2 run``)."""
    from vla_align.ros.runner import run_node

    return run_node(_node_class(), NODE_NAME, args)


# -- CLI ------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('out', type=Path, nargs='?',
                        help='rosbag2 folder to create (a plain recording)')
    parser.add_argument('--topics', nargs='+', default=None,
                        help='topics to record (default: the node graph topics but '
                             '/diagnostics)')
    parser.add_argument('--all', action='store_true', help='record every topic that appears')
    parser.add_argument('--storage', choices=STORAGES, default='mcap')
    parser.add_argument('--duration', type=float, default=None, metavar='S',
                        help='stop after S seconds (default: at Ctrl-C)')
    parser.add_argument('--flush-period', type=float, default=FLUSH_PERIOD_S, metavar='S',
                        help='make the bag durable every S seconds: at most that much is lost '
                             'if the recorder is killed (default: %(default)s)')
    episodes = parser.add_argument_group(
        'episodes', 'instead of OUT: one rosbag2 per episode, started and ended by keys or by '
                    'the services of the episode_recorder node (vla_align.ros.episode_recorder)')
    episodes.add_argument('--episodes', type=Path, default=None, metavar='DIR',
                          help='folder of episodes (episode_0000/, episode_0001/, ...)')
    episodes.add_argument('--contract', default='panda_servo_teleop', metavar='FILE',
                          help='topic contract whose topics are recorded: a file or a shipped '
                               'name (default: %(default)s)')
    episodes.add_argument('--robot', default='',
                          help="robot stored with each episode (default: the contract's)")
    episodes.add_argument('--operator', default='', help='who drives the robot')
    episodes.add_argument('--require-publishers', action=argparse.BooleanOptionalAction,
                          default=True,
                          help='refuse to start an episode while a contract topic has no '
                               'publisher (default: on)')
    episodes.add_argument('--keyboard', action=argparse.BooleanOptionalAction, default=None,
                          help='keys s start, y success, n failure, d discard, q quit '
                               '(default: on when stdin is a terminal)')


@contextmanager
def cli_ros() -> Iterator[threading.Event]:
    """rclpy for a command: Ctrl-C and SIGTERM set the yielded event instead of raising, so
    the command's loop ends and its bags are closed cleanly; rclpy is shut down at the end."""
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        rclpy.try_shutdown()


def spin_until_stopped(node: Any, stop: threading.Event, duration: Optional[float]) -> None:
    """Spin ``node`` until ``stop`` is set, ``duration`` s have passed, or a callback raises
    ``KeyboardInterrupt`` (a node that was asked to quit, as run_node handles it)."""
    from rclpy.executors import SingleThreadedExecutor

    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = None if duration is None else time.monotonic() + duration
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        executor.remove_node(node)


def run(args: argparse.Namespace) -> int:
    if args.episodes is not None:
        if args.out is not None:
            return _usage_error('give OUT (one recording) or --episodes DIR, not both')
        if args.topics is not None or args.all:
            return _usage_error("--topics and --all are for OUT; episodes record the "
                                "contract's topics (--contract)")
        from vla_align.ros.episode_recorder import run_cli

        return run_cli(args)
    if args.out is None:
        return _usage_error('give OUT (a rosbag2 folder to create) or --episodes DIR')
    from vla_align.ros.params import StartupError

    topics = args.topics or list(DEFAULT_TOPICS)
    with cli_ros() as stop:
        try:
            node = _node_class()(output=str(args.out), topics=topics, all_topics=args.all,
                                 storage=args.storage, flush_period_s=args.flush_period)
        except StartupError as exc:
            print(f'vla-align record: {exc}', file=sys.stderr)
            return 2
        try:
            print(f'recording {"all topics" if args.all else " ".join(topics)} to {args.out} '
                  f'(Ctrl-C to stop)', flush=True)
            spin_until_stopped(node, stop, args.duration)
        finally:
            stats = node.recorder.stats
            node.destroy_node()
    print(stats.table())
    print(f'{sum(stats.written.values())} messages written to {stats.path}'
          + (f'; {stats.lost} NOT written ({stats.error})' if stats.lost or stats.error else ''))
    return 1 if stats.lost or stats.error else 0


def _usage_error(message: str) -> int:
    print(f'vla-align record: {message}', file=sys.stderr)
    return 2


if __name__ == '__main__':
    raise SystemExit(main())
