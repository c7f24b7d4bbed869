"""Training report: ``report.json`` (everything), ``report.md`` (the tables a person reads) and
``loss_curve.png``."""
from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

PLOT_FILE = 'loss_curve.png'


def write_report(out_dir: Path, *, config: dict[str, Any], data: dict[str, Any],
                 training: dict[str, Any], final_eval: dict[str, Any],
                 history: dict[str, list[dict[str, float]]],
                 checkpoints: dict[str, str]) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot = plot_losses(history, out_dir / PLOT_FILE)
    report = {'kind': 'train',
              'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
              'config': config, 'data': data, 'training': training, 'final_eval': final_eval,
              'checkpoints': checkpoints, 'plots': [plot.name] if plot else [],
              'history': history}
    (out_dir / 'report.json').write_text(json.dumps(report, indent=2, default=str) + '\n')
    (out_dir / 'report.md').write_text(render_markdown(report))
    return report


def plot_losses(history: dict[str, list[dict[str, float]]], path: Path) -> Path | None:
    """Training losses and validation BC loss against step; None when nothing was logged."""
    train, val = history.get('train', []), history.get('val', [])
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ('loss', 'arm', 'gripper', 'align'):
        rows = [r for r in train if key in r]
        if rows:
            ax_train.plot([r['step'] for r in rows], [r[key] for r in rows], label=key)
    ax_train.set(title='training losses', xlabel='step', yscale='log')
    ax_train.legend()
    for key in ('bc', 'arm', 'gripper', 'align'):
        rows = [r for r in val if key in r]
        if rows:
            ax_val.plot([r['step'] for r in rows], [r[key] for r in rows], marker='o',
                        label=key)
    ax_val.set(title='held-out losses', xlabel='step', yscale='log')
    if val:
        ax_val.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _fmt(value: Any, digits: int = 4) -> str:
    return f'{value:.{digits}g}' if isinstance(value, float) else str(value)


def render_markdown(report: dict[str, Any]) -> str:
    t, d, final = report['training'], report['data'], report['final_eval']
    lines = ['# Training report', '',
             f'- steps: {t["steps"]} ({t["samples"]} samples), stopped by {t["stopped_by"]}',
             f'- wall time: {t["wall_minutes"]:.1f} min; training throughput '
             f'{t["train_samples_per_s"]:.1f} samples/s on {t["device"]} '
             f'(world size {t["world_size"]}, threads {t["threads"]})',
             f'- best held-out BC loss {_fmt(t["best_val_bc"])} at step {t["best_step"]}',
             f'- data: {d["train_episodes"]} train / {d["val_episodes"]} held-out episodes '
             f'({d["train_frames"]} / {d["val_frames"]} frames), {d["instructions"]} distinct '
             f'instructions',
             f'- train episodes per family: {d["train_episodes_per_family"]}',
             f'- checkpoints: best `{report["checkpoints"]["best"]}`, last '
             f'`{report["checkpoints"]["last"]}`', '']
    if report['plots']:
        lines += [f'![losses]({report["plots"][0]})', '']
    if final:
        lines += ['## Held-out losses (best checkpoint)', '', '| loss | value |', '|---|---|']
        lines += [f'| {k} | {_fmt(v)} |' for k, v in final['loss'].items()]
        acts = final['actions']
        lines += ['', f'## Action error per dimension ({acts["num_samples"]} held-out frames)',
                  '', '| dim | policy MAE | mean-action baseline MAE |', '|---|---|---|']
        lines += [f'| {k} | {_fmt(v)} | {_fmt(acts["baseline_mae"][k])} |'
                  for k, v in acts['mae'].items()]
        lines += [f'| gripper accuracy | {_fmt(acts["gripper_accuracy"])} | '
                  f'{_fmt(acts["baseline_gripper_accuracy"])} |', '']
        align = final['alignment']
        lines += [f'## Alignment ({align["num_samples"]} held-out frames, '
                  f'{align["num_instructions"]} distinct instructions)', '',
                  'V->L ranks the distinct instructions; L->V ranks all frames (a hit is any '
                  'frame of that instruction); V->A / A->V rank all frames (a hit is any frame '
                  'with the identical action). Chance is computed for those candidate sets.', '',
                  '| direction | R@1 | R@5 | mean rank | chance R@1 | chance R@5 | '
                  'chance mean rank |', '|---|---|---|---|---|---|---|']
        for name, s in align['retrieval'].items():
            lines.append(f'| {name} | {_fmt(s["recall_at_1"])} | {_fmt(s["recall_at_5"])} | '
                         f'{_fmt(s["mean_rank"])} | {_fmt(s["chance_recall_at_1"])} | '
                         f'{_fmt(s["chance_recall_at_5"])} | {_fmt(s["chance_mean_rank"])} |')
        lines += ['', '| modality gap (centroid distance) | value |', '|---|---|']
        lines += [f'| {k} | {_fmt(v)} |' for k, v in align['modality_gap'].items()]
        lines += ['', '| matched-pair cosine | value |', '|---|---|']
        lines += [f'| {k} | {_fmt(v)} |' for k, v in align['matched_cosine'].items()]
    else:
        lines += ['No held-out episodes: no evaluation.']
    return '\n'.join(lines) + '\n'
