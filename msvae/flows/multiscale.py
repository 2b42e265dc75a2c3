"""A multi-scale conditional flow on images (RealNVP / Glow): squeeze, flow steps, split.

At each of ``levels`` scales the current tensor ``[B, c, h, w]`` is squeezed to
``[B, 4c, h/2, w/2]`` and passed through ``steps`` flow steps (``ActNorm``, ``InvertibleConv1x1``,
channel-mask coupling); then half of its channels leave for the standard-normal base and the rest
go on to the next scale (at the last scale all of them leave). The context image (e.g. a stage-1
reconstruction ``x1 [B, Cc, H, W]``) is encoded by a small conv net into a feature map at every
scale, which the couplings of that scale read.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msvae.flows.actnorm import ActNorm
from msvae.flows.base import ComposedTransform, Transform, check_context, check_tensor
from msvae.flows.conditional_flow import (broadcast_context, check_sample_count,
                                          standard_normal_log_prob)
from msvae.flows.coupling2d import AffineCoupling2d, SplineCoupling2d
from msvae.flows.permutations import InvertibleConv1x1

COUPLINGS = ("affine", "spline")


def squeeze(x: Tensor) -> Tensor:
    """Space to depth: ``[B, C, H, W] -> [B, 4C, H/2, W/2]`` (each 2x2 block becomes 4 channels)."""
    B, C, H, W = x.shape
    return x.view(B, C, H // 2, 2, W // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(B, 4 * C, H // 2,
                                                                                 W // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Depth to space, the inverse of ``squeeze``: ``[B, 4C, H, W] -> [B, C, 2H, 2W]``."""
    B, C4, H, W = x.shape
    return x.view(B, C4 // 4, 2, 2, H, W).permute(0, 1, 4, 2, 5, 3).reshape(B, C4 // 4, 2 * H,
                                                                            2 * W)


class MultiScaleFlow(Transform):
    """Conditional density ``p(x | context)`` on images ``x [B, C, H, W]``.

    As a ``Transform`` it maps ``x`` to the concatenated flat latents ``z [B, C*H*W]`` (finest
    split first) and back exactly.

    Args:
        channels: ``C``.
        size: ``(H, W)`` (or one int for square images); both divisible by ``2 ** levels``.
        context_channels: ``Cc`` of the context image ``[B, Cc, H, W]``; None for unconditional.
        levels, steps: number of scales and flow steps per scale.
        hidden: coupling conditioner width; context_hidden: context feature channels per scale.
        coupling: ``"affine"`` or ``"spline"`` (``bins``, ``tail_bound`` for the latter).
        actnorm_data_init: ``ActNorm``'s ``data_init``; False for inputs already standard normal
            (the flow then starts as a rotation: the identity in distribution).
    """

    def __init__(self, channels: int, size: int | tuple[int, int],
                 context_channels: int | None = None, levels: int = 2, steps: int = 4,
                 hidden: int = 64, context_hidden: int = 32, coupling: str = "affine",
                 bins: int = 8, tail_bound: float = 3.0, actnorm_data_init: bool = True):
        super().__init__()
        H, W = (size, size) if isinstance(size, int) else tuple(size)
        if channels < 1 or levels < 1 or steps < 1:
            raise ValueError(f"channels, levels and steps must be >= 1, got {channels}, {levels}, "
                             f"{steps}")
        if H % 2 ** levels or W % 2 ** levels or H < 1 or W < 1:
            raise ValueError(f"size {(H, W)} must be divisible by 2 ** levels = {2 ** levels}")
        if coupling not in COUPLINGS:
            raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
        if context_channels is not None and context_channels < 1:
            raise ValueError(f"context_channels must be None or >= 1, got {context_channels}")
        self.channels, self.size, self.context_channels = channels, (H, W), context_channels
        feature_channels = None if context_channels is None else context_hidden
        scales, encoders, c = [], [], channels
        self.latent_shapes: list[tuple[int, int, int]] = []  # what leaves at each scale
        for level in range(levels):
            c, H, W = 4 * c, H // 2, W // 2
            self.latent_shapes.append((c if level == levels - 1 else c // 2, H, W))
            layers: list[Transform] = []
            for step in range(steps):
                if coupling == "affine":
                    layer = AffineCoupling2d(c, feature_channels, "channel", step % 2, hidden)
                else:
                    layer = SplineCoupling2d(c, feature_channels, "channel", step % 2, hidden,
                                             bins, tail_bound)
                layers += [ActNorm(c, data_init=actnorm_data_init), InvertibleConv1x1(c, seed=level * steps + step), layer]
            scales.append(ComposedTransform(layers))
            if context_channels is not None:
                encoders.append(nn.Conv2d(4 * (context_channels if level == 0 else context_hidden),
                                          context_hidden, 3, padding=1))
            c //= 2
        self.scales, self.context_encoders = nn.ModuleList(scales), nn.ModuleList(encoders)

    @property
    def latent_features(self) -> int:
        return self.channels * self.size[0] * self.size[1]

    def _check(self, x: Tensor, context: Tensor | None, name: str) -> None:
        check_tensor(x, name, 4, self.channels, f"[B, {self.channels}, {self.size[0]}, "
                                                f"{self.size[1]}]")
        if tuple(x.shape[2:]) != self.size:
            raise ValueError(f"{name} must have spatial size {self.size}, got {tuple(x.shape[2:])}")
        check_context(context, x, self.context_channels, dims=4, spatial=self.size)

    def _context_features(self, context: Tensor | None) -> list[Tensor | None]:
        if context is None:
            return [None] * len(self.scales)
        features = []
        for encoder in self.context_encoders:
            context = F.relu(encoder(squeeze(context)))
            features.append(context)
        return features

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``x [B, C, H, W]`` -> ``(z [B, C*H*W], log|det dz/dx| [B])``."""
        self._check(x, context, "x")
        latents, total = [], x.new_zeros(x.shape[0])
        for level, (scale, features) in enumerate(zip(self.scales,
                                                      self._context_features(context))):
            x, ladj = scale(squeeze(x), features)
            total = total + ladj
            if level < len(self.scales) - 1:
                out, x = x.chunk(2, 1)
                latents.append(out.flatten(1))
        latents.append(x.flatten(1))
        return torch.cat(latents, 1), total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``z [B, C*H*W]`` -> ``(x [B, C, H, W], log|det dx/dz| [B])``."""
        check_tensor(z, "z", 2, self.latent_features, f"[B, {self.latent_features}]")
        check_context(context, z, self.context_channels, dims=4, spatial=self.size)
        B, shapes = z.shape[0], self.latent_shapes
        pieces = z.split([c * h * w for c, h, w in shapes], 1)
        features = self._context_features(context)
        total, x = z.new_zeros(B), None
        for level in reversed(range(len(self.scales))):
            out = pieces[level].view(B, *shapes[level])
            x = out if x is None else torch.cat([out, x], 1)
            x, ladj = self.scales[level].inverse(x, features[level])
            x = unsqueeze(x)
            total = total + ladj
        return x, total

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x [B, C, H, W]``, ``context [B, Cc, H, W]`` -> ``log p(x | context) [B]``."""
        z, ladj = self(x, context)
        return standard_normal_log_prob(z) + ladj

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``n`` samples ``[n, C, H, W]`` and log-densities ``[n]``; ``context`` is
        ``[n, Cc, H, W]`` or one image ``[Cc, H, W]`` shared by all samples."""
        check_sample_count(n)
        context = broadcast_context(context, n, 3)
        like = context if isinstance(context, Tensor) else next(self.parameters())
        z = torch.randn(n, self.latent_features, dtype=like.dtype, device=like.device)
        x, ladj = self.inverse(z, context)
        return x, standard_normal_log_prob(z) - ladj

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """``n`` samples ``[n, C, H, W]`` without gradients."""
        with torch.no_grad():
            return self.sample_and_log_prob(n, context)[0]
