"""sim_node: the PyBullet world standing in for a robot cell (arm driver, MoveIt Servo, gripper
controller, camera).

What a real cell offers, and so the stand-in too (every name a default; remap as on a robot):

- out: /camera/image_raw + /camera/camera_info (sensor QoS), as a camera driver; /joint_states
  (the seven arm joints and both finger joints, as the arm driver and the hand's joint state
  broadcaster); /vla/ee_pose, geometry_msgs/PoseStamped of the grasp point in ``base_frame``
  (what TF from the base to the hand would give).
- in, ``command_input: servo``: geometry_msgs/TwistStamped on /servo_node/delta_twist_cmds,
  MoveIt Servo's input, and std_msgs/Float64MultiArray on /panda_hand_controller/commands, a
  forward command controller's input (``data = [finger position in m]``, from
  ``gripper_open_position`` 0.04 to ``gripper_closed_position`` 0.0, mapped linearly to the
  gripper value 0 open .. 1 closed and clipped). Both subscriptions: reliable, keep last 1.
  Each control step applies the newest twist x ``1 / control_rate`` (m, and droll, dpitch,
  dyaw increments as /vla/action applies them) for as long as it is fresh, as Servo does: a
  twist whose header.stamp is more than ``incoming_command_timeout_s`` (0.1 s, Servo's
  default) old at the step is not applied and the arm halts; a zero stamp (``ros2 topic pub``
  without one) counts as the arrival time; a stamp more than the timeout in the future is
  refused too. A twist that was never applied because it was already stale counts in
  ``stale_commands`` (the first logged, then at most one line per 10 s); a twist that simply
  aged out after being applied is the ordinary halt of a stopped stream. A twist in another
  frame than ``base_frame`` (empty = the base frame; the stand-in does not transform), with
  non-finite values, or a gripper command that is not exactly one finite value is refused
  (``refused_commands``, logged once per 10 s) and changes nothing. The gripper holds its last
  command. /vla/action is not subscribed in this mode.
- in, ``command_input: action`` (default for now): std_msgs/Float32MultiArray 7-DoF actions on
  /vla/action. Every control period the newest action received since the previous period is
  applied once; a period without one applies a hold (zero motion, gripper unchanged).

Whatever the input, the controller's per-step action and speed limits and its hand workspace
box (``vla_align.sim.controller``) bound the motion, and a refused command never moves
anything.

Privileged (simulation only; a real cell has no such topics, used for scoring and the expert
relay): the JSON ``episode_status.EpisodeStatus`` on /vla/episode_status and the scripted
expert's suggestion on /vla/expert_action. The node also sends each episode's instruction where
a person or a task planner would, to the instruction node's input /vla/instruction_in.

Episode boundaries (``instruction_handshake``, on by default): a new episode's first frame is
published only once its instruction is back on /vla/instruction (the instruction node's latched
output, which the policy reads too), and commands (actions, or twists and gripper commands)
received before that frame are discarded. So the policy never acts on the new scene with the
previous task's instruction, and nothing the policy decided for the previous episode (a closed
gripper, say) is applied to the next one: the free-running graph runs each episode as
in-process evaluation does.

Episodes come from the task suite: ``(family, split, seed)`` -> task; the seed starts at the
``seed`` parameter and increases by one per episode; ``family: all`` cycles through the task
families. A finished episode (success or step budget) is followed by the next one after
``reset_delay_s`` when ``auto_reset`` is on; the /vla/reset_episode service (std_srvs/Trigger)
starts the next one at any time.

With ``publish_expert_action`` the scripted expert's suggestion for the current state goes out
on /vla/expert_action; the policy node's ``source: expert`` relays it (demo without a trained
checkpoint; never on a real robot).

For evaluation (``vla-align eval-sim --via-ros``):
- ``episode_list`` names the episodes to run, in order, as ``split:family:seed`` entries (it
  replaces family/split/seed); after the last one the node stays idle, reporting it done.
- ``tick_rate`` runs the control loop faster (or slower) than real time: each tick is still one
  control step of ``1 / control_rate`` simulated seconds, so the dynamics do not change.
- ``lockstep`` makes the world wait for the policy: an observation is published once, and the
  next step applies the first action received after it (a hold if none came within
  ``action_timeout_s``). Timing then plays no part, which separates "does the graph compute the
  same actions" from "does it keep up". The final observation of an episode is not published
  (no action can answer it). The policy node's frame pacing
  (its ``control_rate``) must be faster than the tick rate, or frames go unanswered.
  With ``command_input: servo`` the answer is the first twist received after the observation,
  applied once with the gripper command in force at that step; as the world waits, its age is
  judged at its arrival, not at the step (a twist already stale on arrival answers with a
  hold and is counted).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, TwistStamped
import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float32MultiArray, Float64MultiArray, String
from std_srvs.srv import Trigger

from vla_align.actions import hold_action
from vla_align.ros import qos, topics
from vla_align.ros.conversions import (
    action_to_multiarray,
    camera_info_msg,
    diagnostic_array,
    diagnostic_status,
    joint_state_msg,
    multiarray_to_action,
    pose_msg,
    rgb_to_image,
)
from vla_align.ros.episode_status import EpisodeStatus
from vla_align.ros.metrics import RateMeter
from vla_align.ros.params import (
    ParameterConfigError,
    StartupError,
    declare_bool,
    declare_float,
    declare_int,
    declare_str,
)
from vla_align.ros.runner import run_node
from vla_align.ros.safety import BadInputLog
from vla_align.ros.servo_input import (
    PANDA_FINGER_CLOSED_M,
    PANDA_FINGER_OPEN_M,
    SERVO_COMMAND_TIMEOUT_S,
    CommandRefused,
    TwistCommand,
    gripper_closure,
    read_twist,
    stamp_problem,
    twist_action,
)
from vla_align.sim.types import PANDA_JOINT_NAMES, SPLITS, TASK_FAMILIES, Observation

NODE_NAME = 'sim_node'
#: Lockstep warm-up: the policy is taken to be answering frames once it was silent this long.
WARMUP_QUIET_S = 0.15
#: Lockstep warm-up: the warm-up frame is sent again after this long without the policy going
#: quiet (a best-effort frame sent before the policy's subscription was matched is lost).
WARMUP_RESEND_S = 0.5
#: An episode's instruction is sent again this often until it is back on /vla/instruction;
#: a warning says so after INSTRUCTION_WAIT_WARNING_S.
INSTRUCTION_RESEND_S = 0.5
INSTRUCTION_WAIT_WARNING_S = 5.0
COMMAND_INPUTS = ('action', 'servo')
#: Servo twist and gripper command inputs (DESIGN.md section 3): reliable, keep last 1. Local
#: until qos.py gains a SERVO_COMMANDS profile.
SERVO_COMMANDS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                            reliability=QoSReliabilityPolicy.RELIABLE,
                            durability=QoSDurabilityPolicy.VOLATILE)
#: Refused and stale commands: the first of a kind is logged, then at most one line per period.
BAD_COMMAND_LOG_PERIOD_S = 10.0


@dataclass(frozen=True)
class PlannedEpisode:
    """One entry of ``episode_list``: the task suite's ``(family, split, seed)`` task."""

    split: str
    family: str
    seed: int

    def entry(self) -> str:
        return f'{self.split}:{self.family}:{self.seed}'


def parse_episode_list(entries: Sequence[str]) -> list[PlannedEpisode]:
    """``['seen:reach:1000', ...]`` -> planned episodes; ValueError names a malformed entry."""
    episodes = []
    for entry in entries:
        parts = [part.strip() for part in str(entry).split(':')]
        if len(parts) != 3:
            raise ValueError(f'episode_list entry {entry!r} is not split:family:seed')
        split, family, seed = parts
        if split not in SPLITS or family not in TASK_FAMILIES:
            raise ValueError(f'episode_list entry {entry!r}: split must be one of {SPLITS} '
                             f'and family one of {TASK_FAMILIES}')
        try:
            number = int(seed)
        except ValueError:
            raise ValueError(f'episode_list entry {entry!r}: seed {seed!r} is not an '
                             f'integer') from None
        if number < 0:
            raise ValueError(f'episode_list entry {entry!r}: seed must be >= 0')
        episodes.append(PlannedEpisode(split, family, number))
    return episodes


class SimNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        # First: destroy_node runs even after a failed start.
        self._env = None
        self._stats = {'actions_applied': 0, 'twists_applied': 0, 'holds_applied': 0,
                       'invalid_actions': 0, 'refused_commands': 0, 'stale_commands': 0,
                       'action_timeouts': 0, 'episodes_finished': 0, 'successes': 0,
                       'plan_finished': 0}
        self.family = declare_str(self, 'family', 'all',
                                  'task family of the episodes, or all to cycle through them',
                                  ('all', *TASK_FAMILIES))
        self.split = declare_str(self, 'split', 'seen', 'evaluation split of the tasks', SPLITS)
        seed = declare_int(self, 'seed', -1,
                           'seed of the first episode, +1 per episode (-1: the first seed of '
                           'the split for seed_purpose)', -1, 2 ** 31)
        seed_purpose = declare_str(self, 'seed_purpose', 'eval',
                                   'which seeds seed -1 starts from: eval (evaluation, never '
                                   'trained on) or train (recording demonstrations)',
                                   ('eval', 'train'))
        suite_path = declare_str(self, 'suite', '',
                                 'task-suite YAML file (empty: the packaged default suite)')
        control_rate = declare_float(self, 'control_rate', 10.0,
                                     'control steps per second (Hz); 240 / control_rate '
                                     'must be a whole number of physics steps', 1.0, 240.0)
        width = declare_int(self, 'image_width', 128, 'camera image width (pixels)', 16, 2048)
        height = declare_int(self, 'image_height', 128, 'camera image height (pixels)', 16,
                             2048)
        max_steps = declare_int(self, 'max_steps', 0,
                                'step budget per episode (0: the family default)', 0, 100000)
        self.auto_reset = declare_bool(self, 'auto_reset', True,
                                       'start the next episode when one finishes')
        self.reset_delay_s = declare_float(self, 'reset_delay_s', 1.0,
                                           'pause between a finished episode and the next (s)',
                                           0.0, 3600.0)
        self.start_on_launch = declare_bool(self, 'start_on_launch', True,
                                            'start the first episode without waiting for '
                                            '/vla/reset_episode')
        self.wait_for_policy = declare_bool(self, 'wait_for_policy', True,
                                            'start the first episode only once a node publishes '
                                            'on /vla/action (a policy still loading its model '
                                            'would otherwise lose the episode)')
        episode_list = self._declare_episode_list()
        tick_rate = declare_float(self, 'tick_rate', 0.0,
                                  'control ticks per wall-clock second (0: control_rate, real '
                                  'time); a tick is still one 1/control_rate simulated step',
                                  0.0, 1000.0)
        self.lockstep = declare_bool(self, 'lockstep', False,
                                     'wait for the action answering each observation before '
                                     'stepping (evaluation; not real time)')
        self.action_timeout_s = declare_float(self, 'action_timeout_s', 2.0,
                                              'lockstep: apply a hold when no action came this '
                                              'long after an observation (s)', 0.001, 3600.0)
        self.publish_expert = declare_bool(self, 'publish_expert_action', False,
                                           "publish the scripted expert's suggested action on "
                                           '/vla/expert_action (demo/debug; privileged state)')
        self.instruction_handshake = declare_bool(
            self, 'instruction_handshake', True,
            "start each episode's first step once its instruction is back on /vla/instruction "
            '(relayed by the instruction node), so the policy never acts on the new scene with '
            'the previous instruction; false: start at once')
        self.base_frame = declare_str(self, 'base_frame', 'panda_link0',
                                      'frame_id of /vla/ee_pose (the robot base), and the only '
                                      'frame servo twists may be given in')
        self.command_input = declare_str(
            self, 'command_input', 'action',
            'what moves the robot: action (7-DoF deltas on /vla/action) or servo (as a real '
            f'cell: TwistStamped on {topics.SERVO_TWIST}, finger position on '
            f'{topics.GRIPPER_COMMAND})', COMMAND_INPUTS)
        self.command_timeout_s = declare_float(
            self, 'incoming_command_timeout_s', SERVO_COMMAND_TIMEOUT_S,
            "servo: a twist stamped longer ago than this (or further ahead) is not applied and "
            "the arm halts (s; MoveIt Servo's incoming_command_timeout)", 0.001, 60.0)
        self.gripper_open_position = declare_float(
            self, 'gripper_open_position', PANDA_FINGER_OPEN_M,
            'servo: finger position (m) of a gripper command that opens fully', -1.0, 1.0)
        self.gripper_closed_position = declare_float(
            self, 'gripper_closed_position', PANDA_FINGER_CLOSED_M,
            'servo: finger position (m) of a gripper command that closes fully', -1.0, 1.0)
        if self.gripper_open_position == self.gripper_closed_position:
            raise ParameterConfigError(
                f'{NODE_NAME}: gripper_open_position and gripper_closed_position are both '
                f'{self.gripper_open_position:g}; they must differ')
        self.servo = self.command_input == 'servo'
        diagnostics_period = declare_float(self, 'diagnostics_period_s', 1.0,
                                           'period of /diagnostics messages (s)', 0.05, 60.0)
        self._env, self._suite = self._make_world(control_rate, width, height, max_steps,
                                                  suite_path)
        try:
            self.first_seed = (seed if seed >= 0
                               else self._suite.seeds(self.split, seed_purpose, 1)[0])
        except ValueError as exc:
            raise StartupError(f'{NODE_NAME}: {exc}') from None
        self._planned = self._check_episode_list(episode_list)

        # Episode state.
        self._episode = -1
        self._seed = self.first_seed
        self._task_family = ''
        self._task_split = self.split
        self._instruction = ''
        self._step = 0
        self._success = False
        self._done = True
        self._done_at: Optional[float] = None
        self._obs: Optional[Observation] = None
        self._reset_requested = self.start_on_launch
        # Newest action, written by the subscription callback.
        self._action: Optional[np.ndarray] = None
        self._gripper = 0.0
        # Servo input: the newest twist (lockstep: the first after the observation), whether it
        # was judged fresh or stale at its first step, and the gripper command in force (None:
        # none this episode, the gripper stays as it is).
        self._twist: Optional[TwistCommand] = None
        self._twist_verdict: Optional[bool] = None  # None: not judged yet; True: usable
        self._gripper_command: Optional[float] = None
        self._bad_commands = BadInputLog(BAD_COMMAND_LOG_PERIOD_S)
        self._control_rate = control_rate
        self._step_rate = RateMeter()
        # Lockstep: when the observation awaiting its action was published (None: none awaits).
        self._awaiting_since: Optional[float] = None
        # The episode's instruction, published on /vla/instruction_in, is not yet back on
        # /vla/instruction (so the policy may not have it): when it was last sent, else None.
        self._instruction_sent_at: Optional[float] = None
        self._instruction_first_sent_at = 0.0
        self._instruction_wait_reported = False
        self._echo: tuple[str, float] = ('', -float('inf'))  # newest /vla/instruction, arrival
        self._warmup_since: Optional[float] = None  # lockstep: see _warmed_up
        self._last_action_at = -float('inf')  # time.monotonic() of the newest action message

        self._image_pub = self.create_publisher(Image, topics.IMAGE, qos.SENSOR_DATA)
        self._info_pub = self.create_publisher(CameraInfo, topics.CAMERA_INFO, qos.SENSOR_DATA)
        self._joints_pub = self.create_publisher(JointState, topics.JOINT_STATES, qos.DEFAULT)
        self._pose_pub = self.create_publisher(PoseStamped, topics.EE_POSE, qos.DEFAULT)
        # Episode instructions go where a person or a task planner sends them: to the
        # instruction node's input, as an ordinary publisher.
        self._instruction_pub = self.create_publisher(String, topics.INSTRUCTION_IN,
                                                      qos.INSTRUCTION_INPUT)
        if self.instruction_handshake:
            self.create_subscription(String, topics.INSTRUCTION, self._on_instruction_echo,
                                     qos.LATCHED)
        self._status_pub = self.create_publisher(String, topics.EPISODE_STATUS,
                                                 qos.EPISODE_STATUS)
        self._expert_pub = (self.create_publisher(Float32MultiArray, topics.EXPERT_ACTION,
                                                  qos.COMMANDS) if self.publish_expert else None)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS,
                                                      qos.DEFAULT)
        if self.servo:
            self._command_sub = self.create_subscription(TwistStamped, topics.SERVO_TWIST,
                                                         self._on_twist, SERVO_COMMANDS)
            self.create_subscription(Float64MultiArray, topics.GRIPPER_COMMAND,
                                     self._on_gripper_command, SERVO_COMMANDS)
        else:
            self._command_sub = self.create_subscription(Float32MultiArray, topics.ACTION,
                                                         self._on_action, qos.COMMANDS)
        self._waiting_reported = False
        self.create_service(Trigger, topics.RESET_EPISODE, self._on_reset_request)
        tick_rate = tick_rate or control_rate
        self._timer = self.create_timer(1.0 / tick_rate, self._on_tick)
        self._diagnostics_timer = self.create_timer(diagnostics_period, self._publish_diagnostics)
        plan = (f'{len(self._planned)} listed episodes' if self._planned else
                f'{self.family} / {self.split} from seed {self.first_seed}')
        commands = (f'servo twists on {self._command_sub.topic_name} (timeout '
                    f'{self.command_timeout_s:g} s, frame {self.base_frame})' if self.servo
                    else f'actions on {self._command_sub.topic_name}')
        self.get_logger().info(f'simulating {plan} at {control_rate:g} Hz ({tick_rate:g} ticks '
                               f'per second{", lockstep" if self.lockstep else ""}), '
                               f'{width}x{height} images, obeying {commands}'
                               + (', publishing expert actions' if self.publish_expert else ''))

    def _declare_episode_list(self) -> list[str]:
        # Typed explicitly: an empty default would make rclpy expect a byte array.
        description = ('episodes to run in order, as split:family:seed (replaces '
                       'family/split/seed; unset: run episodes without end)')
        try:
            value = self.declare_parameter(
                'episode_list', Parameter.Type.STRING_ARRAY,
                ParameterDescriptor(description=description, read_only=True)).value
        except ParameterException as exc:
            raise ParameterConfigError(f"{NODE_NAME}: parameter 'episode_list' refused "
                                       f'({exc}); expected a list of strings. '
                                       f'episode_list: {description}') from None
        return list(value or [])

    def _make_world(self, control_rate: float, width: int, height: int, max_steps: int,
                    suite_path: str):
        from vla_align.sim.env import EnvConfig, ManipulationEnv
        from vla_align.sim.suite import SuiteError, load_suite
        from vla_align.sim.types import CameraConfig

        try:
            config = EnvConfig(camera=CameraConfig(width=width, height=height),
                               control_hz=control_rate, max_steps=max_steps or None)
        except ValueError as exc:
            raise StartupError(f'{NODE_NAME}: {exc}') from None
        try:
            suite = load_suite(suite_path or None)
        except SuiteError as exc:
            raise StartupError(f'{NODE_NAME}: {exc}') from None
        if self.split not in suite.splits:
            raise StartupError(f'{NODE_NAME}: the task suite has no split {self.split!r} '
                               f'(it has {", ".join(suite.splits)})')
        return ManipulationEnv(config), suite

    def _check_episode_list(self, entries: list[str]) -> list[PlannedEpisode]:
        """Parse ``episode_list`` and draw each task once, so a bad entry stops the start."""
        try:
            planned = parse_episode_list(entries)
            for episode in planned:
                self._suite.sample_task(episode.family, episode.split, episode.seed)
        except ValueError as exc:
            raise StartupError(f'{NODE_NAME}: {exc}') from None
        return planned

    # -- callbacks: cache only ------------------------------------------------------------------
    def _on_action(self, msg: Float32MultiArray) -> None:
        try:
            action = multiarray_to_action(msg)
        except ValueError as exc:
            self._stats['invalid_actions'] += 1
            self._log_bad_command('action', str(exc))
            return
        self._action = action
        self._last_action_at = time.monotonic()

    def _on_twist(self, msg: TwistStamped) -> None:
        try:
            twist = read_twist(msg, self.base_frame, self._ros_now())
        except CommandRefused as exc:
            self._stats['refused_commands'] += 1
            self._log_bad_command(exc.kind, str(exc))
            return
        self._last_action_at = time.monotonic()
        if self.lockstep and self._twist is not None:
            return  # the first twist after the observation answers it
        self._twist, self._twist_verdict = twist, None

    def _on_gripper_command(self, msg: Float64MultiArray) -> None:
        try:
            self._gripper_command = gripper_closure(msg, self.gripper_open_position,
                                                    self.gripper_closed_position)
        except CommandRefused as exc:
            self._stats['refused_commands'] += 1
            self._log_bad_command(exc.kind, str(exc))

    def _log_bad_command(self, kind: str, reason: str) -> None:
        line = self._bad_commands.report(kind, reason, time.monotonic())
        if line is not None:
            self.get_logger().warning(line)

    def _ros_now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_instruction_echo(self, msg: String) -> None:
        self._echo = (msg.data, time.monotonic())

    def _on_reset_request(self, request: Trigger.Request,
                          response: Trigger.Response) -> Trigger.Response:
        following = self._episode + 1
        if self._planned and following >= len(self._planned):
            response.success = False
            response.message = f'all {len(self._planned)} listed episodes have run'
            return response
        self._reset_requested = True
        response.success = True
        response.message = (f'episode {following} (seed {self._episode_task(following).seed}) '
                            f'starts at the next control step')
        return response

    # -- work -----------------------------------------------------------------------------------
    def _on_tick(self) -> None:
        now = time.monotonic()
        if self._episode < 0 and not (self._policy_ready()
                                      and (not self.lockstep or self._warmed_up(now))):
            return
        if self._reset_requested or (self.auto_reset and self._done and self._done_at is not None
                                     and now - self._done_at >= self.reset_delay_s):
            self._reset_requested = False
            if not self._plan_finished():
                self._start_episode(now)
            return  # the instruction goes out first; the first frame once it has arrived
        if self._instruction_sent_at is not None:
            if not self._instruction_arrived(now):
                return
            self._instruction_sent_at = None
            self._clear_commands()  # only answers to this episode's frames are applied
            if self.lockstep:
                self._publish_lockstep_observation(now)
            else:
                self._publish_observation()
            return
        if not self._done:
            if self.lockstep and not self._ready_to_step(now):
                return
            self._advance(now)
        if self.lockstep:
            if not self._done:
                self._publish_lockstep_observation(now)
        elif self._obs is not None:
            self._publish_observation()

    def _warmed_up(self, now: float) -> bool:
        """Lockstep, before the first episode: is the policy node done answering old inputs?

        Until its first frame a policy node publishes holds ('no image yet') at its control
        rate; one of them could arrive just after the first observation and pass for its
        answer. So the first episode's first observation goes out once as a warm-up, before
        any instruction (the policy answers with a hold that changes nothing), and the
        episode starts when no action has come for ``WARMUP_QUIET_S``. The warm-up frame is
        sent again every ``WARMUP_RESEND_S`` until then: if it was lost, the policy would hold
        ('no image yet') forever and the episode would never start. Quiet is checked first, so
        a tick period of ``WARMUP_RESEND_S`` or more (tick_rate <= 2) still starts.
        """
        if (self._warmup_since is not None
                and now - max(self._last_action_at, self._warmup_since) >= WARMUP_QUIET_S):
            return True
        if self._warmup_since is None or now - self._warmup_since >= WARMUP_RESEND_S:
            planned = self._episode_task(0)
            try:
                task = self._suite.sample_task(planned.family, planned.split, planned.seed)
                self._obs = self._env.reset(planned.seed, task)
            except ValueError:  # _start_episode reports it
                return True
            self._publish_observation()
            self._obs = None
            self._warmup_since = now
        return False

    def _instruction_arrived(self, now: float) -> bool:
        """Has this episode's instruction come back on /vla/instruction? Sends it again every
        ``INSTRUCTION_RESEND_S`` until it has (a message sent before the instruction node's
        subscription matched is lost), and says so once if that takes long."""
        if not self.instruction_handshake:
            return True
        text, arrived_at = self._echo
        if text == self._instruction and arrived_at >= self._instruction_first_sent_at:
            return True
        if now - self._instruction_sent_at >= INSTRUCTION_RESEND_S:
            self._instruction_pub.publish(String(data=self._instruction))
            self._instruction_sent_at = now
        if (not self._instruction_wait_reported
                and now - self._instruction_first_sent_at >= INSTRUCTION_WAIT_WARNING_S):
            self._instruction_wait_reported = True
            self.get_logger().warning(
                f'episode {self._episode} waits for its instruction on {topics.INSTRUCTION}: '
                f'is the instruction node running with source: topic? (or set '
                f'instruction_handshake: false)')
        return False

    def _clear_commands(self) -> None:
        """Forget the commands received so far (the gripper command too: a new episode starts
        with the gripper as the reset left it)."""
        self._action = None
        self._twist, self._twist_verdict = None, None
        self._gripper_command = None

    def _ready_to_step(self, now: float) -> bool:
        """Lockstep: has the action answering the published observation come (or timed out)?"""
        if self._awaiting_since is None:
            return False
        if (self._twist if self.servo else self._action) is not None:
            return True
        if now - self._awaiting_since < self.action_timeout_s:
            return False
        self._stats['action_timeouts'] += 1
        self.get_logger().warning(f'no action {self.action_timeout_s:g} s after the observation '
                                  f'of step {self._step}: applying a hold')
        return True

    def _publish_lockstep_observation(self, now: float) -> None:
        """Publish the newest observation once; the next action received answers it."""
        if self._obs is None:
            return
        # Anything received before this observation answers an older one.
        self._action = None
        self._twist, self._twist_verdict = None, None
        self._awaiting_since = None if self._done else now
        self._publish_observation()

    def _plan_finished(self) -> bool:
        """With ``episode_list``: True (and the node idle) once every listed episode ran."""
        if not self._planned or self._episode + 1 < len(self._planned):
            return False
        if not self._stats['plan_finished']:
            self._stats['plan_finished'] = 1
            self.get_logger().info(f'all {len(self._planned)} listed episodes finished')
        return True

    def _policy_ready(self) -> bool:
        """Before the first episode: is someone publishing commands (if we wait for that)?"""
        if not self.wait_for_policy or self.count_publishers(self._command_sub.topic_name) > 0:
            return True
        if not self._waiting_reported:
            self.get_logger().info(f'waiting for a policy to publish on '
                                   f'{self._command_sub.topic_name} before the first episode')
            self._waiting_reported = True
        return False

    def _start_episode(self, now: float) -> bool:
        self._episode += 1
        planned = self._episode_task(self._episode)
        split, family, self._seed = planned.split, planned.family, planned.seed
        self._task_split = split
        try:
            task = self._suite.sample_task(family, split, self._seed)
            self._obs = self._env.reset(self._seed, task)
        except ValueError as exc:
            self.get_logger().error(f'cannot start episode {self._episode} ({family}, seed '
                                    f'{self._seed}): {exc}')
            self._done, self._done_at = True, time.monotonic()
            return False
        self._task_family, self._instruction = family, task.instruction
        self._step, self._success, self._done, self._done_at = 0, False, False, None
        self._clear_commands()
        self._gripper = float(self._obs.gripper)
        self._instruction_pub.publish(String(data=self._instruction))
        self._instruction_sent_at = self._instruction_first_sent_at = now
        self._instruction_wait_reported = False
        self._publish_status()
        self.get_logger().info(f'episode {self._episode}: {family}, seed {self._seed}: '
                               f'{self._instruction!r}')
        return True

    def _episode_task(self, episode: int) -> PlannedEpisode:
        """Which task episode number ``episode`` (from 0) runs."""
        if self._planned:
            return self._planned[episode]
        family = (TASK_FAMILIES[episode % len(TASK_FAMILIES)] if self.family == 'all'
                  else self.family)
        return PlannedEpisode(self.split, family, self.first_seed + episode)

    def _advance(self, now: float) -> None:
        if self.servo:
            action = self._servo_action()
            counter = 'twists_applied'
        else:
            action, self._action = self._action, None
            counter = 'actions_applied'
        if action is None:
            action = hold_action(self._gripper_in_force())
            counter = 'holds_applied'
        self._stats[counter] += 1
        result = self._env.step(action)
        self._obs = result.observation
        self._gripper = float(result.observation.gripper)
        self._step += 1
        self._success = bool(result.info.get('success', False))
        self._step_rate.tick(now)
        if result.done:
            self._done, self._done_at = True, now
            self._stats['episodes_finished'] += 1
            self._stats['successes'] += self._success
            outcome = 'succeeded' if self._success else 'failed (step budget spent)'
            self.get_logger().info(f'episode {self._episode} {outcome} after {self._step} '
                                   f'steps')
        self._publish_status()

    def _gripper_in_force(self) -> float:
        """The servo gripper command in force, else the gripper as it is (0 open .. 1 closed)."""
        return self._gripper if self._gripper_command is None else self._gripper_command

    def _servo_action(self) -> Optional[np.ndarray]:
        """This step's action from the newest twist, or None (halt) when there is no usable one.

        A twist is judged once, at its first step: stale (or from the future) then, it is never
        applied and counted; fresh, it is applied at every step until it is too old (the
        ordinary halt when a stream stops). Lockstep consumes it (one step per answer) and
        judges its age at arrival, as the world waited for it.
        """
        twist = self._twist
        if twist is None:
            return None
        if self.lockstep:
            self._twist = None
        now = twist.arrival_s if self.lockstep else self._ros_now()
        problem = stamp_problem(twist, now, self.command_timeout_s)
        if self._twist_verdict is None:
            self._twist_verdict = problem is None
            if problem is not None:
                self._stats['stale_commands'] += 1
                self._log_bad_command('stale twist', problem)
        if not self._twist_verdict or problem is not None:
            return None
        return twist_action(twist.velocity, self._gripper_in_force(), self._control_rate,
                            self._env.config.limits)

    def _publish_status(self) -> None:
        status = EpisodeStatus(episode=self._episode, family=self._task_family,
                               split=self._task_split, seed=self._seed,
                               instruction=self._instruction, step=self._step,
                               success=self._success, done=self._done)
        self._status_pub.publish(String(data=status.to_json()))

    def _publish_observation(self) -> None:
        obs = self._obs
        stamp = self.get_clock().now().to_msg()
        camera = self._env.camera
        # The image last: a policy node acts on image arrival, with the newest robot state
        # (and, relaying the expert, the newest expert suggestion) it has by then.
        if self._expert_pub is not None and not self._done:
            self._expert_pub.publish(action_to_multiarray(self._env.expert_action()))
        self._joints_pub.publish(joint_state_msg(PANDA_JOINT_NAMES, obs.joint_positions, stamp))
        self._pose_pub.publish(pose_msg(obs.ee_position, obs.ee_orientation, stamp,
                                        self.base_frame))
        self._info_pub.publish(camera_info_msg(obs.image.shape[1], obs.image.shape[0],
                                               camera.intrinsics(), stamp, camera.frame_id))
        self._image_pub.publish(rgb_to_image(obs.image, stamp, camera.frame_id))

    def _publish_diagnostics(self) -> None:
        values = {'episode': self._episode, 'seed': self._seed, 'family': self._task_family,
                  'step': self._step, 'done': self._done,
                  'step_rate_hz': self._step_rate.rate(time.monotonic()),
                  'command_input': self.command_input, **self._stats,
                  'gripper_command': self._gripper_in_force(),
                  'bad_commands': self._bad_commands.summary()}
        level = DiagnosticStatus.OK
        message = 'episode finished' if self._done else 'running'
        if self._stats['invalid_actions']:
            level, message = DiagnosticStatus.WARN, f'{message}; invalid actions received'
        if self._stats['refused_commands']:
            level, message = DiagnosticStatus.WARN, f'{message}; commands refused'
        if self._stats['stale_commands']:
            level, message = DiagnosticStatus.WARN, f'{message}; stale twists received'
        status = diagnostic_status(f'{self.get_name()}: simulator', 'pybullet', level, message,
                                   values)
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def destroy_node(self) -> None:
        s = self._stats
        self.get_logger().info(f'stopping: {s["episodes_finished"]} episodes finished, '
                               f'{s["successes"]} successes')
        if self._env is not None:
            self._env.close()
            self._env = None
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    return run_node(SimNode, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
