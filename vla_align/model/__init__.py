"""The vision-language-action model and its inference API.

``Policy`` / ``PolicyStep`` (policy.py) are what ROS nodes and evaluation use; ``VLAModel``
(vla.py) is the torch module; ``PolicyConfig`` (config.py) describes it. Names are imported
lazily so ``from vla_align.model.config import PolicyConfig`` does not pull in torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'Policy': 'vla_align.model.policy',
    'PolicyStep': 'vla_align.model.policy',
    'PolicyConfig': 'vla_align.model.config',
    'VLAModel': 'vla_align.model.vla',
    'CheckpointError': 'vla_align.model.checkpoint',
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


__all__ = sorted(_EXPORTS)
