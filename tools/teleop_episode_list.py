"""The teleop graph's parameters for recording exactly the episodes a collection recorded.

The robot-path comparison (README "Bring your own robot") trains one policy on the simulator's
own bags (``vla-align collect``) and one on bags recorded through ROS interfaces only (the
scripted operator driving the stand-in through teleop, recorded by the episode recorder), on
the same episodes: the same (family, seed) tasks. This reads a collection's ``collection.json``
and writes a copy of ``config/teleop_sim_nodes.yaml`` whose ``sim_node.episode_list`` names the
seeds the collection wrote, families interleaved (reach, pick, push, put, stack, reach, ...)::

    python tools/teleop_episode_list.py runs/byor/sim_bags/collection.json runs/byor/teleop.yaml
    vla-align up teleop_sim_graph output_dir:=runs/byor/teleop_bags episodes:=1000 \\
        params_file:=runs/byor/teleop.yaml
"""
from __future__ import annotations

import argparse
from itertools import zip_longest
import json
from pathlib import Path

import yaml

from vla_align.paths import share_path


def episode_list(collection: dict, split: str = 'seen') -> list[str]:
    """``split:family:seed`` entries of every written episode, families interleaved."""
    families = collection['families']
    per_family = [[f'{split}:{name}:{seed}' for seed in sorted(report['written_seeds'])]
                  for name, report in families.items()]
    return [entry for group in zip_longest(*per_family) for entry in group if entry]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('collection', type=Path, help="a collection's collection.json")
    parser.add_argument('out', type=Path, help='the parameters file to write')
    args = parser.parse_args()
    collection = json.loads(args.collection.read_text())
    split = collection.get('config', {}).get('split', 'seen')
    entries = episode_list(collection, split)
    params = yaml.safe_load(share_path('config', 'teleop_sim_nodes.yaml').read_text())
    params['sim_node']['ros__parameters']['episode_list'] = entries
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(yaml.safe_dump(params, sort_keys=False))
    print(f'{len(entries)} episodes -> {args.out}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
