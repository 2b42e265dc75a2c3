"""msvae.priors: log-densities against closed forms, normalisation, sample moments, gradients, bad input."""
import math

import pytest
import torch

from msvae.priors import (AnisotropicGaussian, FactorizedAggregatePosterior, GaussianMixture, IsotropicGaussian,
                          LearnedAnisotropicGaussian, LearnedGaussianMixture, SpikeAndSlab,
                          StudentTProduct, as_distribution)

f64 = torch.float64


def normal_pdf(z, loc, scale):
    return torch.exp(-0.5 * ((z - loc) / scale) ** 2) / (scale * math.sqrt(2 * math.pi))


def student_t_pdf(z, df, scale, loc):
    """The Student-t density written from its definition with math.lgamma, elementwise."""
    norm = torch.tensor([math.exp(math.lgamma((v + 1) / 2) - math.lgamma(v / 2)) / math.sqrt(v * math.pi)
                         for v in df.tolist()], dtype=f64)
    return norm / scale * (1 + ((z - loc) / scale) ** 2 / df) ** (-(df + 1) / 2)


def random_priors(D):
    """One instance of every prior on D dimensions, in float64, with random parameters, and a
    readable reference density ``z [..., D] -> p(z) [...]``."""
    scale = 0.5 + torch.rand(D, dtype=f64)
    loc = torch.randn(D, dtype=f64)
    df = 3.0 + 5 * torch.rand(D, dtype=f64)
    K = 3
    mix_loc, mix_scale = 2 * torch.randn(K, D, dtype=f64), 0.4 + torch.rand(K, D, dtype=f64)
    logits = torch.randn(K, dtype=f64)
    gamma, spike, slab = 0.2 + 0.6 * torch.rand(D, dtype=f64), 0.2 + 0.1 * torch.rand(D, dtype=f64), 1.5
    sigma = 0.5 + float(torch.rand(()))
    weights = torch.softmax(logits, 0)
    rows_mu, rows_scale = 1.5 * torch.randn(6, D, dtype=f64), 0.4 + torch.rand(6, D, dtype=f64)
    return {
        "isotropic": (IsotropicGaussian(D, torch.tensor(sigma, dtype=f64)),
                      lambda z: normal_pdf(z, 0.0, sigma).prod(-1)),
        "anisotropic": (AnisotropicGaussian(D, scale, loc), lambda z: normal_pdf(z, loc, scale).prod(-1)),
        "student_t": (StudentTProduct(D, df, scale, loc),
                      lambda z: student_t_pdf(z, df, scale, loc).prod(-1)),
        "mixture": (GaussianMixture(mix_loc, mix_scale, logits),
                    lambda z: sum(weights[k] * normal_pdf(z, mix_loc[k], mix_scale[k]).prod(-1)
                                  for k in range(K))),
        "spike_and_slab": (SpikeAndSlab(D, gamma, spike, torch.tensor(slab, dtype=f64)),
                           lambda z: (gamma * normal_pdf(z, 0.0, spike)
                                      + (1 - gamma) * normal_pdf(z, 0.0, slab)).prod(-1)),
        "aggregate": (FactorizedAggregatePosterior(rows_mu, 2 * rows_scale.log()),
                      lambda z: normal_pdf(z[..., None, :], rows_mu, rows_scale).mean(-2).prod(-1)),
    }


NAMES = ["isotropic", "anisotropic", "student_t", "mixture", "spike_and_slab", "aggregate"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(), (1,), (4, 3)])
def test_log_prob_matches_the_closed_form(name, shape):
    D = 5
    prior, density = random_priors(D)[name]
    z = 1.5 * torch.randn(*shape, D, dtype=f64)
    log_p = prior.log_prob(z)
    assert log_p.shape == shape
    torch.testing.assert_close(log_p, density(z).log())
    assert prior.batch_shape == () and prior.event_shape == (D,)


@pytest.mark.parametrize("name", NAMES)
def test_density_integrates_to_one_in_1d_and_2d(name):
    for D, half_width, points in ((1, 80.0, 64001), (2, 40.0, 1601)):
        prior, _ = random_priors(D)[name]
        grid = torch.linspace(-half_width, half_width, points, dtype=f64)
        if D == 1:
            mass = torch.trapezoid(prior.log_prob(grid[:, None]).exp(), grid)
        else:
            z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1)
            density = prior.log_prob(z).exp()
            mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
        # Student-t tails beyond the grid hold at most ~1e-4 of the mass for df >= 3.
        assert abs(float(mass) - 1.0) < 3e-4, (name, D, float(mass))


def expected_moments(name, prior):
    """Mean and variance per dimension from the parameters, written out independently."""
    if name in ("isotropic", "anisotropic"):
        return prior.loc, prior.scale ** 2
    if name == "student_t":
        return prior.loc, prior.scale ** 2 * prior.df / (prior.df - 2)
    if name == "mixture":
        w = prior.weights  # checked against softmax(logits) by the log_prob test
        mean = sum(w[k] * prior.loc[k] for k in range(len(w)))
        second = sum(w[k] * (prior.scale[k] ** 2 + prior.loc[k] ** 2) for k in range(len(w)))
        return mean, second - mean ** 2
    if name == "aggregate":  # each dimension an equal-weight mixture over the rows
        mean = prior.loc.mean(0)
        return mean, (prior.logvar.exp() + prior.loc ** 2).mean(0) - mean ** 2
    gamma = prior.gamma
    return torch.zeros_like(gamma), gamma * prior.spike_scale ** 2 + (1 - gamma) * prior.slab_scale ** 2


@pytest.mark.parametrize("name", NAMES)
def test_sample_moments(name):
    D, n = 3, 20000
    prior, _ = random_priors(D)[name]
    if name == "student_t":  # a finite fourth moment keeps the sample variance steady
        prior = StudentTProduct(D, prior.df + 6, prior.scale, prior.loc)
    samples = prior.sample((n,))
    assert samples.shape == (n, D) and samples.dtype == f64 and not samples.requires_grad
    mean, var = expected_moments(name, prior)
    torch.testing.assert_close(prior.mean, mean)
    torch.testing.assert_close(prior.variance, var)
    std = var.sqrt()
    assert ((samples.mean(0) - mean).abs() < 4 * std / math.sqrt(n)).all()
    assert ((samples.var(0) / var - 1).abs() < 0.08).all(), (samples.var(0), var)


def test_student_t_moments_are_undefined_or_infinite_for_small_df():
    prior = StudentTProduct(3, torch.tensor([0.5, 1.5, 4.0], dtype=f64))
    assert torch.isnan(prior.mean[0]) and prior.mean[1] == 0 and prior.mean[2] == 0
    assert torch.isnan(prior.variance[0]) and prior.variance[1] == math.inf
    assert prior.variance[2] == pytest.approx(2.0)


def test_student_t_has_heavier_tails_than_the_gaussian():
    z = torch.tensor([[8.0]], dtype=f64)
    assert StudentTProduct(1, 2.0).log_prob(z) > IsotropicGaussian(1).log_prob(z) + 20


def test_mixture_responsibilities_follow_bayes_rule_and_rsample_is_not_offered():
    prior, density = random_priors(4)["mixture"]
    z = torch.randn(7, 4, dtype=f64)
    joint = torch.stack([prior.weights[k] * normal_pdf(z, prior.loc[k], prior.scale[k]).prod(-1)
                         for k in range(prior.num_components)], -1)
    torch.testing.assert_close(prior.responsibilities(z), joint / density(z)[:, None])
    assert not prior.has_rsample
    with pytest.raises(NotImplementedError):
        prior.rsample((2,))


def test_spike_and_slab_puts_mass_gamma_in_the_spike():
    prior = SpikeAndSlab(2, gamma=torch.tensor([0.3, 0.9]), spike_scale=0.01, slab_scale=1.0)
    samples = prior.sample((20000,))
    near_zero = (samples.abs() < 0.05).float().mean(0)
    # spike: all of its mass within 5 sigma; slab: P(|z| < 0.05) ~ 0.04.
    expected = prior.gamma + (1 - prior.gamma) * 0.0399
    assert ((near_zero - expected).abs() < 0.015).all(), near_zero


def test_rsample_is_differentiable():
    scale = torch.tensor([0.5, 2.0, 1.0], requires_grad=True)
    df = torch.tensor([3.0, 5.0, 7.0], requires_grad=True)
    for prior, params in ((AnisotropicGaussian(3, scale), (scale,)),
                          (StudentTProduct(3, df, scale), (df, scale))):
        grads = torch.autograd.grad(prior.rsample((11,)).pow(2).sum(), params)
        assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_gradcheck(name):
    prior, _ = random_priors(3)[name]
    z = torch.randn(4, 3, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(prior.log_prob, (z,))


def test_learned_priors_have_gradients():
    z = torch.randn(9, 3)
    for module in (LearnedAnisotropicGaussian(3, init_scale=0.7), LearnedGaussianMixture(4, 3)):
        log_p = module(z)
        assert log_p.shape == (9,)
        torch.testing.assert_close(log_p, as_distribution(module).log_prob(z))
        log_p.sum().backward()
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    learned = LearnedAnisotropicGaussian(2, init_scale=0.7).distribution()
    torch.testing.assert_close(learned.scale, torch.full((2,), 0.7))


def test_learned_anisotropic_gaussian_fits_data_by_maximum_likelihood():
    target = torch.tensor([0.3, 1.0, 3.0])
    data = torch.randn(4000, 3) * target
    module = LearnedAnisotropicGaussian(3)
    optimiser = torch.optim.Adam(module.parameters(), lr=0.05)
    for _ in range(300):
        optimiser.zero_grad()
        (-module(data).mean()).backward()
        optimiser.step()
    torch.testing.assert_close(module.distribution().scale, data.std(0), rtol=0.02, atol=0.0)


@pytest.mark.parametrize("make, match", [
    (lambda: IsotropicGaussian(3, 0.0), "scale must be positive"),
    (lambda: IsotropicGaussian(3, torch.ones(3)), "scale must be a scalar"),
    (lambda: IsotropicGaussian(0), "dim must be a positive int"),
    (lambda: AnisotropicGaussian(3, torch.tensor([1.0, -1.0, 1.0])), "scale must be positive"),
    (lambda: AnisotropicGaussian(3, torch.ones(4)), r"scale must be a scalar or have shape \[3\]"),
    (lambda: AnisotropicGaussian(3, 1.0, loc=math.inf), "loc must be finite"),
    (lambda: StudentTProduct(2, torch.tensor([1.0, 0.0])), "df must be positive"),
    (lambda: StudentTProduct(2, 3.0, scale=math.nan), "scale must be positive"),
    (lambda: GaussianMixture(torch.zeros(3)), r"loc must be a non-empty \[K, D\]"),
    (lambda: GaussianMixture(torch.zeros(3, 2), logits=torch.zeros(2)), r"logits must have shape \[3\]"),
    (lambda: GaussianMixture(torch.zeros(3, 2), scale=torch.ones(2, 3)), "scale must be a scalar or"),
    (lambda: GaussianMixture(torch.zeros(3, 2), scale=-1.0), "scale must be positive"),
    (lambda: SpikeAndSlab(2, gamma=0.0), "gamma must lie strictly between 0 and 1"),
    (lambda: SpikeAndSlab(2, gamma=torch.tensor([0.5, 1.0])), "gamma must lie strictly"),
    (lambda: SpikeAndSlab(2, spike_scale=1.0, slab_scale=0.5), "spike_scale must be smaller"),
    (lambda: SpikeAndSlab(2, spike_scale=0.0), "spike_scale must be positive"),
    (lambda: LearnedAnisotropicGaussian(2, init_scale=0.0), "init_scale must be positive"),
    (lambda: LearnedGaussianMixture(0, 2), "num_components must be a positive int"),
    (lambda: FactorizedAggregatePosterior(torch.zeros(0, 2), torch.zeros(0, 2)), r"mu must be a non-empty"),
    (lambda: FactorizedAggregatePosterior(torch.zeros(3, 2), torch.zeros(3)), r"logvar must have mu's shape"),
    (lambda: FactorizedAggregatePosterior(torch.zeros(3, 2), torch.full((3, 2), float("nan"))), "finite"),
    (lambda: as_distribution("normal"), "prior must be a torch.distributions.Distribution"),
])
def test_bad_parameters_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("name", NAMES)
def test_log_prob_rejects_codes_of_the_wrong_size(name):
    prior, _ = random_priors(3)[name]
    with pytest.raises(ValueError, match=r"z must have shape \[\.\.\., 3\]"):
        prior.log_prob(torch.zeros(5, 4, dtype=f64))


def test_aggregate_posterior_draws_each_dimension_from_its_own_row():
    """A draw picks a row per dimension independently: the dimensions are independent even where
    the rows' codes are correlated, and each marginal is its dimension's mixture."""
    mu = torch.arange(4, dtype=f64)[:, None].repeat(1, 2) * 10  # rows (0, 0), (10, 10), ...
    prior = FactorizedAggregatePosterior(mu, torch.full_like(mu, math.log(1e-4)))
    z = prior.sample((40000,))
    row = (z / 10).round()
    assert torch.allclose(z, 10 * row, atol=0.1)
    joint = torch.stack([((row[:, 0] == a) & (row[:, 1] == b)).double().mean()
                         for a in range(4) for b in range(4)])
    assert (joint - 1 / 16).abs().max() < 0.01  # independent and uniform over the rows
    assert not prior.has_rsample
