"""Robot graph: camera + instruction + policy; actions to a Cartesian controller.

    ros2 launch vla_align robot.launch.py checkpoint:=/path/to/checkpoint \
        image_topic:=/camera/color/image_raw use_camera:=false

The policy publishes /vla/action, /vla/ee_twist (TwistStamped velocities for MoveIt Servo; remap
it to the servo's twist command topic), /vla/gripper, /vla/alignment and /diagnostics.
Instructions: ``ros2 topic pub --once /vla/instruction_in std_msgs/String "{data: '...'}"``.
Without ros2 launch: ``vla-align up robot_graph`` (config/robot_graph.yaml).
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from vla_align.ros.graph_config import dds_profile_variable


def generate_launch_description():
    share_dir = get_package_share_directory('vla_align')

    params_file = LaunchConfiguration('params_file')
    checkpoint = LaunchConfiguration('checkpoint')
    image_topic = LaunchConfiguration('image_topic')
    use_camera = LaunchConfiguration('use_camera')
    camera_source = LaunchConfiguration('camera_source')
    log_level = LaunchConfiguration('log_level')
    dds_profile = LaunchConfiguration('dds_profile')

    declare_params_file = DeclareLaunchArgument(
        'params_file', default_value=os.path.join(share_dir, 'config', 'robot_nodes.yaml'),
        description='Full path to the parameters file of camera_node, instruction_node and '
                    'policy_node')
    declare_checkpoint = DeclareLaunchArgument(
        'checkpoint', description='Path of the trained policy checkpoint (required)')
    declare_image_topic = DeclareLaunchArgument(
        'image_topic', default_value='/camera/image_raw',
        description='sensor_msgs/Image topic the policy acts on (rgb8, bgr8 or mono8)')
    declare_use_camera = DeclareLaunchArgument(
        'use_camera', default_value='true', choices=['true', 'false'],
        description='Start the OpenCV camera_node (false when a camera driver already '
                    'publishes image_topic)')
    declare_camera_source = DeclareLaunchArgument(
        'camera_source', default_value='0',
        description='camera_node source: device index, video file or image folder')
    declare_log_level = DeclareLaunchArgument(
        'log_level', default_value='info', description='Log level of every node')
    declare_dds_profile = DeclareLaunchArgument(
        'dds_profile',
        default_value=os.path.join(share_dir, 'config', 'fastdds_large_messages.xml'),
        description='Fast DDS XML profile of the nodes (the default enlarges shared memory so '
                    'frames over ~500 KB are not lost)')

    # Fast DDS 2 (Humble, Jazzy) and Fast DDS 3 (Kilted on) read different variable names.
    set_dds_profile = SetEnvironmentVariable(
        dds_profile_variable(os.environ.get('ROS_DISTRO')), dds_profile)

    camera_node = Node(
        condition=IfCondition(use_camera),
        package='vla_align', executable='camera_node', name='camera_node', output='screen',
        parameters=[params_file, {'source': ParameterValue(camera_source, value_type=str)}],
        remappings=[('/camera/image_raw', image_topic)],
        arguments=['--ros-args', '--log-level', log_level])
    instruction_node = Node(
        package='vla_align', executable='instruction_node', name='instruction_node',
        output='screen', parameters=[params_file],
        arguments=['--ros-args', '--log-level', log_level])
    policy_node = Node(
        package='vla_align', executable='policy_node', name='policy_node', output='screen',
        parameters=[params_file, {'checkpoint': ParameterValue(checkpoint, value_type=str)}],
        remappings=[('/camera/image_raw', image_topic)],
        arguments=['--ros-args', '--log-level', log_level])

    return LaunchDescription([
        declare_params_file,
        declare_checkpoint,
        declare_image_topic,
        declare_use_camera,
        declare_camera_source,
        declare_log_level,
        declare_dds_profile,
        set_dds_profile,
        camera_node,
        instruction_node,
        policy_node,
    ])
