"""The tabletop: table, coloured blocks and bowls, and seeded layouts.

Objects are named ``'<colour> <shape>'`` (e.g. ``'red block'``, ``'yellow bowl'``); a scene
never holds two objects with the same name, so a name in a ``TaskSpec`` is unambiguous.
Blocks are 4 cm, 100 g cubes a Panda can grasp; bowls are static shallow octagonal trays
built from box primitives (robust contacts, no meshes to ship).
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Optional

import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient

#: Canonical colour names -> RGB in [0, 1]. The instruction vocabulary (synonyms) lives in the
#: task-suite YAML; rendering colours live here so every suite draws the same objects.
PALETTE: dict[str, tuple[float, float, float]] = {
    'red': (0.86, 0.10, 0.10),
    'green': (0.12, 0.70, 0.18),
    'blue': (0.12, 0.28, 0.90),
    'yellow': (0.95, 0.85, 0.10),
    'purple': (0.55, 0.15, 0.75),
    'orange': (1.00, 0.50, 0.05),
}
SHAPES: tuple[str, ...] = ('block', 'bowl')

BLOCK_HALF = 0.02  # metres: a 4 cm cube
BLOCK_MASS = 0.1  # kg
BOWL_INNER = 0.05  # apothem of the octagonal floor inside the walls
BOWL_WALL = 0.006  # wall thickness
BOWL_HEIGHT = 0.03  # wall height above the table
BOWL_FLOOR = 0.004  # floor thickness
TABLE_COLOUR = (0.78, 0.72, 0.62)
#: Footprint radius per shape for spacing objects apart.
#: A block's radius includes room for the open fingers (8 cm apart) around it.
FOOTPRINT = {'block': 0.045, 'bowl': BOWL_INNER + BOWL_WALL + 0.005}
#: Where object centres may be placed (base frame, metres).
LAYOUT_LOW = (0.36, -0.22)
LAYOUT_HIGH = (0.66, 0.22)


def object_name(colour: str, shape: str) -> str:
    return f'{colour} {shape}'


def parse_object_name(name: str) -> tuple[str, str]:
    """``'red block'`` -> ``('red', 'block')``; raises ``ValueError`` for unknown words."""
    parts = name.strip().split()
    if len(parts) != 2 or parts[0] not in PALETTE or parts[1] not in SHAPES:
        raise ValueError(f'object name {name!r} must be "<colour> <shape>" with colour in '
                         f'{sorted(PALETTE)} and shape in {list(SHAPES)}')
    return parts[0], parts[1]


@dataclass(frozen=True)
class PlacedObject:
    """One object of a layout: what it is and where it starts."""

    name: str
    shape: str
    colour: str
    position: tuple[float, float]  # x, y on the table
    yaw: float


@dataclass(frozen=True)
class Keepout:
    """A segment (a point when ``start == end``) other objects must stay ``clearance`` from."""

    start: tuple[float, float]
    end: tuple[float, float]
    clearance: float

    def distance(self, point: np.ndarray) -> float:
        a, b = np.array(self.start), np.array(self.end)
        ab = b - a
        t = 0.0 if not ab.any() else float(np.clip(np.dot(point - a, ab) / np.dot(ab, ab), 0, 1))
        return float(np.linalg.norm(point - (a + t * ab)))


class LayoutError(RuntimeError):
    """No collision-free layout was found for the requested objects."""


def sample_position(rng: np.random.Generator, shape: str, placed: list[PlacedObject],
                    keepouts: list[Keepout], low: tuple[float, float] = LAYOUT_LOW,
                    high: tuple[float, float] = LAYOUT_HIGH, tries: int = 200
                    ) -> Optional[tuple[float, float]]:
    """A free (x, y) for an object of ``shape`` or None after ``tries`` rejections."""
    radius = FOOTPRINT[shape]
    for _ in range(tries):
        point = rng.uniform(low, high)
        if any(np.linalg.norm(point - np.array(o.position)) < radius + FOOTPRINT[o.shape] + 0.015
               for o in placed):
            continue
        if any(k.distance(point) < k.clearance + radius for k in keepouts):
            continue
        return float(point[0]), float(point[1])
    return None


def pick_distractors(rng: np.random.Generator, count: int, taken: set[str]) -> list[str]:
    """``count`` object names not in ``taken``, a mix of blocks and bowls (at most 2 bowls)."""
    names: list[str] = []
    bowls = sum(1 for name in taken if name.endswith(' bowl'))
    for _ in range(count):
        shapes = ['block', 'bowl'] if bowls < 2 else ['block']
        shape = shapes[int(rng.integers(len(shapes)))]
        free = [c for c in PALETTE if object_name(c, shape) not in taken | set(names)]
        if not free:
            continue
        name = object_name(free[int(rng.integers(len(free)))], shape)
        names.append(name)
        bowls += shape == 'bowl'
    return names


# -- building bodies ---------------------------------------------------------------------------
def build_table(client: BulletClient, rgb: tuple[float, float, float] = TABLE_COLOUR) -> int:
    """A static slab whose top face is the plane z = 0 of the robot base frame."""
    half = (0.75, 0.75, 0.02)
    collision = client.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half)
    visual = client.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=(*rgb, 1))
    body = client.createMultiBody(0, collision, visual, basePosition=(0.45, 0.0, -half[2]))
    client.changeDynamics(body, -1, lateralFriction=0.5)
    return body


def build_block(client: BulletClient, rgb: tuple[float, float, float],
                position: tuple[float, float], yaw: float) -> int:
    half = (BLOCK_HALF,) * 3
    collision = client.createCollisionShape(pybullet.GEOM_BOX, halfExtents=half)
    visual = client.createVisualShape(pybullet.GEOM_BOX, halfExtents=half, rgbaColor=(*rgb, 1))
    body = client.createMultiBody(
        BLOCK_MASS, collision, visual, basePosition=(position[0], position[1], BLOCK_HALF),
        baseOrientation=client.getQuaternionFromEuler((0.0, 0.0, yaw)))
    client.changeDynamics(body, -1, lateralFriction=1.0, spinningFriction=0.002,
                          rollingFriction=0.0001, frictionAnchor=True)
    return body


def build_bowl(client: BulletClient, rgb: tuple[float, float, float],
               position: tuple[float, float], yaw: float) -> int:
    """A static octagonal tray: a thin floor plus eight wall boxes."""
    side = 2.0 * BOWL_INNER * math.tan(math.pi / 8.0)
    floor_half = (BOWL_INNER + BOWL_WALL, BOWL_INNER + BOWL_WALL, BOWL_FLOOR / 2.0)
    wall_half = ((side + BOWL_WALL) / 2.0, BOWL_WALL / 2.0, BOWL_HEIGHT / 2.0)
    halves, positions, orientations = [floor_half], [(0.0, 0.0, BOWL_FLOOR / 2.0)], [(0, 0, 0, 1)]
    for k in range(8):
        angle = k * math.pi / 4.0
        r = BOWL_INNER + BOWL_WALL / 2.0
        halves.append(wall_half)
        positions.append((r * math.cos(angle), r * math.sin(angle), BOWL_HEIGHT / 2.0))
        orientations.append(client.getQuaternionFromEuler((0.0, 0.0, angle + math.pi / 2.0)))
    n = len(halves)
    collision = client.createCollisionShapeArray(
        [pybullet.GEOM_BOX] * n, halfExtents=halves, collisionFramePositions=positions,
        collisionFrameOrientations=orientations)
    visual = client.createVisualShapeArray(
        [pybullet.GEOM_BOX] * n, halfExtents=halves, visualFramePositions=positions,
        visualFrameOrientations=orientations)
    body = client.createMultiBody(
        0, collision, visual, basePosition=(position[0], position[1], 0.0),
        baseOrientation=client.getQuaternionFromEuler((0.0, 0.0, yaw)))
    client.changeVisualShape(body, -1, rgbaColor=(*rgb, 1))
    client.changeDynamics(body, -1, lateralFriction=0.8)
    return body


def build_object(client: BulletClient, obj: PlacedObject,
                 rgb: Optional[tuple[float, float, float]] = None) -> int:
    colour = PALETTE[obj.colour] if rgb is None else rgb
    builder = build_block if obj.shape == 'block' else build_bowl
    return builder(client, colour, obj.position, obj.yaw)
