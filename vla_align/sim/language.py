"""Instruction wording: colour/shape vocabularies and the per-(family, split) sampling config.

The words themselves come from the task-suite YAML (``suite.py`` builds these objects);
this module only says how a template becomes an instruction.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: How object words are chosen: the canonical name only, only synonyms, or either.
WORD_MODES: tuple[str, ...] = ('canonical', 'synonyms', 'any')


@dataclass(frozen=True)
class Vocabulary:
    """Words for colours, shapes and push directions.

    Each table maps a canonical name to ``(canonical phrase, synonym, ...)``, e.g.
    ``colours['red'] == ('red', 'crimson', 'scarlet')`` or
    ``directions['left'] == ('to the left', 'leftwards')``.
    """

    colours: dict[str, tuple[str, ...]]
    shapes: dict[str, tuple[str, ...]]
    directions: dict[str, tuple[str, ...]]

    def words(self, kind: str, name: str, mode: str) -> tuple[str, ...]:
        """Phrases for ``name`` (``kind`` colour/shape/direction) allowed by ``mode``."""
        table = {'colour': self.colours, 'shape': self.shapes, 'direction': self.directions}[kind]
        phrases = table.get(name, (name,))
        if mode == 'canonical' or len(phrases) == 1:
            return phrases[:1]
        if mode == 'synonyms':
            return phrases[1:]
        return phrases

    def choose(self, rng: np.random.Generator, kind: str, name: str, mode: str) -> str:
        options = self.words(kind, name, mode)
        return options[int(rng.integers(len(options)))]

    def phrase(self, rng: np.random.Generator, colour: str, shape: str, mode: str) -> str:
        """E.g. ``'crimson cube'`` for ('red', 'block') with ``mode='synonyms'``."""
        colour_word = self.choose(rng, 'colour', colour, mode)
        return f'{colour_word} {self.choose(rng, "shape", shape, mode)}'


@dataclass(frozen=True)
class SamplingConfig:
    """Everything ``Task.sample`` needs for one family in one split."""

    split: str
    templates: tuple[str, ...]  # with {target}, {destination}, {direction} placeholders
    vocabulary: Vocabulary
    target_colours: tuple[str, ...]  # colours the target may have in this split
    word_mode: str = 'canonical'  # one of WORD_MODES, for colours, shapes and directions
    num_distractors: int = 2
    shift: dict[str, float] = field(default_factory=dict)
