"""Robot graph: camera + instruction + policy; commands to MoveIt Servo and a gripper controller.

Built from config/robot_graph.yaml, the one description of this graph, which
``vla-align up robot_graph`` starts too: nodes, parameter file, launch arguments and DDS profile
are written there, not here. ``ros2 launch vla_align robot.launch.py --show-args`` lists the
arguments.
"""
from vla_align.ros.launch_description import graph_launch_description


def generate_launch_description():
    return graph_launch_description('robot_graph.yaml')
