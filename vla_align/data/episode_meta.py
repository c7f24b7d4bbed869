"""What an episode was: the JSON record every episode bag carries on ``/vla/episode``.

One format for every source: the simulator's collector, the episode recorder a person drives on
a robot, and the scripted operator. A contract (``data.contract``) reads the instruction and the
outcome from it when a bag has no instruction topic; ``vla-align inspect-bag`` prints it.

Version 2 (this module) is written; version 1 (the simulator's older collector: ``task``,
``seed``, ``split``, ``success``, ``num_steps``, ``control_hz``, ``camera``, ``metadata``) is
still read.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
import json
from typing import Any, Optional

LAYOUT_VERSION = '2'
OUTCOMES = ('success', 'failure', 'unknown')


class EpisodeMetadataError(ValueError):
    """A payload that is not episode metadata."""


@dataclass
class EpisodeMetadata:
    instruction: str
    outcome: str = 'unknown'  # success | failure | unknown (not judged)
    robot: str = ''  # e.g. 'panda': a bag from another robot is refused by a contract
    operator: str = ''  # who or what drove the robot: a person's name, 'scripted_operator'
    notes: str = ''
    control_hz: Optional[float] = None
    contract: str = ''  # the contract the bag was recorded for
    source: str = ''  # 'sim_collector', 'episode_recorder', ...
    #: Task details where they are known (simulator: family, split, target, ...); never needed
    #: to train or act, only to report results per family.
    task: dict[str, Any] = field(default_factory=dict)
    seed: Optional[int] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise EpisodeMetadataError(f'outcome must be one of {OUTCOMES}, got '
                                       f'{self.outcome!r}')

    @property
    def success(self) -> Optional[bool]:
        return None if self.outcome == 'unknown' else self.outcome == 'success'

    @property
    def family(self) -> str:
        return str(self.task.get('family', ''))

    @property
    def split(self) -> str:
        return str(self.task.get('split', ''))

    def to_json(self) -> str:
        payload = {'layout_version': LAYOUT_VERSION, **asdict(self)}
        try:
            return json.dumps(payload, sort_keys=True, default=_plain)
        except (TypeError, ValueError) as exc:
            raise EpisodeMetadataError(f'episode metadata cannot be stored as JSON: '
                                       f'{exc}') from None

    @classmethod
    def from_json(cls, text: str) -> EpisodeMetadata:
        """Parse version 2 or 1; ``EpisodeMetadataError`` for anything else."""
        try:
            data = json.loads(text)
        except (json.JSONDecodeError, TypeError):
            raise EpisodeMetadataError('not JSON') from None
        if not isinstance(data, dict):
            raise EpisodeMetadataError('not a JSON object')
        version = str(data.get('layout_version', ''))
        try:
            if version == LAYOUT_VERSION:
                known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
                return cls(**known)
            if version == '1' and isinstance(data.get('task'), dict):
                task = dict(data['task'])
                success = data.get('success')
                return cls(instruction=str(task.get('instruction', '')),
                           outcome='unknown' if success is None else
                           ('success' if success else 'failure'),
                           robot='panda', control_hz=data.get('control_hz'),
                           source='sim_collector', task=task, seed=data.get('seed'),
                           extra={'camera': data.get('camera'),
                                  'metadata': data.get('metadata') or {}})
        except (TypeError, ValueError) as exc:
            raise EpisodeMetadataError(f'malformed episode metadata: {exc}') from None
        raise EpisodeMetadataError(f'no episode metadata layout_version (got {version!r})')


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as JSON values."""
    if hasattr(value, 'item') and getattr(value, 'ndim', 1) == 0:
        return value.item()
    if hasattr(value, 'tolist'):
        return value.tolist()
    raise TypeError(f'{type(value).__name__} is not JSON serializable')
