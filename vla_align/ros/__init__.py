"""The ROS 2 side of vla_align: rclpy nodes, and the plain modules they stand on.

Nodes (one ``Node`` subclass per module, ``main()`` entry points for ``ros2 run``):
``camera_node`` (OpenCV frames -> Image + CameraInfo), ``instruction_node`` (text ->
/vla/instruction), ``policy_node`` (camera + instruction -> 7-DoF action, with safety gating)
and ``sim_node`` (the PyBullet world as a robot).

Everything a node does that can be tested without DDS lives in a plain module: ``topics`` and
``qos`` (names and profiles of the topic contract), ``conversions`` (message <-> numpy),
``safety`` (when to hold, clamping, rate limits), ``pacing`` (when to run the policy),
``metrics`` (latency and rate), ``sources`` (what produces actions), ``frame_source`` (OpenCV
inputs), ``instructions``, ``episode_status``, ``params`` (declared, validated parameters),
``runner`` (the shared ``main``) and ``graph_config`` (the ``vla-align up`` YAML format;
``launcher`` runs it). ``latency_probe`` measures camera -> action latency through topics.
"""
