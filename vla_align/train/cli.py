"""`vla-align train`: train a policy on collected demonstration bags.

    vla-align train --data runs/demos --out runs/policy
    vla-align train --data runs/robot_episodes --contract panda_servo_teleop --out runs/policy
    vla-align train --data runs/demos --out runs/policy --max-minutes 10 --set optim.lr=1e-3
    vla-align train --data runs/demos --out runs/policy --resume runs/policy/checkpoint/last
    torchrun --nproc_per_node 4 -m vla_align.cli train --data ... --out ...   # multi-GPU
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from vla_align.paths import share_path


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--data', nargs='+', metavar='PATH',
                        help='episode bags, or folders searched for them (default: the '
                             "config's data.paths)")
    parser.add_argument('--contract', metavar='FILE',
                        help='topic contract the bags are read through (a YAML file or a name '
                             "in config/contracts/; default: the config's data.contract, "
                             'sim_panda)')
    parser.add_argument('--instruction', metavar='TEXT',
                        help='the instruction of bags that carry none')
    parser.add_argument('--out', required=True, help='output folder (checkpoint/, report.*)')
    parser.add_argument('--config', default=str(share_path('config', 'train_default.yaml')),
                        help='training YAML (default: %(default)s)')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='KEY=VALUE',
                        help='override a config entry, e.g. optim.lr=1e-3 or model.d_model=192')
    parser.add_argument('--resume', help='checkpoint folder to resume (its "last" checkpoint)')
    parser.add_argument('--init-from', metavar='CHECKPOINT',
                        help='start from these weights and normalisation (a fine-tune; fresh '
                             'optimizer and schedule)')
    parser.add_argument('--max-minutes', type=float, help='wall-clock budget (optim.max_minutes)')
    parser.add_argument('--max-steps', type=int, help='step budget (optim.max_steps)')
    parser.add_argument('--device', help='auto, cpu, cuda or cuda:N')
    parser.add_argument('--seed', type=int)
    parser.add_argument('--cache-dir', help='where decoded frame caches live')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from vla_align.train.config import parse_overrides

    overrides = parse_overrides(args.overrides)
    if args.data:
        overrides['data.paths'] = list(args.data)
    for flag, key in (('max_minutes', 'optim.max_minutes'), ('max_steps', 'optim.max_steps'),
                      ('device', 'device'), ('seed', 'seed'), ('cache_dir', 'data.cache_dir'),
                      ('contract', 'data.contract'), ('instruction', 'data.instruction'),
                      ('init_from', 'init_from')):
        if getattr(args, flag) is not None:
            overrides[key] = getattr(args, flag)
    return overrides


def run(args: argparse.Namespace) -> int:
    # Idle OpenMP threads sleep instead of spinning. On a busy few-core machine spinning threads
    # steal the CPU from the thread doing the work: measured 3-4x slower training with 2
    # threads on a shared 2-core host. Must be set before torch loads its OpenMP runtime.
    os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    from vla_align.data.contract import ContractError, load_contract
    from vla_align.data.dataset import DatasetError, find_bags, load_bag_cache
    from vla_align.model.checkpoint import CheckpointError
    from vla_align.model.config import ConfigError
    from vla_align.train.config import TrainConfig
    from vla_align.train.distributed import DistContext
    from vla_align.train.trainer import Trainer

    dist = None
    try:
        config = TrainConfig.from_file(args.config, _overrides(args))
        if not config.data.paths:
            raise ConfigError('no training data: pass --data DIR (a folder of episode bags)')
        contract = load_contract(config.data.contract)
        if contract.state.source == 'none' and config.model.use_proprio:
            raise ConfigError(f'contract {contract.name!r} records no robot state: train with '
                              f'--set model.use_proprio=false')
        dist = DistContext.from_env(config.device)
        bags = find_bags(config.data.paths)
        read = dict(contract=contract, crop=config.model.image_crop,
                    instruction=config.data.instruction)
        # Rank 0 decodes the bags once; the other ranks open the finished cache.
        if dist.is_main:
            cache = load_bag_cache(bags, config.data.cache_dir, config.model.image_size,
                                   progress=not args.no_progress, **read)
            if cache.report is not None:
                print(cache.report.describe(), file=sys.stderr)
        dist.barrier()
        cache = load_bag_cache(bags, config.data.cache_dir, config.model.image_size,
                               progress=False, **read)
        trainer = Trainer(config, cache, args.out, resume=args.resume,
                          progress=not args.no_progress, dist=dist)
        result = trainer.fit()
    except (ConfigError, ContractError, DatasetError, CheckpointError, ValueError) as exc:
        print(f'vla-align train: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('vla-align train: interrupted (the last saved checkpoint is intact)',
              file=sys.stderr)
        return 130
    finally:
        if dist is not None:
            dist.close()
    if result is not None:
        t = result.report['training']
        print(f'trained {t["steps"]} steps in {t["wall_minutes"]:.1f} min '
              f'({t["train_samples_per_s"]:.0f} samples/s); best checkpoint: '
              f'{result.best_checkpoint}; report: {result.out_dir / "report.md"}')
    return 0
