"""`vla-align fuzz`: malformed messages through every subscriber of the real nodes, over DDS.

Each target node runs as its own process (``python -m vla_align.ros.<node>``) in a private
ROS domain, exactly as ``ros2 run`` would start it; this process is the only other
participant. For each subscriber it sends N generated malformed messages (a seeded
``np.random.Generator``, spread over the kinds of damage, one phase per kind) while keeping
the node's other inputs good, and measures:

* **crashes** — the node process died, or printed a Python traceback, during the phase;
* **unsafe published** — a /vla/action that is non-finite or outside the limits, a command
  *derived from the bad input* (an action answering a bad frame, or a frame sent while only a
  bad instruction / pose / expert suggestion was available), a refused instruction relayed,
  or the simulated hand leaving its workspace box;
* **log lines** — what the node wrote to its log during each phase (flood check);
* **diagnostics** — whether the node's /diagnostics counted the bad input.

Targets: the policy node with the trained checkpoint (image, instruction, ee_pose,
joint_states), the policy node with ``source: expert`` (expert_action: the stand-in for
arbitrary model output), the instruction node in topic mode (/vla/instruction_in), and the sim
node (/vla/action). Writes ``fuzz.json`` and ``fuzz.md``.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
import json
import os
from pathlib import Path
import sys
import tempfile
import time
from typing import Optional

import numpy as np

from vla_align.actions import ActionLimits
from vla_align.ros import fuzz_robot
from vla_align.ros.fuzz_inputs import (
    INSTRUCTION,
    MAX_IMAGE_PIXELS,
    BadInput,
    action_inputs,
    image_inputs,
    instruction_texts,
    joint_state_inputs,
    pose_inputs,
)
from vla_align.ros.fuzz_robot import SERVO_PLANS
from vla_align.ros.isolation import private_ros_domain
from vla_align.ros.node_harness import NodeProcess, spin_until

#: Policy-node limits used by the campaign (the node's defaults).
LIMITS = ActionLimits()
#: Log lines one phase (one kind of bad input) may cause before it counts as a flood.
FLOOD_LINES = 3
#: How far the simulated grasp point may lag outside the workspace box while following a
#: commanded point that never leaves it (IK tracking error at full speed, measured < 3 cm).
HAND_TRACKING_TOLERANCE_M = 0.04
#: Frames sent by the campaign carry stamps from here on, far from the node clock, so a twist
#: stamped with one of them is an answer to that frame and any other stamp marks a hold.
STAMP_BASE_SEC = 2_000_000
#: Phases after which the policy must answer a frame within this long to count as acting.
READY_TIMEOUT_S = 60.0


# --- results ------------------------------------------------------------------------------------

@dataclass
class KindResult:
    kind: str
    sent: int = 0
    #: Answers (non-hold commands) derived from the bad input; must be 0.
    derived_from_bad_input: int = 0
    #: Published messages that are unsafe in themselves (non-finite, out of limits, refused
    #: text relayed, hand outside the workspace); must be 0.
    unsafe_published: int = 0
    #: Non-hold commands published during the phase (context for the two above).
    commands_published: int = 0
    holds_published: int = 0
    log_lines: int = 0
    first_log_line: str = ''
    crashed: bool = False
    notes: str = ''

    @property
    def flood(self) -> bool:
        return self.log_lines > FLOOD_LINES


@dataclass
class SubscriberResult:
    target: str
    subscriber: str
    topic: str
    kinds: list[KindResult] = field(default_factory=list)
    #: Bad messages the node counted in /diagnostics (None: the node has no such counter).
    diagnostics_counted: Optional[int] = None
    derived_check: str = 'yes'

    def totals(self) -> dict:
        k = self.kinds
        return {'inputs_tried': sum(r.sent for r in k), 'crashes': sum(r.crashed for r in k),
                'unsafe_published': sum(r.unsafe_published + r.derived_from_bad_input
                                        for r in k),
                'log_lines': sum(r.log_lines for r in k),
                'max_log_lines_per_kind': max((r.log_lines for r in k), default=0),
                'floods': sum(r.flood for r in k)}


# --- processes and the driver node --------------------------------------------------------------

class Driver:
    """The campaign's own node: publishes inputs, records what the target publishes."""

    def __init__(self, context) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped, TwistStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from sensor_msgs.msg import Image, JointState, Joy
        from std_msgs.msg import Float32MultiArray, Float64MultiArray, Header, String

        from vla_align.ros import qos, topics

        self.node = Node('fuzz_driver', context=context)
        n = self.node
        self.pub = {
            'image': n.create_publisher(Image, topics.IMAGE, qos.SENSOR_DATA),
            'instruction': n.create_publisher(String, topics.INSTRUCTION, qos.LATCHED),
            'instruction_in': n.create_publisher(String, topics.INSTRUCTION_IN, qos.LATCHED),
            'ee_pose': n.create_publisher(PoseStamped, topics.EE_POSE, qos.DEFAULT),
            'joint_states': n.create_publisher(JointState, topics.JOINT_STATES, qos.DEFAULT),
            'expert_action': n.create_publisher(Float32MultiArray, topics.EXPERT_ACTION,
                                                qos.COMMANDS),
            'action': n.create_publisher(Float32MultiArray, topics.ACTION, qos.COMMANDS),
            'servo_twist': n.create_publisher(TwistStamped, topics.SERVO_TWIST,
                                              qos.SERVO_COMMANDS),
            'gripper_command': n.create_publisher(Float64MultiArray, topics.GRIPPER_COMMAND,
                                                  qos.SERVO_COMMANDS),
            'joy': n.create_publisher(Joy, topics.JOY, qos.DEFAULT),
            'notes': n.create_publisher(String, '/episode_recorder/notes', qos.DEFAULT),
        }
        self.actions: list[tuple[float, np.ndarray]] = []
        self.twists: list[tuple[float, int]] = []  # (received, stamp sec)
        self.instructions: list[tuple[float, str]] = []
        self.poses: list[tuple[float, np.ndarray]] = []
        #: (received, (6,) twist) on the Servo command topic (teleop and enable targets).
        self.servo_twists: list[tuple[float, np.ndarray]] = []
        n.create_subscription(TwistStamped, topics.SERVO_TWIST, self._on_servo_twist,
                              qos.SERVO_COMMANDS)
        self.diagnostics: dict[str, dict[str, str]] = {}
        self.diagnostics_at = 0.0
        n.create_subscription(Float32MultiArray, topics.ACTION, self._on_action, qos.COMMANDS)
        n.create_subscription(Header, topics.ACTION_FRAME, self._on_action_frame,
                              qos.COMMANDS)
        n.create_subscription(String, topics.INSTRUCTION, self._on_instruction, qos.LATCHED)
        n.create_subscription(PoseStamped, topics.EE_POSE, self._on_pose, qos.DEFAULT)
        n.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, self._on_diagnostics,
                              qos.DEFAULT)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(n)
        self.frame_count = 0
        self.frames_sent: dict[int, float] = {}  # stamp sec -> send time
        self._rng = np.random.default_rng(0)

    # subscriptions
    def _on_action(self, msg) -> None:
        self.actions.append((time.monotonic(), np.array(msg.data, dtype=np.float64)))

    def _on_action_frame(self, msg) -> None:
        # The frame each decision answers (holds: stamped now, frame_id 'hold').
        self.twists.append((time.monotonic(), int(msg.stamp.sec)))

    def _on_instruction(self, msg) -> None:
        self.instructions.append((time.monotonic(), msg.data))

    def _on_servo_twist(self, msg) -> None:
        t = msg.twist
        self.servo_twists.append((time.monotonic(), np.array(
            [t.linear.x, t.linear.y, t.linear.z, t.angular.x, t.angular.y, t.angular.z])))

    def _on_pose(self, msg) -> None:
        p = msg.pose.position
        self.poses.append((time.monotonic(), np.array([p.x, p.y, p.z])))

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            name = status.name.split(':')[0]
            self.diagnostics[name] = {kv.key: kv.value for kv in status.values}
        self.diagnostics_at = time.monotonic()

    # helpers
    def spin(self, seconds: float, until: Optional[Callable[[], bool]] = None) -> bool:
        return spin_until(self.executor, seconds, until)

    def good_frame(self, bad_image=None) -> int:
        """Publish a good 64x64 frame (or ``bad_image``) with a fresh campaign stamp."""
        from vla_align.ros.conversions import rgb_to_image

        self.frame_count += 1
        sec = STAMP_BASE_SEC + self.frame_count
        if bad_image is None:
            rgb = np.zeros((64, 64, 3), np.uint8)
            rgb[16:40, 20:44] = (200, 30, 30)
            rgb[..., 2] = self.frame_count % 50
            msg = rgb_to_image(rgb, _time(sec), 'camera')
        else:
            msg = bad_image
            msg.header.stamp = _time(sec)
        self.frames_sent[sec] = time.monotonic()
        self.pub['image'].publish(msg)
        return sec

    def good_pose(self) -> None:
        from vla_align.ros.conversions import pose_msg

        self.pub['ee_pose'].publish(pose_msg([0.5, 0.0, 0.2], [1.0, 0.0, 0.0, 0.0],
                                             _time(0), 'panda_link0'))

    def good_joints(self) -> None:
        from vla_align.ros.conversions import joint_state_msg
        from vla_align.sim.types import PANDA_JOINT_NAMES

        positions = [0.0] * (len(PANDA_JOINT_NAMES) - 2) + [0.04, 0.04]
        self.pub['joint_states'].publish(joint_state_msg(PANDA_JOINT_NAMES, positions,
                                                         _time(0)))

    def expert_marker(self) -> None:
        from vla_align.ros.conversions import action_to_multiarray

        self.pub['expert_action'].publish(action_to_multiarray(
            np.array([0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], np.float32)))

    def good_inputs(self) -> None:
        """A good pose, joint states and frame: what the policy acts on."""
        self.good_pose()
        self.good_joints()
        self.good_frame()

    def fresh_diagnostics(self, name: str, timeout_s: float = 5.0) -> dict[str, str]:
        """The next /diagnostics values of node ``name`` published from now on."""
        since = time.monotonic()
        self.spin(timeout_s, until=lambda: self.diagnostics_at > since and name in
                  self.diagnostics)
        return self.diagnostics.get(name, {})

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def _time(sec: int):
    from builtin_interfaces.msg import Time

    return Time(sec=sec, nanosec=0)


def _count_pairs(text: str) -> dict[str, int]:
    """``image:3,ee_pose:1`` -> {'image': 3, 'ee_pose': 1}."""
    out = {}
    for item in filter(None, text.split(',')):
        key, _, value = item.partition(':')
        out[key] = int(value)
    return out


# --- the campaign -------------------------------------------------------------------------------

@dataclass
class CampaignConfig:
    per_subscriber: int = 300
    seed: int = 0
    rate_hz: float = 20.0
    checkpoint: str = 'checkpoints/default'
    out_dir: Path = Path('fuzz')
    domain_id: Optional[int] = None
    targets: tuple[str, ...] = ('policy', 'expert', 'instruction', 'sim', 'servo', 'teleop',
                                'enable', 'recorder')


class Campaign:
    def __init__(self, config: CampaignConfig, progress) -> None:
        self.config = config
        self.progress = progress
        self.results: list[SubscriberResult] = []
        self.shutdown_status: dict[str, Optional[int]] = {}
        self.notes: list[str] = []

    def _seed(self, target: str, subscriber: str) -> int:
        """The generator seed of one subscriber: the campaign seed, told apart per subscriber
        (stable across runs: no hash randomisation)."""
        import zlib

        return self.config.seed * 7919 + zlib.crc32(f'{target}/{subscriber}'.encode()) % 7919

    # -- shared phase mechanics ----------------------------------------------------------------
    def _phase(self, driver: Driver, proc: NodeProcess, kind: str, inputs: list[BadInput],
               send: Callable[[BadInput], None]) -> KindResult:
        """Send ``inputs`` (one kind) at the campaign rate; count log lines and crashes."""
        result = KindResult(kind=kind, sent=len(inputs))
        lines_before = len(proc.log_lines())
        period = 1.0 / self.config.rate_hz
        for item in inputs:
            send(item)
            driver.spin(period)
            self.progress.update(1)
            if not proc.alive():
                break
        driver.spin(0.4)  # let the last answers arrive
        new_lines = proc.log_lines()[lines_before:]
        result.log_lines = len(new_lines)
        result.first_log_line = new_lines[0][:300] if new_lines else ''
        result.crashed = proc.crashed()
        return result

    def _policy_acting(self, driver: Driver, pace: Callable[[], None]) -> bool:
        """Feed good inputs until the policy answers a frame sent from now on."""
        since = time.monotonic()
        deadline = since + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            pace()
            driver.spin(1.0 / self.config.rate_hz)
            if any(sec in driver.frames_sent and driver.frames_sent[sec] >= since
                   for t, sec in driver.twists if t >= since):
                return True
        return False

    @staticmethod
    def _score_policy(driver: Driver, result: KindResult, start: float, end: float,
                      bad_frames: set[int], derived_check: bool, malformed: bool) -> None:
        """Count holds/answers in [start, end]; answers derived from the bad input; unsafe."""
        window = [(t, sec) for t, sec in driver.twists if start <= t <= end]
        answers = [(t, sec) for t, sec in window if sec in driver.frames_sent]
        holds = [t for t, sec in window if sec not in driver.frames_sent]
        result.commands_published = len(answers)
        result.holds_published = len(holds)
        result.unsafe_published = sum(not LIMITS.contains(a) for t, a in driver.actions
                                      if start <= t <= end)
        if bad_frames:  # an answer to a bad frame
            result.derived_from_bad_input = sum(sec in bad_frames for _, sec in answers)
        elif derived_check and malformed:
            # The bad input replaced the good one: after the node acknowledged it with a hold
            # (or 1 s, whichever is first), no frame sent may be answered.
            ack = min([start + 1.0] + holds)
            result.derived_from_bad_input = sum(driver.frames_sent[sec] > ack
                                                for _, sec in answers)

    # -- targets -------------------------------------------------------------------------------
    def run_policy(self, driver: Driver, proc: NodeProcess, subscribers: list[str],
                   target: str) -> None:
        n = self.config.per_subscriber
        generators = {'image': image_inputs, 'instruction': instruction_texts,
                      'ee_pose': pose_inputs, 'joint_states': joint_state_inputs,
                      'expert_action': action_inputs}
        topics_of = {'image': '/camera/image_raw', 'instruction': '/vla/instruction',
                     'ee_pose': '/vla/ee_pose', 'joint_states': '/joint_states',
                     'expert_action': '/vla/expert_action'}
        from std_msgs.msg import String

        def good(skip: str = '') -> None:
            if skip != 'ee_pose':
                driver.good_pose()
            if skip != 'joint_states':
                driver.good_joints()
            if skip != 'expert_action':
                driver.expert_marker()
            if skip != 'image':
                driver.good_frame()

        driver.pub['instruction'].publish(String(data=INSTRUCTION))
        if not self._policy_acting(driver, good):
            self.notes.append(f'{target}: never started acting on good inputs; skipped')
            return
        for subscriber in subscribers:
            entry = SubscriberResult(target, subscriber, topics_of[subscriber])
            if subscriber == 'joint_states':
                entry.derived_check = ('not applicable: the policy uses joint_states only for '
                                       'the initial gripper value; checked finite/in limits')
            inputs = generators[subscriber](self._seed(target, subscriber), n)
            diag_before = _count_pairs(driver.fresh_diagnostics('policy_node').get(
                'bad_inputs', ''))
            for kind in dict.fromkeys(i.kind for i in inputs):
                batch = [i for i in inputs if i.kind == kind]
                if not proc.alive() or not self._policy_acting(driver, good):
                    entry.kinds.append(KindResult(kind, sent=0, crashed=proc.crashed(),
                                                  notes='node not acting before the phase'))
                    continue
                bad_frames: set[int] = set()

                def send(item: BadInput, subscriber=subscriber, bad_frames=bad_frames) -> None:
                    if subscriber == 'image':
                        good('image')
                        bad_frames.add(driver.good_frame(bad_image=item.message))
                        return
                    if subscriber == 'instruction':
                        driver.pub['instruction'].publish(String(data=item.message))
                    else:
                        driver.pub[subscriber].publish(item.message)
                    driver.spin(0.01)  # the bad input first, then a frame to act on
                    good(subscriber)

                start = time.monotonic()
                result = self._phase(driver, proc, kind, batch, send)
                self._score_policy(driver, result, start, time.monotonic(), bad_frames,
                                   subscriber != 'joint_states', batch[0].malformed)
                entry.kinds.append(result)
                if subscriber == 'instruction':
                    driver.pub['instruction'].publish(String(data=INSTRUCTION))
            diag_after = _count_pairs(driver.fresh_diagnostics('policy_node').get(
                'bad_inputs', ''))
            entry.diagnostics_counted = (diag_after.get(subscriber, 0)
                                         - diag_before.get(subscriber, 0))
            self.results.append(entry)

    def run_instruction_node(self, driver: Driver, proc: NodeProcess) -> None:
        from std_msgs.msg import String

        from vla_align.ros.instructions import InstructionError, normalize_instruction

        entry = SubscriberResult('instruction_node', 'instruction_in', '/vla/instruction_in')
        inputs = instruction_texts(self._seed('instruction_node', 'instruction_in'),
                                   self.config.per_subscriber)
        refused_before = int(driver.fresh_diagnostics('instruction_node').get('refused', 0))
        for index, kind in enumerate(dict.fromkeys(i.kind for i in inputs)):
            batch = [i for i in inputs if i.kind == kind]
            good = f'{INSTRUCTION} {index}'
            driver.pub['instruction_in'].publish(String(data=good))
            if not driver.spin(10.0, until=lambda good=good: driver.instructions and
                               driver.instructions[-1][1] == good):
                entry.kinds.append(KindResult(kind, crashed=proc.crashed(),
                                              notes='good instruction not relayed'))
                continue
            driver.spin(0.3)  # the node logs the instruction after publishing it
            start = time.monotonic()
            result = self._phase(driver, proc, kind, batch, lambda item: driver.pub[
                'instruction_in'].publish(String(data=item.message)))
            relayed = [text for t, text in driver.instructions if t >= start]
            clears = kind in ('empty', 'whitespace_only')  # documented: these clear it
            result.commands_published = len(relayed)
            result.derived_from_bad_input = sum(bool(text) or not clears for text in relayed)
            for text in relayed:
                try:
                    normalize_instruction(text, 200)
                except InstructionError:
                    result.unsafe_published += 1
            entry.kinds.append(result)
        refused_after = int(driver.fresh_diagnostics('instruction_node').get('refused', 0))
        entry.diagnostics_counted = refused_after - refused_before
        self.results.append(entry)

    def run_sim(self, driver: Driver, proc: NodeProcess) -> None:
        from vla_align.sim.controller import Workspace

        workspace = Workspace()
        entry = SubscriberResult('sim_node', 'action', '/vla/action')
        entry.derived_check = ('malformed kinds: actions_applied (sim diagnostics) must not grow;'
                               ' out_of_limits: the hand must stay inside the workspace box')
        if not driver.spin(READY_TIMEOUT_S, until=lambda: len(driver.poses) > 3):
            self.notes.append('sim_node: published no pose; skipped')
            return
        inputs = action_inputs(self._seed('sim_node', 'action'), self.config.per_subscriber)
        invalid_before = int(driver.fresh_diagnostics('sim_node').get('invalid_actions', 0))
        for kind in dict.fromkeys(i.kind for i in inputs):
            batch = [i for i in inputs if i.kind == kind]
            applied_before = int(driver.fresh_diagnostics('sim_node').get('actions_applied', 0))
            start = time.monotonic()
            result = self._phase(driver, proc, kind, batch,
                                 lambda item: driver.pub['action'].publish(item.message))
            applied = int(driver.fresh_diagnostics('sim_node').get('actions_applied', 0))
            result.commands_published = applied - applied_before
            if batch[0].malformed:
                result.derived_from_bad_input = applied - applied_before
            tolerance = HAND_TRACKING_TOLERANCE_M
            result.unsafe_published = sum(
                not (np.all(np.isfinite(p)) and workspace.contains(p, atol=tolerance))
                for t, p in driver.poses if t >= start)
            entry.kinds.append(result)
        invalid_after = int(driver.fresh_diagnostics('sim_node').get('invalid_actions', 0))
        entry.diagnostics_counted = invalid_after - invalid_before
        self.results.append(entry)

    # -- orchestration -------------------------------------------------------------------------
    def run(self) -> dict:
        import rclpy

        from vla_align.ros.sources import resolve_checkpoint_path

        config = self.config
        config.out_dir.mkdir(parents=True, exist_ok=True)
        domain = config.domain_id if config.domain_id is not None else 1 + os.getpid() % 100
        checkpoint = str(resolve_checkpoint_path(config.checkpoint).resolve())
        common = {'diagnostics_period_s': 0.5, 'log_repeat_period_s': 10.0}
        plans = {
            'policy': ('policy_node', {'source': 'checkpoint', 'checkpoint': checkpoint,
                                       'control_rate': 30.0, 'max_image_pixels': MAX_IMAGE_PIXELS,
                                       'max_translation_change': 0.0,
                                       'max_rotation_change': 0.0,
                                       # the campaign's frames and poses carry made-up stamps
                                       'state_age_by': 'arrival', **common},
                       ['image', 'instruction', 'ee_pose', 'joint_states']),
            'expert': ('policy_node', {'source': 'expert', 'control_rate': 30.0, **common},
                       ['expert_action']),
            'instruction': ('instruction_node', {'source': 'topic', 'poll_rate_hz': 50.0,
                                                 'log_repeat_period_s': 10.0}, []),
            'sim': ('sim_node', {'family': 'reach', 'image_width': 32, 'image_height': 32,
                                 'control_rate': 20.0, 'max_steps': 100000,
                                 # alone: no instruction node to relay its instruction
                                 'instruction_handshake': False,
                                 'diagnostics_period_s': 0.5}, []),
            'enable': ('policy_node', {'source': 'checkpoint', 'checkpoint': checkpoint,
                                       'start_enabled': False, 'command_rate_hz': 50.0,
                                       'use_workspace': False, 'state_age_by': 'arrival',
                                       **common}, []),
            **{target: (module, {**params, **({'output_dir': str(config.out_dir / 'episodes')}
                                               if target == 'recorder' else {})}, [])
               for target, (module, params) in SERVO_PLANS.items()},
        }
        with tempfile.TemporaryDirectory(prefix='vla_align_fuzz_') as log_dir, \
                private_ros_domain(domain, log_dir) as env:
            for target in config.targets:
                module, params, subscribers = plans[target]
                context = rclpy.Context()
                rclpy.init(args=[], context=context, domain_id=domain)
                driver = Driver(context)
                proc = NodeProcess(module, params, config.out_dir / f'{target}.log', env)
                try:
                    if target in ('policy', 'expert'):
                        self.run_policy(driver, proc, subscribers, f'{module} ({target})')
                    elif target == 'instruction':
                        self.run_instruction_node(driver, proc)
                    elif target == 'sim':
                        self.run_sim(driver, proc)
                    elif target == 'servo':
                        fuzz_robot.run_servo(self, driver, proc)
                    elif target == 'teleop':
                        fuzz_robot.run_teleop(self, driver, proc)
                    elif target == 'enable':
                        fuzz_robot.run_enable(self, driver, proc, driver.good_inputs)
                    else:
                        fuzz_robot.run_recorder(self, driver, proc,
                                                config.out_dir / 'episodes')
                finally:
                    status = proc.stop()
                    self.shutdown_status.setdefault(f'{module} ({target})', status)
                    driver.close()
                    context.try_shutdown()
        return self.report()

    def report(self) -> dict:
        subscribers = [{**{k: v for k, v in asdict(r).items() if k != 'kinds'},
                        **r.totals(),
                        'kinds': [{**asdict(k), 'flood': k.flood} for k in r.kinds]}
                       for r in self.results]
        totals = {key: sum(s[key] for s in subscribers)
                  for key in ('inputs_tried', 'crashes', 'unsafe_published', 'floods')}
        totals['unclean_shutdowns'] = sum(status != 0 for status in self.shutdown_status.values())
        return {'config': {'per_subscriber': self.config.per_subscriber,
                           'seed': self.config.seed, 'rate_hz': self.config.rate_hz,
                           'checkpoint': self.config.checkpoint,
                           'flood_threshold_lines_per_kind': FLOOD_LINES,
                           'max_image_pixels': MAX_IMAGE_PIXELS},
                'totals': totals, 'subscribers': subscribers,
                'shutdown_exit_status': self.shutdown_status, 'notes': self.notes}


def write_markdown(report: dict, path: Path) -> None:
    t = report['totals']
    lines = ['# Fuzz campaign', '',
             f"{t['inputs_tried']} malformed inputs, {report['config']['per_subscriber']} per "
             f"subscriber (seed {report['config']['seed']}): **{t['crashes']} crashes, "
             f"{t['unsafe_published']} unsafe published, {t['floods']} log floods, "
             f"{t['unclean_shutdowns']} unclean shutdowns** (SIGTERM at the end).", '',
             '| node | subscriber | inputs | crashes | unsafe published | log lines (max per '
             'kind) | counted in diagnostics |', '|---|---|---|---|---|---|---|']
    for s in report['subscribers']:
        lines.append(f"| {s['target']} | `{s['topic']}` | {s['inputs_tried']} | {s['crashes']} "
                     f"| {s['unsafe_published']} | {s['log_lines']} "
                     f"({s['max_log_lines_per_kind']}) | {s['diagnostics_counted']} |")
    lines += ['', '## Per kind of bad input', '',
              '| subscriber | kind | sent | answers | holds | derived | unsafe | log lines | '
              'first log line |', '|---|---|---|---|---|---|---|---|---|']
    for s in report['subscribers']:
        for k in s['kinds']:
            first = k['first_log_line'].replace('|', '\\|')[:140]
            lines.append(f"| {s['subscriber']} | {k['kind']} | {k['sent']} | "
                         f"{k['commands_published']} | {k['holds_published']} | "
                         f"{k['derived_from_bad_input']} | {k['unsafe_published']} | "
                         f"{k['log_lines']} | {first} |")
    lines += ['', '"answers": commands computed from a frame (sim: actions applied); "derived": '
              'answers that used the bad input (must be 0); "unsafe": non-finite or '
              'out-of-limit actions, refused text relayed, or the simulated hand outside its '
              'workspace (must be 0).', '']
    for s in report['subscribers']:
        if s['derived_check'] != 'yes':
            lines.append(f"- {s['subscriber']}: derived check {s['derived_check']}")
    lines += [f'- {note}' for note in report['notes']]
    path.write_text('\n'.join(lines) + '\n')


# --- CLI ----------------------------------------------------------------------------------------

def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--per-subscriber', '-n', type=int, default=300,
                        help='malformed inputs sent to each subscriber (default 300)')
    parser.add_argument('--seed', type=int, default=None,
                        help='first seed of the input generators (default: a fresh one, printed)')
    parser.add_argument('--seeds', type=int, default=1,
                        help='campaigns to run, with seeds SEED, SEED+1, ... (default 1)')
    parser.add_argument('--rate', type=float, default=20.0,
                        help='inputs per second (default 20)')
    parser.add_argument('--checkpoint', default='checkpoints/default',
                        help='policy checkpoint of the policy-node target')
    parser.add_argument('--out', type=Path, default=Path('fuzz'),
                        help='folder for fuzz.json, fuzz.md and the node logs')
    parser.add_argument('--targets', nargs='+', default=list(CampaignConfig.targets),
                        choices=list(CampaignConfig.targets), help='which nodes to fuzz')
    parser.add_argument('--domain-id', type=int, default=None,
                        help='ROS domain of the campaign (default: 1 + pid %% 100)')


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.per_subscriber < 1 or not args.rate > 0 or args.seeds < 1:
        print('vla-align fuzz: --per-subscriber and --seeds must be >= 1 and --rate > 0',
              file=sys.stderr)
        return 2
    first = fresh_seed() if args.seed is None else args.seed
    print(f'fuzz seeds {first}..{first + args.seeds - 1} (rerun one with --seed)', flush=True)
    reports = []
    for seed in range(first, first + args.seeds):
        out = args.out if args.seeds == 1 else args.out / f'seed_{seed}'
        config = CampaignConfig(per_subscriber=args.per_subscriber, seed=seed,
                                rate_hz=args.rate, checkpoint=args.checkpoint, out_dir=out,
                                domain_id=args.domain_id, targets=tuple(args.targets))
        with tqdm(total=expected_inputs(config), desc=f'fuzz seed {seed}', unit='msg') as bar:
            report = Campaign(config, bar).run()
        (out / 'fuzz.json').write_text(json.dumps(report, indent=2) + '\n')
        write_markdown(report, out / 'fuzz.md')
        reports.append(report)
    combined = combine_reports(reports)
    if args.seeds > 1:
        (args.out / 'fuzz.json').write_text(json.dumps(combined, indent=2) + '\n')
        write_markdown(combined, args.out / 'fuzz.md')
    t = combined['totals']
    print(f"{t['inputs_tried']} inputs over {args.seeds} seed(s): {t['crashes']} crashes, "
          f"{t['unsafe_published']} unsafe published, {t['floods']} log floods, "
          f"{t['unclean_shutdowns']} unclean shutdowns; report in {args.out / 'fuzz.md'}")
    for note in combined['notes']:
        print(f'note: {note}', file=sys.stderr)
    ok = not (t['crashes'] or t['unsafe_published'] or t['unclean_shutdowns']
              or combined['notes'])
    return 0 if ok else 1


def fresh_seed() -> int:
    """A new seed for a campaign (printed, so a finding can be reproduced)."""
    return int.from_bytes(os.urandom(3), 'big')


def expected_inputs(config: CampaignConfig) -> int:
    counts = {'policy': 4, 'expert': 1, 'instruction': 1, 'sim': 1, 'servo': 2, 'teleop': 1,
              'enable': 1, 'recorder': 1}
    return config.per_subscriber * sum(counts[t] for t in config.targets)


def combine_reports(reports: list[dict]) -> dict:
    """One report of several seeds: totals added, subscribers merged by target/subscriber."""
    if len(reports) == 1:
        return reports[0]
    merged: dict[tuple[str, str], dict] = {}
    for report in reports:
        for row in report['subscribers']:
            key = (row['target'], row['subscriber'])
            if key not in merged:
                merged[key] = {**row, 'kinds': list(row['kinds'])}
                continue
            entry = merged[key]
            for name in ('inputs_tried', 'crashes', 'unsafe_published', 'log_lines', 'floods'):
                entry[name] += row[name]
            entry['max_log_lines_per_kind'] = max(entry['max_log_lines_per_kind'],
                                                  row['max_log_lines_per_kind'])
            if row['diagnostics_counted'] is not None:
                entry['diagnostics_counted'] = (entry['diagnostics_counted'] or 0) + \
                    row['diagnostics_counted']
            entry['kinds'] += row['kinds']
    totals = {key: sum(r['totals'][key] for r in reports)
              for key in reports[0]['totals']}
    return {'config': {**reports[0]['config'],
                       'seeds': [r['config']['seed'] for r in reports]},
            'totals': totals, 'subscribers': list(merged.values()),
            'shutdown_exit_status': {f"{name} seed {r['config']['seed']}": status
                                     for r in reports
                                     for name, status in r['shutdown_exit_status'].items()},
            'notes': [f"seed {r['config']['seed']}: {note}" for r in reports
                      for note in r['notes']]}
