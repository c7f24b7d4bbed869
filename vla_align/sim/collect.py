"""`vla-align collect`: scripted-expert demonstrations, one rosbag2 per successful episode.

Layout of a collection::

    DIR/collection.json                 what was asked, what happened, how fast
    DIR/<family>/<family>_<seed>/       one bag per successful episode (metadata.yaml + data)

Seeds come from ``suite.seeds(split, purpose, ...)`` (train, val and eval seeds never overlap),
and every family draws its tasks from the same seed list. Retry policy: a family starts with
its first N seeds; each failed (or crashed) expert episode adds the family's next seed, until
the family has N successes or has spent its budget of ``retry_factor * N`` attempts. The seeds
written are therefore the first N successful seeds of the list, whatever the worker count or
completion order. Failures are counted, never written.

Rollouts run in worker processes (``spawn`` context, so no PyBullet state is inherited); each
worker builds one ``ManipulationEnv`` and reuses it for all its episodes. A bag is written into
``DIR/.incomplete/`` and moved into place when complete, so an interrupted run never leaves a
half-written bag where ``bag_io.find_bags`` looks.
"""
from __future__ import annotations

import argparse
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
import json
import multiprocessing
import os
from pathlib import Path
import shutil
import sys
import time
from typing import Any, Optional

from tqdm import tqdm

from vla_align.data.bag_io import STAGING_DIR, STORAGES, find_bags, write_episode_bag
from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.rollout import run_expert_episode
from vla_align.sim.suite import PURPOSES, load_suite

# Bags are staged in STAGING_DIR and ``os.replace``d into ``<family>/`` once complete.
REPORT_NAME = 'collection.json'


@dataclass(frozen=True)
class CollectConfig:
    """What to collect; mirrors the command-line options."""

    out: Path
    episodes_per_family: int = 50
    families: tuple[str, ...] = ()  # empty: every family of the suite
    split: str = 'seen'
    purpose: str = 'train'
    suite_path: Optional[Path] = None  # None: the shipped suite
    workers: int = 1
    storage: str = 'mcap'
    seed_start: int = 0
    retry_factor: int = 2  # attempts per family <= retry_factor * episodes_per_family
    action_noise: float = 0.0  # DART noise (m, std per axis) on executed expert translations
    env: EnvConfig = EnvConfig()  # camera, control rate, step budget of every worker's env

    def __post_init__(self) -> None:
        if self.episodes_per_family < 1:
            raise ValueError(f'episodes per family must be >= 1, got {self.episodes_per_family}')
        if self.workers < 1:
            raise ValueError(f'workers must be >= 1, got {self.workers}')
        if self.storage not in STORAGES:
            raise ValueError(f'storage must be one of {STORAGES}, got {self.storage!r}')
        if self.purpose not in PURPOSES:
            raise ValueError(f'purpose must be one of {PURPOSES}, got {self.purpose!r}')
        if self.retry_factor < 1:
            raise ValueError(f'retry factor must be >= 1, got {self.retry_factor}')
        if self.seed_start < 0:
            raise ValueError(f'seed start must be >= 0, got {self.seed_start}')
        if not 0.0 <= self.action_noise <= self.env.limits.max_translation:
            raise ValueError(f'action noise must be in [0, {self.env.limits.max_translation}] m, '
                             f'got {self.action_noise}')

    @property
    def max_attempts(self) -> int:
        return self.retry_factor * self.episodes_per_family


@dataclass(frozen=True)
class EpisodeJob:
    family: str
    seed: int


@dataclass
class AttemptResult:
    """What one rollout produced; ``bag`` is relative to the collection root."""

    family: str
    seed: int
    success: bool
    frames: int
    seconds: float
    bag: Optional[str] = None
    error: Optional[str] = None  # the exception, when the rollout or the write crashed


@dataclass
class FamilyReport:
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0  # the expert ran but did not succeed
    errors: int = 0  # the rollout or the bag write raised
    frames_written: int = 0
    frames_simulated: int = 0
    written_seeds: list[int] = field(default_factory=list)
    failed_seeds: list[int] = field(default_factory=list)

    def add(self, outcome: AttemptResult) -> None:
        self.attempted += 1
        self.frames_simulated += outcome.frames
        if outcome.error is not None:
            self.errors += 1
            self.failed_seeds.append(outcome.seed)
        elif outcome.success:
            self.succeeded += 1
            self.frames_written += outcome.frames
            self.written_seeds.append(outcome.seed)
        else:
            self.failed += 1
            self.failed_seeds.append(outcome.seed)


@dataclass
class CollectionReport:
    """The content of ``collection.json``."""

    config: dict[str, Any]
    families: dict[str, FamilyReport]
    wall_time_s: float
    errors: list[str]
    complete: bool  # every family reached episodes_per_family successes

    @property
    def episodes_written(self) -> int:
        return sum(f.succeeded for f in self.families.values())

    @property
    def attempts(self) -> int:
        return sum(f.attempted for f in self.families.values())

    @property
    def frames_written(self) -> int:
        return sum(f.frames_written for f in self.families.values())

    def to_dict(self) -> dict[str, Any]:
        minutes = max(self.wall_time_s, 1e-9) / 60.0
        families = {}
        for name, report in sorted(self.families.items()):
            families[name] = asdict(report)
            families[name]['written_seeds'].sort()
            families[name]['failed_seeds'].sort()
        return {
            'config': self.config,
            'families': families,
            'totals': {
                'attempted': self.attempts,
                'succeeded': self.episodes_written,
                'failed': sum(f.failed for f in self.families.values()),
                'errors': sum(f.errors for f in self.families.values()),
                'frames_written': self.frames_written,
                'frames_simulated': sum(f.frames_simulated for f in self.families.values()),
            },
            'complete': self.complete,
            'wall_time_s': round(self.wall_time_s, 3),
            'episodes_per_min': round(self.episodes_written / minutes, 2),
            'attempts_per_min': round(self.attempts / minutes, 2),
            'frames_per_s': round(self.frames_written / (minutes * 60.0), 2),
            'errors': self.errors,
        }


# -- worker process ----------------------------------------------------------------------------

_WORKER: Optional[_Worker] = None


class _Worker:
    """Per-process state: one env, reused for every episode this process runs."""

    def __init__(self, suite_path: Optional[str], env_config: EnvConfig, split: str,
                 purpose: str, out: str, storage: str, action_noise: float) -> None:
        self.suite = load_suite(None if suite_path is None else Path(suite_path))
        self.env = ManipulationEnv(env_config)
        self.split, self.purpose, self.storage = split, purpose, storage
        self.out = Path(out)
        self.action_noise = action_noise

    def run(self, job: EpisodeJob) -> AttemptResult:
        start = time.perf_counter()
        frames = 0
        try:
            task = self.suite.sample_task(job.family, self.split, job.seed)
            episode = run_expert_episode(self.env, task, job.seed, self.action_noise)
            frames = len(episode)
            if not episode.success:
                return AttemptResult(job.family, job.seed, False, frames,
                                     time.perf_counter() - start)
            episode.metadata.setdefault('purpose', self.purpose)
            name = f'{job.family}_{job.seed}'
            staging = self.out / STAGING_DIR / name
            shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
            write_episode_bag(episode, staging, storage=self.storage, robot='panda',
                              source='sim_collector')
            final = self.out / job.family / name
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, final)
            return AttemptResult(job.family, job.seed, True, frames,
                                 time.perf_counter() - start,
                                 bag=str(final.relative_to(self.out)))
        except Exception as exc:  # noqa: BLE001 - one bad seed must not stop the collection
            return AttemptResult(job.family, job.seed, False, frames,
                                 time.perf_counter() - start,
                                 error=f'{type(exc).__name__}: {exc}')


def _init_worker(suite_path: Optional[str], env_config: EnvConfig, split: str, purpose: str,
                 out: str, storage: str, action_noise: float) -> None:
    global _WORKER
    _WORKER = _Worker(suite_path, env_config, split, purpose, out, storage, action_noise)


def _run_job(job: EpisodeJob) -> AttemptResult:
    assert _WORKER is not None, 'worker not initialised'
    return _WORKER.run(job)


# -- coordinator -------------------------------------------------------------------------------

class SeedScheduler:
    """The retry policy: which seed each family attempts next (see the module docstring).

    Every family walks the same seed list in order and never has more attempts in flight than
    successes still missing, so the seeds attempted are always a prefix of ``seeds``.
    """

    def __init__(self, families: tuple[str, ...], seeds: list[int],
                 episodes_per_family: int) -> None:
        self.seeds = [int(seed) for seed in seeds]
        self.episodes_per_family = episodes_per_family
        self.reports = {family: FamilyReport() for family in families}
        self._next = {family: 0 for family in families}
        self._in_flight = {family: 0 for family in families}

    def initial_jobs(self) -> list[EpisodeJob]:
        """N jobs per family, interleaved so that every family makes progress from the start."""
        jobs = []
        for _ in range(self.episodes_per_family):
            for family in self.reports:
                job = self._next_job(family)
                if job is not None:
                    jobs.append(job)
        return jobs

    def record(self, result: AttemptResult) -> Optional[EpisodeJob]:
        """Count a finished attempt; returns the retry it calls for, if any."""
        self._in_flight[result.family] -= 1
        self.reports[result.family].add(result)
        return None if result.success else self._next_job(result.family)

    def _next_job(self, family: str) -> Optional[EpisodeJob]:
        missing = (self.episodes_per_family - self.reports[family].succeeded
                   - self._in_flight[family])
        if missing <= 0 or self._next[family] >= len(self.seeds):
            return None
        job = EpisodeJob(family, self.seeds[self._next[family]])
        self._next[family] += 1
        self._in_flight[family] += 1
        return job

    @property
    def succeeded(self) -> int:
        return sum(report.succeeded for report in self.reports.values())

    @property
    def failed(self) -> int:
        return sum(report.failed + report.errors for report in self.reports.values())

    @property
    def complete(self) -> bool:
        return all(report.succeeded >= self.episodes_per_family
                   for report in self.reports.values())


def collect(config: CollectConfig, progress: bool = True) -> CollectionReport:
    """Run the collection described by ``config`` and write ``collection.json``."""
    suite = load_suite(config.suite_path)
    families = tuple(dict.fromkeys(config.families or suite.families))  # ordered, no repeats
    unknown = [name for name in families if name not in suite.families]
    if unknown:
        raise ValueError(f'unknown families {unknown}; the suite has {list(suite.families)}')
    if config.split not in suite.splits:
        raise ValueError(f'unknown split {config.split!r}; the suite has {list(suite.splits)}')
    out = Path(config.out)
    if (out / REPORT_NAME).exists() or (out.is_dir() and find_bags([out])):
        raise ValueError(f'{out} already holds a collection; choose a new --out directory')
    out.mkdir(parents=True, exist_ok=True)

    seeds = list(suite.seeds(config.split, config.purpose, config.max_attempts,
                             start=config.seed_start))
    scheduler = SeedScheduler(families, seeds, config.episodes_per_family)
    first_jobs = scheduler.initial_jobs()
    errors: list[str] = []

    workers = min(config.workers, len(first_jobs)) or 1
    suite_arg = None if config.suite_path is None else str(config.suite_path)
    interrupted = False
    started = time.perf_counter()
    bar = tqdm(total=len(first_jobs), unit='ep', desc='collect', disable=not progress)
    context = multiprocessing.get_context('spawn')
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_init_worker,
                             initargs=(suite_arg, config.env, config.split, config.purpose,
                                       str(out), config.storage, config.action_noise)) as pool:
        pending: set[Future[AttemptResult]] = {pool.submit(_run_job, job)
                                               for job in first_jobs}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    outcome = future.result()
                    if outcome.error is not None:
                        errors.append(f'{outcome.family} seed {outcome.seed}: {outcome.error}')
                    retry = scheduler.record(outcome)
                    if retry is not None:
                        pending.add(pool.submit(_run_job, retry))
                        bar.total += 1
                    bar.update(1)
                    bar.set_postfix(ok=scheduler.succeeded, failed=scheduler.failed)
        except KeyboardInterrupt:
            interrupted = True
            errors.append('interrupted by the user')
            pool.shutdown(wait=False, cancel_futures=True)
        except BrokenProcessPool as exc:
            errors.append(f'a simulator worker process died ({exc}); see its output above')
        finally:
            bar.close()
    report = CollectionReport(
        config=_config_record(config, families, workers, seeds), families=scheduler.reports,
        wall_time_s=time.perf_counter() - started, errors=errors, complete=scheduler.complete)
    _write_report(out / REPORT_NAME, report)
    if interrupted:
        raise KeyboardInterrupt
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
    return report


def _config_record(config: CollectConfig, families: tuple[str, ...], workers: int,
                   seeds: list[int]) -> dict[str, Any]:
    return {
        'episodes_per_family': config.episodes_per_family,
        'families': list(families),
        'split': config.split,
        'purpose': config.purpose,
        'suite': None if config.suite_path is None else str(config.suite_path),
        'storage': config.storage,
        'seed_start': config.seed_start,
        'action_noise': config.action_noise,
        'max_attempts_per_family': config.max_attempts,
        'seed_pool': [int(seed) for seed in seeds],
        'workers': workers,
        'env': asdict(config.env),
    }


def _write_report(path: Path, report: CollectionReport) -> None:
    tmp = path.with_suffix('.json.tmp')
    tmp.write_text(json.dumps(report.to_dict(), indent=2) + '\n')
    os.replace(tmp, path)


def format_report(report: CollectionReport) -> str:
    data = report.to_dict()
    lines = [f'{"family":<10} {"attempted":>9} {"succeeded":>9} {"failed":>6} {"errors":>6} '
             f'{"frames":>7}']
    for name, fam in data['families'].items():
        lines.append(f'{name:<10} {fam["attempted"]:>9} {fam["succeeded"]:>9} '
                     f'{fam["failed"]:>6} {fam["errors"]:>6} {fam["frames_written"]:>7}')
    totals = data['totals']
    lines.append(f'{"total":<10} {totals["attempted"]:>9} {totals["succeeded"]:>9} '
                 f'{totals["failed"]:>6} {totals["errors"]:>6} {totals["frames_written"]:>7}')
    lines.append(f'wall time {data["wall_time_s"]:.1f} s with {data["config"]["workers"]} '
                 f'workers: {data["episodes_per_min"]:.1f} episodes/min written, '
                 f'{data["attempts_per_min"]:.1f} attempts/min, '
                 f'{data["frames_per_s"]:.1f} frames/s written')
    if not report.complete:
        lines.append('INCOMPLETE: some families did not reach the requested number of '
                     'successful episodes within the retry budget')
    for error in report.errors[:10]:
        lines.append(f'error: {error}')
    return '\n'.join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--out', type=Path, required=True,
                        help='new directory for the bags and collection.json')
    parser.add_argument('--episodes-per-family', type=int, default=50,
                        help='successful episodes to write per task family (default 50)')
    parser.add_argument('--families', nargs='+', default=None,
                        help='task families to collect (default: all in the suite)')
    parser.add_argument('--split', default='seen',
                        help='task split to draw tasks and seeds from (default seen)')
    parser.add_argument('--purpose', default='train', choices=PURPOSES,
                        help='which seed range: train, val or eval (default train)')
    parser.add_argument('--suite', type=Path, default=None,
                        help='task-suite YAML (default: the shipped suite)')
    parser.add_argument('--workers', type=int, default=os.cpu_count() or 1,
                        help='parallel simulator processes (default: CPU count)')
    parser.add_argument('--storage', default='mcap', choices=STORAGES,
                        help='rosbag2 storage plugin (default mcap)')
    parser.add_argument('--seed-start', type=int, default=0,
                        help='offset into the seed list of split/purpose (default 0)')
    parser.add_argument('--retry-factor', type=int, default=2,
                        help='attempt at most this many times N seeds per family (default 2)')
    parser.add_argument('--action-noise', type=float, default=0.0, metavar='METRES',
                        help='DART: Gaussian noise (std per axis) added to the executed expert '
                             'translation while the clean action is recorded (default 0)')


def run(args: argparse.Namespace) -> int:
    try:
        config = CollectConfig(
            out=args.out, episodes_per_family=args.episodes_per_family,
            families=tuple(args.families or ()), split=args.split, purpose=args.purpose,
            suite_path=args.suite, workers=args.workers, storage=args.storage,
            seed_start=args.seed_start, retry_factor=args.retry_factor,
            action_noise=args.action_noise)
        report = collect(config)
    except ValueError as exc:
        print(f'vla-align collect: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'vla-align collect: interrupted; partial report in {args.out / REPORT_NAME}',
              file=sys.stderr)
        return 130
    print(format_report(report))
    print(f'report: {args.out / REPORT_NAME}')
    return 0 if report.complete else 1
