"""Held-out evaluation of a trained stage 1: reconstruction error, disentanglement metrics, figures."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from msvae import metrics
from msvae.losses import gaussian_kl
from msvae.plotting import save_grid


@torch.no_grad()
def encode_images(model, load_images: Callable[[np.ndarray], Tensor], indices: np.ndarray,
                  batch_size: int = 256) -> dict[str, Tensor]:
    """Posterior parameters and per-image reconstruction errors of the images ``load_images(indices)``.

    Returns ``mu, logvar [N, D]`` and ``bce, mse [N]`` (summed over pixels; reconstruction from the
    posterior mean; BCE of the Bernoulli decoder, MSE of its mean image).
    """
    mus, logvars, bces, mses = [], [], [], []
    for start in range(0, len(indices), batch_size):
        x = load_images(indices[start:start + batch_size]).to(model.device)
        mu, logvar = model.encoder(x)
        output = model.decoder(mu)
        mean = model.mean_output(output)
        if model.likelihood == "bernoulli":
            bce = F.binary_cross_entropy_with_logits(output, x, reduction="none").flatten(1).sum(1)
        else:
            bce = F.binary_cross_entropy(mean.clamp(1e-6, 1 - 1e-6), x, reduction="none").flatten(1).sum(1)
        mus.append(mu.cpu())
        logvars.append(logvar.cpu())
        bces.append(bce.cpu())
        mses.append((mean - x).pow(2).flatten(1).sum(1).cpu())
    return {"mu": torch.cat(mus), "logvar": torch.cat(logvars), "bce": torch.cat(bces),
            "mse": torch.cat(mses)}


def disentanglement_report(mu: Tensor, logvar: Tensor, factors: np.ndarray, seed: int = 0) -> dict:
    """Every metric of ``msvae.metrics`` on held-out codes (posterior means) and their factors.

    Rows are shuffled (seeded); DCI and SAP train on the first half and test on the second. A
    metric that raises ``ValueError`` is reported as None with its message under ``metric_errors``.
    """
    codes = mu.numpy()
    order = np.random.default_rng(seed).permutation(len(codes))
    codes, factors, mu, logvar = codes[order], factors[order], mu[order], logvar[order]
    half = len(codes) // 2
    train, test = (codes[:half], factors[:half]), (codes[half:], factors[half:])
    report: dict = {"kl_per_dim": gaussian_kl(mu, logvar).mean(0).tolist()}
    errors: dict = {}

    def record(names, compute):
        """A metric that cannot be computed (e.g. on a degenerate code) is reported, not fatal."""
        try:
            values = compute()
        except ValueError as error:
            errors[names[0]] = str(error)
            values = (None,) * len(names)
        report.update(zip(names, values if len(names) > 1 else (values,)))

    record(["mig"], lambda: metrics.mig(codes, factors))
    record(["mig_chen"], lambda: metrics.mig_chen(mu, logvar, factors,
                                                  num_samples=min(len(codes), 10_000), seed=seed))
    def dci_scores():
        scores = metrics.dci(*train, *test, seed=seed)
        return scores["disentanglement"], scores["completeness"], scores["informativeness_test"]

    record(["dci_disentanglement", "dci_completeness", "dci_informativeness"], dci_scores)
    record(["sap"], lambda: metrics.sap(*train, *test, seed=seed))
    record(["factor_vae_score"], lambda: metrics.factor_vae_score(codes, factors, seed=seed))
    record(["beta_vae_score"], lambda: metrics.beta_vae_score(codes, factors, seed=seed))
    record(["gaussian_total_correlation"], lambda: metrics.gaussian_total_correlation(codes))
    if errors:
        report["metric_errors"] = errors
    return report


@torch.no_grad()
def save_stage1_figures(model, images: Tensor, out_dir: str | os.PathLike, span: float = 2.5,
                        steps: int = 9) -> list[Path]:
    """``reconstructions.png`` (inputs over their reconstructions) and ``traversals.png`` (one row
    per latent: the first image's code with that latent swept over ``[-span, span]``)."""
    out_dir = Path(out_dir)
    images = images.to(model.device)
    recon = model.reconstruct(images)
    paths = [out_dir / "reconstructions.png", out_dir / "traversals.png"]
    save_grid(torch.cat([images, recon]), paths[0], nrow=len(images))
    code = model.encode(images[:1])
    values = torch.linspace(-span, span, steps, device=model.device)
    rows = []
    for d in range(model.latent_dim):
        z = code.repeat(steps, 1)
        z[:, d] = values
        rows.append(model.decode(z))
    save_grid(torch.cat(rows), paths[1], nrow=steps)
    return paths
