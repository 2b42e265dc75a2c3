"""Synthetic tables with the multi-stage model.

Rows become vectors through ``TabularTransformer``; stage 1 is an MLP beta-TCVAE on them with a
mixed likelihood (``MixedLikelihood``); stage 2 models the rows given the stage-1 output: a
conditional VAE that refines stage 1's output (``TabularVAEStage2``), a conditional
copula flow on the rows mapped to standard normals by stage 1's own model (``TabularFlowStage2``)
or a conditional mixture of Gaussians (``TabularMixtureStage2``, whose one-hot and 0/1 entries, and
the scalars they make certain, are dequantised by uniform noise in [0, 1), so a block's largest entry
is still its category). Every tabular stage 2 is built from the transformer's spans.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msvae.flows import ConditionalFlow
from msvae.flows.gaussianize import bin_edges, bin_of, categorical_edges, category_of, gaussianize
from msvae.data.tabular import Span, TabularTransformer
from msvae.losses import BetaTCVAELoss, gaussian_kl, prior_kl
from msvae.models.networks import MLPDecoder, MLPEncoder, reparameterize
from msvae.models.stage1 import DisentangledVAE
from msvae.models.stage2 import SecondStage
from msvae.models.training import EarlyStopping, build_from_file, kl_penalty, save_checkpoint
from msvae.ops.validation import check_number
from msvae.priors import FactorizedAggregatePosterior

MIN_LOG_SCALE, MAX_LOG_SCALE = math.log(0.01), 0.0
PRIOR_BANDWIDTHS = (0.0, 0.03, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)  # kernel widths the fitted prior selects from
PENALTIES = (2.0, 1.0)  # stage 1's default (beta, gamma)
# the default stage-1 width and lr: a table whose training rows are one batch, and a larger one
WHOLE_TABLE_HIDDEN, WHOLE_TABLE_LR, HIDDEN, LR = (128, 128), 3e-3, (256, 256), 1e-3


def _blocks(spans) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Indices of the scalar and binary features, and (start, size) of the one-hot blocks."""
    scalar = [s.start for s in spans if s.kind == "scalar"]
    binary = [s.start for s in spans if s.kind == "binary"]
    softmax = [(s.start, s.size) for s in spans if s.kind == "softmax"]
    return scalar, binary, softmax


class MixedLikelihood(nn.Module):
    """``p(x | output)`` for transformed rows ``[B, F]``: a Gaussian with a learned scale (in
    [0.01, 1]) per scalar feature, a Bernoulli per 0/1 feature (logits), a categorical per one-hot
    block (logits). A scalar whose value a row's discrete entries make certain (its span's
    ``fixed_by``: a point mode, a missing value) is not scored in that row (``free``): its
    probability given them is 1. Called as ``nll(x, output) -> [B]``."""

    def __init__(self, spans):
        super().__init__()
        spans = [Span(*span) for span in spans]
        scalar, binary, softmax = _blocks(spans)
        self.softmax_blocks = softmax
        self.register_buffer("scalar", torch.tensor(scalar, dtype=torch.long))
        self.register_buffer("binary", torch.tensor(binary, dtype=torch.long))
        fixing = torch.zeros(sum(span.size for span in spans), len(scalar))  # [F, S]: feature fixes scalar
        for j, span in enumerate(span for span in spans if span.kind == "scalar"):
            fixing[list(span.fixed_by), j] = 1.0
        self.register_buffer("fixing", fixing, persistent=False)
        # the one-hot blocks as one padded gather [blocks, widest]: one log-softmax for all of them
        widest = max((size for _, size in softmax), default=0)
        index = torch.zeros(len(softmax), widest, dtype=torch.long)
        pad = torch.ones(len(softmax), widest, dtype=torch.bool)
        for b, (start, size) in enumerate(softmax):
            index[b, :size] = torch.arange(start, start + size)
            pad[b, :size] = False
        self.register_buffer("block_index", index, persistent=False)
        self.register_buffer("block_pad", pad, persistent=False)
        # [F, blocks]: feature in block; [F]: feature in some block (a categorical's log-probability
        # is its block's logsumexp less its logit, so the one-hot entries need no gather)
        in_block = torch.zeros(fixing.shape[0], len(softmax))
        for b, (start, size) in enumerate(softmax):
            in_block[start:start + size, b] = 1.0
        self.register_buffer("in_block", in_block, persistent=False)
        self.register_buffer("categorical", in_block.sum(1), persistent=False)
        self.log_scale = nn.Parameter(torch.full((len(scalar),), math.log(0.1)))

    def scale(self) -> Tensor:
        return self.log_scale.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE).exp()

    def free(self, x: Tensor) -> Tensor:
        """``[B, S]``: 1 where a row's scalar is uncertain (scored), 0 where its ``fixed_by``
        entries make it certain."""
        return 1.0 - (x @ self.fixing.to(x.dtype)).clamp(0.0, 1.0)

    def forward(self, x: Tensor, output: Tensor) -> Tensor:
        nll = x.new_zeros(x.shape[0])
        if len(self.scalar):
            log_scale = self.log_scale.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE)
            error = (x - output)[:, self.scalar] / log_scale.exp()
            terms = 0.5 * error.square() + log_scale + 0.5 * math.log(2 * math.pi)
            nll = nll + (terms * self.free(x)).sum(1)
        if len(self.binary):
            nll = nll + F.binary_cross_entropy_with_logits(
                output[:, self.binary], x[:, self.binary], reduction="none").sum(1)
        if self.softmax_blocks:
            logits = output[:, self.block_index].masked_fill(self.block_pad, -math.inf)  # [B, blocks, widest]
            nll = nll + ((x @ self.in_block.to(x.dtype)) * logits.logsumexp(-1)).sum(1) \
                - (x * output) @ self.categorical.to(x.dtype)
        return nll

    @torch.no_grad()
    def sample(self, output: Tensor) -> Tensor:
        """A draw ``[B, F]`` of ``p(x | output)``: one-hot blocks, 0/1 entries, noisy scalars."""
        x = torch.zeros_like(output)
        if len(self.scalar):
            noise = torch.randn(output.shape[0], len(self.scalar), device=output.device)
            x[:, self.scalar] = output[:, self.scalar] + self.scale() * noise
        if len(self.binary):
            u = torch.rand(output.shape[0], len(self.binary), device=output.device)
            x[:, self.binary] = (u < torch.sigmoid(output[:, self.binary])).to(x.dtype)
        if self.softmax_blocks:  # Gumbel-max over the padded blocks: one draw for all of them
            logits = output[:, self.block_index].masked_fill(self.block_pad, -math.inf)  # [B, blocks, widest]
            gumbel = -torch.empty_like(logits).exponential_().log()
            picks = (logits + gumbel).argmax(-1)  # [B, blocks]
            rows = torch.arange(len(x), device=x.device)[:, None]
            blocks = torch.arange(len(self.softmax_blocks), device=x.device)
            x[rows, self.block_index[blocks, picks]] = 1.0
        return x


class TabularFlowStage2(SecondStage):
    """Copula-flow stage 2 for rows that nests stage 1: ``p(x | x1)`` is stage 1's factorised
    ``MixedLikelihood`` composed with a conditional spline flow that learns the dependence between
    columns it leaves out (and between a mode-normalised column's mode and offset).

    Each atom of a row — a scalar, a 0/1 entry, a one-hot block (one category) — is mapped to the
    standard normal it is under stage 1's model given ``x1``: scalars standardised by stage 1's
    mean and scale, discrete atoms dequantised within their bin and mapped by the inverse CDF
    (``flows.gaussianize``; a block's categories in column order). The flow (``ConditionalFlow``
    with context ``x1``: a full-covariance ``TriangularAffine`` layer, then spline couplings
    zero-initialised) maps these to ``w``, one value per atom. Untrained, stage 2 *is* stage 1, in
    likelihood and in samples. Training starts by setting the linear layer, in closed form, to the
    Gaussian copula of the first batch's atoms (the correlations between columns that stage 1's
    factorised likelihood leaves out); maximum likelihood then refines it with the couplings.
    ``spans`` as ``TabularVAEStage2``'s; ``likelihood`` holds stage 1's scales (the synthesizer
    copies them in before training) and trains with the flow.
    """

    bound = "dequantized"
    max_grad_norm = 100.0

    def __init__(self, spans, layers: int = 4, hidden: int = 128, bins: int = 8,
                 tail_bound: float = 5.0):
        super().__init__()
        spans = [Span(*span) for span in spans]
        self.config = dict(kind="flow", spans=[list(span) for span in spans], layers=layers,
                           hidden=hidden, bins=bins, tail_bound=tail_bound)
        self.likelihood = MixedLikelihood(spans)
        self.features = sum(span.size for span in spans)
        self.softmax_blocks = self.likelihood.softmax_blocks
        self.w_dim = len(self.likelihood.scalar) + len(self.likelihood.binary) + len(self.softmax_blocks)
        self.flow = ConditionalFlow.spline(self.w_dim, self.features, layers, hidden, bins, tail_bound,
                                           linear=True)
        self.history: list[dict] = []

    def _gaussianize(self, x: Tensor, x1: Tensor, midpoint: bool) -> tuple[Tensor, Tensor]:
        """The atoms' standard normals ``t [B, w_dim]`` and ``log|dt/du|`` summed per row ``[B]``."""
        t, ladj = [], []
        if len(self.likelihood.scalar):
            # a scalar a row's point mode or missingness makes certain is an auxiliary N(0, 1) draw
            # e, paid for by -log N(e): the bound on its probability, 1, is then 0 nats for stage 1
            scale, free = self.likelihood.scale(), self.likelihood.free(x)
            e = torch.zeros_like(free) if midpoint else torch.randn_like(free)
            standard = (x[:, self.likelihood.scalar] - x1[:, self.likelihood.scalar]) / scale
            t.append(torch.where(free > 0, standard, e))
            log_normal = -0.5 * e.square() - 0.5 * math.log(2 * math.pi)
            ladj.append(-(scale.log() * free).sum(1) - (log_normal * (1 - free)).sum(1))
        edges = []
        if len(self.likelihood.binary):
            b = self.likelihood.binary
            edges.append(bin_edges(x[:, b].clamp(0, 1), x1[:, b], "bernoulli", 2))
        if self.softmax_blocks:  # every block at once, padded to the widest
            index, pad = self.likelihood.block_index, self.likelihood.block_pad
            k = x[:, index].masked_fill(pad, -1.0).argmax(-1)  # [B, blocks]
            edges.append(categorical_edges(k, x1[:, index], pad))
        if edges:
            lo, hi = (torch.cat(e, 1) for e in zip(*edges))
            fraction = torch.full_like(lo, 0.5) if midpoint else torch.rand_like(lo)
            t_discrete, ladj_discrete, _ = gaussianize(lo, hi, fraction)
            t.append(t_discrete.to(x.dtype))
            ladj.append(ladj_discrete.sum(1).to(x.dtype))
        return torch.cat(t, 1), sum(ladj)

    def log_prob(self, x: Tensor, x1: Tensor, midpoint: bool = False) -> Tensor:
        """Lower bound on ``log P(x | x1)`` (densities for scalars, probabilities for discrete
        atoms) ``[B]``, one draw of the dequantisation; the untrained flow gives stage 1's exactly."""
        t, ladj = self._gaussianize(x, x1, midpoint)
        return self.flow.log_prob(t, x1) + ladj

    def training_loss(self, x, x1, x1_mean, step):
        """Negative log-likelihood bound, nats per row. The first call sets the flow's linear layer
        to the whitening of the batch's atoms (``TriangularAffine.fit_gaussian``): training starts
        from the Gaussian copula of what stage 1 leaves, which the couplings then refine."""
        linear = self.flow.transform.transforms[0]
        if not linear.fitted:
            with torch.no_grad():
                linear.fit_gaussian(self._gaussianize(x, x1, False)[0].float())
        total = -self.log_prob(x, x1).mean()
        return total, {"loss": total}

    @torch.no_grad()
    def log_likelihood_bound(self, x, x1, x1_mean):
        """``log p(u | x1)`` of the row dequantised by one uniform draw (its expectation bounds
        ``log P(x | x1)``) ``[B]``."""
        return {"log_likelihood": self.log_prob(x, x1)}

    @torch.no_grad()
    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        """The base variable ``w [B, w_dim]`` of each row (discrete atoms at their bins' centres)."""
        return self.flow.transform(self._gaussianize(x, x1, midpoint=True)[0], x1)[0]

    @torch.no_grad()
    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        """The transformed row ``[B, F]`` (one-hot blocks, 0/1 entries, scalars) of ``w`` given ``x1``
        (a scalar the row's discrete atoms make certain is whatever ``w`` gives: decoding ignores it;
        ``encode`` puts it at ``x1``'s value)."""
        t = self.flow.transform.inverse(w, x1)[0]
        x = torch.zeros_like(x1)
        scalar, binary = self.likelihood.scalar, self.likelihood.binary
        x[:, scalar] = x1[:, scalar] + self.likelihood.scale() * t[:, :len(scalar)]
        column = len(scalar)
        if len(binary):
            x[:, binary] = bin_of(t[:, column:column + len(binary)], x1[:, binary], "bernoulli", 2)
            column += len(binary)
        if self.softmax_blocks:
            index, pad = self.likelihood.block_index, self.likelihood.block_pad
            k = category_of(t[:, column:], x1[:, index], pad)  # [B, blocks]
            rows = torch.arange(len(x), device=x.device)[:, None]
            x[rows, index[torch.arange(len(index), device=x.device), k]] = 1.0
        return x


class TabularMixtureStage2(SecondStage):
    """``p(x | x1) = sum_k pi_k(x1) N(mu_k(x1), diag sigma_k(x1)^2)`` on the dequantised row (a
    mixture density network). Its one-hot and 0/1 entries get uniform noise in [0, 1), so a
    block's largest entry is still its category, and so does a scalar that the row's discrete
    entries make certain (its span's ``fixed_by``: a point, a missing value), whose value is then
    the noise alone: a one-state variable dequantised, so no density is scored on a certain value
    (that density is bounded only by the scale's floor). ``w`` is the standardised draw
    ``(x - mu_k) / sigma_k`` and the component is the most responsible one. The bound is the
    density of the dequantised row, a lower bound on the discrete entries' probability times the
    free scalars' density. ``spans``: the transformer's ``Span`` rows (or lists)."""

    bound = "dequantized"

    def __init__(self, spans, components: int = 10, hidden: int = 256):
        super().__init__()
        spans = [Span(*span) for span in spans]
        self.features = sum(span.size for span in spans)
        self.config = dict(kind="mog", spans=[list(span) for span in spans], components=components,
                           hidden=hidden)
        discrete = torch.zeros(self.features, dtype=torch.bool)
        fixing = torch.zeros(self.features, self.features)  # [F, F]: feature i's 1 fixes scalar j
        for span in spans:
            if span.kind == "scalar":
                fixing[list(span.fixed_by), span.start] = 1.0
            else:
                discrete[span.start:span.start + span.size] = True
        self.register_buffer("discrete", discrete, persistent=False)
        self.register_buffer("fixing", fixing, persistent=False)
        self.softmax_blocks = [(s.start, s.size) for s in spans if s.kind == "softmax"]
        self.history: list[dict] = []
        self.components, self.w_dim = components, self.features
        self.net = nn.Sequential(nn.Linear(self.features, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                 nn.ReLU(), nn.Linear(hidden, components * (1 + 2 * self.features)))

    def _fixed(self, x: Tensor) -> Tensor:
        """``[B, F]``: True at a scalar that the row's (0/1) discrete entries make certain."""
        return x @ self.fixing.to(x.dtype) > 0.5

    def dequantize(self, x: Tensor, midpoint: bool = False) -> Tensor:
        noise = torch.full_like(x, 0.5) if midpoint else torch.rand_like(x)
        return torch.where(self.discrete, x + noise, torch.where(self._fixed(x), noise, x))

    def quantize(self, y: Tensor) -> Tensor:
        """Rows from dequantised ones: each one-hot block's largest entry is its category, a 0/1
        entry is 1 from 1 up, and a certain scalar is 0 (``inverse_transform`` ignores it)."""
        x = torch.where(self.discrete, (y >= 1).to(y.dtype), y)
        for start, size in self.softmax_blocks:
            x[:, start:start + size] = F.one_hot(y[:, start:start + size].argmax(1), size).to(y.dtype)
        return x.masked_fill(self._fixed(x), 0.0)

    def training_loss(self, x, x1, x1_mean, step):
        """Negative log-density of the dequantised row, nats per row."""
        total = -self.log_prob(self.dequantize(x), x1).mean()
        return total, {"loss": total}

    @torch.no_grad()
    def log_likelihood_bound(self, x, x1, x1_mean):
        """``log p(x + u | x1)`` with uniform noise ``u`` on the discrete entries (one draw) ``[B]``."""
        return {"log_likelihood": self.log_prob(self.dequantize(x), x1)}

    def _mixture(self, x1: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        K, C = self.components, self.features
        out = self.net(x1)
        logits, mu, log_scale = out[:, :K], out[:, K:K + K * C], out[:, K + K * C:]
        return (logits.log_softmax(1), mu.view(-1, K, C),
                log_scale.view(-1, K, C).clamp(MIN_LOG_SCALE - 2, 2.0))

    def log_prob(self, y: Tensor, x1: Tensor) -> Tensor:
        log_pi, mu, log_scale = self._mixture(x1)
        z = (y[:, None, :] - mu) / log_scale.exp()
        log_normal = (-0.5 * z.square() - log_scale - 0.5 * math.log(2 * math.pi)).sum(2)
        return torch.logsumexp(log_pi + log_normal, 1)

    @torch.no_grad()
    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        y = self.dequantize(x, midpoint=True)
        log_pi, mu, log_scale = self._mixture(x1)
        z = (y[:, None, :] - mu) / log_scale.exp()
        k = (log_pi + (-0.5 * z.square() - log_scale).sum(2)).argmax(1)
        return z[torch.arange(len(k)), k]

    @torch.no_grad()
    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        """Rows from base draws ``w``; the component is drawn from ``pi(x1)``."""
        log_pi, mu, log_scale = self._mixture(x1)
        k = torch.multinomial(log_pi.exp(), 1)[:, 0]
        rows = torch.arange(len(k))
        return self.quantize(mu[rows, k] + log_scale[rows, k].exp() * w)


class TabularVAEStage2(SecondStage):
    """Conditional VAE stage 2 for rows: ``q(w | x, x1)``, ``p(x | x1, w) = MixedLikelihood(x1 + g(x1, w))``.

    ``g`` is an MLP whose last layer starts at zero and ``q(w | x, x1)`` starts as the prior, so the
    untrained stage 2 has exactly stage 1's bound; the KL of ``w`` is warmed up over ``kl_warmup``
    steps and then paid in full (``free_bits``: an initial floor that decays to 0, see
    ``kl_penalty``). ``spans``: the transformer's ``Span`` rows (or lists ``[column, kind, start, size]``).
    """

    bound = "elbo"

    def __init__(self, spans, w_dim: int = 16, hidden: int = 256, free_bits: float = 0.0,
                 kl_warmup: int = 500):
        super().__init__()
        spans = [Span(*span) for span in spans]
        features = sum(span.size for span in spans)
        self.config = dict(kind="vae", spans=[list(span) for span in spans], w_dim=w_dim,
                           hidden=hidden, free_bits=free_bits, kl_warmup=kl_warmup)
        self.w_dim, self.free_bits, self.kl_warmup = w_dim, free_bits, kl_warmup
        self.likelihood = MixedLikelihood(spans)
        self.encoder = MLPEncoder(2 * features, w_dim, (hidden, hidden))
        self.decoder = MLPDecoder(features + w_dim, features, (hidden, hidden))
        for last in (self.encoder.net[-1], self.decoder.net[-1]):
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.history: list[dict] = []

    def output(self, x1: Tensor, w: Tensor) -> Tensor:
        return x1 + self.decoder(torch.cat([x1, w], 1))

    def _posterior_draw(self, x: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        """``-log p(x | x1, w)`` ``[B]`` at one ``w ~ q(w | x, x1)`` and the KL per dimension ``[B, w_dim]``."""
        mu, logvar = self.encoder(torch.cat([x, x1], 1))
        return self.likelihood(x, self.output(x1, reparameterize(mu, logvar))), gaussian_kl(mu, logvar)

    def training_loss(self, x, x1, x1_mean, step):
        """Negative ELBO with the KL warm-up (``kl_penalty``); terms: loss, recon, kl (nats per row)."""
        nll, kl = self._posterior_draw(x, x1)
        recon, kl_per_dim = nll.mean(), kl.mean(0)
        total = recon + kl_penalty(kl_per_dim, step, self.free_bits, self.kl_warmup)
        return total, {"loss": total, "recon": recon, "kl": kl_per_dim.sum()}

    @torch.no_grad()
    def log_likelihood_bound(self, x, x1, x1_mean):
        """The ELBO (one draw of ``w``) ``[B]`` and the KL per dimension ``w_kl [B, w_dim]``."""
        nll, kl = self._posterior_draw(x, x1)
        return {"log_likelihood": -nll - kl.sum(1), "w_kl": kl}

    @torch.no_grad()
    def encode(self, x: Tensor, x1: Tensor, x1_mean: Tensor) -> Tensor:
        return self.encoder(torch.cat([x, x1], 1))[0]

    @torch.no_grad()
    def generate(self, x1: Tensor, x1_mean: Tensor, w: Tensor) -> Tensor:
        """A draw of ``p(x | x1, w)`` ``[B, F]``."""
        return self.likelihood.sample(self.output(x1, w))


TABULAR_STAGE2 = {"vae": TabularVAEStage2, "flow": TabularFlowStage2, "mog": TabularMixtureStage2}


class TabularSynthesizer:
    """Synthetic tables from the multi-stage model: ``fit(df)``, ``sample(n)``, ``save``/``load``.

    Args:
        latent_dim: size of the disentangled code ``z``.
        stage2: ``"flow"`` (the copula flow that nests stage 1, ``TabularFlowStage2``: the default,
            chosen by held-out likelihood), ``"vae"`` (conditional VAE refining stage 1's output),
            ``"mog"`` (conditional mixture of Gaussians) or None (stage 1 alone).
        hidden: widths of stage 1's MLPs; None: ``WHOLE_TABLE_HIDDEN`` (128, 128) where the training
            rows are one batch (``batch_size`` or fewer), else ``HIDDEN`` (256, 256).
        alpha: beta-TCVAE's index-code MI weight.
        penalties: candidate ``(beta, gamma)`` pairs, beta-TCVAE's total-correlation and
            dimension-wise KL weights: with held-out rows stage 1 is fitted with each and the one
            with the best held-out bound kept (without, the first). None (the default): one fit at
            ``PENALTIES`` (2, 1), the held-out bound's choice over (6, 6) on Adult, breast cancer
            and diabetes at the default width and lr (wine prefers (6, 6)); a second candidate
            costs a second stage-1 fit.
        epochs, stage2_epochs, batch_size, lr: the most passes over the training rows each stage
            makes (or ``min_steps`` Adam steps where that is more: a small table is one batch, one
            step per pass; selection may end a stage sooner) and Adam settings (``lr`` None:
            ``WHOLE_TABLE_LR`` 3e-3 for a one-batch table, else ``LR`` 1e-3). The narrower MLP
            and higher lr gave a better held-out bound on the three small tables; Adult's full
            bound preferred the wider, slower one (see DESIGN.md).
        validation: the share of the rows held out for model selection: each stage is checked on
            them (its held-out bound, ``nll_bound``) every epoch (at least every 10 steps), ends
            at its best check and stops after ``patience`` checks without a better one (0: no
            selection, every row trains and each stage runs its full length).
        continuous: how a numeric column becomes features (``TabularTransformer``): ``"quantile"``
            (the default) one scalar, the standard-normal score of the value's rank, so a column is
            one atom that the copula flow correlates with every other; ``"mode"``, CTGAN's
            mode-specific normalisation, a mode one-hot and an offset (point masses decoded
            exactly), whose mode and offset stage 1 draws independently given ``x1``. Held-out
            nats are per transformed row, so they compare fits of one transform, not the two.
        prior: the ``p(z)`` rows are sampled from: ``"aggregate"`` (the default) fits the product of
            stage 1's aggregate-posterior marginals over the training rows after stage 1
            (``priors.FactorizedAggregatePosterior``: independent factors, each shaped as its codes
            are): per factor the held-out codes' likelihood chooses ``N(0, 1)`` or the rows'
            posteriors widened by a kernel width (without held-out rows: as they are); ``"standard"``:
            ``N(0, I)``, the prior stage 1 trains against. The fitted prior's components are
            the training rows' posteriors, so a saved model holds each row's code (decodable to
            an approximation of the row): where rows are private, share samples, not the model
            file, or use ``"standard"``.
        stage2_options: passed to the stage 2 (``layers``, ``hidden``, ``bins``; ``components``).
        seed: seeds the transformer, the initialisation, training and (by default) sampling.
    """

    def __init__(self, latent_dim: int = 8, stage2: str | None = "flow",
                 hidden: tuple[int, ...] | None = None, alpha: float = 1.0,
                 penalties: Iterable[tuple[float, float]] | None = None,
                 epochs: int = 100, stage2_epochs: int = 100,
                 min_steps: int = 1000, validation: float = 0.1, patience: int = 10,
                 batch_size: int = 500, lr: float | None = None, continuous: str = "quantile",
                 prior: str = "aggregate", stage2_options: dict | None = None, seed: int = 0,
                 device: str = "cpu", progress: bool = True):
        if stage2 is not None and stage2 not in TABULAR_STAGE2:
            raise ValueError(f"stage2 must be one of {tuple(TABULAR_STAGE2)} or None, got {stage2!r}")
        for name, value in (("latent_dim", latent_dim), ("epochs", epochs),
                            ("stage2_epochs", stage2_epochs), ("batch_size", batch_size),
                            ("min_steps", min_steps), ("patience", patience)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if prior not in ("aggregate", "standard"):
            raise ValueError(f"prior must be 'aggregate' or 'standard', got {prior!r}")
        if lr is not None:
            check_number("lr", lr, positive=True)
        check_number("validation", validation)
        if not 0 <= validation < 1:
            raise ValueError(f"validation must be in [0, 1), got {validation}")
        if penalties is not None:
            penalties = [list(pair) for pair in penalties] if not isinstance(penalties, (str, bytes)) else []
            if not penalties or any(len(pair) != 2 for pair in penalties):
                raise ValueError("penalties must be None or a non-empty sequence of (beta, gamma) pairs")
        weights = [("alpha", alpha)] + [(name, pair[i]) for pair in penalties or ()
                                        for i, name in enumerate(("beta", "gamma"))]
        for name, value in weights:
            check_number(name, value)
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.options = dict(latent_dim=latent_dim, stage2=stage2,
                            hidden=None if hidden is None else list(hidden), alpha=alpha,
                            penalties=(None if penalties is None
                                       else [[float(b), float(g)] for b, g in penalties]),
                            epochs=epochs, stage2_epochs=stage2_epochs,
                            min_steps=min_steps, validation=validation, patience=patience,
                            batch_size=batch_size, lr=lr, continuous=continuous, prior=prior,
                            stage2_options=dict(stage2_options or {}), seed=seed)
        self.device, self.progress = device, progress
        self.transformer = None
        self.stage1: DisentangledVAE | None = None
        self.likelihood: MixedLikelihood | None = None
        self.stage2: SecondStage | None = None
        self.prior: FactorizedAggregatePosterior | None = None  # None: N(0, I)
        self.selection: dict[str, dict] = {}  # per stage: the held-out checks and the best step
        self.settings: dict = {}  # the stage-1 width and the lr the fit used (defaults resolved)

    def _build(self, transformer) -> None:
        o = self.options
        self.transformer = transformer
        features = transformer.num_features
        torch.manual_seed(o["seed"])
        self.stage1 = DisentangledVAE.for_vectors(features, o["latent_dim"], tuple(self.settings["hidden"]),
                                                  likelihood="gaussian").to(self.device)
        self.likelihood = MixedLikelihood(transformer.spans).to(self.device)
        spans = [list(span) for span in transformer.spans]
        self.stage2 = (None if o["stage2"] is None else
                       TABULAR_STAGE2[o["stage2"]](spans, **o["stage2_options"]).to(self.device))

    def fit(self, df, discrete_columns: Iterable[str] = (), column_types: dict[str, str] | None = None,
            checkpoint_dir: str | os.PathLike | None = None) -> "TabularSynthesizer":
        """Fits the transformer (on all rows), stage 1 (once per candidate of ``penalties``; the
        best held-out bound is kept), the prior, then stage 2 (stage 1 frozen) on the rows of ``df``
        less the held-out share (``validation``) that selects each stage's length and candidate.
        With ``checkpoint_dir`` every fit checkpoints there (candidate ``i > 0`` in
        ``penalties{i}/``) and an interrupted fit resumes."""
        o = self.options
        transformer = TabularTransformer(o["continuous"], seed=o["seed"]).fit(df, discrete_columns,
                                                                            column_types)
        data, held_out = self._split(torch.as_tensor(transformer.transform(df)))
        whole = len(data) <= o["batch_size"]  # the training rows are one batch
        self.settings = {  # an explicit width (even no hidden layer) or lr is kept as given
            "hidden": list(WHOLE_TABLE_HIDDEN if whole else HIDDEN) if o["hidden"] is None else o["hidden"],
            "lr": (WHOLE_TABLE_LR if whole else LR) if o["lr"] is None else o["lr"]}
        self._build(transformer)
        held_out = held_out.to(self.device)
        held = len(held_out)
        batch_size = min(o["batch_size"], len(data))  # small tables: whole-table batches
        steps_per_epoch = max(1, math.ceil(len(data) / batch_size))
        every = max(steps_per_epoch, 10)

        def monitor(module, stage):
            if not held:
                return None
            def score() -> float:
                was_training = module.training
                value = self._bounds(held_out, o["seed"], full=stage == "full")[stage]
                module.train(was_training)
                return value
            return EarlyStopping(module, score, every, o["patience"])

        common = dict(batch_size=batch_size, lr=self.settings["lr"], progress=self.progress, seed=o["seed"],
                      log_every=steps_per_epoch, replacement=False)  # distinct rows: a small table's batch is all of it
        candidates = o["penalties"] or [list(PENALTIES)]
        candidates = candidates if held else candidates[:1]
        fitted = []  # per candidate: (held-out bound, weights, selection)
        for i, (beta, gamma) in enumerate(candidates):
            if i:
                self._build(transformer)  # the same initialisation for every candidate
            loss = BetaTCVAELoss(dataset_size=len(data), alpha=o["alpha"], beta=beta, gamma=gamma,
                                 recon=self.likelihood)
            # the likelihood's scales train with stage 1 (they are the loss's parameters): selected with it
            stage1 = nn.ModuleDict({"model": self.stage1, "likelihood": self.likelihood})
            selector = monitor(stage1, "stage1")
            folder = None if checkpoint_dir is None else Path(checkpoint_dir) / (f"penalties{i}" if i else "")
            self.stage1.fit(data, loss=loss, steps=max(o["epochs"] * steps_per_epoch, o["min_steps"]),
                            monitor=selector, checkpoint_dir=folder, **common)
            selected = {} if selector is None else self._selected(selector)
            fitted.append((selected.get("best", 0.0), copy.deepcopy(stage1.state_dict()),
                           self.stage1.history, selected))
        chosen = min(range(len(fitted)), key=lambda i: fitted[i][0])
        if chosen != len(fitted) - 1:
            self._build(transformer)
            nn.ModuleDict({"model": self.stage1, "likelihood": self.likelihood}).load_state_dict(fitted[chosen][1])
            self.stage1.history = fitted[chosen][2]
        self.selection = {} if not held else {
            "stage1": fitted[chosen][3],
            "penalties": {"candidates": candidates, "bounds": [f[0] for f in fitted],
                          "chosen": candidates[chosen]}}
        self._calibrate(data, held_out)
        if o["prior"] == "aggregate":
            self._fit_prior(data, held_out)
        nested = getattr(self.stage2, "likelihood", None)
        if nested is not None:  # a stage 2 that nests stage 1's likelihood starts from its scales
            nested.load_state_dict(self.likelihood.state_dict())
        if self.stage2 is not None:
            selector = monitor(self.stage2, "full") if self.stage2.bound is not None else None
            self.stage2.fit(self.stage1, data, steps=max(o["stage2_epochs"] * steps_per_epoch, o["min_steps"]),
                            monitor=selector, checkpoint_dir=checkpoint_dir, **common)
            if selector is not None:
                self.selection["stage2"] = self._selected(selector)
        return self

    def _calibrate(self, data: Tensor, held_out: Tensor, rows: int = 50_000, draws: int = 2) -> None:
        """Refits stage 1's output biases (its decoder's last layer) and the likelihood's scales,
        everything else fixed, to the reconstruction term of (at most ``rows``) training rows at
        ``draws`` seeded posterior draws each (L-BFGS): the KL does not depend on them, so this
        maximises the training bound over them, a convex problem SGD leaves unfinished (Adult:
        the decoded category frequencies 1-2.4 points off the data's, the target's positive rate
        0.230 against 0.240). Kept only where the held-out stage-1 bound improves (or there are no
        held-out rows); ``selection["calibration"]`` records both bounds."""
        self.stage1.eval()
        last = [m for m in self.stage1.decoder.modules() if isinstance(m, nn.Linear)][-1]
        scale = self.likelihood.log_scale
        saved = last.bias.detach().clone(), scale.detach().clone()
        score = (lambda: self._bounds(held_out, self.options["seed"], full=False)["stage1"]) \
            if len(held_out) else (lambda: None)
        before = score()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.options["seed"])
            x = data[torch.randperm(len(data))[:rows].to(data.device)]
            mu, logvar = self.stage1.encoder(x)
            # the decoder's output less its last bias at each draw, fixed
            hidden = [self.stage1.decoder(reparameterize(mu, logvar)) - last.bias for _ in range(draws)]
        bias = last.bias.detach().clone().requires_grad_(True)
        likelihood = copy.deepcopy(self.likelihood)  # its scales are the trial ones
        log_scale = likelihood.log_scale
        optimizer = torch.optim.LBFGS([bias, log_scale], max_iter=100, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = sum(likelihood(x, h + bias).mean() for h in hidden) / draws
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            last.bias.copy_(bias)
            scale.copy_(log_scale.clamp(MIN_LOG_SCALE, MAX_LOG_SCALE))
        after = score()
        kept = before is None or after < before
        if not kept:
            with torch.no_grad():
                last.bias.copy_(saved[0])
                scale.copy_(saved[1])
        if before is not None:
            self.selection["calibration"] = {"before": before, "after": after, "kept": kept}

    @torch.no_grad()
    def _fit_prior(self, data: Tensor, held_out: Tensor) -> None:
        """Sets ``prior`` to the factorised aggregate posterior of the training rows ``data``: per
        dimension, the held-out codes choose (by their likelihood, the bound's only term the prior
        changes) between ``N(0, 1)`` and the rows' posteriors widened by a kernel width from
        ``PRIOR_BANDWIDTHS``; without held-out rows, the posteriors as they are. ``N(0, 1)`` in a
        dimension is stored as N copies of it (the same mixture)."""
        self.stage1.eval()
        mu, logvar = (torch.cat(t) for t in zip(*(self.stage1.encoder(x) for x in data.split(4096))))
        if not len(held_out):
            self.prior = FactorizedAggregatePosterior(mu, logvar)
            return
        with torch.random.fork_rng(devices=[]):  # the draw of z the bounds make
            torch.manual_seed(self.options["seed"])
            z = torch.cat([reparameterize(*self.stage1.encoder(x)) for x in held_out.split(4096)])
        candidates = [(torch.zeros_like(mu), torch.zeros_like(logvar))] + [
            (mu, torch.logaddexp(logvar, torch.tensor(2 * math.log(h))) if h > 0 else logvar)
            for h in PRIOR_BANDWIDTHS]
        scores = torch.stack([FactorizedAggregatePosterior(*c).marginal_log_prob(z).mean(0)
                              for c in candidates])  # [candidates, D]: mean held-out log p_d(z_d)
        best = scores.argmax(0)
        dims = torch.arange(mu.shape[1])
        self.prior = FactorizedAggregatePosterior(torch.stack([c[0] for c in candidates])[best, :, dims].T,
                                                  torch.stack([c[1] for c in candidates])[best, :, dims].T)
        names = ["standard"] + [f"{h:g}" for h in PRIOR_BANDWIDTHS]
        self.selection["prior"] = {"bandwidth": [names[i] for i in best.tolist()],
                                   "gain": float((scores[best, dims] - scores[0]).sum())}

    def _codes(self, shape: tuple[int, ...]) -> Tensor:
        """Codes ``z [*shape, D]`` drawn from the prior (global RNG)."""
        if self.prior is None:
            return torch.randn(*shape, self.options["latent_dim"], device=self.device)
        return self.prior.sample(shape)

    def _split(self, data: Tensor) -> tuple[Tensor, Tensor]:
        """``(training rows, held-out rows)`` of transformed rows ``data [N, F]``: a seeded random
        ``validation`` share held out."""
        held = round(self.options["validation"] * len(data))
        if held and len(data) - held < 2:
            raise ValueError(f"{len(data)} rows are too few to hold out {held} (validation="
                             f"{self.options['validation']}); use validation=0")
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(self.options["seed"]))
        return data[order[held:]], data[order[:held]]

    @staticmethod
    def _selected(selector: EarlyStopping) -> dict:
        return {"best_step": selector.best_step, "best": selector.best, "stopped": selector.stopped,
                "checks": selector.checks}

    def _check_fitted(self) -> None:
        if self.stage1 is None:
            raise ValueError("the synthesizer is not fitted: call fit(df) first")

    @torch.no_grad()
    def sample(self, n: int, seed: int | None = None, fixed: dict[int, float] | None = None,
               stage: str = "full"):
        """``n`` synthetic rows as a DataFrame. ``fixed`` holds chosen factors of ``z`` at values
        (``{k: value}``), the rest drawn from the prior; ``stage="stage1"`` samples stage 1 alone.
        Each call draws fresh rows (torch's global RNG); a ``seed`` makes the draw reproducible
        (and leaves the global RNG as it was)."""
        self._check_fitted()
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if stage not in ("full", "stage1"):
            raise ValueError(f"stage must be 'full' or 'stage1', got {stage!r}")
        D = self.options["latent_dim"]
        bad = [k for k in (fixed or {}) if not 0 <= k < D]
        if bad:
            raise ValueError(f"fixed factors must be in [0, {D}), got {bad}")
        if seed is None:
            return self._sample(n, fixed, stage)
        with torch.random.fork_rng(devices=[self.device] if torch.device(self.device).type == "cuda" else []):
            torch.manual_seed(seed)
            return self._sample(n, fixed, stage)

    def _sample(self, n: int, fixed: dict[int, float] | None, stage: str):
        z = self._codes((n,))
        for k, value in (fixed or {}).items():
            z[:, k] = value
        return self.transformer.inverse_transform(self._rows(z, stage))

    @torch.no_grad()
    def _rows(self, z: Tensor, stage: str = "full") -> np.ndarray:
        """Transformed rows ``[N, F]`` drawn given the codes ``z [N, D]`` (global RNG)."""
        self.stage1.eval()
        x1 = self.stage1.decoder(z)
        if stage == "stage1" or self.stage2 is None:
            return self.likelihood.sample(x1).cpu().numpy()
        self.stage2.eval()
        return self.stage2.generate(x1, x1, self.stage2.sample_w(len(z))).cpu().numpy()

    def traversal_report(self, values: Iterable[float] = tuple(np.linspace(-2.5, 2.5, 11)),
                         n: int = 2000, seed: int = 0):
        """What each factor does: for every factor ``z_k`` held at each of ``values`` (the others
        drawn from the prior), ``n`` rows are sampled and every column summarised.

        Returns ``(ranking, profiles)``. ``ranking``: a DataFrame with one row per (factor, column),
        sorted by factor and then by ``effect`` (largest first): for numeric columns the spread of
        the column's mean over the values in units of its standard deviation, for discrete ones the
        total variation distance between the category frequencies at the two ends; ``change``
        says how (e.g. ``"38.2 -> 51.0"`` or ``"'>50K' 0.08 -> 0.41"``). ``profiles``:
        ``{factor: {column: [statistic per value]}}`` (the mean, or the share of the category that
        moves most), for plots.
        """
        import pandas as pd

        self._check_fitted()
        values = [float(v) for v in values]
        if len(values) < 2:
            raise ValueError("values must hold at least two values")
        rows, profiles = [], {}
        discrete = {c.name for c in self.transformer.columns if c.kind == "categorical"}
        D = self.options["latent_dim"]
        for k in range(D):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + k)
                z = self._codes((len(values), n))
                z[:, :, k] = torch.tensor(values, device=self.device)[:, None]
                table = self.transformer.inverse_transform(self._rows(z.view(-1, D)))
            samples = [table.iloc[i * n:(i + 1) * n] for i in range(len(values))]
            profiles[k] = {}
            for column in samples[0].columns:
                if column in discrete:
                    freqs = [s[column].astype(object).where(s[column].notna(), "<missing>")
                             .value_counts(normalize=True) for s in samples]
                    table = pd.concat(freqs, axis=1).fillna(0.0)
                    moved = (table.iloc[:, -1] - table.iloc[:, 0]).abs().idxmax()
                    effect = 0.5 * (table.iloc[:, -1] - table.iloc[:, 0]).abs().sum()
                    change = f"{moved!r} {table.loc[moved].iloc[0]:.2f} -> {table.loc[moved].iloc[-1]:.2f}"
                    profiles[k][column] = table.loc[moved].tolist()
                else:
                    means = [float(s[column].mean()) for s in samples]
                    spread = float(pd.concat([s[column] for s in samples]).std()) or 1.0
                    effect = (max(means) - min(means)) / spread
                    change = f"{means[0]:.4g} -> {means[-1]:.4g}"
                    profiles[k][column] = means
                rows.append({"factor": k, "column": column, "effect": float(effect), "change": change})
        ranking = pd.DataFrame(rows).sort_values(["factor", "effect"], ascending=[True, False])
        return ranking.reset_index(drop=True), profiles

    @torch.no_grad()
    def encode(self, df) -> Tensor:
        """Posterior means of ``z`` ``[N, latent_dim]`` of the rows of ``df``."""
        self._check_fitted()
        data = torch.as_tensor(self.transformer.transform(df), device=self.device)
        return self.stage1.encode(data)

    @torch.no_grad()
    def nll_bound(self, df, seed: int = 0, batch_size: int = 4096) -> dict[str, float]:
        """Held-out negative log-likelihood bounds in nats per row of the transformed rows of
        ``df``: ``{"stage1", "full"}`` = ``-E[log p(x | x1(z))] + KL(q(z | x) || p(z))`` with stage
        1's ``MixedLikelihood`` or stage 2's bound in place of ``log p``, at the same seeded draw
        ``z ~ q(z | x)`` (and transform: a mode-normalised value's mode is drawn from its
        posterior); the KL is exact under ``N(0, I)`` and its one-draw estimate
        ``log q(z | x) - log p(z)`` under the fitted prior; ``"full"`` is None without a stage 2
        or when it has no tractable likelihood.
        Lower is better; the one to select models by."""
        self._check_fitted()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            data = torch.as_tensor(self.transformer.transform(df), device=self.device)
        return self._bounds(data, seed, batch_size)

    @torch.no_grad()
    def _bounds(self, data: Tensor, seed: int, batch_size: int = 4096, full: bool = True) -> dict[str, float]:
        """``nll_bound`` of transformed rows ``data [N, F]`` (``full=False``: stage 1's alone);
        leaves the networks in eval mode."""
        self.stage1.eval()
        full = full and self.stage2 is not None and self.stage2.bound is not None
        if full:
            self.stage2.eval()
        totals = {"stage1": 0.0, "full": 0.0}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for x in data.split(batch_size):
                mu, logvar = self.stage1.encoder(x)
                z = reparameterize(mu, logvar)
                kl = (gaussian_kl(mu, logvar).sum(1) if self.prior is None
                      else prior_kl(z, mu, logvar, self.prior))
                x1 = self.stage1.decoder(z)
                totals["stage1"] += float((self.likelihood(x, x1) + kl).sum())
                if full:
                    bound = self.stage2.log_likelihood_bound(x, x1, x1)["log_likelihood"]
                    totals["full"] += float((kl - bound).sum())
        return {"stage1": totals["stage1"] / len(data), "full": totals["full"] / len(data) if full else None}

    def save(self, path: str | os.PathLike) -> None:
        """Options, transformer and weights in one file (loaded without unpickling code)."""
        self._check_fitted()
        save_checkpoint(path, {
            "options": self.options, "transformer": self.transformer.state_dict(),
            "stage1": self.stage1.state_dict(), "likelihood": self.likelihood.state_dict(),
            "stage2": None if self.stage2 is None else self.stage2.state_dict(),
            "prior": None if self.prior is None else {"mu": self.prior.loc, "logvar": self.prior.logvar},
            "history": {"stage1": self.stage1.history,
                        "stage2": [] if self.stage2 is None else self.stage2.history},
            "selection": self.selection, "settings": self.settings})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu") -> "TabularSynthesizer":
        def build(state: dict) -> "TabularSynthesizer":
            synthesizer = cls(**state["options"], device=device, progress=False)
            synthesizer.settings = state.get("settings") or {"hidden": state["options"]["hidden"],
                                                              "lr": state["options"]["lr"]}
            synthesizer._build(TabularTransformer.from_state(state["transformer"]))
            synthesizer.stage1.load_state_dict(state["stage1"])
            synthesizer.likelihood.load_state_dict(state["likelihood"])
            synthesizer.stage1.history = state["history"]["stage1"]
            synthesizer.selection = state.get("selection", {})
            if state.get("prior") is not None:
                synthesizer.prior = FactorizedAggregatePosterior(state["prior"]["mu"].to(device),
                                                                 state["prior"]["logvar"].to(device))
            if synthesizer.stage2 is not None:
                synthesizer.stage2.load_state_dict(state["stage2"])
                synthesizer.stage2.history = state["history"]["stage2"]
            synthesizer.stage1.eval()
            return synthesizer

        return build_from_file(path, build)
