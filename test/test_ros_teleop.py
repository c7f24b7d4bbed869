"""teleop_node over real DDS: Joy in, Servo twist and gripper commands out; its parameters."""
import os
from pathlib import Path
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import TwistStamped
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import Joy
from std_msgs.msg import Float32, Float64MultiArray

from vla_align.ros import qos, topics
from vla_align.ros.params import ParameterConfigError
from vla_align.ros.teleop import PRESETS
from vla_align.ros.teleop_node import TeleopNode

pytestmark = pytest.mark.ros
pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin
PARAMS_FILE = Path(__file__).resolve().parents[1] / 'config' / 'teleop_nodes.yaml'
LB, A = 9, 0  # gamepad preset: dead man, gripper
RATE_HZ = 30.0
TIMEOUT_S = 0.25


def seconds(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


class Operator:
    """A test node: a joy driver with default QoS, and a recorder of what teleop publishes."""

    def __init__(self, context):
        self.node = Node('test_operator', context=context)
        self.joy_pub = self.node.create_publisher(Joy, topics.JOY, 10)  # like the joy driver
        self.twists = []  # (message, receipt time on the ROS clock)
        self.grippers, self.closures, self.diagnostics = [], [], []
        n = self.node
        n.create_subscription(TwistStamped, topics.SERVO_TWIST, self._on_twist,
                              qos.SERVO_COMMANDS)
        n.create_subscription(Float64MultiArray, topics.GRIPPER_COMMAND,
                              lambda m: self.grippers.append(list(m.data)), qos.SERVO_COMMANDS)
        n.create_subscription(Float32, topics.GRIPPER, lambda m: self.closures.append(m.data),
                              qos.COMMANDS)
        n.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self.diagnostics.append,
                              qos.DEFAULT)

    def _on_twist(self, msg):
        self.twists.append((msg, seconds(self.node.get_clock().now().to_msg())))

    def now(self) -> float:
        return seconds(self.node.get_clock().now().to_msg())

    def joy(self, axes=None, pressed=(), n_axes=6, n_buttons=21):
        values = [0.0] * n_axes
        for index, value in (axes or {}).items():
            values[index] = value
        buttons = [0] * n_buttons
        for index in pressed:
            buttons[index] = 1
        self.joy_pub.publish(Joy(axes=values, buttons=buttons))
        return self.now()

    def stream(self, spin, nodes, duration, rate=20.0, **joy):
        """Publish one Joy state at the joy driver's autorepeat rate; returns the last send."""
        sent = None
        for _ in range(max(1, round(duration * rate))):
            sent = self.joy(**joy)
            spin(nodes, 1.0 / rate)
        return sent

    def last_status(self):
        return {kv.key: kv.value for kv in self.diagnostics[-1].status[0].values}


def make_teleop(context, **params):
    defaults = {'publish_rate_hz': RATE_HZ, 'input_timeout_s': TIMEOUT_S,
                'diagnostics_period_s': 0.2}
    defaults.update(params)
    return TeleopNode(context=context,
                      parameter_overrides=[Parameter(k, value=v) for k, v in defaults.items()])


def motion(msg):
    t = msg.twist
    return (t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z)


def test_joy_drives_the_servo_twist_in_speed_units_and_zero_follows_when_the_stream_stops(
        ros_context, spin):
    teleop = make_teleop(ros_context)
    operator = Operator(ros_context)
    nodes = [teleop, operator.node]
    assert spin(nodes, 5.0, until=lambda: len(operator.twists) >= 3)
    assert all(motion(m) == (0.0,) * 6 for m, _ in operator.twists)  # no input: zeros

    # Left stick full forward (x), right stick half right (yaw); dead man held.
    last_sent = operator.stream(spin, nodes, 1.0, axes={1: 1.0, 2: -0.525}, pressed=[LB])
    moving = [(m, t) for m, t in operator.twists if any(motion(m))]
    assert len(moving) >= 15
    msg, received = moving[-1]
    assert msg.header.frame_id == 'panda_link0'
    assert abs(seconds(msg.header.stamp) - received) < 0.1  # stamped at publish time
    # speed scale 0.5: 1.0 x 0.1 m/s x 0.5; (0.525 - 0.05) / 0.95 = 0.5 -> -0.5 x 0.5 x 0.5
    assert motion(msg) == pytest.approx((0.05, 0, 0, 0, 0, -0.125), abs=1e-6)

    count = len(operator.twists)
    spin(nodes, 0.8)  # the operator's joy driver died
    after = [m for m, _ in operator.twists[count:]]
    first_zero = next(m for m in after if not any(motion(m)))
    delay = seconds(first_zero.header.stamp) - last_sent
    assert delay <= TIMEOUT_S + 1.0 / RATE_HZ + 0.05, delay
    last_moving = [m for m in after if any(motion(m))]
    assert not last_moving or (seconds(last_moving[-1].header.stamp) - last_sent
                               <= TIMEOUT_S + 0.02)  # + delivery of the last Joy
    zeros = after[after.index(first_zero):]
    assert all(not any(motion(m)) for m in zeros)
    assert len(zeros) >= 0.4 * RATE_HZ  # the zeros keep streaming at the rate
    assert spin(nodes, 1.0, until=lambda: operator.last_status()['input_fresh'] == 'False')


def test_gripper_toggles_once_per_press_and_is_republished(ros_context, spin):
    teleop = make_teleop(ros_context, gripper_republish_period_s=0.5)
    operator = Operator(ros_context)
    nodes = [teleop, operator.node]
    assert spin(nodes, 5.0, until=lambda: operator.grippers and operator.closures)
    assert operator.grippers[-1] == [0.04] and operator.closures[-1] == 0.0  # starts open

    operator.stream(spin, nodes, 0.2, pressed=[LB])
    operator.stream(spin, nodes, 0.5, pressed=[LB, A])  # one press, held
    operator.stream(spin, nodes, 0.2, pressed=[LB])
    assert operator.grippers[-1] == [0.0] and operator.closures[-1] == 1.0
    operator.stream(spin, nodes, 0.2, pressed=[LB, A])  # second press
    operator.stream(spin, nodes, 0.8, pressed=[LB])
    sent = operator.grippers
    changes = [g for i, g in enumerate(sent) if i == 0 or g != sent[i - 1]]
    assert changes == [[0.04], [0.0], [0.04]]
    repeats = len(sent) - len(changes)
    assert repeats >= 2  # re-sent at least twice in ~2 s with a 0.5 s period


def test_malformed_joy_is_refused_counted_and_never_moves(ros_context, spin):
    teleop = make_teleop(ros_context)
    operator = Operator(ros_context)
    nodes = [teleop, operator.node]
    assert spin(nodes, 5.0, until=lambda: operator.twists)
    start = len(operator.twists)
    for _ in range(6):
        operator.joy(axes={1: 1.0}, pressed=[LB], n_axes=2)  # too few axes for the preset
        operator.joy(axes={1: float('nan')}, pressed=[LB])
        operator.joy(axes={1: 1.0}, n_buttons=3)  # the dead man is not there
        spin(nodes, 0.05)
    # 18 refused (best effort: allow for a lost message or two)
    assert spin(nodes, 2.0, until=lambda: operator.diagnostics
                and int(operator.last_status()['refused']) >= 15)
    assert operator.last_status()['refused_by_kind'].startswith('Joy:')
    assert all(not any(motion(m)) for m, _ in operator.twists[start:])
    status = operator.diagnostics[-1].status[0]
    assert 'holding still' in status.message
    operator.stream(spin, nodes, 0.3, axes={1: 1.0}, pressed=[LB])  # still alive and usable
    assert any(motion(m)[0] > 0 for m, _ in operator.twists[start:])


def test_keyboard_input_from_a_pipe_moves_for_key_hold_s(ros_context, spin):
    read_fd, write_fd = os.pipe()
    stream = os.fdopen(read_fd, 'r')
    teleop = TeleopNode(key_stream=stream, context=ros_context, parameter_overrides=[
        Parameter('input', value='keyboard'), Parameter('key_hold_s', value=0.3),
        Parameter('initial_speed_scale', value=1.0)])
    operator = Operator(ros_context)
    nodes = [teleop, operator.node]
    try:
        assert spin(nodes, 5.0, until=lambda: operator.twists and operator.grippers)
        start = len(operator.twists)
        pressed = time.monotonic()
        os.write(write_fd, b'a \n')  # +y, and close the gripper
        assert spin(nodes, 2.0, until=lambda: any(motion(m)[1] for m, _ in operator.twists))
        spin(nodes, 0.5)
        moving = [motion(m) for m, _ in operator.twists[start:] if any(motion(m))]
        assert moving and all(m == pytest.approx((0, 0.1, 0, 0, 0, 0)) for m in moving)
        assert len(moving) <= 0.3 * RATE_HZ + 2  # one press: key_hold_s of motion
        assert not any(motion(operator.twists[-1][0])) and time.monotonic() - pressed >= 0.5
        assert operator.grippers[-1] == [0.0]
    finally:
        os.close(write_fd)
        teleop.destroy_node()
        stream.close()


def test_params_file_declares_every_parameter_and_leaves_the_mapping_to_the_preset(
        ros_environment):
    import rclpy
    import yaml

    section = yaml.safe_load(PARAMS_FILE.read_text())['teleop_node']['ros__parameters']
    for preset in ('gamepad', 'spacemouse'):
        context = rclpy.Context()
        rclpy.init(args=['--ros-args', '--params-file', str(PARAMS_FILE)], context=context)
        try:
            node = TeleopNode(context=context,
                              parameter_overrides=[Parameter('preset', value=preset)])
            undeclared = [k for k in section if not node.has_parameter(k)]
            assert not undeclared, f'teleop_nodes.yaml: teleop_node does not declare {undeclared}'
            for key, value in section.items():
                if key != 'preset':
                    assert node.get_parameter(key).value == value, key
            for name in ('axes', 'deadman_button', 'gripper_button'):
                assert node.has_parameter(name)
            assert node.settings.mapping == PRESETS[preset]
            node.destroy_node()
        finally:
            context.try_shutdown()


def test_explicit_mapping_parameters_override_single_preset_entries(ros_context):
    node = TeleopNode(context=ros_context, parameter_overrides=[
        Parameter('preset', value='gamepad'), Parameter('deadman_button', value=4),
        Parameter('axes', value=[1, 0, 4, -1, -1, 3])])
    mapping = node.settings.mapping
    assert mapping.axes == (1, 0, 4, -1, -1, 3) and mapping.deadman_button == 4
    assert mapping.gripper_button == PRESETS['gamepad'].gripper_button  # not overridden
    node.destroy_node()


@pytest.mark.parametrize('name,value', [
    ('input', 'mouse'), ('preset', 'wheel'), ('axes', [0, 1, 2, 3, 4]),
    ('axes', [0, 1, 2, 3, 4, -2]), ('deadman_button', -2), ('deadman_button', 1.0),
    ('axis_signs', [1.0, 1.0, 1.0, 1.0, 1.0]), ('axis_signs', [1.0, -2.0, 1.0, 1.0, 1.0, 1.0]),
    ('deadzone', 1.0), ('max_linear_speed', 0.0), ('publish_rate_hz', 0.0),
    ('gripper_closed_position', 0.04), ('base_frame', ''), ('initial_speed_scale', 2.0),
])
def test_bad_parameters_are_refused_at_start(ros_context, name, value):
    with pytest.raises(ParameterConfigError, match=name if name != 'gripper_closed_position'
                       else 'gripper'):
        TeleopNode(context=ros_context, parameter_overrides=[Parameter(name, value=value)])
