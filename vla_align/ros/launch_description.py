"""``ros2 launch`` descriptions built from the graph files, so a launch file cannot drift from
what ``vla-align up`` runs (``graph_config`` describes each graph once).

A launch file is two lines::

    from vla_align.ros.launch_description import graph_launch_description

    def generate_launch_description():
        return graph_launch_description('sim_graph.yaml')

Each graph argument becomes a ``DeclareLaunchArgument`` (with its description, default and
choices), plus the implicit ``log_level``, ``namespace``, ``use_sim_time``, ``params_file`` and
``dds_profile``. At launch time an ``OpaqueFunction`` reads their values and resolves the graph
with ``GraphConfig.with_arguments``, the very code ``vla-align up`` runs, into one
``launch_ros.actions.Node`` per node: the same executable, parameter file (namespaced when a
namespace is given), parameters, remappings and log level, with ``on_exit=Shutdown`` (a node
that ends ends the graph, as under ``vla-align up``). Parameters are resolved values of their
declared types, never a list mixing strings and substitutions (which launch_ros joined into one
STRING: replay.launch.py once failed on every run).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vla_align.paths import share_path
from vla_align.ros.graph_config import GraphConfig, dds_profile_variable, load_graph_config

PACKAGE = 'vla_align'


def graph_launch_description(graph_file: str) -> Any:
    """The ``LaunchDescription`` of ``config/<graph_file>`` from the package share directory."""
    return launch_description(load_graph_config(share_path('config', graph_file)))


def launch_description(config: GraphConfig) -> Any:
    from launch import LaunchDescription
    from launch.actions import DeclareLaunchArgument, OpaqueFunction

    actions: list[Any] = []
    for argument in (*config.arguments, *config.implicit_arguments()):
        options: dict[str, Any] = {'description': argument.description}
        if argument.default is not None:
            options['default_value'] = argument.default
        if argument.choices is not None:
            options['choices'] = list(argument.choices)
        actions.append(DeclareLaunchArgument(argument.name, **options))
    actions.append(OpaqueFunction(function=_start_graph, args=[config]))
    return LaunchDescription(actions)


def _start_graph(context: Any, config: GraphConfig) -> list[Any]:
    """At launch time: the arguments' values -> ``GraphConfig.with_arguments`` (the very
    resolution ``vla-align up`` uses) -> one launch_ros Node per node of the resolved graph."""
    from launch.actions import SetEnvironmentVariable, Shutdown
    from launch_ros.actions import Node

    names = [a.name for a in (*config.arguments, *config.implicit_arguments())]
    values = {name: context.launch_configurations[name] for name in names
              if name in context.launch_configurations}
    resolved = config.with_arguments(values)
    actions: list[Any] = []
    settings = resolved.settings
    if settings.dds_profile is not None:
        # Fast DDS 2 (Humble, Jazzy) and Fast DDS 3 (Kilted on) read different variables.
        actions.append(SetEnvironmentVariable(dds_profile_variable(os.environ.get('ROS_DISTRO')),
                                              str(settings.dds_profile)))
    if settings.localhost_only:
        actions.append(SetEnvironmentVariable('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST'))
        actions.append(SetEnvironmentVariable('ROS_LOCALHOST_ONLY', '1'))
    for spec in resolved.nodes:
        parameters: list[Any] = [str(spec.params_file)] if spec.params_file else []
        if spec.parameters:
            parameters.append(dict(spec.parameters))
        actions.append(Node(
            package=PACKAGE, executable=spec.executable, name=spec.name, output='screen',
            namespace=spec.namespace or None, parameters=parameters,
            remappings=list(spec.remappings),
            arguments=['--ros-args', '--log-level', spec.log_level],
            # As with `vla-align up`: a node that ends (the bag player after its bag, a node
            # refusing to start) ends the graph, so the others close cleanly (the recorder
            # writes its bag) instead of running on without it.
            on_exit=Shutdown(reason=f'{spec.name} exited')))
    return actions


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
