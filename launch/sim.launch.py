"""Simulation graph, closed loop: sim_node -> instruction_node -> policy_node -> sim_node.

    ros2 launch vla_align sim.launch.py                      # the shipped policy
    ros2 launch vla_align sim.launch.py checkpoint:=/path/to/checkpoint
    ros2 launch vla_align sim.launch.py source:=expert       # relay the scripted expert

The sim node's episode instruction is remapped to /vla/episode_instruction and relayed by the
instruction node (source: topic), so /vla/instruction has a single writer. Without ros2 launch:
``vla-align up sim_graph`` (config/sim_graph.yaml) starts the same graph.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue


def generate_launch_description():
    share_dir = get_package_share_directory('vla_align')

    params_file = LaunchConfiguration('params_file')
    source = LaunchConfiguration('source')
    checkpoint = LaunchConfiguration('checkpoint')
    log_level = LaunchConfiguration('log_level')

    declare_params_file = DeclareLaunchArgument(
        'params_file', default_value=os.path.join(share_dir, 'config', 'sim_nodes.yaml'),
        description='Full path to the parameters file of sim_node, instruction_node and '
                    'policy_node')
    declare_source = DeclareLaunchArgument(
        'source', default_value='checkpoint', choices=['expert', 'checkpoint', 'random'],
        description="Policy action source: expert (relay the simulator's scripted expert), "
                    'checkpoint (trained policy) or random (untrained, for timing)')
    declare_checkpoint = DeclareLaunchArgument(
        'checkpoint', default_value='checkpoints/default',
        description='Trained policy checkpoint (with source:=checkpoint); a relative path is '
                    'looked up in the working directory, then in the package share directory')
    declare_log_level = DeclareLaunchArgument(
        'log_level', default_value='info', description='Log level of every node')

    sim_node = Node(
        package='vla_align', executable='sim_node', name='sim_node', output='screen',
        parameters=[params_file],
        remappings=[('/vla/instruction', '/vla/episode_instruction')],
        arguments=['--ros-args', '--log-level', log_level])
    instruction_node = Node(
        package='vla_align', executable='instruction_node', name='instruction_node',
        output='screen', parameters=[params_file],
        remappings=[('/vla/instruction_in', '/vla/episode_instruction')],
        arguments=['--ros-args', '--log-level', log_level])
    policy_node = Node(
        package='vla_align', executable='policy_node', name='policy_node', output='screen',
        parameters=[params_file,
                    {'source': ParameterValue(source, value_type=str),
                     'checkpoint': ParameterValue(checkpoint, value_type=str)}],
        arguments=['--ros-args', '--log-level', log_level])

    return LaunchDescription([
        declare_params_file,
        declare_source,
        declare_checkpoint,
        declare_log_level,
        sim_node,
        instruction_node,
        policy_node,
    ])
