"""The exact map of dequantised discrete values to standard normals under a factorised model.

A factorised discrete model gives each value (e.g. a pixel) its own distribution over the bins
``k = 0 .. Q-1`` of its quantisation grid ``k / (Q - 1)``. Written as thresholds on a standard
normal — bin ``k`` is the interval ``[lo_k, hi_k)`` of ``t ~ N(0, 1)``, with ``lo_0 = -inf``,
``hi_{Q-1} = +inf`` and mass ``P_k = Phi(hi_k) - Phi(lo_k)`` — a value ``k`` dequantised by a
uniform fraction ``f`` of its bin maps to ``t = Phi^-1(Phi(lo_k) + f P_k)``: under the model the
``t`` are independent standard normals, and ``log p(u) = sum_i log P_k(i) + D log Q`` (``u`` the
dequantised value in ``[0, 1)``, bins of width ``1 / Q``) is the model's exact log-probability.

A flow placed after this map (towards the base) starts, when it is the identity, at exactly the
model's likelihood; the map's ``log|dt/du| = log Q + log P_k - log phi(t)`` supplies the rest.

Models (``likelihood``, the decoder output they read):
- ``"bernoulli"`` (logits ``l``, ``Q = 2``): one threshold ``Phi^-1(sigmoid(-l))``;
- ``"gaussian"`` (means ``m``, unit variance, ``Q`` levels on ``[0, 1]``): bin edges
  ``(k -+ 1/2) / (Q - 1) - m``, the discretised Gaussian.

Everything is computed in float64 (tails of ``Phi`` reach far when a model is confident).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LIKELIHOODS = ("bernoulli", "gaussian")
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def check(likelihood: str, levels: int) -> None:
    """Raises ``ValueError`` unless ``likelihood`` and ``levels`` make a model here."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    if likelihood == "bernoulli" and levels != 2:
        raise ValueError(f"a Bernoulli model has 2 levels, got levels={levels}")


def _bernoulli_threshold(logits: Tensor) -> Tensor:
    """``Phi^-1(sigmoid(-l))`` from the smaller tail (exact for any finite logit)."""
    return torch.where(logits > 0, torch.special.ndtri(torch.sigmoid(-logits)),
                       -torch.special.ndtri(torch.sigmoid(logits)))


def bin_edges(x: Tensor, output: Tensor, likelihood: str, levels: int) -> tuple[Tensor, Tensor]:
    """The interval ``[lo, hi)`` of ``t`` (float64, ``x``'s shape) of each value's bin ``k``
    (``x`` on the grid ``k / (levels - 1)``) under the model of ``output``."""
    check(likelihood, levels)
    if x.shape != output.shape:
        raise ValueError(f"x {tuple(x.shape)} and output {tuple(output.shape)} must have one shape")
    if bool(((x < 0) | (x > 1) | x.isnan()).any()):
        raise ValueError("x must lie in [0, 1]")
    k = (x.double() * (levels - 1)).round()
    inf = torch.full_like(k, math.inf)
    if likelihood == "bernoulli":
        threshold = _bernoulli_threshold(output.double())
        return torch.where(k > 0, threshold, -inf), torch.where(k > 0, inf, threshold)
    centre = k / (levels - 1) - output.double()
    half = 0.5 / (levels - 1)
    return (torch.where(k > 0, centre - half, -inf),
            torch.where(k < levels - 1, centre + half, inf))


def _near_tail(lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each interval in the tail nearer to it: ``right`` (mirrored: ``[-hi, -lo)``, as
    ``Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)``), ``log Phi`` of its lower end and ``log`` of its mass."""
    right = lo + hi > 0
    log_a = torch.special.log_ndtr(torch.where(right, -hi, lo))
    log_b = torch.special.log_ndtr(torch.where(right, -lo, hi))
    return right, log_a, log_b + torch.log(-torch.expm1(log_a - log_b))


def gaussianize(x: Tensor, output: Tensor, likelihood: str, levels: int,
                fraction: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Values ``x [B, ...]`` on their grid, dequantised by ``fraction`` (in ``(0, 1)``, ``x``'s
    shape) of their bins -> ``t`` (float64), ``log|dt/du|`` summed per row ``[B]`` and the model's
    ``log P(x)`` per row ``[B]``; ``u = (k + fraction) / levels``."""
    right, log_a, log_mass = _near_tail(*bin_edges(x, output, likelihood, levels))
    f = torch.where(right, 1 - fraction.double(), fraction.double())
    log_cdf = torch.logaddexp(log_a, log_mass + f.log())  # Phi(a) + f P, in the near tail
    t = torch.special.ndtri(log_cdf.clamp(min=-700.0).exp())
    t = torch.where(right, -t, t)
    ladj = math.log(levels) + log_mass + 0.5 * t * t + _HALF_LOG_2PI
    return t, ladj.flatten(1).sum(1), log_mass.flatten(1).sum(1)


def degaussianize(t: Tensor, output: Tensor, likelihood: str, levels: int) -> Tensor:
    """The inverse of ``gaussianize`` up to the fraction: ``t`` -> the grid value ``k / (levels - 1)``
    of the bin that holds it (``output``'s dtype)."""
    check(likelihood, levels)
    if t.shape != output.shape:
        raise ValueError(f"t {tuple(t.shape)} and output {tuple(output.shape)} must have one shape")
    t64, out64 = t.double(), output.double()
    if likelihood == "bernoulli":
        k = (t64 >= _bernoulli_threshold(out64)).double()
    else:
        k = ((out64 + t64) * (levels - 1)).add(0.5).floor().clamp(0, levels - 1)
    return (k / (levels - 1)).to(output.dtype)


def log_mass(x: Tensor, output: Tensor, likelihood: str, levels: int) -> Tensor:
    """The model's ``log P(x)`` per row ``[B]`` (float64), the sum over values of ``log P_k``."""
    return _near_tail(*bin_edges(x, output, likelihood, levels))[2].flatten(1).sum(1)
