"""Checkpoints: a folder that rebuilds a `VLAModel` with no code change and no network.

    <checkpoint>/model.safetensors    weights (a frozen language model is not duplicated: it is
                                      reloaded from the folder named in the config)
    <checkpoint>/config.json          PolicyConfig
    <checkpoint>/normalization.json   NormalizationStats of the training data
    <checkpoint>/metadata.json        data, seed, git commit, metrics, versions, and
                                      ``deployment``: what deployment must match
    <checkpoint>/trainer_state.pt     optional: optimizer/scheduler/step for resuming training

A checkpoint is written to a temporary sibling folder and moved into place with ``os.replace``,
so a crash never leaves a half-written checkpoint under the final name.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
import datetime
import json
import os
from pathlib import Path
import shutil
import tempfile
from typing import Any, Optional

from safetensors.torch import load_file, save_file
import torch

from vla_align.data.normalization import NormalizationStats
from vla_align.model.config import ConfigError, PolicyConfig
from vla_align.model.deployment import DeploymentInfo, deployment_from_metadata, git_state
from vla_align.model.vla import VLAModel

WEIGHTS_FILE = 'model.safetensors'
CONFIG_FILE = 'config.json'
NORMALIZATION_FILE = 'normalization.json'
METADATA_FILE = 'metadata.json'
TRAINER_STATE_FILE = 'trainer_state.pt'
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, or does not fit the model it describes."""


@dataclass
class Checkpoint:
    model: VLAModel
    stats: NormalizationStats
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> PolicyConfig:
        return self.model.config

    @property
    def deployment(self) -> Optional[DeploymentInfo]:
        """The training conditions deployment must match; None for checkpoints written before
        they were recorded. Malformed metadata raises ValueError rather than passing a check."""
        return deployment_from_metadata(self.metadata)


def save_checkpoint(path: str | Path, model: VLAModel, stats: NormalizationStats,
                    metadata: Optional[dict[str, Any]] = None,
                    trainer_state: Optional[dict[str, Any]] = None) -> Path:
    """Write ``model`` + ``stats`` + ``metadata`` to the folder ``path`` (replaced atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The source tree now; a trainer passes the one at training start instead (in metadata).
    commit, dirty = git_state()
    meta = {'format_version': FORMAT_VERSION,
            'created': datetime.datetime.now(datetime.timezone.utc).isoformat(),
            'torch_version': torch.__version__, 'git_commit': commit, 'git_dirty': dirty}
    meta.update(metadata or {})
    tmp = Path(tempfile.mkdtemp(prefix=f'.{path.name}.tmp-', dir=path.parent))
    try:
        weights = {k: v.detach().to('cpu').contiguous()
                   for k, v in model.trainable_state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={'format': 'pt'})
        (tmp / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + '\n')
        stats.save(tmp / NORMALIZATION_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str) + '\n')
        if trainer_state is not None:
            torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` to ``dst``; an existing ``dst`` is swapped out first."""
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f'.{dst.name}.old-', dir=dst.parent))
        os.replace(dst, old / dst.name)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f'checkpoint file {path} is unreadable or not JSON: {exc}') from exc


def load_checkpoint(path: str | Path, device: str | torch.device = 'cpu') -> Checkpoint:
    """Rebuild the model of checkpoint folder ``path``; any problem raises `CheckpointError`."""
    path = Path(path)
    if not path.is_dir():
        problem = 'is not a folder' if path.exists() else 'does not exist'
        raise CheckpointError(f'checkpoint {path} {problem} (expected a folder with '
                              f'{WEIGHTS_FILE}, {CONFIG_FILE}, {NORMALIZATION_FILE})')
    if not os.access(path, os.R_OK | os.X_OK):
        raise CheckpointError(f'checkpoint folder {path} is not readable (permissions)')
    for name in (WEIGHTS_FILE, CONFIG_FILE, NORMALIZATION_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f'checkpoint {path} is incomplete: {name} is missing')
    try:
        config = PolicyConfig.from_dict(_read_json(path / CONFIG_FILE))
        stats = NormalizationStats.from_dict(_read_json(path / NORMALIZATION_FILE))
    except (ConfigError, ValueError) as exc:
        raise CheckpointError(f'checkpoint {path}: {exc}') from exc
    metadata = _read_json(path / METADATA_FILE) if (path / METADATA_FILE).is_file() else {}
    try:
        weights = load_file(str(path / WEIGHTS_FILE))
    except Exception as exc:  # noqa: BLE001 - safetensors raises several types for bad files
        raise CheckpointError(f'checkpoint {path}: {WEIGHTS_FILE} is corrupt or not a '
                              f'safetensors file ({exc})') from exc
    try:
        model = VLAModel(config)
    except ConfigError as exc:
        raise CheckpointError(f'checkpoint {path}: cannot build its model: {exc}') from exc
    _check_weights(path, model, weights)
    model.load_state_dict(weights, strict=False)
    return Checkpoint(model.to(device).eval(), stats, metadata)


def _check_weights(path: Path, model: VLAModel, weights: dict[str, torch.Tensor]) -> None:
    expected = model.trainable_state_dict()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [f'{k} {tuple(weights[k].shape)} vs model {tuple(v.shape)}'
             for k, v in expected.items() if k in weights and weights[k].shape != v.shape]
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing tensors (e.g. {", ".join(missing[:3])})')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected tensors (e.g. '
                        f'{", ".join(unexpected[:3])})')
    if wrong:
        problems.append(f'{len(wrong)} wrong shapes (e.g. {"; ".join(wrong[:3])})')
    if problems:
        raise CheckpointError(f'checkpoint {path} does not match its config: '
                              + '; '.join(problems))


def read_trainer_state(path: str | Path) -> Optional[dict[str, Any]]:
    """The optimizer/scheduler/step state saved with a training checkpoint, if any."""
    file = Path(path) / TRAINER_STATE_FILE
    if not file.is_file():
        return None
    try:
        return torch.load(file, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors have many types
        raise CheckpointError(f'checkpoint {path}: {TRAINER_STATE_FILE} is corrupt ({exc})') \
            from exc


#: PolicyConfig fields a fine-tune may change from the checkpoint it starts from. ``chunk_size``
#: changes only the output shape of the action head and the input of the action embedding, whose
#: tensors then start fresh while every other tensor is copied; the loss weights change no
#: tensor at all (an ablation fine-tunes with an alignment term at zero, for example).
#: ``language_model`` swaps the text encoder: the layers that read its hidden states start fresh
#: when its width differs, the vision trunk, fusion and action head are copied.
LOSS_WEIGHT_FIELDS = frozenset({'alpha_vl', 'beta_va', 'gamma_la', 'bc_weight', 'gripper_weight'})
TRANSFERABLE_FIELDS = frozenset({'chunk_size', 'language_model'}) | LOSS_WEIGHT_FIELDS


def start_from_checkpoint(checkpoint: Checkpoint, config: PolicyConfig,
                          source: str = 'the checkpoint') -> tuple[VLAModel, list[str]]:
    """The model of ``config`` with ``checkpoint``'s weights; also the names of the tensors
    that start fresh (empty when ``config`` is the checkpoint's own). Raises `CheckpointError`
    when ``config`` differs in a field outside `TRANSFERABLE_FIELDS`."""
    changed = [f.name for f in fields(config)
               if getattr(config, f.name) != getattr(checkpoint.config, f.name)]
    blocked = [name for name in changed if name not in TRANSFERABLE_FIELDS]
    if blocked:
        raise CheckpointError(f'cannot start from {source}: its model config differs from the '
                              f'requested one in {", ".join(blocked)} (a fine-tune may change '
                              f'only {", ".join(sorted(TRANSFERABLE_FIELDS))})')
    if not changed:
        return checkpoint.model, []
    model = VLAModel(config)
    weights = checkpoint.model.trainable_state_dict()
    target = model.trainable_state_dict()
    fresh = sorted(name for name, value in target.items()
                   if name not in weights or weights[name].shape != value.shape)
    model.load_state_dict({name: weights[name] for name in target if name not in fresh},
                          strict=False)
    return model, fresh
