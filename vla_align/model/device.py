"""Device and mixed-precision choices shared by inference (`Policy`) and training."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch


def resolve_device(device: str | torch.device = 'auto') -> torch.device:
    """'auto' = CUDA when available, else CPU; refuses unknown or unavailable devices."""
    if str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f'unknown device {device!r}: use auto, cpu, cuda or cuda:N') from exc
    if resolved.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'device {device!r} requested but CUDA is not available')
    return resolved


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 instructions (AVX512-BF16 or AMX), where oneDNN runs bf16
    convolutions and matmuls faster than fp32; elsewhere bf16 would be emulated and slower."""
    try:
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def autocast_dtype(device: torch.device, enabled: bool = True) -> Optional[torch.dtype]:
    """The mixed-precision dtype for ``device``: bf16 on CUDA (fp16 where bf16 is missing),
    bf16 on CPUs with native bf16, else None (full fp32)."""
    if not enabled:
        return None
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == 'cpu' and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def autocast(device: torch.device,
             dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
