"""Stage 2: a second generative model of ``x`` given the frozen stage 1's output ``x1 = dec1(z)``.

Every stage 2 sees the stage-1 decoder's raw output ``x1`` (logits for a Bernoulli decoder, means
for a Gaussian one) and its mean image ``x1_mean``, and has a latent ``w`` with a standard normal
prior, independent of ``z``. It is trained on ``x1 = dec1(z)`` with ``z ~ q(z | x)`` drawn afresh at
every step — the kind of ``x1`` it receives when the model samples ``z ~ p(z)`` — so stage 1 and
stage 2 form the one model ``p(x) = integral p(x | x1(z), w) p(w) p(z) dz dw`` that is sampled.

- ``VAEStage2``: ``q(w | x, x1)`` and ``p(x | x1, w)``; the decoder refines ``x1`` (a U-Net over
  ``x1_mean`` whose output is added to ``x1``), the encoder sees ``x``, ``x1_mean`` and the residual
  ``x - x1_mean`` through a translation-invariant network (``PooledConvEncoder``). Both start at
  the identity on stage 1 (``q(w | x, x1) = p(w)``, output ``x1``), so
  the untrained stage 2 has exactly stage 1's bound. The KL of ``w`` is warmed up and then paid
  in full (no free-bits floor after the warm-up).
- ``FlowStage2``: the conditional multi-scale flow ``p(x | x1)`` on dequantised images; ``w`` is the
  flow's base variable (one value per pixel) and reconstruction through it is exact.
- ``GANStage2``: generator ``G(x1, w)``, conditional discriminator, and an encoder for ``w``
  trained with the generator; no tractable likelihood.
- ``MixtureStage2``: a conditional mixture of ``K`` pixel-wise models, exact likelihood; ``w`` is
  the component, as one standard normal number.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from msvae.distributed import all_rows, data_parallel, process_seed, rank_and_size
from msvae.flows import MultiScaleFlow
from msvae.flows.gaussianize import bin_edges, bin_of, check as gaussianize_check, gaussianize
from msvae.losses import RECONSTRUCTIONS as LIKELIHOODS, gaussian_kl, reconstruction_nll
from msvae.models.networks import (ConvEncoder, ToImageConvTranspose2d, cat_channels, full_precision,
                                   reparameterize)
from msvae.models.training import (RandomBatches, adam, autocast, flush_denormals, kl_penalty,
                                   linear_warmup, resolve_precision, train_resumably, EarlyStopping)

BOUNDS = ("elbo", "dequantized", "exact", None)


def log_likelihood(x: Tensor, output: Tensor, likelihood: str) -> Tensor:
    """``log p(x | output)`` in nats ``[B]`` for a Bernoulli (logits) or unit-variance Gaussian
    (means, with its normalising constant) decoder."""
    nll = reconstruction_nll(x, output, likelihood)
    if likelihood == "gaussian":
        nll = nll + 0.5 * math.log(2 * math.pi) * x[0].numel()
    return -nll


@torch.no_grad()
def sampled_stage1_output(stage1: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Stage 1 on ``x`` with ``z ~ q(z | x)`` drawn afresh: the posterior ``mu, logvar [B, D]``,
    ``x1`` (the decoder output at the drawn ``z``) and its mean."""
    mu, logvar = stage1.encoder(x)
    x1 = stage1.decoder(reparameterize(mu, logvar))
    return mu, logvar, x1, stage1.mean_output(x1)


class RefinementDecoder(nn.Module):
    """``p(x | x1, w)`` on 64x64 images: ``x1 + U(x1_mean, w)``.

    ``U`` is a U-Net (4 stride-2 convolutions down to 4x4, skip connections up) with ``w`` joined at
    the 4x4 bottleneck and added as a channel shift at every inner scale (``w_dim = 0``: no ``w``).
    Its last layer starts at zero, so an untrained decoder returns ``x1``. ``x1, x1_mean
    [B, C, 64, 64]``, ``w [B, w_dim]`` -> output ``[B, C, 64, 64]``; with ``components = K > 1``,
    ``K`` refinements at once, ``[B, K, C, 64, 64]``, and a last layer starting small and random
    (identical components would stay identical).
    """

    def __init__(self, w_dim: int, channels: int = 1, width: int = 32, hidden: int = 256,
                 components: int = 1):
        super().__init__()
        self.w_dim, self.width, self.components = w_dim, width, components
        self.downs = nn.ModuleList(nn.Conv2d(channels if i == 0 else width, width, 4, 2, 1)
                                   for i in range(4))
        self.bottleneck = nn.Sequential(nn.Linear(width * 16 + w_dim, hidden), nn.ReLU(),
                                        nn.Linear(hidden, width * 16), nn.ReLU())
        self.shifts = nn.Linear(w_dim, 3 * width) if w_dim else None
        self.ups = nn.ModuleList((nn.ConvTranspose2d if i < 3 else ToImageConvTranspose2d)(
            2 * width, width if i < 3 else channels * components, 4, 2, 1) for i in range(4))
        if components == 1:
            nn.init.zeros_(self.ups[-1].weight)
        else:
            self.ups[-1].weight.data.mul_(0.1)
        nn.init.zeros_(self.ups[-1].bias)

    def forward(self, x1: Tensor, x1_mean: Tensor, w: Tensor | None = None) -> Tensor:
        B = x1.shape[0]
        if w is None:
            w = x1.new_zeros(B, 0)
        if w.dim() != 2 or w.shape[1] != self.w_dim or w.shape[0] != B:
            raise ValueError(f"w must have shape [{B}, {self.w_dim}], got {tuple(w.shape)}")
        skips, h = [], x1_mean
        for down in self.downs:
            h = F.relu(down(h))
            skips.append(h)
        h = self.bottleneck(torch.cat([h.flatten(1), w], 1)).view(-1, self.width, 4, 4)
        shifts = None if self.shifts is None else self.shifts(w).view(-1, 3, self.width, 1, 1)
        for i, up in enumerate(self.ups):
            h = up(cat_channels([h, skips[3 - i]]))
            if i < 3:
                h = F.relu(h if shifts is None else h + shifts[:, i])
        h = full_precision(h)
        if self.components == 1:
            return x1 + h
        return x1[:, None] + h.view(B, self.components, *x1.shape[1:])


class PooledConvEncoder(nn.Module):
    """An encoder blind to where things are: 3 stride-2 convolutions (64 -> 8) and a 3x3 one, a
    global max over positions, then two dense layers -> ``(mu, logvar) [B, latent_dim]``. For
    ``q(w | x, x1)``: what ``w`` should add to stage 1 (shape, detail) does not depend on the
    position ``z`` already gives, so a translation-invariant encoder cannot copy it into ``w``."""

    def __init__(self, latent_dim: int, channels: int, width: int = 32, hidden: int = 256):
        super().__init__()
        layers, c = [], channels
        for out, stride, kernel in ((width, 2, 4), (width, 2, 4), (2 * width, 2, 4), (2 * width, 1, 3)):
            layers += [nn.Conv2d(c, out, kernel, stride, 1), nn.ReLU()]
            c = out
        self.convs = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                  nn.Linear(hidden, 2 * latent_dim))

    def features(self, x: Tensor) -> Tensor:
        """``[B, 2 * width]``: the largest response of each channel over all positions."""
        return self.convs(x).amax((2, 3))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = full_precision(self.head(self.features(x))).chunk(2, dim=1)
        return mu, logvar


ENCODERS = {"dense": ConvEncoder, "pooled": PooledConvEncoder}


def encoder_input(x: Tensor, x1_mean: Tensor) -> Tensor:
    """What a stage-2 encoder of ``w`` sees: ``[x, x1_mean, x - x1_mean]`` ``[B, 3C, H, W]``."""
    if x.shape != x1_mean.shape:
        raise ValueError(f"x {tuple(x.shape)} and x1 {tuple(x1_mean.shape)} must have one shape")
    return cat_channels([x, x1_mean, x - x1_mean])


class ImageHead(nn.Module):
    """A vector ``[B, out_dim]`` from ``x1_mean [B, C, 64, 64]`` alone, by an encoder's architecture
    (``encoder``, a key of ``ENCODERS``) whose last layer starts at zero (output 0). The centring
    ``r(x1) ~ E_q[m | x1]`` of ``VAEStage2`` (the encoder's own architecture, so it is blind to what
    the encoder is blind to: a position-blind ``m`` centred by a position-aware ``r`` would gain
    the position ``r``'s errors carry) and the mixture weights' logits of ``MixtureStage2``."""

    def __init__(self, out_dim: int, channels: int, encoder: str, width: int = 32, hidden: int = 256):
        super().__init__()
        self.net = ENCODERS[encoder](out_dim, channels, width, hidden)
        self.net.head[-1] = nn.Linear(self.net.head[-1].in_features, out_dim)
        nn.init.zeros_(self.net.head[-1].weight)
        nn.init.zeros_(self.net.head[-1].bias)

    def forward(self, x1_mean: Tensor) -> Tensor:
        return full_precision(self.net.head(self.net.features(x1_mean)))


class RegressionCentre(ImageHead):
    """``r(x1)``: a network (``ImageHead`` with the encoder's architecture) regressed on ``m`` by
    ``||m - r(x1)||^2 / 2`` with ``m`` held fixed (``learn`` returns that loss)."""

    def learn(self, x1_mean: Tensor, m: Tensor, r: Tensor) -> Tensor:
        return 0.5 * (m.detach() - r).pow(2).sum(1).mean()

    def refresh(self, pairs: Iterator[tuple[Tensor, Tensor]]) -> None:
        """Nothing: the network is what training left."""


class NeighbourCentre(nn.Module):
    """``r(x1)``: the mean of ``m`` over the ``neighbours`` nearest of ``size`` pairs
    ``(key(x1), m)``, keys being ``x1_mean`` average-pooled by ``pool`` — a nonparametric
    ``E[m | x1]`` that, unlike a network, does not lag a moving encoder. In training the table is a
    ring of the latest pairs: ``learn`` writes the batch in (after it was centred, so no row is
    centred on itself) and returns 0. After training, ``refresh`` refills it with pairs from the
    final encoder, keyed by the posterior-mean ``x1`` that encoding uses: on the quick preset the
    ring's stale values left ``w_leak.of_z`` at 0.13 (shape); refreshed, 0.03-0.05. The table is a
    buffer, saved with the model. Under data parallelism ``process_group`` (set by
    ``SecondStage.fit``) makes every rank write the global batch's pairs, so the tables stay equal."""

    process_group = None

    def __init__(self, w_dim: int, channels: int, encoder: str = "", width: int = 32, hidden: int = 256,
                 size: int = 16384, neighbours: int = 8, pool: int = 4):
        super().__init__()
        self.neighbours, self.pool = neighbours, pool
        self.register_buffer("keys", torch.zeros(size, channels * (64 // pool) ** 2))
        self.register_buffer("values", torch.zeros(size, w_dim))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))
        self.register_buffer("cursor", torch.zeros((), dtype=torch.long))
        # |key|^2 of every row, kept beside the table (derived, so not saved; rebuilt on loading)
        self.register_buffer("key_norms", torch.zeros(size), persistent=False)
        self.register_load_state_dict_post_hook(lambda module, _: module._index())

    def _key(self, x1_mean: Tensor) -> Tensor:
        return F.avg_pool2d(x1_mean, self.pool).flatten(1)

    @torch.no_grad()
    def _index(self) -> None:
        self.key_norms.copy_(self.keys.pow(2).sum(1))

    def forward(self, x1_mean: Tensor) -> Tensor:
        n = int(self.filled)
        if n == 0:
            return x1_mean.new_zeros(len(x1_mean), self.values.shape[1])
        with torch.autocast(x1_mean.device.type, enabled=False):  # float32 search: in bfloat16 the
            # search was slower and coarser. The ranking of |q - k|^2 is that of |k|^2 - 2 q.k
            distances = torch.addmm(self.key_norms[:n], self._key(x1_mean.float()), self.keys[:n].T, alpha=-2)
        nearest = distances.topk(min(self.neighbours, n), largest=False).indices
        return self.values[:n][nearest].mean(1)

    @torch.no_grad()
    def learn(self, x1_mean: Tensor, m: Tensor, r: Tensor) -> Tensor:
        self._write(*self._pairs(x1_mean, m))
        return m.new_zeros(())

    def _pairs(self, x1_mean: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
        """The keys and values of a batch, of every rank's batch under ``process_group``."""
        return all_rows(self._key(x1_mean), self.process_group), all_rows(m, self.process_group)

    def _write(self, keys: Tensor, values: Tensor) -> None:
        size = len(self.keys)
        slots = (int(self.cursor) + torch.arange(len(keys), device=keys.device)) % size
        self.keys[slots], self.values[slots], self.key_norms[slots] = keys, values, keys.pow(2).sum(1)
        self.cursor.fill_((int(self.cursor) + len(keys)) % size)
        self.filled.fill_(min(size, int(self.filled) + len(keys)))

    @torch.no_grad()
    def refresh(self, pairs: Iterator[tuple[Tensor, Tensor]]) -> None:
        """Refills the whole table, in order, from ``pairs`` of batches ``(x1_mean, m)``."""
        self.filled.zero_()
        self.cursor.zero_()
        while int(self.filled) < len(self.keys):
            keys, values = self._pairs(*next(pairs))
            room = len(self.keys) - int(self.filled)
            self._write(keys[:room], values[:room])


CENTRINGS = {"regression": RegressionCentre, "neighbours": NeighbourCentre}


class SecondStage(nn.Module):
    """The stage-2 contract, obeyed by every stage 2 (evaluation, CLI and figures use nothing else).

    ``x1, x1_mean`` are stage 1's decoder output for a code ``z`` and its mean; ``w`` has the prior
    ``N(0, I)`` of size ``w_dim``. Subclasses define:

    - ``training_loss(x, x1, x1_mean, step) -> (total, terms)``: the objective on one batch;
    - ``encode(x, x1, x1_mean) -> w [B, w_dim]``: the code of ``x`` (posterior mean or exact inverse);
    - ``generate(x1, x1_mean, w) -> x``: the data point of ``w`` given ``x1`` (a mean, or a draw);
    - ``log_likelihood_bound(x, x1, x1_mean) -> dict``: ``"log_likelihood" [B]``, a lower bound on
      ``log p(x | x1)`` in nats (one Monte Carlo draw of an ELBO or of the dequantisation bound),
      plus per-row diagnostics (e.g. ``"w_kl" [B, w_dim]``);
    - ``bound``: which bound that is (``"elbo"``, ``"dequantized"``, ``"exact"``), or None when the stage has no
      tractable likelihood (its ``log_likelihood_bound`` then raises ``NotImplementedError``);
    - ``exact_inverse``: True when ``generate(x1, x1_mean, encode(x, x1, x1_mean))`` is ``x`` by
      construction (a reconstruction error then says nothing about the model);
    - ``config``: the constructor's arguments with ``kind`` (``build_stage2`` rebuilds from it);
    - ``optimizers(lr)`` and ``training_step(x, x1, x1_mean, step, optimizers, precision)``: how
      ``fit`` updates the stage (by default one Adam on ``training_loss``, its forward pass under
      ``training.autocast(precision)``; a GAN alternates players);
    - ``finish(stage1, batches)``: called by ``fit`` after the last step with the frozen stage 1
      and the stream of training batches, for state estimated from training pairs that should
      reflect the final networks (``VAEStage2``'s neighbour table); by default nothing;
    - ``mixed_precision``: whether the stage trains well in bfloat16 (False for a flow, whose
      log-determinants want float32: ``fit`` then trains it in float32 whatever is asked).
    """

    config: dict
    bound: str | None = None
    exact_inverse: bool = False
    uses_stage1_likelihood: bool = False  # takes ``likelihood`` from stage 1
    uses_stage1_sizes: bool = True  # and, when it uses the likelihood, its network sizes
    max_grad_norm: float | None = None
    mixed_precision: bool = True

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def training_loss(self, x: Tensor, x1: Tensor, x1_mean: Tensor,
                      step: int) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        raise NotImplementedError

    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        raise NotImplementedError

    def log_likelihood_bound(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has no tractable likelihood")

    def sample_w(self, n: int, temperature: float = 1.0) -> Tensor:
        """``n`` draws ``[n, w_dim]`` of the prior ``N(0, temperature^2 I)``."""
        return temperature * torch.randn(n, self.w_dim, device=self.device)

    def finish(self, stage1: nn.Module, batches: Iterator[Tensor]) -> None:
        """After training (see the class docstring): nothing by default."""

    def optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        """The optimisers ``training_step`` uses, by name (checkpointed under those names)."""
        return {"optimizer": adam(self.parameters(), lr=lr)}

    def training_step(self, x: Tensor, x1: Tensor, x1_mean: Tensor, step: int,
                      optimizers: dict[str, torch.optim.Optimizer],
                      precision: str = "fp32") -> dict[str, Tensor]:
        """One update on a batch, returning its terms: ``training_loss`` (under
        ``autocast(precision)``), backward (clipped at ``max_grad_norm``), one optimiser step. A
        stage with several players overrides it."""
        with autocast(x.device, precision):
            total, terms = self.training_loss(x, x1, x1_mean, step)
        optimizer = optimizers["optimizer"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.parameters(), self.max_grad_norm)
        optimizer.step()
        return terms

    def fit(self, stage1: nn.Module, data: Tensor | Dataset, *, steps: int = 10_000,
            batch_size: int = 64, lr: float = 5e-4,
            checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 1000,
            checkpoint_seconds: float = 60.0,
            resume: bool = True, log_every: int = 50, progress: bool = True, seed: int = 0,
            time_limit: float | None = None, precision: str = "fp32", replacement: bool = True,
            process_group=None, monitor: EarlyStopping | None = None) -> list[dict]:
        """Trains this stage on random batches of ``data`` (``replacement`` and ``process_group``
        as in ``DisentangledVAE.fit``; submodules whose state is estimated from batches rather
        than by gradients declare a ``process_group`` attribute, which this sets) with ``stage1`` (a ``DisentangledVAE``)
        frozen: ``x1`` is its decoder output at ``z ~ q(z | x)``, drawn afresh for every row at
        every step (``sampled_stage1_output``), as the model is sampled. Checkpoints to
        ``stage2.pt`` in ``checkpoint_dir`` and resumes from it as ``DisentangledVAE.fit`` does.
        ``precision`` as there, for this stage's networks (float32 for a stage without
        ``mixed_precision``); stage 1 runs in float32, so ``x1`` is exactly what sampling gives
        (in bfloat16 it was no faster). ``monitor`` as in ``DisentangledVAE.fit``. Returns the
        history (``self.history``).
        """
        stage1.eval()
        precision = resolve_precision(precision, self.device) if self.mixed_precision else "fp32"
        for network in (stage1, self):
            network.to(memory_format=torch.channels_last)
        optimizers = self.optimizers(lr)
        settings = {"lr": lr, "batch_size": batch_size, "seed": seed, "config": repr(self.config),
                    "precision": precision, "replacement": replacement}
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(process_seed(seed, process_group))
        batches = RandomBatches(data, batch_size, generator, self.device, replacement,
                                rank_and_size(process_group))
        stateful = [m for m in self.modules() if hasattr(m, "process_group")]
        for module in stateful:
            module.process_group = process_group
        self.train()
        try:
            with data_parallel([self], process_group) as synchronize:
                def step_fn(step: int) -> dict[str, float]:
                    x = next(batches)
                    _, _, x1, x1_mean = sampled_stage1_output(stage1, x)  # float32: as at sampling
                    terms = self.training_step(x, x1, x1_mean, step, optimizers, precision)
                    if step == 0:  # layers initialised from the first batch (a flow's) saw each rank's rows
                        synchronize()
                    return dict(zip(terms, torch.stack([v.detach().float() for v in terms.values()]).tolist()))

                train_resumably(step_fn, path=None if checkpoint_dir is None else Path(checkpoint_dir) / "stage2.pt",
                                resume=resume, states={"model": self, **optimizers, "batches": batches},
                                settings=settings, generator=generator, history=self.history, steps=steps,
                                time_limit=time_limit, extra={"config": self.config}, log_every=log_every,
                                checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                                progress=progress, desc="stage 2", process_group=process_group,
                                monitor=monitor)
                self.eval()
                with flush_denormals():
                    self.finish(stage1, batches)
        finally:
            for module in stateful:
                module.process_group = None
        return self.history


class VAEStage2(SecondStage):
    """Conditional VAE stage 2 for 64x64 images: ``q(w | x, x1)``, ``p(x | x1, w)``, ``p(w) = N(0, I)``.

    Args:
        channels: image channels ``C``; likelihood: the stage-1 decoder's (``"bernoulli"``/``"gaussian"``).
        w_dim: size of ``w``; width, hidden: conv channels and dense width of encoder and decoder.
        free_bits: a free-bits floor (nats per dimension of ``w``) at the start of training that
            decays to 0 over ``kl_warmup`` (see ``kl_penalty``); 0 by default.
        kl_warmup: warm-up steps. In the first half ``q(w | x, x1)`` (its means start as random
            features of the input, its variances as 1) and the decoder train as an
            autoencoder (``w`` = the posterior mean, no KL); in the second half the KL weight and
            the scale of the posterior noise in the training draw of ``w``
            (``mu + scale * sigma * eps``) ramp linearly from 0 to 1 together; afterwards the
            objective is the exact ELBO. Otherwise the decoder learns to ignore ``w`` before the
            encoder makes it informative: with pure prior noise, KL 0 at step 800 of a seeded
            quick run; with noise and weight ramped from step 0, KL 0 through 6,456 steps (stage
            1 trained in bfloat16 on an AMX CPU, seed 0); with the autoencoding half but zero
            initial means, KL 0 through 5,250 steps (``kl_warmup`` 500, the quick preset's).
        encoder: ``q(w | x, x1)``'s network: ``"pooled"`` (``PooledConvEncoder``, blind to position;
            on the quick dSprites preset it gave a better bound, sharper reconstructions and less
            position in ``w`` than ``"dense"``, the ``ConvEncoder`` of stage 1).
        centred: ``q(w | x, x1)``'s mean is the encoder's output ``m(x, x1)`` minus ``r(x1)``, a
            regression of ``m`` on ``x1`` (``ImageHead``) trained alongside, so that
            ``E_q[w | x1] ~ 0``: ``w`` carries no first-moment trace of ``z``, as its prior
            ``p(w)`` independent of ``z`` says. Lossless (the decoder sees ``x1``) and it can only
            lower the KL: ``E||m - E[m | x1]||^2 <= E||m||^2``. ``r`` learns from
            ``||m - r(x1)||^2 / 2`` with ``m`` held fixed (the KL's mean term), or by neighbours (see
            ``centring``), nothing else. The
            subtraction is phased in (weight 0 -> 1) over the ``kl_warmup`` steps after the KL's
            warm-up: subtracted from the start, ``r`` cancels the first, ``x1``-predictable
            signal ``m`` picks up and ``w`` collapses (measured: KL 0 nats at step 800 of the
            quick preset). The weight in use is a buffer (``centring_weight``), saved with the model.
        centring: how ``r`` is estimated: ``"neighbours"`` (``NeighbourCentre``, nearest
            neighbours among training pairs, the table refilled by the final encoder after
            training (``finish``); on the quick preset ``w_leak.of_z`` shape / scale / x / y
            0.024 / 0.029 / 0.029 / 0.016) or ``"regression"`` (``RegressionCentre``, a network,
            which tracked ``E[m | x1]`` only in part, correlation ~0.6: 0.33 / 0.21 / 0.15 / 0.09;
            uncentred: 0.39 / 0.24 / 0.09 / 0.08).
    """

    bound = "elbo"
    uses_stage1_likelihood = True

    def __init__(self, channels: int = 1, w_dim: int = 16, width: int = 32, hidden: int = 256,
                 likelihood: str = "bernoulli", free_bits: float = 0.0, kl_warmup: int = 1000,
                 encoder: str = "pooled", centred: bool = True, centring: str = "neighbours"):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if w_dim < 1:
            raise ValueError(f"w_dim must be >= 1, got {w_dim}")
        if free_bits < 0 or kl_warmup < 0:
            raise ValueError(f"free_bits and kl_warmup must be >= 0, got {free_bits}, {kl_warmup}")
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {tuple(ENCODERS)}, got {encoder!r}")
        if centring not in CENTRINGS:
            raise ValueError(f"centring must be one of {tuple(CENTRINGS)}, got {centring!r}")
        self.config = dict(kind="vae", channels=channels, w_dim=w_dim, width=width, hidden=hidden,
                           likelihood=likelihood, free_bits=free_bits, kl_warmup=kl_warmup,
                           encoder=encoder, centred=centred, centring=centring)
        self.w_dim, self.likelihood = w_dim, likelihood
        self.free_bits, self.kl_warmup = free_bits, kl_warmup
        self.encoder = ENCODERS[encoder](w_dim, 3 * channels, width, hidden)
        # q(w | x, x1): random means, unit variances (zero means stay unused: see kl_warmup)
        nn.init.zeros_(self.encoder.head[-1].weight[w_dim:])
        nn.init.zeros_(self.encoder.head[-1].bias)
        self.centre = CENTRINGS[centring](w_dim, channels, encoder, width, hidden) if centred else None
        self.register_buffer("centring_weight", torch.zeros(()))
        self.decoder = RefinementDecoder(w_dim, channels, width, hidden)
        self.history: list[dict] = []

    def _posterior(self, x: Tensor, x1_mean: Tensor,
                   learn: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """``q(w | x, x1)``'s (mu, logvar) ``[B, w_dim]`` and the centring loss ``[]`` (with
        ``learn``, the centre also learns from the batch)."""
        m, logvar = self.encoder(encoder_input(x, x1_mean))
        if self.centre is None:
            return m, logvar, m.new_zeros(())
        r = self.centre(x1_mean)
        centring = self.centre.learn(x1_mean, m, r) if learn else m.new_zeros(())
        return m - self.centring_weight * r.detach(), logvar, centring

    def posterior(self, x: Tensor, x1_mean: Tensor) -> tuple[Tensor, Tensor]:
        """``q(w | x, x1)``: (mu, logvar) ``[B, w_dim]``."""
        return self._posterior(x, x1_mean)[:2]

    def mean_output(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output) if self.likelihood == "bernoulli" else output

    def _posterior_draw(self, x: Tensor, x1: Tensor, x1_mean: Tensor, noise: float = 1.0,
                        learn: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """The decoder output at one ``w ~ q(w | x, x1)`` (its noise scaled by ``noise``), the KL
        per dimension ``[B, w_dim]`` and the centring loss ``[]`` (see ``_posterior``)."""
        mu, logvar, centring = self._posterior(x, x1_mean, learn)
        w = mu + noise * torch.randn_like(mu) * (0.5 * logvar).exp()
        return self.decoder(x1, x1_mean, w), gaussian_kl(mu, logvar), centring

    def training_loss(self, x, x1, x1_mean, step):
        """Negative ELBO with the KL warm-up (``kl_penalty``), plus the centring regression (its
        gradient reaches ``r`` alone); terms: loss, recon, kl (nats per image), centring."""
        if self.centre is not None:
            self.centring_weight.fill_(max(0.0, linear_warmup(step - self.kl_warmup, self.kl_warmup)))
        # first half of the warm-up: an autoencoder (w = the posterior mean, KL unpaid); second
        # half: the posterior noise and the KL weight ramp 0 -> 1 together; then the exact ELBO
        start = self.kl_warmup // 2
        ramp_step, ramp_steps = max(0, step - start), self.kl_warmup - start
        noise = linear_warmup(ramp_step, ramp_steps) if step >= start else 0.0
        output, kl, centring = self._posterior_draw(x, x1, x1_mean, learn=self.training, noise=noise)
        recon = reconstruction_nll(x, output, self.likelihood).mean()
        kl_per_dim = kl.mean(0)
        elbo = recon if step < start else recon + kl_penalty(kl_per_dim, ramp_step, self.free_bits, ramp_steps)
        return elbo + centring, {"loss": elbo, "recon": recon, "kl": kl_per_dim.sum(),
                                 "centring": centring}

    @torch.no_grad()
    def finish(self, stage1, batches):
        """The centring refreshed from the final encoder's pairs on fresh training batches, keyed
        as ``encode`` queries it (stage 1's posterior means): ``NeighbourCentre.refresh`` refills
        its table; a ``RegressionCentre`` stays. Any centring gives a valid ``q(w | x, x1)``, so
        the bound stays a bound."""
        if self.centre is None:
            return

        def pairs():  # consumed inside this no_grad call (a generator must not hold the grad mode)
            while True:
                x = next(batches)
                x1_mean = stage1.mean_output(stage1.decoder(stage1.encoder(x)[0]))
                yield x1_mean, self.encoder(encoder_input(x, x1_mean))[0]

        self.centre.refresh(pairs())

    @torch.no_grad()
    def log_likelihood_bound(self, x, x1, x1_mean):
        """The ELBO ``E_q[log p(x | x1, w)] - KL(q(w | x, x1) || p(w))`` (one draw of ``w``) ``[B]``
        and the KL per dimension ``w_kl [B, w_dim]``."""
        output, kl, _ = self._posterior_draw(x, x1, x1_mean)
        return {"log_likelihood": log_likelihood(x, output, self.likelihood) - kl.sum(1), "w_kl": kl}

    @torch.no_grad()
    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        """Posterior means of ``w`` ``[B, w_dim]``."""
        return self.posterior(x, x1_mean)[0]

    @torch.no_grad()
    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        """Mean image of ``p(x | x1, w)``."""
        return self.mean_output(self.decoder(x1, x1_mean, w))


class FlowStage2(SecondStage):
    """Conditional flow stage 2 that nests stage 1: ``p(x | x1)`` is stage 1's factorised pixel
    model ``p1(x | x1)`` (Bernoulli, or discretised unit-variance Gaussian) composed with a
    ``MultiScaleFlow`` that learns what it leaves out, the dependence between pixels.

    Towards the base: the image is dequantised (uniform within each pixel's bin), mapped pixel by
    pixel to the standard normal ``t`` that it is under ``p1`` (``flows.gaussianize``: exact
    inverse-CDF), then ``t`` goes through the flow conditioned on ``x1_mean``; ``w`` is the flow's
    base variable (one value per pixel). The flow's couplings start at zero and its ``ActNorm`` at
    the identity, so the untrained flow is a rotation of ``t`` and the untrained stage 2 is
    exactly stage 1 — its likelihood, and its samples (``x ~ p1(x | x1)``, pixels drawn
    independently). Reconstruction through ``w`` is exact.

    Args:
        channels, size: image shape ``C, H = W``; levels, steps, hidden, context_hidden, coupling,
            bins: the flow's (see ``MultiScaleFlow``).
        quantization: number of values a pixel takes (2 for binary images, 256 for 8-bit ones).
        likelihood: stage 1's (``"bernoulli"`` needs ``quantization=2``).
    """

    max_grad_norm = 100.0
    bound = "dequantized"
    exact_inverse = True
    mixed_precision = False  # log-determinants in float32
    uses_stage1_likelihood = True
    uses_stage1_sizes = False

    def __init__(self, channels: int = 1, size: int = 64, levels: int = 3, steps: int = 4,
                 hidden: int = 64, context_hidden: int = 32, coupling: str = "affine", bins: int = 8,
                 quantization: int = 2, likelihood: str = "bernoulli"):
        super().__init__()
        gaussianize_check(likelihood, quantization)
        self.config = dict(kind="flow", channels=channels, size=size, levels=levels, steps=steps,
                           hidden=hidden, context_hidden=context_hidden, coupling=coupling, bins=bins,
                           quantization=quantization, likelihood=likelihood)
        self.flow = MultiScaleFlow(channels, size, context_channels=channels, levels=levels,
                                   steps=steps, hidden=hidden, context_hidden=context_hidden,
                                   coupling=coupling, bins=bins, actnorm_data_init=False)
        self.quantization, self.likelihood = quantization, likelihood
        self.w_dim = self.flow.latent_features
        self.history: list[dict] = []

    def _gaussianize(self, x: Tensor, x1: Tensor, midpoint: bool) -> tuple[Tensor, Tensor]:
        """``t [B, C, H, W]`` and ``log|dt/du|`` summed per row ``[B]`` (``u`` the image dequantised
        in bins of width 1, so the flow's ``log p(t)`` plus it bounds ``log P(x | x1)``)."""
        fraction = torch.full_like(x, 0.5) if midpoint else torch.rand_like(x)
        t, ladj, _ = gaussianize(*bin_edges(x, x1, self.likelihood, self.quantization), fraction)
        return t.to(x.dtype), ladj.flatten(1).sum(1).to(x.dtype)

    def log_prob(self, x: Tensor, x1: Tensor, x1_mean: Tensor, midpoint: bool = False) -> Tensor:
        """Lower bound on ``log P(x | x1)`` of the discrete image, nats ``[B]`` (one draw of the
        dequantisation; at the untrained flow it equals stage 1's ``log p1(x | x1)`` exactly)."""
        t, ladj = self._gaussianize(x, x1, midpoint)
        return self.flow.log_prob(t, x1_mean) + ladj

    def training_loss(self, x, x1, x1_mean, step):
        """Negative log-likelihood per image; terms: loss (nats), bits_per_dim."""
        total = -self.log_prob(x, x1, x1_mean).mean()
        return total, {"loss": total, "bits_per_dim": total / (x[0].numel() * math.log(2))}

    @torch.no_grad()
    def log_likelihood_bound(self, x, x1, x1_mean):
        """``log p(x + u | x1)`` with uniform dequantisation noise ``u`` (one draw): its expectation
        is a lower bound on the discrete image's ``log P(x | x1)`` ``[B]``."""
        return {"log_likelihood": self.log_prob(x, x1, x1_mean)}

    @torch.no_grad()
    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        """The base variable ``w [B, C*H*W]`` of each image (dequantised at its bins' centres)."""
        return self.flow(self._gaussianize(x, x1, midpoint=True)[0], x1_mean)[0]

    @torch.no_grad()
    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        """The image ``[B, C, H, W]`` (on the quantisation grid) of base variables ``w`` given ``x1``."""
        return bin_of(self.flow.inverse(w, x1_mean)[0], x1, self.likelihood, self.quantization)


class MixtureStage2(SecondStage):
    """Tractable conditional mixture stage 2 for 64x64 images:
    ``p(x | x1) = sum_k pi_k(x1) p_k(x | x1)``, ``K`` components whose pixel parameters (Bernoulli
    logits or unit-variance Gaussian means, as stage 1's likelihood) are ``x1`` refined by one U-Net
    trunk (``RefinementDecoder`` with ``K`` outputs), the weights ``pi(x1)`` from ``ImageHead``.

    The log-likelihood is exact (``logsumexp`` over components). ``w`` is the component, written as
    one standard normal number so that ``p(w) = N(0, 1)`` is independent of ``z`` as the contract
    says: ``w`` picks component ``k`` when ``Phi(w)`` falls in ``k``'s slice of ``pi(x1)``'s
    cumulative sum (``generate``); ``encode`` returns the centre of the slice of the component most
    probable a posteriori, so reconstruction is that component's mean, and sampling ``w ~ N(0, 1)``
    draws ``k ~ pi(x1)``.

    Args:
        channels: image channels; components: ``K``; width, hidden: the trunk's sizes;
        likelihood: stage 1's (``"bernoulli"`` / ``"gaussian"``).
    """

    bound = "exact"
    uses_stage1_likelihood = True
    w_dim = 1

    def __init__(self, channels: int = 1, components: int = 8, width: int = 32, hidden: int = 256,
                 likelihood: str = "bernoulli"):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if components < 2:
            raise ValueError(f"components must be >= 2, got {components}")
        self.config = dict(kind="mog", channels=channels, components=components, width=width,
                           hidden=hidden, likelihood=likelihood)
        self.components, self.likelihood = components, likelihood
        self.trunk = RefinementDecoder(0, channels, width, hidden, components=components)
        self.weights = ImageHead(components, channels, "dense", width, hidden)
        self.history: list[dict] = []

    def joint(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> tuple[Tensor, Tensor]:
        """``log pi_k(x1) + log p_k(x | x1)`` ``[B, K]`` and the components' outputs
        ``[B, K, C, H, W]``."""
        if x.shape != x1.shape:
            raise ValueError(f"x {tuple(x.shape)} and x1 {tuple(x1.shape)} must have one shape")
        outputs = self.trunk(x1, x1_mean)
        B, K = outputs.shape[:2]
        log_p = log_likelihood(x.repeat_interleave(K, 0), outputs.flatten(0, 1), self.likelihood)
        return F.log_softmax(self.weights(x1_mean), 1) + log_p.view(B, K), outputs

    def log_prob(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        """``log p(x | x1)`` in nats ``[B]``, exact."""
        return self.joint(x, x1, x1_mean)[0].logsumexp(1)

    def training_loss(self, x, x1, x1_mean, step):
        """Negative log-likelihood per image; terms: loss (nats), bits_per_dim."""
        total = -self.log_prob(x, x1, x1_mean).mean()
        return total, {"loss": total, "bits_per_dim": total / (x[0].numel() * math.log(2))}

    @torch.no_grad()
    def log_likelihood_bound(self, x, x1, x1_mean):
        """The exact ``log p(x | x1)`` ``[B]``."""
        return {"log_likelihood": self.log_prob(x, x1, x1_mean)}

    def _slices(self, x1_mean: Tensor) -> Tensor:
        """The upper ends ``[B, K]`` of the components' slices of ``[0, 1]`` (``pi``'s cumsum)."""
        return F.softmax(self.weights(x1_mean), 1).cumsum(1)

    @torch.no_grad()
    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        """``[B, 1]``: ``Phi^-1`` of the centre of the most probable component's slice."""
        k = self.joint(x, x1, x1_mean)[0].argmax(1, keepdim=True)
        upper = self._slices(x1_mean)
        lower = F.pad(upper, (1, 0))[:, :-1]
        centre = 0.5 * (upper.gather(1, k) + lower.gather(1, k))
        return math.sqrt(2) * torch.erfinv((2 * centre - 1).clamp(-1 + 1e-6, 1 - 1e-6))

    @torch.no_grad()
    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        """Mean image of the component ``w`` picks given ``x1``."""
        if w.dim() != 2 or w.shape != (x1.shape[0], 1):
            raise ValueError(f"w must have shape [{x1.shape[0]}, 1], got {tuple(w.shape)}")
        u = 0.5 * (1 + torch.erf(w / math.sqrt(2)))
        k = torch.searchsorted(self._slices(x1_mean).contiguous(), u.contiguous()).clamp(max=self.components - 1)
        output = self.trunk(x1, x1_mean)[torch.arange(len(k), device=k.device), k[:, 0]]
        return torch.sigmoid(output) if self.likelihood == "bernoulli" else output


class ConditionalDiscriminator(nn.Module):
    """``D(x, x1) -> [B]``, a score of whether ``x`` is a real image for stage 1's ``x1_mean``:
    spectrally normalised convolutions (4 stride-2, 64 -> 4) on ``[x, x1_mean]`` and two dense
    layers, leaky ReLUs (``x, x1_mean [B, C, 64, 64]``)."""

    def __init__(self, channels: int = 1, width: int = 32, hidden: int = 256):
        super().__init__()
        sn = nn.utils.parametrizations.spectral_norm
        layers, c = [], 2 * channels
        for out in (width, width, 2 * width, 2 * width):
            layers += [sn(nn.Conv2d(c, out, 4, 2, 1)), nn.LeakyReLU(0.2)]
            c = out
        self.net = nn.Sequential(*layers, nn.Flatten(), sn(nn.Linear(c * 16, hidden)), nn.LeakyReLU(0.2),
                                 sn(nn.Linear(hidden, 1)))

    def forward(self, x: Tensor, x1_mean: Tensor) -> Tensor:
        return full_precision(self.net(cat_channels([x, x1_mean])))[:, 0]


class GANStage2(SecondStage):
    """Implicit stage 2 for 64x64 images: a generator ``G(x1, w)`` that refines ``x1``
    (``RefinementDecoder``: zero-initialised residual, so the untrained generator returns stage 1's
    image), a conditional discriminator ``D(x, x1)`` (``ConditionalDiscriminator``, spectral norm,
    hinge loss, lazy R1 penalty on real images every ``r1_every`` steps), ``w ~ N(0, I)``, and an
    encoder ``E(x, x1) -> w`` (``PooledConvEncoder``'s mean, position-blind as the VAE's) so the
    full model can reconstruct.

    ``E`` is trained with the generator, BicycleGAN-style: a latent regression on generated pairs
    (``||E(G(x1, w), x1) - w||^2 / 2``, which keeps ``E``'s codes where ``G`` reads the prior) plus
    the reconstruction ``-log p(x | G(x1, E(x, x1)))``, both in nats per image (the latter as the
    VAE stage's), weighted by ``reconstruction`` and ``latent``: weighted per pixel (BicycleGAN's
    scale), the reconstruction was 4096 times weaker, the generator ignored ``E`` and the
    reconstruction stayed above stage 1's (BCE 150.8 vs 89.0 in the first benchmark). Chosen over a BiGAN/ALI joint discriminator because its reconstructions are direct
    (ALI's are notoriously loose) and it needs one discriminator, on images only. There is no
    tractable likelihood (``bound`` None).

    Args:
        channels, w_dim, width, hidden: image channels, size of ``w``, network sizes;
        likelihood: stage 1's (the reconstruction term's and how ``G``'s output is read);
        reconstruction, latent, r1, r1_every: loss weights and the R1 schedule.
    """

    uses_stage1_likelihood = True

    def __init__(self, channels: int = 1, w_dim: int = 16, width: int = 32, hidden: int = 256,
                 likelihood: str = "bernoulli", reconstruction: float = 1.0, latent: float = 1.0,
                 r1: float = 1.0, r1_every: int = 4):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if w_dim < 1:
            raise ValueError(f"w_dim must be >= 1, got {w_dim}")
        if min(reconstruction, latent, r1) < 0 or r1_every < 1:
            raise ValueError("reconstruction, latent and r1 must be >= 0 and r1_every >= 1")
        self.config = dict(kind="gan", channels=channels, w_dim=w_dim, width=width, hidden=hidden,
                           likelihood=likelihood, reconstruction=reconstruction, latent=latent, r1=r1,
                           r1_every=r1_every)
        self.w_dim, self.likelihood = w_dim, likelihood
        self.weights = dict(reconstruction=reconstruction, latent=latent, r1=r1)
        self.r1_every = r1_every
        self.generator = RefinementDecoder(w_dim, channels, width, hidden)
        self.encoder = PooledConvEncoder(w_dim, 3 * channels, width, hidden)
        self.discriminator = ConditionalDiscriminator(channels, width, hidden)
        self.history: list[dict] = []

    def _image(self, output: Tensor) -> Tensor:
        return torch.sigmoid(output) if self.likelihood == "bernoulli" else output

    def _encode(self, x: Tensor, x1_mean: Tensor) -> Tensor:
        return self.encoder(encoder_input(x, x1_mean))[0]

    def discriminator_loss(self, x: Tensor, fake: Tensor, x1_mean: Tensor, r1: bool) -> Tensor:
        """Hinge loss of ``D`` on real ``x`` and generated ``fake`` images, plus (when ``r1``) the
        lazy R1 penalty ``r1_every * r1 / 2 * E||grad_x D(x)||^2``."""
        if r1 and self.weights["r1"] > 0:
            x = x.detach().requires_grad_()
        real = self.discriminator(x, x1_mean)
        loss = F.relu(1 - real).mean() + F.relu(1 + self.discriminator(fake.detach(), x1_mean)).mean()
        if r1 and self.weights["r1"] > 0:
            grad, = torch.autograd.grad(real.sum(), x, create_graph=True)
            loss = loss + 0.5 * self.weights["r1"] * self.r1_every * grad.pow(2).flatten(1).sum(1).mean()
        return loss

    def _generator_objective(self, x: Tensor, x1: Tensor,
                             x1_mean: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        """``training_loss``'s total and terms, and the generated images ``[B, C, 64, 64]``."""
        w = torch.randn(len(x), self.w_dim, device=x.device)
        fake = self._image(self.generator(x1, x1_mean, w))
        adversarial = -self.discriminator(fake, x1_mean).mean()
        latent = 0.5 * (self._encode(fake, x1_mean) - w).pow(2).sum(1).mean()
        recon = reconstruction_nll(x, self.generator(x1, x1_mean, self._encode(x, x1_mean)),
                                   self.likelihood).mean()
        total = (adversarial + self.weights["reconstruction"] * recon
                 + self.weights["latent"] * latent)
        return total, {"loss": total, "adversarial": adversarial, "recon": recon, "latent": latent}, fake

    def training_loss(self, x, x1, x1_mean, step):
        """The generator and encoder's objective: ``-D(G(x1, w), x1)`` (hinge) + ``reconstruction``
        x the reconstruction NLL per image + ``latent`` x the latent regression; terms: loss,
        adversarial, recon (nats per image), latent."""
        return self._generator_objective(x, x1, x1_mean)[:2]

    def optimizers(self, lr: float) -> dict[str, torch.optim.Optimizer]:
        """Adam (betas 0.5, 0.999) for generator + encoder, and for the discriminator."""
        players = list(self.generator.parameters()) + list(self.encoder.parameters())
        return {"optimizer": torch.optim.Adam(players, lr=lr, betas=(0.5, 0.999)),
                "discriminator_optimizer": torch.optim.Adam(self.discriminator.parameters(), lr=lr,
                                                            betas=(0.5, 0.999))}

    def training_step(self, x, x1, x1_mean, step, optimizers, precision="fp32"):
        """A generator-and-encoder step (``training_loss``), then a discriminator step on the same
        batch and the generated images (forward passes under ``autocast(precision)``); terms add
        ``discriminator``."""
        with autocast(x.device, precision):
            total, terms, fake = self._generator_objective(x, x1, x1_mean)
        optimizers["optimizer"].zero_grad(set_to_none=True)
        total.backward()
        optimizers["optimizer"].step()
        with autocast(x.device, precision):
            d_loss = self.discriminator_loss(x, fake, x1_mean, r1=step % self.r1_every == 0)
        optimizers["discriminator_optimizer"].zero_grad(set_to_none=True)
        d_loss.backward()
        optimizers["discriminator_optimizer"].step()
        return {**terms, "discriminator": d_loss.detach()}

    @torch.no_grad()
    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        """``E(x, x1)`` ``[B, w_dim]``."""
        return self._encode(x, x1_mean)

    @torch.no_grad()
    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        """The generator's image ``[B, C, 64, 64]`` for ``w`` given ``x1``."""
        return self._image(self.generator(x1, x1_mean, w))


STAGE2_KINDS = {"vae": VAEStage2, "flow": FlowStage2, "gan": GANStage2, "mog": MixtureStage2}


def build_stage2(config: dict) -> SecondStage:
    """The stage 2 described by a ``config`` (as stored in ``SecondStage.config``)."""
    options = dict(config)
    kind = options.pop("kind", None)
    if kind not in STAGE2_KINDS:
        raise ValueError(f"stage 2 kind must be one of {tuple(STAGE2_KINDS)}, got {kind!r}")
    return STAGE2_KINDS[kind](**options)
