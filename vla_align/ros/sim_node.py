"""sim_node: the PyBullet world standing in for a robot and its camera.

Every control period (``control_rate``) it applies the newest action received on /vla/action
since the previous period (each action is applied once; a period without a new action applies
a hold: zero motion, gripper unchanged), steps the physics, and publishes what a robot would:
/camera/image_raw + /camera/camera_info (sensor QoS), /joint_states and /vla/ee_pose. It also
sends each episode's instruction where a person or a task planner would, to the instruction
node's input /vla/instruction_in, and publishes a JSON ``episode_status.EpisodeStatus`` on
/vla/episode_status (privileged: for scoring only).

Episode boundaries (``instruction_handshake``, on by default): a new episode's first frame is
published only once its instruction is back on /vla/instruction (the instruction node's latched
output, which the policy reads too), and actions received before that frame are discarded. So
the policy never acts on the new scene with the previous task's instruction, and nothing the
policy decided for the previous episode (a closed gripper, say) is applied to the next one:
the free-running graph runs each episode as in-process evaluation does.

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
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
import numpy as np
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Float32MultiArray, String
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
        self._stats = {'actions_applied': 0, 'holds_applied': 0, 'invalid_actions': 0,
                       'action_timeouts': 0, 'episodes_finished': 0, 'successes': 0,
                       'plan_finished': 0}
        self.family = declare_str(self, 'family', 'all',
                                  'task family of the episodes, or all to cycle through them',
                                  ('all', *TASK_FAMILIES))
        self.split = declare_str(self, 'split', 'seen', 'evaluation split of the tasks', SPLITS)
        seed = declare_int(self, 'seed', -1,
                           'seed of the first episode, +1 per episode (-1: the first '
                           'evaluation seed of the split, never a training seed)', -1, 2 ** 31)
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
                                      'frame_id of /vla/ee_pose (the robot base)')
        diagnostics_period = declare_float(self, 'diagnostics_period_s', 1.0,
                                           'period of /diagnostics messages (s)', 0.05, 60.0)
        self._env, self._suite = self._make_world(control_rate, width, height, max_steps,
                                                  suite_path)
        self.first_seed = seed if seed >= 0 else self._suite.seeds(self.split, 'eval', 1)[0]
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
        self._invalid_reported = False
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
        self._action_sub = self.create_subscription(Float32MultiArray, topics.ACTION,
                                                    self._on_action, qos.COMMANDS)
        self._waiting_reported = False
        self.create_service(Trigger, topics.RESET_EPISODE, self._on_reset_request)
        tick_rate = tick_rate or control_rate
        self._timer = self.create_timer(1.0 / tick_rate, self._on_tick)
        self._diagnostics_timer = self.create_timer(diagnostics_period, self._publish_diagnostics)
        plan = (f'{len(self._planned)} listed episodes' if self._planned else
                f'{self.family} / {self.split} from seed {self.first_seed}')
        self.get_logger().info(f'simulating {plan} at {control_rate:g} Hz ({tick_rate:g} ticks '
                               f'per second{", lockstep" if self.lockstep else ""}), '
                               f'{width}x{height} images' + (', publishing expert actions'
                                                              if self.publish_expert else ''))

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
            if not self._invalid_reported:
                self.get_logger().warning(f'ignoring invalid action message: {exc}')
                self._invalid_reported = True
            return
        self._action = action
        self._last_action_at = time.monotonic()

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
            self._action = None  # only answers to this episode's frames are applied
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
        ('no image yet') forever and the episode would never start.
        """
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
        return now - max(self._last_action_at, self._warmup_since) >= WARMUP_QUIET_S

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

    def _ready_to_step(self, now: float) -> bool:
        """Lockstep: has the action answering the published observation come (or timed out)?"""
        if self._awaiting_since is None:
            return False
        if self._action is not None:
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
        self._action = None  # anything received before this observation answers an older one
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
        """Before the first episode: is someone publishing actions (if we wait for that)?"""
        if not self.wait_for_policy or self.count_publishers(self._action_sub.topic_name) > 0:
            return True
        if not self._waiting_reported:
            self.get_logger().info(f'waiting for a policy to publish on '
                                   f'{self._action_sub.topic_name} before the first episode')
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
        self._action, self._gripper = None, float(self._obs.gripper)
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
        action, self._action = self._action, None
        if action is None:
            action = hold_action(self._gripper)
            self._stats['holds_applied'] += 1
        else:
            self._stats['actions_applied'] += 1
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
                  'step_rate_hz': self._step_rate.rate(time.monotonic()), **self._stats}
        level = DiagnosticStatus.OK
        message = 'episode finished' if self._done else 'running'
        if self._stats['invalid_actions']:
            level, message = DiagnosticStatus.WARN, f'{message}; invalid actions received'
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
