"""Networks that map the untouched part of the input (and the context) to coupling parameters.

The last layer starts at zero, so a fresh coupling layer outputs its identity parameters.
"""
from __future__ import annotations

from torch import nn


def mlp_conditioner(in_features: int, out_features: int, hidden: int = 64,
                    hidden_layers: int = 2) -> nn.Sequential:
    """``[B, in_features] -> [B, out_features]``: Linear/ReLU stack with a zero-initialised output."""
    if in_features < 1 or out_features < 1 or hidden < 1 or hidden_layers < 1:
        raise ValueError(f"mlp_conditioner sizes must be >= 1, got in_features={in_features}, "
                         f"out_features={out_features}, hidden={hidden}, "
                         f"hidden_layers={hidden_layers}")
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(_zeroed(nn.Linear(width, out_features)))
    return nn.Sequential(*layers)


def conv_conditioner(in_channels: int, out_channels: int, hidden: int = 64) -> nn.Sequential:
    """``[B, in_channels, H, W] -> [B, out_channels, H, W]``: 3x3, 1x1, zero-initialised 3x3 conv."""
    if in_channels < 1 or out_channels < 1 or hidden < 1:
        raise ValueError(f"conv_conditioner sizes must be >= 1, got in_channels={in_channels}, "
                         f"out_channels={out_channels}, hidden={hidden}")
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1), nn.ReLU(),
        _zeroed(nn.Conv2d(hidden, out_channels, 3, padding=1)),
    )


def _zeroed(layer: nn.Module) -> nn.Module:
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer
