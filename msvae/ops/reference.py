"""Readable torch reference for the fused ops: the specification every backend is tested against."""
import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mu, exp(logvar)) (broadcasting)."""
    return -0.5 * ((x - mu) ** 2 * torch.exp(-logvar) + logvar + LOG_2PI)


def log_weight_matrix(scheme: int, lw_base: float, lw_diag: float, lw_next: float,
                      Q: int, B: int, dtype, device) -> torch.Tensor:
    """The [Q, B] log-weights `lw(i, j)` of a weighting scheme (see `msvae.ops.mixture_weights`).

    scheme 0: every entry `lw_base`; scheme 1 (MSS, Q <= B): `lw_diag` on the diagonal,
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


def rq_spline_knots(raw: torch.Tensor, min_size: float, tail_bound: float):
    """Knots ``[..., K+1]`` from ``-tail_bound`` to ``tail_bound`` and bin sizes ``[..., K]``:
    sizes are ``2 tail_bound (min_size + (1 - K min_size) softmax(raw))``; the end knots are exact."""
    K = raw.shape[-1]
    fractions = min_size + (1.0 - K * min_size) * torch.softmax(raw, dim=-1)
    interior = 2.0 * tail_bound * torch.cumsum(fractions, dim=-1)[..., :-1] - tail_bound
    ends = interior.new_full((*interior.shape[:-1], 1), tail_bound)
    knots = torch.cat([-ends, interior, ends], dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def rq_spline(x: torch.Tensor, widths_raw: torch.Tensor, heights_raw: torch.Tensor,
              derivs_raw: torch.Tensor, tail_bound: float, inverse: bool, min_bin_width: float,
              min_bin_height: float, min_derivative: float):
    """Elementwise monotonic rational-quadratic spline (Durkan et al. 2019) with identity tails.

    x [...], widths_raw / heights_raw [..., K], derivs_raw [..., K-1] -> (y [...], logabsdet [...]).
    Inside ``[-B, B]`` (B = tail_bound) the element lies in bin k (the last knot <= x; a point on
    an interior knot starts the bin to its right) with ``xi = (x - x_k) / w_k``, ``s = h_k / w_k``:
    ``y = y_k + h_k (s xi^2 + d_k xi (1 - xi)) / (s + (d_k + d_{k+1} - 2 s) xi (1 - xi))``.
    Derivatives at the ends are 1, interior ones ``min_derivative + softplus(raw)``. Outside, y = x
    and logabsdet = 0. ``inverse=True`` maps y back to x (the stable root of the bin's quadratic)
    and returns ``log|dx/dy|``.
    """
    B = tail_bound
    x_knots, widths = rq_spline_knots(widths_raw, min_bin_width, B)
    y_knots, heights = rq_spline_knots(heights_raw, min_bin_height, B)
    ones = derivs_raw.new_ones((*derivs_raw.shape[:-1], 1))
    derivs = torch.cat([ones, min_derivative + torch.nn.functional.softplus(derivs_raw), ones], dim=-1)

    inside = (x >= -B) & (x <= B)
    z = x.clamp(-B, B)[..., None]  # inside the spline's domain, so the unused branch stays finite
    search_knots = (y_knots if inverse else x_knots)[..., 1:-1].contiguous()
    k = torch.searchsorted(search_knots, z.contiguous(), right=True)
    xk, w = x_knots.gather(-1, k), widths.gather(-1, k)
    yk, h = y_knots.gather(-1, k), heights.gather(-1, k)
    d0, d1 = derivs.gather(-1, k), derivs.gather(-1, k + 1)
    s = h / w
    if inverse:
        dy = z - yk
        a = h * (s - d0) + dy * (d0 + d1 - 2 * s)
        b = h * d0 - dy * (d0 + d1 - 2 * s)
        c = -s * dy
        xi = 2 * c / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
        out = xi * w + xk
    else:
        xi = (z - xk) / w
    t = xi * (1 - xi)
    denominator = s + (d0 + d1 - 2 * s) * t
    slope = s * s * (d1 * xi * xi + 2 * s * t + d0 * (1 - xi) ** 2) / (denominator * denominator)
    logabsdet = torch.log(slope)
    if inverse:
        logabsdet = -logabsdet
    else:
        out = yk + h * (s * xi * xi + d0 * t) / denominator
    out, logabsdet = out[..., 0], logabsdet[..., 0]
    return torch.where(inside, out, x), torch.where(inside, logabsdet, torch.zeros_like(logabsdet))


def affine_coupling(x: torch.Tensor, shift: torch.Tensor, scale_raw: torch.Tensor, clamp: float,
                    inverse: bool):
    """Soft-clamped affine transform, all tensors the same shape -> (y, logabsdet) elementwise.

    ``s = clamp tanh(scale_raw / clamp)``; forward ``y = x exp(s) + shift``, logabsdet ``s``;
    inverse ``x = (y - shift) exp(-s)``, logabsdet ``-s``.
    """
    s = clamp * torch.tanh(scale_raw / clamp)
    if inverse:
        return (x - shift) * torch.exp(-s), -s
    return x * torch.exp(s) + shift, s
