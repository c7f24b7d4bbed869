"""Training from any robot's bags through a topic contract.

The bags here are written with plain rosbags the way `ros2 bag record` writes a real cell: a
30 Hz camera (raw or JPEG), a 100 Hz end-effector pose or TF, MoveIt Servo twists streamed at
30 Hz by a teleop, a forward-command gripper controller, on the cell's own topic names. The
twist stream encodes which control step it belongs to, so a frame paired with a command from
another time shows up as a wrong number.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import BAG_VERSION
from vla_align.data.contract import ContractError, contract_from_dict, load_contract
from vla_align.data.contract_reader import (
    ContractBagError,
    read_contract_episodes,
    read_contract_frames,
)
from vla_align.data.dataset import load_bag_cache
from vla_align.data.episode_meta import EpisodeMetadata

MS = 1_000_000
T0 = 10_000 * MS
STEPS = 12  # control steps (10 Hz) recorded
TYPES = rm.TYPESTORE.types
CELL = {
    'name': 'test_cell', 'robot': 'panda', 'control_rate_hz': 10.0, 'max_skew_s': 0.05,
    'base_frame': 'panda_link0',
    'image': {'topic': '/cam/color/image_raw'},
    'instruction': {'source': 'metadata'},
    'state': {'source': 'pose', 'topic': '/franka/current_pose'},
    'action': {'source': 'twist', 'topic': '/servo_node/delta_twist_cmds'},
    'gripper': {'source': 'topic', 'topic': '/hand/commands', 'index': 0, 'open': 0.04,
                'closed': 0.0},
    'episodes': {'boundaries': 'bag', 'metadata_topic': '/vla/episode'},
}


def header(t: int, frame: str):
    return rm.header(t, frame)


def twist(t: int, linear, angular=(0.0, 0.0, 0.0), frame='panda_link0'):
    vec = TYPES['geometry_msgs/msg/Vector3']
    body = TYPES['geometry_msgs/msg/Twist'](linear=vec(*map(float, linear)),
                                          angular=vec(*map(float, angular)))
    return TYPES[rm.TWIST_STAMPED](header=header(t, frame), twist=body)


def gripper_command(position: float):
    layout = TYPES['std_msgs/msg/MultiArrayLayout'](dim=[], data_offset=0)
    return TYPES[rm.FLOAT64_MULTI_ARRAY](layout=layout, data=np.array([position]))


def frame_pixels(k: int, height: int = 48, width: int = 64) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = 10 * k
    image[..., 1] = np.linspace(0, 255, width)[None, :].astype(np.uint8)
    return image


def compressed(image: np.ndarray, t: int):
    data = cv2.imencode('.jpg', image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    return TYPES[rm.COMPRESSED_IMAGE](header=header(t, 'cam'), format='jpeg',
                                      data=data.reshape(-1))


def quaternion_of(k: int, flip: bool) -> np.ndarray:
    q = np.array([0.9, 0.1 * np.sin(k), 0.05, 0.3])
    q /= np.linalg.norm(q)
    return -q if flip else q


def write(path: Path, messages: list[tuple[str, str, int, object]]) -> Path:
    with Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP) as writer:
        connections = {}
        for topic, msgtype, t, msg in sorted(messages, key=lambda m: m[2]):
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype,
                                                           typestore=rm.TYPESTORE)
            writer.write(connections[topic], t, rm.serialize(msg))
    return path


def robot_bag(path: Path, *, compressed_images: bool = False, flip_quaternions: bool = False,
              outcome: str = 'success', robot: str = 'panda', drop: str = '',
              pose_every_ms: int = 10) -> Path:
    """A teleoperated episode as a real cell records it (module docstring).

    Control step k spans [T0 + 100k, T0 + 100(k+1)) ms. The operator sees frame k (at
    T0 + 100k) and commands, from 15 ms later, linear x = (k + 1) mm/s... plus y = 0.1 m/s; the
    gripper closes at step 6 (command 0.0 at T0 + 615 ms).
    """
    messages = []
    for i in range(STEPS * 3):  # camera at 30 Hz
        t = T0 + i * 100 * MS // 3
        k = i // 3
        pixels = frame_pixels(k)
        msg = compressed(pixels, t) if compressed_images else rm.image_msg(pixels, t, 'cam')
        messages.append(('/cam/color/image_raw',
                         rm.COMPRESSED_IMAGE if compressed_images else rm.IMAGE, t, msg))
    for j in range(STEPS * 10):  # pose at 100 Hz
        t = T0 + j * 10 * MS
        if j % (pose_every_ms // 10):
            continue
        k = j // 10
        messages.append(('/franka/current_pose', rm.POSE_STAMPED, t - MS,
                         rm.pose_msg([0.4 + 0.001 * j, 0.0, 0.3],
                                     quaternion_of(k, flip_quaternions and j % 2), t - MS,
                                     'panda_link0')))
    for k in range(STEPS):  # Servo stream at 30 Hz, the command for step k from T0+100k+15
        for n in range(3):
            t = T0 + k * 100 * MS + 15 * MS + n * 33 * MS
            messages.append(('/servo_node/delta_twist_cmds', rm.TWIST_STAMPED, t,
                             twist(t, [(k + 1) * 1e-3, 0.1, 0.0], [0.0, 0.0, 0.2])))
    messages.append(('/hand/commands', rm.FLOAT64_MULTI_ARRAY, T0 + 2 * MS,
                     gripper_command(0.04)))
    messages.append(('/hand/commands', rm.FLOAT64_MULTI_ARRAY, T0 + 615 * MS,
                     gripper_command(0.0)))
    meta = EpisodeMetadata(instruction='pick up the red block', outcome=outcome, robot=robot,
                           operator='test', contract='test_cell', source='episode_recorder')
    messages.append(('/vla/episode', rm.STRING, T0 + STEPS * 100 * MS,
                     rm.string_msg(meta.to_json())))
    if drop:
        messages = [m for m in messages if m[0] != drop]
    return write(path, messages)


@pytest.fixture
def cell():
    return contract_from_dict(CELL)


def test_frames_are_put_on_the_control_grid_and_paired_with_the_command_of_their_step(
        tmp_path, cell):
    result = read_contract_episodes(robot_bag(tmp_path / 'bag'), cell)
    (episode,) = result.episodes
    # 36 camera frames at 30 Hz -> 12 control steps; the last has no command after it? It
    # has (its step's commands were recorded), so all 12 are kept.
    assert len(episode) == STEPS and result.frames_read == STEPS
    assert episode.task.instruction == 'pick up the red block'
    # The frame of step k is the camera frame at T0 + 100 k ms: its red channel says k.
    np.testing.assert_array_equal(episode.images[:, 0, 0, 0], 10 * np.arange(STEPS))
    # Twist (speed units) x period: step k's command, never the previous or the next one.
    np.testing.assert_allclose(episode.actions[:, 0], (np.arange(STEPS) + 1) * 1e-4,
                               atol=1e-9)
    np.testing.assert_allclose(episode.actions[:, 1], 0.01, atol=1e-9)
    np.testing.assert_allclose(episode.actions[:, 5], 0.02, atol=1e-9)
    # Gripper: 0.04 m means open (0), 0.0 closed (1); closed from step 6 on.
    np.testing.assert_array_equal(episode.actions[:, 6], (np.arange(STEPS) >= 6).astype(float))
    # The state's gripper is the command in force when the frame was taken.
    np.testing.assert_array_equal(episode.grippers, (np.arange(STEPS) >= 7).astype(float))
    # State: the newest pose at or before the frame (poses come 1 ms before each 10 ms tick).
    np.testing.assert_allclose(episode.ee_positions[:, 0], 0.4 + 0.001 * np.arange(STEPS) * 10,
                               atol=1e-6)


def test_an_inverted_gripper_mapping_inverts_the_labels(tmp_path):
    inverted = contract_from_dict({**CELL, 'gripper': {**CELL['gripper'], 'open': 0.0,
                                                       'closed': 0.04}})
    (episode,) = read_contract_episodes(robot_bag(tmp_path / 'bag'), inverted).episodes
    np.testing.assert_array_equal(episode.actions[:, 6], (np.arange(STEPS) < 6).astype(float))


def test_q_and_minus_q_give_the_same_state(tmp_path, cell):
    same = read_contract_episodes(robot_bag(tmp_path / 'a'), cell).episodes[0]
    flipped = read_contract_episodes(robot_bag(tmp_path / 'b', flip_quaternions=True),
                                     cell).episodes[0]
    np.testing.assert_allclose(flipped.states(), same.states(), atol=1e-6)
    assert np.all(same.ee_orientations[:, 3] >= 0)


def test_compressed_images_are_read(tmp_path, cell):
    (episode,) = read_contract_episodes(robot_bag(tmp_path / 'bag', compressed_images=True),
                                        cell).episodes
    assert episode.images.shape == (STEPS, 48, 64, 3)
    assert np.abs(episode.images[:, 0, 32, 0].astype(int) - 10 * np.arange(STEPS)).max() <= 6


def test_stale_state_drops_the_frame_and_counts_it(tmp_path):
    cell = contract_from_dict({**CELL, 'max_skew_s': 0.02})
    result = read_contract_episodes(robot_bag(tmp_path / 'bag', pose_every_ms=100), cell)
    # Poses only every 100 ms, 1 ms before each frame: every frame still has a fresh one...
    assert result.frames_used == STEPS
    late = contract_from_dict({**CELL, 'max_skew_s': 0.0005})  # ... unless 1 ms is too old
    result = read_contract_episodes(robot_bag(tmp_path / 'late', pose_every_ms=100), late)
    assert result.frames_used == 0 and result.dropped['frame without state'] == STEPS


def test_tf_state_is_the_chain_from_base_to_tool(tmp_path):
    tf_cell = contract_from_dict({**CELL, 'state': {
        'source': 'tf', 'topic': '/tf', 'static_topic': '/tf_static', 'parent': 'panda_link0',
        'child': 'panda_hand_tcp'}})
    bag = robot_bag(tmp_path / 'bag', drop='/franka/current_pose')
    # Re-write the bag with TF: base -> link8 moving in x (dynamic), link8 -> tcp 0.1 m down z
    # with a 90 degree turn about z (static).
    from rosbags.rosbag2 import Reader

    with Reader(bag) as reader:
        messages = [(c.topic, c.msgtype, t, rm.deserialize(d, c.msgtype))
                    for c, t, d in reader.messages()]
    vec, quat = TYPES['geometry_msgs/msg/Vector3'], TYPES['geometry_msgs/msg/Quaternion']

    def stamped(t, parent, child, xyz, q):
        transform = TYPES['geometry_msgs/msg/Transform'](translation=vec(*xyz),
                                                         rotation=quat(*q))
        return TYPES['geometry_msgs/msg/TransformStamped'](
            header=header(t, parent), child_frame_id=child, transform=transform)

    for j in range(STEPS * 10):
        t = T0 + j * 10 * MS - MS
        messages.append(('/tf', rm.TF_MESSAGE, t, TYPES[rm.TF_MESSAGE](transforms=[
            stamped(t, 'panda_link0', 'panda_link8', (0.4 + 0.001 * j, 0.0, 0.5),
                    (0.0, 0.0, 0.0, 1.0))])))
    s2 = np.sqrt(0.5)
    messages.append(('/tf_static', rm.TF_MESSAGE, T0, TYPES[rm.TF_MESSAGE](transforms=[
        stamped(T0, 'panda_link8', 'panda_hand_tcp', (0.0, 0.0, -0.1), (0.0, 0.0, s2, s2))])))
    (episode,) = read_contract_episodes(write(tmp_path / 'tf_bag', messages), tf_cell).episodes
    np.testing.assert_allclose(episode.ee_positions[:, 0], 0.4 + 0.01 * np.arange(STEPS),
                               atol=1e-6)
    np.testing.assert_allclose(episode.ee_positions[:, 2], 0.4, atol=1e-6)
    # The chain's orientation (q or -q: the policy's statistics pick the sign).
    np.testing.assert_allclose(np.abs(episode.ee_orientations @ [0, 0, s2, s2]), 1.0, atol=1e-6)


@pytest.mark.parametrize('change,words', [
    ({'robot': 'ur5'}, "recorded on robot 'panda', the contract 'test_cell' is for 'ur5'"),
])
def test_a_bag_from_another_robot_is_refused(tmp_path, change, words):
    with pytest.raises(ContractBagError, match=words):
        read_contract_episodes(robot_bag(tmp_path / 'bag'), contract_from_dict({**CELL,
                                                                                **change}))


def test_failed_episodes_are_left_out_and_counted(tmp_path, cell):
    result = read_contract_episodes(robot_bag(tmp_path / 'bag', outcome='failure'), cell)
    assert result.episodes == [] and result.dropped['episode outcome failure'] == STEPS


def test_training_goes_on_without_the_bags_that_do_not_meet_the_contract(tmp_path, cell):
    bags = [robot_bag(tmp_path / 'good'),
            robot_bag(tmp_path / 'no_gripper', drop='/hand/commands'),
            robot_bag(tmp_path / 'wrong_type', drop='/servo_node/delta_twist_cmds')]
    cache = load_bag_cache(bags, tmp_path / 'cache', 32, contract=cell, progress=False)
    report = cache.report
    assert (report.bags, report.bags_used, len(cache)) == (3, 1, STEPS)
    assert len(report.refused) == 2
    assert 'missing /hand/commands (gripper)' in report.refused[0]
    assert 'missing /servo_node/delta_twist_cmds (action)' in report.refused[1]
    # Frames at 64x48 reach the model centre-cropped to a square, not squashed.
    assert cache.images.shape[1:] == (3, 32, 32)


def test_the_shipped_contracts_load_and_list_what_to_record():
    teleop = load_contract('panda_servo_teleop')
    assert teleop.topics() == ('/camera/image_raw', '/vla/ee_pose',
                               '/servo_node/delta_twist_cmds',
                               '/panda_hand_controller/commands', '/vla/episode')
    assert load_contract('sim_panda').action.source == 'array'
    real = load_contract('real_cell_example')
    assert (real.state.source, real.gripper.source) == ('tf', 'joints')


@pytest.mark.parametrize('change,words', [
    ({'control_rate_hz': 0}, 'control_rate_hz'),
    ({'image': {}}, 'image.topic'),
    ({'action': {'source': 'joystick'}}, 'action.source must be one of'),
    ({'gripper': {'source': 'topic', 'open': 1.0, 'closed': 1.0, 'topic': '/g'}},
     'open and closed must differ'),
    ({'state': {'source': 'tf', 'topic': '/tf'}}, 'needs state.parent'),
    ({'colour': 'red'}, 'unknown keys'),
    ({'gripper': {'source': 'action'}}, 'needs action source array'),
])
def test_bad_contracts_are_refused_with_the_key(change, words):
    with pytest.raises(ContractError, match=words):
        contract_from_dict({**CELL, **change})


def test_every_frame_mode_keeps_all_camera_frames(tmp_path, cell):
    frames = read_contract_frames(robot_bag(tmp_path / 'bag'), replace(cell), every_frame=True)
    assert len(frames) == STEPS * 3
