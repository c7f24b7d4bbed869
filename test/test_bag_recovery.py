"""Unclosed recordings (writer killed, file truncated) are recovered, losing only the tail."""
from __future__ import annotations

import logging
import os
from pathlib import Path
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
import yaml

from vla_align.data import bag_recovery
from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import (
    BAG_VERSION,
    LATCHED_QOS,
    SENSOR_QOS,
    STAGING_DIR,
    find_bags,
    make_durable,
    open_bag_reader,
)
from vla_align.data.bag_recovery import recover_bag, unclosed_reason

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
SUFFIX = {'mcap': '.mcap', 'sqlite3': '.db3'}


def read_all(path: Path) -> list[tuple[str, int, bytes]]:
    """(topic, log time, bytes) of every message, in storage order."""
    reader = open_bag_reader(path)
    try:
        return [(c.topic, t, bytes(d)) for c, t, d in reader.messages()]
    finally:
        reader.close()


def write_recording(path: Path, rng: np.random.Generator, chunks: int = 6
                    ) -> tuple[list[tuple[str, int, bytes]], list[tuple[int, int]]]:
    """An MCAP bag written in ``chunks`` durable steps, closed.

    Returns the messages and, after each step, (file size, messages written so far): the
    chunk boundaries a truncation is measured against.
    """
    messages, boundaries = [], []
    writer = Writer(path, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP)
    with writer:
        image = writer.add_connection('/camera/image_raw', rm.IMAGE, typestore=rm.TYPESTORE,
                                      offered_qos_profiles=[SENSOR_QOS])
        text = writer.add_connection('/vla/instruction', rm.STRING, typestore=rm.TYPESTORE,
                                     offered_qos_profiles=[LATCHED_QOS])
        stamp = 5_000_000_000
        for _ in range(chunks):
            for _ in range(int(rng.integers(3, 9))):
                stamp += int(rng.integers(1, 50_000_000))
                if rng.random() < 0.3:
                    connection, msg = text, rm.string_msg(f'step {len(messages)}')
                else:
                    size = int(rng.integers(2, 40))
                    pixels = rng.integers(0, 256, (size, size + 1, 3), dtype=np.uint8)
                    connection, msg = image, rm.image_msg(pixels, stamp, 'cam')
                data = bytes(rm.serialize(msg))
                writer.write(connection, stamp, data)
                messages.append((connection.topic, stamp, data))
            make_durable(writer)
            boundaries.append((writer.storage.bio.tell(), len(messages)))
    return messages, boundaries


def unclosed_copy(bag: Path, dst: Path, size: int | None = None) -> Path:
    """``bag``'s storage file alone in a new folder (optionally cut to ``size`` bytes)."""
    dst.mkdir(parents=True)
    (storage,) = [f for f in bag.iterdir() if f.suffix in ('.mcap', '.db3')]
    data = storage.read_bytes()
    (dst / storage.name).write_bytes(data if size is None else data[:size])
    return dst


def test_truncated_mcap_gives_back_every_complete_chunk_byte_for_byte(tmp_path, caplog):
    messages, boundaries = write_recording(tmp_path / 'bag', np.random.default_rng(3))
    full = (tmp_path / 'bag' / 'bag.mcap').stat().st_size
    offsets = [size for size, _count in boundaries]
    cuts = sorted({0, 5, 20, offsets[0] - 1, *offsets, offsets[1] + 7, offsets[2] + 300,
                   (offsets[3] + offsets[4]) // 2, offsets[-1] + 1, full - 1, full})
    for cut in cuts:
        folder = unclosed_copy(tmp_path / 'bag', tmp_path / f'cut_{cut}', cut)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger='vla_align.data'):
            recovered = read_all(folder)
        at_least = max([count for size, count in boundaries if size <= cut], default=0)
        at_most = min([count for size, count in boundaries if size >= cut], default=len(messages))
        assert at_least <= len(recovered) <= at_most, cut
        assert recovered == messages[:len(recovered)], cut  # in order, byte-identical
        if cut in offsets or cut == full:
            assert len(recovered) == at_least
        report_lines = [r.getMessage() for r in caplog.records]
        assert len(report_lines) == 1 and f'{len(recovered):,} messages' in report_lines[0]
        assert (folder / 'metadata.yaml').is_file() and unclosed_reason(folder) is None
    # What the last report says of one cut, and what the recovered bag keeps.
    cut = offsets[2] + 300
    folder = unclosed_copy(tmp_path / 'bag', tmp_path / 'again', cut)
    report = recover_bag(folder)
    assert report.tail_bytes_dropped == 300 and report.sources == ['bag.mcap']
    assert report.messages == {topic: sum(m[0] == topic for m in messages[:boundaries[2][1]])
                               for topic in ('/camera/image_raw', '/vla/instruction')}
    assert (report.first_ns, report.last_ns) == (messages[0][1], messages[boundaries[2][1] - 1][1])
    assert recover_bag(folder) is None  # closed now: nothing more to do
    with Reader(folder) as reader:
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
        assert qos == {'/camera/image_raw': [SENSOR_QOS], '/vla/instruction': [LATCHED_QOS]}
    info = yaml.safe_load((folder / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert info['version'] == BAG_VERSION
    assert 'bag.mcap' in info['custom_data']['vla_align.recovered_from']
    assert 'no metadata.yaml' in info['custom_data']['vla_align.recovered_from']


def test_mcap_without_footer_is_recovered_even_with_metadata(tmp_path):
    messages, boundaries = write_recording(tmp_path / 'bag', np.random.default_rng(4))
    shutil.copytree(tmp_path / 'bag', tmp_path / 'cut')
    storage = tmp_path / 'cut' / 'bag.mcap'
    os.truncate(storage, boundaries[3][0])
    assert 'lacks the MCAP footer' in unclosed_reason(tmp_path / 'cut')
    assert read_all(tmp_path / 'cut') == messages[:boundaries[3][1]]


def custom_store():
    store = get_typestore(Stores.EMPTY)
    store.register(get_types_from_msg('int64 count\nstring label', 'test_msgs/msg/Counter'))
    return store


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_make_durable_is_what_puts_buffered_messages_on_disk(tmp_path, storage):
    """Pins rosbags' buffering: without make_durable a killed writer leaves nothing."""
    store = custom_store()
    writer = Writer(tmp_path / 'rec', version=BAG_VERSION, storage_plugin=PLUGINS[storage])
    writer.open()
    try:
        connection = writer.add_connection('/count', 'test_msgs/msg/Counter', typestore=store)
        sent = []
        for i in range(50):
            data = bytes(store.serialize_cdr(store.types['test_msgs/msg/Counter'](
                count=i, label=f'n{i}'), 'test_msgs/msg/Counter'))
            writer.write(connection, 1_000 + i, data)
            sent.append(('/count', 1_000 + i, data))
        before = unclosed_copy(tmp_path / 'rec', tmp_path / 'before')  # as if killed here
        make_durable(writer)
        after = unclosed_copy(tmp_path / 'rec', tmp_path / 'after')
    finally:
        writer.close()
    assert read_all(before) == []
    assert read_all(after) == sent
    with Reader(after) as reader:  # a type rm.TYPESTORE lacks, rebuilt from the bag's schema
        (connection,) = reader.connections
        assert connection.msgtype == 'test_msgs/msg/Counter'
        assert connection.digest == store.hash_rihs01('test_msgs/msg/Counter')


def test_failed_recovery_keeps_the_original(tmp_path, monkeypatch):
    messages, boundaries = write_recording(tmp_path / 'bag', np.random.default_rng(5))
    folder = unclosed_copy(tmp_path / 'bag', tmp_path / 'rec', boundaries[2][0] + 50)
    original = (folder / 'bag.mcap').read_bytes()

    def crash(*_args):
        raise OSError('disk gone')

    monkeypatch.setattr(bag_recovery.os, 'replace', crash)
    with pytest.raises(ValueError, match='cannot recover unclosed rosbag2 .*disk gone'):
        open_bag_reader(folder)
    assert (folder / 'bag.mcap').read_bytes() == original
    assert sorted(p.name for p in folder.iterdir()) == ['bag.mcap']
    assert find_bags([tmp_path]) == [tmp_path / 'bag', folder]  # not the half-done copy
    monkeypatch.undo()
    assert read_all(folder) == messages[:boundaries[2][1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['bag', 'rec']
    (tmp_path / 'junk').mkdir()
    (tmp_path / 'junk' / 'junk.mcap').write_bytes(b'not an mcap file at all')
    with pytest.raises(ValueError, match='junk.mcap is not an MCAP file'):
        open_bag_reader(tmp_path / 'junk')
    assert (tmp_path / 'junk' / 'junk.mcap').read_bytes() == b'not an mcap file at all'


def test_one_finder_sees_closed_and_unclosed_bags_but_not_staging(tmp_path):
    write_recording(tmp_path / 'runs' / 'b_closed', np.random.default_rng(6), chunks=1)
    unclosed_copy(tmp_path / 'runs' / 'b_closed', tmp_path / 'runs' / 'a_killed')
    unclosed_copy(tmp_path / 'runs' / 'b_closed', tmp_path / 'runs' / 'c' / STAGING_DIR / 'x')
    (tmp_path / 'runs' / 'd_empty').mkdir()
    runs = tmp_path / 'runs'
    assert find_bags([runs]) == [runs / 'a_killed', runs / 'b_closed']
    assert find_bags([runs / 'b_closed', runs, tmp_path / 'missing']) == [
        runs / 'b_closed', runs / 'a_killed']
    assert find_bags([runs / 'd_empty']) == []


CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vla_align.data import ros_messages as rm
    from vla_align.ros.record import BagRecorder

    recorder = BagRecorder(Path(sys.argv[1]), storage=sys.argv[2], flush_period_s=0.5)
    recorder.add_topic('/count', rm.FLOAT32_MULTI_ARRAY, 'reliable')
    print('ready', flush=True)
    i = 0
    while True:
        msg = rm.action_msg([float(i), 0, 0, 0, 0, 0, 0])
        recorder.put('/count', time.time_ns(), bytes(rm.serialize(msg)))
        i += 1
        time.sleep(0.004)
""")


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bag_recorder_killed_loses_at_most_the_last_second(tmp_path, storage):
    child = subprocess.Popen([sys.executable, '-c', CHILD, str(tmp_path / 'rec'), storage],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert child.stdout.readline().strip() == 'ready'
        time.sleep(3.0)
        killed_ns = time.time_ns()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
    assert unclosed_reason(tmp_path / 'rec') == 'no metadata.yaml'
    recovered = read_all(tmp_path / 'rec')
    counts = [int(rm.action_from_msg(rm.deserialize(d, rm.FLOAT32_MULTI_ARRAY))[0])
              for _topic, _t, d in recovered]
    assert counts == list(range(len(counts))) and len(counts) > 100  # a gap-free prefix
    assert (killed_ns - recovered[-1][1]) / 1e9 < 1.0  # the newest is under a second old
    assert bag_recovery.storage_files(tmp_path / 'rec') == [
        tmp_path / 'rec' / f'rec{SUFFIX[storage]}']
