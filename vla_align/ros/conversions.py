"""ROS message <-> numpy conversions used by the nodes; no rclpy node or DDS needed.

Images: decoded by ``data.images.decode_image`` (rgb8, bgr8, mono8, rgba8, bgra8, mono16, any
row padding; CompressedImage jpeg/png) -> (H, W, 3) uint8 RGB, without a copy when the message
is already tightly packed rgb8. Actions: the 7-DoF array of
``vla_align.actions`` -> ``Float32MultiArray`` (the canonical record), ``TwistStamped``
(velocities for Cartesian controllers such as MoveIt Servo) and ``Float32`` (gripper).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Optional

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float32, Float32MultiArray, Header, MultiArrayDimension

from vla_align.actions import ACTION_DIM, ACTION_LAYOUT_LABEL, GRIPPER, validate_action
from vla_align.data.images import ImageDecodeError, decode_image

#: Encodings ``rgb_to_image`` writes (what the camera node publishes), channels per pixel.
ENCODING_CHANNELS: dict[str, int] = {'rgb8': 3, 'bgr8': 3, 'mono8': 1}
#: ``MultiArrayDimension.label`` of /vla/action: the layout travels with every message.


#: An image message that cannot be decoded (the data layer's error, under the name nodes use).
ImageConversionError = ImageDecodeError


class StateConversionError(ValueError):
    """A robot-state message (pose, joint states) with non-finite or inconsistent values."""


#: A pose quaternion whose norm is further than this from 1 is refused, not normalised: it
#: means the sender is broken (an all-zero default orientation, garbage memory).
QUATERNION_NORM_TOLERANCE = 0.05


# --- time -------------------------------------------------------------------------------------

def seconds_to_stamp(seconds: float) -> Time:
    """A ``builtin_interfaces/Time`` for ``seconds`` since the epoch (non-negative)."""
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f'a stamp needs a finite, non-negative time, got {seconds!r}')
    sec = int(seconds)
    return Time(sec=sec, nanosec=min(int(round((seconds - sec) * 1e9)), 999_999_999))


def stamp_to_seconds(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


# --- images -----------------------------------------------------------------------------------

def image_to_rgb(msg: Image, max_pixels: Optional[int] = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels of ``msg`` (``data.images.decode_image``, the project's one
    decoder); tightly packed rgb8 is a view on the message buffer (keep the message alive)."""
    return decode_image(msg, max_pixels)


def rgb_to_image(rgb: np.ndarray, stamp: Time, frame_id: str,
                 encoding: str = 'rgb8') -> Image:
    """An Image message of (H, W, 3) uint8 RGB pixels in ``encoding`` (rgb8, bgr8 or mono8)."""
    pixels = np.asarray(rgb)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ImageConversionError(f'expected (H, W, 3) uint8 RGB pixels, got {pixels.dtype} '
                                   f'{pixels.shape}')
    if encoding == 'rgb8':
        out = pixels
    elif encoding == 'bgr8':
        out = pixels[..., ::-1]
    elif encoding == 'mono8':
        weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
        out = np.rint(pixels.astype(np.float32) @ weights).astype(np.uint8)[..., None]
    else:
        raise ImageConversionError(f'unsupported image encoding {encoding!r}; expected one of '
                                   f'{", ".join(ENCODING_CHANNELS)}')
    height, width = pixels.shape[:2]
    msg = Image(header=Header(stamp=stamp, frame_id=frame_id), height=height, width=width,
                encoding=encoding, is_bigendian=0, step=width * out.shape[2])
    msg.data = np.ascontiguousarray(out).tobytes()  # bytes: the fast path of the setter
    return msg


def camera_info_msg(width: int, height: int, intrinsics: Sequence[float], stamp: Time,
                    frame_id: str) -> CameraInfo:
    """CameraInfo of an undistorted pinhole camera; ``intrinsics`` is (fx, fy, cx, cy)."""
    fx, fy, cx, cy = (float(v) for v in intrinsics)
    return CameraInfo(
        header=Header(stamp=stamp, frame_id=frame_id), width=int(width), height=int(height),
        distortion_model='plumb_bob', d=[0.0] * 5,
        k=[fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0],
        r=[1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
        p=[fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0])


# --- actions ----------------------------------------------------------------------------------

def action_to_multiarray(action: np.ndarray) -> Float32MultiArray:
    """/vla/action: 7 float32 values, layout label ``dx,dy,dz,droll,dpitch,dyaw,gripper``."""
    values = validate_action(action)
    msg = Float32MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=ACTION_LAYOUT_LABEL, size=ACTION_DIM,
                                          stride=ACTION_DIM)]
    msg.layout.data_offset = 0
    msg.data = values.tolist()
    return msg


def multiarray_to_action(msg: Float32MultiArray) -> np.ndarray:
    """The (7,) float32 action of a /vla/action message.

    A message that declares a layout must declare ours (other producers may publish 7 numbers
    without a layout; those are accepted). Raises ``ValueError`` (``UnsafeActionError`` for
    non-finite values or a wrong count).
    """
    dims = list(msg.layout.dim)
    if dims and (len(dims) != 1 or dims[0].label not in ('', ACTION_LAYOUT_LABEL)):
        labels = [d.label for d in dims]
        raise ValueError(f'action layout {labels} is not [{ACTION_LAYOUT_LABEL!r}]')
    offset = int(msg.layout.data_offset)
    return validate_action(np.asarray(msg.data, dtype=np.float32)[offset:])


def action_to_twist(action: np.ndarray, control_rate_hz: float, stamp: Time,
                    frame_id: str) -> TwistStamped:
    """The motion part of ``action`` as velocities: delta per control step x control rate.

    Cartesian controllers (MoveIt Servo) integrate twists over time, so a delta of 0.01 m per
    step at 10 Hz becomes 0.1 m/s; angular deltas (roll, pitch, yaw about the base axes)
    become rad/s the same way.
    """
    if not (control_rate_hz > 0 and math.isfinite(control_rate_hz)):
        raise ValueError(f'control rate must be positive, got {control_rate_hz!r}')
    values = validate_action(action).astype(np.float64) * control_rate_hz
    msg = TwistStamped(header=Header(stamp=stamp, frame_id=frame_id))
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in values[:3])
    msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (
        float(v) for v in values[3:6])
    return msg


def gripper_msg(action: np.ndarray) -> Float32:
    """/vla/gripper: the absolute gripper command in [0, 1] (0 open, 1 closed)."""
    return Float32(data=float(validate_action(action)[GRIPPER]))


# --- robot state ------------------------------------------------------------------------------

def pose_msg(position: Sequence[float], quaternion_xyzw: Sequence[float], stamp: Time,
             frame_id: str) -> PoseStamped:
    msg = PoseStamped(header=Header(stamp=stamp, frame_id=frame_id))
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (
        float(v) for v in position)
    (msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z,
     msg.pose.orientation.w) = (float(v) for v in quaternion_xyzw)
    return msg


def pose_to_arrays(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), quaternion xyzw (4,)) as float32 arrays."""
    p, q = msg.pose.position, msg.pose.orientation
    return (np.array([p.x, p.y, p.z], dtype=np.float32),
            np.array([q.x, q.y, q.z, q.w], dtype=np.float32))


def valid_pose_arrays(msg: PoseStamped) -> tuple[np.ndarray, np.ndarray]:
    """``pose_to_arrays`` of a usable pose; raises ``StateConversionError`` otherwise.

    Refused: non-finite values (also values too large for float32) and a quaternion that is
    not (nearly) unit length.
    """
    with np.errstate(over='ignore', invalid='ignore'):  # 1e300 -> inf is refused below
        position, quaternion = pose_to_arrays(msg)
        if not (np.all(np.isfinite(position)) and np.all(np.isfinite(quaternion))):
            raise StateConversionError(f'pose has non-finite values: position '
                                       f'{position.tolist()}, orientation {quaternion.tolist()}')
        norm = float(np.linalg.norm(quaternion.astype(np.float64)))
    if abs(norm - 1.0) > QUATERNION_NORM_TOLERANCE:
        raise StateConversionError(f'pose orientation is not a unit quaternion (norm {norm:.3g})')
    return position, quaternion


def joint_positions(msg: JointState, names: Sequence[str]) -> Optional[np.ndarray]:
    """Positions of the joints ``names`` (float64), or None when the message lacks one of them.

    A message that names a joint without giving its position, or gives a non-finite position
    for a requested joint, raises ``StateConversionError``: the sender is broken.
    """
    index = {name: i for i, name in enumerate(msg.name)}
    if not names or any(name not in index for name in names):
        return None
    if len(msg.position) < len(msg.name):
        raise StateConversionError(f'joint_states names {len(msg.name)} joints but has '
                                   f'{len(msg.position)} positions')
    values = np.array([msg.position[index[name]] for name in names], dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise StateConversionError(f'joint_states has non-finite positions for '
                                   f'{", ".join(names)}: {values.tolist()}')
    return values


def joint_state_msg(names: Sequence[str], positions: Sequence[float], stamp: Time) -> JointState:
    if len(names) != len(positions):
        raise ValueError(f'{len(names)} joint names but {len(positions)} positions')
    return JointState(header=Header(stamp=stamp), name=list(names),
                      position=[float(v) for v in positions])


# --- diagnostics ------------------------------------------------------------------------------

def diagnostic_status(name: str, hardware_id: str, level: bytes, message: str,
                      values: Mapping[str, object]) -> DiagnosticStatus:
    """A DiagnosticStatus; ``level`` is ``DiagnosticStatus.OK/WARN/ERROR``, floats get 4 digits."""
    def text(value: object) -> str:
        return f'{value:.4g}' if isinstance(value, float) else str(value)

    return DiagnosticStatus(level=level, name=name, hardware_id=hardware_id,
                            message=message,
                            values=[KeyValue(key=k, value=text(v)) for k, v in values.items()])


def diagnostic_array(stamp: Time, *statuses: DiagnosticStatus) -> DiagnosticArray:
    """/diagnostics message of this node's statuses."""
    return DiagnosticArray(header=Header(stamp=stamp), status=list(statuses))
