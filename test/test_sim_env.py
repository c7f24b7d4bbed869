"""The env: reproducible from its seed, safe under any action, bounded by its workspace."""
from __future__ import annotations

import numpy as np
import pytest

from vla_align.actions import ActionLimits, UnsafeActionError
from vla_align.sim.controller import Workspace
from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.rollout import run_expert_episode
from vla_align.sim.types import CameraConfig, TaskSpec

PUT = TaskSpec('put', 'put the red block in the yellow bowl', 'red block', 'yellow bowl')
PICK = TaskSpec('pick', 'pick up the blue block', 'blue block')


@pytest.fixture()
def env():
    environment = ManipulationEnv(EnvConfig(camera=CameraConfig(width=64, height=64)))
    yield environment
    environment.close()


def test_same_seed_gives_a_bit_identical_episode(env):
    first = run_expert_episode(env, PUT, seed=11)
    again = run_expert_episode(env, PUT, seed=11)
    assert first.success and again.success
    assert first.images.shape == again.images.shape
    assert np.array_equal(first.images, again.images)
    assert np.array_equal(first.actions, again.actions)
    assert np.array_equal(first.joint_positions, again.joint_positions)


def test_a_fresh_env_reproduces_an_episode_after_other_episodes(env):
    reference = run_expert_episode(env, PICK, seed=5)
    run_expert_episode(env, PUT, seed=6)  # nothing may carry over
    other = ManipulationEnv(EnvConfig(camera=CameraConfig(width=64, height=64)))
    try:
        repeat = run_expert_episode(other, PICK, seed=5)
    finally:
        other.close()
    assert np.array_equal(reference.images, repeat.images)
    assert np.array_equal(reference.actions, repeat.actions)


def test_different_seeds_give_different_scenes(env):
    layouts = []
    for seed in range(4):
        first = env.reset(seed, PUT)
        layouts.append({name: obj['position'] for name, obj in env.world_state()['objects']
                        .items()})
        assert first.image.shape == (64, 64, 3) and first.image.dtype == np.uint8
    assert all(a != b for i, a in enumerate(layouts) for b in layouts[i + 1:])
    images = [env.reset(seed, PUT).image for seed in (0, 1)]
    assert not np.array_equal(images[0], images[1])


def test_scene_holds_target_destination_and_distinct_distractors(env):
    task = TaskSpec('stack', 'stack', 'red block', 'blue block', num_distractors=4)
    env.reset(3, task)
    names = env.object_names
    assert {'red block', 'blue block'} <= set(names)
    assert len(names) == len(set(names)) == 6


def test_non_finite_or_misshaped_actions_are_refused_and_nothing_moves(env):
    env.reset(0, PICK)
    before = env.world_state()
    joints = env.render()
    for bad in (np.array([np.nan, 0, 0, 0, 0, 0, 0]), np.array([0, 0, np.inf, 0, 0, 0, 1]),
                np.zeros(6)):
        with pytest.raises(UnsafeActionError):
            env.step(bad)
    assert env.step_count == 0
    assert env.world_state() == before
    assert np.array_equal(env.render(), joints)


def test_out_of_limit_actions_are_clamped(env):
    env.reset(0, PICK)
    limits = env.config.limits
    start = env.controller.target_position.copy()
    result = env.step(np.array([1.0, -1.0, 0.5, 2.0, -2.0, 2.0, 7.0]))
    applied = result.info['applied_action']
    assert limits.contains(applied)
    np.testing.assert_allclose(applied[:3], [limits.max_translation, -limits.max_translation,
                                             limits.max_translation], rtol=1e-6)
    assert applied[6] == 1.0
    moved = env.controller.target_position - start
    assert np.all(np.abs(moved) <= limits.max_translation + 1e-9)


def test_workspace_bounds_hold_under_repeated_large_actions(env):
    env.reset(1, PICK)
    workspace = env.config.workspace
    rng = np.random.default_rng(0)
    for push in ([0, 0, -1], [1, 0, 0], [0, 1, 0], [-1, -1, 1]):
        for _ in range(15):
            action = np.r_[push, rng.uniform(-0.01, 0.01, 3), 0.0]
            env.step(action)
            assert workspace.contains(env.controller.target_position)
        ee = np.array(env.world_state()['ee_position'])
        assert workspace.contains(ee, atol=0.02)  # the hand follows within tracking error
    assert env.world_state()['ee_position'][2] > -0.005  # never through the table


def test_workspace_clip_and_validation():
    box = Workspace(low=(0.0, -1.0, 0.0), high=(1.0, 1.0, 0.5))
    np.testing.assert_array_equal(box.clip([2.0, -3.0, 0.25]), [1.0, -1.0, 0.25])
    assert box.contains([0.5, 0.0, 0.1]) and not box.contains([0.5, 0.0, 0.6])
    with pytest.raises(ValueError, match='below'):
        Workspace(low=(1.0, 0.0, 0.0), high=(0.0, 1.0, 1.0))


def test_expert_actions_stay_within_limits_and_the_camera_can_change():
    limits = ActionLimits(max_translation=0.01)
    environment = ManipulationEnv(EnvConfig(camera=CameraConfig(width=48, height=32),
                                            limits=limits))
    try:
        observation = environment.reset(2, PICK)
        assert observation.image.shape == (32, 48, 3)
        for _ in range(10):
            action = environment.expert_action()
            assert limits.contains(action)
            environment.step(action)
    finally:
        environment.close()


def test_step_budget_truncates(env):
    short = ManipulationEnv(EnvConfig(camera=CameraConfig(width=32, height=32), max_steps=3))
    try:
        short.reset(0, PUT)
        results = [short.step(short.expert_action()) for _ in range(3)]
        assert [r.truncated for r in results] == [False, False, True]
        assert not results[-1].terminated and results[-1].info['success'] is False
    finally:
        short.close()
    env.reset(0, PUT)
    assert env.max_steps == 80  # the family default


def test_bad_inputs_get_clear_errors(env):
    with pytest.raises(ValueError, match='seed'):
        env.reset(-1, PICK)
    with pytest.raises(ValueError, match='unknown task family'):
        env.reset(0, TaskSpec('juggle', 'juggle', 'red block'))
    with pytest.raises(ValueError, match='colour'):
        env.reset(0, TaskSpec('pick', 'pick up the pink block', 'pink block'))
    with pytest.raises(ValueError, match='destination'):
        env.reset(0, TaskSpec('put', 'put the red block', 'red block'))
    fresh = ManipulationEnv()
    with pytest.raises(RuntimeError, match='reset'):
        fresh.expert_action()
    fresh.close()
    with pytest.raises(ValueError, match='substeps'):
        EnvConfig(control_hz=7.0)
    env.close()
    with pytest.raises(RuntimeError, match='closed'):
        env.reset(0, PICK)


def yaw_of(q: np.ndarray) -> float:
    x, y, z, w = q
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def test_rotation_deltas_turn_the_hand_about_the_base_axes(env):
    first = env.reset(0, PICK)
    for _ in range(3):
        result = env.step(np.array([0, 0, 0, 0, 0, 0.1, 0]))
    commanded = env.controller.target_orientation
    turned = np.angle(np.exp(1j * (yaw_of(commanded) - yaw_of(first.ee_orientation))))
    assert np.isclose(abs(turned), 0.3, atol=1e-3)
    measured = result.observation.ee_orientation.astype(np.float64)
    error = 2 * np.arccos(min(1.0, abs(float(np.dot(measured, commanded)))))
    assert error < 0.05  # the hand follows the commanded orientation


def test_a_faster_control_rate_does_not_move_the_hand_faster():
    """Per-step deltas at 20 Hz are capped at half the 10 Hz step: same speed limit."""
    fast = ManipulationEnv(EnvConfig(camera=CameraConfig(width=16, height=16), control_hz=20.0))
    try:
        fast.reset(0, PICK)
        result = fast.step(np.array([1.0, -1.0, 0.5, 2.0, -2.0, 2.0, 1.0]))
        applied = result.info['applied_action']
        speed = fast.config.speed_limits
        np.testing.assert_allclose(np.abs(applied[:3]), speed.max_linear_m_s / 20.0, rtol=1e-6)
        np.testing.assert_allclose(np.abs(applied[3:6]), speed.max_angular_rad_s / 20.0,
                                   rtol=1e-6)
        assert fast.config.limits.max_translation > speed.max_linear_m_s / 20.0
    finally:
        fast.close()


def test_yaw_commands_stop_at_the_edge_of_the_yaw_window(env):
    """A stream of same-signed yaw deltas must not wind the wrist past its window."""
    first = env.reset(0, PICK)
    limit = env.config.workspace.max_yaw_rad
    for sign in (1.0, -1.0):
        for _ in range(int(2 * np.pi / env.config.limits.max_rotation) + 5):
            env.step(np.array([0, 0, 0, 0, 0, sign, 0]))
        commanded = env.controller.target_orientation
        turned = np.angle(np.exp(1j * (yaw_of(commanded) - yaw_of(first.ee_orientation))))
        assert np.isclose(turned, sign * limit, atol=1e-3)


def test_bad_camera_config_is_refused():
    with pytest.raises(ValueError, match='camera'):
        EnvConfig(camera=CameraConfig(width=0))
