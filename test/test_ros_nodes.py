"""The nodes over real DDS, in this process: topics, layouts, safety holds, parameter checks."""
import math
from pathlib import Path
import time

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float32, Float32MultiArray, Float64MultiArray, Header, String

from vla_align.actions import ACTION_LAYOUT_LABEL, ActionLimits
from vla_align.ros import qos, topics
from vla_align.ros.camera_node import CameraNode
from vla_align.ros.conversions import rgb_to_image
from vla_align.ros.instruction_node import InstructionNode
from vla_align.ros.params import ParameterConfigError, StartupError
from vla_align.ros.policy_node import PolicyNode
from vla_align.ros.sources import SourceStep

pytestmark = pytest.mark.ros
pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin
LIMITS = ActionLimits(max_translation=0.03, max_rotation=0.15)


class ScriptedSource:
    """Returns `output` (changeable by the test) and records what it was asked."""

    def __init__(self, output, alignment=0.5):
        self.output = np.asarray(output, np.float32)
        self.alignment = alignment
        self.encoded: list[str] = []
        self.seen: list[tuple] = []

    def encode_instruction(self, text):
        self.encoded.append(text)

    def step(self, image, instruction, state):
        self.seen.append((image.shape, instruction, state))
        return SourceStep(self.output.copy(), self.alignment)


class Probe:
    """A test node: publishes camera frames and instructions, records what the policy says."""

    def __init__(self, context):
        self.node = Node('test_probe', context=context)
        self.image_pub = self.node.create_publisher(Image, topics.IMAGE, qos.SENSOR_DATA)
        self.instruction_pub = self.node.create_publisher(String, topics.INSTRUCTION,
                                                          qos.LATCHED)
        self.pose_pub = self.node.create_publisher(PoseStamped, topics.EE_POSE, qos.DEFAULT)
        self.actions, self.twists, self.grippers, self.alignments = [], [], [], []
        self.frames, self.gripper_commands = [], []  # /vla/action_frame headers
        self.diagnostics = []
        n = self.node
        n.create_subscription(Float32MultiArray, topics.ACTION, self.actions.append,
                              qos.COMMANDS)
        n.create_subscription(TwistStamped, topics.SERVO_TWIST, self.twists.append,
                              qos.SERVO_COMMANDS)
        n.create_subscription(Header, topics.ACTION_FRAME, self.frames.append, qos.COMMANDS)
        n.create_subscription(Float64MultiArray, topics.GRIPPER_COMMAND,
                              self.gripper_commands.append, qos.SERVO_COMMANDS)
        n.create_subscription(Float32, topics.GRIPPER, self.grippers.append, qos.COMMANDS)
        n.create_subscription(Float32, topics.ALIGNMENT, self.alignments.append, qos.DEFAULT)
        n.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self.diagnostics.append,
                              qos.DEFAULT)
        self.count = 0
        self.sent_stamps = set()

    def frame(self, encoding='rgb8', size=(24, 32)):
        self.count += 1
        rgb = np.full((*size, 3), self.count % 255, np.uint8)
        msg = rgb_to_image(rgb, Time(sec=1000 + self.count, nanosec=7), 'cam', encoding)
        self.sent_stamps.add((msg.header.stamp.sec, msg.header.stamp.nanosec))
        self.image_pub.publish(msg)
        return msg

    def action_values(self):
        return [np.array(m.data, np.float32) for m in self.actions]


def make_policy(context, action_source, **params):
    defaults = {'control_rate': 10.0, 'max_image_age_s': 0.4, 'max_translation_change': 0.0,
                'use_workspace': False,  # the box needs a pose: tests of it publish one
                'state_age_by': 'arrival',  # probe frames and poses carry made-up stamps
                'max_rotation_change': 0.0, 'diagnostics_period_s': 0.2}
    defaults.update(params)
    overrides = [Parameter(k, value=v) for k, v in defaults.items()]
    return PolicyNode(source=action_source, context=context, parameter_overrides=overrides)


def proprioceptive_policy(context):
    """A policy node whose model needs the robot state, told to 'reach the cube'."""
    source = ScriptedSource([0.01, 0, 0, 0, 0, 0, 0.0])
    source.needs_state = True
    policy = make_policy(context, source)
    probe = Probe(context)
    probe.instruction_pub.publish(String(data='reach the cube'))
    return source, probe, [policy, probe.node]


def stream(run, nodes, probe, seconds, rate=20.0, **frame_kwargs):
    """Publish frames at `rate` for `seconds` while spinning with `run` (the spin fixture)."""
    for _ in range(int(seconds * rate)):
        probe.frame(**frame_kwargs)
        run(nodes, 1.0 / rate)


def test_policy_publishes_clamped_actions_with_the_documented_layout(ros_context, spin):
    source = ScriptedSource([0.5, -0.01, 0.0, 1.0, 0.0, -0.02, 0.9], alignment=0.42)
    policy = make_policy(ros_context, source, control_rate=10.0)
    probe = Probe(ros_context)
    probe.instruction_pub.publish(String(data='  pick up   the red block '))
    nodes = [policy, probe.node]
    spin(nodes, 0.5)
    stream(spin, nodes, probe, 1.2)
    assert source.encoded == ['pick up the red block']  # encoded once, normalised
    assert source.seen and all(s[1] == 'pick up the red block' for s in source.seen)
    moving = [a for a in probe.action_values() if np.any(a[:6])]
    assert moving, 'no action published'
    for msg in probe.actions:
        assert [(d.label, d.size) for d in msg.layout.dim] == [(ACTION_LAYOUT_LABEL, 7)]
        assert LIMITS.contains(np.array(msg.data))
    assert np.allclose(moving[-1], [0.03, -0.01, 0.0, 0.15, 0.0, -0.02, 0.9])
    answers = [h for h in probe.frames if (h.stamp.sec, h.stamp.nanosec) in probe.sent_stamps]
    assert len(answers) >= 5  # each action names the frame it was computed from
    assert answers[-1].frame_id == 'cam'
    twist = probe.twists[-1]
    assert twist.header.frame_id == 'panda_link0'
    assert twist.twist.linear.x == pytest.approx(0.3) and twist.twist.angular.x == pytest.approx(
        1.5)  # velocity = delta x 10 Hz
    # Stamped when published (Servo judges staleness by it), not with the image's stamp.
    now = policy.get_clock().now().nanoseconds * 1e-9
    assert abs(twist.header.stamp.sec + twist.header.stamp.nanosec * 1e-9 - now) < 0.5
    assert (twist.header.stamp.sec, twist.header.stamp.nanosec) not in probe.sent_stamps
    assert probe.grippers[-1].data == pytest.approx(0.9)
    # The forward command controller gets the finger position: 0.04 open .. 0.0 closed.
    assert probe.gripper_commands[-1].data[0] == pytest.approx(0.04 * 0.1)
    assert probe.alignments[-1].data == pytest.approx(0.42)
    values = {kv.key: kv.value for kv in probe.diagnostics[-1].status[0].values}
    assert int(values['clamped']) >= 1 and values['image_stale'] == 'False'


def test_a_new_instruction_starts_from_the_measured_gripper_not_the_last_command(
        ros_context, spin):
    """The gripper part of the model's state is the last command within a task; a new task
    (instruction) starts from the gripper as measured, so episodes do not leak into each other."""
    source = ScriptedSource([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # always: close
    policy = make_policy(ros_context, source)
    probe = Probe(ros_context)
    joints = probe.node.create_publisher(JointState, topics.JOINT_STATES, qos.DEFAULT)
    pose = PoseStamped()
    pose.header.frame_id = 'panda_link0'
    pose.pose.position.x, pose.pose.orientation.w = 0.5, 1.0
    nodes = [policy, probe.node]

    def open_fingers():  # measured: fully open (finger positions sum to the open width)
        joints.publish(JointState(name=list(policy.settings.gripper_joints),
                                  position=[0.04, 0.04]))
        probe.pose_pub.publish(pose)

    open_fingers()
    spin(nodes, 0.2)  # the measured gripper and the pose are known before the first frame
    probe.instruction_pub.publish(String(data='pick up the red block'))
    for _ in range(12):
        open_fingers()
        probe.frame()
        spin(nodes, 0.1)
    first_task = [state[7] for _, text, state in source.seen if text == 'pick up the red block']
    assert first_task[0] == 0.0 and first_task[-1] == 1.0  # measured, then its own command
    probe.instruction_pub.publish(String(data='push the blue block to the left'))
    for _ in range(8):
        open_fingers()
        probe.frame()
        spin(nodes, 0.1)
    second_task = [state[7] for _, text, state in source.seen
                   if text == 'push the blue block to the left']
    assert second_task and second_task[0] == 0.0, second_task


def test_every_instruction_message_starts_a_task_and_holds_keep_no_old_gripper(ros_context,
                                                                               spin):
    """The leak that lost pick and put in the free-running graph: a reach ends with the gripper
    closed; the holds the node publishes after the next instruction (before its first frame)
    and the state of that task's first step must come from the measured gripper. The same
    text sent again is a new attempt and restarts the task too."""
    source = ScriptedSource([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])  # always: close
    policy = make_policy(ros_context, source, max_image_age_s=0.3)
    probe = Probe(ros_context)
    joints = probe.node.create_publisher(JointState, topics.JOINT_STATES, qos.DEFAULT)
    pose = PoseStamped()
    pose.header.frame_id = 'panda_link0'
    pose.pose.position.x, pose.pose.orientation.w = 0.5, 1.0
    nodes = [policy, probe.node]

    def robot(width):  # measured finger opening (both fingers): 0.08 open .. 0 closed
        joints.publish(JointState(name=list(policy.settings.gripper_joints),
                                  position=[width / 2, width / 2]))
        probe.pose_pub.publish(pose)

    probe.instruction_pub.publish(String(data='touch the red block'))
    for _ in range(8):
        robot(0.08)
        probe.frame()
        spin(nodes, 0.1)
    assert probe.action_values()[-1][6] == 1.0  # the task closed the gripper
    # The camera goes quiet; the robot is reset (fingers open) and a new task arrives.
    for _ in range(6):
        robot(0.08)
        spin(nodes, 0.1)
    probe.instruction_pub.publish(String(data='lift the red block'))
    spin(nodes, 2.0, until=lambda: policy._instruction == 'lift the red block')
    spin(nodes, 0.12)  # a hold decided before the instruction arrived may still be in flight
    probe.actions.clear()
    for _ in range(6):
        robot(0.08)
        spin(nodes, 0.1)
    holds = probe.action_values()
    assert holds and all(not np.any(a[:6]) and a[6] == 0.0 for a in holds), holds
    for _ in range(4):
        robot(0.08)
        probe.frame()
        spin(nodes, 0.1)
    lift = [state[7] for _, text, state in source.seen if text == 'lift the red block']
    assert lift[0] == 0.0 and lift[-1] == 1.0
    # The same instruction again, after the robot was reset: a new attempt from open.
    seen_before = len(source.seen)
    probe.instruction_pub.publish(String(data='lift the red block'))
    spin(nodes, 0.2)
    for _ in range(3):
        robot(0.08)
        probe.frame()
        spin(nodes, 0.1)
    again = [state[7] for _, _text, state in source.seen[seen_before:]]
    assert again and again[0] == 0.0, again
    assert source.encoded.count('lift the red block') == 1  # encoded once, all the same


def test_policy_holds_without_instruction_and_after_the_camera_stops(ros_context, spin):
    source = ScriptedSource([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    policy = make_policy(ros_context, source, max_image_age_s=0.3)
    probe = Probe(ros_context)
    nodes = [policy, probe.node]
    stream(spin, nodes, probe, 0.6)
    assert probe.actions and not source.seen  # no instruction: the model is never asked
    assert all(not np.any(a[:6]) for a in probe.action_values())
    probe.instruction_pub.publish(String(data='push the cube'))
    stream(spin, nodes, probe, 0.8)
    assert any(a[0] > 0 for a in probe.action_values())
    probe.actions.clear()
    spin(nodes, 0.3 + 0.15)  # camera silent for longer than max_image_age_s
    probe.actions.clear()
    spin(nodes, 0.6)
    held = probe.action_values()
    assert len(held) >= 4, 'holds keep flowing at the control rate while the camera is silent'
    assert all(np.array_equal(a, [0, 0, 0, 0, 0, 0, 1.0]) for a in held)  # gripper unchanged
    reasons = {kv.key: kv.value for kv in probe.diagnostics[-1].status[0].values}
    assert 'STALE_IMAGE' in reasons['hold_reasons'] and reasons['image_stale'] == 'True'


def test_non_finite_model_output_and_bad_images_only_cause_holds(ros_context, spin):
    source = ScriptedSource([math.nan, 0, 0, 0, 0, 0, 0.0])
    policy = make_policy(ros_context, source)
    probe = Probe(ros_context)
    probe.instruction_pub.publish(String(data='stack the blocks'))
    nodes = [policy, probe.node]
    stream(spin, nodes, probe, 0.6)
    bad = probe.frame()
    bad.encoding = '32FC1'
    probe.image_pub.publish(bad)
    spin(nodes, 0.2)
    truncated = probe.frame()
    truncated.data = truncated.data[:-5]
    probe.image_pub.publish(truncated)
    spin(nodes, 0.3)
    assert probe.actions and all(np.array_equal(a, np.zeros(7)) for a in probe.action_values())
    values = {kv.key: kv.value for kv in probe.diagnostics[-1].status[0].values}
    assert 'NON_FINITE' in values['hold_reasons'] and 'BAD_IMAGE' in values['hold_reasons']
    assert probe.diagnostics[-1].status[0].level == b'\x02'  # ERROR while holding on a fault


def test_timer_trigger_acts_once_per_new_frame_at_the_control_rate(ros_context, spin):
    source = ScriptedSource([0.01, 0, 0, 0, 0, 0, 0.0])
    policy = make_policy(ros_context, source, trigger='timer', control_rate=20.0)
    probe = Probe(ros_context)
    probe.instruction_pub.publish(String(data='touch the bowl'))
    nodes = [policy, probe.node]
    spin(nodes, 0.3)
    stream(spin, nodes, probe, 1.5, rate=5.0)  # camera slower than the control rate
    answered = [h for h in probe.frames if (h.stamp.sec, h.stamp.nanosec) in probe.sent_stamps]
    stamps = [(h.stamp.sec, h.stamp.nanosec) for h in answered]
    assert len(stamps) == len(set(stamps)) >= 4  # each frame acted on once, never repeated
    assert policy.counters.ticks_without_new_frame >= 10


@pytest.mark.parametrize('encoding', ['bgr8', 'mono8'])
def test_policy_accepts_the_other_encodings(ros_context, spin, encoding):
    source = ScriptedSource([0.01, 0, 0, 0, 0, 0, 0.0])
    policy = make_policy(ros_context, source)
    probe = Probe(ros_context)
    probe.instruction_pub.publish(String(data='touch the bowl'))
    stream(spin, [policy, probe.node], probe, 0.8, encoding=encoding)
    assert source.seen and source.seen[-1][0] == (24, 32, 3)


def test_policy_waits_for_proprioception_when_the_model_needs_it(ros_context, spin):
    source, probe, nodes = proprioceptive_policy(ros_context)
    stream(spin, nodes, probe, 0.5)
    assert not source.seen
    pose = PoseStamped()
    pose.header.frame_id = 'panda_link0'
    pose.pose.position.x, pose.pose.orientation.w = 0.4, 1.0
    probe.pose_pub.publish(pose)
    stream(spin, nodes, probe, 0.5)
    state = source.seen[-1][2]
    assert np.allclose(state, [0.4, 0, 0, 0, 0, 0, 1.0, 0.0])  # pose + last gripper command


def test_fuzzed_inputs_never_crash_the_policy_or_escape_the_limits(ros_context, spin):
    rng = np.random.default_rng(0)
    source = ScriptedSource(np.zeros(7))
    policy = make_policy(ros_context, source, max_translation_change=0.01)
    probe = Probe(ros_context)
    expert = probe.node.create_publisher(Float32MultiArray, topics.EXPERT_ACTION, qos.COMMANDS)
    nodes = [policy, probe.node]
    probe.instruction_pub.publish(String(data='x' * 50))
    for i in range(40):
        source.output = rng.choice([1e30, -1e30, np.nan, np.inf, 0.02, -0.5], size=7)
        msg = probe.frame(size=(int(rng.integers(1, 20)), int(rng.integers(1, 20))))
        if i % 3 == 0:
            msg.step = int(rng.integers(0, 100))
            msg.encoding = str(rng.choice(['rgb8', 'bgr8', 'mono8', 'bayer', '']))
            probe.image_pub.publish(msg)
        pose = PoseStamped()
        pose.header.frame_id = 'panda_link0'
        pose.pose.position.x = float(rng.choice([np.nan, 1e300, 0.3]))
        probe.pose_pub.publish(pose)
        expert.publish(Float32MultiArray(data=rng.normal(size=int(rng.integers(0, 9))).tolist()))
        probe.instruction_pub.publish(String(data=str(rng.choice(['', 'lift it', '\t']))))
        spin(nodes, 0.03)
    spin(nodes, 0.3)
    assert len(probe.actions) > 10
    assert all(LIMITS.contains(a) for a in probe.action_values())
    assert all(np.all(np.isfinite([t.twist.linear.x, t.twist.angular.z])) for t in probe.twists)


@pytest.mark.parametrize('params,message', [
    ({'control_rate': -1.0}, 'control_rate'),
    ({'trigger': 'sometimes'}, "one of 'frame', 'timer'"),
    ({'source': 'oracle'}, "one of 'checkpoint', 'random', 'expert'"),
    ({'max_image_age_s': 10}, 'expected a float'),
])
def test_bad_parameters_are_refused_at_start_with_the_reason(ros_context, params, message):
    with pytest.raises(ParameterConfigError, match=message) as error:
        make_policy(ros_context, ScriptedSource(np.zeros(7)), **params)
    assert 'policy_node' in str(error.value)


def test_checkpoint_source_without_a_checkpoint_is_a_startup_error(ros_context):
    with pytest.raises(StartupError, match="needs the 'checkpoint' parameter"):
        PolicyNode(context=ros_context, parameter_overrides=[Parameter('source',
                                                                       value='checkpoint')])


def test_instruction_node_latches_and_accepts_runtime_changes(ros_context, spin):
    node = InstructionNode(context=ros_context, parameter_overrides=[
        Parameter('instruction', value='  put the red block   in the bowl ')])
    spin([node], 0.3)  # published before anyone listens
    late = Node('late_listener', context=ros_context)
    heard = []
    late.create_subscription(String, topics.INSTRUCTION, lambda m: heard.append(m.data),
                             qos.LATCHED)
    spin([node, late], 2.0, until=lambda: heard)
    assert heard == ['put the red block in the bowl']
    result = node.set_parameters([Parameter('instruction', value='push it left')])[0]
    assert result.successful
    spin([node, late], 2.0, until=lambda: len(heard) == 2)
    assert heard[-1] == 'push it left'
    refused = node.set_parameters([Parameter('instruction', value='x' * 500)])[0]
    assert not refused.successful and 'max_length' in refused.reason


def test_a_stream_of_empty_instructions_clears_once_in_the_log(ros_context, spin):
    """The fuzz campaign's 'empty' phase found one log line per empty message (a flood)."""
    node = InstructionNode(context=ros_context,
                           parameter_overrides=[Parameter('source', value='topic')])
    lines = []

    class Log:
        def info(self, line):
            lines.append(line)

        warning = info

    node.get_logger = lambda: Log()
    other = Node('other', context=ros_context)
    pub = other.create_publisher(String, topics.INSTRUCTION_IN, 10)
    heard = []
    other.create_subscription(String, topics.INSTRUCTION, lambda m: heard.append(m.data),
                              qos.LATCHED)
    assert spin([node, other], 5.0, until=lambda: pub.get_subscription_count() == 1)
    pub.publish(String(data='lift the cube'))
    spin([node, other], 2.0, until=lambda: heard)
    for count in range(2, 7):
        pub.publish(String(data=''))
        spin([node, other], 2.0, until=lambda count=count: len(heard) == count)
    assert heard == ['lift the cube'] + [''] * 5  # every clear is still relayed
    assert lines.count('instruction cleared') == 1


@pytest.mark.parametrize('publisher_qos', ['default', 'latched'])
def test_instruction_node_relays_what_any_ordinary_publisher_sends(ros_context, spin,
                                                                   publisher_qos):
    """`ros2 topic pub` and `create_publisher(String, topic, 10)` offer reliable + volatile; a
    task planner may publish latched. Both must reach /vla/instruction."""
    node = InstructionNode(context=ros_context,
                           parameter_overrides=[Parameter('source', value='topic')])
    other = Node('other', context=ros_context)
    pub = other.create_publisher(String, topics.INSTRUCTION_IN,
                                 10 if publisher_qos == 'default' else qos.LATCHED)
    heard = []
    other.create_subscription(String, topics.INSTRUCTION, lambda m: heard.append(m.data),
                              qos.LATCHED)
    assert spin([node, other], 5.0, until=lambda: pub.get_subscription_count() == 1), (
        'the instruction node does not match a publisher with this QoS')
    pub.publish(String(data='lift\tthe  cube'))
    spin([node, other], 2.0, until=lambda: heard)
    assert heard == ['lift the cube']
    pub.publish(String(data='lift the cube'))  # the same again: a new attempt, relayed
    spin([node, other], 2.0, until=lambda: len(heard) == 2)
    assert heard == ['lift the cube', 'lift the cube']
    pub.publish(String(data=''))
    spin([node, other], 2.0, until=lambda: len(heard) == 3)
    assert heard[-1] == ''  # empty clears the instruction
    pub.publish(String(data='push it left'))
    spin([node, other], 2.0, until=lambda: len(heard) == 4)
    late = Node('late_listener', context=ros_context)  # joins after the fact
    latest = []
    late.create_subscription(String, topics.INSTRUCTION, lambda m: latest.append(m.data),
                             qos.LATCHED)
    spin([node, other, late], 2.0, until=lambda: latest)
    assert latest == ['push it left']  # a late joiner gets the current instruction


def test_camera_node_publishes_resized_rgb_frames_with_camera_info(ros_context, spin,
                                                                   tmp_path):
    import cv2

    for i in range(3):
        cv2.imwrite(str(tmp_path / f'{i}.png'), np.full((40, 60, 3), 50 * i, np.uint8))
    node = CameraNode(context=ros_context, parameter_overrides=[
        Parameter('source', value=str(tmp_path)), Parameter('rate_hz', value=30.0),
        Parameter('width', value=32), Parameter('height', value=24)])
    listener = Node('listener', context=ros_context)
    images, infos = [], []
    listener.create_subscription(Image, topics.IMAGE, images.append, qos.SENSOR_DATA)
    listener.create_subscription(CameraInfo, topics.CAMERA_INFO, infos.append, qos.SENSOR_DATA)
    spin([node, listener], 3.0, until=lambda: len(images) >= 5 and infos)
    assert len(images) >= 5
    image = images[-1]
    assert (image.width, image.height, image.encoding, image.step) == (32, 24, 'rgb8', 96)
    image_stamps = {(i.header.stamp.sec, i.header.stamp.nanosec) for i in images}
    info = infos[0]
    assert (info.header.stamp.sec, info.header.stamp.nanosec) in image_stamps
    assert (info.width, info.height) == (32, 24) and info.k[2] == pytest.approx(15.5)
    node.destroy_node()


def test_camera_node_with_a_missing_source_refuses_to_start(ros_context):
    with pytest.raises(StartupError, match='no camera device, video file or image folder'):
        CameraNode(context=ros_context,
                   parameter_overrides=[Parameter('source', value='/no/such/folder')])


def test_bad_parameter_exits_with_status_1_and_one_fatal_line(ros_environment, capfd):
    from vla_align.ros.policy_node import main

    status = main(['--ros-args', '-p', 'control_rate:=-5.0', '-p', 'source:=expert'])
    err = capfd.readouterr().err
    assert status == 1
    assert err.count('FATAL') == 1 and 'control_rate' in err and 'Traceback' not in err


def test_sim_node_starts_episodes_on_request_and_applies_actions(ros_context, spin):
    import json

    from geometry_msgs.msg import PoseStamped as Pose
    from sensor_msgs.msg import JointState
    from std_srvs.srv import Trigger

    from vla_align.ros.conversions import action_to_multiarray
    from vla_align.ros.sim_node import SimNode
    from vla_align.sim.types import PANDA_JOINT_NAMES

    sim = SimNode(context=ros_context, parameter_overrides=[
        Parameter('start_on_launch', value=False), Parameter('family', value='reach'),
        Parameter('publish_expert_action', value=True), Parameter('image_width', value=64),
        Parameter('image_height', value=48)])
    test = Node('sim_test', context=ros_context)
    got = {'image': [], 'info': [], 'joints': [], 'pose': [], 'status': [], 'instruction': [],
           'expert': []}
    test.create_subscription(Image, topics.IMAGE, got['image'].append, qos.SENSOR_DATA)
    test.create_subscription(CameraInfo, topics.CAMERA_INFO, got['info'].append,
                             qos.SENSOR_DATA)
    test.create_subscription(JointState, topics.JOINT_STATES, got['joints'].append, qos.DEFAULT)
    test.create_subscription(Pose, topics.EE_POSE, got['pose'].append, qos.DEFAULT)
    test.create_subscription(String, topics.EPISODE_STATUS,
                             lambda m: got['status'].append(json.loads(m.data)),
                             qos.EPISODE_STATUS)
    # The sim sends its instruction as a person would (any ordinary subscriber hears it) ...
    test.create_subscription(String, topics.INSTRUCTION_IN, got['instruction'].append, 10)
    # ... and the test plays the instruction node, whose latched output the sim waits for.
    relay = test.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)
    test.create_subscription(Float32MultiArray, topics.EXPERT_ACTION, got['expert'].append,
                             qos.COMMANDS)
    actions = test.create_publisher(Float32MultiArray, topics.ACTION, qos.COMMANDS)
    client = test.create_client(Trigger, topics.RESET_EPISODE)
    nodes = [sim, test]
    spin(nodes, 0.5)
    assert not got['image'] and not got['status']  # waits for the service
    assert client.wait_for_service(timeout_sec=5.0)
    future = client.call_async(Trigger.Request())
    assert spin(nodes, 5.0, until=lambda: future.done() and got['instruction'])
    assert future.result().success
    first = got['status'][0]
    assert first['episode'] == 0 and first['family'] == 'reach' and not first['done']
    assert first['seed'] == 1100000  # the first evaluation seed of 'seen', never a train seed
    assert got['instruction'][0].data == first['instruction']
    spin(nodes, 1.2)  # no echo yet: no frame of the episode, and the instruction is sent again
    assert not got['image'] and len(got['instruction']) >= 2
    relay.publish(String(data='another task'))  # not this episode's instruction
    spin(nodes, 0.5)
    assert not got['image']
    relay.publish(String(data=first['instruction']))
    assert spin(nodes, 5.0, until=lambda: len(got['pose']) >= 2)
    image, info = got['image'][-1], got['info'][-1]
    assert (image.width, image.height, image.encoding) == (64, 48, 'rgb8')
    assert (info.width, info.height) == (64, 48)
    assert tuple(got['joints'][-1].name) == PANDA_JOINT_NAMES
    assert got['pose'][-1].header.frame_id == 'panda_link0'
    assert got['expert'] and len(got['expert'][-1].data) == 7

    start_x = got['pose'][-1].pose.position.x
    push = np.array([-0.03, 0, 0, 0, 0, 0, 0], np.float32)
    for _ in range(8):
        actions.publish(action_to_multiarray(push))
        spin(nodes, 0.1)
    spin(nodes, 0.3)
    assert got['pose'][-1].pose.position.x < start_x - 0.05  # 8 x 3 cm requested, IK lags
    assert got['status'][-1]['step'] >= 8
    sim.destroy_node()


class ServoCell:
    """A test node driving the sim node as a real cell is driven: Servo twists, gripper
    commands; it records the pose, the joint states, the statuses and the diagnostics."""

    def __init__(self, context):
        import json

        from rclpy.qos import QoSProfile
        from std_msgs.msg import Float64MultiArray

        self.node = Node('servo_cell', context=context)
        reliable_last = QoSProfile(depth=1)  # reliable, keep last 1, as a Servo client
        self.twists = self.node.create_publisher(TwistStamped, topics.SERVO_TWIST,
                                                 reliable_last)
        self.gripper = self.node.create_publisher(Float64MultiArray, topics.GRIPPER_COMMAND,
                                                  reliable_last)
        self.poses, self.joints, self.diagnostics, self.statuses = [], [], [], []
        self.node.create_subscription(PoseStamped, topics.EE_POSE, self.poses.append,
                                      qos.DEFAULT)
        self.node.create_subscription(JointState, topics.JOINT_STATES, self.joints.append,
                                      qos.DEFAULT)
        self.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS,
                                      self.diagnostics.append, qos.DEFAULT)
        self.node.create_subscription(String, topics.EPISODE_STATUS,
                                      lambda m: self.statuses.append(json.loads(m.data)),
                                      qos.EPISODE_STATUS)

    def twist(self, vx, age_s=0.0, frame='panda_link0'):
        from rclpy.duration import Duration

        stamp = self.node.get_clock().now() - Duration(nanoseconds=int(age_s * 1e9))
        msg = TwistStamped(header=Header(stamp=stamp.to_msg(), frame_id=frame))
        msg.twist.linear.x = vx
        return msg

    def position(self):
        p = self.poses[-1].pose.position
        return np.array([p.x, p.y, p.z])

    def fingers(self):
        names = list(self.joints[-1].name)
        return [self.joints[-1].position[names.index(f'panda_finger_joint{i}')] for i in (1, 2)]

    def values(self):
        return {kv.key: kv.value for kv in self.diagnostics[-1].status[0].values}


def test_sim_node_obeys_servo_twists_and_gripper_commands_as_a_real_cell(ros_context, spin,
                                                                        capfd):
    from std_msgs.msg import Float64MultiArray

    from vla_align.ros.sim_node import SimNode

    sim = SimNode(context=ros_context, parameter_overrides=[
        Parameter('command_input', value='servo'), Parameter('family', value='stack'),
        Parameter('max_steps', value=100000), Parameter('auto_reset', value=False),
        Parameter('image_width', value=32), Parameter('image_height', value=32),
        Parameter('diagnostics_period_s', value=0.1),
        Parameter('instruction_handshake', value=False)])  # alone, no instruction node
    cell = ServoCell(ros_context)
    nodes = [sim, cell.node]
    assert sim.count_subscribers(topics.ACTION) == 0  # /vla/action is not obeyed
    assert spin(nodes, 10.0, until=lambda: len(cell.poses) > 3 and cell.diagnostics)
    assert cell.values()['command_input'] == 'servo'

    def stream(seconds, **twist):
        """Publish at 20 Hz (as a teleop or policy node streams); returns the time it took."""
        began = time.monotonic()
        for _ in range(int(seconds * 20)):
            cell.twists.publish(cell.twist(**twist))
            spin(nodes, 0.05)
        return time.monotonic() - began

    def fresh_values():
        count = len(cell.diagnostics)
        assert spin(nodes, 2.0, until=lambda: len(cell.diagnostics) > count)
        return cell.values()

    # Streamed twists move the hand at their speed.
    speed = 0.05
    start = cell.position()
    seconds = stream(2.0, vx=speed)
    spin(nodes, 0.5)  # past the timeout: the arm halts; IK catches up
    moved = cell.position() - start
    assert 0.7 * speed * seconds < moved[0] < 1.2 * speed * seconds, (moved, seconds)
    assert np.all(np.abs(moved[1:]) < 0.01), moved
    applied = int(fresh_values()['twists_applied'])
    assert 0.8 * seconds * 10 <= applied <= seconds * 10 + 2  # one per 10 Hz step
    # Nothing published: the hand stays put, and no twist is counted as stale for it.
    halted = cell.position()
    spin(nodes, 1.0)
    assert np.linalg.norm(cell.position() - halted) < 0.002
    values = fresh_values()
    # (The stream's last twist may expire before the next step on a loaded machine: one.)
    assert int(values['twists_applied']) == applied and int(values['stale_commands']) <= 1
    assert int(values['holds_applied']) >= 8

    # A twist stamped 0.5 s ago is stale (Servo's 0.1 s timeout): never applied, counted.
    before = cell.position()
    stream(1.0, vx=speed, age_s=0.5)
    spin(nodes, 0.3)
    assert np.linalg.norm(cell.position() - before) < 0.002
    values = fresh_values()
    assert int(values['twists_applied']) == applied
    assert int(values['stale_commands']) >= 5
    # A twist in another frame is refused (the stand-in does not transform), and counted.
    stream(0.5, vx=speed, frame='panda_hand')
    spin(nodes, 0.3)
    assert np.linalg.norm(cell.position() - before) < 0.002
    values = fresh_values()
    assert int(values['twists_applied']) == applied
    assert int(values['refused_commands']) >= 5 and 'twist frame' in values['bad_commands']
    assert cell.diagnostics[-1].status[0].level == b'\x01'  # WARN
    # Non-finite twists and gripper commands that are not one finite value: refused too.
    refused = int(values['refused_commands'])
    stream(0.25, vx=math.nan)
    for data in ([], [0.0, 0.0], [math.nan]):
        cell.gripper.publish(Float64MultiArray(data=data))
        spin(nodes, 0.1)
    spin(nodes, 0.3)
    assert np.linalg.norm(cell.position() - before) < 0.002
    values = fresh_values()
    assert int(values['refused_commands']) >= refused + 5 + 2
    assert 'gripper command' in values['bad_commands'] and float(values['gripper_command']) == 0.0
    lines = [line for line in capfd.readouterr().err.splitlines() if '[sim_node]' in line]
    for kind in ('stale twist', 'twist frame'):  # one line each, not one per message
        assert sum(f'bad {kind} message' in line for line in lines) == 1, lines

    # The gripper follows the finger position commanded, and holds it.
    opened = cell.fingers()
    assert min(opened) > 0.03
    cell.gripper.publish(Float64MultiArray(data=[0.0]))
    assert spin(nodes, 4.0, until=lambda: max(cell.fingers()) < 0.005), cell.fingers()
    assert float(fresh_values()['gripper_command']) == 1.0
    spin(nodes, 0.5)
    assert max(cell.fingers()) < 0.005  # held without a new command
    cell.gripper.publish(Float64MultiArray(data=[0.04]))
    assert spin(nodes, 4.0, until=lambda: min(cell.fingers()) > 0.035), cell.fingers()
    assert float(fresh_values()['gripper_command']) == 0.0
    assert {s['episode'] for s in cell.statuses} == {0}  # all of it in one episode
    cell.node.destroy_node()
    sim.destroy_node()


@pytest.mark.parametrize('params_file,overrides', [
    ('sim_nodes.yaml', {}),
    ('robot_nodes.yaml', {'camera_node': {'source': 'IMAGES'}, 'policy_node': {
        'source': 'expert'}}),
    ('replay_nodes.yaml', {'policy_node': {'source': 'expert'}, 'bag_player_node': {
        'bag': 'BAG'}, 'record': {'output': 'RECORDING'}}),
])
def test_every_configured_parameter_is_declared_by_its_node(ros_environment, tmp_path,
                                                            params_file, overrides):
    import cv2
    import rclpy
    from test_eval_bag import varied_episode
    import yaml

    from vla_align.data.bag_io import write_episode_bag
    from vla_align.ros import record
    from vla_align.ros.bag_player_node import BagPlayerNode
    from vla_align.ros.sim_node import SimNode

    cv2.imwrite(str(tmp_path / 'frame.png'), np.zeros((8, 8, 3), np.uint8))
    write_episode_bag(varied_episode(0, steps=2), tmp_path / 'bag')
    paths = {'IMAGES': str(tmp_path), 'BAG': str(tmp_path / 'bag'),
             'RECORDING': str(tmp_path / 'recording')}
    path = Path(__file__).resolve().parents[1] / 'config' / params_file
    sections = yaml.safe_load(path.read_text())
    classes = {'sim_node': SimNode, 'camera_node': CameraNode,
               'instruction_node': InstructionNode, 'policy_node': PolicyNode,
               'bag_player_node': BagPlayerNode, 'record': record._node_class()}
    context = rclpy.Context()
    rclpy.init(args=['--ros-args', '--params-file', str(path)], context=context)
    try:
        for name, section in sections.items():
            extra = {k: paths.get(v, v) for k, v in overrides.get(name, {}).items()}
            node = classes[name](context=context, parameter_overrides=[
                Parameter(k, value=v) for k, v in extra.items()])
            undeclared = [k for k in section['ros__parameters'] if not node.has_parameter(k)]
            assert not undeclared, f'{params_file}: {name} does not declare {undeclared}'
            for key, value in section['ros__parameters'].items():
                if key not in extra:
                    assert node.get_parameter(key).value == value, (name, key)
            node.destroy_node()
    finally:
        context.try_shutdown()
