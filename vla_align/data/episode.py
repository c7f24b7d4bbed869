"""One demonstration episode: the unit collected, stored as one rosbag2, and trained on."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vla_align.sim.types import CameraConfig, TaskSpec


@dataclass
class Episode:
    """Frames and actions of one episode, aligned by control step index.

    ``actions[t]`` is the action taken after observing ``images[t]``.
    """

    task: TaskSpec
    seed: int
    images: np.ndarray  # (T, H, W, 3) uint8 RGB
    actions: np.ndarray  # (T, 7) float32
    ee_positions: np.ndarray  # (T, 3) float32
    ee_orientations: np.ndarray  # (T, 4) float32 xyzw
    grippers: np.ndarray  # (T,) float32 gripper command in force when the frame was taken
    joint_positions: np.ndarray  # (T, 9) float32
    success: bool
    control_hz: float
    camera: CameraConfig = field(default_factory=CameraConfig)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.images)
        for name in ('actions', 'ee_positions', 'ee_orientations', 'grippers',
                     'joint_positions'):
            if len(getattr(self, name)) != n:
                raise ValueError(f'episode field {name} has {len(getattr(self, name))} rows, '
                                 f'images has {n}')

    def __len__(self) -> int:
        return len(self.images)

    def states(self) -> np.ndarray:
        """(T, STATE_DIM) proprioception, same layout as ``Observation.state``."""
        return np.concatenate([self.ee_positions, self.ee_orientations,
                               self.grippers[:, None]], axis=1).astype(np.float32)
