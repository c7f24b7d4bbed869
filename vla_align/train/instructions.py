"""Instruction augmentation: train on many wordings of each demonstrated instruction.

A policy trained only on the task suite's canonical wordings ("pick up the red block") meets
"could you grab the crimson cube" as a sentence it never read. Each training instruction is
therefore given variants from ``config/instruction_wordings.yaml``: its colour, shape and
direction words swapped for alternatives, its whole template replaced by another of its task
family where the family is known, and the request wrapped the way people ask ("please ...").

Variants are drawn once per run with a seeded generator and encoded once by the frozen language
model, next to the originals; a training sample then reads a random variant with probability
``probability`` (the original otherwise). A variant keeps its original's instruction id, so the
contrastive losses still treat every wording of one task as one instruction. Validation and the
evaluation splits always see the instruction as recorded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import re
from typing import Any, Optional

import numpy as np
import yaml

from vla_align.model.config import ConfigError
from vla_align.paths import share_path


@dataclass(frozen=True)
class InstructionAugmentConfig:
    probability: float = 0.0  # chance a training sample reads a variant; 0 = off
    variants: int = 12  # variants drawn per recorded instruction
    wordings: str = 'instruction_wordings.yaml'  # relative to the config folder

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0 or self.variants < 1:
            raise ConfigError(f'invalid instructions settings {self}: probability in [0, 1], '
                              f'variants >= 1')

    @property
    def enabled(self) -> bool:
        return self.probability > 0


@dataclass(frozen=True)
class Wordings:
    """The alternatives of ``config/instruction_wordings.yaml``."""

    colours: dict[str, tuple[str, ...]]
    shapes: dict[str, tuple[str, ...]]
    directions: dict[str, tuple[str, ...]]
    templates: dict[str, tuple[str, ...]]  # family -> templates with {target}, ...
    frames: tuple[str, ...] = ('{}',)
    _object: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        colours = '|'.join(sorted(map(re.escape, self.colours), key=len, reverse=True))
        shapes = '|'.join(sorted(map(re.escape, self.shapes), key=len, reverse=True))
        object.__setattr__(self, '_object', re.compile(
            rf'\b(?P<colour>{colours}) (?P<shape>{shapes})\b'))

    @classmethod
    def from_file(cls, path: str | Path) -> Wordings:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f'cannot read instruction wordings {path}: {exc}') from exc
        if not isinstance(data, dict):
            raise ConfigError(f'instruction wordings {path} must be a mapping')

        def table(name: str) -> dict[str, tuple[str, ...]]:
            entries = data.get(name) or {}
            if not isinstance(entries, dict) or not all(
                    isinstance(v, list) and v and all(isinstance(w, str) for w in v)
                    for v in entries.values()):
                raise ConfigError(f'{path}: {name} must map names to non-empty word lists')
            return {str(k): tuple(v) for k, v in entries.items()}

        frames = tuple(data.get('frames') or ('{}',))
        if not all(isinstance(f, str) and f.count('{}') == 1 for f in frames):
            raise ConfigError(f'{path}: every frame must hold exactly one {{}}')
        return cls(colours=table('colours'), shapes=table('shapes'),
                   directions=table('directions'), templates=table('templates'),
                   frames=frames)

    # ------------------------------------------------------------------------------------
    def parse(self, instruction: str) -> Optional[dict[str, Any]]:
        """The slots of a suite-style instruction: target/destination ``(colour, shape)`` and
        the direction phrase; None when it names no known object."""
        objects = [(m['colour'], m['shape']) for m in self._object.finditer(instruction)]
        if not objects:
            return None
        direction = next((d for d in sorted(self.directions, key=len, reverse=True)
                          if instruction.endswith(' ' + d)), None)
        return {'target': objects[0], 'destination': objects[1] if len(objects) > 1 else None,
                'direction': direction}

    def _object_phrase(self, rng: np.random.Generator, colour: str, shape: str) -> str:
        colour_word = _pick(rng, (colour, *self.colours.get(colour, ())))
        return f'{colour_word} {_pick(rng, (shape, *self.shapes.get(shape, ())))}'

    def variant(self, rng: np.random.Generator, instruction: str, family: str = '') -> str:
        """One re-wording of ``instruction`` (possibly the same text)."""
        slots = self.parse(instruction)
        text = instruction
        if slots is not None:
            words = {'target': self._object_phrase(rng, *slots['target'])}
            if slots['destination'] is not None:
                words['destination'] = self._object_phrase(rng, *slots['destination'])
            if slots['direction'] is not None:
                words['direction'] = _pick(rng, (slots['direction'],
                                                  *self.directions[slots['direction']]))
            usable = [t for t in self.templates.get(family, ())
                      if set(re.findall(r'{(\w+)}', t)) == set(words)]
            if usable and rng.random() < 0.5:
                text = _pick(rng, tuple(usable)).format(**words)
            else:  # keep the template, swap the words in place
                text = self._object.sub(lambda m: '\0', instruction, count=0)
                names = ['target', 'destination'][:text.count('\0')]
                for name in names:
                    text = text.replace('\0', words[name], 1)
                if slots['direction'] is not None:
                    text = text[:-len(slots['direction'])] + words['direction']
        return _pick(rng, self.frames).format(text)


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def load_wordings(config: InstructionAugmentConfig,
                  base_dir: Optional[Path] = None) -> Wordings:
    path = Path(config.wordings)
    if not path.is_absolute():
        path = (base_dir or share_path('config')) / path
    return Wordings.from_file(path)


@dataclass
class InstructionVariants:
    """Recorded instructions followed by their variants, and which rows belong to which."""

    texts: list[str]  # originals first (same order and ids as the cache), then variants
    rows: np.ndarray  # (num_instructions, 1 + variants) int64 rows of ``texts``; col 0 = original


def build_variants(instructions: list[str], families: list[str], wordings: Wordings,
                   count: int, seed: int) -> InstructionVariants:
    """``count`` variants per instruction (duplicates of one text share a row)."""
    rng = np.random.default_rng(seed)
    texts = list(instructions)
    index = {text: i for i, text in enumerate(texts)}
    rows = np.zeros((len(instructions), 1 + count), np.int64)
    for i, (instruction, family) in enumerate(zip(instructions, families, strict=True)):
        rows[i, 0] = i
        for j in range(count):
            text = wordings.variant(rng, instruction, family)
            if text not in index:
                index[text] = len(texts)
                texts.append(text)
            rows[i, 1 + j] = index[text]
    return InstructionVariants(texts=texts, rows=rows)
