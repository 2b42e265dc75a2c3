"""Triton kernels for the rational-quadratic spline (DESIGN.md "Op 2"; math in `msvae.ops.reference`).

Shapes (flattened): `x [n]`, `widths_raw / heights_raw [n, K]`, `derivs_raw [n, K - 1]`. Each program
takes BLOCK elements as a register tile `[BLOCK, KP]` (KP = K rounded up to a power of two): softmax
along the bins, an inclusive cumsum for the knots, the bin as the count of interior knots <= the input,
and the bin's quantities gathered by one-hot sums, so nothing per-bin ever reaches memory.

* forward: `y`, `logabsdet` (inverse: the stable root of the bin's quadratic, `log|dx/dy|`);
* backward: recomputes the same and writes the gradients of `x` and of every raw parameter; the
  softmax gradient is `(1 - K m) p_i 2B (G_knot [i < k] + G_size [i == k] - G_knot P_{<k} - G_size p_k)`.

Arithmetic runs in float32 (float64 for float64 inputs); the constants come from a tensor in that
dtype because Triton materialises float literals and float arguments as float32.
"""
import torch
import triton
import triton.language as tl

from msvae.triton import constants

BLOCK = 64


@triton.jit
def _constants(c_ptr):
    """(tail_bound, min_bin_width, min_bin_height, min_derivative) in the accumulation dtype."""
    return tl.load(c_ptr), tl.load(c_ptr + 1), tl.load(c_ptr + 2), tl.load(c_ptr + 3)


@triton.jit
def _sizes(raw_ptr, e, k, n, K, min_size, acc_t: tl.constexpr):
    """Softmax probabilities p [BLOCK, KP] (0 in padded bins) and the bins' right knots as
    fractions of the interval: inclusive cumsum of `min + (1 - K min) p`."""
    m = (e < n)[:, None] & (k < K)[None, :]
    raw = tl.load(raw_ptr + e[:, None] * K + k[None, :], mask=m, other=0.0).to(acc_t)
    raw = tl.where((k < K)[None, :], raw, -float("inf"))
    top = tl.max(raw, axis=1)
    ex = tl.exp(raw - top[:, None])
    p = ex / tl.sum(ex, axis=1)[:, None]
    fraction = tl.where((k < K)[None, :], min_size + (1.0 - K * min_size) * p, 0.0)
    return p, tl.cumsum(fraction, axis=1)


@triton.jit
def _pick(onehot, values):
    return tl.sum(tl.where(onehot, values, 0.0), axis=1)


@triton.jit
def _spline(x_ptr, wr_ptr, hr_ptr, dr_ptr, c_ptr, pid, n, K,
            INVERSE: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr, acc_t: tl.constexpr):
    """Everything one block needs, forward or backward (see the module docstring)."""
    B, min_w, min_h, min_d = _constants(c_ptr)
    e = pid * BLOCK + tl.arange(0, BLOCK)
    k = tl.arange(0, KP)
    em = e < n
    x = tl.load(x_ptr + e, mask=em, other=0.0).to(acc_t)
    inside = (x >= -B) & (x <= B)
    z = tl.minimum(tl.maximum(x, -B), B)
    pw, cw = _sizes(wr_ptr, e, k, n, K, min_w, acc_t)
    ph, ch = _sizes(hr_ptr, e, k, n, K, min_h, acc_t)
    last = (k == K - 1)[None, :]
    x_right = tl.where(last, B, 2.0 * B * cw - B)  # right knot of each bin
    y_right = tl.where(last, B, 2.0 * B * ch - B)
    interior = (k < K - 1)[None, :]
    if INVERSE:
        index = tl.sum(tl.where(interior & (y_right <= z[:, None]), 1, 0), axis=1)
    else:
        index = tl.sum(tl.where(interior & (x_right <= z[:, None]), 1, 0), axis=1)
    onehot = k[None, :] == index[:, None]
    before = k[None, :] < index[:, None]
    # Left knots as the previous bin's right knot (as the reference's diff of knots).
    x_knot = tl.where(index == 0, -B, _pick(k[None, :] + 1 == index[:, None], x_right))
    y_knot = tl.where(index == 0, -B, _pick(k[None, :] + 1 == index[:, None], y_right))
    w = _pick(onehot, x_right) - x_knot
    h = _pick(onehot, y_right) - y_knot
    dm = em[:, None] & interior
    draw = tl.load(dr_ptr + e[:, None] * (K - 1) + k[None, :], mask=dm, other=0.0).to(acc_t)
    d_lo_raw = _pick(k[None, :] + 1 == index[:, None], draw)
    d_hi_raw = _pick(onehot & interior, draw)
    d0 = tl.where(index == 0, 1.0, min_d + tl.maximum(d_lo_raw, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(d_lo_raw))))
    d1 = tl.where(index == K - 1, 1.0, min_d + tl.maximum(d_hi_raw, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(d_hi_raw))))
    s = h / w
    c0 = d0 + d1 - 2.0 * s
    if INVERSE:
        dy = z - y_knot
        qa = h * (s - d0) + dy * c0
        qb = h * d0 - dy * c0
        qc = -s * dy
        xi = 2.0 * qc / (-qb - tl.sqrt(tl.maximum(qb * qb - 4.0 * qa * qc, 0.0)))
    else:
        xi = (z - x_knot) / w
    return (x, inside, xi, s, d0, d1, c0, w, h, x_knot, y_knot, index, onehot, before,
            pw, ph, d_lo_raw, d_hi_raw, e, k, em)


@triton.jit
def _fwd_kernel(x_ptr, wr_ptr, hr_ptr, dr_ptr, c_ptr, y_ptr, ld_ptr, n, K,
                INVERSE: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr, acc_t: tl.constexpr):
    (x, inside, xi, s, d0, d1, c0, w, h, x_knot, y_knot, index, onehot, before,
     pw, ph, d_lo_raw, d_hi_raw, e, k, em) = _spline(x_ptr, wr_ptr, hr_ptr, dr_ptr, c_ptr,
                                                     tl.program_id(0), n, K, INVERSE, BLOCK, KP, acc_t)
    t = xi * (1.0 - xi)
    denominator = s + c0 * t
    poly = d1 * xi * xi + 2.0 * s * t + d0 * (1.0 - xi) * (1.0 - xi)
    log_slope = tl.log(s * s * poly / (denominator * denominator))
    if INVERSE:
        out = xi * w + x_knot
        ld = -log_slope
    else:
        out = y_knot + h * (s * xi * xi + d0 * t) / denominator
        ld = log_slope
    tl.store(y_ptr + e, tl.where(inside, out, x).to(y_ptr.dtype.element_ty), mask=em)
    tl.store(ld_ptr + e, tl.where(inside, ld, 0.0).to(ld_ptr.dtype.element_ty), mask=em)


@triton.jit
def _size_gradients(g_ptr, e, k, em, K, p, before, onehot, grad_knot, grad_size, scale):
    """Softmax gradient of one size vector (see the module docstring) stored to g [n, K]."""
    p_bin = _pick(onehot, p)
    p_before = _pick(before, p)
    own = tl.where(before, grad_knot[:, None], tl.where(onehot, grad_size[:, None], 0.0))
    g = scale * p * (own - (grad_knot * p_before + grad_size * p_bin)[:, None])
    tl.store(g_ptr + e[:, None] * K + k[None, :], g.to(g_ptr.dtype.element_ty),
             mask=em[:, None] & (k < K)[None, :])


@triton.jit
def _bwd_kernel(gy_ptr, gl_ptr, x_ptr, wr_ptr, hr_ptr, dr_ptr, c_ptr, dx_ptr, dwr_ptr, dhr_ptr, ddr_ptr,
                n, K, INVERSE: tl.constexpr, BLOCK: tl.constexpr, KP: tl.constexpr, acc_t: tl.constexpr):
    (x, inside, xi, s, d0, d1, c0, w, h, x_knot, y_knot, index, onehot, before,
     pw, ph, d_lo_raw, d_hi_raw, e, k, em) = _spline(x_ptr, wr_ptr, hr_ptr, dr_ptr, c_ptr,
                                                     tl.program_id(0), n, K, INVERSE, BLOCK, KP, acc_t)
    B, min_w, min_h, min_d = _constants(c_ptr)
    gy = tl.load(gy_ptr + e, mask=em, other=0.0).to(acc_t)
    gl = tl.load(gl_ptr + e, mask=em, other=0.0).to(acc_t)
    t = xi * (1.0 - xi)
    Dn = s + c0 * t
    N = s * xi * xi + d0 * t
    P = d1 * xi * xi + 2.0 * s * t + d0 * (1.0 - xi) * (1.0 - xi)
    inv_D2 = 1.0 / (Dn * Dn)
    one_minus_2xi = 1.0 - 2.0 * xi
    D_xi = c0 * one_minus_2xi
    y_xi = h * ((2.0 * s * xi + d0 * one_minus_2xi) * Dn - N * D_xi) * inv_D2
    y_s = h * (xi * xi * Dn - N * (1.0 - 2.0 * t)) * inv_D2
    y_d0 = h * t * (Dn - N) * inv_D2
    y_d1 = -h * t * N * inv_D2
    l_xi = (2.0 * d1 * xi + 2.0 * s * one_minus_2xi - 2.0 * d0 * (1.0 - xi)) / P - 2.0 * D_xi / Dn
    l_s = 2.0 / s + 2.0 * t / P - 2.0 * (1.0 - 2.0 * t) / Dn
    l_d0 = (1.0 - xi) * (1.0 - xi) / P - 2.0 * t / Dn
    l_d1 = xi * xi / P - 2.0 * t / Dn
    if INVERSE:  # x = f^{-1}(y): the forward's partials with gy -> -dL/dy, gl -> -gl
        grad_in = (gy - gl * l_xi / w) / (s * s * P * inv_D2)
        gy_local = -grad_in
        gl_local = -gl
    else:
        gy_local = gy
        gl_local = gl
    G_xi = gy_local * y_xi + gl_local * l_xi
    G_s = gy_local * y_s + gl_local * l_s
    if not INVERSE:
        grad_in = G_xi / w
    tl.store(dx_ptr + e, tl.where(inside, grad_in, gy).to(dx_ptr.dtype.element_ty), mask=em)
    two_B = 2.0 * B
    G_x_knot = tl.where(inside, -G_xi / w, 0.0) * two_B
    G_width = tl.where(inside, -(G_s * s + G_xi * xi) / w, 0.0) * two_B
    G_y_knot = tl.where(inside, gy_local, 0.0) * two_B
    G_height = tl.where(inside, gy_local * N / Dn + G_s / w, 0.0) * two_B
    _size_gradients(dwr_ptr, e, k, em, K, pw, before, onehot, G_x_knot, G_width, 1.0 - K * min_w)
    _size_gradients(dhr_ptr, e, k, em, K, ph, before, onehot, G_y_knot, G_height, 1.0 - K * min_h)
    G_d0 = tl.where(inside, (gy_local * y_d0 + gl_local * l_d0) / (1.0 + tl.exp(-d_lo_raw)), 0.0)
    G_d1 = tl.where(inside, (gy_local * y_d1 + gl_local * l_d1) / (1.0 + tl.exp(-d_hi_raw)), 0.0)
    # raw j is d_{j+1}: the left derivative of bin j + 1 and the right one of bin j.
    gd = tl.where(k[None, :] + 1 == index[:, None], G_d0[:, None], tl.where(onehot, G_d1[:, None], 0.0))
    tl.store(ddr_ptr + e[:, None] * (K - 1) + k[None, :], gd.to(ddr_ptr.dtype.element_ty),
             mask=em[:, None] & (k < K - 1)[None, :])


def _launch(x, K, tail_bound, min_bin_width, min_bin_height, min_derivative):
    """(grid, constants tensor, meta-parameters) for n = x.numel() elements."""
    consts = constants((tail_bound, min_bin_width, min_bin_height, min_derivative), x)
    acc_t = tl.float64 if x.dtype == torch.float64 else tl.float32
    return (triton.cdiv(x.numel(), BLOCK),), consts, dict(BLOCK=BLOCK, KP=triton.next_power_of_2(K),
                                                           acc_t=acc_t)


def forward(x, widths_raw, heights_raw, derivs_raw, tail_bound, inverse, min_bin_width,
            min_bin_height, min_derivative):
    """Contiguous x [...], widths_raw / heights_raw [..., K], derivs_raw [..., K-1] -> (y, logabsdet)."""
    K = widths_raw.shape[-1]
    y, logabsdet = torch.empty_like(x), torch.empty_like(x)
    if x.numel() == 0:
        return y, logabsdet
    grid, consts, meta = _launch(x, K, tail_bound, min_bin_width, min_bin_height, min_derivative)
    _fwd_kernel[grid](x, widths_raw, heights_raw, derivs_raw, consts, y, logabsdet, x.numel(), K,
                      INVERSE=bool(inverse), **meta)
    return y, logabsdet


def backward(grad_y, grad_logabsdet, x, widths_raw, heights_raw, derivs_raw, tail_bound, inverse,
             min_bin_width, min_bin_height, min_derivative):
    """Gradients (dx, dwidths_raw, dheights_raw, dderivs_raw), shaped like the inputs."""
    K = widths_raw.shape[-1]
    grads = tuple(torch.empty_like(t) for t in (x, widths_raw, heights_raw, derivs_raw))
    if x.numel() == 0:
        return grads
    grid, consts, meta = _launch(x, K, tail_bound, min_bin_width, min_bin_height, min_derivative)
    _bwd_kernel[grid](grad_y, grad_logabsdet, x, widths_raw, heights_raw, derivs_raw, consts, *grads,
                      x.numel(), K, INVERSE=bool(inverse), **meta)
    return grads
