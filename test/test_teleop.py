"""Teleop mapping without ROS: recorded Joy sequences and key sequences, with an injected clock."""
import math
import os
import pty
import termios

import pytest

from vla_align.ros.teleop import (
    PRESETS,
    JoyError,
    JoyMapping,
    KeyReader,
    TeleopConfig,
    TeleopMapper,
    apply_deadzone,
)

GAMEPAD = PRESETS['gamepad']
SPACEMOUSE = PRESETS['spacemouse']
# game_controller_node layout: 6 axes, 21 buttons; LB = 9, A = 0, START = 6, BACK = 4.
LB, A, START, BACK = 9, 0, 6, 4
CONFIG = TeleopConfig(max_linear_speed=0.2, max_angular_speed=0.8, deadzone=0.1,
                      initial_speed_scale=0.5)


def pad(axes=None, pressed=()):
    """A game_controller_node Joy message as (axes, buttons): sticks at rest unless given."""
    values = [0.0] * 6
    for index, value in (axes or {}).items():
        values[index] = value
    buttons = [0] * 21
    for index in pressed:
        buttons[index] = 1
    return values, buttons


def feed(mapper, messages, start=0.0, period=0.05):
    """Deliver (axes, buttons) messages at the joy driver's 20 Hz; returns the last time."""
    now = start
    for axes, buttons in messages:
        mapper.on_joy(axes, buttons, now)
        now += period
    return now - period


# -- Joy: dead man, axes, scaling --------------------------------------------------------------
def test_without_the_dead_man_a_deflected_stick_commands_zero():
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    t = feed(mapper, [pad({1: 1.0, 0: -1.0})] * 3)
    command = mapper.command(t + 0.01)
    assert command.input_fresh and not command.deadman_held
    assert command.twist == (0.0,) * 6
    assert 'dead-man' in command.reason


def test_releasing_the_dead_man_stops_at_once():
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    feed(mapper, [pad({1: 1.0}, [LB])] * 2)
    assert mapper.command(0.06).moving
    mapper.on_joy(*pad({1: 1.0}), 0.1)
    assert not mapper.command(0.1).moving


@pytest.mark.parametrize('axis_index,component,limit', [
    (1, 0, 0.2),  # left stick up/down -> x, m/s
    (0, 1, 0.2),  # left stick left/right -> y
    (3, 2, 0.2),  # right stick up/down -> z
    (2, 5, 0.8),  # right stick left/right -> yaw, rad/s
])
def test_gamepad_axes_map_to_speeds_with_deadzone_rescaling_and_speed_scale(
        axis_index, component, limit):
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    for value, fraction in ((1.0, 1.0), (-1.0, -1.0), (0.55, 0.5), (-0.28, -0.2),
                            (0.09, 0.0), (-0.05, 0.0)):
        mapper.on_joy(*pad({axis_index: value}, [LB]), 0.0)
        twist = mapper.command(0.01).twist
        expected = [0.0] * 6
        expected[component] = fraction * limit * 0.5  # speed scale 0.5
        assert twist == pytest.approx(expected, abs=1e-9), value


def test_gamepad_preset_leaves_roll_and_pitch_and_the_triggers_unmapped():
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    mapper.on_joy(*pad({4: -1.0, 5: -1.0}, [LB]), 0.0)  # both triggers pulled
    assert mapper.command(0.01).twist == (0.0,) * 6


@pytest.mark.parametrize('component', range(6))
def test_spacemouse_axes_are_x_y_z_roll_pitch_yaw_and_need_no_dead_man(component):
    mapper = TeleopMapper(CONFIG, SPACEMOUSE)
    axes = [0.0] * 6
    axes[component] = -0.82  # (0.82 - 0.1) / 0.9 = 0.8 of full speed
    mapper.on_joy(axes, [0, 0], 0.0)
    command = mapper.command(0.01)
    limit = 0.2 if component < 3 else 0.8
    expected = [0.0] * 6
    expected[component] = -0.8 * limit * 0.5
    assert command.deadman_held and command.twist == pytest.approx(expected)


def test_axis_values_beyond_one_are_clamped_to_full_speed():
    mapper = TeleopMapper(CONFIG, SPACEMOUSE)
    mapper.on_joy([1.7, -3.0, 0, 0, 0, 0], [0, 0], 0.0)  # spacenav can exceed full_scale
    assert mapper.command(0.0).twist[:2] == pytest.approx((0.1, -0.1))


def test_axis_signs_flip_a_direction():
    config = TeleopConfig(deadzone=0.0, initial_speed_scale=1.0,
                          axis_signs=(-1.0, 1.0, 1.0, 1.0, 1.0, 0.5))
    mapper = TeleopMapper(config, SPACEMOUSE)
    mapper.on_joy([0.5, 0.5, 0, 0, 0, 1.0], [0, 0], 0.0)
    assert mapper.command(0.0).twist == pytest.approx((-0.05, 0.05, 0, 0, 0, 0.25))


def test_an_axis_index_of_minus_one_is_unused():
    mapping = JoyMapping(axes=(0, -1, -1, -1, -1, -1))
    mapper = TeleopMapper(CONFIG, mapping)
    mapper.on_joy([1.0], [], 0.0)  # one axis, no buttons: all this mapping reads
    assert mapper.command(0.0).twist == pytest.approx((0.1, 0, 0, 0, 0, 0))


def test_motion_stops_when_the_joy_stream_is_older_than_input_timeout():
    mapper = TeleopMapper(TeleopConfig(input_timeout_s=0.25), GAMEPAD)
    last = feed(mapper, [pad({1: 1.0}, [LB])] * 10)
    assert mapper.command(last + 0.24).moving
    stale = mapper.command(last + 0.26)
    assert not stale.moving and not stale.input_fresh and 'no Joy message' in stale.reason


def test_without_any_joy_message_the_command_is_zero():
    command = TeleopMapper(CONFIG, GAMEPAD).command(123.0)
    assert command.twist == (0.0,) * 6 and not command.input_fresh


# -- Joy: buttons ------------------------------------------------------------------------------
def test_speed_buttons_step_by_a_tenth_per_press_within_bounds():
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    held_start = [pad(pressed=[START])] * 5  # one press, auto-repeated by the driver
    feed(mapper, [pad(), *held_start, pad()])
    assert mapper.speed_scale == pytest.approx(0.6)
    feed(mapper, [pad(pressed=[START]), pad()] * 10, start=1.0)
    assert mapper.speed_scale == pytest.approx(1.0)
    feed(mapper, [pad(pressed=[BACK]), pad()] * 12, start=2.0)
    assert mapper.speed_scale == pytest.approx(0.1)
    mapper.on_joy(*pad({1: 1.0}, [LB]), 3.0)
    assert mapper.command(3.0).twist[0] == pytest.approx(0.2 * 0.1)


def test_gripper_toggles_once_per_press_not_while_held():
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    assert mapper.gripper_closed is False
    held = [pad(pressed=[LB, A])] * 6
    feed(mapper, [pad(pressed=[LB]), *held, pad(pressed=[LB])])
    assert mapper.gripper_closed is True and mapper.gripper_toggles == 1
    feed(mapper, [*held, pad(pressed=[LB]), *held], start=1.0)
    assert mapper.gripper_closed is True and mapper.gripper_toggles == 3


def test_gripper_button_needs_the_dead_man_and_a_button_down_at_start_is_no_press():
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    feed(mapper, [pad(pressed=[LB, A]), pad(pressed=[LB])])  # first message is the baseline
    assert mapper.gripper_toggles == 0
    feed(mapper, [pad(), pad(pressed=[A]), pad()], start=1.0)  # no dead man
    assert mapper.gripper_toggles == 0
    feed(mapper, [pad(pressed=[LB]), pad(pressed=[LB, A])], start=2.0)
    assert mapper.gripper_toggles == 1 and mapper.gripper_closed


def test_initial_gripper_state_is_configurable():
    mapper = TeleopMapper(TeleopConfig(initial_gripper_closed=True), GAMEPAD)
    assert mapper.command(0.0).gripper_closed is True


# -- Joy: refused messages ---------------------------------------------------------------------
@pytest.mark.parametrize('axes,buttons,needle', [
    ([0.0] * 3, [0] * 21, '3 axes'),  # a joystick with fewer axes than the mapping reads
    ([0.0] * 6, [0] * 5, '5 buttons'),  # the dead man (9) is not there
    ([0.0] * 6, [], '0 buttons'),
    ([math.nan, 0, 0, 0, 0, 0], [0] * 21, 'axis 0'),
    ([0, math.inf, 0, 0, 0, 0], [0] * 21, 'axis 1'),
    ([0.0] * 6, [0] * 9 + [2] + [0] * 11, 'button 9'),
])
def test_malformed_joy_is_refused_and_stops_motion_at_once(axes, buttons, needle):
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    mapper.on_joy(*pad({1: 1.0}, [LB]), 0.0)
    assert mapper.command(0.01).moving
    with pytest.raises(JoyError, match=needle):
        mapper.on_joy(axes, buttons, 0.02)
    command = mapper.command(0.03)
    assert command.twist == (0.0,) * 6 and not command.input_fresh


def test_nan_in_an_axis_the_mapping_does_not_read_is_accepted():
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    axes, buttons = pad({1: 1.0}, [LB])
    axes[4] = math.nan  # left trigger: unmapped in the gamepad preset
    mapper.on_joy(axes, buttons, 0.0)
    assert mapper.command(0.0).twist[0] == pytest.approx(0.1)


def test_a_refused_message_does_not_fake_a_gripper_press():
    mapper = TeleopMapper(CONFIG, GAMEPAD)
    mapper.on_joy(*pad(pressed=[LB, A]), 0.0)
    with pytest.raises(JoyError):
        mapper.on_joy([0.0] * 2, [0] * 21, 0.05)
    mapper.on_joy(*pad(pressed=[LB, A]), 0.1)  # still the same press
    assert mapper.gripper_toggles == 0


# -- keyboard ----------------------------------------------------------------------------------
KEY_COMPONENTS = {'w': (0, 1), 's': (0, -1), 'a': (1, 1), 'd': (1, -1), 'r': (2, 1),
                  'f': (2, -1), 'j': (3, 1), 'l': (3, -1), 'i': (4, 1), 'k': (4, -1),
                  'q': (5, 1), 'e': (5, -1)}


@pytest.mark.parametrize('key', sorted(KEY_COMPONENTS))
def test_each_motion_key_moves_one_component_for_key_hold_s(key):
    mapper = TeleopMapper(TeleopConfig(key_hold_s=0.25, initial_speed_scale=1.0))
    assert mapper.on_key(key, 10.0)
    component, sign = KEY_COMPONENTS[key]
    expected = [0.0] * 6
    expected[component] = sign * (0.1 if component < 3 else 0.5)
    assert mapper.command(10.2).twist == pytest.approx(expected)
    assert mapper.command(10.26).twist == (0.0,) * 6


def test_auto_repeat_of_a_held_key_keeps_moving_and_release_stops_within_key_hold():
    mapper = TeleopMapper(TeleopConfig(key_hold_s=0.25))
    moving = []
    # press, the terminal's repeat delay, then a repeat every 33 ms; released after 0.62 s
    for t in (0.0, 0.1, 0.3, 0.5, 0.53, 0.56, 0.59, 0.62, 0.75, 0.86, 0.88):
        if t in (0.0, 0.5, 0.53, 0.56, 0.59, 0.62):
            mapper.on_key('w', t)
        moving.append(mapper.command(t).moving)
    assert moving == [True, True, False, True, True, True, True, True, True, True, False]


def test_keys_on_different_axes_combine_and_an_opposite_key_replaces():
    mapper = TeleopMapper(TeleopConfig(initial_speed_scale=1.0))
    mapper.on_key('w', 0.0)
    mapper.on_key('a', 0.05)
    assert mapper.command(0.1).twist[:2] == pytest.approx((0.1, 0.1))
    mapper.on_key('s', 0.1)
    assert mapper.command(0.15).twist[:2] == pytest.approx((-0.1, 0.1))


def test_x_stops_at_once():
    mapper = TeleopMapper(TeleopConfig())
    mapper.on_key('w', 0.0)
    mapper.on_key('q', 0.0)
    mapper.on_key('x', 0.05)
    assert mapper.command(0.06).twist == (0.0,) * 6


def test_space_toggles_the_gripper_and_its_auto_repeat_does_not_flicker():
    mapper = TeleopMapper(TeleopConfig(toggle_debounce_s=0.8))
    for t in (0.0, 0.5, 0.53, 0.56, 0.6):  # held space: press + auto-repeat
        mapper.on_key(' ', t)
    assert mapper.gripper_closed and mapper.gripper_toggles == 1
    mapper.on_key(' ', 2.0)
    assert not mapper.gripper_closed and mapper.gripper_toggles == 2


def test_plus_and_minus_keys_change_the_speed_scale_and_the_speed():
    mapper = TeleopMapper(TeleopConfig(initial_speed_scale=0.5))
    for key in '+=+':
        mapper.on_key(key, 0.0)
    assert mapper.speed_scale == pytest.approx(0.8)
    mapper.on_key('w', 0.0)
    assert mapper.command(0.1).twist[0] == pytest.approx(0.08)
    for _ in range(20):
        mapper.on_key('-', 0.2)
    assert mapper.speed_scale == pytest.approx(0.1)
    mapper.on_key('_', 0.2)
    assert mapper.speed_scale == pytest.approx(0.1)


def test_capitals_and_arrow_key_sequences_do_not_move():
    mapper = TeleopMapper(TeleopConfig())
    for key in ('W', 'A', '\x1b', '[', 'D', 'B', '\n', '7'):  # ESC [ D = arrow left
        assert not mapper.on_key(key, 0.0)
    assert mapper.command(0.01).twist == (0.0,) * 6


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize('kwargs', [
    {'deadzone': 1.0}, {'deadzone': -0.1}, {'max_linear_speed': 0.0},
    {'max_angular_speed': math.nan}, {'axis_signs': (1.0,) * 5},
    {'axis_signs': (2.0, 1, 1, 1, 1, 1)}, {'initial_speed_scale': 0.05},
    {'input_timeout_s': 0.0}, {'key_hold_s': -1.0},
])
def test_bad_teleop_config_is_refused(kwargs):
    with pytest.raises(ValueError):
        TeleopConfig(**kwargs)


@pytest.mark.parametrize('kwargs', [
    {'axes': (0, 1, 2, 3, 4)}, {'axes': (0, 1, 2, 3, 4, -2)},
    {'axes': (0,) * 6, 'deadman_button': -3},
])
def test_bad_joy_mapping_is_refused(kwargs):
    with pytest.raises(ValueError):
        JoyMapping(**kwargs)


def test_the_mapping_says_how_long_a_joy_message_must_be():
    assert (GAMEPAD.axes_needed, GAMEPAD.buttons_needed) == (4, 10)
    assert (SPACEMOUSE.axes_needed, SPACEMOUSE.buttons_needed) == (6, 1)


def test_deadzone_is_continuous_at_its_edge_and_reaches_one():
    assert apply_deadzone(0.1, 0.1) == 0.0
    assert apply_deadzone(0.1001, 0.1) == pytest.approx(0.0, abs=1e-3)
    assert apply_deadzone(-1.0, 0.1) == -1.0


# -- reading keys ------------------------------------------------------------------------------
def wait_for(predicate, seconds=2.0):
    import time
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_key_reader_splits_piped_lines_into_keys_and_sees_the_end():
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, 'r') as stream:
        reader = KeyReader(stream, clock=lambda: 7.0)
        assert not reader.terminal
        os.write(write_fd, b'wa \n+x\n')
        os.close(write_fd)
        assert wait_for(lambda: reader._finished.is_set())
        assert reader.poll() == [(k, 7.0) for k in 'wa +x']
        assert reader.finished


def test_key_reader_puts_a_terminal_in_cbreak_mode_and_restores_it():
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    assert before[3] & termios.ICANON and before[3] & termios.ECHO
    stream = os.fdopen(slave, 'r')
    try:
        reader = KeyReader(stream)
        assert reader.terminal
        during = termios.tcgetattr(slave)
        assert not during[3] & (termios.ICANON | termios.ECHO)
        assert during[3] & termios.ISIG  # Ctrl-C still raises SIGINT
        os.write(master, b'wq')  # no Enter: cbreak delivers keys at once
        keys = []
        assert wait_for(lambda: keys.extend(k for k, _ in reader.poll()) or keys == ['w', 'q'])
        reader.restore()
        assert not reader.terminal
        assert termios.tcgetattr(slave) == before
        reader.restore()  # idempotent
    finally:
        os.close(master)
        stream.close()
