"""Closed-loop episodes: the scripted expert (demonstrations) or any policy (evaluation)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from vla_align.actions import UnsafeActionError, hold_action
from vla_align.data.episode import Episode
from vla_align.sim.env import ManipulationEnv
from vla_align.sim.types import PANDA_JOINT_NAMES, Observation, TaskSpec


@dataclass
class EpisodeOutcome:
    """Result of one policy episode."""

    success: bool
    steps: int
    episode: Optional[Episode] = None  # only with record=True
    unsafe_actions: int = 0  # non-finite/misshaped actions replaced by a hold


class _Recorder:
    """Collects (observation, action) pairs; ``actions[t]`` follows ``images[t]``."""

    def __init__(self) -> None:
        self.observations: list[Observation] = []
        self.actions: list[np.ndarray] = []

    def add(self, observation: Observation, action: np.ndarray) -> None:
        self.observations.append(observation)
        self.actions.append(np.asarray(action, dtype=np.float32))

    def episode(self, env: ManipulationEnv, task: TaskSpec, seed: int, success: bool,
                **metadata: object) -> Episode:
        obs = self.observations
        return Episode(
            task=task.info(), seed=seed,
            images=np.stack([o.image for o in obs]).astype(np.uint8),
            actions=np.stack(self.actions).astype(np.float32),
            ee_positions=np.stack([o.ee_position for o in obs]).astype(np.float32),
            ee_orientations=np.stack([o.ee_orientation for o in obs]).astype(np.float32),
            grippers=np.array([o.gripper for o in obs], dtype=np.float32),
            joint_positions=np.stack([o.joint_positions for o in obs]).astype(np.float32),
            joint_names=PANDA_JOINT_NAMES, success=success, control_hz=env.config.control_hz,
            camera=env.camera.geometry(), metadata={'max_steps': env.max_steps, **metadata})


def run_expert_episode(env: ManipulationEnv, task: TaskSpec, seed: int,
                       action_noise: float = 0.0) -> Episode:
    """One scripted-expert episode; each recorded frame and state precede the action taken.

    With ``action_noise`` > 0 the arm executes the expert's translation plus Gaussian noise of
    that standard deviation (metres, per axis, clipped to the action limits) while the bag
    records the expert's clean action (DART, Laskey et al. 2017): the demonstrations then
    visit the slightly-off states a learned policy drifts into, labelled with how the expert
    recovers from them. The noise is drawn from the episode seed, so the episode stays
    reproducible.
    """
    if action_noise < 0 or not np.isfinite(action_noise):
        raise ValueError(f'action noise must be a finite value >= 0, got {action_noise}')
    observation = env.reset(seed, task)
    recorder = _Recorder()
    rng = np.random.default_rng([seed, 0xDA27])
    limit = env.config.limits.max_translation
    success = False
    while True:
        action = env.expert_action()
        recorder.add(observation, action)
        executed = action
        if action_noise > 0:
            executed = action.copy()
            executed[:3] = np.clip(action[:3] + rng.normal(0.0, action_noise, 3), -limit, limit)
        result = env.step(executed)
        observation, success = result.observation, bool(result.info['success'])
        if result.done:
            break
    return recorder.episode(env, task, seed, success, source='expert',
                            action_noise=float(action_noise))


def run_policy_episode(env: ManipulationEnv, task: TaskSpec, seed: int,
                       act: Callable[[Observation], np.ndarray],
                       record: bool = False) -> EpisodeOutcome:
    """Run ``act`` closed-loop until success or the step budget.

    An action the env refuses (non-finite or wrong shape) is replaced by a zero-motion hold
    and counted in ``unsafe_actions``; the episode goes on, as on the robot.
    """
    observation = env.reset(seed, task)
    recorder = _Recorder() if record else None
    unsafe = 0
    while True:
        action = act(observation)
        try:
            result = env.step(action)
        except UnsafeActionError:
            unsafe += 1
            result = env.step(hold_action(observation.gripper))
        applied = result.info['applied_action']
        if recorder is not None:
            recorder.add(observation, applied)
        observation = result.observation
        if result.done:
            break
    success = bool(result.info['success'])
    episode = (recorder.episode(env, task, seed, success, source='policy')
               if recorder is not None else None)
    return EpisodeOutcome(success=success, steps=env.step_count, episode=episode,
                          unsafe_actions=unsafe)
