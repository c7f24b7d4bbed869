"""Default topic and service names of the contract (DESIGN.md section 3).

Nodes create their endpoints with these names; deployments change them by remapping
(``-r /camera/image_raw:=/camera/color/image_raw``), never by editing code.
"""

IMAGE = '/camera/image_raw'
CAMERA_INFO = '/camera/camera_info'
INSTRUCTION = '/vla/instruction'
#: Free-text input of the instruction node in ``topic`` mode (std_srvs has no string service).
INSTRUCTION_IN = '/vla/instruction_in'
JOINT_STATES = '/joint_states'
EE_POSE = '/vla/ee_pose'
ACTION = '/vla/action'
#: std_msgs/Header per /vla/action: the stamp and frame of the camera image it answers
#: (frame_id 'hold' for a hold), so recordings are scored frame by frame.
ACTION_FRAME = '/vla/action_frame'
GRIPPER = '/vla/gripper'
ALIGNMENT = '/vla/alignment'
DIAGNOSTICS = '/diagnostics'
EPISODE_STATUS = '/vla/episode_status'
#: The simulator's scripted-expert suggestion for the current frame (sim only, debug/demo).
EXPERT_ACTION = '/vla/expert_action'
RESET_EPISODE = '/vla/reset_episode'
#: MoveIt Servo's twist command input (geometry_msgs/TwistStamped, speed units, base frame):
#: what teleop and the policy command, and what the robot stand-in (sim node) obeys.
SERVO_TWIST = '/servo_node/delta_twist_cmds'
#: A forward command controller's input (std_msgs/Float64MultiArray, finger position in m).
GRIPPER_COMMAND = '/panda_hand_controller/commands'
#: sensor_msgs/Joy from the standard joy / spacenav drivers.
JOY = '/joy'
#: Episode metadata (std_msgs/String JSON, data.episode_meta) in every episode bag.
EPISODE_METADATA = '/vla/episode'
