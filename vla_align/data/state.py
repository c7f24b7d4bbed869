"""The proprioceptive state a policy sees: its layout, and quaternions made canonical.

``STATE_DIM`` floats: end-effector position (3, metres, robot base frame), orientation as a
unit quaternion xyzw (4), and the gripper command in force (1; 0 open .. 1 closed). It belongs to
the data contract, not to any robot: the simulator, bags of any robot and the policy node all
build it with ``state_vector``.

q and -q are the same orientation, so a policy must see one of them. Which one is decided
against a **reference orientation**: the sign that puts q in the reference's hemisphere
(``q . ref >= 0``). The reference is the training data's mean orientation (a sign-free average,
``mean_orientation``), kept in the checkpoint as the quaternion part of the state mean, so the
only discontinuity lies half a turn away from every orientation the robot was trained in.
A fixed rule such as ``w >= 0`` does not work: a Panda's hand pointing down is q = (1, 0, 0,
~0), exactly where that rule flips sign, so tiny wrist motions turned into jumps of the whole
quaternion (the shipped policy's pick, put and stack success fell from 60/58/50 % to 10/0/5 %
when it was tried). Readers and robot-state sources therefore keep quaternions as measured
(``unit_quaternion``); the normalization statistics (``data.normalization``) canonicalise.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

STATE_LABELS: tuple[str, ...] = ('x', 'y', 'z', 'qx', 'qy', 'qz', 'qw', 'gripper')
STATE_DIM = len(STATE_LABELS)
POSITION = slice(0, 3)
QUATERNION = slice(3, 7)
GRIPPER_STATE = 7


def unit_quaternion(quaternion: np.ndarray) -> np.ndarray:
    """Quaternion(s) xyzw scaled to unit length, sign kept; (..., 4) in and out.

    Raises ``ValueError`` for a non-finite or (near) zero quaternion: it has no orientation.
    """
    q = np.asarray(quaternion, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f'a quaternion has 4 values (x, y, z, w), got shape {q.shape}')
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(norm < 1e-9):
        raise ValueError('quaternion is non-finite or zero')
    return q / norm


def mean_orientation(quaternions: np.ndarray) -> np.ndarray:
    """The sign-free average of (N, 4) quaternions: the principal eigenvector of sum(q q^T)
    (Markley et al., 2007), signed so that its largest component is positive. The same for any
    signs of the inputs."""
    q = unit_quaternion(np.asarray(quaternions, dtype=np.float64).reshape(-1, 4))
    _values, vectors = np.linalg.eigh(q.T @ q)
    mean = vectors[:, -1]
    return -mean if mean[np.argmax(np.abs(mean))] < 0 else mean


def canonical_quaternion(quaternion: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) (..., 4) with the sign that puts them in ``reference``'s hemisphere.

    ``q . reference == 0`` (half a turn away) keeps q's sign. Raises ``ValueError`` for a
    non-finite or zero quaternion.
    """
    q = unit_quaternion(quaternion)
    dot = q @ np.asarray(reference, dtype=np.float64).reshape(4)
    return np.where((dot < 0)[..., None], -q, q)


def state_vector(position: np.ndarray, quaternion_xyzw: np.ndarray,
                 gripper: float) -> np.ndarray:
    """(STATE_DIM,) float32 state with a unit quaternion (sign as measured)."""
    out = np.empty(STATE_DIM, dtype=np.float32)
    out[POSITION] = np.asarray(position, dtype=np.float64).reshape(3)
    out[QUATERNION] = unit_quaternion(quaternion_xyzw)
    out[GRIPPER_STATE] = float(gripper)
    return out


def canonical_states(states: np.ndarray, reference: Optional[np.ndarray]) -> np.ndarray:
    """(N, STATE_DIM) states with their quaternions in ``reference``'s hemisphere (None: only
    made unit length); rows with non-finite quaternions are left as they are."""
    out = np.array(states, dtype=np.float32, copy=True)
    finite = np.all(np.isfinite(out[:, QUATERNION]), axis=1)
    finite &= np.linalg.norm(np.nan_to_num(out[:, QUATERNION]), axis=1) > 1e-9
    if np.any(finite):
        q = out[finite, QUATERNION]
        out[finite, QUATERNION] = (unit_quaternion(q) if reference is None
                                   else canonical_quaternion(q, reference))
    return out
