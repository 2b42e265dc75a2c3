"""Coupling layers and conditional normalizing flows built on the fused coupling ops.

Every layer is a ``Transform``: ``forward(x, context) -> (y, log|det dy/dx| [B])`` towards the
base distribution and the exact ``inverse``. ``ConditionalFlow`` models vectors ``[B, C]``,
``MultiScaleFlow`` images ``[B, C, H, W]``; ``dequantize`` prepares ``[0, 1]`` images for them.
"""
from msvae.flows.actnorm import ActNorm
from msvae.flows.base import ComposedTransform, Transform
from msvae.flows.conditional_flow import ConditionalFlow
from msvae.flows.coupling import AffineCoupling, SplineCoupling
from msvae.flows.coupling2d import AffineCoupling2d, SplineCoupling2d
from msvae.flows.dequantize import bits_per_dim, dequantize, quantize
from msvae.flows.linear import TriangularAffine
from msvae.flows.multiscale import MultiScaleFlow, squeeze, unsqueeze
from msvae.flows.permutations import (InvertibleConv1x1, Permutation, RandomPermutation,
                                      ReversePermutation)

__all__ = ["ActNorm", "AffineCoupling", "AffineCoupling2d", "ComposedTransform", "ConditionalFlow",
           "InvertibleConv1x1", "MultiScaleFlow", "Permutation", "RandomPermutation",
           "ReversePermutation", "SplineCoupling", "SplineCoupling2d", "Transform", "TriangularAffine", "bits_per_dim",
           "dequantize", "quantize", "squeeze", "unsqueeze"]
