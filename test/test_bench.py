"""`vla-align bench`: a CI-sized run writes every figure it promises, and the timing helpers
interleave and summarise as documented. No assertion depends on how fast this machine is."""
import json
import math
import os

import numpy as np
import pytest
import torch

from vla_align.bench.cli import BenchSettings, run_bench
from vla_align.bench.report import check_targets, write_report
from vla_align.bench.ros_latency import PRIVATE_DOMAINS
from vla_align.bench.timing import LatencyStats, Variant, time_interleaved
from vla_align.cli import main
from vla_align.model.config import PolicyConfig
from vla_align.model.policy import Policy
from vla_align.ros.isolation import private_ros_domain

MACHINE_KEYS = {'device', 'device_name', 'cpu_model', 'cpu_count', 'torch_threads',
                'torch_version', 'load_average_at_start', 'started_at', 'cpu_native_bf16'}
STATS_KEYS = {'count', 'p50_ms', 'p90_ms', 'p99_ms', 'mean_ms', 'max_ms'}


@pytest.fixture(scope='module')
def quick_run(tmp_path_factory):
    torch.manual_seed(0)
    policy = Policy.from_config(PolicyConfig.tiny(), device='cpu')
    settings = BenchSettings.quick(width=160, height=120, ros=False)
    result = run_bench(policy, settings, threads=1, seed=0, model_name='tiny',
                       progress=False)
    out = tmp_path_factory.mktemp('bench')
    json_path, md_path = write_report(result, out)
    return settings, json.loads(json_path.read_text()), md_path.read_text()


def assert_stats(stats: dict, count: int) -> None:
    assert set(stats) == STATS_KEYS
    assert stats['count'] == count
    assert 0 < stats['p50_ms'] <= stats['p90_ms'] <= stats['p99_ms'] <= stats['max_ms']
    assert all(math.isfinite(stats[key]) for key in STATS_KEYS)


def test_bench_json_records_the_machine(quick_run):
    _, bench, _ = quick_run
    machine = bench['machine']
    assert MACHINE_KEYS <= set(machine)
    assert machine['device'] == 'cpu' and machine['torch_threads'] == 1
    assert machine['torch_version'] == torch.__version__
    assert len(machine['load_average_at_start']) == 3
    assert bench['settings']['threads'] == 1 and bench['settings']['model'] == 'tiny'


def test_bench_json_has_step_latency_and_throughput(quick_run):
    settings, bench, _ = quick_run
    step = bench['policy']['step_latency']
    assert_stats(step['cached_instruction'], settings.steps)
    assert_stats(step['new_instruction'], settings.new_instruction_steps)
    assert_stats(step['executed_action'], settings.steps)  # one forward per executed action
    assert step['chunk_size'] == 1
    assert step['image_shape'] == [settings.height, settings.width, 3]
    points = bench['policy']['throughput']
    assert [p['batch_size'] for p in points] == list(settings.batch_sizes)
    for point in points:
        assert point['actions_per_s'] == pytest.approx(
            point['batch_size'] / point['batch_ms']['mean_ms'] * 1e3)


def test_bench_json_has_training_and_simulation(quick_run):
    settings, bench, _ = quick_run
    training = bench['training']
    assert training['batch_size'] == settings.train_batch_size
    assert_stats(training['step_ms'], settings.train_steps)
    assert training['samples_per_s'] == pytest.approx(
        settings.train_batch_size / training['step_ms']['mean_ms'] * 1e3)
    simulation = bench['simulation']
    assert_stats(simulation['render_ms'], settings.sim_steps)
    assert simulation['frames_per_s'] > 0 and simulation['control_steps_per_s'] > 0
    assert len(simulation['image_shape']) == 3
    assert bench['ros'] == {'skipped': '--skip-ros'}


def test_every_optimisation_has_a_before_after_ratio(quick_run):
    settings, bench, _ = quick_run
    comparisons = {c['name']: c for c in bench['optimisations']}
    expected = {'inference_mode', 'channels_last', 'instruction cache', 'zero-copy frame'}
    if bench['settings']['autocast_dtype'] != 'None':  # CPUs with native bf16
        expected |= {'autocast scope', 'bfloat16 autocast'}
    if os.cpu_count() >= 2:
        expected.add('2 threads')
    assert expected <= set(comparisons)
    for comparison in comparisons.values():
        count = settings.rounds * settings.block
        assert_stats(comparison['baseline_ms'], count)
        assert_stats(comparison['optimised_ms'], count)
        assert comparison['speedup_p50'] == pytest.approx(
            comparison['baseline_ms']['p50_ms'] / comparison['optimised_ms']['p50_ms'])
    assert comparisons['channels_last']['max_abs_diff'] < 0.05


def test_bench_md_has_every_section(quick_run):
    _, bench, markdown = quick_run
    for heading in ('## Policy step, batch 1', '## Batched throughput', '## Training',
                    '## Simulation', '## Optimisations', '## Targets'):
        assert heading in markdown
    assert 'Not measured: --skip-ros' in markdown
    assert bench['machine']['torch_version'] in markdown


def result_with(device: str, p50: float, p99: float, ros_p99: float, kept_up: bool,
                batch1_rate: float = 0.0) -> dict:
    stats = {'p50_ms': p50, 'p99_ms': p99}
    return {'machine': {'device': device},
            'policy': {'step_latency': {'cached_instruction': stats},
                       'throughput': [{'batch_size': 1, 'actions_per_s': batch1_rate}]},
            'ros': {'latency': {'p99_ms': ros_p99}, 'settings': {'rate_hz': 30.0},
                    'kept_up': kept_up, 'actions_matched': 10, 'frames_sent': 10}}


def test_targets_are_judged_against_design_section_6():
    met = {c.what: c.met for c in check_targets(result_with('cpu', 9.0, 25.0, 12.0, True))}
    assert list(met.values()) == [True, False, True, True]
    missed = check_targets(result_with('cpu', 11.0, 15.0, 31.0, False))
    assert [c.met for c in missed] == [False, True, False, False]
    gpu = check_targets(result_with('cuda:0', 1.0, 2.0, 12.0, True, batch1_rate=1500.0))
    assert gpu[0].what.endswith('(GPU)') and gpu[0].met
    assert not check_targets(result_with('cuda', 1.0, 2.0, 12.0, True, 900.0))[0].met


def test_interleaved_timing_alternates_blocks_inside_each_context():
    calls = []
    entered = []

    class Recorder:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            entered.append(self.name)

        def __exit__(self, *exc):
            entered.append('/' + self.name)

    variants = [Variant('a', lambda: calls.append('a'), lambda: Recorder('a')),
                Variant('b', lambda: calls.append('b'), lambda: Recorder('b'))]
    stats = time_interleaved(variants, rounds=3, block=2, warmup=1)
    assert calls == ['a'] * 3 + ['b'] * 3 + ['a'] * 3 + ['b'] * 3 + ['a'] * 3 + ['b'] * 3
    assert entered == ['a', '/a', 'b', '/b'] * 3
    assert stats['a'].count == stats['b'].count == 6
    with pytest.raises(ValueError, match='unique'):
        time_interleaved([variants[0], variants[0]], rounds=1)


def test_latency_stats_are_percentiles_in_milliseconds():
    seconds = np.arange(1, 101) / 1000.0  # 1 .. 100 ms
    stats = LatencyStats.from_seconds(seconds)
    assert stats.count == 100 and stats.max_ms == pytest.approx(100.0)
    assert stats.p50_ms == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert stats.p99_ms == pytest.approx(np.percentile(np.arange(1, 101), 99))
    with pytest.raises(ValueError, match='no timings'):
        LatencyStats.from_seconds([])


def test_ros_measurement_runs_in_a_private_domain_and_restores_the_environment(monkeypatch,
                                                                               tmp_path):
    # The bench's domains are neither the interactive default nor the tests' or eval's.
    assert min(PRIVATE_DOMAINS) > 200 and max(PRIVATE_DOMAINS) <= 232
    monkeypatch.setenv('ROS_DOMAIN_ID', '0')
    monkeypatch.delenv('ROS_LOCALHOST_ONLY', raising=False)
    with private_ros_domain(PRIVATE_DOMAINS[0], str(tmp_path)) as env:
        assert os.environ['ROS_DOMAIN_ID'] == env['ROS_DOMAIN_ID'] == str(PRIVATE_DOMAINS[0])
        assert os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
        assert os.environ['ROS_LOCALHOST_ONLY'] == '1'
        assert os.environ['ROS_LOG_DIR'] == str(tmp_path)
    assert os.environ['ROS_DOMAIN_ID'] == '0'
    assert 'ROS_LOCALHOST_ONLY' not in os.environ
    with pytest.raises(ValueError, match='0..232'):
        with private_ros_domain(300, str(tmp_path)):
            pass


def test_cli_refuses_bad_arguments_with_a_message(tmp_path, capsys):
    assert main(['bench', '--checkpoint', str(tmp_path / 'missing'), '--skip-ros']) == 2
    assert 'does not exist' in capsys.readouterr().err
    assert main(['bench', '--threads', '0']) == 2
    assert '--threads must be >= 1' in capsys.readouterr().err
    assert main(['bench', '--random', 'tiny', '--device', 'tpu']) == 2
    assert 'unknown device' in capsys.readouterr().err
