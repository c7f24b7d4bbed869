"""Typed data contracts between the simulator and everything that consumes it.

The simulator, the demonstration recorder, the dataset and the ROS sim node exchange these
dataclasses only (no positional tuples), so a field added here is visible everywhere.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from vla_align.data.episode import CameraGeometry, TaskInfo
from vla_align.data.state import STATE_DIM as _STATE_DIM
from vla_align.data.state import state_vector

TASK_FAMILIES: tuple[str, ...] = ('reach', 'pick', 'push', 'put', 'stack')
SPLITS: tuple[str, ...] = ('seen', 'paraphrase', 'composition', 'shift', 'crowded')
PANDA_JOINT_NAMES: tuple[str, ...] = (
    'panda_joint1', 'panda_joint2', 'panda_joint3', 'panda_joint4', 'panda_joint5',
    'panda_joint6', 'panda_joint7', 'panda_finger_joint1', 'panda_finger_joint2')
#: Proprioception vector layout (the data contract's, ``vla_align.data.state``): ee position
#: (3), ee quaternion xyzw (4), gripper command (1).
STATE_DIM = _STATE_DIM


@dataclass(frozen=True)
class CameraConfig:
    """A pinhole RGB camera looking at the table, in the robot base frame."""

    width: int = 128
    height: int = 128
    fov_deg: float = 42.0  # vertical field of view
    #: Default view: across the table, facing the robot, so the workspace fills the frame.
    eye: tuple[float, float, float] = (0.88, 0.0, 0.62)
    target: tuple[float, float, float] = (0.48, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 0.0, 1.0)
    near: float = 0.05
    far: float = 3.0
    frame_id: str = 'camera_color_optical_frame'

    def intrinsics(self) -> tuple[float, float, float, float]:
        """(fx, fy, cx, cy) in pixels for this field of view and resolution."""
        fy = 0.5 * self.height / np.tan(np.deg2rad(self.fov_deg) / 2.0)
        return fy, fy, (self.width - 1) / 2.0, (self.height - 1) / 2.0

    def geometry(self) -> CameraGeometry:
        """What the data layer records of this camera (size, intrinsics, frame)."""
        fx, fy, cx, cy = self.intrinsics()
        return CameraGeometry(width=self.width, height=self.height, fx=fx, fy=fy, cx=cx, cy=cy,
                              frame_id=self.frame_id)


@dataclass(frozen=True)
class TaskSpec:
    """One concrete task instance: what to do, to which objects, and where it comes from.

    ``target`` and ``destination`` are object names in the scene, e.g. ``'red block'``,
    ``'blue bowl'``. ``direction`` is used by push (``left/right/forward/backward``).
    """

    family: str
    instruction: str
    target: str
    destination: Optional[str] = None
    direction: Optional[str] = None
    split: str = 'seen'
    num_distractors: int = 2
    #: Appearance/camera perturbations for the shift split (e.g. {'camera_jitter': 0.03}).
    shift: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        return cls(**data)

    def info(self) -> TaskInfo:
        """The task as the data layer records it (instruction, family, split + details)."""
        return TaskInfo.from_dict(self.to_dict())


@dataclass
class Observation:
    """What a policy sees at one control step."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    instruction: str
    ee_position: np.ndarray  # (3,) metres, base frame
    ee_orientation: np.ndarray  # (4,) quaternion xyzw, base frame
    gripper: float  # last gripper command, 0 open .. 1 closed
    joint_positions: np.ndarray  # (9,) radians / metres, PANDA_JOINT_NAMES order
    time: float  # seconds since reset

    def state(self) -> np.ndarray:
        """Proprioception vector of STATE_DIM floats (see STATE_DIM)."""
        return state_vector(self.ee_position, self.ee_orientation, self.gripper)


@dataclass
class StepResult:
    """Gymnasium-shaped outcome of ``env.step``; ``info['success']`` holds the success check."""

    observation: Observation
    reward: float
    terminated: bool  # task solved
    truncated: bool  # step budget spent
    info: dict[str, Any]

    @property
    def done(self) -> bool:
        return self.terminated or self.truncated
