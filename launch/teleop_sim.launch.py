"""Teleoperated stand-in: demonstrations recorded through the robot path (teleop, Servo, recorder).

Built from config/teleop_sim_graph.yaml, the one description of this graph, which
``vla-align up teleop_sim_graph`` starts too. ``ros2 launch vla_align teleop_sim.launch.py
--show-args`` lists the arguments.
"""
from vla_align.ros.launch_description import graph_launch_description


def generate_launch_description():
    return graph_launch_description('teleop_sim_graph.yaml')
