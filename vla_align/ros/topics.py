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
EE_TWIST = '/vla/ee_twist'
GRIPPER = '/vla/gripper'
ALIGNMENT = '/vla/alignment'
DIAGNOSTICS = '/diagnostics'
EPISODE_STATUS = '/vla/episode_status'
#: The simulator's scripted-expert suggestion for the current frame (sim only, debug/demo).
EXPERT_ACTION = '/vla/expert_action'
RESET_EPISODE = '/vla/reset_episode'
