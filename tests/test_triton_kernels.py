"""Triton mixture log-density kernels against the float64 torch reference.

Without a GPU the kernels run under the Triton interpreter on CPU tensors (fp32 / fp16 only).
"""
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")


from msvae.ops.reference import mixture_log_density  # noqa: E402
from msvae.triton import mixture_log_density as tk  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16, torch.float64] if CUDA else [])
RTOL = {torch.float64: 1e-6, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}


def _weights(scheme, B):
    """(base, diag, next) log-weights: MSS-like for scheme 1, uniform for scheme 0."""
    if scheme == 0:
        return -math.log(max(B, 1)), 0.0, 0.0
    M = max(B - 1, 1)
    N = 10.0 * (M + 1)
    return -math.log(M), -math.log(N), math.log((N - M) / (N * M))


def _inputs(Q, B, D, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(Q, D, generator=g)
    mu = torch.randn(B, D, generator=g)
    lv = torch.rand(B, D, generator=g) * 4 - 3
    gj = torch.randn(Q, generator=g)
    gm = torch.randn(Q, D, generator=g)
    return [t.to(dtype).to(DEVICE) for t in (x, mu, lv, gj, gm)]


def _reference(x, mu, lv, gj, gm, scheme, w):
    """float64 forward outputs and autograd gradients of the reference."""
    x, mu, lv = (t.detach().double().requires_grad_() for t in (x, mu, lv))
    joint, marg = mixture_log_density(x, mu, lv, scheme, *w)
    grads = torch.autograd.grad((joint * gj.double()).sum() + (marg * gm.double()).sum(), (x, mu, lv))
    return (joint.detach(), marg.detach()), grads


def _close(name, got, ref, rtol):
    got = got.double()
    assert torch.isfinite(got).all(), name
    err = (got - ref).abs().max().item()
    scale = ref.abs().max().item() + 1e-30
    assert err <= rtol * scale, f"{name}: max abs err {err:.3g} vs scale {scale:.3g} (rtol {rtol})"


def _check(Q, B, D, scheme, dtype, seed=0):
    x, mu, lv, gj, gm = _inputs(Q, B, D, dtype, seed)
    w = _weights(scheme, B)
    (rj, rm), (rdx, rdmu, rdlv) = _reference(x, mu, lv, gj, gm, scheme, w)
    joint, marg = tk.forward(x, mu, lv, scheme, *w)
    assert joint.shape == (Q,) and marg.shape == (Q, D) and joint.dtype == dtype and marg.dtype == dtype
    rtol = RTOL[dtype]
    _close("joint", joint, rj, rtol)
    _close("marginal", marg, rm, rtol)
    dx, dmu, dlv = tk.backward(gj, gm, x, mu, lv, joint, marg, scheme, *w)
    assert dx.dtype == dtype and dmu.dtype == dtype and dlv.dtype == dtype
    _close("dx", dx, rdx, rtol)
    _close("dmu", dmu, rdmu, rtol)
    _close("dlogvar", dlv, rdlv, rtol)


SHAPES = [  # (Q, B, D, scheme)
    (1, 1, 1, 0), (1, 1, 1, 1), (3, 5, 1, 0), (7, 7, 3, 1), (17, 9, 5, 0), (33, 40, 11, 0),
    (40, 40, 11, 1), (2, 65, 2, 0), (64, 3, 17, 0), (19, 19, 33, 1), (5, 6, 64, 0),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("Q,B,D,scheme", SHAPES)
def test_matches_reference(Q, B, D, scheme, dtype):
    _check(Q, B, D, scheme, dtype, seed=Q * 1000 + B * 10 + D)


@pytest.mark.parametrize("scheme", [0, 1])
def test_wide_dimension(scheme):
    _check(12, 12, 256, scheme, torch.float32, seed=scheme)


def test_mss_diagonal_weight_dominates():
    """A huge diagonal weight makes the joint the query's own component density."""
    x, mu, lv, *_ = _inputs(6, 6, 4, torch.float32, 3)
    joint, _ = tk.forward(x, mu, lv, 1, -60.0, 0.0, -60.0)
    own = -0.5 * ((x - mu) ** 2 * torch.exp(-lv) + lv + math.log(2 * math.pi)).sum(-1)
    assert torch.allclose(joint, own, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not CUDA, reason="large case needs a GPU")
@pytest.mark.parametrize("scheme", [0, 1])
def test_large(scheme):
    _check(1031, 1031, 32, scheme, torch.float32)
