"""The fixed RGB camera: matrices from ``CameraConfig``, lighting, and per-episode jitter."""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pybullet
from pybullet_utils.bullet_client import BulletClient

from vla_align.sim.types import CameraConfig


@dataclass(frozen=True)
class Lighting:
    """TinyRenderer light; the shift split perturbs it."""

    direction: tuple[float, float, float] = (0.3, 0.4, 1.0)
    ambient: float = 0.55
    diffuse: float = 0.55
    specular: float = 0.05
    shadow: bool = True


def render(client: BulletClient, camera: CameraConfig, lighting: Lighting = Lighting(),
           renderer: int = pybullet.ER_TINY_RENDERER) -> np.ndarray:
    """(H, W, 3) uint8 RGB image of the current scene."""
    view = client.computeViewMatrix(camera.eye, camera.target, camera.up)
    projection = client.computeProjectionMatrixFOV(
        camera.fov_deg, camera.width / camera.height, camera.near, camera.far)
    _, _, rgba, _, _ = client.getCameraImage(
        camera.width, camera.height, view, projection, lightDirection=lighting.direction,
        lightAmbientCoeff=lighting.ambient, lightDiffuseCoeff=lighting.diffuse,
        lightSpecularCoeff=lighting.specular, shadow=int(lighting.shadow), renderer=renderer,
        flags=pybullet.ER_NO_SEGMENTATION_MASK)
    image = np.asarray(rgba, dtype=np.uint8).reshape(camera.height, camera.width, 4)
    return np.ascontiguousarray(image[:, :, :3])


def jitter_camera(camera: CameraConfig, rng: np.random.Generator, amount: float) -> CameraConfig:
    """Move eye and target by up to ``amount`` metres per axis (target by half as much)."""
    if amount <= 0:
        return camera
    eye = np.array(camera.eye) + rng.uniform(-amount, amount, 3)
    target = np.array(camera.target) + rng.uniform(-amount / 2, amount / 2, 3)
    return replace(camera, eye=tuple(float(v) for v in eye),
                   target=tuple(float(v) for v in target))


def jitter_lighting(lighting: Lighting, rng: np.random.Generator, amount: float) -> Lighting:
    """Perturb the light direction and brightness; ``amount`` in [0, 1] sets the strength."""
    if amount <= 0:
        return lighting
    direction = np.array(lighting.direction) + rng.uniform(-amount, amount, 3)
    direction[2] = max(direction[2], 0.3)  # keep the light above the table
    scale = 1.0 + rng.uniform(-0.4, 0.4) * amount
    return replace(lighting, direction=tuple(float(v) for v in direction),
                   ambient=float(np.clip(lighting.ambient * scale, 0.2, 0.9)),
                   diffuse=float(np.clip(lighting.diffuse * scale, 0.2, 0.9)))
