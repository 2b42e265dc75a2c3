"""The ``Transform`` protocol shared by every flow layer, their composition, and input checks.

A transform maps data ``x`` towards the base distribution: ``forward(x, context) -> (y, ladj)``
with ``ladj = log|det dy/dx|`` summed over the event dimensions (shape ``[B]``), and
``inverse(y, context) -> (x, ladj)`` with ``ladj = log|det dx/dy|``, so the two log-dets of a
round trip cancel. Vector transforms act on ``[B, C]``, image transforms on ``[B, C, H, W]``.
"""
from __future__ import annotations

from typing import Iterable

from torch import Tensor, nn


class Transform(nn.Module):
    """An invertible, optionally conditional map with a tractable log-determinant."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [B, ...] -> (y [B, ...], log|det dy/dx| [B])``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``y [B, ...] -> (x [B, ...], log|det dx/dy| [B])``; exact inverse of ``forward``."""
        raise NotImplementedError


class ComposedTransform(Transform):
    """Transforms applied in order by ``forward`` and in reverse order by ``inverse``.

    Every member receives the same ``context``; the log-dets add up.
    """

    def __init__(self, transforms: Iterable[Transform]):
        super().__init__()
        self.transforms = nn.ModuleList(transforms)
        for index, transform in enumerate(self.transforms):
            if not isinstance(transform, Transform):
                raise ValueError(f"transforms[{index}] must be a msvae.flows.Transform, "
                                 f"got {type(transform).__name__}")

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, ladj = transform(x, context)
            total = total + ladj
        return x, total

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = y.new_zeros(y.shape[0])
        for transform in reversed(self.transforms):
            y, ladj = transform.inverse(y, context)
            total = total + ladj
        return y, total


def check_tensor(t: Tensor, name: str, dims: int, channels: int | None,
                 what: str) -> None:
    """Raise ``ValueError`` unless ``t`` is a floating tensor with ``dims`` dims and ``channels`` at dim 1."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.dim() != dims or (channels is not None and t.shape[1] != channels):
        raise ValueError(f"{name} must have shape {what}, got {tuple(t.shape)}")


def check_context(context: Tensor | None, x: Tensor, context_features: int | None,
                  dims: int = 2, spatial: tuple[int, ...] = ()) -> None:
    """Raise ``ValueError`` unless ``context`` matches ``x``'s batch (and ``spatial`` size).

    ``context_features=None`` means the transform takes no context; then ``context`` must be None.
    """
    if context_features is None:
        if context is not None:
            raise ValueError("context was given but this transform was built without "
                             "context_features")
        return
    if context is None:
        raise ValueError(f"context is required (built with context_features={context_features})")
    shape = "[B, Dc]" if dims == 2 else "[B, Dc, H, W]"
    check_tensor(context, "context", dims, context_features,
                 f"{shape} with Dc={context_features}")
    if context.shape[0] != x.shape[0] or tuple(context.shape[2:]) != tuple(spatial):
        raise ValueError(f"context must match the batch{' and spatial size' if spatial else ''} "
                         f"of the input {tuple(x.shape)}, got {tuple(context.shape)}")
    if context.dtype != x.dtype or context.device != x.device:
        raise ValueError(f"context has dtype {context.dtype} on {context.device} but the input "
                         f"has {x.dtype} on {x.device}")
