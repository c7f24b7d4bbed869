"""The `vla-align up` graph files: format checks, overrides and the node command lines."""
from pathlib import Path

import pytest
import yaml

from vla_align.ros.graph_config import (
    GraphConfigError,
    NodeSpec,
    load_graph_config,
    resolve_config_path,
)
from vla_align.ros.launcher import graph_environment

ROOT = Path(__file__).resolve().parents[1]
GRAPHS = sorted((ROOT / 'config').glob('*_graph.yaml'))


def write(tmp_path, data) -> Path:
    path = tmp_path / 'graph.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize('path', GRAPHS, ids=lambda p: p.name)
def test_shipped_graphs_load_and_each_node_has_its_params_section(path):
    config = load_graph_config(path)
    for spec in config.nodes:
        assert spec.module == f'vla_align.ros.{spec.name}'
        params = yaml.safe_load(spec.params_file.read_text())
        assert 'ros__parameters' in params[spec.name]


def test_sim_graph_sends_episode_instructions_through_the_instruction_node():
    """No remapping: the sim node sends to /vla/instruction_in (where `ros2 topic pub` sends
    too) and only the instruction node writes /vla/instruction."""
    config = load_graph_config(ROOT / 'config' / 'sim_graph.yaml')
    sim, relay = config.node('sim_node'), config.node('instruction_node')
    assert not sim.remappings and not relay.remappings
    params = yaml.safe_load(relay.params_file.read_text())
    assert params['instruction_node']['ros__parameters']['source'] == 'topic'
    assert params['sim_node']['ros__parameters'].get('instruction_handshake', True)


def test_command_line_names_the_node_and_keeps_string_values_strings():
    spec = NodeSpec(name='camera_node', module='vla_align.ros.camera_node',
                    params_file=Path('/p.yaml'), parameters={'source': '0', 'rate_hz': 15.0,
                                                             'loop': False},
                    remappings=(('/camera/image_raw', '/cam/image'),))
    argv = spec.command('python3')
    assert argv[:6] == ['python3', '-m', 'vla_align.ros.camera_node', '--ros-args', '-r',
                        '__node:=camera_node']
    assert argv[argv.index('--params-file') + 1] == '/p.yaml'
    assert '/camera/image_raw:=/cam/image' in argv
    values = dict(a.split(':=') for a in argv[argv.index('-p'):] if ':=' in a)
    assert yaml.safe_load(values['source']) == '0'  # rcl parses -p values as YAML
    assert yaml.safe_load(values['rate_hz']) == 15.0
    assert yaml.safe_load(values['loop']) is False


def test_overrides_set_parameters_of_named_nodes():
    config = load_graph_config(ROOT / 'config' / 'sim_graph.yaml')
    changed = config.with_overrides(['policy_node.source=checkpoint',
                                     'policy_node.checkpoint=runs/a b',
                                     'sim_node.seed=7'])
    assert changed.node('policy_node').parameters == {'source': 'checkpoint',
                                                      'checkpoint': 'runs/a b'}
    assert changed.node('sim_node').parameters == {'seed': 7}
    assert config.node('policy_node').parameters == {}  # the original is untouched
    with pytest.raises(GraphConfigError, match='NODE.PARAM=VALUE'):
        config.with_overrides(['source=expert'])
    with pytest.raises(GraphConfigError, match="no node named 'planner'"):
        config.with_overrides(['planner.rate=1'])


@pytest.mark.parametrize('data,message', [
    ({'nodes': []}, 'non-empty "nodes"'),
    ({'nodes': [{'name': 'a', 'module': 'vla_align.ros.sim_node'}], 'extra': 1},
     'unknown top-level'),
    ({'nodes': [{'name': 'a b', 'module': 'vla_align.ros.sim_node'}]}, 'not a valid ROS node'),
    ({'nodes': [{'name': 'a', 'module': 'vla_align.ros.no_such_node'}]}, 'cannot be imported'),
    ({'nodes': [{'name': 'a', 'module': 'vla_align.ros.sim_node', 'params_file': 'x.yaml'}]},
     'does not exist'),
    ({'nodes': [{'name': 'a', 'module': 'vla_align.ros.sim_node', 'colour': 'red'}]},
     'unknown keys'),
    ({'nodes': [{'name': 'a', 'module': 'vla_align.ros.sim_node'},
                {'name': 'a', 'module': 'vla_align.ros.policy_node'}]}, 'repeated'),
    ({'nodes': [{'name': 'a', 'module': 'vla_align.ros.sim_node',
                 'remappings': {'/x': 'not a topic'}}]}, 'remapping'),
    ({'settings': {'ros_domain_id': 300},
      'nodes': [{'name': 'a', 'module': 'vla_align.ros.sim_node'}]}, 'ros_domain_id'),
])
def test_bad_graph_files_are_refused_with_the_reason(tmp_path, data, message):
    with pytest.raises(GraphConfigError, match=message):
        load_graph_config(write(tmp_path, data))


def test_config_names_resolve_in_the_package_config_folder(tmp_path):
    assert resolve_config_path('sim_graph') == ROOT / 'config' / 'sim_graph.yaml'
    assert resolve_config_path('sim_graph.yaml') == ROOT / 'config' / 'sim_graph.yaml'
    with pytest.raises(GraphConfigError, match='no graph file'):
        resolve_config_path(str(tmp_path / 'missing.yaml'))


def test_environment_isolates_discovery_and_passes_the_dds_profile():
    config = load_graph_config(ROOT / 'config' / 'robot_graph.yaml')
    env = graph_environment(config.settings, domain_id=42, base={'ROS_DOMAIN_ID': '0'})
    assert env['ROS_DOMAIN_ID'] == '42'
    assert 'ROS_AUTOMATIC_DISCOVERY_RANGE' not in env  # the robot graph spans hosts
    assert Path(env['FASTDDS_DEFAULT_PROFILES_FILE']).is_file()
    assert 'FASTRTPS_DEFAULT_PROFILES_FILE' not in env  # Fast DDS 3 would load it twice
    humble = graph_environment(config.settings, base={'ROS_DISTRO': 'humble'})
    assert humble['FASTRTPS_DEFAULT_PROFILES_FILE'] == env['FASTDDS_DEFAULT_PROFILES_FILE']
    sim = load_graph_config(ROOT / 'config' / 'sim_graph.yaml')
    env = graph_environment(sim.settings, base={})
    assert env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST' and env['ROS_LOCALHOST_ONLY'] == '1'
