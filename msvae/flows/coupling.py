"""Coupling layers on vectors ``[B, C]``: an MLP reads the untouched features (and the context)
and parametrises an element-wise bijection of the others.

A boolean ``mask [C]`` marks the transformed features (default: the second half). The halves are
gathered with two ``index_select`` calls and merged with one ``cat`` + ``index_select``; the
element-wise map runs only on the transformed features.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from msvae.flows.base import Transform, check_context, check_tensor
from msvae.flows.conditioners import mlp_conditioner
from msvae.flows.elementwise import ElementwiseAffine, ElementwiseSpline


class _VectorCoupling(Transform):
    def __init__(self, features: int, context_features: int | None,
                 mask: Sequence[bool] | Tensor | None, hidden: int, hidden_layers: int,
                 elementwise: ElementwiseAffine | ElementwiseSpline):
        super().__init__()
        if features < 1:
            raise ValueError(f"features must be >= 1, got {features}")
        if context_features is not None and context_features < 1:
            raise ValueError(f"context_features must be None or >= 1, got {context_features}")
        mask = (torch.arange(features) >= features // 2 if mask is None
                else torch.as_tensor(mask, dtype=torch.bool))
        if mask.shape != (features,):
            raise ValueError(f"mask must have shape [{features}], got {tuple(mask.shape)}")
        identity_index, transformed_index = (~mask).nonzero()[:, 0], mask.nonzero()[:, 0]
        if len(transformed_index) == 0:
            raise ValueError("mask must mark at least one feature to transform")
        if len(identity_index) == 0 and context_features is None:
            raise ValueError("mask transforms every feature, so the conditioner would see no "
                             "input: keep one feature untouched or give context_features")
        self.features, self.context_features = features, context_features
        self.elementwise = elementwise
        self.register_buffer("identity_index", identity_index)
        self.register_buffer("transformed_index", transformed_index)
        self.register_buffer("merge_order", torch.cat([identity_index, transformed_index]).argsort())
        self.conditioner = mlp_conditioner(len(identity_index) + (context_features or 0),
                                           len(transformed_index) * elementwise.num_params,
                                           hidden, hidden_layers)

    def _transform(self, x: Tensor, context: Tensor | None, inverse: bool,
                   name: str) -> tuple[Tensor, Tensor]:
        check_tensor(x, name, 2, self.features, f"[B, {self.features}]")
        check_context(context, x, self.context_features)
        untouched = x.index_select(1, self.identity_index)
        inputs = untouched if context is None else torch.cat([untouched, context], 1)
        params = self.conditioner(inputs).view(x.shape[0], len(self.transformed_index), -1)
        moved, ladj = self.elementwise(x.index_select(1, self.transformed_index), params, inverse)
        return torch.cat([untouched, moved], 1).index_select(1, self.merge_order), ladj.sum(1)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(x, context, False, "x")

    def inverse(self, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._transform(y, context, True, "y")


class AffineCoupling(_VectorCoupling):
    """Affine coupling ``y_b = x_b * exp(s) + t`` with ``(t, s) = MLP(x_a, context)`` on ``[B, C]``.

    Args:
        features: ``C``.
        context_features: ``Dc`` of an optional context ``[B, Dc]`` fed to the MLP; None for none.
        mask: bool ``[C]``, True for the transformed features ``b`` (default: the second half).
        hidden, hidden_layers: MLP width and depth.
        clamp: soft bound on the log-scale, ``s = clamp * tanh(s_raw / clamp)``.
    """

    def __init__(self, features: int, context_features: int | None = None,
                 mask: Sequence[bool] | Tensor | None = None, hidden: int = 64,
                 hidden_layers: int = 2, clamp: float = 2.0):
        super().__init__(features, context_features, mask, hidden, hidden_layers,
                         ElementwiseAffine(clamp))


class SplineCoupling(_VectorCoupling):
    """Rational-quadratic spline coupling (Durkan et al. 2019) on ``[B, C]``.

    Each transformed feature gets its own monotone spline with ``bins`` bins on
    ``[-tail_bound, tail_bound]`` (identity outside), parametrised by ``MLP(x_a, context)``.
    Arguments as in ``AffineCoupling``, plus ``bins`` and ``tail_bound``.
    """

    def __init__(self, features: int, context_features: int | None = None,
                 mask: Sequence[bool] | Tensor | None = None, hidden: int = 64,
                 hidden_layers: int = 2, bins: int = 8, tail_bound: float = 3.0):
        super().__init__(features, context_features, mask, hidden, hidden_layers,
                         ElementwiseSpline(bins, tail_bound))
