"""`vla-align demo`: watch the scripted expert, or measure its success rate and speed.

One episode::

    vla-align demo --family put --split paraphrase --save-frames /tmp/put.png

Many episodes per family (a table of expert success, render time and throughput)::

    vla-align demo --family all --episodes 50 --json /tmp/expert_rates.json
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
import json
from pathlib import Path
import sys
import time
from typing import Any

import numpy as np
from tqdm import tqdm

from vla_align.data.episode import Episode
from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.rollout import run_expert_episode
from vla_align.sim.suite import SuiteError, TaskSuite, load_suite
from vla_align.sim.tasks import TASKS


@dataclass
class FamilyStats:
    episodes: int = 0
    successes: int = 0
    steps: list[int] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes if self.episodes else 0.0


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--family', default='pick', choices=[*TASKS, 'all'],
                        help='task family, or "all" for every family of the suite')
    parser.add_argument('--split', default='seen',
                        help='split of the suite (seen, paraphrase, composition, shift)')
    parser.add_argument('--seed', type=int, default=None,
                        help="first seed (default: the split's first eval seed)")
    parser.add_argument('--episodes', type=int, default=1, help='episodes per family')
    parser.add_argument('--suite', default=None,
                        help='task-suite YAML (default: the shipped sim/task_suites/default.yaml)')
    parser.add_argument('--save-frames', metavar='PNG', default=None,
                        help='write a filmstrip (first/middle/last frame) of the first episode '
                             'of each family')
    parser.add_argument('--json', metavar='PATH', default=None,
                        help='write success rates and timings as JSON')


def run(args: argparse.Namespace) -> int:
    try:
        suite = load_suite(args.suite)
        families = suite.families if args.family == 'all' else (args.family,)
        if args.episodes < 1:
            raise ValueError(f'--episodes must be >= 1, got {args.episodes}')
        if args.seed is not None and args.seed < 0:
            raise ValueError(f'--seed must be >= 0, got {args.seed}')
        seeds = _seeds(suite, args)
        for family in families:  # fail before running anything on a bad family/split
            suite.sample_task(family, args.split, seeds[0])
    except (SuiteError, ValueError) as exc:
        print(f'vla-align demo: {exc}', file=sys.stderr)
        return 2

    env = ManipulationEnv(EnvConfig())
    stats = {family: FamilyStats() for family in families}
    shown: list[Episode] = []
    start = time.perf_counter()
    frames = 0
    single = len(families) * len(seeds) == 1
    progress = tqdm(total=len(families) * len(seeds), desc='expert episodes', unit='ep',
                    disable=single)
    try:
        for family in families:
            for index, seed in enumerate(seeds):
                task = suite.sample_task(family, args.split, seed)
                episode = run_expert_episode(env, task, seed)
                frames += len(episode)
                stats[family].episodes += 1
                stats[family].successes += int(episode.success)
                stats[family].steps.append(len(episode))
                if index == 0:
                    shown.append(episode)
                if single:
                    outcome = 'success' if episode.success else 'FAILED'
                    print(f'instruction: {task.instruction}')
                    print(f'family={family} split={args.split} seed={seed}: {outcome} '
                          f'after {len(episode)} steps')
                progress.update(1)
    finally:
        progress.close()
        wall = time.perf_counter() - start
        render_ms = 1000.0 * env.render_seconds / max(env.frames_rendered, 1)
        env.close()

    summary = _summary(stats, args.split, len(seeds), wall, frames, render_ms)
    if not single:
        _print_table(summary)
    if args.save_frames:
        save_filmstrip(shown, Path(args.save_frames))
        print(f'filmstrip written to {args.save_frames}')
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
        print(f'figures written to {args.json}')
    return 0


def _seeds(suite: TaskSuite, args: argparse.Namespace) -> list[int]:
    if args.seed is not None:
        return list(range(args.seed, args.seed + args.episodes))
    return suite.seeds(args.split, 'eval', args.episodes)


def _summary(stats: dict[str, FamilyStats], split: str, per_family: int, wall: float,
             frames: int, render_ms: float) -> dict[str, Any]:
    episodes = sum(s.episodes for s in stats.values())
    return {
        'split': split,
        'episodes_per_family': per_family,
        'families': {family: {'episodes': s.episodes, 'successes': s.successes,
                              'success_rate': s.success_rate,
                              'mean_steps': float(np.mean(s.steps)) if s.steps else 0.0,
                              'max_steps': int(max(s.steps)) if s.steps else 0}
                     for family, s in stats.items()},
        'render_ms_per_frame': render_ms,
        'episodes_per_min': 60.0 * episodes / wall if wall > 0 else 0.0,
        'frames_per_s': frames / wall if wall > 0 else 0.0,
        'wall_s': wall,
    }


def _print_table(summary: dict[str, Any]) -> None:
    print(f'\nscripted expert, split={summary["split"]}, '
          f'{summary["episodes_per_family"]} episodes per family')
    print(f'{"family":<8} {"success":>9} {"rate":>7} {"mean steps":>11} {"max steps":>10}')
    for family, row in summary['families'].items():
        print(f'{family:<8} {row["successes"]:>4}/{row["episodes"]:<4} '
              f'{100 * row["success_rate"]:>6.1f}% {row["mean_steps"]:>11.1f} '
              f'{row["max_steps"]:>10d}')
    print(f'render: {summary["render_ms_per_frame"]:.2f} ms/frame   '
          f'throughput: {summary["episodes_per_min"]:.1f} episodes/min, '
          f'{summary["frames_per_s"]:.1f} frames/s   wall: {summary["wall_s"]:.1f} s')


def save_filmstrip(episodes: list[Episode], path: Path) -> None:
    """First, middle and last frame of each episode, one row per episode, titled by instruction."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = len(episodes)
    fig, axes = plt.subplots(rows, 3, figsize=(7.5, 2.8 * rows), squeeze=False)
    for row, episode in zip(axes, episodes, strict=True):
        picks = (0, len(episode) // 2, len(episode) - 1)
        for ax, index, label in zip(row, picks, ('first', 'middle', 'last'), strict=True):
            ax.imshow(episode.images[index], interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f'{label} (step {index})', fontsize=8)
        outcome = 'success' if episode.success else 'failed'
        row[1].set_title(f'"{episode.task.instruction}" ({outcome})', fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
