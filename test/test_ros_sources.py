"""Action sources of the policy node: Policy adapter, expert relay, start-up errors."""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from vla_align.ros.params import StartupError
from vla_align.ros.sources import (
    ExpertRelaySource,
    PolicySource,
    SourceNotReady,
    load_policy_source,
)


@dataclass
class FakeConfig:
    use_proprio: bool


class FakePolicy:
    def __init__(self, use_proprio):
        self.config = FakeConfig(use_proprio)
        self.encoded = []

    def encode_instruction(self, text):
        self.encoded.append(text)

    def step(self, image, instruction, state=None):
        return type('Step', (), {'action': [0.1] * 7, 'alignment': np.float32(0.25)})()


def test_policy_source_passes_through_and_reports_its_need_for_state():
    policy = FakePolicy(use_proprio=True)
    source = PolicySource(policy)
    source.encode_instruction('pick')
    out = source.step(np.zeros((4, 4, 3), np.uint8), 'pick', None)
    assert policy.encoded == ['pick'] and source.needs_state
    assert out.action.dtype == np.float32 and out.alignment == pytest.approx(0.25)
    assert not PolicySource(FakePolicy(use_proprio=False)).needs_state


class FamiliarPolicy(FakePolicy):
    """A policy whose training instructions were about blocks."""

    def __init__(self):
        super().__init__(use_proprio=False)
        self.references_encoded = 0

    def reference_embeddings(self):
        self.references_encoded += 1

    def instruction_familiarity(self, text):
        return 0.9 if 'block' in text else 0.1


def test_a_calibrated_source_judges_the_instruction_as_well_as_the_scene():
    calibration = {'threshold': 0.0, 'familiarity': {'vl_anchor': 0.0, 'anchor': 0.5,
                                                     'scale': 1.0}}
    policy = FamiliarPolicy()
    source = PolicySource(policy, grounding=calibration)
    assert policy.references_encoded == 1  # at start-up, not at the first instruction
    image = np.zeros((4, 4, 3), np.uint8)
    source.encode_instruction('pick the red block')
    familiar = source.step(image, 'pick the red block', None)
    assert familiar.alignment == pytest.approx(0.25) and familiar.grounding == pytest.approx(0.25)
    source.encode_instruction('tell me a joke')  # the scene matches (0.25), the request does not
    chat = source.step(image, 'tell me a joke', None)
    assert chat.alignment == pytest.approx(0.25) and chat.grounding == pytest.approx(-0.4)
    uncalibrated = PolicySource(FamiliarPolicy(), grounding={'threshold': 0.1})
    uncalibrated.encode_instruction('tell me a joke')
    assert uncalibrated.step(image, 'tell me a joke', None).grounding is None


class SceneOfRedPolicy(FamiliarPolicy):
    """Sees a frame whose vision embedding matches 'red' and not 'green' or 'blue'."""

    EMBEDDING = {'red': [1.0, 0.0], 'green': [0.0, 1.0], 'blue': [0.0, -1.0]}

    def __init__(self):
        super().__init__()
        self.language_passes = 0

    def language_embeddings(self, texts):
        self.language_passes += 1
        return np.array([next(v for k, v in self.EMBEDDING.items() if k in t) for t in texts],
                        np.float32)

    def step(self, image, instruction, state=None):
        out = super().step(image, instruction, state)
        out.vision_embedding = np.array([0.5, 0.0], np.float32)
        return out


def test_a_calibrated_source_flags_a_colour_that_is_not_in_the_frame():
    """With a contrast block the score also compares the request with its colours swapped:
    'green' scores 0.5 below 'red' in this frame and is flagged although its raw V-L score
    and its familiarity are those of the red request. The swapped requests are encoded once
    per instruction, not per step."""
    calibration = {'threshold': 0.0,
                   'familiarity': {'vl_anchor': 0.0, 'anchor': 0.5, 'scale': 1.0},
                   'contrast': {'vl_anchor': 0.0, 'anchor': 0.0, 'scale': 1.0},
                   'colours': {'red': ['red'], 'green': ['green'], 'blue': ['blue']}}
    policy = SceneOfRedPolicy()
    source = PolicySource(policy, grounding=calibration)
    image = np.zeros((4, 4, 3), np.uint8)
    source.encode_instruction('pick the red block')
    red = [source.step(image, 'pick the red block', None) for _ in range(3)][-1]
    assert policy.language_passes == 1
    assert red.grounding == pytest.approx(0.25)  # contrast 0.5 - mean(0, 0) above V-L 0.25
    source.encode_instruction('pick the green block')
    green = source.step(image, 'pick the green block', None)
    assert green.alignment == pytest.approx(0.25)
    assert green.grounding == pytest.approx(0.0 - 0.25)  # 0 - mean(0.5, 0) = -0.25


def test_expert_relay_returns_only_fresh_suggestions():
    relay = ExpertRelaySource(max_age_s=0.5)
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(SourceNotReady, match='no expert suggestion'):
        relay.step(image, 'x', None)
    relay.offer(np.arange(7, dtype=np.float32), received_at=10.0)
    relay.now = 10.2
    out = relay.step(image, 'x', None)
    assert np.array_equal(out.action, np.arange(7)) and out.alignment is None
    relay.now = 10.6
    with pytest.raises(SourceNotReady, match='older than 0.5 s'):
        relay.step(image, 'x', None)


@pytest.mark.parametrize('kwargs,message', [
    ({'kind': 'checkpoint'}, "needs the 'checkpoint' parameter"),
    ({'kind': 'checkpoint', 'checkpoint': '/no/such/ckpt'}, 'does not exist'),
    ({'kind': 'random', 'random_config': 'huge'}, 'unknown random_config'),
    ({'kind': 'oracle'}, 'unknown model source'),
])
def test_unusable_model_sources_are_startup_errors(kwargs, message):
    with pytest.raises(StartupError, match=message):
        load_policy_source(**kwargs)


def test_an_unreadable_checkpoint_is_a_startup_error(tmp_path):
    (tmp_path / 'config.json').write_text('{not json')
    with pytest.raises(StartupError, match='cannot load checkpoint'):
        load_policy_source('checkpoint', str(tmp_path), device='cpu', torch_threads=0)


def test_a_relative_checkpoint_path_falls_back_to_the_package_share_directory(tmp_path,
                                                                             monkeypatch):
    from vla_align.ros import sources

    shipped = tmp_path / 'share' / 'checkpoints' / 'mine'
    shipped.mkdir(parents=True)
    monkeypatch.setattr(sources, 'share_path', lambda *parts: tmp_path.joinpath('share', *parts))
    monkeypatch.chdir(tmp_path)
    assert sources.resolve_checkpoint_path('checkpoints/mine') == shipped
    local = tmp_path / 'checkpoints' / 'mine'
    local.mkdir(parents=True)
    assert sources.resolve_checkpoint_path('checkpoints/mine') == Path('checkpoints/mine')
    assert sources.resolve_checkpoint_path('missing/ckpt') == Path('missing/ckpt')
