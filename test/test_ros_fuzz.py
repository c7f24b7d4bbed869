"""Malformed messages through every subscriber of the real nodes, over DDS (issue 8).

The inputs come from the generators of ``vla-align fuzz`` (seeded); each test checks that the
node keeps running, never acts on the bad input, counts it in /diagnostics and logs it without
flooding. The campaign itself is run end to end on the cheap targets at the end.
"""
import json

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import JointState
from std_msgs.msg import Float32MultiArray, String
from test_ros_nodes import Probe

from vla_align.actions import ActionLimits
from vla_align.ros import qos, topics
from vla_align.ros.conversions import action_to_multiarray, pose_msg
from vla_align.ros.fuzz_campaign import FLOOD_LINES, HAND_TRACKING_TOLERANCE_M
from vla_align.ros.fuzz_inputs import (
    action_inputs,
    image_inputs,
    instruction_texts,
    joint_state_inputs,
    pose_inputs,
)
from vla_align.ros.instruction_node import InstructionNode
from vla_align.ros.policy_node import PolicyNode
from vla_align.ros.sources import SourceStep

pytestmark = pytest.mark.ros
pytest_plugins = ('ros_isolation',)
LIMITS = ActionLimits()
GOOD = 'push the red block to the left'
N = 30  # per subscriber in these tests; `vla-align fuzz` runs hundreds


class RecordingSource:
    """Acts (dx = 0.01) on whatever it is given and records it; needs the robot state."""

    needs_state = True

    def __init__(self):
        self.seen = []

    def encode_instruction(self, text):
        pass

    def step(self, image, instruction, state):
        self.seen.append((image.shape, instruction, None if state is None else state.copy()))
        return SourceStep(np.array([0.01, 0, 0, 0, 0, 0, 0.5], np.float32), 0.5)


def node_lines(text, name):
    return [line for line in text.splitlines() if f'[{name}]' in line]


def diagnostics_values(probe):
    return {kv.key: kv.value for kv in probe.diagnostics[-1].status[0].values}


@pytest.fixture
def policy_setup(ros_context, spin):
    source = RecordingSource()
    policy = PolicyNode(source=source, context=ros_context, parameter_overrides=[
        Parameter('max_image_pixels', value=256 * 256), Parameter('control_rate', value=100.0),
        Parameter('diagnostics_period_s', value=0.2), Parameter('max_image_age_s', value=0.5),
        # Probe frames carry made-up stamps; the box is tested elsewhere; a frame that waits
        # for the pose of its stamp may be superseded, and every bad frame must be decoded.
        Parameter('state_age_by', value='arrival'), Parameter('use_workspace', value=False),
        Parameter('state_pairing_wait_s', value=0.0)])
    probe = Probe(ros_context)
    joints = probe.node.create_publisher(JointState, topics.JOINT_STATES, qos.DEFAULT)
    probe.pubs = {'joint_states': joints, 'ee_pose': probe.pose_pub}
    nodes = [policy, probe.node]
    probe.instruction_pub.publish(String(data=GOOD))
    good_pose = pose_msg([0.5, 0.0, 0.2], [1.0, 0.0, 0.0, 0.0], probe.frame().header.stamp,
                         'panda_link0')
    probe.good_pose = good_pose
    for _ in range(20):
        probe.pose_pub.publish(good_pose)
        probe.frame()
        spin(nodes, 0.05)
    assert source.seen, 'the policy did not act on good inputs'
    return policy, probe, source, nodes


def test_every_policy_subscriber_survives_bad_messages_without_acting_on_them(
        policy_setup, spin, capfd):
    policy, probe, source, nodes = policy_setup
    capfd.readouterr()
    bad_inputs = {'image': image_inputs(1, N), 'instruction': instruction_texts(2, N),
                  'ee_pose': pose_inputs(3, N), 'joint_states': joint_state_inputs(4, N)}
    for subscriber, inputs in bad_inputs.items():
        seen_before = len(source.seen)
        for item in inputs:
            if subscriber == 'image':
                probe.image_pub.publish(item.message)
            elif subscriber == 'instruction':
                probe.instruction_pub.publish(String(data=item.message))
            else:
                probe.pubs[subscriber].publish(item.message)
            spin(nodes, 0.01)
            if subscriber != 'image':
                if subscriber != 'ee_pose':
                    probe.pose_pub.publish(probe.good_pose)
                probe.frame()
            spin(nodes, 0.03)
        spin(nodes, 0.3)
        seen = source.seen[seen_before:]
        if subscriber in ('image', 'instruction', 'ee_pose'):  # the node held instead
            # the first frame may race ahead of the first bad input; none after it
            assert len(seen) <= 1, f'{subscriber}: the model was run on bad input'
        for shape, instruction, state in seen:
            assert shape == (24, 32, 3) and instruction == GOOD and np.all(np.isfinite(state))
        probe.instruction_pub.publish(String(data=GOOD))  # restore good inputs
        for _ in range(6):
            probe.pose_pub.publish(probe.good_pose)
            probe.frame()
            spin(nodes, 0.05)
        assert len(source.seen) > seen_before + len(seen), f'not acting again after {subscriber}'
    assert all(LIMITS.contains(a) for a in probe.action_values())
    counts = dict(item.split(':') for item in diagnostics_values(probe)['bad_inputs'].split(','))
    texts = [i.message for i in bad_inputs['instruction'] if i.message.strip()]
    # Frames are decoded when acted on (best effort, newest only) and the instruction topic
    # keeps only the newest message (latched, depth 1): nearly all of them arrive here.
    assert 0.8 * N <= int(counts.pop('image')) <= N
    assert 0.8 * len(texts) <= int(counts.pop('instruction')) <= len(texts)
    assert counts == {'ee_pose': str(N), 'joint_states': str(N)}
    lines = node_lines(capfd.readouterr().err, 'policy_node')
    assert 0 < len(lines) <= 5 * FLOOD_LINES, lines  # once per kind and state, not per message


def test_out_of_limit_model_output_is_clamped_and_non_finite_output_is_held(ros_context, spin):
    policy = PolicyNode(context=ros_context, parameter_overrides=[
        Parameter('source', value='expert'), Parameter('use_proprioception', value=False),
        Parameter('diagnostics_period_s', value=0.2)])
    probe = Probe(ros_context)
    expert = probe.node.create_publisher(Float32MultiArray, topics.EXPERT_ACTION, qos.COMMANDS)
    probe.instruction_pub.publish(String(data=GOOD))
    nodes = [policy, probe.node]
    outputs = action_inputs(2, 4 * N)
    for item in outputs:
        expert.publish(item.message)
        spin(nodes, 0.01)
        probe.frame()
        spin(nodes, 0.03)
    spin(nodes, 0.3)
    actions = probe.action_values()
    assert len(actions) > N and all(LIMITS.contains(a) for a in actions)
    assert any(np.any(a[:6]) for a in actions), 'out-of-limit outputs are clamped, not dropped'
    expected = f'expert_action:{sum(i.malformed for i in outputs)}'
    spin(nodes, 3.0, until=lambda: diagnostics_values(probe)['bad_inputs'] == expected)
    assert diagnostics_values(probe)['bad_inputs'] == expected


def test_instruction_node_relays_no_refused_text_and_counts_it(ros_context, spin, capfd):
    node = InstructionNode(context=ros_context, parameter_overrides=[
        Parameter('source', value='topic'), Parameter('poll_rate_hz', value=100.0)])
    other = Node('fuzzer', context=ros_context)
    pub = other.create_publisher(String, topics.INSTRUCTION_IN, qos.LATCHED)
    heard, diagnostics = [], []
    other.create_subscription(String, topics.INSTRUCTION, lambda m: heard.append(m.data),
                              qos.LATCHED)
    other.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, diagnostics.append,
                              qos.DEFAULT)
    nodes = [node, other]
    pub.publish(String(data=GOOD))
    assert spin(nodes, 5.0, until=lambda: heard == [GOOD])
    capfd.readouterr()
    inputs = [i for i in instruction_texts(3, 2 * N)
              if i.kind not in ('empty', 'whitespace_only')]
    for item in inputs:
        pub.publish(String(data=item.message))
        spin(nodes, 0.03)
    spin(nodes, 1.5, until=lambda: diagnostics and any(
        kv.key == 'refused' and int(kv.value) == len(inputs)
        for kv in diagnostics[-1].status[0].values))
    assert set(heard) == {GOOD}, 'a refused instruction was relayed'
    values = {kv.key: kv.value for kv in diagnostics[-1].status[0].values}
    # the input topic is latched with depth 1: an input replaced before it was read is lost
    assert 0.8 * len(inputs) <= int(values['refused']) <= len(inputs)
    assert values['instruction'] == GOOD
    lines = node_lines(capfd.readouterr().err, 'instruction_node')
    assert len(lines) == 1 and 'refused instruction message' in lines[0]


def test_sim_node_applies_no_malformed_action_and_keeps_the_hand_in_its_workspace(
        ros_context, spin):
    from vla_align.ros.sim_node import SimNode
    from vla_align.sim.controller import Workspace

    sim = SimNode(context=ros_context, parameter_overrides=[
        Parameter('family', value='reach'), Parameter('image_width', value=32),
        Parameter('image_height', value=32), Parameter('control_rate', value=20.0),
        Parameter('max_steps', value=100000), Parameter('diagnostics_period_s', value=0.2),
        Parameter('instruction_handshake', value=False)])  # alone, no instruction node
    test = Node('sim_fuzzer', context=ros_context)
    actions = test.create_publisher(Float32MultiArray, topics.ACTION, qos.COMMANDS)
    poses, diagnostics = [], []
    test.create_subscription(PoseStamped, topics.EE_POSE, poses.append, qos.DEFAULT)
    test.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, diagnostics.append,
                             qos.DEFAULT)
    nodes = [sim, test]

    def stats(until=lambda values: True):
        def latest():
            return {kv.key: kv.value for kv in diagnostics[-1].status[0].values}

        count = len(diagnostics)
        spin(nodes, 5.0, until=lambda: len(diagnostics) > count and until(latest()))
        return latest()

    assert spin(nodes, 10.0, until=lambda: len(poses) > 2)
    inputs = action_inputs(4, 4 * N)
    before = stats()
    for item in (i for i in inputs if i.malformed):
        actions.publish(item.message)
        spin(nodes, 0.02)
    malformed = sum(i.malformed for i in inputs)
    expected = int(before['invalid_actions']) + malformed
    after = stats(until=lambda values: int(values['invalid_actions']) >= expected)
    assert int(after['invalid_actions']) == expected, (before, after)
    assert after['actions_applied'] == before['actions_applied'], (before, after)
    for item in (i for i in inputs if not i.malformed):  # finite, far out of limits
        actions.publish(item.message)
        spin(nodes, 0.05)
    actions.publish(action_to_multiarray(np.zeros(7, np.float32)))
    spin(nodes, 0.5)
    applied = int(after['actions_applied'])
    assert int(stats(until=lambda v: int(v['actions_applied']) > applied)['actions_applied']) > \
        applied
    workspace = Workspace()
    positions = [np.array([p.pose.position.x, p.pose.position.y, p.pose.position.z])
                 for p in poses]
    outside = [p for p in positions
               if not workspace.contains(p, atol=HAND_TRACKING_TOLERANCE_M)]
    assert not outside, outside[:3]
    sim.destroy_node()


def test_the_fuzz_command_reports_zero_crashes_and_zero_unsafe_actions(tmp_path, capsys):
    from vla_align.cli import main

    # A fresh seed each run (printed: a failure names the seed that reproduces it).
    status = main(['fuzz', '-n', '8', '--targets', 'expert', 'instruction', '--out',
                   str(tmp_path)])
    print(capsys.readouterr().out)
    report = json.loads((tmp_path / 'fuzz.json').read_text())
    assert status == 0, report
    rows = {s['subscriber']: s for s in report['subscribers']}
    assert set(rows) == {'expert_action', 'instruction_in'}
    assert all(row['inputs_tried'] == 8 and row['crashes'] == 0 for row in rows.values())
    assert report['totals']['unsafe_published'] == 0 and report['totals']['floods'] == 0
    assert rows['instruction_in']['diagnostics_counted'] == sum(
        k['sent'] for k in rows['instruction_in']['kinds']
        if k['kind'] not in ('empty', 'whitespace_only'))
    assert set(report['shutdown_exit_status'].values()) == {0}
    assert '| policy_node (expert) | `/vla/expert_action` | 8 | 0 | 0 |' in (
        tmp_path / 'fuzz.md').read_text()


def test_the_robot_path_subscribers_and_services_survive_a_fresh_seed(tmp_path, capsys):
    """Servo twists and gripper commands into the stand-in, Joy into the teleop, ~/enable
    toggled under load, the recorder's services in random orders: a fresh seed each run."""
    from vla_align.cli import main

    status = main(['fuzz', '-n', '8', '--targets', 'servo', 'teleop', 'enable', 'recorder',
                   '--out', str(tmp_path)])
    printed = capsys.readouterr().out
    print(printed)
    assert 'fuzz seeds ' in printed
    report = json.loads((tmp_path / 'fuzz.json').read_text())
    assert status == 0, report
    rows = {s['subscriber']: s for s in report['subscribers']}
    assert set(rows) == {'servo_twist', 'gripper_command', 'joy', 'enable', 'services + notes'}
    assert report['totals']['crashes'] == report['totals']['unsafe_published'] == 0
    kinds = {(name, k['kind']): k for name, row in rows.items() for k in row['kinds']}
    # The refused commands were counted by the nodes, and none moved anything.
    assert rows['servo_twist']['diagnostics_counted'] >= (
        kinds['servo_twist', 'non_finite']['sent'] + kinds['servo_twist', 'wrong_frame']['sent'])
    assert rows['joy']['diagnostics_counted'] >= kinds['joy', 'non_finite_axes']['sent']
    assert all(k['derived_from_bad_input'] == 0 for k in kinds.values())
    assert set(report['shutdown_exit_status'].values()) == {0}


@pytest.mark.parametrize('generator', ['image_inputs', 'instruction_texts', 'pose_inputs',
                                       'joint_state_inputs', 'action_inputs', 'twist_inputs',
                                       'gripper_command_inputs', 'joy_inputs'])
def test_every_generator_gives_n_inputs_even_where_a_kind_has_few_values(generator):
    """A kind with fewer distinct values than asked for (an empty gripper command, say) once
    ended a 100-per-subscriber campaign with StopIteration on a fresh seed."""
    from vla_align.ros import fuzz_inputs

    inputs = getattr(fuzz_inputs, generator)(6051161, 120)
    assert len(inputs) == 120
    assert len({i.kind for i in inputs}) > 1


def test_draw_repeats_a_space_smaller_than_n():
    from hypothesis import strategies as st

    from vla_align.ros.fuzz_inputs import draw

    assert sorted(set(draw(st.sampled_from([1, 2]), 50, seed=3))) == [1, 2]
    assert len(draw(st.sampled_from([1, 2]), 50, seed=3)) == 50


def test_the_undecodable_encodings_are_refused_by_the_one_decoder():
    from vla_align.data.images import ImageDecodeError, decode_image
    from vla_align.ros.fuzz_inputs import _UNDECODABLE, image_inputs

    for item in image_inputs(6051161, 200):
        if item.kind == 'unknown_encoding':
            with pytest.raises(ImageDecodeError):
                decode_image(item.message)
    assert '16UC1' not in _UNDECODABLE and '8UC3' not in _UNDECODABLE


def test_non_finite_joy_inputs_break_an_axis_every_preset_reads():
    import math

    from vla_align.ros.fuzz_inputs import joy_inputs
    from vla_align.ros.teleop import PRESETS

    read_by_all = set.intersection(*({a for a in m.axes if a >= 0} for m in PRESETS.values()))
    for item in joy_inputs(4196412, 200):
        if item.kind == 'non_finite_axes':
            assert any(not math.isfinite(item.message.axes[a]) for a in read_by_all)


def test_control_character_instructions_are_refused_as_they_arrive():
    """What a node receives is the text up to the first NUL: no NUL, or the 'bad' instruction
    can arrive clean (a fresh seed relayed 'push the red block to the left')."""
    from vla_align.ros.fuzz_inputs import instruction_texts
    from vla_align.ros.instructions import InstructionError, normalize_instruction

    for item in instruction_texts(8335843, 400):
        if item.kind == 'control_characters':
            with pytest.raises(InstructionError):
                normalize_instruction(item.message.split('\x00')[0], 200)
