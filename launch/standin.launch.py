"""The simulated cell alone, standing in for a real robot (camera, arm driver, MoveIt Servo,
gripper controller); run robot.launch.py against it as against a real cell.

Built from config/standin_graph.yaml, the one description of this graph, which
``vla-align up standin_graph`` starts too.
"""
from vla_align.ros.launch_description import graph_launch_description


def generate_launch_description():
    return graph_launch_description('standin_graph.yaml')
