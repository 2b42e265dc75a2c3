"""Channel mixing between coupling layers: fixed permutations and the Glow invertible 1x1 conv.

All act on dim 1 of ``[B, C]`` vectors or ``[B, C, H, W]`` images and ignore any ``context``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msvae.flows.base import Transform, check_tensor


def _check_channels(x: Tensor, name: str, channels: int) -> None:
    if not isinstance(x, Tensor) or x.dim() not in (2, 4):
        raise ValueError(f"{name} must be [B, C] or [B, C, H, W], got "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    check_tensor(x, name, x.dim(), channels, f"[B, {channels}, ...]")


class Permutation(Transform):
    """``y[:, i] = x[:, order[i]]``; volume preserving (log-det 0)."""

    def __init__(self, order: Tensor):
        super().__init__()
        order = torch.as_tensor(order, dtype=torch.long)
        if order.dim() != 1 or not torch.equal(order.sort().values, torch.arange(len(order))):
            raise ValueError(f"order must be a permutation of 0..C-1, got {order.tolist()}")
        self.register_buffer("order", order)
        self.register_buffer("inverse_order", order.argsort())

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_channels(x, "x", len(self.order))
        return x.index_select(1, self.order), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_channels(y, "y", len(self.order))
        return y.index_select(1, self.inverse_order), y.new_zeros(y.shape[0])


class ReversePermutation(Permutation):
    """Reverses the channel order."""

    def __init__(self, features: int):
        super().__init__(torch.arange(features - 1, -1, -1))


class RandomPermutation(Permutation):
    """A random channel order drawn from ``seed`` and stored as a buffer (saved with the model)."""

    def __init__(self, features: int, seed: int = 0):
        super().__init__(torch.randperm(features, generator=torch.Generator().manual_seed(seed)))


class InvertibleConv1x1(Transform):
    """Glow's invertible 1x1 convolution ``y[:, :, h, w] = W x[:, :, h, w]`` in LU form.

    ``W = P L (U + diag(sign * exp(log_s)))`` with a fixed permutation ``P`` and signs, ``L`` unit
    lower-triangular and ``U`` strictly upper-triangular; initialised from a random rotation
    drawn from ``seed``. Log-det: ``H * W * sum(log_s)`` (``H * W = 1`` for ``[B, C]`` vectors).
    """

    def __init__(self, channels: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        rotation, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator,
                                                  dtype=torch.float64))
        P, L, U = torch.linalg.lu(rotation)
        diagonal = U.diagonal()
        self.register_buffer("permutation", P.float())
        self.register_buffer("sign", diagonal.sign().float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(L.float())
        self.upper = nn.Parameter(U.triu(1).float())
        self.log_s = nn.Parameter(diagonal.abs().log().float())

    def weight(self) -> Tensor:
        """The ``[C, C]`` mixing matrix."""
        eye = torch.eye(len(self.sign), dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_s.exp())
        return self.permutation @ lower @ upper

    def _apply_matrix(self, x: Tensor, matrix: Tensor) -> Tensor:
        if x.dim() == 2:
            return x @ matrix.T
        return F.conv2d(x, matrix[:, :, None, None])

    def _log_det(self, x: Tensor) -> Tensor:
        return (x[0, 0].numel() * self.log_s.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_channels(x, "x", len(self.sign))
        return self._apply_matrix(x, self.weight()), self._log_det(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_channels(y, "y", len(self.sign))
        return self._apply_matrix(y, torch.linalg.inv(self.weight())), -self._log_det(y)
