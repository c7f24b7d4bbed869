"""Episode -> rosbag2 -> the sim_panda contract: round trips, nothing lost, clear errors."""
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
    step_stamps_ns,
    write_episode_bag,
)
from vla_align.data.contract import load_contract
from vla_align.data.contract_reader import ContractBagError, read_contract_episodes
from vla_align.data.episode import CameraGeometry, Episode, TaskInfo
from vla_align.data.state import unit_quaternion

NUM_STEPS = 12
TOPICS = BagTopics()


JOINTS = tuple(f'panda_joint{i}' for i in range(1, 8)) + ('panda_finger_joint1',
                                                          'panda_finger_joint2')


def make_episode(rng: np.random.Generator, num_steps: int = NUM_STEPS,
                 control_hz: float = 7.5) -> Episode:
    """A synthetic episode; a non-square image catches height/width mix-ups. The gripper state
    is the command in force (the previous action's), as in the simulator's episodes."""
    camera = CameraGeometry(width=20, height=14, fx=18.0, fy=18.0, cx=9.5, cy=6.5,
                            frame_id='camera_color_optical_frame')
    task = TaskInfo(instruction='put the red block in the blue bowl', family='put',
                    split='shift', details={'target': 'red block', 'destination': 'blue bowl',
                                            'num_distractors': 3,
                                            'shift': {'camera_jitter': 0.02}})
    actions = rng.normal(0, 0.01, (num_steps, 7)).astype(np.float32)
    actions[:, 6] = rng.integers(0, 2, num_steps)
    return Episode(
        task=task, seed=1234,
        images=rng.integers(0, 256, (num_steps, camera.height, camera.width, 3), dtype=np.uint8),
        actions=actions,
        ee_positions=rng.normal(0.4, 0.1, (num_steps, 3)).astype(np.float32),
        ee_orientations=rng.normal(0, 1, (num_steps, 4)).astype(np.float32),
        grippers=np.concatenate([[0.0], actions[:-1, 6]]).astype(np.float32),
        joint_positions=rng.normal(0, 1, (num_steps, 9)).astype(np.float32),
        joint_names=JOINTS, success=True, control_hz=control_hz, camera=camera,
        metadata={'expert': 'scripted', 'steps_to_success': np.int64(9)})


def read_back(path: Path, rate: float = 7.5) -> Episode:
    """The one episode of a bag, read as training reads it (the sim_panda contract)."""
    contract = load_contract('sim_panda')
    from dataclasses import replace

    contract = replace(contract, control_rate_hz=rate,
                       episodes=replace(contract.episodes, success_only=False))
    result = read_contract_episodes(path, contract)
    assert len(result.episodes) == 1, result.dropped
    return result.episodes[0]


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
def test_round_trip_through_the_contract_is_exact(tmp_path, episode, storage):
    write_episode_bag(episode, tmp_path / 'bag', storage=storage)
    restored = read_back(tmp_path / 'bag')
    for name in ('images', 'actions', 'ee_positions', 'grippers'):
        original, back = getattr(episode, name), getattr(restored, name)
        assert back.dtype == original.dtype, name
        assert np.array_equal(back, original), name
    # Orientations come back unit length with their sign (the policy's statistics canonicalise).
    np.testing.assert_allclose(restored.ee_orientations,
                               unit_quaternion(episode.ee_orientations), atol=1e-6)
    np.testing.assert_allclose(restored.states(), episode.states(), atol=1e-6)
    assert restored.task == episode.task
    assert (restored.seed, restored.success, restored.control_hz) == (1234, True, 7.5)
    assert restored.camera == episode.camera
    assert restored.metadata['expert'] == 'scripted'
    assert restored.metadata['steps_to_success'] == 9
    assert restored.metadata['contract'] == 'sim_panda'


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
    contract = load_contract('sim_panda')
    with pytest.raises(ContractBagError, match='does not exist'):
        read_contract_episodes(tmp_path / 'nowhere', contract)
    (tmp_path / 'folder').mkdir()
    with pytest.raises(ContractBagError, match='no metadata.yaml'):
        read_contract_episodes(tmp_path / 'folder', contract)


def test_bag_lacking_a_topic_is_a_clear_error(tmp_path, episode):
    write_episode_bag(episode, tmp_path / 'bag')
    copy_bag_without(tmp_path / 'bag', tmp_path / 'no_action', TOPICS.action, keep=0)
    with pytest.raises(ContractBagError, match=r'missing /vla/action \(action\)'):
        read_contract_episodes(tmp_path / 'no_action', load_contract('sim_panda'))


def test_frames_whose_action_was_lost_are_dropped_and_counted(tmp_path, episode):
    write_episode_bag(episode, tmp_path / 'bag')
    copy_bag_without(tmp_path / 'bag', tmp_path / 'lossy', TOPICS.action, keep=NUM_STEPS - 3)
    from dataclasses import replace

    result = read_contract_episodes(tmp_path / 'lossy',
                                    replace(load_contract('sim_panda'), control_rate_hz=7.5))
    assert result.frames_used == NUM_STEPS - 3
    assert result.dropped['frame without action'] == 3
    np.testing.assert_array_equal(result.episodes[0].actions, episode.actions[:NUM_STEPS - 3])


def test_empty_bag_is_a_clear_error(tmp_path):
    with Writer(tmp_path / 'empty', version=BAG_VERSION,
                storage_plugin=StoragePlugin.MCAP) as writer:
        writer.add_connection(TOPICS.image, rm.IMAGE, typestore=rm.TYPESTORE)
    with pytest.raises(ContractBagError, match='empty'):
        read_contract_episodes(tmp_path / 'empty', load_contract('sim_panda'))


def test_custom_topic_names_are_written(tmp_path, episode):
    topics = BagTopics(image='/camera/color/image_raw', action='/robot/action')
    stats = write_episode_bag(episode, tmp_path / 'bag', topics=topics)
    assert stats.message_counts['/camera/color/image_raw'] == NUM_STEPS
    assert stats.message_counts['/robot/action'] == NUM_STEPS
    with pytest.raises(ContractBagError, match='missing /camera/image_raw'):
        read_contract_episodes(tmp_path / 'bag', load_contract('sim_panda'))


def test_bag_topic_names_are_the_node_graphs():
    from vla_align.ros import topics

    assert (TOPICS.image, TOPICS.camera_info, TOPICS.instruction, TOPICS.action,
            TOPICS.joint_states, TOPICS.ee_pose, TOPICS.gripper, TOPICS.episode) == (
        topics.IMAGE, topics.CAMERA_INFO, topics.INSTRUCTION, topics.ACTION,
        topics.JOINT_STATES, topics.EE_POSE, topics.GRIPPER, topics.EPISODE_METADATA)


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
    assert 'outcome:     success' in out

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
