"""Success checks are pure functions of a hand-made state: each accepts and rejects."""
from __future__ import annotations

import pytest

from vla_align.sim.success import (
    DIRECTIONS,
    pick_success,
    push_success,
    put_success,
    reach_success,
    stack_success,
)
from vla_align.sim.types import TaskSpec

TABLE_Z = 0.02  # a resting block's centre


def state(objects: dict, ee=(0.5, 0.0, 0.3), contacts=(), gripper=0.0) -> dict:
    """A world state; objects map name -> (position, start_position)."""
    return {
        'objects': {name: {'shape': name.split()[1], 'position': pos, 'start_position': start}
                    for name, (pos, start) in objects.items()},
        'ee_position': ee, 'gripper': gripper, 'contacts': list(contacts)}


REACH = TaskSpec('reach', 'touch the red block', 'red block')
PICK = TaskSpec('pick', 'pick up the red block', 'red block')
PUT = TaskSpec('put', 'put the red block in the blue bowl', 'red block', 'blue bowl')
STACK = TaskSpec('stack', 'stack the red block on the blue block', 'red block', 'blue block')


def test_reach_accepts_near_or_touching_and_rejects_far():
    block = {'red block': ((0.5, 0.1, TABLE_Z), (0.5, 0.1, TABLE_Z))}
    assert reach_success(state(block, ee=(0.5, 0.1, 0.05)), REACH)
    assert reach_success(state(block, ee=(0.5, 0.2, 0.2),
                               contacts=[('gripper', 'red block')]), REACH)
    assert not reach_success(state(block, ee=(0.5, 0.1, 0.12)), REACH)
    assert not reach_success(state(block, ee=(0.5, 0.2, TABLE_Z)), REACH)
    # touching by another robot link or another object does not count
    assert not reach_success(state(block, contacts=[('red block', 'robot')]), REACH)


def test_pick_needs_lift_and_grip():
    start = (0.5, 0.0, TABLE_Z)
    lifted = {'red block': ((0.5, 0.0, TABLE_Z + 0.08), start)}
    held = [('gripper', 'red block')]
    assert pick_success(state(lifted, contacts=held), PICK)
    assert not pick_success(state(lifted), PICK)  # flying, not held
    low = {'red block': ((0.5, 0.0, TABLE_Z + 0.03), start)}
    assert not pick_success(state(low, contacts=held), PICK)


@pytest.mark.parametrize('direction', sorted(DIRECTIONS))
def test_push_needs_distance_along_the_direction(direction):
    task = TaskSpec('push', f'push it {direction}', 'red block', direction=direction)
    dx, dy = DIRECTIONS[direction]
    start = (0.5, 0.0, TABLE_Z)

    def moved(along: float, side: float = 0.0, dz: float = 0.0) -> dict:
        pos = (0.5 + along * dx - side * dy, along * dy + side * dx, TABLE_Z + dz)
        return state({'red block': (pos, start)})

    assert push_success(moved(0.09), task)
    assert not push_success(moved(0.04), task)  # not far enough
    assert not push_success(moved(-0.09), task)  # the opposite way
    assert not push_success(moved(0.08, side=0.1), task)  # mostly sideways
    assert not push_success(moved(0.09, dz=0.05), task)  # carried, not pushed


def test_push_rejects_an_unknown_direction():
    task = TaskSpec('push', 'push it up', 'red block', direction='up')
    with pytest.raises(ValueError, match='direction'):
        push_success(state({'red block': ((0.5, 0, TABLE_Z), (0.5, 0, TABLE_Z))}), task)


def test_put_needs_block_inside_resting_and_released():
    bowl = ((0.5, -0.1, 0.0), (0.5, -0.1, 0.0))
    inside = ((0.51, -0.09, 0.024), (0.4, 0.1, TABLE_Z))
    assert put_success(state({'red block': inside, 'blue bowl': bowl}), PUT)
    held = [('gripper', 'red block')]
    assert not put_success(state({'red block': inside, 'blue bowl': bowl}, contacts=held), PUT)
    beside = ((0.5, -0.17, TABLE_Z), (0.4, 0.1, TABLE_Z))
    assert not put_success(state({'red block': beside, 'blue bowl': bowl}), PUT)
    above = ((0.5, -0.1, 0.09), (0.4, 0.1, TABLE_Z))
    assert not put_success(state({'red block': above, 'blue bowl': bowl}), PUT)


def test_stack_needs_alignment_height_release_and_base_on_table():
    base = ((0.45, 0.05, TABLE_Z), (0.45, 0.05, TABLE_Z))
    top = ((0.455, 0.05, TABLE_Z + 0.04), (0.6, 0.0, TABLE_Z))
    contact = [('blue block', 'red block')]
    assert stack_success(state({'red block': top, 'blue block': base}, contacts=contact), STACK)
    held = contact + [('gripper', 'red block')]
    assert not stack_success(state({'red block': top, 'blue block': base}, contacts=held), STACK)
    beside = ((0.49, 0.05, TABLE_Z), (0.6, 0.0, TABLE_Z))
    assert not stack_success(state({'red block': beside, 'blue block': base}), STACK)
    hovering = ((0.45, 0.05, TABLE_Z + 0.08), (0.6, 0.0, TABLE_Z))
    assert not stack_success(state({'red block': hovering, 'blue block': base}), STACK)
    lifted_base = ((0.45, 0.05, TABLE_Z + 0.05), (0.45, 0.05, TABLE_Z))
    on_lifted = ((0.45, 0.05, TABLE_Z + 0.09), (0.6, 0.0, TABLE_Z))
    assert not stack_success(state({'red block': on_lifted, 'blue block': lifted_base}), STACK)
