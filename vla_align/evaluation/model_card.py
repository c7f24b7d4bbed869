"""The measured part of a checkpoint's model card, generated from the reports committed with it.

A card's tables are never typed: ``vla-align card CHECKPOINT`` reads ``CHECKPOINT/eval/sim/
report.json`` (``vla-align eval-sim``) and ``CHECKPOINT/eval/grounding/report.json``
(``vla-align eval-grounding``) and rewrites the text between the markers
``<!-- measured:begin -->`` and ``<!-- measured:end -->`` of ``CHECKPOINT/MODEL_CARD.md``; the rest
of the card (what the policy is, how it was trained, what limits it) is prose.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

from vla_align.evaluation.comparison import success_cell
from vla_align.evaluation.sim_report import TARGETS

BEGIN, END = '<!-- measured:begin -->', '<!-- measured:end -->'
SIM_REPORT = Path('eval') / 'sim' / 'report.json'
GROUNDING_REPORT = Path('eval') / 'grounding' / 'report.json'


def render_measured(sim: dict[str, Any], grounding: Optional[dict[str, Any]]) -> str:
    splits = list(sim['splits'])
    families = list(next(iter(sim['splits'].values())))
    cfg = sim.get('config', {})
    lines = [f"Closed loop (`vla-align eval-sim`, `eval/sim/report.md`): "
             f"{cfg.get('episodes_per_cell', '?')} seeded evaluation episodes per cell, "
             f"{sum(v['episodes'] for k, v in sim['pooled'].items() if k != 'all')} episodes in "
             f"{sim.get('wall_time_s', 0):.0f} s with {cfg.get('workers', '?')} worker "
             f"processes; success with 95 % Wilson intervals."
             + (f" Evaluated: {sim['policy']}." if sim.get('policy') else ''), '',
             '| family | ' + ' | '.join(splits) + ' |', '|---|' + '---|' * len(splits)]
    for family in families:
        lines.append(f'| {family} | ' + ' | '.join(success_cell(sim['splits'][s].get(family))
                                                   for s in splits) + ' |')
    lines.append('| **pooled** | ' + ' | '.join(success_cell(sim['pooled'].get(s)) for s in splits)
                 + ' |')
    met = [f'{family} on {split}' for split in splits for family in families
           if split in TARGETS and sim['splits'][split].get(family, {}).get(
               'success_rate', 0) >= TARGETS[split]]
    total = sum(1 for split in splits if split in TARGETS for _ in families)
    lines += ['', 'Targets (DESIGN.md §6, per family: '
              + ', '.join(f'{s} ≥ {t:.0%}' for s, t in TARGETS.items() if s in splits)
              + f'): met in {len(met)} of {total} cells'
              + (f" ({', '.join(met)})." if met else '.')]
    latency = sim.get('latency_ms') or {}
    if latency:
        lines += ['', f"Policy step in the evaluation workers: p50 {latency.get('p50', 0):.2f} "
                  f"ms, p99 {latency.get('p99', 0):.2f} ms."]
    alignment = sim.get('alignment') or {}
    if alignment.get('true_instruction') is not None:
        lines += [f"V-L alignment over {alignment['frames']} evaluation frames: true "
                  f"instruction {alignment['true_instruction']:.3f}, another instruction "
                  f"{alignment['wrong_instruction']:.3f}; the true one scores higher on "
                  f"{alignment['true_above_wrong']:.0%} of frames."]
    if grounding is not None:
        t = grounding['test']
        lines += ['', f"Grounding score (`vla-align eval-grounding`, `eval/grounding/report.md`): "
                  f"threshold {grounding['threshold']:.3f} calibrated on validation scenes; on "
                  f"evaluation scenes **AUC {t['all']['auc']:.3f}** against the project's "
                  f"ungrounded requests (target ≥ 0.97), {t['all']['true_flagged']:.1%} of "
                  f"true instructions flagged (target ≤ 2 %), "
                  f"{t['all']['ungrounded_passed']:.1%} of ungrounded requests passing"
                  + _check_aucs(t['all'])
                  + '. Per split: ' + ', '.join(f"{s} {v['auc']:.2f}" for s, v in t.items()
                                             if s != 'all') + '. Targets '
                  + ('met.' if grounding['meets_targets'] else
                     'not met: `refuse_ungrounded` stays off.')]
    return '\n'.join(lines)


def update_card(checkpoint: Path) -> str:
    """Rewrite the measured block of ``checkpoint``'s card; returns the new card text."""
    card_path = checkpoint / 'MODEL_CARD.md'
    card = card_path.read_text()
    if BEGIN not in card or END not in card:
        raise ValueError(f'{card_path} has no {BEGIN} ... {END} block to fill')
    sim = json.loads((checkpoint / SIM_REPORT).read_text())
    grounding_path = checkpoint / GROUNDING_REPORT
    grounding = json.loads(grounding_path.read_text()) if grounding_path.is_file() else None
    head, rest = card.split(BEGIN, 1)
    _old, tail = rest.split(END, 1)
    text = f'{head}{BEGIN}\n{render_measured(sim, grounding)}\n{END}{tail}'
    card_path.write_text(text)
    return text


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('checkpoint', type=Path, help='a checkpoint folder with its eval/ reports')


def run(args: argparse.Namespace) -> int:
    try:
        update_card(args.checkpoint)
    except (OSError, ValueError, KeyError) as exc:
        print(f'vla-align card: {exc}')
        return 2
    print(f"updated {args.checkpoint / 'MODEL_CARD.md'}")
    return 0


def _check_aucs(pooled: dict) -> str:
    """' (each check alone: V-L AUC 0.692, ...)' for the checks the report has."""
    names = (('auc_vl', 'V-L'), ('auc_familiarity', 'familiarity'),
             ('auc_contrast', 'colour contrast'))
    parts = [f'{label} AUC {pooled[key]:.3f}' for key, label in names
             if pooled.get(key) is not None]
    return f" (each check alone: {', '.join(parts)})" if parts else ''
