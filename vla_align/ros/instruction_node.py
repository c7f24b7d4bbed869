"""instruction_node: the single writer of /vla/instruction (reliable, transient local, depth 1).

Where the text comes from (``source`` parameter):

* ``parameter`` — the ``instruction`` parameter, published at start and again whenever it is
  set: ``ros2 param set /instruction_node instruction "pick up the red block"``.
* ``stdin`` — one instruction per line typed into the node's terminal.
* ``topic`` — std_msgs/String on /vla/instruction_in (std_srvs has no service that carries a
  string, so a topic is the standard-message way in). The subscription takes what any ordinary
  publisher offers (reliable or transient local, ``qos.INSTRUCTION_INPUT``), so a plain
  ``ros2 topic pub --once /vla/instruction_in std_msgs/String "{data: 'push the blue block
  left'}"`` works; in the simulation graph the sim node publishes its episode instructions here
  like a task planner would.

Every accepted input is published, the same text again included: an instruction message starts
a task, so repeating "pick up the red block" after a failed attempt starts it afresh (the policy
node resets its per-task state on every message). /vla/instruction is latched, so a policy that
starts later still gets the current instruction.

Text is whitespace-normalised; an empty instruction clears the current one (the policy then
holds still); text longer than ``max_length`` or with control characters is refused: the
first refusal is logged with its reason, later ones at most once per
``log_repeat_period_s``, and all are counted in /diagnostics. When several inputs arrive within
one poll period only the newest is published.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String

from vla_align.ros import qos, topics
from vla_align.ros.conversions import diagnostic_array, diagnostic_status
from vla_align.ros.instructions import InstructionError, LineReader, normalize_instruction
from vla_align.ros.params import declare_float, declare_int, declare_str
from vla_align.ros.runner import run_node
from vla_align.ros.safety import BadInputLog

NODE_NAME = 'instruction_node'
SOURCES = ('parameter', 'stdin', 'topic')


class InstructionNode(Node):
    def __init__(self, **node_kwargs) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self._published = 0  # first: destroy_node runs even after a failed start
        self.source = declare_str(self, 'source', 'parameter',
                                  'where instructions come from: parameter, stdin (one per '
                                  'line) or topic (/vla/instruction_in)', SOURCES)
        self.max_length = declare_int(self, 'max_length', 200,
                                      'longest accepted instruction (characters)', 1, 10000)
        poll_rate = declare_float(self, 'poll_rate_hz', 20.0,
                                  'how often new input is checked and published (Hz)',
                                  0.1, 1000.0)
        log_period = declare_float(self, 'log_repeat_period_s', 10.0,
                                   'refused inputs are logged again at most this often (s); '
                                   'all are counted in /diagnostics', 0.0, 3600.0)
        initial = declare_str(self, 'instruction', '',
                              'the instruction (source: parameter); may be changed at run time',
                              read_only=False)
        self._pending: list[str] = []
        self._current: Optional[str] = None  # None: nothing published yet
        self._refusals = BadInputLog(log_period)
        self._reader: Optional[LineReader] = None

        self._publisher = self.create_publisher(String, topics.INSTRUCTION, qos.LATCHED)
        if self.source == 'parameter':
            if initial.strip():
                self._pending.append(initial)
            self.add_on_set_parameters_callback(self._on_set_parameters)
        elif self.source == 'topic':
            self.create_subscription(String, topics.INSTRUCTION_IN, self._on_text,
                                     qos.INSTRUCTION_INPUT)
        else:
            self._reader = LineReader(sys.stdin)
            self.get_logger().info('type an instruction and press Enter (Ctrl-D ends input)')
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS,
                                                      qos.DEFAULT)
        self._timer = self.create_timer(1.0 / poll_rate, self._on_timer)
        self._diagnostics_timer = self.create_timer(1.0, self._publish_diagnostics)

    # -- callbacks: cache only ------------------------------------------------------------------
    def _on_set_parameters(self, params: list[Parameter]) -> SetParametersResult:
        for param in params:
            if param.name != 'instruction':
                continue
            try:
                normalize_instruction(param.value, self.max_length)
            except InstructionError as exc:
                return SetParametersResult(successful=False, reason=str(exc))
            self._pending.append(param.value)
        return SetParametersResult(successful=True)

    def _on_text(self, msg: String) -> None:
        self._pending.append(msg.data)

    # -- work -----------------------------------------------------------------------------------
    def _on_timer(self) -> None:
        if self._reader is not None:
            self._pending.extend(line for line in self._reader.poll() if line.strip())
            if self._reader.finished:
                self.get_logger().info('end of stdin: keeping the current instruction')
                self._reader = None
        if not self._pending:
            return
        # Only the newest input matters: an older one would be replaced immediately.
        text, self._pending = self._pending[-1], []
        try:
            instruction = normalize_instruction(text, self.max_length)
        except InstructionError as exc:
            line = self._refusals.report('instruction', str(exc), time.monotonic())
            if line is not None:
                self.get_logger().warning(line.replace('ignoring bad', 'refused'))
            return
        self._publisher.publish(String(data=instruction))
        self._published += 1
        previous, self._current = self._current, instruction
        if instruction:
            self.get_logger().info(f'instruction: {instruction!r}')
        elif previous:  # a stream of empty messages clears once, not once per message
            self.get_logger().info('instruction cleared')

    def _publish_diagnostics(self) -> None:
        level = DiagnosticStatus.OK if self._current else DiagnosticStatus.WARN
        message = 'instruction set' if self._current else 'no instruction'
        values = {'source': self.source, 'instruction': self._current or '',
                  'published': self._published, 'refused': self._refusals.total}
        status = diagnostic_status(f'{self.get_name()}: instruction', self.source, level,
                                   message, values)
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def destroy_node(self) -> None:
        self.get_logger().info(f'stopping after {self._published} instructions')
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    return run_node(InstructionNode, NODE_NAME, args)


if __name__ == '__main__':
    raise SystemExit(main())
