"""vla-align record: every published message ends up in the bag, which closes cleanly."""
from __future__ import annotations

import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import bag_stats, read_bag_messages
from vla_align.ros.record import BagRecorder

pytestmark = pytest.mark.ros
pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin

ROOT = Path(__file__).resolve().parents[1]


def test_bag_recorder_writes_what_many_threads_put(tmp_path):
    recorder = BagRecorder(tmp_path / 'bag', storage='sqlite3')
    recorder.add_topic('/a', rm.FLOAT32, 'reliable')
    recorder.add_topic('/b', rm.STRING, 'latched')

    def put(topic: str, message, count: int) -> None:
        data = bytes(rm.serialize(message))
        for i in range(count):
            recorder.put(topic, 1_000 + i, data)

    threads = [threading.Thread(target=put, args=('/a', rm.float32_msg(1.5), 500)),
               threading.Thread(target=put, args=('/b', rm.string_msg('x'), 300))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats = recorder.close()
    assert stats.received == stats.written == {'/a': 500, '/b': 300} and stats.lost == 0
    assert bag_stats(tmp_path / 'bag').message_counts == {'/a': 500, '/b': 300}
    with pytest.raises(ValueError, match='already exists'):
        BagRecorder(tmp_path / 'bag')



def test_flush_period_is_a_checked_node_parameter(tmp_path, ros_context):
    from rclpy.parameter import Parameter

    from vla_align.ros.params import ParameterConfigError
    from vla_align.ros.record import _node_class

    node = _node_class()(context=ros_context, parameter_overrides=[
        Parameter('output', value=str(tmp_path / 'rec')),
        Parameter('flush_period_s', value=2.5)])
    try:
        assert node.get_parameter('flush_period_s').value == 2.5
        assert node.recorder.flush_period_s == 2.5
    finally:
        node.destroy_node()
    with pytest.raises(ParameterConfigError, match='flush_period_s'):
        _node_class()(context=ros_context, parameter_overrides=[
            Parameter('output', value=str(tmp_path / 'rec2')),
            Parameter('flush_period_s', value=0.0)])
    assert not (tmp_path / 'rec2').exists()
    with pytest.raises(ValueError, match='flush_period_s must be positive'):
        BagRecorder(tmp_path / 'rec3', flush_period_s=0.0)

def burn_cpu(seconds: float) -> subprocess.Popen:
    """A process that keeps one core busy (the machine has two)."""
    return subprocess.Popen([sys.executable, '-c',
                             f'import time\nend = time.time() + {seconds}\n'
                             f'while time.time() < end: pass'])


def test_recording_under_load_loses_nothing(tmp_path, ros_context):
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from std_msgs.msg import Float32MultiArray, String

    from vla_align.ros import qos, topics
    from vla_align.ros.conversions import action_to_multiarray
    from vla_align.ros.record import _node_class

    recorder = _node_class()(output=str(tmp_path / 'rec'), topics=[topics.ACTION,
                                                                   topics.INSTRUCTION],
                             all_topics=False, storage='mcap', context=ros_context)
    publisher_node = Node('load_publisher', context=ros_context)
    actions = publisher_node.create_publisher(Float32MultiArray, topics.ACTION, qos.COMMANDS)
    instruction = publisher_node.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)
    instruction.publish(String(data='before the recorder matched: latched, so recorded'))
    executor = SingleThreadedExecutor(context=ros_context)
    executor.add_node(recorder)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.05)
                                               for _ in iter(stop.is_set, True)])
    spinner.start()
    burner = burn_cpu(60)
    count = 3000
    try:
        deadline = time.monotonic() + 20
        while actions.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert actions.get_subscription_count() == 1
        time.sleep(1.0)  # discovery completes on the subscriber's side too
        for i in range(count):  # as fast as rclpy publishes, no pacing
            value = np.full(7, 0.0, np.float32)
            value[0] = i * 1e-6
            actions.publish(action_to_multiarray(value))
        deadline = time.monotonic() + 30
        while recorder.recorder.stats.received[topics.ACTION] < count and \
                time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        burner.kill()
        burner.wait()
        stop.set()
        spinner.join()
        executor.shutdown()
        stats = recorder.recorder.stats
        recorder.destroy_node()
        publisher_node.destroy_node()
    assert stats.received[topics.ACTION] == stats.written[topics.ACTION] == count
    messages = read_bag_messages(tmp_path / 'rec', {topics.ACTION: rm.FLOAT32_MULTI_ARRAY,
                                                    topics.INSTRUCTION: rm.STRING})
    values = [round(float(msg.data[0]) * 1e6) for _, msg in messages[topics.ACTION]]
    assert values == list(range(count))  # every message, in order
    assert [m.data for _, m in messages[topics.INSTRUCTION]] == [
        'before the recorder matched: latched, so recorded']


def test_cli_records_until_ctrl_c_and_closes_the_bag(tmp_path, ros_context):
    from rclpy.node import Node
    from std_msgs.msg import Float32

    from vla_align.ros import qos, topics

    out = tmp_path / 'rec'
    process = subprocess.Popen(
        [sys.executable, '-m', 'vla_align.cli', 'record', str(out), '--topics', topics.GRIPPER,
         '--storage', 'sqlite3'], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    node = Node('gripper_publisher', context=ros_context)
    publisher = node.create_publisher(Float32, topics.GRIPPER, qos.COMMANDS)
    try:
        deadline = time.monotonic() + 60
        while publisher.get_subscription_count() < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.get_subscription_count() == 1, 'the recorder never subscribed'
        time.sleep(1.0)  # discovery completes on the subscriber's side too
        for i in range(200):
            publisher.publish(Float32(data=float(i)))
            time.sleep(0.001)
        time.sleep(1.0)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
        node.destroy_node()
    assert process.returncode == 0, output
    assert '200 messages written' in output
    assert bag_stats(out).message_counts == {topics.GRIPPER: 200}
    assert (out / 'metadata.yaml').is_file()


@pytest.fixture
def large_message_profile(monkeypatch) -> Path:
    """Fast DDS profile for 921 KB frames: for the recorder subprocess, and for this process
    if DDS has not loaded its profiles yet (it reads them once per process)."""
    from vla_align.ros.graph_config import dds_profile_variable

    profile = ROOT / 'config' / 'fastdds_large_messages.xml'
    monkeypatch.setenv(dds_profile_variable(os.environ.get('ROS_DISTRO')), str(profile))
    return profile


def test_recorder_killed_with_sigkill_loses_at_most_the_last_second(
        tmp_path, large_message_profile, ros_context):
    from rclpy.node import Node
    from sensor_msgs.msg import Image
    from std_msgs.msg import Float32MultiArray

    from vla_align.ros import qos, topics

    out = tmp_path / 'rec'
    # Frames go reliable on a topic of their own: the camera topic is best effort and may drop
    # 921 KB frames where this process runs without the profile; this test is about the kill.
    frame_topic = '/test/frames'
    process = subprocess.Popen(
        [sys.executable, '-m', 'vla_align.cli', 'record', str(out), '--topics', topics.ACTION,
         frame_topic], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))
    node = Node('numbered_publisher', context=ros_context)
    actions = node.create_publisher(Float32MultiArray, topics.ACTION, qos.COMMANDS)
    images = node.create_publisher(Image, frame_topic, qos.COMMANDS)
    frames = []
    for i in range(10):
        frame = Image(height=480, width=640, encoding='rgb8', step=640 * 3)
        frame.header.frame_id = str(i)
        frame.data = bytes([i]) * (640 * 480 * 3)
        frames.append(frame)
    published: list[int] = []  # publish time of action i
    frames_published: list[int] = []  # publish time of frame i
    try:
        deadline = time.monotonic() + 60
        while min(actions.get_subscription_count(), images.get_subscription_count()) < 1 and \
                time.monotonic() < deadline:
            time.sleep(0.05)
        assert actions.get_subscription_count() == 1, 'the recorder never subscribed'
        time.sleep(1.0)  # discovery completes on the subscriber's side too
        start = time.monotonic()
        while time.monotonic() - start < 3.5:  # 50 Hz actions, a frame every 10th (5 Hz)
            count = len(published)
            if count % 10 == 0 and len(frames_published) < len(frames):
                frames_published.append(time.time_ns())
                images.publish(frames[len(frames_published) - 1])
            published.append(time.time_ns())
            actions.publish(Float32MultiArray(data=[float(count)] + [0.0] * 6))
            time.sleep(max(0.0, start + (count + 1) * 0.02 - time.monotonic()))
        killed_ns = time.time_ns()
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
        node.destroy_node()
    assert not (out / 'metadata.yaml').exists()  # killed: the bag was never closed
    messages = read_bag_messages(out, {topics.ACTION: rm.FLOAT32_MULTI_ARRAY,
                                       frame_topic: rm.IMAGE})
    counters = [round(float(msg.data[0])) for _, msg in messages[topics.ACTION]]
    frame_ids = [int(msg.header.frame_id) for _, msg in messages[frame_topic]]
    for got, sent_ns, minimum in ((counters, published, 50), (frame_ids, frames_published, 5)):
        assert got == list(range(len(got)))  # a gap-free prefix of what was published
        old = [i for i, stamp in enumerate(sent_ns) if stamp < killed_ns - 1_000_000_000]
        assert len(old) >= minimum and len(got) > old[-1]  # all published > 1 s before the kill
    for _, msg in messages[frame_topic]:
        assert bytes(msg.data) == bytes(frames[int(msg.header.frame_id)].data)


ODD_PUBLISHER = """
import time
from geometry_msgs.msg import PoseStamped
import rclpy
from std_msgs.msg import Float64
from vla_align.ros import qos, topics
rclpy.init()
node = rclpy.create_node('odd_publisher')
gripper = node.create_publisher(Float64, topics.GRIPPER, qos.COMMANDS)
poses = node.create_publisher(PoseStamped, topics.EE_POSE, qos.SENSOR_DATA)
deadline = time.monotonic() + 30
while min(gripper.get_subscription_count(), poses.get_subscription_count()) < 1 and \\
        time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1.0)  # discovery completes on the subscriber's side too
for i in range(40):
    gripper.publish(Float64(data=float(i)))
    pose = PoseStamped()
    pose.pose.position.x = float(i)
    poses.publish(pose)
    time.sleep(0.01)
time.sleep(1.0)
"""


def test_topics_published_with_another_type_or_best_effort_are_resubscribed(tmp_path,
                                                                             ros_context, spin):
    from vla_align.ros import topics
    from vla_align.ros.record import CONTRACT_TYPES, _node_class

    # Subscribed at start as the contract's Float32 (reliable) and PoseStamped (reliable): DDS
    # matches neither publisher (another process: one participant refuses two types of a
    # topic), so without re-subscribing nothing would be recorded.
    assert CONTRACT_TYPES[topics.GRIPPER] == rm.FLOAT32
    recorder = _node_class()(output=str(tmp_path / 'rec'), topics=[topics.GRIPPER,
                                                                   topics.EE_POSE],
                             all_topics=False, storage='mcap', context=ros_context)
    process = subprocess.Popen([sys.executable, '-c', ODD_PUBLISHER], cwd=ROOT,
                               env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        spin([recorder], 40, until=lambda: process.poll() is not None)
        assert process.returncode == 0
    finally:
        if process.poll() is None:
            process.kill()
        recorder.destroy_node()
    messages = read_bag_messages(tmp_path / 'rec', {topics.GRIPPER: 'std_msgs/msg/Float64',
                                                    topics.EE_POSE: rm.POSE_STAMPED})
    assert [round(m.data) for _, m in messages[topics.GRIPPER]] == list(range(40))
    got = [round(m.pose.position.x) for _, m in messages[topics.EE_POSE]]
    assert len(got) >= 30 and got == sorted(set(got))  # best effort: in order, rarely a loss
