"""Action and proprioception normalisation statistics, computed from training data.

The model regresses z-scored arm deltas and sees z-scored proprioception; the statistics travel
inside every checkpoint (``normalization.json``) so the policy de-normalises exactly as trained.
States are canonicalised before they are z-scored: each quaternion takes the sign that puts it in
the hemisphere of the training data's mean orientation (``data.state``), which the quaternion
part of ``state_mean`` holds -- so checkpoints written before canonicalisation existed get it
too, with the reference their own data implies.
The gripper (action index 6) is never normalised: it is a probability target in [0, 1].
Works on numpy arrays and torch tensors alike (broadcasting over leading dimensions).
"""
from __future__ import annotations

from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from vla_align.actions import ACTION_DIM, GRIPPER
from vla_align.data.state import QUATERNION, STATE_DIM, canonical_states, mean_orientation

Array = TypeVar('Array')
#: Std floor: a dimension the expert never moves (e.g. roll) must not blow up to huge z-scores.
MIN_STD = 1e-3
#: Std floor of the state's quaternion components: demonstrations that never tilt the hand
#: gave a std of 1e-3, so a 3 degree tilt at run time read as z = 5.9; 0.05 is ~6 degrees.
QUATERNION_MIN_STD = 0.05
IDENTITY_QUATERNION = np.array([0.0, 0.0, 0.0, 1.0])


@dataclass(frozen=True)
class NormalizationStats:
    action_mean: np.ndarray  # (7,) float32, gripper entry 0
    action_std: np.ndarray  # (7,) float32, gripper entry 1
    state_mean: np.ndarray  # (STATE_DIM,) float32
    state_std: np.ndarray  # (STATE_DIM,) float32

    def __post_init__(self) -> None:
        for name, size in (('action_mean', ACTION_DIM), ('action_std', ACTION_DIM),
                           ('state_mean', STATE_DIM), ('state_std', STATE_DIM)):
            value = np.asarray(getattr(self, name), dtype=np.float32)
            if value.shape != (size,) or not np.all(np.isfinite(value)):
                raise ValueError(f'normalization {name} must be {size} finite numbers, '
                                 f'got {getattr(self, name)!r}')
            object.__setattr__(self, name, value)
        if np.any(self.action_std <= 0) or np.any(self.state_std <= 0):
            raise ValueError('normalization std values must be positive')

    @classmethod
    def identity(cls) -> NormalizationStats:
        """No-op statistics (a randomly initialised policy)."""
        return cls(np.zeros(ACTION_DIM), np.ones(ACTION_DIM), np.zeros(STATE_DIM),
                   np.ones(STATE_DIM))

    @classmethod
    def from_data(cls, actions: np.ndarray, states: np.ndarray) -> NormalizationStats:
        """Statistics of (N, 7) actions and (N, STATE_DIM) states."""
        actions = np.asarray(actions, dtype=np.float64)
        states = np.asarray(states, dtype=np.float64)
        if len(actions) == 0:
            raise ValueError('cannot compute normalization statistics from zero frames')
        quaternions = states[:, QUATERNION]
        usable = np.all(np.isfinite(quaternions), axis=1) & (
            np.linalg.norm(np.nan_to_num(quaternions), axis=1) > 1e-9)
        if np.any(usable):  # robots without orientation (state source none) have zeros
            reference = mean_orientation(quaternions[usable])
            states = canonical_states(states, reference).astype(np.float64)
        a_mean, a_std = actions.mean(0), np.maximum(actions.std(0), MIN_STD)
        a_mean[GRIPPER], a_std[GRIPPER] = 0.0, 1.0
        s_std = np.maximum(states.std(0), MIN_STD)
        s_std[QUATERNION] = np.maximum(s_std[QUATERNION], QUATERNION_MIN_STD)
        return cls(a_mean, a_std, states.mean(0), s_std)

    def normalize_actions(self, actions: Array) -> Array:
        return (actions - self._like(self.action_mean, actions)) / self._like(self.action_std,
                                                                              actions)

    def denormalize_actions(self, actions: Array) -> Array:
        return actions * self._like(self.action_std, actions) + self._like(self.action_mean,
                                                                           actions)

    @property
    def orientation_reference(self) -> np.ndarray:
        """The quaternion whose hemisphere every state quaternion is put in: the training data's
        mean orientation; the identity (``w >= 0``) for statistics without one (untrained)."""
        mean = self.state_mean[QUATERNION].astype(np.float64)
        norm = float(np.linalg.norm(mean))
        return IDENTITY_QUATERNION if norm < 1e-3 else mean / norm

    def canonicalize_states(self, states: Array) -> Array:
        """(..., STATE_DIM) states with each quaternion in the reference's hemisphere."""
        reference = self.orientation_reference
        if isinstance(states, np.ndarray):
            flat = states.reshape(-1, STATE_DIM)
            return canonical_states(flat, reference).astype(states.dtype).reshape(states.shape)
        sign = torch_sign(states[..., QUATERNION] @ self._like(reference.astype(np.float32),
                                                               states))
        out = states.clone()
        out[..., QUATERNION] = states[..., QUATERNION] * sign[..., None]
        return out

    def normalize_states(self, states: Array) -> Array:
        """Canonicalised (``canonicalize_states``), then z-scored."""
        states = self.canonicalize_states(states)
        return (states - self._like(self.state_mean, states)) / self._like(self.state_std,
                                                                           states)

    @staticmethod
    def _like(stat: np.ndarray, x: Any) -> Any:
        """``stat`` as the same kind of array as ``x`` (torch tensor on x's device, or numpy)."""
        if isinstance(x, np.ndarray):
            return stat
        import torch

        return torch.as_tensor(stat, device=x.device, dtype=x.dtype)

    def to_dict(self) -> dict[str, list[float]]:
        return {name: getattr(self, name).tolist()
                for name in ('action_mean', 'action_std', 'state_mean', 'state_std')}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormalizationStats:
        try:
            return cls(**{k: data[k] for k in ('action_mean', 'action_std', 'state_mean',
                                                'state_std')})
        except (KeyError, TypeError) as exc:
            raise ValueError(f'normalization statistics need action_mean, action_std, '
                             f'state_mean, state_std: {exc}') from exc

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + '\n')

    @classmethod
    def load(cls, path: str | Path) -> NormalizationStats:
        return cls.from_dict(json.loads(Path(path).read_text()))


def torch_sign(dot: Any) -> Any:
    """+1 where ``dot >= 0``, else -1 (a torch tensor): the quaternion sign flip."""
    import torch

    return torch.where(dot < 0, -torch.ones_like(dot), torch.ones_like(dot))
