"""Robot state sources: pose topic, TF and joint states + URDF give one checked sample."""
from __future__ import annotations

import sys
import time
import types

from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import Header

from vla_align.ros.conversions import joint_state_msg, pose_msg, seconds_to_stamp
from vla_align.ros.robot_state import (
    JointStateSource,
    NoStateYet,
    PoseStateSource,
    StateProblem,
    TfStateSource,
    tf_available,
)
from vla_align.sim.env import EnvConfig, ManipulationEnv
from vla_align.sim.suite import load_suite
from vla_align.sim.types import PANDA_JOINT_NAMES, CameraConfig

BASE = 'panda_link0'
DOWN = (1.0, 0.0, 0.0, 0.0)
ARM = PANDA_JOINT_NAMES[:7]
HOME = (0.0, -0.2, 0.0, -2.2, 0.0, 2.0, 0.785)


def pose_at(stamp_s: float, frame: str = BASE, quaternion=DOWN, position=(0.4, 0.1, 0.3)):
    return pose_msg(position, quaternion, seconds_to_stamp(stamp_s), frame)


def same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return abs(float(np.dot(a, b))) > 1.0 - 1e-6


@pytest.fixture(scope='module')
def joints():
    source = JointStateSource()
    yield source
    source.close()


# --- pose topic -------------------------------------------------------------------------------

def test_a_fresh_pose_is_the_sample():
    source = PoseStateSource(BASE)
    with pytest.raises(NoStateYet, match='no pose'):
        source.latest(100.0, 0.5)
    source.offer(pose_at(100.0), arrival_s=100.01)
    sample = source.latest(100.2, 0.5)
    np.testing.assert_allclose(sample.position, [0.4, 0.1, 0.3])
    np.testing.assert_allclose(sample.quaternion, DOWN)
    assert sample.stamp_s == pytest.approx(100.0) and sample.source == 'pose'


def test_stale_and_future_poses_are_refused_by_their_stamp():
    source = PoseStateSource(BASE)
    source.offer(pose_at(100.0), arrival_s=101.0)  # arrival does not rescue an old stamp
    with pytest.raises(StateProblem, match='0.600 s old'):
        source.latest(100.6, 0.5)
    source.offer(pose_at(102.0), arrival_s=101.0)
    assert source.latest(101.6, 0.5).stamp_s == pytest.approx(102.0)  # 0.4 s ahead: ok
    with pytest.raises(StateProblem, match='future'):
        source.latest(101.0, 0.5)


def test_arrival_time_stands_in_for_a_zero_stamp_or_when_asked():
    unstamped = pose_msg((0.4, 0.1, 0.3), DOWN, Time(), BASE)
    source = PoseStateSource(BASE)
    assert source.offer(unstamped, arrival_s=50.0).stamp_s == 50.0
    assert source.latest(50.3, 0.5).stamp_s == 50.0
    replay = PoseStateSource(BASE, age_by='arrival')
    kept = replay.offer(pose_at(3.0), arrival_s=900.0)
    # A replayed bag's stamps still pair poses with frames; only the age counts from arrival.
    assert (kept.stamp_s, kept.age_from_s) == (3.0, 900.0)
    assert replay.latest(900.3, 0.5).stamp_s == 3.0
    with pytest.raises(StateProblem, match='old'):
        replay.latest(900.6, 0.5)


@pytest.mark.parametrize('source_kind', ['pose', 'joint_states'])
def test_the_pose_paired_with_a_frame_is_the_one_at_its_stamp(source_kind):
    """Poses that arrive while the model waits do not replace the frame's own pose."""
    if source_kind == 'pose':
        source = PoseStateSource(BASE)
        offer = [lambda t, x=x: source.offer(pose_at(t, position=(x, 0.0, 0.3)), arrival_s=t)
                 for x in (0.40, 0.41, 0.42)]
    else:
        source = JointStateSource()
        offer = [lambda t, q=q: source.offer(joint_state_msg(ARM, list(HOME[:6]) + [q],
                                                             seconds_to_stamp(t)), arrival_s=t)
                 for q in (0.0, 0.3, 0.6)]
    try:
        for make, t in zip(offer, (10.0, 10.1, 10.2), strict=True):
            make(t)
        at_frame = source.latest(10.25, 0.5, at_s=10.1)
        newest = source.latest(10.25, 0.5)
        between = source.latest(10.25, 0.5, at_s=10.15)  # the newest at or before
        unpairable = source.latest(10.25, 0.5, at_s=9.0)  # another clock: the newest
        assert at_frame.stamp_s == pytest.approx(10.1) and newest.stamp_s == pytest.approx(10.2)
        assert between.stamp_s == pytest.approx(10.1)
        assert unpairable.stamp_s == pytest.approx(10.2)
        assert not np.allclose(at_frame.quaternion, newest.quaternion) or \
            not np.allclose(at_frame.position, newest.position)
    finally:
        source.close()


@pytest.mark.parametrize(('frame', 'reason'), [('world', "frame 'world', not the base"),
                                               ('', 'empty frame_id')])
def test_a_pose_in_another_frame_is_refused_and_forgets_the_last_one(frame, reason):
    source = PoseStateSource(BASE)
    source.offer(pose_at(10.0), arrival_s=10.0)
    with pytest.raises(StateProblem, match=reason):
        source.offer(pose_at(10.1, frame=frame), arrival_s=10.1)
    with pytest.raises(NoStateYet):
        source.latest(10.1, 0.5)
    assert source.offer(pose_at(10.2, frame='/' + BASE), arrival_s=10.2).source == 'pose'


@pytest.mark.parametrize('quaternion', [(0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.2),
                                        (float('nan'), 0.0, 0.0, 1.0)])
def test_a_broken_orientation_is_refused(quaternion):
    with pytest.raises(StateProblem, match='unit quaternion|non-finite'):
        PoseStateSource(BASE).offer(pose_at(1.0, quaternion=quaternion), arrival_s=1.0)


def test_quaternions_are_kept_as_measured_at_unit_length():
    """The source does not pick a sign: the policy's statistics do, against the training data's
    mean orientation (a fixed w >= 0 rule flips sign around a Panda hand pointing down)."""
    q = np.array([0.3, -0.5, 0.1, -0.8])
    source = PoseStateSource(BASE)
    first = source.offer(pose_at(1.0, quaternion=q / np.linalg.norm(q)), arrival_s=1.0)
    second = source.offer(pose_at(1.0, quaternion=-q / np.linalg.norm(q)), arrival_s=1.0)
    np.testing.assert_allclose(first.quaternion, q / np.linalg.norm(q))
    np.testing.assert_allclose(second.quaternion, -first.quaternion)


# --- joint states + URDF --------------------------------------------------------------------

def test_the_default_urdf_chain_is_the_panda_arm(joints):
    assert joints.tool_link == 'panda_grasptarget' and joints.base_link == 'panda_link0'
    assert joints.chain_joints == ARM  # the fingers do not move the grasp point


def test_joint_state_pose_matches_the_simulator_pose():
    task = load_suite().sample_task('pick', 'seen', 3)
    env = ManipulationEnv(EnvConfig(camera=CameraConfig(width=32, height=32)))
    source = JointStateSource()
    try:
        observations = [env.reset(3, task)]
        for _ in range(6):
            observations.append(env.step(env.expert_action()).observation)
        assert np.ptp([o.ee_position for o in observations], axis=0).max() > 0.01  # it moved
        for step, obs in enumerate(observations):
            msg = joint_state_msg(PANDA_JOINT_NAMES, obs.joint_positions, seconds_to_stamp(step))
            source.offer(msg, arrival_s=float(step))
            sample = source.latest(float(step), 0.5)
            assert source.latest(float(step), 0.5) is sample  # computed once per message
            np.testing.assert_allclose(sample.position, obs.ee_position, atol=1e-3)
            assert same_orientation(sample.quaternion, obs.ee_orientation.astype(np.float64))
            assert sample.source == 'joint_states' and sample.stamp_s == step
    finally:
        source.close()
        env.close()


def test_missing_joints_are_named_and_keep_the_last_sample(joints):
    joints.offer(joint_state_msg(ARM, HOME, seconds_to_stamp(5.0)), arrival_s=5.0)
    gripper_only = joint_state_msg(PANDA_JOINT_NAMES[7:], (0.04, 0.04), seconds_to_stamp(5.1))
    with pytest.raises(StateProblem, match='lacks panda_joint1, panda_joint2, .*panda_joint7'):
        joints.offer(gripper_only, arrival_s=5.1)
    partial = joint_state_msg(ARM[:5], HOME[:5], seconds_to_stamp(5.1))
    with pytest.raises(StateProblem) as refused:
        joints.offer(partial, arrival_s=5.1)
    assert 'panda_joint6, panda_joint7' in str(refused.value)
    assert 'panda_joint5' not in str(refused.value)
    assert joints.latest(5.2, 0.5).stamp_s == 5.0  # still the arm's last known pose
    with pytest.raises(StateProblem, match='old'):
        joints.latest(6.0, 0.5)


def test_non_finite_joint_positions_are_refused_and_forget_the_pose(joints):
    joints.offer(joint_state_msg(ARM, HOME, seconds_to_stamp(5.0)), arrival_s=5.0)
    broken = joint_state_msg(ARM, HOME[:6] + (float('inf'),), seconds_to_stamp(5.1))
    with pytest.raises(StateProblem, match='non-finite'):
        joints.offer(broken, arrival_s=5.1)
    with pytest.raises(NoStateYet):
        joints.latest(5.1, 0.5)
    short = JointState(header=Header(stamp=seconds_to_stamp(5.2)), name=list(ARM),
                       position=list(HOME[:3]))
    with pytest.raises(StateProblem, match='positions'):
        joints.offer(short, arrival_s=5.2)


def test_renamed_joints_and_other_links_compose_correctly(joints):
    """A prefixed driver's names map onto the URDF; base and tool can be any two links."""
    reference = joints.forward_kinematics(HOME)
    renamed = JointStateSource(joint_names=[f'arm/{name}' for name in ARM])
    reverse = JointStateSource(tool_link='panda_link0', base_link='panda_grasptarget')
    hand = JointStateSource(tool_link='panda_grasptarget', base_link='panda_hand')
    try:
        msg = joint_state_msg([f'arm/{name}' for name in ARM], HOME, seconds_to_stamp(1.0))
        renamed.offer(msg, arrival_s=1.0)
        sample = renamed.latest(1.0, 0.5)
        np.testing.assert_allclose(sample.position, reference[0], atol=1e-9)
        with pytest.raises(StateProblem, match='lacks arm/panda_joint1'):
            renamed.offer(joint_state_msg(ARM, HOME, seconds_to_stamp(1.0)), arrival_s=1.0)
        # The base seen from the tool is the inverse of the tool seen from the base.
        assert reverse.chain_joints == ARM
        back_p, back_q = reverse.forward_kinematics(HOME)
        rotation = _matrix(reference[1])
        np.testing.assert_allclose(back_p, -rotation.T @ reference[0], atol=1e-6)
        np.testing.assert_allclose(_matrix(back_q), rotation.T, atol=1e-6)
        # Fixed links: nothing to read from the message; the grasp point is 0.105 m out.
        assert hand.chain_joints == ()
        hand.offer(JointState(header=Header(stamp=seconds_to_stamp(2.0))), 2.0)
        fixed = hand.latest(2.0, 0.5)
        np.testing.assert_allclose(fixed.position, [0.0, 0.0, 0.105], atol=1e-6)
    finally:
        for source in (renamed, reverse, hand):
            source.close()


def test_a_bad_urdf_or_link_is_a_clear_refusal(tmp_path):
    with pytest.raises(StateProblem, match='does not exist'):
        JointStateSource(tmp_path / 'robot.urdf')
    with pytest.raises(StateProblem, match="'gripper_tip' is not a link.*panda_grasptarget"):
        JointStateSource(tool_link='gripper_tip')
    with pytest.raises(StateProblem, match='7 distinct names'):
        JointStateSource(joint_names=ARM[:6])


def test_a_fast_joint_state_stream_costs_little(joints):
    """Drivers publish at 100 Hz to 1 kHz: arrival only validates, kinematics runs per query."""
    messages = [joint_state_msg(PANDA_JOINT_NAMES, HOME + (0.04, 0.04),
                                seconds_to_stamp(k * 0.01)) for k in range(300)]
    start = time.perf_counter()
    for k, msg in enumerate(messages):
        joints.offer(msg, arrival_s=k * 0.01)
    per_message = (time.perf_counter() - start) / len(messages)
    start = time.perf_counter()
    for _ in range(100):
        joints.forward_kinematics(HOME)
    per_pose = (time.perf_counter() - start) / 100
    assert per_message < 1e-3, f'{per_message * 1e6:.0f} us per joint_states message'
    assert per_pose < 2e-3, f'{per_pose * 1e6:.0f} us per forward kinematics'
    assert joints.latest(2.99, 0.5).stamp_s == pytest.approx(2.99)


# --- TF ---------------------------------------------------------------------------------------

def test_tf_source_without_tf2_ros_names_the_alternatives(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tf2_ros', None)  # import tf2_ros fails, installed or not
    assert not tf_available()
    with pytest.raises(StateProblem, match='needs tf2_ros.*pose.*joint_states'):
        TfStateSource(object(), BASE, 'panda_grasptarget')


def test_tf_source_reads_the_newest_transform_through_the_tf2_api(monkeypatch):
    """A stand-in tf2_ros with the API the docstring names, returning real messages."""
    calls = []

    class TransformException(Exception):
        pass

    class Buffer:
        transform: TransformStamped | None = None

        def lookup_transform(self, target, source, when):
            calls.append((target, source, when.nanoseconds))
            if Buffer.transform is None:
                raise TransformException('"panda_link0" passed to lookupTransform does not '
                                         'exist.\nsecond line')
            return Buffer.transform

    class TransformListener:
        def __init__(self, buffer, node):
            self.node, self.unregistered = node, False

        def unregister(self):
            self.unregistered = True

    fake = types.ModuleType('tf2_ros')
    fake.Buffer, fake.TransformListener = Buffer, TransformListener
    fake.TransformException = TransformException
    monkeypatch.setitem(sys.modules, 'tf2_ros', fake)
    assert tf_available()
    source = TfStateSource('node', '/' + BASE, 'panda_grasptarget')
    with pytest.raises(StateProblem, match='no transform panda_link0 -> panda_grasptarget: '
                                           '"panda_link0" passed .* exist.$'):
        source.latest(10.0, 0.5)
    assert calls == [(BASE, 'panda_grasptarget', 0)]  # time 0: the newest transform
    msg = TransformStamped(header=Header(stamp=seconds_to_stamp(9.8), frame_id=BASE),
                           child_frame_id='panda_grasptarget')
    msg.transform.translation.x, msg.transform.translation.z = 0.5, 0.2
    msg.transform.rotation.x, msg.transform.rotation.w = -1.0, 0.0
    Buffer.transform = msg
    sample = source.latest(10.0, 0.5)
    np.testing.assert_allclose(sample.position, [0.5, 0.0, 0.2])
    np.testing.assert_allclose(sample.quaternion, [-1.0, 0.0, 0.0, 0.0])  # as TF gave it
    assert sample.stamp_s == pytest.approx(9.8) and sample.source == 'tf'
    with pytest.raises(StateProblem, match='old'):
        source.latest(10.4, 0.5)
    msg.header.stamp = Time()  # an all-static chain holds at any time
    assert source.latest(1000.0, 0.5).stamp_s == 1000.0
    source.close()
    assert source._listener.unregistered


def _matrix(q: np.ndarray) -> np.ndarray:
    x, y, z, w = q
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
