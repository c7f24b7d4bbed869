"""Camera message -> action message latency through ROS 2 topics, with the real policy node.

A thin wrapper over `vla_align.ros.latency_probe.measure_policy_node` that keeps the
measurement off the user's ROS graph: the probe publishes synthetic camera frames, which must
never reach a real robot's policy, so it runs in a private DDS domain, localhost only. Both
sides use config/fastdds_large_messages.xml, as the robot graph does: without it, Fast DDS
drops most best-effort frames over ~500 KB (640x480 rgb8 is 921 KB) before they reach the node.
"""
from __future__ import annotations

from dataclasses import dataclass
import os
import tempfile
from typing import Any

from vla_align.paths import share_path
from vla_align.ros.isolation import private_ros_domain

#: ROS_DOMAIN_ID values the bench picks from: above the tests' (1..100) and eval-sim --via-ros's
#: (101..200); 0, the interactive default, is avoided.
PRIVATE_DOMAINS = range(201, 233)


@dataclass(frozen=True)
class RosBenchSettings:
    rate_hz: float = 30.0
    duration_s: float = 10.0
    warmup_s: float = 3.0
    width: int = 640
    height: int = 480
    threads: int = 1  # the policy node's torch_threads
    device: str = 'cpu'


def measure_ros_latency(settings: RosBenchSettings, checkpoint: str = '',
                        random_config: str = 'default') -> dict[str, Any]:
    """Start a policy node on ``checkpoint`` (or a random ``random_config`` model when empty),
    drive it with a ``rate_hz`` camera and return the probe's report as a dict (plus
    ``kept_up`` and the domain used). Raises RuntimeError when ROS 2 is not usable."""
    try:
        from vla_align.ros.latency_probe import ProbeConfig, measure_policy_node
    except ImportError as exc:
        raise RuntimeError(f'ROS 2 (rclpy) is not importable: {exc}') from None
    probe = ProbeConfig(rate_hz=settings.rate_hz, duration_s=settings.duration_s,
                        warmup_s=settings.warmup_s, width=settings.width,
                        height=settings.height)
    source = 'checkpoint' if checkpoint else 'random'
    domain = PRIVATE_DOMAINS[os.getpid() % len(PRIVATE_DOMAINS)]
    profile = share_path('config', 'fastdds_large_messages.xml')
    with tempfile.TemporaryDirectory(prefix='vla_align_bench_ros_') as log_dir, \
            private_ros_domain(domain, log_dir, dds_profile=profile):
        report = measure_policy_node(
            probe, source=source, random_config=random_config, checkpoint=checkpoint,
            device=settings.device, extra_args=('-p', f'torch_threads:={settings.threads}'))
    out = report.to_dict()
    out.update(ros_domain_id=domain, source=source, summary=report.describe(),
               dds_profile=profile.name)
    return out
