"""The proprioceptive state a policy sees: its layout, and quaternions made canonical.

``STATE_DIM`` floats: end-effector position (3, metres, robot base frame), orientation as a
unit quaternion xyzw (4), and the gripper command in force (1; 0 open .. 1 closed). It belongs to
the data contract, not to any robot: the simulator, bags of any robot and the policy node all
build it with ``state_vector``.

q and -q are the same orientation. A policy fed raw quaternions sees two different inputs for one
pose (the shipped policy's state z-score reached -2000 on a sign flip), so every quaternion is
made canonical before it is used: unit norm and ``w >= 0`` (for ``w == 0``, the first non-zero
of x, y, z positive).
"""
from __future__ import annotations

import numpy as np

STATE_LABELS: tuple[str, ...] = ('x', 'y', 'z', 'qx', 'qy', 'qz', 'qw', 'gripper')
STATE_DIM = len(STATE_LABELS)
POSITION = slice(0, 3)
QUATERNION = slice(3, 7)
GRIPPER_STATE = 7


def canonical_quaternion(quaternion: np.ndarray) -> np.ndarray:
    """Unit quaternion(s) xyzw with the sign chosen as described above; (..., 4) in and out.

    Raises ``ValueError`` for a non-finite or (near) zero quaternion: it has no orientation.
    """
    q = np.asarray(quaternion, dtype=np.float64)
    if q.shape[-1:] != (4,):
        raise ValueError(f'a quaternion has 4 values (x, y, z, w), got shape {q.shape}')
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if not np.all(np.isfinite(q)) or np.any(norm < 1e-9):
        raise ValueError('quaternion is non-finite or zero')
    q = q / norm
    # Sign key: w, then x, y, z in turn, decide (the first non-zero one must be positive).
    key = np.zeros(q.shape[:-1])
    for index in (3, 0, 1, 2):
        undecided = key == 0
        key = np.where(undecided & (np.abs(q[..., index]) > 1e-12), np.sign(q[..., index]),
                       key)
    key = np.where(key == 0, 1.0, key)
    return q * key[..., None]


def state_vector(position: np.ndarray, quaternion_xyzw: np.ndarray,
                 gripper: float) -> np.ndarray:
    """(STATE_DIM,) float32 state with a canonical quaternion."""
    out = np.empty(STATE_DIM, dtype=np.float32)
    out[POSITION] = np.asarray(position, dtype=np.float64).reshape(3)
    out[QUATERNION] = canonical_quaternion(quaternion_xyzw)
    out[GRIPPER_STATE] = float(gripper)
    return out


def canonical_states(states: np.ndarray) -> np.ndarray:
    """(N, STATE_DIM) states with canonical quaternions (rows with NaN are left as they are)."""
    out = np.array(states, dtype=np.float32, copy=True)
    finite = np.all(np.isfinite(out[:, QUATERNION]), axis=1)
    if np.any(finite):
        out[finite, QUATERNION] = canonical_quaternion(out[finite, QUATERNION])
    return out
