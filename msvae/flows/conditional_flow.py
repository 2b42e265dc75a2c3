"""A conditional normalizing flow on vectors: ``p(x | c) = N(f(x; c); 0, I) |det df/dx|``."""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor, nn

from msvae.flows.actnorm import ActNorm
from msvae.flows.base import ComposedTransform, Transform, check_context, check_tensor
from msvae.flows.coupling import AffineCoupling, SplineCoupling
from msvae.flows.linear import TriangularAffine
from msvae.flows.permutations import RandomPermutation, ReversePermutation


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over all but the first dim: ``[B, ...] -> [B]``."""
    return -0.5 * (z.square().flatten(1).sum(1) + z[0].numel() * math.log(2 * math.pi))


def broadcast_context(context: Tensor | None, n: int, event_dims: int) -> Tensor | None:
    """A single context (``event_dims`` dims) repeated to a batch of ``n``; a batch passes through."""
    if context is not None and isinstance(context, Tensor) and context.dim() == event_dims:
        return context.unsqueeze(0).expand(n, *context.shape)
    return context


def check_sample_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")


class ConditionalFlow(nn.Module):
    """Density ``p(x | context)`` on ``[B, C]`` vectors: transforms to a base distribution.

    ``transforms`` map data towards the base (``Transform.forward``); sampling runs them in
    reverse. ``base`` is None for a standard normal (in the dtype/device of the inputs) or a
    ``torch.distributions.Distribution`` with event shape ``[C]``. Layers with data-dependent
    initialisation (``ActNorm``) initialise on the first ``log_prob``, so fit (or call
    ``log_prob`` on data) before relying on samples.

    Args:
        features: ``C``.
        context_features: ``Dc`` of the context ``[B, Dc]``; None for an unconditional flow.
        transforms: the layers, e.g. couplings, permutations and ``ActNorm``.
        base: see above.
    """

    def __init__(self, features: int, context_features: int | None = None,
                 transforms: Iterable[Transform] = (),
                 base: torch.distributions.Distribution | None = None):
        super().__init__()
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        if context_features is not None and context_features < 1:
            raise ValueError(f"context_features must be None or >= 1, got {context_features}")
        if base is not None and tuple(base.event_shape) != (features,):
            raise ValueError(f"base must have event shape ({features},), "
                             f"got {tuple(base.event_shape)}")
        self.features, self.context_features, self.base = features, context_features, base
        self.transform = ComposedTransform(transforms)

    @classmethod
    def spline(cls, features: int, context_features: int | None = None, layers: int = 4,
               hidden: int = 64, bins: int = 8, tail_bound: float = 3.0,
               hidden_layers: int = 2, actnorm_data_init: bool = True,
               linear: bool = False) -> "ConditionalFlow":
        """Neural spline flow: ``ActNorm`` then ``layers`` spline couplings with permutations
        (``actnorm_data_init=False``: the flow starts as a permutation, for standardised inputs;
        ``linear=True``: a ``TriangularAffine`` in place of ``ActNorm``, a full-covariance Gaussian
        layer that starts at the identity)."""
        first = TriangularAffine(features) if linear else ActNorm(features, data_init=actnorm_data_init)
        return cls(features, context_features, _coupling_stack(
            features, layers, first, lambda: SplineCoupling(features, context_features, None, hidden,
                                                            hidden_layers, bins, tail_bound)))

    @classmethod
    def affine(cls, features: int, context_features: int | None = None, layers: int = 4,
               hidden: int = 64, clamp: float = 2.0, hidden_layers: int = 2) -> "ConditionalFlow":
        """RealNVP-style flow: ``ActNorm`` then ``layers`` affine couplings with permutations."""
        return cls(features, context_features, _coupling_stack(
            features, layers, ActNorm(features), lambda: AffineCoupling(features, context_features, None, hidden,
                                                     hidden_layers, clamp)))

    def _check(self, x: Tensor, context: Tensor | None) -> None:
        check_tensor(x, "x", 2, self.features, f"[B, {self.features}]")
        check_context(context, x, self.context_features)

    def _base_log_prob(self, z: Tensor) -> Tensor:
        return standard_normal_log_prob(z) if self.base is None else self.base.log_prob(z)

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x [B, C]``, ``context [B, Dc]`` -> ``log p(x | context) [B]``."""
        self._check(x, context)
        z, ladj = self.transform(x, context)
        return self._base_log_prob(z) + ladj

    def sample_and_log_prob(self, n: int, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``n`` reparametrised samples ``[n, C]`` and their log-densities ``[n]``.

        ``context`` is ``[n, Dc]`` (one per sample) or ``[Dc]`` (shared by all samples).
        """
        check_sample_count(n)
        context = broadcast_context(context, n, 1)
        dtype, device = self._dtype_device(context)
        if self.base is None:
            z = torch.randn(n, self.features, dtype=dtype, device=device)
        else:
            z = self.base.rsample((n,)) if self.base.has_rsample else self.base.sample((n,))
        if context is not None:
            check_context(context, z, self.context_features)
        elif self.context_features is not None:
            raise ValueError(f"context is required (built with context_features="
                             f"{self.context_features})")
        x, ladj = self.transform.inverse(z, context)
        return x, self._base_log_prob(z) - ladj

    def sample(self, n: int, context: Tensor | None = None) -> Tensor:
        """``n`` samples ``[n, C]`` without gradients; ``context`` as in ``sample_and_log_prob``."""
        with torch.no_grad():
            return self.sample_and_log_prob(n, context)[0]

    def _dtype_device(self, context: Tensor | None) -> tuple[torch.dtype, torch.device]:
        if isinstance(context, Tensor):
            return context.dtype, context.device
        for tensor in (*self.parameters(), *self.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype, tensor.device
        return torch.get_default_dtype(), torch.device("cpu")


def _coupling_stack(features: int, layers: int, first: Transform, make_coupling) -> list[Transform]:
    """``first`` (a normalising layer), then ``layers`` couplings separated by permutations
    (reversal for C = 2, so consecutive layers transform different features; seeded random orders
    for C > 2)."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    transforms: list[Transform] = [first]
    for index in range(layers):
        if index > 0 and features > 1:
            transforms.append(ReversePermutation(features) if features == 2
                              else RandomPermutation(features, seed=index))
        transforms.append(make_coupling())
    return transforms
