"""Action chunks executed closed loop: temporal ensembling, and fine-tuning to a new chunk size."""
import numpy as np
import pytest
import torch

from vla_align.model.checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    start_from_checkpoint,
)
from vla_align.model.chunking import ChunkExecution, ChunkRunner, TemporalEnsembler
from vla_align.model.config import PolicyConfig
from vla_align.model.policy import Policy
from vla_align.model.vla import VLAModel
from vla_align.ros.sources import PolicySource

PERIOD = 0.1


def chunk_from(values) -> np.ndarray:
    """A (K, 7) chunk whose every column holds ``values`` (one per chunk step)."""
    return np.repeat(np.asarray(values, np.float32)[:, None], 7, axis=1)


def test_predictions_that_agree_give_the_action_they_agree_on():
    # Every chunk predicts the value s for absolute step s: the ensemble must return s.
    ensemble = TemporalEnsembler(4, PERIOD, ChunkExecution(mode='ensemble', decay=0.7))
    for step in range(8):
        action = ensemble(chunk_from(np.arange(step, step + 4)), step * PERIOD)
        np.testing.assert_allclose(action, step, atol=1e-5)
    assert ensemble.pending == 4


def test_each_step_averages_every_earlier_prediction_for_it_with_age_weights():
    decay = 0.5
    ensemble = TemporalEnsembler(3, PERIOD, ChunkExecution(mode='ensemble', decay=decay))
    ensemble(chunk_from([1.0, 2.0, 3.0]), 0.0)
    ensemble(chunk_from([10.0, 20.0, 30.0]), PERIOD)
    action = ensemble(chunk_from([100.0, 200.0, 300.0]), 2 * PERIOD)
    # Step 2 was predicted 2 steps ago (3.0), 1 step ago (20.0) and now (100.0).
    weights = np.exp(decay * np.array([2.0, 1.0, 0.0]))
    expected = (weights * [3.0, 20.0, 100.0]).sum() / weights.sum()
    np.testing.assert_allclose(action, expected, rtol=1e-6)


def test_a_skipped_step_leaves_the_predictions_where_they_belong_in_time():
    ensemble = TemporalEnsembler(3, PERIOD, ChunkExecution(mode='ensemble', decay=0.0))
    ensemble(chunk_from([1.0, 2.0, 3.0]), 0.0)
    # No step at t=0.1 (a hold, a dropped frame); the chunk of t=0 still says 3.0 for t=0.2.
    action = ensemble(chunk_from([7.0, 8.0, 9.0]), 2 * PERIOD + 0.004)  # a little jitter
    np.testing.assert_allclose(action, (3.0 + 7.0) / 2)
    # After K periods without a step nothing earlier is left.
    np.testing.assert_allclose(ensemble(chunk_from([5.0, 0.0, 0.0]), 6 * PERIOD), 5.0)
    assert ensemble.pending == 1


def test_first_mode_and_a_clock_that_goes_back_use_the_newest_chunk_alone():
    first = TemporalEnsembler(3, PERIOD, ChunkExecution(mode='first'))
    first(chunk_from([1.0, 2.0, 3.0]), 0.0)
    np.testing.assert_allclose(first(chunk_from([7.0, 8.0, 9.0]), PERIOD), 7.0)
    ensemble = TemporalEnsembler(3, PERIOD, ChunkExecution(mode='ensemble'))
    ensemble(chunk_from([1.0, 2.0, 3.0]), 5.0)
    np.testing.assert_allclose(ensemble(chunk_from([7.0, 8.0, 9.0]), 1.0), 7.0)
    with pytest.raises(ValueError, match='mode'):
        ChunkExecution(mode='open_loop')
    with pytest.raises(ValueError, match=r'\(3, 7\) chunk'):
        ensemble(np.zeros((2, 7)), 2.0)


@pytest.fixture(scope='module')
def chunked_policy() -> Policy:
    torch.manual_seed(0)
    return Policy.from_config(PolicyConfig.tiny(chunk_size=3, use_proprio=False), device='cpu',
                              precision='fp32')


def frame(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)


def test_the_runner_executes_the_ensemble_of_the_policys_own_chunks(chunked_policy):
    text = 'pick up the red cube'
    runner = ChunkRunner(chunked_policy, 10.0, ChunkExecution(mode='ensemble', decay=0.0))
    runner.encode_instruction(text)
    first = runner.step(frame(1), text, None, 0.0)
    alone = chunked_policy.step(frame(1), text)
    assert first.chunk.shape == (3, 7)
    np.testing.assert_allclose(first.action, alone.action, atol=1e-6)  # nothing earlier yet
    second = runner.step(frame(2), text, None, 0.1)
    new = chunked_policy.step(frame(2), text)
    mean = (alone.chunk[1] + new.chunk[0]) / 2
    np.testing.assert_allclose(second.action[:6], mean[:6], atol=1e-5)
    assert second.gripper_prob == pytest.approx(mean[6], abs=1e-6)
    assert not np.allclose(second.action[:6], new.action[:6], atol=1e-4)
    runner.encode_instruction('push the blue cube to the left')  # a new task: nothing carries
    assert runner.ensembler.pending == 0
    default = ChunkRunner(chunked_policy, 10.0)  # the default executes each chunk's first step
    default.encode_instruction(text)
    for step in (1, 2):
        np.testing.assert_allclose(default.step(frame(step), text, None, step / 10).action,
                                   chunked_policy.step(frame(step), text).action, atol=1e-6)


def test_a_one_step_model_runs_exactly_as_policy_step():
    torch.manual_seed(1)
    policy = Policy.from_config(PolicyConfig.tiny(use_proprio=False), device='cpu',
                                precision='fp32')
    runner = ChunkRunner(policy, 10.0)
    for step in range(3):
        np.testing.assert_array_equal(runner.step(frame(step), 'reach', None, step / 10).action,
                                      policy.step(frame(step), 'reach').action)


def test_the_node_source_places_steps_by_frame_time_or_one_period_apart_in_lockstep(
        chunked_policy):
    text = 'stack the green cube on the red cube'
    ensemble = ChunkExecution(mode='ensemble', decay=0.0)
    timed = PolicySource(chunked_policy, control_hz=10.0, execution=ensemble)
    lockstep = PolicySource(chunked_policy, control_hz=10.0,
                            execution=ensemble, lockstep=True)
    for source in (timed, lockstep):
        source.encode_instruction(text)
        source.frame_time = 100.0
        source.step(frame(1), text, None)
        source.frame_time = 100.5  # five periods later: the first chunk has expired
        source.step(frame(2), text, None)
    alone = chunked_policy.step(frame(2), text).action
    assert timed.runner.ensembler.pending == 1
    assert lockstep.runner.ensembler.pending == 2  # the second step: one period after the first
    timed.restart_task()
    timed.frame_time = 100.6
    out = timed.step(frame(2), text, None)
    np.testing.assert_allclose(out.action, alone, atol=1e-6)  # restarted: nothing earlier
    assert timed.runner.ensembler.pending == 1


def saved_tiny_checkpoint(path, seed: int):
    """A tiny model saved to ``path`` and loaded back (the start of a fine-tune)."""
    torch.manual_seed(seed)
    config = PolicyConfig.tiny()
    save_checkpoint(path, VLAModel(config), Policy.from_config(config).stats, {})
    return config, load_checkpoint(path)


def assert_fresh_only_where_the_shape_changed(model, fresh, checkpoint) -> None:
    source = checkpoint.model.trainable_state_dict()
    for name, value in model.trainable_state_dict().items():
        if name in fresh:
            assert value.shape != source[name].shape, name
        else:
            assert torch.equal(value, source[name]), name


def test_a_fine_tune_may_change_the_chunk_size_and_keeps_every_other_weight(tmp_path):
    config, checkpoint = saved_tiny_checkpoint(tmp_path / 'one', seed=2)
    model, fresh = start_from_checkpoint(checkpoint, config.replace(chunk_size=4))
    assert model.config.chunk_size == 4 and fresh
    assert_fresh_only_where_the_shape_changed(model, fresh, checkpoint)
    assert {name.split('.')[0] for name in fresh} <= {'action_head', 'align'}
    same, none_fresh = start_from_checkpoint(checkpoint, config)
    assert same is checkpoint.model and none_fresh == []
    with pytest.raises(CheckpointError, match='differs from the requested one in d_model'):
        start_from_checkpoint(checkpoint, config.replace(d_model=64, chunk_size=4))


def test_a_fine_tune_may_swap_the_language_model_and_keeps_the_vision_and_action_weights(
        tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel

    from vla_align.model.language import default_language_model_dir

    narrow = tmp_path / 'narrow_lm'  # another local Hugging Face folder, 48-d instead of 384
    BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(narrow)
    AutoTokenizer.from_pretrained(default_language_model_dir()).save_pretrained(narrow)
    config, checkpoint = saved_tiny_checkpoint(tmp_path / 'one', seed=4)
    model, fresh = start_from_checkpoint(checkpoint, config.replace(language_model=str(narrow)))
    assert model.language.hidden_size == 48 and fresh
    assert_fresh_only_where_the_shape_changed(model, fresh, checkpoint)
    copied = set(model.trainable_state_dict()) - set(fresh)
    assert any(name.startswith('vision.') for name in copied)
    assert any(name.startswith('action_head.') for name in copied)
    step = Policy(model, checkpoint.stats).step(np.zeros((32, 32, 3), np.uint8), 'pick the cube',
                                                np.r_[0.5, 0.0, 0.2, 0, 0, 0, 1, 0.04])
    assert np.isfinite(step.action).all()


def test_a_fine_tune_may_turn_an_alignment_term_off_and_copies_every_weight(tmp_path):
    torch.manual_seed(3)
    config = PolicyConfig.tiny()
    save_checkpoint(tmp_path / 'one', VLAModel(config), Policy.from_config(config).stats, {})
    checkpoint = load_checkpoint(tmp_path / 'one')
    ablation = config.replace(alpha_vl=0.0, beta_va=0.0, gamma_la=0.0)
    model, fresh = start_from_checkpoint(checkpoint, ablation)
    assert fresh == [] and model.config.alpha_vl == 0.0 and model is not checkpoint.model
    source = checkpoint.model.trainable_state_dict()
    assert all(torch.equal(value, source[name])
               for name, value in model.trainable_state_dict().items())
