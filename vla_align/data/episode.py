"""One demonstration episode: the unit collected, stored as one rosbag2, and trained on.

Robot-neutral: any robot's bags become Episodes through a topic contract
(``data.contract_reader``), and the simulator builds them from its rollouts. Nothing here
knows the simulator: its task details travel as a plain dict in ``TaskInfo.details``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from vla_align.data.state import canonical_states


@dataclass(frozen=True)
class TaskInfo:
    """What the episode was asked to do. ``family`` and ``split`` are known for simulated
    tasks (they let reports count per family); a robot's episode may only have the words."""

    instruction: str
    family: str = ''
    split: str = ''
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the simulator's target

    def to_dict(self) -> dict[str, Any]:
        return {**self.details, 'instruction': self.instruction, 'family': self.family,
                'split': self.split}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskInfo:
        rest = {k: v for k, v in data.items() if k not in ('instruction', 'family', 'split')}
        return cls(instruction=str(data.get('instruction', '')),
                   family=str(data.get('family') or ''), split=str(data.get('split') or ''),
                   details=rest)


@dataclass(frozen=True)
class CameraGeometry:
    """The camera frames' size and pinhole intrinsics (from CameraInfo where recorded)."""

    width: int
    height: int
    fx: float = 0.0
    fy: float = 0.0
    cx: float = 0.0
    cy: float = 0.0
    frame_id: str = 'camera'

    def intrinsics(self) -> tuple[float, float, float, float]:
        return self.fx, self.fy, self.cx, self.cy


@dataclass
class Episode:
    """Frames and actions of one episode, aligned by control step index.

    ``actions[t]`` is the action taken after observing ``images[t]``; ``grippers[t]`` is the
    gripper command in force when frame ``t`` was taken (the previous step's command).
    """

    task: TaskInfo
    seed: int
    images: np.ndarray  # (T, H, W, 3) uint8 RGB
    actions: np.ndarray  # (T, 7) float32 per-step deltas in the base frame + gripper
    ee_positions: np.ndarray  # (T, 3) float32, metres, base frame
    ee_orientations: np.ndarray  # (T, 4) float32 xyzw
    grippers: np.ndarray  # (T,) float32, 0 open .. 1 closed
    success: bool
    control_hz: float
    camera: Optional[CameraGeometry] = None
    joint_positions: Optional[np.ndarray] = None  # (T, J) float32 when recorded
    joint_names: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        names = ['actions', 'ee_positions', 'ee_orientations', 'grippers']
        if self.joint_positions is not None:
            names.append('joint_positions')
            if np.shape(self.joint_positions)[1:] != (len(self.joint_names),):
                raise ValueError(f'episode joint_positions have shape '
                                 f'{np.shape(self.joint_positions)} for '
                                 f'{len(self.joint_names)} joint names')
        for name in names:
            if len(getattr(self, name)) != n:
                raise ValueError(f'episode field {name} has {len(getattr(self, name))} rows, '
                                 f'images has {n}')

    def __len__(self) -> int:
        return len(self.images)

    def states(self) -> np.ndarray:
        """(T, STATE_DIM) proprioception (``data.state``): unit quaternions, sign as recorded
        (the normalization statistics canonicalise them)."""
        raw = np.concatenate([self.ee_positions, self.ee_orientations,
                              self.grippers[:, None]], axis=1)
        return canonical_states(raw, None)
