"""GPU-only checks of the fused op: half precision, large batches, the default choice. Skipped without CUDA.

(The float64 value/gradient/gradcheck/opcheck/compile tests in test_mixture_log_density.py run the
triton and cuda backends on CUDA tensors automatically when a GPU is present.)
"""
import pytest
import torch
from conftest import HAS_CUDA, fused_cases

from msvae.ops import mixture_log_density, select_backend

pytestmark = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
GPU_BACKENDS = [b for b, device in fused_cases() if device == "cuda"]


def inputs(Q, B, D, dtype, requires_grad=True):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(Q, D, device="cuda", generator=g)
    mu = torch.randn(B, D, device="cuda", generator=g)
    logvar = torch.rand(B, D, device="cuda", generator=g) * 3 - 2.5
    return [t.to(dtype).requires_grad_(requires_grad) for t in (x, mu, logvar)]


def fwd_bwd(backend, x, mu, logvar, weights="mws"):
    joint, marginal = mixture_log_density(x, mu, logvar, weights=weights, dataset_size=10 ** 6,
                                          backend=backend)
    grads = torch.autograd.grad(joint.sum() + 0.5 * marginal.sum(), (x, mu, logvar))
    return joint, marginal, *grads


def rel_err(got, want):
    return float((got.double() - want.double()).norm() / want.double().norm())


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_precisions_against_float64(backend, dtype, tol):
    x, mu, logvar = inputs(300, 300, 24, dtype)
    got = fwd_bwd(backend, x, mu, logvar, "mss")
    want = fwd_bwd("reference", *(t.detach().double().requires_grad_() for t in (x, mu, logvar)), "mss")
    for g, w in zip(got, want):
        assert g.dtype == dtype
        assert torch.isfinite(g).all()
        assert rel_err(g, w) < tol


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_large_batch_streams(backend):
    """B = 65536 components (the reference's [Q, B, D] tensor would need 65536^2 * D elements)."""
    Q, B, D = 256, 65536, 8
    x, mu, logvar = inputs(Q, B, D, torch.float32)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    got = fwd_bwd(backend, x, mu, logvar)
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < 64 * (Q + B) * D * 4  # O((Q + B) D), far from Q * B * D * 4 = 512 MiB
    want = fwd_bwd("reference", *(t.detach().double().requires_grad_() for t in (x, mu, logvar)))
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-4


def test_default_backend_on_cuda_is_fused():
    assert select_backend(torch.device("cuda"), None) in ("triton", "cuda")
