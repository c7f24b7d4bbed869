"""NumPy <-> ROS 2 message objects for the standard types stored in bags.

Built on the ``rosbags`` type store (pure Python, CDR serialization, no ROS install needed), so
bags can be written and read on machines without rclpy. The message field layouts are the
standard ROS 2 ones; only the layout choices below are ours:

* ``std_msgs/Float32MultiArray`` actions carry ONE layout dimension of size 7 whose label is
  ``ACTION_LAYOUT_LABEL`` (``'dx,dy,dz,droll,dpitch,dyaw,gripper'``): the array is 1-D, so one
  ``MultiArrayDimension`` describes it, and the label names its entries in order.
* Images are written ``rgb8`` with ``step = 3 * width``; they are read by the one decoder,
  ``data.images.decode_image``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from rosbags.typesys import Stores, get_typestore
from rosbags.typesys.store import Typestore

from vla_align.actions import ACTION_DIM, ACTION_LAYOUT_LABEL
from vla_align.data.episode import CameraGeometry
from vla_align.data.images import decode_image

IMAGE = 'sensor_msgs/msg/Image'
CAMERA_INFO = 'sensor_msgs/msg/CameraInfo'
JOINT_STATE = 'sensor_msgs/msg/JointState'
POSE_STAMPED = 'geometry_msgs/msg/PoseStamped'
STRING = 'std_msgs/msg/String'
FLOAT32 = 'std_msgs/msg/Float32'
FLOAT32_MULTI_ARRAY = 'std_msgs/msg/Float32MultiArray'
FLOAT64_MULTI_ARRAY = 'std_msgs/msg/Float64MultiArray'
FLOAT64 = 'std_msgs/msg/Float64'
COMPRESSED_IMAGE = 'sensor_msgs/msg/CompressedImage'
TWIST_STAMPED = 'geometry_msgs/msg/TwistStamped'
TF_MESSAGE = 'tf2_msgs/msg/TFMessage'


def _newest_ros2_store() -> Stores:
    """Kilted (the distro installed here) if this rosbags knows it, else its newest ROS 2."""
    if hasattr(Stores, 'ROS2_KILTED'):
        return Stores.ROS2_KILTED
    ros2 = [store for store in Stores if store.name.startswith('ROS2_')]
    return ros2[-1]


#: Message classes and CDR (de)serialization for every type written to bags.
TYPESTORE: Typestore = get_typestore(_newest_ros2_store())


def _msg(typename: str, **fields: Any) -> Any:
    return TYPESTORE.types[typename](**fields)


def serialize(message: Any) -> memoryview:
    """CDR bytes of a message object from ``TYPESTORE``."""
    return TYPESTORE.serialize_cdr(message, message.__msgtype__)


def deserialize(data: bytes | memoryview, typename: str) -> Any:
    return TYPESTORE.deserialize_cdr(data, typename)


def header(stamp_ns: int, frame_id: str) -> Any:
    sec, nanosec = divmod(int(stamp_ns), 1_000_000_000)
    stamp = _msg('builtin_interfaces/msg/Time', sec=sec, nanosec=nanosec)
    return _msg('std_msgs/msg/Header', stamp=stamp, frame_id=frame_id)


def stamp_to_ns(msg_header: Any) -> int:
    return int(msg_header.stamp.sec) * 1_000_000_000 + int(msg_header.stamp.nanosec)


def image_msg(image: np.ndarray, stamp_ns: int, frame_id: str) -> Any:
    """``sensor_msgs/Image`` (rgb8) from an (H, W, 3) uint8 RGB array."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'expected an (H, W, 3) uint8 RGB image, got {image.dtype} '
                         f'{image.shape}')
    height, width = image.shape[:2]
    return _msg(IMAGE, header=header(stamp_ns, frame_id), height=height, width=width,
                encoding='rgb8', is_bigendian=0, step=3 * width,
                data=np.ascontiguousarray(image).reshape(-1))


def image_from_msg(msg: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB of an image message (``data.images.decode_image``)."""
    return np.array(decode_image(msg))  # a writable copy: episodes own their frames


def camera_info_msg(camera: CameraGeometry, stamp_ns: int) -> Any:
    """``sensor_msgs/CameraInfo`` of an undistorted pinhole camera (K, P from intrinsics)."""
    fx, fy, cx, cy = camera.intrinsics()
    k = np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], dtype=np.float64)
    p = np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=np.float64)
    roi = _msg('sensor_msgs/msg/RegionOfInterest', x_offset=0, y_offset=0, height=0, width=0,
               do_rectify=False)
    return _msg(CAMERA_INFO, header=header(stamp_ns, camera.frame_id), height=camera.height,
                width=camera.width, distortion_model='plumb_bob',
                d=np.zeros(5, dtype=np.float64), k=k, r=np.eye(3, dtype=np.float64).reshape(-1),
                p=p, binning_x=0, binning_y=0, roi=roi)


def action_msg(action: np.ndarray) -> Any:
    """``std_msgs/Float32MultiArray`` with one labelled dimension of size 7."""
    data = np.asarray(action, dtype=np.float32).reshape(-1)
    if data.shape != (ACTION_DIM,):
        raise ValueError(f'an action has {ACTION_DIM} values, got shape {np.shape(action)}')
    dim = _msg('std_msgs/msg/MultiArrayDimension', label=ACTION_LAYOUT_LABEL, size=ACTION_DIM,
               stride=ACTION_DIM)
    layout = _msg('std_msgs/msg/MultiArrayLayout', dim=[dim], data_offset=0)
    return _msg(FLOAT32_MULTI_ARRAY, layout=layout, data=data)


def action_from_msg(msg: Any) -> np.ndarray:
    """(7,) float32 action; refuses arrays whose layout is not the action layout."""
    data = np.asarray(msg.data, dtype=np.float32)[int(msg.layout.data_offset):]
    labels = [dim.label for dim in msg.layout.dim]
    if data.shape != (ACTION_DIM,) or labels not in ([ACTION_LAYOUT_LABEL], []):
        raise ValueError(f'expected an action array {ACTION_LAYOUT_LABEL!r} of {ACTION_DIM} '
                         f'values, got {len(data)} values with layout labels {labels}')
    return data.copy()


def joint_state_msg(names: tuple[str, ...], positions: np.ndarray, stamp_ns: int,
                    frame_id: str = '') -> Any:
    empty = np.zeros(0, dtype=np.float64)
    return _msg(JOINT_STATE, header=header(stamp_ns, frame_id), name=list(names),
                position=np.asarray(positions, dtype=np.float64), velocity=empty, effort=empty)


def joint_positions_from_msg(msg: Any, names: tuple[str, ...]) -> np.ndarray:
    """Positions in the order of ``names`` (joint states may list joints in any order)."""
    index = {name: i for i, name in enumerate(msg.name)}
    missing = [name for name in names if name not in index]
    if missing:
        raise ValueError(f'joint state lacks joints {missing}')
    return np.asarray([msg.position[index[name]] for name in names], dtype=np.float64)


def pose_msg(position: np.ndarray, orientation_xyzw: np.ndarray, stamp_ns: int,
             frame_id: str) -> Any:
    x, y, z = (float(v) for v in position)
    qx, qy, qz, qw = (float(v) for v in orientation_xyzw)
    pose = _msg('geometry_msgs/msg/Pose',
                position=_msg('geometry_msgs/msg/Point', x=x, y=y, z=z),
                orientation=_msg('geometry_msgs/msg/Quaternion', x=qx, y=qy, z=qz, w=qw))
    return _msg(POSE_STAMPED, header=header(stamp_ns, frame_id), pose=pose)


def pose_from_msg(msg: Any) -> tuple[np.ndarray, np.ndarray]:
    """(position (3,), orientation xyzw (4,)) as float64."""
    p, q = msg.pose.position, msg.pose.orientation
    return np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])


def string_msg(text: str) -> Any:
    return _msg(STRING, data=text)


def float32_msg(value: float) -> Any:
    return _msg(FLOAT32, data=float(value))
