"""Teleoperation without ROS: a person's input -> a Servo twist in speed units and a gripper state.

``TeleopMapper`` is the whole behaviour of ``teleop_node`` as a state machine driven by input
events and an injected clock, so it is tested with recorded Joy messages and key sequences and
no DDS. ``KeyReader`` reads single key presses from a terminal (or a pipe) in a daemon thread.

Rules, in order of precedence (``TeleopMapper.command``):

* **Fresh input only.** Joy: motion only while the newest Joy message is younger than
  ``input_timeout_s`` (the joy drivers re-publish at ``autorepeat_rate``, 20 Hz by default, so a
  held stick keeps its stream fresh; with ``autorepeat_rate: 0`` it would not). Keyboard: a
  terminal sees key presses, never releases, so each press commands motion for ``key_hold_s``;
  the terminal's auto-repeat of a held key keeps it going. Stale or absent input -> zero twist.
* **Dead man.** Joy: motion and the gripper toggle only while the dead-man button is held
  (``deadman_button``; -1: none, for a 3-D mouse). Releasing it stops at once.
* **Refused messages.** A Joy message with fewer axes or buttons than the mapping reads, a
  non-finite value in an axis the mapping reads, or a button value other than 0/1 is refused:
  counted by the caller and treated as no input (the last good message is forgotten, so motion
  stops at once), never an IndexError.
* **Scaling.** Each axis: deadzone with rescaling (``|v| < deadzone`` -> 0, then ``(|v| -
  deadzone) / (1 - deadzone)`` so the output is continuous and full deflection is full speed),
  clamped to [-1, 1], times its sign from ``axis_signs``, times ``max_linear_speed`` (x, y, z,
  m/s) or ``max_angular_speed`` (roll, pitch, yaw, rad/s), times the speed scale (0.1 .. 1.0 in
  steps of 0.1, changed by the speed buttons / keys on each press).
* **Gripper.** Toggles open/closed on a rising edge of the gripper button (holding it does not
  flicker; the first Joy message only sets the baseline) or on the space key (auto-repeat of a
  held space within ``toggle_debounce_s`` of the previous one is the same press).

Keyboard map (``KEY_HELP``): w/s +x/-x, a/d +y/-y, r/f +z/-z, j/l +roll/-roll, i/k
+pitch/-pitch, q/e +yaw/-yaw, space gripper, + (or =) / - (or _) speed, x stop at once. Keys are
case-sensitive on purpose: arrow keys send ``ESC [ A`` .. ``ESC [ D``, whose capitals must not
move the arm.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
import math
import os
import queue
import threading
import time
from typing import Optional, TextIO

#: Twist components in the order of ``axes``, ``axis_signs`` and ``TeleopCommand.twist``.
AXIS_NAMES = ('x', 'y', 'z', 'roll', 'pitch', 'yaw')
LINEAR = (0, 1, 2)
#: The speed scale moves in tenths between these (inclusive).
MIN_SPEED_TENTHS = 1
MAX_SPEED_TENTHS = 10

#: key -> (twist component index, direction).
MOTION_KEYS: dict[str, tuple[int, float]] = {
    'w': (0, 1.0), 's': (0, -1.0),
    'a': (1, 1.0), 'd': (1, -1.0),
    'r': (2, 1.0), 'f': (2, -1.0),
    'j': (3, 1.0), 'l': (3, -1.0),
    'i': (4, 1.0), 'k': (4, -1.0),
    'q': (5, 1.0), 'e': (5, -1.0),
}
GRIPPER_KEY = ' '
STOP_KEY = 'x'
SPEED_UP_KEYS = ('+', '=')  # '=' is '+' without shift on US layouts
SPEED_DOWN_KEYS = ('-', '_')
KEY_HELP = ('keys: w/s +x/-x, a/d +y/-y, r/f +z/-z, j/l +roll/-roll, i/k +pitch/-pitch, '
            'q/e +yaw/-yaw, space gripper open/close, +/- speed, x stop; Ctrl-C quits')


class JoyError(ValueError):
    """A Joy message the mapping cannot use."""


@dataclass(frozen=True)
class JoyMapping:
    """Which Joy axes and buttons mean what; -1 means unused / absent."""

    axes: tuple[int, ...]  # (6,) Joy axis index for x, y, z, roll, pitch, yaw
    deadman_button: int = -1
    gripper_button: int = -1
    speed_up_button: int = -1
    speed_down_button: int = -1

    def __post_init__(self) -> None:
        object.__setattr__(self, 'axes', tuple(int(a) for a in self.axes))
        if len(self.axes) != len(AXIS_NAMES):
            raise ValueError(f'axes needs {len(AXIS_NAMES)} indices ({", ".join(AXIS_NAMES)}), '
                             f'got {len(self.axes)}')
        named = [(f'axes[{i}] ({name})', index)
                 for i, (name, index) in enumerate(zip(AXIS_NAMES, self.axes, strict=True))]
        for name, index in (*named, *self.buttons.items()):
            if index < -1:
                raise ValueError(f'{name}: index {index} is invalid (>= 0, or -1 for unused)')

    @property
    def buttons(self) -> dict[str, int]:
        return {'deadman_button': self.deadman_button, 'gripper_button': self.gripper_button,
                'speed_up_button': self.speed_up_button,
                'speed_down_button': self.speed_down_button}

    @property
    def axes_needed(self) -> int:
        """Shortest ``Joy.axes`` this mapping can read."""
        return max(self.axes) + 1

    @property
    def buttons_needed(self) -> int:
        return max(self.buttons.values()) + 1

    def describe(self) -> str:
        axes = ' '.join(f'{n}={i}' for n, i in zip(AXIS_NAMES, self.axes, strict=True)
                        if i >= 0) or 'none'
        buttons = ' '.join(f'{n.removesuffix("_button")}={i}'
                           for n, i in self.buttons.items() if i >= 0) or 'none'
        return f'axes {axes}; buttons {buttons}'


#: Shipped Joy layouts (parameter ``preset``); explicit ``axes`` / ``*_button`` parameters
#: override single entries.
#:
#: ``gamepad``: the layout of ``joy``'s ``game_controller_node`` (SDL's controller database,
#: the same indices for Xbox, PlayStation and most clones; sticks are +1 left / up). Left stick
#: up/down = x (forward/back), left stick left/right = y, right stick up/down = z, right stick
#: left/right = yaw (left turns counter-clockwise); roll and pitch are not mapped (use a 3-D
#: mouse or the keyboard). LB (button 9) = dead man, A (0) = gripper, START (6) = faster,
#: BACK (4) = slower. ``joy_node`` orders axes and buttons per device instead; for an Xbox pad
#: under ``joy_node`` set ``axes: [1, 0, 4, -1, -1, 3]``, ``deadman_button: 4``,
#: ``speed_up_button: 7``, ``speed_down_button: 6``.
#:
#: ``spacemouse``: ``spacenav``'s Joy (6 axes already in the robot convention x y z roll pitch
#: yaw, 2 buttons); button 0 = gripper; no dead man (the cap springs back to zero). spacenav
#: publishes on /spacenav/joy: remap ``-r /joy:=/spacenav/joy``. (Older spacenav releases sent
#: motion messages without buttons, which this preset refuses as too short: set
#: ``gripper_button: -1`` there.)
PRESETS: dict[str, JoyMapping] = {
    'gamepad': JoyMapping(axes=(1, 0, 3, -1, -1, 2), deadman_button=9, gripper_button=0,
                          speed_up_button=6, speed_down_button=4),
    'spacemouse': JoyMapping(axes=(0, 1, 2, 3, 4, 5), gripper_button=0),
}


@dataclass(frozen=True)
class TeleopConfig:
    max_linear_speed: float = 0.1  # m/s at full deflection and speed scale 1.0
    max_angular_speed: float = 0.5  # rad/s
    deadzone: float = 0.05
    axis_signs: tuple[float, ...] = (1.0,) * 6  # flip (-1) or damp (|s| < 1) a direction
    initial_speed_scale: float = 0.5
    input_timeout_s: float = 0.25  # Joy: zero when the newest message is older
    key_hold_s: float = 0.25  # keyboard: how long one key press commands motion
    toggle_debounce_s: float = 0.8  # keyboard: a space this soon after the last is auto-repeat
    initial_gripper_closed: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, 'axis_signs', tuple(float(s) for s in self.axis_signs))
        for name in ('max_linear_speed', 'max_angular_speed', 'input_timeout_s', 'key_hold_s'):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f'{name} must be positive, got {value!r}')
        if not 0.0 <= self.deadzone < 1.0:
            raise ValueError(f'deadzone must be in [0, 1), got {self.deadzone!r}')
        if len(self.axis_signs) != len(AXIS_NAMES) or not all(
                -1.0 <= s <= 1.0 for s in self.axis_signs):
            raise ValueError(f'axis_signs needs 6 values in [-1, 1], got {self.axis_signs!r}')
        if not 0.1 <= self.initial_speed_scale <= 1.0:
            raise ValueError(f'initial_speed_scale must be in [0.1, 1], got '
                             f'{self.initial_speed_scale!r}')
        if not self.toggle_debounce_s >= 0:
            raise ValueError(f'toggle_debounce_s must be >= 0, got {self.toggle_debounce_s!r}')

    def speed_limits(self) -> tuple[float, ...]:
        """Full-scale speed of each twist component (m/s or rad/s)."""
        return tuple(self.max_linear_speed if i in LINEAR else self.max_angular_speed
                     for i in range(len(AXIS_NAMES)))


@dataclass(frozen=True)
class TeleopCommand:
    """What to publish for one stream period."""

    twist: tuple[float, ...]  # (6,) vx vy vz m/s, wx wy wz rad/s, in the base frame
    gripper_closed: bool
    speed_scale: float
    input_fresh: bool  # Joy: a usable message within input_timeout_s; keyboard: a key held
    deadman_held: bool  # keyboard and no-dead-man mappings: True whenever input is fresh
    reason: str = ''  # why the twist is zero ('' when moving or merely centred)

    @property
    def moving(self) -> bool:
        return any(self.twist)


def apply_deadzone(value: float, deadzone: float) -> float:
    """Zero inside the deadzone, rescaled outside so the output runs 0 .. 1 without a jump."""
    value = max(-1.0, min(1.0, value))
    magnitude = abs(value)
    if magnitude < deadzone or magnitude == 0.0:
        return 0.0
    return math.copysign((magnitude - deadzone) / (1.0 - deadzone), value)


@dataclass
class _JoyState:
    axes: tuple[float, ...]
    buttons: tuple[int, ...]
    received: float


@dataclass
class _KeyMotion:
    direction: float
    until: float


class TeleopMapper:
    """Input events + clock -> ``TeleopCommand``. Times are seconds of one monotonic clock.

    ``mapping`` None means keyboard input (``on_key``); otherwise Joy input (``on_joy``).
    """

    def __init__(self, config: TeleopConfig, mapping: Optional[JoyMapping] = None) -> None:
        self.config = config
        self.mapping = mapping
        self.gripper_closed = config.initial_gripper_closed
        self.gripper_toggles = 0
        self._speed_tenths = round(config.initial_speed_scale * 10)
        self._joy: Optional[_JoyState] = None
        self._previous_buttons: Optional[tuple[int, ...]] = None  # for rising edges
        self._keys: dict[int, _KeyMotion] = {}  # twist component -> the key holding it
        self._last_toggle_key = -math.inf

    @property
    def speed_scale(self) -> float:
        return self._speed_tenths / 10

    def _change_speed(self, tenths: int) -> None:
        self._speed_tenths = max(MIN_SPEED_TENTHS,
                                 min(MAX_SPEED_TENTHS, self._speed_tenths + tenths))

    # -- Joy ------------------------------------------------------------------------------------
    def check_joy(self, axes: Sequence[float], buttons: Sequence[int]) -> None:
        """Raise ``JoyError`` unless the message has everything the mapping reads, usable."""
        mapping = self._require_mapping()
        if len(axes) < mapping.axes_needed or len(buttons) < mapping.buttons_needed:
            raise JoyError(f'Joy has {len(axes)} axes and {len(buttons)} buttons; the mapping '
                           f'needs {mapping.axes_needed} axes and {mapping.buttons_needed} '
                           f'buttons ({mapping.describe()})')
        for name, index in zip(AXIS_NAMES, mapping.axes, strict=True):
            if index >= 0 and not math.isfinite(axes[index]):
                raise JoyError(f'axis {index} ({name}) is {axes[index]!r}')
        for name, index in mapping.buttons.items():
            if index >= 0 and buttons[index] not in (0, 1):
                raise JoyError(f'button {index} ({name}) is {buttons[index]!r}, not 0 or 1')

    def on_joy(self, axes: Sequence[float], buttons: Sequence[int], now: float) -> None:
        """A Joy message arrived at ``now``. Raises ``JoyError`` (and stops) when refused."""
        try:
            self.check_joy(axes, buttons)
        except JoyError:
            self._joy = None  # treated as no input: stop now, not after input_timeout_s
            raise
        mapping = self._require_mapping()
        state = _JoyState(tuple(float(a) for a in axes), tuple(int(b) for b in buttons), now)
        previous, self._previous_buttons = self._previous_buttons, state.buttons
        self._joy = state
        if previous is None:
            return  # baseline: a button already down at start is not a press

        def pressed(index: int) -> bool:
            return (index >= 0 and state.buttons[index] == 1
                    and (index >= len(previous) or previous[index] != 1))

        if pressed(mapping.speed_up_button):
            self._change_speed(1)
        if pressed(mapping.speed_down_button):
            self._change_speed(-1)
        if pressed(mapping.gripper_button) and self._deadman_held(state):
            self._toggle_gripper()

    def _deadman_held(self, state: _JoyState) -> bool:
        index = self._require_mapping().deadman_button
        return index < 0 or state.buttons[index] == 1

    def _require_mapping(self) -> JoyMapping:
        if self.mapping is None:
            raise JoyError('no Joy mapping configured (keyboard input)')
        return self.mapping

    # -- keyboard -------------------------------------------------------------------------------
    def on_key(self, key: str, now: float) -> bool:
        """A key press at ``now``; returns False for a key that means nothing."""
        if key in MOTION_KEYS:
            index, direction = MOTION_KEYS[key]
            self._keys[index] = _KeyMotion(direction, now + self.config.key_hold_s)
        elif key == STOP_KEY:
            self._keys.clear()
        elif key == GRIPPER_KEY:
            if now - self._last_toggle_key >= self.config.toggle_debounce_s:
                self._toggle_gripper()
            self._last_toggle_key = now
        elif key in SPEED_UP_KEYS:
            self._change_speed(1)
        elif key in SPEED_DOWN_KEYS:
            self._change_speed(-1)
        else:
            return False
        return True

    def _toggle_gripper(self) -> None:
        self.gripper_closed = not self.gripper_closed
        self.gripper_toggles += 1

    # -- output ---------------------------------------------------------------------------------
    def command(self, now: float) -> TeleopCommand:
        """The twist and gripper state to publish at ``now``."""
        if self.mapping is not None:
            return self._joy_command(now)
        return self._key_command(now)

    def _scaled(self, values: Sequence[float]) -> tuple[float, ...]:
        limits = self.config.speed_limits()
        return tuple(float(v) * s * limit * self.speed_scale
                     for v, s, limit in zip(values, self.config.axis_signs, limits, strict=True))

    def _zero(self, fresh: bool, deadman: bool, reason: str) -> TeleopCommand:
        return TeleopCommand((0.0,) * len(AXIS_NAMES), self.gripper_closed, self.speed_scale,
                             fresh, deadman, reason)

    def _joy_command(self, now: float) -> TeleopCommand:
        joy = self._joy
        if joy is None:
            return self._zero(False, False, 'no usable Joy message')
        age = now - joy.received
        if age > self.config.input_timeout_s:
            return self._zero(False, False, f'no Joy message for {age:.2f} s '
                                            f'(input_timeout_s={self.config.input_timeout_s:g})')
        if not self._deadman_held(joy):
            return self._zero(True, False, 'dead-man button released')
        values = [0.0 if index < 0 else apply_deadzone(joy.axes[index], self.config.deadzone)
                  for index in self._require_mapping().axes]
        return TeleopCommand(self._scaled(values), self.gripper_closed, self.speed_scale,
                             True, True)

    def _key_command(self, now: float) -> TeleopCommand:
        values = [0.0] * len(AXIS_NAMES)
        for index, motion in list(self._keys.items()):
            if now >= motion.until:
                del self._keys[index]
            else:
                values[index] = motion.direction
        if not any(values):
            return self._zero(False, False, 'no motion key held')
        return TeleopCommand(self._scaled(values), self.gripper_closed, self.speed_scale,
                             True, True)


class KeyReader:
    """Single key presses from ``stream`` in a daemon thread; ``poll`` returns (key, time) pairs.

    A terminal (``stream.isatty()``) is put in cbreak mode (no line buffering, no echo, and
    Ctrl-C still raises SIGINT, unlike full raw mode, so the node stops the usual way; output
    processing stays on, so log lines still end properly). ``restore`` puts the saved settings
    back; it runs from the node's ``destroy_node`` and, as a backstop, at interpreter exit.
    Anything else (a pipe, a file, a test's stream) is read line by line and split into
    characters: there is no raw mode to set, and ``echo wwd | teleop_node`` works.
    """

    def __init__(self, stream: Optional[TextIO],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: queue.Queue[tuple[str, float]] = queue.Queue()
        self._finished = threading.Event()
        self._fd: Optional[int] = None
        self._saved: Optional[list] = None
        self._lock = threading.Lock()
        try:
            is_tty = stream.isatty()
        except (AttributeError, ValueError, OSError):
            is_tty = False
        if is_tty:
            self._enter_cbreak(stream.fileno())
            target, args = self._read_fd, (self._fd,)
        else:
            target, args = self._read_lines, (stream,)
        self._thread = threading.Thread(target=target, args=args, daemon=True,
                                        name='teleop-keys')
        self._thread.start()

    @property
    def terminal(self) -> bool:
        """True while a terminal is in cbreak mode because of this reader."""
        return self._saved is not None

    @property
    def finished(self) -> bool:
        """True once the stream ended (and every key was polled)."""
        return self._finished.is_set() and self._keys.empty()

    def poll(self) -> list[tuple[str, float]]:
        keys = []
        while True:
            try:
                keys.append(self._keys.get_nowait())
            except queue.Empty:
                return keys

    def restore(self) -> None:
        """Give the terminal its settings back (idempotent)."""
        import termios

        with self._lock:
            if self._saved is None or self._fd is None:
                return
            try:
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            except termios.error:
                pass  # the terminal went away
            self._saved = None

    def _enter_cbreak(self, fd: int) -> None:
        import atexit
        import termios

        saved = termios.tcgetattr(fd)
        mode = termios.tcgetattr(fd)
        mode[3] &= ~(termios.ICANON | termios.ECHO)  # lflag: keys at once, not echoed
        mode[6][termios.VMIN] = 1
        mode[6][termios.VTIME] = 0
        self._fd, self._saved = fd, saved
        atexit.register(self.restore)
        termios.tcsetattr(fd, termios.TCSAFLUSH, mode)

    def _read_fd(self, fd: int) -> None:
        try:
            while True:
                data = os.read(fd, 64)
                if not data:
                    return
                now = self._clock()
                for key in data.decode('utf-8', errors='replace'):
                    self._keys.put((key, now))
        except OSError:  # terminal closed under us at shutdown
            pass
        finally:
            self._finished.set()

    def _read_lines(self, stream: Optional[TextIO]) -> None:
        try:
            for line in stream or ():  # None: a process started without stdin
                now = self._clock()
                for key in line.rstrip('\r\n'):
                    self._keys.put((key, now))
        except (OSError, ValueError):  # stream closed under us at shutdown
            pass
        finally:
            self._finished.set()
