"""A small classifier of a dataset's ground-truth factor classes: the feature space of the sample
Fréchet distance and the judge of factor coverage and traversal fidelity (nothing is downloaded:
it is trained here, seeded, and cached).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msvae.models.training import (autocast, flush_denormals, image_layout, load_checkpoint, run_steps,
                                   save_checkpoint)

CACHE_VERSION = 2


class FactorClassifier(nn.Module):
    """64x64 images ``[B, C, 64, 64]`` -> one logit vector per factor (``class_sizes``).

    A conv trunk (4 stride-2 convolutions of ``widths`` channels, batch norm after all but the
    first, which at 32x32 would cost a third of a training step) and a dense layer give
    ``features [B, F]``; one linear head per factor reads them.
    """

    def __init__(self, class_sizes: Sequence[int], channels: int = 1,
                 widths: Sequence[int] = (16, 32, 64, 64), features: int = 128):
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"widths must give the 4 convolutions' channels, got {widths}")
        self.config = dict(class_sizes=list(class_sizes), channels=channels, widths=list(widths),
                           features=features)
        layers, c = [], channels
        for i, out in enumerate(widths):
            layers += [nn.Conv2d(c, out, 4, 2, 1), *([nn.BatchNorm2d(out)] if i else []), nn.ReLU()]
            c = out
        self.trunk = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * 16, features), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(features, size) for size in class_sizes)

    def features(self, x: Tensor) -> Tensor:
        return self.trunk(x)

    def forward(self, x: Tensor) -> list[Tensor]:
        h = self.features(x)
        return [head(h) for head in self.heads]

    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 500) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[N, F]`` (float64) and predicted classes ``[N, K]`` (int64) of ``images``."""
        self.eval()
        device = next(self.parameters()).device
        feats, classes = [], []
        for start in range(0, len(images), batch_size):
            h = self.features(image_layout(images[start:start + batch_size].to(device).float()))
            feats.append(h.double().cpu())
            classes.append(torch.stack([head(h).argmax(1) for head in self.heads], 1).cpu())
        return torch.cat(feats).numpy(), torch.cat(classes).numpy()


def train_factor_classifier(render: Callable[[np.ndarray], Tensor], classes_of: Callable[[np.ndarray], np.ndarray],
                            class_sizes: Sequence[int], train_indices: np.ndarray,
                            test_indices: np.ndarray, *, steps: int = 2000, batch_size: int = 128,
                            lr: float = 2e-3, seed: int = 0, precision: str = "fp32",
                            progress: bool = True, channels: int = 1) -> tuple[FactorClassifier, list[float]]:
    """Trains a ``FactorClassifier`` on random batches of the images ``render(indices)`` with labels
    ``classes_of(indices) [n, K]`` (``channels`` per image; channels-last; ``precision`` as in ``training.autocast``; the
    progress convention of ``training.run_steps``); returns it (in eval mode, float32) and its
    accuracy per factor on ``test_indices``."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FactorClassifier(class_sizes, channels).to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=max(steps, 1))
        model.train()

        def step(_: int) -> dict[str, float]:
            pick = train_indices[torch.randint(len(train_indices), (batch_size,), generator=generator).numpy()]
            labels = torch.as_tensor(classes_of(pick))
            with autocast("cpu", precision):
                logits = model(image_layout(render(pick)))
            loss = sum(F.cross_entropy(l.float(), labels[:, k]) for k, l in enumerate(logits))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            return {"loss": loss.item()}

        with flush_denormals():
            run_steps(step, start=0, steps=steps, history=[], progress=progress, desc="factor classifier")
    model.eval()
    _, predicted = model.embed(render(test_indices))
    accuracy = (predicted == classes_of(test_indices)).mean(0).tolist()
    return model, accuracy


def cache_dir() -> Path:
    """Where trained classifiers are cached: ``$MSVAE_CACHE`` or ``~/.cache/msvae``."""
    return Path(os.environ.get("MSVAE_CACHE") or Path.home() / ".cache" / "msvae")


def cached_factor_classifier_path(name: str, settings: dict, cache: str | os.PathLike | None = None) -> Path:
    """Where ``cached_factor_classifier`` keeps the classifier of ``name`` and ``settings``."""
    key = hashlib.sha256(json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True)
                         .encode()).hexdigest()[:16]
    return Path(cache or cache_dir()) / f"{name}_factor_classifier_{key}.pt"


def cached_factor_classifier(name: str, settings: dict, train: Callable[[], tuple[FactorClassifier, list[float]]],
                             cache: str | os.PathLike | None = None) -> tuple[FactorClassifier, list[float]]:
    """The classifier trained by ``train()`` for ``name`` and ``settings`` (a JSON-able dict that
    determines it), loaded from the cache when it was trained before, else trained and stored."""
    path = cached_factor_classifier_path(name, settings, cache)
    try:
        state = load_checkpoint(path)
    except ValueError:  # a corrupt cache entry is trained again
        state = None
    if state is not None:
        model = FactorClassifier(**state["config"])
        model.load_state_dict(state["model"])
        return model.eval(), state["accuracy"]
    model, accuracy = train()
    try:
        save_checkpoint(path, {"config": model.config, "model": model.state_dict(),
                               "accuracy": accuracy, "settings": settings})
    except OSError:  # a read-only home still evaluates, it only trains again next time
        pass
    return model, accuracy
