"""Op 2b: the soft-clamped elementwise affine transform of an affine coupling layer.

``affine_coupling(x, shift, scale_raw)`` with ``s = clamp tanh(scale_raw / clamp)`` returns
``(x exp(s) + shift, s)``; ``inverse=True`` returns ``((x - shift) exp(-s), -s)``. The fused
backends compute the value and log-determinant in one pass and the three gradients in one pass,
and are registered with ``torch.library`` (fake kernel + autograd) so ``torch.compile`` traces them.
"""
from __future__ import annotations


import torch
from torch import Tensor

from msvae.ops import reference
from msvae.ops.backends import BACKEND_DTYPES, DTYPE_CODES, _C, device_scope, select_backend
from msvae.ops.validation import check_backend_dtype, check_finite, check_number, check_tensors

SUPPORTED_BACKENDS = ("reference", "cpu", "triton")


def _validate(x: Tensor, shift: Tensor, scale_raw: Tensor, clamp) -> None:
    check_tensors(x=x, shift=shift, scale_raw=scale_raw)
    for name, t in (("shift", shift), ("scale_raw", scale_raw)):
        if t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)} (no broadcasting), "
                             f"got {tuple(t.shape)}")
    check_number("clamp", clamp, positive=True)


def affine_coupling(x: Tensor, shift: Tensor, scale_raw: Tensor, *, clamp: float = 2.0,
                    inverse: bool = False, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """Elementwise affine map with a soft-clamped log-scale.

    Args:
        x: inputs (any shape).
        shift, scale_raw: the shift ``t`` and the unclamped log-scale, shaped like ``x``;
            ``s = clamp * tanh(scale_raw / clamp)`` lies in ``(-clamp, clamp)``.
        clamp: bound of the log-scale, > 0.
        inverse: compute ``x = (y - shift) exp(-s)`` from ``y`` (passed as ``x``) instead.
        backend: ``"reference"``, ``"cpu"`` or ``"triton"``; default from the device and
            ``MSVAE_BACKEND`` (see ``msvae.ops.available_backends``).

    Returns:
        ``(y, logabsdet)`` shaped like ``x``: forward ``(x exp(s) + shift, s)``, inverse
        ``((x - shift) exp(-s), -s)``.
    """
    _validate(x, shift, scale_raw, clamp)
    backend = select_backend(x.device, backend, SUPPORTED_BACKENDS)
    check_backend_dtype(x.dtype, backend, BACKEND_DTYPES)
    if backend == "reference":
        if not torch.compiler.is_compiling():
            check_finite(x=x, shift=shift, scale_raw=scale_raw)
        return reference.affine_coupling(x, shift, scale_raw, float(clamp), bool(inverse))
    return _fused(x.contiguous(), shift.contiguous(), scale_raw.contiguous(), float(clamp),
                  bool(inverse), backend)


# ---- fused backends -------------------------------------------------------------------------

def _forward_cpu(x, shift, scale_raw, clamp, inverse):
    """The kernel checks finiteness as it reads; only a failed check pays for finding the culprit."""
    y, logabsdet = torch.empty_like(x), torch.empty_like(x)
    finite = _C.affine_coupling_forward_cpu(DTYPE_CODES[x.dtype], x.data_ptr(), shift.data_ptr(),
                                   scale_raw.data_ptr(), x.numel(), clamp, inverse, y.data_ptr(),
                                   logabsdet.data_ptr(), torch.get_num_threads())
    if not finite:
        check_finite(x=x, shift=shift, scale_raw=scale_raw)
    return y, logabsdet


def _backward_cpu(grad_y, grad_logabsdet, x, shift, scale_raw, clamp, inverse):
    grads = [torch.empty_like(x) for _ in range(3)]
    _C.affine_coupling_backward_cpu(DTYPE_CODES[x.dtype], grad_y.data_ptr(),
                                    grad_logabsdet.data_ptr(), x.data_ptr(), shift.data_ptr(),
                                    scale_raw.data_ptr(), x.numel(), clamp, inverse,
                                    *(g.data_ptr() for g in grads), torch.get_num_threads())
    return tuple(grads)


def _forward_triton(x, shift, scale_raw, clamp, inverse):
    from msvae.triton import affine_coupling as kernels
    check_finite(x=x, shift=shift, scale_raw=scale_raw)
    return kernels.forward(x, shift, scale_raw, clamp, inverse)


def _backward_triton(grad_y, grad_logabsdet, x, shift, scale_raw, clamp, inverse):
    from msvae.triton import affine_coupling as kernels
    return kernels.backward(grad_y, grad_logabsdet, x, shift, scale_raw, clamp, inverse)


_FORWARD = {"cpu": _forward_cpu, "triton": _forward_triton}
_BACKWARD = {"cpu": _backward_cpu, "triton": _backward_triton}


@torch.library.custom_op("msvae::affine_coupling", mutates_args=())
def _fused(x: Tensor, shift: Tensor, scale_raw: Tensor, clamp: float, inverse: bool,
           backend: str) -> tuple[Tensor, Tensor]:
    with device_scope(x):
        return _FORWARD[backend](x, shift, scale_raw, clamp, inverse)


@_fused.register_fake
def _(x, shift, scale_raw, clamp, inverse, backend):
    return torch.empty_like(x), torch.empty_like(x)


@torch.library.custom_op("msvae::affine_coupling_backward", mutates_args=())
def _fused_backward(grad_y: Tensor, grad_logabsdet: Tensor, x: Tensor, shift: Tensor,
                    scale_raw: Tensor, clamp: float, inverse: bool,
                    backend: str) -> tuple[Tensor, Tensor, Tensor]:
    with device_scope(x):
        return _BACKWARD[backend](grad_y.contiguous(), grad_logabsdet.contiguous(), x, shift,
                              scale_raw, clamp, inverse)


@_fused_backward.register_fake
def _(grad_y, grad_logabsdet, x, shift, scale_raw, clamp, inverse, backend):
    return torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, shift, scale_raw, ctx.clamp, ctx.inverse, ctx.backend = inputs
    ctx.save_for_backward(x, shift, scale_raw)


def _backward(ctx, grad_y, grad_logabsdet):
    x, shift, scale_raw = ctx.saved_tensors
    grad_y = torch.zeros_like(x) if grad_y is None else grad_y
    grad_logabsdet = torch.zeros_like(x) if grad_logabsdet is None else grad_logabsdet
    grads = _fused_backward(grad_y, grad_logabsdet, x, shift, scale_raw, ctx.clamp, ctx.inverse,
                            ctx.backend)
    return (*grads, None, None, None)


_fused.register_autograd(_backward, setup_context=_setup_context)
