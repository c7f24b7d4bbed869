"""The grounding score: how the V-L score and the other checks are joined (run time and eval).

Three checks, each a number where higher means "grounded":

* ``vl`` -- the V-L cosine of the frame with the request (`Policy.step`'s ``alignment``);
* ``familiarity`` -- the request's sentence-embedding cosine to the nearest training
  instruction (`Policy.instruction_familiarity`): is it a task of the kind the policy learnt?
  The V-L score alone cannot tell chat or nonsense from an instruction (it never saw them);
* ``contrast`` -- the request's V-L score minus the mean V-L score of the same request with each
  colour it names swapped for every other colour (`colour_contrast`). The raw V-L score carries
  an offset per scene that hides a missing object; against its own colour-swapped variants the
  request is compared in the same frame, so a colour that is not on the table scores low.

``grounding_score`` maps each extra check onto V-L units (anchored at the check's low quantile of
true instructions, scaled by the ratio of their spreads: ``check_block``) and takes the smallest,
so a request is flagged when any check fails. The blocks live in the checkpoint's calibration
(grounding.json, written by `vla_align.evaluation.grounding`); a check the calibration has no
block for is not used, so older calibrations keep their meaning.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import numpy as np

FLAG_TARGET = 0.02  # at most this share of true instructions flagged
#: The checks mapped onto V-L units and joined with it, in the calibration's keys.
MAPPED_CHECKS = ('familiarity', 'contrast')


def grounding_score(alignment: float, calibration: Optional[dict[str, Any]],
                    familiarity: Optional[float] = None,
                    contrast: Optional[float] = None) -> float:
    """The grounding score in V-L units (module docstring): the smallest of the V-L score and
    the other checks mapped onto it, for the checks the calibration has a block for."""
    score = alignment
    for name, value in (('familiarity', familiarity), ('contrast', contrast)):
        block = (calibration or {}).get(name)
        if value is not None and block:
            score = min(score, block['vl_anchor'] + (value - block['anchor']) * block['scale'])
    return score


def check_block(rows: list[dict[str, Any]], key: str, quantile: float = FLAG_TARGET / 2
                ) -> Optional[dict[str, float]]:
    """How check ``key`` maps onto V-L units: each score's ``quantile`` over the true
    instructions that have the check as anchors, the ratio of their spreads as scale; None when
    no true instruction has it."""
    true = [r for r in rows if r['kind'] == 'true' and r.get(key) is not None]
    if not true:
        return None
    vl = np.array([r['vl'] for r in true])
    value = np.array([r[key] for r in true])
    return {'vl_anchor': float(np.quantile(vl, quantile)),
            'anchor': float(np.quantile(value, quantile)),
            'scale': float(vl.std() / max(value.std(), 1e-6))}


def apply_calibration(rows: list[dict[str, Any]], calibration: Optional[dict[str, Any]]) -> None:
    """Fill each row's ``score`` (`grounding_score`) in place."""
    for row in rows:
        row['score'] = grounding_score(row['vl'], calibration, row.get('familiarity'),
                                       row.get('contrast'))


def colour_variants(text: str, colours: dict[str, list[str]]) -> list[str]:
    """``text`` with each colour word it names swapped for every other colour.

    ``colours`` maps a colour to its phrases (canonical first, then synonyms, as in a task
    suite's vocabulary); a swapped phrase is the other colour's phrase at the same position, so
    "the crimson block" becomes "the emerald block", not "the green block" (a synonym scores
    differently from a canonical word). Empty when the text names no colour."""
    phrase_of = {phrase.lower(): (colour, index) for colour, phrases in colours.items()
                 for index, phrase in enumerate(phrases)}
    if not phrase_of:
        return []
    pattern = re.compile(r'\b(' + '|'.join(re.escape(p) for p in sorted(
        phrase_of, key=len, reverse=True)) + r')\b', re.IGNORECASE)
    variants = []
    for match in pattern.finditer(text):
        named, index = phrase_of[match.group(1).lower()]
        for colour, phrases in colours.items():
            if colour != named:
                swapped = phrases[min(index, len(phrases) - 1)]
                variants.append(text[:match.start()] + swapped + text[match.end():])
    return variants


def contrast_direction(policy: Any, text: str, colours: Optional[dict[str, list[str]]]
                       ) -> Optional[np.ndarray]:
    """The (A,) vector whose dot product with a frame's vision embedding is ``text``'s colour
    contrast (module docstring): its language embedding minus the mean of its colour-swapped
    variants'. None when the text names no colour or no colour table is given. One language
    pass per instruction; each step then costs one dot product."""
    variants = colour_variants(text, colours or {})
    if not variants:
        return None
    embeddings = policy.language_embeddings([text] + variants)
    return (embeddings[0] - embeddings[1:].mean(0)).astype(np.float32)


def colour_contrast(vision_embedding: Optional[np.ndarray],
                    direction: Optional[np.ndarray]) -> Optional[float]:
    """A frame's colour contrast for the instruction of ``direction``; None when either is."""
    if vision_embedding is None or direction is None:
        return None
    return float(np.dot(vision_embedding, direction))
