"""Success checks: pure functions of a plain-data world state, one per task family.

A *state* is the dict that ``ManipulationEnv`` builds each step (and a test can write by hand)::

    {
      'objects': {'red block': {'shape': 'block',
                                'position': (x, y, z),         # now, base frame, metres
                                'start_position': (x, y, z)},  # at reset
                  ...},
      'ee_position': (x, y, z),          # grasp point between the fingertips
      'gripper': 0.0,                    # gripper command in force, 0 open .. 1 closed
      'contacts': [('gripper', 'red block'), ('red block', 'table'), ...],
    }

``contacts`` lists unordered pairs of names touching now (``'gripper'`` is either finger,
``'table'`` the table top). Block positions are cube centres; bowl positions are the
centre of the bowl's bottom face (on the table).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vla_align.sim.scene import BLOCK_HALF, BOWL_FLOOR, BOWL_INNER
from vla_align.sim.types import TaskSpec

State = dict[str, Any]

#: Push directions as unit vectors in the robot base frame. Words are meant as seen in the
#: default camera image, i.e. by a person standing across the table from the robot: left is
#: image-left (the robot's right, -y), forward is away from that person (towards the robot, -x).
DIRECTIONS: dict[str, tuple[float, float]] = {
    'left': (0.0, -1.0), 'right': (0.0, 1.0), 'forward': (-1.0, 0.0), 'backward': (1.0, 0.0),
}

REACH_RADIUS = 0.05  # grasp point within this distance of the object's position
LIFT_HEIGHT = 0.06  # picked: raised this much above its start, held by the gripper
PUSH_DISTANCE = 0.07  # pushed: moved this far along the direction, more than sideways
ON_TABLE_TOLERANCE = 0.01  # pushed objects stay on the table (not carried)
IN_BOWL_RADIUS = BOWL_INNER - 0.01  # block centre within this of the bowl centre
STACK_RADIUS = 0.025  # block centre within this horizontally of the lower block
STACK_GAP = (1.5 * BLOCK_HALF, 2.5 * BLOCK_HALF)  # vertical centre-to-centre distance


def position(state: State, name: str) -> np.ndarray:
    return np.asarray(state['objects'][name]['position'], dtype=np.float64)


def start_position(state: State, name: str) -> np.ndarray:
    return np.asarray(state['objects'][name]['start_position'], dtype=np.float64)


def touching(state: State, a: str, b: str) -> bool:
    return any({a, b} == set(pair) for pair in state.get('contacts', ()))


def reach_success(state: State, task: TaskSpec) -> bool:
    """The grasp point is at the target (or a finger touches it)."""
    ee = np.asarray(state['ee_position'], dtype=np.float64)
    near = np.linalg.norm(ee - position(state, task.target)) <= REACH_RADIUS
    return bool(near or touching(state, 'gripper', task.target))


def pick_success(state: State, task: TaskSpec) -> bool:
    """The target is held by the gripper, lifted clear of where it started."""
    lifted = position(state, task.target)[2] - start_position(state, task.target)[2]
    return bool(lifted >= LIFT_HEIGHT and touching(state, 'gripper', task.target))


def push_success(state: State, task: TaskSpec) -> bool:
    """The target slid far enough in the direction, mostly along it, and is still on the table."""
    if task.direction not in DIRECTIONS:
        raise ValueError(f'push needs a direction in {sorted(DIRECTIONS)}, '
                         f'got {task.direction!r}')
    moved = position(state, task.target) - start_position(state, task.target)
    unit = np.array(DIRECTIONS[task.direction])
    along = float(np.dot(moved[:2], unit))
    sideways = abs(float(unit[0] * moved[1] - unit[1] * moved[0]))
    on_table = moved[2] <= ON_TABLE_TOLERANCE
    return bool(along >= PUSH_DISTANCE and sideways < along and on_table)


def put_success(state: State, task: TaskSpec) -> bool:
    """The block rests inside the bowl and the gripper has let go of it."""
    block, bowl = position(state, task.target), position(state, task.destination)
    inside = np.linalg.norm(block[:2] - bowl[:2]) <= IN_BOWL_RADIUS
    resting = block[2] - bowl[2] <= BOWL_FLOOR + BLOCK_HALF + 0.01
    return bool(inside and resting and not touching(state, 'gripper', task.target))


def stack_success(state: State, task: TaskSpec) -> bool:
    """The block sits on top of the other block, released, and the lower block is on the table."""
    top, bottom = position(state, task.target), position(state, task.destination)
    centred = np.linalg.norm(top[:2] - bottom[:2]) <= STACK_RADIUS
    gap = top[2] - bottom[2]
    on_top = STACK_GAP[0] <= gap <= STACK_GAP[1]
    base_down = bottom[2] <= BLOCK_HALF + ON_TABLE_TOLERANCE
    return bool(centred and on_top and base_down
                and not touching(state, 'gripper', task.target))


SUCCESS_CHECKS: dict[str, Callable[[State, TaskSpec], bool]] = {
    'reach': reach_success, 'pick': pick_success, 'push': push_success,
    'put': put_success, 'stack': stack_success,
}
