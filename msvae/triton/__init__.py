"""Triton kernels (GPU path; run on CPU tensors by the interpreter under TRITON_INTERPRET=1)."""
from __future__ import annotations

import functools

import torch


def constants(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """``values`` as a read-only tensor on ``like``'s device in its accumulation dtype (float64 for
    float64 inputs, else float32), cached: a kernel's scalar constants travel through memory
    because Triton materialises float literals as float32, and caching avoids a host-to-device
    copy per call."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return _cached_constants(tuple(float(v) for v in values), dtype, like.device)


@functools.lru_cache(maxsize=256)
def _cached_constants(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype).to(device)
