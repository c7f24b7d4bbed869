"""Sustained load: an image flood into the policy node, and a soak of the simulated graph.

* **Flood** (``run_flood``): 640x480 frames published as fast as asked (200 Hz by default,
  ~180 MB/s) into a policy node with the shipped checkpoint at its control rate. It must keep
  only the newest frame: its action rate stays at the control rate, the latency of what it
  answers (camera stamp -> action received) stays within target, and its resident memory stays
  flat (no queue builds up anywhere). Measured with ``latency_probe``.
* **Soak** (``run_soak``): the simulation graph of ``make demo`` (``config/sim_graph.yaml``: sim,
  instruction and policy nodes, each its own process, the policy commanding through the robot
  path) runs episodes for ``minutes``. A monitor node samples every ``sample_s``: resident
  memory of each process, the end-to-end latency of each action (``/vla/action_frame`` received
  - the stamp of the camera frame it answers; both on this host's clock), the action rate, and
  the episodes finished and succeeded. The report compares the first and the last
  ``window_min`` minutes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
import tempfile
import time
from typing import Any, Optional

import numpy as np

from vla_align.ros.isolation import private_ros_domain
from vla_align.ros.metrics import summarize_latencies
from vla_align.ros.node_harness import NodeProcess


@dataclass(frozen=True)
class FloodConfig:
    rate_hz: float = 200.0
    width: int = 640
    height: int = 480
    duration_s: float = 30.0
    warmup_s: float = 5.0
    control_rate: float = 10.0
    checkpoint: str = 'checkpoints/default'
    domain_id: int = 223


def run_flood(config: FloodConfig) -> dict[str, Any]:
    """The flood of the module docstring; a JSON-ready report."""
    from vla_align.paths import share_path
    from vla_align.ros.latency_probe import ProbeConfig, measure_policy_node
    from vla_align.ros.sources import resolve_checkpoint_path

    checkpoint = str(resolve_checkpoint_path(config.checkpoint).resolve())
    probe = ProbeConfig(rate_hz=config.rate_hz, duration_s=config.duration_s,
                        warmup_s=config.warmup_s, width=config.width, height=config.height)
    with tempfile.TemporaryDirectory(prefix='vla_align_flood_') as logs, \
            private_ros_domain(config.domain_id, logs,
                               share_path('config', 'fastdds_large_messages.xml')):
        report = measure_policy_node(probe, source='checkpoint', checkpoint=checkpoint,
                                     control_rate=config.control_rate,
                                     extra_args=('-p', 'torch_threads:=1'))
    data = report.to_dict()
    growth = (None if report.rss_start_mb is None or report.rss_end_mb is None
              else report.rss_end_mb - report.rss_start_mb)
    kept_newest = report.action_rate_hz >= 0.8 * config.control_rate
    return {'config': asdict(config), 'probe': data, 'rss_growth_mb': growth,
            'action_rate_hz': report.action_rate_hz,
            'camera_rate_hz': report.camera_rate_hz,
            'latency_p50_ms': report.latency.p50_ms, 'latency_p99_ms': report.latency.p99_ms,
            'passed': bool(kept_newest and report.latency.p99_ms <= 30.0
                           and growth is not None and growth < 50.0),
            'rule': 'action rate >= 80 % of the control rate, answered-frame latency p99 <= '
                    '30 ms, resident memory growth < 50 MiB over the window'}


@dataclass(frozen=True)
class SoakConfig:
    minutes: float = 60.0
    sample_s: float = 30.0
    window_min: float = 5.0  # compared at the start and at the end
    warmup_s: float = 60.0  # not measured: the processes load models and fill caches
    checkpoint: str = 'checkpoints/default'
    domain_id: int = 224


class SoakMonitor:
    """Collects what the soak reports; its own node in this process."""

    def __init__(self, context: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from std_msgs.msg import Header

        from vla_align.ros import qos, topics
        from vla_align.ros.command_output import HOLD_FRAME

        self.node = n = Node('soak_monitor', context=context)
        self._hold_frame = HOLD_FRAME
        self.latencies: list[tuple[float, float]] = []  # (monotonic, seconds)
        self.holds: list[float] = []
        self.sim: dict[str, str] = {}
        n.create_subscription(Header, topics.ACTION_FRAME, self._on_action_frame, qos.COMMANDS)
        n.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics,
                              qos.DEFAULT)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(n)

    def _on_action_frame(self, msg: Any) -> None:
        now = time.monotonic()
        if msg.frame_id == self._hold_frame:
            self.holds.append(now)
            return
        received = self.node.get_clock().now().nanoseconds * 1e-9
        self.latencies.append((now, received - (msg.stamp.sec + msg.stamp.nanosec * 1e-9)))

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if status.name.startswith('sim_node'):
                self.sim = {kv.key: kv.value for kv in status.values}

    def spin(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def run_soak(config: SoakConfig, out_dir: Path,
             progress: Optional[Callable[[float], None]] = None) -> dict[str, Any]:
    """The soak of the module docstring; ``progress(seconds done)`` after each sample."""
    import rclpy

    from vla_align.paths import share_path
    from vla_align.ros.graph_config import load_graph_config
    from vla_align.ros.sources import resolve_checkpoint_path

    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = str(resolve_checkpoint_path(config.checkpoint).resolve())
    graph = load_graph_config(share_path('config', 'sim_graph.yaml')).with_arguments(
        {'checkpoint': checkpoint})
    samples: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix='vla_align_soak_') as logs, \
            private_ros_domain(config.domain_id, logs,
                               share_path('config', 'fastdds_large_messages.xml')) as env:
        processes = {spec.name: NodeProcess(spec.module.rsplit('.', 1)[-1], {},
                                            out_dir / f'{spec.name}.log', env, name=spec.name,
                                            argv=spec.command())
                     for spec in graph.nodes}
        context = rclpy.Context()
        rclpy.init(args=[], context=context, domain_id=config.domain_id)
        monitor = SoakMonitor(context)
        started = time.monotonic()
        try:
            monitor.spin(config.warmup_s)
            measured_from = time.monotonic()
            end = measured_from + config.minutes * 60.0
            last = measured_from
            while time.monotonic() < end and all(p.alive() for p in processes.values()):
                monitor.spin(min(config.sample_s, end - time.monotonic()))
                now = time.monotonic()
                window = [s for t, s in monitor.latencies if last <= t < now]
                samples.append({
                    't_s': now - measured_from,
                    'rss_mb': {name: p.rss_mb() for name, p in processes.items()},
                    'actions': len(window), 'holds': sum(last <= t < now for t in monitor.holds),
                    'action_rate_hz': len(window) / max(now - last, 1e-9),
                    'latency_p50_ms': summarize_latencies(window).p50_ms if window else None,
                    'latency_p99_ms': summarize_latencies(window).p99_ms if window else None,
                    'episodes_finished': int(monitor.sim.get('episodes_finished', 0)),
                    'successes': int(monitor.sim.get('successes', 0))})
                last = now
                if progress is not None:
                    progress(now - measured_from)
            alive = {name: p.alive() for name, p in processes.items()}
            latencies = list(monitor.latencies)
        finally:
            statuses = {name: p.stop() for name, p in processes.items()}
            monitor.close()
            context.try_shutdown()
    report = summarize_soak(config, samples, latencies, measured_from, alive, statuses,
                            time.monotonic() - started)
    plot_soak(samples, out_dir / 'soak.png')
    return report


def summarize_soak(config: SoakConfig, samples: list[dict[str, Any]],
                   latencies: list[tuple[float, float]], measured_from: float,
                   alive: dict[str, bool], statuses: dict[str, Optional[int]],
                   wall_s: float) -> dict[str, Any]:
    """The first and last ``window_min`` minutes side by side, and the pass rule."""
    window_s = config.window_min * 60.0
    duration = samples[-1]['t_s'] if samples else 0.0

    def part(low: float, high: float) -> dict[str, Any]:
        rows = [s for s in samples if low < s['t_s'] <= high]
        lat = [v for t, v in latencies if low < t - measured_from <= high]
        summary = summarize_latencies(lat) if lat else None
        rss = {name: float(np.mean([r['rss_mb'][name] for r in rows
                                    if r['rss_mb'][name] is not None]))
               for name in (rows[0]['rss_mb'] if rows else {})}
        return {'from_s': low, 'to_s': high, 'rss_mb': rss,
                'action_rate_hz': float(np.mean([r['action_rate_hz'] for r in rows]))
                if rows else None,
                'latency_p50_ms': summary.p50_ms if summary else None,
                'latency_p99_ms': summary.p99_ms if summary else None,
                'actions': len(lat)}

    start, end = part(0.0, window_s), part(max(0.0, duration - window_s), duration)
    growth = {name: end['rss_mb'][name] - start['rss_mb'][name] for name in start['rss_mb']}
    episodes = samples[-1]['episodes_finished'] if samples else 0
    successes = samples[-1]['successes'] if samples else 0
    passed = (bool(samples) and duration >= 0.98 * config.minutes * 60.0 and all(alive.values())
              and all(v < 100.0 for v in growth.values())
              and end['latency_p99_ms'] is not None and end['latency_p99_ms'] <= 30.0
              and end['action_rate_hz'] is not None and start['action_rate_hz'] is not None
              and end['action_rate_hz'] >= 0.8 * start['action_rate_hz'])
    return {'config': asdict(config), 'duration_s': duration, 'wall_s': wall_s,
            'start': start, 'end': end, 'rss_growth_mb': growth,
            'episodes_finished': episodes, 'successes': successes, 'processes_alive': alive,
            'exit_status': statuses, 'samples': samples, 'passed': passed,
            'rule': 'every process alive for the whole soak; resident memory growth < 100 MiB '
                    'per process; end-to-end latency p99 <= 30 ms and the action rate within '
                    '20 % of the start in the last window'}


def plot_soak(samples: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    if not samples:
        return
    minutes = [s['t_s'] / 60.0 for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(7, 7), sharex=True)
    for name in samples[0]['rss_mb']:
        axes[0].plot(minutes, [s['rss_mb'][name] for s in samples], label=name)
    axes[0].set_ylabel('resident memory (MiB)')
    axes[0].legend(fontsize=8)
    axes[1].plot(minutes, [s['latency_p50_ms'] for s in samples], label='p50')
    axes[1].plot(minutes, [s['latency_p99_ms'] for s in samples], label='p99')
    axes[1].axhline(30.0, color='grey', linestyle='--', linewidth=0.8, label='target p99')
    axes[1].set_ylabel('camera -> action (ms)')
    axes[1].legend(fontsize=8)
    axes[2].plot(minutes, [s['action_rate_hz'] for s in samples])
    axes[2].set_ylabel('actions / s')
    axes[2].set_xlabel('minutes')
    fig.suptitle('Soak of the simulation graph')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
