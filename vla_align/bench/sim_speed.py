"""Simulation speed: rendered frames per second and control steps per second (each control
step runs the physics substeps, the IK controller and renders the next observation)."""
from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Any, Optional

from tqdm import tqdm

from vla_align.bench.timing import LatencyStats, time_calls
from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.suite import load_suite


@dataclass(frozen=True)
class SimSpeed:
    frames_per_s: float  # env.render() alone
    render_ms: LatencyStats
    control_steps_per_s: float  # env.step(expert action), observation included
    step_ms: LatencyStats
    image_shape: tuple[int, int, int]
    family: str

    def to_dict(self) -> dict[str, Any]:
        return {'frames_per_s': self.frames_per_s, 'render_ms': self.render_ms.to_dict(),
                'control_steps_per_s': self.control_steps_per_s,
                'step_ms': self.step_ms.to_dict(), 'image_shape': list(self.image_shape),
                'family': self.family}


def measure_simulation(steps: int, seed: int = 0, family: str = 'pick',
                       config: Optional[EnvConfig] = None, progress: bool = True) -> SimSpeed:
    """Time ``steps`` renders and ``steps`` expert-driven control steps of one scene; when an
    episode ends the next seed's scene is built, untimed."""
    suite = load_suite()
    with ManipulationEnv(config or EnvConfig()) as env:
        env.reset(seed, suite.sample_task(family, 'seen', seed))
        render = time_calls(env.render, steps, warmup=2, desc='sim render', progress=progress)
        seconds = []
        for _ in tqdm(range(steps), desc='sim steps', disable=not progress, leave=False):
            action = env.expert_action()
            start = time.perf_counter()
            result = env.step(action)
            seconds.append(time.perf_counter() - start)
            if result.terminated or result.truncated:
                seed += 1
                env.reset(seed, suite.sample_task(family, 'seen', seed))
        shape = tuple(env.render().shape)
    step = LatencyStats.from_seconds(seconds)
    return SimSpeed(frames_per_s=1e3 / render.mean_ms, render_ms=render,
                    control_steps_per_s=1e3 / step.mean_ms, step_ms=step, image_shape=shape,
                    family=family)
