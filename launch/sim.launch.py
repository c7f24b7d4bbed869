"""Simulation graph, closed loop: sim_node -> instruction_node -> policy_node -> sim_node.

Built from config/sim_graph.yaml, the one description of this graph, which
``vla-align up sim_graph`` starts too: nodes, parameter file, launch arguments and DDS profile
are written there, not here. ``ros2 launch vla_align sim.launch.py --show-args`` lists the
arguments.
"""
from vla_align.ros.launch_description import graph_launch_description


def generate_launch_description():
    return graph_launch_description('sim_graph.yaml')
