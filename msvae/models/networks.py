"""Encoders and decoders: convolutional for 64x64 images, MLP for vectors.

Encoders map data to the parameters ``(mu, logvar)`` of a diagonal Gaussian posterior ``[B, D]``;
decoders map codes ``[B, D]`` to the decoder output (Bernoulli logits or Gaussian means) in the
data's shape. Under autocast (``training.autocast``) they compute in bfloat16 and still return
float32 (``full_precision``), so every loss is computed in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def full_precision(x: Tensor) -> Tensor:
    """``x`` in float32 if autocast left it in a half type (bfloat16/float16), else unchanged."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def cat_channels(images: list[Tensor]) -> Tensor:
    """``torch.cat(images, 1)`` for ``[B, C_i, H, W]`` images: when all are channels-last, a cat
    along the last dimension of their ``[B, H, W, C_i]`` views, which is the same tensor (channels-
    last) and on the CPU ~30x faster than torch's cat along C of channels-last tensors (two
    ``[64, 32, 32, 32]``: 0.7 ms against 22 ms, torch 2.13, one thread)."""
    if (not all(t.is_contiguous() for t in images)  # one channel: both layouts; plain cat is fast
            and all(t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last) for t in images)):
        return torch.cat([t.permute(0, 2, 3, 1) for t in images], 3).permute(0, 3, 1, 2)
    return torch.cat(images, 1)


class ToImageConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters and function) for a last layer to one channel: on
    the CPU computed as one matrix product of the input's pixels with the weight and a col2im
    (``F.fold``), which oneDNN does slowly for a single output channel (``[64, 64, 32, 32]`` to
    ``[64, 1, 64, 64]``, one thread: 13.6 against 4.9 ms forward, 19.6 against 13.7 ms forward and
    backward). More output channels, or another device, take ``nn.ConvTranspose2d``'s path (the
    fold is slower from 3 channels on)."""

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        if (x.device.type != "cpu" or self.out_channels != 1 or x.dim() != 4 or output_size is not None
                or self.groups != 1 or self.dilation != (1, 1) or self.output_padding != (0, 0)):
            return super().forward(x, output_size)
        B, C, H, W = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        cols = x.permute(0, 2, 3, 1).reshape(B, H * W, C) @ self.weight.reshape(C, kh * kw)
        y = F.fold(cols.transpose(1, 2), ((H - 1) * sh - 2 * ph + kh, (W - 1) * sw - 2 * pw + kw),
                   self.kernel_size, stride=self.stride, padding=self.padding)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1)


def _check_image(x: Tensor, channels: int, name: str = "x") -> None:
    if x.dim() != 4 or x.shape[1:] != (channels, 64, 64):
        raise ValueError(f"{name} must have shape [B, {channels}, 64, 64], got {tuple(x.shape)}")


class ConvEncoder(nn.Module):
    """Burgess et al. (2018) encoder: 4 stride-2 4x4 convolutions, two dense layers, then ``(mu, logvar)``.

    x ``[B, C, 64, 64]`` -> mu, logvar ``[B, latent_dim]``. The logvar outputs start at
    ``initial_logvar`` (their bias, e.g. -4: posterior std 0.14) or, by default (None), keep
    torch's initialisation. Small initial variances leave the mean-image plateau sooner but
    gave the quick preset worse samples and MIG (DESIGN.md, "Stage 1's initial posterior
    variances").
    """

    def __init__(self, latent_dim: int = 10, channels: int = 1, width: int = 32, hidden: int = 256,
                 initial_logvar: float | None = None):
        super().__init__()
        self.channels, self.latent_dim = channels, latent_dim
        convs, c = [], channels
        for _ in range(4):
            convs += [nn.Conv2d(c, width, 4, stride=2, padding=1), nn.ReLU()]
            c = width
        self.features = nn.Sequential(*convs, nn.Flatten())  # [B, width * 4 * 4]
        self.head = nn.Sequential(nn.Linear(width * 16, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                  nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        if initial_logvar is not None:
            with torch.no_grad():
                self.head[-1].bias[latent_dim:].fill_(initial_logvar)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        _check_image(x, self.channels)
        mu, logvar = full_precision(self.head(self.features(x))).chunk(2, dim=1)
        return mu, logvar


class ConvDecoder(nn.Module):
    """Mirror of ``ConvEncoder``: z ``[B, latent_dim]`` -> output ``[B, C, 64, 64]`` (logits or means)."""

    def __init__(self, latent_dim: int = 10, channels: int = 1, width: int = 32, hidden: int = 256):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.head = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                  nn.ReLU(), nn.Linear(hidden, width * 16), nn.ReLU())
        deconvs = []
        for i in range(4):
            last = i == 3
            deconvs.append((ToImageConvTranspose2d if last else nn.ConvTranspose2d)(
                width, channels if last else width, 4, stride=2, padding=1))
            if not last:
                deconvs.append(nn.ReLU())
        self.deconvs = nn.Sequential(*deconvs)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [B, {self.latent_dim}], got {tuple(z.shape)}")
        return full_precision(self.deconvs(self.head(z).view(-1, self.width, 4, 4)))


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """x ``[B, features]`` -> mu, logvar ``[B, latent_dim]``."""

    def __init__(self, features: int, latent_dim: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.features, self.latent_dim = features, latent_dim
        self.net = _mlp([features, *hidden, 2 * latent_dim])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() != 2 or x.shape[1] != self.features:
            raise ValueError(f"x must have shape [B, {self.features}], got {tuple(x.shape)}")
        mu, logvar = full_precision(self.net(x)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """z ``[B, latent_dim]`` -> output ``[B, features]``."""

    def __init__(self, latent_dim: int, features: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.latent_dim = latent_dim
        self.net = _mlp([latent_dim, *hidden, features])

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must have shape [B, {self.latent_dim}], got {tuple(z.shape)}")
        return full_precision(self.net(z))


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I)."""
    return mu + torch.randn_like(mu) * (0.5 * logvar).exp()
