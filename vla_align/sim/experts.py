"""Scripted experts: explicit phase state machines over privileged state.

Each expert reads the world-state dict of ``success.py`` plus the controller's commanded
grasp-point position, picks a goal for its current phase, and emits the action that moves the
commanded position towards that goal (clipped to ``ActionLimits``). Orientation deltas are
always zero: the hand stays pointing down. Phases advance on measured arrival, never on time
alone, and a grasp that slips sends the expert back to re-approach, so an unlucky contact
costs steps, not the episode.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from vla_align.actions import ACTION_DIM, GRIPPER, ActionLimits
from vla_align.sim.scene import BLOCK_HALF, BOWL_FLOOR
from vla_align.sim.success import DIRECTIONS, position, start_position
from vla_align.sim.types import TaskSpec

State = dict[str, Any]
OPEN, CLOSED = 0.0, 1.0


@dataclass(frozen=True)
class ExpertParams:
    """Heights (m above the table) and tolerances shared by all experts."""

    hover: float = 0.10  # travel height of the grasp point above the table
    grasp_depth: float = 0.0  # grasp point relative to the block centre
    arrive_tolerance: float = 0.008
    travel_tolerance: float = 0.015
    close_steps: int = 3
    release_steps: int = 2
    slip_distance: float = 0.035  # block this far from the grasp point = grasp lost
    push_height: float = 0.018
    push_standoff: float = 0.055  # start this far behind the block centre
    push_goal: float = 0.10  # stop pushing after this displacement (success needs 0.07)
    touch_height: float = 0.012  # above a block's top face when touching it


class Expert:
    """Base class: phase bookkeeping and goal -> action conversion."""

    first_phase = 'approach'

    def __init__(self, task: TaskSpec, limits: ActionLimits,
                 params: ExpertParams = ExpertParams()) -> None:
        self.task = task
        self.limits = limits
        self.params = params
        self.phase = self.first_phase
        self.steps_in_phase = 0

    def act(self, state: State, commanded: np.ndarray) -> np.ndarray:
        """Next action for ``state``; ``commanded`` is the controller's target position."""
        for _ in range(4):  # a step may pass through a few instantaneous transitions
            goal, gripper, next_phase = self.plan(state)
            if next_phase is None:
                break
            self.phase, self.steps_in_phase = next_phase, 0
        self.steps_in_phase += 1
        action = np.zeros(ACTION_DIM, dtype=np.float32)
        if goal is not None:
            delta = np.asarray(goal, dtype=np.float64) - np.asarray(commanded, dtype=np.float64)
            action[:3] = np.clip(delta, -self.limits.max_translation, self.limits.max_translation)
        action[GRIPPER] = gripper
        return action

    def plan(self, state: State) -> tuple[Optional[np.ndarray], float, Optional[str]]:
        """(goal position or None to hold, gripper command, phase to switch to or None)."""
        raise NotImplementedError

    @staticmethod
    def arrived(state: State, goal: np.ndarray, tolerance: float) -> bool:
        return bool(np.linalg.norm(np.asarray(state['ee_position']) - goal) <= tolerance)


class ReachExpert(Expert):
    """approach (above the target) -> touch (fingers closed, just above it) -> hold."""

    def plan(self, state: State) -> tuple[Optional[np.ndarray], float, Optional[str]]:
        p = self.params
        target = position(state, self.task.target)
        is_block = state['objects'][self.task.target]['shape'] == 'block'
        touch_z = (target[2] + BLOCK_HALF + p.touch_height if is_block
                   else BOWL_FLOOR + 2 * p.touch_height)
        if self.phase == 'approach':
            goal = np.array([target[0], target[1], p.hover])
            if self.arrived(state, goal, p.travel_tolerance):
                return None, CLOSED, 'touch'
            return goal, CLOSED, None
        return np.array([target[0], target[1], touch_z]), CLOSED, None


class PickPlaceExpert(Expert):
    """approach -> descend -> close -> lift [-> carry -> lower -> release -> retreat].

    With no destination (``pick``) the expert holds the block up after ``lift``.
    """

    def place_height(self, state: State) -> float:
        raise NotImplementedError

    def plan(self, state: State) -> tuple[Optional[np.ndarray], float, Optional[str]]:
        p = self.params
        block = position(state, self.task.target)
        ee = np.asarray(state['ee_position'], dtype=np.float64)
        held = np.linalg.norm(block - ee) <= p.slip_distance
        phase = self.phase
        if phase == 'approach':
            goal = np.array([block[0], block[1], p.hover])
            if self.arrived(state, goal, p.travel_tolerance):
                return None, OPEN, 'descend'
            return goal, OPEN, None
        if phase == 'descend':
            goal = block + np.array([0.0, 0.0, p.grasp_depth])
            if self.arrived(state, goal, p.arrive_tolerance):
                return None, CLOSED, 'close'
            if np.linalg.norm(block[:2] - ee[:2]) > 0.02 and ee[2] > block[2] + 0.03:
                return None, OPEN, 'approach'  # the block moved: line up again
            return goal, OPEN, None
        if phase == 'close':
            if self.steps_in_phase >= p.close_steps:
                return None, CLOSED, 'lift'
            return None, CLOSED, None
        if not held and phase in ('lift', 'carry', 'lower'):
            return None, OPEN, 'approach'  # the grasp slipped
        if phase == 'lift':
            goal = np.array([ee[0], ee[1], p.hover])
            if self.task.destination is not None and ee[2] >= p.hover - p.travel_tolerance:
                return None, CLOSED, 'carry'
            return goal, CLOSED, None
        destination = position(state, self.task.destination) if self.task.destination else None
        if phase == 'carry':
            goal = np.array([destination[0], destination[1], p.hover])
            if self.arrived(state, goal, p.travel_tolerance):
                return None, CLOSED, 'lower'
            return goal, CLOSED, None
        if phase == 'lower':
            goal = np.array([destination[0], destination[1], self.place_height(state)])
            if self.arrived(state, goal, p.arrive_tolerance):
                return None, OPEN, 'release'
            return goal, CLOSED, None
        if phase == 'release':
            if self.steps_in_phase >= p.release_steps:
                return None, OPEN, 'retreat'
            return None, OPEN, None
        return np.array([ee[0], ee[1], p.hover]), OPEN, None  # retreat


class PickExpert(PickPlaceExpert):
    def place_height(self, state: State) -> float:
        raise RuntimeError('pick has no destination')


class PutExpert(PickPlaceExpert):
    def place_height(self, state: State) -> float:
        bowl = position(state, self.task.destination)
        return float(bowl[2] + BOWL_FLOOR + BLOCK_HALF + 0.012)


class StackExpert(PickPlaceExpert):
    def place_height(self, state: State) -> float:
        lower = position(state, self.task.destination)
        return float(lower[2] + 2 * BLOCK_HALF + 0.006)


class PushExpert(Expert):
    """approach (behind the block) -> lower -> push (steering onto its centre line) -> retreat."""

    def plan(self, state: State) -> tuple[Optional[np.ndarray], float, Optional[str]]:
        p = self.params
        unit = np.array(DIRECTIONS[self.task.direction])
        block = position(state, self.task.target)
        moved = float(np.dot(block[:2] - start_position(state, self.task.target)[:2], unit))
        behind = block[:2] - unit * p.push_standoff
        if self.phase == 'approach':
            goal = np.array([behind[0], behind[1], p.hover])
            if self.arrived(state, goal, p.travel_tolerance):
                return None, CLOSED, 'lower'
            return goal, CLOSED, None
        if self.phase == 'lower':
            goal = np.array([behind[0], behind[1], p.push_height])
            if self.arrived(state, goal, p.arrive_tolerance):
                return None, CLOSED, 'push'
            return goal, CLOSED, None
        if self.phase == 'push':
            if moved >= p.push_goal:
                return None, CLOSED, 'retreat'
            # Aim a little past the block, on its centre line, so the push stays straight.
            ahead = block[:2] + unit * 0.02
            return np.array([ahead[0], ahead[1], p.push_height]), CLOSED, None
        ee = np.asarray(state['ee_position'], dtype=np.float64)
        return np.array([ee[0], ee[1], p.hover]), CLOSED, None


EXPERTS: dict[str, type[Expert]] = {
    'reach': ReachExpert, 'pick': PickExpert, 'push': PushExpert, 'put': PutExpert,
    'stack': StackExpert,
}
