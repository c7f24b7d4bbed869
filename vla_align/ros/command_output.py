"""Where the policy node's decisions go: MoveIt Servo and a gripper controller, or a dry run.

Enabled, each decision (an action or a hold) becomes

* a geometry_msgs/TwistStamped in speed units (delta x control rate) on MoveIt Servo's input
  (/servo_node/delta_twist_cmds), ``frame_id`` = the robot base, **stamped at publish time**
  (Servo judges staleness from the stamp: the image's stamp made every command 20-100 ms old
  before it left, and a camera clock not synchronised with the robot's made Servo ignore it);
* a std_msgs/Float64MultiArray ``[finger position]`` for a forward command controller (open and
  closed positions are parameters) and std_msgs/Float32 closure (0 open .. 1 closed) on
  /vla/gripper;
* the canonical record: /vla/action (Float32MultiArray, 7 values) with /vla/action_frame
  (std_msgs/Header: the stamp and frame of the camera image the action answers; ``frame_id``
  'hold' for a hold), so a recording can be scored frame by frame.

Between decisions the twist is re-published at ``command_rate_hz`` (Servo halts after its
``incoming_command_timeout``, 0.1 s by default, so a 10 Hz policy must not leave gaps), each time
stamped anew, for as long as the decision is fresh (``CommandStream``: at most 1.5 control
periods); after that, and on every hold, the stream carries an explicit zero. Commands use
reliable, keep-last-1 QoS: a queued, stale twist is never delivered late.

Disabled (dry run, the robot launch's default until ``~/enable`` is called with true) the same
decisions go to /vla/dry_run/{action,twist,gripper_command} and nothing goes to the command
topics: the arm cannot move. Disabling publishes one explicit zero twist at once, then silence.
"""
from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Any, Optional

from builtin_interfaces.msg import Time
from geometry_msgs.msg import TwistStamped
import numpy as np
from std_msgs.msg import Float32, Float32MultiArray, Float64MultiArray, Header

from vla_align.actions import GRIPPER, ROTATION, TRANSLATION, hold_action
from vla_align.ros import qos, topics
from vla_align.ros.conversions import action_to_multiarray

DRY_RUN_ACTION = '/vla/dry_run/action'
DRY_RUN_TWIST = '/vla/dry_run/twist'
DRY_RUN_GRIPPER = '/vla/dry_run/gripper_command'
#: frame_id of /vla/action_frame when the action is a hold, not an answer to a frame.
HOLD_FRAME = 'hold'


@dataclass(frozen=True)
class OutputSettings:
    control_rate: float  # decisions per second; twist = delta x control_rate
    command_rate_hz: float  # the twist stream between decisions (0: only at decisions)
    base_frame: str
    gripper_open_position: float
    gripper_closed_position: float
    #: A decision is streamed for this many control periods, then zero motion.
    fresh_periods: float = 1.5

    def gripper_position(self, closure: float) -> float:
        """0 open .. 1 closed -> the controller's finger position."""
        c = float(np.clip(closure, 0.0, 1.0))
        return self.gripper_open_position + c * (self.gripper_closed_position
                                                 - self.gripper_open_position)


class CommandStream:
    """The current decision and how long it may be streamed (no ROS: tested on its own)."""

    def __init__(self, control_rate: float, fresh_periods: float = 1.5) -> None:
        self.max_age_s = fresh_periods / control_rate
        self.control_rate = control_rate
        self._action = hold_action(0.0)
        self._decided_at = -np.inf

    def set(self, action: np.ndarray, now: float) -> None:
        self._action = np.asarray(action, dtype=np.float32).copy()
        self._decided_at = now

    def velocity(self, now: float) -> np.ndarray:
        """(6,) twist to stream at ``now``: the decision's, while fresh; zero after."""
        if now - self._decided_at > self.max_age_s:
            return np.zeros(6, dtype=np.float64)
        return self._action[:6].astype(np.float64) * self.control_rate

    @property
    def gripper(self) -> float:
        return float(self._action[GRIPPER])


class CommandOutput:
    """Owns the node's command publishers, the stream timer and the enable state."""

    def __init__(self, node: Any, settings: OutputSettings, enabled: bool) -> None:
        self._node = node
        self.settings = settings
        self.enabled = enabled
        self.stream = CommandStream(settings.control_rate, settings.fresh_periods)
        self.published_twists = 0
        self.zeros_published = 0
        pub = node.create_publisher
        self._action = pub(Float32MultiArray, topics.ACTION, qos.COMMANDS)
        self._action_frame = pub(Header, topics.ACTION_FRAME, qos.COMMANDS)
        self._twist = pub(TwistStamped, topics.SERVO_TWIST, qos.SERVO_COMMANDS)
        self._gripper_command = pub(Float64MultiArray, topics.GRIPPER_COMMAND, qos.SERVO_COMMANDS)
        self._gripper = pub(Float32, topics.GRIPPER, qos.COMMANDS)
        self._dry_action = pub(Float32MultiArray, DRY_RUN_ACTION, qos.COMMANDS)
        self._dry_twist = pub(TwistStamped, DRY_RUN_TWIST, qos.SERVO_COMMANDS)
        self._dry_gripper = pub(Float64MultiArray, DRY_RUN_GRIPPER, qos.SERVO_COMMANDS)
        self._timer = (node.create_timer(1.0 / settings.command_rate_hz, self._on_stream)
                       if settings.command_rate_hz > 0 else None)

    @property
    def topics(self) -> dict[str, str]:
        """Where commands go now (for the start-up log and diagnostics)."""
        if self.enabled:
            return {'twist': self._twist.topic_name, 'gripper': self._gripper_command.topic_name}
        return {'twist': DRY_RUN_TWIST, 'gripper': DRY_RUN_GRIPPER}

    def publish(self, action: np.ndarray, answered: Optional[Header], now: float) -> None:
        """One decision: ``answered`` is the header of the image it answers (None: a hold)."""
        self.stream.set(action, now)
        stamp = self._node.get_clock().now().to_msg()
        frame = answered if answered is not None else Header(stamp=stamp, frame_id=HOLD_FRAME)
        record = action_to_multiarray(action)
        twist = self._twist_msg(self.stream.velocity(now), stamp)
        gripper = Float64MultiArray(data=[self.settings.gripper_position(action[GRIPPER])])
        if self.enabled:
            self._action.publish(record)
            self._action_frame.publish(frame)
            self._twist.publish(twist)
            self._gripper_command.publish(gripper)
            self._gripper.publish(Float32(data=float(action[GRIPPER])))
            self.published_twists += 1
        else:
            self._dry_action.publish(record)
            self._dry_twist.publish(twist)
            self._dry_gripper.publish(gripper)

    def set_enabled(self, enabled: bool, now: float) -> None:
        """Enable or disable motion; disabling sends one zero twist at once."""
        if self.enabled and not enabled:
            self.stream.set(hold_action(self.stream.gripper), now)
            self._twist.publish(self._twist_msg(np.zeros(6),
                                                self._node.get_clock().now().to_msg()))
            self.zeros_published += 1
        self.enabled = enabled

    def _on_stream(self) -> None:
        if not self.enabled:
            return
        velocity = self.stream.velocity(time.monotonic())
        self._twist.publish(self._twist_msg(velocity, self._node.get_clock().now().to_msg()))
        self.published_twists += 1
        self.zeros_published += int(not np.any(velocity))

    def _twist_msg(self, velocity: np.ndarray, stamp: Time) -> TwistStamped:
        msg = TwistStamped()
        msg.header.stamp = stamp
        msg.header.frame_id = self.settings.base_frame
        linear, angular = velocity[TRANSLATION], velocity[ROTATION]
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v)
                                                                         for v in angular)
        return msg
