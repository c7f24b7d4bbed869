"""Training samples per second: the real `Trainer` step (forward, losses, backward, AdamW) on
synthetic frames of the model's input size, so no demonstrations are needed."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
import tempfile
from typing import Any, Optional

import numpy as np
import torch
from tqdm import tqdm

from vla_align.bench.timing import LatencyStats, time_calls
from vla_align.data.dataset import FrameBatch, FrameCache
from vla_align.data.episode import Episode, TaskInfo
from vla_align.model.config import PolicyConfig
from vla_align.train.config import DataConfig, OptimConfig, TrainConfig
from vla_align.train.trainer import Trainer

EPISODE_LENGTH = 16
INSTRUCTIONS = ('pick up the red block', 'push the blue block to the left',
                'put the green block in the yellow bowl', 'stack the red block on the blue one')


@dataclass(frozen=True)
class TrainingSpeed:
    batch_size: int
    samples_per_s: float  # batch_size / mean step time
    step_ms: LatencyStats
    threads: int  # torch intra-op threads the trainer ran with
    device: str
    amp_dtype: str  # 'none' or the autocast dtype

    def to_dict(self) -> dict[str, Any]:
        return {'batch_size': self.batch_size, 'samples_per_s': self.samples_per_s,
                'step_ms': self.step_ms.to_dict(), 'threads': self.threads,
                'device': self.device, 'amp_dtype': self.amp_dtype}


def synthetic_episodes(count: int, image_size: int, rng: np.random.Generator) -> list[Episode]:
    """Random frames, actions and states; instructions cycle through a few real ones."""
    episodes = []
    n = EPISODE_LENGTH
    for i in range(count):
        actions = rng.normal(0.0, 0.01, (n, 7)).astype(np.float32)
        actions[:, 6] = rng.integers(0, 2, n)
        episodes.append(Episode(
            task=TaskInfo(instruction=INSTRUCTIONS[i % len(INSTRUCTIONS)], family='pick'),
            seed=i, images=rng.integers(0, 256, (n, image_size, image_size, 3), np.uint8),
            actions=actions, ee_positions=rng.normal(0.4, 0.05, (n, 3)).astype(np.float32),
            ee_orientations=np.tile([1.0, 0.0, 0.0, 0.0], (n, 1)).astype(np.float32),
            grippers=rng.integers(0, 2, n).astype(np.float32),
            success=True, control_hz=10.0))
    return episodes


def _forever(trainer: Trainer) -> Iterator[FrameBatch]:
    while True:
        yield from trainer.loader


def measure_training(model: PolicyConfig, batch_size: int, steps: int, device: str,
                     threads: Optional[int], rng: np.random.Generator,
                     progress: bool = True) -> TrainingSpeed:
    """Time ``steps`` training steps of a fresh ``model`` at ``batch_size``; ``threads`` None
    uses the trainer's default (every CPU), as `vla-align train` does."""
    if batch_size < 2 or steps < 1:
        raise ValueError('training bench needs batch_size >= 2 and steps >= 1')
    episodes = -(-2 * batch_size // EPISODE_LENGTH) + 1
    cache = FrameCache.from_episodes(synthetic_episodes(episodes, model.image_size, rng),
                                     image_size=model.image_size)
    config = TrainConfig(model=model, data=DataConfig(val_fraction=0.0),
                         optim=OptimConfig(batch_size=batch_size, max_steps=steps + 10,
                                           max_minutes=None, warmup_steps=1),
                         device=device, num_threads=threads, seed=0)
    with tempfile.TemporaryDirectory(prefix='vla_align_bench_train_') as out:
        trainer = Trainer(config, cache, out, progress=False)
        used_threads = torch.get_num_threads()
        trainer.model.train()
        batches = _forever(trainer)
        bar = tqdm(total=steps + 2, desc='training steps', disable=not progress, leave=False)

        def step() -> None:
            trainer.train_step(next(batches))
            bar.update(1)

        stats = time_calls(step, steps, warmup=2)
        bar.close()
    amp = 'none' if trainer.amp_dtype is None else str(trainer.amp_dtype).replace('torch.', '')
    return TrainingSpeed(batch_size=batch_size, samples_per_s=batch_size / (stats.mean_ms / 1e3),
                         step_ms=stats, threads=used_threads, device=str(trainer.device),
                         amp_dtype=amp)
