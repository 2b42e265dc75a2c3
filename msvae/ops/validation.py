"""Input checks shared by the fused ops: each failure is a ValueError that names the argument."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def check_tensors(**tensors: Tensor) -> None:
    """Every argument is a floating-point tensor with the dtype and device of the first one."""
    (first_name, first), *_ = tensors.items()
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.dtype != first.dtype:
            raise ValueError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def check_finite(**tensors: Tensor) -> None:
    """No argument holds NaN or Inf (one host synchronisation for all of them)."""
    finite = torch.stack([torch.isfinite(t).all() for t in tensors.values()])
    if not bool(finite.all()):
        name = list(tensors)[int((~finite).nonzero()[0, 0])]
        raise ValueError(f"{name} contains NaN or Inf values")


def check_number(name: str, value, *, positive: bool = False) -> None:
    """``value`` is a finite real number (> 0 when ``positive``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_backend_dtype(dtype: torch.dtype, backend: str, supported: dict) -> None:
    """``backend`` computes in ``dtype`` (``supported`` maps backends to their dtypes)."""
    if dtype not in supported[backend]:
        raise ValueError(f"x has dtype {dtype}, which backend {backend!r} does not support "
                         f"(supported: {supported[backend]})")
