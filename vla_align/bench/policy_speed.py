"""Policy step latency (batch 1, cached and new instruction) and batched throughput."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
import itertools
from typing import Any

import numpy as np
from tqdm import tqdm

from vla_align.bench.timing import LatencyStats, time_calls
from vla_align.model.chunking import ChunkRunner
from vla_align.model.policy import Policy
from vla_align.sim.types import STATE_DIM


@dataclass(frozen=True)
class BenchInputs:
    """A synthetic camera frame, robot state and instruction: timing does not depend on the
    pixel values, and the frame has a real camera's size so resizing is part of the cost."""

    frame: np.ndarray  # (H, W, 3) uint8
    state: np.ndarray  # (STATE_DIM,) float32
    instruction: str

    @classmethod
    def synthetic(cls, rng: np.random.Generator, width: int = 640, height: int = 480,
                  instruction: str = 'pick up the red block') -> BenchInputs:
        state = np.array([0.45, 0.0, 0.2, 1.0, 0.0, 0.0, 0.0, 0.0], np.float32)
        assert state.shape == (STATE_DIM,)
        return cls(frame=rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
                   state=state, instruction=instruction)


def new_instructions(base: str) -> Iterator[str]:
    """An endless supply of instructions the cache has never seen ('<base> 0', '<base> 1', ...)."""
    return (f'{base} {i}' for i in itertools.count())


@dataclass(frozen=True)
class StepLatency:
    cached_instruction: LatencyStats  # the usual case: the instruction was encoded before
    new_instruction: LatencyStats  # every step brings an instruction never seen before
    image_shape: tuple[int, int, int]
    #: One executed action as the node and eval-sim produce it: the forward pass plus the
    #: temporal ensembling of the checkpoint's action chunks (`ChunkRunner`); one forward per
    #: action, so per-forward and per-action cost differ only by the ensembling.
    executed_action: LatencyStats | None = None
    chunk_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {'cached_instruction': self.cached_instruction.to_dict(),
                'new_instruction': self.new_instruction.to_dict(),
                'executed_action': (None if self.executed_action is None
                                    else self.executed_action.to_dict()),
                'chunk_size': self.chunk_size,
                'image_shape': list(self.image_shape)}


def measure_step_latency(policy: Policy, inputs: BenchInputs, steps: int,
                         new_instruction_steps: int, progress: bool = True) -> StepLatency:
    """``Policy.step`` at batch 1, as the policy node calls it once per camera frame."""
    policy.encode_instruction(inputs.instruction)
    cached = time_calls(lambda: policy.step(inputs.frame, inputs.instruction, inputs.state),
                        steps, warmup=5, desc='step, cached instruction', progress=progress)
    fresh = new_instructions(inputs.instruction)
    new = time_calls(lambda: policy.step(inputs.frame, next(fresh), inputs.state),
                     new_instruction_steps, warmup=2, desc='step, new instruction',
                     progress=progress)
    runner = ChunkRunner(policy, control_hz=10.0)
    runner.encode_instruction(inputs.instruction)
    ticks = itertools.count()
    executed = time_calls(
        lambda: runner.step(inputs.frame, inputs.instruction, inputs.state, next(ticks) / 10.0),
        steps, warmup=5, desc='executed action (chunk runner)', progress=progress)
    return StepLatency(cached, new, tuple(inputs.frame.shape), executed,
                       policy.config.chunk_size)


@dataclass(frozen=True)
class ThroughputPoint:
    batch_size: int
    actions_per_s: float  # frames answered per second of wall time, over all timed batches
    batch_ms: LatencyStats  # duration of one step_batch call

    def to_dict(self) -> dict[str, Any]:
        return {'batch_size': self.batch_size, 'actions_per_s': self.actions_per_s,
                'batch_ms': self.batch_ms.to_dict()}


def measure_throughput(policy: Policy, inputs: BenchInputs, batch_sizes: Sequence[int],
                       actions_per_size: int, rng: np.random.Generator,
                       progress: bool = True) -> list[ThroughputPoint]:
    """``Policy.step_batch`` over distinct frames (cached instruction) at each batch size:
    the batched-evaluation case. Each size answers at least ``actions_per_size`` frames."""
    policy.encode_instruction(inputs.instruction)
    points = []
    height, width, _ = inputs.frame.shape
    for batch in tqdm(batch_sizes, desc='throughput', disable=not progress, leave=False):
        if batch < 1:
            raise ValueError(f'batch sizes must be >= 1, got {batch}')
        frames = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        states = np.repeat(inputs.state[None], batch, axis=0)
        instructions = [inputs.instruction] * batch
        calls = max(3, -(-actions_per_size // batch))
        # step_batch returns numpy arrays, so each call includes the device->host sync.
        stats = time_calls(lambda: policy.step_batch(frames, instructions, states),  # noqa: B023
                           calls, warmup=2)
        points.append(ThroughputPoint(batch, batch / (stats.mean_ms / 1e3), stats))
    return points
