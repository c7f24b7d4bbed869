"""Task families: a base ``Task`` and a registry by name (cliport/ravens style).

A ``Task`` knows which objects its instructions refer to, how to sample a ``TaskSpec`` for a
split, where its target may be placed, which expert solves it and how success is checked.
It holds no episode state: ``ManipulationEnv`` owns that.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from vla_align.actions import ActionLimits
from vla_align.sim.experts import EXPERTS, Expert
from vla_align.sim.language import SamplingConfig
from vla_align.sim.scene import LAYOUT_HIGH, LAYOUT_LOW, PALETTE, Keepout, parse_object_name
from vla_align.sim.success import DIRECTIONS, SUCCESS_CHECKS, State
from vla_align.sim.types import TaskSpec


class Task:
    """One task family. Subclasses set the class attributes; behaviour is shared."""

    family: str = ''
    target_shapes: tuple[str, ...] = ('block',)
    destination_shape: Optional[str] = None
    uses_direction: bool = False
    max_steps: int = 60

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, rng: np.random.Generator, config: SamplingConfig) -> TaskSpec:
        """A random task instance for ``config.split`` (deterministic in ``rng``)."""
        if not config.target_colours:
            raise ValueError(f'split {config.split!r} leaves no target colour for {self.family}')
        if not config.templates:
            raise ValueError(f'split {config.split!r} has no templates for {self.family}')
        colour = config.target_colours[int(rng.integers(len(config.target_colours)))]
        shape = self.target_shapes[int(rng.integers(len(self.target_shapes)))]
        vocabulary, mode = config.vocabulary, config.word_mode
        words = {'target': vocabulary.phrase(rng, colour, shape, mode)}
        destination = direction = None
        if self.destination_shape is not None:
            others = [c for c in PALETTE
                      if not (c == colour and self.destination_shape == shape)]
            dest_colour = others[int(rng.integers(len(others)))]
            destination = f'{dest_colour} {self.destination_shape}'
            words['destination'] = vocabulary.phrase(rng, dest_colour, self.destination_shape,
                                                     mode)
        if self.uses_direction:
            direction = sorted(DIRECTIONS)[int(rng.integers(len(DIRECTIONS)))]
            words['direction'] = vocabulary.choose(rng, 'direction', direction, mode)
        template = config.templates[int(rng.integers(len(config.templates)))]
        return TaskSpec(family=self.family, instruction=template.format(**words),
                        target=f'{colour} {shape}', destination=destination,
                        direction=direction, split=config.split,
                        num_distractors=config.num_distractors, shift=dict(config.shift))

    def validate(self, spec: TaskSpec) -> None:
        """Raise ``ValueError`` with a readable message unless ``spec`` fits this family."""
        if spec.family != self.family:
            raise ValueError(f'task family {spec.family!r} given to the {self.family!r} task')
        _, shape = parse_object_name(spec.target)
        if shape not in self.target_shapes:
            raise ValueError(f'{self.family}: target must be a {"/".join(self.target_shapes)}, '
                             f'got {spec.target!r}')
        if self.destination_shape is not None:
            if spec.destination is None:
                raise ValueError(f'{self.family}: needs a destination '
                                 f'{self.destination_shape}')
            _, dest_shape = parse_object_name(spec.destination)
            if dest_shape != self.destination_shape or spec.destination == spec.target:
                raise ValueError(f'{self.family}: destination must be another '
                                 f'{self.destination_shape}, got {spec.destination!r}')
        if self.uses_direction and spec.direction not in DIRECTIONS:
            raise ValueError(f'{self.family}: direction must be one of {sorted(DIRECTIONS)}, '
                             f'got {spec.direction!r}')
        if not 0 <= spec.num_distractors <= 6:
            raise ValueError(f'num_distractors must be in 0..6, got {spec.num_distractors}')

    # -- layout --------------------------------------------------------------------------------
    def target_region(self, spec: TaskSpec) -> tuple[tuple[float, float], tuple[float, float]]:
        """(low, high) x/y box for the target's start position."""
        return LAYOUT_LOW, LAYOUT_HIGH

    def keepouts(self, spec: TaskSpec, target_xy: tuple[float, float]) -> list[Keepout]:
        """Areas other objects must avoid once the target is placed."""
        return []

    # -- expert and success --------------------------------------------------------------------
    def make_expert(self, spec: TaskSpec, limits: ActionLimits) -> Expert:
        return EXPERTS[self.family](spec, limits)

    def success(self, state: State, spec: TaskSpec) -> bool:
        return SUCCESS_CHECKS[self.family](state, spec)


class ReachTask(Task):
    family = 'reach'
    target_shapes = ('block', 'bowl')
    max_steps = 40


class PickTask(Task):
    family = 'pick'
    max_steps = 50


class PushTask(Task):
    family = 'push'
    uses_direction = True
    max_steps = 60
    #: The block travels within this box (start, the expert's standoff and the end).
    travel_low, travel_high = (0.32, -0.27), (0.72, 0.27)
    behind, ahead = 0.08, 0.13

    def target_region(self, spec: TaskSpec) -> tuple[tuple[float, float], tuple[float, float]]:
        unit = np.array(DIRECTIONS[spec.direction])
        low = np.array(self.travel_low) + np.maximum(unit * self.ahead, -unit * self.behind)
        high = np.array(self.travel_high) + np.minimum(unit * self.ahead, -unit * self.behind)
        low = np.maximum(low, LAYOUT_LOW)
        high = np.minimum(high, LAYOUT_HIGH)
        return (float(low[0]), float(low[1])), (float(high[0]), float(high[1]))

    def keepouts(self, spec: TaskSpec, target_xy: tuple[float, float]) -> list[Keepout]:
        unit = np.array(DIRECTIONS[spec.direction])
        start = np.array(target_xy) - unit * self.behind
        end = np.array(target_xy) + unit * self.ahead
        return [Keepout(tuple(start), tuple(end), clearance=0.035)]


class PutTask(Task):
    family = 'put'
    destination_shape = 'bowl'
    max_steps = 80


class StackTask(Task):
    family = 'stack'
    destination_shape = 'block'
    max_steps = 80


TASKS: dict[str, Task] = {task.family: task for task in
                          (ReachTask(), PickTask(), PushTask(), PutTask(), StackTask())}


def get_task(family: str) -> Task:
    """The registered task family, or a ``ValueError`` naming the known ones."""
    try:
        return TASKS[family]
    except KeyError:
        raise ValueError(f'unknown task family {family!r}; known: {sorted(TASKS)}') from None
