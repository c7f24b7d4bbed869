"""End-effector delta controller: 7-DoF actions -> IK targets -> Panda motors.

The controller keeps a *commanded* pose that each action moves by its (clamped) deltas;
the commanded position is clipped to a box over the table and the commanded hand axis to a
cone around straight down, so no action, however large or repeated, can drive the hand into
the table or out of reach (with the hand turned far from vertical, IK trades position for
orientation and the grasp point would leave the box). Between two control steps the
physics runs ``physics_hz / control_hz`` substeps with the IK solution as motor targets.

Actions are deltas per control step, but the arm's speed must not depend on how often it
is commanded: ``SpeedLimits`` caps each step's motion at speed x control period, so a node
run at 20 Hz moves the hand no faster than at 10 Hz (the rate the policies are trained at,
where the two limits coincide and change nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from pybullet_utils.bullet_client import BulletClient

from vla_align.actions import GRIPPER, ROTATION, TRANSLATION, ActionLimits
from vla_align.sim.robot import Panda


@dataclass(frozen=True)
class SpeedLimits:
    """Largest commanded hand speed, per axis: the defaults equal ``ActionLimits`` at 10 Hz."""

    max_linear_m_s: float = 0.3
    max_angular_rad_s: float = 1.5

    def __post_init__(self) -> None:
        if not (self.max_linear_m_s > 0 and self.max_angular_rad_s > 0
                and np.isfinite(self.max_linear_m_s) and np.isfinite(self.max_angular_rad_s)):
            raise ValueError(f'speed limits must be positive numbers, got {self}')


@dataclass(frozen=True)
class Workspace:
    """Axis-aligned box (base frame, metres) the commanded grasp point must stay inside.

    The table top is at z = 0; ``low[2]`` keeps the fingertips just above it.
    ``max_tilt_rad`` bounds the angle between the hand's approach axis and straight down;
    ``max_yaw_rad`` bounds the turn about the vertical away from the episode's start
    orientation. Without the yaw window a stream of same-signed yaw commands winds the wrist
    past its joint limit, inverse kinematics then bends the whole arm to make up the
    orientation and the hand swings far from its commanded point.
    """

    low: tuple[float, float, float] = (0.25, -0.35, 0.012)
    high: tuple[float, float, float] = (0.80, 0.35, 0.40)
    max_tilt_rad: float = 0.3
    max_yaw_rad: float = 1.6  # a gripper turned more than 90 degrees meets a block the same way

    def __post_init__(self) -> None:
        if not all(lo < hi for lo, hi in zip(self.low, self.high, strict=True)):
            raise ValueError(f'workspace low {self.low} must be below high {self.high}')
        if not 0.0 <= self.max_tilt_rad <= np.pi:
            raise ValueError(f'max_tilt_rad must be in [0, pi], got {self.max_tilt_rad!r}')
        if not 0.0 <= self.max_yaw_rad <= np.pi:
            raise ValueError(f'max_yaw_rad must be in [0, pi], got {self.max_yaw_rad!r}')

    def clip(self, position: np.ndarray) -> np.ndarray:
        return np.clip(np.asarray(position, dtype=np.float64), self.low, self.high)

    def contains(self, position: np.ndarray, atol: float = 1e-9) -> bool:
        p = np.asarray(position, dtype=np.float64)
        return bool(np.all(p >= np.array(self.low) - atol)
                    and np.all(p <= np.array(self.high) + atol))


class EndEffectorController:
    """Applies actions of ``vla_align.actions`` to a ``Panda`` at a fixed control rate."""

    def __init__(self, client: BulletClient, robot: Panda, limits: ActionLimits,
                 workspace: Workspace, substeps: int, period_s: float,
                 speed: SpeedLimits = SpeedLimits()) -> None:
        if substeps < 1:
            raise ValueError(f'substeps must be >= 1, got {substeps}')
        if not period_s > 0:
            raise ValueError(f'period_s must be positive, got {period_s!r}')
        self._client = client
        self._robot = robot
        #: What one step may do: the action limits, tightened by the speed limits.
        self.limits = replace(
            limits, max_translation=min(limits.max_translation, speed.max_linear_m_s * period_s),
            max_rotation=min(limits.max_rotation, speed.max_angular_rad_s * period_s))
        self.workspace = workspace
        self.substeps = substeps
        self.target_position, self.target_orientation = robot.ee_pose()
        self._start_yaw = self._yaw(self.target_orientation)
        self.gripper = 0.0

    def reset(self) -> None:
        """Take the current hand pose as the commanded pose (and the centre of the yaw
        window), gripper open."""
        position, self.target_orientation = self._robot.ee_pose()
        self.target_position = self.workspace.clip(position)
        self._start_yaw = self._yaw(self.target_orientation)
        self.gripper = 0.0

    def apply(self, action: np.ndarray) -> np.ndarray:
        """Clamp ``action`` (action and speed limits), move the commanded pose, run the
        substeps; returns the action as applied.

        Raises ``UnsafeActionError`` (before anything moves) for a non-finite or misshaped
        action: there is no safe way to apply a NaN.
        """
        safe = self.limits.clamp(action)
        self.target_position = self.workspace.clip(self.target_position
                                                   + safe[TRANSLATION].astype(np.float64))
        rotation = self._client.getQuaternionFromEuler(safe[ROTATION].astype(np.float64))
        _, orientation = self._client.multiplyTransforms(
            (0.0, 0.0, 0.0), rotation, (0.0, 0.0, 0.0), self.target_orientation)
        orientation = np.array(orientation, dtype=np.float64)
        self.target_orientation = self._limit_yaw(
            self._limit_tilt(orientation / np.linalg.norm(orientation)))
        self.gripper = float(safe[GRIPPER])
        self._robot.command_arm(self._robot.solve_ik(self.target_position,
                                                     self.target_orientation))
        self._robot.command_gripper(self.gripper)
        for _ in range(self.substeps):
            self._client.stepSimulation()
        return safe

    def _yaw_offset(self, orientation: np.ndarray) -> float:
        """Turn (radians, in (-pi, pi]) of ``orientation`` about the vertical from the start."""
        return float(np.angle(np.exp(1j * (self._yaw(orientation) - self._start_yaw))))

    def _yaw(self, orientation: np.ndarray) -> float:
        """Heading of the hand: its x axis (or, pointing straight up or down, its y axis)
        projected onto the table plane."""
        frame = np.array(self._client.getMatrixFromQuaternion(
            [float(v) for v in orientation])).reshape(3, 3)
        axis = frame[:, 0] if np.hypot(*frame[:2, 0]) > 1e-6 else frame[:, 1]
        return float(np.arctan2(axis[1], axis[0]))

    def _limit_yaw(self, orientation: np.ndarray) -> np.ndarray:
        """``orientation`` turned back about the vertical into the yaw window (a turn about
        the world's vertical leaves the tilt unchanged)."""
        offset = self._yaw_offset(orientation)
        limit = self.workspace.max_yaw_rad
        if abs(offset) <= limit:
            return orientation
        turn = self._client.getQuaternionFromAxisAngle([0.0, 0.0, 1.0],
                                                       float(np.sign(offset) * limit - offset))
        _, limited = self._client.multiplyTransforms((0.0, 0.0, 0.0), turn, (0.0, 0.0, 0.0),
                                                     [float(v) for v in orientation])
        limited = np.array(limited, dtype=np.float64)
        return limited / np.linalg.norm(limited)

    def _limit_tilt(self, orientation: np.ndarray) -> np.ndarray:
        """``orientation`` turned back (about a horizontal axis) into the tilt cone."""
        axis = np.array(self._client.getMatrixFromQuaternion(orientation)).reshape(3, 3)[:, 2]
        down = np.array([0.0, 0.0, -1.0])
        tilt = float(np.arccos(np.clip(axis @ down, -1.0, 1.0)))
        excess = tilt - self.workspace.max_tilt_rad
        if excess <= 0:
            return orientation
        turn_axis = np.cross(axis, down)
        norm = np.linalg.norm(turn_axis)
        turn_axis = turn_axis / norm if norm > 1e-9 else np.array([1.0, 0.0, 0.0])
        turn = self._client.getQuaternionFromAxisAngle(turn_axis.tolist(), excess)
        _, limited = self._client.multiplyTransforms((0.0, 0.0, 0.0), turn, (0.0, 0.0, 0.0),
                                                     orientation.tolist())
        limited = np.array(limited, dtype=np.float64)
        return limited / np.linalg.norm(limited)
