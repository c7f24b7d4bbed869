"""A thread that runs a node's model step when woken, off the executor's thread.

Why not a multi-threaded executor: rclpy's ``MultiThreadedExecutor`` dispatches callbacks so
slowly on a small CPU that a policy node spun by it answered 23 of 90 frames of a 30 Hz camera
(p99 500 ms) where the single-threaded executor answered 90 of 90 (p99 16.5 ms; measured with
``latency_probe`` on a 2-core machine). So the node keeps the single-threaded executor for its
subscriptions, timers and services -- holds, the Servo command stream, diagnostics and
``~/enable`` keep their rate -- and hands inference to this one plain thread, which torch
releases the GIL from during the heavy part of a step.
"""
from __future__ import annotations

from collections.abc import Callable
import threading
from typing import Optional

#: Longest sleep between two looks at the work when nobody wakes the thread (s).
IDLE_WAIT_S = 0.25


class InferenceWorker:
    """Calls ``work()`` on its own thread after each ``wake()``.

    ``work`` returns None, or a delay in seconds after which it wants to run again even if
    nobody wakes it (a frame waiting for its robot state). Wakes that arrive while it runs are
    not lost: it runs again. An exception in ``work`` goes to ``on_error`` and the thread goes
    on; it never dies silently.
    """

    def __init__(self, work: Callable[[], Optional[float]],
                 on_error: Callable[[BaseException], None], name: str = 'inference') -> None:
        self._work = work
        self._on_error = on_error
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.runs = 0

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> bool:
        """Stop after the current step; True when the thread ended within ``timeout_s``."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        again: Optional[float] = None
        while not self._stop.is_set():
            self._wake.wait(IDLE_WAIT_S if again is None else min(again, IDLE_WAIT_S))
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                again = self._work()
                self.runs += 1
            except Exception as exc:  # noqa: BLE001 - reported, and the thread goes on
                again = None
                self._on_error(exc)
