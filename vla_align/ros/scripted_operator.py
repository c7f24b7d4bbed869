"""scripted_operator: a stand-in for the person at the gamepad, for recording demonstrations.

It does what an operator does in front of a real cell, through the same interfaces: it reads the
task (the instruction on /vla/instruction), moves the arm with a gamepad (sensor_msgs/Joy on
/joy, which teleop_node turns into MoveIt Servo twists), and presses the episode recorder's
buttons (``/episode_recorder/start``, ``/end`` with the outcome). Where a person would use their
eyes and judgement it uses the simulator's privileged topics, and only those: the scripted
expert's suggested action for the current state (/vla/expert_action) and the episode's end and
outcome (/vla/episode_status). None of that reaches the recorded bags, which hold only what the
robot offers (camera, pose, Servo twists, gripper commands) plus the recorder's metadata.

Per control step (each expert suggestion): stick deflection = the suggested per-step motion (plus
``action_noise``, metres per axis, Gaussian, from ``seed``) x the control rate / the teleop's
full-scale speed, clipped to [-1, 1]; the dead-man button held; the gripper button pressed (one
rising edge) when the suggestion's gripper differs from the gripper the teleop commands. At an
episode's end it lets go of the stick, opens the gripper, and ends the recording with the
simulator's verdict; when the next episode's instruction appears on /vla/instruction it starts
the next recording. It asks for the first task (the simulator's /vla/reset_episode) once the
teleop is up and the recorder says it is ready (``~/ready``: every topic it records has a
publisher matched to it), and with ``episodes`` it exits after that many recordings, which
ends the graph. The teleop must be configured as ``axes`` / ``deadman_button`` /
``gripper_button`` / ``max_linear_speed`` say (config/teleop_sim_nodes.yaml does).
"""
from __future__ import annotations

from dataclasses import dataclass
import time
from typing import Optional

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Joy
from std_msgs.msg import Float32MultiArray, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from vla_align.actions import GRIPPER
from vla_align.ros import qos, topics
from vla_align.ros.conversions import multiarray_to_action
from vla_align.ros.episode_status import EpisodeStatus
from vla_align.ros.params import declare_float, declare_int, declare_str
from vla_align.ros.runner import run_node

NODE_NAME = 'scripted_operator'


@dataclass
class OperatorStats:
    episodes_started: int = 0
    episodes_ended: int = 0
    successes: int = 0
    joy_messages: int = 0
    gripper_presses: int = 0
    refused_services: int = 0


def stick_axes(delta: np.ndarray, control_rate: float, max_linear_speed: float,
               max_angular_speed: float) -> np.ndarray:
    """(6,) stick deflections in [-1, 1] that make a teleop command per-step ``delta``."""
    speed = np.asarray(delta[:6], dtype=np.float64) * control_rate
    full = np.array([max_linear_speed] * 3 + [max_angular_speed] * 3)
    return np.clip(speed / full, -1.0, 1.0)


class ScriptedOperator(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.stats = OperatorStats()
        self.control_rate = declare_float(self, 'control_rate', 10.0,
                                          'control steps per second of the cell (Hz)', 0.1, 1000.0)
        self.max_linear = declare_float(self, 'max_linear_speed', 0.3,
                                        "the teleop's full-scale linear speed (m/s)", 1e-3, 10.0)
        self.max_angular = declare_float(self, 'max_angular_speed', 1.5,
                                         "the teleop's full-scale angular speed (rad/s)",
                                         1e-3, 20.0)
        self.deadman_button = declare_int(self, 'deadman_button', 1,
                                          "the teleop's dead-man button index", 0, 63)
        self.gripper_button = declare_int(self, 'gripper_button', 0,
                                          "the teleop's gripper toggle button index", 0, 63)
        self.gripper_open_position = declare_float(
            self, 'gripper_open_position', 0.04,
            'finger position the teleop commands when open (m)', -1.0, 1.0)
        self.action_noise = declare_float(self, 'action_noise', 0.0,
                                          'Gaussian noise on the commanded motion (m per axis '
                                          'and step; the operator is not perfect)', 0.0, 0.03)
        seed = declare_int(self, 'seed', 0, 'seed of the noise', 0, 2 ** 31)
        recorder = declare_str(self, 'recorder', '/episode_recorder',
                               'the episode recorder node whose services are called')
        self.episodes = declare_int(self, 'episodes', 0,
                                    'stop (exit 0, which ends the graph) after recording this '
                                    'many episodes; 0: never', 0, 10 ** 7)
        self._rng = np.random.default_rng(seed)
        self._episode = -1  # the simulator episode being recorded (or waiting to be)
        self._instruction = ''  # the episode's instruction, from the privileged status
        self._recording = False
        self._pending_start = False
        self._echo = ''  # newest /vla/instruction
        self._gripper_closed: Optional[bool] = None  # what the teleop commands now
        self._button_down = False  # the gripper button in the previous Joy message
        self._pressed_at = -1.0  # when the gripper button was last pressed (monotonic)
        self._calls: list = []

        self._joy_pub = self.create_publisher(Joy, topics.JOY, qos.DEFAULT)
        self.create_subscription(Float32MultiArray, topics.EXPERT_ACTION, self._on_expert,
                                 qos.COMMANDS)
        self.create_subscription(String, topics.EPISODE_STATUS, self._on_status,
                                 qos.EPISODE_STATUS)
        self.create_subscription(String, topics.INSTRUCTION, self._on_instruction, qos.LATCHED)
        self.create_subscription(Float64MultiArray, topics.GRIPPER_COMMAND, self._on_gripper,
                                 qos.SERVO_COMMANDS)
        self._start = self.create_client(Trigger, f'{recorder}/start')
        self._ready = self.create_client(Trigger, f'{recorder}/ready')
        self._ready_call = None  # the pending ~/ready call before the first task
        self._recorder_ready = False
        self._end = self.create_client(SetBool, f'{recorder}/end')
        # The simulator waits for the operator's first 'next task' (start_on_launch false):
        # a person starts the recorder before asking for the first task.
        self._next_task = self.create_client(Trigger, topics.RESET_EPISODE)
        self._began = False
        self._answered = 0  # end calls answered
        self.create_timer(0.05, self._on_timer)
        self.get_logger().info(f'operating through {topics.JOY} (teleop full scale '
                               f'{self.max_linear:g} m/s), recorder {recorder}, noise '
                               f'{self.action_noise:g} m')

    # -- callbacks ------------------------------------------------------------------------------
    def _on_instruction(self, msg: String) -> None:
        self._echo = msg.data

    def _on_gripper(self, msg: Float64MultiArray) -> None:
        if len(msg.data):
            self._gripper_closed = abs(msg.data[0] - self.gripper_open_position) > 1e-3

    def _on_status(self, msg: String) -> None:
        try:
            status = EpisodeStatus.from_json(msg.data)
        except (TypeError, ValueError):
            return
        if status.episode > self._episode and not status.done:
            if self._recording:  # the previous end was missed: close it as unjudged
                self._call_end(None)
            self._episode, self._instruction = status.episode, status.instruction
            self._pending_start = True
        elif status.episode == self._episode and status.done and self._recording:
            self._let_go()
            self._call_end(bool(status.success))

    def _on_expert(self, msg: Float32MultiArray) -> None:
        if not self._recording:
            return
        try:
            action = multiarray_to_action(msg)
        except ValueError:
            return
        delta = action.astype(np.float64)
        if self.action_noise > 0:
            delta[:3] += self._rng.normal(0.0, self.action_noise, 3)
        axes = stick_axes(delta, self.control_rate, self.max_linear, self.max_angular)
        want_closed = action[GRIPPER] >= 0.5
        press = False
        if (self._gripper_closed is not None and want_closed != self._gripper_closed
                and not self._button_down and time.monotonic() - self._pressed_at > 0.3):
            press = True
        self._send(axes, deadman=True, gripper=press)

    def _on_timer(self) -> None:
        if self.episodes and self._answered >= self.episodes:
            self.get_logger().info(f'{self._answered} episodes recorded: done')
            raise KeyboardInterrupt  # run_node's clean shutdown; exit status 0 ends the graph
        if not self._began:
            if not self._recorder_ready:
                self._ask_ready()
            elif self._next_task.service_is_ready() and self._gripper_closed is not None:
                self._began = True
                self._next_task.call_async(Trigger.Request())
            return
        if self._pending_start and self._echo == self._instruction and self._instruction:
            if not self._start.service_is_ready():
                return
            if self._gripper_closed:  # a person opens the gripper before the next task
                self._press_gripper_once()
                return
            self._pending_start = False
            future = self._start.call_async(Trigger.Request())
            future.add_done_callback(self._started)
            self._recording = True  # the first frame may come before the answer

    # -- actions ------------------------------------------------------------------------------
    def _ask_ready(self) -> None:
        """Ask the recorder whether it hears every topic it records (once at a time)."""
        call = self._ready_call
        if call is not None and not call.done():
            return
        if call is not None:
            result = call.result()
            self._ready_call = None
            if result is not None and result.success:
                self._recorder_ready = True
                self.get_logger().info(f'recorder ready: {result.message}')
                return
        if self._ready.service_is_ready():
            self._ready_call = self._ready.call_async(Trigger.Request())

    def _started(self, future) -> None:
        result = future.result()
        if result is None or not result.success:
            # E.g. the instruction reached us before the recorder: ask again at the next tick
            # (the episode's first frames are then the only ones not recorded).
            self.stats.refused_services += 1
            self._recording = False
            self._pending_start = True
            if self.stats.refused_services <= 3:
                self.get_logger().info(f'recorder not ready for episode {self._episode} '
                                       f'({getattr(result, "message", "no answer")}); '
                                       f'asking again')
            return
        self.stats.episodes_started += 1

    def _call_end(self, success: Optional[bool]) -> None:
        self._recording = False
        if success is None:
            self.get_logger().warning(f'episode {self._episode} ended unseen')
            success = False
        future = self._end.call_async(SetBool.Request(data=success))
        self.stats.episodes_ended += 1
        self.stats.successes += int(success)
        future.add_done_callback(self._ended)

    def _ended(self, future) -> None:
        self._answered += 1
        result = future.result()
        if result is None or not result.success:
            self.stats.refused_services += 1
            self.get_logger().warning(f'recorder refused to end episode {self._episode}: '
                                      f'{getattr(result, "message", "no answer")}')

    def _let_go(self) -> None:
        self._send(np.zeros(6), deadman=False, gripper=False)

    def _press_gripper_once(self) -> None:
        if not self._button_down and time.monotonic() - self._pressed_at > 0.3:
            self._send(np.zeros(6), deadman=True, gripper=True)
        else:
            self._send(np.zeros(6), deadman=True, gripper=False)

    def _send(self, axes: np.ndarray, deadman: bool, gripper: bool) -> None:
        buttons = [0] * (max(self.deadman_button, self.gripper_button) + 1)
        buttons[self.deadman_button] = int(deadman)
        buttons[self.gripper_button] = int(gripper)
        if gripper:
            self._pressed_at = time.monotonic()
            self.stats.gripper_presses += 1
        self._button_down = gripper
        msg = Joy(axes=[float(a) for a in axes], buttons=buttons)
        msg.header.stamp = self.get_clock().now().to_msg()
        self._joy_pub.publish(msg)
        self.stats.joy_messages += 1

    def destroy_node(self) -> None:
        s = self.stats
        self.get_logger().info(f'stopping: {s.episodes_started} episodes started, '
                               f'{s.episodes_ended} ended ({s.successes} successes), '
                               f'{s.joy_messages} Joy messages, {s.gripper_presses} gripper '
                               f'presses')
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    return run_node(ScriptedOperator, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
