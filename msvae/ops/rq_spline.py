"""Op 2a: the elementwise monotonic rational-quadratic spline of a coupling layer (Durkan et al. 2019).

``rq_spline(x, widths_raw, heights_raw, derivs_raw)`` maps every element of ``x [..., C]`` through
its own K-bin spline on ``[-tail_bound, tail_bound]`` (identity outside) and returns ``(y,
logabsdet)``, both shaped like ``x``; ``inverse=True`` maps back. The fused backends do one pass
per element each way — softmax / softplus of that element's bin parameters, the bin search, the
value and log-derivative forward; the analytic gradients to ``x`` and every raw parameter
backward — and hold no per-bin intermediates in memory. They are registered with
``torch.library`` (fake kernel + autograd) so ``torch.compile`` traces them.
"""
from __future__ import annotations


import torch
from torch import Tensor

from msvae.ops import reference
from msvae.ops.backends import BACKEND_DTYPES, DTYPE_CODES, _C, device_scope, select_backend
from msvae.ops.validation import check_backend_dtype, check_finite, check_number, check_tensors

SUPPORTED_BACKENDS = ("reference", "cpu", "triton")


def _validate(x: Tensor, widths_raw: Tensor, heights_raw: Tensor, derivs_raw: Tensor) -> None:
    check_tensors(x=x, widths_raw=widths_raw, heights_raw=heights_raw, derivs_raw=derivs_raw)
    if widths_raw.dim() != x.dim() + 1 or widths_raw.shape[:-1] != x.shape:
        raise ValueError(f"widths_raw must have shape x.shape + (K,) = {tuple(x.shape)} + (K,), "
                         f"got {tuple(widths_raw.shape)}")
    K = widths_raw.shape[-1]
    if K < 2:
        raise ValueError(f"widths_raw must have K >= 2 bins in its last dimension, got K={K}")
    if heights_raw.shape != widths_raw.shape:
        raise ValueError(f"heights_raw must have the shape of widths_raw {tuple(widths_raw.shape)} "
                         f"(the same K), got {tuple(heights_raw.shape)}")
    if derivs_raw.shape != (*x.shape, K - 1):
        raise ValueError(f"derivs_raw must have shape x.shape + (K - 1,) = {(*x.shape, K - 1)} "
                         f"(interior knots only), got {tuple(derivs_raw.shape)}")


def _validate_constants(K: int, tail_bound, min_bin_width, min_bin_height, min_derivative) -> None:
    for name, value in (("tail_bound", tail_bound), ("min_bin_width", min_bin_width),
                        ("min_bin_height", min_bin_height), ("min_derivative", min_derivative)):
        check_number(name, value)
    if tail_bound <= 0:
        raise ValueError(f"tail_bound must be > 0, got {tail_bound}")
    for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if value < 0 or value * K >= 1:
            raise ValueError(f"{name} must be >= 0 with {name} * K < 1 (K={K}), got {value}")
    if min_derivative < 0:
        raise ValueError(f"min_derivative must be >= 0, got {min_derivative}")


def rq_spline(x: Tensor, widths_raw: Tensor, heights_raw: Tensor, derivs_raw: Tensor, *,
              tail_bound: float = 3.0, inverse: bool = False, min_bin_width: float = 1e-3,
              min_bin_height: float = 1e-3, min_derivative: float = 1e-3,
              backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Elementwise monotonic rational-quadratic spline with identity (linear) tails.

    Args:
        x: inputs ``[..., C]`` (any shape; every element has its own spline).
        widths_raw, heights_raw: unnormalised bin widths and heights ``[..., C, K]``, ``K >= 2``;
            sizes are ``min + (1 - K min) softmax(raw)`` of the interval ``[-tail_bound, tail_bound]``.
        derivs_raw: unnormalised derivatives at the ``K - 1`` interior knots ``[..., C, K - 1]``,
            ``min_derivative + softplus(raw)``; the derivatives at ``±tail_bound`` are 1.
        tail_bound: the spline acts on ``[-tail_bound, tail_bound]``; y = x outside.
        inverse: map y back to x instead (the stable root of the bin's quadratic).
        backend: ``"reference"``, ``"cpu"`` or ``"triton"``; default from the device and
            ``MSVAE_BACKEND`` (see ``msvae.ops.available_backends``).

    Returns:
        ``(y, logabsdet)`` shaped like ``x``: ``logabsdet = log|dy/dx|`` elementwise (``log|dx/dy|``
        for ``inverse=True``, so a round trip's two log-determinants cancel); 0 in the tails.
    """
    _validate(x, widths_raw, heights_raw, derivs_raw)
    K = widths_raw.shape[-1]
    _validate_constants(K, tail_bound, min_bin_width, min_bin_height, min_derivative)
    constants = (float(tail_bound), bool(inverse), float(min_bin_width), float(min_bin_height),
                 float(min_derivative))
    backend = select_backend(x.device, backend, SUPPORTED_BACKENDS)
    check_backend_dtype(x.dtype, backend, BACKEND_DTYPES)
    if backend == "reference":
        if not torch.compiler.is_compiling():
            check_finite(x=x, widths_raw=widths_raw, heights_raw=heights_raw, derivs_raw=derivs_raw)
        return reference.rq_spline(x, widths_raw, heights_raw, derivs_raw, *constants)
    return _fused(x.contiguous(), widths_raw.contiguous(), heights_raw.contiguous(),
                  derivs_raw.contiguous(), *constants, backend)


# ---- fused backends -------------------------------------------------------------------------

def _forward_cpu(x, widths_raw, heights_raw, derivs_raw, constants):
    """The kernel checks finiteness as it reads; only a failed check pays for finding the culprit."""
    y, logabsdet = torch.empty_like(x), torch.empty_like(x)
    finite = _C.rq_spline_forward_cpu(DTYPE_CODES[x.dtype], x.data_ptr(), widths_raw.data_ptr(),
                             heights_raw.data_ptr(), derivs_raw.data_ptr(), x.numel(),
                             widths_raw.shape[-1], *constants, y.data_ptr(), logabsdet.data_ptr(),
                             torch.get_num_threads())
    if not finite:
        check_finite(x=x, widths_raw=widths_raw, heights_raw=heights_raw, derivs_raw=derivs_raw)
    return y, logabsdet


def _backward_cpu(grad_y, grad_logabsdet, x, widths_raw, heights_raw, derivs_raw, constants):
    grads = [torch.empty_like(t) for t in (x, widths_raw, heights_raw, derivs_raw)]
    _C.rq_spline_backward_cpu(DTYPE_CODES[x.dtype], grad_y.data_ptr(), grad_logabsdet.data_ptr(),
                              x.data_ptr(), widths_raw.data_ptr(), heights_raw.data_ptr(),
                              derivs_raw.data_ptr(), x.numel(), widths_raw.shape[-1], *constants,
                              *(g.data_ptr() for g in grads), torch.get_num_threads())
    return tuple(grads)


def _forward_triton(x, widths_raw, heights_raw, derivs_raw, constants):
    from msvae.triton import rq_spline as kernels
    check_finite(x=x, widths_raw=widths_raw, heights_raw=heights_raw, derivs_raw=derivs_raw)
    return kernels.forward(x, widths_raw, heights_raw, derivs_raw, *constants)


def _backward_triton(grad_y, grad_logabsdet, x, widths_raw, heights_raw, derivs_raw, constants):
    from msvae.triton import rq_spline as kernels
    return kernels.backward(grad_y, grad_logabsdet, x, widths_raw, heights_raw, derivs_raw, *constants)


_FORWARD = {"cpu": _forward_cpu, "triton": _forward_triton}
_BACKWARD = {"cpu": _backward_cpu, "triton": _backward_triton}


@torch.library.custom_op("msvae::rq_spline", mutates_args=())
def _fused(x: Tensor, widths_raw: Tensor, heights_raw: Tensor, derivs_raw: Tensor,
           tail_bound: float, inverse: bool, min_bin_width: float, min_bin_height: float,
           min_derivative: float, backend: str) -> tuple[Tensor, Tensor]:
    constants = (tail_bound, inverse, min_bin_width, min_bin_height, min_derivative)
    with device_scope(x):
        return _FORWARD[backend](x, widths_raw, heights_raw, derivs_raw, constants)


@_fused.register_fake
def _(x, widths_raw, heights_raw, derivs_raw, tail_bound, inverse, min_bin_width, min_bin_height,
      min_derivative, backend):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("msvae::rq_spline_backward", mutates_args=())
def _fused_backward(grad_y: Tensor, grad_logabsdet: Tensor, x: Tensor, widths_raw: Tensor,
                    heights_raw: Tensor, derivs_raw: Tensor, tail_bound: float, inverse: bool,
                    min_bin_width: float, min_bin_height: float, min_derivative: float,
                    backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    constants = (tail_bound, inverse, min_bin_width, min_bin_height, min_derivative)
    with device_scope(x):
        return _BACKWARD[backend](grad_y.contiguous(), grad_logabsdet.contiguous(), x, widths_raw,
                              heights_raw, derivs_raw, constants)


@_fused_backward.register_fake
def _(grad_y, grad_logabsdet, x, widths_raw, heights_raw, derivs_raw, tail_bound, inverse,
      min_bin_width, min_bin_height, min_derivative, backend):
    return tuple(torch.empty_like(t) for t in (x, widths_raw, heights_raw, derivs_raw))


def _setup_context(ctx, inputs, output):
    *tensors, tail_bound, inverse, min_w, min_h, min_d, ctx.backend = inputs
    ctx.constants = (tail_bound, inverse, min_w, min_h, min_d)
    ctx.save_for_backward(*tensors)


def _backward(ctx, grad_y, grad_logabsdet):
    x, widths_raw, heights_raw, derivs_raw = ctx.saved_tensors
    grad_y = torch.zeros_like(x) if grad_y is None else grad_y
    grad_logabsdet = torch.zeros_like(x) if grad_logabsdet is None else grad_logabsdet
    grads = _fused_backward(grad_y, grad_logabsdet, x, widths_raw, heights_raw, derivs_raw,
                            *ctx.constants, ctx.backend)
    return (*grads, None, None, None, None, None, None)


_fused.register_autograd(_backward, setup_context=_setup_context)
