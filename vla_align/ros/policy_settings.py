"""The policy node's parameters: declared once, with descriptions and ranges, checked at start.

``declare_policy_settings(node)`` reads them into a ``PolicyNodeSettings``; values outside their
ranges or choices are refused with one line naming the parameter (``ros.params``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vla_align.actions import ActionLimits
from vla_align.model.chunking import DEFAULT_EXECUTION, EXECUTION_MODES, ChunkExecution
from vla_align.ros.command_output import OutputSettings
from vla_align.ros.params import (
    ParameterConfigError,
    declare_bool,
    declare_float,
    declare_int,
    declare_str,
    declare_str_list,
)
from vla_align.ros.safety import SafetyConfig, Workspace
from vla_align.ros.sources import RANDOM_CONFIGS, SOURCE_KINDS

TRIGGERS = ('frame', 'timer')
DEVICES = ('auto', 'cpu', 'cuda')
STATE_SOURCES = ('pose', 'tf', 'joint_states')
CHECK_MODES = ('refuse', 'warn')
#: ``alignment_threshold`` value meaning "the checkpoint's calibrated threshold".
THRESHOLD_FROM_CHECKPOINT = -2.0
#: The threshold of a checkpoint that was never calibrated.
DEFAULT_THRESHOLD = 0.1


@dataclass(frozen=True)
class PolicyNodeSettings:
    source: str
    checkpoint: str
    random_config: str
    device: str
    torch_threads: int
    execution: ChunkExecution
    control_rate: float
    pace_rate: float
    trigger: str
    base_frame: str
    use_proprioception: bool
    state_source: str
    state_age_by: str
    state_pairing_wait_s: float
    tool_frame: str
    urdf: str
    initial_gripper: float
    gripper_joints: tuple[str, ...]
    gripper_open_width: float
    publish_hold: bool
    start_enabled: bool
    deployment_checks: str
    diagnostics_period_s: float
    max_image_pixels: int
    max_instruction_length: int
    log_repeat_period_s: float
    safety: SafetyConfig
    output: OutputSettings


def declare_policy_settings(node: Any) -> PolicyNodeSettings:
    source = declare_str(node, 'source', 'checkpoint',
                         'what produces actions: checkpoint (trained policy), random '
                         '(untrained tiny policy, for timing), expert (relay the sim '
                         "expert's /vla/expert_action; simulation only)", SOURCE_KINDS)
    checkpoint = declare_str(node, 'checkpoint', '',
                             'path of the trained checkpoint (source: checkpoint)')
    random_config = declare_str(node, 'random_config', 'tiny',
                                'architecture of source: random (tiny, or default = the '
                                'full-size PolicyConfig)', RANDOM_CONFIGS)
    device = declare_str(node, 'device', 'auto', 'torch device for the policy', DEVICES)
    torch_threads = declare_int(node, 'torch_threads', 1,
                                'torch intra-op CPU threads (0: torch default); 1 keeps '
                                'the DDS threads responsive on small machines', 0, 256)
    execution = ChunkExecution(
        declare_str(node, 'chunk_execution', DEFAULT_EXECUTION.mode,
                    'a checkpoint that predicts action chunks: execute the first action '
                    'of the newest chunk (first) or the temporal ensemble of every '
                    'prediction for this step (ensemble)', EXECUTION_MODES),
        declare_float(node, 'ensemble_decay', DEFAULT_EXECUTION.decay,
                      'temporal ensembling: weight exp(decay x age) of a prediction made '
                      'age steps earlier (0.01 as ACT; 0: plain mean)', -5.0, 5.0))
    control_rate = declare_float(node, 'control_rate', 10.0,
                                 'actions per second (Hz); each action is a delta for one '
                                 'control period, commanded as delta x control_rate', 0.5,
                                 1000.0)
    pace_rate = declare_float(node, 'pace_rate_hz', 0.0,
                              'most decisions per second (0: control_rate); higher only where '
                              'frames come faster than the control rate on purpose (lockstep '
                              'evaluation, replay faster than recorded)', 0.0, 10000.0)
    trigger = declare_str(node, 'trigger', 'frame',
                          'frame: act on each new frame at most control_rate times per '
                          'second (lowest latency); timer: act on the newest frame at '
                          'each control tick', TRIGGERS)
    max_image_age = declare_float(node, 'max_image_age_s', 0.5,
                                  'hold when the newest frame arrived longer ago (s)',
                                  0.001, 60.0)
    max_translation = declare_float(node, 'max_translation', 0.03,
                                    'clamp |dx|,|dy|,|dz| per step (m)', 1e-6, 1.0)
    max_rotation = declare_float(node, 'max_rotation', 0.15,
                                 'clamp |droll|,|dpitch|,|dyaw| per step (rad)', 1e-6, 3.2)
    max_translation_change = declare_float(
        node, 'max_translation_change', 0.03,
        'largest change of a translation component between consecutive actions (m); '
        '0 disables', 0.0, 1.0)
    max_rotation_change = declare_float(
        node, 'max_rotation_change', 0.15,
        'largest change of a rotation component between consecutive actions (rad); '
        '0 disables', 0.0, 6.4)
    alignment_threshold = declare_float(
        node, 'alignment_threshold', THRESHOLD_FROM_CHECKPOINT,
        "grounding score (V-L alignment, joined with the instruction's familiarity where "
        'the checkpoint is calibrated for it) below which the instruction is flagged as not '
        f'grounded in the scene; {THRESHOLD_FROM_CHECKPOINT:g}: the threshold calibrated for the '
        f'checkpoint (its grounding.json, vla-align eval-grounding), else {DEFAULT_THRESHOLD:g}',
        THRESHOLD_FROM_CHECKPOINT, 1.0)
    refuse_ungrounded = declare_bool(node, 'refuse_ungrounded', False,
                                     'hold instead of acting when the grounding score is below '
                                     'alignment_threshold')
    base_frame = declare_str(node, 'base_frame', 'panda_link0',
                             'the robot base frame: of the Servo twists, the pose and the '
                             'workspace box')
    use_proprioception = declare_bool(node, 'use_proprioception', True,
                                      'subscribe /vla/ee_pose and /joint_states and pass '
                                      'the state vector to the policy')
    initial_gripper = declare_float(node, 'initial_gripper', 0.0,
                                    'gripper command assumed before any is known '
                                    '(0 open, 1 closed)', 0.0, 1.0)
    gripper_joints = declare_str_list(node, 'gripper_joints',
                                      ['panda_finger_joint1', 'panda_finger_joint2'],
                                      'joint_states names whose positions add up to the '
                                      'gripper opening')
    gripper_open_width = declare_float(node, 'gripper_open_width', 0.08,
                                       'sum of gripper_joints positions when fully open (m)',
                                       1e-4, 1.0)
    publish_hold = declare_bool(node, 'publish_hold', True,
                                'publish explicit zero-motion holds (true) or nothing '
                                '(false) when it is not safe to act')
    diagnostics_period = declare_float(node, 'diagnostics_period_s', 1.0,
                                       'period of /diagnostics messages (s)', 0.05, 60.0)
    max_image_pixels = declare_int(node, 'max_image_pixels', 4096 * 4096,
                                   'larger camera images are refused (hold) instead of '
                                   'decoded', 1, 2 ** 31)
    max_instruction_length = declare_int(node, 'max_instruction_length', 200,
                                         'longer instructions are refused (hold), in '
                                         'characters after whitespace normalisation',
                                         1, 100000)
    log_repeat_period_s = declare_float(node, 'log_repeat_period_s', 10.0,
                                        'a hold reason or a kind of bad message is logged '
                                        'again at most this often (s); the rest are '
                                        'counted in /diagnostics', 0.0, 3600.0)
    # -- the robot path: where commands go, when motion is allowed, what state is trusted --
    command_rate = declare_float(node, 'command_rate_hz', 50.0,
                                 'rate of the Servo twist stream between decisions (Hz; 0: '
                                 'only at decisions): Servo halts after its '
                                 'incoming_command_timeout', 0.0, 1000.0)
    start_enabled = declare_bool(node, 'start_enabled', True,
                                 'command motion from the start (false: dry run until '
                                 '~/enable is called with true)')
    gripper_open_position = declare_float(node, 'gripper_open_position', 0.04,
                                          "gripper controller's finger position when open "
                                          '(m)', -1.0, 1.0)
    gripper_closed_position = declare_float(node, 'gripper_closed_position', 0.0,
                                            "gripper controller's finger position when "
                                            'closed (m)', -1.0, 1.0)
    if gripper_open_position == gripper_closed_position:
        raise ParameterConfigError(f'{node.get_name()}: gripper_open_position and '
                                   f'gripper_closed_position must differ')
    workspace_low = _declare_float_list(node, 'workspace_low', [0.2, -0.45, 0.0],
                                        'lower corner of the box the commanded end effector '
                                        'stays in (m, base frame)')
    workspace_high = _declare_float_list(node, 'workspace_high', [0.85, 0.45, 0.6],
                                         'upper corner of the workspace box (m, base frame)')
    use_workspace = declare_bool(node, 'use_workspace', True,
                                 'keep the commanded end-effector position inside the box '
                                 '(needs the robot state)')
    try:
        workspace = Workspace(tuple(workspace_low), tuple(workspace_high)) if use_workspace \
            else None
    except ValueError as exc:
        raise ParameterConfigError(f'{node.get_name()}: {exc}') from None
    max_state_age = declare_float(node, 'max_state_age_s', 0.5,
                                  'hold when the newest robot state is older than this (s, by '
                                  'its header stamp)', 0.001, 60.0)
    state_age_by = declare_str(node, 'state_age_by', 'stamp',
                               "how the state's age is judged: stamp (its header stamp, as "
                               'on a robot) or arrival (when it arrived: replayed bags carry '
                               "the recording's stamps)", ('stamp', 'arrival'))
    state_pairing_wait_s = declare_float(
        node, 'state_pairing_wait_s', 0.05,
        'a frame newer than every robot state waits up to this long for the state of its '
        'stamp (s; 0: act at once on the newest state): the pose the policy sees is the one '
        'the picture was taken at, as in training data', 0.0, 1.0)
    state_source = declare_str(node, 'state_source', 'pose',
                               'where the end-effector pose comes from: pose (PoseStamped on '
                               '/vla/ee_pose), tf (base_frame -> tool_frame; needs tf2_ros) or '
                               'joint_states (+ the URDF)', STATE_SOURCES)
    tool_frame = declare_str(node, 'tool_frame', 'panda_grasptarget',
                             'tool frame or link whose pose is the state (tf, joint_states)')
    urdf = declare_str(node, 'urdf', '',
                       "robot URDF for state_source joint_states ('': pybullet_data's "
                       'franka_panda/panda.urdf)')
    deployment_checks = declare_str(node, 'deployment_checks', 'refuse',
                                    'a checkpoint trained at another control rate, in another '
                                    'frame, with another language model or camera geometry: '
                                    'refuse to start, or warn and go on', CHECK_MODES)
    return PolicyNodeSettings(
        source=source, checkpoint=checkpoint, random_config=random_config, device=device,
        torch_threads=torch_threads, execution=execution,
        control_rate=control_rate, pace_rate=pace_rate or control_rate,
        trigger=trigger, base_frame=base_frame, use_proprioception=use_proprioception,
        initial_gripper=initial_gripper, gripper_joints=tuple(gripper_joints),
        gripper_open_width=gripper_open_width, publish_hold=publish_hold,
        diagnostics_period_s=diagnostics_period, max_image_pixels=max_image_pixels,
        max_instruction_length=max_instruction_length,
        log_repeat_period_s=log_repeat_period_s, state_source=state_source,
        tool_frame=tool_frame, urdf=urdf, start_enabled=start_enabled,
        state_age_by=state_age_by, state_pairing_wait_s=state_pairing_wait_s,
        deployment_checks=deployment_checks,
        safety=SafetyConfig(
            limits=ActionLimits(max_translation=max_translation, max_rotation=max_rotation),
            max_image_age_s=max_image_age, max_translation_change=max_translation_change,
            max_rotation_change=max_rotation_change,
            alignment_threshold=alignment_threshold, refuse_ungrounded=refuse_ungrounded,
            workspace=workspace, max_state_age_s=max_state_age),
        output=OutputSettings(control_rate=control_rate, command_rate_hz=command_rate,
                              base_frame=base_frame,
                              gripper_open_position=gripper_open_position,
                              gripper_closed_position=gripper_closed_position))


def _declare_float_list(node: Any, name: str, default: list[float], description: str) -> list:
    from rcl_interfaces.msg import ParameterDescriptor
    from rclpy.exceptions import ParameterException

    try:
        value = node.declare_parameter(name, [float(v) for v in default],
                                       ParameterDescriptor(description=description,
                                                           read_only=True)).value
    except ParameterException as exc:
        raise ParameterConfigError(f'{node.get_name()}: parameter {name!r} refused ({exc}); '
                                   f'expected a list of 3 floats. {name}: {description}') \
            from None
    values = [float(v) for v in value]
    if len(values) != 3:
        raise ParameterConfigError(f'{node.get_name()}: parameter {name!r} needs 3 values (x, '
                                   f'y, z), got {values}')
    return values

