"""Instruction text: normalisation, and a line reader for interactive stdin."""
from __future__ import annotations

import queue
import threading
from typing import TextIO


class InstructionError(ValueError):
    """Text that cannot be used as an instruction."""


def normalize_instruction(text: str, max_length: int) -> str:
    """Whitespace collapsed and trimmed; an empty result means 'no instruction' (clears it)."""
    cleaned = ' '.join(str(text).split())
    if not cleaned.isprintable():
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
