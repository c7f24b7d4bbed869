"""QoS profiles of the topic contract (DESIGN.md section 3), in one place.

Publishers and subscribers of the same topic take the same profile from here, so a late-joining
policy still receives the current instruction and a slow consumer never queues camera frames.
"""
from __future__ import annotations

from rclpy.qos import QoSDurabilityPolicy, QoSHistoryPolicy, QoSProfile, QoSReliabilityPolicy

#: Camera images and camera info: best effort, keep only the newest frame.
SENSOR_DATA = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                         reliability=QoSReliabilityPolicy.BEST_EFFORT,
                         durability=QoSDurabilityPolicy.VOLATILE)

#: /vla/instruction: reliable and latched, so late joiners get the current instruction.
LATCHED = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                     reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)

#: Instruction input (/vla/instruction_in): what ``ros2 topic pub`` and any publisher created
#: with default settings offer (reliable, volatile, keep last 10). A volatile reliable
#: subscription matches volatile and transient-local publishers alike; a transient-local one
#: would refuse the volatile publishers a person uses ("offering incompatible QoS").
INSTRUCTION_INPUT = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                               reliability=QoSReliabilityPolicy.RELIABLE,
                               durability=QoSDurabilityPolicy.VOLATILE)

#: /vla/action, /vla/action_frame, /vla/gripper: every decision delivered, in order.
COMMANDS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                      reliability=QoSReliabilityPolicy.RELIABLE,
                      durability=QoSDurabilityPolicy.VOLATILE)

#: MoveIt Servo twist commands and the gripper's forward command controller (DESIGN.md section
#: 3): reliable, keep last 1 -- a controller acts on the newest command only, never a backlog of
#: older ones; the sender streams at a steady rate (and re-sends the gripper position), so a late
#: joiner needs no durability.
SERVO_COMMANDS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=1,
                            reliability=QoSReliabilityPolicy.RELIABLE,
                            durability=QoSDurabilityPolicy.VOLATILE)

#: Everything else (/joint_states, /vla/ee_pose, /vla/alignment, /diagnostics): ROS defaults.
DEFAULT = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=10,
                     reliability=QoSReliabilityPolicy.RELIABLE,
                     durability=QoSDurabilityPolicy.VOLATILE)

#: /vla/episode_status: reliable and latched with a history of ~10 s of per-step reports, so a
#: monitor whose discovery completes late (busy machine) still sees how episodes ended.
EPISODE_STATUS = QoSProfile(history=QoSHistoryPolicy.KEEP_LAST, depth=100,
                            reliability=QoSReliabilityPolicy.RELIABLE,
                            durability=QoSDurabilityPolicy.TRANSIENT_LOCAL)
