"""`vla-align record OUT`: record the live graph's topics to a rosbag2, losing nothing.

::

    vla-align record runs/rec                       # the contract topics, until Ctrl-C
    vla-align record runs/rec --topics /vla/action /vla/ee_twist --duration 30
    vla-align record runs/rec --all --storage sqlite3

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
before discovery are not recorded (as with ``ros2 bag record``).
"""
from __future__ import annotations

import argparse
from collections import Counter
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
    contract.EE_TWIST: 'geometry_msgs/msg/TwistStamped',
    contract.GRIPPER: rm.FLOAT32,
    contract.ALIGNMENT: rm.FLOAT32,
    contract.DIAGNOSTICS: 'diagnostic_msgs/msg/DiagnosticArray',
}
#: Recorded by default: the contract minus /diagnostics (text-heavy, not needed to score).
DEFAULT_TOPICS: tuple[str, ...] = tuple(t for t in CONTRACT_TYPES if t != contract.DIAGNOSTICS)
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
                self._writer.close()
                return
            dirty = True
            try:
                if kind == 'topic':
                    msgtype, offered = payload
                    self._connections[topic] = self._writer.add_connection(
                        topic, msgtype, typestore=rm.TYPESTORE,
                        offered_qos_profiles=[offered])
                else:
                    self._writer.write(self._connections[topic], payload[0], payload[1])
                    self.stats.written[topic] += 1
            except Exception as exc:  # noqa: BLE001 - keep draining; the summary says what failed
                self.stats.error = self.stats.error or f'{topic}: {type(exc).__name__}: {exc}'

    def close(self) -> RecordStats:
        self._queue.put(('stop', '', None))
        self._thread.join()
        return self.stats


# -- the ROS side ---------------------------------------------------------------------------------
def _node_class() -> type:
    """The rclpy node class (built on demand so the module imports without rclpy)."""
    from rclpy.node import Node
    from rclpy.qos import (
        DurabilityPolicy,
        HistoryPolicy,
        QoSProfile,
        ReliabilityPolicy,
    )

    from vla_align.ros.bag_player_node import message_class
    from vla_align.ros.params import (
        StartupError,
        declare_bool,
        declare_float,
        declare_str,
        declare_str_list,
    )

    def subscription_qos(kind: str) -> QoSProfile:
        if kind == 'sensor':
            return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                              reliability=ReliabilityPolicy.BEST_EFFORT,
                              durability=DurabilityPolicy.VOLATILE)
        return QoSProfile(history=HistoryPolicy.KEEP_ALL,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=(DurabilityPolicy.TRANSIENT_LOCAL if kind == 'latched'
                                      else DurabilityPolicy.VOLATILE))

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
            self._topic_subs: dict[str, Any] = {}
            for topic in self._wanted:
                if topic in CONTRACT_TYPES:
                    self._subscribe(topic, CONTRACT_TYPES[topic], self._contract_kind(topic))
            self._discover()
            self.create_timer(0.5, self._discover)
            self.get_logger().info(f'recording to {output} ({storage}): '
                                   f'{"all topics" if self._all else self._wanted}')

        @staticmethod
        def _contract_kind(topic: str) -> str:
            if topic in (contract.IMAGE, contract.CAMERA_INFO):
                return 'sensor'
            return 'latched' if topic == contract.INSTRUCTION else 'reliable'

        def _discover(self) -> None:
            """Subscribe to wanted (or, with all_topics, any) topics that have publishers."""
            for topic, types in self.get_topic_names_and_types():
                if topic in self._topic_subs or not types:
                    continue
                if not (self._all or topic in self._wanted):
                    continue
                infos = self.get_publishers_info_by_topic(topic)
                if not infos:
                    continue
                best_effort = any(i.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
                                  for i in infos)
                latched = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL
                              for i in infos)
                kind = 'sensor' if best_effort else 'latched' if latched else 'reliable'
                self._subscribe(topic, types[0], kind)

        def _subscribe(self, topic: str, msgtype: str, kind: str) -> None:
            try:
                cls = message_class(msgtype)
            except ValueError as exc:
                self.get_logger().warning(f'not recording {topic}: {exc}')
                self._topic_subs[topic] = None
                return
            self.recorder.add_topic(topic, msgtype, kind)
            clock = self.get_clock()
            put = self.recorder.put

            def on_message(data: bytes) -> None:
                put(topic, clock.now().nanoseconds, data)

            self._topic_subs[topic] = self.create_subscription(
                cls, topic, on_message, subscription_qos(kind), raw=True)

        def destroy_node(self) -> None:
            if getattr(self, 'recorder', None) is None:  # start-up failed before recording
                super().destroy_node()
                return
            for subscription in getattr(self, '_topic_subs', {}).values():
                if subscription is not None:
                    self.destroy_subscription(subscription)
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
    parser.add_argument('out', type=Path, help='rosbag2 folder to create')
    parser.add_argument('--topics', nargs='+', default=list(DEFAULT_TOPICS),
                        help='topics to record (default: the node graph topics but '
                             '/diagnostics)')
    parser.add_argument('--all', action='store_true', help='record every topic that appears')
    parser.add_argument('--storage', choices=STORAGES, default='mcap')
    parser.add_argument('--duration', type=float, default=None, metavar='S',
                        help='stop after S seconds (default: at Ctrl-C)')
    parser.add_argument('--flush-period', type=float, default=FLUSH_PERIOD_S, metavar='S',
                        help='make the bag durable every S seconds: at most that much is lost '
                             'if the recorder is killed (default: %(default)s)')


def run(args: argparse.Namespace) -> int:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from vla_align.ros.params import StartupError

    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    node = None
    try:
        node = _node_class()(output=str(args.out), topics=args.topics, all_topics=args.all,
                             storage=args.storage, flush_period_s=args.flush_period)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        print(f'recording {"all topics" if args.all else " ".join(args.topics)} to {args.out} '
              f'(Ctrl-C to stop)', flush=True)
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            executor.spin_once(timeout_sec=0.1)
    except StartupError as exc:
        print(f'vla-align record: {exc}', file=sys.stderr)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stats = node.recorder.stats if node is not None else None
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    print(stats.table())
    print(f'{sum(stats.written.values())} messages written to {stats.path}'
          + (f'; {stats.lost} NOT written ({stats.error})' if stats.lost or stats.error else ''))
    return 1 if stats.lost or stats.error else 0


if __name__ == '__main__':
    raise SystemExit(main())
