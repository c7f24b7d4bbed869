"""Deployment metadata: what a checkpoint records so a node can refuse foreign conditions."""
import json
import os
from pathlib import Path
import re
import shutil
import subprocess

import numpy as np
import pytest

from vla_align.data.dataset import FrameCache
from vla_align.data.episode import Episode, TaskInfo
from vla_align.data.state import STATE_LABELS
from vla_align.model.checkpoint import load_checkpoint
from vla_align.model.config import ConfigError, PolicyConfig
from vla_align.model.deployment import (
    DeploymentInfo,
    compare_deployment,
    git_state,
    language_model_identity,
)
from vla_align.model.policy import Policy
from vla_align.train.config import DataConfig, OptimConfig, TrainConfig
from vla_align.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
HAS_GIT = shutil.which('git') is not None and (ROOT / '.git').exists()


# -- language model identity ------------------------------------------------------------------
@pytest.fixture()
def fake_model(tmp_path):
    folder = tmp_path / 'fake_lm'
    folder.mkdir()
    (folder / 'config.json').write_text('{"hidden_size": 8}\n')
    (folder / 'vocab.txt').write_text('[PAD]\nhello\n')
    (folder / 'model.safetensors').write_bytes(bytes(range(256)) * 4)
    (folder / 'README.md').write_text('a model\n')
    return folder


def identity(folder: Path) -> tuple[str, str]:
    return language_model_identity(PolicyConfig(language_model=str(folder)))


def test_hash_follows_the_weights_not_unrelated_files(fake_model):
    name, first = identity(fake_model)
    assert name == 'fake_lm' and re.fullmatch(r'[0-9a-f]{64}', first)
    (fake_model / 'README.md').write_text('another description, same model\n')
    (fake_model / 'notes.json').write_text('{}\n')
    assert identity(fake_model)[1] == first
    weights = fake_model / 'model.safetensors'
    data = bytearray(weights.read_bytes())
    data[100] ^= 1  # one flipped bit, same size: only the content tells them apart
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(1, 1))  # a new mtime drops the in-process cache
    assert identity(fake_model)[1] != first


def test_same_name_other_folder_content_is_caught(fake_model, tmp_path):
    other = tmp_path / 'elsewhere' / 'fake_lm'
    shutil.copytree(fake_model, other)
    assert identity(other) == identity(fake_model)  # same bytes: same model
    (other / 'tokenizer.json').write_text('{"model": "another vocabulary"}\n')
    assert identity(other)[0] == 'fake_lm' and identity(other)[1] != identity(fake_model)[1]


def test_a_folder_without_model_files_is_refused(tmp_path):
    (tmp_path / 'README.md').write_text('no model here\n')
    with pytest.raises(ConfigError, match='no config, tokenizer or weights'):
        identity(tmp_path)
    with pytest.raises(ConfigError, match='does not exist'):
        identity(tmp_path / 'missing')


# -- git state --------------------------------------------------------------------------------
@pytest.mark.skipif(not HAS_GIT, reason='needs git and a git checkout')
def test_git_state_of_this_checkout():
    commit, dirty = git_state()
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    assert re.fullmatch(r'[0-9a-f]{40}', commit) and commit == head
    assert isinstance(dirty, bool)


@pytest.mark.skipif(not HAS_GIT, reason='needs git and a git checkout')
def test_git_state_sees_a_modified_tracked_file(tmp_path):
    clone = tmp_path / 'clone'
    subprocess.run(['git', 'clone', '-q', str(ROOT), str(clone)], check=True,
                   env={k: v for k, v in os.environ.items() if not k.startswith('GIT_')})
    commit, dirty = git_state(clone / 'vla_align')
    assert commit == git_state()[0] and dirty is False
    (clone / 'untracked.txt').write_text('untracked files do not count\n')
    assert git_state(clone / 'vla_align') == (commit, False)
    with (clone / 'README.md').open('a') as handle:
        handle.write('\nan uncommitted change\n')
    assert git_state(clone / 'vla_align') == (commit, True)


def test_git_state_outside_a_checkout(tmp_path):
    (tmp_path / '__init__.py').write_text('')
    assert git_state(tmp_path) == (None, None)


# -- comparison -------------------------------------------------------------------------------
def info(**changes) -> DeploymentInfo:
    base = dict(control_rate_hz=10.0, action_frame='panda_link0', image_size=96,
                image_crop='center', camera_width=640, camera_height=480, camera_intrinsics=None,
                state_source='pose', state_layout=STATE_LABELS, language_model='minilm',
                language_model_hash='a' * 64, contract='sim_panda', git_commit='b' * 40,
                git_dirty=False)
    base.update(changes)
    return DeploymentInfo(**base)


MATCHING = dict(control_rate_hz=10.0, action_frame='panda_link0', language_model_hash='a' * 64,
                camera_width=640, camera_height=480, state_source='pose')


def test_nothing_is_reported_when_all_match():
    assert compare_deployment(info(), **MATCHING) == []


@pytest.mark.parametrize('change, field, words', [
    (dict(control_rate_hz=20.0), 'control_rate_hz', 'scaled 2x'),
    (dict(action_frame='base_link'), 'action_frame', "'base_link'"),
    (dict(language_model_hash='c' * 64), 'language_model_hash', 'minilm'),
    (dict(camera_width=1280, camera_height=720), 'camera_aspect_ratio', 'another aspect'),
    (dict(camera_width=1280, camera_height=960), 'camera_resolution', 'same aspect ratio'),
    (dict(state_source='tf'), 'state_source', "'tf'"),
])
def test_each_difference_is_reported(change, field, words):
    found = compare_deployment(info(), **{**MATCHING, **change})
    assert [m.field for m in found] == [field]
    assert words in found[0].message and '\n' not in found[0].message
    assert found[0].deployed != found[0].trained


def test_control_rate_message_and_several_mismatches():
    found = compare_deployment(info(), **{**MATCHING, 'control_rate_hz': 20.0,
                                          'action_frame': 'world'})
    assert found[0].message == ('control rate: trained at 10 Hz, the node runs at 20 Hz: every '
                                'twist would be scaled 2x')
    assert {m.field for m in found} == {'control_rate_hz', 'action_frame'}


def test_unknowns_are_not_compared_and_old_checkpoints_cannot_be_checked():
    assert compare_deployment(info(camera_width=None, language_model_hash=None),
                              **{**MATCHING, 'camera_width': 1280,
                                 'language_model_hash': 'c' * 64}) == []
    found = compare_deployment(None, control_rate_hz=10.0, action_frame='panda_link0')
    assert [m.field for m in found] == ['deployment'] and 'predates' in found[0].message


def test_to_dict_round_trips_through_json_and_from_dict_is_strict():
    original = info(camera_intrinsics=(500.0, 500.0, 320.0, 240.0))
    data = json.loads(json.dumps(original.to_dict()))
    assert DeploymentInfo.from_dict(data) == original
    partial = DeploymentInfo.from_dict({'control_rate_hz': 15})
    assert partial.control_rate_hz == 15.0 and partial.action_frame is None
    assert partial.state_layout is None
    for bad in ({'control_rate_hz': '10'}, {'camera_width': 640.5}, {'git_dirty': 'no'},
                {'state_layout': 'x,y'}, {'camera_intrinsics': [1, 2, 3]}):
        with pytest.raises(ValueError):
            DeploymentInfo.from_dict(bad)
    with pytest.raises(ValueError):
        DeploymentInfo.from_dict(['not', 'a', 'dict'])


# -- written by training ----------------------------------------------------------------------
def tiny_cache() -> FrameCache:
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(6):
        length = 8
        actions = np.zeros((length, 7), np.float32)
        actions[:, 0] = 0.01 * (i % 2)
        episodes.append(Episode(
            task=TaskInfo(f'instruction {i % 2}', 'reach', 'seen'), seed=i,
            images=rng.integers(0, 256, (length, 40, 40, 3), dtype=np.uint8), actions=actions,
            ee_positions=np.zeros((length, 3), np.float32),
            ee_orientations=np.tile([0.0, 0.0, 0.0, 1.0], (length, 1)).astype(np.float32),
            grippers=np.zeros(length, np.float32), success=True, control_hz=10.0))
    return FrameCache.from_episodes(episodes, image_size=32)


def test_trained_checkpoint_carries_deployment(tmp_path, monkeypatch):
    cache = tiny_cache()
    cache.contract = {'name': 'panda_servo_teleop', 'robot': 'panda', 'control_rate_hz': 15.0,
                      'base_frame': 'fr3_link0', 'image_topic': '/camera/image_raw',
                      'state_source': 'tf', 'action_source': 'twist',
                      'gripper_source': 'topic'}
    optim = OptimConfig(batch_size=8, warmup_steps=1, max_steps=2, max_minutes=None,
                        eval_every=2, log_every=1, eval_samples=8, final_eval_samples=8)
    config = TrainConfig(model=PolicyConfig.tiny(), data=DataConfig(val_fraction=0.2),
                         optim=optim, num_threads=1, seed=0)
    # The tree moves on after the trainer is built: every later look sees another commit.
    states = iter([('1' * 40, False)] + [('2' * 40, True)] * 100)
    monkeypatch.setattr('vla_align.train.trainer.git_state', lambda: next(states))
    monkeypatch.setattr('vla_align.model.checkpoint.git_state', lambda: ('f' * 40, True))
    trainer = Trainer(config, cache, tmp_path / 'run', progress=False)
    at_start = ('1' * 40, False)
    result = trainer.fit()

    checkpoint = load_checkpoint(result.last_checkpoint)
    meta = json.loads((result.last_checkpoint / 'metadata.json').read_text())
    assert (meta['git_commit'], meta['git_dirty']) == at_start
    deployment = checkpoint.deployment
    assert deployment is not None and deployment == DeploymentInfo.from_dict(meta['deployment'])
    assert deployment.control_rate_hz == 15.0 and deployment.action_frame == 'fr3_link0'
    assert deployment.state_source == 'tf' and deployment.contract == 'panda_servo_teleop'
    assert deployment.language_model_hash == language_model_identity(config.model)[1]
    assert deployment.state_layout == STATE_LABELS and deployment.image_size == 32
    assert (deployment.git_commit, deployment.git_dirty) == at_start
    assert deployment.camera_width is None  # the cache does not record the frame resolution
    assert Policy.from_checkpoint(result.best_checkpoint, device='cpu').deployment == deployment
    assert compare_deployment(deployment, control_rate_hz=30.0,
                              action_frame='fr3_link0')[0].field == 'control_rate_hz'


def test_old_checkpoints_have_no_deployment(tmp_path):
    policy = Policy.from_config(PolicyConfig.tiny(), device='cpu')
    policy.save(tmp_path / 'old')
    assert load_checkpoint(tmp_path / 'old').deployment is None
    assert Policy.from_checkpoint(tmp_path / 'old', device='cpu').deployment is None
