"""Replay graph: a recorded rosbag2 played live through the policy node, its output recorded.

Built from config/replay_graph.yaml, the one description of this graph, which
``vla-align up replay_graph`` starts too: nodes, parameter file, launch arguments and DDS profile
are written there, not here. ``ros2 launch vla_align replay.launch.py --show-args`` lists the
arguments.
"""
from vla_align.ros.launch_description import graph_launch_description


def generate_launch_description():
    return graph_launch_description('replay_graph.yaml')
