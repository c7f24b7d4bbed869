"""Task suites: the shipped file, splits, seeds, wording and user task files."""
from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import yaml

from vla_align.paths import share_path
from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.rollout import run_expert_episode
from vla_align.sim.scene import PALETTE, parse_object_name
from vla_align.sim.suite import PURPOSES, SuiteError, load_suite
from vla_align.sim.types import SPLITS, TASK_FAMILIES, CameraConfig

EXAMPLE = share_path('sim', 'task_suites', 'example_custom.yaml')


@pytest.fixture(scope='module')
def suite():
    return load_suite()


def test_default_suite_has_every_family_and_split(suite):
    assert suite.families == TASK_FAMILIES
    assert suite.eval_splits == SPLITS
    assert suite.splits == SPLITS + ('cluttered',)
    assert suite.path == share_path('sim', 'task_suites', 'default.yaml')


def test_seed_ranges_never_overlap(suite):
    seen: dict[int, str] = {}
    for split, purpose in itertools.product(suite.splits, PURPOSES):
        if purpose not in suite.split(split).seeds:
            continue
        low, high = suite.split(split).seeds[purpose]
        for other, (o_low, o_high) in [(k, v) for k, v in seen.items()]:
            assert high <= o_low or low >= o_high, f'{split}/{purpose} overlaps {other}'
        seen[f'{split}/{purpose}'] = (low, high)
    train = set(suite.seeds('seen', 'train', 500)) | set(suite.seeds('cluttered', 'train', 500))
    for split in suite.eval_splits:
        assert not train & set(suite.seeds(split, 'eval', 500))
        assert not train & set(suite.seeds(split, 'val', 500))


def test_seeds_are_batched_and_bounded(suite):
    first, second = suite.seeds('seen', 'train', 10), suite.seeds('seen', 'train', 10, start=10)
    assert len(set(first + second)) == 20
    with pytest.raises(ValueError, match='no .train. seeds'):
        suite.seeds('paraphrase', 'train', 1)
    with pytest.raises(ValueError, match='purpose'):
        suite.seeds('seen', 'test', 1)
    with pytest.raises(ValueError, match='asked for'):
        suite.seeds('seen', 'eval', 10**9)


def test_the_cluttered_training_split_randomises_what_shift_and_crowded_evaluate(suite):
    """Training data for crowded, jittered scenes: six distractors under the shift split's
    jitter, the seen wording, and seeds no evaluation ever draws (it has no eval seeds)."""
    from vla_align.evaluation.sim_eval import EvalPlan

    seeds = suite.seeds('cluttered', 'train', 40)
    tasks = [suite.sample_task('pick', 'cluttered', seed) for seed in seeds]
    assert {t.num_distractors for t in tasks} == {6}
    assert all(t.shift == suite.split('shift').shift and t.shift for t in tasks)
    assert {t.instruction for t in tasks} <= seen_instructions(suite)
    with pytest.raises(ValueError, match="no 'eval' seeds"):
        suite.seeds('cluttered', 'eval', 1)
    assert 'cluttered' not in EvalPlan.make(suite, None, ['reach'], 1).splits


def test_sample_task_is_deterministic_and_varied(suite):
    for family, split in itertools.product(suite.families, suite.eval_splits):
        seeds = suite.seeds(split, 'eval', 30)
        tasks = [suite.sample_task(family, split, s) for s in seeds]
        assert tasks == [suite.sample_task(family, split, s) for s in seeds]
        assert len({t.instruction for t in tasks}) > 3
        for task in tasks:
            assert task.family == family and task.split == split
            parse_object_name(task.target)


def seen_instructions(suite) -> set[str]:
    """Every instruction the seen split can produce (canonical words, training templates)."""
    words = suite.vocabulary
    out = set()
    for templates in suite.templates.values():
        for template in templates['train']:
            for colour, shape, dest_colour, dest_shape, direction in itertools.product(
                    PALETTE, ('block', 'bowl'), PALETTE, ('block', 'bowl'), words.directions):
                out.add(template.format(
                    target=f'{colour} {shape}', destination=f'{dest_colour} {dest_shape}',
                    direction=words.directions[direction][0]))
    return out


def test_paraphrase_instructions_never_equal_seen_ones(suite):
    seen = seen_instructions(suite)
    synonyms = {w for table in (suite.vocabulary.colours, suite.vocabulary.shapes)
                for words in table.values() for w in words[1:]}
    with_synonym = 0
    for family in suite.families:
        for seed in suite.seeds('paraphrase', 'eval', 200):
            text = suite.sample_task(family, 'paraphrase', seed).instruction
            assert text not in seen, text
            with_synonym += any(f' {w} ' in f' {text} ' for w in synonyms)
        for seed in suite.seeds('seen', 'eval', 50):
            assert suite.sample_task(family, 'seen', seed).instruction in seen
    assert with_synonym > 200  # "grab the crimson block" style wording is common


def test_composition_holds_out_family_colour_pairs(suite):
    assert suite.holdout
    for family in suite.families:
        held = {c for f, c in suite.holdout if f == family}
        for seed in suite.seeds('seen', 'train', 150):
            colour, _ = parse_object_name(suite.sample_task(family, 'seen', seed).target)
            assert colour not in held
        for seed in suite.seeds('composition', 'eval', 20):
            colour, _ = parse_object_name(suite.sample_task(family, 'composition', seed).target)
            assert colour in held


def test_shift_split_perturbs_scene_and_camera(suite):
    task = suite.sample_task('pick', 'shift', suite.seeds('shift', 'eval', 1)[0])
    assert task.num_distractors > suite.sample_task('pick', 'seen', 0).num_distractors
    env = ManipulationEnv(EnvConfig(camera=CameraConfig(width=32, height=32)))
    try:
        env.reset(1, task)
        jittered = env.camera
        env.reset(2, task)
        assert env.camera != jittered != env.config.camera
    finally:
        env.close()


def test_user_task_file_loads_and_runs():
    custom = load_suite(EXAMPLE)
    assert custom.splits == ('my_tasks',)
    assert set(custom.families) == set(TASK_FAMILIES)
    seed = custom.seeds('my_tasks', 'eval', 1)[0]
    task = custom.sample_task('put', 'my_tasks', seed)
    assert task.instruction == 'drop the red cube into the blue bowl'
    assert (task.target, task.destination, task.num_distractors) == ('red block', 'blue bowl', 3)
    assert custom.sample_task('pick', 'my_tasks', seed).num_distractors == 1
    env = ManipulationEnv(EnvConfig(camera=CameraConfig(width=32, height=32)))
    try:
        assert run_expert_episode(env, task, seed).success
    finally:
        env.close()


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / 'tasks.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


def test_minimal_user_file_gets_default_eval_seeds(tmp_path):
    path = write(tmp_path, {'splits': {
        'a': {'tasks': [{'family': 'reach', 'instruction': 'poke red', 'target': 'red block'}]},
        'b': {'tasks': [{'family': 'pick', 'instruction': 'lift it', 'target': 'red block'}]}}})
    custom = load_suite(path)
    assert not set(custom.seeds('a', 'eval', 100)) & set(custom.seeds('b', 'eval', 100))
    with pytest.raises(ValueError, match='no .push. task'):
        custom.sample_task('push', 'a', 0)


@pytest.mark.parametrize('data, message', [
    ({'splits': {'a': {'tasks': [{'family': 'fly', 'instruction': 'x', 'target': 'red block'}]}}},
     'unknown task family'),
    ({'splits': {'a': {'tasks': [{'family': 'put', 'instruction': 'x', 'target': 'red block',
                                  'destination': 'red block'}]}}}, 'destination'),
    ({'splits': {'a': {'tasks': [{'family': 'pick', 'instruction': 'x',
                                  'target': 'pink block'}]}}}, 'colour'),
    ({'splits': {'a': {'tasks': [{'family': 'push', 'instruction': 'x', 'target': 'red block',
                                  'direction': 'up'}]}}}, 'direction'),
    ({'families': {'pick': {'templates': {'train': ['lift the {thing}']}}},
      'splits': {'a': {}}}, 'placeholder'),
    ({'families': {'put': {'templates': {'train': ['put the {target} away']}}},
      'splits': {'a': {}}}, 'lacks'),
    ({'families': {'pick': {'templates': {'train': ['lift the {target}']}}},
      'splits': {'a': {}, 'b': {}}, 'seeds': {'a': {'eval': [0, 10]}, 'b': {'val': [5, 20]}}},
     'overlap'),
    ({'families': {'pick': {'templates': {'train': ['lift the {target}']}}},
      'splits': {'a': {'words': 'fancy'}}}, 'words'),
    ({'splits': {}}, 'splits'),
    ({'bogus': 1, 'splits': {'a': {}}}, 'unknown top-level'),
])
def test_malformed_files_are_rejected_with_a_reason(tmp_path, data, message):
    with pytest.raises(SuiteError, match=message) as info:
        load_suite(write(tmp_path, data))
    assert str(tmp_path / 'tasks.yaml') in str(info.value)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(SuiteError, match='not found'):
        load_suite(tmp_path / 'nope.yaml')
    broken = tmp_path / 'broken.yaml'
    broken.write_text('splits: [unclosed')
    with pytest.raises(SuiteError, match='YAML'):
        load_suite(broken)
