"""Servo twists and gripper commands -> the simulator's per-step actions, judged as a real cell
judges them (no node, no DDS: tested without ROS).

What the sim node stands in for, and the rules it copies:

* MoveIt Servo takes ``geometry_msgs/TwistStamped`` in speed units (m/s, rad/s) in the robot
  base frame and keeps executing the newest command until it is ``incoming_command_timeout``
  old (0.1 s by default); then the arm halts. A zero stamp (``ros2 topic pub`` without one)
  counts as the arrival time. A command stamped further in the future than the timeout is
  refused as well: the sender's clock is wrong, and its commands would otherwise never age.
* The stand-in does not transform: a twist must be in the base frame (an empty frame_id
  means the base frame).
* A ros2_control forward command controller for the Panda hand takes
  ``std_msgs/Float64MultiArray`` with one value per joint: ``data = [finger position in m]``
  (0.04 open, 0.0 closed); the layout is ignored, as ros2_control ignores it. The controller
  holds the last command.

The twist becomes the action's per-step delta (velocity / control rate; angular parts as the
droll, dpitch, dyaw increments of ``vla_align.actions``), the finger position its gripper
value (0 open .. 1 closed, linear between the two positions, clipped).
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Optional

from geometry_msgs.msg import TwistStamped
import numpy as np
from std_msgs.msg import Float64MultiArray

from vla_align.actions import ACTION_DIM, GRIPPER, ROTATION, TRANSLATION, ActionLimits

#: MoveIt Servo's default ``incoming_command_timeout`` (s).
SERVO_COMMAND_TIMEOUT_S = 0.1
#: Panda hand: finger position (m) of a fully open and a closed gripper.
PANDA_FINGER_OPEN_M = 0.04
PANDA_FINGER_CLOSED_M = 0.0


class CommandRefused(ValueError):
    """A command that is never applied; ``kind`` says which count it goes to."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class TwistCommand:
    """A usable twist: velocities in the base frame and when it counts as sent."""

    velocity: np.ndarray  # (6,) float64: vx, vy, vz (m/s), wx, wy, wz (rad/s)
    stamp_s: float  # header.stamp (s), or the arrival time for a zero stamp
    arrival_s: float


def read_twist(msg: TwistStamped, base_frame: str, arrival_s: float) -> TwistCommand:
    """The ``TwistCommand`` of ``msg``; raises ``CommandRefused`` for another frame or values
    that are not finite (nothing of such a message is applied)."""
    frame = msg.header.frame_id
    if frame not in ('', base_frame):
        raise CommandRefused('twist frame', f'twist in frame {frame[:60]!r}, not the base frame '
                                            f'{base_frame!r} (the stand-in does not transform)')
    linear, angular = msg.twist.linear, msg.twist.angular
    velocity = np.array([linear.x, linear.y, linear.z, angular.x, angular.y, angular.z],
                        dtype=np.float64)
    if not np.all(np.isfinite(velocity)):
        raise CommandRefused('twist', f'twist has non-finite values: {velocity.tolist()}')
    stamp = msg.header.stamp
    if stamp.nanosec >= 1_000_000_000:
        raise CommandRefused('twist', f'header.stamp.nanosec {stamp.nanosec} is not below 1e9')
    stamp_s = (arrival_s if stamp.sec == 0 and stamp.nanosec == 0
               else stamp.sec + stamp.nanosec * 1e-9)
    return TwistCommand(velocity, stamp_s, arrival_s)


def stamp_problem(command: TwistCommand, now_s: float, timeout_s: float) -> Optional[str]:
    """Why ``command`` may not be applied at ``now_s`` (None: it is fresh)."""
    age = now_s - command.stamp_s
    if age > timeout_s:
        return (f'twist stamped {age:.3f} s before it was due, older than '
                f'incoming_command_timeout_s {timeout_s:g}')
    if -age > timeout_s:
        return (f'twist stamped {-age:.3f} s in the future (more than '
                f"incoming_command_timeout_s {timeout_s:g}): is the sender's clock right?")
    return None


def twist_action(velocity: np.ndarray, gripper: float, control_rate: float,
                 limits: ActionLimits) -> np.ndarray:
    """The (7,) float32 action that moves as ``velocity`` does for one control step.

    The deltas are clipped to ``limits`` in float64 first, so a finite but huge twist (1e300
    m/s) becomes the largest allowed step, never an overflow to inf.
    """
    delta = np.asarray(velocity, dtype=np.float64).reshape(6) / control_rate
    action = np.zeros(ACTION_DIM, dtype=np.float32)
    action[TRANSLATION] = np.clip(delta[:3], -limits.max_translation, limits.max_translation)
    action[ROTATION] = np.clip(delta[3:], -limits.max_rotation, limits.max_rotation)
    action[GRIPPER] = float(np.clip(gripper, 0.0, 1.0))
    return action


def gripper_closure(msg: Float64MultiArray, open_position: float,
                    closed_position: float) -> float:
    """The gripper value (0 open .. 1 closed) of a finger-position command; raises
    ``CommandRefused`` unless it holds exactly one finite value (one joint)."""
    values = list(msg.data)
    if len(values) != 1:
        raise CommandRefused('gripper command', f'gripper command has {len(values)} values; '
                                                f'expected 1 (the finger position in m)')
    position = float(values[0])
    if not math.isfinite(position):
        raise CommandRefused('gripper command', f'gripper finger position {position!r} is not '
                                                f'finite')
    closure = (open_position - position) / (open_position - closed_position)
    return float(np.clip(closure, 0.0, 1.0))
