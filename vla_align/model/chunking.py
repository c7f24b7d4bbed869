"""Executing action chunks closed loop: temporal ensembling, as ACT does.

A model with ``chunk_size`` K > 1 predicts, at every control step, the actions of this step and
the next K - 1. Executing a whole chunk open loop would ignore K - 1 camera frames; executing
only its first action throws the rest of the prediction away. Temporal ensembling (Zhao et al.,
ACT, 2023) keeps the controller closed loop - one forward pass per control step - and executes,
at step t, the weighted mean of every prediction made for step t by the chunks of steps
t - K + 1 ... t. With ``decay`` m the prediction made i steps before the newest gets the weight
exp(m * i) relative to it, i.e. ACT's exp(-m * j) with j counted from the oldest: m > 0 trusts
the older, longer-observed predictions a little more (ACT uses 0.01); m < 0 trusts the newest.

Chunks are placed in time by their control-step time stamps, not by counting calls, so a
skipped step (a hold, a dropped frame) leaves the right predictions in place and ones older than
K periods fall out on their own.

Measured on the simulated Panda (docs/ACTION_CHUNKS.md): with the same chunked weights,
temporal ensembling lost most put and stack episodes that first-action execution won, since
averaging older predictions blurs the step at which the gripper opens or closes. So ``first``
is the default; chunks still help as a training target.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
import math
from typing import Any, Optional

import numpy as np

from vla_align.actions import GRIPPER

EXECUTION_MODES = ('ensemble', 'first')


@dataclass(frozen=True)
class ChunkExecution:
    """How a chunked policy's predictions become the executed action."""

    mode: str = 'first'  # 'first' (step 0 of the newest chunk) or 'ensemble' (ACT's ensembling)
    decay: float = 0.01  # see the module docstring; 0 = plain mean

    def __post_init__(self) -> None:
        if self.mode not in EXECUTION_MODES:
            raise ValueError(f'chunk execution mode must be one of {EXECUTION_MODES}, got '
                             f'{self.mode!r}')
        if not math.isfinite(self.decay) or abs(self.decay) > 5.0:
            raise ValueError(f'chunk execution decay must be finite and within [-5, 5], got '
                             f'{self.decay!r}')


#: What every runner uses unless told otherwise: the newest chunk's first action (measured
#: better than ensembling here, see the module docstring).
DEFAULT_EXECUTION = ChunkExecution()


class TemporalEnsembler:
    """Combines the (K, 7) chunks predicted at successive control steps into one action.

    The gripper column is combined as a probability; the caller decides how to snap it.
    """

    def __init__(self, chunk_size: int, period_s: float,
                 execution: ChunkExecution = DEFAULT_EXECUTION) -> None:
        if chunk_size < 1:
            raise ValueError(f'chunk_size must be >= 1, got {chunk_size}')
        if not period_s > 0:
            raise ValueError(f'the control period must be > 0 s, got {period_s!r}')
        self.chunk_size = chunk_size
        self.period_s = period_s
        self.execution = execution
        self._chunks: deque[tuple[float, np.ndarray]] = deque()

    def reset(self) -> None:
        """Forget every earlier prediction (a new task, or the robot moved by someone else)."""
        self._chunks.clear()

    @property
    def pending(self) -> int:
        """How many earlier chunks still hold a prediction for some future step."""
        return len(self._chunks)

    def __call__(self, chunk: np.ndarray, time_s: float) -> np.ndarray:
        """Add the chunk predicted at ``time_s`` and return the (7,) action for that step."""
        chunk = np.asarray(chunk, dtype=np.float64)
        if chunk.shape != (self.chunk_size, 7):
            raise ValueError(f'expected a ({self.chunk_size}, 7) chunk, got {chunk.shape}')
        if self.execution.mode == 'first' or self.chunk_size == 1:
            return chunk[0].astype(np.float32)
        if self._chunks and time_s < self._chunks[-1][0]:
            self.reset()  # the clock went backwards: nothing earlier can be placed
        self._chunks.append((float(time_s), chunk))
        rows, ages = [], []
        for stamp, earlier in self._chunks:
            age = int(round((time_s - stamp) / self.period_s))
            if age < self.chunk_size:
                rows.append(earlier[age])
                ages.append(age)
        # Oldest chunks first; drop those with no prediction left for now or later.
        while self._chunks and round((time_s - self._chunks[0][0]) / self.period_s) \
                >= self.chunk_size:
            self._chunks.popleft()
        weights = np.exp(self.execution.decay * np.asarray(ages, np.float64))
        action = (weights[:, None] * np.stack(rows)).sum(0) / weights.sum()
        return action.astype(np.float32)


class ChunkRunner:
    """A `Policy` stepped closed loop at a fixed control rate, executing its chunks.

    One forward pass per control step. For a model with ``chunk_size`` 1 the action is exactly
    ``Policy.step``'s. ``encode_instruction`` starts a new task and so forgets earlier chunks.
    """

    def __init__(self, policy: Any, control_hz: float,
                 execution: ChunkExecution = DEFAULT_EXECUTION) -> None:
        self.policy = policy
        self.config = policy.config
        self.ensembler = TemporalEnsembler(policy.config.chunk_size, 1.0 / control_hz,
                                           execution)

    def reset(self) -> None:
        self.ensembler.reset()

    def encode_instruction(self, instruction: str) -> None:
        self.ensembler.reset()
        self.policy.encode_instruction(instruction)

    def step(self, image: np.ndarray, instruction: str, state: Optional[np.ndarray],
             time_s: float) -> Any:
        """``Policy.step`` whose action is the ensembled one for the step at ``time_s``."""
        out = self.policy.step(image, instruction, state)
        if out.chunk is None or self.config.chunk_size == 1:
            return out
        chunk = out.chunk.copy()
        action = self.ensembler(chunk, time_s)
        prob = float(action[GRIPPER])
        action[GRIPPER] = self.policy.gripper_command(prob)
        out.action, out.gripper_prob = action, prob
        return out
