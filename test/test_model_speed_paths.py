"""The inference speed paths give the same actions as the plain fp32 path, within tolerance.

Covers what `Policy` does for speed (mixed precision over the trunk or the whole model,
channels-last, inference_mode, torch.compile with its eager fallback, pinned CUDA transfers) on
CPU, so the CUDA code paths stay correct on machines without a GPU.
"""
import copy
import logging

import numpy as np
import pytest
import torch

from vla_align.data.normalization import NormalizationStats
from vla_align.model.config import PolicyConfig
from vla_align.model.policy import Policy
from vla_align.paths import share_path
from vla_align.sim.types import STATE_DIM

INSTRUCTIONS = ['pick up the red block', 'push the blue block to the left of the green bowl',
                'stack it']


@pytest.fixture(scope='module')
def tiny() -> Policy:
    torch.manual_seed(0)
    policy = Policy.from_config(PolicyConfig.tiny(binary_gripper=False), device='cpu',
                                precision='fp32')
    rng = np.random.default_rng(0)
    policy.stats = NormalizationStats.from_data(rng.normal(0.0, 0.02, (50, 7)),
                                                rng.normal(0.5, 0.1, (50, STATE_DIM)))
    return policy


@pytest.fixture(scope='module')
def frames() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (rng.integers(0, 256, (3, 120, 160, 3), dtype=np.uint8),
            rng.normal(0.5, 0.1, (3, STATE_DIM)).astype(np.float32))


def sibling(policy: Policy, **options) -> Policy:
    """Another Policy over the same weights."""
    return Policy(policy.model, policy.stats, 'cpu', **options)


def assert_same_steps(fast, exact, stats: NormalizationStats, arm_tolerance: float = 0.05,
                      prob_tolerance: float = 0.02) -> None:
    for a, b in zip(fast, exact, strict=True):
        np.testing.assert_allclose(a.action[:6], b.action[:6],
                                   atol=arm_tolerance * float(stats.action_std.max()))
        assert a.gripper_prob == pytest.approx(b.gripper_prob, abs=prob_tolerance)
        assert a.alignment == pytest.approx(b.alignment, abs=0.05)


@pytest.mark.parametrize('scope', ['vision', 'model'])
def test_bf16_autocast_agrees_with_fp32_in_either_scope(tiny, frames, scope):
    # Forced on, whatever this CPU supports: 'model' is the CUDA default, 'vision' the CPU one.
    images, states = frames
    fast = sibling(tiny, precision='fp32')
    fast.autocast_dtype, fast.autocast_scope = torch.bfloat16, scope
    assert_same_steps(fast.step_batch(images, INSTRUCTIONS, states),
                      tiny.step_batch(images, INSTRUCTIONS, states), tiny.stats)


def test_trunk_autocast_changes_precision_of_the_trunk_only(tiny):
    vision = tiny.model.vision
    pixels = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        plain = vision(pixels)
        mixed = vision(pixels, trunk_autocast=torch.bfloat16)
        feats = vision.trunk(pixels)
    assert plain.dtype == mixed.dtype == torch.float32
    assert not torch.equal(plain, mixed)  # the trunk really ran in bf16 ...
    torch.testing.assert_close(mixed, plain, atol=0.05, rtol=0.05)  # ... to bf16 accuracy
    assert feats.dtype == torch.float32


def test_channels_last_and_contiguous_trunks_agree(tiny):
    vision = tiny.model.vision
    contiguous = copy.deepcopy(vision).to(memory_format=torch.contiguous_format)
    pixels = torch.rand(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(
            vision(pixels.contiguous(memory_format=torch.channels_last)),
            contiguous(pixels), atol=1e-5, rtol=1e-5)


def test_inference_mode_and_no_grad_give_identical_outputs(tiny, frames):
    images, states = frames
    pixels = tiny.prepare_pixels(images)
    text = tiny.model.encode_text(INSTRUCTIONS)
    state = tiny.prepare_state(states, 3)
    with torch.no_grad():
        a = tiny.run_model(pixels, text, state)
    with torch.inference_mode():
        b = tiny.run_model(pixels, text, state)
    torch.testing.assert_close(a.arm, b.arm, atol=0, rtol=0)
    torch.testing.assert_close(a.gripper_logit, b.gripper_logit, atol=0, rtol=0)


def check_compiled_policy(tiny: Policy, frames) -> None:
    images, states = frames
    compiled = sibling(tiny, precision='fp32', compile=True)
    for i, text in enumerate(INSTRUCTIONS):  # 3 token lengths: one dynamic compile
        got = compiled.step(images[i], text, states[i])
        assert compiled.compiled, 'torch.compile fell back to eager'
        assert_same_steps([got], [tiny.step(images[i], text, states[i])], tiny.stats,
                          arm_tolerance=1e-3, prob_tolerance=1e-4)


def test_compiled_policy_traces_and_takes_new_instruction_lengths(tiny, frames, monkeypatch):
    # Dynamo tracing and the dynamic instruction length, with the fast aot_eager backend.
    real_compile = torch.compile
    monkeypatch.setattr(torch, 'compile',
                        lambda model, **options: real_compile(model, backend='aot_eager'))
    check_compiled_policy(tiny, frames)


@pytest.mark.slow
def test_inductor_compiled_policy_matches_eager(tiny, frames):
    # The real thing: inductor with weight freezing (C++ codegen; ~1 min on 2 cores).
    check_compiled_policy(tiny, frames)


def test_a_failing_compile_falls_back_to_eager_with_a_warning(tiny, frames, caplog):
    images, states = frames

    class CompileFailure(torch._dynamo.exc.TorchDynamoException):
        pass

    def broken(*args, **kwargs):
        raise CompileFailure('no C++ compiler')

    policy = sibling(tiny, precision='fp32')
    policy._compiled = broken  # what compile=True would hold, failing on its first call
    with caplog.at_level(logging.WARNING):
        step = policy.step(images[0], INSTRUCTIONS[0], states[0])
    assert not policy.compiled
    assert 'no C++ compiler' in caplog.text
    np.testing.assert_array_equal(step.action,
                                  tiny.step(images[0], INSTRUCTIONS[0], states[0]).action)


def test_attention_maps_never_use_the_compiled_model(tiny, frames):
    images, states = frames
    policy = sibling(tiny, precision='fp32')

    def must_not_run(*args, **kwargs):
        raise AssertionError('compiled model used for attention maps')

    policy._compiled = must_not_run
    heat = policy.attention_maps(images[0], INSTRUCTIONS[0], states[0])
    assert heat.sum() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_cuda_path_matches_cpu(tiny, frames):
    images, states = frames
    gpu = Policy(copy.deepcopy(tiny.model), tiny.stats, 'cuda')  # bf16/fp16 trunk, pinned
    assert gpu.autocast_scope == 'vision' and gpu.autocast_dtype is not None
    assert_same_steps(gpu.step_batch(images, INSTRUCTIONS, states),
                      tiny.step_batch(images, INSTRUCTIONS, states), tiny.stats)
    gpu.autocast_scope = 'model'  # what mixed precision covered on CUDA before
    assert_same_steps(gpu.step_batch(images, INSTRUCTIONS, states),
                      tiny.step_batch(images, INSTRUCTIONS, states), tiny.stats)


def test_shipped_checkpoint_default_precision_matches_fp32_and_whole_model_autocast(frames):
    images, states = frames
    path = share_path('checkpoints', 'default')
    if not path.is_dir():
        pytest.skip('no shipped checkpoint in this checkout')
    default = Policy.from_checkpoint(path, device='cpu')
    exact = sibling(default, precision='fp32')
    whole = sibling(default, precision='fp32')
    whole.autocast_dtype, whole.autocast_scope = torch.bfloat16, 'model'  # the old CPU default
    reference = exact.step_batch(images, INSTRUCTIONS, states)
    assert_same_steps(default.step_batch(images, INSTRUCTIONS, states), reference,
                      default.stats)
    assert_same_steps(whole.step_batch(images, INSTRUCTIONS, states), reference, default.stats)
