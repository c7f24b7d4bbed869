"""Fuzz targets of the robot path: what a real cell's interfaces receive.

* ``servo`` -- the simulator standing in for MoveIt Servo and the gripper controller:
  TwistStamped commands (non-finite, stale, from the future, another frame, huge) and
  Float64MultiArray gripper commands. A malformed command must never be applied (the
  simulator's ``twists_applied`` does not grow, its gripper command does not change); huge ones
  are clamped and the hand stays in its workspace box.
* ``teleop`` -- the teleop node's sensor_msgs/Joy input, with the dead-man button held: a refused
  message stops motion (no moving twist derived from it); every twist published is finite and
  within the full-scale speeds.
* ``enable`` -- the policy node's ``~/enable`` (std_srvs/SetBool) called in orders hypothesis
  picks while the policy acts: after every answered ``false`` no moving twist reaches the command
  topic until the next ``true``.
* ``recorder`` -- the episode recorder's services (start / end / discard) in orders hypothesis
  picks, with junk notes and junk instructions: every call answered, every saved episode readable
  with its metadata, no message received and not written.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np

from vla_align.ros.fuzz_inputs import (
    INSTRUCTION,
    BadInput,
    gripper_command_inputs,
    instruction_texts,
    joy_inputs,
    service_sequences,
    twist_inputs,
)

#: The teleop target's full-scale speeds (m/s, rad/s) and the simulator's per-second limits.
TELEOP_LINEAR, TELEOP_ANGULAR = 0.1, 0.5
SERVO_PLANS: dict[str, tuple[str, dict[str, object]]] = {
    'servo': ('sim_node', {'family': 'reach', 'image_width': 32, 'image_height': 32,
                           'control_rate': 20.0, 'max_steps': 100000, 'command_input': 'servo',
                           'instruction_handshake': False, 'diagnostics_period_s': 0.5}),
    'teleop': ('teleop_node', {'input': 'joy', 'preset': 'spacemouse', 'deadman_button': 1,
                               'gripper_button': -1, 'deadzone': 0.0,
                               'max_linear_speed': TELEOP_LINEAR,
                               'max_angular_speed': TELEOP_ANGULAR, 'initial_speed_scale': 1.0,
                               'publish_rate_hz': 30.0, 'diagnostics_period_s': 0.5}),
    'recorder': ('episode_recorder', {'require_publishers': False, 'storage': 'mcap'}),
}


def _moving(velocity: np.ndarray) -> bool:
    return bool(np.any(np.abs(velocity) > 0.0))


def run_servo(campaign: Any, driver: Any, proc: Any) -> None:
    """The stand-in's Servo twist and gripper command inputs."""
    from vla_align.ros.fuzz_campaign import HAND_TRACKING_TOLERANCE_M, SubscriberResult
    from vla_align.sim.controller import Workspace

    workspace = Workspace()
    if not driver.spin(60.0, until=lambda: len(driver.poses) > 3):
        campaign.notes.append('sim_node (servo): published no pose; skipped')
        return
    n = campaign.config.per_subscriber
    for subscriber, topic, generate, counter in (
            ('servo_twist', '/servo_node/delta_twist_cmds', twist_inputs, 'twists_applied'),
            ('gripper_command', '/panda_hand_controller/commands', gripper_command_inputs,
             'gripper_command')):
        entry = SubscriberResult('sim_node (servo)', subscriber, topic)
        entry.derived_check = (f'malformed kinds: {counter} (sim diagnostics) unchanged; huge '
                               f'ones clamped: the hand stays in its workspace box')
        inputs = generate(campaign._seed('servo', subscriber), n)
        refused_before = int(driver.fresh_diagnostics('sim_node').get('refused_commands', 0))
        for kind in dict.fromkeys(i.kind for i in inputs):
            batch = [i for i in inputs if i.kind == kind]
            before = driver.fresh_diagnostics('sim_node').get(counter, '0')
            start = time.monotonic()

            def send(item: BadInput, subscriber: str = subscriber) -> None:
                if subscriber == 'servo_twist':
                    msg, age = item.message
                    now = driver.node.get_clock().now().nanoseconds * 1e-9
                    stamp = max(0.0, now - age) if math.isfinite(now - age) else 0.0
                    msg.header.stamp.sec = min(int(stamp), 2 ** 31 - 1)
                    msg.header.stamp.nanosec = int((stamp % 1) * 1e9)
                    driver.pub['servo_twist'].publish(msg)
                else:
                    driver.pub['gripper_command'].publish(item.message)

            result = campaign._phase(driver, proc, kind, batch, send)
            after = driver.fresh_diagnostics('sim_node').get(counter, '0')
            if subscriber == 'servo_twist':
                applied = int(after) - int(before)
                result.commands_published = applied
                if batch[0].malformed:
                    result.derived_from_bad_input = applied
            else:
                value = float(after)
                result.commands_published = int(after != before)
                if batch[0].malformed:
                    result.derived_from_bad_input = int(after != before)
                result.unsafe_published += int(not (math.isfinite(value) and 0.0 <= value <= 1.0))
            result.unsafe_published += sum(
                not (np.all(np.isfinite(p))
                     and workspace.contains(p, atol=HAND_TRACKING_TOLERANCE_M))
                for t, p in driver.poses if t >= start)
            entry.kinds.append(result)
            if subscriber == 'gripper_command':  # back to a good value for the next phase
                from std_msgs.msg import Float64MultiArray

                driver.pub['gripper_command'].publish(Float64MultiArray(data=[0.04]))
                driver.spin(0.3)
        refused_after = int(driver.fresh_diagnostics('sim_node').get('refused_commands', 0))
        entry.diagnostics_counted = refused_after - refused_before
        campaign.results.append(entry)


def run_teleop(campaign: Any, driver: Any, proc: Any) -> None:
    """The teleop node's Joy input (dead man held in every message)."""
    from vla_align.ros.fuzz_campaign import SubscriberResult

    entry = SubscriberResult('teleop_node', 'joy', '/joy')
    entry.derived_check = ('malformed kinds: no moving twist after the first bad message; every '
                           'twist finite and within the full-scale speeds')
    if not driver.spin(60.0, until=lambda: len(driver.servo_twists) > 3):
        campaign.notes.append('teleop_node: published no twist; skipped')
        return
    inputs = joy_inputs(campaign._seed('teleop', 'joy'), campaign.config.per_subscriber)
    refused_before = int(driver.fresh_diagnostics('teleop_node').get('refused', 0))
    limits = np.array([TELEOP_LINEAR] * 3 + [TELEOP_ANGULAR] * 3) * (1 + 1e-6)
    for kind in dict.fromkeys(i.kind for i in inputs):
        batch = [i for i in inputs if i.kind == kind]
        driver.spin(0.5)  # the previous phase's input times out: motion stops
        start = time.monotonic()
        result = campaign._phase(driver, proc, kind, batch,
                                 lambda item: driver.pub['joy'].publish(item.message))
        twists = [v for t, v in driver.servo_twists if t >= start]
        moving = [v for v in twists if _moving(v)]
        result.commands_published = len(moving)
        if batch[0].malformed:
            # The first bad message may find the previous phase's good... there is none: every
            # message of a malformed phase is refused, so nothing may move.
            result.derived_from_bad_input = len(moving)
        result.unsafe_published = sum(not (np.all(np.isfinite(v)) and np.all(np.abs(v) <= limits))
                                      for v in twists)
        entry.kinds.append(result)
    refused_after = int(driver.fresh_diagnostics('teleop_node').get('refused', 0))
    entry.diagnostics_counted = refused_after - refused_before
    campaign.results.append(entry)


def run_enable(campaign: Any, driver: Any, proc: Any, good: Any) -> None:
    """~/enable toggled in hypothesis-chosen orders while the policy acts on good inputs."""
    from std_msgs.msg import String
    from std_srvs.srv import SetBool

    from vla_align.ros.fuzz_campaign import KindResult, SubscriberResult

    entry = SubscriberResult('policy_node (robot path)', 'enable', '/policy_node/enable')
    entry.derived_check = 'after an answered false, no moving twist until the next true'
    client = driver.node.create_client(SetBool, '/policy_node/enable')
    driver.pub['instruction'].publish(String(data=INSTRUCTION))
    if not driver.spin(60.0, until=client.service_is_ready):
        campaign.notes.append('policy_node: no ~/enable service; skipped')
        return
    calls = service_sequences(campaign._seed('policy', 'enable'),
                              campaign.config.per_subscriber, ('true', 'false'))
    result = KindResult('enable_sequence', sent=len(calls))
    lines_before = len(proc.log_lines())
    disabled_since: float | None = time.monotonic()  # the robot path starts disabled
    moving_while_disabled = 0
    for call in calls:
        for _ in range(3):  # a few frames between calls: the policy acts on them
            good()
            driver.spin(1.0 / campaign.config.rate_hz)
        sent = time.monotonic()
        future = client.call_async(SetBool.Request(data=call == 'true'))
        if not driver.spin(10.0, until=future.done) or not future.result().success:
            result.notes = f'~/enable {call} was not answered'
            break
        answered = time.monotonic()
        if disabled_since is not None:
            moving_while_disabled += sum(_moving(v) for t, v in driver.servo_twists
                                         if disabled_since <= t <= sent)
        disabled_since = answered if call == 'false' else None
        campaign.progress.update(1)
        if not proc.alive():
            break
    driver.spin(0.5)
    if disabled_since is not None:
        moving_while_disabled += sum(_moving(v) for t, v in driver.servo_twists
                                     if t >= disabled_since)
    result.derived_from_bad_input = moving_while_disabled
    result.commands_published = sum(_moving(v) for _t, v in driver.servo_twists)
    new_lines = proc.log_lines()[lines_before:]
    # ~/enable logs each change by design (an operator wants that), so the flood check is off.
    result.log_lines = 0
    result.first_log_line = new_lines[0][:300] if new_lines else ''
    result.crashed = proc.crashed()
    entry.kinds.append(result)
    campaign.results.append(entry)


def run_recorder(campaign: Any, driver: Any, proc: Any, output_dir: Any) -> None:
    """Episode recorder services in random orders, junk notes and junk instructions."""
    from std_msgs.msg import String
    from std_srvs.srv import SetBool, Trigger

    from vla_align.data.bag_io import find_bags, open_bag_reader
    from vla_align.ros.fuzz_campaign import KindResult, SubscriberResult

    entry = SubscriberResult('episode_recorder', 'services + notes',
                             '/episode_recorder/{start,end,discard,notes}')
    entry.derived_check = ('every call answered; every saved episode readable with metadata; '
                           'no message lost')
    clients = {'start': driver.node.create_client(Trigger, '/episode_recorder/start'),
               'end': driver.node.create_client(SetBool, '/episode_recorder/end'),
               'discard': driver.node.create_client(Trigger, '/episode_recorder/discard')}
    if not driver.spin(60.0, until=lambda: all(c.service_is_ready() for c in clients.values())):
        campaign.notes.append('episode_recorder: services never came up; skipped')
        return
    n = campaign.config.per_subscriber
    seed = campaign._seed('recorder', 'services')
    calls = service_sequences(seed, n, ('start', 'end', 'discard'))
    notes = instruction_texts(seed + 1, n)
    junk = instruction_texts(seed + 2, n)
    result = KindResult('service_sequence', sent=len(calls) + len(notes) + len(junk))
    lines_before = len(proc.log_lines())
    unanswered = 0
    for index, call in enumerate(calls):
        text = INSTRUCTION if index % 3 else junk[index].message
        driver.pub['instruction'].publish(String(data=text))
        driver.pub['notes'].publish(String(data=notes[index].message))
        driver.good_pose()
        driver.good_frame()
        driver.spin(0.02)
        request = SetBool.Request(data=bool(index % 2)) if call == 'end' else Trigger.Request()
        future = clients[call].call_async(request)
        if not driver.spin(10.0, until=future.done):
            unanswered += 1
        campaign.progress.update(1)
        if not proc.alive():
            break
    status = proc.stop()
    campaign.shutdown_status['episode_recorder'] = status
    unreadable = 0
    for bag in find_bags([output_dir]):
        try:
            reader = open_bag_reader(bag)
            topics = set(reader.topics)
            reader.close()
            unreadable += '/vla/episode' not in topics
        except ValueError:
            unreadable += 1
    log = proc.log_text()
    result.unsafe_published = unreadable + unanswered + log.count('NOT written')
    result.derived_from_bad_input = 0
    result.commands_published = len(find_bags([output_dir]))
    new_lines = proc.log_lines()[lines_before:]
    # Each refused or accepted call is answered and logged once by design: not a flood; the
    # refused notes and instructions are logged once per period.
    result.log_lines = sum('refused (' not in line and ' saved as ' not in line
                           and ' recording: ' not in line and ' discarded' not in line
                           and 'stopping' not in line for line in new_lines)
    result.first_log_line = new_lines[0][:300] if new_lines else ''
    result.crashed = 'Traceback' in log or status not in (0, None)
    result.notes = f'{unanswered} calls unanswered, {unreadable} saved episodes unreadable'
    entry.kinds.append(result)
    campaign.results.append(entry)
