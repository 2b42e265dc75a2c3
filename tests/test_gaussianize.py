"""The exact Gaussianisation of dequantised values under a factorised discrete model
(``msvae.flows.gaussianize``), against brute-force float64 references."""
import math

import pytest
import torch
import torch.nn.functional as F

from msvae.flows.gaussianize import bin_edges, bin_of, categorical_edges, category_of, gaussianize

NORMAL = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))


def _model(likelihood, shape, generator):
    """(lo, hi), the reference log P and the values, for random outputs (some far in the tails)."""
    if likelihood == "bernoulli":
        output = 8 * torch.randn(shape, generator=generator, dtype=torch.float64)
        output.view(-1)[:4] = torch.tensor([-60.0, 60.0, -35.0, 35.0], dtype=torch.float64)
        x = (torch.rand(shape, generator=generator) < 0.5).double()
        reference = torch.where(x > 0, F.logsigmoid(output), F.logsigmoid(-output))
        return bin_edges(x, output, likelihood, 2), reference, (x, output, 2)
    if likelihood == "gaussian":
        levels = 256
        output = 1.6 * torch.rand(shape, generator=generator, dtype=torch.float64) - 0.3
        x = torch.randint(0, levels, shape, generator=generator).double() / (levels - 1)
        k = (x * (levels - 1)).round()
        lo = torch.where(k > 0, NORMAL.cdf((k - 0.5) / (levels - 1) - output), torch.zeros_like(x))
        hi = torch.where(k < levels - 1, NORMAL.cdf((k + 0.5) / (levels - 1) - output), torch.ones_like(x))
        return bin_edges(x, output, likelihood, levels), (hi - lo).log(), (x, output, levels)
    logits = 6 * torch.randn(*shape, 5, generator=generator, dtype=torch.float64)
    logits[0, 0, 0, 0] = torch.tensor([40.0, -40.0, 0.0, -40.0, 3.0])
    k = torch.randint(0, 5, shape, generator=generator)
    reference = logits.log_softmax(-1).gather(-1, k[..., None])[..., 0]
    return categorical_edges(k, logits), reference, (k, logits, None)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "categorical"])
def test_gaussianize_is_the_models_inverse_cdf_with_its_exact_log_det(likelihood):
    generator = torch.Generator().manual_seed(0)
    shape = (3, 2, 5, 7)
    (lo, hi), reference, (x, output, levels) = _model(likelihood, shape, generator)
    fraction = torch.rand(shape, generator=generator, dtype=torch.float64)
    t, ladj, mass = gaussianize(lo, hi, fraction)
    # (a category far smaller than the ones before it loses digits to the thresholds: ~1e-7 relative)
    torch.testing.assert_close(mass, reference, rtol=1e-10 if levels else 1e-6, atol=1e-12)
    assert bool(((t >= lo) & (t <= hi)).all()) and bool(torch.isfinite(t).all())
    # t is the standard-normal quantile of the dequantised value's CDF, Phi(lo) + f P
    inside = t.abs() < 7
    cdf = NORMAL.cdf(lo.clamp(-40, 40)) + fraction * reference.exp()
    torch.testing.assert_close(NORMAL.cdf(t)[inside], cdf[inside], rtol=1e-8, atol=1e-12)
    # log|dt/du| by autograd through the reference map f -> Phi^-1(Phi(lo) + f P), well conditioned
    central = t.abs() < 4  # the reference's cdf -> icdf loses digits further out
    f = fraction.clone().requires_grad_()
    reference_t = NORMAL.icdf(NORMAL.cdf(lo.clamp(-40, 40)) + f * reference.exp())
    (slope,) = torch.autograd.grad(reference_t[central].sum(), f)
    torch.testing.assert_close(slope[central].log(), ladj[central], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ladj, reference + 0.5 * t ** 2 + 0.5 * math.log(2 * math.pi))
    # and the bin that holds t is the value's
    back = category_of(t, output) if levels is None else bin_of(t, output, likelihood, levels)
    assert torch.equal(back, x)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "categorical"])
def test_standard_normal_t_draws_the_models_values(likelihood):
    generator = torch.Generator().manual_seed(1)
    n = 40_000
    t = torch.randn(n, 6, generator=generator, dtype=torch.float64)
    if likelihood == "bernoulli":
        logits = torch.linspace(-3, 3, 6, dtype=torch.float64)
        draws = bin_of(t, logits.expand(n, -1), likelihood, 2)
        torch.testing.assert_close(draws.mean(0), torch.sigmoid(logits), atol=0.012, rtol=0)
    elif likelihood == "gaussian":  # the discretised unit Gaussian: its mean is the clamped Gaussian's
        means = torch.linspace(-0.3, 1.3, 6, dtype=torch.float64)
        draws = bin_of(t, means.expand(n, -1), likelihood, 256)
        clamped = (means + torch.randn(n, 6, generator=generator, dtype=torch.float64)).clamp(0, 1)
        torch.testing.assert_close(draws.mean(0), clamped.mean(0), atol=0.012, rtol=0)
    else:
        logits = torch.randn(6, 4, generator=generator, dtype=torch.float64)
        draws = category_of(t, logits.expand(n, -1, -1))
        frequencies = F.one_hot(draws, 4).double().mean(0)
        torch.testing.assert_close(frequencies, logits.softmax(-1), atol=0.012, rtol=0)


def test_gaussianize_refuses_bad_input():
    x, output = torch.zeros(2, 3), torch.zeros(2, 3)
    with pytest.raises(ValueError, match="likelihood must be one of"):
        bin_edges(x, output, "poisson", 2)
    with pytest.raises(ValueError, match="a Bernoulli model has 2 levels"):
        bin_edges(x, output, "bernoulli", 256)
    with pytest.raises(ValueError, match="levels must be an int >= 2"):
        bin_edges(x, output, "gaussian", 1)
    with pytest.raises(ValueError, match="must have one shape"):
        bin_edges(x, output[:, :2], "bernoulli", 2)
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        bin_edges(x + 2, output, "bernoulli", 2)
    with pytest.raises(ValueError, match="must have one shape"):
        bin_of(x, output[:1], "bernoulli", 2)
    with pytest.raises(ValueError, match=r"categories must lie in \[0, 3\)"):
        categorical_edges(torch.tensor([0, 3]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="logits must be"):
        categorical_edges(torch.tensor([0, 1]), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="logits must be"):
        category_of(torch.zeros(2), torch.zeros(3, 3))


def test_a_one_category_block_is_the_whole_line_with_probability_one():
    lo, hi = categorical_edges(torch.zeros(4, dtype=torch.long), torch.randn(4, 1))
    assert bool(torch.isinf(lo).all() & (lo < 0).all() & torch.isinf(hi).all() & (hi > 0).all())
    fraction = torch.rand(4, dtype=torch.float64)
    t, ladj, mass = gaussianize(lo, hi, fraction)
    torch.testing.assert_close(t, NORMAL.icdf(fraction))
    assert torch.equal(mass, torch.zeros(4, dtype=torch.float64))
    assert torch.equal(category_of(t, torch.randn(4, 1)), torch.zeros(4, dtype=torch.long))


def test_padded_categories_give_the_unpadded_intervals():
    """Blocks of several widths padded to one: the real categories' intervals (and the category
    of any t) are those of the block alone; whatever the padded logits hold is ignored."""
    g = torch.Generator().manual_seed(0)
    widths = [1, 3, 5]
    logits = torch.randn(4, 3, 5, generator=g, dtype=torch.float64) * 3
    pad = torch.arange(5)[None, :] >= torch.tensor(widths)[:, None]  # [blocks, widest]
    k = torch.stack([torch.randint(w, (4,), generator=g) for w in widths], 1)
    lo, hi = categorical_edges(k, logits, pad)
    t = torch.randn(4, 3, generator=g, dtype=torch.float64) * 3
    t[0] = 40.0  # beyond any finite threshold: the last real category, never a padded one
    got = category_of(t, logits, pad)
    for b, w in enumerate(widths):
        ref_lo, ref_hi = categorical_edges(k[:, b], logits[:, b, :w])
        torch.testing.assert_close(lo[:, b], ref_lo, rtol=0, atol=0)
        torch.testing.assert_close(hi[:, b], ref_hi, rtol=0, atol=0)
        assert torch.equal(got[:, b], category_of(t[:, b], logits[:, b, :w]))
    assert torch.equal(got[0], torch.tensor(widths) - 1)
