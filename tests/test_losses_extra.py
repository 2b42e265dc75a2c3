"""msvae.losses: FactorVAE, DIP-VAE and the decomposition objective with structured priors."""
import functools
import math

import pytest
import torch
from torch import nn

from conftest import loss_batch
from msvae.losses import (DIVERGENCES, IMQ_SCALES, DecompositionLoss, DIPVAELoss, FactorVAELoss,
                          beta_vae_loss, decomposition_loss, dip_vae_loss, factor_vae_discriminator,
                          factor_vae_loss, imq_mmd, permute_dims, reconstruction_nll)
from msvae.priors import (AnisotropicGaussian, GaussianMixture, IsotropicGaussian,
                          LearnedAnisotropicGaussian, LearnedGaussianMixture, SpikeAndSlab,
                          StudentTProduct)

f64 = torch.float64


batch = functools.partial(loss_batch, pixels=(1, 5, 3))


def standard_kl(mu, logvar):
    return (0.5 * (mu ** 2 + logvar.exp() - logvar - 1)).sum(1).mean()


# ---- DIP-VAE --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["i", "ii"])
def test_dip_terms_by_hand(variant):
    x, logits, z, mu, logvar = batch(B=5, D=3)
    loss, terms = DIPVAELoss(variant, lambda_od=2.5)(x, logits, z, mu, logvar)
    B, D = mu.shape
    m, v = mu.detach().tolist(), logvar.detach().exp().tolist()
    mean = [sum(m[n][i] for n in range(B)) / B for i in range(D)]
    cov = [[sum((m[n][i] - mean[i]) * (m[n][j] - mean[j]) for n in range(B)) / B for j in range(D)]
           for i in range(D)]
    if variant == "ii":
        for i in range(D):
            cov[i][i] += sum(v[n][i] for n in range(B)) / B
    off = sum(cov[i][j] ** 2 for i in range(D) for j in range(D) if i != j)
    diag = sum((cov[i][i] - 1) ** 2 for i in range(D))
    lambda_d = 25.0 if variant == "i" else 2.5  # the paper's defaults: 10 * lambda_od and lambda_od
    assert float(terms["dip_offdiag"]) == pytest.approx(off, rel=1e-12)
    assert float(terms["dip_diag"]) == pytest.approx(diag, rel=1e-12)
    expected = reconstruction_nll(x, logits).mean() + standard_kl(mu, logvar) + 2.5 * off + lambda_d * diag
    torch.testing.assert_close(loss, expected)
    functional, _ = dip_vae_loss(x, logits, z, mu, logvar, variant=variant, lambda_od=2.5)
    torch.testing.assert_close(functional, loss)
    loss.backward()
    assert torch.isfinite(mu.grad).all() and logvar.grad.abs().sum() > 0


def test_dip_penalty_vanishes_when_the_aggregate_covariance_is_identity():
    B, D = 4000, 3
    mu = torch.randn(B, D, dtype=f64)
    mu = (mu - mu.mean(0)) @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(mu.T, correction=0))).T
    x = torch.zeros(B, 1, dtype=f64)
    _, terms = dip_vae_loss(x, x, mu, mu, torch.full_like(mu, -30.0), variant="ii", recon="gaussian")
    assert float(terms["dip_offdiag"]) < 1e-20 and float(terms["dip_diag"]) < 1e-20
    _, terms = dip_vae_loss(x, x, mu, mu, torch.zeros_like(mu), variant="ii", recon="gaussian")
    assert float(terms["dip_diag"]) == pytest.approx(D)  # each C_ii = 2


# ---- FactorVAE ------------------------------------------------------------------------------

def correlated_codes(B, rho=0.98):
    e = torch.randn(B, 1)
    return torch.cat([e, rho * e + math.sqrt(1 - rho ** 2) * torch.randn(B, 1), torch.randn(B, 1)], 1)


def test_default_discriminator_is_the_papers_mlp():
    disc = factor_vae_discriminator(7)
    linears = [m for m in disc if isinstance(m, nn.Linear)]
    shapes = [(layer.in_features, layer.out_features) for layer in linears]
    assert shapes == [(7, 1000)] + [(1000, 1000)] * 4 + [(1000, 2)]
    assert all(m.negative_slope == 0.2 for m in disc if isinstance(m, nn.LeakyReLU))
    assert FactorVAELoss(7).discriminator(torch.randn(3, 7)).shape == (3, 2)


def test_permute_dims_keeps_each_marginal_and_breaks_the_dependence():
    z = correlated_codes(3001).double()
    permuted = permute_dims(z)
    for d in range(3):
        torch.testing.assert_close(permuted[:, d].sort().values, z[:, d].sort().values, rtol=0, atol=0)
    assert not torch.equal(permuted, z)
    assert abs(float(torch.corrcoef(permuted[:, :2].T)[0, 1])) < 0.1
    assert float(torch.corrcoef(z[:, :2].T)[0, 1]) > 0.95


def test_factor_vae_terms_and_gradients():
    x, logits, z, mu, logvar = batch(B=9, D=3)
    disc = factor_vae_discriminator(3, hidden=16, layers=3).double()
    loss, terms = FactorVAELoss(3, gamma=7.0, discriminator=disc)(x, logits, z, mu, logvar)
    d = disc(z)
    tc = (d[:, 0] - d[:, 1]).mean()
    torch.testing.assert_close(terms["tc"], tc.detach())
    expected = reconstruction_nll(x, logits).mean() + standard_kl(mu, logvar) + 7.0 * tc
    torch.testing.assert_close(loss, expected)
    functional, _ = factor_vae_loss(x, logits, z, mu, logvar, discriminator=disc, gamma=7.0)
    torch.testing.assert_close(functional, loss)
    loss.backward()
    assert mu.grad.abs().sum() > 0 and logvar.grad.abs().sum() > 0
    assert all(p.grad is None for p in disc.parameters())  # the VAE loss never trains the discriminator


def test_discriminator_learns_to_detect_total_correlation():
    loss_fn = FactorVAELoss(3, discriminator=factor_vae_discriminator(3, hidden=64, layers=3))
    optimiser = torch.optim.Adam(loss_fn.discriminator.parameters(), lr=3e-3, betas=(0.5, 0.9))
    losses = [loss_fn.discriminator_step(correlated_codes(128), optimiser, correlated_codes(100))
              for _ in range(60)]
    assert losses[0] == pytest.approx(math.log(2), abs=0.1)
    assert sum(losses[-10:]) / 10 < losses[0] - 0.15, losses[::15]
    with torch.no_grad():
        correlated = correlated_codes(4000)
        independent = permute_dims(correlated_codes(4000))
        tc_correlated = loss_fn.discriminator(correlated).diff(dim=1).neg().mean()
        tc_independent = loss_fn.discriminator(independent).diff(dim=1).neg().mean()
    # The true TC of the correlated codes is -0.5 log(1 - 0.98^2) = 1.6 nats.
    assert float(tc_correlated) > 0.5, float(tc_correlated)
    assert float(tc_correlated) > float(tc_independent) + 0.5, (tc_correlated, tc_independent)
    single = loss_fn.discriminator_step(correlated_codes(64), optimiser)  # one-batch protocol
    assert math.isfinite(single)


def test_factor_vae_bad_input():
    x, logits, z, mu, logvar = batch(D=3)
    with pytest.raises(ValueError, match=r"discriminator must map \[B, D\] codes to \[B, 2\] logits"):
        factor_vae_loss(x, logits, z, mu, logvar, discriminator=nn.Linear(3, 3).double())
    loss_fn = FactorVAELoss(3, discriminator=factor_vae_discriminator(3, hidden=8, layers=2))
    with pytest.raises(ValueError, match=r"z_permuted_source must have shape \[B, 3\]"):
        loss_fn.discriminator_loss(torch.randn(5, 3), torch.randn(5, 4))
    with pytest.raises(ValueError, match="latent_dim must be a positive int"):
        factor_vae_discriminator(0)
    with pytest.raises(ValueError, match="z must be 2-D"):
        permute_dims(torch.randn(4))


# ---- the decomposition objective ------------------------------------------------------------

def test_decomposition_with_alpha_zero_and_standard_normal_prior_is_the_beta_vae():
    x, logits, z, mu, logvar = batch()
    loss, terms = DecompositionLoss(IsotropicGaussian(4), beta=4.0)(x, logits, z, mu, logvar)
    expected, expected_terms = beta_vae_loss(x, logits, z, mu, logvar, beta=4.0)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(terms["kl"], expected_terms["kl"])
    assert "divergence" not in terms  # not estimated when alpha == 0
    inputs = (mu, logvar, logits)
    g, g_expected = (torch.autograd.grad(t, inputs, retain_graph=True) for t in (loss, expected))
    for a, b in zip(g, g_expected):
        torch.testing.assert_close(a, b)


def test_analytic_kl_for_an_anisotropic_gaussian_prior():
    x, logits, z, mu, logvar = batch(D=5)
    scale, loc = 0.3 + torch.rand(5, dtype=f64), torch.randn(5, dtype=f64)
    _, terms = decomposition_loss(x, logits, z, mu, logvar, prior=AnisotropicGaussian(5, scale, loc))
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(loc, scale)
    torch.testing.assert_close(terms["kl"], torch.distributions.kl_divergence(q, p).sum(1).mean().detach())


def test_monte_carlo_kl_converges_to_the_analytic_kl():
    """A one-component mixture is a Gaussian the loss does not recognise, so it takes the Monte-Carlo
    path: exactly mean(log q(z|x) - log p(z)), close to the analytic KL on a large batch."""
    B, D = 20000, 3
    loc, scale = torch.randn(1, D, dtype=f64), 0.5 + torch.rand(1, D, dtype=f64)
    mu, logvar = 0.5 * torch.randn(B, D, dtype=f64), 0.3 * torch.randn(B, D, dtype=f64) - 0.5
    z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    x = torch.zeros(B, 1, dtype=f64)
    _, mc = decomposition_loss(x, x, z, mu, logvar, prior=GaussianMixture(loc, scale), recon="gaussian")
    _, analytic = decomposition_loss(x, x, z, mu, logvar, prior=AnisotropicGaussian(D, scale[0], loc[0]),
                                     recon="gaussian")
    log_q = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    log_p = torch.distributions.Normal(loc, scale).log_prob(z).sum(1)
    torch.testing.assert_close(mc["kl"], (log_q - log_p).mean())
    per_sample_std = float((log_q - log_p).std())
    assert abs(float(mc["kl"] - analytic["kl"])) < 4 * per_sample_std / math.sqrt(B)


def test_inclusive_kl_is_zero_when_the_aggregate_posterior_is_the_prior():
    """With the batch's posteriors equal to the K components of a uniform mixture prior, q(z) = p(z)
    exactly, so log p - log q vanishes at every prior sample."""
    K, D = 6, 3
    loc, scale = 2 * torch.randn(K, D, dtype=f64), 0.3 + torch.rand(K, D, dtype=f64)
    prior = GaussianMixture(loc, scale)
    x = torch.zeros(K, 1, dtype=f64)
    z = loc + scale * torch.randn(K, D, dtype=f64)
    _, terms = decomposition_loss(x, x, z, loc, 2 * scale.log(), prior=prior, alpha=1.0, recon="gaussian")
    assert abs(float(terms["divergence"])) < 1e-10
    single = IsotropicGaussian(D, torch.tensor(0.7, dtype=f64))
    _, terms = decomposition_loss(x[:1], x[:1], z[:1], torch.zeros(1, D, dtype=f64),
                                  torch.full((1, D), 2 * math.log(0.7), dtype=f64), prior=single,
                                  alpha=1.0, num_prior_samples=50, recon="gaussian")
    assert abs(float(terms["divergence"])) < 1e-10
    # Shifted posteriors: clearly positive.
    _, terms = decomposition_loss(x, x, z, loc + 1.0, 2 * scale.log(), prior=prior, alpha=1.0,
                                  num_prior_samples=2000, recon="gaussian")
    assert float(terms["divergence"]) > 0.2


def test_inclusive_kl_matches_a_dense_reference_at_the_same_prior_draws():
    x, logits, z, mu, logvar = batch(B=7, D=3)
    prior = StudentTProduct(3, torch.tensor([2.0, 4.0, 9.0], dtype=f64))
    torch.manual_seed(5)
    loss, terms = decomposition_loss(x, logits, z, mu, logvar, prior=prior, beta=2.0, alpha=3.0,
                                     num_prior_samples=11)
    torch.manual_seed(5)
    z_prior = prior.rsample((11,))
    components = torch.distributions.Normal(mu[None], (0.5 * logvar[None]).exp()).log_prob(z_prior[:, None])
    log_q = torch.logsumexp(components.sum(2), 1) - math.log(7)
    divergence = (prior.log_prob(z_prior) - log_q).mean()
    kl = (torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1) - prior.log_prob(z)).mean()
    torch.testing.assert_close(terms["divergence"], divergence.detach())
    torch.testing.assert_close(loss, reconstruction_nll(x, logits).mean() + 2.0 * kl + 3.0 * divergence)


def test_imq_mmd_by_hand():
    """Per dimension with the reference's constant ``C = 2 c``; joint on whole vectors with
    ``C = 2 D c``."""
    a, b = torch.randn(4, 2, dtype=f64), 1 + torch.randn(5, 2, dtype=f64)

    def k(sq, width):
        return sum(width * c / (width * c + sq) for c in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0))

    def u_statistic(A, Bd, kernel):
        return (sum(kernel(s, t) for i, s in enumerate(A) for j, t in enumerate(A) if i != j) / (4 * 3)
                + sum(kernel(s, t) for i, s in enumerate(Bd) for j, t in enumerate(Bd) if i != j) / (5 * 4)
                - 2 * sum(kernel(s, t) for s in A for t in Bd) / (4 * 5))

    per_dim = sum(u_statistic(a[:, d].tolist(), b[:, d].tolist(), lambda s, t: k((s - t) ** 2, 2.0))
                  for d in range(2))
    joint = u_statistic(list(a), list(b), lambda s, t: k(float(((s - t) ** 2).sum()), 4.0))
    assert IMQ_SCALES == (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
    assert float(imq_mmd(a, b)) == pytest.approx(per_dim, rel=1e-12)
    assert float(imq_mmd(a, b, joint=True)) == pytest.approx(joint, rel=1e-12)


def test_the_joint_mmd_sees_dependence_the_per_dimension_one_cannot():
    """``q`` with the prior's marginals but all dimensions equal (perfectly correlated), and a
    mixture with its dimensions shuffled apart: the per-dimension MMD scores them like two prior
    samples, the joint MMD far above."""
    torch.manual_seed(0)
    n, D = 400, 3
    prior = lambda: torch.randn(n, D, dtype=f64)  # noqa: E731
    null = {joint: [float(imq_mmd(prior(), prior(), joint=joint)) for _ in range(5)] for joint in (False, True)}
    correlated = torch.randn(n, 1, dtype=f64).expand(n, D)
    mixture = GaussianMixture(torch.tensor([[-2.0, -2, -2], [2, 2, 2]], dtype=f64),
                              torch.full((2, D), 0.3, dtype=f64), torch.zeros(2, dtype=f64))
    clustered = mixture.sample((n,))
    shuffled = torch.stack([c[torch.randperm(n)] for c in clustered.T], 1)  # same marginals, no clusters
    for q, reference in ((correlated, prior()), (clustered, shuffled)):
        per_dim, joint = (float(imq_mmd(q, reference, joint=j)) for j in (False, True))
        assert abs(per_dim) < 3 * max(abs(v) for v in null[False])
        assert joint > 10 * max(abs(v) for v in null[True])


def test_a_learned_mixture_prior_receives_the_expected_gradient_through_the_inclusive_kl():
    """The mixture's draws cannot carry a pathwise gradient; with the score-function term the
    gradient of ``D = E_p[log p - log q]`` with respect to the mixture's weights, means and scales
    matches, on average over draws, the gradient of a brute-force ``D``: the components
    enumerated, each reparameterised with 40,000 common normal draws."""
    torch.manual_seed(0)
    B, D, K = 16, 2, 3
    prior = LearnedGaussianMixture(K, D, init_spread=1.5, init_scale=0.7).double()
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.5, -0.3, 0.0]))
    mu, logvar = torch.randn(B, D, dtype=f64), -1 + 0.3 * torch.randn(B, D, dtype=f64)
    x, logits, z = torch.zeros(B, 1, dtype=f64), torch.zeros(B, 1, dtype=f64), mu

    def log_q(points):  # the batch's aggregate posterior
        comps = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(points[:, None]).sum(-1)
        return torch.logsumexp(comps, 1) - math.log(B)

    eps = torch.randn(40_000, D, dtype=f64)
    weights = prior.logits.log_softmax(0).exp()
    brute = sum(weights[k] * (lambda pts: (prior(pts) - log_q(pts)).mean())(
        prior.loc[k] + prior.log_scale[k].exp() * eps) for k in range(K))
    expected = torch.autograd.grad(brute, list(prior.parameters()))
    draws = []
    for _ in range(300):
        loss, _ = decomposition_loss(x, logits, z, mu, logvar, prior=prior, beta=0.0, alpha=1.0,
                                     num_prior_samples=256, recon="gaussian")
        draws.append(torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(prior.parameters()))]))
    draws = torch.stack(draws)
    mean, error = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    target = torch.cat([g.flatten() for g in expected])
    assert target.abs().max() > 0.05  # a gradient worth getting right
    assert ((mean - target).abs() < 4 * error + 0.01).all(), (mean, target, error)


def test_mmd_is_near_zero_for_one_distribution_and_positive_for_two():
    n, D = 200, 4
    prior = SpikeAndSlab(D, gamma=0.7, spike_scale=0.05, slab_scale=1.0)
    same = [float(imq_mmd(prior.sample((n,)), prior.sample((n,)))) for _ in range(3)]
    different = float(imq_mmd(torch.randn(n, D), prior.sample((n,))))
    assert max(abs(s) for s in same) < 0.1, same  # typically ~0.01; "different" is ~2
    assert different > 1.0, different
    x, logits, z, mu, logvar = batch(B=9, D=D, dtype=torch.float32)
    torch.manual_seed(3)
    _, terms = decomposition_loss(x, logits, z, mu, logvar, prior=prior, alpha=1.0, divergence="mmd_dim")
    torch.manual_seed(3)
    torch.testing.assert_close(terms["divergence"], imq_mmd(z, prior.sample((9,))).detach())


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("make_prior", [
    lambda D: IsotropicGaussian(D), lambda D: StudentTProduct(D, 3.0), lambda D: SpikeAndSlab(D),
    lambda D: LearnedAnisotropicGaussian(D, 0.8), lambda D: LearnedGaussianMixture(3, D)])
def test_everything_backpropagates(divergence, make_prior):
    x, logits, z, mu, logvar = batch(B=6, D=5, dtype=torch.float32)
    loss_fn = DecompositionLoss(make_prior(5), beta=2.0, alpha=1.0, divergence=divergence)
    loss, terms = loss_fn(x, logits, z, mu, logvar)
    assert set(terms) == {"loss", "recon", "kl", "divergence"} and not terms["loss"].requires_grad
    loss.backward()
    for t in (logits, mu, logvar, *loss_fn.parameters()):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


def test_decomposition_bad_input():
    x, logits, z, mu, logvar = batch(D=3)
    with pytest.raises(ValueError, match="divergence must be one of"):
        DecompositionLoss(IsotropicGaussian(3), divergence="js")
    with pytest.raises(ValueError, match="prior must be a torch.distributions.Distribution"):
        DecompositionLoss(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"event shape \[3\]"):
        decomposition_loss(x, logits, z, mu, logvar, prior=IsotropicGaussian(4))
    with pytest.raises(ValueError, match="beta and alpha must be non-negative"):
        decomposition_loss(x, logits, z, mu, logvar, prior=IsotropicGaussian(3), alpha=-1.0)
    with pytest.raises(ValueError, match="num_prior_samples must be a positive int"):
        decomposition_loss(x, logits, z, mu, logvar, prior=IsotropicGaussian(3), num_prior_samples=0)
    with pytest.raises(ValueError, match="at least 2 samples"):
        decomposition_loss(x[:1], logits[:1], z[:1], mu[:1], logvar[:1], prior=IsotropicGaussian(3),
                           alpha=1.0, divergence="mmd_dim")
    with pytest.raises(ValueError, match="variant must be 'i' or 'ii'"):
        DIPVAELoss("iii")
    with pytest.raises(ValueError, match="lambda_od and lambda_d must be non-negative"):
        dip_vae_loss(x, logits, z, mu, logvar, lambda_od=-1.0)
    with pytest.raises(ValueError, match="z has shape"):
        dip_vae_loss(x, logits, z[:, :2], mu, logvar)


def test_gradcheck_of_the_new_penalties():
    a, b = torch.randn(3, 2, dtype=f64, requires_grad=True), torch.randn(4, 2, dtype=f64, requires_grad=True)
    assert torch.autograd.gradcheck(imq_mmd, (a, b))
    mu = torch.randn(5, 3, dtype=f64, requires_grad=True)
    logvar = torch.randn(5, 3, dtype=f64, requires_grad=True)
    x = torch.zeros(5, 1, dtype=f64)
    for variant in ("i", "ii"):
        assert torch.autograd.gradcheck(
            lambda m, lv: dip_vae_loss(x, x, m, m, lv, variant=variant, recon="gaussian")[0], (mu, logvar))
    prior = SpikeAndSlab(3, gamma=0.6, spike_scale=torch.tensor(0.2, dtype=f64))

    def objective(m, lv):  # reseeded so every evaluation sees the same prior draws
        torch.manual_seed(0)
        return decomposition_loss(x, x, m, m, lv, prior=prior, alpha=1.0, recon="gaussian")[0]

    assert torch.autograd.gradcheck(objective, (mu, logvar))


def test_decomposition_module_and_functional_agree():
    x, logits, z, mu, logvar = batch(D=3)
    prior = StudentTProduct(3, 4.0, scale=torch.tensor(0.8, dtype=f64))
    torch.manual_seed(11)
    a, _ = DecompositionLoss(prior, beta=3.0, alpha=2.0, divergence="mmd_dim", num_prior_samples=5)(
        x, logits, z, mu, logvar)
    torch.manual_seed(11)
    b, _ = decomposition_loss(x, logits, z, mu, logvar, prior=prior, beta=3.0, alpha=2.0,
                              divergence="mmd_dim", num_prior_samples=5)
    torch.testing.assert_close(a, b)
