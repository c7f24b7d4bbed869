"""Training end to end on a tiny task where only the instruction says what to do."""
import json

import numpy as np
import pytest
import torch

from vla_align.data.dataset import FrameCache
from vla_align.data.episode import Episode, TaskInfo
from vla_align.model.checkpoint import CheckpointError
from vla_align.model.config import PolicyConfig
from vla_align.model.policy import Policy
from vla_align.train.config import DataConfig, OptimConfig, TrainConfig
from vla_align.train.trainer import Trainer

# Every frame shows the SAME image and the same robot state; only the instruction differs, and
# it alone decides the motion and the gripper. A model that ignored the instruction could do no
# better than the average (zero motion, gripper 0.5).
IMAGE = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
STATE_XYZ = (0.5, 0.0, 0.2)
MOTIONS = {'move the gripper to the left and close it': (0.02, 1.0),
           'move the gripper to the right and open it': (-0.02, 0.0)}


def instruction_episode(index: int, instruction: str, length: int = 8) -> Episode:
    dy, gripper = MOTIONS[instruction]
    actions = np.zeros((length, 7), np.float32)
    actions[:, 1], actions[:, 6] = dy, gripper
    return Episode(
        task=TaskInfo(instruction, 'reach', 'seen'), seed=index,
        images=np.repeat(IMAGE[None], length, 0), actions=actions,
        ee_positions=np.tile(STATE_XYZ, (length, 1)).astype(np.float32),
        ee_orientations=np.tile([0.0, 0.0, 0.0, 1.0], (length, 1)).astype(np.float32),
        grippers=np.zeros(length, np.float32),
        success=True, control_hz=10.0)


def state() -> np.ndarray:
    return np.array([*STATE_XYZ, 0.0, 0.0, 0.0, 1.0, 0.0], np.float32)


@pytest.fixture(scope='module')
def cache() -> FrameCache:
    texts = list(MOTIONS)
    return FrameCache.from_episodes(
        [instruction_episode(i, texts[i % 2]) for i in range(12)], image_size=32)


def train_config(max_steps: int, **changes) -> TrainConfig:
    optim = dict(batch_size=16, lr=3e-3, warmup_steps=5, max_steps=max_steps, max_minutes=None,
                 eval_every=20, log_every=5, eval_samples=64, final_eval_samples=64)
    optim.update(changes)
    return TrainConfig(model=PolicyConfig.tiny(), data=DataConfig(val_fraction=0.2),
                       optim=OptimConfig(**optim), num_threads=1, seed=0)


@pytest.fixture(scope='module')
def trained(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp('run')
    result = Trainer(train_config(60), cache, out, progress=False).fit()
    return result


def test_training_loss_falls(trained):
    rows = trained.report['history']['train']
    assert rows[-1]['arm'] < 0.3 * rows[0]['arm']
    assert rows[-1]['gripper'] < 0.5 * rows[0]['gripper']


def test_the_instruction_decides_the_action(trained):
    policy = Policy.from_checkpoint(trained.best_checkpoint, device='cpu')
    left = policy.step(IMAGE, 'move the gripper to the left and close it', state())
    right = policy.step(IMAGE, 'move the gripper to the right and open it', state())
    assert left.action[1] > 0.01 and right.action[1] < -0.01
    assert left.gripper_prob > 0.8 and right.gripper_prob < 0.2
    # The checkpoint lists what it was trained on, for the grounding check's familiarity.
    assert sorted(policy.training_instructions) == sorted(MOTIONS)
    assert policy.instruction_familiarity('move the gripper to the left and close it') == \
        pytest.approx(1.0, abs=1e-4)


def test_report_and_checkpoints_are_written(trained):
    report = json.loads((trained.out_dir / 'report.json').read_text())
    assert report['training']['steps'] == 60 and report['training']['train_samples_per_s'] > 0
    final = report['final_eval']
    assert final['alignment']['retrieval']['V->L']['num_candidates'] == 2
    assert final['actions']['mae']['dy'] < final['actions']['baseline_mae']['dy']
    assert (trained.out_dir / 'loss_curve.png').stat().st_size > 0
    assert '## Alignment' in (trained.out_dir / 'report.md').read_text()
    assert (trained.last_checkpoint / 'trainer_state.pt').is_file()
    assert not (trained.best_checkpoint / 'trainer_state.pt').exists()


def test_resume_continues_from_the_last_checkpoint(cache, tmp_path):
    first = Trainer(train_config(10, eval_every=10), cache, tmp_path, progress=False)
    first.fit()
    resumed = Trainer(train_config(20, eval_every=10), cache, tmp_path,
                      resume=tmp_path / 'checkpoint' / 'last', progress=False)
    assert resumed.step == 10 and len(resumed.history['train']) == 2
    for name, value in first.model.trainable_state_dict().items():
        if name in dict(first.model.named_parameters()):
            assert torch.equal(value, resumed.model.trainable_state_dict()[name])
    assert resumed.optimizer.state_dict()['state']  # optimizer moments came back too
    resumed.fit()
    assert resumed.step == 20 and len(resumed.history['train']) == 4


def test_resume_refuses_a_different_model(cache, tmp_path):
    Trainer(train_config(5, eval_every=5), cache, tmp_path, progress=False).fit()
    changed = train_config(10)
    changed = TrainConfig(model=changed.model.replace(d_model=64), data=changed.data,
                          optim=changed.optim)
    with pytest.raises(CheckpointError, match='model config differs'):
        Trainer(changed, cache, tmp_path, resume=tmp_path / 'checkpoint' / 'last',
                progress=False)


def test_a_fine_tune_starts_from_the_checkpoint_weights_with_a_fresh_schedule(trained,
                                                                               tmp_path):
    import dataclasses

    episodes = [instruction_episode(i, text) for i, text in enumerate(list(MOTIONS) * 4)]
    for episode in episodes:  # other data: its own statistics would differ from the checkpoint's
        episode.actions[:, 1] *= 3.0
    other_data = FrameCache.from_episodes(episodes, image_size=32)
    config = dataclasses.replace(train_config(5), init_from=str(trained.best_checkpoint))
    tuned = Trainer(config, other_data, tmp_path, progress=False)
    source = Policy.from_checkpoint(trained.best_checkpoint, device='cpu').model
    start = tuned.model.trainable_state_dict()
    for name, value in source.trainable_state_dict().items():
        assert torch.equal(value, start[name]), name
    assert tuned.step == 0 and not tuned.optimizer.state_dict()['state']
    checkpoint_stats = Policy.from_checkpoint(trained.best_checkpoint, device='cpu').stats
    assert tuned.stats.to_dict() == checkpoint_stats.to_dict()
    assert Trainer(train_config(5), other_data, tmp_path / 'scratch',
                   progress=False).stats.to_dict() != checkpoint_stats.to_dict()
    other = dataclasses.replace(config, model=config.model.replace(d_model=64))
    with pytest.raises(CheckpointError, match='model config differs'):
        Trainer(other, other_data, tmp_path, progress=False)
