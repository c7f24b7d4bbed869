"""The 7-DoF action contract shared by the simulator, the policy and the ROS nodes.

An action is ``[dx, dy, dz, droll, dpitch, dyaw, gripper]``: end-effector deltas in the robot
base frame for one control step (metres, radians) and an absolute gripper command in [0, 1]
(0 open, 1 closed). Everything that emits or applies actions goes through ``ActionLimits``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTION_LABELS: tuple[str, ...] = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
ACTION_DIM = len(ACTION_LABELS)
#: Label of the single dimension of a Float32MultiArray action message.
ACTION_LAYOUT_LABEL = ','.join(ACTION_LABELS)
TRANSLATION = slice(0, 3)
ROTATION = slice(3, 6)
GRIPPER = 6


class UnsafeActionError(ValueError):
    """Raised when an action cannot be made safe (wrong shape or non-finite values)."""


@dataclass(frozen=True)
class ActionLimits:
    """Per-step bounds; values outside are clamped, never passed through raw."""

    max_translation: float = 0.03  # metres per step, per axis
    max_rotation: float = 0.15  # radians per step, per axis

    def __post_init__(self) -> None:
        if not (self.max_translation > 0 and np.isfinite(self.max_translation)):
            raise ValueError(f'max_translation must be a positive number, got '
                             f'{self.max_translation!r}')
        if not (self.max_rotation > 0 and np.isfinite(self.max_rotation)):
            raise ValueError(f'max_rotation must be a positive number, got {self.max_rotation!r}')

    def clamp(self, action: np.ndarray) -> np.ndarray:
        """Return a float32 copy of ``action`` within limits.

        Raises ``UnsafeActionError`` for a wrong shape or any non-finite value: a NaN has no
        safe clamped value, so callers must hold instead of publishing.
        """
        checked = validate_action(action)
        out = checked.copy()
        out[TRANSLATION] = np.clip(out[TRANSLATION], -self.max_translation, self.max_translation)
        out[ROTATION] = np.clip(out[ROTATION], -self.max_rotation, self.max_rotation)
        out[GRIPPER] = np.clip(out[GRIPPER], 0.0, 1.0)
        return out

    def contains(self, action: np.ndarray, atol: float = 1e-6) -> bool:
        """True when ``action`` is finite, 7-long and inside the limits."""
        try:
            checked = validate_action(action)
        except UnsafeActionError:
            return False
        return bool(
            np.all(np.abs(checked[TRANSLATION]) <= self.max_translation + atol)
            and np.all(np.abs(checked[ROTATION]) <= self.max_rotation + atol)
            and -atol <= checked[GRIPPER] <= 1.0 + atol)


def validate_action(action: np.ndarray) -> np.ndarray:
    """Return ``action`` as a float32 (7,) array or raise ``UnsafeActionError``."""
    arr = np.asarray(action, dtype=np.float32).reshape(-1)
    if arr.shape != (ACTION_DIM,):
        raise UnsafeActionError(f'an action has {ACTION_DIM} values '
                                f'({",".join(ACTION_LABELS)}), got shape {np.shape(action)}')
    if not np.all(np.isfinite(arr)):
        raise UnsafeActionError(f'action has non-finite values: {arr.tolist()}')
    return arr


def hold_action(gripper: float) -> np.ndarray:
    """Zero motion with the gripper kept where it is."""
    out = np.zeros(ACTION_DIM, dtype=np.float32)
    out[GRIPPER] = float(np.clip(gripper, 0.0, 1.0))
    return out
