"""policy_node: newest camera frame + current instruction -> one safe 7-DoF action per step.

Subscribes /camera/image_raw (sensor QoS, newest frame only), /vla/instruction (latched) and,
for proprioception, /vla/ee_pose and /joint_states. Publishes /vla/action (the canonical
Float32MultiArray), /vla/ee_twist (TwistStamped *velocities* = delta x control_rate, in
``base_frame``, stamped with the stamp of the image the action was computed from; holds carry
the current time), /vla/gripper, /vla/alignment and /diagnostics.

When it runs: with ``trigger: frame`` (default) each new frame is acted on as soon as it
arrives, at most ``control_rate`` times a second (``pacing.FramePacer``); the subscription
callback only caches the frame and wakes a guard condition, whose callback does the work. With
``trigger: timer`` a timer at ``control_rate`` acts on the newest frame (and skips a tick when
no new frame came). In both modes the control timer publishes holds while the camera is
silent, so the output never simply stops.

Tasks: every /vla/instruction message starts a task, the same text again included (a person
re-sending an instruction after a failed attempt). A task starts from the robot as measured:
the gripper state fed to the model and kept by holds is the measured opening, not the previous
task's last command, and the rate limiter restarts; the text is encoded only when it changed.

Safety (``safety.SafetyGate``): output clamped to the limits and rate limited; an explicit
hold (zero motion, gripper unchanged) when the image is stale or cannot be decoded, no usable
instruction is set, the model fails or returns non-finite values, or (with
``refuse_ungrounded``) the alignment is below threshold. Each change of state is logged once
(a state that recurs within ``log_repeat_period_s`` is only counted) and shown in /diagnostics.

Malformed messages (an image with the wrong size or encoding, an instruction that is too long
or not printable text, a pose with NaN or a non-unit quaternion, joint states with missing or
non-finite positions, a misshaped expert action) are never acted on: each is counted per kind
in /diagnostics (``bad_inputs``) and logged the first time, then at most once per
``log_repeat_period_s``. A refused instruction clears the current one (the node holds rather
than carry on with an older task); a refused pose forgets the last one (a policy that needs
proprioception holds until a valid pose arrives).
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
import time
from typing import Optional

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, Float32MultiArray, String

from vla_align.actions import ActionLimits
from vla_align.ros import qos, topics
from vla_align.ros.conversions import (
    ImageConversionError,
    StateConversionError,
    action_to_multiarray,
    action_to_twist,
    diagnostic_array,
    diagnostic_status,
    gripper_msg,
    image_to_rgb,
    joint_positions,
    multiarray_to_action,
    stamp_to_seconds,
    valid_pose_arrays,
)
from vla_align.ros.instructions import InstructionError, normalize_instruction
from vla_align.ros.metrics import LatencyWindow, RateMeter
from vla_align.ros.pacing import FramePacer
from vla_align.ros.params import (
    StartupError,
    declare_bool,
    declare_float,
    declare_int,
    declare_str,
    declare_str_list,
)
from vla_align.ros.runner import run_node
from vla_align.ros.safety import (
    BadInputLog,
    Decision,
    HoldReason,
    SafetyConfig,
    SafetyGate,
    StateChangeReporter,
)
from vla_align.ros.sources import (
    RANDOM_CONFIGS,
    SOURCE_KINDS,
    ActionSource,
    ExpertRelaySource,
    SourceNotReady,
    load_policy_source,
)

NODE_NAME = 'policy_node'
TRIGGERS = ('frame', 'timer')
DEVICES = ('auto', 'cpu', 'cuda')
#: Hold reasons that are faults of the system (ERROR) rather than missing inputs (WARN).
ERROR_REASONS = (HoldReason.STALE_IMAGE, HoldReason.BAD_IMAGE, HoldReason.SOURCE_ERROR,
                 HoldReason.NON_FINITE)


@dataclass(frozen=True)
class PolicyNodeSettings:
    source: str
    checkpoint: str
    random_config: str
    device: str
    torch_threads: int
    control_rate: float
    trigger: str
    base_frame: str
    use_proprioception: bool
    initial_gripper: float
    gripper_joints: tuple[str, ...]
    gripper_open_width: float
    publish_hold: bool
    diagnostics_period_s: float
    max_image_pixels: int
    max_instruction_length: int
    log_repeat_period_s: float
    safety: SafetyConfig


@dataclass
class CachedFrame:
    msg: Image
    arrival: float  # time.monotonic() when the callback ran
    seq: int


@dataclass
class Counters:
    frames_received: int = 0
    frames_used: int = 0
    ticks_without_new_frame: int = 0
    actions: int = 0
    holds: int = 0
    clamped: int = 0
    rate_limited: int = 0
    ungrounded: int = 0
    errors: int = 0
    bad_messages: int = 0
    hold_reasons: dict[str, int] = field(default_factory=dict)


class PolicyNode(Node):
    """The policy as a ROS 2 node; ``source`` replaces the configured one (tests, benches)."""

    def __init__(self, source: Optional[ActionSource] = None, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.counters = Counters()  # first: destroy_node reads it even after a failed start
        self.settings = self._declare_settings()
        s = self.settings
        self._gate = SafetyGate(s.safety, initial_gripper=s.initial_gripper)
        self._expert: Optional[ExpertRelaySource] = None
        if source is not None:
            self._source: ActionSource = source
        elif s.source == 'expert':
            self._expert = ExpertRelaySource(max_age_s=s.safety.max_image_age_s)
            self._source = self._expert
        else:
            self._source = load_policy_source(s.source, s.checkpoint, s.device, s.random_config,
                                              s.torch_threads)
        self._needs_state = bool(getattr(self._source, 'needs_state', False))
        if self._needs_state and not s.use_proprioception:
            raise StartupError(f'{NODE_NAME}: this policy was trained with proprioception; '
                               f'set use_proprioception: true and publish /vla/ee_pose')

        # Newest inputs, written by callbacks only.
        self._frame: Optional[CachedFrame] = None
        self._used_seq = 0
        self._instruction = ''
        self._instruction_refused = False
        self._instruction_seq = 0  # +1 per instruction message: each one starts a task
        self._task_seq = 0  # the instruction message the current task started from
        self._encoded: Optional[str] = None
        self._ee_pose: Optional[tuple[np.ndarray, np.ndarray]] = None
        self._measured_gripper: Optional[float] = None
        self._has_commanded = False

        self._pacer = FramePacer(s.control_rate)
        self._latency = LatencyWindow()  # frame arrival -> action published
        self._stamp_latency = LatencyWindow()  # image stamp -> action published (same clock)
        self._action_rate = RateMeter()
        self._frame_rate = RateMeter()
        self._last_alignment = math.nan
        period = s.log_repeat_period_s
        self._state_log = StateChangeReporter('acting again: inputs are fresh and usable', period)
        self._grounding_log = StateChangeReporter('instruction is grounded again', period)
        self._bad_inputs = BadInputLog(period)
        self._hold_reason: Optional[HoldReason] = HoldReason.NO_IMAGE

        self._action_pub = self.create_publisher(Float32MultiArray, topics.ACTION, qos.COMMANDS)
        self._twist_pub = self.create_publisher(TwistStamped, topics.EE_TWIST, qos.COMMANDS)
        self._gripper_pub = self.create_publisher(Float32, topics.GRIPPER, qos.COMMANDS)
        self._alignment_pub = self.create_publisher(Float32, topics.ALIGNMENT, qos.DEFAULT)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS,
                                                      qos.DEFAULT)
        self.create_subscription(Image, topics.IMAGE, self._on_image, qos.SENSOR_DATA)
        self.create_subscription(String, topics.INSTRUCTION, self._on_instruction, qos.LATCHED)
        if s.use_proprioception:
            self.create_subscription(PoseStamped, topics.EE_POSE, self._on_ee_pose, qos.DEFAULT)
            self.create_subscription(JointState, topics.JOINT_STATES, self._on_joint_states,
                                     qos.DEFAULT)
        if self._expert is not None:
            self.create_subscription(Float32MultiArray, topics.EXPERT_ACTION,
                                     self._on_expert_action, qos.COMMANDS)
        self._frame_guard = (self.create_guard_condition(self._on_frame_guard)
                             if s.trigger == 'frame' else None)
        self._control_timer = self.create_timer(1.0 / s.control_rate, self._on_control_tick)
        self._diagnostics_timer = self.create_timer(s.diagnostics_period_s,
                                                    self._publish_diagnostics)
        source_name = s.source if source is None else type(source).__name__
        self.get_logger().info(
            f'source={source_name} trigger={s.trigger} control_rate={s.control_rate:g} Hz '
            f'max_image_age={s.safety.max_image_age_s:g} s limits: '
            f'{s.safety.limits.max_translation:g} m, {s.safety.limits.max_rotation:g} rad '
            f'per step; holds are {"published" if s.publish_hold else "not published"}')

    # -- parameters -----------------------------------------------------------------------------
    def _declare_settings(self) -> PolicyNodeSettings:
        source = declare_str(self, 'source', 'checkpoint',
                             'what produces actions: checkpoint (trained policy), random '
                             '(untrained tiny policy, for timing), expert (relay the sim '
                             "expert's /vla/expert_action; simulation only)", SOURCE_KINDS)
        checkpoint = declare_str(self, 'checkpoint', '',
                                 'path of the trained checkpoint (source: checkpoint)')
        random_config = declare_str(self, 'random_config', 'tiny',
                                    'architecture of source: random (tiny, or default = the '
                                    'full-size PolicyConfig)', RANDOM_CONFIGS)
        device = declare_str(self, 'device', 'auto', 'torch device for the policy', DEVICES)
        torch_threads = declare_int(self, 'torch_threads', 1,
                                    'torch intra-op CPU threads (0: torch default); 1 keeps '
                                    'the DDS threads responsive on small machines', 0, 256)
        control_rate = declare_float(self, 'control_rate', 10.0,
                                     'actions per second (Hz); each action is a delta for one '
                                     'control period', 0.5, 1000.0)
        trigger = declare_str(self, 'trigger', 'frame',
                              'frame: act on each new frame at most control_rate times per '
                              'second (lowest latency); timer: act on the newest frame at '
                              'each control tick', TRIGGERS)
        max_image_age = declare_float(self, 'max_image_age_s', 0.5,
                                      'hold when the newest frame arrived longer ago (s)',
                                      0.001, 60.0)
        max_translation = declare_float(self, 'max_translation', 0.03,
                                        'clamp |dx|,|dy|,|dz| per step (m)', 1e-6, 1.0)
        max_rotation = declare_float(self, 'max_rotation', 0.15,
                                     'clamp |droll|,|dpitch|,|dyaw| per step (rad)', 1e-6, 3.2)
        max_translation_change = declare_float(
            self, 'max_translation_change', 0.03,
            'largest change of a translation component between consecutive actions (m); '
            '0 disables', 0.0, 1.0)
        max_rotation_change = declare_float(
            self, 'max_rotation_change', 0.15,
            'largest change of a rotation component between consecutive actions (rad); '
            '0 disables', 0.0, 6.4)
        alignment_threshold = declare_float(
            self, 'alignment_threshold', 0.1,
            'V-L alignment (cosine) below which the instruction is flagged as not grounded in '
            'the scene', -1.0, 1.0)
        refuse_ungrounded = declare_bool(self, 'refuse_ungrounded', False,
                                         'hold instead of acting when alignment is below '
                                         'alignment_threshold')
        base_frame = declare_str(self, 'base_frame', 'panda_link0',
                                 'frame_id of /vla/ee_twist (the robot base)')
        use_proprioception = declare_bool(self, 'use_proprioception', True,
                                          'subscribe /vla/ee_pose and /joint_states and pass '
                                          'the state vector to the policy')
        initial_gripper = declare_float(self, 'initial_gripper', 0.0,
                                        'gripper command assumed before any is known '
                                        '(0 open, 1 closed)', 0.0, 1.0)
        gripper_joints = declare_str_list(self, 'gripper_joints',
                                          ['panda_finger_joint1', 'panda_finger_joint2'],
                                          'joint_states names whose positions add up to the '
                                          'gripper opening')
        gripper_open_width = declare_float(self, 'gripper_open_width', 0.08,
                                           'sum of gripper_joints positions when fully open (m)',
                                           1e-4, 1.0)
        publish_hold = declare_bool(self, 'publish_hold', True,
                                    'publish explicit zero-motion holds (true) or nothing '
                                    '(false) when it is not safe to act')
        diagnostics_period = declare_float(self, 'diagnostics_period_s', 1.0,
                                           'period of /diagnostics messages (s)', 0.05, 60.0)
        max_image_pixels = declare_int(self, 'max_image_pixels', 4096 * 4096,
                                       'larger camera images are refused (hold) instead of '
                                       'decoded', 1, 2 ** 31)
        max_instruction_length = declare_int(self, 'max_instruction_length', 200,
                                             'longer instructions are refused (hold), in '
                                             'characters after whitespace normalisation',
                                             1, 100000)
        log_repeat_period_s = declare_float(self, 'log_repeat_period_s', 10.0,
                                            'a hold reason or a kind of bad message is logged '
                                            'again at most this often (s); the rest are '
                                            'counted in /diagnostics', 0.0, 3600.0)
        return PolicyNodeSettings(
            source=source, checkpoint=checkpoint, random_config=random_config, device=device,
            torch_threads=torch_threads,
            control_rate=control_rate,
            trigger=trigger, base_frame=base_frame, use_proprioception=use_proprioception,
            initial_gripper=initial_gripper, gripper_joints=tuple(gripper_joints),
            gripper_open_width=gripper_open_width, publish_hold=publish_hold,
            diagnostics_period_s=diagnostics_period, max_image_pixels=max_image_pixels,
            max_instruction_length=max_instruction_length,
            log_repeat_period_s=log_repeat_period_s,
            safety=SafetyConfig(
                limits=ActionLimits(max_translation=max_translation, max_rotation=max_rotation),
                max_image_age_s=max_image_age, max_translation_change=max_translation_change,
                max_rotation_change=max_rotation_change,
                alignment_threshold=alignment_threshold, refuse_ungrounded=refuse_ungrounded))

    # -- callbacks: cache only ------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        now = time.monotonic()
        seq = (self._frame.seq if self._frame else 0) + 1
        self._frame = CachedFrame(msg=msg, arrival=now, seq=seq)
        self.counters.frames_received += 1
        self._frame_rate.tick(now)
        if self._frame_guard is not None:
            self._frame_guard.trigger()

    def _on_instruction(self, msg: String) -> None:
        self._instruction_seq += 1
        try:
            self._instruction = normalize_instruction(msg.data,
                                                      self.settings.max_instruction_length)
            self._instruction_refused = False
        except InstructionError as exc:
            self._instruction, self._instruction_refused = '', True
            self._bad_input('instruction', str(exc))

    def _on_ee_pose(self, msg: PoseStamped) -> None:
        try:
            self._ee_pose = valid_pose_arrays(msg)
        except StateConversionError as exc:
            self._ee_pose = None  # the robot state is unknown now, not what it was
            self._bad_input('ee_pose', str(exc))

    def _on_joint_states(self, msg: JointState) -> None:
        try:
            positions = joint_positions(msg, self.settings.gripper_joints)
        except StateConversionError as exc:
            self._bad_input('joint_states', str(exc))
            return
        if positions is not None:  # a joint_states without the gripper joints is normal
            self._measured_gripper = float(np.clip(
                1.0 - positions.sum() / self.settings.gripper_open_width, 0.0, 1.0))

    def _on_expert_action(self, msg: Float32MultiArray) -> None:
        try:
            action = multiarray_to_action(msg)
        except ValueError as exc:
            self._bad_input('expert_action', str(exc))
            return
        self._expert.offer(action, time.monotonic())

    def _bad_input(self, kind: str, reason: str, log: bool = True) -> None:
        """Count a malformed message; log it unless this kind was logged recently."""
        self.counters.bad_messages += 1
        line = self._bad_inputs.report(kind, reason, time.monotonic())
        if line is not None and log:
            self.get_logger().warning(line)

    # -- work -----------------------------------------------------------------------------------
    def _on_frame_guard(self) -> None:
        frame = self._frame
        if frame is None or frame.seq == self._used_seq:
            return
        if self._pacer.ready(frame.arrival):
            self._act(time.monotonic())

    def _on_control_tick(self) -> None:
        now = time.monotonic()
        if self.settings.trigger == 'timer':
            self._act(now)
            return
        # Frame-triggered: the timer only keeps holds flowing while frames do not arrive.
        age = None if self._frame is None else now - self._frame.arrival
        if age is None or age > self.settings.safety.max_image_age_s:
            self._act(now)

    def _act(self, now: float) -> None:
        """One control step on the newest frame: publish an action or a hold."""
        if self._task_seq != self._instruction_seq:
            self._start_task()
        frame = self._frame
        age = None if frame is None else now - frame.arrival
        problem = self._gate.input_problem(age, self._instruction, self._instruction_refused)
        if problem is not None:
            detail = '' if age is None else f'newest frame is {age:.2f} s old'
            self._publish(self._gate.hold(problem, detail if problem is HoldReason.STALE_IMAGE
                                          else ''), stamp=None)
            return
        if frame.seq == self._used_seq:
            self.counters.ticks_without_new_frame += 1
            return
        self._used_seq = frame.seq
        self.counters.frames_used += 1
        decision = self._decide(frame, now)
        if decision.hold:  # a hold is not an answer to this frame: stamped with the time
            self._publish(decision, stamp=None)
        else:
            self._publish(decision, stamp=frame.msg.header.stamp, arrival=frame.arrival)

    def _decide(self, frame: CachedFrame, now: float) -> Decision:
        try:
            rgb = image_to_rgb(frame.msg, self.settings.max_image_pixels)
        except ImageConversionError as exc:
            self._bad_input('image', str(exc), log=False)  # the BAD_IMAGE hold says it
            return self._gate.hold(HoldReason.BAD_IMAGE, str(exc))
        if not self._has_commanded and self._measured_gripper is not None:
            self._gate.set_gripper(self._measured_gripper)
        try:
            if self._instruction != self._encoded:
                self._source.encode_instruction(self._instruction)
                self._encoded = self._instruction
            if self._expert is not None:
                self._expert.now = now
            state = self._state_vector()
            if state is None and self._needs_state:
                return self._gate.hold(HoldReason.NO_STATE)
            out = self._source.step(rgb, self._instruction, state)
        except SourceNotReady as exc:
            return self._gate.hold(HoldReason.SOURCE_NOT_READY, str(exc))
        except Exception as exc:  # noqa: BLE001 - any model failure must end in a hold
            self.counters.errors += 1
            return self._gate.hold(HoldReason.SOURCE_ERROR, f'{type(exc).__name__}: {exc}')
        if out.alignment is not None and math.isfinite(out.alignment):
            self._last_alignment = out.alignment
            self._alignment_pub.publish(Float32(data=float(out.alignment)))
        return self._gate.accept(out.action, out.alignment)

    def _start_task(self) -> None:
        """A new instruction message starts a task from the robot as measured.

        Nothing of the previous task carries over: not its last gripper command (fed back to
        the model as state, and kept by holds), not the rate limiter's memory. Without this a
        pick that followed a reach (whose gripper ends closed) started "holding" nothing, and
        holds published before the first frame of the new task closed the gripper.
        """
        self._task_seq = self._instruction_seq
        self._has_commanded = False
        if self._measured_gripper is not None:
            self._gate.set_gripper(self._measured_gripper)
        else:
            self._gate.set_gripper(self._gate.gripper)  # restart the rate limiter only

    def _state_vector(self) -> Optional[np.ndarray]:
        """ee position (3), quaternion xyzw (4), last gripper command (1); None if unknown."""
        if not self.settings.use_proprioception or self._ee_pose is None:
            return None
        position, quaternion = self._ee_pose
        return np.concatenate([position, quaternion, [self._gate.gripper]]).astype(np.float32)

    def _publish(self, decision: Decision, stamp: Optional[Time],
                 arrival: Optional[float] = None) -> None:
        self._report(decision)
        if decision.hold:
            self.counters.holds += 1
            reason = decision.reason.name
            self.counters.hold_reasons[reason] = self.counters.hold_reasons.get(reason, 0) + 1
            if not self.settings.publish_hold:
                return
        else:
            self._has_commanded = True
            self.counters.actions += 1
            self.counters.clamped += decision.clamped
            self.counters.rate_limited += decision.rate_limited
            self.counters.ungrounded += decision.ungrounded
        if stamp is None:
            stamp = self.get_clock().now().to_msg()
        self._action_pub.publish(action_to_multiarray(decision.action))
        self._twist_pub.publish(action_to_twist(decision.action, self.settings.control_rate,
                                                stamp, self.settings.base_frame))
        self._gripper_pub.publish(gripper_msg(decision.action))
        done = time.monotonic()
        self._action_rate.tick(done)
        if arrival is not None:
            self._latency.add(done - arrival)
            now_ros = self.get_clock().now().nanoseconds * 1e-9
            self._stamp_latency.add(now_ros - stamp_to_seconds(stamp))

    def _report(self, decision: Decision) -> None:
        """Log each change of state once (never at the control rate)."""
        self._hold_reason = decision.reason
        now = time.monotonic()
        message = self._state_log.update(decision.reason, now)
        if message is not None:
            if decision.hold:
                detail = f' ({decision.detail})' if decision.detail else ''
                self.get_logger().warning(message + detail)
            else:
                self.get_logger().info(message)
        if not decision.hold:
            flag = HoldReason.UNGROUNDED if decision.ungrounded else None
            message = self._grounding_log.update(flag, now)
            if message is not None:
                text = (f'instruction {self._instruction!r} may not be grounded in the scene: '
                        f'alignment {self._last_alignment:.3f} < '
                        f'{self.settings.safety.alignment_threshold:.3f} (acting anyway; set '
                        f'refuse_ungrounded to hold)' if flag else message)
                # rclpy pins a severity to each call site: one site per severity.
                if flag:
                    self.get_logger().warning(text)
                else:
                    self.get_logger().info(text)

    def _publish_diagnostics(self) -> None:
        now = time.monotonic()
        c = self.counters
        reason = self._hold_reason
        if reason is None:
            level, message = DiagnosticStatus.OK, 'acting'
        else:
            level = DiagnosticStatus.ERROR if reason in ERROR_REASONS else DiagnosticStatus.WARN
            message = f'holding: {reason.value}'
        latency = self._latency.summary()
        stamp_latency = self._stamp_latency.summary()
        age = None if self._frame is None else now - self._frame.arrival
        values = {
            'source': self.settings.source,
            'instruction': self._instruction,
            'action_rate_hz': self._action_rate.rate(now),
            'frame_rate_hz': self._frame_rate.rate(now),
            'latency_p50_ms': latency.p50_ms,
            'latency_p99_ms': latency.p99_ms,
            'stamp_latency_p50_ms': stamp_latency.p50_ms,
            'image_age_s': math.nan if age is None else age,
            'image_stale': age is None or age > self.settings.safety.max_image_age_s,
            'instruction_set': bool(self._instruction),
            'frames_received': c.frames_received,
            'frames_dropped': c.frames_received - c.frames_used,
            'ticks_without_new_frame': c.ticks_without_new_frame,
            'actions_published': c.actions,
            'holds': c.holds,
            'hold_reasons': ','.join(f'{k}:{v}' for k, v in sorted(c.hold_reasons.items())),
            'clamped': c.clamped,
            'rate_limited': c.rate_limited,
            'ungrounded': c.ungrounded,
            'alignment': self._last_alignment,
            'errors': c.errors,
            'bad_messages': c.bad_messages,
            'bad_inputs': self._bad_inputs.summary(),
            'instruction_refused': self._instruction_refused,
        }
        status = diagnostic_status(f'{self.get_name()}: policy', self.settings.source, level,
                                   message, values)
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def destroy_node(self) -> None:
        c = self.counters
        self.get_logger().info(f'stopping: {c.actions} actions, {c.holds} holds, '
                               f'{c.frames_received} frames ({c.frames_used} used), '
                               f'{c.errors} errors')
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    return run_node(PolicyNode, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
