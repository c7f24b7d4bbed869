"""Keeps ROS 2 tests from seeing each other: one DDS domain per test process, localhost only.

Import the fixtures into a test module (``from ros_isolation import ros_context, ...``).
``ros_environment`` must run before any ``rclpy.init`` of the process: rcl reads the domain
and discovery range from the environment at init, and child processes inherit them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
import os
from pathlib import Path
import tempfile

import pytest

#: Domains 1..100: the default domain 0 is what an interactive ROS session uses.
DOMAIN_RANGE = 100


def domain_id_for(pid: int) -> int:
    return 1 + pid % DOMAIN_RANGE


def isolate_environment(env: dict[str, str] | os._Environ, domain_id: int, log_dir: str) -> None:
    env['ROS_DOMAIN_ID'] = str(domain_id)
    env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'  # Jazzy and later
    env['ROS_LOCALHOST_ONLY'] = '1'  # Humble
    env['ROS_LOG_DIR'] = log_dir  # rcl log files stay out of ~/.ros
    env['RCUTILS_COLORIZED_OUTPUT'] = '0'


@pytest.fixture(scope='session')
def ros_environment() -> Iterator[int]:
    """Set this process's (and its children's) ROS environment; yields the domain id."""
    keys = ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_LOCALHOST_ONLY',
            'ROS_LOG_DIR', 'RCUTILS_COLORIZED_OUTPUT')
    saved = {key: os.environ.get(key) for key in keys}
    domain_id = domain_id_for(os.getpid())
    with tempfile.TemporaryDirectory(prefix='vla_align_ros_logs_') as log_dir:
        isolate_environment(os.environ, domain_id, log_dir)
        yield domain_id
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def ros_context(ros_environment: int):
    """A fresh rclpy context per test (nodes take ``context=``); shut down afterwards."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    yield context
    context.try_shutdown()


@pytest.fixture
def spin(ros_context) -> Iterator[Callable]:
    """``spin(nodes, seconds, until=None)``: run the nodes' callbacks in this thread."""
    from rclpy.executors import SingleThreadedExecutor

    from vla_align.ros.node_harness import spin_until

    executor = SingleThreadedExecutor(context=ros_context)
    added: set[int] = set()

    def run(nodes, seconds: float, until: Callable[[], bool] | None = None) -> bool:
        for node in nodes:
            if id(node) not in added:
                executor.add_node(node)
                added.add(id(node))
        return spin_until(executor, seconds, until)

    yield run
    executor.shutdown()


REPO_ROOT = Path(__file__).resolve().parents[1]
