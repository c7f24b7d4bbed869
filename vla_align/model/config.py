"""`PolicyConfig`: every choice that shapes the model and its training objective.

A checkpoint stores this as ``config.json``; rebuilding the model from it needs no code change.
Fields are plain JSON/YAML values so a config can be written by hand (``config/model_*.yaml``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
import json
from pathlib import Path
from typing import Any, Optional

import yaml

ALIGNMENT_LOSSES = ('infonce', 'siglip')
ACTION_HEADS = ('continuous', 'bins')
IMAGE_CROPS = ('center', 'stretch')


class ConfigError(ValueError):
    """A configuration value or file that cannot describe a model."""


@dataclass(frozen=True)
class PolicyConfig:
    """Architecture and loss weights of a `VLAModel` (see DESIGN.md §4)."""

    # Vision: a torchvision ResNet-family trunk cut after ``vision_stage`` (1..4). At 96 px,
    # stage 3 of ResNet-18 gives a 6x6 grid of 256-channel tokens (stride 16).
    vision_backbone: str = 'resnet18'
    vision_stage: int = 3
    #: Local file with a torchvision state dict for the full backbone (``.pth`` or
    #: ``.safetensors``); None trains the trunk from scratch.
    vision_weights: Optional[str] = None
    image_size: int = 96
    #: From a camera frame to the square model input: 'center' crops the largest centred
    #: square, then resizes (the aspect ratio is kept; a square frame is only resized);
    #: 'stretch' resizes the whole frame (squashes non-square frames: older checkpoints).
    #: Training and the policy node both apply it (``model.processing``).
    image_crop: str = 'center'
    # Language: a transformers encoder in a local folder; None = the packaged MiniLM.
    language_model: Optional[str] = None
    freeze_language: bool = True
    max_tokens: int = 32
    # Fusion.
    d_model: int = 128
    fusion_layers: int = 2
    fusion_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    # Three-way alignment (auxiliary objective and run-time V-L score).
    align_dim: int = 64
    alignment_loss: str = 'infonce'
    alpha_vl: float = 1.0
    beta_va: float = 0.5
    gamma_la: float = 0.5
    # Action head.
    action_head: str = 'continuous'
    num_bins: int = 21
    #: Bins span [-bin_range, bin_range] in normalised (z-score) action units.
    bin_range: float = 3.0
    chunk_size: int = 1
    use_proprio: bool = True
    bc_weight: float = 1.0
    gripper_weight: float = 0.5
    #: Policy output: True snaps the gripper to 0/1 at p=0.5; False passes the probability.
    binary_gripper: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.vision_stage not in (1, 2, 3, 4):
            problems.append(f'vision_stage must be 1..4, got {self.vision_stage!r}')
        if self.image_crop not in IMAGE_CROPS:
            problems.append(f'image_crop must be one of {IMAGE_CROPS}, got {self.image_crop!r}')
        if not 16 <= self.image_size <= 512:
            problems.append(f'image_size must be in 16..512 pixels, got {self.image_size!r}')
        if self.d_model <= 0 or self.fusion_heads <= 0 or self.d_model % self.fusion_heads:
            problems.append(f'd_model ({self.d_model}) must be a positive multiple of '
                            f'fusion_heads ({self.fusion_heads})')
        if self.fusion_layers < 0:
            problems.append(f'fusion_layers must be >= 0, got {self.fusion_layers!r}')
        if self.max_tokens < 2:
            problems.append(f'max_tokens must be >= 2, got {self.max_tokens!r}')
        if self.align_dim <= 0:
            problems.append(f'align_dim must be positive, got {self.align_dim!r}')
        if self.alignment_loss not in ALIGNMENT_LOSSES:
            problems.append(f'alignment_loss must be one of {ALIGNMENT_LOSSES}, '
                            f'got {self.alignment_loss!r}')
        if self.action_head not in ACTION_HEADS:
            problems.append(f'action_head must be one of {ACTION_HEADS}, got {self.action_head!r}')
        if self.num_bins < 2 or self.bin_range <= 0:
            problems.append('num_bins must be >= 2 and bin_range > 0')
        if self.chunk_size < 1:
            problems.append(f'chunk_size must be >= 1, got {self.chunk_size!r}')
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f'dropout must be in [0, 1), got {self.dropout!r}')
        for name in ('alpha_vl', 'beta_va', 'gamma_la', 'bc_weight', 'gripper_weight'):
            if getattr(self, name) < 0:
                problems.append(f'{name} must be >= 0, got {getattr(self, name)!r}')
        if problems:
            raise ConfigError('invalid PolicyConfig: ' + '; '.join(problems))

    @classmethod
    def tiny(cls, **overrides: Any) -> PolicyConfig:
        """A seconds-to-train model for tests: 32 px, ResNet stem + layer1, one fusion block."""
        base = dict(image_size=32, vision_stage=1, d_model=32, fusion_layers=1, fusion_heads=2,
                    align_dim=16, max_tokens=16, dropout=0.0)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes: Any) -> PolicyConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PolicyConfig:
        if not isinstance(data, dict):
            raise ConfigError(f'a policy config is a mapping, got {type(data).__name__}')
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f'unknown PolicyConfig keys {unknown}; known keys: {sorted(known)}')
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f'invalid PolicyConfig: {exc}') from exc

    @classmethod
    def from_file(cls, path: str | Path) -> PolicyConfig:
        """Read a ``.yaml``/``.yml``/``.json`` file holding the fields (or a ``model:`` key)."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f'cannot read policy config {path}: {exc.strerror}') from exc
        try:
            data = json.loads(text) if path.suffix == '.json' else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise ConfigError(f'policy config {path} is not valid {path.suffix[1:]}: '
                              f'{exc}') from exc
        if isinstance(data, dict) and set(data) == {'model'}:
            data = data['model']
        return cls.from_dict(data or {})

    def save(self, path: str | Path) -> None:
        path = Path(path)
        if path.suffix == '.json':
            path.write_text(json.dumps(self.to_dict(), indent=2) + '\n')
        else:
            path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
