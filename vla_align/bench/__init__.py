"""`vla-align bench`: speed of the policy, the ROS 2 path, training and simulation on this machine.

One module per measurement (`policy_speed`, `optimisations`, `ros_latency`, `training_speed`,
`sim_speed`), `machine` for what the figures were taken on, `report` for bench.json/bench.md,
and `cli` tying them together.
"""
