"""The ``main()`` shared by every node: init, spin, clean shutdown, clear start-up errors."""
from __future__ import annotations

from collections.abc import Callable, Sequence
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
    """SIGINT/SIGTERM handler: the first signal asks the spin loop to stop, a second one
    interrupts at once.

    The first signal only sets ``requested``; the loop in ``run_node`` sees it within
    ``SPIN_PERIOD_S`` and the node is destroyed from a known point. Raising from the handler
    instead would interrupt whatever the main thread was doing, and an exception raised inside
    rclpy's C++ bindings (an executor's constructor, a pybind11 argument conversion) surfaces as
    another error with a traceback, not as ``KeyboardInterrupt`` (CI saw both). A second signal
    raises ``KeyboardInterrupt``, so a node stuck in a long callback or a slow start-up still
    stops when asked twice (``ros2 launch`` escalates SIGINT to SIGTERM).
    """

    def __init__(self) -> None:
        self.requested: Optional[int] = None

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt(f'signal {signum}')
        self.requested = signum


def run_node(make_node: Callable[[], Node], name: str,
             args: Optional[Sequence[str]] = None) -> int:
    """Spin the node built by ``make_node`` until Ctrl-C / SIGTERM / shutdown.

    SIGINT and SIGTERM are handled in Python (``_StopSignals``; rclpy's own handlers are not
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
        executor = SingleThreadedExecutor()
        node = make_node()
        executor.add_node(node)
        while rclpy.ok() and stop_signals.requested is None:
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
