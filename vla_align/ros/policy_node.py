"""policy_node: newest camera frame + current instruction -> one safe 7-DoF action per step.

Subscribes /camera/image_raw (sensor QoS, newest frame only), /vla/instruction (latched) and,
for proprioception, the end-effector pose (``state_source``: /vla/ee_pose, TF, or /joint_states
+ the URDF; ``ros.robot_state``) and /joint_states (the measured gripper). Publishes what a
robot cell takes (``ros.command_output``): MoveIt Servo twists on /servo_node/delta_twist_cmds
(TwistStamped, delta x control_rate, in ``base_frame``, stamped at publish time, streamed at
``command_rate_hz``), the gripper's forward command controller input, /vla/action (the
canonical Float32MultiArray) with /vla/action_frame (the header of the image it answers), and
/vla/gripper, /vla/alignment and /diagnostics. In a dry run (``start_enabled: false`` until
``~/enable``) the commands go to /vla/dry_run/* instead.

When it runs: with ``trigger: frame`` (default) each new frame is acted on as soon as it
arrives, at most ``pace_rate_hz`` times a second (``pacing.FramePacer``); the subscription
callback only caches the frame and wakes the inference thread (``InferenceWorker``), which does
the work. With ``trigger: timer`` a timer at ``control_rate`` wakes it to act on the newest
frame (a tick without a new frame is skipped). Subscriptions, timers and services stay on the
single-threaded executor, so holds (the control timer publishes them while the camera is
silent), the Servo command stream, diagnostics and ``~/enable`` keep their rate during a slow
model step.

Tasks: every /vla/instruction message starts a task, the same text again included (a person
re-sending an instruction after a failed attempt). A task starts from the robot as measured:
the gripper state fed to the model and kept by holds is the measured opening, not the previous
task's last command, and the rate limiter restarts; the text is encoded only when it changed.

Safety (``safety.SafetyGate``): output clamped to the limits and rate limited; an explicit
hold (zero motion, gripper unchanged) when the image is stale or cannot be decoded, no usable
instruction is set, the model fails or returns non-finite values, or (with
``refuse_ungrounded``) the grounding score is below threshold (the V-L alignment joined with
the instruction's familiarity where the checkpoint is calibrated for it:
`vla_align.evaluation.grounding`). Each change of state is logged once
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
import threading
import time
from typing import Any, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float32, Float32MultiArray, Header, String
from std_srvs.srv import SetBool

from vla_align.ros import deployment_checks as checks
from vla_align.ros import qos, topics
from vla_align.ros.command_output import CommandOutput
from vla_align.ros.conversions import (
    ImageConversionError,
    StateConversionError,
    diagnostic_array,
    diagnostic_status,
    image_to_rgb,
    joint_positions,
    multiarray_to_action,
    stamp_to_seconds,
)
from vla_align.ros.inference_worker import InferenceWorker
from vla_align.ros.instructions import InstructionError, normalize_instruction
from vla_align.ros.metrics import LatencyWindow, RateMeter
from vla_align.ros.pacing import FramePacer
from vla_align.ros.params import (
    StartupError,
)
from vla_align.ros.policy_settings import declare_policy_settings
from vla_align.ros.robot_state import (
    JointStateSource,
    NoStateYet,
    PoseStateSource,
    StateProblem,
    TfStateSource,
)
from vla_align.ros.runner import run_node
from vla_align.ros.safety import (
    BadInputLog,
    Decision,
    HoldReason,
    SafetyGate,
    StateChangeReporter,
)
from vla_align.ros.sources import (
    ActionSource,
    ExpertRelaySource,
    PolicySource,
    SourceNotReady,
    load_policy_source,
)

NODE_NAME = 'policy_node'
#: Hold reasons that are faults of the system (ERROR) rather than missing inputs (WARN).
ERROR_REASONS = (HoldReason.STALE_IMAGE, HoldReason.BAD_IMAGE, HoldReason.SOURCE_ERROR,
                 HoldReason.NON_FINITE, HoldReason.STALE_STATE)


@dataclass
class CachedFrame:
    msg: Image
    arrival: float  # time.monotonic() when the callback ran
    seq: int
    time_s: float  # the instant it shows: header stamp (arrival if unset), ROS s


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
    workspace_limited: int = 0
    errors: int = 0
    bad_messages: int = 0
    hold_reasons: dict[str, int] = field(default_factory=dict)


class PolicyNode(Node):
    """The policy as a ROS 2 node; ``source`` replaces the configured one (tests, benches)."""

    def __init__(self, source: Optional[ActionSource] = None, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.counters = Counters()  # first: destroy_node reads it even after a failed start
        self.settings = checks.with_grounding(declare_policy_settings(self), self.get_logger())
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
                                              s.torch_threads, s.control_rate, s.execution,
                                              lockstep=s.pace_rate > s.control_rate)
        self._deployment = checks.check_deployment(self._source, s, self.get_logger())
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
        self._state_source = self._make_state_source() if s.use_proprioception else None
        self._camera_shape: Optional[tuple[int, ...]] = None
        self._camera_refused = ''  # a camera the checkpoint cannot serve: hold for good
        self._measured_gripper: Optional[float] = None
        self._has_commanded = False
        self._pairing_since: Optional[float] = None  # a frame waits for its state since

        self._pacer = FramePacer(s.pace_rate)
        self._latency = LatencyWindow()  # frame arrival -> action published
        self._stamp_latency = LatencyWindow()  # image stamp -> action published (same clock)
        self._action_rate = RateMeter()
        self._frame_rate = RateMeter()
        self._last_alignment = math.nan
        self._last_grounding = math.nan  # what the gate judged: grounding score, else alignment
        period = s.log_repeat_period_s
        self._state_log = StateChangeReporter('acting again: inputs are fresh and usable', period)
        self._grounding_log = StateChangeReporter('instruction is grounded again', period)
        self._bad_inputs = BadInputLog(period)
        self._hold_reason: Optional[HoldReason] = HoldReason.NO_IMAGE

        # Inference runs on its own thread, everything else on the executor's; ``_lock`` guards
        # the gate and the publishers between the two.
        self._lock = threading.RLock()
        self._worker = InferenceWorker(
            self._on_frame_ready if s.trigger == 'frame' else self._on_timer_step,
            self._on_worker_error)
        self._output = CommandOutput(self, s.output, s.start_enabled)
        self._enable_changed_at: Optional[float] = None
        self.create_service(SetBool, '~/enable', self._on_enable)
        self._alignment_pub = self.create_publisher(Float32, topics.ALIGNMENT, qos.DEFAULT)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS,
                                                      qos.DEFAULT)
        self.create_subscription(Image, topics.IMAGE, self._on_image, qos.SENSOR_DATA)
        self.create_subscription(String, topics.INSTRUCTION, self._on_instruction, qos.LATCHED)
        if s.use_proprioception:
            if s.state_source == 'pose':
                self.create_subscription(PoseStamped, topics.EE_POSE, self._on_ee_pose,
                                         qos.DEFAULT)
            # Always: the measured gripper opening; with state_source joint_states, the pose.
            self.create_subscription(JointState, topics.JOINT_STATES, self._on_joint_states,
                                     qos.DEFAULT)
        if self._expert is not None:
            self.create_subscription(Float32MultiArray, topics.EXPERT_ACTION,
                                     self._on_expert_action, qos.COMMANDS)
        self._control_timer = self.create_timer(1.0 / s.control_rate, self._on_control_tick)
        self._diagnostics_timer = self.create_timer(s.diagnostics_period_s,
                                                    self._publish_diagnostics)
        self._worker.start()
        source_name = s.source if source is None else type(source).__name__
        self.get_logger().info(
            f'source={source_name} trigger={s.trigger} control_rate={s.control_rate:g} Hz '
            f'max_image_age={s.safety.max_image_age_s:g} s limits: '
            f'{s.safety.limits.max_translation:g} m, {s.safety.limits.max_rotation:g} rad '
            f'per step; holds are {"published" if s.publish_hold else "not published"}; '
            + (f'commanding motion: twists to {self._output.topics["twist"]} at '
               f'{s.output.command_rate_hz:g} Hz, gripper to {self._output.topics["gripper"]}'
               if self._output.enabled else
               f'DRY RUN: would-be commands on {self._output.topics["twist"]}; call '
               f'{self.get_fully_qualified_name()}/enable with true to move'))

    # -- callbacks: cache only ------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        now = time.monotonic()
        seq = (self._frame.seq if self._frame else 0) + 1
        stamp = msg.header.stamp
        self._frame = CachedFrame(msg=msg, arrival=now, seq=seq,
                                  time_s=self._ros_now() if stamp.sec == 0 and
                                  stamp.nanosec == 0 else stamp_to_seconds(stamp))
        self.counters.frames_received += 1
        self._frame_rate.tick(now)
        if self.settings.trigger == 'frame':
            self._worker.wake()

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
        try:  # a refused pose also forgets the last one: the state is unknown now
            self._state_source.offer(msg, self._ros_now())
        except StateProblem as exc:
            self._bad_input('ee_pose', str(exc))
        self._state_arrived()

    def _state_arrived(self) -> None:
        if self._pairing_since is not None:
            self._worker.wake()  # the waiting frame may have its state now

    def _on_joint_states(self, msg: JointState) -> None:
        if self.settings.state_source == 'joint_states' and self._state_source is not None:
            try:
                self._state_source.offer(msg, self._ros_now())
            except StateProblem as exc:
                self._bad_input('joint_states', str(exc))
            self._state_arrived()
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
    def _on_frame_ready(self) -> Optional[float]:
        """Inference thread, ``trigger: frame``: act on a new frame; the seconds after which
        to look again when it waits for its state."""
        frame = self._frame
        if frame is None or frame.seq == self._used_seq:
            return None
        now = time.monotonic()
        wait = self._state_wait_left(frame, now)
        if wait > 0:
            return wait  # the state's callback wakes the thread sooner
        if self._pacer.ready(frame.arrival):
            self._act(now)
        return None

    def _on_timer_step(self) -> None:
        """Inference thread, ``trigger: timer``: one control tick."""
        self._act(time.monotonic())

    def _on_worker_error(self, exc: BaseException) -> None:
        """A failure outside the model step (the step's own failures are holds): hold."""
        with self._lock:
            self.counters.errors += 1
            self._publish(self._gate.hold(HoldReason.SOURCE_ERROR,
                                          f'{type(exc).__name__}: {exc}'), answered=None)

    def _state_wait_left(self, frame: CachedFrame, now: float) -> float:
        """How much longer ``frame``, newer than every state, may wait for its own (s; 0: act).

        A camera and a robot that stamp alike (a simulator, a replayed bag) send each frame's
        pose at about the time of the frame; taking the previous one instead would feed the
        model a pose one period old that training never paired with this picture.
        """
        wait = self.settings.state_pairing_wait_s
        newest = None if self._state_source is None else self._state_source.newest_stamp_s()
        if wait <= 0 or newest is None or newest >= frame.time_s:
            self._pairing_since = None
            return 0.0
        if self._pairing_since is None:
            self._pairing_since = now  # bounded from the first frame that waited
        left = wait - (now - self._pairing_since)
        if left > 0:
            return left
        self._pairing_since = None
        return 0.0

    def _on_control_tick(self) -> None:
        now = time.monotonic()
        if self.settings.trigger == 'timer' or self._pairing_since is not None:
            self._worker.wake()  # a tick; or a frame whose state did not come: act anyway
        if self.settings.trigger == 'timer':
            return
        # Frame-triggered: the timer only keeps holds flowing while frames do not arrive.
        age = None if self._frame is None else now - self._frame.arrival
        if age is None or age > self.settings.safety.max_image_age_s:
            self._act(now)

    def _act(self, now: float) -> None:
        """One control step on the newest frame: publish an action or a hold.

        The model runs outside ``_lock``: a hold from the control timer (stale camera) or a
        change of the enable switch is never kept waiting by inference."""
        with self._lock:
            if self._task_seq != self._instruction_seq:
                self._start_task()
            frame = self._frame
            age = None if frame is None else now - frame.arrival
            problem = self._gate.input_problem(age, self._instruction,
                                               self._instruction_refused)
            if problem is not None:
                detail = '' if age is None else f'newest frame is {age:.2f} s old'
                self._publish(self._gate.hold(problem, detail if problem is
                                              HoldReason.STALE_IMAGE else ''), answered=None)
                return
            if frame.seq == self._used_seq:
                self.counters.ticks_without_new_frame += 1
                return
            self._used_seq = frame.seq
            self.counters.frames_used += 1
            prepared = self._prepare(frame, now)
            if isinstance(prepared, Decision):
                self._publish(prepared, answered=None)
                return
        rgb, state, position = prepared
        decision = self._infer(rgb, state, position, now)
        with self._lock:
            if decision.hold:  # a hold is not an answer to this frame
                self._publish(decision, answered=None)
            else:
                self._publish(decision, answered=frame.msg.header, arrival=frame.arrival)

    def _prepare(self, frame: CachedFrame, now: float):
        """(rgb, state, measured position) for the model, or the hold that stops it."""
        try:
            rgb = image_to_rgb(frame.msg, self.settings.max_image_pixels)
        except ImageConversionError as exc:
            self._bad_input('image', str(exc), log=False)  # the BAD_IMAGE hold says it
            return self._gate.hold(HoldReason.BAD_IMAGE, str(exc))
        self._check_camera(rgb.shape)
        if self._camera_refused:
            return self._gate.hold(HoldReason.DEPLOYMENT, self._camera_refused)
        if not self._has_commanded and self._measured_gripper is not None:
            self._gate.set_gripper(self._measured_gripper)
        if self._expert is not None:
            self._expert.now = now
        if isinstance(self._source, PolicySource):
            self._source.frame_time = frame.time_s
        pose, problem = self._fresh_pose(frame.time_s)
        if pose is None and (self._needs_state or self.settings.safety.workspace is not None
                             and self.settings.use_proprioception):
            reason = HoldReason.STALE_STATE if problem else HoldReason.NO_STATE
            return self._gate.hold(reason, problem)
        state = None
        if pose is not None and self.settings.use_proprioception:
            state = np.concatenate([pose[0], pose[1], [self._gate.gripper]]).astype(np.float32)
        # The model sees the pose of the frame's time; the workspace box judges the step
        # from where the tool is now.
        newest, _ = self._fresh_pose(None) if pose is not None else (None, '')
        return rgb, state, None if newest is None else newest[0]

    def _infer(self, rgb: np.ndarray, state: Optional[np.ndarray],
               position: Optional[np.ndarray], now: float) -> Decision:
        """The model's step (outside the lock), then the safety gate (inside)."""
        try:
            if self._instruction != self._encoded:
                self._source.encode_instruction(self._instruction)
                self._encoded = self._instruction
            out = self._source.step(rgb, self._instruction, state)
        except SourceNotReady as exc:
            with self._lock:
                return self._gate.hold(HoldReason.SOURCE_NOT_READY, str(exc))
        except Exception as exc:  # noqa: BLE001 - any model failure must end in a hold
            with self._lock:
                self.counters.errors += 1
                return self._gate.hold(HoldReason.SOURCE_ERROR, f'{type(exc).__name__}: {exc}')
        with self._lock:
            if out.alignment is not None and math.isfinite(out.alignment):
                self._last_alignment = out.alignment
                self._alignment_pub.publish(Float32(data=float(out.alignment)))
            score = out.alignment if out.grounding is None else out.grounding
            self._last_grounding = math.nan if score is None else score
            return self._gate.accept(out.action, score, position)

    def _start_task(self) -> None:
        """A new instruction message starts a task from the robot as measured.

        Nothing of the previous task carries over: not its last gripper command (fed back to
        the model as state, and kept by holds), not the rate limiter's memory. Without this a
        pick that followed a reach (whose gripper ends closed) started "holding" nothing, and
        holds published before the first frame of the new task closed the gripper.
        """
        self._task_seq = self._instruction_seq
        self._has_commanded = False
        if isinstance(self._source, PolicySource):
            self._source.restart_task()  # no chunk of the last task is executed in this one
        if self._measured_gripper is not None:
            self._gate.set_gripper(self._measured_gripper)
        else:
            self._gate.set_gripper(self._gate.gripper)  # restart the rate limiter only

    def _check_camera(self, shape: tuple[int, ...]) -> None:
        """The first frame's size, checked against the checkpoint's camera geometry."""
        if self._camera_shape is None:
            self._camera_shape = tuple(shape)
            self._on_first_frame(shape)

    def _on_first_frame(self, shape: tuple[int, ...]) -> None:
        refusal, warnings = checks.camera_mismatches(self._deployment, self.settings, shape)
        for line in warnings:
            self.get_logger().warning(line)
        if refusal:
            self._camera_refused = refusal
            self.get_logger().error(f'holding for good: {refusal} (set deployment_checks: '
                                    f'warn to act anyway)')

    def _make_state_source(self) -> Any:
        """The end-effector pose source ``state_source`` names (``ros.robot_state``)."""
        s = self.settings
        try:
            if s.state_source == 'pose':
                return PoseStateSource(s.base_frame, age_by=s.state_age_by)
            if s.state_source == 'tf':
                return TfStateSource(self, s.base_frame, s.tool_frame)
            return JointStateSource(s.urdf or None, tool_link=s.tool_frame,
                                    base_link=s.base_frame, age_by=s.state_age_by)
        except StateProblem as exc:
            raise StartupError(f'{NODE_NAME}: state_source {s.state_source}: {exc}') from None

    def _ros_now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _fresh_pose(self, at_s: Optional[float]
                    ) -> tuple[Optional[tuple[np.ndarray, np.ndarray]], str]:
        """The end-effector pose when the frame was taken (``at_s``; None: the newest) if
        it is fresh:
        ((position, quaternion), '') or (None, why not) -- no pose yet is (None, '')."""
        if self._state_source is None:
            return None, ''
        try:
            sample = self._state_source.latest(self._ros_now(),
                                               self.settings.safety.max_state_age_s, at_s)
        except NoStateYet:
            return None, ''
        except StateProblem as exc:
            return None, str(exc)
        return (np.asarray(sample.position, np.float32),
                np.asarray(sample.quaternion, np.float32)), ''

    def _publish(self, decision: Decision, answered: Optional[Header],
                 arrival: Optional[float] = None) -> None:
        """Send a decision through the command output (call with ``_lock`` held)."""
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
            self.counters.workspace_limited += decision.workspace_limited
        done = time.monotonic()
        self._output.publish(decision.action, answered, done)
        self._action_rate.tick(done)
        if arrival is not None and answered is not None:
            self._latency.add(done - arrival)
            now_ros = self.get_clock().now().nanoseconds * 1e-9
            self._stamp_latency.add(now_ros - stamp_to_seconds(answered.stamp))

    def _on_enable(self, request: SetBool.Request, response: SetBool.Response) -> Any:
        """~/enable (std_srvs/SetBool): true commands motion, false returns to the dry run."""
        with self._lock:
            was = self._output.enabled
            now = time.monotonic()
            self._output.set_enabled(bool(request.data), now)
            if request.data and not was:
                self._start_task()  # resume from the robot as measured, not the dry run's
            self._enable_changed_at = now
        state = 'enabled: commanding motion' if request.data else 'disabled: dry run'
        self.get_logger().info(f'motion {state} (twists to {self._output.topics["twist"]})')
        response.success = True
        response.message = state
        return response

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
                        f'grounding score {self._last_grounding:.3f} (V-L alignment '
                        f'{self._last_alignment:.3f}) < '
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
            'motion_enabled': self._output.enabled,
            'commands_to': self._output.topics['twist'],
            'twists_published': self._output.published_twists,
            'workspace_limited': c.workspace_limited,
        }
        status = diagnostic_status(f'{self.get_name()}: policy', self.settings.source, level,
                                   message, values)
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def destroy_node(self) -> None:
        worker = getattr(self, '_worker', None)
        if worker is not None and not worker.stop():
            self.get_logger().warning('the inference thread did not stop within 5 s')
        c = self.counters
        self.get_logger().info(f'stopping: {c.actions} actions, {c.holds} holds, '
                               f'{c.frames_received} frames ({c.frames_used} used), '
                               f'{c.errors} errors')
        if getattr(self, '_state_source', None) is not None:
            self._state_source.close()
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    return run_node(PolicyNode, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
