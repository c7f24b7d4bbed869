"""`vla-align`: one command, one subcommand per thing a user does from a shell.

Each subcommand lives in the module that owns the work; that module exposes
``configure_parser(parser)`` and ``run(args) -> int``. Modules are imported only when their
subcommand runs, so ``vla-align --help`` stays fast and needs neither torch nor rclpy.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional

#: subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    'demo': ('vla_align.sim.demo', 'run one scripted-expert episode in the simulator'),
    'collect': ('vla_align.sim.collect', 'collect scripted-expert demonstrations as rosbag2'),
    'inspect-bag': ('vla_align.data.inspect', 'summarise a rosbag2 episode (topics, counts)'),
    'train': ('vla_align.train.cli', 'train a policy on collected demonstrations'),
    'eval-sim': ('vla_align.evaluation.sim_eval', 'closed-loop success rates in simulation'),
    'eval-grounding': ('vla_align.evaluation.grounding',
                       'calibrate and judge the grounding (V-L) score on held-out scenes'),
    'card': ('vla_align.evaluation.model_card',
             "rewrite a checkpoint's measured model-card block from its committed reports"),
    'compare': ('vla_align.evaluation.comparison',
                'policies side by side from their eval-sim and training reports'),
    'eval-bag': ('vla_align.evaluation.bag_eval',
                 'score a policy against the actions recorded in rosbags'),
    'record': ('vla_align.ros.record', "record the live graph's topics to a rosbag2"),
    'bench': ('vla_align.bench.cli', 'measure policy, ROS 2, training and simulation speed'),
    'up': ('vla_align.ros.launcher', 'start the ROS 2 node graph from a YAML config'),
    'fuzz': ('vla_align.ros.fuzz_campaign',
             'send malformed messages to every subscriber of the nodes; report'),
    'reliability': ('vla_align.ros.reliability',
                    'fuzz across seeds, fault scenarios, image flood and soak; report'),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='vla-align',
        description='Language-conditioned manipulation: simulate, collect, train, evaluate, '
                    'and run the ROS 2 node graph.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    for name, (_module_name, summary) in SUBCOMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ('-h', '--help') or argv[0] not in SUBCOMMANDS:
        if argv and argv[0] not in ('-h', '--help'):
            parser.print_usage(sys.stderr)
            print(f'vla-align: unknown command {argv[0]!r}', file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    name, rest = argv[0], argv[1:]
    # Warnings of the library (e.g. 'recovered unclosed recording ...') reach the user's stderr;
    # a no-op where logging is already configured (by an embedding program, or pytest).
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    module_name, summary = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(prog=f'vla-align {name}', description=summary)
    module.configure_parser(sub_parser)
    # A module that takes free positional words among its options (`up GRAPH --dry-run
    # checkpoint:=PATH`) says so; intermixed parsing does not support every argparse feature.
    if getattr(module, 'INTERMIXED_ARGUMENTS', False):
        args = sub_parser.parse_intermixed_args(rest)
    else:
        args = sub_parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == '__main__':
    sys.exit(main())
