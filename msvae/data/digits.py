"""scikit-learn's handwritten digits (bundled with scikit-learn, nothing downloaded): 1,797 grey
images of 8x8 pixels, 10 classes."""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

NUM_IMAGES = 1797
PIXEL_MAX = 16.0  # pixel intensities are integers 0..16


def load_digits() -> tuple[Tensor, np.ndarray]:
    """``(pixels [1797, 64] float32 in [0, 1], labels [1797] int64)``, rows as scikit-learn orders them."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    return torch.tensor(bunch.data / PIXEL_MAX, dtype=torch.float32), bunch.target.astype(np.int64)


def split(labels: np.ndarray, held_out_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, held_out)`` row indices, stratified by label (each class held out in
    proportion), reproducible for a ``seed``."""
    if not 0.0 < held_out_fraction < 1.0:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        held.append(rng.choice(rows, round(held_out_fraction * len(rows)), replace=False))
    held_out = np.sort(np.concatenate(held))
    return np.setdiff1d(np.arange(len(labels)), held_out), held_out
