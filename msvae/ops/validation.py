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


def check_finite(bounds: dict[str, float] | None = None, **tensors: Tensor) -> None:
    """No argument holds NaN or Inf, and those named in ``bounds`` lie within ``[-b, b]`` (one
    host synchronisation for all of them)."""
    bounds = bounds or {}
    flags = [torch.isfinite(t).all() for t in tensors.values()]
    flags += [(tensors[name].abs() <= bound).all() for name, bound in bounds.items()]
    ok = torch.stack(flags)
    if not bool(ok.all()):
        first = int((~ok).nonzero()[0, 0])
        if first < len(tensors):
            raise ValueError(f"{list(tensors)[first]} contains NaN or Inf values")
        name, bound = list(bounds.items())[first - len(tensors)]
        t = tensors[name]
        raise ValueError(f"{name} must lie in [-{bound:g}, {bound:g}] for {t.dtype} (the range in "
                         f"which the op is accurate); got values in [{float(t.min()):g}, {float(t.max()):g}]")


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
