"""`vla-align inspect-bag` describes any rosbag2; the episode block only for episode metadata."""
from __future__ import annotations

import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from rosbags.rosbag2 import StoragePlugin, Writer
from test_bag_io import make_episode

from vla_align import cli
from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import BAG_VERSION, write_episode_bag
from vla_align.data.inspect import summarize_bag

ROOT = Path(__file__).resolve().parents[1]


def write_bag(path: Path, messages: list[tuple[str, str, int, object]],
              storage: StoragePlugin = StoragePlugin.MCAP) -> Path:
    """A bag of (topic, type, log time, message) written with plain rosbags."""
    with Writer(path, version=BAG_VERSION, storage_plugin=storage) as writer:
        connections = {}
        for topic, msgtype, stamp, message in messages:
            if topic not in connections:
                connections[topic] = writer.add_connection(topic, msgtype,
                                                           typestore=rm.TYPESTORE)
            writer.write(connections[topic], stamp, rm.serialize(message))
    return path


def inspect(path: Path, capsys) -> tuple[int, str, str]:
    code = cli.main(['inspect-bag', str(path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def topic_line(out: str, topic: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.strip().startswith(topic + ' '))


def image(value: int) -> object:
    return rm.image_msg(np.full((4, 6, 3), value, np.uint8), 0, 'cam')


@pytest.mark.parametrize('topic, payload', [
    ('/chatter', '42'),  # a String topic holding a number
    ('/vla/episode', '42'),
    ('/vla/episode', json.dumps({'task': 'not ours', 'seed': 3})),  # JSON, not episode metadata
    ('/vla/episode', 'plain text'),
])
def test_string_topics_that_are_not_episode_metadata_get_no_episode_block(
        tmp_path, capsys, topic, payload):
    bag = write_bag(tmp_path / 'bag', [
        (topic, rm.STRING, 2_000_000_000, rm.string_msg(payload)),
        ('/camera/image_raw', rm.IMAGE, 2_500_000_000, image(1)),
    ], StoragePlugin.SQLITE3)
    code, out, err = inspect(bag, capsys)
    assert code == 0, err
    assert topic_line(out, topic)[1:] == ['1', rm.STRING]
    assert 'duration:  0.500 s (start 2.000 s)' in out
    assert 'episode:   (no episode record in this bag)' in out
    assert 'instruction:' not in out and 'seed' not in out
    assert summarize_bag(bag).episode is None


def test_bags_without_string_topics_are_described(tmp_path, capsys):
    """No /vla/episode: nothing may be decoded as a String (rosbags reads all when given [])."""
    bag = write_bag(tmp_path / 'images', [
        ('/camera/image_raw', rm.IMAGE, 1_000_000_000 + i * 100_000_000, image(i))
        for i in range(5)] + [('/vla/gripper', rm.FLOAT32, 1_200_000_000, rm.float32_msg(0.5))])
    code, out, err = inspect(bag, capsys)
    assert code == 0, err
    assert topic_line(out, '/camera/image_raw')[1:] == ['5', rm.IMAGE]
    assert topic_line(out, '/vla/gripper')[1:] == ['1', rm.FLOAT32]
    assert 'messages:  6' in out and 'duration:  0.400 s' in out
    assert 'no episode record' in out


def test_an_episode_topic_of_another_type_is_listed_not_decoded(tmp_path, capsys):
    bag = write_bag(tmp_path / 'other', [
        ('/vla/episode', rm.FLOAT32, 1_000_000_000, rm.float32_msg(42.0))])
    code, out, err = inspect(bag, capsys)
    assert code == 0, err
    assert topic_line(out, '/vla/episode')[1:] == ['1', rm.FLOAT32]
    assert 'no episode record' in out


def test_an_episode_bag_shows_its_episode(tmp_path, capsys):
    episode = make_episode(np.random.default_rng(2))
    write_episode_bag(episode, tmp_path / 'episode')
    code, out, err = inspect(tmp_path / 'episode', capsys)
    assert code == 0, err
    assert f'episode:   put / split shift / seed {episode.seed}' in out
    assert 'outcome:     success' in out and 'for contract sim_panda at 7.5 Hz' in out
    assert summarize_bag(tmp_path / 'episode').episode.instruction == episode.task.instruction


def test_the_cli_recovers_an_unclosed_recording_and_says_so(tmp_path):
    bag = write_bag(tmp_path / 'bag', [
        ('/vla/gripper', rm.FLOAT32, 1_000_000_000 + i * 20_000_000, rm.float32_msg(i))
        for i in range(30)])
    (bag / 'metadata.yaml').unlink()  # as a killed recorder leaves it
    result = subprocess.run([sys.executable, '-m', 'vla_align.cli', 'inspect-bag', str(bag)],
                            cwd=ROOT, capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr
    assert topic_line(result.stdout, '/vla/gripper')[1:] == ['30', rm.FLOAT32]
    (warning,) = result.stderr.splitlines()
    assert warning == (f'WARNING vla_align.data: recovered unclosed recording {bag}: 30 messages '
                       f'on 1 topic, 0.00 s to 0.6 s; 0 bytes incomplete tail dropped')
    not_a_bag = tmp_path / 'empty'
    not_a_bag.mkdir()
    with pytest.raises(ValueError, match='is not a rosbag2 folder'):
        summarize_bag(not_a_bag)


def test_a_bag_rosbags_cannot_read_is_described_from_its_metadata(tmp_path, capsys):
    """As rosbag2's own wrong_rmw_test bags: a serialization format other than CDR."""
    bag = write_bag(tmp_path / 'foreign', [
        ('/chatter', rm.STRING, 1_000_000_000, rm.string_msg('a')),
        ('/chatter', rm.STRING, 1_300_000_000, rm.string_msg('b'))])
    meta = bag / 'metadata.yaml'
    meta.write_text(meta.read_text().replace('serialization_format: cdr',
                                             'serialization_format: wrong_format'))
    code, out, err = inspect(bag, capsys)
    assert code == 0, err
    assert topic_line(out, '/chatter')[1:] == ['2', rm.STRING]
    assert 'from metadata.yaml only' in out and 'wrong_format' in out
    assert 'no episode record' in out
