"""Op 1: batch Gaussian-mixture log-density, the core of the total-correlation estimators.

``mixture_log_density(x, mu, logvar)`` returns, for queries ``x [Q, D]`` and components
``N(mu_j, diag(exp(logvar_j)))`` with ``mu, logvar [B, D]``,

    joint    [Q]    = logsumexp_j(lw(i, j) + sum_d f_d(i, j))
    marginal [Q, D] = logsumexp_j(lw(i, j) + f_d(i, j)),   f_d(i, j) = log N(x_id; mu_jd, exp(logvar_jd)).

The fused backends stream over the components and never hold a Q x B (x D) tensor; they are
registered with ``torch.library`` (fake kernel + autograd) so ``torch.compile`` traces them.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from msvae.ops import reference
from msvae.ops.backends import BACKEND_DTYPES, DTYPE_CODES, _C, device_scope, select_backend
from msvae.ops.validation import check_backend_dtype, check_finite, check_tensors

WEIGHT_SCHEMES = ("mws", "mss", "uniform")
_SCHEME_CONSTANT, _SCHEME_STRATIFIED = 0, 1
CPU_SCRATCH_BYTES = 64 << 20  # bound on the cpu backward's per-thread gradient buffers


def mixture_weights(weights: str, num_queries: int, batch_size: int,
                    dataset_size: int | None) -> tuple[int, float, float, float]:
    """The log-weights of a scheme as ``(scheme, base, diag, next)`` (see ``reference.log_weight_matrix``).

    - ``"mws"``: minibatch weighted sampling, ``lw = -log(B N)``.
    - ``"mss"``: minibatch stratified sampling (the queries are the batch's first ``Q <= B`` rows:
      ``Q == B`` in one process; a rank's own rows of the global batch, rotated to the front, under
      ``torch.distributed``), ``M = B - 1``: ``1/N`` on the diagonal, ``(N - M) / (N M)`` at
      ``(i, (i + 1) mod B)``, ``1/M`` elsewhere, so every row sums to 1. With ``B == 1`` the
      single weight is 1.
    - ``"uniform"``: ``lw = -log B`` (queries drawn independently of the batch, e.g. from the prior).
    """
    if weights not in WEIGHT_SCHEMES:
        raise ValueError(f"weights must be one of {WEIGHT_SCHEMES}, got {weights!r}")
    B = batch_size
    if weights == "uniform":
        return _SCHEME_CONSTANT, -math.log(B), 0.0, 0.0
    if dataset_size is None:
        raise ValueError(f"dataset_size is required for weights={weights!r}")
    if isinstance(dataset_size, bool) or not isinstance(dataset_size, int):
        raise ValueError(f"dataset_size must be an int, got {type(dataset_size).__name__}")
    N = dataset_size
    if N < B:
        raise ValueError(f"dataset_size must be >= the batch size B={B}, got {N}")
    if weights == "mws":
        return _SCHEME_CONSTANT, -math.log(B * N), 0.0, 0.0
    if num_queries > B:
        raise ValueError(f"weights='mss' needs the queries to be rows of the batch (x with at most "
                         f"as many rows as mu), got Q={num_queries} and B={B}")
    if B == 1:
        return _SCHEME_STRATIFIED, 0.0, 0.0, 0.0
    M = B - 1
    return _SCHEME_STRATIFIED, -math.log(M), -math.log(N), math.log((N - M) / (N * M))


def logvar_limit(dtype: torch.dtype) -> float:
    """The documented range ``[-limit, limit]`` of ``logvar``: 600 in float64, 60 otherwise (the
    kernels compute in at least float32, where ``exp(60) ~ 1e26`` leaves room for squared
    distances up to ~1e12 before a log-density leaves float32's range). Outside it the op refuses
    (``ValueError``) rather than return an inaccurate or non-finite value."""
    return 600.0 if dtype == torch.float64 else 60.0


def _check_values(x: Tensor, mu: Tensor, logvar: Tensor) -> None:
    check_finite(bounds={"logvar": logvar_limit(x.dtype)}, x=x, mu=mu, logvar=logvar)


def _validate(x: Tensor, mu: Tensor, logvar: Tensor) -> None:
    check_tensors(x=x, mu=mu, logvar=logvar)
    for name, t in (("x", x), ("mu", mu), ("logvar", logvar)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D ({'[Q, D]' if name == 'x' else '[B, D]'}), "
                             f"got shape {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    if mu.shape != logvar.shape:
        raise ValueError(f"mu and logvar must have the same shape, got {tuple(mu.shape)} and "
                         f"{tuple(logvar.shape)}")
    if x.shape[1] != mu.shape[1]:
        raise ValueError(f"x has D={x.shape[1]} but mu and logvar have D={mu.shape[1]}")


def mixture_log_density(x: Tensor, mu: Tensor, logvar: Tensor, *, weights: str = "mws",
                        dataset_size: int | None = None,
                        backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Log-density of queries under a weighted diagonal-Gaussian mixture, jointly and per dimension.

    Args:
        x: queries ``[Q, D]`` (for the TC estimators, the sampled codes ``z`` of the batch).
        mu, logvar: component means and log-variances ``[B, D]`` (the batch's posteriors);
            ``logvar`` within ``[-logvar_limit(dtype), logvar_limit(dtype)]`` (60 in float32).
        weights: ``"mws"``, ``"mss"`` or ``"uniform"`` (see ``mixture_weights``).
        dataset_size: ``N``, required by ``"mws"`` and ``"mss"``; at least ``B``.
        backend: ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``; default from the device
            and ``MSVAE_BACKEND`` (see ``msvae.ops.available_backends``).

    Returns:
        ``(joint [Q], marginal [Q, D])`` in the dtype of ``x``.
    """
    _validate(x, mu, logvar)
    backend = select_backend(x.device, backend)
    check_backend_dtype(x.dtype, backend, BACKEND_DTYPES)
    scheme, base, diag, nxt = mixture_weights(weights, x.shape[0], mu.shape[0], dataset_size)
    if backend == "reference":
        if not torch.compiler.is_compiling():
            _check_values(x, mu, logvar)
        return reference.mixture_log_density(x, mu, logvar, scheme, base, diag, nxt)
    return _fused(x.contiguous(), mu.contiguous(), logvar.contiguous(), scheme, base, diag, nxt, backend)


# ---- fused backends -------------------------------------------------------------------------

def _cuda_stream(t: Tensor) -> int:
    return torch.cuda.current_stream(t.device).cuda_stream


def _forward_cpu(x, mu, logvar, w):
    joint, marginal = x.new_empty(x.shape[0]), torch.empty_like(x)
    _C.mixture_log_density_forward_cpu(DTYPE_CODES[x.dtype], x.data_ptr(), mu.data_ptr(),
                                       logvar.data_ptr(), x.shape[0], mu.shape[0], x.shape[1],
                                       _C.MixtureWeights(*w), joint.data_ptr(), marginal.data_ptr(),
                                       torch.get_num_threads())
    return joint, marginal


def _backward_cpu(grad_joint, grad_marginal, x, mu, logvar, joint, marginal, w):
    dx, dmu, dlogvar = torch.empty_like(x), torch.empty_like(mu), torch.empty_like(logvar)
    _C.mixture_log_density_backward_cpu(
        DTYPE_CODES[x.dtype], grad_joint.data_ptr(), grad_marginal.data_ptr(), x.data_ptr(),
        mu.data_ptr(), logvar.data_ptr(), joint.data_ptr(), marginal.data_ptr(), x.shape[0],
        mu.shape[0], x.shape[1], _C.MixtureWeights(*w), dx.data_ptr(), dmu.data_ptr(),
        dlogvar.data_ptr(), torch.get_num_threads(), CPU_SCRATCH_BYTES)
    return dx, dmu, dlogvar


def _forward_cuda(x, mu, logvar, w):
    joint, marginal = x.new_empty(x.shape[0]), torch.empty_like(x)
    _C.mixture_log_density_forward_cuda(DTYPE_CODES[x.dtype], x.data_ptr(), mu.data_ptr(),
                                        logvar.data_ptr(), x.shape[0], mu.shape[0], x.shape[1],
                                        _C.MixtureWeights(*w), joint.data_ptr(), marginal.data_ptr(),
                                        _cuda_stream(x))
    return joint, marginal


def _backward_cuda(grad_joint, grad_marginal, x, mu, logvar, joint, marginal, w):
    dx, dmu, dlogvar = torch.empty_like(x), torch.empty_like(mu), torch.empty_like(logvar)
    _C.mixture_log_density_backward_cuda(
        DTYPE_CODES[x.dtype], grad_joint.data_ptr(), grad_marginal.data_ptr(), x.data_ptr(),
        mu.data_ptr(), logvar.data_ptr(), joint.data_ptr(), marginal.data_ptr(), x.shape[0],
        mu.shape[0], x.shape[1], _C.MixtureWeights(*w), dx.data_ptr(), dmu.data_ptr(),
        dlogvar.data_ptr(), _cuda_stream(x))
    return dx, dmu, dlogvar


def _forward_triton(x, mu, logvar, w):
    from msvae.triton import mixture_log_density as kernels
    return kernels.forward(x, mu, logvar, *w)


def _backward_triton(grad_joint, grad_marginal, x, mu, logvar, joint, marginal, w):
    from msvae.triton import mixture_log_density as kernels
    return kernels.backward(grad_joint, grad_marginal, x, mu, logvar, joint, marginal, *w)


_FORWARD = {"cpu": _forward_cpu, "cuda": _forward_cuda, "triton": _forward_triton}
_BACKWARD = {"cpu": _backward_cpu, "cuda": _backward_cuda, "triton": _backward_triton}


@torch.library.custom_op("msvae::mixture_log_density", mutates_args=())
def _fused(x: Tensor, mu: Tensor, logvar: Tensor, scheme: int, base: float, diag: float,
           next_: float, backend: str) -> tuple[Tensor, Tensor]:
    _check_values(x, mu, logvar)
    with device_scope(x):
        return _FORWARD[backend](x, mu, logvar, (scheme, base, diag, next_))


@_fused.register_fake
def _(x, mu, logvar, scheme, base, diag, next_, backend):
    return x.new_empty(x.shape[0]), x.new_empty(x.shape)


@torch.library.custom_op("msvae::mixture_log_density_backward", mutates_args=())
def _fused_backward(grad_joint: Tensor, grad_marginal: Tensor, x: Tensor, mu: Tensor,
                    logvar: Tensor, joint: Tensor, marginal: Tensor, scheme: int, base: float,
                    diag: float, next_: float, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    with device_scope(x):
        return _BACKWARD[backend](grad_joint.contiguous(), grad_marginal.contiguous(), x, mu, logvar,
                              joint, marginal, (scheme, base, diag, next_))


@_fused_backward.register_fake
def _(grad_joint, grad_marginal, x, mu, logvar, joint, marginal, scheme, base, diag, next_, backend):
    return torch.empty_like(x), torch.empty_like(mu), torch.empty_like(logvar)


def _setup_context(ctx, inputs, output):
    x, mu, logvar, *ctx.weights, ctx.backend = inputs
    ctx.save_for_backward(x, mu, logvar, *output)


def _backward(ctx, grad_joint, grad_marginal):
    x, mu, logvar, joint, marginal = ctx.saved_tensors
    grad_joint = torch.zeros_like(joint) if grad_joint is None else grad_joint
    grad_marginal = torch.zeros_like(marginal) if grad_marginal is None else grad_marginal
    dx, dmu, dlogvar = _fused_backward(grad_joint, grad_marginal, x, mu, logvar, joint, marginal,
                                       *ctx.weights, ctx.backend)
    return dx, dmu, dlogvar, None, None, None, None, None


_fused.register_autograd(_backward, setup_context=_setup_context)
