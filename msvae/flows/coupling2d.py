"""Coupling layers on images ``[B, C, H, W]`` with a convolutional conditioner.

Masks:
- ``"channel"``: the first ``C // 2`` channels stay (``parity=0``; ``parity=1`` keeps the last
  ``C // 2``), the others are transformed; halves are channel slices, merged with one ``cat``.
- ``"checkerboard"``: pixels with ``(h + w + parity)`` even stay; the conditioner sees the
  masked image, the element-wise map runs on every pixel and the kept pixels are restored
  with ``torch.where`` (their log-det is dropped).

An optional image context ``[B, Dc, H, W]`` (a feature map of the same size) is concatenated to
the conditioner's input as extra channels.
"""
from __future__ import annotations

import torch
from torch import Tensor

from msvae.flows.base import Transform, check_context, check_tensor
from msvae.flows.conditioners import conv_conditioner
from msvae.flows.elementwise import ElementwiseAffine, ElementwiseSpline

MASKS = ("channel", "checkerboard")


class _ImageCoupling(Transform):
    def __init__(self, channels: int, context_channels: int | None, mask: str, parity: int,
                 hidden: int, elementwise: ElementwiseAffine | ElementwiseSpline):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        if context_channels is not None and context_channels < 1:
            raise ValueError(f"context_channels must be None or >= 1, got {context_channels}")
        if mask not in MASKS:
            raise ValueError(f"mask must be one of {MASKS}, got {mask!r}")
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity}")
        kept = channels // 2 if mask == "channel" else channels
        if kept == 0 and context_channels is None:
            raise ValueError("a channel mask on 1 channel leaves the conditioner no input: use "
                             "mask='checkerboard' or give context_channels")
        self.channels, self.context_channels = channels, context_channels
        self.mask, self.parity, self.elementwise = mask, parity, elementwise
        self.kept = kept
        moved = channels - kept if mask == "channel" else channels
        self.conditioner = conv_conditioner(kept + (context_channels or 0),
                                            moved * elementwise.num_params, hidden)

    def _params(self, untouched: Tensor, context: Tensor | None, moved: int) -> Tensor:
        """Conditioner output as ``[B, moved, H, W, P]``."""
        inputs = untouched if context is None else torch.cat([untouched, context], 1)
        B, _, H, W = untouched.shape
        return self.conditioner(inputs).view(B, moved, -1, H, W).movedim(2, -1)

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, moved = self.kept, self.channels - self.kept
        if self.parity == 0:
            return x[:, :kept], x[:, kept:]
        return x[:, moved:], x[:, :moved]

    def _merge(self, untouched: Tensor, moved: Tensor) -> Tensor:
        return torch.cat([untouched, moved] if self.parity == 0 else [moved, untouched], 1)

    def _board(self, x: Tensor) -> Tensor:
        """``[1, 1, H, W]`` bool, True where pixels stay."""
        H, W = x.shape[2:]
        rows = torch.arange(H, device=x.device)[:, None]
        cols = torch.arange(W, device=x.device)[None, :]
        return ((rows + cols + self.parity) % 2 == 0)[None, None]

    def _transform(self, x: Tensor, context: Tensor | None, inverse: bool,
                   name: str) -> tuple[Tensor, Tensor]:
        check_tensor(x, name, 4, self.channels, f"[B, {self.channels}, H, W]")
        check_context(context, x, self.context_channels, dims=4, spatial=tuple(x.shape[2:]))
        if self.mask == "channel":
            untouched, moving = self._split(x)
            params = self._params(untouched, context, moving.shape[1])
            moved, ladj = self.elementwise(moving, params, inverse)
            return self._merge(untouched, moved), ladj.flatten(1).sum(1)
        board = self._board(x)
        params = self._params(x * board, context, self.channels)
        moved, ladj = self.elementwise(x, params, inverse)
        y = torch.where(board, x, moved)
        return y, ladj.masked_fill(board, 0).flatten(1).sum(1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(x, context, False, "x")

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(y, context, True, "y")


class AffineCoupling2d(_ImageCoupling):
    """Affine coupling on ``[B, C, H, W]``: ``y_b = x_b * exp(s) + t``, ``(t, s) = CNN(x_a, context)``.

    Args:
        channels: ``C``.
        context_channels: ``Dc`` of an optional context feature map ``[B, Dc, H, W]``.
        mask: ``"channel"`` or ``"checkerboard"``; ``parity`` (0/1) picks which half stays.
        hidden: conditioner width.
        clamp: soft bound on the log-scale.
    """

    def __init__(self, channels: int, context_channels: int | None = None,
                 mask: str = "channel", parity: int = 0, hidden: int = 64, clamp: float = 2.0):
        super().__init__(channels, context_channels, mask, parity, hidden,
                         ElementwiseAffine(clamp))


class SplineCoupling2d(_ImageCoupling):
    """Rational-quadratic spline coupling on ``[B, C, H, W]``; arguments as in ``AffineCoupling2d``
    plus ``bins`` and ``tail_bound``."""

    def __init__(self, channels: int, context_channels: int | None = None,
                 mask: str = "channel", parity: int = 0, hidden: int = 64, bins: int = 8,
                 tail_bound: float = 3.0):
        super().__init__(channels, context_channels, mask, parity, hidden,
                         ElementwiseSpline(bins, tail_bound))
