"""`TrainConfig`: what to train on, for how long, and how (read from ``config/train_*.yaml``).

The YAML's ``model:`` entry is a PolicyConfig file (relative to the YAML) or an inline mapping;
``model_overrides:`` is applied on top. Command-line ``--set section.key=value`` overrides any
entry, e.g. ``--set optim.lr=1e-3 --set model.d_model=192``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
import os
from pathlib import Path
from typing import Any, Optional

import yaml

from vla_align.data.transforms import AugmentConfig
from vla_align.model.config import ConfigError, PolicyConfig
from vla_align.paths import share_path
from vla_align.train.instructions import InstructionAugmentConfig


def default_cache_dir() -> str:
    return os.environ.get('VLA_ALIGN_CACHE', str(Path('~/.cache/vla_align').expanduser()))


@dataclass(frozen=True)
class DataConfig:
    paths: tuple[str, ...] = ()  # bag files or folders of bags
    cache_dir: str = field(default_factory=default_cache_dir)
    val_fraction: float = 0.1
    #: The suite's training splits (those with train seeds); None = every split in the data.
    splits: Optional[tuple[str, ...]] = ('seen', 'cluttered')
    families: Optional[tuple[str, ...]] = None  # None = every task family
    only_successful: bool = True
    #: The topic contract the bags are read through (a file, or a name in config/contracts/);
    #: sim_panda is the simulator's own bags (data/contract.py, docs/CONTRACTS.md).
    contract: str = 'sim_panda'
    #: The instruction of bags that carry none (a folder of bags of one task).
    instruction: Optional[str] = None

    def __post_init__(self) -> None:
        for name in ('paths', 'splits', 'families'):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            if value is not None:
                object.__setattr__(self, name, tuple(str(v) for v in value))
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f'data.val_fraction must be in [0, 1), got {self.val_fraction}')


@dataclass(frozen=True)
class OptimConfig:
    batch_size: int = 64
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 300
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0
    language_lr_scale: float = 0.1  # only used when the language model is fine-tuned
    #: Training stops at whichever comes first; the cosine schedule follows the nearer one.
    max_steps: int = 30000
    max_minutes: Optional[float] = 40.0
    eval_every: int = 500  # steps
    eval_samples: int = 1024  # held-out frames scored at each evaluation
    final_eval_samples: int = 4096
    log_every: int = 25

    def __post_init__(self) -> None:
        if self.batch_size < 2:
            raise ConfigError('optim.batch_size must be >= 2 (contrastive losses need negatives)')
        if self.lr <= 0 or self.max_steps < 1 or self.eval_every < 1 or self.log_every < 1:
            raise ConfigError('optim.lr, max_steps, eval_every and log_every must be positive')
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ConfigError(f'optim.max_minutes must be positive, got {self.max_minutes}')


@dataclass(frozen=True)
class TrainConfig:
    model: PolicyConfig = field(default_factory=PolicyConfig)
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    instructions: InstructionAugmentConfig = field(default_factory=InstructionAugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    device: str = 'auto'
    num_threads: Optional[int] = None  # CPU threads; None = os.cpu_count()
    num_workers: int = 0  # DataLoader workers; 0 suits a 2-core machine (the cache is a memmap)
    #: Mixed precision where the hardware has it natively: bf16 (or fp16) autocast on CUDA, bf16
    #: on CPUs with AVX512-BF16/AMX (1.8x faster training on this project's EPYC); else fp32.
    amp: bool = True
    #: A checkpoint whose weights and normalisation start this run (a fine-tune); the optimizer
    #: and schedule start fresh. None = random initial weights.
    init_from: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out['data'] = {k: list(v) if isinstance(v, tuple) else v for k, v in out['data'].items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any], base_dir: Optional[Path] = None) -> TrainConfig:
        data = dict(data)
        _check_keys('train config', data, {f.name for f in fields(cls)} | {'model_overrides'})
        model = data.pop('model', None)
        overrides = data.pop('model_overrides', None) or {}
        if isinstance(model, str):
            path = Path(model)
            if not path.is_absolute():
                path = (base_dir or share_path('config')) / path
            model_dict = PolicyConfig.from_file(path).to_dict()
        elif isinstance(model, dict) or model is None:
            model_dict = dict(model or {})
        else:
            raise ConfigError(f'model must be a file name or a mapping, got {model!r}')
        model_dict.update(overrides)
        sections = {'data': DataConfig, 'augment': AugmentConfig,
                    'instructions': InstructionAugmentConfig, 'optim': OptimConfig}
        kwargs: dict[str, Any] = {'model': PolicyConfig.from_dict(model_dict)}
        for name, kind in sections.items():
            section = data.pop(name, None) or {}
            if not isinstance(section, dict):
                raise ConfigError(f'{name} must be a mapping, got {section!r}')
            _check_keys(name, section, {f.name for f in fields(kind)})
            try:
                kwargs[name] = kind(**section)
            except (TypeError, ValueError) as exc:
                raise ConfigError(f'invalid {name} settings: {exc}') from exc
        return cls(**kwargs, **data)

    @classmethod
    def from_file(cls, path: str | Path,
                  overrides: Optional[dict[str, Any]] = None) -> TrainConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise ConfigError(f'cannot read train config {path}: {exc.strerror}') from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f'train config {path} is not valid YAML: {exc}') from exc
        if not isinstance(data, dict):
            raise ConfigError(f'train config {path} must be a mapping')
        for dotted, value in (overrides or {}).items():
            apply_override(data, dotted, value)
        return cls.from_dict(data, base_dir=path.parent)


def _check_keys(where: str, data: dict[str, Any], known: set[str]) -> None:
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f'unknown {where} keys {unknown}; known: {sorted(known)}')


def apply_override(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``data['a']['b'] = value`` for ``dotted='a.b'``; ``model.x`` goes to model_overrides
    (``model`` itself may be a file name)."""
    parts = dotted.split('.')
    if parts[0] == 'model' and len(parts) == 2:
        parts = ['model_overrides', parts[1]]
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f'cannot set {dotted}: {part} is not a section')
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``['optim.lr=1e-3', 'data.splits=[seen]']`` -> {'optim.lr': 0.001, ...} (YAML values)."""
    out = {}
    for item in items:
        key, sep, raw = item.partition('=')
        if not sep or not key:
            raise ConfigError(f'--set expects key=value, got {item!r}')
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f'--set {item!r}: value is not valid YAML') from exc
        if isinstance(value, str):  # YAML 1.1 reads '1e-3' as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[key.strip()] = value
    return out
