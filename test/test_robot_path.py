"""The policy node as a real arm needs it: Servo-style output, dry run and enable, workspace box,
state freshness, deployment checks against the checkpoint, and inference off the timers."""
from __future__ import annotations

import json
import threading
import time

from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
import pytest
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import Float32MultiArray, Float64MultiArray, String
from std_srvs.srv import SetBool
from test_ros_nodes import Probe, ScriptedSource, make_policy

from vla_align.ros import qos, topics
from vla_align.ros.command_output import DRY_RUN_TWIST, CommandStream
from vla_align.ros.params import StartupError
from vla_align.ros.policy_node import PolicyNode
from vla_align.ros.safety import Workspace

pytestmark = pytest.mark.ros
pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin


def now_s(node) -> float:
    return node.get_clock().now().nanoseconds * 1e-9


def pose_at(node, x: float, quaternion=(0.0, 0.0, 0.0, 1.0), age_s: float = 0.0,
            frame: str = 'panda_link0') -> PoseStamped:
    msg = PoseStamped()
    msg.header.frame_id = frame
    stamp = node.get_clock().now().nanoseconds - int(age_s * 1e9)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp, 1_000_000_000)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = x, 0.0, 0.2
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = quaternion
    return msg


class Listener:
    """Everything the policy commands, on the command topics and the dry-run ones."""

    def __init__(self, context) -> None:
        self.node = Node('listener', context=context)
        self.twists, self.grippers, self.actions, self.dry = [], [], [], []
        n = self.node
        n.create_subscription(TwistStamped, topics.SERVO_TWIST, self.twists.append,
                              qos.SERVO_COMMANDS)
        n.create_subscription(Float64MultiArray, topics.GRIPPER_COMMAND, self.grippers.append,
                              qos.SERVO_COMMANDS)
        n.create_subscription(Float32MultiArray, topics.ACTION, self.actions.append,
                              qos.COMMANDS)
        n.create_subscription(TwistStamped, DRY_RUN_TWIST, self.dry.append, qos.SERVO_COMMANDS)
        self.enable = n.create_client(SetBool, '/policy_node/enable')


def test_dry_run_commands_nothing_until_enabled_and_disabling_stops_at_once(ros_context,
                                                                            spin):
    source = ScriptedSource([0.02, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    policy = make_policy(ros_context, source, start_enabled=False, command_rate_hz=50.0)
    probe, listener = Probe(ros_context), Listener(ros_context)
    nodes = [policy, probe.node, listener.node]
    probe.instruction_pub.publish(String(data='push the block'))
    for _ in range(10):
        probe.frame()
        spin(nodes, 0.1)
    assert source.seen, 'the policy runs in a dry run'
    assert listener.dry and listener.dry[-1].twist.linear.x == pytest.approx(0.2)
    assert not listener.twists and not listener.grippers and not listener.actions, \
        'a dry run moved the arm'
    assert listener.enable.wait_for_service(timeout_sec=5.0)
    future = listener.enable.call_async(SetBool.Request(data=True))
    assert spin(nodes, 3.0, until=future.done) and future.result().success
    for _ in range(6):
        probe.frame()
        spin(nodes, 0.1)
    assert listener.twists and listener.twists[-1].twist.linear.x == pytest.approx(0.2)
    assert listener.grippers[-1].data[0] == pytest.approx(0.0)  # closed: finger at 0.0 m
    future = listener.enable.call_async(SetBool.Request(data=False))
    asked = time.monotonic()
    zero_at = None
    while time.monotonic() - asked < 2.0:
        spin(nodes, 0.01)
        probe.frame()
        if zero_at is None and listener.twists and not np.any(
                [listener.twists[-1].twist.linear.x, listener.twists[-1].twist.angular.x]):
            zero_at = time.monotonic()
    assert zero_at is not None and zero_at - asked < 0.1, 'no zero within one control period'
    count = len(listener.twists)
    for _ in range(5):
        probe.frame()
        spin(nodes, 0.1)
    assert len(listener.twists) == count, 'commands after disabling'


def test_the_twist_stream_keeps_servo_fed_between_decisions_and_zeroes_stale_ones(ros_context,
                                                                                spin):
    source = ScriptedSource([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    policy = make_policy(ros_context, source, command_rate_hz=50.0, max_image_age_s=2.0)
    probe, listener = Probe(ros_context), Listener(ros_context)
    nodes = [policy, probe.node, listener.node]
    probe.instruction_pub.publish(String(data='push the block'))
    spin(nodes, 0.3)
    probe.frame()
    spin(nodes, 0.5)  # one decision, then the camera is silent
    moving = [t for t in listener.twists if t.twist.linear.x > 0]
    assert 3 <= len(moving) <= 12  # streamed for 1.5 periods (0.15 s at 50 Hz ~ 7)
    stamps = [t.header.stamp.sec + t.header.stamp.nanosec * 1e-9 for t in moving]
    assert len(set(stamps)) == len(stamps), 'each streamed twist is stamped anew'
    assert not np.any(listener.twists[-1].twist.linear.x), 'a stale decision is not repeated'


def test_command_stream_freshness():
    stream = CommandStream(control_rate=10.0)
    stream.set(np.array([0.01, 0, 0, 0, 0, 0.02, 1.0]), now=5.0)
    np.testing.assert_allclose(stream.velocity(5.1), [0.1, 0, 0, 0, 0, 0.2])
    assert not np.any(stream.velocity(5.16))  # older than 1.5 periods
    assert stream.gripper == 1.0


def test_workspace_cuts_commands_at_the_box_and_never_drives_further_out():
    box = Workspace((0.25, -0.35, 0.02), (0.8, 0.35, 0.4))
    np.testing.assert_allclose(box.limit([0.79, 0.0, 0.2], [0.03, 0.0, -0.01]),
                               [0.01, 0.0, -0.01], atol=1e-7)
    np.testing.assert_allclose(box.limit([0.9, 0.0, 0.2], [0.03, 0.0, 0.0]), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(box.limit([0.9, 0.0, 0.2], [-0.03, 0.0, 0.0]),
                               [-0.03, 0.0, 0.0], atol=1e-7)
    with pytest.raises(ValueError):
        Workspace((0.0, 0.0, 0.0), (0.0, 1.0, 1.0))


def test_the_node_keeps_commanded_motion_inside_the_box(ros_context, spin):
    source = ScriptedSource([0.03, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    policy = make_policy(ros_context, source, use_workspace=True, state_age_by='stamp',
                         workspace_low=[0.25, -0.35, 0.02], workspace_high=[0.8, 0.35, 0.4])
    probe = Probe(ros_context)
    nodes = [policy, probe.node]
    probe.instruction_pub.publish(String(data='push the block'))
    for x, most in ((0.5, 0.03), (0.79, 0.01), (0.85, 0.0)):
        spin(nodes, 0.2)  # the previous position's last answer is delivered, then forgotten
        probe.actions.clear()
        for _ in range(4):
            probe.pose_pub.publish(pose_at(policy, x))
            spin(nodes, 0.05)  # the box judges from the pose received before the frame
            probe.frame()
            spin(nodes, 0.1)
        dx = [a[0] for a in probe.action_values()]
        assert dx and max(dx) == pytest.approx(most, abs=1e-6), (x, dx)


def test_stale_or_foreign_state_holds_with_a_reason(ros_context, spin):
    source = ScriptedSource([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    source.needs_state = True
    policy = make_policy(ros_context, source, state_age_by='stamp', max_state_age_s=0.2)
    probe = Probe(ros_context)
    nodes = [policy, probe.node]
    probe.instruction_pub.publish(String(data='push the block'))
    for _ in range(4):
        probe.pose_pub.publish(pose_at(policy, 0.5))
        probe.frame()
        spin(nodes, 0.1)
    assert probe.action_values()[-1][0] == pytest.approx(0.01)
    for _ in range(5):  # the pose publisher died: its last pose ages
        probe.frame()
        spin(nodes, 0.1)
    assert policy.counters.hold_reasons.get('STALE_STATE', 0) >= 2
    assert not np.any(probe.action_values()[-1][:6])
    seen = len(source.seen)
    probe.pose_pub.publish(pose_at(policy, 0.5, frame='world'))  # not the base frame
    probe.frame()
    spin(nodes, 0.2)
    assert len(source.seen) == seen and 'ee_pose' in policy._bad_inputs.counts


def test_q_and_minus_q_give_the_same_action():
    from vla_align.model.config import PolicyConfig
    from vla_align.model.policy import Policy

    policy = Policy.from_config(PolicyConfig.tiny(), device='cpu')
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    q = np.array([0.1, 0.9, 0.2, 0.3], np.float32)
    q /= np.linalg.norm(q)
    state = np.concatenate([[0.5, 0.0, 0.2], q, [0.0]]).astype(np.float32)
    flipped = state.copy()
    flipped[3:7] = -q
    a = policy.step(image, 'lift the red block', state).action
    b = policy.step(image, 'lift the red block', flipped).action
    np.testing.assert_array_equal(a, b)


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
    from vla_align.model.config import PolicyConfig
    from vla_align.model.deployment import DeploymentInfo, language_model_identity
    from vla_align.model.policy import Policy

    path = tmp_path_factory.mktemp('ckpt') / 'policy'
    config = PolicyConfig.tiny()
    name, digest = language_model_identity(config)
    info = DeploymentInfo(
        control_rate_hz=10.0, action_frame='panda_link0', image_size=config.image_size,
        image_crop=config.image_crop, camera_width=64, camera_height=48,
        camera_intrinsics=None, state_source='pose', state_layout=('x', 'y', 'z', 'qx', 'qy',
                                                                  'qz', 'qw', 'gripper'),
        language_model=name, language_model_hash=digest, contract='sim_panda',
        git_commit=None, git_dirty=None)
    Policy.from_config(config, device='cpu').save(path, {'deployment': info.to_dict()})
    return path, info


def checkpoint_node(context, path, **params):
    overrides = {'source': 'checkpoint', 'checkpoint': str(path), 'device': 'cpu',
                 'use_workspace': False, 'state_age_by': 'arrival', **params}
    return PolicyNode(context=context, parameter_overrides=[Parameter(k, value=v)
                                                            for k, v in overrides.items()])


@pytest.mark.parametrize('params,words', [
    ({'control_rate': 20.0}, 'trained at 10 Hz, the node runs at 20 Hz'),
    ({'base_frame': 'fr3_link0'}, "trained in 'panda_link0'"),
])
def test_a_mismatched_checkpoint_is_refused_with_one_line(ros_context, tiny_checkpoint, params,
                                                          words):
    path, _info = tiny_checkpoint
    with pytest.raises(StartupError, match=words) as raised:
        checkpoint_node(ros_context, path, **params)
    assert '\n' not in str(raised.value)
    node = checkpoint_node(ros_context, path, deployment_checks='warn', **params)  # warned
    node.destroy_node()


def test_another_language_model_is_refused(ros_context, tiny_checkpoint, tmp_path):
    path, info = tiny_checkpoint
    meta = json.loads((path / 'metadata.json').read_text())
    meta['deployment']['language_model_hash'] = '0' * 64  # trained with another model
    other = tmp_path / 'other'
    import shutil

    shutil.copytree(path, other)
    (other / 'metadata.json').write_text(json.dumps(meta))
    with pytest.raises(StartupError, match='language model'):
        checkpoint_node(ros_context, other)
    checkpoint_node(ros_context, path).destroy_node()  # the matching one starts


def test_a_camera_of_another_aspect_ratio_holds_for_good(ros_context, spin, tiny_checkpoint):
    path, _info = tiny_checkpoint
    policy = checkpoint_node(ros_context, path)
    probe = Probe(ros_context)
    nodes = [policy, probe.node]
    probe.instruction_pub.publish(String(data='lift the red block'))
    for _ in range(5):
        probe.pose_pub.publish(pose_at(policy, 0.5))
        probe.frame(size=(48, 48))  # square frames; the checkpoint was trained on 64x48
        spin(nodes, 0.1)
    assert policy.counters.hold_reasons.get('DEPLOYMENT', 0) >= 3
    assert policy.counters.actions == 0


def test_holds_and_diagnostics_keep_their_rate_during_a_slow_model_step(ros_context):
    class SlowSource(ScriptedSource):
        def step(self, image, instruction, state):
            time.sleep(0.8)
            return super().step(image, instruction, state)

    source = SlowSource([0.01, 0, 0, 0, 0, 0, 0.0])
    policy = make_policy(ros_context, source, diagnostics_period_s=0.1, command_rate_hz=50.0)
    probe, listener = Probe(ros_context), Listener(ros_context)
    executor = SingleThreadedExecutor(context=ros_context)  # as run_node spins the node
    for node in (policy, probe.node, listener.node):
        executor.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.02)
                                               for _ in iter(lambda: stop.is_set(), True)])
    spinner.start()
    try:
        probe.instruction_pub.publish(String(data='push the block'))
        time.sleep(0.3)
        probe.frame()
        time.sleep(0.2)  # the slow step is running now
        before = (len(probe.diagnostics), len(listener.twists))
        time.sleep(0.5)
        after = (len(probe.diagnostics), len(listener.twists))
    finally:
        stop.set()
        spinner.join()
        executor.shutdown()
    assert after[0] - before[0] >= 3, 'diagnostics stalled during inference'
    assert after[1] - before[1] >= 10, 'the command stream stalled during inference'


def test_state_from_joint_states_and_the_urdf(ros_context, spin):
    """state_source joint_states: the pose comes from forward kinematics of the Panda URDF."""
    from sensor_msgs.msg import JointState

    from vla_align.ros.robot_state import JointStateSource

    source = ScriptedSource([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    source.needs_state = True
    policy = make_policy(ros_context, source, state_source='joint_states',
                         tool_frame='panda_grasptarget')
    probe = Probe(ros_context)
    joints = probe.node.create_publisher(JointState, topics.JOINT_STATES, qos.DEFAULT)
    names = [f'panda_joint{i}' for i in range(1, 8)] + ['panda_finger_joint1',
                                                        'panda_finger_joint2']
    positions = [0.1, -0.5, 0.05, -2.2, 0.0, 1.8, 0.8, 0.04, 0.04]
    nodes = [policy, probe.node]
    probe.instruction_pub.publish(String(data='push the block'))
    for _ in range(5):
        msg = JointState(name=names, position=positions)
        msg.header.stamp = policy.get_clock().now().to_msg()
        joints.publish(msg)
        probe.frame()
        spin(nodes, 0.1)
    states = [state for _, _, state in source.seen if state is not None]
    assert states, 'no state from the joint states'
    expected_position, expected_quaternion = JointStateSource().forward_kinematics(positions[:7])
    np.testing.assert_allclose(states[-1][:3], expected_position, atol=1e-5)
    assert abs(abs(float(np.dot(states[-1][3:7], expected_quaternion))) - 1.0) < 1e-5


def test_the_threshold_comes_from_the_checkpoints_calibration(ros_context, tiny_checkpoint,
                                                              tmp_path, capfd):
    """alignment_threshold -2 (the configs' value): the checkpoint's grounding.json; refusing
    on a score that missed its targets is warned about."""
    import shutil

    path, _info = tiny_checkpoint
    calibrated = tmp_path / 'calibrated'
    shutil.copytree(path, calibrated)
    (calibrated / 'grounding.json').write_text(json.dumps({
        'threshold': -0.25, 'meets_targets': False, 'test': {'all': {'auc': 0.66}}}))
    node = checkpoint_node(ros_context, calibrated, alignment_threshold=-2.0,
                           refuse_ungrounded=True)
    assert node.settings.safety.alignment_threshold == pytest.approx(-0.25)
    node.destroy_node()
    assert 'missed its targets (AUC 0.66)' in capfd.readouterr().err
    set_by_hand = checkpoint_node(ros_context, calibrated, alignment_threshold=0.3)
    assert set_by_hand.settings.safety.alignment_threshold == pytest.approx(0.3)
    set_by_hand.destroy_node()
    uncalibrated = checkpoint_node(ros_context, path, alignment_threshold=-2.0)
    assert uncalibrated.settings.safety.alignment_threshold == pytest.approx(0.1)
    uncalibrated.destroy_node()


def test_a_request_unlike_any_training_instruction_is_refused_when_it_arrives(
        ros_context, spin, tiny_checkpoint, tmp_path):
    """With a calibration that includes familiarity, chat is judged by its text: the V-L
    threshold here (-1) passes any scene, so only the familiarity gate can hold it."""
    import shutil

    path, _info = tiny_checkpoint
    calibrated = tmp_path / 'familiar'
    shutil.copytree(path, calibrated)
    meta = json.loads((calibrated / 'metadata.json').read_text())
    meta['training_instructions'] = ['lift the red block', 'push the blue block left']
    (calibrated / 'metadata.json').write_text(json.dumps(meta))
    (calibrated / 'grounding.json').write_text(json.dumps({
        'threshold': -1.0, 'meets_targets': True, 'test': {'all': {'auc': 0.99}},
        'familiarity': {'vl_anchor': -0.5, 'anchor': 0.9, 'scale': 5.0}}))
    policy = checkpoint_node(ros_context, calibrated, refuse_ungrounded=True)
    probe = Probe(ros_context)
    nodes = [policy, probe.node]

    def drive(instruction):
        probe.instruction_pub.publish(String(data=instruction))
        for _ in range(6):
            probe.pose_pub.publish(pose_at(policy, 0.5))
            probe.frame(size=(48, 64))
            spin(nodes, 0.1)

    drive('tell me a joke')
    assert policy.counters.hold_reasons.get('UNGROUNDED', 0) >= 3
    assert policy.counters.actions == 0
    drive('lift the red block')
    assert policy.counters.actions >= 3
