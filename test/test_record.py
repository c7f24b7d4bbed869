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
