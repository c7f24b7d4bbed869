"""The ``vla-align up`` graph file: which nodes to start, with which parameters and remappings.

It describes the same graphs as ``launch/*.launch.py`` for machines without ``ros2 launch``.
Format (see ``config/sim_graph.yaml``)::

    description: one line shown at start-up
    settings:                    # all optional
      localhost_only: true       # DDS discovery on this machine only
      ros_domain_id: null        # null: inherit ROS_DOMAIN_ID
      shutdown_timeout_s: 10.0   # after SIGINT, wait this long before killing a node
      dds_profile: null          # Fast DDS XML profile (relative to this file) for all nodes
    nodes:
      - name: policy_node                   # node name (-r __node:=NAME)
        module: vla_align.ros.policy_node   # python -m MODULE --ros-args ...
        params_file: sim_nodes.yaml         # relative to this file; sections keyed by node name
        parameters: {source: expert}        # optional overrides (-p NAME:=VALUE)
        remappings: {/camera/image_raw: /sim/image}  # optional (-r FROM:=TO)
        stdin: false                        # optional: forward the launcher's stdin to it

Every problem is reported as a ``GraphConfigError`` naming the file and the entry.
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
_NODE_KEYS = {'name', 'module', 'params_file', 'parameters', 'remappings', 'stdin'}
_SETTINGS_KEYS = {'localhost_only', 'ros_domain_id', 'shutdown_timeout_s', 'dds_profile'}


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
class NodeSpec:
    name: str
    module: str
    params_file: Optional[Path] = None
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    stdin: bool = False

    def command(self, python: str = sys.executable) -> list[str]:
        """The argv that starts this node as its own process."""
        argv = [python, '-m', self.module, '--ros-args', '-r', f'__node:={self.name}']
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

    def node(self, name: str) -> NodeSpec:
        for spec in self.nodes:
            if spec.name == name:
                return spec
        raise GraphConfigError(f'{self.path}: no node named {name!r} (nodes: '
                               f'{", ".join(n.name for n in self.nodes)})')

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
    unknown = set(data) - {'description', 'settings', 'nodes'}
    if unknown:
        raise GraphConfigError(f'{path}: unknown top-level keys {sorted(unknown)}')
    nodes = tuple(_parse_node(path, index, raw) for index, raw in enumerate(data['nodes']))
    names = [spec.name for spec in nodes]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise GraphConfigError(f'{path}: node names must be unique, repeated: {duplicates}')
    return GraphConfig(path=path, description=str(data.get('description', '')), nodes=nodes,
                       settings=_parse_settings(path, data.get('settings') or {}))


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
