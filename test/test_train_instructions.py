"""Instruction augmentation: variants keep the task, never borrow the paraphrase split's words."""
import re

import numpy as np
import pytest
import torch

from vla_align.model.config import ConfigError
from vla_align.sim.suite import load_suite
from vla_align.train.config import TrainConfig
from vla_align.train.instructions import (
    InstructionAugmentConfig,
    Wordings,
    build_variants,
    load_wordings,
)

SUITE = load_suite()
WORDINGS = load_wordings(InstructionAugmentConfig(probability=0.5))


def seen_instructions(per_family: int = 40) -> list[tuple[str, str, dict]]:
    """(instruction, family, task) drawn from the seen split as the collector does."""
    out = []
    for family in SUITE.families:
        for seed in SUITE.seeds('seen', 'train', per_family):
            task = SUITE.sample_task(family, 'seen', seed)
            out.append((task.instruction, family, task))
    return out


def paraphrase_only_words() -> set[str]:
    """Words the paraphrase split uses that training (seen wording, canonical words) does not."""
    def words(texts):
        return {w for text in texts for w in re.findall(r'[a-z]+', text)}
    vocabulary = SUITE.vocabulary
    synonyms = [w for table in (vocabulary.colours, vocabulary.shapes, vocabulary.directions)
                for phrases in table.values() for w in phrases[1:]]
    heldout = [t for family in SUITE.templates.values() for t in family['heldout']]
    trained = [t for family in SUITE.templates.values() for t in family['train']]
    canonical = [phrases[0] for table in (vocabulary.colours, vocabulary.shapes,
                                          vocabulary.directions) for phrases in table.values()]
    function_words = {'a', 'onto', 'over', 'your', 'up', 'off', 'with', 'from'}
    return words(synonyms + heldout) - words(trained + canonical) - function_words


def test_variants_never_use_a_word_only_the_paraphrase_split_uses():
    forbidden = paraphrase_only_words()
    assert {'crimson', 'cube', 'grab', 'nudge', 'leftwards'} <= forbidden  # the check has teeth
    instructions = seen_instructions()
    variants = build_variants([i for i, _, _ in instructions], [f for _, f, _ in instructions],
                              WORDINGS, count=12, seed=0)
    used = {w for text in variants.texts for w in re.findall(r'[a-z]+', text.lower())}
    assert not used & forbidden, sorted(used & forbidden)
    # and no variant is a held-out template with other words in it
    heldout = [re.escape(t).replace(r'\{target\}', '.+').replace(r'\{destination\}', '.+')
               .replace(r'\{direction\}', '.+')
               for family in SUITE.templates.values() for t in family['heldout']]
    assert not [t for t in variants.texts if any(re.search(h, t) for h in heldout)]


def colour_words(colour: str) -> set[str]:
    return {colour, *WORDINGS.colours[colour]}


def test_every_variant_names_the_same_objects_in_the_same_roles():
    """Target first, destination second, each with a word of its own colour only."""
    instructions = seen_instructions(per_family=12)
    variants = build_variants([i for i, _, _ in instructions], [f for _, f, _ in instructions],
                              WORDINGS, count=12, seed=1)
    palette = list(WORDINGS.colours)
    checked = 0
    for row, (_, family, task) in zip(variants.rows, instructions, strict=True):
        roles = [task.target.split()[0]] + ([task.destination.split()[0]]
                                            if task.destination else [])
        for text in (variants.texts[i] for i in row[1:]):
            positions = []
            for colour in roles:
                found = [m.start() for w in sorted(colour_words(colour), key=len, reverse=True)
                         for m in re.finditer(rf'\b{re.escape(w)}\b', text)]
                assert found, (text, colour)
                positions.append(min(found))
            assert positions == sorted(positions), text
            others = [c for c in palette if c not in roles]
            assert not [c for c in others if any(re.search(rf'\b{re.escape(w)}\b', text)
                                                 for w in colour_words(c))], text
            if family == 'push':
                direction = next(d for d in WORDINGS.directions
                                 if task.instruction.endswith(' ' + d))
                assert any(p in text for p in (direction, *WORDINGS.directions[direction]))
            checked += 1
    assert checked == len(instructions) * 12


def test_variants_are_varied_and_reproducible():
    texts = ['pick up the red block', 'push the blue bowl to the left']
    first = build_variants(texts, ['pick', 'push'], WORDINGS, count=12, seed=3)
    again = build_variants(texts, ['pick', 'push'], WORDINGS, count=12, seed=3)
    assert first.texts == again.texts and (first.rows == again.rows).all()
    assert first.texts[:2] == texts and list(first.rows[:, 0]) == [0, 1]
    for row in first.rows:
        assert len({first.texts[i] for i in row[1:]}) >= 8  # mostly distinct
    # an instruction the wordings cannot parse is only framed, never mangled
    odd = build_variants(['wave hello'], [''], WORDINGS, count=6, seed=0)
    assert all('wave hello' in t for t in odd.texts)


def test_bad_wordings_files_are_refused_with_the_reason(tmp_path):
    path = tmp_path / 'w.yaml'
    path.write_text('colours: {red: []}\n')
    with pytest.raises(ConfigError, match='non-empty word lists'):
        Wordings.from_file(path)
    path.write_text("colours: {red: [ruby]}\nframes: ['please']\n")
    with pytest.raises(ConfigError, match='exactly one'):
        Wordings.from_file(path)
    with pytest.raises(ConfigError, match='probability'):
        TrainConfig.from_dict({'instructions': {'probability': 1.5}})


def test_rewording_is_opt_in_so_the_shipped_recipe_still_reproduces():
    """The shipped checkpoint was trained without it (docs/INSTRUCTION_AUGMENTATION.md)."""
    from vla_align.paths import share_path

    config = TrainConfig.from_file(share_path('config', 'train_default.yaml'),
                                   {'instructions.probability': 0.5})
    assert config.instructions.enabled and config.instructions.variants == 12
    assert not TrainConfig.from_file(share_path('config', 'train_default.yaml')
                                     ).instructions.enabled


def test_a_training_batch_reads_variants_and_keeps_the_instruction_ids(tmp_path):
    """Through the trainer: with probability 1 every sample reads a variant of its own task."""
    from test_train_trainer import instruction_episode, train_config

    from vla_align.data.dataset import FrameCache
    from vla_align.train.trainer import Trainer

    episodes = [instruction_episode(i, t) for i, t in enumerate(
        ['move the gripper to the left and close it', 'move the gripper to the right and open it']
        * 4)]
    cache = FrameCache.from_episodes(episodes, image_size=32)
    config = train_config(1)
    config = TrainConfig(**{**config.__dict__, 'instructions': InstructionAugmentConfig(
        probability=1.0, variants=4)})
    trainer = Trainer(config, cache, tmp_path, progress=False)
    assert trainer.text_table is not None and len(trainer.text_table) == len(
        trainer.variants.texts) > 2
    ids = torch.tensor([0, 1, 0, 1])
    reworded = trainer._text(ids, reword=True)
    original = trainer._text(ids)
    assert not torch.equal(reworded.pooled, original.pooled)  # every sample reads a variant
    expected = trainer.text_table.pooled[torch.from_numpy(trainer.variants.rows[:, 0])][ids]
    assert torch.equal(original.pooled, expected)
    # each reworded row is one of that instruction's own variants
    for k, iid in enumerate(ids.tolist()):
        own = trainer.text_table.pooled[torch.from_numpy(trainer.variants.rows[iid, 1:])]
        assert (own - reworded.pooled[k]).abs().sum(dim=1).min() < 1e-6
    texts = trainer.variants.texts
    assert all('left' in texts[i] for i in trainer.variants.rows[0])
    assert np.isin(trainer.variants.rows, np.arange(len(texts))).all()
