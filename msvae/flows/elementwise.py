"""The element-wise bijections a coupling layer applies, wrapping the fused ``msvae.ops`` kernels.

Each takes ``x [...]`` and unconstrained parameters ``params [..., P]`` (``P = num_params``, as
the conditioner outputs them) and returns ``(y [...], log|dy/dx| [...])`` element by element.
All-zero parameters give the identity map, so a zero-initialised conditioner starts at identity.
"""
from __future__ import annotations

import math

from torch import Tensor

from msvae import ops


class ElementwiseAffine:
    """``y = x * exp(s) + shift`` with ``s = clamp * tanh(scale_raw / clamp)``; ``P = 2``."""

    num_params = 2

    def __init__(self, clamp: float = 2.0):
        if not clamp > 0:
            raise ValueError(f"clamp must be > 0, got {clamp}")
        self.clamp = clamp

    def __call__(self, x: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        shift, scale_raw = params.unbind(-1)
        return ops.affine_coupling(x, shift, scale_raw, clamp=self.clamp, inverse=inverse)


class ElementwiseSpline:
    """Rational-quadratic spline with ``bins`` bins on ``[-tail_bound, tail_bound]``; ``P = 3K - 1``.

    Parameters are laid out as ``[widths (K), heights (K), interior derivatives (K - 1)]``; the
    derivatives are offset so that a zero raw value means slope 1 (with uniform bins: identity).
    """

    def __init__(self, bins: int = 8, tail_bound: float = 3.0, min_derivative: float = 1e-3):
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if not tail_bound > 0:
            raise ValueError(f"tail_bound must be > 0, got {tail_bound}")
        self.bins, self.tail_bound, self.min_derivative = bins, tail_bound, min_derivative
        # softplus(offset) + min_derivative == 1
        self.derivative_offset = math.log(math.expm1(1.0 - min_derivative))

    @property
    def num_params(self) -> int:
        return 3 * self.bins - 1

    def __call__(self, x: Tensor, params: Tensor, inverse: bool = False) -> tuple[Tensor, Tensor]:
        K = self.bins
        widths, heights, derivs = params[..., :K], params[..., K:2 * K], params[..., 2 * K:]
        return ops.rq_spline(x, widths, heights, derivs + self.derivative_offset,
                             tail_bound=self.tail_bound, inverse=inverse,
                             min_derivative=self.min_derivative)
