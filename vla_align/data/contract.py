"""Topic contracts: which recorded topics a policy learns from, and how to read them.

A contract is one YAML file (``config/contracts/*.yaml``; format below, documented for users in
docs/CONTRACTS.md). ``data.contract_reader`` turns any rosbag2 that meets it into training
frames; the simulator's own bags are one contract (``sim_panda.yaml``) among others::

    name: panda_servo_teleop        # stored in the checkpoint and in recorded episodes
    robot: panda                    # episodes recorded on another robot are refused
    control_rate_hz: 10.0           # one training sample per control period
    max_skew_s: 0.05                # state and gripper samples at most this old at a frame
    base_frame: panda_link0         # frame of poses and commands ('' : not checked)
    timestamps: header              # pair by header.stamp where a message has one | log
    image:
      topic: /camera/image_raw      # sensor_msgs/Image (rgb8, bgr8, mono8, rgba8, bgra8) or
                                    # sensor_msgs/CompressedImage (jpeg, png): taken from the bag
      camera_info: /camera/camera_info  # optional: intrinsics kept with the data
    instruction:
      source: topic                 # topic (std_msgs/String) | metadata (/vla/episode) | given
      topic: /vla/instruction
    state:
      source: pose                  # pose (PoseStamped) | tf (TFMessage) | none
      topic: /vla/ee_pose           # tf: topic /tf, static_topic /tf_static, parent, child
    action:
      source: twist                 # twist (TwistStamped, speed units) | array (7 values per
      topic: /servo_node/delta_twist_cmds   # step, Float32MultiArray) | pose_delta (from state)
    gripper:
      source: topic                 # topic | joints | action (the array's 7th value)
      topic: /panda_hand_controller/commands  # Float64MultiArray, Float32 or Float64
      index: 0                      # element of a multi-array
      open: 0.04                    # the value meaning open (gripper 0) ...
      closed: 0.0                   # ... and closed (gripper 1): linear in between, clipped
      # joints: topic /joint_states, names [..], open: 0.08 (sum of positions), closed: 0.0
    episodes:
      boundaries: bag               # bag (one bag per episode) | markers (JSON start/end
      metadata_topic: /vla/episode  #   events on markers_topic)
      success_only: true            # leave out episodes whose recorded outcome is failure

Every problem is a ``ContractError`` naming the file and the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
import re
from typing import Any, Optional

import yaml

INSTRUCTION_SOURCES = ('topic', 'metadata', 'given')
STATE_SOURCES = ('pose', 'tf', 'none')
ACTION_SOURCES = ('twist', 'array', 'pose_delta')
GRIPPER_SOURCES = ('topic', 'joints', 'action')
BOUNDARIES = ('bag', 'markers')
TIMESTAMPS = ('header', 'log')
_TOPIC = re.compile(r'^/[A-Za-z0-9_/]+$')
_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_.-]*$')


class ContractError(ValueError):
    """A contract file that cannot be used as written."""


@dataclass(frozen=True)
class ImageSpec:
    topic: str
    camera_info: str = ''  # optional sensor_msgs/CameraInfo: intrinsics kept with the data


@dataclass(frozen=True)
class InstructionSpec:
    source: str = 'topic'
    topic: str = '/vla/instruction'


@dataclass(frozen=True)
class StateSpec:
    source: str = 'pose'
    topic: str = '/vla/ee_pose'  # pose: PoseStamped; tf: the /tf topic
    static_topic: str = '/tf_static'
    parent: str = ''  # tf: base frame
    child: str = ''  # tf: tool frame


@dataclass(frozen=True)
class ActionSpec:
    source: str = 'array'
    topic: str = '/vla/action'


@dataclass(frozen=True)
class GripperSpec:
    source: str = 'action'
    topic: str = ''
    index: int = 0
    names: tuple[str, ...] = ()
    open: float = 0.0
    closed: float = 1.0

    def closure(self, value: float) -> float:
        """A recorded value as the contract's gripper command: 0 open .. 1 closed."""
        span = self.closed - self.open
        return float(min(1.0, max(0.0, (value - self.open) / span)))


@dataclass(frozen=True)
class EpisodeSpec:
    boundaries: str = 'bag'
    metadata_topic: str = '/vla/episode'
    markers_topic: str = '/vla/episode_events'
    success_only: bool = True


@dataclass(frozen=True)
class TopicContract:
    name: str
    robot: str
    control_rate_hz: float
    image: ImageSpec
    instruction: InstructionSpec = InstructionSpec()
    state: StateSpec = StateSpec()
    action: ActionSpec = ActionSpec()
    gripper: GripperSpec = GripperSpec()
    episodes: EpisodeSpec = EpisodeSpec()
    max_skew_s: float = 0.05
    base_frame: str = 'panda_link0'
    #: header: pair messages that have a header by header.stamp (the sensor's time: a pose
    #: published just before a frame can reach the recorder just after it), the others by log
    #: time; log: every message by when the recorder received it.
    timestamps: str = 'header'
    path: Optional[Path] = field(default=None, compare=False)

    @property
    def period_s(self) -> float:
        return 1.0 / self.control_rate_hz

    def topics(self) -> tuple[str, ...]:
        """Every topic the contract reads (what a recorder must record), in a stable order."""
        found = [self.image.topic] + ([self.image.camera_info] if self.image.camera_info else [])
        if self.instruction.source == 'topic':
            found.append(self.instruction.topic)
        if self.state.source == 'pose':
            found.append(self.state.topic)
        elif self.state.source == 'tf':
            found += [self.state.topic, self.state.static_topic]
        if self.action.source in ('twist', 'array'):
            found.append(self.action.topic)
        if self.gripper.source in ('topic', 'joints'):
            found.append(self.gripper.topic)
        found.append(self.episodes.metadata_topic)
        if self.episodes.boundaries == 'markers':
            found.append(self.episodes.markers_topic)
        return tuple(dict.fromkeys(found))

    def to_dict(self) -> dict[str, Any]:
        """What a checkpoint stores: enough to know what deployment must match."""
        return {'name': self.name, 'robot': self.robot, 'control_rate_hz': self.control_rate_hz,
                'base_frame': self.base_frame, 'image_topic': self.image.topic,
                'state_source': self.state.source, 'action_source': self.action.source,
                'gripper_source': self.gripper.source}


# -- loading ------------------------------------------------------------------------------------
def load_contract(path: str | Path) -> TopicContract:
    """Read and check a contract file; a bare name is looked up in config/contracts/."""
    path = resolve_contract_path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ContractError(f'cannot read contract {path}: {exc}') from None
    except yaml.YAMLError as exc:
        raise ContractError(f'{path}: not valid YAML: {exc}') from None
    return contract_from_dict(data, path)


def resolve_contract_path(text: str | Path) -> Path:
    path = Path(text).expanduser()
    if path.is_file():
        return path
    from vla_align.paths import share_path

    for candidate in (share_path('config', 'contracts', str(text)),
                      share_path('config', 'contracts', f'{text}.yaml')):
        if candidate.is_file():
            return candidate
    raise ContractError(f'no contract file {str(text)!r} (looked here and in '
                        f'{share_path("config", "contracts")})')


def contract_from_dict(data: Any, path: Optional[Path] = None) -> TopicContract:
    where = str(path) if path is not None else 'contract'
    if not isinstance(data, dict):
        raise ContractError(f'{where}: a contract is a mapping (see data/contract.py)')
    _known(where, data, {'name', 'robot', 'control_rate_hz', 'max_skew_s', 'base_frame',
                         'timestamps', 'image', 'instruction', 'state', 'action', 'gripper',
                         'episodes'})
    if data.get('timestamps', 'header') not in TIMESTAMPS:
        raise ContractError(f'{where}: timestamps must be one of {TIMESTAMPS}, got '
                            f'{data.get("timestamps")!r}')
    name, robot = data.get('name'), data.get('robot')
    for key, value in (('name', name), ('robot', robot)):
        if not isinstance(value, str) or not _NAME.match(value):
            raise ContractError(f'{where}: {key} must be a simple name, got {value!r}')
    rate = _number(where, data, 'control_rate_hz', None)
    skew = _number(where, data, 'max_skew_s', 0.05)
    if not 0.1 <= rate <= 1000:
        raise ContractError(f'{where}: control_rate_hz must be in [0.1, 1000], got {rate}')
    if not 0 < skew <= 5:
        raise ContractError(f'{where}: max_skew_s must be in (0, 5] s, got {skew}')
    image = _section(where, data, 'image', {'topic', 'camera_info'}, required=True)
    instruction = _section(where, data, 'instruction', {'source', 'topic'})
    state = _section(where, data, 'state', {'source', 'topic', 'static_topic', 'parent', 'child'})
    action = _section(where, data, 'action', {'source', 'topic'})
    gripper = _section(where, data, 'gripper', {'source', 'topic', 'index', 'names', 'open',
                                                'closed'})
    episodes = _section(where, data, 'episodes', {'boundaries', 'metadata_topic',
                                                  'markers_topic', 'success_only'})
    contract = TopicContract(
        name=name, robot=robot, control_rate_hz=rate, max_skew_s=skew,
        base_frame=str(data.get('base_frame', 'panda_link0')),
        timestamps=str(data.get('timestamps', 'header')),
        image=ImageSpec(topic=_topic(where, 'image.topic', image.get('topic')),
                        camera_info=(_topic(where, 'image.camera_info', image['camera_info'])
                                     if image.get('camera_info') else '')),
        instruction=InstructionSpec(**_topics(where, 'instruction', instruction)),
        state=StateSpec(**_topics(where, 'state', state)),
        action=ActionSpec(**_topics(where, 'action', action)),
        gripper=_gripper(where, gripper),
        episodes=EpisodeSpec(**_topics(where, 'episodes', episodes)),
        path=path)
    _check_choices(where, contract)
    return contract


def _known(where: str, data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ContractError(f'{where}: unknown keys {unknown} (allowed: {sorted(allowed)})')


def _section(where: str, data: dict, key: str, allowed: set[str],
             required: bool = False) -> dict[str, Any]:
    section = data.get(key)
    if section is None and not required:
        return {}
    if not isinstance(section, dict):
        raise ContractError(f'{where}: {key} must be a mapping')
    _known(f'{where}: {key}', section, allowed)
    return dict(section)


def _number(where: str, data: dict, key: str, default: Optional[float]) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ContractError(f'{where}: {key} must be a number, got {value!r}')
    return float(value)


def _topic(where: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _TOPIC.match(value):
        raise ContractError(f'{where}: {key} must be an absolute topic name, got {value!r}')
    return value


def _topics(where: str, name: str, section: dict[str, Any]) -> dict[str, Any]:
    """A section's values, with every *topic key checked."""
    out = {}
    for key, value in section.items():
        if key.endswith('topic'):
            value = _topic(where, f'{name}.{key}', value)
        out[key] = value
    return out


def _gripper(where: str, section: dict[str, Any]) -> GripperSpec:
    section = _topics(where, 'gripper', section)
    source = section.get('source', 'action')
    defaults = {'topic': (0.0, 1.0), 'joints': (0.08, 0.0), 'action': (0.0, 1.0)}
    low, high = defaults.get(source, (0.0, 1.0))
    try:
        spec = GripperSpec(source=source, topic=section.get('topic', ''),
                           index=int(section.get('index', 0)),
                           names=tuple(str(n) for n in section.get('names') or ()),
                           open=float(section.get('open', low)),
                           closed=float(section.get('closed', high)))
    except (TypeError, ValueError) as exc:
        raise ContractError(f'{where}: gripper: {exc}') from None
    if spec.open == spec.closed:
        raise ContractError(f'{where}: gripper open and closed must differ (the mapping of a '
                            f'recorded value to 0 open .. 1 closed)')
    if source in ('topic', 'joints') and not spec.topic:
        raise ContractError(f'{where}: gripper source {source} needs gripper.topic')
    if source == 'joints' and not spec.names:
        raise ContractError(f'{where}: gripper source joints needs gripper.names (the finger '
                            f'joints whose positions add up to the opening)')
    return spec


def _check_choices(where: str, c: TopicContract) -> None:
    for key, value, choices in (('instruction.source', c.instruction.source, INSTRUCTION_SOURCES),
                                ('state.source', c.state.source, STATE_SOURCES),
                                ('action.source', c.action.source, ACTION_SOURCES),
                                ('gripper.source', c.gripper.source, GRIPPER_SOURCES),
                                ('episodes.boundaries', c.episodes.boundaries, BOUNDARIES)):
        if value not in choices:
            raise ContractError(f'{where}: {key} must be one of {choices}, got {value!r}')
    if c.state.source == 'tf' and not (c.state.parent and c.state.child):
        raise ContractError(f'{where}: state source tf needs state.parent (base frame) and '
                            f'state.child (tool frame)')
    if c.action.source == 'pose_delta' and c.state.source == 'none':
        raise ContractError(f'{where}: action source pose_delta needs a state source')
    if c.gripper.source == 'action' and c.action.source != 'array':
        raise ContractError(f'{where}: gripper source action needs action source array (a '
                            f'twist carries no gripper command)')
