"""`vla-align collect`: bags of successful expert episodes only, and a report that matches them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_bag_io import read_back

from vla_align import cli
from vla_align.data.bag_io import STAGING_DIR, find_bags, write_episode_bag
from vla_align.data.episode import Episode, TaskInfo
from vla_align.sim.collect import (
    REPORT_NAME,
    AttemptResult,
    CollectConfig,
    SeedScheduler,
    collect,
)
from vla_align.sim.env import EnvConfig
from vla_align.sim.suite import load_suite


def tiny_episode(seed: int) -> Episode:
    rng = np.random.default_rng(seed)
    steps = 3
    return Episode(task=TaskInfo('touch the red block', 'reach'), seed=seed,
                   images=rng.integers(0, 256, (steps, 8, 8, 3), dtype=np.uint8),
                   actions=np.zeros((steps, 7), np.float32),
                   ee_positions=np.zeros((steps, 3), np.float32),
                   ee_orientations=np.tile(np.float32([0, 0, 0, 1]), (steps, 1)),
                   grippers=np.zeros(steps, np.float32), success=True, control_hz=10.0)


@pytest.fixture(scope='module')
def collection(tmp_path_factory) -> Path:
    """2 families x 2 episodes through the real command line, 2 worker processes."""
    out = tmp_path_factory.mktemp('collect') / 'demos'
    code = cli.main(['collect', '--out', str(out), '--episodes-per-family', '2',
                     '--families', 'reach', 'pick', '--workers', '2'])
    assert code == 0
    return out


def test_bags_are_readable_successful_episodes_named_by_family_and_seed(collection):
    bags = find_bags([collection])
    assert [bag.relative_to(collection).parts[0] for bag in bags] == \
        ['pick', 'pick', 'reach', 'reach']
    for bag in bags:
        episode = read_back(bag, rate=10.0)
        assert episode.success
        assert bag.name == f'{episode.task.family}_{episode.seed}'
        assert episode.metadata['purpose'] == 'train'
        assert len(episode) > 1 and episode.images.shape[1:] == (128, 128, 3)
    assert not (collection / STAGING_DIR).exists()


def test_report_counts_match_the_bags(collection):
    report = json.loads((collection / REPORT_NAME).read_text())
    bags = find_bags([collection])
    seeds = load_suite(None).seeds('seen', 'train', 4)
    assert report['config']['seed_pool'] == seeds
    assert report['complete'] is True
    for family in ('reach', 'pick'):
        fam = report['families'][family]
        written = [bag for bag in bags if bag.parent.name == family]
        assert fam['succeeded'] == len(written) == 2
        assert fam['attempted'] == fam['succeeded'] + fam['failed'] + fam['errors']
        assert sorted(int(bag.name.rsplit('_', 1)[1]) for bag in written) == \
            fam['written_seeds']
        # attempts are a prefix of the seed pool: written + failed seeds, no gaps
        assert sorted(fam['written_seeds'] + fam['failed_seeds']) == seeds[:fam['attempted']]
        assert fam['frames_written'] == sum(len(read_back(bag, rate=10.0)) for bag in written)
    assert report['totals']['succeeded'] == 4
    assert report['episodes_per_min'] > 0 and report['frames_per_s'] > 0


def test_failed_expert_episodes_are_counted_not_written(tmp_path):
    """One control step is too few for any task, so every attempt fails until the budget."""
    config = CollectConfig(out=tmp_path / 'demos', episodes_per_family=2, families=('reach',),
                           workers=1, retry_factor=2, env=EnvConfig(max_steps=1))
    report = collect(config, progress=False)
    assert not report.complete
    saved = json.loads((tmp_path / 'demos' / REPORT_NAME).read_text())
    reach = saved['families']['reach']
    assert (reach['attempted'], reach['succeeded'], reach['failed']) == (4, 0, 4)
    assert reach['failed_seeds'] == load_suite(None).seeds('seen', 'train', 4)
    assert find_bags([tmp_path / 'demos']) == []


def test_refuses_to_write_into_an_existing_collection(tmp_path, capsys):
    write_episode_bag(tiny_episode(0), tmp_path / 'demos' / 'reach' / 'reach_0')
    code = cli.main(['collect', '--out', str(tmp_path / 'demos'), '--episodes-per-family', '1'])
    assert code == 2
    assert 'already holds a collection' in capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [
    (['--families', 'juggle'], "unknown families ['juggle']"),
    (['--split', 'nowhere'], "unknown split 'nowhere'"),
    (['--episodes-per-family', '0'], 'episodes per family must be >= 1'),
    (['--split', 'paraphrase'], "has no 'train' seeds"),
])
def test_bad_options_are_clear_errors(tmp_path, capsys, argv, message):
    code = cli.main(['collect', '--out', str(tmp_path / 'demos'), *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert find_bags([tmp_path]) == []


def test_find_bags_is_sorted_and_skips_incomplete(tmp_path):
    for rel in ('reach/reach_10', 'reach/reach_2', 'pick/pick_1', f'{STAGING_DIR}/pick_3'):
        write_episode_bag(tiny_episode(1), tmp_path / rel)
    found = [bag.relative_to(tmp_path).as_posix() for bag in find_bags([tmp_path])]
    assert found == ['pick/pick_1', 'reach/reach_10', 'reach/reach_2']
    assert find_bags([tmp_path / 'pick' / 'pick_1']) == [tmp_path / 'pick' / 'pick_1']
    assert find_bags([tmp_path / 'missing']) == []


@pytest.mark.parametrize('order_seed', [0, 1, 2])
def test_retry_policy_writes_the_first_n_successful_seeds_whatever_the_order(order_seed):
    """Fake outcomes (every third seed fails for 'a', all fail for 'b'), finished in a random
    order as parallel workers would: the attempted seeds stay a prefix of the pool."""
    def succeeds(family: str, seed: int) -> bool:
        return family == 'a' and seed % 3 != 0

    seeds = list(range(100, 108))  # budget: 2 x 4 attempts
    scheduler = SeedScheduler(('a', 'b'), seeds, episodes_per_family=4)
    pending = scheduler.initial_jobs()
    assert [(job.family, job.seed) for job in pending[:4]] == \
        [('a', 100), ('b', 100), ('a', 101), ('b', 101)]
    rng = np.random.default_rng(order_seed)
    while pending:
        job = pending.pop(int(rng.integers(len(pending))))
        retry = scheduler.record(AttemptResult(job.family, job.seed,
                                               succeeds(job.family, job.seed), frames=5,
                                               seconds=0.1))
        if retry is not None:
            pending.append(retry)
    a, b = scheduler.reports['a'], scheduler.reports['b']
    assert sorted(a.written_seeds) == [100, 101, 103, 104]  # 102 % 3 == 0 failed
    assert (a.attempted, a.failed_seeds) == (5, [102])
    assert (b.attempted, b.succeeded, sorted(b.failed_seeds)) == (8, 0, seeds)
    assert not scheduler.complete
