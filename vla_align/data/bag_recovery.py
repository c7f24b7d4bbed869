"""Recordings that were never closed (recorder killed, machine lost power) made readable again.

A rosbag2 folder is *unclosed* when it has a storage file (``*.mcap``, ``*.db3``) but no
``metadata.yaml``, or when an MCAP file it uses lacks the footer (rosbags then refuses it with
'File end magic is invalid.'). ``recover_bag`` reads what survives and rewrites a properly
closed bag in place:

* MCAP: records are read in order with the ``mcap`` library until the first incomplete one
  (truncation at any byte is tolerated); Schema, Channel and Message records are kept, so every
  message of every complete chunk comes back, byte for byte, with its log time.
* sqlite3: the ``topics`` and ``messages`` tables (opening the file lets SQLite roll back an
  uncommitted last transaction, as it does after any crash).

The new bag is written with rosbags (metadata version ``bag_io.BAG_VERSION``, same topics,
types and offered QoS) to a hidden sibling folder, then moved into place; the truncated file is
replaced only once the recovered one is complete and synced, so a crash during recovery never
loses the original. ``custom_data`` of the new bag says that it was recovered and from what.

The other half is ``bag_io.make_durable``, which bounds what a killed writer loses. Both depend on
rosbags' storage internals (pinned by ``test/test_bag_recovery.py``).
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
import fcntl
import os
from pathlib import Path
import re
import shutil
import sqlite3
import struct
from typing import Any, Optional

from mcap.exceptions import McapError
from mcap.records import Channel, Chunk, DataEnd, Footer, Message, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.rosbag2.metadata import parse_qos
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore
from rosbags.typesys.base import TypesysError
import yaml

from vla_align.data import ros_messages as rm

MCAP_MAGIC = b'\x89MCAP0\r\n'
#: Suffix of the hidden sibling folder a recovery writes to (``.NAME.recovering``).
RECOVERY_SUFFIX = '.recovering'
_SUFFIX_STORAGE = {'.mcap': 'mcap', '.db3': 'sqlite3'}


@dataclass
class RecoveryReport:
    """What ``recover_bag`` found in an unclosed recording and what it did about it."""

    path: Path
    storage: str
    sources: list[str]  # storage files read, in order
    reason: str  # why the bag counted as unclosed
    messages: dict[str, int] = field(default_factory=dict)  # recovered per topic
    first_ns: Optional[int] = None  # log time of the earliest recovered message
    last_ns: Optional[int] = None
    tail_bytes_dropped: int = 0  # incomplete records at the end of the file(s)
    actions: list[str] = field(default_factory=list)

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())

    def summary(self) -> str:
        """One line for the log: counts, time span and what was dropped."""
        span = ('no messages' if self.first_ns is None else
                f'0.00 s to {(self.last_ns - self.first_ns) / 1e9:.1f} s')
        topics = f'{len(self.messages)} topic' + ('' if len(self.messages) == 1 else 's')
        return (f'recovered unclosed recording {self.path}: {self.total_messages:,} messages on '
                f'{topics}, {span}; {_size(self.tail_bytes_dropped)} incomplete tail dropped')


def _size(num_bytes: int) -> str:
    if num_bytes < 1000:
        return f'{num_bytes} bytes'
    return f'{num_bytes / 1e6:.1f} MB' if num_bytes >= 1e6 else f'{round(num_bytes / 1e3)} KB'


# -- what counts as unclosed --------------------------------------------------------------------
def _natural_key(path: Path) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r'(\d+)', path.name))


def storage_files(path: Path) -> list[Path]:
    """The storage files of a bag folder: those metadata.yaml lists, else all found, in order."""
    path = Path(path)
    try:
        info = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
        return [path / name for name in info['relative_file_paths']]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return sorted((p for p in path.iterdir() if p.suffix in _SUFFIX_STORAGE and p.is_file()),
                      key=_natural_key) if path.is_dir() else []


def _has_mcap_footer(file: Path) -> bool:
    with file.open('rb') as stream:
        if stream.seek(0, os.SEEK_END) < 2 * len(MCAP_MAGIC):
            return False
        stream.seek(-len(MCAP_MAGIC), os.SEEK_END)
        return stream.read() == MCAP_MAGIC


def unclosed_reason(path: Path) -> Optional[str]:
    """Why the folder at ``path`` is an unclosed recording, or None (closed, or not a bag)."""
    path = Path(path)
    if not path.is_dir():
        return None
    files = [f for f in storage_files(path) if f.is_file() and f.suffix in _SUFFIX_STORAGE]
    if not files:
        return None
    if not (path / 'metadata.yaml').is_file():
        return 'no metadata.yaml'
    missing = [f.name for f in files if f.suffix == '.mcap' and not _has_mcap_footer(f)]
    return f'{", ".join(missing)} lacks the MCAP footer' if missing else None


# -- reading what survives ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Topic:
    """One connection of the recovered bag."""

    name: str
    msgtype: str
    msgdef: str
    encoding: str  # 'ros2msg' or 'ros2idl'
    serialization_format: str
    qos: str  # offered_qos_profiles as stored (YAML text)


@dataclass
class _Scan:
    dropped: int = 0
    notes: list[str] = field(default_factory=list)


def _read_mcap(file: Path, scan: _Scan) -> Iterator[tuple[_Topic, Optional[int], bytes]]:
    """(topic, None, b'') when a channel appears, (topic, log time, data) per message."""
    size = file.stat().st_size
    schemas: dict[int, Schema] = {}
    topics: dict[int, _Topic] = {}
    with file.open('rb') as stream:
        if stream.read(len(MCAP_MAGIC)) != MCAP_MAGIC[:size]:
            raise ValueError(f'{file.name} is not an MCAP file')
        stream.seek(0)
        good = 0  # end of the last complete record
        records = StreamReader(stream, emit_chunks=True).records
        while True:
            try:
                record = next(records)
            except StopIteration:
                break
            except (McapError, struct.error, ValueError, EOFError):
                break  # the first incomplete record: everything after it is the tail
            if isinstance(record, Chunk):
                try:
                    inner = breakup_chunk(record, validate_crc=True)
                except (McapError, struct.error, ValueError, EOFError) as exc:
                    scan.notes.append(f'{file.name}: damaged chunk at byte {good} ({exc})')
                    break
            else:
                inner = [record]
            good = stream.tell()
            for item in inner:
                if isinstance(item, Schema):
                    schemas[item.id] = item
                elif isinstance(item, Channel) and item.id not in topics:
                    schema = schemas.get(item.schema_id)
                    if schema is None:
                        scan.notes.append(f'{file.name}: channel {item.topic} has no schema; '
                                          f'its messages are left out')
                        continue
                    topics[item.id] = _Topic(
                        item.topic, schema.name, schema.data.decode(), schema.encoding,
                        item.message_encoding, item.metadata.get('offered_qos_profiles', ''))
                    yield topics[item.id], None, b''
                elif isinstance(item, Message) and item.channel_id in topics:
                    yield topics[item.channel_id], item.log_time, item.data
            if isinstance(record, (DataEnd, Footer)):
                good = size  # the summary section repeats what was read: nothing is lost
                break
    scan.dropped += size - good


def _read_sqlite3(file: Path, scan: _Scan) -> Iterator[tuple[_Topic, Optional[int], bytes]]:
    if Path(f'{file}-journal').exists():
        scan.notes.append(f'{file.name}: its uncommitted last transaction was discarded')
    conn = sqlite3.connect(f'file:{file}', uri=True)  # read-write: SQLite's own crash recovery
    try:
        conn.row_factory = sqlite3.Row
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE "
                                                 "type = 'table'")}
        if 'topics' not in tables:
            return
        definitions = {}
        if 'message_definitions' in tables:
            definitions = {row['topic_type']: (row['encoding'], row['encoded_message_definition'])
                           for row in conn.execute('SELECT * FROM message_definitions')}
        topics: dict[int, _Topic] = {}
        for row in conn.execute('SELECT * FROM topics ORDER BY id'):
            encoding, msgdef = definitions.get(row['type'], ('ros2msg', ''))
            topics[row['id']] = _Topic(row['name'], row['type'], msgdef, encoding,
                                       row['serialization_format'], row['offered_qos_profiles'])
            yield topics[row['id']], None, b''
        if 'messages' in tables:
            for topic_id, stamp, data in conn.execute(
                    'SELECT topic_id, timestamp, data FROM messages ORDER BY id'):
                if topic_id in topics:
                    yield topics[topic_id], stamp, data
    except sqlite3.DatabaseError as exc:
        raise ValueError(f'{file.name}: {exc}') from None
    finally:
        conn.close()
    # A journal SQLite did not roll back is not hot (its header was never synced): it holds no
    # page of the database; left there it would sit next to the recovered file.
    Path(f'{file}-journal').unlink(missing_ok=True)
    if Path(f'{file}-wal').exists():  # every connection is closed: SQLite should have merged it
        raise ValueError(f'{file.name}: SQLite left {file.name}-wal behind')


# -- rewriting ----------------------------------------------------------------------------------
class _Connections:
    """rosbags connections of the new bag; types unknown to ``rm.TYPESTORE`` from the schema."""

    def __init__(self, writer: Writer, scan: _Scan) -> None:
        self.writer, self.scan = writer, scan
        self.store = rm.TYPESTORE
        self.own: Any = None  # a store for types the bag brings
        self.made: dict[tuple, Any] = {}

    def get(self, topic: _Topic) -> Any:
        key = (topic.name, topic.msgtype, topic.serialization_format, topic.qos)
        if key not in self.made:
            try:
                qos = parse_qos(topic.qos)
            except (ReaderError, KeyError, TypeError, ValueError):
                qos = []
                self.scan.notes.append(f'{topic.name}: offered QoS not recoverable')
            self.made[key] = self.writer.add_connection(
                topic.name, topic.msgtype, typestore=self._store_for(topic),
                serialization_format=topic.serialization_format, offered_qos_profiles=qos)
        return self.made[key]

    def _store_for(self, topic: _Topic) -> Any:
        if topic.msgtype in self.store.types:
            return self.store
        if self.own is None:
            self.own = get_typestore(Stores.EMPTY)
        if topic.msgtype not in self.own.types:
            if not topic.msgdef:
                raise ValueError(f'{topic.name}: type {topic.msgtype} has no definition')
            try:
                self.own.register(get_types_from_idl(topic.msgdef) if topic.encoding == 'ros2idl'
                                  else get_types_from_msg(topic.msgdef, topic.msgtype))
            except (TypesysError, ValueError) as exc:
                raise ValueError(f'{topic.name}: type {topic.msgtype}: {exc}') from None
            self.scan.notes.append(f'type {topic.msgtype} registered from the schema in the bag')
        return self.own


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One recovery of a folder at a time (e.g. several training ranks opening one bag)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def recover_bag(path: Path) -> Optional[RecoveryReport]:
    """Rewrite the unclosed recording at ``path`` as a closed bag; None if it is not unclosed.

    ``ValueError`` when what is there cannot be recovered (the original is then left as it was).
    """
    path = Path(path)
    if unclosed_reason(path) is None:
        return None
    with _locked(path):
        reason = unclosed_reason(path)  # another process may have recovered it meanwhile
        if reason is None:
            return None
        try:
            return _recover(path, reason)
        except (OSError, WriterError, ReaderError) as exc:
            raise ValueError(f'{type(exc).__name__}: {exc}') from None


def _recover(path: Path, reason: str) -> RecoveryReport:
    from vla_align.data.bag_io import BAG_VERSION  # bag_io imports this module

    files = [f for f in storage_files(path) if f.is_file()]
    kinds = {_SUFFIX_STORAGE.get(f.suffix) for f in files}
    if len(kinds) != 1 or None in kinds:
        raise ValueError(f'storage files {[f.name for f in files]} are not all MCAP or sqlite3')
    storage = kinds.pop()
    report = RecoveryReport(path=path, storage=storage, sources=[f.name for f in files],
                            reason=reason)
    staging = path.parent / f'.{path.name}{RECOVERY_SUFFIX}'
    shutil.rmtree(staging, ignore_errors=True)  # a partial copy left by a crashed recovery
    new = staging / files[0].stem  # rosbags names the storage file after the folder
    writer = Writer(new, version=BAG_VERSION, storage_plugin=StoragePlugin.MCAP
                    if storage == 'mcap' else StoragePlugin.SQLITE3)
    sizes = sum(f.stat().st_size for f in files)
    scan, counts = _Scan(), {}
    try:
        writer.open()
        connections = _Connections(writer, scan)
        for file in files:
            read = _read_mcap if storage == 'mcap' else _read_sqlite3
            for topic, stamp, data in read(file, scan):
                connection = connections.get(topic)
                counts.setdefault(topic.name, 0)
                if stamp is None:
                    continue
                writer.write(connection, stamp, data)
                counts[topic.name] += 1
                report.first_ns = stamp if report.first_ns is None else min(report.first_ns,
                                                                            stamp)
                report.last_ns = stamp if report.last_ns is None else max(report.last_ns, stamp)
        writer.set_custom_data('vla_align.recovered', datetime.now(timezone.utc).isoformat(
            timespec='seconds'))
        writer.set_custom_data('vla_align.recovered_from', (
            f'{", ".join(report.sources)} ({sizes:,} bytes; {reason}); '
            f'{scan.dropped:,} bytes of incomplete records dropped'))
        for key, value in _custom_data(path).items():
            writer.set_custom_data(key, value)
        writer.close()
    except BaseException:
        if writer.storage is not None:
            writer.abort()
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report.messages, report.tail_bytes_dropped = counts, scan.dropped
    with Reader(new) as check:  # what is moved into place must open and hold every message
        if check.message_count != report.total_messages:
            raise ValueError(f'rewritten bag holds {check.message_count} messages, '
                             f'expected {report.total_messages}')
    target = new / f'{new.name}{files[0].suffix}'
    for file in (target, new / 'metadata.yaml'):
        _fsync(file)
    os.replace(target, path / target.name)  # the truncated file goes only now
    os.replace(new / 'metadata.yaml', path / 'metadata.yaml')
    for file in files:
        if file.name != target.name:
            file.unlink()  # merged into the recovered file
    _fsync(path)
    shutil.rmtree(staging, ignore_errors=True)
    report.actions = [f'read {", ".join(report.sources)} ({_size(sizes)}; {reason})',
                      *scan.notes,
                      f'wrote {target.name} and metadata.yaml (rosbag2 version {BAG_VERSION})']
    return report


def _custom_data(path: Path) -> dict[str, str]:
    """custom_data of the original metadata.yaml, if it has a readable one."""
    try:
        info = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
        data = info.get('custom_data') or {}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return {}
    return {str(k): str(v) for k, v in data.items() if not str(k).startswith('vla_align.recov')}
