"""Message <-> numpy conversions of the ROS nodes, tested without DDS."""
import math

from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32MultiArray, MultiArrayDimension

from vla_align.actions import ACTION_LABELS, UnsafeActionError
from vla_align.ros.conversions import (
    ACTION_LAYOUT_LABEL,
    ImageConversionError,
    StateConversionError,
    action_to_multiarray,
    action_to_twist,
    camera_info_msg,
    gripper_msg,
    image_to_rgb,
    joint_positions,
    multiarray_to_action,
    rgb_to_image,
    seconds_to_stamp,
    stamp_to_seconds,
    valid_pose_arrays,
)

STAMP = Time(sec=12, nanosec=345)


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)


def raw_image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    """An Image built by hand (rows padded with `pad` garbage bytes), independent of the code."""
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    padded = np.concatenate([rows, np.full((height, pad), 77, np.uint8)], axis=1)
    msg = Image(height=height, width=width, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


def test_packed_rgb8_is_read_without_a_copy(rgb):
    msg = raw_image(rgb, 'rgb8')
    out = image_to_rgb(msg)
    assert np.array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_bgr8_is_swapped_to_rgb(rgb):
    out = image_to_rgb(raw_image(rgb[..., ::-1].copy(), 'bgr8'))
    assert np.array_equal(out, rgb) and out.flags.c_contiguous


def test_mono8_becomes_three_equal_channels():
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = image_to_rgb(raw_image(gray[..., None], 'mono8'))
    assert out.shape == (3, 4, 3)
    assert all(np.array_equal(out[..., c], gray) for c in range(3))


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8'])
def test_padded_rows_are_skipped(rgb, encoding):
    pixels = rgb[..., :1] if encoding == 'mono8' else rgb
    expected = image_to_rgb(raw_image(pixels, encoding))
    assert np.array_equal(image_to_rgb(raw_image(pixels, encoding, pad=3)), expected)


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'mono8'])
def test_published_encodings_read_back(rgb, encoding):
    msg = rgb_to_image(rgb, STAMP, 'cam', encoding)
    assert msg.encoding == encoding and msg.header.frame_id == 'cam'
    assert msg.header.stamp == STAMP and msg.step * msg.height == len(msg.data)
    out = image_to_rgb(msg)
    if encoding == 'mono8':
        gray = np.rint(rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
        assert np.array_equal(out[..., 0], gray.astype(np.uint8))
    else:
        assert np.array_equal(out, rgb)


def test_step_shorter_than_a_row_is_refused(rgb):
    msg = raw_image(rgb, 'rgb8')
    msg.step = 5 * 3 - 1
    with pytest.raises(ImageConversionError, match='step'):
        image_to_rgb(msg)


def test_data_size_must_match_step_times_height(rgb):
    msg = raw_image(rgb, 'rgb8')
    msg.data = msg.data[:-1]
    with pytest.raises(ImageConversionError, match='bytes'):
        image_to_rgb(msg)
    msg = raw_image(rgb, 'rgb8')
    msg.height = 7
    with pytest.raises(ImageConversionError, match='bytes'):
        image_to_rgb(msg)


@pytest.mark.parametrize('encoding', ['32FC1', 'yuv422', 'bayer_rggb8', ''])
def test_unsupported_encodings_are_refused_by_name(rgb, encoding):
    msg = raw_image(rgb, 'rgb8')
    msg.encoding = encoding
    with pytest.raises(ImageConversionError, match='unsupported image encoding'):
        image_to_rgb(msg)


def test_empty_image_is_refused():
    with pytest.raises(ImageConversionError, match='no pixels'):
        image_to_rgb(Image(encoding='rgb8'))


def test_action_message_carries_the_documented_layout():
    action = np.array([0.01, -0.02, 0.0, 0.1, 0.0, -0.1, 1.0], np.float32)
    msg = action_to_multiarray(action)
    assert ACTION_LAYOUT_LABEL == 'dx,dy,dz,droll,dpitch,dyaw,gripper'
    assert [(d.label, d.size, d.stride) for d in msg.layout.dim] == [(ACTION_LAYOUT_LABEL, 7, 7)]
    assert ACTION_LAYOUT_LABEL.split(',') == list(ACTION_LABELS)
    assert np.array_equal(np.array(msg.data, np.float32), action)
    assert np.array_equal(multiarray_to_action(msg), action)


def test_action_messages_with_a_foreign_layout_or_count_are_refused():
    msg = action_to_multiarray(np.zeros(7))
    msg.layout.dim[0].label = 'x,y,z'
    with pytest.raises(ValueError, match='layout'):
        multiarray_to_action(msg)
    with pytest.raises(UnsafeActionError):
        multiarray_to_action(Float32MultiArray(data=[0.0] * 6))
    with pytest.raises(UnsafeActionError, match='non-finite'):
        multiarray_to_action(Float32MultiArray(data=[0.0] * 6 + [math.nan]))
    two_dims = action_to_multiarray(np.zeros(7))
    two_dims.layout.dim.append(MultiArrayDimension(label='', size=1, stride=1))
    with pytest.raises(ValueError, match='layout'):
        multiarray_to_action(two_dims)


def test_action_without_layout_and_with_offset_is_read():
    msg = Float32MultiArray(data=[9.0] + [0.0] * 6 + [1.0])
    msg.layout.data_offset = 1
    assert multiarray_to_action(msg)[-1] == 1.0


def test_action_message_refuses_non_finite_values():
    with pytest.raises(UnsafeActionError):
        action_to_multiarray(np.array([0, 0, 0, 0, 0, np.inf, 0]))


def test_twist_is_the_delta_times_the_control_rate_stamped_in_the_base_frame():
    action = np.array([0.01, -0.02, 0.03, 0.1, -0.05, 0.02, 1.0], np.float32)
    msg = action_to_twist(action, 10.0, STAMP, 'panda_link0')
    linear = [msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z]
    angular = [msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z]
    assert np.allclose(linear + angular, action[:6].astype(np.float64) * 10.0)
    assert msg.header.stamp == STAMP and msg.header.frame_id == 'panda_link0'
    assert gripper_msg(action).data == pytest.approx(1.0)
    with pytest.raises(ValueError, match='positive'):
        action_to_twist(action, 0.0, STAMP, 'base')


def test_camera_info_has_pinhole_matrices():
    msg = camera_info_msg(128, 96, (100.0, 101.0, 63.5, 47.5), STAMP, 'cam')
    assert (msg.width, msg.height, msg.header.frame_id) == (128, 96, 'cam')
    assert list(msg.k) == [100.0, 0.0, 63.5, 0.0, 101.0, 47.5, 0.0, 0.0, 1.0]
    assert list(msg.p)[:3] == [100.0, 0.0, 63.5] and list(msg.d) == [0.0] * 5


def test_stamps_round_trip_and_refuse_negative_times():
    stamp = seconds_to_stamp(1700000000.25)
    assert (stamp.sec, stamp.nanosec) == (1700000000, 250000000)
    assert stamp_to_seconds(stamp) == pytest.approx(1700000000.25)
    with pytest.raises(ValueError):
        seconds_to_stamp(-1.0)


# --- robustness: every malformed message is refused with a reason, never a crash --------------

def _reference_is_valid(width, height, encoding, step, size, max_pixels):
    channels = BYTES_PER_PIXEL.get(encoding.lower())
    return (channels is not None and width > 0 and height > 0 and step >= width * channels
            and size == step * height and width * height <= max_pixels)


#: The documented encodings of data.images.decode_image and their bytes per pixel.
BYTES_PER_PIXEL = {'rgb8': 3, 'bgr8': 3, 'mono8': 1, 'rgba8': 4, 'bgra8': 4, '8uc1': 1,
                   '8uc3': 3, 'mono16': 2, '16uc1': 2}


@settings(max_examples=400, deadline=None)
@given(width=st.integers(0, 40), height=st.integers(0, 40),
       encoding=st.sampled_from(['rgb8', 'bgr8', 'mono8', 'RGB8', '32FC1', 'bayer_rggb8', '',
                                 'rgba8', 'mono16']),
       extra_step=st.integers(-130, 10), size_delta=st.integers(-5, 5))
def test_image_to_rgb_accepts_exactly_the_consistent_images(width, height, encoding, extra_step,
                                                           size_delta):
    channels = BYTES_PER_PIXEL.get(encoding.lower(), 3)
    step = max(0, width * channels + extra_step)
    size = max(0, step * height + size_delta)
    msg = Image(width=width, height=height, encoding=encoding, step=step)
    msg.data = bytes(size)
    valid = _reference_is_valid(width, height, encoding, step, size, max_pixels=900)
    try:
        rgb = image_to_rgb(msg, max_pixels=900)
    except ImageConversionError as exc:
        assert not valid and str(exc)
        return
    assert valid and rgb.shape == (height, width, 3) and rgb.dtype == np.uint8


def test_huge_claimed_dimensions_are_refused_before_the_data_is_touched():
    msg = Image(width=2 ** 31, height=2 ** 31, encoding='rgb8', step=3 * 2 ** 31)
    with pytest.raises(ImageConversionError, match='larger than the 65536 pixels'):
        image_to_rgb(msg, max_pixels=65536)
    with pytest.raises(ImageConversionError, match='image data has 0 bytes'):
        image_to_rgb(msg)


def _pose(values):
    msg = PoseStamped()
    p, o = msg.pose.position, msg.pose.orientation
    p.x, p.y, p.z, o.x, o.y, o.z, o.w = values
    return msg


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                          st.floats(-2.0, 2.0)), min_size=7, max_size=7))
def test_a_pose_is_accepted_only_when_finite_with_a_unit_quaternion(values):
    with np.errstate(over='ignore', invalid='ignore'):
        as32 = np.array(values, dtype=np.float32)
        valid = bool(np.all(np.isfinite(as32))
                     and abs(np.linalg.norm(as32[3:].astype(np.float64)) - 1.0) <= 0.05)
    try:
        position, quaternion = valid_pose_arrays(_pose(values))
    except StateConversionError:
        assert not valid
        return
    assert valid and np.all(np.isfinite(position)) and np.all(np.isfinite(quaternion))


def test_joint_positions_picks_named_joints_and_refuses_broken_messages():
    names = ['a', 'finger1', 'finger2']
    msg = JointState(name=names, position=[0.3, 0.01, 0.02])
    assert np.allclose(joint_positions(msg, ['finger1', 'finger2']), [0.01, 0.02])
    assert joint_positions(msg, ['other']) is None  # a different robot's joint_states
    with pytest.raises(StateConversionError, match='3 joints but has 2 positions'):
        joint_positions(JointState(name=names, position=[0.3, 0.01]), ['finger1'])
    with pytest.raises(StateConversionError, match='non-finite'):
        joint_positions(JointState(name=names, position=[0.3, math.nan, 0.0]), ['finger1'])
    # a NaN in a joint the caller does not use is not its problem
    assert joint_positions(JointState(name=names, position=[math.nan, 0.0, 0.0]),
                           ['finger1']) is not None
