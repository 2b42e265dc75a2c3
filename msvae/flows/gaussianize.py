"""The exact map of dequantised discrete values to standard normals under a factorised model.

A factorised discrete model gives each value (a pixel, a table's category) its own distribution
over bins ``k = 0 .. K-1``. Written as thresholds on a standard normal — bin ``k`` is the interval
``[lo_k, hi_k)`` of ``t ~ N(0, 1)``, with ``lo_0 = -inf``, ``hi_{K-1} = +inf`` and mass
``P_k = Phi(hi_k) - Phi(lo_k)`` — a value ``k`` dequantised to ``u = k + f`` (``f`` uniform in
``(0, 1)``) maps to ``t = Phi^-1(Phi(lo_k) + f P_k)``. Under the model the ``t`` are independent
standard normals, and with ``log|dt/du| = log P_k - log phi(t)`` the density of ``u`` is the
model's probability, ``log p(u) = sum log P_k``: no dequantisation gap.

A flow placed after this map (towards the base) therefore starts, while it is the identity, at
exactly the model's likelihood, and learns only what the factorised model leaves out: the
dependence between values.

Models whose thresholds are computed here (``bin_edges``, ``bin_of``; ``output`` is the decoder
output they read):
- ``"bernoulli"`` (logits ``l``, values 0/1): one threshold ``Phi^-1(sigmoid(-l))``;
- ``"gaussian"`` (means ``m``, unit variance, ``levels`` values ``k / (levels - 1)`` on
  ``[0, 1]``): edges ``(k -+ 1/2) / (levels - 1) - m``, the discretised Gaussian;
- ``"categorical"`` (logits ``[..., K]``, values the category indices): thresholds
  ``Phi^-1`` of the cumulative probabilities (an arbitrary but fixed order of the categories).

Everything is computed in float64 (tails of ``Phi`` reach far when a model is confident).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from msvae.losses import RECONSTRUCTIONS as LIKELIHOODS

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def check(likelihood: str, levels: int) -> None:
    """Raises ``ValueError`` unless ``likelihood`` and ``levels`` make a model for ``bin_edges``."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an int >= 2, got {levels!r}")
    if likelihood == "bernoulli" and levels != 2:
        raise ValueError(f"a Bernoulli model has 2 levels, got levels={levels}")


def _probit_of_cdf(log_cdf: Tensor, log_sf: Tensor) -> Tensor:
    """``Phi^-1(c)`` from ``log c`` and ``log(1 - c)``, through the smaller of the two tails."""
    lower = log_cdf < log_sf
    small = torch.where(lower, log_cdf, log_sf).clamp(min=-700.0).exp()
    t = torch.special.ndtri(small)
    return torch.where(lower, t, -t)


def _bernoulli_threshold(logits: Tensor) -> Tensor:
    """``Phi^-1(P(x = 0))`` of Bernoulli logits (exact for any finite logit)."""
    return _probit_of_cdf(torch.nn.functional.logsigmoid(-logits), torch.nn.functional.logsigmoid(logits))


def categorical_thresholds(logits: Tensor, pad: Tensor | None = None) -> Tensor:
    """The ``K - 1`` interior thresholds ``[..., K - 1]`` (float64) of categorical logits ``[..., K]``.
    ``pad`` (bool, broadcast to ``logits``): trailing categories that do not exist (blocks of
    several widths padded to one); their logits are ignored and the thresholds before them are
    ``+inf``, so the last real category's interval ends at ``+inf`` as it would unpadded."""
    logits = logits.double()
    if pad is not None:
        logits = logits.masked_fill(pad, -math.inf)
    log_p = logits.log_softmax(-1)
    log_cdf = log_p.logcumsumexp(-1)[..., :-1]
    log_sf = log_p.flip(-1).logcumsumexp(-1).flip(-1)[..., 1:]
    thresholds = _probit_of_cdf(log_cdf, log_sf)
    return thresholds if pad is None else thresholds.masked_fill(pad[..., 1:], math.inf)


def _interval(thresholds: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """``[lo, hi)`` of bin ``k`` among sorted ``thresholds [..., K - 1]`` (``-inf``/``+inf`` at the ends)."""
    inf = thresholds.new_full((*thresholds.shape[:-1], 1), math.inf)
    padded = torch.cat([-inf, thresholds, inf], -1)
    k = k.long().unsqueeze(-1)
    return padded.gather(-1, k).squeeze(-1), padded.gather(-1, k + 1).squeeze(-1)


def categorical_edges(k: Tensor, logits: Tensor, pad: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``[lo, hi)`` (float64, ``k``'s shape) of categories ``k [...]`` under logits ``[..., K]``
    (``pad``: see ``categorical_thresholds``)."""
    if logits.shape[:-1] != k.shape or logits.shape[-1] < 1:  # K = 1: one bin, the whole line
        raise ValueError(f"logits must be [..., K >= 1] over k's shape {tuple(k.shape)}, got "
                         f"{tuple(logits.shape)}")
    if bool(((k < 0) | (k >= logits.shape[-1])).any()):
        raise ValueError(f"categories must lie in [0, {logits.shape[-1]})")
    return _interval(categorical_thresholds(logits, pad), k)


def bin_edges(x: Tensor, output: Tensor, likelihood: str, levels: int) -> tuple[Tensor, Tensor]:
    """``[lo, hi)`` (float64, ``x``'s shape) of each value's bin (``x`` on the grid
    ``k / (levels - 1)``) under the model ``likelihood`` of ``output``."""
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


def gaussianize(lo: Tensor, hi: Tensor, fraction: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Values in bins ``[lo, hi)``, dequantised by ``fraction`` (in ``(0, 1)``) of their bins ->
    elementwise ``t`` (float64), ``log|dt/du| = log P - log phi(t)`` and ``log P``."""
    right, log_a, log_p = _near_tail(lo, hi)
    f = torch.where(right, 1 - fraction.double(), fraction.double())
    log_cdf = torch.logaddexp(log_a, log_p + f.log())  # Phi(a) + f P, in the near tail
    t = torch.special.ndtri(log_cdf.clamp(min=-700.0).exp())
    t = torch.where(right, -t, t)
    return t, log_p + 0.5 * t * t + _HALF_LOG_2PI, log_p


def bin_of(t: Tensor, output: Tensor, likelihood: str, levels: int) -> Tensor:
    """The inverse of ``gaussianize`` up to the fraction, for ``bin_edges``' models: ``t`` -> the
    grid value ``k / (levels - 1)`` of the bin that holds it (``output``'s dtype)."""
    check(likelihood, levels)
    if t.shape != output.shape:
        raise ValueError(f"t {tuple(t.shape)} and output {tuple(output.shape)} must have one shape")
    t64, out64 = t.double(), output.double()
    if likelihood == "bernoulli":
        k = (t64 >= _bernoulli_threshold(out64)).double()
    else:
        k = ((out64 + t64) * (levels - 1)).add(0.5).floor().clamp(0, levels - 1)
    return (k / (levels - 1)).to(output.dtype)


def category_of(t: Tensor, logits: Tensor, pad: Tensor | None = None) -> Tensor:
    """The category ``[...]`` (long) whose interval holds ``t [...]`` under logits ``[..., K]``
    (``pad``: see ``categorical_thresholds``)."""
    if logits.shape[:-1] != t.shape:
        raise ValueError(f"logits must be [..., K] over t's shape {tuple(t.shape)}, got {tuple(logits.shape)}")
    return (t.double().unsqueeze(-1) >= categorical_thresholds(logits, pad)).sum(-1)
