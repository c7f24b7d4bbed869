"""Where the policy's end-effector pose comes from: a pose topic, TF, or joint states + URDF.

No robot driver publishes our /vla/ee_pose; most publish ``/joint_states`` (and, through
robot_state_publisher, TF). Three interchangeable sources give the same ``StateSample`` (pose
of the tool in the robot base frame, unit quaternion, the ROS time it describes):

* ``PoseStateSource``: geometry_msgs/PoseStamped offered by a subscription callback.
* ``TfStateSource``: the newest base -> tool transform of a tf2_ros buffer (needs tf2_ros).
* ``JointStateSource``: forward kinematics of sensor_msgs/JointState on the robot's URDF in a
  private PyBullet DIRECT client; messages are validated on arrival and the kinematics
  (40-70 us on a Panda) runs in ``latest``, once per newest message.

Every source answers ``latest(now_s, max_age_s, at_s)`` with the sample the policy should see
or raises ``StateProblem`` with a one-line reason the node can log and put in its diagnostics.
With ``at_s`` (the camera frame's time) that is the newest sample at or before it -- the pose
the robot had when the picture was taken, which is how training data pairs them
(``data.contract_reader``) -- not one that arrived while the model waited for a thread. Plain
classes, no Node: the policy node owns subscriptions, clocks and threads.
"""
from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
import math
from pathlib import Path
import threading
from typing import Any, Optional, Protocol

from geometry_msgs.msg import PoseStamped
import numpy as np
from sensor_msgs.msg import JointState

from vla_align.data.state import unit_quaternion
from vla_align.ros.conversions import (
    StateConversionError,
    joint_positions,
    stamp_to_seconds,
    valid_pose_arrays,
)

#: How a sample's time is judged (the policy node's ``state_age_by``): its header stamp (a
#: live robot) or its arrival (replayed bags carry the recording's stamps).
AGE_BY = ('stamp', 'arrival')
#: The PyBullet Panda the simulator drives; its grasp point link is the simulator's EE_LINK.
DEFAULT_URDF = ('franka_panda', 'panda.urdf')
DEFAULT_TOOL_LINK = 'panda_grasptarget'
DEFAULT_BASE_LINK = 'panda_link0'
#: How far back a source keeps samples for pairing with a camera frame's time (s).
HISTORY_S = 1.0
_ALTERNATIVES = ("state_source: pose (geometry_msgs/PoseStamped on /vla/ee_pose) or "
                 "state_source: joint_states (sensor_msgs/JointState + the robot's URDF)")


class StateProblem(ValueError):
    """Why there is no usable robot state: stale, wrong frame, non-finite, missing joints..."""


class NoStateYet(StateProblem):
    """Nothing usable has arrived yet (normal at start-up; the node need not warn)."""


@dataclass(frozen=True)
class StateSample:
    """The end-effector pose in the robot base frame at one instant."""

    position: np.ndarray  # (3,) m, base frame
    quaternion: np.ndarray  # (4,) xyzw, unit length (the policy canonicalises), base frame
    stamp_s: float  # the time it describes (header stamp; arrival if unset), s: pairs it
    age_from_s: float  # the time its age is judged from (stamp or arrival, ``age_by``), s
    source: str  # 'pose' | 'tf' | 'joint_states'


class StateSource(Protocol):
    """What the policy node asks of any source."""

    def latest(self, now_s: float, max_age_s: float,
               at_s: Optional[float] = None) -> StateSample: ...

    def newest_stamp_s(self) -> Optional[float]:
        """The stamp of the newest sample kept (None: none, or unknown until asked)."""
        ...

    def close(self) -> None: ...


class RecentSamples:
    """The last ``HISTORY_S`` seconds of (time, value), appended in arrival order.

    ``at(t)`` is the newest value at or before ``t``; ``at(None)`` the newest. When all kept
    values are newer than ``t`` the frame is over a second older than the state or stamped on
    another clock (a camera without time sync): no pairing is possible and ``at`` gives the
    newest, as if unpaired. Thread-safe for one writer and readers.
    """

    def __init__(self, history_s: float = HISTORY_S, max_items: int = 4096) -> None:
        self._history_s = history_s
        self._items: deque[tuple[float, Any]] = deque(maxlen=max_items)
        self._lock = threading.Lock()

    def add(self, time_s: float, value: Any) -> None:
        with self._lock:
            if self._items and time_s < self._items[-1][0]:
                self._items.clear()  # time went back (a bag looped, sim time reset): restart
            self._items.append((time_s, value))
            while self._items and self._items[0][0] < time_s - self._history_s:
                self._items.popleft()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def newest_time(self) -> Optional[float]:
        with self._lock:
            return self._items[-1][0] if self._items else None

    def at(self, time_s: Optional[float]) -> Optional[tuple[float, Any]]:
        with self._lock:
            if not self._items:
                return None
            if time_s is None:
                return self._items[-1]
            index = bisect.bisect_right([t for t, _ in self._items], time_s) - 1
            return self._items[index]  # index -1 (all newer): the newest


def check_age(stamp_s: float, now_s: float, max_age_s: float, what: str) -> None:
    """Raise StateProblem unless ``stamp_s`` is within ``max_age_s`` of ``now_s`` either way.

    A sample from the future beyond the same margin means two clocks disagree (a robot PC
    without time sync, sim time vs wall time): as unusable as a stale one.
    """
    if not (math.isfinite(now_s) and math.isfinite(max_age_s) and max_age_s > 0):
        raise ValueError(f'need a finite now and a positive max age, got {now_s!r}, '
                         f'{max_age_s!r}')
    age = now_s - stamp_s
    if age > max_age_s:
        raise StateProblem(f'newest {what} is {age:.3f} s old (max {max_age_s:g} s)')
    if -age > max_age_s:
        raise StateProblem(f'newest {what} is stamped {-age:.3f} s in the future (max '
                           f'{max_age_s:g} s): are the clocks in sync?')


def checked_age(sample: Optional[StateSample], now_s: float, max_age_s: float,
                what: str) -> StateSample:
    """``sample`` if there is one and ``check_age`` passes it."""
    if sample is None:
        raise NoStateYet(f'no {what} received yet')
    check_age(sample.age_from_s, now_s, max_age_s, what)
    return sample


def _sample_times(stamp: Any, arrival_s: float, age_by: str) -> tuple[float, float]:
    """(the time a message describes, the time its age counts from), s.

    The header stamp describes it -- a zero stamp (unset by the sender) stands for the
    arrival -- and pairs it with camera frames stamped on the same clock, a replayed bag's
    too; its age counts from the stamp, or from the arrival with ``age_by: arrival``.
    """
    described = (float(arrival_s) if stamp.sec == 0 and stamp.nanosec == 0
                 else stamp_to_seconds(stamp))
    return described, float(arrival_s) if age_by == 'arrival' else described


def _check_age_by(age_by: str) -> str:
    if age_by not in AGE_BY:
        raise ValueError(f'age_by must be one of {AGE_BY}, got {age_by!r}')
    return age_by


def _frame(name: str, what: str) -> str:
    frame = str(name).lstrip('/')  # '/base' (ROS 1 style) names the same frame as 'base'
    if not frame:
        raise ValueError(f'{what} must name a frame, got {name!r}')
    return frame


# --- pose topic -----------------------------------------------------------------------------

class PoseStateSource:
    """The newest valid geometry_msgs/PoseStamped of the end effector in ``base_frame``."""

    def __init__(self, base_frame: str, age_by: str = 'stamp') -> None:
        self.base_frame = _frame(base_frame, 'base_frame')
        self.age_by = _check_age_by(age_by)
        self._samples = RecentSamples()

    def offer(self, msg: PoseStamped, arrival_s: float) -> StateSample:
        """Keep ``msg`` (received at ``arrival_s``, ROS clock) as the newest pose.

        A broken pose raises StateProblem and drops the kept ones: the robot state is
        unknown now, not what it was.
        """
        try:
            sample = self._convert(msg, arrival_s)
        except StateProblem:
            self._samples.clear()
            raise
        self._samples.add(sample.stamp_s, sample)
        return sample

    def _convert(self, msg: PoseStamped, arrival_s: float) -> StateSample:
        frame = msg.header.frame_id.lstrip('/')
        if not frame:
            raise StateProblem(f'pose has an empty frame_id; it must be the base frame '
                               f'{self.base_frame!r}')
        if frame != self.base_frame:
            raise StateProblem(f'pose in frame {frame!r}, not the base frame '
                               f'{self.base_frame!r}')
        try:
            position, quaternion = valid_pose_arrays(msg)
        except StateConversionError as exc:
            raise StateProblem(str(exc)) from None
        # The float64 values of the message, not valid_pose_arrays' float32 copies.
        p, q = msg.pose.position, msg.pose.orientation
        stamp_s, age_from_s = _sample_times(msg.header.stamp, arrival_s, self.age_by)
        return StateSample(position=np.array([p.x, p.y, p.z], dtype=np.float64),
                           quaternion=unit_quaternion([q.x, q.y, q.z, q.w]),
                           stamp_s=stamp_s, age_from_s=age_from_s, source='pose')

    def latest(self, now_s: float, max_age_s: float,
               at_s: Optional[float] = None) -> StateSample:
        found = self._samples.at(at_s)
        return checked_age(None if found is None else found[1], now_s, max_age_s, 'pose')

    def newest_stamp_s(self) -> Optional[float]:
        return self._samples.newest_time()

    def close(self) -> None:
        self._samples.clear()


# --- TF ---------------------------------------------------------------------------------------

def tf_available() -> bool:
    """Whether ``import tf2_ros`` works (a full ROS install; not the PyPI wheels)."""
    try:
        import tf2_ros  # noqa: F401
    except ImportError:
        return False
    return True


class TfStateSource:
    """The newest ``base_frame`` -> ``tool_frame`` transform from TF.

    Relies on these rclpy/tf2_ros APIs (unchanged from Humble to Kilted):
    ``tf2_ros.Buffer()``; ``tf2_ros.TransformListener(buffer, node)``, which subscribes
    /tf and /tf_static on ``node`` (spun by the node's executor);
    ``buffer.lookup_transform(target_frame, source_frame, rclpy.time.Time())``, where time 0
    means the newest common time, returning a geometry_msgs/TransformStamped whose
    ``transform.translation`` / ``transform.rotation`` are the pose of ``source_frame`` in
    ``target_frame``; lookup failures derive from ``tf2_ros.TransformException``;
    ``TransformListener.unregister()`` (called if present). A zero stamp means an all-static
    chain, which is valid at any time, so it counts as ``now_s``.
    """

    def __init__(self, node: Any, base_frame: str, tool_frame: str) -> None:
        try:
            import rclpy.time
            import tf2_ros
        except ImportError as exc:
            raise StateProblem(f'state_source tf needs tf2_ros, which is not installed '
                               f'({exc}); install ROS 2 tf2_ros or use {_ALTERNATIVES}') from None
        self.base_frame = _frame(base_frame, 'base_frame')
        self.tool_frame = _frame(tool_frame, 'tool_frame')
        self._time = rclpy.time.Time
        self._errors = tf2_ros.TransformException
        self._buffer = tf2_ros.Buffer()
        self._listener = tf2_ros.TransformListener(self._buffer, node)

    def latest(self, now_s: float, max_age_s: float,
               at_s: Optional[float] = None) -> StateSample:
        msg = None
        if at_s is not None:  # the transform at the frame's time, when TF has it
            try:
                msg = self._buffer.lookup_transform(self.base_frame, self.tool_frame,
                                                    self._time(nanoseconds=int(at_s * 1e9)))
            except self._errors:
                msg = None
        try:
            if msg is None:
                msg = self._buffer.lookup_transform(self.base_frame, self.tool_frame,
                                                    self._time())
        except self._errors as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise StateProblem(f'no transform {self.base_frame} -> {self.tool_frame}: '
                               f'{reason}') from None
        t, r = msg.transform.translation, msg.transform.rotation
        position = np.array([t.x, t.y, t.z], dtype=np.float64)
        quaternion = np.array([r.x, r.y, r.z, r.w], dtype=np.float64)
        norm = float(np.linalg.norm(quaternion))
        if not (np.all(np.isfinite(position)) and math.isfinite(norm) and norm > 0.5):
            raise StateProblem(f'transform {self.base_frame} -> {self.tool_frame} is not '
                               f'finite: {position.tolist()}, {quaternion.tolist()}')
        stamp = msg.header.stamp
        stamp_s = now_s if stamp.sec == 0 and stamp.nanosec == 0 else stamp_to_seconds(stamp)
        sample = StateSample(position=position, quaternion=unit_quaternion(quaternion),
                             stamp_s=stamp_s, age_from_s=stamp_s, source='tf')
        return checked_age(sample, now_s, max_age_s, 'transform')

    def newest_stamp_s(self) -> Optional[float]:
        return None  # TF interpolates at the frame's time itself; nothing to wait for

    def close(self) -> None:
        unregister = getattr(self._listener, 'unregister', None)
        if unregister is not None:
            unregister()


# --- joint states + URDF ------------------------------------------------------------------

def default_urdf() -> Path:
    """pybullet_data's Panda, the robot the simulator drives."""
    import pybullet_data

    return Path(pybullet_data.getDataPath()).joinpath(*DEFAULT_URDF)


class JointStateSource:
    """Forward kinematics of sensor_msgs/JointState: ``tool_link``'s pose in ``base_link``.

    The URDF is loaded once into its own PyBullet DIRECT client (no shapes: kinematics only).
    Only the movable joints between base_link and tool_link matter (``chain_joints``: the
    Panda's 7 arm joints for panda_grasptarget; the finger joints do not move it). A driver
    that names them differently passes ``joint_names``: the message's names for
    ``chain_joints``, in that order.
    """

    def __init__(self, urdf_path: Optional[str | Path] = None,
                 tool_link: str = DEFAULT_TOOL_LINK, base_link: str = DEFAULT_BASE_LINK,
                 joint_names: Optional[Sequence[str]] = None, age_by: str = 'stamp') -> None:
        import pybullet
        from pybullet_utils.bullet_client import BulletClient

        self.age_by = _check_age_by(age_by)
        path = Path(urdf_path) if urdf_path else default_urdf()
        if not path.is_file():
            raise StateProblem(f'URDF {path} does not exist')
        self.urdf_path = path
        self._lock = threading.Lock()  # one PyBullet client, callbacks on any thread
        self._client: Optional[Any] = BulletClient(connection_mode=pybullet.DIRECT)
        try:
            self._setup(pybullet, path, _frame(tool_link, 'tool_link'),
                        _frame(base_link, 'base_link'), joint_names)
        except BaseException:
            self.close()
            raise
        self._positions = RecentSamples()  # stamp_s -> (chain positions, age_from_s)
        self._memo: Optional[tuple[object, StateSample]] = None  # (positions it is FK of, pose)

    def _setup(self, pybullet: Any, path: Path, tool_link: str, base_link: str,
               joint_names: Optional[Sequence[str]]) -> None:
        client = self._client
        flags = (getattr(pybullet, 'URDF_IGNORE_VISUAL_SHAPES', 0)
                 | getattr(pybullet, 'URDF_IGNORE_COLLISION_SHAPES', 0))
        try:
            body = client.loadURDF(str(path), useFixedBase=True, flags=flags)
        except pybullet.error as exc:
            raise StateProblem(f'cannot load URDF {path}: {exc}') from None
        infos = [client.getJointInfo(body, j) for j in range(client.getNumJoints(body))]
        # PyBullet numbers links like their parent joints; the root link is -1.
        links = {client.getBodyInfo(body)[0].decode(): -1}
        links.update({info[12].decode(): j for j, info in enumerate(infos)})
        for role, name in (('tool_link', tool_link), ('base_link', base_link)):
            if name not in links:
                raise StateProblem(f'{role} {name!r} is not a link of {path.name}; its links: '
                                   f'{", ".join(links)}')

        def ancestors(link: int) -> set[int]:
            found = set()
            while link != -1:
                found.add(link)
                link = infos[link][16]
            return found

        path_joints = sorted(ancestors(links[tool_link]) ^ ancestors(links[base_link]))
        movable = [j for j in path_joints if infos[j][2] != pybullet.JOINT_FIXED]
        odd = [infos[j][1].decode() for j in movable
               if infos[j][2] not in (pybullet.JOINT_REVOLUTE, pybullet.JOINT_PRISMATIC)]
        if odd:
            raise StateProblem(f'joints {odd} between {base_link} and {tool_link} are neither '
                               f'revolute nor prismatic')
        self.tool_link, self.base_link = tool_link, base_link
        self.chain_joints = tuple(infos[j][1].decode() for j in movable)
        names = tuple(joint_names) if joint_names is not None else self.chain_joints
        if len(names) != len(self.chain_joints) or len(set(names)) != len(names):
            raise StateProblem(f'joint_names must give {len(self.chain_joints)} distinct '
                               f'names, one per joint of {list(self.chain_joints)}; got '
                               f'{list(names)}')
        self.message_joints = names
        self._body, self._joint_indices, self._tool = body, tuple(movable), links[tool_link]
        self._base = links[base_link]

    def _world_pose(self, link: int) -> tuple[Any, Any]:
        """The URDF frame of ``link`` in the world (joint positions set beforehand)."""
        client = self._client
        if link != -1:
            state = client.getLinkState(self._body, link, computeForwardKinematics=True)
            return state[4], state[5]
        # The base's pose is its inertial frame; the link frame is that times its inverse.
        com_position, com_orientation = client.getBasePositionAndOrientation(self._body)
        local = client.getDynamicsInfo(self._body, -1)
        return client.multiplyTransforms(com_position, com_orientation,
                                         *client.invertTransform(local[3], local[4]))

    def forward_kinematics(self, positions: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), quaternion xyzw (4,)) of tool_link in base_link for joint
        positions in ``chain_joints`` order."""
        values = [float(v) for v in positions]
        if len(values) != len(self._joint_indices):
            raise ValueError(f'need {len(self._joint_indices)} joint positions, got '
                             f'{len(values)}')
        with self._lock:
            client = self._client
            if client is None:
                raise StateProblem('the joint state source is closed')
            for joint, value in zip(self._joint_indices, values, strict=True):
                client.resetJointState(self._body, joint, value)
            tool = self._world_pose(self._tool)
            base = self._world_pose(self._base)
            position, quaternion = client.multiplyTransforms(*client.invertTransform(*base),
                                                             *tool)
        return np.array(position, dtype=np.float64), np.array(quaternion, dtype=np.float64)

    def offer(self, msg: JointState, arrival_s: float) -> None:
        """Keep the chain's positions in ``msg`` (received at ``arrival_s``) as the newest.

        Only validation here (drivers publish at up to 1 kHz); ``latest`` runs the kinematics
        of the newest message once. A message without the chain's joints (a gripper-only
        joint_states) raises StateProblem naming them and leaves the kept one alone: it says
        nothing about the arm. A broken one (non-finite, fewer positions than names) raises
        and drops the kept one.
        """
        missing = [name for name in self.message_joints if name not in msg.name]
        if missing:
            raise StateProblem(f'joint_states lacks {", ".join(missing)} (needed for '
                               f'{self.base_link} -> {self.tool_link})')
        try:  # (no joints between two fixed-linked frames: nothing to read)
            values = joint_positions(msg, self.message_joints) if self.message_joints else ()
        except StateConversionError as exc:
            self._positions.clear()
            raise StateProblem(str(exc)) from None
        stamp_s, age_from_s = _sample_times(msg.header.stamp, arrival_s, self.age_by)
        self._positions.add(stamp_s, (values, age_from_s))

    def latest(self, now_s: float, max_age_s: float,
               at_s: Optional[float] = None) -> StateSample:
        found = self._positions.at(at_s)
        if found is None:
            raise NoStateYet('no joint_states with the arm joints received yet')
        stamp_s, (values, age_from_s) = found
        check_age(age_from_s, now_s, max_age_s, 'joint_states')  # before paying for kinematics
        memo = self._memo
        if memo is not None and memo[0] is values:
            return memo[1]
        position, quaternion = self.forward_kinematics(values)
        sample = StateSample(position=position, quaternion=unit_quaternion(quaternion),
                             stamp_s=stamp_s, age_from_s=age_from_s, source='joint_states')
        self._memo = (values, sample)
        return sample

    def newest_stamp_s(self) -> Optional[float]:
        return self._positions.newest_time()

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.disconnect()
                self._client = None
