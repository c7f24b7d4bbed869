"""episode_recorder: demonstrations recorded as episodes, one rosbag2 each, with their outcome.

::

    vla-align record --episodes runs/episodes --contract panda_servo_teleop --operator ana
    ros2 run vla_align episode_recorder --ros-args -p output_dir:=runs/episodes
    ros2 service call /episode_recorder/start std_srvs/srv/Trigger
    ros2 service call /episode_recorder/end std_srvs/srv/SetBool "{data: true}"   # success
    ros2 service call /episode_recorder/discard std_srvs/srv/Trigger
    ros2 topic pub --once /episode_recorder/notes std_msgs/String "{data: 'slipped once'}"

The contract (``contract`` parameter: a file or a shipped name) says what is recorded: its
``topics()``, subscribed as raw bytes with the QoS of their kind (record.RawSubscriptions; types
known for the standard topics, learnt from the publishers otherwise). Each episode is its own
folder ``output_dir/episode_NNNN/`` holding those topics from start to end plus the episode's
``EpisodeMetadata`` on /vla/episode (instruction, outcome, robot, operator, notes, contract,
control rate, start and end times, message counts): the bag ``data.contract`` reads.

* ``~/start`` (Trigger) starts an episode with the current /vla/instruction (refused without
  one, while an episode runs, or -- with ``require_publishers`` -- while a contract topic has
  no publisher matched to the recorder, so an episode never starts without its pose or
  commands); ``~/ready`` (Trigger) answers whether every contract topic has one and names
  those that do not; ``~/end`` (SetBool: true success, false failure) closes it;
  ``~/discard`` (Trigger) stops it and deletes its folder. With ``keyboard`` the node's terminal
  does the same: s start, y success, n failure, d discard, q quit.
* The services act at once (their answer says whether it worked): starting opens a bag,
  ending drains its writer queue. Message callbacks only hand bytes to the writer thread.
* ``~/notes`` (std_msgs/String, any ordinary publisher): the newest note goes into the next
  episode that ends, then it is cleared.
* Nothing is lost silently: per episode, messages received and written are compared and any
  difference is logged as an error. An episode still running at shutdown (Ctrl-C, SIGTERM) is
  closed as 'unknown'; after a SIGKILL its folder is an unclosed bag that every reader of the
  project recovers (without metadata, which the contract reader reports).
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Optional

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.node import Node
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from vla_align.data.bag_io import STORAGES
from vla_align.data.contract import ContractError, load_contract
from vla_align.ros import qos, topics
from vla_align.ros.conversions import diagnostic_array, diagnostic_status
from vla_align.ros.episode_session import (
    KEY_HELP,
    MAX_NOTES_LENGTH,
    ClosedEpisode,
    EpisodeError,
    EpisodeSession,
    EpisodeSettings,
    KeyCommand,
    KeyReader,
    contract_topic_specs,
    key_command,
)
from vla_align.ros.instructions import InstructionError, normalize_instruction
from vla_align.ros.params import (
    StartupError,
    declare_bool,
    declare_float,
    declare_str,
)
from vla_align.ros.record import FLUSH_PERIOD_S, RawSubscriptions
from vla_align.ros.runner import run_node
from vla_align.ros.safety import BadInputLog

NODE_NAME = 'episode_recorder'
DEFAULT_CONTRACT = 'panda_servo_teleop'
#: Longest instruction an episode is started with (the instruction node's limit is lower).
MAX_INSTRUCTION_LENGTH = 1000


class EpisodeRecorderNode(Node):
    """Records the contract's topics into one bag per episode; services and keys drive it.

    ``key_input`` (a file object or descriptor) replaces stdin as the keyboard (tests).
    """

    def __init__(self, key_input: Any = None, **node_kwargs: Any) -> None:
        super().__init__(NODE_NAME, **node_kwargs)
        self.session: Optional[EpisodeSession] = None  # first: destroy_node runs after failures
        self._keys: Optional[KeyReader] = None
        self._notes = ''
        self._instruction_text: Optional[str] = None  # newest /vla/instruction, as received
        self._instruction = ''  # ... checked (once per message)
        self.quit_requested = False
        output_dir = declare_str(self, 'output_dir', '',
                                 'folder of episodes, one rosbag2 folder each (required)')
        contract_name = declare_str(self, 'contract', DEFAULT_CONTRACT,
                                    'topic contract whose topics are recorded: a file or the '
                                    'name of one in config/contracts')
        robot = declare_str(self, 'robot', '',
                            "robot stored with each episode ('': the contract's robot)")
        operator = declare_str(self, 'operator', '', 'who drives the robot (stored)')
        storage = declare_str(self, 'storage', 'mcap', 'bag storage', STORAGES)
        flush_period_s = declare_float(
            self, 'flush_period_s', FLUSH_PERIOD_S,
            'seconds between making the bag durable (what a SIGKILL loses)', low=0.01)
        keyboard = declare_bool(self, 'keyboard', False,
                                'terminal keys: s start, y success, n failure, d discard, '
                                'q quit')
        self._require_publishers = declare_bool(
            self, 'require_publishers', True,
            'refuse ~/start while a contract topic has no publisher matched to the recorder')
        log_period = declare_float(self, 'log_repeat_period_s', 10.0,
                                   'refused inputs are logged again at most this often (s)',
                                   0.0, 3600.0)
        if not output_dir:
            raise StartupError(f'{NODE_NAME}: set the parameter output_dir to a folder of '
                               f'episodes')
        try:
            contract = load_contract(contract_name)
        except ContractError as exc:
            raise StartupError(f'{NODE_NAME}: {exc}') from None
        if robot and robot != contract.robot:
            self.get_logger().warning(f"robot {robot!r} is not the contract's "
                                      f'{contract.robot!r}: its reader will refuse these '
                                      f'episodes')
        settings = EpisodeSettings(output_dir=output_dir, contract=contract.name,
                                   robot=robot or contract.robot, operator=operator,
                                   control_hz=contract.control_rate_hz, storage=storage,
                                   flush_period_s=flush_period_s)
        clock = self.get_clock()
        try:
            self.session = EpisodeSession(settings, lambda: clock.now().nanoseconds)
        except OSError as exc:
            raise StartupError(f'{NODE_NAME}: cannot use {output_dir}: {exc}') from None
        self._refusals = BadInputLog(log_period)

        self.create_subscription(String, topics.INSTRUCTION, self._on_instruction, qos.LATCHED)
        self.create_subscription(String, '~/notes', self._on_notes, qos.INSTRUCTION_INPUT)
        self._raw = RawSubscriptions(self, self.session.put, self.session.add_topic)
        specs = contract_topic_specs(contract)
        for spec in specs:
            if spec.msgtype is not None:
                self._raw.subscribe(spec.topic, spec.msgtype, spec.kind)
        self._wanted = {spec.topic for spec in specs}
        self.create_service(Trigger, '~/start', self._on_start)
        self.create_service(Trigger, '~/ready', self._on_ready)
        self.create_service(SetBool, '~/end', self._on_end)
        self.create_service(Trigger, '~/discard', self._on_discard)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, topics.DIAGNOSTICS,
                                                      qos.DEFAULT)
        self.create_timer(0.5, self._discover)
        self.create_timer(1.0, self._publish_diagnostics)
        if keyboard:
            try:
                self._keys = KeyReader(key_input)
            except (OSError, ValueError) as exc:
                self.get_logger().warning(f'no keyboard ({exc}): use the services')
            else:
                self.create_timer(0.05, self._on_key_timer)
        self.get_logger().info(
            f'episodes of {contract.name} to {output_dir} ({storage}): '
            f'{", ".join(sorted(self._wanted))}'
            + (f'; {KEY_HELP}' if self._keys is not None else
               f'; services {self.get_fully_qualified_name()}/start, end, discard'))

    # -- callbacks: messages are cached; services answer with what they did -----------------------
    def _on_instruction(self, msg: String) -> None:
        self._instruction_text = msg.data  # checked when next needed

    def _on_notes(self, msg: String) -> None:
        self._notes = msg.data

    def _on_start(self, _request: Trigger.Request, response: Trigger.Response) -> Any:
        response.success, response.message = self.command(KeyCommand.START)
        return response

    def _on_ready(self, _request: Trigger.Request, response: Trigger.Response) -> Any:
        missing = self.missing_publishers()
        response.success = not missing
        response.message = ('ready: every contract topic has a publisher' if not missing else
                            f'no publisher yet on {", ".join(missing)}')
        return response

    def missing_publishers(self) -> list[str]:
        """Contract topics without a matched publisher (see RawSubscriptions)."""
        return self._raw.without_publishers(self._wanted)

    def _on_end(self, request: SetBool.Request, response: SetBool.Response) -> Any:
        command = KeyCommand.SUCCESS if request.data else KeyCommand.FAILURE
        response.success, response.message = self.command(command)
        return response

    def _on_discard(self, _request: Trigger.Request, response: Trigger.Response) -> Any:
        response.success, response.message = self.command(KeyCommand.DISCARD)
        return response

    # -- work -------------------------------------------------------------------------------------
    @property
    def keyboard_on(self) -> bool:
        return self._keys is not None

    @property
    def instruction(self) -> str:
        """The current instruction ('' when none, or when it is not acceptable text)."""
        text, self._instruction_text = self._instruction_text, None
        if text is not None:
            try:
                self._instruction = normalize_instruction(text, MAX_INSTRUCTION_LENGTH)
            except InstructionError as exc:
                self._instruction = ''
                line = self._refusals.report('instruction', str(exc), time.monotonic())
                if line is not None:
                    self.get_logger().warning(line)
        return self._instruction

    def command(self, command: KeyCommand) -> tuple[bool, str]:
        """Carry out one command; (done, the status line), also logged."""
        try:
            if command == KeyCommand.START:
                missing = self.missing_publishers() if self._require_publishers else []
                if missing and not self.session.recording:
                    raise EpisodeError(f'no publisher yet on {", ".join(missing)}: the episode '
                                       f'could not be paired (start the drivers, or set '
                                       f'require_publishers false)')
                name = self.session.start(self.instruction)
                ok, line = True, f'{name} recording: {self.session.current_instruction!r}'
            elif command == KeyCommand.QUIT:
                self.quit_requested = True
                ok, line = True, 'quitting' + (f': {self.session.current} will be closed as '
                                               f'unknown' if self.session.recording else '')
            else:
                if command == KeyCommand.DISCARD:
                    closed = self.session.discard()
                else:
                    closed = self.session.end(
                        'success' if command == KeyCommand.SUCCESS else 'failure',
                        self._take_notes())
                self._report(closed)
                ok, line = True, closed.summary()
        except EpisodeError as exc:
            ok, line = False, f'refused ({command.name.lower()}): {exc}'
        if ok:  # one call site per severity: rclpy refuses to change it between calls
            self.get_logger().info(line)
        else:
            self.get_logger().warning(line)
        return ok, line

    def _take_notes(self) -> str:
        notes, self._notes = self._notes, ''
        if len(notes) > MAX_NOTES_LENGTH:
            line = self._refusals.report('notes', f'{len(notes)} characters, cut to '
                                         f'{MAX_NOTES_LENGTH}', time.monotonic())
            if line is not None:
                self.get_logger().warning(line)
        return notes

    def _report(self, closed: ClosedEpisode) -> None:
        """An error line for any message received but not written."""
        if closed.lost or closed.stats.error:
            self.get_logger().error(f'{closed.summary()}\n{closed.stats.table()}')

    def _discover(self) -> None:
        self._raw.discover(self._wanted)

    def _on_key_timer(self) -> None:
        for key in self._keys.poll():
            command = key_command(key)
            if command is None:
                if self._refusals.report('key', repr(key), time.monotonic()) is not None:
                    self.get_logger().warning(f'unknown key {key!r} ({KEY_HELP})')
                continue
            self.command(command)
        if self._keys.finished:
            self.get_logger().info('end of keyboard input: use the services')
            self._keys.close()
            self._keys = None
        if self.quit_requested:
            raise KeyboardInterrupt  # run_node's clean-shutdown path, as Ctrl-C takes

    def _publish_diagnostics(self) -> None:
        session = self.session
        received, written = session.messages()
        instruction = session.current_instruction or self.instruction
        if session.lost:
            level, message = DiagnosticStatus.ERROR, f'{session.lost} messages not written'
        elif session.recording:
            level, message = DiagnosticStatus.OK, f'recording {session.current}'
        elif not instruction:
            level, message = DiagnosticStatus.WARN, 'idle: no instruction'
        else:
            level, message = DiagnosticStatus.OK, 'idle'
        values = {'state': 'recording' if session.recording else 'idle',
                  'episode': session.current, 'messages_received': received,
                  'messages_written': written, 'instruction': instruction,
                  'episodes_saved': sum(e.outcome != 'discarded' for e in session.closed),
                  'episodes_discarded': sum(e.outcome == 'discarded' for e in session.closed),
                  'messages_lost': session.lost, 'output_dir': str(session.settings.output_dir),
                  'refused_inputs': self._refusals.total}
        status = diagnostic_status(f'{self.get_name()}: episodes', session.settings.contract,
                                   level, message, values)
        self._diagnostics_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), status))

    def destroy_node(self) -> None:
        if self._keys is not None:
            self._keys.close()
            self._keys = None
        session = self.session
        if session is not None:
            closed = session.close(self._take_notes())
            if closed is not None:
                self.get_logger().info(f'stopped while recording: {closed.summary()}')
                self._report(closed)
            saved = [e for e in session.closed if e.outcome != 'discarded']
            self.get_logger().info(
                f'stopping: {len(saved)} episodes saved to {session.settings.output_dir}, '
                f'{len(session.closed) - len(saved)} discarded'
                + (f'; {session.lost} messages NOT written' if session.lost else ''))
        super().destroy_node()


def main(args: Optional[list[str]] = None) -> int:
    return run_node(EpisodeRecorderNode, NODE_NAME, args)


def run_cli(args: argparse.Namespace) -> int:
    """``vla-align record --episodes DIR`` (parser: record.configure_parser)."""
    from vla_align.ros.record import cli_ros, spin_until_stopped

    keyboard = args.keyboard
    if keyboard is None:
        keyboard = sys.stdin.isatty()
    overrides = [Parameter('output_dir', value=str(args.episodes)),
                 Parameter('contract', value=str(args.contract)),
                 Parameter('robot', value=args.robot), Parameter('operator', value=args.operator),
                 Parameter('storage', value=args.storage),
                 Parameter('flush_period_s', value=float(args.flush_period)),
                 Parameter('keyboard', value=bool(keyboard)),
                 Parameter('require_publishers', value=bool(args.require_publishers))]
    with cli_ros() as stop:
        try:
            node = EpisodeRecorderNode(parameter_overrides=overrides)
        except StartupError as exc:
            print(f'vla-align record: {exc}', file=sys.stderr)
            return 2
        try:
            print(f'recording episodes to {args.episodes} ('
                  + (KEY_HELP if node.keyboard_on else
                     'services /episode_recorder/start, end, discard')
                  + '; Ctrl-C to stop)', flush=True)
            spin_until_stopped(node, stop, args.duration)
        finally:
            session = node.session
            node.destroy_node()
    for episode in session.closed:
        print(episode.summary())
    saved = sum(e.outcome != 'discarded' for e in session.closed)
    print(f'{saved} episodes saved to {args.episodes}'
          + (f'; {session.lost} messages NOT written' if session.lost else ''))
    return 1 if session.lost else 0


if __name__ == '__main__':
    raise SystemExit(main())
