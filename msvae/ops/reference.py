"""Readable torch reference for the fused ops: the specification every backend is tested against."""
import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, exp(logvar)) (broadcasting)."""
    return -0.5 * ((x - mu) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)


def log_weight_matrix(scheme: int, lw_base: float, lw_diag: float, lw_next: float,
                      Q: int, B: int, dtype, device) -> torch.Tensor:
    """The [Q, B] log-weights `lw(i, j)` of a weighting scheme (see `msvae.ops.weights`).

    scheme 0: every entry `lw_base`; scheme 1 (MSS, Q == B): `lw_diag` on the diagonal,
    `lw_next` at `(i, (i + 1) mod B)`, `lw_base` elsewhere (the diagonal wins when B == 1).
    """
    lw = torch.full((Q, B), lw_base, dtype=dtype, device=device)
    if scheme == 1:
        rows = torch.arange(Q, device=device)
        lw[rows, (rows + 1) % B] = lw_next
        lw[rows, rows] = lw_diag
    return lw


def mixture_log_density(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                        scheme: int, lw_base: float, lw_diag: float, lw_next: float):
    """Joint and per-dimension log-density of queries under a weighted Gaussian mixture.

    x [Q, D], mu / logvar [B, D] -> joint [Q], marginal [Q, D]:
    `joint_i = logsumexp_j(lw_ij + sum_d f_d(i, j))`, `marginal_id = logsumexp_j(lw_ij + f_d(i, j))`
    with `f_d(i, j) = log N(x_id; mu_jd, exp(logvar_jd))`. Materialises the [Q, B, D] tensor.
    """
    f = gaussian_log_density(x[:, None, :], mu[None, :, :], logvar[None, :, :])  # [Q, B, D]
    lw = log_weight_matrix(scheme, lw_base, lw_diag, lw_next, x.shape[0], mu.shape[0], x.dtype, x.device)
    joint = torch.logsumexp(lw + f.sum(-1), dim=1)
    marginal = torch.logsumexp(lw[:, :, None] + f, dim=1)
    return joint, marginal
