"""Replay graph: a recorded rosbag2 played live through the policy node, its output recorded.

    ros2 launch vla_align replay.launch.py bag:=EPISODE_BAG output:=REC checkpoint:=CKPT
    vla-align eval-bag EPISODE_BAG --predictions REC --out report/   # score the recording

bag_player_node publishes the bag's policy inputs (camera, instruction, robot state) at the
recorded rate (``rate:=2.0`` for twice as fast); policy_node answers each frame; the record node
writes the answers (and the replayed inputs) to ``output``. The player stops after the bag;
stop the launch with Ctrl-C and the recorder closes its bag. ``ros2 bag play`` works as well as
the player (``--topics /camera/image_raw /vla/instruction /vla/ee_pose /joint_states``).
Without ros2 launch: ``vla-align up replay_graph`` (config/replay_graph.yaml; docs/REPLAY.md).
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
    bag = LaunchConfiguration('bag')
    output = LaunchConfiguration('output')
    rate = LaunchConfiguration('rate')
    control_rate = LaunchConfiguration('control_rate')
    image_topic = LaunchConfiguration('image_topic')
    log_level = LaunchConfiguration('log_level')

    declare_params_file = DeclareLaunchArgument(
        'params_file', default_value=os.path.join(share_dir, 'config', 'replay_nodes.yaml'),
        description='Full path to the parameters file of the player, policy and recorder')
    declare_checkpoint = DeclareLaunchArgument(
        'checkpoint', description='Path of the trained policy checkpoint (required)')
    declare_bag = DeclareLaunchArgument(
        'bag', description='rosbag2 folder to replay (required)')
    declare_output = DeclareLaunchArgument(
        'output', description='New folder for the recording of the policy output (required)')
    declare_rate = DeclareLaunchArgument(
        'rate', default_value='1.0',
        description='Replay speed: 1.0 is the recorded rate, 2.0 twice as fast')
    declare_control_rate = DeclareLaunchArgument(
        'control_rate', default_value='10.0',
        description='Most actions per second of the policy: at least frame rate x rate')
    declare_image_topic = DeclareLaunchArgument(
        'image_topic', default_value='/camera/image_raw',
        description='Recorded sensor_msgs/Image topic (replayed and fed to the policy)')
    declare_log_level = DeclareLaunchArgument(
        'log_level', default_value='info', description='Log level of the nodes')

    bag_player_node = Node(
        package='vla_align', executable='bag_player_node', name='bag_player_node',
        output='screen',
        parameters=[params_file,
                    {'bag': ParameterValue(bag, value_type=str),
                     'rate': ParameterValue(rate, value_type=float),
                     'topics': ['/camera/camera_info', image_topic, '/vla/instruction',
                                '/vla/ee_pose', '/joint_states']}],
        arguments=['--ros-args', '--log-level', log_level])
    policy_node = Node(
        package='vla_align', executable='policy_node', name='policy_node', output='screen',
        parameters=[params_file,
                    {'checkpoint': ParameterValue(checkpoint, value_type=str),
                     'control_rate': ParameterValue(control_rate, value_type=float)}],
        remappings=[('/camera/image_raw', image_topic)],
        arguments=['--ros-args', '--log-level', log_level])
    record = Node(
        package='vla_align', executable='record', name='record',
        output='screen',
        parameters=[params_file, {'output': ParameterValue(output, value_type=str)}],
        remappings=[('/camera/image_raw', image_topic)],
        arguments=['--ros-args', '--log-level', log_level])

    return LaunchDescription([
        declare_params_file,
        declare_checkpoint,
        declare_bag,
        declare_output,
        declare_rate,
        declare_control_rate,
        declare_image_topic,
        declare_log_level,
        record,
        policy_node,
        bag_player_node,
    ])
