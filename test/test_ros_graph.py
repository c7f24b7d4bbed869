"""The real node graph over DDS, one process per node, as `vla-align up` starts it."""
import io
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from rclpy.node import Node
from std_msgs.msg import Float32MultiArray

from vla_align.actions import ACTION_LAYOUT_LABEL, ActionLimits
from vla_align.ros import qos, topics
from vla_align.ros.graph_config import load_graph_config
from vla_align.ros.latency_probe import ProbeConfig, measure_policy_node
from vla_align.ros.launcher import GraphRunner, LineSink, graph_environment
from vla_align.ros.node_harness import spin_until

pytestmark = pytest.mark.ros
pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin

ROOT = Path(__file__).resolve().parents[1]
SIM_GRAPH = ROOT / 'config' / 'sim_graph.yaml'
LIMITS = ActionLimits(max_translation=0.03, max_rotation=0.15)  # config/sim_nodes.yaml


def vla_align_up(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'vla_align.cli', 'up', *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))


def test_closed_loop_with_a_random_policy_moves_the_arm_and_holds_when_the_sim_stops(
        ros_context, spin):
    config = load_graph_config(SIM_GRAPH).with_overrides([
        'policy_node.source=random', 'policy_node.random_config=tiny',
        'policy_node.device=cpu', 'sim_node.family=reach', 'sim_node.max_steps=400'])
    log = io.StringIO()
    graph = GraphRunner(config, graph_environment(config.settings), LineSink(log))
    observer = Node('observer', context=ros_context)
    actions, poses = [], []
    observer.create_subscription(Float32MultiArray, topics.ACTION, actions.append,
                                 qos.COMMANDS)
    observer.create_subscription(PoseStamped, topics.EE_POSE, poses.append, qos.DEFAULT)
    try:
        graph.start()
        moving = lambda: sum(np.any(np.array(m.data)[:6]) for m in actions) >= 15  # noqa: E731
        assert spin([observer], 90.0, until=moving), log.getvalue()[-3000:]
        for msg in actions:
            assert [(d.label, d.size) for d in msg.layout.dim] == [(ACTION_LAYOUT_LABEL, 7)]
            assert LIMITS.contains(np.array(msg.data))
        positions = np.array([[p.pose.position.x, p.pose.position.y, p.pose.position.z]
                              for p in poses])
        assert np.linalg.norm(positions - positions[0], axis=1).max() > 0.01  # arm moved

        sim = next(n for n in graph.nodes if n.name == 'sim_node')
        sim.interrupt()  # camera and robot state stop
        sim.process.wait(20)
        spin([observer], 0.5 + 0.3)  # max_image_age_s + margin
        actions.clear()
        spin([observer], 1.5)
        held = [np.array(m.data) for m in actions]
        assert len(held) >= 5, 'the policy keeps publishing holds at its control rate'
        assert all(not np.any(a[:6]) for a in held), 'motion published without fresh images'
        assert len({float(a[6]) for a in held}) == 1  # gripper unchanged
    finally:
        graph.stop_all()
    assert all(n.poll() is not None for n in graph.nodes)


def test_vla_align_up_runs_expert_episodes_and_reports_them(ros_environment):
    result = vla_align_up('sim_graph', '--episodes', '2', '--timeout', '150',
                          '--set', 'policy_node.source=expert')
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-2000:]
    reported = [line for line in out.splitlines() if line.startswith('[up] episode ')]
    assert len(reported) == 2 and all(': success after' in line for line in reported), out
    assert '[up] 2 episodes: 2 succeeded, 0 failed' in out
    for node in ('sim_node', 'instruction_node', 'policy_node'):
        assert f'[{node}]' in out and 'stopping' in out.split(f'[{node}]')[-1]


def test_sigterm_stops_every_node_cleanly(ros_environment):
    process = subprocess.Popen([sys.executable, '-m', 'vla_align.cli', 'up', 'sim_graph',
                                '--set', 'policy_node.source=expert'],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines = []
    deadline = time.monotonic() + 90
    for line in process.stdout:
        lines.append(line)
        if 'acting again' in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=60)
    out = ''.join(lines) + rest
    assert process.returncode == 0, out[-3000:]
    assert 'stopped by SIGTERM' in out and 'killing' not in out
    stopped = [line for line in out.splitlines() if ': stopping' in line]
    assert len(stopped) == 3, out[-3000:]


def test_a_node_that_refuses_to_start_stops_the_graph_with_the_reason(ros_environment):
    result = vla_align_up('sim_graph', '--set', 'policy_node.control_rate=-1.0',
                          '--timeout', '60')
    assert result.returncode == 1
    assert 'policy_node exited with status 1' in result.stdout
    assert 'FATAL' in result.stdout and 'control_rate' in result.stdout
    assert 'Traceback' not in result.stdout + result.stderr


def test_bad_graph_file_is_refused_before_anything_starts(tmp_path):
    bad = tmp_path / 'graph.yaml'
    bad.write_text('nodes: [{name: a, module: vla_align.ros.nope}]\n')
    result = vla_align_up(str(bad))
    assert result.returncode == 2 and 'cannot be imported' in result.stderr


def test_latency_probe_measures_a_policy_node_keeping_up_with_30_hz(ros_environment):
    report = measure_policy_node(ProbeConfig(rate_hz=30.0, duration_s=2.0, warmup_s=1.0,
                                             width=160, height=120),
                                 source='random', random_config='tiny')
    assert report.frames_sent >= 50
    assert report.actions_matched >= 0.8 * report.frames_sent, report.describe()
    assert 0 < report.latency.p50_ms <= report.latency.p99_ms <= report.latency.max_ms
    assert report.policy_diagnostics.get('errors') == '0'


@pytest.mark.slow
def test_the_robot_graph_drives_the_simulated_cell_exactly_as_a_real_one(ros_environment):
    """robot_graph (the shipped policy with the robot's parameters: dry run first, tighter
    limits, the workspace box, stamps checked) against standin_graph (the simulator as camera,
    arm driver, MoveIt Servo and gripper controller): only Servo twists and gripper commands
    move the arm. Disabled, the cell does not move while the policy acts; enabled, it reaches."""
    import threading

    from geometry_msgs.msg import TwistStamped
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_srvs.srv import SetBool, Trigger

    from vla_align.ros.command_output import DRY_RUN_TWIST

    robot = load_graph_config(ROOT / 'config' / 'robot_graph.yaml').with_arguments(
        {'checkpoint': 'checkpoints/default', 'use_camera': 'false'})
    cell = load_graph_config(ROOT / 'config' / 'standin_graph.yaml').with_arguments(
        {'family': 'reach'}).with_overrides(['sim_node.wait_for_policy=false',
                                             'sim_node.start_on_launch=false',
                                             'sim_node.max_steps=100'])
    log = io.StringIO()
    sink = LineSink(log)
    policy = GraphRunner(robot, graph_environment(robot.settings), sink)
    standin = GraphRunner(cell, graph_environment(cell.settings), sink)
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    node = Node('operator', context=context)
    poses: list[np.ndarray] = []
    dry: list[float] = []
    node.create_subscription(PoseStamped, topics.EE_POSE, lambda m: poses.append(
        np.array([m.pose.position.x, m.pose.position.y, m.pose.position.z])), qos.DEFAULT)
    node.create_subscription(TwistStamped, DRY_RUN_TWIST, lambda m: dry.append(
        abs(m.twist.linear.x) + abs(m.twist.linear.y) + abs(m.twist.linear.z)),
        qos.SERVO_COMMANDS)
    enable = node.create_client(SetBool, '/policy_node/enable')
    next_task = node.create_client(Trigger, topics.RESET_EPISODE)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)

    def spin(seconds, until=None):
        return spin_until(executor, seconds, until)

    def call(client, request):
        assert client.wait_for_service(timeout_sec=60)
        future = client.call_async(request)
        assert spin(10, until=future.done) and future.result().success
        return future.result()

    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(
        result=standin.run(episodes=4, timeout=240)), daemon=True)
    policy.start()
    try:
        runner.start()
        call(next_task, Trigger.Request())  # the first task: a scene, and its instruction
        assert spin(120, until=lambda: sum(v > 0 for v in dry) > 10), log.getvalue()[-3000:]
        # The policy may have loaded after that episode's budget ran out (a slow machine), and
        # the cell's next episode would then move the arm to its start pose inside the window:
        # a fresh episode, with its whole budget, starts now that the dry run is commanding.
        call(next_task, Trigger.Request())
        spin(1.5)  # the arm settles into the episode's start pose
        still, commanded = len(poses), sum(v > 0 for v in dry)
        spin(2.0)  # the policy commands in its dry run; the cell must not move
        assert sum(v > 0 for v in dry) - commanded > 10, 'no dry-run commands to ignore'
        assert np.ptp(np.array(poses[still:]), axis=0).max() < 0.002, 'the dry run moved it'
        call(enable, SetBool.Request(data=True))
        runner.join(250)
    finally:
        standin.request_stop('test over')  # its run() stops the cell's nodes on the way out
        if runner.is_alive():
            runner.join(30)
        policy.stop_all()
        executor.shutdown()
        node.destroy_node()
        context.try_shutdown()
    result = outcome['result']
    assert result.status == 0, (result.reason, log.getvalue()[-3000:])
    # The first episode's budget partly ran out in the dry run; the next ones are reached.
    assert sum(s.success for s in result.episodes[1:]) >= 2, log.getvalue()[-3000:]
    assert 'DRY RUN' in log.getvalue() and 'motion enabled' in log.getvalue()
