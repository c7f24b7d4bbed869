"""Instruction text handling and the episode-status JSON, tested without DDS."""
import io
import time

import pytest

from vla_align.ros.episode_status import EpisodeStatus
from vla_align.ros.instructions import InstructionError, LineReader, normalize_instruction


def test_instructions_are_whitespace_normalised_and_length_checked():
    assert normalize_instruction('  pick\tup  the\nred block ', 100) == 'pick up the red block'
    assert normalize_instruction('   ', 100) == ''  # empty clears the instruction
    with pytest.raises(InstructionError, match='max_length=5'):
        normalize_instruction('pick up', 5)
    with pytest.raises(InstructionError, match='control characters'):
        normalize_instruction('pick\x00up', 100)


def test_line_reader_collects_lines_in_the_background_until_the_end():
    reader = LineReader(io.StringIO('pick up the cube\r\n\npush it left\n'))
    deadline = time.monotonic() + 5
    lines = []
    while not reader.finished and time.monotonic() < deadline:
        lines += reader.poll()
        time.sleep(0.01)
    lines += reader.poll()
    assert lines == ['pick up the cube', '', 'push it left'] and reader.finished


def test_episode_status_round_trips_and_refuses_malformed_text():
    status = EpisodeStatus(episode=2, family='pick', split='seen', seed=1100002,
                           instruction='lift the red block', step=14, success=True, done=True)
    assert EpisodeStatus.from_json(status.to_json()) == status
    with pytest.raises(ValueError, match='not JSON'):
        EpisodeStatus.from_json('{episode: 2')
    with pytest.raises(ValueError, match='exactly the fields'):
        EpisodeStatus.from_json('{"episode": 2}')
    with pytest.raises(ValueError, match='exactly the fields'):
        EpisodeStatus.from_json('[1, 2]')
