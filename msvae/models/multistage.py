"""The multi-stage model: a disentangled stage 1 (``z``) and a second stage (``w``) given its output.

``p(x) = integral p(x | x1(z), w) p(w) p(z) dz dw`` with ``x1 = dec1(z)``: traversing one ``z_k``
with ``w`` held fixed changes one factor of a sharp image.
"""
from __future__ import annotations

import os
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from msvae.models.stage1 import DisentangledVAE
from msvae.models.stage2 import STAGE2_KINDS, SecondStage, build_stage2
from msvae.models.training import build_from_file, save_checkpoint

RECONSTRUCTION_STAGES = ("full", "stage1")


def sweep(z: Tensor, k: int, values: Tensor) -> Tensor:
    """Copies of the code ``z [D]`` with ``z_k`` set to each of ``values`` -> ``[len(values), D]``."""
    codes = z.repeat(len(values), 1)
    codes[:, k] = values.to(codes)
    return codes


class MultiStageModel(nn.Module):
    """Stage 1 (a ``DisentangledVAE``) and a stage 2 (a ``SecondStage``).

    Build with ``MultiStageModel.for_images(latent_dim, stage2="vae" | "flow" | "gan" | "mog", ...)``; ``fit``
    trains stage 1, then stage 2 with stage 1 frozen. Images are ``[B, C, 64, 64]``.
    """

    def __init__(self, stage1: DisentangledVAE, stage2: SecondStage):
        super().__init__()
        self.stage1, self.stage2 = stage1, stage2

    @classmethod
    def for_images(cls, latent_dim: int = 10, channels: int = 1, stage2: str = "vae",
                   likelihood: str = "bernoulli", stage1_options: dict | None = None,
                   **stage2_options) -> "MultiStageModel":
        """Conv stage 1 (``DisentangledVAE.for_images`` with ``stage1_options``: ``width``,
        ``hidden``) and a stage 2 of kind ``stage2`` with ``stage2_options`` (``w_dim``,
        ``free_bits``, ``kl_warmup``, ``width``, ``hidden`` for ``"vae"``; ``components``, ``width``,
        ``hidden`` for ``"mog"``; ``levels``, ``steps``, ``quantization``, ... for ``"flow"``). A
        stage 2 with ``uses_stage1_likelihood`` gets stage 1's likelihood (and, with
        ``uses_stage1_sizes``, its network sizes)."""
        stage1_options = dict(stage1_options or {})
        first = DisentangledVAE.for_images(latent_dim, channels, likelihood=likelihood, **stage1_options)
        kind = STAGE2_KINDS.get(stage2)
        if getattr(kind, "uses_stage1_likelihood", False):
            sizes = stage1_options if kind.uses_stage1_sizes else {}
            stage2_options = {**sizes, "likelihood": likelihood, **stage2_options}
        return cls(first, build_stage2(dict(kind=stage2, channels=channels, **stage2_options)))

    @property
    def config(self) -> dict:
        return {"stage1": self.stage1.config, "stage2": self.stage2.config}

    @property
    def device(self) -> torch.device:
        return self.stage1.device

    @property
    def history(self) -> dict[str, list[dict]]:
        return {"stage1": self.stage1.history, "stage2": self.stage2.history}

    def fit(self, data: Tensor | Dataset, *, stage1_steps: int = 10_000, stage2_steps: int = 10_000,
            stage1_loss: nn.Module | None = None, stage1_lr: float = 5e-4, stage2_lr: float = 5e-4,
            batch_size: int = 64, penalty_warmup: int = 0, stage1_time_limit: float | None = None,
            stage2_time_limit: float | None = None, checkpoint_dir: str | os.PathLike | None = None,
            checkpoint_every: int = 1000,
            checkpoint_seconds: float = 60.0, resume: bool = True, log_every: int = 50,
            progress: bool = True, seed: int = 0, precision: str = "fp32",
            process_group=None) -> dict[str, list[dict]]:
        """Stage 1 (``DisentangledVAE.fit`` with ``stage1_loss``, ``penalty_warmup``), then stage 2
        (``SecondStage.fit``). With ``checkpoint_dir`` each stage checkpoints there
        (``stage1.pt``, ``stage2.pt``) and an interrupted fit resumes where it stopped; the time
        limits (seconds) bound each stage across resumptions; ``precision`` (``"bf16"``, ``"fp32"``,
        ``"auto"``) and ``process_group`` (data parallelism) as in ``DisentangledVAE.fit``.
        Returns ``self.history``."""
        common = dict(batch_size=batch_size, checkpoint_dir=checkpoint_dir, resume=resume,
                      checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                      log_every=log_every, progress=progress, seed=seed, precision=precision,
                      process_group=process_group)
        self.stage1.fit(data, loss=stage1_loss, steps=stage1_steps, lr=stage1_lr,
                        penalty_warmup=penalty_warmup, time_limit=stage1_time_limit, **common)
        self.stage2.fit(self.stage1, data, steps=stage2_steps, lr=stage2_lr,
                        time_limit=stage2_time_limit, **common)
        return self.history

    @torch.no_grad()
    def stage1_output(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``z [B, D]`` -> stage-1 decoder output ``x1`` and its mean image."""
        x1 = self.stage1.decoder(z.to(self.device))
        return x1, self.stage1.mean_output(x1)

    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``[B, C, 64, 64]`` -> posterior means ``z [B, D]`` and codes ``w [B, w_dim]``."""
        x = x.to(self.device)
        z = self.stage1.encode(x)
        return z, self.stage2.encode(x, *self.stage1_output(z))

    @torch.no_grad()
    def decode(self, z: Tensor, w: Tensor) -> Tensor:
        """``z [B, D]``, ``w [B, w_dim]`` -> images ``[B, C, 64, 64]``."""
        return self.stage2.generate(*self.stage1_output(z), w.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, stage: str = "full") -> Tensor:
        """Reconstruction of ``x`` by the full model (``stage="full"``) or stage 1 alone."""
        if stage not in RECONSTRUCTION_STAGES:
            raise ValueError(f"stage must be one of {RECONSTRUCTION_STAGES}, got {stage!r}")
        if stage == "stage1":
            return self.stage1.reconstruct(x)
        return self.decode(*self.encode(x))

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, z: Tensor | None = None) -> Tensor:
        """``n`` images ``[n, C, 64, 64]``: ``z ~ N(0, I)`` (or the given ``z [n, D]``), ``w`` from
        the prior scaled by ``temperature``."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if z is None:
            z = torch.randn(n, self.stage1.latent_dim, device=self.device)
        elif z.shape != (n, self.stage1.latent_dim):
            raise ValueError(f"z must have shape [{n}, {self.stage1.latent_dim}], got {tuple(z.shape)}")
        return self.decode(z, self.stage2.sample_w(n, temperature))

    @torch.no_grad()
    def traverse(self, k: int, values: Sequence[float] | Tensor, x: Tensor | None = None,
                 z: Tensor | None = None, w: Tensor | None = None) -> Tensor:
        """Images ``[len(values), C, 64, 64]`` with latent ``z_k`` set to each value and ``w`` fixed.

        The base codes are those of the image ``x [C, 64, 64]`` when given, else ``z [D]`` (default
        zeros) and ``w [w_dim]`` (default zeros, the prior's mode).
        """
        D = self.stage1.latent_dim
        if not 0 <= k < D:
            raise ValueError(f"k must be in [0, {D}), got {k}")
        values = torch.as_tensor(values, dtype=torch.float32, device=self.device).flatten()
        if x is not None:
            z, w = (c[0] for c in self.encode(x.unsqueeze(0)))
        z = torch.zeros(D, device=self.device) if z is None else z.to(self.device)
        w = torch.zeros(self.stage2.w_dim, device=self.device) if w is None else w.to(self.device)
        if z.shape != (D,) or w.shape != (self.stage2.w_dim,):
            raise ValueError(f"z and w must have shapes [{D}] and [{self.stage2.w_dim}], got "
                             f"{tuple(z.shape)} and {tuple(w.shape)}")
        return self.decode(sweep(z, k, values), w.expand(len(values), -1))

    def save(self, path: str | os.PathLike) -> None:
        """Both stages' weights, configs and histories in one file."""
        save_checkpoint(path, {"config": self.config, "stage1": self.stage1.state_dict(),
                               "stage2": self.stage2.state_dict(), "history": self.history})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MultiStageModel":
        """The model saved by ``save`` (on the CPU; tensors and plain containers only, no pickled code)."""
        def build(state: dict) -> "MultiStageModel":
            stage1_config = dict(state["config"]["stage1"])
            if stage1_config.pop("kind", None) != "image":
                raise ValueError("the multi-stage model needs an image stage 1")
            stage1 = DisentangledVAE.for_images(**stage1_config)
            stage1.load_state_dict(state["stage1"])
            stage2 = build_stage2(state["config"]["stage2"])
            stage2.load_state_dict(state["stage2"])
            stage1.history, stage2.history = state["history"]["stage1"], state["history"]["stage2"]
            return cls(stage1, stage2).eval()

        return build_from_file(path, build)
