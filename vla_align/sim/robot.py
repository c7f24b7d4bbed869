"""The Franka Panda from ``pybullet_data``: loading, joint bookkeeping, IK and motor commands.

Everything here talks to one ``BulletClient`` passed in; nothing touches the global
PyBullet state. The controller (``controller.py``) decides *where* the hand goes; this module
only knows *how* to move the Panda there.
"""
from __future__ import annotations

from dataclasses import dataclass
import hashlib
import os
from pathlib import Path
import tempfile
from xml.etree import ElementTree

import numpy as np
import pybullet
import pybullet_data
from pybullet_utils.bullet_client import BulletClient

from vla_align.sim.types import PANDA_JOINT_NAMES

ARM_JOINTS: tuple[int, ...] = (0, 1, 2, 3, 4, 5, 6)
FINGER_JOINTS: tuple[int, ...] = (9, 10)
#: ``panda_grasptarget``: the point between the fingertips, 0.105 m below the hand flange.
EE_LINK = 11
#: Joint angles of a relaxed pose with the hand pointing down; also the IK null-space rest pose.
HOME_ARM = (0.0, -0.2, 0.0, -2.2, 0.0, 2.0, 0.785)
FINGER_OPEN = 0.04  # metres per finger (8 cm opening)
#: Hand pointing straight down (tool z along -z of the base), fingers closing along base y.
DOWN_ORIENTATION = (1.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class PandaParams:
    """Motor, contact and model parameters; the defaults are tuned for 4 cm, 100 g blocks."""

    arm_forces: tuple[float, ...] = (87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0)
    arm_position_gain: float = 0.2  # higher overshoots within a 0.1 s control step
    finger_force: float = 40.0
    finger_position_gain: float = 0.2
    finger_friction: float = 2.0
    finger_coupling_force: float = 50.0
    ik_iterations: int = 60
    #: Draw the links with their collision meshes (~3k triangles instead of ~100k): rendering
    #: a 128x128 frame gets several times faster; physics is unchanged.
    low_poly_visuals: bool = True
    #: Collide the fingers as flat rigid pads instead of the soft convex-hull meshes, whose
    #: one- or two-point contacts let a held block pivot and spring away on release.
    box_finger_pads: bool = True


#: Finger collision boxes in the left finger's frame (inner face at y = 0), as
#: (centre, half extents): the fingertip pad and the finger body above it.
_FINGER_BOXES = (((0.0, 0.007, 0.045), (0.0095, 0.007, 0.009)),
                 ((0.0, 0.017, 0.018), (0.0105, 0.009, 0.018)))


def panda_urdf(params: PandaParams) -> str:
    """Path of the Panda URDF to load for ``params``.

    The variant is derived at run time from ``pybullet_data``'s own file (never copied into
    this repository) and cached in the temp dir under a name that hashes its content.
    """
    original = Path(pybullet_data.getDataPath()) / 'franka_panda' / 'panda.urdf'
    if not (params.low_poly_visuals or params.box_finger_pads):
        return str(original)
    root = ElementTree.fromstring(original.read_text())
    meshes = (original.parent / 'meshes').as_posix()
    for mesh in root.iter('mesh'):
        name = mesh.get('filename', '')
        if params.low_poly_visuals:
            name = name.replace('package://meshes/visual/', 'package://meshes/collision/')
        mesh.set('filename', name.replace('package://meshes/', meshes + '/'))
    if params.box_finger_pads:
        for link in root.iter('link'):
            side = {'panda_leftfinger': 1.0, 'panda_rightfinger': -1.0}.get(link.get('name'))
            if side is None:
                continue
            for old in link.findall('collision'):
                link.remove(old)
            contact = link.find('contact')
            for soft in ('stiffness', 'damping') if contact is not None else ():
                for element in contact.findall(soft):
                    contact.remove(element)
            for centre, half in _FINGER_BOXES:
                collision = ElementTree.SubElement(link, 'collision')
                x, y, z = centre
                ElementTree.SubElement(collision, 'origin', xyz=f'{x} {side * y} {z}',
                                       rpy='0 0 0')
                geometry = ElementTree.SubElement(collision, 'geometry')
                ElementTree.SubElement(geometry, 'box',
                                       size=' '.join(str(2 * h) for h in half))
    text = ElementTree.tostring(root, encoding='unicode')
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f'vla_align_panda_{digest}.urdf'
    if not path.is_file():
        scratch = path.with_suffix(f'.{os.getpid()}.tmp')
        scratch.write_text(text)
        os.replace(scratch, path)  # atomic: parallel workers never read a half-written file
    return str(path)


class Panda:
    """A fixed-base Panda arm with a parallel gripper."""

    def __init__(self, client: BulletClient, params: PandaParams = PandaParams()) -> None:
        self._client = client
        self.params = params
        self.body = client.loadURDF(panda_urdf(params),
                                    basePosition=(0.0, 0.0, 0.0), useFixedBase=True)
        n = client.getNumJoints(self.body)
        names = [client.getJointInfo(self.body, j)[1].decode() for j in range(n)]
        self._state_joints = tuple(names.index(name) for name in PANDA_JOINT_NAMES)
        self._movable = tuple(j for j in range(n)
                              if client.getJointInfo(self.body, j)[2] != pybullet.JOINT_FIXED)
        infos = [client.getJointInfo(self.body, j) for j in self._movable]
        self._lower = [info[8] for info in infos]
        self._upper = [info[9] for info in infos]
        self._ranges = [hi - lo for lo, hi in zip(self._lower, self._upper, strict=True)]
        self._rest = list(HOME_ARM) + [FINGER_OPEN, FINGER_OPEN]
        for finger in FINGER_JOINTS:
            client.changeDynamics(self.body, finger, lateralFriction=params.finger_friction,
                                  spinningFriction=0.01, frictionAnchor=True)
        # Couple the fingers (the real hand's mimic joint) so a grasped block stays centred
        # between them instead of the pair drifting sideways when the arm accelerates.
        gear = client.createConstraint(self.body, FINGER_JOINTS[0], self.body, FINGER_JOINTS[1],
                                       jointType=pybullet.JOINT_GEAR, jointAxis=(1, 0, 0),
                                       parentFramePosition=(0, 0, 0),
                                       childFramePosition=(0, 0, 0))
        client.changeConstraint(gear, gearRatio=-1, erp=0.1, maxForce=params.finger_coupling_force)
        self.reset_joints(HOME_ARM, FINGER_OPEN)

    # -- state -------------------------------------------------------------------------
    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(position (3,), quaternion xyzw (4,)) of the grasp point in the base frame."""
        state = self._client.getLinkState(self.body, EE_LINK, computeForwardKinematics=True)
        return np.array(state[4], dtype=np.float64), np.array(state[5], dtype=np.float64)

    def joint_positions(self) -> np.ndarray:
        """(9,) positions in ``PANDA_JOINT_NAMES`` order."""
        states = self._client.getJointStates(self.body, self._state_joints)
        return np.array([s[0] for s in states], dtype=np.float64)

    def finger_opening(self) -> float:
        """Distance between the fingers in metres (0 closed, 0.08 fully open)."""
        states = self._client.getJointStates(self.body, FINGER_JOINTS)
        return float(sum(s[0] for s in states))

    # -- commands ------------------------------------------------------------------------
    def reset_joints(self, arm: tuple[float, ...] | np.ndarray, finger: float) -> None:
        """Teleport the joints (only at reset; during an episode use the motors)."""
        for joint, angle in zip(ARM_JOINTS, arm, strict=True):
            self._client.resetJointState(self.body, joint, float(angle))
        for joint in FINGER_JOINTS:
            self._client.resetJointState(self.body, joint, float(finger))
        self.command_arm(np.asarray(arm, dtype=np.float64))
        self.command_gripper(0.0)

    def solve_ik(self, position: np.ndarray, orientation: np.ndarray) -> np.ndarray:
        """Arm joint angles (7,) that put the grasp point at ``position``/``orientation``."""
        solution = self._client.calculateInverseKinematics(
            self.body, EE_LINK, [float(v) for v in position], [float(v) for v in orientation],
            lowerLimits=self._lower, upperLimits=self._upper, jointRanges=self._ranges,
            restPoses=self._rest, maxNumIterations=self.params.ik_iterations,
            residualThreshold=1e-5)
        return np.clip(np.array(solution[:len(ARM_JOINTS)]), self._lower[:7], self._upper[:7])

    def teleport_ee(self, position: np.ndarray, orientation: np.ndarray) -> None:
        """Place the hand at a pose by repeated IK + joint reset (reset time only)."""
        for _ in range(8):
            self.reset_joints(self.solve_ik(position, orientation), FINGER_OPEN)

    def command_arm(self, angles: np.ndarray) -> None:
        self._client.setJointMotorControlArray(
            self.body, list(ARM_JOINTS), pybullet.POSITION_CONTROL,
            targetPositions=[float(a) for a in angles], forces=list(self.params.arm_forces),
            positionGains=[self.params.arm_position_gain] * len(ARM_JOINTS))

    def command_gripper(self, closed: float) -> None:
        """``closed`` in [0, 1]: 0 fully open, 1 squeezing shut with ``finger_force``."""
        target = FINGER_OPEN * (1.0 - float(np.clip(closed, 0.0, 1.0)))
        for joint in FINGER_JOINTS:
            self._client.setJointMotorControl2(
                self.body, joint, pybullet.POSITION_CONTROL, targetPosition=target,
                force=self.params.finger_force, positionGain=self.params.finger_position_gain)
