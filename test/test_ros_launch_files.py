"""launch/*.launch.py and config/*_graph.yaml: one description per graph, both ways in.

Each launch file builds its LaunchDescription from a graph file (``graph_launch_description``),
which ``vla-align up`` runs too, so the two cannot drift apart. What launch_ros would do with a
graph is checked here without launch_ros (not installable here): every node is an installed
executable with a parameters section, every argument sets parameters that its node declares
with the argument's scalar type (a list parameter bound to a launch string is what broke
replay.launch.py: launch_ros joined the list into one STRING), and argument values reach the
node command lines. Where launch_ros is installed the descriptions are also built for real and
compared with the graph node by node.
"""
import ast
from pathlib import Path
import py_compile
import re

import pytest
import yaml

from vla_align.ros.graph_config import GraphConfigError, load_graph_config
from vla_align.ros.launch_description import launch_file_graph

ROOT = Path(__file__).resolve().parents[1]
LAUNCH_FILES = sorted((ROOT / 'launch').glob('*.launch.py'))
GRAPHS = sorted((ROOT / 'config').glob('*_graph.yaml'))
pytest_plugins = ('ros_isolation',)  # fixtures: ros_environment, ros_context, spin
SCRIPTS = set(re.findall(r"'([\w-]+) = [\w.]+:\w+'", (ROOT / 'setup.py').read_text()))


def test_the_three_graphs_have_launch_files_built_from_their_graph_files():
    assert {p.name for p in LAUNCH_FILES} >= {'robot.launch.py', 'sim.launch.py',
                                             'replay.launch.py'}
    for path in LAUNCH_FILES:
        graph = launch_file_graph(path)
        assert graph == path.name.replace('.launch.py', '_graph.yaml')
        assert (ROOT / 'config' / graph).is_file()


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_files_hold_no_second_description(path, tmp_path):
    """Nothing but the call into the graph file: no Node, no argument declared by hand."""
    py_compile.compile(str(path), cfile=str(tmp_path / 'compiled.pyc'), doraise=True)
    tree = ast.parse(path.read_text())
    called = {getattr(n.func, 'id', getattr(n.func, 'attr', None))
              for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert called == {'graph_launch_description'}
    functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert functions == ['generate_launch_description']


@pytest.mark.parametrize('path', GRAPHS, ids=lambda p: p.name)
def test_graph_nodes_are_installed_executables_with_a_parameter_section(path):
    config = load_graph_config(path)
    for spec in config.nodes:
        assert spec.executable in SCRIPTS, f'{spec.executable} is not installed by setup.py'
        assert spec.module == f'vla_align.ros.{spec.executable}'
        sections = yaml.safe_load(spec.params_file.read_text())
        assert 'ros__parameters' in sections.get(spec.name, {}), (path.name, spec.name)


@pytest.mark.parametrize('path', GRAPHS, ids=lambda p: p.name)
def test_every_graph_carrying_camera_frames_sets_the_large_message_profile(path):
    """Without it Fast DDS lost 6 to 13 of 15 640x480 frames in the replay graph."""
    config = load_graph_config(path)
    assert config.settings.dds_profile is not None
    assert config.settings.dds_profile.name == 'fastdds_large_messages.xml'
    assert config.settings.dds_profile.is_file()


def test_argument_values_reach_the_nodes_with_their_types():
    config = load_graph_config(ROOT / 'config' / 'replay_graph.yaml')
    started = config.with_arguments({'bag': '/data/bag', 'output': '/data/rec',
                                     'checkpoint': '/c', 'rate': '2',
                                     'image_topic': '/camera/color/image_raw',
                                     'log_level': 'debug'})
    player = started.node('bag_player_node')
    assert player.parameters == {'bag': '/data/bag', 'rate': 2.0,
                                 'image_topic': '/camera/color/image_raw'}
    assert isinstance(player.parameters['rate'], float)
    argv = player.command('python3')
    assert argv[argv.index('--log-level') + 1] == 'debug'
    assert '-p' in argv and 'rate:=2.0' in argv
    assert started.node('policy_node').parameters == {'checkpoint': '/c',
                                                      'pace_rate_hz': 10.0}


def test_remapping_and_conditional_nodes_follow_the_arguments():
    config = load_graph_config(ROOT / 'config' / 'robot_graph.yaml')
    with_camera = config.with_arguments({'checkpoint': 'c', 'image_topic': '/cam/rgb'})
    assert [n.name for n in with_camera.nodes] == ['camera_node', 'instruction_node',
                                                   'policy_node']
    for name in ('camera_node', 'policy_node'):
        assert dict(with_camera.node(name).remappings) == {'/camera/image_raw': '/cam/rgb'}
    driver = config.with_arguments({'checkpoint': 'c', 'use_camera': 'false'})
    assert [n.name for n in driver.nodes] == ['instruction_node', 'policy_node']


@pytest.mark.parametrize('values,message', [
    ({}, "argument 'checkpoint' is required"),
    ({'checkpoint': 'c', 'use_camera': 'maybe'}, 'not one of'),
    ({'checkpoint': 'c', 'colour': 'red'}, "no argument 'colour'"),
    ({'checkpoint': 'c', 'log_level': 'loud'}, 'log_level'),
    ({'checkpoint': 'c', 'params_file': '/no/such.yaml'}, 'no such file'),
])
def test_bad_arguments_are_refused_with_the_reason(values, message):
    config = load_graph_config(ROOT / 'config' / 'robot_graph.yaml')
    with pytest.raises(GraphConfigError, match=message):
        config.with_arguments(values)


def test_params_file_and_dds_profile_arguments_replace_the_defaults(tmp_path):
    config = load_graph_config(ROOT / 'config' / 'sim_graph.yaml')
    mine = tmp_path / 'mine.yaml'
    mine.write_text('policy_node:\n  ros__parameters: {}\n')
    profile = tmp_path / 'profile.xml'
    profile.write_text('<profiles/>\n')
    started = config.with_arguments({'params_file': str(mine), 'dds_profile': str(profile)})
    assert {n.params_file for n in started.nodes} == {mine}
    assert started.settings.dds_profile == profile


def graph_arguments():
    for path in GRAPHS:
        for argument in load_graph_config(path).arguments:
            for node, param in argument.sets:
                yield pytest.param(path, argument, node, param,
                                   id=f'{path.stem}:{argument.name}->{node}.{param}')


@pytest.mark.ros
@pytest.mark.parametrize('path,argument,node_name,param', list(graph_arguments()))
def test_every_argument_sets_a_declared_scalar_parameter_of_its_type(
        ros_context, tmp_path, path, argument, node_name, param):
    import cv2
    import numpy as np
    from rclpy.parameter import Parameter
    from test_eval_bag import varied_episode

    from vla_align.data.bag_io import write_episode_bag
    from vla_align.ros import record
    from vla_align.ros.bag_player_node import BagPlayerNode
    from vla_align.ros.camera_node import CameraNode
    from vla_align.ros.episode_recorder import EpisodeRecorderNode
    from vla_align.ros.instruction_node import InstructionNode
    from vla_align.ros.policy_node import PolicyNode
    from vla_align.ros.scripted_operator import ScriptedOperator
    from vla_align.ros.sim_node import SimNode
    from vla_align.ros.teleop_node import TeleopNode

    cv2.imwrite(str(tmp_path / 'frame.png'), np.zeros((8, 8, 3), np.uint8))
    write_episode_bag(varied_episode(0, steps=2), tmp_path / 'bag')
    needed = {'camera_node': {'source': str(tmp_path)},
              'policy_node': {'source': 'expert'},
              'bag_player_node': {'bag': str(tmp_path / 'bag')},
              'record': {'output': str(tmp_path / 'recording')},
              'episode_recorder': {'output_dir': str(tmp_path / 'episodes')}}
    classes = {'sim_node': SimNode, 'camera_node': CameraNode,
               'instruction_node': InstructionNode, 'policy_node': PolicyNode,
               'bag_player_node': BagPlayerNode, 'record': record._node_class(),
               'episode_recorder': EpisodeRecorderNode, 'scripted_operator': ScriptedOperator,
               'teleop_node': TeleopNode}
    overrides = [Parameter(k, value=v) for k, v in needed.get(node_name, {}).items()]
    node = classes[node_name](context=ros_context, parameter_overrides=overrides)
    try:
        assert node.has_parameter(param), f'{node_name} does not declare {param}'
        declared = node.get_parameter(param).type_
        expected = {'str': Parameter.Type.STRING, 'float': Parameter.Type.DOUBLE,
                    'int': Parameter.Type.INTEGER, 'bool': Parameter.Type.BOOL}[argument.type]
        assert declared == expected, f'{node_name}.{param} is {declared}, the argument ' \
                                     f'{argument.name} gives {argument.type}'
    finally:
        node.destroy_node()


@pytest.mark.parametrize('path', LAUNCH_FILES, ids=lambda p: p.name)
def test_launch_description_matches_the_graph_where_launch_ros_is_installed(path, tmp_path):
    """With launch_ros (a full ROS install): the declared arguments are the graph's, and at
    launch time the nodes are the ones ``vla-align up`` starts, with the same parameters."""
    pytest.importorskip('launch_ros', reason='launch_ros is not installed (no ros2 launch here)')
    from launch import LaunchContext
    from launch.actions import OpaqueFunction
    from launch_ros.actions import Node

    from vla_align.ros.launch_description import launch_description

    config = load_graph_config(ROOT / 'config' / launch_file_graph(path))
    description = launch_description(config)
    arguments = {a.name: a for a in description.get_launch_arguments()}
    assert set(arguments) == {a.name for a in (*config.arguments, *config.implicit_arguments())}
    context = LaunchContext()
    given = {a.name: 'x' for a in config.arguments if a.default is None}
    given['namespace'] = '/arm1'
    for name, argument in arguments.items():
        default = argument.default_value
        context.launch_configurations[name] = given.get(name) or (
            ''.join(d.perform(context) for d in default) if default else '')
    (opaque,) = [e for e in description.entities if isinstance(e, OpaqueFunction)]
    nodes = [a for a in opaque.execute(context) if isinstance(a, Node)]
    expected = config.with_arguments({k: v for k, v in context.launch_configurations.items()})
    assert [n.node_executable for n in nodes] == [s.executable for s in expected.nodes]
