"""Every family's scripted expert solves its task (the ravens-style "every oracle runs" test)."""
from __future__ import annotations

from dataclasses import replace

import pytest

from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.experts import PickExpert
from vla_align.sim.rollout import run_expert_episode
from vla_align.sim.suite import load_suite
from vla_align.sim.types import TASK_FAMILIES, CameraConfig


@pytest.fixture(scope='module')
def env():
    environment = ManipulationEnv(EnvConfig(camera=CameraConfig(width=32, height=32)))
    yield environment
    environment.close()


@pytest.fixture(scope='module')
def suite():
    return load_suite()


@pytest.mark.parametrize('family', TASK_FAMILIES)
@pytest.mark.parametrize('split', ['seen', 'shift'])
def test_expert_succeeds(env, suite, family, split):
    for seed in suite.seeds(split, 'val', 3):
        task = suite.sample_task(family, split, seed)
        episode = run_expert_episode(env, task, seed)
        assert episode.success, f'{family}/{split} seed {seed}: {task.instruction!r}'
        assert len(episode) < env.max_steps
        assert all(env.config.limits.contains(a) for a in episode.actions)


def test_doing_another_task_does_not_count_as_success(env, suite):
    """Lifting the block (a pick) while asked to put it in a bowl is not a put success."""
    seed = suite.seeds('seen', 'val', 1)[0]
    put = suite.sample_task('put', 'seen', seed)
    as_pick = replace(put, family='pick', destination=None)
    env.reset(seed, put)
    expert = PickExpert(as_pick, env.config.limits)
    lifted = False
    for _ in range(30):
        result = env.step(expert.act(env.world_state(), env.controller.target_position))
        assert not result.info['success']
        lifted = lifted or expert.phase == 'lift'
    assert lifted  # the pick itself went ahead
