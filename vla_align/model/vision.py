"""Vision encoder: a truncated torchvision ResNet trunk -> a grid of spatial tokens (B, N, D)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn
import torchvision

from vla_align.model.config import ConfigError, PolicyConfig

# torchvision's ImageNet statistics: harmless from scratch, required with pretrained weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_trunk(name: str, stage: int, weights_path: str | None = None) -> nn.Sequential:
    """The stem and the first ``stage`` residual stages of a torchvision ResNet-family model."""
    try:
        backbone = torchvision.models.get_model(name, weights=None)
    except ValueError as exc:
        raise ConfigError(f'unknown torchvision model {name!r}: {exc}') from exc
    if not all(hasattr(backbone, attr) for attr in ('conv1', 'bn1', 'layer1', 'layer4')):
        raise ConfigError(f'vision_backbone {name!r} is not a ResNet-family model (resnet*, '
                          f'resnext*, wide_resnet*); the trunk is cut after layer<stage>')
    if weights_path:
        backbone.load_state_dict(_read_weights(Path(weights_path)))
    stages = [backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4][:stage]
    return nn.Sequential(backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool, *stages)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConfigError(f'vision_weights file {path} does not exist')
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ConfigError(f'cannot read vision_weights {path}: {exc}') from exc
    return state.get('state_dict', state) if isinstance(state, dict) else state


class VisionEncoder(nn.Module):
    """Image (B, 3, S, S) in [0, 1] -> spatial tokens (B, h*w, D) with a learned 2-D position."""

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        self.image_size = config.image_size
        self.trunk = build_trunk(config.vision_backbone, config.vision_stage,
                                 config.vision_weights)
        self.register_buffer('pixel_mean', torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer('pixel_std', torch.tensor(IMAGENET_STD).view(1, 3, 1, 1),
                             persistent=False)
        with torch.no_grad():
            probe = self.trunk.eval()(torch.zeros(1, 3, config.image_size, config.image_size))
        self.trunk.train()
        channels, self.grid_h, self.grid_w = probe.shape[1:]
        self.proj = nn.Linear(channels, config.d_model)
        # Factorised 2-D position: one learned vector per row plus one per column.
        self.row_embed = nn.Parameter(torch.randn(self.grid_h, 1, config.d_model) * 0.02)
        self.col_embed = nn.Parameter(torch.randn(1, self.grid_w, config.d_model) * 0.02)

    @property
    def num_tokens(self) -> int:
        return self.grid_h * self.grid_w

    def forward(self, images: torch.Tensor,
                trunk_autocast: Optional[torch.dtype] = None) -> torch.Tensor:
        """``trunk_autocast`` runs the convolutional trunk alone in that mixed precision (the
        tokens come back in the input dtype); None leaves precision to the caller's context."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f'VisionEncoder expects {self.image_size}x{self.image_size} images, '
                             f'got {tuple(images.shape[-2:])}')
        x = (images - self.pixel_mean) / self.pixel_std
        if trunk_autocast is None:
            feats = self.trunk(x)  # (B, C, h, w)
        else:
            with torch.autocast(x.device.type, dtype=trunk_autocast):
                feats = self.trunk(x).to(x.dtype)
        tokens = self.proj(feats.flatten(2).transpose(1, 2))  # (B, h*w, D)
        pos = (self.row_embed + self.col_embed).reshape(1, -1, tokens.shape[-1])  # (1, h*w, D)
        return tokens + pos
