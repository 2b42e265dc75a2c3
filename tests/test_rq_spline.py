"""msvae.ops.rq_spline: the reference against autograd Jacobians and round trips, every fused
backend against the float64 reference."""
import math

import pytest
import torch
from conftest import HAS_CUDA, fused_cases

from msvae.ops import reference, rq_spline, select_backend
from msvae.ops.rq_spline import SUPPORTED_BACKENDS, _fused, _fused_backward

CASES = fused_cases()
ALL = [("reference", "cpu")] + CASES
B = 3.0  # tail bound of the defaults
# (leading dims, C, K): scalar-like, single row, 2-D batches, odd C, the extreme bin counts, and
# enough elements for the cpu backend to split them across threads
SHAPES = [((), 1, 2), ((), 7, 5), ((1,), 3, 8), ((3, 5), 5, 4), ((4,), 33, 32), ((129,), 3, 2),
          ((41, 30), 3, 3)]


def make_inputs(lead, C, K, dtype=torch.float64, device="cpu", spread=1.2, scale=1.5):
    """x uniform on [-spread B, spread B] (so some fall in the tails) and raw parameters ~ N(0, scale^2)."""
    x = (torch.rand(*lead, C, dtype=dtype) * 2 - 1) * spread * B
    widths = torch.randn(*lead, C, K, dtype=dtype) * scale
    heights = torch.randn(*lead, C, K, dtype=dtype) * scale
    derivs = torch.randn(*lead, C, K - 1, dtype=dtype) * scale
    return [t.to(device) for t in (x, widths, heights, derivs)]


def values_and_grads(inputs, backend, inverse, seed=0):
    """(y, logabsdet, grads of a random linear functional of both wrt every input)."""
    inputs = [t.detach().clone().requires_grad_() for t in inputs]
    y, ld = rq_spline(*inputs, inverse=inverse, backend=backend)
    g = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    gl = torch.randn(y.shape, generator=g, dtype=torch.float64).to(y)
    grads = torch.autograd.grad((y * gy).sum() + (ld * gl).sum(), inputs)
    return (y, ld, *grads)


def assert_all_close(got, want, rtol, atol):
    for name, a, b in zip(("y", "logabsdet", "dx", "dwidths", "dheights", "dderivs"), got, want):
        torch.testing.assert_close(a.double(), b.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("inverse", [False, True])
def test_fused_matches_reference_float64(backend, device, inverse):
    for lead, C, K in SHAPES:
        if backend == "triton" and not HAS_CUDA and math.prod(lead) * C > 1000:
            continue  # the interpreter is slow
        inputs = make_inputs(lead, C, K, device=device)
        got = values_and_grads(inputs, backend, inverse)
        want = values_and_grads([t.cpu() for t in inputs], "reference", inverse)
        assert got[0].shape == inputs[0].shape and got[1].shape == inputs[0].shape
        assert_all_close([t.cpu() for t in got], want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("dtype,tol,scale", [(torch.float32, 1e-5, 0.5), (torch.float64, 1e-10, 1.5)])
def test_round_trip(backend, device, dtype, tol, scale):
    """The inverse amplifies y's rounding by 1 / slope, so float32 gets milder (flow-like) parameters."""
    x, w, h, d = make_inputs((50,), 7, 6, dtype=dtype, device=device, scale=scale)
    y, ld = rq_spline(x, w, h, d, backend=backend)
    x_back, ld_back = rq_spline(y, w, h, d, inverse=True, backend=backend)
    torch.testing.assert_close(x_back, x, rtol=0, atol=tol * B)
    torch.testing.assert_close(ld_back, -ld, rtol=0, atol=tol * 10)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("inverse", [False, True])
def test_logabsdet_is_log_jacobian_diagonal(backend, device, inverse):
    x, w, h, d = make_inputs((3,), 5, 7, device=device)
    jac = torch.autograd.functional.jacobian(
        lambda v: rq_spline(v, w, h, d, inverse=inverse, backend=backend)[0], x)
    jac = jac.reshape(x.numel(), x.numel())
    diag = jac.diagonal()
    assert torch.count_nonzero(jac - torch.diag(diag)) == 0  # elementwise
    _, ld = rq_spline(x, w, h, d, inverse=inverse, backend=backend)
    torch.testing.assert_close(ld.flatten(), diag.abs().log(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("inverse", [False, True])
def test_gradcheck(backend, device, inverse):
    inputs = [t.requires_grad_() for t in make_inputs((2,), 3, 4, device=device)]
    fn = lambda *a: rq_spline(*a, inverse=inverse, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("backend,device", CASES)
def test_tails_are_identity(backend, device):
    x, w, h, d = make_inputs((4,), 6, 5, device=device)
    x = torch.where(x > 0, x + 1.01 * B, x - 1.01 * B)  # every |x| > B
    for inverse in (False, True):
        y, ld, dx, dw, dh, dd = values_and_grads([x, w, h, d], backend, inverse)
        torch.testing.assert_close(y, x, rtol=0, atol=0)
        assert torch.count_nonzero(ld) == 0
        assert torch.count_nonzero(dw) + torch.count_nonzero(dh) + torch.count_nonzero(dd) == 0
        g = torch.Generator().manual_seed(0)
        torch.testing.assert_close(dx.cpu(), torch.randn(x.shape, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("backend,device", ALL)
@pytest.mark.parametrize("K", [2, 32])
def test_knots_and_bounds(backend, device, K):
    """Inputs exactly on every knot (interior knots, ±tail_bound) and on the edge bins' insides."""
    C = 3
    _, w, h, d = make_inputs((), C, K, device=device)
    knots, _ = reference.rq_spline_knots(w, 1e-3, B)  # [C, K + 1]
    y_knots, _ = reference.rq_spline_knots(h, 1e-3, B)
    inside_edges = torch.stack([knots[:, 0] + 1e-7, knots[:, -1] - 1e-7], dim=1)
    x = torch.cat([knots, inside_edges], dim=1)  # [C, K + 3]
    expand = lambda t: t[:, None].expand(C, x.shape[1], t.shape[-1]).contiguous()  # noqa: E731
    inputs = [x, expand(w), expand(h), expand(d)]
    y, ld, *grads = values_and_grads(inputs, backend, False)
    ref_y, ref_ld, *ref_grads = values_and_grads([t.cpu() for t in inputs], "reference", False)
    torch.testing.assert_close(y.cpu()[:, :K + 1], y_knots, rtol=1e-12, atol=1e-12)  # knots map to knots
    torch.testing.assert_close(y.cpu(), ref_y, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(ld.cpu(), ref_ld, rtol=1e-10, atol=1e-10)
    # log|dy/dx| at the ends: derivative 1
    torch.testing.assert_close(ld.cpu()[:, [0, K]], torch.zeros(C, 2, dtype=torch.float64), rtol=0, atol=1e-12)
    # y is C1 in x and the parameters, so its gradients agree whichever side of a knot a backend picks
    y_only = [t.detach().clone().requires_grad_() for t in inputs]
    ref_only = [t.detach().cpu().clone().requires_grad_() for t in inputs]
    for got, want in zip(torch.autograd.grad(rq_spline(*y_only, backend=backend)[0].sum(), y_only),
                         torch.autograd.grad(rq_spline(*ref_only, backend="reference")[0].sum(), ref_only)):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-8, atol=1e-8)
    x_back, _ = rq_spline(y, *inputs[1:], inverse=True, backend=backend)
    torch.testing.assert_close(x_back, x, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("K", [3, 8, 9])
def test_float32_close_to_float64(backend, device, K):
    """Relative error of float32 against float64 on the same (rounded) inputs; the eager float32
    reference itself reaches about 2e-5 on the inverse's gradients. 360 elements: full SIMD blocks
    and a partial one; K = 3 and 8 take the cpu backend's permute transpose (at most 8 columns)
    for every parameter, K = 9 for the derivatives only."""
    inputs = [t.float() for t in make_inputs((40,), 9, K, device=device, scale=1.0)]
    for inverse in (False, True):
        got = values_and_grads(inputs, backend, inverse)
        want = values_and_grads([t.cpu().double() for t in inputs], "reference", inverse)
        for a, b in zip(got, want):
            assert a.dtype == torch.float32
            assert (a.cpu().double() - b).norm() <= 5e-5 * b.norm()


@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if HAS_CUDA else []))
def test_triton_half_precision(dtype):
    if not any(b == "triton" for b, _ in CASES):
        pytest.skip("triton backend not available")
    device = "cuda" if HAS_CUDA else "cpu"
    x, w, h, d = make_inputs((16,), 5, 6, device=device)
    y, ld = rq_spline(x.to(dtype), w.to(dtype), h.to(dtype), d.to(dtype), backend="triton")
    rounded = [t.to(dtype).double() for t in (x, w, h, d)]
    ref_y, ref_ld = rq_spline(*rounded, backend="reference")
    assert y.dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(y.double(), ref_y, rtol=tol, atol=tol)
    torch.testing.assert_close(ld.double(), ref_ld, rtol=tol, atol=tol)


@pytest.mark.parametrize("backend,device", CASES)
def test_only_one_output_used(backend, device):
    inputs = make_inputs((5,), 3, 4, device=device)
    for pick in (0, 1):
        grads = []
        for name in (backend, "reference"):
            ins = [t.clone().requires_grad_() for t in inputs]
            out = rq_spline(*ins, backend=name)[pick]
            grads.append(torch.autograd.grad(out.sum(), ins))
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend,device", CASES)
def test_non_contiguous_inputs(backend, device):
    x, w, h, d = make_inputs((6,), 5, 4, device=device)
    x_t = x.t().contiguous().t()
    w_s = torch.cat([w, w], dim=-1)[..., ::2]
    assert not (x_t.is_contiguous() or w_s.is_contiguous())
    got = values_and_grads([x_t, w_s, h, d], backend, False)
    want = values_and_grads([x, w_s.contiguous(), h, d], "reference", False)
    assert_all_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend,device", CASES)
def test_opcheck(backend, device):
    x, w, h, d = (t.requires_grad_() for t in make_inputs((3,), 5, 4, device=device))
    for inverse in (False, True):
        args = (x, w, h, d, B, inverse, 1e-3, 1e-3, 1e-3, backend)
        torch.library.opcheck(_fused, args)
        grads = [torch.randn_like(x), torch.randn_like(x)]
        torch.library.opcheck(_fused_backward, (*grads, *(t.detach() for t in (x, w, h, d)), *args[4:]))


@pytest.mark.parametrize("backend,device", CASES)
def test_torch_compile_fullgraph(backend, device):
    inputs = [t.requires_grad_() for t in make_inputs((4,), 3, 5, device=device)]

    def loss(x, w, h, d):
        y, ld = rq_spline(x, w, h, d, backend=backend)
        x_back, ld_back = rq_spline(y * 0.9, w, h, d, inverse=True, backend=backend)
        return (x_back ** 2).sum() + ld.sum() + ld_back.sum()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*inputs), inputs)
    want = torch.autograd.grad(loss(*inputs), inputs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_default_backend(monkeypatch):
    if not any(b == "cpu" for b, _ in CASES):
        pytest.skip("cpu backend not built")
    cpu = torch.device("cpu")
    assert select_backend(cpu, None, SUPPORTED_BACKENDS) == "cpu"
    monkeypatch.setenv("MSVAE_BACKEND", "cuda")  # a backend this op lacks: back to the default
    assert select_backend(cpu, None, SUPPORTED_BACKENDS) == "cpu"
    monkeypatch.setenv("MSVAE_BACKEND", "reference")
    assert select_backend(cpu, None, SUPPORTED_BACKENDS) == "reference"


def test_empty_input():
    for backend, device in ALL:
        x, w, h, d = make_inputs((0,), 3, 4, device=device)
        y, ld = rq_spline(x, w, h, d, backend=backend)
        assert y.shape == ld.shape == (0, 3)


def test_matches_durkan_formulas_by_hand():
    """One element, K = 2 with equal bins: y in the first bin from the paper's formula."""
    x = torch.tensor([-1.0], dtype=torch.float64)
    zeros = torch.zeros(1, 2, dtype=torch.float64)
    d_raw = torch.full((1, 1), math.log(math.e - 1), dtype=torch.float64)  # softplus = 1
    y, ld = rq_spline(x, zeros, zeros, d_raw, min_derivative=0.0, backend="reference")
    # bins [-3, 0] -> [-3, 0], all derivatives 1, s = 1: the identity
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ld, torch.zeros(1, dtype=torch.float64))
    heights = torch.tensor([[math.log(3.0), 0.0]], dtype=torch.float64)  # heights 4.5 and 1.5 (min 0)
    y, ld = rq_spline(x, zeros, heights, d_raw, min_bin_width=0.0, min_bin_height=0.0,
                      min_derivative=0.0, backend="reference")
    xi, s, d0, d1 = 2 / 3, 1.5, 1.0, 1.0
    den = s + (d0 + d1 - 2 * s) * xi * (1 - xi)
    want = -3 + 4.5 * (s * xi ** 2 + d0 * xi * (1 - xi)) / den
    slope = s ** 2 * (d1 * xi ** 2 + 2 * s * xi * (1 - xi) + d0 * (1 - xi) ** 2) / den ** 2
    torch.testing.assert_close(y, torch.tensor([want], dtype=torch.float64))
    torch.testing.assert_close(ld, torch.tensor([math.log(slope)], dtype=torch.float64))


# ---- bad input -------------------------------------------------------------------------------

def _good():
    return make_inputs((2,), 3, 4)


@pytest.mark.parametrize("backend", ["reference"] + [b for b, d in CASES if d == "cpu"])
@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.__setitem__(1, a[1][..., :3].contiguous()), "heights_raw"),
    (lambda a: a.__setitem__(1, a[1][:1]), "widths_raw"),
    (lambda a: a.__setitem__(3, a[3][..., :2]), "derivs_raw"),
    (lambda a: a.__setitem__(2, a[2][..., :3]), "heights_raw"),
    (lambda a: [a.__setitem__(i, a[i][..., :1]) for i in (1, 2)] and a.__setitem__(3, a[3][..., :0]), "K >= 2"),
    (lambda a: a.__setitem__(2, a[2].float()), "heights_raw has dtype"),
    (lambda a: a.__setitem__(0, a[0].long()), "x must be a floating-point"),
    (lambda a: a.__setitem__(0, a[0].to("meta")), "x is on"),
    (lambda a: a[0].__setitem__((0, 1), float("nan")), "x contains NaN"),
    (lambda a: a[3].__setitem__((1, 2, 2), float("inf")), "derivs_raw contains NaN"),
    (lambda a: a[1].__setitem__((0, 0, 0), -float("inf")), "widths_raw contains NaN"),
    (lambda a: a.__setitem__(0, a[0].tolist()), "x must be a torch.Tensor"),
])
def test_bad_tensors_raise(backend, mutate, match):
    args = _good()
    mutate(args)
    with pytest.raises(ValueError, match=match):
        rq_spline(*args, backend=backend)


@pytest.mark.parametrize("kwargs,match", [
    (dict(tail_bound=0.0), "tail_bound"), (dict(tail_bound=-1.0), "tail_bound"),
    (dict(tail_bound=float("inf")), "tail_bound"), (dict(min_bin_width=0.25), "min_bin_width"),
    (dict(min_bin_height=0.3), "min_bin_height"), (dict(min_bin_width=-0.1), "min_bin_width"),
    (dict(min_derivative=-1.0), "min_derivative"), (dict(backend="cuda"), "cuda"),
    (dict(backend="nope"), "backend"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rq_spline(*_good(), **kwargs)


def test_cpu_backend_rejects_half():
    if not any(b == "cpu" for b, _ in CASES):
        pytest.skip("cpu backend not built")
    with pytest.raises(ValueError, match="float16"):
        rq_spline(*(t.half() for t in _good()), backend="cpu")
