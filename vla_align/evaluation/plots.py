"""Figures of the evaluation reports (PNG, matplotlib without pyplot's global state).

Figures are built on ``matplotlib.figure.Figure`` directly, so plotting never touches the
process-wide pyplot figure registry or needs a display.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
import textwrap
from typing import TYPE_CHECKING, Optional

from matplotlib.figure import Figure
import numpy as np

from vla_align.evaluation.sim_report import AttentionExample, Filmstrip
from vla_align.evaluation.stats import SuccessRate

if TYPE_CHECKING:
    from vla_align.evaluation.embedding_probe import EmbeddingSample


def _save(fig: Figure, path: Path, dpi: int = 110) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)


def success_chart(rates: Mapping[tuple[str, str], Optional[SuccessRate]],
                  splits: Sequence[str], families: Sequence[str], path: Path) -> None:
    """Grouped bars: success rate per family, one bar per split, 95 % Wilson error bars.

    ``rates`` maps (split, family) to the cell's rate (None: no finished episode, no bar).
    """
    bars = len(families) * max(1, len(splits))
    fig = Figure(figsize=(min(12.0, max(5.0, 1.5 + 0.35 * bars)), 3.8), layout='constrained')
    ax = fig.add_subplot()
    x = np.arange(len(families), dtype=float)
    width = 0.8 / max(1, len(splits))
    for i, split in enumerate(splits):
        cells = [rates.get((split, family)) for family in families]
        values = np.array([100.0 * c.rate if c else np.nan for c in cells])
        low = np.array([100.0 * (c.rate - c.ci95.low) if c else 0.0 for c in cells])
        high = np.array([100.0 * (c.ci95.high - c.rate) if c else 0.0 for c in cells])
        offsets = x - 0.4 + width * (i + 0.5)
        ax.bar(offsets, np.nan_to_num(values), width * 0.92, label=split,
               yerr=np.stack([low, high]), capsize=3, error_kw={'elinewidth': 1})
        for offset, cell in zip(offsets, cells, strict=True):
            if cell is not None:
                ax.text(offset, 2.0, f'{cell.successes}/{cell.episodes}', ha='center',
                        va='bottom', fontsize=6, rotation=90, color='black')
    ax.set_xticks(x, list(families))
    ax.set_ylim(0, 105)
    ax.set_ylabel('success rate (%)')
    ax.set_title('success per family and split (95 % Wilson intervals)', fontsize=10)
    ax.grid(axis='y', alpha=0.3)
    fig.legend(fontsize=8, ncols=min(4, max(1, len(splits))), loc='outside lower center')
    _save(fig, path)


def filmstrip_figure(strips: Sequence[Filmstrip], path: Path, title: str = '') -> None:
    """One row per episode: first, middle and last frame, titled with the instruction."""
    rows = len(strips)
    if rows == 0:
        raise ValueError('no episodes to draw')
    fig = Figure(figsize=(7.2, 2.55 * rows + 0.3), layout='constrained')
    axes = fig.subplots(rows, 3, squeeze=False)
    for row, strip in zip(axes, strips, strict=True):
        for ax, frame, step, label in zip(row, strip.frames, strip.steps,
                                          ('first', 'middle', 'last'), strict=True):
            ax.imshow(frame, interpolation='nearest')
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(f'{label} (step {step})', fontsize=7)
        outcome = 'success' if strip.success else 'FAILED'
        row[1].set_title(f'{strip.family}, seed {strip.seed}: "{strip.instruction}" '
                         f'({outcome})', fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


def attention_figure(examples: Sequence[AttentionExample], path: Path) -> None:
    """Each frame with the policy's words->image attention overlaid (bilinear upsampling)."""
    if not examples:
        raise ValueError('no attention maps to draw')
    cols = len(examples)
    fig = Figure(figsize=(2.6 * cols, 3.0), layout='constrained')
    axes = fig.subplots(1, cols, squeeze=False)[0]
    for ax, example in zip(axes, examples, strict=True):
        height, width = example.image.shape[:2]
        ax.imshow(example.image, interpolation='nearest')
        ax.imshow(example.heat, cmap='inferno', alpha=0.55, interpolation='bilinear',
                  extent=(-0.5, width - 0.5, height - 0.5, -0.5))
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(_wrap(f'{example.family}: "{example.instruction}"', 30), fontsize=7)
    fig.suptitle('cross-attention of the instruction over the image', fontsize=9)
    _save(fig, path)


def _wrap(text: str, width: int) -> str:
    return '\n'.join(textwrap.wrap(text, width)) or text


def embedding_figure(sample: EmbeddingSample, path: Path) -> None:
    """The three modalities in one 2-D PCA basis: colour = modality, marker = task family.

    Each frame is joined to its instruction by a faint line, so a well-aligned space shows
    short lines and a modality gap shows as one consistent offset.
    """
    from vla_align.evaluation.embedding_probe import project_2d

    points = project_2d(sample)
    families = list(dict.fromkeys(sample.families))
    markers = dict(zip(families, 'osD^vP*X', strict=False))
    colours = {'vision': 'tab:blue', 'language': 'tab:orange', 'action': 'tab:green'}
    fig = Figure(figsize=(6.4, 5.2), layout='constrained')
    ax = fig.add_subplot()
    for other in ('language',):
        for a, b in zip(points['vision'], points[other], strict=True):
            ax.plot([a[0], b[0]], [a[1], b[1]], color='0.85', lw=0.5, zorder=0)
    family_array = np.array(sample.families)
    for modality, colour in colours.items():
        for family in families:
            rows = family_array == family
            ax.scatter(points[modality][rows, 0], points[modality][rows, 1], s=18, c=colour,
                       marker=markers.get(family, 'o'), alpha=0.8, linewidths=0)
    for modality, colour in colours.items():
        ax.scatter([], [], c=colour, marker='s', label=modality)
    for family in families:
        ax.scatter([], [], c='0.4', marker=markers.get(family, 'o'), label=family)
    ax.set_xlabel('PC 1')
    ax.set_ylabel('PC 2')
    ax.set_title(f'V-L-A embeddings, {len(sample)} expert frames (PCA of all three)',
                 fontsize=10)
    ax.legend(fontsize=7, ncols=2, loc='best')
    _save(fig, path)
