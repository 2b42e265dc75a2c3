"""Discrete information measures (in nats) and the histogram discretisation used by MIG."""
from __future__ import annotations

import numpy as np


def histogram_discretize(codes: np.ndarray, num_bins: int = 20) -> np.ndarray:
    """Each column of ``codes [N, D]`` mapped to ``1..num_bins`` by equal-width bins over its range.

    As disentanglement_lib's ``_histogram_discretize``: the edges are ``np.histogram``'s
    ``num_bins + 1`` edges over ``[min, max]`` of the column and a value's bin is the number of
    left edges ``<=`` it (``np.digitize`` against all edges but the last), so the maximum falls in
    bin ``num_bins``. Returns int64 ``[N, D]``.
    """
    binned = np.empty(codes.shape, dtype=np.int64)
    for d in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, d], bins=num_bins)
        binned[:, d] = np.digitize(codes[:, d], edges[:-1])
    return binned


def _dense_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    values, dense = np.unique(labels, return_inverse=True)
    return dense.reshape(-1), len(values)


def discrete_entropy(labels: np.ndarray) -> float:
    """Entropy ``-sum_v p(v) log p(v)`` of the empirical distribution of ``labels [N]``, in nats."""
    _, counts = np.unique(labels, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def discrete_mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information ``sum p(a, b) log(p(a, b) / (p(a) p(b)))`` of two label vectors ``[N]``, nats."""
    a, num_a = _dense_labels(a)
    b, num_b = _dense_labels(b)
    joint = np.bincount(a * num_b + b, minlength=num_a * num_b).reshape(num_a, num_b) / len(a)
    outer = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    nonzero = joint > 0
    return float(max(0.0, (joint[nonzero] * np.log(joint[nonzero] / outer[nonzero])).sum()))


def mutual_info_matrix(codes: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """``[D, K]`` discrete mutual information between every code column and every factor column."""
    return np.array([[discrete_mutual_info(codes[:, d], factors[:, k])
                      for k in range(factors.shape[1])] for d in range(codes.shape[1])])
