"""What a simulation evaluation found, and how it is written: report.json, report.md, plots.

Layout of an evaluation folder (``vla-align eval-sim --out DIR``)::

    DIR/report.json          success per split and family with 95 % Wilson intervals,
                             V-L alignment, policy-step latency, wall time (schema below)
    DIR/report.md            the same as tables, with the figures
    DIR/episodes.jsonl       one line per evaluated episode (seed, instruction, success, steps)
    DIR/success.png          success rate per family and split, with interval error bars
    DIR/filmstrip_<split>.png  first/middle/last frame of one episode per family
    DIR/attention.png        words->image cross-attention of the policy (when it has one)
    DIR/embeddings.png       2-D projection of vision/language/action embeddings (ditto)
    DIR/failures/<split>_<family>_<seed>/   rosbag2 of failed episodes, for replay

``report.json``: ``{"checkpoint", "policy", "suite", "config", "splits": {split: {family:
{"episodes", "successes", "success_rate", "ci95": [lo, hi], "errors", "mean_steps",
"unsafe_actions"}}}, "pooled": {split: {...}}, "alignment" (V-L scores on episode frames;
"embedding_sample": retrieval and modality gaps on expert frames), "latency_ms", "wall_time_s",
"episodes_per_min", "failures", "errors", "figures"}``. A cell whose episodes all crashed has
``episodes: 0`` and null rate and interval.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from vla_align.evaluation.stats import LatencySummary, SuccessRate, pooled, summarize_latency

if TYPE_CHECKING:
    from vla_align.evaluation.embedding_probe import EmbeddingSample

REPORT_JSON = 'report.json'
REPORT_MD = 'report.md'
EPISODES_JSONL = 'episodes.jsonl'
FAILURES_DIR = 'failures'
#: Per-family success targets of the shipped policy (DESIGN.md §6), by split.
TARGETS: dict[str, float] = {'seen': 0.90, 'paraphrase': 0.80, 'composition': 0.70,
                             'shift': 0.80, 'crowded': 0.75}


@dataclass
class EpisodeRecord:
    """One evaluated episode, as a worker reports it."""

    split: str
    family: str
    seed: int
    index: int  # position in the cell's seed list
    instruction: str = ''
    success: bool = False
    steps: int = 0
    unsafe_actions: int = 0
    latencies_ms: list[float] = field(default_factory=list)  # one per policy step
    #: V-L scores on the same frames with the true instruction and with another family's.
    alignment_true: list[float] = field(default_factory=list)
    alignment_wrong: list[float] = field(default_factory=list)
    wrong_instruction: Optional[str] = None
    error: Optional[str] = None  # the exception, when the episode crashed

    def summary(self) -> dict[str, Any]:
        """The ``episodes.jsonl`` line (no per-step arrays)."""
        return {'split': self.split, 'family': self.family, 'seed': self.seed,
                'instruction': self.instruction, 'success': self.success, 'steps': self.steps,
                'unsafe_actions': self.unsafe_actions,
                'mean_step_ms': float(np.mean(self.latencies_ms)) if self.latencies_ms else None,
                'alignment_true': _mean(self.alignment_true),
                'alignment_wrong': _mean(self.alignment_wrong),
                'wrong_instruction': self.wrong_instruction, 'error': self.error}


@dataclass
class Filmstrip:
    """First, middle and last frame of one episode (the last after its final action)."""

    split: str
    family: str
    seed: int
    instruction: str
    success: bool
    frames: np.ndarray  # (3, H, W, 3) uint8
    steps: tuple[int, int, int]  # control step of each frame
    first_state: np.ndarray  # (STATE_DIM,) proprioception at the first frame


@dataclass
class AttentionExample:
    """Where the instruction's words attend in one frame, per the policy's cross-attention."""

    family: str
    instruction: str
    image: np.ndarray  # (H, W, 3) uint8
    heat: np.ndarray  # (h, w) float, sums to 1


@dataclass
class FailureBag:
    """A failed episode run again with recording and written as a rosbag2."""

    split: str
    family: str
    seed: int
    instruction: str
    path: str  # relative to the evaluation folder
    steps: int
    failed_again: bool  # False would mean the policy is not deterministic for this seed
    error: Optional[str] = None  # the replay or the bag write raised; no bag then

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class AlignmentSummary:
    """Mean V-L score with the true instruction vs a wrong one (another family's task), paired
    on the same frames. A grounded policy scores the true instruction higher."""

    frames: int
    true_instruction: Optional[float]
    wrong_instruction: Optional[float]
    margin: Optional[float]  # mean of (true - wrong)
    true_above_wrong: Optional[float]  # fraction of frames where true > wrong

    @classmethod
    def from_records(cls, records: list[EpisodeRecord]) -> AlignmentSummary:
        true = np.array([v for r in records for v in r.alignment_true], np.float64)
        wrong = np.array([v for r in records for v in r.alignment_wrong], np.float64)
        if true.size == 0 or true.size != wrong.size:
            return cls(0, None, None, None, None)
        return cls(frames=int(true.size), true_instruction=float(true.mean()),
                   wrong_instruction=float(wrong.mean()), margin=float((true - wrong).mean()),
                   true_above_wrong=float((true > wrong).mean()))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EvalReport:
    """Everything an evaluation run measured (``to_dict`` is report.json)."""

    policy: str  # what was evaluated, in words
    checkpoint: Optional[str]
    suite: str
    splits: tuple[str, ...]
    families: tuple[str, ...]
    episodes_per_cell: int
    workers: int
    records: list[EpisodeRecord]
    wall_time_s: float
    config: dict[str, Any] = field(default_factory=dict)
    failures: list[FailureBag] = field(default_factory=list)
    filmstrips: list[Filmstrip] = field(default_factory=list)
    attention: list[AttentionExample] = field(default_factory=list)
    embeddings: Optional[EmbeddingSample] = None
    figures: list[str] = field(default_factory=list)  # written files, relative to the folder

    # -- aggregation -----------------------------------------------------------------------
    def cell_records(self, split: str, family: str) -> list[EpisodeRecord]:
        return [r for r in self.records if r.split == split and r.family == family]

    def success_rate(self, split: str, family: str) -> Optional[SuccessRate]:
        """Episodes that ran to the end (crashed ones excluded); None if there were none."""
        finished = [r.success for r in self.cell_records(split, family) if r.error is None]
        return SuccessRate.from_outcomes(finished) if finished else None

    def pooled_rate(self, split: Optional[str] = None) -> Optional[SuccessRate]:
        """All families of ``split`` (or of every split) counted together."""
        return pooled(rate for s in self.splits for f in self.families
                      if split in (None, s) and (rate := self.success_rate(s, f)) is not None)

    def min_success_rate(self, split: Optional[str] = None) -> float:
        """The weakest cell's point estimate (0.0 when a cell has no finished episode)."""
        rates = [self.success_rate(s, f) for s in self.splits for f in self.families
                 if split in (None, s)]
        return min((r.rate if r is not None else 0.0) for r in rates)

    @property
    def errors(self) -> list[str]:
        return ([f'{r.split}/{r.family} seed {r.seed}: {r.error}' for r in self.records
                 if r.error is not None]
                + [f'failure bag {f.path}: {f.error}' for f in self.failures
                   if f.error is not None])

    @property
    def latency(self) -> Optional[LatencySummary]:
        return summarize_latency([v for r in self.records for v in r.latencies_ms])

    def alignment(self, split: Optional[str] = None) -> AlignmentSummary:
        return AlignmentSummary.from_records([r for r in self.records
                                              if split in (None, r.split)])

    # -- serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        episodes = len(self.records)
        latency = self.latency
        alignment = self.alignment().to_dict()
        alignment['per_split'] = {s: self.alignment(s).to_dict() for s in self.splits}
        alignment['embedding_sample'] = (self.embeddings.metrics() if self.embeddings
                                         else None)
        return {
            'checkpoint': self.checkpoint,
            'policy': self.policy,
            'suite': self.suite,
            'config': {'splits': list(self.splits), 'families': list(self.families),
                       'episodes_per_cell': self.episodes_per_cell, 'workers': self.workers,
                       **self.config},
            'splits': {s: {f: self._cell_dict(s, f) for f in self.families}
                       for s in self.splits},
            'pooled': {s: _rate_dict(self.pooled_rate(s)) for s in self.splits}
            | {'all': _rate_dict(self.pooled_rate())},
            'alignment': alignment,
            'latency_ms': latency.to_dict() if latency is not None else None,
            'wall_time_s': round(self.wall_time_s, 3),
            'episodes_per_min': round(60.0 * episodes / max(self.wall_time_s, 1e-9), 2),
            'failures': [f.to_dict() for f in self.failures],
            'errors': self.errors,
            'figures': list(self.figures),
        }

    def _cell_dict(self, split: str, family: str) -> dict[str, Any]:
        records = self.cell_records(split, family)
        finished = [r for r in records if r.error is None]
        cell = _rate_dict(self.success_rate(split, family))
        cell['errors'] = len(records) - len(finished)
        cell['mean_steps'] = _mean([r.steps for r in finished])
        cell['unsafe_actions'] = sum(r.unsafe_actions for r in finished)
        return cell


def _rate_dict(rate: Optional[SuccessRate]) -> dict[str, Any]:
    if rate is None:
        return {'episodes': 0, 'successes': 0, 'success_rate': None, 'ci95': None}
    return rate.to_dict()


def _mean(values: list[float]) -> Optional[float]:
    return float(np.mean(values)) if len(values) else None


# -- text ----------------------------------------------------------------------------------------
def _pct(value: Optional[float]) -> str:
    return '-' if value is None else f'{100.0 * value:.0f} %'


def _cell_text(rate: Optional[SuccessRate], split: str, markdown: bool) -> str:
    if rate is None:
        return 'no episodes'
    low, high = rate.ci95.low, rate.ci95.high
    text = (f'{100 * rate.rate:.0f} % ({rate.successes}/{rate.episodes}) '
            f'[{100 * low:.0f}, {100 * high:.0f}]')
    if markdown and split in TARGETS:
        text += ' ✓' if rate.rate >= TARGETS[split] else ' ✗'
    return text


def success_table(report: EvalReport, markdown: bool = False) -> str:
    """Family x split table: rate (k/n) [95 % Wilson interval], plus a pooled row."""
    header = ['family', *report.splits]
    rows = [[family, *(_cell_text(report.success_rate(s, family), s, markdown)
                       for s in report.splits)] for family in report.families]
    rows.append(['all (pooled)', *(_cell_text(report.pooled_rate(s), s, False)
                                   for s in report.splits)])
    if markdown:
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
        return '\n'.join(lines)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return '\n'.join('  '.join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     for row in [header, *rows])


def format_summary(report: EvalReport) -> str:
    """What the command prints: the table, alignment, latency, wall time, problems."""
    data = report.to_dict()
    lines = [f'policy: {report.policy}', success_table(report), '']
    align = data['alignment']
    if align['frames']:
        lines.append(f'V-L alignment over {align["frames"]} frames: true instruction '
                     f'{align["true_instruction"]:.3f}, wrong instruction '
                     f'{align["wrong_instruction"]:.3f}, true > wrong on '
                     f'{_pct(align["true_above_wrong"])} of frames')
    latency = data['latency_ms']
    if latency:
        lines.append(f'policy step: p50 {latency["p50"]:.2f} ms, p99 {latency["p99"]:.2f} ms '
                     f'over {latency["count"]} steps (in {report.workers} worker(s))')
    lines.append(f'{len(report.records)} episodes in {report.wall_time_s:.1f} s '
                 f'({data["episodes_per_min"]:.1f} episodes/min)')
    if report.failures:
        lines.append(f'{len(report.failures)} failed episodes recorded as bags')
    for error in report.errors[:10]:
        lines.append(f'error: {error}')
    return '\n'.join(lines)


def markdown_report(report: EvalReport) -> str:
    data = report.to_dict()
    lines = ['# Closed-loop evaluation in simulation', '',
             f'- policy: {report.policy}',
             f'- checkpoint: `{report.checkpoint}`' if report.checkpoint else '- checkpoint: none',
             f'- suite: `{report.suite}`',
             f'- {report.episodes_per_cell} seeded eval episodes per family and split, '
             f'{report.workers} worker process(es), {report.wall_time_s:.1f} s wall time', '',
             '## Success rate', '',
             'Each cell: success rate (successes/episodes) [95 % Wilson interval, %]. '
             'Targets (DESIGN.md §6, per family): '
             + ', '.join(f'{s} ≥ {100 * t:.0f} %' for s, t in TARGETS.items())
             + '; ✓/✗ compares the point estimate with the target.', '',
             success_table(report, markdown=True), '']
    if 'success.png' in report.figures:
        lines += ['![success per family and split](success.png)', '']
    lines += ['## Grounding: V-L alignment', '']
    align = data['alignment']
    if align['frames']:
        lines += ['Mean V-L cosine of the policy on episode frames with the true instruction '
                  "and with the instruction of another family's task for the same seed.", '',
                  '| split | frames | true | wrong | margin | true > wrong |',
                  '|---|---|---|---|---|---|']
        for name, row in [*align['per_split'].items(), ('all', align)]:
            if row['frames']:
                lines.append(f'| {name} | {row["frames"]} | {row["true_instruction"]:.3f} | '
                             f'{row["wrong_instruction"]:.3f} | {row["margin"]:+.3f} | '
                             f'{_pct(row["true_above_wrong"])} |')
    else:
        lines.append('This policy exposes no V-L alignment score.')
    lines += ['', '## Policy step latency', '']
    latency = data['latency_ms']
    if latency:
        lines.append(f'p50 {latency["p50"]:.2f} ms, p90 {latency["p90"]:.2f} ms, '
                     f'p99 {latency["p99"]:.2f} ms, max {latency["max"]:.2f} ms over '
                     f'{latency["count"]} steps, measured inside {report.workers} worker '
                     f'process(es) (one torch thread each when run in workers).')
    strips = [name for name in report.figures if name.startswith('filmstrip_')]
    if strips:
        lines += ['', '## Episodes', '']
        lines += [f'![{name}]({name})' for name in strips]
    if 'attention.png' in report.figures:
        lines += ['', '## Cross-attention', '',
                  'Words->image attention of the fusion blocks, averaged over blocks and '
                  'words, on the first frame of an episode.', '', '![attention](attention.png)']
    sample = data['alignment']['embedding_sample']
    if sample:
        lines += ['', '## The shared V-L-A embedding space', '',
                  f'{sample["num_samples"]} (image, instruction, expert action) triples: '
                  'frames of one scripted-expert episode per family and split, embedded by '
                  'the policy. Retrieval among them (chance in brackets):', '',
                  '| direction | R@1 | R@5 | mean rank |', '|---|---|---|---|']
        for name, row in sample['retrieval'].items():
            lines.append(f'| {name} | {row["recall_at_1"]:.3f} ({row["chance_recall_at_1"]:.3f})'
                         f' | {row["recall_at_5"]:.3f} ({row["chance_recall_at_5"]:.3f}) | '
                         f'{row["mean_rank"]:.1f} ({row["chance_mean_rank"]:.1f}) |')
        gaps = ', '.join(f'{k} {v:.3f}' for k, v in sample['modality_gap'].items())
        lines += ['', f'Modality gaps (distance between centroids): {gaps}.']
    if 'embeddings.png' in report.figures:
        lines += ['', '![embeddings](embeddings.png)']
    if report.failures:
        lines += ['', '## Failed episodes recorded for replay', '',
                  '| split | family | seed | instruction | steps | bag |',
                  '|---|---|---|---|---|---|']
        lines += [f'| {f.split} | {f.family} | {f.seed} | {f.instruction} | {f.steps} | '
                  + (f'not written: {f.error} |' if f.error is not None else f'`{f.path}` |'
                     if f.failed_again else f'`{f.path}` (succeeded when run again) |')
                  for f in report.failures]
        lines += ['', 'Inspect one with `vla-align inspect-bag <bag>`.']
    if report.errors:
        lines += ['', '## Errors', ''] + [f'- {e}' for e in report.errors]
    return '\n'.join(lines) + '\n'


# -- files ---------------------------------------------------------------------------------------
def write_report(report: EvalReport, out: Path, plots: bool = True) -> None:
    """Write report.json, report.md, episodes.jsonl and (``plots``) the PNG figures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if plots:
        report.figures = write_figures(report, out)
    _atomic_write(out / EPISODES_JSONL,
                  ''.join(json.dumps(r.summary()) + '\n' for r in report.records))
    _atomic_write(out / REPORT_JSON, json.dumps(report.to_dict(), indent=2) + '\n')
    _atomic_write(out / REPORT_MD, markdown_report(report))


def write_figures(report: EvalReport, out: Path) -> list[str]:
    from vla_align.evaluation import plots

    names = []
    rates = {(s, f): report.success_rate(s, f) for s in report.splits for f in report.families}
    plots.success_chart(rates, report.splits, report.families, out / 'success.png')
    names.append('success.png')
    for split in report.splits:
        strips = [s for s in report.filmstrips if s.split == split]
        if strips:
            name = f'filmstrip_{split}.png'
            plots.filmstrip_figure(strips, out / name, title=f'split: {split}')
            names.append(name)
    if report.attention:
        plots.attention_figure(report.attention, out / 'attention.png')
        names.append('attention.png')
    if report.embeddings is not None and len(report.embeddings):
        plots.embedding_figure(report.embeddings, out / 'embeddings.png')
        names.append('embeddings.png')
    return names


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)
