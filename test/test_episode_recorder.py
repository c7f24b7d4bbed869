"""The episode recorder: one bag per episode, its metadata last, nothing outside start..end."""
from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import pytest

from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import bag_stats, read_bag_messages
from vla_align.data.contract import load_contract
from vla_align.data.episode_meta import EpisodeMetadata
from vla_align.ros import topics
from vla_align.ros.episode_session import (
    EpisodeError,
    EpisodeSession,
    EpisodeSettings,
    KeyCommand,
    KeyReader,
    episode_name,
    key_command,
    next_episode_number,
)

pytestmark = pytest.mark.ros
pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin

ROOT = Path(__file__).resolve().parents[1]
CONTRACT = load_contract('panda_servo_teleop')
IMAGE, POSE, TWIST, GRIPPER = (CONTRACT.image.topic, CONTRACT.state.topic,
                               CONTRACT.action.topic, CONTRACT.gripper.topic)
TYPES = {IMAGE: rm.IMAGE, POSE: rm.POSE_STAMPED, TWIST: 'geometry_msgs/msg/TwistStamped',
         GRIPPER: 'std_msgs/msg/Float64MultiArray', topics.EPISODE_METADATA: rm.STRING}


def read_metadata(path: Path) -> EpisodeMetadata:
    messages = read_bag_messages(path, {topics.EPISODE_METADATA: rm.STRING})
    [(_, message)] = messages[topics.EPISODE_METADATA]
    return EpisodeMetadata.from_json(message.data)


# -- without ROS ----------------------------------------------------------------------------------
def test_episodes_are_numbered_after_the_highest_existing_one(tmp_path):
    assert next_episode_number(tmp_path) == 0
    for number in (3, 11):
        (tmp_path / episode_name(number)).mkdir()
    (tmp_path / f'{episode_name(12)}.recovering').mkdir()  # an interrupted recovery's folder
    (tmp_path / 'episode_notes.txt').write_text('not an episode')
    (tmp_path / 'episode_0020x').mkdir()
    assert next_episode_number(tmp_path) == 21
    assert episode_name(7) == 'episode_0007'


def test_keys_are_read_from_a_pipe_without_blocking():
    assert [key_command(k) for k in 'syndqS'] == [
        KeyCommand.START, KeyCommand.SUCCESS, KeyCommand.FAILURE, KeyCommand.DISCARD,
        KeyCommand.QUIT, KeyCommand.START]
    assert key_command('x') is None and key_command(' ') is None
    read_fd, write_fd = os.pipe()
    try:
        reader = KeyReader(read_fd)
        assert not reader.is_tty and reader.poll() == []  # nothing typed: returns at once
        os.write(write_fd, b's y\nn')
        assert reader.poll() == ['s', 'y', 'n'] and not reader.finished
        os.close(write_fd)
        write_fd = -1
        assert reader.poll() == [] and reader.finished
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


def test_session_writes_what_arrives_between_start_and_end_then_the_metadata(tmp_path):
    clock = {'ns': 1_000}
    settings = EpisodeSettings(output_dir=tmp_path / 'eps', contract='panda_servo_teleop',
                               robot='panda', operator='ana', control_hz=10.0)
    session = EpisodeSession(settings, now_ns=lambda: clock['ns'])
    session.add_topic('/count', rm.FLOAT32, 'reliable')
    session.add_topic('/latched', rm.STRING, 'latched')

    def count(i: int) -> None:
        clock['ns'] += 10
        session.put('/count', clock['ns'], bytes(rm.serialize(rm.float32_msg(float(i)))))

    session.put('/latched', 5, bytes(rm.serialize(rm.string_msg('sent once, before'))))
    for i in range(5):
        count(i)  # idle: not recorded
    with pytest.raises(EpisodeError, match='no instruction'):
        session.start('')
    with pytest.raises(EpisodeError, match='no episode'):
        session.end('success')
    name = session.start('stack the cubes')
    start_ns = clock['ns']
    with pytest.raises(EpisodeError, match='recording'):
        session.start('stack the cubes')
    for i in range(5, 25):
        count(i)
    closed = session.end('failure', notes='n' * 5000)
    for i in range(25, 30):
        count(i)  # after the end: not recorded
    assert session.start('again') == episode_name(1)
    session.discard()
    assert sorted(p.name for p in settings.output_dir.iterdir()) == [name]

    path = settings.output_dir / name
    assert closed.path == path and closed.lost == 0 and closed.outcome == 'failure'
    messages = read_bag_messages(path, {'/count': rm.FLOAT32, '/latched': rm.STRING,
                                        topics.EPISODE_METADATA: rm.STRING})
    assert [round(m.data) for _, m in messages['/count']] == list(range(5, 25))
    assert [(t, m.data) for t, m in messages['/latched']] == [(start_ns, 'sent once, before')]
    meta = EpisodeMetadata.from_json(messages[topics.EPISODE_METADATA][0][1].data)
    end_ns = messages[topics.EPISODE_METADATA][0][0]
    assert end_ns >= max(t for t, _ in messages['/count'])  # the last message of the bag
    assert (meta.instruction, meta.outcome, meta.robot, meta.operator, meta.contract) == (
        'stack the cubes', 'failure', 'panda', 'ana', 'panda_servo_teleop')
    assert meta.extra == {'start_ns': start_ns, 'end_ns': end_ns,
                          'messages': {'/count': 20, '/latched': 1}}
    assert len(meta.notes) < 5000 and meta.control_hz == 10.0


# -- the node over DDS ----------------------------------------------------------------------------
class Cell:
    """A test node standing in for a robot cell: numbered camera frames, poses, Servo twists
    and gripper commands at 50 Hz from a timer (value i in each: frame_id, x, linear.x, data)."""

    def __init__(self, context, rate_hz: float = 50.0) -> None:
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from rclpy.node import Node
        from rclpy.qos import QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
        from sensor_msgs.msg import Image
        from std_msgs.msg import Float64MultiArray, String

        from vla_align.ros import qos

        self.node = Node('test_cell', context=context)
        servo = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                           reliability=QoSReliabilityPolicy.RELIABLE)  # a Servo commander's
        n = self.node
        self.publishers = {IMAGE: n.create_publisher(Image, IMAGE, qos.SENSOR_DATA),
                           POSE: n.create_publisher(PoseStamped, POSE, qos.DEFAULT),
                           TWIST: n.create_publisher(TwistStamped, TWIST, servo),
                           GRIPPER: n.create_publisher(Float64MultiArray, GRIPPER, servo)}
        self.instruction = n.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)
        self.types = (Image, PoseStamped, TwistStamped, Float64MultiArray)
        self.count = 0
        self.publishing = False
        n.create_timer(1.0 / rate_hz, self._publish)

    def _publish(self) -> None:
        if not self.publishing:
            return
        Image, PoseStamped, TwistStamped, Float64MultiArray = self.types
        i, stamp = self.count, self.node.get_clock().now().to_msg()
        frame = Image(height=4, width=4, encoding='rgb8', step=12, data=bytes([i % 256]) * 48)
        frame.header.frame_id, frame.header.stamp = str(i), stamp
        pose = PoseStamped()
        pose.header.frame_id, pose.header.stamp = 'panda_link0', stamp
        pose.pose.position.x, pose.pose.orientation.w = float(i), 1.0
        twist = TwistStamped()
        twist.header.frame_id, twist.header.stamp = 'panda_link0', stamp
        twist.twist.linear.x = float(i)
        for topic, msg in ((IMAGE, frame), (POSE, pose), (TWIST, twist),
                           (GRIPPER, Float64MultiArray(data=[float(i)]))):
            self.publishers[topic].publish(msg)
        self.count += 1

    def matched(self) -> bool:
        return all(p.get_subscription_count() >= 1 for p in self.publishers.values())


def numbers(path: Path) -> dict[str, list[int]]:
    """The counter values recorded on each cell topic, in log-time order."""
    messages = read_bag_messages(path, {t: TYPES[t] for t in (IMAGE, POSE, TWIST, GRIPPER)})
    return {IMAGE: [int(m.header.frame_id) for _, m in messages[IMAGE]],
            POSE: [round(m.pose.position.x) for _, m in messages[POSE]],
            TWIST: [round(m.twist.linear.x) for _, m in messages[TWIST]],
            GRIPPER: [round(m.data[0]) for _, m in messages[GRIPPER]]}


def make_recorder(context, out: Path, key_input=None, **params):
    from rclpy.parameter import Parameter

    from vla_align.ros.episode_recorder import EpisodeRecorderNode

    params = {'output_dir': str(out), 'operator': 'ana', **params}
    return EpisodeRecorderNode(key_input=key_input, context=context,
                               parameter_overrides=[Parameter(k, value=v)
                                                    for k, v in params.items()])


class Services:
    def __init__(self, node, recorder_nodes, spin) -> None:
        from std_srvs.srv import SetBool, Trigger

        self.nodes, self.spin = recorder_nodes, spin
        self.clients = {name: node.create_client(kind, f'/episode_recorder/{name}')
                        for name, kind in (('start', Trigger), ('end', SetBool),
                                           ('discard', Trigger))}
        self.types = {'start': Trigger, 'end': SetBool, 'discard': Trigger}
        assert spin(self.nodes, 10, until=lambda: all(
            c.service_is_ready() for c in self.clients.values()))

    def __call__(self, name: str, data: bool | None = None):
        request = self.types[name].Request()
        if data is not None:
            request.data = data
        future = self.clients[name].call_async(request)
        assert self.spin(self.nodes, 10, until=future.done), f'{name} got no answer'
        return future.result()


def test_episodes_through_the_services_keep_every_message_between_start_and_end(
        tmp_path, ros_context, spin):
    from diagnostic_msgs.msg import DiagnosticArray
    from std_msgs.msg import String

    from vla_align.ros import qos

    out = tmp_path / 'episodes'
    recorder = make_recorder(ros_context, out)
    cell = Cell(ros_context)
    diagnostics = []
    cell.node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, diagnostics.append,
                                  qos.DEFAULT)
    nodes = [recorder, cell.node]
    call = Services(cell.node, nodes, spin)
    try:
        assert spin(nodes, 10, until=cell.matched), 'the recorder never subscribed'
        cell.instruction.publish(String(data='put the cube in the bowl'))
        cell.publishing = True
        spin(nodes, 0.5)  # published while idle: in no episode
        assert call('start').success
        spin(nodes, 1.0)
        assert spin(nodes, 3, until=lambda: any(
            s.name == 'episode_recorder: episodes' and 'recording episode_0000' in s.message
            for d in diagnostics for s in d.status))
        first = call('end', True)
        spin(nodes, 0.3)
        assert call('start').success
        spin(nodes, 0.5)
        assert call('discard').success
        spin(nodes, 0.3)
        third = call('start')
        spin(nodes, 1.0)
        last = call('end', False)
        spin(nodes, 0.3)
    finally:
        published = cell.count
        cell.node.destroy_node()
        recorder.destroy_node()
    assert first.success and 'episode_0000 saved as success' in first.message
    assert third.message.startswith('episode_0001 recording')  # the discarded number reused
    assert last.success and 'episode_0001 saved as failure' in last.message
    assert sorted(p.name for p in out.iterdir()) == ['episode_0000', 'episode_0001']
    ranges = []
    for path, outcome in ((out / 'episode_0000', 'success'), (out / 'episode_0001', 'failure')):
        meta = read_metadata(path)
        assert (meta.instruction, meta.outcome, meta.robot, meta.operator, meta.contract,
                meta.source, meta.control_hz) == (
            'put the cube in the bowl', outcome, CONTRACT.robot, 'ana', CONTRACT.name,
            'episode_recorder', CONTRACT.control_rate_hz)
        counts = bag_stats(path).message_counts
        assert counts == {**meta.extra['messages'], topics.EPISODE_METADATA: 1}
        got = numbers(path)
        for topic in (POSE, TWIST, GRIPPER):  # reliable: gap-free, ~50 Hz for ~1 s
            assert got[topic] == list(range(got[topic][0], got[topic][0] + len(got[topic])))
            assert len(got[topic]) >= 20, (topic, len(got[topic]))
        assert got[IMAGE] == sorted(set(got[IMAGE])) and len(got[IMAGE]) >= 10  # best effort
        assert set(got[IMAGE]) <= set(range(got[POSE][0] - 2, got[POSE][-1] + 3))
        log_times = [t for msgs in read_bag_messages(path, TYPES).values() for t, _ in msgs]
        assert min(log_times) >= meta.extra['start_ns']
        assert max(log_times) == meta.extra['end_ns']  # the metadata is the last message
        ranges.append((got[POSE][0], got[POSE][-1]))
    (a0, a1), (b0, b1) = ranges
    # Nothing from before the first start, between the episodes, nor after the last end.
    assert 0 < a0 <= a1 < b0 <= b1 < published - 1
    assert b0 - a1 > 30  # the discarded episode's ~0.5 s at 50 Hz is in neither


def test_start_end_and_discard_are_refused_with_a_reason(tmp_path, ros_context, spin):
    from rclpy.node import Node
    from std_msgs.msg import String

    from vla_align.ros import qos

    out = tmp_path / 'episodes'
    recorder = make_recorder(ros_context, out, require_publishers=False)
    probe = Node('probe', context=ros_context)
    instruction = probe.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)
    nodes = [recorder, probe]
    call = Services(probe, nodes, spin)
    try:
        no_instruction = call('start')
        no_episode = call('end', True)
        nothing_to_discard = call('discard')
        instruction.publish(String(data='open the drawer'))
        assert spin(nodes, 10, until=lambda: recorder.instruction == 'open the drawer')
        started = call('start')
        again = call('start')
        ended = call('end', True)
    finally:
        probe.destroy_node()
        recorder.destroy_node()
    assert not no_instruction.success and 'no instruction' in no_instruction.message
    assert not no_episode.success and 'no episode' in no_episode.message
    assert not nothing_to_discard.success
    assert started.success and not again.success
    assert 'episode_0000 is recording' in again.message
    assert ended.success
    assert [p.name for p in out.iterdir()] == ['episode_0000']


def test_no_episode_starts_before_every_contract_topic_has_a_publisher(tmp_path, ros_context,
                                                                       spin):
    """CI once recorded a first episode with camera frames only: the pose and command
    subscriptions were matched a second later, and every frame was dropped as unpaired."""
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    out = tmp_path / 'episodes'
    recorder = make_recorder(ros_context, out)
    cell = Cell(ros_context)
    cell.instruction.publish(String(data='open the drawer'))
    ready = cell.node.create_client(Trigger, '/episode_recorder/ready')
    nodes = [recorder, cell.node]
    call = Services(cell.node, nodes, spin)
    try:
        assert spin(nodes, 10, until=lambda: recorder.instruction == 'open the drawer')
        # The cell's publishers exist only for the image: the rest are not matched.
        for topic in (POSE, TWIST, GRIPPER):
            cell.node.destroy_publisher(cell.publishers.pop(topic))
        assert spin(nodes, 10, until=lambda: recorder.missing_publishers() == sorted(
            [POSE, TWIST, GRIPPER]))
        refused = call('start')
        assert ready.wait_for_service(timeout_sec=5.0)
        future = ready.call_async(Trigger.Request())
        assert spin(nodes, 5, until=future.done)
        not_ready = future.result()
    finally:
        recorder.destroy_node()
        cell.node.destroy_node()
    assert not refused.success and all(t in refused.message for t in (POSE, TWIST, GRIPPER))
    assert IMAGE not in refused.message.split('no publisher yet on ')[1]
    assert not not_ready.success and POSE in not_ready.message
    assert not out.exists() or not any(out.iterdir()), 'a refused start created an episode'


def test_keys_drive_episodes_and_one_running_at_shutdown_is_kept_as_unknown(
        tmp_path, ros_context, spin):
    from rclpy.node import Node
    from std_msgs.msg import String

    from vla_align.ros import qos

    out = tmp_path / 'episodes'
    read_fd, write_fd = os.pipe()
    recorder = make_recorder(ros_context, out, key_input=read_fd, keyboard=True,
                             require_publishers=False)
    probe = Node('probe', context=ros_context)
    probe.create_publisher(String, topics.INSTRUCTION, qos.LATCHED).publish(
        String(data='wipe the table'))
    notes = probe.create_publisher(String, '/episode_recorder/notes', qos.DEFAULT)
    nodes = [recorder, probe]
    try:
        assert recorder.keyboard_on
        assert spin(nodes, 10, until=lambda: recorder.instruction == 'wipe the table')
        os.write(write_fd, b'x s')  # x: an unknown key, ignored
        assert spin(nodes, 5, until=lambda: recorder.session.recording)
        assert spin(nodes, 10, until=lambda: notes.get_subscription_count() >= 1)
        notes.publish(String(data='the cloth slipped'))
        spin(nodes, 0.5)
        os.write(write_fd, b'y')
        assert spin(nodes, 5, until=lambda: not recorder.session.recording)
        os.write(write_fd, b's')
        assert spin(nodes, 5, until=lambda: recorder.session.recording)
        os.write(write_fd, b'q')
        with pytest.raises(KeyboardInterrupt):  # run_node's and the CLI's clean stop
            spin(nodes, 5)
    finally:
        probe.destroy_node()
        recorder.destroy_node()  # closes the running episode
        os.close(write_fd)
        os.close(read_fd)
    assert [(p.name, read_metadata(p).outcome, read_metadata(p).notes)
            for p in sorted(out.iterdir())] == [
        ('episode_0000', 'success', 'the cloth slipped'), ('episode_0001', 'unknown', '')]
    assert recorder.session.closed[1].outcome == 'unknown'


def test_bad_parameters_are_refused_at_start_up(tmp_path, ros_context):
    from vla_align.ros.params import StartupError

    with pytest.raises(StartupError, match='output_dir'):
        make_recorder(ros_context, '')
    with pytest.raises(StartupError, match='no contract file'):
        make_recorder(ros_context, tmp_path / 'a', contract='no_such_contract')
    with pytest.raises(StartupError, match='storage'):
        make_recorder(ros_context, tmp_path / 'b', storage='bag1')
    assert not (tmp_path / 'a').exists() and not (tmp_path / 'b').exists()


def test_the_params_file_section_sets_every_declared_parameter(tmp_path, ros_context):
    import yaml

    section = yaml.safe_load((ROOT / 'config' / 'recorder_nodes.yaml').read_text())
    params = dict(section['episode_recorder']['ros__parameters'])
    assert params.pop('output_dir') == ''  # required: no default folder
    recorder = make_recorder(ros_context, tmp_path / 'eps', **params)
    try:
        declared = set(recorder._parameters) - {'use_sim_time', 'start_type_description_service'}
        assert declared == set(params) | {'output_dir'}
        for name, value in params.items():
            assert recorder.get_parameter(name).value == value, name
    finally:
        recorder.destroy_node()


def test_cli_records_episodes_from_keys_and_closes_the_running_one_at_sigterm(
        tmp_path, ros_context, capsys):
    from rclpy.node import Node
    from std_msgs.msg import Float64MultiArray, String

    from vla_align import cli
    from vla_align.ros import qos

    out = tmp_path / 'episodes'
    process = subprocess.Popen(
        [sys.executable, '-m', 'vla_align.cli', 'record', '--episodes', str(out),
         '--operator', 'bo', '--keyboard', '--no-require-publishers'], cwd=ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    node = Node('gripper_publisher', context=ros_context)
    instruction = node.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)
    instruction.publish(String(data='close the lid'))
    gripper = node.create_publisher(Float64MultiArray, GRIPPER, qos.COMMANDS)

    def press(key: bytes, seconds: float) -> None:
        process.stdin.write(key + b'\n')
        process.stdin.flush()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            gripper.publish(Float64MultiArray(data=[0.04]))
            time.sleep(0.02)

    try:
        deadline = time.monotonic() + 60
        # Both: under load the instruction can match after the gripper, and a start key
        # before the recorder holds an instruction is refused.
        while (gripper.get_subscription_count() < 1 or instruction.get_subscription_count() < 1
               ) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gripper.get_subscription_count() == 1, 'the recorder never subscribed'
        assert instruction.get_subscription_count() == 1, 'no instruction subscription'
        time.sleep(1.0)  # discovery completes on the subscriber's side too
        press(b's', 1.0)
        press(b'y', 0.5)
        press(b's', 1.0)
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        node.destroy_node()
    output = output.decode()
    assert process.returncode == 0, output
    assert 'episode_0000 saved as success' in output
    assert 'episode_0001 saved as unknown' in output
    assert '2 episodes saved' in output
    for name, outcome in (('episode_0000', 'success'), ('episode_0001', 'unknown')):
        meta = read_metadata(out / name)
        assert (meta.instruction, meta.outcome, meta.operator) == ('close the lid', outcome,
                                                                    'bo')
        assert 30 <= bag_stats(out / name).message_counts[GRIPPER] == \
            meta.extra['messages'][GRIPPER]
    capsys.readouterr()
    assert cli.main(['inspect-bag', str(out / 'episode_0000')]) == 0
    shown = capsys.readouterr().out
    assert topics.EPISODE_METADATA in shown and 'close the lid' in shown
    assert 'success' in shown


def test_cli_refuses_plain_and_episode_options_together(tmp_path, capsys):
    from vla_align import cli

    assert cli.main(['record', str(tmp_path / 'rec'), '--episodes', str(tmp_path / 'e')]) == 2
    assert cli.main(['record', '--episodes', str(tmp_path / 'e'), '--all']) == 2
    assert cli.main(['record']) == 2
    errors = capsys.readouterr().err
    assert 'not both' in errors and '--episodes DIR' in errors
    assert not (tmp_path / 'rec').exists() and not (tmp_path / 'e').exists()
