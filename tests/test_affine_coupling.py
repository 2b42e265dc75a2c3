"""msvae.ops.affine_coupling: the reference by hand, every fused backend against the float64 reference."""
import math

import pytest
import torch
from conftest import HAS_CUDA, fused_cases

from msvae.ops import affine_coupling
from msvae.ops.affine_coupling import _fused, _fused_backward

CASES = fused_cases()
ALL = [("reference", "cpu")] + CASES
# 1001: whole SIMD vectors and a ragged tail; 300 x 231: enough for the cpu backend's two threads
SHAPES = [(1,), (7,), (3, 5), (2, 3, 17), (1, 1001), (300, 231)]


def make_inputs(shape, dtype=torch.float64, device="cpu"):
    x = torch.randn(shape, dtype=dtype) * 2
    shift = torch.randn(shape, dtype=dtype)
    scale_raw = torch.randn(shape, dtype=dtype) * 3  # reaches the soft clamp
    return [t.to(device) for t in (x, shift, scale_raw)]


def values_and_grads(inputs, backend, inverse, clamp=2.0):
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    y, ld = affine_coupling(*inputs, clamp=clamp, inverse=inverse, backend=backend)
    g = torch.Generator().manual_seed(0)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    gl = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    return (y, ld, *torch.autograd.grad((y * gy).sum() + (ld * gl).sum(), inputs))


def test_reference_by_hand():
    x, t, r = (torch.tensor([v], dtype=torch.float64) for v in (1.5, -0.5, 3.0))
    s = 2.0 * math.tanh(1.5)
    y, ld = affine_coupling(x, t, r, clamp=2.0, backend="reference")
    torch.testing.assert_close(y, torch.tensor([1.5 * math.exp(s) - 0.5], dtype=torch.float64))
    torch.testing.assert_close(ld, torch.tensor([s], dtype=torch.float64))
    x_back, ld_back = affine_coupling(y, t, r, clamp=2.0, inverse=True, backend="reference")
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ld_back, -ld)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("clamp", [0.3, 2.0])
def test_fused_matches_reference_float64(backend, device, inverse, clamp):
    for shape in SHAPES:
        inputs = make_inputs(shape, device=device)
        got = values_and_grads(inputs, backend, inverse, clamp)
        want = values_and_grads([t.cpu() for t in inputs], "reference", inverse, clamp)
        for a, b in zip(got, want):
            assert a.shape == shape
            torch.testing.assert_close(a.cpu(), b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_round_trip(backend, device, dtype, tol):
    x, t, r = make_inputs((64, 9), dtype=dtype, device=device)
    y, ld = affine_coupling(x, t, r, backend=backend)
    x_back, ld_back = affine_coupling(y, t, r, inverse=True, backend=backend)
    torch.testing.assert_close(x_back, x, rtol=0, atol=tol * 10)
    torch.testing.assert_close(ld_back, -ld, rtol=0, atol=0)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("inverse", [False, True])
def test_logabsdet_is_log_jacobian_diagonal(backend, device, inverse):
    x, t, r = make_inputs((3, 4), device=device)
    jac = torch.autograd.functional.jacobian(
        lambda v: affine_coupling(v, t, r, inverse=inverse, backend=backend)[0], x).reshape(12, 12)
    assert torch.count_nonzero(jac - torch.diag(jac.diagonal())) == 0
    _, ld = affine_coupling(x, t, r, inverse=inverse, backend=backend)
    torch.testing.assert_close(ld.flatten(), jac.diagonal().abs().log(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("inverse", [False, True])
def test_gradcheck(backend, device, inverse):
    inputs = [t.requires_grad_() for t in make_inputs((2, 5), device=device)]
    assert torch.autograd.gradcheck(lambda *a: affine_coupling(*a, inverse=inverse, backend=backend), inputs)


@pytest.mark.parametrize("backend,device", CASES)
def test_soft_clamp_saturates(backend, device):
    x, t, r = make_inputs((40,), device=device)
    r = r.sign() * (r.abs() + 60.0)  # tanh = ±1 to double precision
    y, ld = affine_coupling(x, t, r, clamp=1.5, backend=backend)
    torch.testing.assert_close(ld.abs(), torch.full_like(ld, 1.5), rtol=0, atol=1e-15)
    torch.testing.assert_close(y, x * torch.exp(ld) + t, rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("backend,device", CASES)
def test_float32_close_to_float64(backend, device):
    inputs = [t.float() for t in make_inputs((300,), device=device)]
    for inverse in (False, True):
        got = values_and_grads(inputs, backend, inverse)
        want = values_and_grads([t.cpu().double() for t in inputs], "reference", inverse)
        for a, b in zip(got, want):
            assert a.dtype == torch.float32
            assert (a.cpu().double() - b).norm() <= 1e-6 * b.norm()


@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if HAS_CUDA else []))
def test_triton_half_precision(dtype):
    if not any(b == "triton" for b, _ in CASES):
        pytest.skip("triton backend not available")
    device = "cuda" if HAS_CUDA else "cpu"
    inputs = [t.to(dtype) for t in make_inputs((100,), device=device)]
    y, ld = affine_coupling(*inputs, backend="triton")
    ref_y, ref_ld = affine_coupling(*(t.double() for t in inputs), backend="reference")
    assert y.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 2e-2
    torch.testing.assert_close(y.double(), ref_y, rtol=tol, atol=tol)
    torch.testing.assert_close(ld.double(), ref_ld, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend,device", CASES)
def test_only_one_output_used(backend, device):
    inputs = make_inputs((4, 3), device=device)
    for pick in (0, 1):
        grads = []
        for name in (backend, "reference"):
            ins = [t.clone().requires_grad_() for t in inputs]
            out = affine_coupling(*ins, backend=name)[pick].sum()
            grads.append(torch.autograd.grad(out, ins, allow_unused=True, materialize_grads=True))
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,device", CASES)
def test_non_contiguous_inputs(backend, device):
    x, t, r = make_inputs((6, 5), device=device)
    x_t = x.t().contiguous().t()
    assert not x_t.is_contiguous()
    got = values_and_grads([x_t, t, r], backend, False)
    want = values_and_grads([x, t, r], "reference", False)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,device", CASES)
def test_opcheck(backend, device):
    x, t, r = (v.requires_grad_() for v in make_inputs((3, 7), device=device))
    for inverse in (False, True):
        torch.library.opcheck(_fused, (x, t, r, 2.0, inverse, backend))
        grads = [torch.randn_like(x), torch.randn_like(x)]
        torch.library.opcheck(_fused_backward, (*grads, x.detach(), t.detach(), r.detach(), 2.0, inverse, backend))


@pytest.mark.parametrize("backend,device", CASES)
def test_torch_compile_fullgraph(backend, device):
    inputs = [v.requires_grad_() for v in make_inputs((5, 3), device=device)]

    def loss(x, t, r):
        y, ld = affine_coupling(x, t, r, backend=backend)
        x_back, ld_back = affine_coupling(y * 1.1, t, r, inverse=True, backend=backend)
        return (x_back ** 2).sum() + ld.sum() + 2 * ld_back.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    for a, b in zip(torch.autograd.grad(compiled(*inputs), inputs), torch.autograd.grad(loss(*inputs), inputs)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", ["reference"] + [b for b, d in CASES if d == "cpu"])
@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.__setitem__(1, a[1][:, :2]), "shift must have the shape"),
    (lambda a: a.__setitem__(2, a[2][None]), "scale_raw must have the shape"),
    (lambda a: a.__setitem__(1, a[1].float()), "shift has dtype"),
    (lambda a: a.__setitem__(2, a[2].int()), "scale_raw must be a floating-point"),
    (lambda a: a.__setitem__(0, a[0].to("meta")), "x is on"),
    (lambda a: a[0].__setitem__((1, 1), float("nan")), "x contains NaN"),
    (lambda a: a[1].__setitem__((0, 2), float("inf")), "shift contains NaN"),
    (lambda a: a[2].__setitem__((2, 0), -float("inf")), "scale_raw contains NaN"),
])
def test_bad_tensors_raise(backend, mutate, match):
    args = make_inputs((3, 3))
    mutate(args)
    with pytest.raises(ValueError, match=match):
        affine_coupling(*args, backend=backend)


@pytest.mark.parametrize("kwargs,match", [
    (dict(clamp=0.0), "clamp"), (dict(clamp=-1.0), "clamp"), (dict(clamp=float("nan")), "clamp"),
    (dict(backend="cuda"), "cuda"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        affine_coupling(*make_inputs((2, 2)), **kwargs)
