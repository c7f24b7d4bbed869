"""teleop_node: a person drives the arm through MoveIt Servo with a gamepad, 3-D mouse or keyboard.

Input (``input`` parameter):

* ``joy`` — sensor_msgs/Joy on /joy: a gamepad through ``joy``'s ``game_controller_node``
  (``preset: gamepad``) or a 3-D mouse through ``spacenav`` (``preset: spacemouse``; remap
  ``-r /joy:=/spacenav/joy``). The layouts are documented in ``teleop.PRESETS``; ``axes`` and
  the ``*_button`` parameters override single entries of the preset (left unset they take the
  preset's values, so a params file that does not set them works with either preset).
* ``keyboard`` — keys typed in this node's terminal (``teleop.KEY_HELP``, logged at start).
  The terminal is put in cbreak mode and restored on exit, Ctrl-C included; a stdin that is not
  a terminal (a pipe, a test) is read line by line.

Output: geometry_msgs/TwistStamped on /servo_node/delta_twist_cmds at ``publish_rate_hz``, in
speed units (m/s, rad/s), frame ``base_frame``, stamped at publish time, QoS
``qos.SERVO_COMMANDS``; an explicit zero twist whenever there is no fresh input or the dead man
is released, so the stream never stops and never repeats stale motion. The gripper command
(std_msgs/Float64MultiArray ``[finger position]`` on /panda_hand_controller/commands, what a
ros2_control forward command controller takes) and its closure (std_msgs/Float32, 0 open .. 1
closed, on /vla/gripper for recordings) are published when the gripper toggles and again every
``gripper_republish_period_s``, so a controller that starts late still gets it.

Malformed Joy messages (too few axes or buttons for the mapping, NaN/inf in a used axis, a
button that is not 0/1) are refused: counted in /diagnostics, logged the first time and then at
most once per ``log_repeat_period_s``, and treated as no input (zero twist at once). The node's
state (input kind, fresh or stale, dead man, speed scale, gripper, refusals) is on /diagnostics.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import Enum
import sys
import time
from typing import Any, Optional, TextIO

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TwistStamped
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import Joy
from std_msgs.msg import Float32, Float64MultiArray, Header

from vla_align.ros import qos, topics
from vla_align.ros.conversions import diagnostic_array, diagnostic_status
from vla_align.ros.params import (
    ParameterConfigError,
    declare_bool,
    declare_float,
    declare_str,
)
from vla_align.ros.runner import run_node
from vla_align.ros.safety import BadInputLog, StateChangeReporter
from vla_align.ros.teleop import (
    AXIS_NAMES,
    KEY_HELP,
    PRESETS,
    JoyError,
    JoyMapping,
    KeyReader,
    TeleopCommand,
    TeleopConfig,
    TeleopMapper,
)

NODE_NAME = 'teleop_node'
INPUTS = ('joy', 'keyboard')
#: Joy from any publisher: a best-effort subscription matches reliable publishers (the joy and
#: spacenav drivers, ``ros2 topic pub``) and best-effort ones alike. A lost message costs
#: nothing: the drivers re-publish the full device state at their autorepeat rate.
JOY_INPUT = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                       reliability=QoSReliabilityPolicy.BEST_EFFORT,
                       durability=QoSDurabilityPolicy.VOLATILE)
#: Joy messages kept between two stream ticks (a flood beyond this drops the oldest).
MAX_PENDING_JOY = 100
#: Characters that carry no meaning and are never reported as unknown keys.
SILENT_KEYS = ('\n', '\r')


class JoyInput(str, Enum):
    """Why there is no usable Joy input (the value is logged)."""

    STALE = 'no usable Joy message within input_timeout_s'


@dataclass(frozen=True)
class TeleopNodeSettings:
    input: str
    preset: str
    mapping: JoyMapping
    teleop: TeleopConfig
    publish_rate_hz: float
    base_frame: str
    gripper_open_position: float
    gripper_closed_position: float
    gripper_republish_period_s: float
    diagnostics_period_s: float
    log_repeat_period_s: float


def _declare_preset_override(node: Node, name: str, kind: Parameter.Type,
                             description: str, expected: str) -> Any:
    """A parameter without a default: None unless set, so the preset's value applies."""
    descriptor = ParameterDescriptor(description=f"{description} (unset: the preset's)",
                                     read_only=True)
    try:
        return node.declare_parameter(name, kind, descriptor).value
    except ParameterException as exc:
        raise ParameterConfigError(f'{node.get_name()}: parameter {name!r} refused ({exc}); '
                                   f'expected {expected}. {name}: {description}') from None


class TeleopNode(Node):
    """``key_stream`` replaces stdin for ``input: keyboard`` (tests)."""

    def __init__(self, key_stream: Optional[TextIO] = None, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._reader: Optional[KeyReader] = None  # first: destroy_node runs after any failure
        self._twists = 0
        self.settings = self._declare_settings()
        s = self.settings
        joy = s.input == 'joy'
        self.mapper = TeleopMapper(s.teleop, s.mapping if joy else None)
        self._pending_joy: deque[tuple[Joy, float]] = deque(maxlen=MAX_PENDING_JOY)
        self._refused = BadInputLog(s.log_repeat_period_s)
        self._unknown_keys = BadInputLog(s.log_repeat_period_s)
        self._input_log = StateChangeReporter('Joy input fresh again', s.log_repeat_period_s)
        self._last: Optional[TeleopCommand] = None
        self._gripper_sent: Optional[bool] = None
        self._gripper_sent_at = -float('inf')
        self._gripper_messages = 0

        self._twist_pub = self.create_publisher(TwistStamped, topics.SERVO_TWIST,
                                                qos.SERVO_COMMANDS)
        self._gripper_command_pub = self.create_publisher(Float64MultiArray,
                                                          topics.GRIPPER_COMMAND,
                                                          qos.SERVO_COMMANDS)
        self._gripper_pub = self.create_publisher(Float32, topics.GRIPPER, qos.COMMANDS)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS,
                                                      qos.DEFAULT)
        if joy:
            self.create_subscription(Joy, topics.JOY, self._on_joy, JOY_INPUT)
        self._timer = self.create_timer(1.0 / s.publish_rate_hz, self._on_timer)
        self._diagnostics_timer = self.create_timer(s.diagnostics_period_s,
                                                    self._publish_diagnostics)
        c = s.teleop
        self.get_logger().info(
            f'input={s.input} rate={s.publish_rate_hz:g} Hz frame={s.base_frame} max speed '
            f'{c.max_linear_speed:g} m/s, {c.max_angular_speed:g} rad/s x scale '
            f'{self.mapper.speed_scale:.1f}; gripper open {s.gripper_open_position:g}, closed '
            f'{s.gripper_closed_position:g}, starts '
            f'{"closed" if c.initial_gripper_closed else "open"}')
        if joy:
            deadman = ('none: moves whenever the device is deflected'
                       if s.mapping.deadman_button < 0 else f'button {s.mapping.deadman_button}')
            self.get_logger().info(f'Joy on {topics.JOY}, preset {s.preset}: '
                                   f'{s.mapping.describe()}; dead man {deadman}; zero after '
                                   f'{c.input_timeout_s:g} s without a message')
        else:
            # Last: nothing after this may fail, or the terminal would stay in cbreak mode.
            self._reader = KeyReader(sys.stdin if key_stream is None else key_stream)
            where = 'this terminal' if self._reader.terminal else 'stdin (not a terminal)'
            self.get_logger().info(f'keyboard teleop on {where}; each key press moves for '
                                   f'{c.key_hold_s:g} s. {KEY_HELP}')

    # -- parameters -----------------------------------------------------------------------------
    def _declare_settings(self) -> TeleopNodeSettings:
        name = self.get_name()
        kind = declare_str(self, 'input', 'joy',
                           'joy: sensor_msgs/Joy on /joy (gamepad, 3-D mouse); keyboard: keys '
                           "typed in the node's terminal", INPUTS)
        preset = declare_str(self, 'preset', 'gamepad',
                             'Joy layout: gamepad (joy game_controller_node) or spacemouse '
                             '(spacenav); axes and *_button parameters override it',
                             tuple(PRESETS))
        base = PRESETS[preset]
        axes = _declare_preset_override(
            self, 'axes', Parameter.Type.INTEGER_ARRAY,
            'Joy axis index for x, y, z, roll, pitch, yaw; -1: unused', 'a list of 6 integers')
        buttons = {}
        for button, what in (('deadman_button', 'motion only while held; -1: no dead man'),
                             ('gripper_button', 'each press toggles the gripper; -1: none'),
                             ('speed_up_button', 'each press: speed scale +0.1; -1: none'),
                             ('speed_down_button', 'each press: speed scale -0.1; -1: none')):
            value = _declare_preset_override(self, button, Parameter.Type.INTEGER,
                                             f'Joy button index: {what}', 'an integer >= -1')
            buttons[button] = base.buttons[button] if value is None else value
        try:
            mapping = JoyMapping(axes=base.axes if axes is None else tuple(axes), **buttons)
        except ValueError as exc:
            raise ParameterConfigError(f'{name}: Joy mapping refused: {exc}') from None

        signs = self._declare_float_list('axis_signs', [1.0] * 6,
                                         'factor per axis x, y, z, roll, pitch, yaw in [-1, 1]: '
                                         '-1.0 flips a direction')
        teleop_values = dict(
            max_linear_speed=declare_float(self, 'max_linear_speed', 0.1,
                                           'x, y, z speed at full deflection and speed scale '
                                           '1.0 (m/s)', 1e-6, 5.0),
            max_angular_speed=declare_float(self, 'max_angular_speed', 0.5,
                                            'roll, pitch, yaw speed at full deflection and '
                                            'speed scale 1.0 (rad/s)', 1e-6, 10.0),
            deadzone=declare_float(self, 'deadzone', 0.05,
                                   'axis values below this are zero; the rest is rescaled to '
                                   '0..1', 0.0, 0.95),
            initial_speed_scale=declare_float(self, 'initial_speed_scale', 0.5,
                                              'speed scale at start (0.1 .. 1.0, steps of 0.1)',
                                              0.1, 1.0),
            input_timeout_s=declare_float(self, 'input_timeout_s', 0.25,
                                          'Joy: zero twist when no message came for this long '
                                          '(s)', 0.01, 10.0),
            key_hold_s=declare_float(self, 'key_hold_s', 0.25,
                                     'keyboard: how long one key press moves (s); auto-repeat '
                                     'of a held key keeps it moving', 0.01, 5.0),
            initial_gripper_closed=declare_bool(self, 'initial_gripper_closed', False,
                                                'start with the gripper closed'),
        )
        try:
            teleop = TeleopConfig(axis_signs=tuple(signs), **teleop_values)
        except ValueError as exc:
            raise ParameterConfigError(f'{name}: {exc}') from None

        rate = declare_float(self, 'publish_rate_hz', 30.0,
                             'twist commands per second (Hz), zeros included', 1.0, 1000.0)
        base_frame = declare_str(self, 'base_frame', 'panda_link0',
                                 'frame_id of the twist (MoveIt Servo: the robot base frame)')
        if not base_frame.strip():
            raise ParameterConfigError(f'{name}: parameter base_frame must not be empty')
        opened = declare_float(self, 'gripper_open_position', 0.04,
                               'finger position sent for open (m; Panda: 0.04)', -10.0, 10.0)
        closed = declare_float(self, 'gripper_closed_position', 0.0,
                               'finger position sent for closed (m; Panda: 0.0)', -10.0, 10.0)
        if opened == closed:
            raise ParameterConfigError(f'{name}: gripper_open_position and '
                                       f'gripper_closed_position are both {opened:g}')
        republish = declare_float(self, 'gripper_republish_period_s', 1.0,
                                  'the gripper command is re-sent this often (s) for '
                                  'controllers that start late', 0.05, 60.0)
        diagnostics = declare_float(self, 'diagnostics_period_s', 1.0,
                                    '/diagnostics period (s)', 0.05, 60.0)
        log_period = declare_float(self, 'log_repeat_period_s', 10.0,
                                   'repeated problems are logged at most this often (s); all '
                                   'are counted in /diagnostics', 0.0, 3600.0)
        return TeleopNodeSettings(kind, preset, mapping, teleop, rate, base_frame, opened,
                                  closed, republish, diagnostics, log_period)

    def _declare_float_list(self, name: str, default: list[float], description: str
                            ) -> list[float]:
        descriptor = ParameterDescriptor(description=description, read_only=True)
        try:
            values = self.declare_parameter(name, default, descriptor).value
        except ParameterException as exc:
            raise ParameterConfigError(
                f'{self.get_name()}: parameter {name!r} refused ({exc}); expected a list of '
                f'{len(AXIS_NAMES)} floats (write 1.0, not 1). {name}: {description}') from None
        return [float(v) for v in values]

    # -- callbacks: cache only ------------------------------------------------------------------
    def _on_joy(self, msg: Joy) -> None:
        self._pending_joy.append((msg, time.monotonic()))

    # -- work -----------------------------------------------------------------------------------
    def _on_timer(self) -> None:
        self._take_input()
        now = time.monotonic()
        command = self.mapper.command(now)
        if self.settings.input == 'joy':
            line = self._input_log.update(None if command.input_fresh else JoyInput.STALE, now)
            # Two call sites: rclpy refuses one call site logging at two severities.
            if line is not None and command.input_fresh:
                self.get_logger().info(line)
            elif line is not None:
                self.get_logger().warning(line)
        self._publish(command, now)

    def _take_input(self) -> None:
        while self._pending_joy:
            msg, received = self._pending_joy.popleft()
            try:
                self.mapper.on_joy(msg.axes, msg.buttons, received)
            except JoyError as exc:
                line = self._refused.report('Joy', str(exc), received)
                if line is not None:
                    self.get_logger().warning(line.replace('ignoring bad', 'refused'))
        if self._reader is None:
            return
        for key, pressed in self._reader.poll():
            if not self.mapper.on_key(key, pressed) and key not in SILENT_KEYS:
                line = self._unknown_keys.report('key', f'{key!r} is not mapped (keys are '
                                                 f'lower case). {KEY_HELP}', pressed)
                if line is not None:
                    self.get_logger().info(line.replace('bad key message', 'key'))
        if self._reader.finished:
            self.get_logger().info('end of keyboard input: publishing zero twists')
            self._reader = None

    def _publish(self, command: TeleopCommand, now: float) -> None:
        s = self.settings
        previous, self._last = self._last, command
        if previous is not None and previous.speed_scale != command.speed_scale:
            self.get_logger().info(
                f'speed scale {command.speed_scale:.1f}: up to '
                f'{s.teleop.max_linear_speed * command.speed_scale:.3g} m/s, '
                f'{s.teleop.max_angular_speed * command.speed_scale:.3g} rad/s')
        stamp = self.get_clock().now().to_msg()
        msg = TwistStamped(header=Header(stamp=stamp, frame_id=s.base_frame))
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = command.twist[:3]
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = command.twist[3:]
        self._twist_pub.publish(msg)
        self._twists += 1

        closed = command.gripper_closed
        changed = closed != self._gripper_sent
        if changed or now - self._gripper_sent_at >= s.gripper_republish_period_s:
            position = s.gripper_closed_position if closed else s.gripper_open_position
            self._gripper_command_pub.publish(Float64MultiArray(data=[position]))
            self._gripper_pub.publish(Float32(data=1.0 if closed else 0.0))
            self._gripper_messages += 1
            if changed and self._gripper_sent is not None:
                self.get_logger().info(f'gripper {"closed" if closed else "open"} '
                                       f'({position:g})')
            self._gripper_sent, self._gripper_sent_at = closed, now

    def _publish_diagnostics(self) -> None:
        s = self.settings
        command = self._last or self.mapper.command(time.monotonic())
        joy = s.input == 'joy'
        if joy and not command.input_fresh:
            level, message = DiagnosticStatus.WARN, f'holding still: {command.reason}'
        elif command.moving:
            level, message = DiagnosticStatus.OK, 'moving'
        else:
            level, message = DiagnosticStatus.OK, f'holding still: {command.reason or "centred"}'
        values = {'input': s.input, 'input_fresh': command.input_fresh,
                  'deadman_held': command.deadman_held, 'speed_scale': command.speed_scale,
                  'gripper': 'closed' if command.gripper_closed else 'open',
                  'refused': self._refused.total, 'refused_by_kind': self._refused.summary(),
                  'twists_published': self._twists,
                  'gripper_commands_published': self._gripper_messages}
        if joy:
            values['preset'] = s.preset
        status = diagnostic_status(f'{self.get_name()}: teleop', s.input, level, message, values)
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def destroy_node(self) -> None:
        if self._reader is not None:
            self._reader.restore()
        if self._twists:
            # A last explicit zero, so Servo stops now rather than at its command timeout.
            stop = TwistStamped(header=Header(stamp=self.get_clock().now().to_msg(),
                                              frame_id=self.settings.base_frame))
            try:
                self._twist_pub.publish(stop)
            except Exception:  # the context may already be shutting down
                pass
        self.get_logger().info(f'stopping after {self._twists} twist commands')
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    return run_node(TeleopNode, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
