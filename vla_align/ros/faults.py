"""Fault scenarios on the live robot path, each with a pass rule and a measured figure.

The graph is what a robot runs (``config/robot_nodes.yaml``): the camera node and the policy
node as their own processes, started in a dry run and enabled through ``~/enable``; this
process stands in for the robot driver (end-effector pose and joint states at 30 Hz, stamped
now) and for MoveIt Servo (it listens to the twist stream). Images are frames of the simulated
cell with an instruction that fits them, so the shipped policy commands motion.

A command stream "stops" when MoveIt Servo would halt the arm: at the first explicit zero twist
after the last non-zero one, or -- when the stream goes silent (a killed node) -- the Servo
``incoming_command_timeout`` (0.1 s) after the last non-zero twist. Scenarios, in order:

==================  ==============================================================  =========
scenario            fault, then recovery                                             pass rule
==================  ==============================================================  =========
dry_run             the policy runs disabled, then ``~/enable true``                 no twist
                                                                                     before
enable_false        ``~/enable false``, then true                                   stop <=
                                                                                     1 period
state_silent        the pose publisher stops, then publishes again                   stop <=
                                                                                     age+period
camera_killed       SIGKILL of the camera node, then a new camera node               stop <=
                                                                                     age+period
instruction_change  the instruction is cleared, then a new one is sent               stop <=
                                                                                     1 period
policy_killed       SIGKILL of the policy node, then a new one (dry run), enabled    no twist
                                                                                     until
                                                                                     enabled
recorder_killed     SIGKILL of ``vla-align record`` mid-recording; the bag read      <= 1 s
                    back with the project's tools                                    lost
==================  ==============================================================  =========

Every "stop" rule adds ``TRANSPORT_MARGIN_S`` for DDS delivery and scheduling on a loaded
machine; every resume must happen within ``RESUME_LIMIT_S``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
import tempfile
import time
from typing import Any, Optional

import numpy as np

from vla_align.ros.isolation import private_ros_domain
from vla_align.ros.node_harness import NodeProcess, spin_until

SERVO_TIMEOUT_S = 0.1  # MoveIt Servo's stock incoming_command_timeout
TRANSPORT_MARGIN_S = 0.06
RESUME_LIMIT_S = 10.0
STATE_RATE_HZ = 30.0
COUNTER_TOPIC = '/fault/counter'
COUNTER_RATE_HZ = 100.0


@dataclass
class ScenarioResult:
    name: str
    fault: str
    passed: bool
    rule: str
    time_to_stop_s: Optional[float] = None  # fault -> the arm halts
    time_to_resume_s: Optional[float] = None  # recovery -> motion commanded again
    figures: dict[str, Any] = field(default_factory=dict)
    notes: str = ''


def stop_time(twists: list[tuple[float, float]], since: float, until: float) -> Optional[float]:
    """When a Servo fed ``twists`` ((received, speed) pairs) halts, from ``since`` on.

    Servo executes the newest command until the next one or its timeout: after the last moving
    twist received by ``until`` it halts at the next twist (a zero one) if that comes within
    the timeout, else at last + timeout. ``since`` when it had halted already; None when it may
    still be moving at ``until``.
    """
    moving = [t for t, v in twists if t <= until and v > 0.0]
    if not moving:
        return since
    last = moving[-1]
    following = [t for t, _v in twists if t > last]
    halted = (following[0] if following and following[0] - last <= SERVO_TIMEOUT_S
              else last + SERVO_TIMEOUT_S)
    if halted > until:
        return None
    return max(halted, since)


def first_motion(twists: list[tuple[float, float]], since: float) -> Optional[float]:
    moving = [t for t, v in twists if t >= since and v > 0.0]
    return moving[0] if moving else None


class CellStandIn:
    """This process's node: the robot driver's state out, MoveIt Servo's command input in."""

    def __init__(self, context: Any, instruction: str) -> None:
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import JointState
        from std_msgs.msg import String
        from std_srvs.srv import SetBool

        from vla_align.ros import qos, topics
        from vla_align.ros.command_output import DRY_RUN_TWIST

        self.node = n = Node('fault_cell', context=context)
        self._pose_pub = n.create_publisher(PoseStamped, topics.EE_POSE, qos.DEFAULT)
        self._joints_pub = n.create_publisher(JointState, topics.JOINT_STATES, qos.DEFAULT)
        self.instruction_pub = n.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)
        self.counter_pub = n.create_publisher(String, COUNTER_TOPIC, qos.DEFAULT)
        self.twists: list[tuple[float, float]] = []
        self.dry_twists: list[tuple[float, float]] = []
        n.create_subscription(TwistStamped, topics.SERVO_TWIST,
                              lambda m: self.twists.append((time.monotonic(), _speed(m))),
                              qos.SERVO_COMMANDS)
        n.create_subscription(TwistStamped, DRY_RUN_TWIST,
                              lambda m: self.dry_twists.append((time.monotonic(), _speed(m))),
                              qos.SERVO_COMMANDS)
        self.enable = n.create_client(SetBool, '/policy_node/enable')
        self.publish_state = True
        self.counter_on = False
        self.counter = 0
        self._position = np.array([0.5, 0.0, 0.2])
        n.create_timer(1.0 / STATE_RATE_HZ, self._on_state_timer)
        n.create_timer(1.0 / COUNTER_RATE_HZ, self._on_counter_timer)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(n)
        self.instruction_pub.publish(String(data=instruction))

    def _on_state_timer(self) -> None:
        from vla_align.ros.conversions import joint_state_msg, pose_msg
        from vla_align.sim.types import PANDA_JOINT_NAMES

        if not self.publish_state:
            return
        stamp = self.node.get_clock().now().to_msg()
        self._pose_pub.publish(pose_msg(self._position, (1.0, 0.0, 0.0, 0.0), stamp,
                                        'panda_link0'))
        positions = [0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.8, 0.04, 0.04]
        self._joints_pub.publish(joint_state_msg(PANDA_JOINT_NAMES, positions, stamp))

    def _on_counter_timer(self) -> None:
        from std_msgs.msg import String

        if self.counter_on:
            self.counter_pub.publish(String(data=str(self.counter)))
            self.counter += 1

    def spin(self, seconds: float, until: Optional[Callable[[], bool]] = None) -> bool:
        return spin_until(self.executor, seconds, until)

    def set_enabled(self, enabled: bool, timeout_s: float = 20.0) -> float:
        """Call ~/enable; the monotonic time the call was sent."""
        from std_srvs.srv import SetBool

        if not self.spin(timeout_s, until=self.enable.service_is_ready):
            raise RuntimeError('the policy node offers no ~/enable service')
        sent = time.monotonic()
        future = self.enable.call_async(SetBool.Request(data=enabled))
        if not self.spin(timeout_s, until=future.done) or not future.result().success:
            raise RuntimeError(f'~/enable {enabled} was not answered')
        return sent

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def _speed(msg: Any) -> float:
    t = msg.twist
    return float(np.linalg.norm([t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y,
                                 t.angular.z]))


@dataclass
class FaultConfig:
    checkpoint: str = 'checkpoints/default'
    out_dir: Path = Path('runs/faults')
    domain_id: int = 222
    observe_s: float = 2.0  # after each fault and each recovery


class FaultCampaign:
    """Runs the scenarios of the module docstring in one live graph; ``run()`` -> report."""

    def __init__(self, config: FaultConfig, progress: Optional[Callable[[str], None]] = None
                 ) -> None:
        self.config = config
        self.progress = progress or (lambda _name: None)
        self.results: list[ScenarioResult] = []

    # -- the graph ------------------------------------------------------------------------------
    def _frames(self, folder: Path) -> str:
        """A few camera frames of a simulated pick scene as PNGs; returns its instruction."""
        import cv2

        from vla_align.sim.env import EnvConfig, ManipulationEnv
        from vla_align.sim.suite import load_suite

        suite = load_suite(None)
        env = ManipulationEnv(EnvConfig())
        try:
            task = suite.sample_task('pick', 'seen', 7)
            obs = env.reset(7, task)
            cv2.imwrite(str(folder / 'frame_0.png'), obs.image[..., ::-1])
            for i in range(1, 4):
                obs = env.step(np.array([0.0, 0.0, -0.01, 0, 0, 0, 0.0], np.float32)).observation
                cv2.imwrite(str(folder / f'frame_{i}.png'), obs.image[..., ::-1])
        finally:
            env.close()
        return task.instruction

    def _policy(self, env: dict[str, str], log: Path) -> NodeProcess:
        from vla_align.paths import share_path
        from vla_align.ros.sources import resolve_checkpoint_path

        checkpoint = str(resolve_checkpoint_path(self.config.checkpoint).resolve())
        return NodeProcess('policy_node', {
            'checkpoint': checkpoint, 'device': 'cpu', 'torch_threads': 1,
            # Synthetic scenes are not what grounding is calibrated on: motion, not
            # refusal, is what these scenarios watch stop.
            'refuse_ungrounded': False, 'max_translation_change': 0.0,
            'max_rotation_change': 0.0}, log, env,
            params_file=share_path('config', 'robot_nodes.yaml'))

    def _camera(self, env: dict[str, str], log: Path, frames: Path) -> NodeProcess:
        from vla_align.paths import share_path

        return NodeProcess('camera_node', {'source': str(frames), 'rate_hz': 30.0}, log, env,
                           params_file=share_path('config', 'robot_nodes.yaml'))

    def run(self) -> dict[str, Any]:
        import rclpy
        import yaml

        from vla_align.paths import share_path

        config = self.config
        config.out_dir.mkdir(parents=True, exist_ok=True)
        policy_params = yaml.safe_load(share_path('config', 'robot_nodes.yaml').read_text())
        params = policy_params['policy_node']['ros__parameters']
        period = 1.0 / float(params['control_rate'])
        with tempfile.TemporaryDirectory(prefix='vla_align_faults_') as tmp, \
                private_ros_domain(config.domain_id, tmp,
                                   share_path('config', 'fastdds_large_messages.xml')) as env:
            frames = Path(tmp) / 'frames'
            frames.mkdir()
            instruction = self._frames(frames)
            context = rclpy.Context()
            rclpy.init(args=[], context=context, domain_id=config.domain_id)
            cell = CellStandIn(context, instruction)
            logs = {name: config.out_dir / f'{name}.log' for name in ('policy', 'camera',
                                                                        'record')}
            for path in logs.values():
                path.write_text('')
            camera = self._camera(env, logs['camera'], frames)
            policy = self._policy(env, logs['policy'])
            try:
                self._dry_run(cell, policy)
                self._enable_false(cell, period)
                self._state_silent(cell, period, float(params['max_state_age_s']))
                camera = self._camera_killed(cell, camera, env, logs['camera'], frames, period,
                                             float(params['max_image_age_s']))
                self._instruction_change(cell, period, instruction)
                policy = self._policy_killed(cell, policy, env, logs['policy'])
                self._recorder_killed(cell, env, logs['record'], Path(tmp) / 'bag')
            finally:
                camera.stop()
                status = policy.stop()
                cell.close()
                context.try_shutdown()
        return self.report(status, policy.log_text())

    # -- scenarios ------------------------------------------------------------------------------
    def _observe(self, cell: CellStandIn) -> None:
        cell.spin(self.config.observe_s)

    def _wait_moving(self, cell: CellStandIn, since: float, what: str) -> Optional[float]:
        cell.spin(RESUME_LIMIT_S, until=lambda: first_motion(cell.twists, since) is not None)
        moved = first_motion(cell.twists, since)
        return None if moved is None else moved - since

    def _dry_run(self, cell: CellStandIn, policy: NodeProcess) -> None:
        self.progress('dry_run')
        started = time.monotonic()
        ok = cell.spin(90.0, until=lambda: first_motion(cell.dry_twists, started) is not None)
        cell.spin(1.0)
        commanded = len(cell.twists)
        enabled_at = cell.set_enabled(True)
        resume = self._wait_moving(cell, enabled_at, 'enable')
        self.results.append(ScenarioResult(
            'dry_run', 'the policy node starts disabled (robot graph default)',
            passed=ok and commanded == 0 and resume is not None,
            rule='no command twist before ~/enable true; motion within '
                 f'{RESUME_LIMIT_S:g} s after it', time_to_resume_s=resume,
            figures={'dry_run_twists_seen': len(cell.dry_twists),
                     'command_twists_before_enable': commanded},
            notes='' if ok else 'the policy never acted in the dry run'))

    def _stop_then_resume(self, cell: CellStandIn, name: str, fault: str, rule_limit: float,
                          rule: str, make_fault: Callable[[], float],
                          recover: Callable[[], float], **figures: Any) -> ScenarioResult:
        self.progress(name)
        cell.spin(RESUME_LIMIT_S, until=lambda: first_motion(cell.twists,
                                                             time.monotonic() - 0.2) is not None)
        at = make_fault()
        self._observe(cell)
        stopped = stop_time(cell.twists, at, time.monotonic())
        after = [v for t, v in cell.twists if stopped is not None and t > stopped]
        recovered_at = recover()
        resume = self._wait_moving(cell, recovered_at, name)
        stop = None if stopped is None else stopped - at
        result = ScenarioResult(
            name, fault, passed=(stop is not None and stop <= rule_limit and not any(after)
                                 and resume is not None),
            rule=rule, time_to_stop_s=stop, time_to_resume_s=resume,
            figures={'limit_s': rule_limit, 'motion_after_stop': int(sum(v > 0 for v in after)),
                     **figures})
        self.results.append(result)
        return result

    def _enable_false(self, cell: CellStandIn, period: float) -> None:
        limit = period + TRANSPORT_MARGIN_S
        self._stop_then_resume(
            cell, 'enable_false', '~/enable false while commanding', limit,
            f'zero (or silence) within one control period ({period:g} s) + transport',
            lambda: cell.set_enabled(False), lambda: cell.set_enabled(True))

    def _state_silent(self, cell: CellStandIn, period: float, max_age: float) -> None:
        limit = max_age + period + TRANSPORT_MARGIN_S

        def fault() -> float:
            cell.publish_state = False
            return time.monotonic()

        def recover() -> float:
            cell.publish_state = True
            return time.monotonic()

        self._stop_then_resume(
            cell, 'state_silent', 'the end-effector pose publisher stops', limit,
            f'stop within max_state_age_s ({max_age:g}) + one control period + transport',
            fault, recover)

    def _camera_killed(self, cell: CellStandIn, camera: NodeProcess, env: dict[str, str],
                       log: Path, frames: Path, period: float, max_age: float) -> NodeProcess:
        limit = max_age + period + TRANSPORT_MARGIN_S
        replacement: list[NodeProcess] = []

        def fault() -> float:
            at = time.monotonic()
            camera.kill()
            return at

        def recover() -> float:
            replacement.append(self._camera(env, log, frames))
            return time.monotonic()

        self._stop_then_resume(
            cell, 'camera_killed', 'SIGKILL of the camera node mid-episode', limit,
            f'stop within max_image_age_s ({max_age:g}) + one control period + transport; '
            'resume with a new camera process', fault, recover)
        return replacement[0]

    def _instruction_change(self, cell: CellStandIn, period: float, instruction: str) -> None:
        from std_msgs.msg import String

        def fault() -> float:
            cell.instruction_pub.publish(String(data=''))
            return time.monotonic()

        def recover() -> float:
            cell.instruction_pub.publish(String(data=instruction))
            return time.monotonic()

        self._stop_then_resume(
            cell, 'instruction_change', 'the instruction is cleared mid-episode, then a new '
            'one is sent', period + TRANSPORT_MARGIN_S,
            'stop within one control period + transport; the new task commands motion',
            fault, recover)

    def _policy_killed(self, cell: CellStandIn, policy: NodeProcess, env: dict[str, str],
                       log: Path) -> NodeProcess:
        self.progress('policy_killed')
        cell.spin(RESUME_LIMIT_S, until=lambda: first_motion(cell.twists,
                                                             time.monotonic() - 0.2) is not None)
        at = time.monotonic()
        policy.kill()
        self._observe(cell)
        stopped = stop_time(cell.twists, at, time.monotonic())
        restarted = self._policy(env, log)
        began = time.monotonic()
        acting = cell.spin(90.0, until=lambda: first_motion(cell.dry_twists, began) is not None)
        cell.spin(2.0)
        before_enable = [v for t, v in cell.twists if t > began]
        enabled_at = cell.set_enabled(True)
        resume = self._wait_moving(cell, enabled_at, 'policy restart')
        stop = None if stopped is None else stopped - at
        self.results.append(ScenarioResult(
            'policy_killed', 'SIGKILL of the policy node, then a new one', rule=(
                'the stream stops at once (Servo halts after its timeout); the new node '
                'commands nothing until ~/enable true'),
            passed=(stop is not None and stop <= SERVO_TIMEOUT_S + TRANSPORT_MARGIN_S
                    and acting and not before_enable and resume is not None),
            time_to_stop_s=stop, time_to_resume_s=resume,
            figures={'command_twists_before_enable': len(before_enable),
                     'restart_to_acting_s': round(
                         (first_motion(cell.dry_twists, began) or began) - began, 3)}))
        return restarted

    def _recorder_killed(self, cell: CellStandIn, env: dict[str, str], log: Path,
                         bag: Path) -> None:
        from vla_align.data import ros_messages as rm
        from vla_align.data.bag_io import read_bag_messages

        self.progress('recorder_killed')
        recorder = NodeProcess('record', {'output': str(bag), 'topics': [COUNTER_TOPIC],
                                          'flush_period_s': 0.5}, log, env)
        cell.spin(30.0, until=lambda: cell.counter_pub.get_subscription_count() > 0)
        cell.spin(1.0)
        cell.counter_on = True
        first = cell.counter
        cell.spin(5.0)
        published = cell.counter - first
        killed_at = time.monotonic()
        recorder.kill()
        cell.counter_on = False
        try:
            messages = read_bag_messages(bag, {COUNTER_TOPIC: rm.STRING})[COUNTER_TOPIC]
            numbers = [int(m.data) for _t, m in messages if int(m.data) >= first]
            error = ''
        except ValueError as exc:
            numbers, error = [], str(exc)
        read_back = len(numbers)
        lost = published - read_back
        lost_s = lost / COUNTER_RATE_HZ
        gaps = int(sum(b - a - 1 for a, b in zip(numbers, numbers[1:], strict=False)))
        self.results.append(ScenarioResult(
            'recorder_killed', 'SIGKILL of `vla-align record` after 5 s at 100 messages/s',
            passed=not error and lost_s <= 1.0 and gaps == 0,
            rule='at most the last second lost, no gap before it; the bag opens with the '
                 "project's tools", figures={
                     'published': published, 'read_back': read_back, 'lost': lost,
                     'lost_s': round(lost_s, 3), 'gaps': gaps,
                     'kill_to_end_of_publishing_s': round(time.monotonic() - killed_at, 3)},
            notes=error))

    # -- report ---------------------------------------------------------------------------------
    def report(self, policy_exit: Optional[int], policy_log: str) -> dict[str, Any]:
        return {'config': {'checkpoint': self.config.checkpoint,
                           'servo_timeout_s': SERVO_TIMEOUT_S,
                           'transport_margin_s': TRANSPORT_MARGIN_S,
                           'state_rate_hz': STATE_RATE_HZ},
                'scenarios': [asdict(r) for r in self.results],
                'passed': all(r.passed for r in self.results) and bool(self.results),
                'policy_exit_status': policy_exit,
                'policy_tracebacks': policy_log.count('Traceback')}
