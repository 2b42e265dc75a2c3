"""Triton kernels for the soft-clamped affine transform (DESIGN.md "Op 2"; math in `msvae.ops.reference`).

All tensors are flat and contiguous with n elements; each program streams BLOCK of them. Arithmetic
runs in float32 (float64 for float64 inputs); `clamp` comes from a tensor in that dtype because Triton
materialises float arguments as float32.
"""
import torch
import triton
import triton.language as tl

from msvae.triton import constants

BLOCK = 1024


@triton.jit
def _tanh(z):
    """tanh through exp(-2|z|) in (0, 1] (no overflow), in z's dtype."""
    e = tl.exp(-2.0 * tl.abs(z))
    th = (1.0 - e) / (1.0 + e)
    return tl.where(z < 0, -th, th)


@triton.jit
def _fwd_kernel(x_ptr, t_ptr, r_ptr, c_ptr, y_ptr, ld_ptr, n,
                INVERSE: tl.constexpr, BLOCK: tl.constexpr, acc_t: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    c = tl.load(c_ptr)
    x = tl.load(x_ptr + i, mask=m, other=0.0).to(acc_t)
    t = tl.load(t_ptr + i, mask=m, other=0.0).to(acc_t)
    s = c * _tanh(tl.load(r_ptr + i, mask=m, other=0.0).to(acc_t) / c)
    if INVERSE:
        y = (x - t) * tl.exp(-s)
        ld = -s
    else:
        y = x * tl.exp(s) + t
        ld = s
    tl.store(y_ptr + i, y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(ld_ptr + i, ld.to(ld_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bwd_kernel(gy_ptr, gl_ptr, x_ptr, t_ptr, r_ptr, c_ptr, dx_ptr, dt_ptr, dr_ptr, n,
                INVERSE: tl.constexpr, BLOCK: tl.constexpr, acc_t: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    c = tl.load(c_ptr)
    gy = tl.load(gy_ptr + i, mask=m, other=0.0).to(acc_t)
    gl = tl.load(gl_ptr + i, mask=m, other=0.0).to(acc_t)
    x = tl.load(x_ptr + i, mask=m, other=0.0).to(acc_t)
    t = tl.load(t_ptr + i, mask=m, other=0.0).to(acc_t)
    th = _tanh(tl.load(r_ptr + i, mask=m, other=0.0).to(acc_t) / c)
    ds_draw = 1.0 - th * th
    if INVERSE:  # out = (x - t) e^{-s}: d out / ds = -out, logabsdet = -s
        g = gy * tl.exp(-c * th)
        dx = g
        dt = -g
        dr = -(g * (x - t) + gl) * ds_draw
    else:  # out = x e^s + t: d out / ds = x e^s, logabsdet = s
        scale = tl.exp(c * th)
        dx = gy * scale
        dt = gy
        dr = (gy * x * scale + gl) * ds_draw
    tl.store(dx_ptr + i, dx.to(dx_ptr.dtype.element_ty), mask=m)
    tl.store(dt_ptr + i, dt.to(dt_ptr.dtype.element_ty), mask=m)
    tl.store(dr_ptr + i, dr.to(dr_ptr.dtype.element_ty), mask=m)


def _launch(x, clamp):
    consts = constants((clamp,), x)
    meta = dict(BLOCK=BLOCK, acc_t=tl.float64 if x.dtype == torch.float64 else tl.float32)
    return (triton.cdiv(x.numel(), BLOCK),), consts, meta


def forward(x, shift, scale_raw, clamp, inverse):
    """Contiguous x, shift, scale_raw of one shape -> (y, logabsdet)."""
    y, logabsdet = torch.empty_like(x), torch.empty_like(x)
    if x.numel():
        grid, consts, meta = _launch(x, clamp)
        _fwd_kernel[grid](x, shift, scale_raw, consts, y, logabsdet, x.numel(), INVERSE=bool(inverse), **meta)
    return y, logabsdet


def backward(grad_y, grad_logabsdet, x, shift, scale_raw, clamp, inverse):
    """Gradients (dx, dshift, dscale_raw), shaped like x."""
    grads = tuple(torch.empty_like(x) for _ in range(3))
    if x.numel():
        grid, consts, meta = _launch(x, clamp)
        _bwd_kernel[grid](grad_y, grad_logabsdet, x, shift, scale_raw, consts, *grads, x.numel(),
                          INVERSE=bool(inverse), **meta)
    return grads
