"""Uniform dequantisation and the logit transform, for flows on images with values in ``[0, 1]``.

An image quantised to ``levels`` values ``k / (levels - 1)`` becomes continuous by adding uniform
noise within its bin, ``u = (k + noise) / levels`` in ``(0, 1)``, then unbounded by
``y = logit(alpha + (1 - 2 alpha) u)``. With ``ladj = log|det dy/du|`` from ``dequantize``,
``log p(u) = log p_flow(y) + ladj`` and the discrete log-likelihood is bounded below by
``log p(u) - D log(levels)`` (``D`` = values per image); ``bits_per_dim`` reports it in bits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _check(levels: int, alpha: float) -> None:
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    if not 0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha}")


def dequantize(x: Tensor, levels: int = 256, alpha: float = 0.05,
               generator: torch.Generator | None = None,
               midpoint: bool = False) -> tuple[Tensor, Tensor]:
    """``x [B, ...]`` in ``[0, 1]`` -> ``(y [B, ...] real-valued, log|det dy/du| [B])``.

    ``midpoint`` puts every value at the centre of its bin instead of a uniform draw (deterministic
    codes for encoding)."""
    _check(levels, alpha)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(f"x must be a floating-point tensor [B, ...], got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    if bool(((x < 0) | (x > 1) | x.isnan()).any()):
        raise ValueError("x must lie in [0, 1]")
    noise = (torch.full_like(x, 0.5) if midpoint else
             torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=generator))
    u = ((x * (levels - 1)).round() + noise) / levels
    p = alpha + (1 - 2 * alpha) * u
    y = p.log() - (-p).log1p()
    # dy/du = (1 - 2 alpha) / (p (1 - p)); log p (1 - p) = -softplus(y) - softplus(-y)
    ladj = math.log(1 - 2 * alpha) + F.softplus(y) + F.softplus(-y)
    return y, ladj.flatten(1).sum(1)


def quantize(y: Tensor, levels: int = 256, alpha: float = 0.05) -> Tensor:
    """Inverse of ``dequantize`` up to the noise: ``y`` real-valued -> the grid ``k / (levels - 1)``."""
    _check(levels, alpha)
    u = (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)
    return (u * levels).floor().clamp(0, levels - 1) / (levels - 1)


def bits_per_dim(log_prob_u: Tensor, num_dims: int, levels: int = 256) -> Tensor:
    """Discrete negative log-likelihood in bits per value from ``log p(u)`` ``[B]`` (see module doc)."""
    return -(log_prob_u - num_dims * math.log(levels)) / (num_dims * math.log(2))
