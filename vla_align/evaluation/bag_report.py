"""What scoring a policy on rosbags found, and how it is written: report.json, report.md, plots.

Layout of ``vla-align eval-bag --out DIR``::

    DIR/report.json              schema below
    DIR/report.md                the same as tables, with the figures
    DIR/plots/<bag>_<k>.png      predicted vs recorded action over time, one panel per dimension

``report.json``: ``{"source", "config", "bags", "frames", "overall": ERRORS, "episodes":
[{"bag", "segment", "instruction", "frames", "start_s", "errors": ERRORS, "plot"}],
"latency_ms": {"count", "mean", "p50", "p90", "p99", "max"} | null, "throughput": {"frames",
"inference_s", "frames_per_s", "wall_time_s"}, "skipped": {bag: {reason: count}}, "failures":
[{"bag", "error"}]}`` with ERRORS = ``{"frames", "mae": {dim: value}, "position_error_m",
"rotation_error_rad", "gripper_accuracy", "direction_cosine", "direction_frames"}``.

An "episode" is a run of consecutive scored frames of one bag under one instruction (a bag
written by ``vla-align collect`` is exactly one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import json
import os
from pathlib import Path
from typing import Any, Optional

from matplotlib.figure import Figure
import numpy as np

from vla_align.actions import GRIPPER, ROTATION, TRANSLATION
from vla_align.evaluation.stats import LatencySummary

REPORT_JSON = 'report.json'
REPORT_MD = 'report.md'
PLOTS_DIR = 'plots'
DIMENSIONS = ('dx', 'dy', 'dz', 'droll', 'dpitch', 'dyaw', 'gripper')
#: Translations shorter than this (m) have no meaningful direction: left out of the cosine.
MIN_MOTION_M = 1e-3


@dataclass(frozen=True)
class ActionErrors:
    """How far predicted actions are from recorded ones, over ``frames`` frames."""

    frames: int
    mae: dict[str, float]  # mean absolute error per dimension (m, rad; gripper 0..1)
    position_error_m: float  # mean Euclidean distance of the translation deltas
    rotation_error_rad: float  # mean Euclidean distance of the (roll, pitch, yaw) deltas
    gripper_accuracy: float  # fraction of frames with the same open/closed command
    direction_cosine: Optional[float]  # mean cosine of translation deltas that both move
    direction_frames: int  # frames in that mean

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def score_actions(predicted: np.ndarray, recorded: np.ndarray,
                  min_motion_m: float = MIN_MOTION_M) -> ActionErrors:
    """Errors of (N, 7) ``predicted`` against (N, 7) ``recorded`` actions (N >= 1)."""
    pred = np.asarray(predicted, dtype=np.float64)
    rec = np.asarray(recorded, dtype=np.float64)
    if pred.shape != rec.shape or pred.ndim != 2 or pred.shape[1] != len(DIMENSIONS) \
            or len(pred) == 0:
        raise ValueError(f'need two (N >= 1, 7) action arrays, got {pred.shape} and {rec.shape}')
    diff = pred - rec
    mae = np.abs(diff).mean(axis=0)
    pred_t, rec_t = pred[:, TRANSLATION], rec[:, TRANSLATION]
    norms = np.linalg.norm(pred_t, axis=1) * np.linalg.norm(rec_t, axis=1)
    moving = (np.linalg.norm(pred_t, axis=1) >= min_motion_m) & \
        (np.linalg.norm(rec_t, axis=1) >= min_motion_m)
    cosine = (pred_t * rec_t).sum(axis=1)[moving] / norms[moving]
    return ActionErrors(
        frames=len(pred),
        mae={name: float(value) for name, value in zip(DIMENSIONS, mae, strict=True)},
        position_error_m=float(np.linalg.norm(diff[:, TRANSLATION], axis=1).mean()),
        rotation_error_rad=float(np.linalg.norm(diff[:, ROTATION], axis=1).mean()),
        gripper_accuracy=float(((pred[:, GRIPPER] >= 0.5) == (rec[:, GRIPPER] >= 0.5)).mean()),
        direction_cosine=float(cosine.mean()) if cosine.size else None,
        direction_frames=int(cosine.size))


@dataclass
class EpisodeScore:
    """One scored segment: consecutive frames of one bag under one instruction."""

    bag: str
    segment: int
    instruction: str
    times_s: np.ndarray  # (n,) seconds since the bag's first frame
    predicted: np.ndarray  # (n, 7)
    recorded: np.ndarray  # (n, 7)
    errors: ActionErrors
    plot: Optional[str] = None  # relative to the report folder

    def to_dict(self) -> dict[str, Any]:
        return {'bag': self.bag, 'segment': self.segment, 'instruction': self.instruction,
                'frames': self.errors.frames, 'start_s': float(self.times_s[0]),
                'errors': self.errors.to_dict(), 'plot': self.plot}


@dataclass
class BagEvalReport:
    """Everything ``eval-bag`` measured; ``to_dict`` is report.json."""

    source: str  # what produced the predictions, in words
    config: dict[str, Any]
    episodes: list[EpisodeScore]
    latency: Optional[LatencySummary]
    inference_s: float  # time spent computing predictions (0 for recorded ones)
    wall_time_s: float
    bags: int
    skipped: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def frames(self) -> int:
        return sum(e.errors.frames for e in self.episodes)

    def overall(self) -> Optional[ActionErrors]:
        """Errors pooled over every scored frame (not a mean of episode means)."""
        if not self.episodes:
            return None
        return score_actions(np.concatenate([e.predicted for e in self.episodes]),
                             np.concatenate([e.recorded for e in self.episodes]))

    def to_dict(self) -> dict[str, Any]:
        overall = self.overall()
        return {
            'source': self.source, 'config': self.config, 'bags': self.bags,
            'frames': self.frames, 'overall': overall.to_dict() if overall else None,
            'episodes': [e.to_dict() for e in self.episodes],
            'latency_ms': self.latency.to_dict() if self.latency else None,
            'throughput': {'frames': self.frames, 'inference_s': self.inference_s,
                           'frames_per_s': (self.frames / self.inference_s
                                            if self.inference_s > 0 else None),
                           'wall_time_s': self.wall_time_s},
            'skipped': self.skipped, 'failures': self.failures,
        }


# -- writing --------------------------------------------------------------------------------------
def write_bag_report(report: BagEvalReport, out: Path, max_plots: int = 20) -> None:
    """report.json, report.md and up to ``max_plots`` per-episode figures under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for index, episode in enumerate(report.episodes):
        if index >= max_plots:
            break
        name = f'{PLOTS_DIR}/{_safe(episode.bag)}_{episode.segment}.png'
        action_plot(episode, out / name)
        episode.plot = name
    _atomic_write(out / REPORT_JSON, json.dumps(report.to_dict(), indent=2, sort_keys=True))
    _atomic_write(out / REPORT_MD, format_markdown(report))


def action_plot(episode: EpisodeScore, path: Path) -> None:
    """Seven stacked panels: predicted vs recorded value of each action dimension over time."""
    fig = Figure(figsize=(7.0, 9.0), layout='constrained')
    axes = fig.subplots(len(DIMENSIONS), 1, sharex=True)
    for dim, (ax, name) in enumerate(zip(axes, DIMENSIONS, strict=True)):
        ax.plot(episode.times_s, episode.recorded[:, dim], '-o', ms=2.5, lw=1.2,
                label='recorded')
        ax.plot(episode.times_s, episode.predicted[:, dim], '-x', ms=3, lw=1.0,
                label='policy')
        ax.set_ylabel(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel('time since first frame of the bag (s)', fontsize=8)
    axes[0].legend(fontsize=7, ncols=2, loc='upper right')
    fig.suptitle(f'{episode.bag} #{episode.segment}: "{episode.instruction}"', fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def _fmt(value: Optional[float], digits: int = 4) -> str:
    return '-' if value is None else f'{value:.{digits}g}'


def _errors_row(errors: ActionErrors) -> list[str]:
    return [str(errors.frames), _fmt(errors.position_error_m * 1000, 3),
            _fmt(errors.rotation_error_rad, 3), _fmt(100 * errors.gripper_accuracy, 3),
            _fmt(errors.direction_cosine, 3)]


def format_summary(report: BagEvalReport) -> str:
    """A few plain lines for the terminal."""
    overall = report.overall()
    lines = [f'scored {report.frames} frames in {len(report.episodes)} episodes of '
             f'{report.bags} bags ({report.source})']
    if overall is not None:
        lines.append(f'  position error {overall.position_error_m * 1000:.2f} mm/step, '
                     f'rotation error {overall.rotation_error_rad:.4f} rad/step, gripper '
                     f'accuracy {100 * overall.gripper_accuracy:.1f} %, direction cosine '
                     f'{_fmt(overall.direction_cosine, 3)} ({overall.direction_frames} frames)')
    if report.latency is not None:
        lines.append(f'  policy latency p50 {report.latency.p50:.2f} ms, p99 '
                     f'{report.latency.p99:.2f} ms ({report.latency.count} steps)')
    if report.inference_s > 0:
        lines.append(f'  {report.frames / report.inference_s:.1f} frames/s batched; wall time '
                     f'{report.wall_time_s:.1f} s')
    for failure in report.failures:
        lines.append(f'  NOT SCORED {failure["bag"]}: {failure["error"]}')
    return '\n'.join(lines)


def format_markdown(report: BagEvalReport) -> str:
    overall = report.overall()
    head = ['frames', 'position error (mm)', 'rotation error (rad)', 'gripper acc. (%)',
            'direction cos']
    lines = ['# Rosbag replay evaluation', '', f'Predictions: {report.source}.', '',
             f'{report.frames} frames scored in {len(report.episodes)} episodes of '
             f'{report.bags} bags; wall time {report.wall_time_s:.1f} s.', '']
    if overall is not None:
        lines += ['## Overall (pooled over frames)', '', _table(head, [_errors_row(overall)]),
                  '', 'Mean absolute error per dimension:', '',
                  _table(list(DIMENSIONS), [[_fmt(overall.mae[d]) for d in DIMENSIONS]]), '']
    if report.latency is not None:
        lat = report.latency
        lines += ['## Policy latency', '',
                  _table(['steps', 'mean (ms)', 'p50 (ms)', 'p99 (ms)', 'max (ms)'],
                         [[str(lat.count), _fmt(lat.mean), _fmt(lat.p50), _fmt(lat.p99),
                           _fmt(lat.max)]]), '']
    if report.inference_s > 0:
        lines += [f'Batched inference: {report.frames} frames in {report.inference_s:.2f} s '
                  f'({report.frames / report.inference_s:.1f} frames/s).', '']
    lines += ['## Episodes', '',
              _table(['bag', '#', 'instruction'] + head,
                     [[e.bag, str(e.segment), e.instruction] + _errors_row(e.errors)
                      for e in report.episodes]), '']
    if report.failures:
        lines += ['## Bags not scored', '']
        lines += [f'- `{f["bag"]}`: {f["error"]}' for f in report.failures] + ['']
    skipped = {bag: counts for bag, counts in report.skipped.items() if counts}
    if skipped:
        lines += ['## Messages and frames left out', '']
        lines += [f'- `{bag}`: ' + ', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))
                  for bag, counts in skipped.items()] + ['']
    plots = [e for e in report.episodes if e.plot]
    if plots:
        lines += ['## Predicted vs recorded actions', '']
        lines += [f'![{e.bag} #{e.segment}]({e.plot})' for e in plots] + ['']
    return '\n'.join(lines)


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    lines += ['| ' + ' | '.join(cell.replace('|', '/') for cell in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _safe(name: str) -> str:
    return ''.join(c if c.isalnum() or c in '-_.' else '_' for c in name) or 'bag'


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text)
    os.replace(tmp, path)
