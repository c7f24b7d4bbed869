"""Camera frames -> model input tensors, shared by training (dataset cache) and inference.

Both paths crop and resize uint8 frames with the same call (``resize_uint8``, the crop named in
``PolicyConfig.image_crop``), so a frame cached for training and the same frame arriving at the
policy give identical pixels, and a 640x480 camera is centre-cropped to a square instead of
squashed.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvf

ImageBatch = Union[np.ndarray, Sequence[np.ndarray]]


def check_images(images: ImageBatch) -> np.ndarray:
    """Return ``images`` as a (B, H, W, 3) uint8 array, or raise a ValueError saying what is wrong.

    Accepts one (H, W, 3) frame, a (B, H, W, 3) array, or a sequence of same-sized frames.
    """
    if not isinstance(images, np.ndarray):
        try:
            images = np.stack([np.asarray(image) for image in images])
        except (TypeError, ValueError) as exc:
            raise ValueError(f'images must be (H, W, 3) uint8 RGB frames of one size: {exc}') \
                from exc
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] < 2 or images.shape[2] < 2:
        raise ValueError(f'an image must be (H, W, 3) RGB (or a (B, H, W, 3) batch), got shape '
                         f'{images.shape}')
    if images.dtype != np.uint8:
        raise ValueError(f'images must be uint8 RGB, got dtype {images.dtype}')
    if images.shape[0] == 0:
        raise ValueError('empty image batch')
    # torch needs positive strides (a BGR->RGB [..., ::-1] view has a negative one) and warns on
    # read-only buffers (ROS messages); one small copy fixes both.
    if not images.flags.c_contiguous or not images.flags.writeable:
        images = np.array(images, order='C')
    return images


def crop_box(height: int, width: int, crop: str) -> tuple[int, int, int, int]:
    """(top, left, crop_height, crop_width) of ``crop`` ('center': the largest centred square;
    'stretch': the whole frame) in an ``height`` x ``width`` frame."""
    if crop == 'stretch':
        return 0, 0, height, width
    if crop != 'center':
        raise ValueError(f'unknown image crop {crop!r}; expected center or stretch')
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def resize_uint8(images: torch.Tensor, size: int, crop: str = 'center') -> torch.Tensor:
    """(B, 3, H, W) uint8 -> (B, 3, size, size) uint8: ``crop`` (aspect ratio kept with
    'center'), then antialiased bilinear resampling. Training and inference both call this."""
    top, left, height, width = crop_box(images.shape[-2], images.shape[-1], crop)
    if (height, width) != tuple(images.shape[-2:]):
        images = images[..., top:top + height, left:left + width]
    if images.shape[-2:] == (size, size):
        return images
    return tvf.resize(images, [size, size], antialias=True)


def frames_to_uint8_tensor(images: np.ndarray, size: int, crop: str = 'center') -> torch.Tensor:
    """(B, H, W, 3) uint8 frames -> (B, 3, size, size) uint8 tensor (the dataset cache format)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    return resize_uint8(tensor, size, crop)


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 -> float32 in [0, 1]; the model normalises pixels itself."""
    return images.float().div_(255.0)
