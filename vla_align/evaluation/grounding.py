"""Can the V-L score be trusted to say whether an instruction is grounded in the scene?

For each held-out scene (the first camera frame of a seeded task, every split, crowded tables
included) the policy scores its true instruction and a set of **ungrounded requests** the
project builds itself (``ungrounded_requests``):

* ``absent_object`` -- an instruction of the suite's own templates and words about objects whose
  colour and shape are not on the table ("put the pink block in the green bowl");
* ``impossible`` -- requests no arm on a table can carry out ("fly to the kitchen");
* ``non_manipulation`` -- questions and chat ("what time is it");
* ``nonsense`` -- random syllables.

**The score** (`vla_align.evaluation.grounding_score`) joins three checks: the V-L cosine of
the frame with the request, the request's *familiarity* (is it a task of the kind the policy
learnt?) and its *colour contrast* (does it match the frame better than the same request with
its colours swapped?). Each extra check is mapped onto V-L units on the calibration scenes and
the smallest is the score, so a request is flagged when any check fails. Checkpoints that list
no training instructions are judged without familiarity.

**Calibration**: the threshold is the 2nd percentile of the true instructions' scores on
*calibration* scenes (the validation seeds of each split); it is then judged on disjoint
*test* scenes (the evaluation seeds): the share of true instructions flagged (target <= 2 %),
the share of ungrounded requests that pass, and the AUC of true against ungrounded (target >=
0.97), per split. ``vla-align eval-grounding --write-checkpoint`` stores the threshold and
whether the targets were met in the checkpoint (``grounding.json``): the policy node uses that
threshold by default, and refuses ungrounded instructions only where it met them.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from vla_align.evaluation.grounding_score import (
    FLAG_TARGET,
    MAPPED_CHECKS,
    apply_calibration,
    check_block,
    colour_contrast,
    contrast_direction,
)

GROUNDING_FILE = 'grounding.json'
AUC_TARGET = 0.97
IMPOSSIBLE = ('fly to the kitchen', 'make me a cup of coffee', 'open the fridge door',
              'drive the car to the station', 'fold the laundry', 'water the plants',
              'lift the table over your head', 'climb onto the shelf')
NON_MANIPULATION = ('what time is it', 'tell me a joke', 'how is the weather today',
                    'who won the game last night', 'good morning', 'thank you very much',
                    'what is your name', 'play some music')
SYLLABLES = ('blo', 'rp', 'zin', 'dle', 'fra', 'mox', 'quu', 'tev', 'snar', 'gli', 'wum', 'pex')
SPLITS = ('seen', 'paraphrase', 'shift', 'crowded')
KINDS = ('absent_object', 'impossible', 'non_manipulation', 'nonsense')


@dataclass(frozen=True)
class Scene:
    split: str
    seed: int
    family: str
    instruction: str
    image: np.ndarray
    state: np.ndarray
    ungrounded: dict[str, list[str]]


def _colour_of(name: str) -> str:
    return name.split()[0]


def absent_object_requests(suite: Any, family: str, split: str, scene_objects: set[str],
                           rng: np.random.Generator, count: int) -> list[str]:
    """``count`` instructions of the suite's templates whose objects are not in the scene."""
    present_colours = {_colour_of(name) for name in scene_objects}
    found: list[str] = []
    for _ in range(200):
        task = suite.sample_task(family, split, int(rng.integers(0, 2 ** 31)))
        named = [task.target] + ([task.destination] if task.destination else [])
        if any(_colour_of(n) in present_colours or n in scene_objects for n in named):
            continue
        if task.instruction not in found:
            found.append(task.instruction)
        if len(found) == count:
            break
    return found


def ungrounded_requests(suite: Any, family: str, split: str, scene_objects: set[str],
                        rng: np.random.Generator, per_kind: int = 2) -> dict[str, list[str]]:
    """The project's ungrounded set for one scene (module docstring), ``per_kind`` each."""
    nonsense = [' '.join(''.join(rng.choice(SYLLABLES, size=int(rng.integers(2, 4))))
                         for _ in range(int(rng.integers(2, 5)))) for _ in range(per_kind)]
    return {'absent_object': absent_object_requests(suite, family, split, scene_objects, rng,
                                                    per_kind),
            'impossible': list(rng.choice(IMPOSSIBLE, size=per_kind, replace=False)),
            'non_manipulation': list(rng.choice(NON_MANIPULATION, size=per_kind,
                                                replace=False)),
            'nonsense': nonsense}


def build_scenes(split: str, purpose: str, count: int, seed: int = 0) -> list[Scene]:
    """``count`` scenes of ``split`` from its ``purpose`` seeds, families in turn."""
    from vla_align.sim.env import EnvConfig, ManipulationEnv
    from vla_align.sim.suite import load_suite
    from vla_align.sim.types import TASK_FAMILIES

    suite = load_suite()
    env = ManipulationEnv(EnvConfig())
    rng = np.random.default_rng([seed, len(split), count])
    scenes = []
    try:
        for index, task_seed in enumerate(suite.seeds(split, purpose, count)):
            family = TASK_FAMILIES[index % len(TASK_FAMILIES)]
            task = suite.sample_task(family, split, task_seed)
            obs = env.reset(task_seed, task)
            scenes.append(Scene(split, task_seed, family, task.instruction, obs.image,
                                obs.state(), ungrounded_requests(
                                    suite, family, split, set(env.object_names), rng)))
    finally:
        env.close()
    return scenes


def suite_colours() -> dict[str, list[str]]:
    """The default suite's colour phrases (canonical first), the table colour contrast swaps."""
    from vla_align.sim.suite import load_suite

    return {colour: list(phrases) for colour, phrases in load_suite().vocabulary.colours.items()}


def score_scenes(policy: Any, scenes: list[Scene],
                 colours: Optional[dict[str, list[str]]] = None) -> list[dict[str, Any]]:
    """The V-L score (``vl``), familiarity and colour contrast of each scene's true instruction
    and of its ungrounded requests; ``score`` is filled in by `apply_calibration`."""
    rows = []
    for scene in scenes:
        texts = [scene.instruction] + [t for kind in KINDS for t in scene.ungrounded[kind]]
        kinds = ['true'] + [kind for kind in KINDS for _ in scene.ungrounded[kind]]
        steps = policy.step_batch(np.repeat(scene.image[None], len(texts), 0), texts,
                                  np.repeat(scene.state[None], len(texts), 0))
        for kind, text, step in zip(kinds, texts, steps, strict=True):
            rows.append({'split': scene.split, 'seed': scene.seed, 'family': scene.family,
                         'kind': kind, 'text': text, 'vl': float(step.alignment),
                         'familiarity': policy.instruction_familiarity(text),
                         'contrast': colour_contrast(step.vision_embedding, contrast_direction(
                             policy, text, colours))})
    return rows


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a true instruction scores above an ungrounded one), ties counted half."""
    if len(positive) == 0 or len(negative) == 0:
        return float('nan')
    p = np.asarray(positive)[:, None]
    n = np.asarray(negative)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


def calibrate(rows: list[dict[str, Any]], quantile: float = FLAG_TARGET) -> float:
    """The score below which ``quantile`` of the true instructions fall."""
    true = np.array([r['score'] for r in rows if r['kind'] == 'true'])
    return float(np.quantile(true, quantile))


def check_auc(rows: list[dict[str, Any]], key: str) -> Optional[float]:
    """The AUC of one check alone (``vl``, ``familiarity`` or ``contrast``) over the rows that
    have it; None where no true instruction or no ungrounded request has it."""
    rows = [r for r in rows if r.get(key) is not None]
    if not any(r['kind'] == 'true' for r in rows) or all(r['kind'] == 'true' for r in rows):
        return None
    return auc(np.array([r[key] for r in rows if r['kind'] == 'true']),
               np.array([r[key] for r in rows if r['kind'] != 'true']))


def judge(rows: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Per split (and pooled): AUC, true instructions flagged, ungrounded passed per kind;
    also the AUC of each check alone (``auc_vl``, ``auc_familiarity``, ``auc_contrast``)."""
    out: dict[str, Any] = {}
    for split in [*sorted({r['split'] for r in rows}), 'all']:
        part = [r for r in rows if split == 'all' or r['split'] == split]
        true = np.array([r['score'] for r in part if r['kind'] == 'true'])
        bad = np.array([r['score'] for r in part if r['kind'] != 'true'])
        out[split] = {
            'true_instructions': len(true), 'ungrounded_requests': len(bad),
            'auc': auc(true, bad), 'auc_vl': check_auc(part, 'vl'),
            'auc_familiarity': check_auc(part, 'familiarity'),
            'auc_contrast': check_auc(part, 'contrast'),
            'true_flagged': float(np.mean(true < threshold)) if len(true) else float('nan'),
            'ungrounded_passed': float(np.mean(bad >= threshold)) if len(bad) else float('nan'),
            'true_mean': float(true.mean()) if len(true) else float('nan'),
            'per_kind': {kind: {'auc': auc(true, scores),
                                'passed': float(np.mean(scores >= threshold)),
                                'mean': float(scores.mean())}
                         for kind in KINDS
                         if len(scores := np.array([r['score'] for r in part
                                                    if r['kind'] == kind]))}}
    return out


def evaluate_grounding(policy: Any, scenes_per_split: int = 100,
                       splits: tuple[str, ...] = SPLITS, progress: bool = True
                       ) -> dict[str, Any]:
    """Calibrate on validation scenes, judge on evaluation scenes (module docstring)."""
    from tqdm import tqdm

    calibration, test = [], []
    colours = suite_colours()
    for split in tqdm(splits, desc='grounding', unit='split', disable=not progress):
        calibration += score_scenes(policy, build_scenes(split, 'val', scenes_per_split),
                                    colours)
        test += score_scenes(policy, build_scenes(split, 'eval', scenes_per_split), colours)
    blocks = {'familiarity': check_block(calibration, 'familiarity'),
              'contrast': check_block(calibration, 'contrast')}
    apply_calibration(calibration, blocks)
    apply_calibration(test, blocks)
    threshold = calibrate(calibration)
    result = judge(test, threshold)
    pooled = result['all']
    meets = bool(pooled['true_flagged'] <= FLAG_TARGET
                 and all(v['auc'] >= AUC_TARGET for k, v in result.items()))
    return {'threshold': threshold, **blocks, 'colours': colours, 'meets_targets': meets,
            'targets': {'true_flagged_max': FLAG_TARGET, 'auc_min': AUC_TARGET},
            'calibration': {'scenes_per_split': scenes_per_split, 'splits': list(splits),
                            'purpose': 'val', 'quantile': FLAG_TARGET},
            'test': result, 'rows': test, 'calibration_rows': calibration}


def checkpoint_grounding(checkpoint: str | Path) -> Optional[dict[str, Any]]:
    """The checkpoint's calibration (``grounding.json``), None when it has none."""
    path = Path(checkpoint) / GROUNDING_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if not isinstance(data.get('threshold'), (int, float)):
        raise ValueError(f'{path}: no numeric threshold')
    return data


# -- report -------------------------------------------------------------------------------------
def write_report(result: dict[str, Any], out: Path, checkpoint: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    kept = {k: v for k, v in result.items() if k != 'calibration_rows'}  # the threshold is kept
    (out / 'report.json').write_text(json.dumps({**kept, 'checkpoint': checkpoint},
                                                indent=2) + '\n')
    plot_scores(result, out / 'scores.png')
    lines = [f'# Grounding score: {checkpoint}', '',
             f"Threshold {result['threshold']:.4f} (2nd percentile of true instructions on "
             f"{result['calibration']['scenes_per_split']} validation scenes per split); judged "
             f"on as many evaluation scenes per split. Targets: at most "
             f"{FLAG_TARGET:.0%} of true instructions flagged, AUC >= {AUC_TARGET}. "
             f"**{'Met' if result['meets_targets'] else 'Not met'}.**", '',
             'The score is the smallest of the V-L score and the mapped checks '
             f"({', '.join(k for k in MAPPED_CHECKS if result.get(k)) or 'none'}); each "
             "check's own AUC is shown beside it (colour contrast over the requests that name a "
             'colour).', '', '| split | AUC | AUC V-L alone | AUC familiarity alone | '
             'AUC contrast alone | true flagged | ungrounded passed | '
             + ' | '.join(f'AUC {k}' for k in KINDS) + ' |',
             '|---|---|---|---|---|---|---|' + '---|' * len(KINDS)]

    def number(value: Optional[float]) -> str:
        return '-' if value is None else f'{value:.3f}'

    for split, v in result['test'].items():
        kinds = ' | '.join(f"{v['per_kind'][k]['auc']:.3f}" if k in v['per_kind'] else '-'
                           for k in KINDS)
        lines.append(f"| {split} | {v['auc']:.3f} | {number(v.get('auc_vl'))} | "
                     f"{number(v.get('auc_familiarity'))} | {number(v.get('auc_contrast'))} | "
                     f"{v['true_flagged']:.1%} | "
                     f"{v['ungrounded_passed']:.1%} | {kinds} |")
    lines += ['', '![scores](scores.png)', '']
    (out / 'report.md').write_text('\n'.join(lines))


def plot_scores(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    rows = result['rows']
    splits = [s for s in result['test'] if s != 'all']
    fig, axes = plt.subplots(1, len(splits), figsize=(3.2 * len(splits), 3), sharey=True)
    axes = np.atleast_1d(axes)
    bins = np.linspace(min(-1.0, *(r['score'] for r in rows)), 1, 41)
    for ax, split in zip(axes, splits, strict=True):
        for kind, colour in (('true', 'tab:green'), ('absent_object', 'tab:red'),
                             ('impossible', 'tab:orange'), ('non_manipulation', 'tab:purple'),
                             ('nonsense', 'tab:grey')):
            scores = [r['score'] for r in rows if r['split'] == split and r['kind'] == kind]
            ax.hist(scores, bins=bins, histtype='step', color=colour, label=kind, density=True)
        ax.axvline(result['threshold'], color='black', linestyle='--', linewidth=0.8)
        ax.set_title(f"{split} (AUC {result['test'][split]['auc']:.2f})", fontsize=9)
        ax.set_xlabel('grounding score (V-L units)')
    axes[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- CLI ------------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--checkpoint', default='checkpoints/default')
    parser.add_argument('--scenes', type=int, default=100,
                        help='calibration and test scenes per split (default 100)')
    parser.add_argument('--splits', nargs='+', default=list(SPLITS), choices=list(SPLITS))
    parser.add_argument('--out', type=Path, default=Path('runs/grounding'))
    parser.add_argument('--write-checkpoint', action='store_true',
                        help='store the threshold and verdict in the checkpoint '
                             f'({GROUNDING_FILE}) for the policy node')


def run(args: argparse.Namespace) -> int:
    import torch

    from vla_align.model.policy import Policy
    from vla_align.ros.sources import resolve_checkpoint_path

    torch.set_num_threads(1)
    checkpoint = resolve_checkpoint_path(args.checkpoint)
    policy = Policy.from_checkpoint(checkpoint, device='cpu')
    result = evaluate_grounding(policy, args.scenes, tuple(args.splits))
    write_report(result, args.out, str(args.checkpoint))
    pooled = result['test']['all']
    print(f"threshold {result['threshold']:.4f}: AUC {pooled['auc']:.3f}, true flagged "
          f"{pooled['true_flagged']:.1%}, ungrounded passed {pooled['ungrounded_passed']:.1%}; "
          f"targets {'met' if result['meets_targets'] else 'NOT met'}; report "
          f"{args.out / 'report.md'}")
    if args.write_checkpoint:
        summary = {'threshold': result['threshold'], 'familiarity': result['familiarity'],
                   'contrast': result['contrast'], 'colours': result['colours'],
                   'meets_targets': result['meets_targets'],
                   'targets': result['targets'], 'calibration': result['calibration'],
                   'test': result['test']}
        (Path(checkpoint) / GROUNDING_FILE).write_text(json.dumps(summary, indent=2) + '\n')
        print(f'wrote {Path(checkpoint) / GROUNDING_FILE}')
    return 0
