"""Training-time image augmentation for tabletop manipulation.

Colour names are what the instructions refer to ("the red block"), so nothing here changes hue:
brightness scales all channels by one factor and contrast moves every channel towards (or away
from) the image's mean grey by one factor. The random shift (pad with edge pixels, crop back at
a random offset) is the DrQ augmentation that makes pixel-to-action maps robust to small camera
changes.

All parameters are drawn per sample from a caller-owned ``torch.Generator`` and applied to the
whole batch in a few vectorised tensor ops (torchvision.transforms.v2 draws one set of parameters
per call, i.e. one per batch, which is why it is not used here).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    shift_pixels: int = 4  # max translation per axis, pixels (at model resolution)
    brightness: float = 0.2  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.2  # factor drawn from [1 - c, 1 + c]
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.shift_pixels < 0 or not 0 <= self.brightness < 1 or not 0 <= self.contrast < 1:
            raise ValueError(f'invalid augmentation settings {self}: shift_pixels >= 0, '
                             f'brightness and contrast in [0, 1)')

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """(B, C, H, W) -> same shape, each image translated by up to ``pad`` pixels per axis."""
    if pad == 0:
        return images
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode='replicate')  # (B, C, H+2p, W+2p)
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator,
                            device=generator.device).to(images.device)
    rows = offsets[0, :, None] + torch.arange(h, device=images.device)  # (B, H)
    cols = offsets[1, :, None] + torch.arange(w, device=images.device)  # (B, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def _factors(b: int, spread: float, generator: torch.Generator,
             device: torch.device) -> torch.Tensor:
    """(B, 1, 1, 1) factors uniform in [1 - spread, 1 + spread]."""
    u = torch.rand(b, generator=generator, device=generator.device).to(device)
    return (1.0 + spread * (2.0 * u - 1.0)).view(b, 1, 1, 1)


def brightness_contrast(images: torch.Tensor, brightness: float, contrast: float,
                        generator: torch.Generator) -> torch.Tensor:
    """Hue-preserving photometric jitter of (B, 3, H, W) images in [0, 1]."""
    b = images.shape[0]
    out = images
    if brightness > 0:
        out = out * _factors(b, brightness, generator, images.device)
    if contrast > 0:
        luma = torch.tensor(_LUMA, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        grey = (out * luma).sum(1, keepdim=True).mean((2, 3), keepdim=True)  # (B, 1, 1, 1)
        out = (out - grey) * _factors(b, contrast, generator, images.device) + grey
    return out.clamp(0.0, 1.0)


class TrainAugmentation:
    """Random shift + brightness/contrast jitter for float (B, 3, H, W) batches in [0, 1]."""

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.config.enabled:
            return images
        out = random_shift(images, self.config.shift_pixels, generator)
        return brightness_contrast(out, self.config.brightness, self.config.contrast,
                                   generator)
