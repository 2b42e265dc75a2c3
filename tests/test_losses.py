"""msvae.losses: beta-VAE and beta-TCVAE terms, estimator behaviour and bad input."""
import math

import pytest
import torch

from conftest import loss_batch
from msvae.losses import (BetaTCVAELoss, BetaVAELoss, beta_tcvae_loss, beta_vae_loss, gaussian_kl,
                          reconstruction_nll)
from msvae.ops.reference import gaussian_log_density


batch = loss_batch


def test_beta_vae_loss_by_hand():
    x, logits, z, mu, logvar = batch()
    loss, terms = BetaVAELoss(beta=4.0)(x, logits, z, mu, logvar)
    p = torch.sigmoid(logits)
    bce = -(x * p.log() + (1 - x) * (1 - p).log()).flatten(1).sum(1).mean()
    kl = (0.5 * (mu ** 2 + logvar.exp() - logvar - 1)).sum(1).mean()
    torch.testing.assert_close(loss, bce + 4.0 * kl)
    torch.testing.assert_close(terms["recon"], bce.detach())
    torch.testing.assert_close(terms["kl"], kl.detach())
    assert not terms["kl"].requires_grad
    loss.backward()
    assert logits.grad is not None and mu.grad is not None and logvar.grad is not None


def test_gaussian_reconstruction_and_callable():
    x, mean = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(reconstruction_nll(x, mean, "gaussian"), 0.5 * ((x - mean) ** 2).sum(1))
    torch.testing.assert_close(reconstruction_nll(x, mean, lambda a, b: (a - b).abs().sum(1)),
                               (x - mean).abs().sum(1))


def test_reconstruction_refuses_targets_it_cannot_score():
    logits = torch.zeros(2, 4)
    with pytest.raises(ValueError, match=r"targets in \[0, 1\].*divide 8-bit ones by 255"):
        reconstruction_nll(torch.full((2, 4), 255.0), logits)
    with pytest.raises(ValueError, match="targets in"):
        BetaTCVAELoss(dataset_size=10, recon="bernoulli")(
            torch.full((2, 4), -0.5), logits, torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="finite targets"):
        reconstruction_nll(torch.tensor([[float("nan")]]), torch.zeros(1, 1), "gaussian")
    assert torch.isfinite(reconstruction_nll(torch.full((2, 4), 1e3), logits, "gaussian")).all()


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p))


@pytest.mark.parametrize("estimator", ["mss", "mws"])
def test_tcvae_terms_by_hand(estimator):
    x, logits, z, mu, logvar = batch()
    N = 500
    loss, terms = BetaTCVAELoss(N, alpha=1.5, beta=6.0, gamma=0.5, estimator=estimator)(
        x, logits, z, mu, logvar)
    # Dense [B, B, D] computation with the weight matrix written out.
    B, D = mu.shape
    f = gaussian_log_density(z[:, None], mu[None], logvar[None])
    if estimator == "mws":
        lw = torch.full((B, B), -math.log(B * N), dtype=z.dtype)
    else:
        M = B - 1
        w = torch.full((B, B), 1 / M, dtype=z.dtype)
        idx = torch.arange(B)
        w[idx, (idx + 1) % B] = (N - M) / (N * M)
        w[idx, idx] = 1 / N
        lw = w.log()
    log_qz = torch.logsumexp(lw + f.sum(2), 1)
    log_qzd = torch.logsumexp(lw[..., None] + f, 1).sum(1)
    log_qz_x = gaussian_log_density(z, mu, logvar).sum(1)
    log_pz = (-0.5 * (z ** 2 + math.log(2 * math.pi))).sum(1)
    mi, tc, dwkl = (log_qz_x - log_qz).mean(), (log_qz - log_qzd).mean(), (log_qzd - log_pz).mean()
    recon = reconstruction_nll(x, logits).mean()
    torch.testing.assert_close(terms["mi"], mi.detach())
    torch.testing.assert_close(terms["tc"], tc.detach())
    torch.testing.assert_close(terms["dwkl"], dwkl.detach())
    torch.testing.assert_close(loss, recon + 1.5 * mi + 6.0 * tc + 0.5 * dwkl)
    loss.backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(logvar.grad).all()


def test_tcvae_backends_agree():
    x, logits, z, mu, logvar = batch(B=32, D=5)
    ref, ref_terms = beta_tcvae_loss(x, logits, z, mu, logvar, dataset_size=1000, backend="reference")
    fused, fused_terms = beta_tcvae_loss(x, logits, z, mu, logvar, dataset_size=1000)
    torch.testing.assert_close(fused, ref)
    g_ref = torch.autograd.grad(ref, (mu, logvar), retain_graph=True)
    g_fused = torch.autograd.grad(fused, (mu, logvar))
    for a, b in zip(g_fused, g_ref):
        torch.testing.assert_close(a, b)


def _posterior_batch(B, D, generator):
    mu = torch.randn(B, D, dtype=torch.float64, generator=generator)
    logvar = torch.full((B, D), math.log(0.3), dtype=torch.float64)
    z = mu + torch.randn(B, D, dtype=torch.float64, generator=generator) * (0.5 * logvar).exp()
    return z, mu, logvar


def test_mws_terms_sum_to_the_monte_carlo_kl_and_converge_to_the_analytic_kl():
    """mi + tc + dwkl telescopes to mean(log q(z|x) - log p(z)), the Monte-Carlo KL, whose error
    against the analytic KL shrinks as the batch grows."""
    generator = torch.Generator().manual_seed(0)
    errors = {}
    for B in (16, 4096):
        errs = []
        for _ in range(5):
            z, mu, logvar = _posterior_batch(B, 3, generator)
            x = torch.zeros(B, 1, dtype=torch.float64)
            _, terms = beta_tcvae_loss(x, x, z, mu, logvar, dataset_size=10 * B, estimator="mws",
                                       recon="gaussian")
            total = terms["mi"] + terms["tc"] + terms["dwkl"]
            mc_kl = (gaussian_log_density(z, mu, logvar).sum(1)
                     - gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)).mean()
            torch.testing.assert_close(total, mc_kl, rtol=1e-12, atol=1e-10)
            errs.append(abs(float(total - terms["kl"])))
        errors[B] = sum(errs) / len(errs)
    assert errors[4096] < 0.2 * errors[16]
    assert errors[4096] < 0.05


@pytest.mark.parametrize("weights", ["uniform", "mss"])
def test_total_correlation_estimate_recovers_a_known_gaussian_tc(weights):
    """Posteriors N(m_n, s^2 I) with means m_n ~ N(0, S) aggregate to q(z) = N(0, S + s^2 I), whose
    total correlation is -0.5 log det(correlation). With the whole data set as the batch the
    minibatch estimate of TC = E[log q(z) - sum_d log q(z_d)] approaches it."""
    from msvae.ops import mixture_log_density
    generator = torch.Generator().manual_seed(1)
    B, rho, s2 = 3000, 0.9, 0.25
    chol = torch.linalg.cholesky(torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64))
    mu = torch.randn(B, 2, dtype=torch.float64, generator=generator) @ chol.T
    logvar = torch.full_like(mu, math.log(s2))
    z = mu + math.sqrt(s2) * torch.randn(B, 2, dtype=torch.float64, generator=generator)
    joint, marginal = mixture_log_density(z, mu, logvar, weights=weights, dataset_size=B)
    estimate = float((joint - marginal.sum(1)).mean())
    corr = rho / (1 + s2)
    truth = -0.5 * math.log(1 - corr ** 2)
    assert abs(estimate - truth) < 0.05, (estimate, truth)
    # Independent factors: the same estimator reads (close to) zero.
    mu_ind = torch.randn(B, 2, dtype=torch.float64, generator=generator)
    z_ind = mu_ind + math.sqrt(s2) * torch.randn(B, 2, dtype=torch.float64, generator=generator)
    joint, marginal = mixture_log_density(z_ind, mu_ind, logvar, weights=weights, dataset_size=B)
    assert abs(float((joint - marginal.sum(1)).mean())) < 0.05


def test_functional_and_module_agree():
    x, logits, z, mu, logvar = batch()
    a, _ = BetaTCVAELoss(200, beta=3.0)(x, logits, z, mu, logvar)
    b, _ = beta_tcvae_loss(x, logits, z, mu, logvar, dataset_size=200, beta=3.0)
    torch.testing.assert_close(a, b)
    a, _ = BetaVAELoss(beta=2.0, recon="gaussian")(x, logits, z, mu, logvar)
    b, _ = beta_vae_loss(x, logits, z, mu, logvar, beta=2.0, recon="gaussian")
    torch.testing.assert_close(a, b)


def test_bad_input():
    x, logits, z, mu, logvar = batch()
    with pytest.raises(ValueError, match="estimator must be"):
        BetaTCVAELoss(100, estimator="exact")
    with pytest.raises(ValueError, match="dataset_size must be a positive int"):
        BetaTCVAELoss(0)
    with pytest.raises(ValueError, match="recon must be one of"):
        beta_vae_loss(x, logits, z, mu, logvar, recon="poisson")
    with pytest.raises(ValueError, match="x_logits_or_mean must have the shape of x"):
        beta_vae_loss(x, logits[:, :, :3], z, mu, logvar)
    with pytest.raises(ValueError, match="z has shape"):
        beta_vae_loss(x, logits, z[:, :2], mu, logvar)
    with pytest.raises(ValueError, match="x has batch size"):
        beta_vae_loss(x[:3], logits[:3], z, mu, logvar)
    with pytest.raises(ValueError, match="dataset_size must be >= the batch size"):
        beta_tcvae_loss(x, logits, z, mu, logvar, dataset_size=4)
