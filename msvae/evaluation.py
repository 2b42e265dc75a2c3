"""Held-out evaluation of a trained stage 1: reconstruction error, disentanglement metrics, figures."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from msvae import metrics
from msvae.losses import gaussian_kl
from msvae.models import VAEStage2
from msvae.models.multistage import sweep
from msvae.plotting import save_grid


def _errors(x: Tensor, output: Tensor | None, mean: Tensor) -> tuple[Tensor, Tensor]:
    """Per-image BCE (from Bernoulli logits ``output`` when given, else from the clamped mean) and
    squared error of the mean image, summed over pixels ``[B]``."""
    if output is not None:
        bce = F.binary_cross_entropy_with_logits(output, x, reduction="none")
    else:
        bce = F.binary_cross_entropy(mean.clamp(1e-6, 1 - 1e-6), x, reduction="none")
    return bce.flatten(1).sum(1), (mean - x).pow(2).flatten(1).sum(1)


@torch.no_grad()
def encode_images(model, load_images: Callable[[np.ndarray], Tensor], indices: np.ndarray,
                  batch_size: int = 256) -> dict[str, Tensor]:
    """Codes and per-image reconstruction errors of the images ``load_images(indices)``.

    ``model`` is a ``DisentangledVAE`` or a ``MultiStageModel``. Returns ``mu, logvar [N, D]`` of
    ``z`` and ``bce, mse [N]`` of stage 1 (summed over pixels; reconstruction from the posterior
    mean; BCE of the Bernoulli decoder, MSE of its mean image). A multi-stage model adds
    ``full_bce, full_mse [N]`` (reconstruction from the posterior means of ``z`` and ``w``) and
    ``w_kl [N, w_dim]`` (KL of ``q(w | x, x1)`` from the prior per dimension) for a VAE stage 2
    or ``bits_per_dim [N]`` (negative log-likelihood of the image) for a flow stage 2.
    """
    stage1, stage2 = getattr(model, "stage1", model), getattr(model, "stage2", None)
    columns: dict[str, list[Tensor]] = {}
    for start in range(0, len(indices), batch_size):
        x = load_images(indices[start:start + batch_size]).to(stage1.device)
        mu, logvar = stage1.encoder(x)
        output = stage1.decoder(mu)
        mean = stage1.mean_output(output)
        row = {"mu": mu, "logvar": logvar,
               **dict(zip(("bce", "mse"), _errors(x, output if stage1.likelihood == "bernoulli" else None,
                                                  mean)))}
        if isinstance(stage2, VAEStage2):
            w_mu, w_logvar = stage2.posterior(x, mean)
            full = stage2.decoder(output, mean, w_mu)
            full_mean = stage2.mean_output(full)
            row["full_bce"], row["full_mse"] = _errors(
                x, full if stage2.likelihood == "bernoulli" else None, full_mean)
            row["w_kl"] = gaussian_kl(w_mu, w_logvar)
        elif stage2 is not None:
            full_mean = stage2.generate(output, mean, stage2.encode(x, output, mean))
            row["full_bce"], row["full_mse"] = _errors(x, None, full_mean)
            row["bits_per_dim"] = -stage2.log_prob(x, mean) / (x[0].numel() * math.log(2))
        for key, value in row.items():
            columns.setdefault(key, []).append(value.cpu())
    return {key: torch.cat(values) for key, values in columns.items()}


def reconstruction_summary(encoded: dict[str, Tensor]) -> dict:
    """Held-out means from ``encode_images``: ``{"stage1": {bce, mse}, "full": {bce, mse},
    "full_over_stage1": {bce, mse}, "w_kl_per_dim": [...]}`` (the keys the model has)."""
    summary: dict = {"stage1": {"bce": float(encoded["bce"].mean()), "mse": float(encoded["mse"].mean())}}
    if "full_bce" in encoded:
        summary["full"] = {"bce": float(encoded["full_bce"].mean()),
                           "mse": float(encoded["full_mse"].mean())}
        summary["full_over_stage1"] = {k: summary["full"][k] / summary["stage1"][k] for k in ("bce", "mse")}
    if "w_kl" in encoded:
        summary["w_kl_per_dim"] = encoded["w_kl"].mean(0).tolist()
        summary["w_kl"] = float(encoded["w_kl"].sum(1).mean())
    if "bits_per_dim" in encoded:
        summary["full"]["exact_inverse"] = True
        summary["bits_per_dim"] = float(encoded["bits_per_dim"].mean())
    return summary


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
    values = torch.linspace(-span, span, steps)
    rows = [model.decode(sweep(code[0], d, values)) for d in range(model.latent_dim)]
    save_grid(torch.cat(rows), paths[1], nrow=steps)
    return paths


@torch.no_grad()
def save_multistage_figures(model, images: Tensor, out_dir: str | os.PathLike, span: float = 2.5,
                            steps: int = 9, num_samples: int = 64) -> list[Path]:
    """PNG figures of a ``MultiStageModel`` in ``out_dir``:

    - ``reconstructions.png``: the ``images`` (top row), stage-1 reconstructions, full ones;
    - ``traversals.png`` / ``traversals_stage1.png``: one row per latent ``z_k`` swept over
      ``[-span, span]`` from the first image's codes, with its ``w`` fixed / by stage 1 alone;
    - ``samples.png``: ``num_samples`` draws from the model.
    """
    out_dir = Path(out_dir)
    images = images.to(model.device)
    paths = [out_dir / name for name in ("reconstructions.png", "traversals.png",
                                         "traversals_stage1.png", "samples.png")]
    rows = [images, model.reconstruct(images, "stage1"), model.reconstruct(images, "full")]
    save_grid(torch.cat(rows), paths[0], nrow=len(images))
    values = torch.linspace(-span, span, steps)
    z, w = (c[0] for c in model.encode(images[:1]))
    full = [model.traverse(k, values, z=z, w=w) for k in range(model.stage1.latent_dim)]
    save_grid(torch.cat(full), paths[1], nrow=steps)
    first = [model.stage1_output(sweep(z, k, values))[1] for k in range(model.stage1.latent_dim)]
    save_grid(torch.cat(first), paths[2], nrow=steps)
    save_grid(model.sample(num_samples), paths[3], nrow=int(math.sqrt(num_samples)) or 1)
    return paths

