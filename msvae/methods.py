"""Stage-1 methods by name: the objective (``msvae.losses``) and, for the decomposition objective,
its structured prior (``msvae.priors``), built from plain options as ``msvae fit --method`` and the
benchmarks give them.

``stage1_loss("betatcvae", latent_dim=10, dataset_size=N, beta=6.0)`` -> a loss module for
``DisentangledVAE.fit``. Each method reads only its own options (listed in ``METHOD_OPTIONS``);
an option another method reads is refused, so a mistyped command line fails before training.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from msvae.losses import (BetaTCVAELoss, BetaVAELoss, DecompositionLoss, DIPVAELoss, DIVERGENCES,
                          FactorVAELoss)
from msvae.priors import (AnisotropicGaussian, IsotropicGaussian, LearnedGaussianMixture, SpikeAndSlab,
                          StudentTProduct)

METHODS = ("betavae", "betatcvae", "factorvae", "dipvae", "decomposition")
PRIORS = ("isotropic", "anisotropic", "studentt", "mixture", "spikeslab")
# Each method's options and their defaults (the papers' usual settings).
METHOD_OPTIONS = {
    "betavae": dict(beta=4.0),
    "betatcvae": dict(alpha=1.0, beta=6.0, gamma=1.0, estimator="mss"),
    "factorvae": dict(gamma=40.0),
    "dipvae": dict(lambda_od=10.0, lambda_d=None, dip_variant="ii"),
    "decomposition": dict(beta=1.0, alpha=0.0, prior="isotropic", divergence="inclusive_kl",
                          prior_components=10, anisotropy=5.0, df=3.0, spike_weight=0.8, spike_scale=0.05),
}


def make_prior(name: str, dim: int, *, prior_components: int = 10, anisotropy: float = 5.0, df: float = 3.0,
               spike_weight: float = 0.8, spike_scale: float = 0.05):
    """A prior on ``z [D]`` by name (``PRIORS``):

    - ``isotropic``: N(0, I);
    - ``anisotropic``: N(0, diag(s^2)) with ``s`` log-spaced from 1 down to ``1 / anisotropy``
      (distinct scales break the isotropic prior's rotation invariance, Mathieu et al. sec. 4);
    - ``studentt``: independent Student-t with ``df`` degrees of freedom (heavy tails);
    - ``mixture``: a learned mixture of ``prior_components`` diagonal Gaussians (means start at
      ``2 N(0, I)`` draws, scales 0.5; a ``LearnedPrior``, trained with the model);
    - ``spikeslab``: per dimension ``spike_weight N(0, spike_scale^2) + (1 - spike_weight) N(0, 1)``
      (sparse codes; their settings 0.8 and 0.05).
    """
    if name not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {name!r}")
    if name == "isotropic":
        return IsotropicGaussian(dim)
    if name == "anisotropic":
        if not (math.isfinite(anisotropy) and anisotropy > 1):
            raise ValueError(f"anisotropy must be a finite number > 1, got {anisotropy!r}")
        return AnisotropicGaussian(dim, torch.logspace(0.0, -math.log10(anisotropy), dim))
    if name == "studentt":
        return StudentTProduct(dim, df)
    if name == "mixture":
        return LearnedGaussianMixture(prior_components, dim, init_spread=2.0, init_scale=0.5)
    return SpikeAndSlab(dim, gamma=spike_weight, spike_scale=spike_scale)


def stage1_loss(method: str, *, latent_dim: int, dataset_size: int, recon: str = "bernoulli",
                process_group=None, **options) -> nn.Module:
    """The stage-1 objective of ``method`` (``METHODS``) with ``options`` (``METHOD_OPTIONS[method]``;
    any other option is a ``ValueError``; an option given as None keeps its default)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - set(METHOD_OPTIONS[method]))
    if unknown:
        raise ValueError(f"method {method!r} takes the options {sorted(METHOD_OPTIONS[method])}; "
                         f"got also {unknown}")
    o = {**METHOD_OPTIONS[method], **given}
    if method == "betavae":
        return BetaVAELoss(beta=o["beta"], recon=recon)
    if method == "betatcvae":
        return BetaTCVAELoss(dataset_size, alpha=o["alpha"], beta=o["beta"], gamma=o["gamma"],
                             estimator=o["estimator"], recon=recon, process_group=process_group)
    if method == "factorvae":
        return FactorVAELoss(latent_dim, gamma=o["gamma"], recon=recon, process_group=process_group)
    if method == "dipvae":
        return DIPVAELoss(o["dip_variant"], lambda_od=o["lambda_od"], lambda_d=o["lambda_d"], recon=recon,
                          process_group=process_group)
    if o["divergence"] not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {o['divergence']!r}")
    prior = make_prior(o["prior"], latent_dim, prior_components=o["prior_components"], anisotropy=o["anisotropy"],
                       df=o["df"], spike_weight=o["spike_weight"], spike_scale=o["spike_scale"])
    return DecompositionLoss(prior, beta=o["beta"], alpha=o["alpha"], divergence=o["divergence"],
                             recon=recon, process_group=process_group)
