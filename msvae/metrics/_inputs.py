"""Input checks shared by the metrics: numpy or torch in, validated float64 / int64 numpy out."""
from __future__ import annotations

import numpy as np
import torch


def to_numpy(array, name: str) -> np.ndarray:
    """``array`` (numpy array, torch tensor or nested sequence) as a numpy array."""
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    try:
        return np.asarray(array)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array or tensor: {error}") from None


def as_codes(codes, name: str = "codes", *, min_dims: int = 1) -> np.ndarray:
    """Representations ``[N, D]`` as finite float64 with ``N >= 2`` and ``D >= min_dims``."""
    array = to_numpy(codes, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ValueError(f"{name} must be numeric, got dtype {array.dtype}")
    if array.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (samples), got shape {array.shape}")
    if array.shape[1] < min_dims:
        raise ValueError(f"{name} needs at least {min_dims} columns (dimensions), got shape "
                         f"{array.shape}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or Inf values")
    return array


def as_factors(factors, name: str = "factors", *, num_rows: int | None = None,
               rows_of: str = "codes", allow_constant: bool = False) -> np.ndarray:
    """Discrete ground-truth factors ``[N, K]`` as int64.

    Integer and boolean arrays are taken as they are; float arrays must hold whole numbers.
    Unless ``allow_constant``, every factor must take at least two values (a constant factor has
    zero entropy, so the normalised scores are undefined for it: drop it before calling).
    """
    array = to_numpy(factors, name)
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, K], got shape {array.shape}")
    if array.shape[1] < 1:
        raise ValueError(f"{name} needs at least one column (factor), got shape {array.shape}")
    if num_rows is not None and array.shape[0] != num_rows:
        raise ValueError(f"{name} has {array.shape[0]} rows but {rows_of} has {num_rows}")
    if array.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 rows (samples), got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError(f"{name} contains NaN or Inf values")
        if not np.array_equal(array, np.round(array)):
            raise ValueError(f"{name} must be integer-valued (discrete factors), got non-integer "
                             f"values of dtype {array.dtype}")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise ValueError(f"{name} must be integer-valued (discrete factors), got dtype {array.dtype}")
    array = array.astype(np.int64)
    if not allow_constant:
        constant = [k for k in range(array.shape[1]) if (array[:, k] == array[0, k]).all()]
        if constant:
            raise ValueError(f"{name} columns {constant} take a single value; drop constant factors")
    return array


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def train_test(codes_train, factors_train, codes_test, factors_test, *, min_dims: int = 1):
    """Validated ``(codes_train, factors_train, codes_test, factors_test)`` with matching widths."""
    codes_train = as_codes(codes_train, "codes_train", min_dims=min_dims)
    factors_train = as_factors(factors_train, "factors_train", num_rows=codes_train.shape[0],
                               rows_of="codes_train")
    codes_test = as_codes(codes_test, "codes_test", min_dims=min_dims)
    factors_test = as_factors(factors_test, "factors_test", num_rows=codes_test.shape[0],
                              rows_of="codes_test", allow_constant=True)
    if codes_test.shape[1] != codes_train.shape[1]:
        raise ValueError(f"codes_test has {codes_test.shape[1]} dimensions but codes_train has "
                         f"{codes_train.shape[1]}")
    if factors_test.shape[1] != factors_train.shape[1]:
        raise ValueError(f"factors_test has {factors_test.shape[1]} factors but factors_train has "
                         f"{factors_train.shape[1]}")
    return codes_train, factors_train, codes_test, factors_test
