"""Bad inputs for every subscriber, generated property-based with hypothesis.

Each generator takes a seed and a count and returns ``BadInput``s spread evenly over the kinds of
damage it knows (one phase of the campaign per kind); within a kind, hypothesis chooses the
values -- sizes, encodings, which fields go non-finite, how far a stamp is off -- so each seed
explores new inputs while any one seed reproduces exactly. ``draw`` is the bridge: it runs a
hypothesis ``@given`` with the seed and collects what it generates (generation phase only: the
campaign, not hypothesis, judges the node's behaviour).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import math
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
import numpy as np

from vla_align.actions import ACTION_LAYOUT_LABEL
from vla_align.data.images import MONO16_ENCODINGS, RAW_ENCODINGS

#: Policy-node ``max_image_pixels`` during the campaign: "huge" frames stay cheap to send.
MAX_IMAGE_PIXELS = 256 * 256
INSTRUCTION = 'push the red block to the left'
BASE_FRAME = 'panda_link0'


@dataclass(frozen=True)
class BadInput:
    kind: str
    message: object
    #: The input must be dropped (True) or may be used once clamped (False: finite but out of
    #: the limits).
    malformed: bool = True


def draw(strategy: st.SearchStrategy, n: int, seed: int) -> list[Any]:
    """``n`` examples of ``strategy``, the same ones for the same seed."""
    found: list[Any] = []
    attempt = 0
    while len(found) < n and attempt < 20:
        @hypothesis_seed(seed * 1009 + attempt)
        @settings(max_examples=n - len(found), database=None, phases=[Phase.generate],
                  deadline=None, suppress_health_check=list(HealthCheck))
        @given(strategy)
        def collect(value: Any) -> None:
            found.append(value)

        collect()
        attempt += 1
    if not found:
        raise ValueError(f'hypothesis generated no example of {strategy!r}')
    # A kind with fewer distinct values than n (hypothesis stops once it has seen them all)
    # repeats them: its whole space is then covered.
    return [found[i % len(found)] for i in range(n)]


def _spread(kinds: dict[str, st.SearchStrategy], n: int, seed: int) -> list[BadInput]:
    """n inputs, kinds in turn (the first ones get one more when n is not a multiple)."""
    names = list(kinds)
    counts = {name: n // len(names) + (i < n % len(names)) for i, name in enumerate(names)}
    drawn = {name: iter(draw(kinds[name], counts[name], seed + i) if counts[name] else [])
             for i, name in enumerate(names)}
    return [next(drawn[names[i % len(names)]]) for i in range(n)]


def _noise(size: int) -> st.SearchStrategy:
    """``size`` pseudo-random bytes (hypothesis picks the generator seed)."""
    return st.randoms(use_true_random=False).map(lambda r: r.randbytes(size))


def _image(width: int, height: int, encoding: str, step: int, data: bytes) -> Any:
    from sensor_msgs.msg import Image

    msg = Image(height=height, width=width, encoding=encoding, step=step, is_bigendian=0)
    msg.data = data
    return msg


# -- camera images (policy node) ----------------------------------------------------------------
_sizes = st.tuples(st.integers(1, 80), st.integers(1, 80))
#: What the one image decoder reads: it lower-cases the encoding and nothing else, so '16UC1'
#: and '8UC3' are decodable (they were once listed here as bad) and 'rgb8 ' is not.
_DECODABLE = {*RAW_ENCODINGS, *MONO16_ENCODINGS}
_UNDECODABLE = ['32FC1', 'bayer_rggb8', 'yuv422', 'rgba16', '', 'jpeg', 'rgb8 ', '8UC2', '16SC1']


@st.composite
def _unknown_encoding(draw_: Callable, kind: str = 'unknown_encoding') -> BadInput:
    w, h = draw_(_sizes)
    encoding = draw_(st.one_of(st.sampled_from(_UNDECODABLE),
                               st.text(min_size=1, max_size=300).filter(
                                   lambda e: e.lower() not in _DECODABLE)))
    return BadInput(kind, _image(w, h, encoding, 3 * w, draw_(_noise(3 * w * h))))


@st.composite
def _step_too_short(draw_: Callable, kind: str = 'step_too_short') -> BadInput:
    w, h = draw_(_sizes)
    step = draw_(st.integers(0, 3 * w - 1))
    encoding = draw_(st.sampled_from(['rgb8', 'bgr8']))
    return BadInput(kind, _image(w, h, encoding, step, draw_(_noise(step * h))))


@st.composite
def _data_length_mismatch(draw_: Callable, kind: str = 'data_length_mismatch') -> BadInput:
    w, h = draw_(_sizes)
    size = draw_(st.integers(0, 6 * w * h).filter(lambda s: s != 3 * w * h))
    return BadInput(kind, _image(w, h, 'rgb8', 3 * w, draw_(_noise(size))))


@st.composite
def _zero_size(draw_: Callable, kind: str = 'zero_size') -> BadInput:
    w, h = draw_(_sizes)
    w, h = draw_(st.sampled_from([(0, h), (w, 0), (0, 0)]))
    return BadInput(kind, _image(w, h, 'rgb8', 3 * w, draw_(_noise(draw_(st.integers(0, 64))))))


@st.composite
def _huge(draw_: Callable, kind: str = 'huge') -> BadInput:
    if draw_(st.booleans()):  # huge claimed dimensions, small data
        w, h = draw_(st.integers(10_000, 2 ** 31 - 1)), draw_(st.integers(10_000, 2 ** 31 - 1))
        return BadInput(kind, _image(w, h, 'rgb8', 3 * w, draw_(_noise(
            draw_(st.integers(0, 4096))))))
    w = h = math.isqrt(MAX_IMAGE_PIXELS) + draw_(st.integers(1, 64))  # real, over the limit
    return BadInput(kind, _image(w, h, 'mono8', w, draw_(_noise(w * h))))


def image_inputs(seed: int, n: int) -> list[BadInput]:
    """Frames the policy must refuse: unknown encoding, short step, wrong data length, no
    pixels, more than ``MAX_IMAGE_PIXELS`` pixels (claimed or real)."""
    return _spread({'unknown_encoding': _unknown_encoding(), 'step_too_short': _step_too_short(),
                    'data_length_mismatch': _data_length_mismatch(), 'zero_size': _zero_size(),
                    'huge': _huge()}, n, seed)


# -- instructions (policy node, instruction node, recorder notes) --------------------------------
_BLANKS = [' ', '\t', '\n', '\r', '\u00a0', '\u2003', '\u3000', '\x0b', '\x0c', '\u2028']
# No NUL: ROS 2 strings are C strings, so 'text\x00more' arrives as 'text' -- cut in transport,
# before any node could refuse it (measured with rclpy).
_CONTROLS = st.one_of(
    st.characters(categories=['Cc']).filter(lambda c: c not in '\x00\t\n\x0b\x0c\r'),
    st.characters(categories=['Cf', 'Co']), st.sampled_from(['\x85', '\u202e', '\x1b[31m']))


@st.composite
def _with_control(draw_: Callable) -> BadInput:
    words = INSTRUCTION.split()
    at = draw_(st.integers(0, len(words)))
    return BadInput('control_characters', ' '.join(words[:at] + [draw_(_CONTROLS)] + words[at:]))


@st.composite
def _latin1_with_c1(draw_: Callable) -> BadInput:
    """Bytes decoded as Latin-1 (text that was never UTF-8), with a C1 control in it."""
    raw = bytearray(draw_(st.lists(st.integers(0x20, 0xFF), min_size=4, max_size=60)))
    raw[draw_(st.integers(0, len(raw) - 1))] = draw_(st.integers(0x80, 0x9F))
    return BadInput('non_utf8_looking', raw.decode('latin-1'))


@st.composite
def _too_long(draw_: Callable) -> BadInput:
    words = draw_(st.lists(st.sampled_from(INSTRUCTION.split()), min_size=3, max_size=10))
    text = ' '.join(words) + ' '
    length = draw_(st.integers(100_000, 100_050))
    return BadInput('too_long', (text * (length // len(text) + 1))[:length])


def instruction_texts(seed: int, n: int) -> list[BadInput]:
    """Instructions that must not be acted on: empty, whitespace only, control or format
    characters, text that looks like undecoded bytes (C1 controls), 100 kB of text."""
    return _spread({
        'empty': st.just(BadInput('empty', '')),
        'whitespace_only': st.lists(st.sampled_from(_BLANKS), min_size=1, max_size=50).map(
            lambda chars: BadInput('whitespace_only', ''.join(chars))),
        'control_characters': _with_control(), 'non_utf8_looking': _latin1_with_c1(),
        'too_long': _too_long()}, n, seed)


# -- robot state (policy node) -----------------------------------------------------------------
_finite_bad = {'nan': st.just(math.nan), 'inf': st.sampled_from([math.inf, -math.inf]),
               'beyond_float32': st.sampled_from([1e300, -1e39, 4e38]).flatmap(
                   lambda v: st.floats(min_value=abs(v) * 0.5, max_value=abs(v) * 2).map(
                       lambda x, v=v: math.copysign(x, v)))}


@st.composite
def _pose(draw_: Callable, kind: str) -> BadInput:
    from geometry_msgs.msg import PoseStamped

    values = [0.5, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0]
    if kind in _finite_bad:
        for j in draw_(st.sets(st.integers(0, 6), min_size=1)):
            values[j] = draw_(_finite_bad[kind])
    elif kind == 'zero_quaternion':
        values[3:] = [0.0, 0.0, 0.0, 0.0]
    else:  # non-unit quaternion: a direction scaled well off unit length
        q = np.array(draw_(st.lists(st.floats(-1, 1), min_size=4, max_size=4)))
        q = q / np.linalg.norm(q) if np.linalg.norm(q) > 1e-3 else np.array([1.0, 0, 0, 0])
        values[3:] = (q * draw_(st.one_of(st.floats(0.01, 0.7), st.floats(1.3, 1e6)))).tolist()
    msg = PoseStamped()
    msg.header.frame_id = BASE_FRAME  # only the values are bad
    p, o = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z, o.x, o.y, o.z, o.w = values
    return BadInput(kind, msg)


def pose_inputs(seed: int, n: int) -> list[BadInput]:
    """End-effector poses with NaN/inf, values beyond float32, and non-unit quaternions."""
    kinds = ('nan', 'inf', 'beyond_float32', 'zero_quaternion', 'non_unit_quaternion')
    return _spread({k: _pose(k) for k in kinds}, n, seed)


@st.composite
def _joints(draw_: Callable, kind: str) -> BadInput:
    from sensor_msgs.msg import JointState

    from vla_align.sim.types import PANDA_JOINT_NAMES

    names = list(PANDA_JOINT_NAMES)
    positions = draw_(st.lists(st.floats(-1, 1), min_size=len(names), max_size=len(names)))
    if kind == 'fewer_positions_than_names':
        positions = positions[:draw_(st.integers(0, len(names) - 1))]
    else:
        fingers = [k for k, name in enumerate(names) if 'finger' in name]
        bad = math.nan if kind == 'nan_gripper' else draw_(st.sampled_from([math.inf,
                                                                            -math.inf]))
        positions[draw_(st.sampled_from(fingers))] = bad
    return BadInput(kind, JointState(name=names, position=positions))


def joint_state_inputs(seed: int, n: int) -> list[BadInput]:
    """Joint states with non-finite gripper positions or fewer positions than names."""
    kinds = ('nan_gripper', 'inf_gripper', 'fewer_positions_than_names')
    return _spread({k: _joints(k) for k in kinds}, n, seed)


# -- model output / commands ---------------------------------------------------------------------
_small = st.floats(-0.02, 0.02)


@st.composite
def _action(draw_: Callable, kind: str) -> BadInput:
    from std_msgs.msg import Float32MultiArray, MultiArrayDimension

    values = np.array(draw_(st.lists(_small, min_size=7, max_size=7)), np.float64)
    values[6] = draw_(st.floats(0, 1))
    msg = Float32MultiArray()
    malformed = True
    if kind == 'wrong_length':
        size = draw_(st.integers(0, 30).filter(lambda k: k != 7))
        msg.data = draw_(st.lists(_small, min_size=size, max_size=size))
    elif kind == 'non_finite':
        for j in draw_(st.sets(st.integers(0, 6), min_size=1)):
            values[j] = draw_(st.sampled_from([math.nan, math.inf, -math.inf]))
        msg.data = values.astype(np.float32).tolist()
    elif kind == 'foreign_layout':
        msg.data = values.astype(np.float32).tolist()
        if draw_(st.booleans()):
            label = draw_(st.one_of(st.sampled_from(['x,y,z,qx,qy,qz,qw', 'joints',
                                                     ACTION_LAYOUT_LABEL[::-1]]),
                                    st.text(max_size=40).filter(  # '': no layout declared
                                        lambda t: t not in ('', ACTION_LAYOUT_LABEL))))
            msg.layout.dim = [MultiArrayDimension(label=label, size=7, stride=7)]
        else:
            msg.layout.data_offset = draw_(st.integers(1, 2 ** 31 - 1))
    else:  # finite but far out of the limits: may be used, clamped
        for j in range(6):
            values[j] = draw_(st.sampled_from([-1, 1])) * 10.0 ** draw_(st.floats(0, 30))
        values[6] = draw_(st.sampled_from([-1e30, 5.0, 1e6]))
        msg.data = values.astype(np.float32).tolist()
        malformed = False
    return BadInput(kind, msg, malformed)


def action_inputs(seed: int, n: int) -> list[BadInput]:
    """Float32MultiArray actions: wrong length, non-finite, a foreign layout, and finite but
    far out-of-limit values (the last ones may be used, clamped)."""
    kinds = ('wrong_length', 'non_finite', 'foreign_layout', 'out_of_limits')
    return _spread({k: _action(k) for k in kinds}, n, seed)


@st.composite
def _twist(draw_: Callable, kind: str) -> BadInput:
    """A Servo twist; ``header.stamp`` holds an age offset in seconds (the sender stamps it
    ``now - age`` when it publishes) in ``age_s`` of the returned pair."""
    from geometry_msgs.msg import TwistStamped

    speeds = draw_(st.lists(st.floats(-0.2, 0.2), min_size=6, max_size=6))
    msg = TwistStamped()
    msg.header.frame_id = BASE_FRAME
    age = 0.0
    malformed = True
    if kind == 'non_finite':
        for j in draw_(st.sets(st.integers(0, 5), min_size=1)):
            speeds[j] = draw_(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif kind == 'stale_stamp':
        age = draw_(st.floats(0.2, 1e6))
    elif kind == 'future_stamp':
        age = -draw_(st.floats(0.2, 1e6))
    elif kind == 'wrong_frame':
        # (An empty frame_id means the command frame, as MoveIt Servo reads it: not bad.)
        msg.header.frame_id = draw_(st.one_of(st.sampled_from(['panda_hand', 'world',
                                                                'base_link']),
                                              st.text(min_size=1, max_size=30)).filter(
            lambda f: f.lstrip('/') not in (BASE_FRAME, '')))
    else:  # huge but finite: clamped to the arm's speed limits
        speeds = [draw_(st.sampled_from([-1, 1])) * 10.0 ** draw_(st.floats(0, 30))
                  for _ in range(6)]
        malformed = False
    lin, ang = msg.twist.linear, msg.twist.angular
    lin.x, lin.y, lin.z, ang.x, ang.y, ang.z = (float(v) for v in speeds)
    return BadInput(kind, (msg, age), malformed)


def twist_inputs(seed: int, n: int) -> list[BadInput]:
    """MoveIt-Servo-style TwistStamped commands: non-finite, stale or future stamps, another
    frame, huge speeds (may be used, clamped). ``message`` is ``(TwistStamped, age_s)``."""
    kinds = ('non_finite', 'stale_stamp', 'future_stamp', 'wrong_frame', 'huge_speed')
    return _spread({k: _twist(k) for k in kinds}, n, seed)


@st.composite
def _gripper_command(draw_: Callable, kind: str) -> BadInput:
    from std_msgs.msg import Float64MultiArray

    malformed = True
    if kind == 'empty':
        data: list[float] = []
    elif kind == 'wrong_length':
        data = draw_(st.lists(st.floats(0, 0.04), min_size=2, max_size=20))
    elif kind == 'non_finite':
        data = [draw_(st.sampled_from([math.nan, math.inf, -math.inf]))]
    else:  # finite, beyond the open..closed range: clamped
        data = [draw_(st.one_of(st.floats(0.05, 1e30), st.floats(-1e30, -0.01)))]
        malformed = False
    return BadInput(kind, Float64MultiArray(data=data), malformed)


def gripper_command_inputs(seed: int, n: int) -> list[BadInput]:
    """Forward-command-controller gripper commands: empty, several values, non-finite, far
    outside open..closed (may be used, clamped)."""
    kinds = ('empty', 'wrong_length', 'non_finite', 'out_of_range')
    return _spread({k: _gripper_command(k) for k in kinds}, n, seed)


@st.composite
def _joy(draw_: Callable, kind: str) -> BadInput:
    from sensor_msgs.msg import Joy

    axes = draw_(st.lists(st.floats(-1, 1), min_size=8, max_size=8))
    buttons = [1, 1] + draw_(st.lists(st.integers(0, 1), min_size=10, max_size=10))
    malformed = True
    if kind == 'non_finite_axes':
        # At least one of axes 0 and 1, which every preset reads: a NaN only in an axis the
        # mapping ignores is a usable message, accepted by design.
        for j in draw_(st.sets(st.integers(0, 7))) | {draw_(st.sampled_from([0, 1]))}:
            axes[j] = draw_(st.sampled_from([math.nan, math.inf, -math.inf]))
    elif kind == 'too_few_axes':
        axes = axes[:draw_(st.integers(0, 5))]
    elif kind == 'too_few_buttons':
        buttons = buttons[:draw_(st.integers(0, 1))]
    else:  # finite deflections beyond +-1: clamped to full scale
        axes = [draw_(st.sampled_from([-1, 1])) * 10.0 ** draw_(st.floats(0.1, 30))
                for _ in range(8)]
        malformed = False
    return BadInput(kind, Joy(axes=[float(a) for a in axes], buttons=buttons), malformed)


def joy_inputs(seed: int, n: int) -> list[BadInput]:
    """sensor_msgs/Joy from a broken or hostile driver: non-finite axes, fewer axes or buttons
    than the mapping needs, deflections far beyond +-1 (may be used, clamped); the dead-man
    button is held (buttons 0 and 1 pressed) so motion would follow a usable message."""
    kinds = ('non_finite_axes', 'too_few_axes', 'too_few_buttons', 'huge_axes')
    return _spread({k: _joy(k) for k in kinds}, n, seed)


def service_sequences(seed: int, n: int, names: tuple[str, ...]) -> list[str]:
    """``n`` service calls, in an order hypothesis picks (repeats and nonsense orders too)."""
    return draw(st.sampled_from(names), n, seed)
