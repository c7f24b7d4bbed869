"""The node graph files (``config/*_graph.yaml``): the ONE description of each graph.

``vla-align up GRAPH`` starts a graph from it, and ``launch/*.launch.py`` build their
``LaunchDescription`` from the same file (``ros.launch_description``), so the two ways in
cannot drift apart: nodes, parameter files, parameters, remappings, launch arguments and the
DDS profile are written once. Format (see ``config/sim_graph.yaml``)::

    description: one line shown at start-up
    settings:                    # all optional
      localhost_only: true       # DDS discovery on this machine only
      ros_domain_id: null        # null: inherit ROS_DOMAIN_ID
      shutdown_timeout_s: 10.0   # after SIGINT, wait this long before killing a node
      dds_profile: null          # Fast DDS XML profile (relative to this file) for all nodes
    arguments:                   # launch arguments: `ros2 launch ... NAME:=VALUE`, and the
      - name: checkpoint         #   same `vla-align up GRAPH NAME:=VALUE`
        description: trained policy checkpoint
        default: checkpoints/default   # no default: the argument is required
        type: str                # str | float | int | bool: the type of the parameters it sets
        choices: null            # optional list of allowed values
        sets: [policy_node.checkpoint]                # node parameters it sets
        remaps: {policy_node: /camera/image_raw}      # or: topics it remaps, per node
        condition: [camera_node]  # or (bool): the nodes started only when it is true
    nodes:
      - name: policy_node                   # node name (-r __node:=NAME); the executable
        module: vla_align.ros.policy_node   #   is the module's last part (setup.py entry)
        params_file: sim_nodes.yaml         # relative to this file; sections keyed by node name
        parameters: {source: expert}        # optional overrides (-p NAME:=VALUE)
        remappings: {/camera/image_raw: /sim/image}  # optional (-r FROM:=TO)
        stdin: false                        # optional: forward the launcher's stdin to it

Every graph also takes ``log_level``, ``namespace`` and ``use_sim_time`` (all nodes),
``params_file`` (when its nodes share one) and ``dds_profile`` (when it names one). Every
problem is reported as a ``GraphConfigError`` naming the file and the entry.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import importlib.util
import json
from pathlib import Path
import re
import sys
from typing import Any, Optional

import yaml

from vla_align.paths import share_path

_NAME = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')
_MODULE = re.compile(r'^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$')
_TOPIC = re.compile(r'^~?/?[A-Za-z0-9_~{}/]+$')
_NAMESPACE = re.compile(r'^/[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*$')
_NODE_KEYS = {'name', 'module', 'params_file', 'parameters', 'remappings', 'stdin'}
_SETTINGS_KEYS = {'localhost_only', 'ros_domain_id', 'shutdown_timeout_s', 'dds_profile'}
_ARGUMENT_KEYS = {'name', 'description', 'default', 'type', 'choices', 'sets', 'remaps',
                  'condition'}
#: Launch argument types: the parameter type each sets (launch_ros ``ParameterValue`` type).
ARGUMENT_TYPES: dict[str, type] = {'str': str, 'float': float, 'int': int, 'bool': bool}
#: Arguments every graph takes, besides its own.
LOG_LEVELS = ('debug', 'info', 'warn', 'error', 'fatal')


#: ROS distributions whose Fast DDS (2.x) reads FASTRTPS_DEFAULT_PROFILES_FILE; later ones
#: (Fast DDS 3) read FASTDDS_DEFAULT_PROFILES_FILE and load a file named in both twice.
_FASTRTPS_DISTROS = ('humble', 'iron', 'jazzy')


def dds_profile_variable(ros_distro: Optional[str]) -> str:
    """The environment variable that names a Fast DDS XML profile file on ``ros_distro``."""
    if (ros_distro or '').lower() in _FASTRTPS_DISTROS:
        return 'FASTRTPS_DEFAULT_PROFILES_FILE'
    return 'FASTDDS_DEFAULT_PROFILES_FILE'


class GraphConfigError(ValueError):
    """A graph file that cannot be run as written."""


@dataclass(frozen=True)
class LaunchArgument:
    """One launch argument of a graph and what it changes (see the module docstring)."""

    name: str
    description: str
    default: Optional[str] = None  # None: required
    type: str = 'str'
    choices: Optional[tuple[str, ...]] = None
    sets: tuple[tuple[str, str], ...] = ()  # (node, parameter)
    remaps: tuple[tuple[str, str], ...] = ()  # (node, topic remapped to the value)
    condition: tuple[str, ...] = ()  # nodes started only when the value is true

    def convert(self, text: str) -> Any:
        """The value ``text`` (a launch argument string) as its parameter type."""
        if self.choices is not None and text not in self.choices:
            raise GraphConfigError(f'argument {self.name}:={text!r} is not one of '
                                   f'{", ".join(self.choices)}')
        if self.type == 'bool' or self.condition:
            value = yaml.safe_load(text) if text.strip() else None
            if not isinstance(value, bool):
                raise GraphConfigError(f'argument {self.name}:={text!r} must be true or false')
            return value
        if self.type == 'str':
            return text
        try:
            return ARGUMENT_TYPES[self.type](text)
        except ValueError:
            raise GraphConfigError(f'argument {self.name}:={text!r} is not a valid '
                                   f'{self.type}') from None


#: Nodes that write what the others publish into bags.
RECORDER_EXECUTABLES = frozenset({'record', 'episode_recorder'})


@dataclass(frozen=True)
class NodeSpec:
    name: str
    module: str
    params_file: Optional[Path] = None
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    stdin: bool = False
    log_level: str = 'info'
    namespace: str = ''

    @property
    def executable(self) -> str:
        """The installed executable (setup.py console script) that runs this node."""
        return self.module.rsplit('.', 1)[-1]

    @property
    def records(self) -> bool:
        """Whether this node writes bags (the launcher stops it after every other node)."""
        return self.executable in RECORDER_EXECUTABLES

    def command(self, python: str = sys.executable) -> list[str]:
        """The argv that starts this node as its own process."""
        argv = [python, '-m', self.module, '--ros-args', '-r', f'__node:={self.name}']
        if self.namespace:
            argv += ['-r', f'__ns:={self.namespace}']
        if self.log_level != 'info':
            argv += ['--log-level', self.log_level]
        if self.params_file is not None:
            argv += ['--params-file', str(self.params_file)]
        for source, target in self.remappings:
            argv += ['-r', f'{source}:={target}']
        for name, value in self.parameters.items():
            # JSON is valid YAML: strings stay strings ("0" is not the integer 0).
            argv += ['-p', f'{name}:={json.dumps(value)}']
        return argv


@dataclass(frozen=True)
class GraphSettings:
    localhost_only: bool = True
    ros_domain_id: Optional[int] = None
    shutdown_timeout_s: float = 10.0
    #: Fast DDS XML profile given to every node (e.g. larger shared memory for big images).
    dds_profile: Optional[Path] = None


@dataclass(frozen=True)
class GraphConfig:
    path: Path
    description: str
    nodes: tuple[NodeSpec, ...]
    settings: GraphSettings = GraphSettings()
    arguments: tuple[LaunchArgument, ...] = ()

    def argument(self, name: str) -> LaunchArgument:
        for argument in self.arguments:
            if argument.name == name:
                return argument
        names = ', '.join(a.name for a in self.arguments) or 'none'
        implicit = ', '.join(a.name for a in self.implicit_arguments())
        raise GraphConfigError(f'{self.path}: no argument {name!r} (arguments: {names}, '
                               f'{implicit})')

    @property
    def params_file(self) -> Optional[Path]:
        """The parameters file all nodes share (the ``params_file`` argument), if they do."""
        files = {spec.params_file for spec in self.nodes}
        return files.pop() if len(files) == 1 else None

    def implicit_arguments(self) -> tuple[LaunchArgument, ...]:
        """Arguments every graph has besides its own: log_level, and params_file / dds_profile
        where the graph has one."""
        found = [LaunchArgument('log_level', 'Log level of every node', 'info',
                                choices=LOG_LEVELS),
                 LaunchArgument('namespace', 'Namespace of every node (its services and '
                                'parameters: /NS/policy_node/enable); topics are set by their '
                                'own arguments', ''),
                 LaunchArgument('use_sim_time', 'Every node takes its time from /clock '
                                '(a simulator or a bag played with --clock)', 'false',
                                choices=('true', 'false'), type='bool')]
        if self.params_file is not None:
            found.append(LaunchArgument(
                'params_file', 'Full path to the parameters file of every node (sections '
                'keyed by node name)', str(self.params_file)))
        if self.settings.dds_profile is not None:
            found.append(LaunchArgument(
                'dds_profile', 'Fast DDS XML profile of the nodes (the default enlarges shared '
                'memory so that camera frames over ~500 KB are not lost)',
                str(self.settings.dds_profile)))
        return tuple(found)

    def with_arguments(self, values: dict[str, str]) -> GraphConfig:
        """The graph as ``ros2 launch`` would start it with ``NAME:=VALUE`` arguments: every
        argument (given, else its default) applied; a required one missing is an error."""
        values = dict(values)
        implicit = {a.name: a for a in self.implicit_arguments()}
        chosen = {name: values.pop(name, argument.default)
                  for name, argument in implicit.items()}
        implicit['log_level'].convert(chosen['log_level'])
        sim_time = implicit['use_sim_time'].convert(chosen['use_sim_time'])
        namespace = chosen['namespace'].strip()
        if namespace and not _NAMESPACE.match(namespace):
            raise GraphConfigError(f'argument namespace:={namespace!r} is not a ROS namespace '
                                   f'(e.g. /arm1)')
        for name in values:
            self.argument(name)  # unknown names are refused
        nodes = {spec.name: replace(spec, log_level=chosen['log_level'], namespace=namespace,
                                    parameters={**spec.parameters,
                                                **({'use_sim_time': True} if sim_time else {})})
                 for spec in self.nodes}
        if 'params_file' in chosen:
            path = Path(chosen['params_file']).expanduser().resolve()
            if not path.is_file():
                raise GraphConfigError(f'argument params_file:={chosen["params_file"]!r}: no '
                                       f'such file')
            nodes = {name: replace(spec, params_file=path) for name, spec in nodes.items()}
        if namespace:  # params files are keyed by node name: key them under the namespace too
            nodes = {name: replace(spec, params_file=namespaced_params_file(spec.params_file,
                                                                         namespace))
                     if spec.params_file is not None else spec for name, spec in nodes.items()}
        settings = self.settings
        if 'dds_profile' in chosen:
            profile = Path(chosen['dds_profile']).expanduser().resolve()
            if not profile.is_file():
                raise GraphConfigError(f'argument dds_profile:={chosen["dds_profile"]!r}: no '
                                       f'such file')
            settings = replace(settings, dds_profile=profile)
        dropped: set[str] = set()
        for argument in self.arguments:
            text = values.get(argument.name, argument.default)
            if text is None:
                raise GraphConfigError(f'{self.path.name}: argument {argument.name!r} is '
                                       f'required ({argument.name}:=VALUE): '
                                       f'{argument.description}')
            value = argument.convert(str(text))
            for node_name, param in argument.sets:
                spec = nodes[node_name]
                nodes[node_name] = replace(spec, parameters={**spec.parameters, param: value})
            for node_name, topic in argument.remaps:
                if str(value) == topic:
                    continue  # the default: no remapping needed
                spec = nodes[node_name]
                remaps = dict(spec.remappings)
                remaps[topic] = str(value)
                nodes[node_name] = replace(spec, remappings=tuple(remaps.items()))
            if argument.condition and not value:
                dropped.update(argument.condition)
        return replace(self, settings=settings, nodes=tuple(nodes[n.name] for n in self.nodes
                                                            if n.name not in dropped))

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise GraphConfigError(f'{self.path}: no node named {name!r} (nodes: '
                               f'{", ".join(n.name for n in self.nodes)})')

    def with_parameters(self, node_name: str, parameters: dict[str, Any]) -> GraphConfig:
        """A copy with ``parameters`` set on the node ``node_name`` (over earlier ones)."""
        spec = self.node(node_name)
        changed = replace(spec, parameters={**spec.parameters, **parameters})
        return replace(self, nodes=tuple(changed if n.name == node_name else n
                                         for n in self.nodes))

    def with_overrides(self, overrides: list[str]) -> GraphConfig:
        """Apply ``NODE.PARAM=VALUE`` overrides (VALUE is parsed as YAML: 10.0, true, text)."""
        nodes = {spec.name: spec for spec in self.nodes}
        for text in overrides:
            key, sep, raw = text.partition('=')
            node_name, dot, param = key.strip().partition('.')
            if not (sep and dot and node_name and param):
                raise GraphConfigError(f'override {text!r} is not NODE.PARAM=VALUE')
            spec = self.node(node_name)
            try:
                value = yaml.safe_load(raw) if raw.strip() else ''
            except yaml.YAMLError as exc:
                raise GraphConfigError(f'override {text!r}: value is not YAML: {exc}') from None
            nodes[node_name] = replace(nodes[spec.name],
                                       parameters={**nodes[spec.name].parameters,
                                                   param: value})
        return replace(self, nodes=tuple(nodes[spec.name] for spec in self.nodes))


def namespaced_params_file(path: Path, namespace: str) -> Path:
    """A copy of a params file whose node sections also apply in ``namespace``: ROS matches a
    section's key against the fully qualified node name, so ``policy_node:`` does not reach
    ``/arm1/policy_node``. The copy (in the temp folder, named by its content) keys every node
    section under the namespace as well."""
    import hashlib
    import tempfile

    data = yaml.safe_load(Path(path).read_text()) or {}
    nested = {key: value for key, value in data.items() if str(key).startswith('/')}
    nested[namespace] = {**nested.get(namespace, {}),
                         **{key: value for key, value in data.items()
                            if not str(key).startswith('/')}}
    text = yaml.safe_dump(nested, sort_keys=False)
    folder = Path(tempfile.gettempdir()) / 'vla_align_params'
    folder.mkdir(exist_ok=True)
    out = folder / f'{Path(path).stem}-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml'
    if not out.is_file():
        out.write_text(text)
    return out


def resolve_config_path(text: str) -> Path:
    """A path as given, else a file in the package's config/ folder (``sim_graph`` works)."""
    path = Path(text).expanduser()
    if path.is_file():
        return path
    for candidate in (share_path('config', text), share_path('config', f'{text}.yaml')):
        if candidate.is_file():
            return candidate
    raise GraphConfigError(f'no graph file {text!r} (looked here and in {share_path("config")})')


def load_graph_config(path: Path) -> GraphConfig:
    """Read and check a graph file; every module must be importable."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise GraphConfigError(f'cannot read graph file {path}: {exc}') from None
    except yaml.YAMLError as exc:
        raise GraphConfigError(f'{path}: not valid YAML: {exc}') from None
    if not isinstance(data, dict) or not isinstance(data.get('nodes'), list) or not data['nodes']:
        raise GraphConfigError(f'{path}: needs a non-empty "nodes" list')
    unknown = set(data) - {'description', 'settings', 'nodes', 'arguments'}
    if unknown:
        raise GraphConfigError(f'{path}: unknown top-level keys {sorted(unknown)}')
    nodes = tuple(_parse_node(path, index, raw) for index, raw in enumerate(data['nodes']))
    names = [spec.name for spec in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GraphConfigError(f'{path}: node names must be unique, repeated: {duplicates}')
    raw_arguments = data.get('arguments') or []
    if not isinstance(raw_arguments, list):
        raise GraphConfigError(f'{path}: arguments must be a list')
    arguments = tuple(_parse_argument(path, index, raw, names)
                      for index, raw in enumerate(raw_arguments))
    argument_names = [a.name for a in arguments]
    reserved = {'log_level', 'params_file', 'dds_profile', 'namespace', 'use_sim_time'}
    if len(set(argument_names)) != len(argument_names) or reserved & set(argument_names):
        raise GraphConfigError(f'{path}: argument names must be unique and not one of '
                               f'{sorted(reserved)}: {argument_names}')
    return GraphConfig(path=path, description=str(data.get('description', '')), nodes=nodes,
                       settings=_parse_settings(path, data.get('settings') or {}),
                       arguments=arguments)


def _parse_argument(path: Path, index: int, raw: Any, nodes: list[str]) -> LaunchArgument:
    where = f'{path}: arguments[{index}]'
    if not isinstance(raw, dict) or not isinstance(raw.get('name'), str) \
            or not _NAME.match(raw['name']):
        raise GraphConfigError(f'{where} must be a mapping with a valid name')
    where = f'{path}: argument {raw["name"]!r}'
    unknown = set(raw) - _ARGUMENT_KEYS
    if unknown:
        raise GraphConfigError(f'{where}: unknown keys {sorted(unknown)} (allowed: '
                               f'{sorted(_ARGUMENT_KEYS)})')
    description = raw.get('description')
    if not isinstance(description, str) or not description.strip():
        raise GraphConfigError(f'{where} needs a description')
    kind = raw.get('type', 'str')
    if kind not in ARGUMENT_TYPES:
        raise GraphConfigError(f'{where}: type must be one of {sorted(ARGUMENT_TYPES)}')
    choices = raw.get('choices')
    if choices is not None and not (isinstance(choices, list) and choices):
        raise GraphConfigError(f'{where}: choices must be a non-empty list')
    sets = []
    for target in raw.get('sets') or []:
        node, dot, param = str(target).partition('.')
        if not dot or node not in nodes or not param:
            raise GraphConfigError(f'{where}: sets entry {target!r} is not NODE.PARAM of a '
                                   f'node of this graph')
        sets.append((node, param))
    remaps = raw.get('remaps') or {}
    if not isinstance(remaps, dict) or any(n not in nodes or not _TOPIC.match(str(t))
                                           for n, t in remaps.items()):
        raise GraphConfigError(f'{where}: remaps must map nodes of this graph to topics')
    condition = [str(n) for n in raw.get('condition') or []]
    if any(n not in nodes for n in condition):
        raise GraphConfigError(f'{where}: condition names a node that is not in the graph')
    if not (sets or remaps or condition):
        raise GraphConfigError(f'{where} changes nothing (give sets, remaps or condition)')
    default = raw.get('default')
    if default is not None:  # YAML may read 10.0 or true: launch arguments are strings
        default = str(default).lower() if isinstance(default, bool) else str(default)
    argument = LaunchArgument(
        name=raw['name'], description=' '.join(description.split()), default=default,
        type=kind, choices=None if choices is None else tuple(str(c) for c in choices),
        sets=tuple(sets), remaps=tuple((str(n), str(t)) for n, t in remaps.items()),
        condition=tuple(condition))
    if default is not None:
        argument.convert(default)  # a default that its own checks refuse is a bad file
    return argument


def _parse_node(path: Path, index: int, raw: Any) -> NodeSpec:
    where = f'{path}: nodes[{index}]'
    if not isinstance(raw, dict):
        raise GraphConfigError(f'{where} must be a mapping with name and module')
    unknown = set(raw) - _NODE_KEYS
    if unknown:
        raise GraphConfigError(f'{where}: unknown keys {sorted(unknown)} (allowed: '
                               f'{sorted(_NODE_KEYS)})')
    name, module = raw.get('name'), raw.get('module')
    if not isinstance(name, str) or not _NAME.match(name):
        raise GraphConfigError(f'{where}: name {name!r} is not a valid ROS node name')
    where = f'{path}: node {name!r}'
    if not isinstance(module, str) or not _MODULE.match(module):
        raise GraphConfigError(f'{where}: module {module!r} is not a python module name')
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        raise GraphConfigError(f'{where}: module {module!r} cannot be imported')
    params_file = None
    if raw.get('params_file') is not None:
        params_file = (path.parent / str(raw['params_file'])).resolve()
        if not params_file.is_file():
            raise GraphConfigError(f'{where}: params_file {params_file} does not exist')
    parameters = raw.get('parameters') or {}
    if not isinstance(parameters, dict) or not all(isinstance(k, str) for k in parameters):
        raise GraphConfigError(f'{where}: parameters must map names to values')
    remappings = raw.get('remappings') or {}
    if not isinstance(remappings, dict):
        raise GraphConfigError(f'{where}: remappings must map FROM topic to TO topic')
    for source, target in remappings.items():
        if not all(isinstance(t, str) and _TOPIC.match(t) for t in (source, target)):
            raise GraphConfigError(f'{where}: remapping {source!r} -> {target!r} is not a '
                                   f'pair of topic names')
    stdin = raw.get('stdin', False)
    if not isinstance(stdin, bool):
        raise GraphConfigError(f'{where}: stdin must be true or false')
    return NodeSpec(name=name, module=module, params_file=params_file,
                    parameters=dict(parameters), remappings=tuple(remappings.items()),
                    stdin=stdin)


def _parse_settings(path: Path, raw: Any) -> GraphSettings:
    if not isinstance(raw, dict) or set(raw) - _SETTINGS_KEYS:
        raise GraphConfigError(f'{path}: settings must be a mapping with keys from '
                               f'{sorted(_SETTINGS_KEYS)}')
    profile = raw.get('dds_profile')
    if profile is not None:
        profile = (path.parent / str(profile)).resolve()
        if not profile.is_file():
            raise GraphConfigError(f'{path}: dds_profile {profile} does not exist')
    settings = GraphSettings(**{**raw, 'dds_profile': profile})
    domain = settings.ros_domain_id
    if domain is not None and (isinstance(domain, bool) or not isinstance(domain, int)
                               or not 0 <= domain <= 232):
        raise GraphConfigError(f'{path}: ros_domain_id must be an integer in [0, 232] or '
                               f'null, got {domain!r}')
    if not isinstance(settings.localhost_only, bool):
        raise GraphConfigError(f'{path}: localhost_only must be true or false')
    timeout = settings.shutdown_timeout_s
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise GraphConfigError(f'{path}: shutdown_timeout_s must be a positive number')
    return settings
