"""The exact Gaussianisation of dequantised values under a factorised discrete model
(``msvae.flows.gaussianize``), against brute-force float64 references."""
import math

import pytest
import torch

from msvae.flows.gaussianize import bin_edges, degaussianize, gaussianize, log_mass

NORMAL = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))


def _model(likelihood, shape, generator):
    if likelihood == "bernoulli":  # logits, some far in both tails
        output = 8 * torch.randn(shape, generator=generator, dtype=torch.float64)
        output.view(-1)[:4] = torch.tensor([-60.0, 60.0, -35.0, 35.0], dtype=torch.float64)
        return output, 2, (torch.rand(shape, generator=generator) < 0.5).double()
    levels = 256
    output = 1.6 * torch.rand(shape, generator=generator, dtype=torch.float64) - 0.3
    return output, levels, torch.randint(0, levels, shape, generator=generator).double() / (levels - 1)


def _reference_mass(x, output, likelihood, levels):
    if likelihood == "bernoulli":
        return torch.where(x > 0, torch.nn.functional.logsigmoid(output), torch.nn.functional.logsigmoid(-output))
    k = (x * (levels - 1)).round()
    lo = torch.where(k > 0, NORMAL.cdf((k - 0.5) / (levels - 1) - output), torch.zeros_like(x))
    hi = torch.where(k < levels - 1, NORMAL.cdf((k + 0.5) / (levels - 1) - output), torch.ones_like(x))
    return (hi - lo).log()


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_gaussianize_is_the_models_inverse_cdf_with_its_exact_log_det(likelihood):
    generator = torch.Generator().manual_seed(0)
    shape = (3, 2, 5, 7)
    output, levels, x = _model(likelihood, shape, generator)
    fraction = torch.rand(shape, generator=generator, dtype=torch.float64)
    t, ladj, mass = gaussianize(x, output, likelihood, levels, fraction)
    reference = _reference_mass(x, output, likelihood, levels)
    torch.testing.assert_close(mass, reference.flatten(1).sum(1), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(log_mass(x, output, likelihood, levels), mass)
    # t is the standard-normal quantile of the dequantised value's CDF under the model
    lo, hi = bin_edges(x, output, likelihood, levels)
    inside = torch.isfinite(t) & (t.abs() < 7)
    cdf = NORMAL.cdf(lo.clamp(-40, 40)) + fraction * reference.exp()
    torch.testing.assert_close(NORMAL.cdf(t)[inside], cdf[inside], rtol=1e-8, atol=1e-12)
    assert bool(((t >= lo) & (t <= hi)).all()) and bool(torch.isfinite(t).all())
    # log|dt/du| by autograd through the reference map u -> Phi^-1(CDF(u)), where it is well conditioned
    u = ((x * (levels - 1)).round() + fraction) / levels
    u = u.requires_grad_()
    k = (x * (levels - 1)).round()
    reference_t = NORMAL.icdf(NORMAL.cdf(lo.clamp(-40, 40)) + (u * levels - k) * reference.exp())
    central = t.abs() < 4  # the reference's cdf -> icdf loses digits further out
    (slope,) = torch.autograd.grad(reference_t[central].sum(), u)
    expected = math.log(levels) + reference + 0.5 * t ** 2 + 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(slope[central].log(), expected[central], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ladj, expected.flatten(1).sum(1), rtol=1e-12, atol=1e-9)
    # and the bin of t is x's
    assert torch.equal(degaussianize(t, output, likelihood, levels), x)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_standard_normal_t_draws_the_models_values(likelihood):
    generator = torch.Generator().manual_seed(1)
    output, levels, _ = _model(likelihood, (1, 6), generator)
    output = output.clamp(-3, 3)
    draws = degaussianize(torch.randn(40_000, 6, generator=generator, dtype=torch.float64),
                          output.expand(40_000, -1), likelihood, levels)
    if likelihood == "bernoulli":
        torch.testing.assert_close(draws.mean(0), torch.sigmoid(output[0]), atol=0.012, rtol=0)
    else:  # the discretised unit Gaussian: its mean is the clamped Gaussian's
        clamped = (output[0] + torch.randn(40_000, 6, generator=generator, dtype=torch.float64)).clamp(0, 1)
        torch.testing.assert_close(draws.mean(0), clamped.mean(0), atol=0.012, rtol=0)


def test_gaussianize_refuses_bad_input():
    x, output = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        log_mass(x, output, "poisson", 2)
    with pytest.raises(ValueError, match="a Bernoulli model has 2 levels"):
        log_mass(x, output, "bernoulli", 256)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        log_mass(x, output, "gaussian", 1)
    with pytest.raises(ValueError, match="must have one shape"):
        log_mass(x, output[:, :2], "bernoulli", 2)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        log_mass(x + 2, output, "bernoulli", 2)
    with pytest.raises(ValueError, match="must have one shape"):
        degaussianize(x, output[:1], "bernoulli", 2)
