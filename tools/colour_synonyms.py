"""Does a language model place each colour synonym nearest its own colour?

For every synonym of the task suite's vocabulary (``crimson`` for red, ``lime`` for green, ...)
this embeds ``"the <synonym> block"`` and the canonical ``"the <colour> block"`` phrases with
the policy's language encoder (mean-pooled sentence embedding) and reports the nearest
canonical colour by cosine similarity. A frozen encoder that misplaces a synonym gives the
policy nothing to generalise from: the paraphrase split uses these synonyms and training
never does.

    python tools/colour_synonyms.py                       # the shipped MiniLM
    python tools/colour_synonyms.py --language-model /path/to/hf_model_folder
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from vla_align.model.language import LanguageEncoder
from vla_align.sim.suite import load_suite


def sentence_embeddings(encoder: LanguageEncoder, texts: list[str]) -> np.ndarray:
    """(N, E) unit-length pooled embeddings."""
    with torch.inference_mode():
        pooled = encoder(texts).pooled.float().numpy()
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--language-model', default=None,
                        help='a local Hugging Face model folder (default: the shipped MiniLM)')
    parser.add_argument('--suite', default=None, help='task-suite YAML (default: the shipped one)')
    args = parser.parse_args()
    colours = load_suite(args.suite).vocabulary.colours
    encoder = LanguageEncoder(args.language_model).eval()
    names = list(colours)
    canonical = sentence_embeddings(encoder, [f'the {colours[n][0]} block' for n in names])
    rows, hits = [], 0
    for name in names:
        for synonym in colours[name][1:]:
            similarity = sentence_embeddings(encoder, [f'the {synonym} block'])[0] @ canonical.T
            nearest = names[int(np.argmax(similarity))]
            hits += nearest == name
            rows.append((synonym, name, nearest, float(similarity[names.index(name)]),
                         float(similarity.max())))
    print('| synonym | colour | nearest canonical colour | cos to own | cos to nearest |')
    print('|---|---|---|---|---|')
    for synonym, name, nearest, own, best in rows:
        print(f'| {synonym} | {name} | {nearest} | {own:.2f} | {best:.2f} |')
    print(f'\n{hits} of {len(rows)} synonyms are nearest their own colour '
          f'(chance: {len(rows) / len(names):.0f} of {len(rows)})')


if __name__ == '__main__':
    main()
