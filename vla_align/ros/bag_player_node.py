"""bag_player_node: publish a rosbag2's recorded messages on their topics at the recorded rate.

The live half of rosbag replay (DESIGN.md section 1, way 3): the bag's camera, instruction and
robot-state messages go to the running policy node, whose output a recorder writes to a new bag
(``config/replay_graph.yaml``; scored with ``vla-align eval-bag BAG --predictions REC``).

* Messages are published as recorded (the serialized bytes, so header stamps are the bag's):
  the policy node's ``/vla/action_frame`` then carries the stamp of the bag frame it answers.
* Pace: message ``i`` is published ``(t_i - t_0) / rate`` seconds after the start; ``rate`` 2.0
  replays twice as fast. Messages logged at the same time are published image last, so the
  policy sees the robot state of a frame before the frame (as in the simulator).
* QoS per type, as in the node graph: images and camera info best effort, ``std_msgs/String``
  (instructions) reliable and latched, everything else reliable.
* It starts once every node in ``wait_for_nodes`` subscribes to the first image topic and the
  publishers have matched (or after ``wait_timeout_s``, with a warning), then waits
  ``start_delay_s`` more so slower matches (robot state, the recorder) complete.
* Progress and the end are reported on ``/vla/replay_status`` (``std_msgs/String`` JSON,
  latched). With ``exit_when_done`` the node stops ``linger_s`` after the last message.
"""
from __future__ import annotations

from dataclasses import dataclass
import importlib
import json
from pathlib import Path
import threading
import time
from typing import Any, Optional

from rclpy.node import Node
from rclpy.qos import QoSProfile
from std_msgs.msg import String

from vla_align.data.bag_io import open_bag_reader
from vla_align.ros import qos, topics
from vla_align.ros.params import (
    StartupError,
    declare_bool,
    declare_float,
    declare_str,
    declare_str_list,
)
from vla_align.ros.runner import run_node

NODE_NAME = 'bag_player_node'
REPLAY_STATUS = '/vla/replay_status'
#: The policy's inputs: what is replayed by default (its outputs are what gets recorded).
DEFAULT_TOPICS = (topics.CAMERA_INFO, topics.IMAGE, topics.INSTRUCTION, topics.EE_POSE,
                  topics.JOINT_STATES)
SENSOR_TYPES = ('sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage',
                'sensor_msgs/msg/CameraInfo')
LATCHED_TYPES = ('std_msgs/msg/String',)


def message_class(msgtype: str) -> Any:
    """The rclpy message class of ``'pkg/msg/Name'``; ``ValueError`` if it is not installed."""
    package, _, name = msgtype.partition('/msg/')
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f'message type {msgtype} is not installed') from None


def qos_for_type(msgtype: str) -> QoSProfile:
    if msgtype in SENSOR_TYPES:
        return qos.SENSOR_DATA
    if msgtype in LATCHED_TYPES:
        return qos.LATCHED
    return qos.DEFAULT


def play_order(topic: str, msgtype: str) -> int:
    """Sort key among messages logged at the same time: images after everything else."""
    return 1 if msgtype in SENSOR_TYPES[:2] else 0


@dataclass
class PlayerStatus:
    published: int = 0
    total: int = 0
    done: bool = False
    error: str = ''

    def to_json(self) -> str:
        return json.dumps(self.__dict__)


class BagPlayerNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.status = PlayerStatus()
        bag = declare_str(self, 'bag', '', 'rosbag2 folder to replay (required)')
        wanted = declare_str_list(self, 'topics', list(DEFAULT_TOPICS),
                                  'recorded topics to publish (the policy inputs by default)')
        image_topic = declare_str(self, 'image_topic', topics.IMAGE,
                                  f'recorded camera topic, replayed on {topics.IMAGE} (the '
                                  f'policy input) in place of that entry of topics')
        # Recorded name -> published name: a robot's camera topic is fed to the policy input.
        renames = {image_topic: topics.IMAGE} if image_topic != topics.IMAGE else {}
        wanted = list(dict.fromkeys(image_topic if t == topics.IMAGE else t for t in wanted))
        self._rate = declare_float(self, 'rate', 1.0,
                                   'replay speed: 1.0 is the recorded rate, 2.0 twice as fast',
                                   0.01, 1000.0)
        self._wait_nodes = [n for n in declare_str_list(
            self, 'wait_for_nodes', ['policy_node'],
            'start once these nodes subscribe to the image topic ("" for none)') if n]
        self._wait_timeout = declare_float(self, 'wait_timeout_s', 60.0,
                                           'longest wait for wait_for_nodes (s)', 0.0, 3600.0)
        self._start_delay = declare_float(self, 'start_delay_s', 1.0,
                                          'extra wait before the first message (s)', 0.0, 60.0)
        self._exit_when_done = declare_bool(self, 'exit_when_done', False,
                                            'stop the node after the bag is played')
        self._linger = declare_float(self, 'linger_s', 1.0,
                                     'time between the last message and exit_when_done (s)',
                                     0.0, 60.0)
        if not bag:
            raise StartupError(f'{NODE_NAME}: set the parameter bag to a rosbag2 folder')
        try:
            self._reader = open_bag_reader(Path(bag))
        except ValueError as exc:
            raise StartupError(f'{NODE_NAME}: {exc}') from None
        available = {t: info.msgtype for t, info in self._reader.topics.items()}
        absent = [t for t in wanted if t not in available]
        if absent:
            self.get_logger().warning(f'{bag} has no {absent}; replaying the others')
        self._outputs: dict[str, Any] = {}
        for topic in wanted:
            if topic not in available:
                continue
            try:
                cls = message_class(available[topic])
            except ValueError as exc:
                self.get_logger().warning(f'not replaying {topic}: {exc}')
                continue
            self._outputs[topic] = self.create_publisher(cls, renames.get(topic, topic),
                                                         qos_for_type(available[topic]))
        if not self._outputs:
            raise StartupError(f'{NODE_NAME}: nothing to replay: {bag} has none of {wanted} '
                               f'(it has {sorted(available)})')
        self._types = {t: available[t] for t in self._outputs}
        self._connections = [c for c in self._reader.connections if c.topic in self._outputs]
        self.status.total = sum(c.msgcount for c in self._connections)
        self._image_topic = next((t for t in self._outputs
                                  if self._types[t] in SENSOR_TYPES[:2]), None)
        self._status_pub = self.create_publisher(String, REPLAY_STATUS, qos.LATCHED)
        self._stop = threading.Event()
        self._finished_at: Optional[float] = None
        self._thread = threading.Thread(target=self._play, daemon=True, name='bag-player')
        self.create_timer(0.5, self._on_timer)
        self._publish_status()
        self.get_logger().info(f'replaying {self.status.total} messages of {bag} on '
                               f'{sorted(self._outputs)} at {self._rate:g}x')
        self._thread.start()

    # -- the player thread ---------------------------------------------------------------------
    def _play(self) -> None:
        try:
            self._wait_for_subscribers()
            if self._stop.wait(self._start_delay):
                return
            self._publish_all()
        except Exception as exc:  # noqa: BLE001 - a corrupt bag ends the replay, reported
            self.status.error = f'{type(exc).__name__}: {exc}'
            self.get_logger().error(f'replay stopped: {self.status.error}')
        finally:
            self.status.done = True
            self._finished_at = time.monotonic()
            self._publish_status()

    def _wait_for_subscribers(self) -> None:
        if not self._wait_nodes or self._image_topic is None:
            return
        deadline = time.monotonic() + self._wait_timeout
        publisher = self._outputs[self._image_topic]
        while not self._stop.is_set():
            infos = self.get_subscriptions_info_by_topic(publisher.topic_name)
            names = {info.node_name for info in infos}
            if all(n in names for n in self._wait_nodes) and \
                    publisher.get_subscription_count() >= len(infos):
                return
            if time.monotonic() > deadline:
                self.get_logger().warning(f'{self._wait_nodes} did not subscribe to '
                                          f'{publisher.topic_name} in '
                                          f'{self._wait_timeout:g} s; replaying anyway')
                return
            self._stop.wait(0.1)

    def _publish_all(self) -> None:
        start_wall: Optional[float] = None
        start_log = 0
        group: list[tuple[int, str, bytes]] = []

        def flush() -> None:
            nonlocal start_wall, start_log
            if not group:
                return
            log_time = group[0][0]
            if start_wall is None:
                start_wall, start_log = time.monotonic(), log_time
            due = start_wall + (log_time - start_log) / 1e9 / self._rate
            if self._stop.wait(max(0.0, due - time.monotonic())):
                return
            group.sort(key=lambda item: play_order(item[1], self._types[item[1]]))
            for _, topic, data in group:
                self._outputs[topic].publish(bytes(data))
                self.status.published += 1
            group.clear()
            if self.status.published % 200 < 8:
                self._publish_status()

        for connection, timestamp, data in self._reader.messages(connections=self._connections):
            if self._stop.is_set():
                return
            if group and timestamp != group[0][0]:
                flush()
            group.append((timestamp, connection.topic, data))
        flush()
        self.get_logger().info(f'replay done: {self.status.published} of '
                               f'{self.status.total} messages published')

    # -- executor side -------------------------------------------------------------------------
    def _on_timer(self) -> None:
        self._publish_status()
        if (self._exit_when_done and self._finished_at is not None
                and time.monotonic() - self._finished_at >= self._linger):
            self.get_logger().info('bag played: stopping (exit_when_done)')
            raise KeyboardInterrupt  # run_node's clean-shutdown path, as Ctrl-C takes

    def _publish_status(self) -> None:
        self._status_pub.publish(String(data=self.status.to_json()))

    def destroy_node(self) -> None:
        stop, thread = getattr(self, '_stop', None), getattr(self, '_thread', None)
        if stop is not None:
            stop.set()
        if thread is not None and thread.is_alive():
            thread.join(timeout=2.0)
        if getattr(self, '_reader', None) is not None:
            self._reader.close()
            self._reader = None
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    return run_node(BagPlayerNode, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
