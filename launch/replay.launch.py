"""Replay graph: the policy node alone, fed by a rosbag2 player on the recorded topics.

    ros2 launch vla_align replay.launch.py checkpoint:=/path/to/checkpoint
    ros2 bag play EPISODE_BAG --topics /camera/image_raw /vla/instruction   # other terminal

Play only the input topics (camera, instruction, robot state): the policy publishes its own
/vla/action, which can be recorded and scored against the bag's recorded actions.
Without ros2 launch: ``vla-align up replay_graph`` (config/replay_graph.yaml).
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
    checkpoint = LaunchConfiguration('checkpoint')
    image_topic = LaunchConfiguration('image_topic')
    use_sim_time = LaunchConfiguration('use_sim_time')
    log_level = LaunchConfiguration('log_level')

    declare_params_file = DeclareLaunchArgument(
        'params_file', default_value=os.path.join(share_dir, 'config', 'replay_nodes.yaml'),
        description='Full path to the parameters file of policy_node')
    declare_checkpoint = DeclareLaunchArgument(
        'checkpoint', description='Path of the trained policy checkpoint (required)')
    declare_image_topic = DeclareLaunchArgument(
        'image_topic', default_value='/camera/image_raw',
        description='Recorded sensor_msgs/Image topic the bag player publishes')
    declare_use_sim_time = DeclareLaunchArgument(
        'use_sim_time', default_value='false', choices=['true', 'false'],
        description='Use /clock (ros2 bag play --clock) for the stamps of held actions')
    declare_log_level = DeclareLaunchArgument(
        'log_level', default_value='info', description='Log level of the policy node')

    policy_node = Node(
        package='vla_align', executable='policy_node', name='policy_node', output='screen',
        parameters=[params_file,
                    {'checkpoint': ParameterValue(checkpoint, value_type=str),
                     'use_sim_time': ParameterValue(use_sim_time, value_type=bool)}],
        remappings=[('/camera/image_raw', image_topic)],
        arguments=['--ros-args', '--log-level', log_level])

    return LaunchDescription([
        declare_params_file,
        declare_checkpoint,
        declare_image_topic,
        declare_use_sim_time,
        declare_log_level,
        policy_node,
    ])
