"""Stage 2: a second generative model of ``x`` given the frozen stage 1's output ``x1 = dec1(z)``.

Every stage 2 sees the stage-1 decoder's raw output ``x1`` (logits for a Bernoulli decoder, means
for a Gaussian one) and its mean image ``x1_mean``, and has a latent ``w`` with a standard normal
prior, independent of ``z``:

- ``VAEStage2``: ``q(w | x, x1)`` and ``p(x | x1, w)``; the decoder refines ``x1`` (a U-Net over
  ``x1_mean`` whose output is added to ``x1``), the encoder sees ``x``, ``x1_mean`` and the residual
  ``x - x1_mean``; free bits and a KL warm-up keep ``w`` in use (a plain conditional VAE learns to
  copy ``x1`` and lets ``w`` collapse).
- ``FlowStage2``: the conditional multi-scale flow ``p(x | x1)`` on dequantised images; ``w`` is the
  flow's base variable (one value per pixel) and reconstruction through it is exact.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from msvae.flows import MultiScaleFlow, dequantize, quantize
from msvae.losses import gaussian_kl, reconstruction_nll
from msvae.models.networks import ConvEncoder, reparameterize
from msvae.models.training import linear_warmup, random_batches, train_resumably

LIKELIHOODS = ("bernoulli", "gaussian")


class RefinementDecoder(nn.Module):
    """``p(x | x1, w)`` on 64x64 images: ``x1 + U(x1_mean, w)``.

    ``U`` is a U-Net (4 stride-2 convolutions down to 4x4, skip connections up) with ``w`` joined at
    the 4x4 bottleneck and added as a channel shift at every inner scale. Its last layer starts at
    zero, so an untrained decoder returns ``x1``. ``x1, x1_mean [B, C, 64, 64]``, ``w [B, w_dim]``
    -> output ``[B, C, 64, 64]``.
    """

    def __init__(self, w_dim: int, channels: int = 1, width: int = 32, hidden: int = 256):
        super().__init__()
        self.w_dim, self.width = w_dim, width
        self.downs = nn.ModuleList(nn.Conv2d(channels if i == 0 else width, width, 4, 2, 1)
                                   for i in range(4))
        self.bottleneck = nn.Sequential(nn.Linear(width * 16 + w_dim, hidden), nn.ReLU(),
                                        nn.Linear(hidden, width * 16), nn.ReLU())
        self.shifts = nn.Linear(w_dim, 3 * width)
        self.ups = nn.ModuleList(nn.ConvTranspose2d(2 * width, width if i < 3 else channels, 4, 2, 1)
                                 for i in range(4))
        nn.init.zeros_(self.ups[-1].weight)
        nn.init.zeros_(self.ups[-1].bias)

    def forward(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        if w.dim() != 2 or w.shape[1] != self.w_dim or w.shape[0] != x1.shape[0]:
            raise ValueError(f"w must have shape [{x1.shape[0]}, {self.w_dim}], got {tuple(w.shape)}")
        skips, h = [], x1_mean
        for down in self.downs:
            h = F.relu(down(h))
            skips.append(h)
        h = self.bottleneck(torch.cat([h.flatten(1), w], 1)).view(-1, self.width, 4, 4)
        shifts = self.shifts(w).view(-1, 3, self.width, 1, 1)
        for i, up in enumerate(self.ups):
            h = up(torch.cat([h, skips[3 - i]], 1))
            if i < 3:
                h = F.relu(h + shifts[:, i])
        return x1 + h


class SecondStage(nn.Module):
    """Base of the stage-2 models: training with a frozen stage 1, prior samples of ``w``.

    Subclasses define ``training_loss``, ``encode``, ``generate``, ``w_dim`` and ``config``.
    """

    config: dict
    max_grad_norm: float | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def training_loss(self, x: Tensor, x1: Tensor, x1_mean: Tensor,
                      step: int) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def sample_w(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` draws ``[n, w_dim]`` of the prior ``N(0, temperature^2 I)``."""
        return temperature * torch.randn(n, self.w_dim, device=self.device)

    def fit(self, stage1: nn.Module, data: Tensor | Dataset, *, steps: int = 10_000,
            batch_size: int = 64, lr: float = 5e-4,
            checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 1000,
            resume: bool = True, log_every: int = 50, progress: bool = True, seed: int = 0,
            time_limit: float | None = None) -> list[dict]:
        """Trains this stage on random batches of ``data`` with ``stage1`` (a ``DisentangledVAE``)
        frozen: ``x1`` is its decoder output at the posterior mean of ``z``. Checkpoints to
        ``stage2.pt`` in ``checkpoint_dir`` and resumes from it as ``DisentangledVAE.fit`` does.
        Returns the history (``self.history``).
        """
        stage1.eval()
        optimizer = torch.optim.Adam(self.parameters(), lr=lr)
        settings = {"lr": lr, "batch_size": batch_size, "seed": seed, "config": repr(self.config)}
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        batches = random_batches(data, batch_size, generator, self.device)

        def step_fn(step: int) -> dict[str, float]:
            x = next(batches)
            with torch.no_grad():
                x1 = stage1.decoder(stage1.encoder(x)[0])
                x1_mean = stage1.mean_output(x1)
            total, terms = self.training_loss(x, x1, x1_mean, step)
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            if self.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(self.parameters(), self.max_grad_norm)
            optimizer.step()
            return dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))

        self.train()
        train_resumably(step_fn, path=None if checkpoint_dir is None else Path(checkpoint_dir) / "stage2.pt",
                        resume=resume, states={"model": self, "optimizer": optimizer},
                        settings=settings, generator=generator, history=self.history, steps=steps,
                        time_limit=time_limit, extra={"config": self.config}, log_every=log_every,
                        checkpoint_every=checkpoint_every, progress=progress, desc="stage 2")
        self.eval()
        return self.history


class VAEStage2(SecondStage):
    """Conditional VAE stage 2 for 64x64 images: ``q(w | x, x1)``, ``p(x | x1, w)``, ``p(w) = N(0, I)``.

    Args:
        channels: image channels ``C``; likelihood: the stage-1 decoder's (``"bernoulli"``/``"gaussian"``).
        w_dim: size of ``w``; width, hidden: conv channels and dense width of encoder and decoder.
        free_bits: nats per dimension of ``w`` below which its batch-mean KL is not penalised.
        kl_warmup: steps over which the KL weight ramps linearly from 0 to 1.
    """

    def __init__(self, channels: int = 1, w_dim: int = 16, width: int = 32, hidden: int = 256,
                 likelihood: str = "bernoulli", free_bits: float = 0.5, kl_warmup: int = 1000):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if w_dim < 1:
            raise ValueError(f"w_dim must be >= 1, got {w_dim}")
        if free_bits < 0 or kl_warmup < 0:
            raise ValueError(f"free_bits and kl_warmup must be >= 0, got {free_bits}, {kl_warmup}")
        self.config = dict(kind="vae", channels=channels, w_dim=w_dim, width=width, hidden=hidden,
                           likelihood=likelihood, free_bits=free_bits, kl_warmup=kl_warmup)
        self.w_dim, self.likelihood = w_dim, likelihood
        self.free_bits, self.kl_warmup = free_bits, kl_warmup
        self.encoder = ConvEncoder(w_dim, 3 * channels, width, hidden)
        self.decoder = RefinementDecoder(w_dim, channels, width, hidden)
        self.history: list[dict] = []

    def posterior(self, x: Tensor, x1_mean: Tensor) -> tuple[Tensor, Tensor]:
        """``q(w | x, x1)``: (mu, logvar) ``[B, w_dim]``."""
        if x.shape != x1_mean.shape:
            raise ValueError(f"x {tuple(x.shape)} and x1 {tuple(x1_mean.shape)} must have one shape")
        return self.encoder(torch.cat([x, x1_mean, x - x1_mean], 1))

    def mean_output(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output) if self.likelihood == "bernoulli" else output

    def training_loss(self, x, x1, x1_mean, step):
        """Negative ELBO with free bits and KL warm-up; terms: loss, recon, kl (nats per image)."""
        mu, logvar = self.posterior(x, x1_mean)
        output = self.decoder(x1, x1_mean, reparameterize(mu, logvar))
        recon = reconstruction_nll(x, output, self.likelihood).mean()
        kl_per_dim = gaussian_kl(mu, logvar).mean(0)
        penalised = kl_per_dim.clamp(min=self.free_bits).sum()
        total = recon + linear_warmup(step, self.kl_warmup) * penalised
        return total, {"loss": total, "recon": recon, "kl": kl_per_dim.sum()}

    @torch.no_grad()
    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        """Posterior means of ``w`` ``[B, w_dim]``."""
        return self.posterior(x, x1_mean)[0]

    @torch.no_grad()
    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        """Mean image of ``p(x | x1, w)``."""
        return self.mean_output(self.decoder(x1, x1_mean, w))


class FlowStage2(SecondStage):
    """Conditional flow stage 2: ``p(x | x1)`` by ``MultiScaleFlow`` on dequantised images.

    Args:
        channels, size: image shape ``C, H = W``; levels, steps, hidden, context_hidden, coupling,
            bins: the flow's (see ``MultiScaleFlow``).
        quantization: number of values a pixel takes (2 for binary images, 256 for 8-bit ones).
        alpha: the logit transform's margin (see ``dequantize``).
    """

    max_grad_norm = 100.0

    def __init__(self, channels: int = 1, size: int = 64, levels: int = 3, steps: int = 4,
                 hidden: int = 64, context_hidden: int = 32, coupling: str = "affine", bins: int = 8,
                 quantization: int = 256, alpha: float = 0.05):
        super().__init__()
        self.config = dict(kind="flow", channels=channels, size=size, levels=levels, steps=steps,
                           hidden=hidden, context_hidden=context_hidden, coupling=coupling, bins=bins,
                           quantization=quantization, alpha=alpha)
        self.flow = MultiScaleFlow(channels, size, context_channels=channels, levels=levels,
                                   steps=steps, hidden=hidden, context_hidden=context_hidden,
                                   coupling=coupling, bins=bins)
        dequantize(torch.zeros(1, 1), quantization, alpha)  # validates quantization and alpha
        self.quantization, self.alpha = quantization, alpha
        self.w_dim = self.flow.latent_features
        self.history: list[dict] = []

    def log_prob(self, x: Tensor, x1_mean: Tensor, midpoint: bool = False) -> Tensor:
        """Lower bound on ``log P(x | x1)`` of the discrete image, nats ``[B]``."""
        y, ladj = dequantize(x, self.quantization, self.alpha, midpoint=midpoint)
        return self.flow.log_prob(y, x1_mean) + ladj - x[0].numel() * math.log(self.quantization)

    def training_loss(self, x, x1, x1_mean, step):
        """Negative log-likelihood per image; terms: loss (nats), bits_per_dim."""
        log_p = self.log_prob(x, x1_mean)
        total = -log_p.mean()
        return total, {"loss": total, "bits_per_dim": total / (x[0].numel() * math.log(2))}

    @torch.no_grad()
    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        """The base variable ``w [B, C*H*W]`` of each image (dequantised at its bins' centres)."""
        y, _ = dequantize(x, self.quantization, self.alpha, midpoint=True)
        return self.flow(y, x1_mean)[0]

    @torch.no_grad()
    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        """The image ``[B, C, H, W]`` (on the quantisation grid) of base variables ``w`` given ``x1``."""
        return quantize(self.flow.inverse(w, x1_mean)[0], self.quantization, self.alpha)


STAGE2_KINDS = {"vae": VAEStage2, "flow": FlowStage2}


def build_stage2(config: dict) -> SecondStage:
    """The stage 2 described by a ``config`` (as stored in ``SecondStage.config``)."""
    options = dict(config)
    kind = options.pop("kind", None)
    if kind not in STAGE2_KINDS:
        raise ValueError(f"stage 2 kind must be one of {tuple(STAGE2_KINDS)}, got {kind!r}")
    return STAGE2_KINDS[kind](**options)
