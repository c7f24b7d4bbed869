"""The inference API: inputs checked, outputs well-formed, checkpoints exact and guarded."""
import json

import numpy as np
import pytest
from safetensors import safe_open
import torch

from vla_align.data.normalization import NormalizationStats
from vla_align.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError
from vla_align.model.config import PolicyConfig
from vla_align.model.policy import Policy
from vla_align.sim.types import STATE_DIM

INSTRUCTIONS = ['pick up the red block', 'push the blue block to the left',
                'put the green block in the yellow bowl']


@pytest.fixture(scope='module')
def policy() -> Policy:
    torch.manual_seed(0)
    policy = Policy.from_config(PolicyConfig.tiny(binary_gripper=False), device='cpu')
    rng = np.random.default_rng(0)
    # Non-trivial statistics, so a lost or altered normalisation file changes the actions.
    policy.stats = NormalizationStats.from_data(rng.normal(0.0, 0.02, (50, 7)),
                                                rng.normal(0.5, 0.1, (50, STATE_DIM)))
    return policy


@pytest.fixture
def frames() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (rng.integers(0, 256, (3, 128, 128, 3), dtype=np.uint8),
            rng.normal(0.5, 0.1, (3, STATE_DIM)).astype(np.float32))


def test_step_returns_a_denormalised_action_and_a_cosine(policy, frames):
    images, states = frames
    step = policy.step(images[0], INSTRUCTIONS[0], states[0])
    assert step.action.shape == (7,) and step.action.dtype == np.float32
    assert np.all(np.isfinite(step.action))
    assert 0.0 <= step.action[6] <= 1.0 and step.action[6] == pytest.approx(step.gripper_prob)
    assert -1.0 <= step.alignment <= 1.0
    np.testing.assert_array_equal(policy.act(images[0], INSTRUCTIONS[0], states[0]),
                                  step.action)


def test_binary_gripper_snaps_to_open_or_closed(frames):
    images, states = frames
    snapping = Policy.from_config(PolicyConfig.tiny(), device='cpu')
    for step in snapping.step_batch(images, INSTRUCTIONS, states):
        assert step.action[6] == float(step.gripper_prob >= 0.5)


def test_step_batch_matches_single_steps(policy, frames):
    images, states = frames
    batch = policy.step_batch(images, INSTRUCTIONS, states)
    for i, step in enumerate(batch):
        single = policy.step(images[i], INSTRUCTIONS[i], states[i])
        np.testing.assert_allclose(step.action, single.action, rtol=1e-4, atol=1e-6)
        assert step.alignment == pytest.approx(single.alignment, abs=1e-5)


def test_full_precision_agrees_with_the_default_precision(policy, frames):
    images, states = frames
    exact = Policy(policy.model, policy.stats, 'cpu', precision='fp32')
    assert exact.autocast_dtype is None
    for fast, slow in zip(policy.step_batch(images, INSTRUCTIONS, states),
                          exact.step_batch(images, INSTRUCTIONS, states), strict=True):
        np.testing.assert_allclose(fast.action[:6], slow.action[:6],
                                   atol=0.05 * policy.stats.action_std.max())
        assert fast.gripper_prob == pytest.approx(slow.gripper_prob, abs=0.02)
        assert fast.alignment == pytest.approx(slow.alignment, abs=0.05)
    with pytest.raises(ValueError, match='precision'):
        Policy(policy.model, policy.stats, 'cpu', precision='int8')


def test_any_image_size_is_accepted(policy, frames):
    _, states = frames
    rng = np.random.default_rng(2)
    for shape in ((480, 640, 3), (32, 32, 3), (17, 23, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        assert np.all(np.isfinite(policy.act(image, INSTRUCTIONS[0], states[0])))


def test_flipped_and_read_only_frames_are_accepted(policy, frames, recwarn):
    images, states = frames
    bgr = np.ascontiguousarray(images[0][..., ::-1])
    read_only = images[0].copy()
    read_only.setflags(write=False)
    reference = policy.act(images[0], INSTRUCTIONS[0], states[0])
    np.testing.assert_array_equal(policy.act(bgr[..., ::-1], INSTRUCTIONS[0], states[0]),
                                  reference)
    np.testing.assert_array_equal(policy.act(read_only, INSTRUCTIONS[0], states[0]), reference)
    assert not [w for w in recwarn if 'writable' in str(w.message)]


@pytest.mark.parametrize('image, message', [
    (np.zeros((64, 64, 3), np.float32), 'uint8'),
    (np.zeros((64, 64), np.uint8), r'\(H, W, 3\)'),
    (np.zeros((64, 64, 4), np.uint8), r'\(H, W, 3\)'),
    ('not an image', r'\(H, W, 3\)'),
])
def test_bad_images_are_refused_with_a_clear_message(policy, frames, image, message):
    with pytest.raises(ValueError, match=message):
        policy.step(image, INSTRUCTIONS[0], frames[1][0])


def test_bad_instructions_and_states_are_refused(policy, frames):
    images, states = frames
    with pytest.raises(ValueError, match='non-empty string'):
        policy.step(images[0], '', states[0])
    with pytest.raises(ValueError, match='pass state'):
        policy.step(images[0], INSTRUCTIONS[0])
    with pytest.raises(ValueError, match=f'{STATE_DIM} floats'):
        policy.step(images[0], INSTRUCTIONS[0], np.zeros(3))
    with pytest.raises(ValueError, match='non-finite'):
        policy.step(images[0], INSTRUCTIONS[0], np.full(STATE_DIM, np.nan))
    with pytest.raises(ValueError, match='3 images but 2 instructions'):
        policy.step_batch(images, INSTRUCTIONS[:2], states)


def test_cached_instruction_skips_the_language_model(policy, frames, monkeypatch):
    images, states = frames
    policy.encode_instruction('lift the orange block')

    def fail(*args, **kwargs):
        raise AssertionError('the language model ran for a cached instruction')

    monkeypatch.setattr(policy.model.language.model, 'forward', fail)
    policy.step(images[0], 'lift the orange block', states[0])


def test_attention_map_is_a_distribution_over_the_image_grid(policy, frames):
    heat = policy.attention_maps(frames[0][0], INSTRUCTIONS[1])
    grid = (policy.model.vision.grid_h, policy.model.vision.grid_w)
    assert heat.shape == grid and heat.dtype == np.float32
    assert np.all(heat >= 0) and heat.sum() == pytest.approx(1.0, abs=1e-5)


def test_embeddings_are_unit_vectors_consistent_with_the_step_alignment(policy, frames):
    images, states = frames
    rng = np.random.default_rng(2)
    actions = rng.normal(0.0, 0.01, (3, 7)).astype(np.float32)
    embedded = policy.embed(images, INSTRUCTIONS, actions, states)
    steps = policy.step_batch(images, INSTRUCTIONS, states)
    for name in ('vision', 'language', 'action'):
        vectors = getattr(embedded, name)
        assert vectors.shape == (3, policy.config.align_dim)
        assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-4)
    # The V-L cosine of the step is the dot product of the two embeddings.
    cosine = np.sum(embedded.vision * embedded.language, axis=1)
    assert cosine == pytest.approx([s.alignment for s in steps], abs=1e-4)
    # The action embedding depends on the action, not on the image.
    other = policy.embed(images[::-1].copy(), INSTRUCTIONS, actions, states)
    assert other.action == pytest.approx(embedded.action, abs=1e-5)
    moved = policy.embed(images, INSTRUCTIONS, actions + 0.02, states)
    assert not np.allclose(moved.action, embedded.action, atol=1e-3)
    with pytest.raises(ValueError, match='actions must be finite'):
        policy.embed(images, INSTRUCTIONS, np.full((3, 7), np.nan, np.float32), states)


# -- checkpoints --------------------------------------------------------------------------------

def test_checkpoint_round_trip_reproduces_outputs_exactly(policy, frames, tmp_path):
    images, states = frames
    before = policy.step_batch(images, INSTRUCTIONS, states)
    policy.save(tmp_path / 'ckpt', metadata={'note': 'round trip'})
    loaded = Policy.from_checkpoint(tmp_path / 'ckpt', device='cpu')
    after = loaded.step_batch(images, INSTRUCTIONS, states)
    assert loaded.config == policy.config
    assert loaded.metadata['note'] == 'round trip'
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a.action, b.action)
        assert a.alignment == b.alignment and a.gripper_prob == b.gripper_prob


def test_checkpoint_leaves_out_the_frozen_language_model(policy, tmp_path):
    policy.save(tmp_path / 'ckpt')
    with safe_open(str(tmp_path / 'ckpt' / WEIGHTS_FILE), 'pt') as weights:
        keys = list(weights.keys())
    assert keys and not any(k.startswith('language.model.') for k in keys)


def test_saving_over_a_checkpoint_replaces_it_and_leaves_no_temporaries(policy, tmp_path):
    policy.save(tmp_path / 'ckpt', metadata={'version': 1})
    policy.save(tmp_path / 'ckpt', metadata={'version': 2})
    assert [p.name for p in tmp_path.iterdir()] == ['ckpt']
    assert json.loads((tmp_path / 'ckpt' / 'metadata.json').read_text())['version'] == 2


def test_missing_checkpoint_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match='does not exist'):
        Policy.from_checkpoint(tmp_path / 'nowhere')


def test_incomplete_checkpoint_raises_checkpoint_error(policy, tmp_path):
    policy.save(tmp_path / 'ckpt')
    (tmp_path / 'ckpt' / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match='config.json is missing'):
        Policy.from_checkpoint(tmp_path / 'ckpt')


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_corrupt_weights_raise_checkpoint_error(policy, tmp_path, damage):
    policy.save(tmp_path / 'ckpt')
    weights = tmp_path / 'ckpt' / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(b'\x00garbage' * 10 if damage == 'garbage' else data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='corrupt'):
        Policy.from_checkpoint(tmp_path / 'ckpt')


def test_weights_of_another_shape_raise_checkpoint_error(policy, tmp_path):
    policy.save(tmp_path / 'ckpt')
    config = json.loads((tmp_path / 'ckpt' / CONFIG_FILE).read_text())
    config['d_model'] = 64
    (tmp_path / 'ckpt' / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match='wrong shapes'):
        Policy.from_checkpoint(tmp_path / 'ckpt')


def test_a_bad_config_file_raises_checkpoint_error(policy, tmp_path):
    policy.save(tmp_path / 'ckpt')
    (tmp_path / 'ckpt' / CONFIG_FILE).write_text('{"d_model": "big"')
    with pytest.raises(CheckpointError, match='not JSON'):
        Policy.from_checkpoint(tmp_path / 'ckpt')
