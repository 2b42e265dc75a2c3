"""Drop-in VAE objectives: ``nn.Module`` losses and their functional twins.

Every loss takes ``(x, x_logits_or_mean, z, mu, logvar)`` — the data batch ``[B, ...]``, the
decoder output of the same shape (Bernoulli logits or Gaussian means), the sampled codes
``z [B, D]`` and the posterior parameters ``mu, logvar [B, D]`` — and returns the scalar loss (mean
over the batch) and a dict of its terms (detached scalars, also batch means).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msvae.ops import mixture_log_density
from msvae.ops.reference import gaussian_log_density

RECONSTRUCTIONS = ("bernoulli", "gaussian")
Reconstruction = str | Callable[[Tensor, Tensor], Tensor]


def reconstruction_nll(x: Tensor, x_logits_or_mean: Tensor, recon: Reconstruction = "bernoulli") -> Tensor:
    """Per-sample negative log-likelihood ``[B]`` summed over all non-batch dimensions.

    ``"bernoulli"``: binary cross-entropy with logits; ``"gaussian"``: unit-variance Gaussian,
    ``0.5 * sum (x - mean)^2`` (the constant dropped); a callable maps ``(x, output)`` to ``[B]``.
    """
    if x.shape != x_logits_or_mean.shape:
        raise ValueError(f"x_logits_or_mean must have the shape of x {tuple(x.shape)}, "
                         f"got {tuple(x_logits_or_mean.shape)}")
    if callable(recon):
        return recon(x, x_logits_or_mean)
    if recon == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(x_logits_or_mean, x, reduction="none")
    elif recon == "gaussian":
        nll = 0.5 * (x - x_logits_or_mean) ** 2
    else:
        raise ValueError(f"recon must be one of {RECONSTRUCTIONS} or a callable, got {recon!r}")
    return nll.reshape(x.shape[0], -1).sum(1)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample and dimension, ``[B, D]``."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def _check_codes(x: Tensor, z: Tensor, mu: Tensor, logvar: Tensor) -> None:
    for name, t in (("z", z), ("mu", mu), ("logvar", logvar)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be 2-D [B, D], got shape {tuple(t.shape)}")
        if t.shape != mu.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)} but mu has {tuple(mu.shape)}")
    if x.shape[0] != mu.shape[0]:
        raise ValueError(f"x has batch size {x.shape[0]} but mu has {mu.shape[0]}")


def beta_vae_loss(x: Tensor, x_logits_or_mean: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, *,
                  beta: float = 4.0, recon: Reconstruction = "bernoulli") -> tuple[Tensor, dict]:
    """beta-VAE (Higgins et al. 2017): ``recon + beta * KL(q(z|x) || N(0, I))``."""
    _check_codes(x, z, mu, logvar)
    nll = reconstruction_nll(x, x_logits_or_mean, recon).mean()
    kl = gaussian_kl(mu, logvar).sum(1).mean()
    loss = nll + beta * kl
    return loss, {"loss": loss.detach(), "recon": nll.detach(), "kl": kl.detach()}


def beta_tcvae_loss(x: Tensor, x_logits_or_mean: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, *,
                    dataset_size: int, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
                    estimator: str = "mss", recon: Reconstruction = "bernoulli",
                    backend: str | None = None) -> tuple[Tensor, dict]:
    """beta-TCVAE (Chen et al. 2018): ``recon + alpha * MI + beta * TC + gamma * dwKL``.

    With ``J = log q(z)`` and ``M_d = log q(z_d)`` estimated on the minibatch by
    ``msvae.ops.mixture_log_density`` (``estimator`` ``"mss"`` or ``"mws"``):
    ``MI = log q(z|x) - J``, ``TC = J - sum_d M_d``, ``dwKL = sum_d M_d - log p(z)``, batch means.
    Their sum is the single-sample estimate of KL(q(z|x) || p(z)), whatever the estimator.
    """
    if estimator not in ("mss", "mws"):
        raise ValueError(f"estimator must be 'mss' or 'mws', got {estimator!r}")
    _check_codes(x, z, mu, logvar)
    nll = reconstruction_nll(x, x_logits_or_mean, recon).mean()
    log_qz_given_x = gaussian_log_density(z, mu, logvar).sum(1)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    log_qz, log_qz_marginals = mixture_log_density(z, mu, logvar, weights=estimator,
                                                   dataset_size=dataset_size, backend=backend)
    log_prod_qzd = log_qz_marginals.sum(1)
    mi = (log_qz_given_x - log_qz).mean()
    tc = (log_qz - log_prod_qzd).mean()
    dwkl = (log_prod_qzd - log_pz).mean()
    loss = nll + alpha * mi + beta * tc + gamma * dwkl
    kl = gaussian_kl(mu, logvar).sum(1).mean()
    terms = {"loss": loss, "recon": nll, "kl": kl, "mi": mi, "tc": tc, "dwkl": dwkl}
    return loss, {name: value.detach() for name, value in terms.items()}


class BetaVAELoss(nn.Module):
    """Module form of ``beta_vae_loss``."""

    def __init__(self, beta: float = 4.0, recon: Reconstruction = "bernoulli"):
        super().__init__()
        self.beta, self.recon = beta, recon

    def forward(self, x, x_logits_or_mean, z, mu, logvar):
        return beta_vae_loss(x, x_logits_or_mean, z, mu, logvar, beta=self.beta, recon=self.recon)


class BetaTCVAELoss(nn.Module):
    """Module form of ``beta_tcvae_loss``; ``dataset_size`` is N, the training-set size."""

    def __init__(self, dataset_size: int, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
                 estimator: str = "mss", recon: Reconstruction = "bernoulli",
                 backend: str | None = None):
        super().__init__()
        if estimator not in ("mss", "mws"):
            raise ValueError(f"estimator must be 'mss' or 'mws', got {estimator!r}")
        if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
        self.dataset_size, self.estimator, self.backend = dataset_size, estimator, backend
        self.alpha, self.beta, self.gamma, self.recon = alpha, beta, gamma, recon

    def forward(self, x, x_logits_or_mean, z, mu, logvar):
        return beta_tcvae_loss(x, x_logits_or_mean, z, mu, logvar, dataset_size=self.dataset_size,
                               alpha=self.alpha, beta=self.beta, gamma=self.gamma,
                               estimator=self.estimator, recon=self.recon, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"dataset_size={self.dataset_size}, alpha={self.alpha}, beta={self.beta}, "
                f"gamma={self.gamma}, estimator={self.estimator!r}")
