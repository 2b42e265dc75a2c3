"""Activation normalisation (Glow): a per-channel affine map initialised from the first batch."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from msvae.flows.base import Transform, check_tensor


class ActNorm(Transform):
    """``y = (x + bias) * exp(log_scale)`` per channel (dim 1), for ``[B, C]`` or ``[B, C, H, W]``.

    The first ``forward`` call (data direction) sets ``bias = -mean`` and ``log_scale = -log std``
    of that batch per channel, so its outputs have zero mean and unit variance; afterwards both are
    ordinary learned parameters. ``inverse`` before any ``forward`` uses the identity map and does
    not initialise. With ``data_init=False`` it starts (and stays until trained) at the identity,
    for a flow whose input is already standardised. Log-det: ``(H * W) * sum(log_scale)`` (``H * W = 1`` for vectors).
    Any ``context`` is ignored.
    """

    def __init__(self, channels: int, eps: float = 1e-6, data_init: bool = True):
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be >= 1, got {channels}")
        self.channels, self.eps = channels, eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(not data_init))
        self._known_initialized = not data_init  # host copy of `initialized`: no device sync per call

    def _check(self, x: Tensor, name: str) -> None:
        if not isinstance(x, Tensor) or x.dim() not in (2, 4):
            raise ValueError(f"{name} must be [B, C] or [B, C, H, W], got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        check_tensor(x, name, x.dim(), self.channels, f"[B, {self.channels}, ...]")

    def _broadcast(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, *([1] * (x.dim() - 2)))

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        per_channel = x.transpose(0, 1).reshape(self.channels, -1)
        self.bias.copy_(-per_channel.mean(1))
        self.log_scale.copy_(-(per_channel.std(1, unbiased=False) + self.eps).log())
        self.initialized.fill_(True)
        self._known_initialized = True

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialized = False  # re-read the loaded buffer on the next forward

    def _log_det(self, x: Tensor) -> Tensor:
        return (x[0, 0].numel() * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(x, "x")
        if not self._known_initialized:
            if bool(self.initialized):
                self._known_initialized = True
            else:
                self._initialize(x)
        y = (x + self._broadcast(self.bias, x)) * self._broadcast(self.log_scale, x).exp()
        return y, self._log_det(x)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self._check(y, "y")
        x = y * (-self._broadcast(self.log_scale, y)).exp() - self._broadcast(self.bias, y)
        return x, -self._log_det(y)
