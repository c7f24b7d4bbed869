"""Policies side by side: success per family from their eval-sim reports, and how they trained.

``vla-align compare`` writes a Markdown page from committed summaries (``summarize`` keeps the
parts of an eval-sim ``report.json`` and a training ``report.json`` that the page shows), so a
page in docs/ is generated from reports, never typed; ``--render`` re-renders a committed
``comparison.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional


def summarize(label: str, eval_report: dict[str, Any],
              train_report: Optional[dict[str, Any]] = None, note: str = '') -> dict[str, Any]:
    """What the comparison page shows of one policy."""
    entry: dict[str, Any] = {'label': label, 'note': note,
                             'checkpoint': eval_report.get('checkpoint'),
                             'policy': eval_report.get('policy'),
                             'splits': eval_report['splits'], 'pooled': eval_report['pooled'],
                             'eval_config': eval_report.get('config', {})}
    if train_report is not None:
        t, d = train_report.get('training', {}), train_report.get('data', {})
        # The trainer's report names two of them differently (wall_minutes, train_samples_per_s).
        t = {'minutes': t.get('wall_minutes'), 'samples_per_s': t.get('train_samples_per_s'),
             **t}
        entry['training'] = {key: t.get(key) for key in (
            'steps', 'minutes', 'stopped_by', 'samples_per_s', 'samples_seen', 'best_step',
            'world_size', 'device') if t.get(key) is not None}
        entry['data'] = {key: d.get(key) for key in (
            'episodes_in_cache', 'train_episodes', 'val_episodes', 'train_frames', 'val_frames',
            'contract', 'bags', 'bags_used', 'frames_read', 'dropped') if key in d}
        entry['alignment_weights'] = {k: train_report.get('config', {}).get('model', {}).get(k)
                                      for k in ('alpha_vl', 'beta_va', 'gamma_la')}
        retrieval = (train_report.get('final_eval', {}).get('alignment', {})
                     .get('retrieval', {}))
        entry['retrieval'] = {pair: {key: scores.get(key) for key in RETRIEVAL_KEYS}
                              for pair, scores in retrieval.items()}
    closed_loop = eval_report.get('alignment') or {}
    if closed_loop:
        entry['closed_loop_alignment'] = {key: closed_loop.get(key) for key in (
            'frames', 'margin', 'true_above_wrong')}
    return entry


#: Held-out retrieval figures the page keeps from a training report, per direction (V->L ...).
RETRIEVAL_KEYS = ('recall_at_1', 'chance_recall_at_1', 'recall_at_5', 'mean_rank')


def alignment_rows(entries: list[dict[str, Any]]) -> list[str]:
    """Rows of the alignment table: held-out recall@1 per direction (chance in brackets), and
    how often the true instruction outscores another one on the frames of closed-loop episodes."""
    rows = []
    directions = sorted({pair for e in entries for pair in e.get('retrieval', {})})
    for pair in directions:
        cells = []
        for e in entries:
            scores = e.get('retrieval', {}).get(pair)
            cells.append('-' if not scores else
                         f"{scores['recall_at_1']:.1%} ({scores['chance_recall_at_1']:.1%})")
        rows.append(f'| held-out {pair} recall@1 (chance) | ' + ' | '.join(cells) + ' |')
    if any('closed_loop_alignment' in e for e in entries):
        rows.append('| closed loop: true instruction above another | ' + ' | '.join(
            '-' if 'closed_loop_alignment' not in e else
            f"{e['closed_loop_alignment']['true_above_wrong']:.1%} of "
            f"{e['closed_loop_alignment']['frames']} frames" for e in entries) + ' |')
        rows.append('| closed loop: V-L margin (true - other) | ' + ' | '.join(
            '-' if 'closed_loop_alignment' not in e else
            f"{e['closed_loop_alignment']['margin']:+.3f}" for e in entries) + ' |')
    return rows


def success_cell(cell: Optional[dict[str, Any]]) -> str:
    """One cell of a success table: rate (successes/episodes) [95 % Wilson interval]."""
    if not cell:
        return '-'
    low, high = cell['ci95']
    return (f"{cell['success_rate']:.0%} ({cell['successes']}/{cell['episodes']}) "
            f"[{low:.0%}, {high:.0%}]")


def render(comparison: dict[str, Any]) -> str:
    entries = comparison['policies']
    lines = [f"# {comparison['title']}", '', comparison.get('intro', ''), '']
    splits = sorted({s for e in entries for s in e['splits']})
    families = sorted({f for e in entries for s in e['splits'].values() for f in s})
    for split in splits:
        lines += [f'## {split}', '', '| family | ' + ' | '.join(e['label'] for e in entries)
                  + ' |', '|---|' + '---|' * len(entries)]
        for family in families:
            lines.append(f'| {family} | ' + ' | '.join(
                success_cell(e['splits'].get(split, {}).get(family)) for e in entries) + ' |')
        lines.append('| **pooled** | ' + ' | '.join(
            success_cell(e['pooled'].get(split)) for e in entries) + ' |')
        lines.append('')
    if any('training' in e for e in entries):
        lines += ['## Training', '', '| | ' + ' | '.join(e['label'] for e in entries) + ' |',
                  '|---|' + '---|' * len(entries)]
        keys = [('data', 'contract'), ('data', 'train_episodes'), ('data', 'train_frames'),
                ('training', 'minutes'), ('training', 'steps'), ('training', 'samples_per_s'),
                ('alignment_weights', 'alpha_vl'), ('alignment_weights', 'beta_va'),
                ('alignment_weights', 'gamma_la')]
        for group, key in keys:
            values = [e.get(group, {}).get(key) for e in entries]
            if all(v is None for v in values):
                continue
            lines.append(f'| {key} | ' + ' | '.join(
                '-' if v is None else (f'{v:.1f}' if isinstance(v, float) else str(v))
                for v in values) + ' |')
        lines.append('')
    alignment = alignment_rows(entries)
    if alignment:
        lines += ['## Alignment', '', '| | ' + ' | '.join(e['label'] for e in entries) + ' |',
                  '|---|' + '---|' * len(entries), *alignment, '']
    notes = [f"- {e['label']}: {e['note']}" for e in entries if e.get('note')]
    lines += notes + ([''] if notes else [])
    lines += [comparison.get('outro', ''), ''] if comparison.get('outro') else []
    return '\n'.join(lines).rstrip() + '\n'


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--policy', nargs='+', action='append', default=[],
                        metavar=('LABEL EVAL_REPORT', 'TRAIN_REPORT'),
                        help='a label, its eval-sim report.json and optionally its training '
                             'report.json (repeat per policy)')
    parser.add_argument('--title', default='Policies compared')
    parser.add_argument('--intro', default='', help='a paragraph under the title')
    parser.add_argument('--outro', default='', help='a paragraph at the end')
    parser.add_argument('--out', type=Path, required=True,
                        help='the Markdown page; comparison.json goes in a folder named like it')
    parser.add_argument('--render', type=Path, default=None, metavar='COMPARISON.json',
                        help='only re-render the page from a committed comparison.json')


def data_path(page: Path) -> Path:
    """Where the page's comparison.json lives: ``docs/ROBOT_PATH.md`` -> ``docs/robot_path/``."""
    return page.parent / page.stem.lower() / 'comparison.json'


def run(args: argparse.Namespace) -> int:
    if args.render is not None:
        comparison = json.loads(args.render.read_text())
    else:
        policies = []
        for item in args.policy:
            if len(item) not in (2, 3):
                print('vla-align compare: --policy LABEL EVAL_REPORT [TRAIN_REPORT]')
                return 2
            train = json.loads(Path(item[2]).read_text()) if len(item) == 3 else None
            policies.append(summarize(item[0], json.loads(Path(item[1]).read_text()), train))
        comparison = {'title': args.title, 'intro': args.intro, 'outro': args.outro,
                      'policies': policies}
        path = data_path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(comparison, indent=2) + '\n')
    args.out.write_text(render(comparison))
    print(f'wrote {args.out}')
    return 0
