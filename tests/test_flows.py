"""msvae.flows: exact inversion, log-determinants against autograd Jacobians, sampling,
ActNorm initialisation, density fitting on toy 2-D data, and bad input."""
import itertools
import math

import pytest
import torch

from msvae.flows import (ActNorm, AffineCoupling, AffineCoupling2d, ComposedTransform,
                         ConditionalFlow, InvertibleConv1x1, MultiScaleFlow, RandomPermutation,
                         ReversePermutation, SplineCoupling, SplineCoupling2d, TriangularAffine,
                         bits_per_dim, dequantize, quantize, squeeze, unsqueeze)

C, DC, B = 5, 3, 7          # vector features, context features, batch (odd on purpose)
IC, IDC, H, W = 4, 2, 6, 4  # image channels, context channels, height, width


def perturbed(module, scale=0.1):
    """``module`` with every parameter moved off its (often identity) initial value."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module


def vector_cases(context):
    dc = DC if context else None
    mask = torch.tensor([True, False, True, True, False])
    return {
        "affine": lambda: AffineCoupling(C, dc, mask=mask, hidden=16),
        "spline": lambda: SplineCoupling(C, dc, mask=mask, hidden=16, bins=5, tail_bound=2.0),
        "spline_half": lambda: SplineCoupling(C, dc, hidden=16, bins=3),
        "actnorm": lambda: ActNorm(C),
        "triangular": lambda: TriangularAffine(C),
        "reverse": lambda: ReversePermutation(C),
        "random": lambda: RandomPermutation(C, seed=3),
        "conv1x1": lambda: InvertibleConv1x1(C, seed=1),
        "composed": lambda: ComposedTransform([ActNorm(C), AffineCoupling(C, dc, hidden=8),
                                               RandomPermutation(C),
                                               SplineCoupling(C, dc, hidden=8, bins=4)]),
    }


def image_cases(context):
    dc = IDC if context else None
    return {
        "affine_channel": lambda: AffineCoupling2d(IC, dc, "channel", 0, hidden=8),
        "affine_checker": lambda: AffineCoupling2d(IC, dc, "checkerboard", 1, hidden=8),
        "spline_channel": lambda: SplineCoupling2d(IC, dc, "channel", 1, hidden=8, bins=4),
        "spline_checker": lambda: SplineCoupling2d(IC, dc, "checkerboard", 0, hidden=8, bins=4,
                                                   tail_bound=2.0),
        "odd_channels": lambda: AffineCoupling2d(3, dc, "channel", 1, hidden=8),
        "actnorm": lambda: ActNorm(IC),
        "conv1x1": lambda: InvertibleConv1x1(IC, seed=2),
    }


def make_inputs(kind, name, context, dtype, batch=B):
    if kind == "vector":
        x = 1.5 * torch.randn(batch, C, dtype=dtype)
        c = torch.randn(batch, DC, dtype=dtype) if context else None
    else:
        x = 1.5 * torch.randn(batch, 3 if name == "odd_channels" else IC, H, W, dtype=dtype)
        c = torch.randn(batch, IDC, H, W, dtype=dtype) if context else None
    return x, c


def build(kind, name, context, dtype):
    cases = vector_cases(context) if kind == "vector" else image_cases(context)
    return perturbed(cases[name]()).to(dtype)


ALL_CASES = [("vector", n) for n in vector_cases(False)] + [("image", n) for n in image_cases(False)]
TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-10}


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: one thread avoids oversubscription on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("context", [False, True])
@pytest.mark.parametrize("kind,name", ALL_CASES)
def test_round_trip_is_exact(kind, name, context, dtype):
    transform = build(kind, name, context, dtype)
    x, c = make_inputs(kind, name, context, dtype)
    y, ladj = transform(x, c)
    assert y.shape == x.shape and y.dtype == dtype and ladj.shape == (B,)
    x_back, ladj_back = transform.inverse(y, c)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(x_back, x, atol=tol, rtol=tol)
    torch.testing.assert_close(ladj_back, -ladj, atol=tol * 10, rtol=tol)
    if name not in ("reverse", "random"):
        assert not torch.allclose(y, x)  # the perturbed layer really moves its input


def jacobian_log_dets(function, x, c):
    """``log|det J|`` of ``function(x_i, c_i)`` for every sample ``i`` via autograd (float64)."""
    dets = []
    for i in range(x.shape[0]):
        ci = None if c is None else c[i:i + 1]
        jac = torch.autograd.functional.jacobian(lambda xi: function(xi[None], ci)[0][0], x[i])
        dets.append(torch.linalg.slogdet(jac.reshape(x[i].numel(), -1))[1])
    return torch.stack(dets)


@pytest.mark.parametrize("context", [False, True])
@pytest.mark.parametrize("kind,name", ALL_CASES)
def test_log_det_matches_autograd_jacobian(kind, name, context):
    transform = build(kind, name, context, torch.float64)
    x, c = make_inputs(kind, name, context, torch.float64, batch=3)
    y, ladj = transform(x, c)
    torch.testing.assert_close(ladj, jacobian_log_dets(transform, x, c))
    _, ladj_inverse = transform.inverse(y, c)
    torch.testing.assert_close(ladj_inverse, jacobian_log_dets(transform.inverse, y, c))


@pytest.mark.parametrize("context", [False, True])
def test_multiscale_flow_inverts_and_log_det_matches_jacobian(context):
    flow = perturbed(MultiScaleFlow(2, (4, 8), 1 if context else None, levels=2, steps=2,
                                    hidden=8, context_hidden=4, coupling="spline", bins=3),
                     0.1).double()
    x = torch.randn(3, 2, 4, 8, dtype=torch.float64)
    c = torch.rand(3, 1, 4, 8, dtype=torch.float64) if context else None
    z, ladj = flow(x, c)
    assert z.shape == (3, 64)
    x_back, ladj_back = flow.inverse(z, c)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(ladj_back, -ladj, atol=1e-9, rtol=1e-10)
    torch.testing.assert_close(ladj, jacobian_log_dets(flow, x, c))
    expected = -0.5 * (z ** 2).sum(1) - 32 * math.log(2 * math.pi) + ladj
    torch.testing.assert_close(flow.log_prob(x, c), expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_multiscale_flow_round_trip_affine(dtype):
    flow = perturbed(MultiScaleFlow(3, 8, 3, levels=3, steps=1, hidden=8, context_hidden=4),
                     0.03).to(dtype)
    x, c = torch.randn(4, 3, 8, 8, dtype=dtype), torch.rand(4, 3, 8, 8, dtype=dtype)
    z, ladj = flow(x, c)
    x_back, ladj_back = flow.inverse(z, c)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(x_back, x, atol=tol, rtol=tol)
    torch.testing.assert_close(ladj_back, -ladj, atol=tol * 100, rtol=tol)


def test_multiscale_latents_follow_the_splits():
    """With identity steps (fresh couplings, unit ActNorm) the latent is squeezes and splits of x."""
    flow = MultiScaleFlow(1, 4, levels=2, steps=1, hidden=4)
    with torch.no_grad():
        for scale in flow.scales:
            scale.transforms[1].lower.copy_(torch.eye(len(scale.transforms[1].sign)))
            scale.transforms[1].upper.zero_()
            scale.transforms[1].log_s.zero_()
            scale.transforms[1].permutation.copy_(torch.eye(len(scale.transforms[1].sign)))
            scale.transforms[1].sign.fill_(1.0)
            scale.transforms[0].initialized.fill_(True)
    x = torch.randn(2, 1, 4, 4)
    z, ladj = flow(x)
    first = squeeze(x)                       # [2, 4, 2, 2]
    second = squeeze(first[:, 2:])           # [2, 8, 1, 1]
    torch.testing.assert_close(z, torch.cat([first[:, :2].flatten(1), second.flatten(1)], 1))
    torch.testing.assert_close(ladj, torch.zeros(2))


def test_squeeze_moves_each_2x2_block_into_channels():
    x = torch.randn(2, 3, 6, 4)
    s = squeeze(x)
    assert s.shape == (2, 12, 3, 2)
    for c, i, j, h, w in [(0, 0, 0, 0, 0), (2, 1, 0, 2, 1), (1, 0, 1, 1, 0), (2, 1, 1, 2, 1)]:
        assert s[1, 4 * c + 2 * i + j, h, w] == x[1, c, 2 * h + i, 2 * w + j]
    torch.testing.assert_close(unsqueeze(s), x, atol=0, rtol=0)


@pytest.mark.parametrize("kind", ["vector", "image"])
@pytest.mark.parametrize("coupling", ["affine", "spline"])
def test_fresh_coupling_is_identity(kind, coupling):
    if kind == "vector":
        layer = (AffineCoupling if coupling == "affine" else SplineCoupling)(C, DC)
        x, c = torch.randn(4, C, dtype=torch.float64), torch.randn(4, DC, dtype=torch.float64)
    else:
        layer = (AffineCoupling2d if coupling == "affine" else SplineCoupling2d)(IC, IDC)
        x, c = (torch.randn(4, IC, H, W, dtype=torch.float64),
                torch.randn(4, IDC, H, W, dtype=torch.float64))
    y, ladj = layer.double()(x, c)
    torch.testing.assert_close(y, x, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ladj, torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("shape", [(37, 3), (9, 2, 5, 3)])
def test_actnorm_initialises_to_zero_mean_unit_variance(shape):
    norm = ActNorm(shape[1])
    x = 3.0 + 2.5 * torch.randn(*shape, dtype=torch.float64)
    y, ladj = norm.double()(x)
    per_channel = y.transpose(0, 1).reshape(shape[1], -1)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(shape[1], dtype=torch.float64))
    torch.testing.assert_close(per_channel.std(1, unbiased=False),
                               torch.ones(shape[1], dtype=torch.float64), atol=1e-6, rtol=1e-6)
    spatial = math.prod(shape[2:])
    std = x.transpose(0, 1).reshape(shape[1], -1).std(1, unbiased=False)
    torch.testing.assert_close(ladj, (-spatial * std.log().sum()).expand(shape[0]),
                               atol=1e-6, rtol=1e-6)
    # Later batches use the learned parameters, not their own statistics.
    y2, _ = norm(x[:4] + 10.0)
    scale = 1 / (std + norm.eps)
    torch.testing.assert_close(y2, y[:4] + 10.0 * scale.view(1, -1, *([1] * (len(shape) - 2))))
    assert bool(norm.state_dict()["initialized"])


def test_seeded_layers_are_reproducible_and_saved():
    assert torch.equal(RandomPermutation(9, seed=4).order, RandomPermutation(9, seed=4).order)
    assert not torch.equal(RandomPermutation(9, seed=4).order, RandomPermutation(9, seed=5).order)
    assert "order" in RandomPermutation(9).state_dict()
    conv = InvertibleConv1x1(6, seed=7)
    weight = conv.weight().double()
    torch.testing.assert_close(weight @ weight.T, torch.eye(6, dtype=torch.float64),
                               atol=1e-5, rtol=0)  # starts as a rotation: log-det 0
    torch.testing.assert_close(weight, InvertibleConv1x1(6, seed=7).weight().double())


# ---- ConditionalFlow: sampling ---------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("constructor", ["spline", "affine"])
def test_sample_shapes_and_context_broadcasting(constructor, dtype):
    flow = perturbed(getattr(ConditionalFlow, constructor)(3, 2, layers=3, hidden=8), 0.1).to(dtype)
    flow.log_prob(torch.randn(9, 3, dtype=dtype), torch.randn(9, 2, dtype=dtype))  # ActNorm init
    single = torch.randn(2, dtype=dtype)
    torch.manual_seed(0)
    shared = flow.sample(6, single)
    torch.manual_seed(0)
    expanded = flow.sample(6, single.expand(6, 2))
    assert shared.shape == (6, 3) and shared.dtype == dtype and not shared.requires_grad
    torch.testing.assert_close(shared, expanded)
    x, log_prob = flow.sample_and_log_prob(4, torch.randn(4, 2, dtype=dtype))
    assert x.shape == (4, 3) and log_prob.shape == (4,)
    x, log_prob = flow.sample_and_log_prob(5, single)
    torch.testing.assert_close(log_prob, flow.log_prob(x, single.expand(5, 2)),
                               atol=TOLERANCE[dtype] * 100, rtol=TOLERANCE[dtype] * 100)


def test_unconditional_flow_samples_and_one_feature_with_context():
    flow = ConditionalFlow.affine(4, layers=2, hidden=8).double()
    x = flow.sample(3)
    assert x.shape == (3, 4) and x.dtype == torch.float64
    one = perturbed(ConditionalFlow.spline(1, 2, layers=2, hidden=8), 0.1)
    one.log_prob(torch.randn(9, 1), torch.randn(9, 2))  # ActNorm init
    context = torch.randn(2)
    x, log_prob = one.sample_and_log_prob(5, context)
    assert x.shape == (5, 1)
    torch.testing.assert_close(log_prob, one.log_prob(x, context.expand(5, 2)))


def test_multiscale_sample_shapes_and_broadcasting():
    flow = perturbed(MultiScaleFlow(1, (4, 8), 2, levels=2, steps=1, hidden=4, context_hidden=4),
                     0.05)
    flow.log_prob(torch.randn(5, 1, 4, 8), torch.rand(5, 2, 4, 8))  # ActNorm init
    context = torch.rand(2, 4, 8)
    torch.manual_seed(1)
    shared = flow.sample(3, context)
    torch.manual_seed(1)
    expanded = flow.sample(3, context.expand(3, 2, 4, 8))
    assert shared.shape == (3, 1, 4, 8)
    torch.testing.assert_close(shared, expanded)
    x, log_prob = flow.sample_and_log_prob(3, context)
    torch.testing.assert_close(log_prob, flow.log_prob(x, context.expand(3, 2, 4, 8)),
                               atol=1e-3, rtol=1e-4)


def test_custom_base_distribution():
    base = torch.distributions.Independent(
        torch.distributions.Normal(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])), 1)
    flow = ConditionalFlow(2, transforms=[], base=base)
    x = torch.randn(6, 2)
    torch.testing.assert_close(flow.log_prob(x), base.log_prob(x))
    samples, log_prob = flow.sample_and_log_prob(4000)
    torch.testing.assert_close(log_prob, base.log_prob(samples))
    torch.testing.assert_close(samples.mean(0), base.mean, atol=0.15, rtol=0)
    with pytest.raises(ValueError, match="base must have event shape"):
        ConditionalFlow(3, base=base)


def test_dequantized_images_train_a_multiscale_flow_end_to_end():
    flow = perturbed(MultiScaleFlow(1, 4, 1, levels=2, steps=2, hidden=8, context_hidden=4))
    images = torch.randint(0, 4, (6, 1, 4, 4)).float() / 3
    y, ladj = dequantize(images, levels=4)
    log_prob_u = flow.log_prob(y, images.flip(-1)) + ladj
    bpd = bits_per_dim(log_prob_u, 16, levels=4).mean()
    bpd.backward()
    assert torch.isfinite(bpd)
    for name, p in flow.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ---- ConditionalFlow: fitting toy densities ---------------------------------------------------

def ring(n, radius, noise=0.1, generator=None):
    """Points at ``radius`` (a float or ``[n]``) in a uniform direction plus Gaussian noise."""
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    radius = torch.as_tensor(radius, dtype=torch.float32)
    circle = torch.stack([angle.cos(), angle.sin()], 1) * radius.reshape(-1, 1)
    return circle + noise * torch.randn(n, 2, generator=generator)


def fit(flow, next_batch, steps, lr=5e-3):
    """``steps`` Adam steps on the mean negative log-likelihood of ``next_batch() -> (x, context)``."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=lr)
    for _ in range(steps):
        x, c = next_batch()
        loss = -flow.log_prob(x, c).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return flow


def gaussian_nll(train, test):
    mean, covariance = train.mean(0), torch.cov(train.T, correction=0)
    return -torch.distributions.MultivariateNormal(mean, covariance).log_prob(test).mean()


def test_spline_flow_beats_a_full_covariance_gaussian_on_a_ring():
    generator = torch.Generator().manual_seed(0)
    train, test = ring(4096, 2.0, generator=generator), ring(2048, 2.0, generator=generator)
    batches = itertools.cycle(train[torch.randperm(len(train), generator=generator)].split(256))
    flow = fit(ConditionalFlow.spline(2, layers=4, hidden=32, bins=8, tail_bound=4.0),
               lambda: (next(batches), None), 300)
    with torch.no_grad():
        flow_nll = -flow.log_prob(test).mean()
    assert flow_nll < gaussian_nll(train, test) - 1.0, (float(flow_nll), float(gaussian_nll(train, test)))


def test_conditional_flow_learns_the_ring_radius_from_its_context():
    generator = torch.Generator().manual_seed(1)

    def sampler(batch=256):
        radius = 1.0 + 2.0 * torch.rand(batch, generator=generator)
        return ring(batch, radius, generator=generator), radius[:, None]

    flow = fit(ConditionalFlow.spline(2, 1, layers=4, hidden=32, bins=8, tail_bound=4.0), sampler,
               300)
    with torch.no_grad():
        for radius in (1.5, 2.5):
            sample_radius = flow.sample(512, torch.tensor([radius])).norm(dim=1)
            assert abs(float(sample_radius.median()) - radius) < 0.1, (radius, sample_radius.median())
        test, context = sampler(2048)
        conditional_nll = -flow.log_prob(test, context).mean()
        shuffled_nll = -flow.log_prob(test, context[torch.randperm(2048, generator=generator)]).mean()
    assert conditional_nll < shuffled_nll - 2.0, (float(conditional_nll), float(shuffled_nll))


# ---- dequantisation -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dequantize_log_det_and_quantize_round_trip(dtype):
    levels, alpha = 16, 0.05
    x = torch.randint(0, levels, (3, 2, 5, 5)).to(dtype) / (levels - 1)
    y, ladj = dequantize(x, levels, alpha, generator=torch.Generator().manual_seed(3))
    assert y.dtype == dtype and ladj.shape == (3,)
    noise = torch.rand(x.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
    u = ((x * (levels - 1) + noise) / levels).double().requires_grad_()
    y_reference = torch.logit(alpha + (1 - 2 * alpha) * u)
    (slope,) = torch.autograd.grad(y_reference.sum(), u)  # element-wise map: the diagonal
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(y.double(), y_reference.detach(), atol=tol, rtol=tol)
    torch.testing.assert_close(ladj.double(), slope.log().flatten(1).sum(1), atol=tol * 10, rtol=tol)
    torch.testing.assert_close(quantize(y, levels, alpha), x, atol=1e-6, rtol=0)
    bpd = bits_per_dim(torch.zeros(3), 50, levels)
    torch.testing.assert_close(bpd, torch.full((3,), math.log2(levels)))


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_input_raises_clear_value_errors():
    flow = ConditionalFlow.spline(3, 2, layers=2, hidden=8)
    with pytest.raises(ValueError, match="x must have shape"):
        flow.log_prob(torch.randn(4, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        flow.log_prob(torch.randn(4), torch.randn(4, 2))
    with pytest.raises(ValueError, match="context must have shape"):
        flow.log_prob(torch.randn(4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="context must match the batch"):
        flow.log_prob(torch.randn(4, 3), torch.randn(5, 2))
    with pytest.raises(ValueError, match="context is required"):
        flow.log_prob(torch.randn(4, 3))
    with pytest.raises(ValueError, match="context is required"):
        flow.sample(4)
    with pytest.raises(ValueError, match="context must have shape"):
        flow.sample(4, torch.randn(3))
    with pytest.raises(ValueError, match="context must match the batch"):
        flow.sample(4, torch.randn(5, 2))
    with pytest.raises(ValueError, match="n must be a positive int"):
        flow.sample(0, torch.randn(2))
    with pytest.raises(ValueError, match="context was given"):
        ConditionalFlow.affine(3, layers=1).log_prob(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="mask must have shape"):
        AffineCoupling(3, mask=[True, False])
    with pytest.raises(ValueError, match="conditioner would see no input"):
        SplineCoupling(1)
    with pytest.raises(ValueError, match="bins must be >= 2"):
        SplineCoupling(4, bins=1)
    with pytest.raises(ValueError, match="mask must be one of"):
        AffineCoupling2d(4, mask="stripes")
    image_flow = MultiScaleFlow(1, 8, 1, levels=2, steps=1, hidden=4, context_hidden=4)
    with pytest.raises(ValueError, match="x must have spatial size"):
        image_flow.log_prob(torch.randn(2, 1, 4, 8), torch.randn(2, 1, 4, 8))
    with pytest.raises(ValueError, match="context must match the batch and spatial size"):
        image_flow.log_prob(torch.randn(2, 1, 8, 8), torch.randn(2, 1, 4, 4))
    with pytest.raises(ValueError, match="divisible by"):
        MultiScaleFlow(1, 6, levels=2)
    with pytest.raises(ValueError, match="x must lie in"):
        dequantize(torch.full((2, 3), 1.5))


def test_triangular_affine_starts_at_the_identity_and_fits_the_gaussian_in_closed_form():
    layer = TriangularAffine(3)
    x = torch.randn(5, 3)
    y, ladj = layer(x)
    torch.testing.assert_close(y, x)
    torch.testing.assert_close(ladj, torch.zeros(5))
    torch.manual_seed(0)
    mixing = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [-1.0, 0.3, 1.0]])
    data = torch.randn(20_000, 3) @ mixing.T + torch.tensor([1.0, -2.0, 3.0])
    assert not layer.fitted
    layer.fit_gaussian(data)
    assert layer.fitted
    copy = TriangularAffine(3)
    assert not copy.fitted
    copy.load_state_dict(layer.state_dict())  # the flag travels with the weights
    assert copy.fitted
    white, ladj = layer(data)
    torch.testing.assert_close(white.mean(0), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.cov(white.T), torch.eye(3), atol=1e-2, rtol=0)  # shrunk a little
    # the log-det is the log-density gain of the fitted Gaussian: -log|det mixing| up to sampling error
    assert abs(float(ladj[0]) + math.log(abs(float(torch.linalg.det(mixing))))) < 0.02
    with pytest.raises(ValueError, match="x must have shape"):
        layer.fit_gaussian(torch.randn(10, 4))
    with pytest.raises(ValueError, match="at least 2 rows"):
        layer.fit_gaussian(torch.randn(1, 3))
    with pytest.raises(ValueError, match="features must be >= 1"):
        TriangularAffine(0)


def test_spline_flow_with_a_linear_layer_starts_at_the_identity():
    flow = ConditionalFlow.spline(4, 2, layers=2, hidden=8, linear=True)
    assert isinstance(flow.transform.transforms[0], TriangularAffine)
    x, c = torch.randn(6, 4), torch.randn(6, 2)
    normal = torch.distributions.Normal(0.0, 1.0)
    torch.testing.assert_close(flow.log_prob(x, c), normal.log_prob(x).sum(1), atol=1e-5, rtol=1e-5)


def test_actnorm_follows_a_loaded_initialized_flag():
    fresh, used = ActNorm(3), ActNorm(3)
    used(torch.randn(64, 3) * 5 + 2)  # initialises from this batch
    used.load_state_dict(fresh.state_dict())  # back to "not initialised"
    y, _ = used(torch.randn(256, 3) * 3 - 1)  # so this batch initialises it again
    torch.testing.assert_close(y.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    restored = ActNorm(3)
    restored.load_state_dict(used.state_dict())  # initialised state: kept, not re-initialised
    x = torch.randn(8, 3)
    torch.testing.assert_close(restored(x)[0], used(x)[0])
