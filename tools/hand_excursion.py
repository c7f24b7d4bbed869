"""How far the simulated hand strays outside its workspace box under the worst actions.

Every step commands every motion axis at +-1000x its limit with a random sign (the fuzz
campaign's out-of-limit actions, sustained) and records how far the measured grasp point lies
outside ``Workspace.low/high``. The commanded point never leaves the box; the measured one
lags it while the arm reverses at full speed. ``HAND_TRACKING_TOLERANCE_M`` in
``vla_align/ros/fuzz_campaign.py`` must stay above the figures this prints.

    python tools/hand_excursion.py --rates 10 20 --seeds 16 --steps 300
"""
from __future__ import annotations

import argparse

import numpy as np
from tqdm import tqdm

from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.suite import load_suite
from vla_align.sim.types import CameraConfig


def worst_excursion(control_hz: float, seed: int, steps: int) -> float:
    """Largest distance (m, per axis) of the measured hand outside the box in one episode."""
    env = ManipulationEnv(EnvConfig(camera=CameraConfig(width=16, height=16),
                                    control_hz=control_hz, max_steps=steps + 1))
    try:
        env.reset(seed, load_suite(None).sample_task('reach', 'seen', seed))
        low, high = (np.array(b) for b in (env.config.workspace.low,
                                           env.config.workspace.high))
        rng = np.random.default_rng(seed)
        worst = 0.0
        for _ in range(steps):
            env.step(np.r_[rng.choice([-1e3, 1e3], size=6), rng.uniform(-5, 5)])
            hand = np.array(env.world_state()['ee_position'])
            worst = max(worst, float(np.max(np.r_[low - hand, hand - high, 0.0])))
        return worst
    finally:
        env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rates', type=float, nargs='+', default=[10.0, 20.0])
    parser.add_argument('--seeds', type=int, default=16)
    parser.add_argument('--steps', type=int, default=300)
    args = parser.parse_args()
    rows = []
    for rate in args.rates:
        worst = [worst_excursion(rate, seed, args.steps)
                 for seed in tqdm(range(args.seeds), desc=f'{rate:g} Hz', unit='episode')]
        rows.append((rate, float(np.median(worst)), max(worst)))
    print(f'{args.seeds} episodes x {args.steps} steps of +-1000x-limit actions per rate')
    print('| control rate | median worst excursion | worst excursion |')
    print('|---|---|---|')
    for rate, median, worst in rows:
        print(f'| {rate:g} Hz | {100 * median:.1f} cm | {100 * worst:.1f} cm |')


if __name__ == '__main__':
    main()
