"""`vla-align bench`: measure this machine and write bench.json + bench.md.

    vla-align bench                          # shipped checkpoint, CPU, 1 thread, everything
    vla-align bench --quick --skip-ros       # CI-sized run
    vla-align bench --device cuda --out runs/bench-gpu

What is measured: policy step latency at batch 1 (cached and new instruction), batched
throughput, camera -> action latency through ROS 2 topics with the real policy node, training
samples/s, simulation frames/s, and before/after ratios of each inference optimisation timed
interleaved (docs/BENCHMARKS.md explains how to read them).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
import logging
from pathlib import Path
import sys
from typing import Any, Optional

DEFAULT_CHECKPOINT = 'checkpoints/default'
RANDOM_CONFIGS = ('tiny', 'default')


@dataclass(frozen=True)
class BenchSettings:
    """How much to measure. `full` is the real bench; `quick` a CI-sized run."""

    steps: int = 300  # timed policy steps, cached instruction
    new_instruction_steps: int = 50
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64)
    actions_per_batch_size: int = 256
    width: int = 640  # synthetic camera frame
    height: int = 480
    rounds: int = 20  # interleaved comparisons: rounds x block calls per variant
    block: int = 5
    compile: bool = True
    ros_duration_s: float = 10.0
    ros_warmup_s: float = 3.0
    ros_rate_hz: float = 30.0
    train_batch_size: int = 64
    train_steps: int = 20
    sim_steps: int = 100
    ros: bool = True
    train: bool = True
    sim: bool = True

    @classmethod
    def quick(cls, **changes: Any) -> BenchSettings:
        base = cls(steps=30, new_instruction_steps=5, batch_sizes=(1, 4),
                   actions_per_batch_size=16, rounds=3, block=3, compile=False,
                   ros_duration_s=2.0, ros_warmup_s=1.0, train_batch_size=8, train_steps=3,
                   sim_steps=10)
        return replace(base, **changes)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', default=DEFAULT_CHECKPOINT,
                        help='checkpoint folder to benchmark (default: the shipped %(default)s)')
    parser.add_argument('--random', choices=RANDOM_CONFIGS, default=None,
                        help='benchmark a randomly initialised model of this architecture '
                             'instead of a checkpoint')
    parser.add_argument('--device', default='cpu', help='cpu, cuda, cuda:N or auto')
    parser.add_argument('--threads', type=int, default=1,
                        help='torch CPU threads for the policy measurements and the policy '
                             'node (default %(default)s, as the policy node runs)')
    parser.add_argument('--precision', choices=('auto', 'fp32'), default='auto')
    parser.add_argument('--quick', action='store_true', help='a CI-sized run (seconds)')
    parser.add_argument('--skip-ros', action='store_true', help='no ROS 2 topic latency')
    parser.add_argument('--skip-train', action='store_true', help='no training samples/s')
    parser.add_argument('--skip-sim', action='store_true', help='no simulation frames/s')
    parser.add_argument('--skip-compile', action='store_true',
                        help='no torch.compile comparison (it compiles for tens of seconds)')
    parser.add_argument('--out', default='runs/bench', help='folder for bench.json + bench.md')
    parser.add_argument('--seed', type=int, default=0, help='seed of the synthetic inputs')


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    if args.threads < 1:
        print(f'vla-align bench: --threads must be >= 1, got {args.threads}', file=sys.stderr)
        return 2
    settings = BenchSettings.quick() if args.quick else BenchSettings()
    settings = replace(settings, ros=not args.skip_ros, train=not args.skip_train,
                       sim=not args.skip_sim, compile=settings.compile and not args.skip_compile)
    try:
        policy, model_name, checkpoint = _load_policy(args)
    except (ValueError, RuntimeError, OSError) as exc:
        print(f'vla-align bench: {exc}', file=sys.stderr)
        return 2
    result = run_bench(policy, settings, threads=args.threads, seed=args.seed,
                       model_name=model_name, checkpoint=checkpoint,
                       random_config=args.random or 'default')
    json_path, md_path = _write(result, args.out)
    print(Path(md_path).read_text())
    print(f'wrote {json_path} and {md_path}')
    return 0


def _write(result: dict[str, Any], out: str) -> tuple[Path, Path]:
    from vla_align.bench.report import write_report

    return write_report(result, out)


def _load_policy(args: argparse.Namespace):
    import torch

    from vla_align.model.config import PolicyConfig
    from vla_align.model.policy import Policy

    torch.set_num_threads(args.threads)
    if args.random:
        config = PolicyConfig.tiny() if args.random == 'tiny' else PolicyConfig()
        torch.manual_seed(args.seed)
        return (Policy.from_config(config, device=args.device, precision=args.precision),
                f'random {args.random} model', '')
    path = resolve_checkpoint(args.checkpoint)
    policy = Policy.from_checkpoint(path, device=args.device, precision=args.precision)
    return policy, str(path), str(path)


def resolve_checkpoint(checkpoint: str) -> Path:
    """``checkpoint`` as given, else (relative and absent here) under the package share dir."""
    from vla_align.paths import share_path

    path = Path(checkpoint).expanduser()
    if not path.is_absolute() and not path.exists() and share_path(*path.parts).exists():
        return share_path(*path.parts)
    return path


def run_bench(policy, settings: BenchSettings, threads: int = 1, seed: int = 0,
              model_name: str = '', checkpoint: str = '', random_config: str = 'default',
              progress: bool = True) -> dict[str, Any]:
    """Every measurement ``settings`` asks for, as the dict that bench.json holds."""
    import numpy as np
    import torch
    from tqdm import tqdm

    from vla_align.bench.machine import describe_machine
    from vla_align.bench.optimisations import ComparisonSettings, compare_optimisations
    from vla_align.bench.policy_speed import (
        BenchInputs,
        measure_step_latency,
        measure_throughput,
    )

    torch.set_num_threads(threads)
    machine = describe_machine(policy.device)
    rng = np.random.default_rng(seed)
    inputs = BenchInputs.synthetic(rng, settings.width, settings.height)
    stages = ['policy step', 'throughput', 'optimisations'] + \
        [name for name, wanted in (('ros', settings.ros), ('training', settings.train),
                                   ('simulation', settings.sim)) if wanted]
    bar = tqdm(total=len(stages), desc='bench', unit='stage', disable=not progress)
    result: dict[str, Any] = {
        'machine': machine.to_dict(),
        'settings': {**asdict(settings), 'model': model_name, 'checkpoint': checkpoint,
                     'threads': threads, 'seed': seed,
                     'precision': 'fp32' if policy.autocast_dtype is None else 'auto',
                     'autocast_dtype': str(policy.autocast_dtype).replace('torch.', ''),
                     'autocast_scope': policy.autocast_scope,
                     'frame_size': f'{settings.width}x{settings.height}'},
        'notes': _notes(machine),
    }

    def stage(name: str) -> None:
        bar.set_postfix_str(name)

    stage('policy step')
    step = measure_step_latency(policy, inputs, settings.steps, settings.new_instruction_steps,
                                progress)
    bar.update(1)
    stage('throughput')
    throughput = measure_throughput(policy, inputs, settings.batch_sizes,
                                    settings.actions_per_batch_size, rng, progress)
    result['policy'] = {'step_latency': step.to_dict(),
                        'throughput': [point.to_dict() for point in throughput]}
    bar.update(1)
    stage('optimisations')
    comparisons = compare_optimisations(
        policy, inputs, ComparisonSettings(rounds=settings.rounds, block=settings.block,
                                           compile=settings.compile), progress)
    result['optimisations'] = [c.to_dict() for c in comparisons]
    torch.set_num_threads(threads)
    bar.update(1)
    if settings.ros:
        stage('ros')
        result['ros'] = _guarded(lambda: _ros(settings, threads, policy, checkpoint,
                                              random_config))
        bar.update(1)
    else:
        result['ros'] = {'skipped': '--skip-ros'}
    if settings.train:
        stage('training')
        result['training'] = _guarded(lambda: _training(settings, policy, rng, progress))
        torch.set_num_threads(threads)  # the Trainer sets its own count
        bar.update(1)
    else:
        result['training'] = {'skipped': '--skip-train'}
    if settings.sim:
        stage('simulation')
        result['simulation'] = _guarded(lambda: _simulation(settings, seed, progress))
        bar.update(1)
    else:
        result['simulation'] = {'skipped': '--skip-sim'}
    bar.close()
    return result


def _notes(machine) -> list[str]:
    notes = []
    if machine.busy:
        notes.append(f'The machine was busy when the bench started (load average '
                     f'{machine.load_average_at_start[0]} on {machine.cpu_count} CPUs): '
                     f'absolute times are inflated; the interleaved ratios hold better.')
    return notes


def _guarded(measure) -> dict[str, Any]:
    """A measurement's dict, or {'error': reason} so one failing part keeps the others."""
    try:
        return measure()
    except Exception as exc:  # noqa: BLE001 - reported in bench.json, the run goes on
        logging.getLogger(__name__).warning('measurement failed: %s', exc)
        return {'error': f'{type(exc).__name__}: {exc}'}


def _ros(settings: BenchSettings, threads: int, policy, checkpoint: str,
         random_config: str) -> dict[str, Any]:
    from vla_align.bench.ros_latency import RosBenchSettings, measure_ros_latency

    ros = RosBenchSettings(rate_hz=settings.ros_rate_hz, duration_s=settings.ros_duration_s,
                           warmup_s=settings.ros_warmup_s, width=settings.width,
                           height=settings.height, threads=threads, device=str(policy.device))
    return measure_ros_latency(ros, checkpoint=checkpoint, random_config=random_config)


def _training(settings: BenchSettings, policy, rng, progress: bool) -> dict[str, Any]:
    from vla_align.bench.training_speed import measure_training

    # Training runs as `vla-align train` does: on every CPU, not the policy node's threads.
    return measure_training(policy.config, settings.train_batch_size, settings.train_steps,
                            str(policy.device), None, rng, progress).to_dict()


def _simulation(settings: BenchSettings, seed: int, progress: bool) -> dict[str, Any]:
    from vla_align.bench.sim_speed import measure_simulation

    return measure_simulation(settings.sim_steps, seed=seed, progress=progress).to_dict()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='vla-align bench', description=__doc__)
    configure_parser(parser)
    return run(parser.parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
