"""vla_align: language-conditioned robot manipulation for ROS 2.

Data flows camera + instruction -> policy (vision/language encoders, cross-modal fusion,
V-L-A alignment, action head) -> 7-DoF end-effector action. Sub-packages follow that flow:
``sim`` (PyBullet world, tasks, experts), ``data`` (episodes <-> rosbag2, datasets),
``model`` (torch modules and the inference ``Policy``), ``train``, ``evaluation`` and ``ros``.
"""

__version__ = '0.1.0'
