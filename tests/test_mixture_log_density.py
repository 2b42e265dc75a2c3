"""msvae.ops.mixture_log_density: every fused backend against the float64 reference."""
import importlib
import math

import pytest
import torch
from conftest import HAS_CUDA, fused_cases

from msvae.ops import mixture_log_density, mixture_weights
from msvae.ops.mixture_log_density import _fused, _fused_backward
from msvae.ops.reference import log_weight_matrix

# The module (its name is shadowed by the function in msvae.ops), for monkeypatching.
mld = importlib.import_module("msvae.ops.mixture_log_density")

CASES = fused_cases()
N = 1000  # dataset size used by the MWS / MSS schemes
SHAPES = [(1, 1, 1), (2, 2, 1), (1, 3, 2), (3, 5, 1), (7, 7, 3), (17, 9, 5), (33, 40, 11),
          (64, 64, 10), (5, 300, 7), (260, 258, 3)]


def small(shapes, backend):
    """The interpreted Triton backend gets the cheaper shapes only."""
    if backend == "triton" and not HAS_CUDA:
        return [s for s in shapes if s[0] * s[1] * s[2] <= 40_000]
    return shapes


def make_inputs(Q, B, D, dtype=torch.float64, device="cpu", requires_grad=False):
    x = torch.randn(Q, D, dtype=dtype, device=device)
    mu = torch.randn(B, D, dtype=dtype, device=device)
    logvar = torch.empty(B, D, dtype=dtype, device=device).uniform_(-3.0, 1.0)
    return [t.requires_grad_(requires_grad) for t in (x, mu, logvar)]


def schemes_for(Q, B):
    return ["mws", "uniform"] + (["mss"] if Q == B else [])


def reference_outputs(x, mu, logvar, weights):
    return mixture_log_density(x.double(), mu.double(), logvar.double(), weights=weights,
                               dataset_size=N, backend="reference")


@pytest.mark.parametrize("backend,device", CASES)
def test_values_match_reference_float64(backend, device):
    for Q, B, D in small(SHAPES, backend):
        for weights in schemes_for(Q, B):
            x, mu, logvar = make_inputs(Q, B, D, device=device)
            joint, marginal = mixture_log_density(x, mu, logvar, weights=weights, dataset_size=N,
                                                  backend=backend)
            ref_joint, ref_marginal = reference_outputs(x, mu, logvar, weights)
            assert joint.shape == (Q,) and marginal.shape == (Q, D)
            torch.testing.assert_close(joint, ref_joint, rtol=1e-10, atol=1e-10)
            torch.testing.assert_close(marginal, ref_marginal, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend,device", CASES)
def test_gradients_match_reference_float64(backend, device):
    for Q, B, D in small(SHAPES, backend):
        for weights in schemes_for(Q, B):
            inputs = make_inputs(Q, B, D, device=device, requires_grad=True)
            grad_joint = torch.randn(Q, dtype=torch.float64, device=device)
            grad_marginal = torch.randn(Q, D, dtype=torch.float64, device=device)
            grads = {}
            for name in (backend, "reference"):
                joint, marginal = mixture_log_density(*inputs, weights=weights, dataset_size=N,
                                                      backend=name)
                grads[name] = torch.autograd.grad((joint * grad_joint).sum()
                                                  + (marginal * grad_marginal).sum(), inputs)
            for got, want in zip(grads[backend], grads["reference"]):
                torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend,device", CASES)
@pytest.mark.parametrize("shape,weights", [((1, 1, 1), "mws"), ((2, 2, 1), "mss"), ((1, 1, 3), "mss"),
                                           ((4, 3, 2), "uniform"), ((5, 5, 3), "mss"),
                                           ((3, 6, 5), "mws")])
def test_gradcheck(backend, device, shape, weights):
    inputs = make_inputs(*shape, device=device, requires_grad=True)
    fn = lambda *a: mixture_log_density(*a, weights=weights, dataset_size=N, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("backend,device", CASES)
def test_only_one_output_used(backend, device):
    """Autograd passes None for an unused output; the backward must treat it as zero."""
    inputs = make_inputs(9, 9, 4, device=device, requires_grad=True)
    for pick in (0, 1):
        grads = []
        for name in (backend, "reference"):
            out = mixture_log_density(*inputs, weights="mss", dataset_size=N, backend=name)[pick]
            grads.append(torch.autograd.grad(out.sum(), inputs))
        for got, want in zip(*grads):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend,device", CASES)
def test_float32_close_to_float64(backend, device):
    Q, B, D = (40, 40, 6) if backend == "triton" and not HAS_CUDA else (700, 700, 10)
    x, mu, logvar = make_inputs(Q, B, D, dtype=torch.float32, device=device, requires_grad=True)
    joint, marginal = mixture_log_density(x, mu, logvar, weights="mss", dataset_size=N,
                                          backend=backend)
    (joint.sum() + marginal.sum()).backward()
    x64, mu64, lv64 = (t.detach().double().requires_grad_() for t in (x, mu, logvar))
    ref_joint, ref_marginal = mixture_log_density(x64, mu64, lv64, weights="mss", dataset_size=N,
                                                  backend="reference")
    (ref_joint.sum() + ref_marginal.sum()).backward()
    assert joint.dtype == torch.float32
    torch.testing.assert_close(joint.double(), ref_joint, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(marginal.double(), ref_marginal, rtol=1e-5, atol=1e-4)
    for got, want in ((x.grad, x64.grad), (mu.grad, mu64.grad), (logvar.grad, lv64.grad)):
        rel = (got.double() - want).norm() / want.norm()
        assert rel < 1e-5


@pytest.mark.parametrize("backend,device", CASES)
def test_non_contiguous_inputs(backend, device):
    Q, B, D = 12, 10, 5
    x = torch.randn(D, Q, dtype=torch.float64, device=device).t()
    mu = torch.randn(2 * B, D, dtype=torch.float64, device=device)[::2]
    logvar = torch.randn(B, 2 * D, dtype=torch.float64, device=device)[:, 1::2]
    assert not (x.is_contiguous() or mu.is_contiguous() or logvar.is_contiguous())
    inputs = [t.requires_grad_() for t in (x, mu, logvar)]
    results = []
    for name in (backend, "reference"):
        joint, marginal = mixture_log_density(*inputs, weights="mws", dataset_size=N, backend=name)
        grads = torch.autograd.grad(joint.sum() + marginal.pow(2).sum(), inputs)
        results.append((joint, marginal, *grads))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_cpu_backward_across_column_panels(monkeypatch):
    """A tiny scratch budget forces the cpu backward through several column panels (and a ragged
    last one); the problem is big enough (Q B D >= 2^19) for two threads, whose buffers are summed."""
    if ("cpu", "cpu") not in CASES:
        pytest.skip("cpu backend not built")
    monkeypatch.setattr(mld, "CPU_SCRATCH_BYTES", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    inputs = make_inputs(90, 2000, 3, requires_grad=True)
    grads = []
    for name in ("cpu", "reference"):
        joint, marginal = mixture_log_density(*inputs, weights="mws", dataset_size=10 * N, backend=name)
        grads.append(torch.autograd.grad(joint.sum() + 2 * marginal.sum(), inputs))
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# ---- the weighting schemes --------------------------------------------------------------

@pytest.mark.parametrize("B", [1, 2, 3, 8, 64])
def test_mss_weights_rows_sum_to_one_and_diagonal(B):
    scheme, base, diag, nxt = mixture_weights("mss", B, B, N)
    lw = log_weight_matrix(scheme, base, diag, nxt, B, B, torch.float64, "cpu")
    torch.testing.assert_close(lw.exp().sum(1), torch.ones(B, dtype=torch.float64))
    if B > 1:
        M = B - 1
        rows = torch.arange(B)
        torch.testing.assert_close(lw[rows, rows].exp(), torch.full((B,), 1 / N, dtype=torch.float64))
        torch.testing.assert_close(lw[rows, (rows + 1) % B].exp(),
                                   torch.full((B,), (N - M) / (N * M), dtype=torch.float64))
        if B > 2:  # everything else is 1/M, and column 0 is not special
            other = torch.ones(B, B, dtype=torch.bool)
            other[rows, rows] = False
            other[rows, (rows + 1) % B] = False
            torch.testing.assert_close(lw[other].exp(), torch.full((int(other.sum()),), 1 / M,
                                                                   dtype=torch.float64))


@pytest.mark.parametrize("backend,device", CASES + [("reference", "cpu")])
def test_kernel_applies_mss_weights_on_the_diagonal(backend, device):
    """Well-separated unit-variance components: only the matching component contributes, so
    joint - log N(0; 0, 1)*D reads off the weight of that (row, column) pair."""
    B, D = 6, 2
    centres = 30.0 * torch.arange(B, dtype=torch.float64, device=device)[:, None].expand(B, D)
    mu, logvar = centres.contiguous(), torch.zeros(B, D, dtype=torch.float64, device=device)
    peak = -0.5 * math.log(2 * math.pi) * D
    M = B - 1
    joint, _ = mixture_log_density(centres.contiguous(), mu, logvar, weights="mss", dataset_size=N,
                                   backend=backend)
    torch.testing.assert_close(joint - peak, torch.full_like(joint, -math.log(N)))
    # Rolling the components by one puts each query on its (i + 1) mod B column.
    joint, _ = mixture_log_density(centres.contiguous(), mu.roll(1, 0).contiguous(), logvar,
                                   weights="mss", dataset_size=N, backend=backend)
    torch.testing.assert_close(joint - peak, torch.full_like(joint, math.log((N - M) / (N * M))))


@pytest.mark.parametrize("backend,device", CASES + [("reference", "cpu")])
def test_mss_with_the_first_rows_as_queries_is_those_rows_of_the_whole_batch(backend, device):
    """MSS queries may be the batch's first Q < B rows (a rank's own rows of a global batch,
    rotated to the front): values and gradients are those rows' of the Q = B computation."""
    x, mu, logvar = (t.to(device).requires_grad_() for t in make_inputs(9, 9, 3))
    joint, marginal = mixture_log_density(x, mu, logvar, weights="mss", dataset_size=N, backend=backend)
    part_joint, part_marginal = mixture_log_density(x[:4], mu, logvar, weights="mss", dataset_size=N,
                                                    backend=backend)
    torch.testing.assert_close(part_joint, joint[:4])
    torch.testing.assert_close(part_marginal, marginal[:4])
    whole = torch.autograd.grad((joint[:4].sum() + marginal[:4].sum()), (mu, logvar))
    part = torch.autograd.grad((part_joint.sum() + part_marginal.sum()), (mu, logvar))
    for a, b in zip(whole, part):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("backend,device", CASES)
def test_weights_in_kernel_sum_to_one(backend, device):
    """Identical components: joint = logsumexp_j lw(i, j) + sum_d f_d, which is sum_d f_d for MSS."""
    B, D = 7, 3
    x = torch.zeros(B, D, dtype=torch.float64, device=device)
    joint, marginal = mixture_log_density(x, x, x, weights="mss", dataset_size=N, backend=backend)
    peak = -0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(joint, torch.full_like(joint, peak * D))
    torch.testing.assert_close(marginal, torch.full_like(marginal, peak))


# ---- torch.library registration ----------------------------------------------------------

@pytest.mark.parametrize("backend,device", [c for c in CASES if c[0] != "triton" or HAS_CUDA])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_opcheck(backend, device, dtype):
    for Q, B, D, scheme in ((5, 5, 3, "mss"), (4, 7, 2, "mws")):
        x, mu, logvar = make_inputs(Q, B, D, dtype=dtype, device=device, requires_grad=True)
        w = mixture_weights(scheme, Q, B, N)
        torch.library.opcheck(_fused, (x, mu, logvar, *w, backend))
        joint, marginal = _fused(x, mu, logvar, *w, backend)
        grads = (torch.randn_like(joint), torch.randn_like(marginal))
        torch.library.opcheck(_fused_backward, (*grads, x.detach(), mu.detach(), logvar.detach(),
                                                joint.detach(), marginal.detach(), *w, backend))


@pytest.mark.parametrize("backend,device", [c for c in CASES if c[0] != "triton" or HAS_CUDA])
def test_torch_compile_fullgraph(backend, device):
    def tc_estimate(z, mu, logvar):
        joint, marginal = mixture_log_density(z, mu, logvar, weights="mss", dataset_size=N,
                                              backend=backend)
        return (joint - marginal.sum(1)).mean()

    inputs = make_inputs(16, 16, 4, dtype=torch.float32, device=device, requires_grad=True)
    compiled = torch.compile(tc_estimate, fullgraph=True)
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    want = tc_estimate(*inputs)
    want_grads = torch.autograd.grad(want, inputs)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w)


# ---- bad input -------------------------------------------------------------------------

def _good(Q=4, B=4, D=3):
    return make_inputs(Q, B, D)


@pytest.mark.parametrize("backend", ["reference"] + [c[0] for c in CASES if c[1] == "cpu"])
@pytest.mark.parametrize("mutate,kwargs,match", [
    (lambda x, mu, lv: (x[0], mu, lv), {}, r"^x must be 2-D"),
    (lambda x, mu, lv: (x, mu[None], lv), {}, r"^mu must be 2-D"),
    (lambda x, mu, lv: (x, mu, lv.flatten()), {}, r"^logvar must be 2-D"),
    (lambda x, mu, lv: (x[:, :2], mu, lv), {}, r"x has D=2 but mu and logvar have D=3"),
    (lambda x, mu, lv: (x, mu, lv[:3]), {}, r"mu and logvar must have the same shape"),
    (lambda x, mu, lv: (x.float(), mu, lv), {}, r"^mu has dtype torch.float64 but x has torch.float32"),
    (lambda x, mu, lv: (x, mu, lv.float()), {}, r"^logvar has dtype"),
    (lambda x, mu, lv: (x.long(), mu, lv), {}, r"^x must be a floating-point"),
    (lambda x, mu, lv: (x, mu.to("meta"), lv), {}, r"^mu is on meta but x is on cpu"),
    (lambda x, mu, lv: (x[:0], mu, lv), {}, r"^x must be non-empty"),
    (lambda x, mu, lv: (x.numpy(), mu, lv), {}, r"^x must be a torch.Tensor"),
    (lambda x, mu, lv: (x, mu, lv), {"weights": "mws", "dataset_size": None}, r"dataset_size is required"),
    (lambda x, mu, lv: (x, mu, lv), {"weights": "mss", "dataset_size": None}, r"dataset_size is required"),
    (lambda x, mu, lv: (x, mu, lv), {"dataset_size": 3}, r"dataset_size must be >= the batch size B=4"),
    (lambda x, mu, lv: (x, mu, lv), {"dataset_size": 10.0}, r"dataset_size must be an int"),
    (lambda x, mu, lv: (x, mu, lv), {"weights": "stratified"}, r"weights must be one of"),
    (lambda x, mu, lv: (torch.cat([x, x]), mu, lv), {"weights": "mss"}, r"needs the queries to be rows of the batch"),
])
def test_bad_input_raises_value_error(backend, mutate, kwargs, match):
    x, mu, logvar = _good()
    kwargs = {"weights": "mws", "dataset_size": 100, **kwargs}
    with pytest.raises(ValueError, match=match):
        mixture_log_density(*mutate(x, mu, logvar), backend=backend, **kwargs)


@pytest.mark.parametrize("backend", ["reference"] + [c[0] for c in CASES if c[1] == "cpu"])
@pytest.mark.parametrize("name", ["x", "mu", "logvar"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_raises_and_leaves_inputs_intact(backend, name, bad):
    inputs = dict(zip(("x", "mu", "logvar"), _good()))
    inputs[name][1, 2] = bad
    before = {k: v.clone() for k, v in inputs.items()}
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or Inf"):
        mixture_log_density(**inputs, weights="mws", dataset_size=100, backend=backend)
    for k in inputs:
        torch.testing.assert_close(inputs[k], before[k], equal_nan=True)


def test_backend_choice_errors():
    x, mu, logvar = _good()
    with pytest.raises(ValueError, match="backend must be one of"):
        mixture_log_density(x, mu, logvar, dataset_size=100, backend="fortran")
    if not HAS_CUDA:
        with pytest.raises(ValueError, match="backend 'cuda' is not available"):
            mixture_log_density(x, mu, logvar, dataset_size=100, backend="cuda")
    if ("cpu", "cpu") in CASES:
        with pytest.raises(ValueError, match="does not support"):
            mixture_log_density(x.half(), mu.half(), logvar.half(), dataset_size=100, backend="cpu")


def test_environment_variable_selects_backend(monkeypatch):
    from msvae.ops import select_backend
    monkeypatch.setenv("MSVAE_BACKEND", "reference")
    assert select_backend(torch.device("cpu"), None) == "reference"
    assert select_backend(torch.device("cpu"), "reference") == "reference"
    monkeypatch.delenv("MSVAE_BACKEND")
    expected = "cpu" if ("cpu", "cpu") in CASES else "reference"
    assert select_backend(torch.device("cpu"), None) == expected
    monkeypatch.setenv("MSVAE_BACKEND", "cuda")  # cannot serve CPU tensors: the default serves them
    assert select_backend(torch.device("cpu"), None) == expected
    monkeypatch.setenv("MSVAE_BACKEND", "fortran")
    with pytest.raises(ValueError, match="MSVAE_BACKEND must be one of"):
        select_backend(torch.device("cpu"), None)


# ---- property-based: random shapes, schemes and scales ------------------------------------

from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(Q=st.integers(1, 40), B=st.integers(1, 300), D=st.integers(1, 9),
       weights=st.sampled_from(["mws", "mss", "uniform"]), scale=st.floats(0.01, 30.0),
       seed=st.integers(0, 2 ** 31 - 1))
def test_cpu_matches_reference_on_random_problems(Q, B, D, weights, scale, seed):
    if ("cpu", "cpu") not in CASES:
        pytest.skip("cpu backend not built")
    if weights == "mss":
        Q = B
    g = torch.Generator().manual_seed(seed)
    x = scale * torch.randn(Q, D, dtype=torch.float64, generator=g)
    mu = scale * torch.randn(B, D, dtype=torch.float64, generator=g)
    logvar = torch.empty(B, D, dtype=torch.float64).uniform_(-8.0, 4.0, generator=g)
    inputs = [t.requires_grad_() for t in (x, mu, logvar)]
    results = []
    for name in ("cpu", "reference"):
        joint, marginal = mixture_log_density(*inputs, weights=weights, dataset_size=10 ** 6, backend=name)
        results.append((joint, marginal, *torch.autograd.grad(joint.sum() + marginal.sum(), inputs)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


# ---- extreme inputs: no sentinel leaks, finite wherever the reference is, logvar's range ------

def _cpu_and_reference(x, mu, logvar, weights, dataset_size=1000):
    """Values and gradients of the cpu backend (in the inputs' dtype) and of the float64 reference
    on the same inputs: two lists (joint, marginal, dx, dmu, dlogvar)."""
    results = []
    for backend, dtype in (("cpu", x.dtype), ("reference", torch.float64)):
        inputs = [t.detach().to(dtype).requires_grad_() for t in (x, mu, logvar)]
        joint, marginal = mixture_log_density(*inputs, weights=weights, dataset_size=dataset_size,
                                              backend=backend)
        grads = torch.autograd.grad(joint.sum() + marginal.sum(), inputs)
        results.append([t.double() for t in (joint.detach(), marginal.detach(), *grads)])
    return results


def _needs_cpu():
    if ("cpu", "cpu") not in CASES:
        pytest.skip("cpu backend not built")


def test_a_log_density_far_below_minus_1e30_is_returned_not_a_sentinel():
    _needs_cpu()
    x, mu = torch.zeros(1, 1), torch.full((1, 1), 1e3)  # -0.5 * 1e6 * e^60: about -5.7e31
    logvar = torch.full((1, 1), -60.0)
    got, want = _cpu_and_reference(x, mu, logvar, "uniform")
    assert float(want[0]) < -1e31
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=0.0)


def test_cpu_backward_is_finite_where_the_reference_is():
    _needs_cpu()
    torch.manual_seed(0)
    mu = x = torch.randn(8, 3)
    got, want = _cpu_and_reference(x, mu, torch.full_like(mu, -30.0), "mss")
    for g, w in zip(got, want):
        assert torch.isfinite(w).all() and torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * float(w.abs().max()) + 1e-12)


@pytest.mark.parametrize("backend", ["reference"] + [c[0] for c in CASES if c[1] == "cpu"])
@pytest.mark.parametrize("dtype, limit", [(torch.float32, 60.0), (torch.float64, 600.0)])
def test_logvar_outside_its_documented_range_is_refused(backend, dtype, limit):
    x = mu = torch.zeros(2, 2, dtype=dtype)
    for bad in (-1000.0, -(limit + 1), limit + 1):
        logvar = torch.full((2, 2), bad, dtype=dtype)
        with pytest.raises(ValueError, match=rf"logvar must lie in \[-{limit:g}, {limit:g}\] for {dtype}"):
            mixture_log_density(x, mu, logvar, weights="uniform", backend=backend)
    joint, _ = mixture_log_density(x, mu, torch.full((2, 2), -limit, dtype=dtype), weights="uniform",
                                   backend=backend)
    assert torch.isfinite(joint).all()


@settings(max_examples=60, deadline=None)
@given(Q=st.integers(1, 20), B=st.integers(1, 300), D=st.integers(1, 6),
       weights=st.sampled_from(["mws", "mss", "uniform"]), far=st.floats(0.0, 1e3),
       low=st.floats(-60.0, 60.0), width=st.floats(0.0, 20.0), double=st.booleans(),
       seed=st.integers(0, 2 ** 31 - 1))
def test_cpu_matches_reference_at_extreme_logvar_and_far_away_x(Q, B, D, weights, far, low, width,
                                                                double, seed):
    """Across logvar's whole float32 range and queries up to 1e3 from the components: the float64
    backend agrees with the reference; the float32 one is finite wherever the reference is, with
    log-densities within float32 rounding of the terms they sum."""
    _needs_cpu()
    if weights == "mss":
        Q = B
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    mu = torch.randn(B, D, dtype=torch.float64, generator=g)
    x = (torch.randn(Q, D, dtype=torch.float64, generator=g) + far).to(dtype)
    logvar = (low + width * torch.rand(B, D, dtype=torch.float64, generator=g)).clamp(-60, 60).to(dtype)
    got, want = _cpu_and_reference(x, mu.to(dtype), logvar, weights, dataset_size=10 ** 6)
    for name, g_, w in zip(("joint", "marginal", "dx", "dmu", "dlogvar"), got, want):
        finite = torch.isfinite(w)
        assert torch.isfinite(g_[finite]).all(), name
        if double:
            torch.testing.assert_close(g_, w, rtol=1e-7, atol=1e-7 * float(w.abs().max()), msg=name)
        elif name in ("joint", "marginal"):  # float32: relative to the size of the summed terms
            scale = float(w.abs().max()) + 1.0
            torch.testing.assert_close(g_, w, rtol=1e-4, atol=1e-5 * scale * D, msg=name)
