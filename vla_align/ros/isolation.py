"""A private, localhost-only ROS 2 domain for tools that start their own nodes (bench, fuzz).

rcl reads these variables when a context is initialised, and child processes inherit them, so
everything started inside the block talks only to itself. Tests use test/ros_isolation.py
(domains 1..100); ``vla-align eval-sim --via-ros`` uses 101..200; tools pass their own id.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
import os
from pathlib import Path
from typing import Optional


@contextmanager
def private_ros_domain(domain_id: int, log_dir: str,
                       dds_profile: Optional[Path] = None) -> Iterator[dict[str, str]]:
    """This process's environment set to ``domain_id``, localhost-only discovery and
    ``log_dir`` for ROS logs inside the block; yields the whole environment (for children).

    ``dds_profile``: a Fast DDS XML profile (e.g. config/fastdds_large_messages.xml, which
    camera frames over ~500 KB need), named in the variable this ROS distribution reads. It
    takes effect for DDS participants created inside the block in a fresh process.
    """
    from vla_align.ros.graph_config import dds_profile_variable

    if not 0 <= domain_id <= 232:
        raise ValueError(f'ROS_DOMAIN_ID must be in 0..232, got {domain_id}')
    values = {'ROS_DOMAIN_ID': str(domain_id), 'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST',
              'ROS_LOCALHOST_ONLY': '1', 'ROS_LOG_DIR': log_dir,
              'RCUTILS_COLORIZED_OUTPUT': '0', 'PYTHONUNBUFFERED': '1'}
    if dds_profile is not None:
        values[dds_profile_variable(os.environ.get('ROS_DISTRO'))] = str(dds_profile)
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield dict(os.environ)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
