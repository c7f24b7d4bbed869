"""Instruction text handling and the episode-status JSON, tested without DDS."""
import io
import time
import unicodedata

from hypothesis import given, settings
from hypothesis import strategies as st
import pytest

from vla_align.ros.episode_status import EpisodeStatus
from vla_align.ros.instructions import (
    REFUSED_CATEGORIES,
    WHITESPACE_CONTROLS,
    InstructionError,
    LineReader,
    normalize_instruction,
)


def test_instructions_are_whitespace_normalised_and_length_checked():
    assert normalize_instruction('  pick\tup  the\nred block ', 100) == 'pick up the red block'
    assert normalize_instruction('   ', 100) == ''  # empty clears the instruction
    with pytest.raises(InstructionError, match='max_length=5'):
        normalize_instruction('pick up', 5)
    with pytest.raises(InstructionError, match='U\\+0000'):
        normalize_instruction('pick\x00up', 100)


@pytest.mark.parametrize('char', ['\x85', '\x1b', '\x7f', '\u200b', '\u202e', '\ue000',
                                  '\U000e0001', '\ufeff'])
def test_controls_and_format_characters_are_refused_even_where_python_calls_them_space(char):
    """U+0085 (NEL) is whitespace to str.split: normalising first once hid it (issue 16)."""
    with pytest.raises(InstructionError, match=f'U\\+{ord(char):04X}'):
        normalize_instruction(f'push{char}the block', 100)


def test_separators_and_any_script_are_instructions():
    assert normalize_instruction('pick\u00a0up\u2028the\u3000cube\r\n', 100) == \
        'pick up the cube'
    assert normalize_instruction('hebe den roten Würfel 🟥 auf', 100) == \
        'hebe den roten Würfel 🟥 auf'
    assert normalize_instruction('赤いブロックを持ち上げて', 100) == '赤いブロックを持ち上げて'


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_text_is_refused_or_becomes_clean_printable_text(text):
    refused = any(unicodedata.category(c) in REFUSED_CATEGORIES and c not in WHITESPACE_CONTROLS
                  for c in text)
    try:
        out = normalize_instruction(text, 120)
    except InstructionError:
        assert refused or len(' '.join(text.split())) > 120
        return
    assert not refused
    assert out.isprintable() and out == out.strip() and '  ' not in out and len(out) <= 120
    assert out.split() == text.split()  # the words are kept as typed


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
