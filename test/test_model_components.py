"""Model building blocks: config, contrastive losses, padding masks, language cache, vision."""
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from vla_align.model.action_head import BinnedActionHead
from vla_align.model.config import ConfigError, PolicyConfig
from vla_align.model.fusion import CrossModalFusion
from vla_align.model.language import LanguageEncoder, TextEmbedding
from vla_align.model.loss import InfoNCELoss, SigLipLoss
from vla_align.model.vision import VisionEncoder
from vla_align.model.vla import ActionTargets, VLAModel
from vla_align.paths import share_path
from vla_align.sim.types import STATE_DIM


@pytest.fixture(scope='module')
def tiny_model() -> VLAModel:
    torch.manual_seed(0)
    return VLAModel(PolicyConfig.tiny()).eval()


# -- config -------------------------------------------------------------------------------------

def test_config_round_trips_through_yaml_and_json(tmp_path):
    config = PolicyConfig.tiny(alignment_loss='siglip', chunk_size=4)
    for name in ('c.yaml', 'c.json'):
        config.save(tmp_path / name)
        assert PolicyConfig.from_file(tmp_path / name) == config


def test_shipped_model_yaml_matches_the_defaults():
    assert PolicyConfig.from_file(share_path('config', 'model_default.yaml')) == PolicyConfig()


@pytest.mark.parametrize('changes, message', [
    ({'action_head': 'diffusion'}, 'action_head'),
    ({'d_model': 30, 'fusion_heads': 4}, 'multiple of fusion_heads'),
    ({'vision_stage': 5}, 'vision_stage'),
    ({'alpha_vl': -1.0}, 'alpha_vl'),
])
def test_config_refuses_bad_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        PolicyConfig(**changes)


def test_config_refuses_unknown_keys():
    with pytest.raises(ConfigError, match='unknown PolicyConfig keys'):
        PolicyConfig.from_dict({'d_modle': 64})


# -- contrastive losses and false negatives -----------------------------------------------------

def _pairs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (F.normalize(torch.randn(4, 8, generator=gen), dim=-1),
            F.normalize(torch.randn(4, 8, generator=gen), dim=-1))


# Samples 0 and 2 share an instruction: their cross pair is a false negative.
GROUPS = torch.tensor([0, 1, 0, 2])
EXCLUDED = {(0, 2), (2, 0)}


def test_infonce_leaves_same_instruction_pairs_out_of_the_denominator():
    a, b = _pairs()
    loss = InfoNCELoss()
    logits = math.exp(math.log(1 / 0.07)) * a @ b.T

    def direction(mat: torch.Tensor) -> torch.Tensor:
        rows = []
        for i in range(4):
            keep = [j for j in range(4) if (i, j) not in EXCLUDED]
            rows.append(torch.logsumexp(mat[i, keep], 0) - mat[i, i])
        return torch.stack(rows).mean()

    expected = 0.5 * (direction(logits) + direction(logits.T))
    assert torch.allclose(loss(a, b, GROUPS), expected, atol=1e-5)
    assert not torch.allclose(loss(a, b), expected, atol=1e-3)  # the naive loss differs


def test_siglip_gives_same_instruction_pairs_zero_weight():
    a, b = _pairs(1)
    loss = SigLipLoss()
    with torch.no_grad():
        loss.logit_bias.fill_(0.0)  # at init (-10) negatives barely contribute: make them count
    logits = 10.0 * a @ b.T
    terms = [F.logsigmoid(logits[i, j] * (1.0 if i == j else -1.0))
             for i in range(4) for j in range(4) if (i, j) not in EXCLUDED]
    expected = -torch.stack(terms).sum() / 4
    assert torch.allclose(loss(a, b, GROUPS), expected, atol=1e-5)
    assert not torch.allclose(loss(a, b), expected, atol=1e-4)


def test_infonce_temperature_is_learnable_and_clamped():
    loss = InfoNCELoss()
    a, b = _pairs()
    loss(a, b).backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad != 0
    with torch.no_grad():
        loss.logit_scale.fill_(10.0)  # exp(10) is far above the clamp at 100
    logits = 100.0 * a @ b.T
    labels = torch.arange(4)
    expected = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    assert torch.allclose(loss(a, b), expected, atol=1e-5)


# -- padding masks ------------------------------------------------------------------------------

def test_fusion_output_ignores_padded_word_tokens():
    torch.manual_seed(0)
    fusion = CrossModalFusion(32, 4, 2, 2.0, 0.0).eval()
    vision, words = torch.randn(2, 9, 32), torch.randn(2, 5, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    garbage = words.clone()
    garbage[0, 3:] = 1e3 * torch.randn(2, 32)
    clean, noisy = fusion(vision, words, mask), fusion(vision, garbage, mask)
    assert torch.allclose(clean.vision, noisy.vision, atol=1e-5)
    assert torch.allclose(clean.words[mask], noisy.words[mask], atol=1e-5)
    unmasked = fusion(vision, garbage, torch.ones_like(mask))
    assert not torch.allclose(unmasked.vision[0], clean.vision[0], atol=1e-2)


def test_model_output_does_not_depend_on_padding_length(tiny_model):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 32, 32, generator=gen)
    state = torch.randn(2, STATE_DIM, generator=gen)
    short = 'push the red block'
    pair = tiny_model.encode_text([short, 'slowly push the small shiny red block all the way '
                                          'to the far left edge of the table'])
    alone = tiny_model.encode_text([short])
    assert pair.tokens.shape[1] > alone.tokens.shape[1] and not pair.mask[0].all()
    with torch.no_grad():
        out_pair = tiny_model(images, pair, state)
        out_alone = tiny_model(images[:1], alone, state[:1])
        tokens = pair.tokens.clone()
        tokens[~pair.mask] = 1e3  # anything in padded slots must be ignored
        out_garbage = tiny_model(images, TextEmbedding(tokens, pair.mask, pair.pooled), state)
    for out in (out_alone, out_garbage):
        assert torch.allclose(out.arm[0], out_pair.arm[0], atol=1e-5)
        assert torch.allclose(out.gripper_logit[0], out_pair.gripper_logit[0], atol=1e-5)
        assert torch.allclose(out.alignment[0], out_pair.alignment[0], atol=1e-5)


# -- language encoder -----------------------------------------------------------------------------

def test_frozen_language_encoder_runs_once_per_distinct_instruction(monkeypatch):
    encoder = LanguageEncoder(max_tokens=16)
    calls = []
    original = encoder.forward
    monkeypatch.setattr(encoder, 'forward', lambda texts: calls.append(list(texts))
                        or original(texts))
    first = encoder.encode(['pick up the red block', 'stack the blue block',
                            'pick up the red block'])
    again = encoder.encode(['pick up the red block'])
    assert calls == [['pick up the red block'], ['stack the blue block']]
    assert torch.equal(first.pooled[0], first.pooled[2])
    assert torch.equal(again.tokens[0], original(['pick up the red block']).tokens[0])
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_language_encoder_reports_an_unreadable_folder(tmp_path):
    with pytest.raises(ConfigError, match='no config.json'):
        LanguageEncoder(str(tmp_path))
    (tmp_path / 'config.json').write_text('{not json')
    with pytest.raises(ConfigError, match='cannot load language model'):
        LanguageEncoder(str(tmp_path))


def test_language_encoder_refuses_empty_instructions():
    with pytest.raises(ValueError, match='non-empty string'):
        LanguageEncoder(max_tokens=16).encode(['  '])


# -- vision ---------------------------------------------------------------------------------------

@pytest.mark.parametrize('stage, grid', [(2, 12), (3, 6)])
def test_vision_tokens_follow_the_trunk_cut(stage, grid):
    encoder = VisionEncoder(PolicyConfig(image_size=96, vision_stage=stage, d_model=64,
                                         fusion_heads=4))
    tokens = encoder(torch.rand(2, 3, 96, 96))
    assert tokens.shape == (2, grid * grid, 64)
    with pytest.raises(ValueError, match='96x96'):
        encoder(torch.rand(1, 3, 64, 64))


def test_vision_loads_local_pretrained_weights(tmp_path):
    reference = torchvision.models.resnet18()
    path = tmp_path / 'resnet18.pth'
    torch.save(reference.state_dict(), path)
    encoder = VisionEncoder(PolicyConfig.tiny(vision_weights=str(path)))
    assert torch.equal(encoder.trunk[0].weight, reference.conv1.weight)
    with pytest.raises(ConfigError, match='does not exist'):
        VisionEncoder(PolicyConfig.tiny(vision_weights=str(tmp_path / 'missing.pth')))


# -- action head ----------------------------------------------------------------------------------

def test_bins_head_decodes_to_the_bin_it_is_sure_of():
    head = BinnedActionHead(8, chunk_size=1, dropout=0.0, num_bins=5, bin_range=2.0)
    target = torch.tensor([[[-2.0, -1.0, 0.0, 1.0, 2.0, 1.0]]])  # exactly on bin centres
    bins = ((target + 2.0) / 1.0).long()
    logits = F.one_hot(bins, 5).float() * 50.0  # (1, 1, 6, 5) confident in the right bins
    with torch.no_grad():
        last = head.net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.cat([logits.flatten(), torch.zeros(1)]))
    pred = head(torch.randn(1, 8))
    assert torch.allclose(pred.arm, target, atol=1e-4)
    assert head.arm_loss(pred, target, torch.ones(1, 1, dtype=torch.bool)) < 1e-6


@pytest.mark.parametrize('changes', [
    {'alignment_loss': 'siglip'},
    {'action_head': 'bins', 'chunk_size': 3},
    {'use_proprio': False, 'fusion_layers': 0},
])
def test_model_variants_train(changes):
    torch.manual_seed(0)
    config = PolicyConfig.tiny(**changes)
    model = VLAModel(config)
    k = config.chunk_size
    targets = ActionTargets(actions=torch.cat([torch.randn(4, k, 6), torch.ones(4, k, 1)], -1),
                            valid=torch.ones(4, k, dtype=torch.bool),
                            instruction_ids=torch.tensor([0, 1, 0, 2]),
                            episode_ids=torch.arange(4))
    state = torch.randn(4, STATE_DIM) if config.use_proprio else None
    out = model(torch.rand(4, 3, 32, 32), ['a', 'b', 'a', 'c'], state, targets)
    assert out.arm.shape == (4, k, 6) and out.gripper_logit.shape == (4, k)
    assert set(out.losses) >= {'loss', 'arm', 'gripper', 'align_vl', 'align_va', 'align_la'}
    out.losses['loss'].backward()
    trunk_grad = model.vision.trunk[0].weight.grad
    assert torch.isfinite(out.losses['loss']) and trunk_grad is not None and trunk_grad.any()
