"""Instruction text: validation and normalisation, and a line reader for interactive stdin.

What an instruction may contain, by Unicode general category, judged on the text *as received*
(before whitespace is collapsed, so nothing refused can hide as whitespace):

* letters, marks, numbers, punctuation and symbols (L*, M*, N*, P*, S*): any script, emoji too;
* separators (Zs, Zl, Zp: space, no-break space, line and paragraph separators) and the ASCII
  whitespace controls (tab, line feed, vertical tab, form feed, carriage return: C's
  ``isspace``): collapsed to single spaces;
* nothing else. Control characters (Cc) -- NUL, ESC, DEL, U+001C..U+001F and the C1 controls
  including U+0085 NEXT LINE, which Python's ``str.split`` treats as whitespace (NEL once let a
  control-laden instruction through) -- format characters (Cf: zero-width spaces and joiners,
  bidirectional overrides that make text display differently from what it says), surrogates
  (Cs), private use (Co) and unassigned code points (Cn) are refused with their code point
  named.
"""
from __future__ import annotations

import queue
import threading
from typing import TextIO
import unicodedata

#: Categories no instruction may contain (see the module docstring).
REFUSED_CATEGORIES = frozenset({'Cc', 'Cf', 'Cs', 'Co', 'Cn'})
#: Control characters that are ordinary whitespace in typed text.
WHITESPACE_CONTROLS = frozenset('\t\n\x0b\x0c\r')


class InstructionError(ValueError):
    """Text that cannot be used as an instruction."""


def refused_character(text: str) -> str | None:
    """A description of the first character ``text`` may not contain, or None."""
    for char in text:
        category = unicodedata.category(char)
        if category in REFUSED_CATEGORIES and char not in WHITESPACE_CONTROLS:
            name = unicodedata.name(char, '')
            return f'U+{ord(char):04X}{" " + name if name else ""} (category {category})'
    return None


def normalize_instruction(text: str, max_length: int) -> str:
    """The instruction with whitespace collapsed and trimmed ('' means 'no instruction' and
    clears it); ``InstructionError`` for text with a refused character or too long."""
    text = str(text)
    refused = refused_character(text)
    if refused is not None:
        raise InstructionError(f'instruction contains a control or format character: {refused}')
    cleaned = ' '.join(text.split())
    if not cleaned.isprintable():  # a second guard: nothing but printable text gets through
        raise InstructionError('instruction contains control characters')
    if len(cleaned) > max_length:
        raise InstructionError(f'instruction has {len(cleaned)} characters, more than '
                               f'max_length={max_length}')
    return cleaned


class LineReader:
    """Reads lines from a stream in a daemon thread; ``poll`` returns those read so far.

    A blocking ``readline`` cannot live in a ROS callback, so the node's timer polls this.
    """

    def __init__(self, stream: TextIO) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True,
                                        name='instruction-stdin')
        self._thread.start()

    @property
    def finished(self) -> bool:
        """True once the stream reached its end (and every line was polled)."""
        return self._finished.is_set() and self._lines.empty()

    def poll(self) -> list[str]:
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    def _read(self, stream: TextIO) -> None:
        try:
            for line in stream:
                self._lines.put(line.rstrip('\r\n'))
        except (OSError, ValueError):  # stream closed under us at shutdown
            pass
        finally:
            self._finished.set()
