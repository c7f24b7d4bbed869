"""``ManipulationEnv``: the PyBullet tabletop world behind one Gymnasium-shaped interface.

The env owns its own ``BulletClient`` (DIRECT mode, never the global PyBullet state) and
draws all randomness of an episode at ``reset`` from a generator seeded by the seed and the
task's objects; the simulation is rebuilt from scratch each reset, so the same (seed, task)
always gives the same frames and, with the expert, the same actions.
"""
from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Any, Optional, TypeVar
import zlib

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

from vla_align.actions import ActionLimits
from vla_align.sim.camera import Lighting, jitter_camera, jitter_lighting, render
from vla_align.sim.controller import EndEffectorController, SpeedLimits, Workspace
from vla_align.sim.experts import Expert
from vla_align.sim.robot import DOWN_ORIENTATION, FINGER_JOINTS, Panda
from vla_align.sim.scene import (
    PALETTE,
    TABLE_COLOUR,
    LayoutError,
    PlacedObject,
    build_object,
    build_table,
    parse_object_name,
    pick_distractors,
    sample_position,
)
from vla_align.sim.success import State
from vla_align.sim.tasks import Task, get_task
from vla_align.sim.types import CameraConfig, Observation, StepResult, TaskSpec

#: Where the grasp point starts each episode (uniform in this box, base frame).
START_LOW = (0.36, -0.08, 0.20)
START_HIGH = (0.46, 0.08, 0.26)
SETTLE_STEPS = 24  # physics steps after building a scene, before the first frame


@dataclass(frozen=True)
class EnvConfig:
    """Camera, rates and limits of the simulated robot."""

    camera: CameraConfig = CameraConfig()
    control_hz: float = 10.0
    physics_hz: float = 240.0
    limits: ActionLimits = ActionLimits()
    max_steps: Optional[int] = None  # None = per-family default (Task.max_steps)
    workspace: Workspace = Workspace()
    speed_limits: SpeedLimits = SpeedLimits()
    lighting: Lighting = Lighting()

    def __post_init__(self) -> None:
        if not (self.control_hz > 0 and self.physics_hz >= self.control_hz):
            raise ValueError(f'need 0 < control_hz <= physics_hz, got control_hz='
                             f'{self.control_hz}, physics_hz={self.physics_hz}')
        ratio = self.physics_hz / self.control_hz
        if abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f'physics_hz / control_hz must be a whole number of substeps, '
                             f'got {ratio:g}')
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f'max_steps must be >= 1 or None, got {self.max_steps}')
        camera = self.camera
        if not (camera.width >= 8 and camera.height >= 8 and 0 < camera.fov_deg < 180
                and 0 < camera.near < camera.far):
            raise ValueError(f'camera needs width/height >= 8, 0 < fov_deg < 180 and '
                             f'0 < near < far, got {camera}')

    @property
    def substeps(self) -> int:
        return int(round(self.physics_hz / self.control_hz))


class ManipulationEnv:
    """A Panda, a table and coloured objects; one task per episode."""

    def __init__(self, config: EnvConfig = EnvConfig()) -> None:
        self.config = config
        self._client = BulletClient(connection_mode=pybullet.DIRECT)
        self._task: Optional[TaskSpec] = None
        self._family: Optional[Task] = None
        self._seed: Optional[int] = None
        self.step_count = 0
        self._max_steps = config.max_steps or 1
        self._camera = config.camera
        self._lighting = config.lighting
        self._bodies: dict[str, int] = {}
        self._shapes: dict[str, str] = {}
        self._starts: dict[str, tuple[float, float, float]] = {}
        self._table = -1
        self._robot: Optional[Panda] = None
        self._controller: Optional[EndEffectorController] = None
        self._expert: Optional[Expert] = None
        self._success = False
        #: Frames rendered and seconds spent rendering since construction (for benchmarks).
        self.frames_rendered = 0
        self.render_seconds = 0.0

    # -- properties ----------------------------------------------------------------------------
    @property
    def task(self) -> TaskSpec:
        return _after_reset(self._task)

    @property
    def seed(self) -> int:
        return _after_reset(self._seed)

    @property
    def max_steps(self) -> int:
        return self._max_steps

    @property
    def camera(self) -> CameraConfig:
        """The camera of this episode (the configured one, jittered in the shift split)."""
        return self._camera

    @property
    def controller(self) -> EndEffectorController:
        return _after_reset(self._controller)

    @property
    def object_names(self) -> tuple[str, ...]:
        return tuple(self._bodies)

    # -- episode -------------------------------------------------------------------------------
    def reset(self, seed: int, task: TaskSpec) -> Observation:
        """Build a fresh scene for ``task`` from ``seed`` and return the first observation."""
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f'seed must be a non-negative integer, got {seed!r}')
        if self._client is None:
            raise RuntimeError('the env is closed')
        family = get_task(task.family)
        family.validate(task)
        # The task's objects join the seed so that one seed list gives different layouts
        # across families and targets; same (seed, task) -> same episode.
        objects = f'{task.family}|{task.target}|{task.destination}|{task.direction}'
        rng = np.random.default_rng([int(seed), zlib.crc32(objects.encode())])
        self._task, self._family, self._seed = task, family, int(seed)
        self._max_steps = self.config.max_steps or family.max_steps
        self.step_count = 0
        self._success = False

        shift = task.shift or {}
        self._camera = jitter_camera(self.config.camera, rng, shift.get('camera_jitter', 0.0))
        self._lighting = jitter_lighting(self.config.lighting, rng, shift.get('light_jitter', 0.0))
        shade = float(shift.get('colour_jitter', 0.0))

        client = self._client
        client.resetSimulation()
        client.setAdditionalSearchPath(pybullet_data.getDataPath())
        client.setGravity(0.0, 0.0, -9.81)
        client.setTimeStep(1.0 / self.config.physics_hz)
        client.setPhysicsEngineParameter(deterministicOverlappingPairs=1)

        self._table = build_table(client, self._shade(rng, TABLE_COLOUR, shade))
        self._bodies, self._shapes = {}, {}
        for obj in self._layout(rng, family, task):
            self._bodies[obj.name] = build_object(client, obj,
                                                  self._shade(rng, PALETTE[obj.colour], shade))
            self._shapes[obj.name] = obj.shape
        self._robot = Panda(client)
        start = rng.uniform(START_LOW, START_HIGH)
        self._robot.teleport_ee(start, np.array(DOWN_ORIENTATION))
        self._controller = EndEffectorController(
            client, self._robot, self.config.limits, self.config.workspace,
            self.config.substeps, period_s=1.0 / self.config.control_hz,
            speed=self.config.speed_limits)
        self._controller.reset()
        for _ in range(SETTLE_STEPS):
            client.stepSimulation()
        self._starts = {name: self._position(name) for name in self._bodies}
        self._expert = family.make_expert(task, self.config.limits)
        return self._observe()

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action for one control period.

        Raises ``UnsafeActionError`` (nothing moves) when the action is non-finite or not
        7 values; out-of-limit values are clamped and reported in ``info['applied_action']``.
        """
        controller = self.controller
        applied = controller.apply(action)
        self.step_count += 1
        state = self.world_state()
        self._success = bool(self._family.success(state, self.task))
        truncated = not self._success and self.step_count >= self._max_steps
        info: dict[str, Any] = {'success': self._success, 'applied_action': applied,
                                'expert_phase': self._expert.phase if self._expert else None}
        return StepResult(observation=self._observe(), reward=float(self._success),
                          terminated=self._success, truncated=truncated, info=info)

    def expert_action(self) -> np.ndarray:
        """The scripted expert's next action for the current state (within the limits)."""
        return _after_reset(self._expert).act(self.world_state(),
                                              self.controller.target_position)

    def render(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB of the current state from this episode's camera."""
        if self._client is None:
            raise RuntimeError('the env is closed')
        start = time.perf_counter()
        image = render(self._client, self._camera, self._lighting)
        self.render_seconds += time.perf_counter() - start
        self.frames_rendered += 1
        return image

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client = None

    def __enter__(self) -> ManipulationEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ---------------------------------------------------------------------------------
    def world_state(self) -> State:
        """Plain-data state for success checks and experts (format: ``success.py``)."""
        robot = _after_reset(self._robot)
        contacts: set[tuple[str, str]] = set()
        names = {body: name for name, body in self._bodies.items()}
        names[self._table] = 'table'
        for name, body in self._bodies.items():
            for point in self._client.getContactPoints(bodyA=body):
                other = point[2]
                if other == robot.body:
                    other_name = 'gripper' if point[4] in FINGER_JOINTS else 'robot'
                else:
                    other_name = names.get(other, 'unknown')
                contacts.add(tuple(sorted((name, other_name))))
        ee, _ = robot.ee_pose()
        return {
            'objects': {name: {'shape': self._shapes[name], 'position': self._position(name),
                               'start_position': self._starts.get(name, self._position(name))}
                        for name in self._bodies},
            'ee_position': tuple(float(v) for v in ee),
            'gripper': float(self.controller.gripper),
            'contacts': sorted(contacts),
        }

    def _position(self, name: str) -> tuple[float, float, float]:
        position, _ = self._client.getBasePositionAndOrientation(self._bodies[name])
        return tuple(float(v) for v in position)

    def _observe(self) -> Observation:
        ee, orientation = self._robot.ee_pose()
        return Observation(
            image=self.render(), instruction=self.task.instruction,
            ee_position=ee.astype(np.float32), ee_orientation=orientation.astype(np.float32),
            gripper=float(self.controller.gripper),
            joint_positions=self._robot.joint_positions().astype(np.float32),
            time=self.step_count / self.config.control_hz)

    # -- scene sampling --------------------------------------------------------------------------
    @staticmethod
    def _shade(rng: np.random.Generator, rgb: tuple[float, float, float],
               amount: float) -> tuple[float, float, float]:
        """``rgb`` perturbed by up to ``amount`` per channel (the shift split's colour shift)."""
        if amount <= 0:
            return rgb
        return tuple(float(v) for v in np.clip(np.array(rgb) + rng.uniform(-amount, amount, 3),
                                               0.0, 1.0))

    @staticmethod
    def _layout(rng: np.random.Generator, family: Task, task: TaskSpec) -> list[PlacedObject]:
        """Target first (where the family needs it), then destination, then distractors."""
        names = [task.target] + ([task.destination] if task.destination else [])
        names += pick_distractors(rng, task.num_distractors, set(names))
        placed: list[PlacedObject] = []
        keepouts = []
        for index, name in enumerate(names):
            colour, shape = parse_object_name(name)
            if index == 0:
                low, high = family.target_region(task)
                xy = sample_position(rng, shape, placed, [], low, high)
            else:
                xy = sample_position(rng, shape, placed, keepouts)
            if xy is None:
                if index < len(names) - task.num_distractors:
                    raise LayoutError(f'no room for {name!r} in task {task.instruction!r}')
                continue  # a distractor that does not fit is left out
            yaw = float(rng.uniform(-0.3, 0.3)) if shape == 'block' else 0.0
            placed.append(PlacedObject(name, shape, colour, xy, yaw))
            if index == 0:
                keepouts = family.keepouts(task, xy)
        return placed


T = TypeVar('T')


def _after_reset(value: Optional[T]) -> T:
    """``value``, or a clear error when the env has not been reset yet."""
    if value is None:
        raise RuntimeError('no episode yet: call reset(seed, task) first')
    return value
