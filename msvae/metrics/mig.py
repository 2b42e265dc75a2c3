"""Mutual information gap: disentanglement_lib's histogram MIG and Chen et al.'s posterior-based MIG.

Both score, for every factor ``v_k``, the gap between the two code dimensions that carry the most
information about it, normalised by the factor's entropy:
``MIG = mean_k (I(z_a; v_k) - I(z_b; v_k)) / H(v_k)`` with ``a, b`` the top two dimensions.
They differ in how ``I(z_j; v_k)`` is estimated.
"""
from __future__ import annotations

import numpy as np
import torch

from msvae.metrics._inputs import as_codes, as_factors, check_positive_int
from msvae.metrics.information import discrete_entropy, histogram_discretize, mutual_info_matrix
from msvae.ops import mixture_log_density, select_backend

REFERENCE_ELEMENTS = 1 << 24  # bound on the Q x N x D intermediate of the reference backend
FUSED_QUERY_CHUNK = 4096  # queries per fused call (its memory is O((Q + N) D) anyway)


def _gap_scores(mutual_info: np.ndarray, factor_entropy: np.ndarray) -> dict:
    top_two = np.sort(mutual_info, axis=0)[::-1][:2]
    per_factor = (top_two[0] - top_two[1]) / factor_entropy
    return {"mig": float(per_factor.mean()), "per_factor": per_factor,
            "mutual_info": mutual_info, "factor_entropy": factor_entropy}


def mig_details(codes, factors, num_bins: int = 20) -> dict:
    """MIG as disentanglement_lib computes it, with its intermediate quantities.

    Each code dimension is discretised into ``num_bins`` equal-width bins over its range
    (``histogram_discretize``); ``I(z_j; v_k)`` is the discrete mutual information of the binned
    code and the factor and ``H(v_k)`` the factor's empirical entropy, both in nats (as
    ``sklearn.metrics.mutual_info_score``). disentanglement_lib draws 10,000 fresh points from the
    ground-truth model; here the given rows are the sample.

    Args:
        codes: representations ``[N, D]`` (usually posterior means), ``D >= 2``.
        factors: discrete ground-truth factors ``[N, K]``, each taking at least two values.
        num_bins: bins per code dimension (disentanglement_lib: 20).

    Returns:
        dict with ``mig`` (float), ``per_factor [K]`` (normalised gaps), ``mutual_info [D, K]`` and
        ``factor_entropy [K]``.
    """
    codes = as_codes(codes, min_dims=2)
    factors = as_factors(factors, num_rows=codes.shape[0])
    num_bins = check_positive_int(num_bins, "num_bins")
    mutual_info = mutual_info_matrix(histogram_discretize(codes, num_bins), factors)
    factor_entropy = np.array([discrete_entropy(factors[:, k]) for k in range(factors.shape[1])])
    return _gap_scores(mutual_info, factor_entropy)


def mig(codes, factors, num_bins: int = 20) -> float:
    """disentanglement_lib's MIG of ``codes [N, D]`` against ``factors [N, K]`` (see ``mig_details``)."""
    return mig_details(codes, factors, num_bins)["mig"]


def _posterior_entropies(mu: torch.Tensor, logvar: torch.Tensor, pool: np.ndarray,
                         num_samples: int, rng: np.random.Generator,
                         backend: str | None) -> torch.Tensor:
    """``H(z_j) [D]`` of the mixture ``q(z) = mean_{n in pool} q(z | x_n)``, by Monte Carlo.

    Draws one ``z ~ q(z | x_n)`` for each of ``min(num_samples, |pool|)`` members of ``pool``
    (without replacement) and averages ``-log q(z_j)``, evaluated against all of the pool.
    """
    chosen = torch.as_tensor(rng.choice(pool, size=min(num_samples, len(pool)), replace=False),
                             device=mu.device)
    noise = torch.as_tensor(rng.standard_normal((len(chosen), mu.shape[1])), device=mu.device)
    queries = mu[chosen] + (0.5 * logvar[chosen]).exp() * noise
    pool_index = torch.as_tensor(pool, device=mu.device)
    components_mu, components_logvar = mu[pool_index], logvar[pool_index]
    if select_backend(mu.device, backend) == "reference":
        chunk = max(1, REFERENCE_ELEMENTS // (len(pool) * mu.shape[1]))
    else:
        chunk = FUSED_QUERY_CHUNK
    total = torch.zeros(mu.shape[1], dtype=mu.dtype, device=mu.device)
    for start in range(0, len(queries), chunk):
        _, marginal = mixture_log_density(queries[start:start + chunk], components_mu,
                                          components_logvar, weights="uniform", backend=backend)
        total -= marginal.sum(0)
    return total / len(queries)


def mig_chen_details(mu, logvar, factors, num_samples: int = 10000, seed: int = 0,
                     backend: str | None = None) -> dict:
    """MIG of Chen et al. (2018), with entropies estimated from the posteriors, and its parts.

    With ``q(z_j) = (1/N) sum_n q(z_j | x_n)`` (the aggregate posterior of the given rows):

    - ``H(z_j) = -E log q(z_j)``, a Monte Carlo average over one ``z ~ q(z | x_n)`` for each of
      ``num_samples`` rows drawn without replacement, with ``log q(z_j)`` the ``marginal`` output of
      ``msvae.ops.mixture_log_density(z, mu, logvar, weights="uniform")`` against all N posteriors;
    - ``H(z_j | v_k) = sum_v p(v) H(z_j | v_k = v)``, the same estimate within the rows where
      factor ``k`` takes value ``v`` (samples and mixture both restricted to those rows);
    - ``I(z_j; v_k) = H(z_j) - H(z_j | v_k)`` (not clipped: Monte Carlo noise can make it
      slightly negative) and ``H(v_k)`` the factor's empirical entropy (Chen et al. use
      ``log(number of values)``, equal for the uniform factor grids they evaluate on).

    Args:
        mu, logvar: posterior means and log-variances ``[N, D]``, ``D >= 2`` (numpy or torch; a
            CUDA tensor keeps the computation on its device). Computed in float64.
        factors: discrete ground-truth factors ``[N, K]``, each taking at least two values.
        num_samples: Monte Carlo samples per entropy (Chen et al.: 10,000).
        seed: seeds which rows are sampled and their noise.
        backend: backend of ``mixture_log_density`` (default: chosen from the device).

    Returns:
        dict with ``mig``, ``per_factor [K]``, ``mutual_info [D, K]``, ``factor_entropy [K]``,
        ``marginal_entropy [D]`` and ``conditional_entropy [D, K]``.
    """
    device = mu.device if isinstance(mu, torch.Tensor) else torch.device("cpu")
    mu_np, logvar_np = as_codes(mu, "mu", min_dims=2), as_codes(logvar, "logvar")
    if logvar_np.shape != mu_np.shape:
        raise ValueError(f"logvar must have the shape of mu {mu_np.shape}, got {logvar_np.shape}")
    factors = as_factors(factors, num_rows=mu_np.shape[0], rows_of="mu")
    num_samples = check_positive_int(num_samples, "num_samples")
    rng = np.random.default_rng(seed)
    mu_t = torch.as_tensor(mu_np, device=device)
    logvar_t = torch.as_tensor(logvar_np, device=device)
    with torch.no_grad():
        marginal = _posterior_entropies(mu_t, logvar_t, np.arange(len(mu_np)), num_samples, rng,
                                        backend)
        conditional = torch.zeros(mu_np.shape[1], factors.shape[1], dtype=torch.float64)
        for k in range(factors.shape[1]):
            for value in np.unique(factors[:, k]):
                pool = np.flatnonzero(factors[:, k] == value)
                entropy = _posterior_entropies(mu_t, logvar_t, pool, num_samples, rng, backend)
                conditional[:, k] += len(pool) / len(mu_np) * entropy.cpu()
    marginal, conditional = marginal.cpu().numpy(), conditional.numpy()
    factor_entropy = np.array([discrete_entropy(factors[:, k]) for k in range(factors.shape[1])])
    details = _gap_scores(marginal[:, None] - conditional, factor_entropy)
    return {**details, "marginal_entropy": marginal, "conditional_entropy": conditional}


def mig_chen(mu, logvar, factors, num_samples: int = 10000, seed: int = 0,
             backend: str | None = None) -> float:
    """Chen et al. (2018)'s MIG from posteriors ``N(mu, exp(logvar))`` (see ``mig_chen_details``)."""
    return mig_chen_details(mu, logvar, factors, num_samples, seed, backend)["mig"]
