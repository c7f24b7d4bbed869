"""Task suites: the YAML file that defines words, templates, splits and seed ranges.

``load_suite()`` reads ``sim/task_suites/default.yaml`` (format: docs/TASK_FILES.md);
a user file with explicit tasks loads through the same function. A ``TaskSuite`` turns
``(family, split, seed)`` into a ``TaskSpec`` deterministically and hands out seed ranges that
never overlap between splits or purposes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional
import zlib

import numpy as np
import yaml

from vla_align.paths import share_path
from vla_align.sim.language import WORD_MODES, SamplingConfig, Vocabulary
from vla_align.sim.scene import PALETTE, SHAPES
from vla_align.sim.success import DIRECTIONS
from vla_align.sim.tasks import TASKS, get_task
from vla_align.sim.types import TASK_FAMILIES, TaskSpec

PURPOSES: tuple[str, ...] = ('train', 'val', 'eval')
WORDINGS: tuple[str, ...] = ('train', 'heldout')
COMBINATIONS: tuple[str, ...] = ('exclude_holdout', 'only_holdout', 'all')
SHIFT_KEYS: tuple[str, ...] = ('camera_jitter', 'light_jitter', 'colour_jitter')
#: Seeds of a split that names none: evaluation only, outside every range of the default
#: suite; the k-th such split of a file gets block k.
DEFAULT_SEED_BASE, DEFAULT_SEED_BLOCK = 9_000_000, 100_000
#: Words used when a file has no ``vocabulary`` section: canonical names only.
PLAIN_VOCABULARY = Vocabulary(colours={c: (c,) for c in PALETTE},
                              shapes={s: (s,) for s in SHAPES},
                              directions={d: (d,) for d in DIRECTIONS})


class SuiteError(ValueError):
    """A task-suite file is malformed; the message names the file and the offending entry."""


@dataclass(frozen=True)
class SplitConfig:
    """One split of a suite: how its tasks are worded and sampled, or an explicit task list."""

    name: str
    wording: str = 'train'
    words: str = 'canonical'
    combinations: str = 'all'
    num_distractors: int = 2
    shift: dict[str, float] = field(default_factory=dict)
    tasks: tuple[TaskSpec, ...] = ()  # explicit tasks (user files) instead of templates
    seeds: dict[str, tuple[int, int]] = field(default_factory=lambda: {
        'eval': (DEFAULT_SEED_BASE, DEFAULT_SEED_BASE + DEFAULT_SEED_BLOCK)})


@dataclass(frozen=True)
class TaskSuite:
    """Words, templates, held-out combinations and splits read from one YAML file."""

    path: Optional[Path]
    vocabulary: Vocabulary
    templates: dict[str, dict[str, tuple[str, ...]]]  # family -> wording -> templates
    holdout: frozenset[tuple[str, str]]  # (family, target colour)
    split_configs: dict[str, SplitConfig]

    @property
    def splits(self) -> tuple[str, ...]:
        return tuple(self.split_configs)

    @property
    def eval_splits(self) -> tuple[str, ...]:
        """The splits an evaluation runs by default: those with 'eval' seeds (a split made only
        to collect training data has none)."""
        return tuple(name for name, config in self.split_configs.items() if 'eval' in config.seeds)

    @property
    def families(self) -> tuple[str, ...]:
        present = set(self.templates)
        for split in self.split_configs.values():
            present.update(task.family for task in split.tasks)
        return tuple(f for f in TASK_FAMILIES if f in present)

    def split(self, name: str) -> SplitConfig:
        if name not in self.split_configs:
            raise ValueError(f'unknown split {name!r}; this suite has {list(self.splits)}')
        return self.split_configs[name]

    def sampling_config(self, family: str, split: str) -> SamplingConfig:
        """What ``Task.sample`` needs to draw ``family`` tasks for a template split."""
        config = self.split(split)
        if family not in self.templates:
            raise ValueError(f'family {family!r} has no templates in this suite; '
                             f'families: {list(self.families)}')
        colours = tuple(c for c in PALETTE if self._allowed(family, c, config.combinations))
        return SamplingConfig(split=split, templates=self.templates[family][config.wording],
                              vocabulary=self.vocabulary, target_colours=colours,
                              word_mode=config.words, num_distractors=config.num_distractors,
                              shift=dict(config.shift))

    def _allowed(self, family: str, colour: str, combinations: str) -> bool:
        held = (family, colour) in self.holdout
        return {'all': True, 'exclude_holdout': not held, 'only_holdout': held}[combinations]

    def sample_task(self, family: str, split: str, seed: int) -> TaskSpec:
        """The task of ``family`` in ``split`` for ``seed`` (same inputs, same task)."""
        get_task(family)
        config = self.split(split)
        rng = np.random.default_rng([int(seed), zlib.crc32(family.encode()),
                                     zlib.crc32(split.encode())])
        if config.tasks:
            choices = [task for task in config.tasks if task.family == family]
            if not choices:
                raise ValueError(f'split {split!r} lists no {family!r} task; it has '
                                 f'{sorted({t.family for t in config.tasks})}')
            return choices[int(rng.integers(len(choices)))]
        return TASKS[family].sample(rng, self.sampling_config(family, split))

    def seeds(self, split: str, purpose: str, count: int, start: int = 0) -> list[int]:
        """``count`` seeds of ``split`` for ``purpose`` ('train' | 'val' | 'eval').

        ``start`` skips into the range, so disjoint batches are ``start=0``,
        ``start=count``, ... Ranges of different splits/purposes never overlap.
        """
        config = self.split(split)
        if purpose not in PURPOSES:
            raise ValueError(f'purpose must be one of {PURPOSES}, got {purpose!r}')
        if purpose not in config.seeds:
            raise ValueError(f'split {split!r} has no {purpose!r} seeds (it has '
                             f'{sorted(config.seeds)}); the splits with train seeds are '
                             f'{[n for n, c in self.split_configs.items() if "train" in c.seeds]}')
        if count < 0 or start < 0:
            raise ValueError(f'count and start must be >= 0, got count={count}, start={start}')
        low, high = config.seeds[purpose]
        if low + start + count > high:
            raise ValueError(f'{split}/{purpose} has {high - low} seeds; asked for '
                             f'{count} from offset {start}')
        return list(range(low + start, low + start + count))


# -- loading -------------------------------------------------------------------------------------
def default_suite_path() -> Path:
    return share_path('sim', 'task_suites', 'default.yaml')


def load_suite(path: Optional[str | Path] = None) -> TaskSuite:
    """Read a task-suite YAML file (the shipped default suite when ``path`` is None)."""
    path = Path(path) if path is not None else default_suite_path()
    if not path.is_file():
        raise SuiteError(f'task-suite file not found: {path}')
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise SuiteError(f'{path}: not valid YAML: {exc}') from None
    try:
        return parse_suite(data, path)
    except SuiteError as exc:
        raise SuiteError(f'{path}: {exc}') from None


def parse_suite(data: Any, path: Optional[Path] = None) -> TaskSuite:
    """Build a ``TaskSuite`` from already-parsed YAML data (see docs/TASK_FILES.md)."""
    _require(isinstance(data, dict), 'the file must be a mapping with a "splits" key')
    _require(data.get('version', 1) == 1, f'unsupported version {data.get("version")!r}')
    unknown = set(data) - {'version', 'vocabulary', 'families', 'holdout', 'splits', 'seeds'}
    _require(not unknown, f'unknown top-level keys {sorted(unknown)}')
    vocabulary = _parse_vocabulary(data.get('vocabulary'))
    templates = _parse_families(data.get('families') or {})
    holdout = _parse_holdout(data.get('holdout') or [])
    seeds = data.get('seeds') or {}
    _require(isinstance(seeds, dict), '"seeds" must map split names to ranges')
    raw_splits = data.get('splits')
    _require(isinstance(raw_splits, dict) and raw_splits, '"splits" must be a non-empty mapping')
    splits = {name: _parse_split(str(name), body, seeds.get(name), templates, index)
              for index, (name, body) in enumerate(raw_splits.items())}
    _require(not set(seeds) - set(splits),
             f'seeds given for undefined splits {sorted(set(seeds) - set(splits))}')
    _check_disjoint(splits)
    return TaskSuite(path=path, vocabulary=vocabulary, templates=templates,
                     holdout=frozenset(holdout), split_configs=splits)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SuiteError(message)


def _parse_vocabulary(raw: Any) -> Vocabulary:
    if raw is None:
        return PLAIN_VOCABULARY
    _require(isinstance(raw, dict), '"vocabulary" must be a mapping')
    tables = {}
    for kind, known in (('colours', PALETTE), ('shapes', SHAPES), ('directions', DIRECTIONS)):
        table = raw.get(kind) or {}
        _require(isinstance(table, dict), f'vocabulary.{kind} must be a mapping')
        _require(not set(table) - set(known),
                 f'vocabulary.{kind}: unknown names {sorted(set(table) - set(known))}; '
                 f'known: {sorted(known)}')
        parsed = {}
        for name in known:
            words = table.get(name, [name])
            _require(isinstance(words, list) and words and all(isinstance(w, str) and w.strip()
                                                               for w in words),
                     f'vocabulary.{kind}.{name} must be a non-empty list of phrases')
            parsed[name] = tuple(w.strip() for w in words)
        tables[kind] = parsed
    return Vocabulary(**tables)


def _parse_families(raw: Any) -> dict[str, dict[str, tuple[str, ...]]]:
    _require(isinstance(raw, dict), '"families" must be a mapping')
    families = {}
    for family, body in raw.items():
        _require(family in TASKS, f'families: unknown family {family!r}; known {sorted(TASKS)}')
        templates = (body or {}).get('templates')
        _require(isinstance(templates, dict), f'families.{family}.templates must be a mapping')
        parsed = {}
        for wording in WORDINGS:
            items = templates.get(wording, [])
            _require(isinstance(items, list) and all(isinstance(t, str) for t in items),
                     f'families.{family}.templates.{wording} must be a list of strings')
            for template in items:
                _check_template(family, template)
            parsed[wording] = tuple(items)
        families[family] = parsed
    return families


def _check_template(family: str, template: str) -> None:
    task = TASKS[family]
    needed = {'target'} | ({'destination'} if task.destination_shape else set()) | (
        {'direction'} if task.uses_direction else set())
    try:
        template.format(**{key: 'x' for key in needed})
    except (KeyError, IndexError, ValueError) as exc:
        raise SuiteError(f'families.{family}: template {template!r} has a bad placeholder '
                         f'({exc}); allowed: {sorted(needed)}') from None
    missing = [key for key in needed if '{' + key + '}' not in template]
    _require(not missing, f'families.{family}: template {template!r} lacks {missing}')


def _parse_holdout(raw: Any) -> list[tuple[str, str]]:
    _require(isinstance(raw, list), '"holdout" must be a list of [family, colour] pairs')
    pairs = []
    for item in raw:
        _require(isinstance(item, list) and len(item) == 2 and item[0] in TASKS
                 and item[1] in PALETTE,
                 f'holdout entry {item!r} must be [family, colour] with a known family/colour')
        pairs.append((item[0], item[1]))
    return pairs


def _parse_split(name: str, raw: Any, seeds: Any,
                 templates: dict[str, dict[str, tuple[str, ...]]], index: int) -> SplitConfig:
    raw = raw or {}
    _require(isinstance(raw, dict), f'splits.{name} must be a mapping')
    allowed = {'wording', 'words', 'combinations', 'num_distractors', 'shift', 'tasks'}
    _require(not set(raw) - allowed, f'splits.{name}: unknown keys {sorted(set(raw) - allowed)}')
    wording = raw.get('wording', 'train')
    words = raw.get('words', 'canonical')
    combinations = raw.get('combinations', 'all')
    _require(wording in WORDINGS, f'splits.{name}.wording must be one of {WORDINGS}')
    _require(words in WORD_MODES, f'splits.{name}.words must be one of {WORD_MODES}')
    _require(combinations in COMBINATIONS,
             f'splits.{name}.combinations must be one of {COMBINATIONS}')
    distractors = raw.get('num_distractors', 2)
    _require(isinstance(distractors, int) and 0 <= distractors <= 6,
             f'splits.{name}.num_distractors must be an integer in 0..6')
    shift = raw.get('shift') or {}
    _require(isinstance(shift, dict) and not set(shift) - set(SHIFT_KEYS)
             and all(isinstance(v, (int, float)) and v >= 0 for v in shift.values()),
             f'splits.{name}.shift must map {SHIFT_KEYS} to non-negative numbers')
    shift = {key: float(value) for key, value in shift.items()}
    tasks = tuple(_parse_task(name, i, item, distractors, shift)
                  for i, item in enumerate(raw.get('tasks') or []))
    if not tasks:
        _require(bool(templates), f'splits.{name} lists no tasks and the file has no families '
                                  f'with templates to sample from')
        for family, by_wording in templates.items():
            _require(bool(by_wording[wording]),
                     f'splits.{name} uses {wording!r} templates but families.{family} has none')
    return SplitConfig(name=name, wording=wording, words=words, combinations=combinations,
                       num_distractors=distractors, shift=shift, tasks=tasks,
                       seeds=_parse_seeds(name, seeds, index))


def _parse_task(split: str, index: int, raw: Any, distractors: int,
                shift: dict[str, float]) -> TaskSpec:
    where = f'splits.{split}.tasks[{index}]'
    _require(isinstance(raw, dict), f'{where} must be a mapping')
    allowed = {'family', 'instruction', 'target', 'destination', 'direction', 'num_distractors'}
    _require(not set(raw) - allowed, f'{where}: unknown keys {sorted(set(raw) - allowed)}')
    for key in ('family', 'instruction', 'target'):
        _require(isinstance(raw.get(key), str) and raw[key].strip(), f'{where} needs {key!r}')
    spec = TaskSpec(family=raw['family'], instruction=raw['instruction'].strip(),
                    target=raw['target'].strip(), destination=raw.get('destination'),
                    direction=raw.get('direction'), split=split,
                    num_distractors=raw.get('num_distractors', distractors), shift=dict(shift))
    try:
        get_task(spec.family).validate(spec)
    except ValueError as exc:
        raise SuiteError(f'{where}: {exc}') from None
    return spec


def _parse_seeds(split: str, raw: Any, index: int) -> dict[str, tuple[int, int]]:
    if raw is None:
        low = DEFAULT_SEED_BASE + index * DEFAULT_SEED_BLOCK
        return {'eval': (low, low + DEFAULT_SEED_BLOCK)}
    _require(isinstance(raw, dict) and raw and not set(raw) - set(PURPOSES),
             f'seeds.{split} must map some of {PURPOSES} to [start, stop]')
    ranges = {}
    for purpose, bounds in raw.items():
        _require(isinstance(bounds, list) and len(bounds) == 2
                 and all(isinstance(b, int) and b >= 0 for b in bounds) and bounds[0] < bounds[1],
                 f'seeds.{split}.{purpose} must be [start, stop] with 0 <= start < stop')
        ranges[purpose] = (bounds[0], bounds[1])
    return ranges


def _check_disjoint(splits: dict[str, SplitConfig]) -> None:
    ranges = sorted((low, high, f'{name}/{purpose}') for name, config in splits.items()
                    for purpose, (low, high) in config.seeds.items())
    for (_, high_a, name_a), (low_b, _, name_b) in zip(ranges, ranges[1:], strict=False):
        _require(low_b >= high_a, f'seed ranges {name_a} and {name_b} overlap')
