"""/vla/episode_status: the sim node's per-step episode report, a JSON std_msgs/String."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
import json


@dataclass(frozen=True)
class EpisodeStatus:
    """Where the current simulated episode stands.

    ``episode`` counts from 0 since the sim node started; ``seed`` rebuilds the episode
    (``env.reset(seed, task)``); ``success`` is the task's success check at ``step``.
    """

    episode: int
    family: str
    split: str
    seed: int
    instruction: str
    step: int
    success: bool
    done: bool

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EpisodeStatus:
        """Parse a status; raises ValueError on malformed JSON or missing/extra fields."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f'episode status is not JSON: {exc}') from None
        names = {f.name for f in fields(cls)}
        if not isinstance(data, dict) or set(data) != names:
            raise ValueError(f'episode status needs exactly the fields {sorted(names)}, got '
                             f'{sorted(data) if isinstance(data, dict) else type(data).__name__}')
        return cls(**data)
