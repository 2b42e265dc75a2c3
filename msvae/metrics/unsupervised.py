"""Scores of the representations alone: Gaussian total correlation and Hoyer sparsity."""
from __future__ import annotations

import numpy as np

from msvae.metrics._inputs import as_codes


def gaussian_total_correlation(codes) -> float:
    """Total correlation of a Gaussian with the covariance of ``codes [N, D]``, in nats.

    ``TC = 0.5 * (sum_d log Sigma_dd - log det Sigma)`` with ``Sigma`` the sample covariance
    (``ddof=1``), as disentanglement_lib's ``gaussian_total_correlation``; it equals
    ``-0.5 log det(corr)``. Raises when a dimension is constant or ``Sigma`` is singular (the
    TC would be undefined or infinite).
    """
    codes = as_codes(codes)
    covariance = np.atleast_2d(np.cov(codes, rowvar=False))
    variance = np.diag(covariance)
    if (variance <= 0).any():
        raise ValueError(f"codes dimensions {np.flatnonzero(variance <= 0).tolist()} are constant")
    sign, log_det = np.linalg.slogdet(covariance)
    if sign <= 0 or not np.isfinite(log_det):
        raise ValueError("the covariance of codes is singular (linearly dependent dimensions or "
                         "fewer rows than dimensions)")
    return float(0.5 * (np.log(variance).sum() - log_det))


def hoyer_sparsity(codes) -> float:
    """Mean Hoyer sparsity of the rows of ``codes [N, D]`` after scaling each dimension, in [0, 1].

    As Mathieu et al. (2019): each dimension is divided by its standard deviation over the rows
    (``ddof=1``, no centring), so a dimension cannot look sparse just by shrinking; then for each
    row ``x = |codes_n / std|``, ``hoyer(x) = (sqrt(D) - ||x||_1 / ||x||_2) / (sqrt(D) - 1)``:
    1 for a one-hot row, 0 for a row with all entries equal in magnitude. Rows that are all zero
    have no defined sparsity and are left out of the mean.

    Args:
        codes: representations ``[N, D]``, ``D >= 2``, no constant dimension.
    """
    codes = as_codes(codes, min_dims=2)
    std = codes.std(axis=0, ddof=1)
    if (std == 0).any():
        raise ValueError(f"codes dimensions {np.flatnonzero(std == 0).tolist()} are constant, so "
                         f"cannot be scaled by their standard deviation")
    scaled = np.abs(codes / std)
    l2 = np.sqrt((scaled ** 2).sum(axis=1))
    nonzero = l2 > 0
    if not nonzero.any():
        raise ValueError("codes has only all-zero rows; their sparsity is undefined")
    ratio = scaled[nonzero].sum(axis=1) / l2[nonzero]
    root_d = np.sqrt(codes.shape[1])
    return float(((root_d - ratio) / (root_d - 1)).mean())
