"""Camera message -> action message latency and sustained action rate, through real topics.

How it measures: a probe node publishes synthetic camera frames (sensor QoS, like a camera
driver) at ``rate_hz``, each stamped with the wall clock at publication, plus one latched
instruction. The policy node publishes, with each action, /vla/action_frame: the header of the
frame it acted on, so for every action whose frame header matches a published frame, latency =
wall clock at reception - frame stamp. Both ends run on this host and clock, so this is the
full path: serialisation, DDS, the policy node's conversion, model step, safety gate and the
return trip. Holds carry their own stamps and are not counted. The first ``warmup_s`` are
discarded.

``run_probe`` measures whatever policy node is already running in the domain;
``measure_policy_node`` starts one (``python -m vla_align.ros.policy_node``) with the
requested source, measures, and stops it. ``vla-align bench`` can call either.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from vla_align.ros.metrics import LatencySummary, summarize_latencies
from vla_align.ros.node_harness import process_rss_mb


@dataclass(frozen=True)
class ProbeConfig:
    rate_hz: float = 30.0  # camera rate
    duration_s: float = 10.0  # measured time, after warm-up
    warmup_s: float = 3.0
    width: int = 640
    height: int = 480
    instruction: str = 'pick up the red block'
    image_topic: str = '/camera/image_raw'
    action_frame_topic: str = '/vla/action_frame'
    instruction_topic: str = '/vla/instruction'
    ee_pose_topic: str = '/vla/ee_pose'
    seed: int = 0  # of the synthetic images

    def __post_init__(self) -> None:
        if not (self.rate_hz > 0 and self.duration_s > 0 and self.warmup_s >= 0):
            raise ValueError('rate_hz and duration_s must be positive, warmup_s >= 0')
        if self.width < 8 or self.height < 8:
            raise ValueError(f'image must be at least 8x8, got {self.width}x{self.height}')


@dataclass(frozen=True)
class ProbeReport:
    frames_sent: int  # during the measured window
    actions_matched: int  # actions answering a frame of the window
    camera_rate_hz: float  # achieved publication rate
    action_rate_hz: float  # matched actions per second
    latency: LatencySummary
    duration_s: float
    settings: dict = field(default_factory=dict)
    #: The policy node's last /diagnostics values (holds, errors, hold_reasons, ...).
    policy_diagnostics: dict = field(default_factory=dict)
    #: The policy process's resident memory at the start and the end of the window (MiB; None
    #: when not measured).
    rss_start_mb: Optional[float] = None
    rss_end_mb: Optional[float] = None

    @property
    def kept_up(self) -> bool:
        """At least 95 % of the frames got an action (the policy did not fall behind)."""
        return self.frames_sent > 0 and self.actions_matched >= 0.95 * self.frames_sent

    def to_dict(self) -> dict:
        return {**asdict(self), 'kept_up': self.kept_up}

    def describe(self) -> str:
        lat = self.latency
        return (f'{self.actions_matched}/{self.frames_sent} frames answered in '
                f'{self.duration_s:.1f} s; camera {self.camera_rate_hz:.1f} Hz, actions '
                f'{self.action_rate_hz:.1f} Hz; camera->action latency p50 {lat.p50_ms:.1f} ms, '
                f'p99 {lat.p99_ms:.1f} ms, max {lat.max_ms:.1f} ms; policy node: '
                f'{self.policy_diagnostics.get("holds", "?")} holds '
                f'({self.policy_diagnostics.get("hold_reasons", "") or "none"}), '
                f'{self.policy_diagnostics.get("errors", "?")} errors, '
                f'{self.policy_diagnostics.get("frames_dropped", "?")} frames dropped')


def run_probe(config: ProbeConfig = ProbeConfig(), wait_for_policy_s: float = 60.0,
              memory: Optional[Callable[[], Optional[float]]] = None) -> ProbeReport:
    """Measure the policy node already running in this ROS domain (see module docstring);
    ``memory`` (the policy process's RSS in MiB) is sampled when the window opens and closes."""
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header, String

    from vla_align.ros import qos
    from vla_align.ros.conversions import pose_msg, rgb_to_image, seconds_to_stamp

    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    node = rclpy.create_node('vla_align_latency_probe', context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    rng = np.random.default_rng(config.seed)
    frames = [rng.integers(0, 256, (config.height, config.width, 3), dtype=np.uint8)
              for _ in range(8)]
    sent: dict[int, float] = {}  # stamp ns -> wall time sent (only frames in the window)
    latencies: list[float] = []
    window = {'start': None, 'end': None, 'sent': 0}

    def on_action_frame(msg: Header) -> None:
        received = time.time()
        key = msg.stamp.sec * 1_000_000_000 + msg.stamp.nanosec
        stamp = sent.pop(key, None)
        if stamp is not None:
            latencies.append(received - stamp)

    diagnostics: dict[str, str] = {}

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.endswith(': policy'):
                diagnostics.clear()
                diagnostics.update({kv.key: kv.value for kv in status.values})
                diagnostics['message'] = status.message

    image_pub = node.create_publisher(Image, config.image_topic, qos.SENSOR_DATA)
    pose_pub = node.create_publisher(PoseStamped, config.ee_pose_topic, qos.DEFAULT)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, qos.DEFAULT)
    instruction_pub = node.create_publisher(String, config.instruction_topic, qos.LATCHED)
    node.create_subscription(Header, config.action_frame_topic, on_action_frame, qos.COMMANDS)
    count = 0

    def publish_frame() -> None:
        nonlocal count
        now = time.time()
        stamp = seconds_to_stamp(now)
        msg = rgb_to_image(frames[count % len(frames)], stamp, 'probe_camera')
        count += 1
        if window['start'] is not None and window['end'] is None:
            sent[stamp.sec * 1_000_000_000 + stamp.nanosec] = now
            window['sent'] += 1
        image_pub.publish(msg)
        # A robot publishes its state next to the camera; the policy may need it.
        pose_pub.publish(pose_msg((0.45, 0.0, 0.2), (1.0, 0.0, 0.0, 0.0), stamp, 'panda_link0'))

    try:
        deadline = time.monotonic() + wait_for_policy_s
        while (image_pub.get_subscription_count() == 0
               or node.count_publishers(config.action_frame_topic) == 0):
            if time.monotonic() > deadline:
                raise TimeoutError(f'no policy node subscribed to {config.image_topic} and '
                                   f'publishing {config.action_frame_topic} within '
                                   f'{wait_for_policy_s:g} s')
            executor.spin_once(timeout_sec=0.1)
        instruction_pub.publish(String(data=config.instruction))
        node.create_timer(1.0 / config.rate_hz, publish_frame)
        start = time.monotonic()
        while time.monotonic() - start < config.warmup_s:
            executor.spin_once(timeout_sec=0.05)
        rss = {'start': memory() if memory else None}
        window['start'] = time.monotonic()
        while time.monotonic() - window['start'] < config.duration_s:
            executor.spin_once(timeout_sec=0.05)
        window['end'] = time.monotonic()
        rss['end'] = memory() if memory else None
        settle = time.monotonic()
        while time.monotonic() - settle < 1.2:  # answers in flight, one more diagnostics
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    duration = window['end'] - window['start']
    return ProbeReport(frames_sent=window['sent'], actions_matched=len(latencies),
                       camera_rate_hz=window['sent'] / duration,
                       action_rate_hz=len(latencies) / duration,
                       latency=summarize_latencies(latencies), duration_s=duration,
                       settings=asdict(config), policy_diagnostics=dict(diagnostics),
                       rss_start_mb=rss['start'], rss_end_mb=rss['end'])


def measure_policy_node(config: ProbeConfig = ProbeConfig(), source: str = 'random',
                        random_config: str = 'default', checkpoint: str = '',
                        device: str = 'cpu', control_rate: Optional[float] = None,
                        extra_args: tuple[str, ...] = ()) -> ProbeReport:
    """Start a policy node process, measure it with ``run_probe``, stop it.

    ``control_rate`` defaults to the camera rate, so every frame is acted on. The node runs in
    the caller's ROS domain (set ROS_DOMAIN_ID to isolate it).
    """
    rate = config.rate_hz if control_rate is None else control_rate
    argv = [sys.executable, '-m', 'vla_align.ros.policy_node', '--ros-args',
            '-p', f'source:={source}', '-p', f'random_config:={random_config}',
            '-p', f'checkpoint:="{checkpoint}"', '-p', f'device:={device}',
            '-p', f'control_rate:={float(rate)}', '-p', 'trigger:=frame',
            '-p', 'max_translation_change:=0.0',
            '-p', 'max_rotation_change:=0.0', '-r', f'/camera/image_raw:={config.image_topic}',
            '-r', f'/vla/action_frame:={config.action_frame_topic}',
            '-r', f'/vla/instruction:={config.instruction_topic}',
            '-r', f'/vla/ee_pose:={config.ee_pose_topic}', *extra_args]
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    log = tempfile.TemporaryFile(mode='w+')
    process = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        try:
            return run_probe(config, memory=lambda: process_rss_mb(process.pid))
        except TimeoutError:
            if process.poll() is not None:
                log.seek(0)
                raise RuntimeError(f'the policy node exited with status {process.returncode}: '
                                   f'{log.read().strip()[-2000:]}') from None
            raise
    finally:
        log.close()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
