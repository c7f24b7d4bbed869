"""Nodes as their own processes, for the tools that try them as a user's system would.

The fuzz campaign, the fault scenarios and the load tests (``vla-align fuzz`` / ``reliability``)
start each node exactly as ``ros2 run`` does -- ``python -m vla_align.ros.<node> --ros-args
...`` -- in a private ROS domain, so a crash, a kill or a restart is the real thing.
"""
from __future__ import annotations

from collections.abc import Callable
import os
from pathlib import Path
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Optional


def spin_until(executor: Any, seconds: float,
               until: Optional[Callable[[], bool]] = None) -> bool:
    """Spin ``executor`` for ``seconds``, or until ``until()`` is true (then True)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.005)
        if until is not None and until():
            return True
    return until is None


def process_rss_mb(pid: int) -> Optional[float]:
    """Resident memory of process ``pid`` now (MiB, from /proc; None when it is gone or on a
    system without /proc)."""
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


class NodeProcess:
    """One node started as its own process (``python -m vla_align.ros.<module> --ros-args ...``).

    Its output goes to ``log_path`` (tools that read it afterwards), or line by line to ``sink``
    prefixed with the node's name (``vla-align up`` in a terminal). ``params`` become
    ``-p name:=value``; ``params_file`` (a ROS parameters YAML) comes first, so ``params``
    override it; ``remaps`` are ``-r from:=to``; ``argv`` replaces the whole command (a graph
    file's ``NodeSpec.command()``). ``stdin`` forwards this process's stdin to the node;
    ``new_session`` puts it in its own session, so Ctrl-C in a terminal reaches only the
    launcher, which then stops every node exactly once.
    """

    def __init__(self, module: str, params: dict[str, object], log_path: Optional[Path],
                 env: dict[str, str], params_file: Optional[Path] = None,
                 remaps: Optional[dict[str, str]] = None, name: Optional[str] = None,
                 argv: Optional[list[str]] = None, sink: Any = None, stdin: bool = False,
                 new_session: bool = False) -> None:
        args = argv or node_argv(module, params, params_file, remaps, name)
        self.name = name or module
        self.log_path = log_path
        self._sink = sink
        self._log = open(log_path, 'a') if log_path is not None else None  # noqa: SIM115
        output = self._log if self._log is not None else subprocess.PIPE
        self.process = subprocess.Popen(
            args, stdout=output, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, env=env, cwd=os.getcwd(),
            text=True, bufsize=1, start_new_session=new_session)
        self._reader: Optional[threading.Thread] = None
        if self._log is None:
            self._reader = threading.Thread(target=self._forward_output, daemon=True,
                                            name=f'{self.name}-output')
            self._reader.start()
        if stdin:
            threading.Thread(target=self._forward_stdin, daemon=True,
                             name=f'{self.name}-stdin').start()

    @property
    def pid(self) -> int:
        return self.process.pid

    def poll(self) -> Optional[int]:
        return self.process.poll()

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return '' if self.log_path is None else self.log_path.read_text(errors='replace')

    def log_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if line.strip()]

    def crashed(self) -> bool:
        return not self.alive() or 'Traceback' in self.log_text()

    def rss_mb(self) -> Optional[float]:
        return process_rss_mb(self.pid)

    def interrupt(self) -> None:
        """SIGINT, as Ctrl-C: the node shuts down cleanly."""
        if self.alive():
            self.process.send_signal(signal.SIGINT)

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a power cut ends a process: no clean-up runs."""
        if self.alive():
            self.process.kill()
            self.process.wait()
        self._close_log()

    def stop(self, timeout_s: float = 20.0) -> Optional[int]:
        """SIGTERM, then the exit status (None if it had to be killed)."""
        status: Optional[int] = None
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                status = self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        else:
            status = self.process.returncode
        self._close_log()
        return status

    def finish(self, timeout: float = 2.0) -> None:
        """Wait for the output of an exited process to be forwarded."""
        if self._reader is not None:
            self._reader.join(timeout)

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()

    def _forward_output(self) -> None:
        for line in self.process.stdout:
            self._sink.write(f'[{self.name}] {line.rstrip()}')

    def _forward_stdin(self) -> None:
        try:
            for line in sys.stdin:
                self.process.stdin.write(line)
                self.process.stdin.flush()
            self.process.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass


def node_argv(module: str, params: dict[str, object], params_file: Optional[Path] = None,
              remaps: Optional[dict[str, str]] = None, name: Optional[str] = None) -> list[str]:
    """``python -m vla_align.ros.<module> --ros-args ...`` as ``ros2 run`` would start it."""
    args = [sys.executable, '-m', f'vla_align.ros.{module}', '--ros-args']
    if name:
        args += ['-r', f'__node:={name}']
    if params_file is not None:
        args += ['--params-file', str(params_file)]
    for key, value in params.items():
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, (list, tuple)):
            text = '[' + ','.join(str(v) for v in value) + ']'
        else:
            text = str(value)
        args += ['-p', f'{key}:={text}']
    for source, target in (remaps or {}).items():
        args += ['-r', f'{source}:={target}']
    return args
