"""The ``main()`` shared by every node: init, spin, clean shutdown, clear start-up errors."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
import contextlib
import signal
from typing import Optional

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from vla_align.ros.params import StartupError

#: Longest wait for work before the spin loop looks at signals again (seconds).
SPIN_PERIOD_S = 0.2


class _StopSignals:
    """SIGINT/SIGTERM handler that raises ``KeyboardInterrupt``, except inside ``deferred()``.

    Inside ``deferred()`` a signal is remembered and raised when the block ends, so it cannot
    cut an object's ``__init__`` short: an rclpy executor interrupted half-way through its
    constructor lacks the attributes its ``__del__`` reads, and prints a traceback when
    collected. (Masking the signal would not do: rclpy's DDS threads still receive it.)
    """

    def __init__(self) -> None:
        self._deferring = False
        self._pending: Optional[int] = None

    def __call__(self, signum: int, frame: object) -> None:
        if self._deferring:
            self._pending = signum
            return
        raise KeyboardInterrupt(f'signal {signum}')

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        pending, self._pending = self._pending, None
        if pending is not None:
            raise KeyboardInterrupt(f'signal {pending}')


def run_node(make_node: Callable[[], Node], name: str,
             args: Optional[Sequence[str]] = None) -> int:
    """Spin the node built by ``make_node`` until Ctrl-C / SIGTERM / shutdown.

    SIGINT and SIGTERM become ``KeyboardInterrupt`` in Python (rclpy's own handlers are not
    installed), so the context is still valid when the node is destroyed: its ``destroy_node``
    can log a summary and release devices cleanly. Both handlers are installed explicitly: a
    process started from a background job of a non-interactive shell (CI, ``nohup ... &``)
    inherits SIGINT as ignored, and Python then never raises ``KeyboardInterrupt``, so such a
    node would ignore the launcher's Ctrl-C and be killed. Returns the process exit status: 0
    after a normal shutdown, 1 when the node refused to start (the reason is logged once as
    FATAL, without a traceback).
    """
    rclpy.init(args=None if args is None else list(args),
               signal_handler_options=SignalHandlerOptions.NO)
    stop_signals = _StopSignals()
    previous = {sig: signal.signal(sig, stop_signals) for sig in (signal.SIGINT, signal.SIGTERM)}
    node: Optional[Node] = None
    executor: Optional[SingleThreadedExecutor] = None
    try:
        with stop_signals.deferred():
            executor = SingleThreadedExecutor()
        node = make_node()
        executor.add_node(node)
        while rclpy.ok():
            executor.spin_once(timeout_sec=SPIN_PERIOD_S)
    except StartupError as exc:
        rclpy.logging.get_logger(name).fatal(str(exc))
        return 1
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if executor is not None:
            executor.shutdown(timeout_sec=0)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
