"""``vla-align up GRAPH [NAME:=VALUE ...]``: a node graph without ``ros2 launch``, one process
per node, from the same graph file the launch files are built from (``graph_config``); launch
arguments are given as for ``ros2 launch`` (``--show-args`` lists them).

Each node runs as ``python -m <module> --ros-args ...`` (see ``graph_config``); its output is
forwarded line by line with a ``[node]`` prefix. Ctrl-C or SIGTERM stops the graph: SIGINT to
every node (recorders once the others have stopped), up to ``shutdown_timeout_s`` to exit, then
SIGKILL. A node that exits on its own stops the whole graph (status 1).

``--episodes N`` watches /vla/episode_status (published by the sim node), prints each finished
episode and stops the graph after N of them (status 0, whatever the success rate; the rate is
printed). ``--timeout S`` stops after S seconds (status 1 if ``--episodes`` was not reached).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, TextIO

from vla_align.ros.graph_config import (
    GraphConfig,
    GraphConfigError,
    GraphSettings,
    dds_profile_variable,
    load_graph_config,
    resolve_config_path,
)
from vla_align.ros.node_harness import NodeProcess

PREFIX = '[up]'
#: ``vla-align up GRAPH --dry-run NAME:=VALUE``: launch arguments may follow options.
INTERMIXED_ARGUMENTS = True


def graph_environment(settings: GraphSettings, domain_id: Optional[int] = None,
                      base: Optional[dict[str, str]] = None, tty: bool = False) -> dict[str, str]:
    """Environment of the node processes (and of the launcher's own episode monitor)."""
    env = dict(os.environ if base is None else base)
    domain = domain_id if domain_id is not None else settings.ros_domain_id
    if domain is not None:
        env['ROS_DOMAIN_ID'] = str(domain)
    if settings.localhost_only:
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'  # Jazzy and later
        env['ROS_LOCALHOST_ONLY'] = '1'  # Humble
    if settings.dds_profile is not None:
        env[dds_profile_variable(env.get('ROS_DISTRO'))] = str(settings.dds_profile)
    env['PYTHONUNBUFFERED'] = '1'
    env['RCUTILS_LOGGING_BUFFERED_STREAM'] = '0'
    env.setdefault('RCUTILS_COLORIZED_OUTPUT', '1' if tty else '0')
    return env


class LineSink:
    """Writes whole lines from many threads without interleaving them."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, line: str) -> None:
        with self._lock:
            self._stream.write(line + '\n')
            self._stream.flush()


@dataclass(frozen=True)
class RunOutcome:
    status: int
    reason: str
    episodes: tuple  # EpisodeStatus of the finished episodes, in order


class GraphRunner:
    """Starts the nodes of a graph, watches them, and stops them all on the way out."""

    def __init__(self, config: GraphConfig, env: dict[str, str], sink: LineSink) -> None:
        self.config = config
        self.env = env
        self.sink = sink
        self.nodes: list[NodeProcess] = []
        self._stop = threading.Event()
        self._stop_reason = ''

    def request_stop(self, reason: str) -> None:
        """Ask the run loop to stop (signal handlers call this)."""
        self._stop_reason = self._stop_reason or reason
        self._stop.set()

    def run(self, episodes: Optional[int] = None, timeout: Optional[float] = None,
            on_episode: Optional[Callable] = None) -> RunOutcome:
        monitor = _EpisodeWatcher(self.env) if episodes else None
        finished: list = []
        start = time.monotonic()
        try:
            self.start()
            while True:
                if monitor is not None:
                    for status in monitor.poll(0.1):
                        finished.append(status)
                        if on_episode is not None:
                            on_episode(status)
                else:
                    self._stop.wait(0.1)
                if self._stop.is_set():
                    return RunOutcome(130 if episodes else 0, self._stop_reason, tuple(finished))
                if episodes and len(finished) >= episodes:
                    return RunOutcome(0, f'{episodes} episodes finished', tuple(finished))
                exited = [n for n in self.nodes if n.poll() is not None]
                if exited:
                    # A node that ends its own work (the bag player after the bag) exits 0 and
                    # ends the graph normally, unless episodes were asked for and are missing.
                    node = exited[0]
                    if node.poll() == 0 and not episodes:
                        return RunOutcome(0, f'{node.name} finished', tuple(finished))
                    return RunOutcome(1, f'{node.name} exited with status {node.poll()}',
                                      tuple(finished))
                if timeout is not None and time.monotonic() - start >= timeout:
                    if episodes:
                        return RunOutcome(1, f'timeout after {timeout:g} s with '
                                             f'{len(finished)} of {episodes} episodes finished',
                                          tuple(finished))
                    return RunOutcome(0, f'timeout after {timeout:g} s', tuple(finished))
        finally:
            if monitor is not None:
                monitor.close()
            self.stop_all()

    def start(self) -> None:
        """Start every node process (``run`` does this; tests drive the graph themselves)."""
        for spec in self.config.nodes:
            self.nodes.append(NodeProcess(spec.module.rsplit('.', 1)[-1], {}, None, self.env,
                                          name=spec.name, argv=spec.command(),
                                          sink=self.sink, stdin=spec.stdin, new_session=True))

    def stop_all(self) -> None:
        """SIGINT to every node, then SIGKILL what has not stopped in shutdown_timeout_s.

        Recorders are stopped only after every other node has, so the bag holds all that the
        producers published: stopped together, a recorder could end between the two messages
        of the policy's last decision (its action and its action frame).
        """
        recorders = {spec.name for spec in self.config.nodes if spec.records}
        self._stop_together([n for n in self.nodes if n.name not in recorders])
        self._stop_together([n for n in self.nodes if n.name in recorders])

    def _stop_together(self, nodes: list[NodeProcess]) -> None:
        for node in nodes:
            node.interrupt()
        deadline = time.monotonic() + self.config.settings.shutdown_timeout_s
        for node in nodes:
            try:
                node.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.sink.write(f'{PREFIX} {node.name} did not stop in '
                                f'{self.config.settings.shutdown_timeout_s:g} s: killing it')
                node.kill()
                node.process.wait()
            node.finish()


class _EpisodeWatcher:
    """Subscribes to /vla/episode_status and yields each episode once, when it is done."""

    def __init__(self, env: dict[str, str]) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_msgs.msg import String

        from vla_align.ros import qos, topics
        from vla_align.ros.episode_status import EpisodeStatus

        # Same domain and discovery range as the nodes (rcl reads them at init).
        for key in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_LOCALHOST_ONLY'):
            if key in env:
                os.environ[key] = env[key]
        self._context = rclpy.Context()
        _init_without_signal_handlers(rclpy, self._context)
        self._node = rclpy.create_node('vla_align_up', context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self._node)
        self._parse = EpisodeStatus.from_json
        self._done: dict[int, object] = {}
        self._new: list = []
        self._node.create_subscription(String, topics.EPISODE_STATUS, self._on_status,
                                       qos.EPISODE_STATUS)

    def _on_status(self, msg) -> None:
        try:
            status = self._parse(msg.data)
        except (TypeError, ValueError):
            return
        if status.done and status.episode not in self._done:
            self._done[status.episode] = status
            self._new.append(status)

    def poll(self, timeout: float) -> list:
        self._executor.spin_once(timeout_sec=timeout)
        new, self._new = self._new, []
        return new

    def close(self) -> None:
        self._executor.shutdown()
        self._node.destroy_node()
        self._context.try_shutdown()


def _init_without_signal_handlers(rclpy, context) -> None:
    """rclpy.init that leaves SIGINT/SIGTERM to the launcher (it must stop the nodes first)."""
    try:
        from rclpy.signals import SignalHandlerOptions

        rclpy.init(args=[], context=context, signal_handler_options=SignalHandlerOptions.NO)
    except (ImportError, TypeError):  # older rclpy without the option
        rclpy.init(args=[], context=context)


def describe_episode(status) -> str:
    outcome = 'success' if status.success else 'failure'
    return (f'episode {status.episode} ({status.family}, {status.split}, seed {status.seed}) '
            f'{status.instruction!r}: {outcome} after {status.step} steps')


# -- CLI -----------------------------------------------------------------------------------------
def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('graph', help='graph file, e.g. config/sim_graph.yaml (a bare name is '
                                      "looked up in the package's config/ folder)")
    parser.add_argument('arguments', nargs='*', metavar='NAME:=VALUE',
                        help='launch arguments, as for ros2 launch (e.g. checkpoint:=PATH); '
                             '--show-args lists them')
    parser.add_argument('--set', dest='overrides', action='append', default=[],
                        metavar='NODE.PARAM=VALUE',
                        help='override a node parameter, e.g. --set policy_node.source=checkpoint '
                             '--set policy_node.checkpoint=runs/policy (repeatable)')
    parser.add_argument('--episodes', type=_positive_int, metavar='N',
                        help='stop after N finished simulation episodes and print each outcome')
    parser.add_argument('--timeout', type=_positive_float, metavar='S',
                        help='stop after S seconds')
    parser.add_argument('--domain-id', type=int, choices=range(0, 233), metavar='ID',
                        help='ROS_DOMAIN_ID for the graph (default: settings, then environment)')
    parser.add_argument('--dry-run', action='store_true',
                        help='print the node commands and exit')
    parser.add_argument('--show-args', action='store_true',
                        help="print the graph's launch arguments and exit")


def run(args: argparse.Namespace) -> int:
    try:
        config = load_graph_config(resolve_config_path(args.graph))
        if args.show_args:
            print(describe_arguments(config))
            return 0
        config = config.with_arguments(parse_launch_arguments(args.arguments))
        config = config.with_overrides(args.overrides)
    except GraphConfigError as exc:
        print(f'vla-align up: {exc}', file=sys.stderr)
        return 2
    env = graph_environment(config.settings, args.domain_id, tty=sys.stdout.isatty())
    sink = LineSink(sys.stdout)
    if args.dry_run:
        for spec in config.nodes:
            sink.write(' '.join(spec.command()))
        return 0
    runner = GraphRunner(config, env, sink)
    previous = {sig: signal.signal(sig, lambda signum, _frame: runner.request_stop(
        f'stopped by {signal.Signals(signum).name}')) for sig in (signal.SIGINT, signal.SIGTERM)}
    sink.write(f'{PREFIX} {config.description or config.path.name}: starting '
               f'{", ".join(n.name for n in config.nodes)} (ROS_DOMAIN_ID='
               f'{env.get("ROS_DOMAIN_ID", "0")})')
    try:
        outcome = runner.run(episodes=args.episodes, timeout=args.timeout,
                             on_episode=lambda s: sink.write(f'{PREFIX} {describe_episode(s)}'))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sink.write(f'{PREFIX} stopped: {outcome.reason}')
    if args.episodes:
        wins = sum(s.success for s in outcome.episodes)
        sink.write(f'{PREFIX} {len(outcome.episodes)} episodes: {wins} succeeded, '
                   f'{len(outcome.episodes) - wins} failed')
    return outcome.status


def parse_launch_arguments(tokens: list[str]) -> dict[str, str]:
    """``['checkpoint:=runs/p', 'rate:=2.0']`` -> ``{'checkpoint': 'runs/p', 'rate': '2.0'}``."""
    values = {}
    for token in tokens:
        name, sep, value = token.partition(':=')
        if not sep or not name:
            raise GraphConfigError(f'argument {token!r} is not NAME:=VALUE')
        values[name] = value
    return values


def describe_arguments(config: GraphConfig) -> str:
    """The launch arguments, as ``ros2 launch --show-args`` prints them."""
    lines = ["Arguments (pass arguments as '<name>:=<value>'):", '']
    every = [*config.arguments, *config.implicit_arguments()]
    for argument in every:
        lines.append(f"    '{argument.name}':")
        lines.append(f'        {argument.description}')
        if argument.choices:
            lines.append(f'        Valid choices are: {list(argument.choices)}')
        lines.append('        (default: ' + (f"'{argument.default}'" if argument.default
                                              is not None else 'required') + ')')
        lines.append('')
    return '\n'.join(lines).rstrip()


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {value}')
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f'must be > 0, got {value}')
    return value
