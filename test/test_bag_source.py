"""Reading frames from project bags and from bags shaped like ``ros2 bag record`` output."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer

from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import write_episode_bag
from vla_align.data.bag_source import (
    COMPRESSED_IMAGE,
    HEADER,
    BagSourceError,
    SourceTopics,
    find_bags,
    read_bag_frames,
    read_policy_recording,
)
from vla_align.data.episode import CameraGeometry, Episode, TaskInfo

SIZE = 24
JOINT_NAMES = tuple(f'panda_joint{i}' for i in range(1, 8)) + ('panda_finger_joint1',
                                                               'panda_finger_joint2')
STEP_NS = 100_000_000  # 10 Hz


def synthetic_episode(rng: np.random.Generator, steps: int = 12, size: int = SIZE,
                      instruction: str = 'pick up the red block') -> Episode:
    """A small episode with varied images, motions and one gripper close."""
    actions = np.zeros((steps, 7), np.float32)
    actions[:, :3] = rng.uniform(-0.02, 0.02, (steps, 3))
    actions[steps // 2:, 6] = 1.0
    quats = rng.normal(size=(steps, 4)).astype(np.float32)
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    grippers = np.concatenate([[0.0], actions[:-1, 6]]).astype(np.float32)
    joints = np.zeros((steps, 9), np.float32)
    joints[:, 7:] = 0.04 * (1.0 - grippers[:, None])
    return Episode(
        task=TaskInfo(instruction, 'pick', 'seen'), seed=0,
        images=rng.integers(0, 256, (steps, size, size, 3), dtype=np.uint8),
        actions=actions, ee_positions=rng.uniform(0.2, 0.6, (steps, 3)).astype(np.float32),
        ee_orientations=quats, grippers=grippers, joint_positions=joints,
        joint_names=JOINT_NAMES, success=True, control_hz=10.0,
        camera=CameraGeometry(width=size, height=size))


def write_custom_bag(path: Path, messages: list[tuple[str, str, int, object]],
                     storage: str = 'mcap', raw: dict | None = None) -> Path:
    """A bag of (topic, type, log time, message) entries, as another recorder would write it.

    ``raw`` maps an entry index to bytes written instead of that entry's serialized message.
    """
    plugin = StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3
    writer = Writer(path, version=8, storage_plugin=plugin)
    with writer:
        connections = {}
        for topic, msgtype, _, _ in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype,
                                                           typestore=rm.TYPESTORE)
        for index, (topic, msgtype, stamp, msg) in enumerate(messages):
            data = (raw or {}).get(index)
            if data is None:
                data = rm.TYPESTORE.serialize_cdr(msg, msgtype)
            writer.write(connections[topic], stamp, data)
    return path


def image_msg(pixels: np.ndarray, stamp: int, encoding: str, pad: int = 0):
    height, width = pixels.shape[:2]
    rows = pixels.reshape(height, -1)
    rows = np.concatenate([rows, np.zeros((height, pad), np.uint8)], axis=1)
    return rm.TYPESTORE.types[rm.IMAGE](
        header=rm.header(stamp, 'cam'), height=height, width=width, encoding=encoding,
        is_bigendian=0, step=rows.shape[1], data=rows.reshape(-1))


def compressed_msg(rgb: np.ndarray, stamp: int):
    ok, png = cv2.imencode('.png', rgb[..., ::-1])
    assert ok
    return rm.TYPESTORE.types[COMPRESSED_IMAGE](header=rm.header(stamp, 'cam'), format='png',
                                                data=png.reshape(-1))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


def test_project_bag_frames_match_the_episode(tmp_path, rng):
    episode = synthetic_episode(rng)
    write_episode_bag(episode, tmp_path / 'bag')
    frames = read_bag_frames(tmp_path / 'bag')
    assert len(frames) == len(episode) and frames.scorable.all()
    assert np.array_equal(frames.images, episode.images)
    assert np.array_equal(frames.actions, episode.actions)
    # The gripper state is the command in force: the previous action's, measured at step 0.
    np.testing.assert_allclose(frames.states, episode.states(), atol=1e-6)
    assert frames.instructions == [episode.task.instruction] * len(episode)
    assert not frames.skipped


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_user_bag_with_other_topics_and_encodings(tmp_path, rng, storage):
    rgb = rng.integers(0, 256, (4, 6, 5, 3), dtype=np.uint8)
    messages = [('/task', rm.STRING, 0, rm.string_msg('  open   the drawer '))]
    encodings = ['bgr8', 'mono8', 'rgb8', 'png']
    for i, encoding in enumerate(encodings):
        stamp = (i + 1) * STEP_NS
        if encoding == 'png':
            messages.append(('/cam/compressed', COMPRESSED_IMAGE, stamp,
                             compressed_msg(rgb[i], stamp)))
            continue
        pixels = {'bgr8': rgb[i][..., ::-1], 'mono8': rgb[i][..., :1], 'rgb8': rgb[i]}[encoding]
        messages.append(('/cam/raw', rm.IMAGE, stamp, image_msg(pixels, stamp, encoding, pad=3)))
        messages.append(('/cmd', rm.FLOAT32_MULTI_ARRAY, stamp + 5_000_000,
                         rm.action_msg(np.full(7, i / 10, np.float32))))
    # One image topic per bag: the raw frames here, the compressed one in a second bag.
    raw = [m for m in messages if m[0] != '/cam/compressed']
    bag = write_custom_bag(tmp_path / 'raw', raw, storage)
    topics = SourceTopics(image='/cam/raw', instruction='/task', action='/cmd')
    frames = read_bag_frames(bag, topics)
    assert np.array_equal(frames.images[0], rgb[0])
    assert np.array_equal(frames.images[1], np.repeat(rgb[1][..., :1], 3, axis=2))
    assert np.array_equal(frames.images[2], rgb[2])
    assert frames.instructions == ['open the drawer'] * 3
    # Actions logged 5 ms after their frame are paired with it.
    np.testing.assert_allclose(frames.actions[:, 0], [0.0, 0.1, 0.2], atol=1e-7)
    assert not frames.has_state  # no end-effector pose in this bag

    compressed = [m for m in messages if m[0] in ('/task', '/cam/compressed')]
    compressed.append(('/cmd', rm.FLOAT32_MULTI_ARRAY, 4 * STEP_NS,
                       rm.action_msg(np.zeros(7, np.float32))))
    frames = read_bag_frames(write_custom_bag(tmp_path / 'png', compressed, storage),
                             SourceTopics(image='/cam/compressed', instruction='/task',
                                          action='/cmd'))
    assert np.array_equal(frames.images[0], rgb[3])  # png is lossless


def test_frames_before_the_instruction_or_without_action_are_not_scored(tmp_path, rng):
    pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    messages = []
    for i in range(5):
        stamp = (i + 1) * STEP_NS
        messages.append(('/camera/image_raw', rm.IMAGE, stamp, image_msg(pixels, stamp, 'rgb8')))
        if i != 3:
            messages.append(('/vla/action', rm.FLOAT32_MULTI_ARRAY, stamp,
                             rm.action_msg(np.full(7, 0.5, np.float32))))
    messages.append(('/vla/instruction', rm.STRING, 2 * STEP_NS, rm.string_msg('reach')))
    messages.append(('/vla/instruction', rm.STRING, 4 * STEP_NS + 1, rm.string_msg('push')))
    frames = read_bag_frames(write_custom_bag(tmp_path / 'bag', messages))
    assert frames.instructions == ['', 'reach', 'reach', 'reach', 'push']
    assert frames.scorable.tolist() == [False, True, True, False, True]
    assert frames.skipped == {'frame without instruction': 1, 'frame without action': 1}
    forced = read_bag_frames(tmp_path / 'bag', instruction='stack it')
    assert forced.instructions == ['stack it'] * 5


def test_missing_topics_empty_and_non_bags_are_clear_errors(tmp_path, rng):
    episode = synthetic_episode(rng, steps=3)
    write_episode_bag(episode, tmp_path / 'bag')
    with pytest.raises(BagSourceError, match=r'missing /cam \(image\).*--instruction'):
        read_bag_frames(tmp_path / 'bag', SourceTopics(image='/cam', instruction='/nothing'))
    with pytest.raises(BagSourceError, match='has type std_msgs/msg/String'):
        read_bag_frames(tmp_path / 'bag', SourceTopics(action='/vla/instruction'))
    empty = Writer(tmp_path / 'empty', version=8, storage_plugin=StoragePlugin.MCAP)
    with empty:
        empty.add_connection('/camera/image_raw', rm.IMAGE, typestore=rm.TYPESTORE)
    with pytest.raises(BagSourceError, match='empty'):
        read_bag_frames(tmp_path / 'empty')
    with pytest.raises(BagSourceError, match='no metadata.yaml'):
        read_bag_frames(tmp_path)
    with pytest.raises(BagSourceError, match='does not exist'):
        read_bag_frames(tmp_path / 'nope')
    with pytest.raises(BagSourceError, match='neither a rosbag2'):
        find_bags([_empty_dir(tmp_path)])
    assert find_bags([tmp_path]) == [tmp_path / 'bag', tmp_path / 'empty']


def _empty_dir(tmp_path: Path) -> Path:
    (tmp_path / 'nothing_here').mkdir()
    return tmp_path / 'nothing_here'


def test_corrupt_messages_are_counted_and_skipped(tmp_path, rng):
    pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    messages = [('/vla/instruction', rm.STRING, 0, rm.string_msg('reach'))]
    for i in range(4):
        stamp = (i + 1) * STEP_NS
        messages.append(('/camera/image_raw', rm.IMAGE, stamp, image_msg(pixels, stamp, 'rgb8')))
        messages.append(('/vla/action', rm.FLOAT32_MULTI_ARRAY, stamp,
                         rm.action_msg(np.zeros(7, np.float32))))
    # Entry 3: an image cut short; entry 8: an action whose bytes are garbage.
    good = rm.TYPESTORE.serialize_cdr(messages[3][3], rm.IMAGE)
    raw = {3: bytes(good[:30]), 8: b'\x00\x01\x00\x00' + b'\xff' * 3}
    frames = read_bag_frames(write_custom_bag(tmp_path / 'bag', messages, raw=raw))
    assert len(frames) == 3
    assert frames.skipped['undecodable /camera/image_raw'] == 1
    assert frames.skipped['undecodable /vla/action'] == 1
    assert frames.scorable.sum() == 2


def test_policy_recording_is_matched_to_frames_by_the_action_frame_header(tmp_path, rng):
    episode = synthetic_episode(rng, steps=4)
    write_episode_bag(episode, tmp_path / 'bag')
    frames = read_bag_frames(tmp_path / 'bag')
    received = 5_000_000_000
    messages = []
    # A hold (stamped with the current time, frame 'hold'), then answers to frames 2 and 0.
    for k, (frame, value) in enumerate([(None, 0.0), (2, 0.2), (0, 0.4)]):
        stamp = received if frame is None else int(frames.header_stamps_ns[frame])
        t = received + k * STEP_NS
        if frame is not None:
            messages.append(('/camera/image_raw', rm.IMAGE, t - 7_000_000,
                             image_msg(episode.images[frame], stamp, 'rgb8')))
        messages.append(('/vla/action', rm.FLOAT32_MULTI_ARRAY, t,
                         rm.action_msg(np.full(7, value, np.float32))))
        messages.append(('/vla/action_frame', HEADER, t + 1,
                         rm.header(stamp, 'hold' if frame is None else 'cam')))
    recording = read_policy_recording(write_custom_bag(tmp_path / 'rec', messages), frames)
    assert recording.unmatched == 1
    assert np.isnan(recording.actions[[1, 3], 0]).all()
    np.testing.assert_allclose(recording.actions[[2, 0], 0], [0.2, 0.4], atol=1e-7)
    np.testing.assert_allclose(recording.latencies_ms, [7.0, 7.0], atol=1e-6)
    with pytest.raises(BagSourceError, match='lacks'):
        read_policy_recording(tmp_path / 'bag', frames)  # a bag without /vla/action_frame


def test_a_recording_that_ends_inside_a_decision_keeps_every_complete_one(tmp_path, rng):
    episode = synthetic_episode(rng, steps=3)
    write_episode_bag(episode, tmp_path / 'bag')
    frames = read_bag_frames(tmp_path / 'bag')

    def recording(name: str, decisions: int, extra_actions: int) -> Path:
        messages = []
        for k in range(decisions + extra_actions):
            t = 5_000_000_000 + k * STEP_NS
            messages.append(('/vla/action', rm.FLOAT32_MULTI_ARRAY, t,
                             rm.action_msg(np.full(7, 0.1 * (k + 1), np.float32))))
            if k < decisions:  # the recorder stopped before the last header(s) came
                messages.append(('/vla/action_frame', HEADER, t + 1,
                                 rm.header(int(frames.header_stamps_ns[k]), 'cam')))
        return write_custom_bag(tmp_path / name, messages)

    cut = read_policy_recording(recording('cut', decisions=2, extra_actions=1), frames)
    assert cut.cut_short == 1 and cut.unmatched == 0
    np.testing.assert_allclose(cut.actions[:2, 0], [0.1, 0.2], atol=1e-7)
    assert np.isnan(cut.actions[2]).all()  # the unpaired action is not guessed onto a frame
    with pytest.raises(BagSourceError, match='3 messages on /vla/action but 1'):
        read_policy_recording(recording('torn', decisions=1, extra_actions=2), frames)
