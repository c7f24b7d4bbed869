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
    """One node started as ``python -m vla_align.ros.<module>``; its log goes to a file.

    ``params`` become ``-p name:=value``; ``params_file`` (a ROS parameters YAML) comes first,
    so ``params`` override it. ``remaps`` are ``-r from:=to``.
    """

    def __init__(self, module: str, params: dict[str, object], log_path: Path,
                 env: dict[str, str], params_file: Optional[Path] = None,
                 remaps: Optional[dict[str, str]] = None, name: Optional[str] = None,
                 argv: Optional[list[str]] = None) -> None:
        """``argv`` replaces the command built from the other arguments (a graph file's
        ``NodeSpec.command()``)."""
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
        self.name = name or module
        self.log_path = log_path
        self._log = open(log_path, 'a')  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(argv or args, stdout=self._log, stderr=subprocess.STDOUT,
                                        env=env, cwd=os.getcwd())

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors='replace')

    def log_lines(self) -> list[str]:
        return [line for line in self.log_text().splitlines() if line.strip()]

    def crashed(self) -> bool:
        return not self.alive() or 'Traceback' in self.log_text()

    def rss_mb(self) -> Optional[float]:
        return process_rss_mb(self.pid)

    def kill(self) -> None:
        """SIGKILL, as an OOM kill or a power cut ends a process: no clean-up runs."""
        if self.alive():
            self.process.kill()
            self.process.wait()
        self._log.close()

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
        self._log.close()
        return status
