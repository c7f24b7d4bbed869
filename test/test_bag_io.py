"""Episode <-> rosbag2: exact round trips, nothing lost, clear errors for broken bags."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, Writer
from rosbags.rosbag2.enums import StoragePlugin
import yaml

from vla_align.actions import ACTION_LABELS
from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import (
    BAG_VERSION,
    BagTopics,
    bag_stats,
    read_bag_messages,
    read_episode_bag,
    step_stamps_ns,
    write_episode_bag,
)
from vla_align.data.episode import Episode
from vla_align.sim.types import CameraConfig, TaskSpec

NUM_STEPS = 12
TOPICS = BagTopics()


def make_episode(rng: np.random.Generator, num_steps: int = NUM_STEPS) -> Episode:
    """A synthetic episode; a non-square image catches height/width mix-ups."""
    camera = CameraConfig(width=20, height=14, eye=(1.0, 0.1, 0.7))
    task = TaskSpec(family='put', instruction='put the red block in the blue bowl',
                    target='red block', destination='blue bowl', split='shift',
                    num_distractors=3, shift={'camera_jitter': 0.02})
    return Episode(
        task=task, seed=1234,
        images=rng.integers(0, 256, (num_steps, camera.height, camera.width, 3), dtype=np.uint8),
        actions=rng.normal(0, 0.01, (num_steps, 7)).astype(np.float32),
        ee_positions=rng.normal(0.4, 0.1, (num_steps, 3)).astype(np.float32),
        ee_orientations=rng.normal(0, 1, (num_steps, 4)).astype(np.float32),
        grippers=rng.random(num_steps).astype(np.float32),
        joint_positions=rng.normal(0, 1, (num_steps, 9)).astype(np.float32),
        success=True, control_hz=7.5, camera=camera,
        metadata={'expert': 'scripted', 'steps_to_success': np.int64(9)})


@pytest.fixture
def episode() -> Episode:
    return make_episode(np.random.default_rng(7))


def expected_counts(num_steps: int) -> dict[str, int]:
    return {**{topic: num_steps for topic in TOPICS.per_step()},
            **{topic: 1 for topic in TOPICS.once()}}


def copy_bag_without(src: Path, dst: Path, topic: str, keep: int) -> None:
    """Re-write ``src`` keeping only the first ``keep`` messages of ``topic`` (a lossy bag)."""
    with Reader(src) as reader, Writer(dst, version=BAG_VERSION,
                                       storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {c.id: writer.add_connection(c.topic, c.msgtype, typestore=rm.TYPESTORE)
                 for c in reader.connections if not (c.topic == topic and keep == 0)}
        seen = 0
        for connection, timestamp, data in reader.messages():
            if connection.topic == topic:
                seen += 1
                if seen > keep:
                    continue
            writer.write(conns[connection.id], timestamp, data)


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_round_trip_is_exact(tmp_path, episode, storage):
    write_episode_bag(episode, tmp_path / 'bag', storage=storage)
    restored = read_episode_bag(tmp_path / 'bag')
    for name in ('images', 'actions', 'ee_positions', 'ee_orientations', 'grippers',
                 'joint_positions'):
        original, back = getattr(episode, name), getattr(restored, name)
        assert back.dtype == original.dtype, name
        assert np.array_equal(back, original), name
    assert restored.task == episode.task
    assert (restored.seed, restored.success, restored.control_hz) == (1234, True, 7.5)
    assert restored.camera == episode.camera
    assert restored.metadata == {'expert': 'scripted', 'steps_to_success': 9}


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_no_message_lost_written_equals_read_equals_metadata(tmp_path, episode, storage):
    stats = write_episode_bag(episode, tmp_path / 'bag', storage=storage)
    assert stats.message_counts == expected_counts(NUM_STEPS)
    read_back = bag_stats(tmp_path / 'bag')
    assert read_back.message_counts == stats.message_counts
    assert read_back.storage == storage
    assert read_back.duration_ns == stats.duration_ns == round((NUM_STEPS - 1) * 1e9 / 7.5)

    info = yaml.safe_load((tmp_path / 'bag' / 'metadata.yaml').read_text())
    info = info['rosbag2_bagfile_information']
    assert info['version'] == BAG_VERSION and info['storage_identifier'] == storage
    listed = {entry['topic_metadata']['name']: (entry['topic_metadata']['type'],
                                                entry['message_count'])
              for entry in info['topics_with_message_count']}
    assert {topic: count for topic, (_type, count) in listed.items()} == stats.message_counts
    assert listed[TOPICS.image][0] == 'sensor_msgs/msg/Image'
    assert listed[TOPICS.action][0] == 'std_msgs/msg/Float32MultiArray'
    assert listed[TOPICS.joint_states][0] == 'sensor_msgs/msg/JointState'
    assert listed[TOPICS.ee_pose][0] == 'geometry_msgs/msg/PoseStamped'
    assert info['message_count'] == stats.total_messages


def test_instruction_is_offered_latched(tmp_path, episode):
    write_episode_bag(episode, tmp_path / 'bag')
    with Reader(tmp_path / 'bag') as reader:
        qos = {c.topic: c.ext.offered_qos_profiles[0] for c in reader.connections}
    assert qos[TOPICS.instruction].durability.name == 'TRANSIENT_LOCAL'
    assert qos[TOPICS.instruction].reliability.name == 'RELIABLE'
    assert qos[TOPICS.image].reliability.name == 'BEST_EFFORT'


def test_stamps_follow_control_rate_and_actions_carry_their_image_stamp(tmp_path, episode):
    write_episode_bag(episode, tmp_path / 'bag', start_ns=5_000_000_000)
    messages = read_bag_messages(tmp_path / 'bag', {TOPICS.image: rm.IMAGE,
                                                    TOPICS.action: rm.FLOAT32_MULTI_ARRAY,
                                                    TOPICS.ee_pose: rm.POSE_STAMPED})
    expected = step_stamps_ns(NUM_STEPS, 7.5, 5_000_000_000).tolist()
    assert expected[1] - expected[0] == 133_333_333
    assert [rm.stamp_to_ns(msg.header) for _t, msg in messages[TOPICS.image]] == expected
    assert [t for t, _msg in messages[TOPICS.image]] == expected
    assert [t for t, _msg in messages[TOPICS.action]] == expected
    assert messages[TOPICS.ee_pose][0][1].header.frame_id == 'panda_link0'
    layout = messages[TOPICS.action][0][1].layout
    assert [(d.label, d.size) for d in layout.dim] == [(','.join(ACTION_LABELS), 7)]


def test_camera_info_matches_intrinsics(tmp_path, episode):
    write_episode_bag(episode, tmp_path / 'bag')
    info = read_bag_messages(tmp_path / 'bag', {TOPICS.camera_info: rm.CAMERA_INFO})
    msg = info[TOPICS.camera_info][0][1]
    fx, fy, cx, cy = episode.camera.intrinsics()
    assert (msg.width, msg.height) == (20, 14)
    assert np.allclose(msg.k, [fx, 0, cx, 0, fy, cy, 0, 0, 1])
    assert np.allclose(msg.p, [fx, 0, cx, 0, 0, fy, cy, 0, 0, 0, 1, 0])


def test_mcap_bag_is_reproducible(tmp_path, episode):
    for folder in ('a', 'b'):
        write_episode_bag(episode, tmp_path / folder / 'bag')
    for name in ('bag.mcap', 'metadata.yaml'):
        assert (tmp_path / 'a' / 'bag' / name).read_bytes() == \
            (tmp_path / 'b' / 'bag' / name).read_bytes()


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match='does not exist'):
        read_episode_bag(tmp_path / 'nowhere')
    (tmp_path / 'folder').mkdir()
    with pytest.raises(ValueError, match='no metadata.yaml'):
        read_episode_bag(tmp_path / 'folder')


def test_bag_lacking_a_topic_is_a_clear_error(tmp_path, episode):
    write_episode_bag(episode, tmp_path / 'bag')
    copy_bag_without(tmp_path / 'bag', tmp_path / 'no_action', TOPICS.action, keep=0)
    with pytest.raises(ValueError, match=r"lacks required topics \['/vla/action'\]"):
        read_episode_bag(tmp_path / 'no_action')


def test_bag_that_lost_a_message_is_detected(tmp_path, episode):
    write_episode_bag(episode, tmp_path / 'bag')
    copy_bag_without(tmp_path / 'bag', tmp_path / 'lossy', TOPICS.action, keep=NUM_STEPS - 1)
    with pytest.raises(ValueError, match=f'/vla/action has {NUM_STEPS - 1} messages'):
        read_episode_bag(tmp_path / 'lossy')


def test_empty_bag_is_a_clear_error(tmp_path):
    with Writer(tmp_path / 'empty', version=BAG_VERSION,
                storage_plugin=StoragePlugin.MCAP) as writer:
        writer.add_connection(TOPICS.image, rm.IMAGE, typestore=rm.TYPESTORE)
    with pytest.raises(ValueError, match='empty'):
        read_episode_bag(tmp_path / 'empty')


def test_custom_topic_names_round_trip(tmp_path, episode):
    topics = BagTopics(image='/camera/color/image_raw', action='/robot/action')
    stats = write_episode_bag(episode, tmp_path / 'bag', topics=topics)
    assert stats.message_counts['/camera/color/image_raw'] == NUM_STEPS
    assert np.array_equal(read_episode_bag(tmp_path / 'bag', topics=topics).actions,
                          episode.actions)
    with pytest.raises(ValueError, match='lacks required topics'):
        read_episode_bag(tmp_path / 'bag')


def test_writer_refuses_bad_requests(tmp_path, episode):
    with pytest.raises(ValueError, match='storage must be one of'):
        write_episode_bag(episode, tmp_path / 'bag', storage='rosbag1')
    write_episode_bag(episode, tmp_path / 'bag')
    with pytest.raises(ValueError, match='already exists'):
        write_episode_bag(episode, tmp_path / 'bag')


def test_messages_are_standard_ros2_cdr(tmp_path, episode):
    """The real ROS 2 type support (rclpy) decodes what rosbags wrote, to the same values."""
    serialization = pytest.importorskip('rclpy.serialization')
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import Float32MultiArray

    write_episode_bag(episode, tmp_path / 'bag')
    classes = {TOPICS.image: Image, TOPICS.action: Float32MultiArray,
               TOPICS.joint_states: JointState, TOPICS.ee_pose: PoseStamped}
    first = {}
    with Reader(tmp_path / 'bag') as reader:
        for connection, _t, data in reader.messages():
            if connection.topic in classes and connection.topic not in first:
                first[connection.topic] = serialization.deserialize_message(
                    bytes(data), classes[connection.topic])
    image = first[TOPICS.image]
    assert (image.height, image.width, image.encoding, image.step) == (14, 20, 'rgb8', 60)
    assert bytes(image.data) == episode.images[0].tobytes()
    assert np.array_equal(np.array(first[TOPICS.action].data, dtype=np.float32),
                          episode.actions[0])
    assert list(first[TOPICS.joint_states].name)[0] == 'panda_joint1'
    assert first[TOPICS.ee_pose].pose.position.x == float(episode.ee_positions[0, 0])


def test_inspect_bag_prints_topics_counts_and_episode(tmp_path, episode, capsys):
    from vla_align import cli

    write_episode_bag(episode, tmp_path / 'bag', storage='sqlite3')
    assert cli.main(['inspect-bag', str(tmp_path / 'bag')]) == 0
    out = capsys.readouterr().out
    assert 'storage:   sqlite3' in out
    assert f'duration:  {(NUM_STEPS - 1) / 7.5:.3f} s' in out
    for topic, count in expected_counts(NUM_STEPS).items():
        line = next(line for line in out.splitlines() if line.strip().startswith(topic + ' '))
        assert line.split()[1] == str(count)
    assert "instruction: 'put the red block in the blue bowl'" in out
    assert 'success:     True' in out

    assert cli.main(['inspect-bag', str(tmp_path / 'nowhere')]) == 1
    assert 'does not exist' in capsys.readouterr().err


def test_failed_write_leaves_no_half_bag(tmp_path, episode):
    episode.images = episode.images.astype(np.float32)  # not uint8: refused mid-write
    with pytest.raises(ValueError, match='uint8'):
        write_episode_bag(episode, tmp_path / 'bag')
    assert not (tmp_path / 'bag').exists()


def test_topic_names_must_be_distinct():
    with pytest.raises(ValueError, match='distinct absolute names'):
        BagTopics(image='/vla/action')
