"""``ros2 launch`` descriptions built from the graph files, so a launch file cannot drift from
what ``vla-align up`` runs (``graph_config`` describes each graph once).

A launch file is two lines::

    from vla_align.ros.launch_description import graph_launch_description

    def generate_launch_description():
        return graph_launch_description('sim_graph.yaml')

Each graph argument becomes a ``DeclareLaunchArgument`` (with its description, default and
choices), plus the implicit ``log_level``, ``params_file`` and ``dds_profile``; each node a
``launch_ros.actions.Node`` of the package's executable with the graph's params file (the
``params_file`` argument), its fixed parameters and remappings, ``on_exit=Shutdown`` (a node
that ends ends the graph, as under ``vla-align up``), and one scalar
``ParameterValue(LaunchConfiguration(arg), value_type=...)`` per parameter an argument sets
(never a list mixing strings and substitutions, which launch_ros joins into one string).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vla_align.paths import share_path
from vla_align.ros.graph_config import (
    ARGUMENT_TYPES,
    GraphConfig,
    dds_profile_variable,
    load_graph_config,
)

PACKAGE = 'vla_align'


def graph_launch_description(graph_file: str) -> Any:
    """The ``LaunchDescription`` of ``config/<graph_file>`` from the package share directory."""
    return launch_description(load_graph_config(share_path('config', graph_file)))


def launch_description(config: GraphConfig) -> Any:
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable, Shutdown
    from launch.conditions import IfCondition
    from launch.substitutions import LaunchConfiguration
    from launch_ros.actions import Node
    from launch_ros.parameter_descriptions import ParameterValue

    actions: list[Any] = []
    for argument in config.arguments:
        options: dict[str, Any] = {'description': argument.description}
        if argument.default is not None:
            options['default_value'] = argument.default
        if argument.choices is not None:
            options['choices'] = list(argument.choices)
        actions.append(DeclareLaunchArgument(argument.name, **options))
    for argument in config.implicit_arguments():  # log_level, params_file, dds_profile
        options = {'description': argument.description, 'default_value': argument.default}
        if argument.choices is not None:
            options['choices'] = list(argument.choices)
        actions.append(DeclareLaunchArgument(argument.name, **options))
    settings = config.settings
    if settings.dds_profile is not None:
        # Fast DDS 2 (Humble, Jazzy) and Fast DDS 3 (Kilted on) read different variables.
        actions.append(SetEnvironmentVariable(dds_profile_variable(os.environ.get('ROS_DISTRO')),
                                              LaunchConfiguration('dds_profile')))
    if settings.localhost_only:
        actions.append(SetEnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST'))
        actions.append(SetEnvironmentVariable('ROS_LOCALHOST_ONLY', '1'))

    for spec in config.nodes:
        parameters: list[Any] = []
        if spec.params_file is not None:
            shared = spec.params_file == config.params_file
            parameters.append(LaunchConfiguration('params_file') if shared
                              else str(spec.params_file))
        fixed = dict(spec.parameters)
        bound = {}
        remappings = dict(spec.remappings)
        condition = None
        for argument in config.arguments:
            for node_name, param in argument.sets:
                if node_name == spec.name:
                    bound[param] = ParameterValue(LaunchConfiguration(argument.name),
                                                  value_type=ARGUMENT_TYPES[argument.type])
            for node_name, topic in argument.remaps:
                if node_name == spec.name:
                    remappings[topic] = LaunchConfiguration(argument.name)
            if spec.name in argument.condition:
                condition = IfCondition(LaunchConfiguration(argument.name))
        if fixed or bound:
            parameters.append({**fixed, **bound})
        actions.append(Node(
            package=PACKAGE, executable=spec.executable, name=spec.name, output='screen',
            parameters=parameters, remappings=list(remappings.items()), condition=condition,
            arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
            # As with `vla-align up`: a node that ends (the bag player after its bag, a node
            # refusing to start) ends the graph, so the others close cleanly (the recorder
            # writes its bag) instead of running on without it.
            on_exit=Shutdown(reason=f'{spec.name} exited')))
    return LaunchDescription(actions)


def launch_file_graph(path: Path) -> str:
    """The graph file a launch file of ours is built from (for checks), e.g. 'sim_graph.yaml'."""
    import ast

    tree = ast.parse(Path(path).read_text())
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and getattr(node.func, 'id', '') ==
                'graph_launch_description' and node.args
                and isinstance(node.args[0], ast.Constant)):
            return str(node.args[0].value)
    raise ValueError(f'{path} does not build its description with graph_launch_description')
