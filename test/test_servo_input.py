"""Servo twists and gripper commands -> sim actions (vla_align.ros.servo_input), without ROS."""
from builtin_interfaces.msg import Time
from geometry_msgs.msg import TwistStamped
import numpy as np
import pytest
from std_msgs.msg import Float64MultiArray, Header

from vla_align.actions import ActionLimits
from vla_align.ros.conversions import action_to_twist
from vla_align.ros.servo_input import (
    CommandRefused,
    gripper_closure,
    read_twist,
    stamp_problem,
    twist_action,
)

LIMITS = ActionLimits(max_translation=0.03, max_rotation=0.15)


def twist(frame='panda_link0', stamp=(100, 0), linear=(0.1, 0.0, 0.0), angular=(0.0, 0.0, 0.0)):
    msg = TwistStamped(header=Header(stamp=Time(sec=stamp[0], nanosec=stamp[1]),
                                     frame_id=frame))
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = linear
    msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = angular
    return msg


def test_a_twist_round_trips_to_the_action_it_was_made_from():
    """The policy's action -> twist (delta x rate) and back is the same per-step delta, angular
    parts included (droll, dpitch, dyaw as /vla/action applies them)."""
    action = np.array([0.01, -0.02, 0.005, 0.1, -0.05, 0.02, 0.7], np.float32)
    for rate in (10.0, 20.0):
        msg = action_to_twist(action, rate, Time(sec=5), 'panda_link0')
        command = read_twist(msg, 'panda_link0', arrival_s=5.01)
        assert np.allclose(twist_action(command.velocity, 0.7, rate, LIMITS), action, atol=1e-6)


def test_huge_finite_twists_become_the_largest_step_never_inf():
    command = read_twist(twist(linear=(1e300, -1e300, 0.0), angular=(0.0, 0.0, 1e300)),
                         'panda_link0', 100.0)
    action = twist_action(command.velocity, 2.0, 10.0, LIMITS)
    assert np.all(np.isfinite(action))
    assert action.tolist() == pytest.approx([0.03, -0.03, 0.0, 0.0, 0.0, 0.15, 1.0])


@pytest.mark.parametrize('frame', ['', 'panda_link0'])
def test_the_base_frame_or_an_empty_frame_is_accepted(frame):
    assert read_twist(twist(frame=frame), 'panda_link0', 100.0).velocity[0] == 0.1


@pytest.mark.parametrize('msg, kind, words', [
    (twist(frame='panda_hand'), 'twist frame', "'panda_hand'"),
    (twist(linear=(float('nan'), 0.0, 0.0)), 'twist', 'non-finite'),
    (twist(angular=(0.0, float('inf'), 0.0)), 'twist', 'non-finite'),
])
def test_twists_in_another_frame_or_not_finite_are_refused(msg, kind, words):
    with pytest.raises(CommandRefused, match=words) as refused:
        read_twist(msg, 'panda_link0', 100.0)
    assert refused.value.kind == kind


def test_staleness_is_judged_as_moveit_servo_does():
    fresh = read_twist(twist(stamp=(100, 0)), 'panda_link0', arrival_s=100.02)
    assert stamp_problem(fresh, 100.09, 0.1) is None
    assert 'older than' in stamp_problem(fresh, 100.11, 0.1)
    future = read_twist(twist(stamp=(101, 0)), 'panda_link0', arrival_s=100.0)
    assert 'future' in stamp_problem(future, 100.0, 0.1)
    assert stamp_problem(future, 100.95, 0.1) is None  # within the timeout either way
    unstamped = read_twist(twist(stamp=(0, 0)), 'panda_link0', arrival_s=250.0)
    assert unstamped.stamp_s == 250.0  # `ros2 topic pub` without a stamp: its arrival
    assert stamp_problem(unstamped, 250.05, 0.1) is None
    assert stamp_problem(unstamped, 250.2, 0.1) is not None


@pytest.mark.parametrize('position, closure', [(0.04, 0.0), (0.0, 1.0), (0.01, 0.75),
                                               (0.08, 0.0), (-0.02, 1.0)])
def test_finger_positions_map_linearly_to_the_gripper_value_and_are_clipped(position, closure):
    msg = Float64MultiArray(data=[position])
    assert gripper_closure(msg, 0.04, 0.0) == pytest.approx(closure)


def test_the_mapping_follows_the_configured_positions():
    # A gripper whose closed position is the larger number.
    assert gripper_closure(Float64MultiArray(data=[0.075]), 0.0, 0.1) == pytest.approx(0.75)


@pytest.mark.parametrize('data', [[], [0.0, 0.0], [float('nan')], [float('-inf')]])
def test_gripper_commands_that_are_not_one_finite_value_are_refused(data):
    with pytest.raises(CommandRefused) as refused:
        gripper_closure(Float64MultiArray(data=data), 0.04, 0.0)
    assert refused.value.kind == 'gripper command'
