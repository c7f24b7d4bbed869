"""eval-bag: a policy scored against the actions recorded in rosbags."""
from __future__ import annotations

import argparse
from dataclasses import replace
import json
from pathlib import Path

import numpy as np
import pytest
from test_bag_source import synthetic_episode
import torch

from vla_align.data.bag_io import write_episode_bag
from vla_align.data.bag_source import read_bag_frames
from vla_align.data.normalization import NormalizationStats
from vla_align.evaluation import bag_eval
from vla_align.evaluation.bag_eval import EvalBagOptions, evaluate_bags, predict_offline
from vla_align.evaluation.bag_report import score_actions
from vla_align.model.config import PolicyConfig
from vla_align.model.policy import Policy
from vla_align.model.vla import VLAModel


def varied_episode(seed: int, steps: int = 12):
    """Frames of clearly different brightness, so the policy's actions differ per frame."""
    episode = synthetic_episode(np.random.default_rng(seed), steps=steps)
    episode.images[:] = (np.arange(steps) * 20 + 5 * seed)[:, None, None, None].astype(np.uint8)
    return episode


def make_policy(seed: int = 0) -> Policy:
    """A tiny random policy whose normalisation centres its actions inside the clamp limits."""
    torch.manual_seed(seed)
    model = VLAModel(PolicyConfig.tiny())
    probe = Policy(model, NormalizationStats.identity(), device='cpu')
    episode = varied_episode(0)
    raw = np.stack([s.action for s in probe.step_batch(
        episode.images, [episode.task.instruction] * len(episode), episode.states())])
    scale = np.float32(0.4)
    mean = np.zeros(7, np.float32)
    mean[:6] = -raw[:, :6].mean(0) * scale
    std = np.ones(7, np.float32)
    std[:6] = scale
    stats = NormalizationStats(action_mean=mean, action_std=std,
                               state_mean=np.zeros(8, np.float32),
                               state_std=np.ones(8, np.float32))
    return Policy(model, stats, device='cpu')


def policy_driven_episode(policy: Policy, seed: int):
    """An episode whose recorded actions are the policy's own, step by step as the node acts:
    the gripper state is the policy's previous command."""
    episode = varied_episode(seed)
    limits = EvalBagOptions().limits
    gripper = 0.0
    actions = []
    for t in range(len(episode)):
        episode.grippers[t] = gripper
        action = limits.clamp(policy.step(episode.images[t], episode.task.instruction,
                                          episode.states()[t]).action)
        actions.append(action)
        gripper = float(action[6])
    episode.actions = np.stack(actions)
    episode.joint_positions[:, 7:] = 0.04  # open at the start
    return episode


@pytest.fixture(scope='module')
def policy() -> Policy:
    torch.set_num_threads(1)
    return make_policy()


@pytest.fixture(scope='module')
def bags(tmp_path_factory, policy) -> dict[str, Path]:
    root = tmp_path_factory.mktemp('bags')
    own = policy_driven_episode(policy, seed=1)
    write_episode_bag(own, root / 'own')
    shuffled = replace(own, actions=own.actions[np.random.default_rng(3).permutation(len(own))])
    write_episode_bag(shuffled, root / 'shuffled', storage='sqlite3')
    return {'own': root / 'own', 'shuffled': root / 'shuffled'}


def test_score_actions_measures_each_dimension():
    recorded = np.zeros((4, 7))
    recorded[:, 0] = 0.01
    predicted = recorded.copy()
    predicted[:2, 0] = -0.01  # opposite direction on half the frames
    predicted[:, 5] = 0.1
    predicted[0, 6] = 1.0  # one wrong gripper command
    errors = score_actions(predicted, recorded)
    assert errors.mae['dx'] == pytest.approx(0.01)
    assert errors.mae['dyaw'] == pytest.approx(0.1)
    assert errors.position_error_m == pytest.approx(0.01)
    assert errors.rotation_error_rad == pytest.approx(0.1)
    assert errors.gripper_accuracy == pytest.approx(0.75)
    assert errors.direction_cosine == pytest.approx(0.0)  # (-1 -1 +1 +1) / 4
    assert errors.direction_frames == 4
    assert score_actions(recorded, recorded).position_error_m == 0.0
    with pytest.raises(ValueError, match='two'):
        score_actions(predicted[:, :6], recorded[:, :6])


def test_own_actions_score_zero_and_shuffled_ones_score_badly(bags, policy):
    report = evaluate_bags([bags['own'], bags['shuffled']], EvalBagOptions(latency_samples=4),
                           policy=policy, progress=False)
    own, shuffled = report.episodes
    assert (own.errors.frames, shuffled.errors.frames) == (12, 12)
    assert own.errors.position_error_m < 1e-5
    assert own.errors.rotation_error_rad < 1e-5
    assert own.errors.gripper_accuracy == 1.0
    assert own.errors.direction_cosine == pytest.approx(1.0, abs=1e-5)
    assert shuffled.errors.position_error_m > 1e-3
    assert shuffled.errors.position_error_m > 100 * own.errors.position_error_m
    assert report.latency.count == 4 and report.latency.p50 > 0
    assert report.inference_s > 0 and not report.failures


def test_gripper_state_policy_matches_step_by_step_feedback(tmp_path, policy):
    # Recorded gripper commands (all open) differ from the policy's (it closes): with
    # --gripper-state policy the batched fixed point equals feeding its own commands back.
    episode = varied_episode(4)
    episode.actions[:, 6] = 0.0
    episode.grippers[:] = 0.0
    write_episode_bag(episode, tmp_path / 'bag')
    frames = read_bag_frames(tmp_path / 'bag')
    options = EvalBagOptions(gripper_state='policy', batch_size=5)
    fed_back = predict_offline(policy, frames, options).actions
    sequential = policy_driven_episode(policy, seed=4).actions
    np.testing.assert_allclose(fed_back, sequential, atol=1e-5)
    teacher = predict_offline(policy, frames, replace(options, gripper_state='recorded'))
    assert not np.allclose(teacher.actions, sequential, atol=1e-5)  # the state matters


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    bag_eval.configure_parser(parser)
    return bag_eval.run(parser.parse_args(argv))


def test_cli_reports_unreadable_bags_and_scores_the_rest(tmp_path, bags, policy):
    checkpoint = tmp_path / 'ckpt'
    policy.save(checkpoint)
    broken = tmp_path / 'broken'
    broken.mkdir()
    (broken / 'metadata.yaml').write_text('not: [a bag')
    no_action = tmp_path / 'no_action'
    episode = varied_episode(5, steps=3)
    write_episode_bag(episode, no_action)
    out = tmp_path / 'report'
    status = run_cli([str(bags['own']), str(broken), str(no_action), '--checkpoint',
                      str(checkpoint), '--out', str(out), '--action-topic', '/vla/missing',
                      '--latency-samples', '2', '--device', 'cpu'])
    assert status == 1  # some bags could not be scored
    report = json.loads((out / 'report.json').read_text())
    assert report['frames'] == 0
    errors = {Path(f['bag']).name: f['error'] for f in report['failures']}
    assert 'missing /vla/missing (action)' in errors['own']
    assert 'cannot open rosbag2' in errors['broken']
    status = run_cli([str(bags['own']), '--checkpoint', str(checkpoint), '--out', str(out),
                      '--latency-samples', '2', '--device', 'cpu'])
    assert status == 0
    report = json.loads((out / 'report.json').read_text())
    assert report['frames'] == 12 and report['overall']['position_error_m'] < 1e-5
    assert (out / report['episodes'][0]['plot']).stat().st_size > 1000
    assert 'pick up the red block' in (out / 'report.md').read_text()
    assert run_cli([str(tmp_path / 'absent'), '--checkpoint', str(tmp_path / 'nope'),
                    '--out', str(out)]) == 2


def test_robot_bags_are_scored_through_their_contract(tmp_path, policy):
    """A teleoperated cell's bag (Servo twists, a PoseStamped, a gripper controller, 30 Hz
    camera): read as training reads it, one frame per control step, the twist x period as the
    recorded action, and scored; without the contract the same bag cannot be scored."""
    from test_contract_reader import CELL, STEPS, robot_bag

    from vla_align.data.contract import contract_from_dict

    bag = robot_bag(tmp_path / 'robot_bag')
    frames = read_bag_frames(bag, contract=contract_from_dict(CELL))
    assert len(frames) == STEPS and frames.scorable.all()
    np.testing.assert_allclose(frames.actions[:, 1], 0.01, atol=1e-9)  # 0.1 m/s x 0.1 s
    report = evaluate_bags([bag], EvalBagOptions(contract=contract_from_dict(CELL),
                                                 latency_samples=0), policy, progress=False)
    assert not report.failures and len(report.episodes[0].recorded) == STEPS
    plain = evaluate_bags([bag], EvalBagOptions(latency_samples=0), policy, progress=False)
    assert plain.failures and '/camera/image_raw' in plain.failures[0]['error']
