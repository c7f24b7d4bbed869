"""Watchdogs of the policy node over DDS, and the workspace bounds of the sim controller."""
import math

import numpy as np
import pytest
from std_msgs.msg import String
from test_ros_nodes import (
    LIMITS,
    Probe,
    ScriptedSource,
    make_policy,
    proprioceptive_policy,
    stream,
)

from vla_align.ros.conversions import pose_msg

pytestmark = pytest.mark.ros
pytest_plugins = ('ros_isolation',)


def status(probe):
    latest = probe.diagnostics[-1].status[0]
    return latest.level, latest.message, {kv.key: kv.value for kv in latest.values}


def moving(actions):
    return [a for a in actions if np.any(a[:6])]


def test_a_silent_camera_turns_into_holds_after_max_image_age_and_back(ros_context, spin):
    source = ScriptedSource([0.01, 0, 0, 0, 0, 0, 1.0])
    policy = make_policy(ros_context, source, max_image_age_s=0.5, control_rate=20.0)
    probe = Probe(ros_context)
    probe.instruction_pub.publish(String(data='lift the cube'))
    nodes = [policy, probe.node]
    stream(spin, nodes, probe, 0.8)
    assert moving(probe.action_values())
    probe.actions.clear()
    spin(nodes, 0.3)  # younger than max_image_age_s: nothing to act on, no hold either
    assert not probe.actions
    assert spin(nodes, 3.0, until=lambda: len(probe.actions) >= 5)
    assert all(np.array_equal(a, [0, 0, 0, 0, 0, 0, 1.0]) for a in probe.action_values())
    assert spin(nodes, 2.0, until=lambda: status(probe)[2]['image_stale'] == 'True')
    level, message, _ = status(probe)
    assert level == b'\x02' and message == 'holding: camera image is stale'
    stream(spin, nodes, probe, 0.6)  # the camera comes back
    assert np.allclose(probe.action_values()[-1], [0.01, 0, 0, 0, 0, 0, 1.0])


def test_no_instruction_means_no_motion_and_the_model_is_not_asked(ros_context, spin):
    source = ScriptedSource([0.02, 0, 0, 0, 0, 0, 0.0])
    policy = make_policy(ros_context, source)
    probe = Probe(ros_context)
    nodes = [policy, probe.node]
    stream(spin, nodes, probe, 0.8)
    assert probe.actions and not moving(probe.action_values()) and not source.seen
    assert status(probe)[1] == 'holding: no instruction set'
    probe.instruction_pub.publish(String(data='touch the bowl'))
    stream(spin, nodes, probe, 0.6)
    assert moving(probe.action_values())
    probe.instruction_pub.publish(String(data=' \t '))  # cleared mid-run
    stream(spin, nodes, probe, 0.3)
    probe.actions.clear()
    stream(spin, nodes, probe, 0.5)
    assert probe.actions and not moving(probe.action_values())


def test_a_refused_instruction_holds_instead_of_keeping_the_old_task(ros_context, spin):
    source = ScriptedSource([0.02, 0, 0, 0, 0, 0, 0.0])
    policy = make_policy(ros_context, source, max_instruction_length=50)
    probe = Probe(ros_context)
    probe.instruction_pub.publish(String(data='push the red block'))
    nodes = [policy, probe.node]
    stream(spin, nodes, probe, 0.6)
    probe.instruction_pub.publish(String(data='push ' * 20))
    stream(spin, nodes, probe, 0.3)
    probe.actions.clear()
    stream(spin, nodes, probe, 0.5)
    assert probe.actions and not moving(probe.action_values())
    _, message, values = status(probe)
    assert 'instruction refused' in message and values['instruction_refused'] == 'True'
    assert values['bad_inputs'] == 'instruction:1'
    probe.instruction_pub.publish(String(data='push the blue block'))
    stream(spin, nodes, probe, 0.6)
    assert moving(probe.action_values())
    assert set(source.encoded) == {'push the red block', 'push the blue block'}


def test_an_invalid_pose_makes_a_proprioceptive_policy_hold(ros_context, spin):
    source, probe, nodes = proprioceptive_policy(ros_context)
    good = pose_msg([0.5, 0, 0.2], [1.0, 0, 0, 0], probe.frame().header.stamp, 'panda_link0')
    probe.pose_pub.publish(good)
    stream(spin, nodes, probe, 0.5)
    assert moving(probe.action_values())
    bad = pose_msg([0.5, math.nan, 0.2], [1.0, 0, 0, 0], good.header.stamp, 'panda_link0')
    probe.pose_pub.publish(bad)
    stream(spin, nodes, probe, 0.3)
    calls = len(source.seen)
    probe.actions.clear()
    stream(spin, nodes, probe, 0.5)
    assert len(source.seen) == calls and not moving(probe.action_values())
    assert 'no valid robot state' in status(probe)[1]
    probe.pose_pub.publish(good)
    stream(spin, nodes, probe, 0.5)
    assert len(source.seen) > calls and np.all(np.isfinite(source.seen[-1][2]))


def test_model_output_is_clamped_rate_limited_or_held_never_published_raw(ros_context, spin):
    source = ScriptedSource([0.5, 0, 0, 0, 0, 0, 0.0])
    policy = make_policy(ros_context, source, max_translation_change=0.01, control_rate=20.0)
    probe = Probe(ros_context)
    probe.instruction_pub.publish(String(data='push the cube'))
    nodes = [policy, probe.node]
    stream(spin, nodes, probe, 1.0)
    dx = [a[0] for a in probe.action_values()]
    assert max(dx) == pytest.approx(LIMITS.max_translation)  # clamped to the limit ...
    assert np.all(np.abs(np.diff(dx)) <= 0.01 + 1e-6)  # ... reached in steps of <= 1 cm
    assert next(v for v in dx if v > 0) <= 0.01 + 1e-6  # the first step starts from rest
    for bad in (math.nan, math.inf):
        source.output = np.array([0.01, bad, 0, 0, 0, 0, 0], np.float32)
        probe.actions.clear()
        stream(spin, nodes, probe, 0.4)
        assert probe.actions and all(np.array_equal(a, np.zeros(7)) for a in
                                     probe.action_values())
    assert status(probe)[1] == 'holding: model output is not finite'


def test_the_sim_controller_keeps_the_hand_in_its_box_and_upright_under_any_action():
    from vla_align.ros.fuzz_campaign import HAND_TRACKING_TOLERANCE_M
    from vla_align.sim.env import EnvConfig, ManipulationEnv
    from vla_align.sim.suite import load_suite
    from vla_align.sim.types import CameraConfig

    env = ManipulationEnv(EnvConfig(camera=CameraConfig(width=16, height=16),
                                    max_steps=100000))
    try:
        env.reset(5, load_suite(None).sample_task('reach', 'seen', 5))
        workspace = env.config.workspace
        rng = np.random.default_rng(0)
        for _ in range(150):  # every motion component at +-1e3 x its limit, random signs
            action = np.r_[rng.choice([-1e3, 1e3], size=6), rng.uniform(-5, 5)]
            env.step(action)
            assert workspace.contains(env.controller.target_position)
            axis = np.array(env.controller._client.getMatrixFromQuaternion(
                env.controller.target_orientation)).reshape(3, 3)[:, 2]
            assert math.acos(min(1.0, -axis[2])) <= workspace.max_tilt_rad + 1e-6
            hand = np.array(env.world_state()['ee_position'])
            assert workspace.contains(hand, atol=HAND_TRACKING_TOLERANCE_M)
    finally:
        env.close()
