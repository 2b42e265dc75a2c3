"""Drop-in VAE objectives: ``nn.Module`` losses and their functional twins — beta-VAE, beta-TCVAE,
FactorVAE, DIP-VAE and the alpha/beta decomposition objective with structured priors.

Every loss takes ``(x, x_logits_or_mean, z, mu, logvar)`` — the data batch ``[B, ...]``, the
decoder output of the same shape (Bernoulli logits or Gaussian means), the sampled codes
``z [B, D]`` and the posterior parameters ``mu, logvar [B, D]`` — and returns the scalar loss (mean
over the batch) and a dict of its terms (detached scalars, also batch means).

Under data parallelism, ``process_group`` (beta-TCVAE, DIP-VAE, the decomposition objective and
FactorVAE's discriminator) makes the batch-level estimators see the global batch: the posteriors
of every rank are gathered with gradients (``msvae.distributed.gather_rows``), each rank's own
rows are the queries, so the op's memory stays ``O((B_local + B_global) D)``, and with
DistributedDataParallel's gradient average the update is that of the one-process loss on the
global batch. ``None`` (the default): this process's batch only.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from msvae.distributed import gather_rows, rank_and_size
from msvae.ops import mixture_log_density
from msvae.ops.reference import gaussian_log_density
from msvae.priors import AnisotropicGaussian, LearnedPrior, as_distribution

RECONSTRUCTIONS = ("bernoulli", "gaussian")
Reconstruction = str | Callable[[Tensor, Tensor], Tensor]


def reconstruction_nll(x: Tensor, x_logits_or_mean: Tensor, recon: Reconstruction = "bernoulli") -> Tensor:
    """Per-sample negative log-likelihood ``[B]`` summed over all non-batch dimensions.

    ``"bernoulli"``: binary cross-entropy with logits; ``"gaussian"``: unit-variance Gaussian,
    ``0.5 * sum (x - mean)^2`` (the constant dropped); a callable maps ``(x, output)`` to ``[B]``.
    Bernoulli targets must lie in [0, 1] (``ValueError`` otherwise: the loss would have no lower
    bound); Gaussian ones must be finite.
    """
    if x.shape != x_logits_or_mean.shape:
        raise ValueError(f"x_logits_or_mean must have the shape of x {tuple(x.shape)}, "
                         f"got {tuple(x_logits_or_mean.shape)}")
    if callable(recon):
        return recon(x, x_logits_or_mean)
    if recon == "bernoulli":
        if not bool(((x >= 0) & (x <= 1)).all()):
            raise ValueError("Bernoulli reconstruction needs targets in [0, 1] (scale images to "
                             f"[0, 1], e.g. divide 8-bit ones by 255); got values in "
                             f"[{float(x.min()):g}, {float(x.max()):g}]")
        nll = F.binary_cross_entropy_with_logits(x_logits_or_mean, x, reduction="none")
    elif recon == "gaussian":
        if not bool(torch.isfinite(x).all()):
            raise ValueError("Gaussian reconstruction needs finite targets")
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


def _global_posteriors(mu: Tensor, logvar: Tensor, group, own_rows_first: bool = False) -> tuple[Tensor, Tensor]:
    """Every rank's ``(mu, logvar)`` ``[B_global, D]`` (``gather_rows``; this rank's own for
    ``group=None``); with ``own_rows_first`` rotated so that this rank's rows come first and the
    cyclic order is kept (MSS: query ``i``'s strata are components ``i`` and ``i + 1``)."""
    rank, size = rank_and_size(group)
    if size == 1:
        return mu, logvar
    both = gather_rows(torch.cat([mu, logvar], 1), group)
    if own_rows_first:
        both = both.roll(-rank * mu.shape[0], 0)
    return both.chunk(2, 1)


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
                    backend: str | None = None, process_group=None) -> tuple[Tensor, dict]:
    """beta-TCVAE (Chen et al. 2018): ``recon + alpha * MI + beta * TC + gamma * dwKL``.

    With ``J = log q(z)`` and ``M_d = log q(z_d)`` estimated on the minibatch by
    ``msvae.ops.mixture_log_density`` (``estimator`` ``"mss"`` or ``"mws"``):
    ``MI = log q(z|x) - J``, ``TC = J - sum_d M_d``, ``dwKL = sum_d M_d - log p(z)``, batch means.
    Their sum is the single-sample estimate of KL(q(z|x) || p(z)), whatever the estimator.
    With ``process_group`` the mixture is the global batch's (MSS strata over the global batch,
    ranks' rows in rank order); the terms are means over this rank's rows.
    """
    if estimator not in ("mss", "mws"):
        raise ValueError(f"estimator must be 'mss' or 'mws', got {estimator!r}")
    _check_codes(x, z, mu, logvar)
    nll = reconstruction_nll(x, x_logits_or_mean, recon).mean()
    log_qz_given_x = gaussian_log_density(z, mu, logvar).sum(1)
    log_pz = gaussian_log_density(z, torch.zeros_like(z), torch.zeros_like(z)).sum(1)
    components_mu, components_logvar = _global_posteriors(mu, logvar, process_group,
                                                          own_rows_first=estimator == "mss")
    log_qz, log_qz_marginals = mixture_log_density(z, components_mu, components_logvar, weights=estimator,
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

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


class BetaTCVAELoss(nn.Module):
    """Module form of ``beta_tcvae_loss``; ``dataset_size`` is N, the training-set size."""

    def __init__(self, dataset_size: int, alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
                 estimator: str = "mss", recon: Reconstruction = "bernoulli",
                 backend: str | None = None, process_group=None):
        super().__init__()
        if estimator not in ("mss", "mws"):
            raise ValueError(f"estimator must be 'mss' or 'mws', got {estimator!r}")
        if isinstance(dataset_size, bool) or not isinstance(dataset_size, int) or dataset_size < 1:
            raise ValueError(f"dataset_size must be a positive int, got {dataset_size!r}")
        self.dataset_size, self.estimator, self.backend = dataset_size, estimator, backend
        self.alpha, self.beta, self.gamma, self.recon = alpha, beta, gamma, recon
        self.process_group = process_group

    def forward(self, x, x_logits_or_mean, z, mu, logvar):
        return beta_tcvae_loss(x, x_logits_or_mean, z, mu, logvar, dataset_size=self.dataset_size,
                               alpha=self.alpha, beta=self.beta, gamma=self.gamma,
                               estimator=self.estimator, recon=self.recon, backend=self.backend,
                               process_group=self.process_group)

    def extra_repr(self) -> str:
        return (f"dataset_size={self.dataset_size}, alpha={self.alpha}, beta={self.beta}, "
                f"gamma={self.gamma}, estimator={self.estimator!r}")


# ---- FactorVAE ------------------------------------------------------------------------------

def factor_vae_discriminator(latent_dim: int, hidden: int = 1000, layers: int = 6) -> nn.Module:
    """The FactorVAE discriminator (Kim & Mnih 2018): an MLP of ``layers`` linear layers, ``hidden``
    units, LeakyReLU(0.2), mapping ``z [B, D]`` to 2 logits (0: "from q(z)", 1: "permuted")."""
    if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
        raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
    if layers < 2 or hidden < 1:
        raise ValueError(f"layers must be >= 2 and hidden >= 1, got layers={layers}, hidden={hidden}")
    widths = [latent_dim] + [hidden] * (layers - 1)
    blocks = [m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.LeakyReLU(0.2))]
    return nn.Sequential(*blocks, nn.Linear(hidden, 2))


def permute_dims(z: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Shuffle each column of ``z [B, D]`` independently across the batch: a sample of the product of
    the marginals ``prod_d q(z_d)`` that keeps every dimension's empirical marginal."""
    if z.dim() != 2:
        raise ValueError(f"z must be 2-D [B, D], got shape {tuple(z.shape)}")
    order = torch.rand(z.shape, generator=generator, device=z.device).argsort(0)
    return z.gather(0, order)


def _discriminator_logits(discriminator: nn.Module, z: Tensor, *, track_parameters: bool) -> Tensor:
    if track_parameters:
        logits = discriminator(z)
    else:  # gradient reaches z only, never the discriminator's parameters
        frozen = {name: t.detach() for name, t in
                  [*discriminator.named_parameters(), *discriminator.named_buffers()]}
        logits = torch.func.functional_call(discriminator, frozen, (z,))
    if logits.shape != (z.shape[0], 2):
        raise ValueError(f"discriminator must map [B, D] codes to [B, 2] logits, got {tuple(logits.shape)}")
    return logits


def factor_vae_loss(x: Tensor, x_logits_or_mean: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, *,
                    discriminator: nn.Module, gamma: float = 40.0,
                    recon: Reconstruction = "bernoulli") -> tuple[Tensor, dict]:
    """FactorVAE (Kim & Mnih 2018): ``recon + KL(q(z|x) || N(0, I)) + gamma * TC``.

    ``TC = mean(D(z)_0 - D(z)_1)`` is the density-ratio estimate of KL(q(z) || prod_d q(z_d)) by the
    discriminator, which is not updated here (its parameters get no gradient from this loss); train
    it with ``FactorVAELoss.discriminator_step``.
    """
    _check_codes(x, z, mu, logvar)
    nll = reconstruction_nll(x, x_logits_or_mean, recon).mean()
    kl = gaussian_kl(mu, logvar).sum(1).mean()
    logits = _discriminator_logits(discriminator, z, track_parameters=False)
    tc = (logits[:, 0] - logits[:, 1]).mean()
    loss = nll + kl + gamma * tc
    return loss, {"loss": loss.detach(), "recon": nll.detach(), "kl": kl.detach(), "tc": tc.detach()}


class FactorVAELoss(nn.Module):
    """Module form of ``factor_vae_loss``, owning the discriminator (default ``factor_vae_discriminator``).

    Training protocol of the paper, per step: draw two batches; the VAE update uses batch 1
    (``loss_fn(x1, ...)``, backward, step); then ``loss_fn.discriminator_step(z1, optimizer, z2)``
    trains the discriminator to tell batch 1's codes (class 0) from batch 2's codes with each dimension
    shuffled (class 1). Passing only ``z1`` permutes batch 1 itself, a common simplification. Give the
    discriminator its own optimiser (the paper: Adam, lr 1e-4, betas (0.5, 0.9)).
    """

    def __init__(self, latent_dim: int, gamma: float = 40.0, discriminator: nn.Module | None = None,
                 recon: Reconstruction = "bernoulli", process_group=None):
        super().__init__()
        if isinstance(latent_dim, bool) or not isinstance(latent_dim, int) or latent_dim < 1:
            raise ValueError(f"latent_dim must be a positive int, got {latent_dim!r}")
        if discriminator is None:
            discriminator = factor_vae_discriminator(latent_dim)
        self.discriminator = discriminator
        self.latent_dim, self.gamma, self.recon = latent_dim, gamma, recon
        self.process_group = process_group

    def forward(self, x, x_logits_or_mean, z, mu, logvar):
        return factor_vae_loss(x, x_logits_or_mean, z, mu, logvar, discriminator=self.discriminator,
                               gamma=self.gamma, recon=self.recon)

    def discriminator_loss(self, z: Tensor, z_permuted_source: Tensor | None = None) -> Tensor:
        """Cross-entropy of the discriminator on ``z`` (class 0) and ``permute_dims`` of
        ``z_permuted_source`` (default ``z``; class 1), both detached, halves weighted equally.
        With ``process_group`` the permutation is of the global batch (drawn on the group's first
        rank, the same for all), and this rank scores its share of the permuted rows."""
        source = z if z_permuted_source is None else z_permuted_source
        for name, t in (("z", z), ("z_permuted_source", source)):
            if t.dim() != 2 or t.shape[1] != self.latent_dim:
                raise ValueError(f"{name} must have shape [B, {self.latent_dim}], got {tuple(t.shape)}")
        rank, size = rank_and_size(self.process_group)
        if size == 1:
            permuted = permute_dims(source.detach())
        else:
            permuted = permute_dims(gather_rows(source.detach(), self.process_group))
            dist.broadcast(permuted, dist.get_global_rank(self.process_group, 0), group=self.process_group)
            permuted = permuted.chunk(size)[rank]
        real = _discriminator_logits(self.discriminator, z.detach(), track_parameters=True)
        fake = _discriminator_logits(self.discriminator, permuted, track_parameters=True)
        return 0.5 * (F.cross_entropy(real, real.new_zeros(len(real), dtype=torch.long))
                      + F.cross_entropy(fake, fake.new_ones(len(fake), dtype=torch.long)))

    def discriminator_step(self, z: Tensor, optimizer: torch.optim.Optimizer,
                           z_permuted_source: Tensor | None = None) -> float:
        """One optimiser step on ``discriminator_loss``; returns the loss before the step."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.discriminator_loss(z, z_permuted_source)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, gamma={self.gamma}"


# ---- DIP-VAE --------------------------------------------------------------------------------

def dip_covariance(mu: Tensor, logvar: Tensor, variant: str, process_group=None) -> Tensor:
    """The covariance DIP-VAE pushes towards I, ``[D, D]`` over the batch (the global batch with
    ``process_group``): ``Cov[mu]`` (``"i"``) or the aggregate posterior's
    ``E[diag(exp(logvar))] + Cov[mu]`` (``"ii"``); population (1/B) moments."""
    mu, logvar = _global_posteriors(mu, logvar, process_group)
    centred = mu - mu.mean(0)
    cov = centred.T @ centred / mu.shape[0]
    return cov + torch.diag(logvar.exp().mean(0)) if variant == "ii" else cov


def dip_vae_loss(x: Tensor, x_logits_or_mean: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, *,
                 variant: str = "ii", lambda_od: float = 10.0, lambda_d: float | None = None,
                 recon: Reconstruction = "bernoulli", process_group=None) -> tuple[Tensor, dict]:
    """DIP-VAE (Kumar et al. 2018): ``recon + KL + lambda_od sum_{i!=j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2``
    with ``C = dip_covariance(mu, logvar, variant)``; ``lambda_d`` defaults to the paper's
    ``10 * lambda_od`` (DIP-VAE-I) or ``lambda_od`` (DIP-VAE-II)."""
    if variant not in ("i", "ii"):
        raise ValueError(f"variant must be 'i' or 'ii', got {variant!r}")
    if lambda_d is None:
        lambda_d = 10.0 * lambda_od if variant == "i" else lambda_od
    if lambda_od < 0 or lambda_d < 0:
        raise ValueError(f"lambda_od and lambda_d must be non-negative, got {lambda_od} and {lambda_d}")
    _check_codes(x, z, mu, logvar)
    nll = reconstruction_nll(x, x_logits_or_mean, recon).mean()
    kl = gaussian_kl(mu, logvar).sum(1).mean()
    cov = dip_covariance(mu, logvar, variant, process_group)
    diag = cov.diagonal()
    off_diagonal = cov.pow(2).sum() - diag.pow(2).sum()
    diagonal = (diag - 1).pow(2).sum()
    loss = nll + kl + lambda_od * off_diagonal + lambda_d * diagonal
    terms = {"loss": loss, "recon": nll, "kl": kl, "dip_offdiag": off_diagonal, "dip_diag": diagonal}
    return loss, {name: value.detach() for name, value in terms.items()}


class DIPVAELoss(nn.Module):
    """Module form of ``dip_vae_loss``."""

    def __init__(self, variant: str = "ii", lambda_od: float = 10.0, lambda_d: float | None = None,
                 recon: Reconstruction = "bernoulli", process_group=None):
        super().__init__()
        if variant not in ("i", "ii"):
            raise ValueError(f"variant must be 'i' or 'ii', got {variant!r}")
        self.variant, self.lambda_od, self.lambda_d, self.recon = variant, lambda_od, lambda_d, recon
        self.process_group = process_group

    def forward(self, x, x_logits_or_mean, z, mu, logvar):
        return dip_vae_loss(x, x_logits_or_mean, z, mu, logvar, variant=self.variant,
                            lambda_od=self.lambda_od, lambda_d=self.lambda_d, recon=self.recon,
                            process_group=self.process_group)

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, lambda_od={self.lambda_od}, lambda_d={self.lambda_d}"


# ---- the alpha/beta decomposition objective -------------------------------------------------

DIVERGENCES = ("inclusive_kl", "mmd_dim", "mmd_joint")
IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def imq_mmd(a: Tensor, b: Tensor, scales: tuple[float, ...] = IMQ_SCALES, joint: bool = False) -> Tensor:
    """Unbiased squared MMD between samples ``a [n, D]`` and ``b [m, D]`` (n, m >= 2) with a
    multi-scale inverse-multiquadric kernel ``k = sum_{c in scales} C_c / (C_c + dist^2)``:

        E_{i!=j} k(a_i, a_j) + E_{i!=j} k(b_i, b_j) - 2 E_{i,j} k(a_i, b_j)

    - ``joint=False`` (Mathieu et al.'s ``mmd_dim``): on scalars, one dimension at a time, summed
      over dimensions, ``C_c = 2 c`` (their constant). It compares the *marginals* only: a ``q``
      with the prior's marginals and any dependence between dimensions scores ~0. For factorised
      priors where matching each dimension is the aim (e.g. sparsity, as they use it).
    - ``joint=True``: on vectors, ``dist^2 = |s - t|^2``, ``C_c = 2 D c`` (the IMQ constant of
      Tolstikhin et al.'s WAE, ``2 D sigma^2``, for a unit-scale prior): compares the *joint*
      distributions, so it sees correlation and clusters (mixture priors).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must be [n, D] and [m, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    n, m = a.shape[0], b.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side, got {n} and {m}")
    width = 2.0 * (a.shape[1] if joint else 1)

    def kernel_sum(s: Tensor, t: Tensor) -> Tensor:  # sum over pairs (per dimension unless joint)
        sq = (s[:, None, :] - t[None, :, :]) ** 2
        if joint:
            sq = sq.sum(-1)
        return sum(width * c / (width * c + sq) for c in scales).sum((0, 1))

    diagonal = len(scales)  # k(s, s): each scale contributes C / C = 1
    within_a = (kernel_sum(a, a) - n * diagonal) / (n * (n - 1))
    within_b = (kernel_sum(b, b) - m * diagonal) / (m * (m - 1))
    return (within_a + within_b - 2 * kernel_sum(a, b) / (n * m)).sum()


def prior_kl(z: Tensor, mu: Tensor, logvar: Tensor, prior: Distribution) -> Tensor:
    """KL(q(z|x) || p(z)) per sample ``[B]``: analytic for a diagonal-Gaussian prior, else the
    single-sample Monte-Carlo estimate ``log q(z|x) - log p(z)`` at the sampled codes."""
    if isinstance(prior, AnisotropicGaussian):
        var_ratio = logvar.exp() / prior.scale ** 2
        return 0.5 * (var_ratio + (mu - prior.loc) ** 2 / prior.scale ** 2 - 1 - var_ratio.log()).sum(1)
    return gaussian_log_density(z, mu, logvar).sum(1) - prior.log_prob(z)


def decomposition_loss(x: Tensor, x_logits_or_mean: Tensor, z: Tensor, mu: Tensor, logvar: Tensor, *,
                       prior: Distribution | LearnedPrior, beta: float = 1.0, alpha: float = 0.0,
                       divergence: str = "inclusive_kl", num_prior_samples: int | None = None,
                       recon: Reconstruction = "bernoulli", backend: str | None = None,
                       process_group=None) -> tuple[Tensor, dict]:
    """The decomposition objective (Mathieu et al. 2019): ``recon + beta KL(q(z|x) || p(z)) + alpha D``.

    ``prior`` is any ``msvae.priors`` prior (event shape ``[D]``). ``D(q(z), p(z))`` is estimated on the
    minibatch with ``num_prior_samples`` (default B) prior draws ``z_p``:

    - ``"inclusive_kl"``: KL(p(z) || q(z)) ~ mean(log p(z_p) - log q(z_p)) with
      ``log q(z_p) = log (1/B) sum_j q(z_p | x_j)`` (``mixture_log_density``, uniform weights);
    - ``"mmd_dim"``: ``imq_mmd(z, z_p)``, the per-dimension IMQ kernel MMD (marginals only);
    - ``"mmd_joint"``: ``imq_mmd(z, z_p, joint=True)``, on whole codes (sees dependence, clusters).

    The divergence (term ``"divergence"``) is estimated only when ``alpha > 0``. Prior draws come
    from ``rsample`` where the prior has one (pathwise gradients to its parameters). Otherwise
    (mixtures, spike-and-slab) the draws are constants, and for ``"inclusive_kl"`` the gradient
    to the prior's parameters is the score-function term ``E_p[(log p - log q) grad log p]``
    (leave-one-out baseline; its value is 0, so the reported divergence is unchanged), without
    which the only gradient would be ``E_p[grad log p] = 0``; for the MMDs no gradient reaches
    such a prior's parameters through ``D`` (a documented choice: the KL term still trains them).
    With ``process_group`` each rank draws its ``num_prior_samples`` and ``q(z)`` is the global
    batch's (``"inclusive_kl"``: this rank's draws are the queries; the MMDs: every rank's codes
    and draws are gathered).
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if beta < 0 or alpha < 0:
        raise ValueError(f"beta and alpha must be non-negative, got beta={beta}, alpha={alpha}")
    _check_codes(x, z, mu, logvar)
    prior = as_distribution(prior)
    if prior.batch_shape != () or prior.event_shape != mu.shape[1:]:
        raise ValueError(f"prior must have batch shape () and event shape [{mu.shape[1]}], got "
                         f"{list(prior.batch_shape)} and {list(prior.event_shape)}")
    num = mu.shape[0] if num_prior_samples is None else num_prior_samples
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num_prior_samples must be a positive int, got {num_prior_samples!r}")
    nll = reconstruction_nll(x, x_logits_or_mean, recon).mean()
    kl = prior_kl(z, mu, logvar, prior).mean()
    loss = nll + beta * kl
    terms = {"loss": loss, "recon": nll, "kl": kl}
    if alpha > 0:
        z_prior = (prior.rsample if prior.has_rsample else prior.sample)((num,)).to(z.dtype)
        if divergence == "inclusive_kl":
            components_mu, components_logvar = _global_posteriors(mu, logvar, process_group)
            log_qz, _ = mixture_log_density(z_prior, components_mu, components_logvar,
                                            weights="uniform", backend=backend)
            log_pz = prior.log_prob(z_prior)
            gap = log_pz - log_qz
            div = gap.mean()
            if not prior.has_rsample and num > 1:  # score-function term (value 0, see above)
                baseline = (gap.sum() - gap) / (num - 1)
                div = div + ((gap - baseline).detach() * (log_pz - log_pz.detach())).mean()
        else:
            div = imq_mmd(gather_rows(z, process_group), gather_rows(z_prior, process_group),
                          joint=divergence == "mmd_joint")
        terms["loss"] = loss = loss + alpha * div
        terms["divergence"] = div
    return loss, {name: value.detach() for name, value in terms.items()}


class DecompositionLoss(nn.Module):
    """Module form of ``decomposition_loss``. A ``LearnedPrior`` becomes a submodule, so its parameters
    are among this loss's parameters (add them to an optimiser to learn the prior) and move with
    ``.to()``; a fixed distribution is kept as given (build it on the device of the codes)."""

    def __init__(self, prior: Distribution | LearnedPrior, beta: float = 1.0, alpha: float = 0.0,
                 divergence: str = "inclusive_kl", num_prior_samples: int | None = None,
                 recon: Reconstruction = "bernoulli", backend: str | None = None, process_group=None):
        super().__init__()
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        as_distribution(prior)  # validates the type
        self.prior, self.beta, self.alpha, self.divergence = prior, beta, alpha, divergence
        self.num_prior_samples, self.recon, self.backend = num_prior_samples, recon, backend
        self.process_group = process_group

    def forward(self, x, x_logits_or_mean, z, mu, logvar):
        return decomposition_loss(x, x_logits_or_mean, z, mu, logvar, prior=self.prior, beta=self.beta,
                                  alpha=self.alpha, divergence=self.divergence,
                                  num_prior_samples=self.num_prior_samples, recon=self.recon,
                                  backend=self.backend, process_group=self.process_group)

    def extra_repr(self) -> str:
        prior = as_distribution(self.prior)
        return (f"prior={type(self.prior).__name__}{list(prior.event_shape)}, beta={self.beta}, "
                f"alpha={self.alpha}, divergence={self.divergence!r}")
