"""Rollouts record frame-before-action episodes; policy rollouts survive bad actions."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from vla_align.sim import demo
from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.rollout import run_expert_episode, run_policy_episode
from vla_align.sim.types import CameraConfig, Observation, TaskSpec

PICK = TaskSpec('pick', 'pick up the green block', 'green block')


@pytest.fixture()
def env():
    environment = ManipulationEnv(EnvConfig(camera=CameraConfig(width=40, height=40)))
    yield environment
    environment.close()


def test_expert_episode_records_the_frame_before_each_action(env):
    episode = run_expert_episode(env, PICK, seed=4)
    first = env.reset(4, PICK)
    assert episode.success and episode.task == PICK.info() and episode.seed == 4
    assert np.array_equal(episode.images[0], first.image)
    np.testing.assert_array_equal(episode.actions[0], env.expert_action())
    assert episode.images.shape == (len(episode), 40, 40, 3)
    assert episode.actions.shape == (len(episode), 7)
    assert episode.grippers[0] == 0.0  # the command in force at the first frame
    assert episode.grippers[-1] == 1.0  # the block is held at the end
    assert episode.control_hz == env.config.control_hz


def test_replaying_the_expert_actions_reproduces_success(env):
    episode = run_expert_episode(env, PICK, seed=8)
    actions = iter(episode.actions)
    outcome = run_policy_episode(env, PICK, 8, lambda obs: next(actions), record=True)
    assert outcome.success and outcome.steps == len(episode)
    assert np.array_equal(outcome.episode.images, episode.images)


def test_dart_noise_perturbs_the_arm_but_records_the_clean_expert_action(env):
    clean = run_expert_episode(env, PICK, seed=4)
    noisy = run_expert_episode(env, PICK, seed=4, action_noise=0.01)
    again = run_expert_episode(env, PICK, seed=4, action_noise=0.01)
    assert noisy.metadata['action_noise'] == 0.01 and clean.metadata['action_noise'] == 0.0
    # Reproducible from the seed, and a different path from the clean expert's.
    np.testing.assert_array_equal(noisy.ee_positions, again.ee_positions)
    assert not np.allclose(noisy.ee_positions[1:len(clean)], clean.ee_positions[1:len(noisy)])
    # Each recorded action is what the expert asks for in the state the arm actually reached:
    # replaying the noisy episode's states through a fresh expert gives the same labels.
    assert noisy.success
    for t in (0, 1):
        env.reset(4, PICK)
        if t == 1:  # reach the recorded second state by executing the first noisy step
            first = noisy.actions[0].copy()
            rng = np.random.default_rng([4, 0xDA27])
            first[:3] = np.clip(first[:3] + rng.normal(0.0, 0.01, 3), -0.03, 0.03)
            env.expert_action()
            env.step(first)
        np.testing.assert_allclose(env.expert_action(), noisy.actions[t], atol=1e-6)
    with pytest.raises(ValueError, match='action noise'):
        run_expert_episode(env, PICK, seed=4, action_noise=-0.01)


def test_policy_episode_holds_on_non_finite_actions_and_stops_at_the_budget():
    env = ManipulationEnv(EnvConfig(camera=CameraConfig(width=24, height=24), max_steps=6))
    seen: list[Observation] = []

    def broken(observation: Observation) -> np.ndarray:
        seen.append(observation)
        return np.full(7, np.nan)

    try:
        outcome = run_policy_episode(env, PICK, 0, broken, record=True)
    finally:
        env.close()
    assert not outcome.success and outcome.steps == 6 and outcome.unsafe_actions == 6
    assert np.all(outcome.episode.actions[:, :6] == 0.0)  # held still
    assert len(seen) == 6


def test_demo_measures_every_family_and_writes_json_and_filmstrip(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    demo.configure_parser(parser)
    out, strip = tmp_path / 'rates.json', tmp_path / 'strip.png'
    args = parser.parse_args(['--family', 'all', '--episodes', '1', '--split', 'seen',
                              '--json', str(out), '--save-frames', str(strip)])
    assert demo.run(args) == 0
    figures = json.loads(out.read_text())
    assert set(figures['families']) == {'reach', 'pick', 'push', 'put', 'stack'}
    assert all(row['episodes'] == 1 for row in figures['families'].values())
    assert figures['render_ms_per_frame'] > 0 and figures['episodes_per_min'] > 0
    assert strip.stat().st_size > 10_000
    assert 'episodes/min' in capsys.readouterr().out


def test_demo_single_episode_prints_instruction(capsys):
    parser = argparse.ArgumentParser()
    demo.configure_parser(parser)
    assert demo.run(parser.parse_args(['--family', 'reach', '--seed', '3'])) == 0
    printed = capsys.readouterr().out
    assert 'instruction: ' in printed and 'seed=3' in printed


def test_demo_rejects_bad_arguments(capsys):
    parser = argparse.ArgumentParser()
    demo.configure_parser(parser)
    assert demo.run(parser.parse_args(['--split', 'nowhere'])) == 2
    assert 'unknown split' in capsys.readouterr().err
    assert demo.run(parser.parse_args(['--episodes', '0'])) == 2
