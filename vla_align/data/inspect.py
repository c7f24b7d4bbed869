"""`vla-align inspect-bag PATH`: what a rosbag2 holds, and which episode it records.

Works on any rosbag2 folder (mcap or sqlite3, ours or ``ros2 bag record``'s; an unclosed
recording is recovered first); the episode block is printed only when ``/vla/episode`` holds the
metadata written by ``vla_align.data.bag_io``.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
import json
from pathlib import Path
import sys
from typing import Optional

from rosbags.rosbag2 import ReaderError
from rosbags.serde import SerdeError

from vla_align.data import ros_messages as rm
from vla_align.data.bag_io import DEFAULT_TOPICS, BagTopics, bag_storage, open_bag_reader
from vla_align.data.episode_meta import EpisodeMetadata, EpisodeMetadataError


@dataclass
class TopicSummary:
    name: str
    msgtype: str
    count: int


@dataclass
class BagSummary:
    """Header facts of a bag, from its metadata, plus the episode record if it has one."""

    path: Path
    storage: str
    start_ns: int
    duration_ns: int
    topics: list[TopicSummary]
    episode: Optional[EpisodeMetadata]
    #: Why the messages could not be read (the summary then comes from metadata.yaml alone).
    unreadable: str = ''

    @property
    def message_count(self) -> int:
        return sum(topic.count for topic in self.topics)


def episode_record(text: str) -> Optional[EpisodeMetadata]:
    """The episode metadata in a ``/vla/episode`` payload, or None if it holds something else
    (only what ``data.episode_meta`` writes counts, not any JSON a String topic may carry)."""
    try:
        return EpisodeMetadata.from_json(text)
    except EpisodeMetadataError:
        return None


def summarize_metadata(path: Path, reason: str) -> BagSummary:
    """What metadata.yaml says, for a bag whose messages cannot be read (an unsupported
    serialization format, a storage plugin rosbags lacks); ``ValueError`` if that fails too."""
    import yaml

    try:
        info = yaml.safe_load((Path(path) / 'metadata.yaml').read_text())
        info = info['rosbag2_bagfile_information']
        listed = [TopicSummary(str(t['topic_metadata']['name']),
                               str(t['topic_metadata'].get('type', '?')),
                               int(t.get('message_count', 0)))
                  for t in info.get('topics_with_message_count') or []]
        start_ns = int(info['starting_time']['nanoseconds_since_epoch'])
        duration_ns = int(info['duration']['nanoseconds'])
        storage = str(info.get('storage_identifier', '?'))
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f'{reason}; its metadata.yaml is unreadable too ({exc})') from None
    return BagSummary(path=Path(path), storage=storage, start_ns=start_ns,
                      duration_ns=duration_ns, topics=sorted(listed, key=lambda t: t.name),
                      episode=None, unreadable=reason)


def summarize_bag(path: Path, topics: BagTopics = DEFAULT_TOPICS) -> BagSummary:
    """Read a bag's metadata and its ``/vla/episode`` record (``ValueError`` if unreadable).

    A bag rosbags refuses to open but whose metadata.yaml is readable is still described,
    from that file, with the reason its messages were not read."""
    try:
        reader = open_bag_reader(path)
    except ValueError as exc:
        if not (Path(path) / 'metadata.yaml').is_file():
            raise
        return summarize_metadata(path, str(exc))
    try:
        listed = [TopicSummary(name, info.msgtype or '?', info.msgcount)
                  for name, info in sorted(reader.topics.items())]
        empty = reader.message_count == 0
        start_ns = 0 if empty else reader.start_time
        duration_ns = 0 if empty else reader.end_time - reader.start_time - 1
        episode = None
        connections = [c for c in reader.connections
                       if c.topic == topics.episode and c.msgtype == rm.STRING]
        # rosbags reads every connection when given none: only ask when there is one.
        for _connection, _timestamp, data in (reader.messages(connections=connections)
                                              if connections else ()):
            try:
                text = rm.deserialize(data, rm.STRING).data
            except Exception:  # noqa: BLE001 - a bad payload is not an episode; keep describing
                continue
            episode = episode_record(text) or episode
    except (ReaderError, SerdeError, OSError) as exc:
        raise ValueError(f'cannot read rosbag2 {path}: {exc}') from None
    finally:
        reader.close()
    return BagSummary(path=Path(path), storage=bag_storage(path), start_ns=start_ns,
                      duration_ns=duration_ns, topics=listed, episode=episode)


def format_summary(summary: BagSummary) -> str:
    lines = [f'bag:       {summary.path}',
             f'storage:   {summary.storage}',
             f'duration:  {summary.duration_ns / 1e9:.3f} s '
             f'(start {summary.start_ns / 1e9:.3f} s)',
             f'messages:  {summary.message_count}',
             'topics:']
    width = max((len(topic.name) for topic in summary.topics), default=0)
    for topic in summary.topics:
        lines.append(f'  {topic.name:<{width}}  {topic.count:>6}  {topic.msgtype}')
    if summary.unreadable:
        lines.append(f'note:      from metadata.yaml only; messages not read: '
                     f'{summary.unreadable}')
    episode = summary.episode
    if episode is None:
        lines.append('episode:   (no episode record in this bag)')
    else:
        where = ' / '.join(str(x) for x in (episode.family, episode.split and
                                            f'split {episode.split}',
                                            episode.seed is not None and f'seed {episode.seed}')
                           if x)
        lines += [f'episode:   {where or "(no task details)"}',
                  f'  instruction: {episode.instruction!r}',
                  f'  outcome:     {episode.outcome}',
                  f'  robot:       {episode.robot or "?"}'
                  + (f', operator {episode.operator}' if episode.operator else ''),
                  f'  recorded by: {episode.source or "?"} for contract '
                  f'{episode.contract or "?"} at {episode.control_hz or "?"} Hz']
        if episode.notes:
            lines.append(f'  notes:       {episode.notes}')
        if episode.task:
            lines.append(f'  task:        {json.dumps(episode.task, sort_keys=True)}')
    return '\n'.join(lines)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('path', type=Path, help='rosbag2 folder (the one with metadata.yaml, or '
                                                'an unclosed recording, which is recovered)')


def run(args: argparse.Namespace) -> int:
    try:
        summary = summarize_bag(args.path)
    except ValueError as exc:
        print(f'vla-align inspect-bag: {exc}', file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0
