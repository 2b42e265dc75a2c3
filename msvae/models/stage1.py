"""Stage 1: a VAE trained with a disentangling objective (beta-TCVAE by default)."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from msvae.distributed import data_parallel, process_seed, rank_and_size
from msvae.losses import RECONSTRUCTIONS as LIKELIHOODS, BetaTCVAELoss, reconstruction_nll
from msvae.models.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder, reparameterize
from msvae.models.training import (RandomBatches, adam, autocast, build_from_file, linear_warmup,
                                   resolve_precision, save_checkpoint, train_resumably, EarlyStopping)


class DisentangledVAE(nn.Module):
    """A VAE with a diagonal Gaussian posterior and a standard normal prior on ``z``.

    Build with ``DisentangledVAE.for_images(latent_dim)`` (64x64 conv nets) or
    ``DisentangledVAE.for_vectors(features, latent_dim)`` (MLPs); train with ``fit`` using any loss
    of ``msvae.losses`` (default: beta-TCVAE); ``encode`` / ``decode`` / ``reconstruct``;
    ``save`` / ``load`` to one file (weights + config, loaded without unpickling code).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, likelihood: str = "bernoulli",
                 config: dict | None = None):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.encoder, self.decoder, self.likelihood = encoder, decoder, likelihood
        self.config = dict(config or {}, likelihood=likelihood)
        self.history: list[dict] = []

    @classmethod
    def for_images(cls, latent_dim: int = 10, channels: int = 1, width: int = 32, hidden: int = 256,
                   likelihood: str = "bernoulli", initial_logvar: float | None = None) -> "DisentangledVAE":
        """The image VAE; ``initial_logvar``: ``ConvEncoder``'s (an initialisation only, so not in
        the config a saved model is rebuilt from)."""
        config = dict(kind="image", latent_dim=latent_dim, channels=channels, width=width, hidden=hidden)
        return cls(ConvEncoder(latent_dim, channels, width, hidden, initial_logvar),
                   ConvDecoder(latent_dim, channels, width, hidden), likelihood, config)

    @classmethod
    def for_vectors(cls, features: int, latent_dim: int, hidden: tuple[int, ...] = (256, 256),
                    likelihood: str = "gaussian") -> "DisentangledVAE":
        config = dict(kind="vector", features=features, latent_dim=latent_dim, hidden=list(hidden))
        return cls(MLPEncoder(features, latent_dim, tuple(hidden)),
                   MLPDecoder(latent_dim, features, tuple(hidden)), likelihood, config)

    @property
    def latent_dim(self) -> int:
        return self.config["latent_dim"]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """x -> dict(mu, logvar, z [B, D], output: decoder logits/means like x)."""
        mu, logvar = self.encoder(x)
        z = reparameterize(mu, logvar)
        return {"mu": mu, "logvar": logvar, "z": z, "output": self.decoder(z)}

    def mean_output(self, output: Tensor) -> Tensor:
        """Decoder output -> the mean of p(x | z) (sigmoid of logits for Bernoulli)."""
        return torch.sigmoid(output) if self.likelihood == "bernoulli" else output

    @torch.no_grad()
    def encode(self, x: Tensor, sample: bool = False) -> Tensor:
        """x -> posterior means ``[B, D]`` (or a sample when ``sample``)."""
        mu, logvar = self.encoder(x.to(self.device))
        return reparameterize(mu, logvar) if sample else mu

    @torch.no_grad()
    def encode_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (mu, logvar) ``[B, D]`` each."""
        return self.encoder(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """z ``[B, D]`` -> mean of p(x | z) in the data's shape."""
        return self.mean_output(self.decoder(z.to(self.device)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean of p(x | z = posterior mean)."""
        return self.decode(self.encode(x))

    def fit(self, data: Tensor | Dataset, *, loss: nn.Module | None = None, steps: int = 10_000,
            batch_size: int = 64, lr: float = 5e-4, penalty_warmup: int = 0,
            checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int = 1000,
            checkpoint_seconds: float = 60.0,
            resume: bool = True, log_every: int = 50, progress: bool = True,
            seed: int = 0, time_limit: float | None = None, precision: str = "fp32",
            replacement: bool = True, process_group=None,
            monitor: EarlyStopping | None = None) -> list[dict]:
        """Trains for ``steps`` Adam steps on random batches of ``data`` (tensor [N, ...] or dataset;
        ``training.RandomBatches``, drawn with ``replacement`` or, for small tables, without).

        ``loss`` defaults to ``BetaTCVAELoss(dataset_size=len(data))``; it is moved to the model's
        device and its own parameters (a learned prior, say) are trained with the model's. A loss
        with a ``discriminator_step`` (``FactorVAELoss``) gets one discriminator step per batch with
        its own Adam (lr 1e-4, betas (0.5, 0.9), as Kim & Mnih). ``penalty_warmup`` ramps the part
        of the loss beyond its reconstruction term linearly from 0 over that many steps. With
        ``checkpoint_dir``, ``stage1.pt`` there holds model, loss, optimisers, step, RNG states and
        history, written every ``checkpoint_every`` steps and ``checkpoint_seconds`` seconds; with ``resume`` training continues from
        it (exactly, on CPU and CUDA), and resuming with other settings is a ``ValueError``.
        ``time_limit`` (seconds, earlier runs of the checkpoint included) stops training early.
        Seeds torch's global RNG with ``seed``. ``precision`` (``training.PRECISIONS``): ``"bf16"``
        runs the networks' forward passes under bfloat16 autocast (losses and weights stay float32;
        ``"auto"``: where the device has native bfloat16). Image batches and convolution weights
        are kept channels-last.
        ``process_group`` (data parallelism, e.g. under torchrun; ``msvae.distributed``): every
        rank calls ``fit`` alike; ``batch_size`` is the global batch, each rank trains on its
        share (``RandomBatches``' shard), gradients are averaged over the ranks
        (``distributed.data_parallel``), the ranks start from, and stay at, the same weights, and the first
        rank writes the checkpoints. The default loss then estimates its terms on the global
        batch; a given ``loss`` should have been built with the same ``process_group`` for that.
        ``monitor`` (``training.EarlyStopping``, one process): model selection by a held-out score,
        checked during training; training may stop early and ends at the best weights.
        Returns the history: every ``log_every`` steps, the mean of the loss terms.
        """
        rank, ranks = rank_and_size(process_group)
        loss_fn = loss if loss is not None else BetaTCVAELoss(dataset_size=len(data), recon=self.likelihood,
                                                              process_group=process_group)
        loss_fn.to(self.device)
        recon_kind = getattr(loss_fn, "recon", self.likelihood)
        discriminator_step = getattr(loss_fn, "discriminator_step", None)
        discriminator = getattr(loss_fn, "discriminator", None)
        shared = {id(p) for p in discriminator.parameters()} if discriminator is not None else set()
        optimizer = adam([*self.parameters(), *(p for p in loss_fn.parameters() if id(p) not in shared)],
                         lr=lr)
        disc_optimizer = (torch.optim.Adam(discriminator.parameters(), lr=1e-4, betas=(0.5, 0.9))
                          if discriminator_step is not None else None)
        precision = resolve_precision(precision, self.device)
        self.to(memory_format=torch.channels_last)
        settings = {"lr": lr, "batch_size": batch_size, "penalty_warmup": penalty_warmup,
                    "seed": seed, "loss": repr(loss_fn), "precision": precision, "replacement": replacement}
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(process_seed(seed, process_group))
        batches = RandomBatches(data, batch_size, generator, self.device, replacement, (rank, ranks))
        self.train()
        with data_parallel([self, loss_fn], process_group) as synchronize:
            def step_fn(step: int) -> dict[str, float]:
                x = next(batches)
                with autocast(self.device, precision):
                    out = self(x)
                total, terms = loss_fn(x, out["output"], out["z"], out["mu"], out["logvar"])
                if step < penalty_warmup:
                    recon = reconstruction_nll(x, out["output"], recon_kind).mean()
                    total = recon + linear_warmup(step, penalty_warmup) * (total - recon)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                logged = dict(zip(terms, torch.stack([v.float() for v in terms.values()]).tolist()))
                if discriminator_step is not None:
                    logged["discriminator"] = discriminator_step(out["z"].detach(), disc_optimizer)
                if step == 0:  # state initialised from the first batch saw each rank's own rows
                    synchronize()
                return logged

            train_resumably(step_fn, path=None if checkpoint_dir is None else Path(checkpoint_dir) / "stage1.pt",
                            resume=resume, states={"model": self, "loss": loss_fn, "optimizer": optimizer,
                                                   "disc_optimizer": disc_optimizer, "batches": batches},
                            settings=settings, generator=generator, history=self.history, steps=steps,
                            time_limit=time_limit, extra={"config": self.config}, log_every=log_every,
                            checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                            progress=progress, desc="stage 1", process_group=process_group,
                            monitor=monitor)
        self.eval()
        return self.history

    def save(self, path: str | os.PathLike) -> None:
        """Weights and config in one file."""
        save_checkpoint(path, {"config": self.config, "model": self.state_dict(), "history": self.history})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DisentangledVAE":
        """The model saved by ``save`` (on the CPU; no pickled code runs)."""
        def build(state: dict) -> "DisentangledVAE":
            config = dict(state["config"])
            kind, likelihood = config.pop("kind"), config.pop("likelihood")
            if kind not in ("image", "vector"):
                raise ValueError(f"unknown model kind {kind!r}")
            model = (cls.for_images if kind == "image" else cls.for_vectors)(likelihood=likelihood, **config)
            model.load_state_dict(state["model"])
            model.history = state.get("history", [])
            return model.eval()

        return build_from_file(path, build)
