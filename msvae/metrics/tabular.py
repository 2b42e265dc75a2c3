"""Fidelity, utility, detection and privacy of synthetic tables: plain functions of DataFrames.

Definitions follow SDMetrics' (cross-checked against it in the tests); scores are in [0, 1], higher
is better:

- column shapes: ``ks_complement`` (1 - two-sample Kolmogorov-Smirnov statistic) for numeric
  columns, ``tv_complement`` (1 - total variation distance of the category frequencies) for
  discrete ones; missing values are dropped.
- column-pair trends: ``correlation_similarity`` (1 - |r_real - r_syn| / 2, Pearson) for two numeric
  columns, ``contingency_similarity`` (1 - TV distance of the joint frequencies) otherwise, numeric
  columns cut into 10 equal-width bins of the real data's range (open at both ends), missing
  values a value of their own. Unlike SDMetrics' QualityReport, which by default averages only the
  pairs that are strongly related in the real data, ``column_pair_trends`` averages every pair.
- ``quality``: the mean of the two averages.
- ``ml_efficacy``: train on synthetic rows, test on real held-out rows (F1 of the positive class
  for binary targets, macro F1 for more classes, R^2 for numeric ones), beside the same model
  trained on the real training rows.
- ``detection``: ROC AUC of a logistic regression telling real from synthetic rows (5-fold), as
  score ``1 - (max(AUC, 0.5) * 2 - 1)``.
- ``dcr_baseline_protection``: median distance to the closest real record of synthetic rows over
  that of uniformly random rows, capped at 1 (distances: |a - b| / range capped at 1 for numbers,
  0/1 mismatch for categories, averaged over columns).
- ``dcr_overfitting_protection``: whether synthetic rows are nearer the training rows than fresh
  real rows are: the share closer to (an equal-sized subsample of) the training rows than to
  held-out ones, as score ``min(2 (1 - share), 1)``.
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterable

import numpy as np
import torch


def _numeric(series) -> bool:
    import pandas as pd

    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def _discrete_set(real, discrete_columns: Iterable[str] | None) -> set:
    """Columns treated as discrete: the given ones plus every non-numeric column."""
    columns = set(discrete_columns or ())
    return columns | {c for c in real.columns if not _numeric(real[c])}


def _check_frames(real, synthetic) -> None:
    import pandas as pd

    for name, df in (("real", real), ("synthetic", synthetic)):
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
        if len(df) == 0:
            raise ValueError(f"{name} has no rows")
    if list(real.columns) != list(synthetic.columns):
        missing = [c for c in real.columns if c not in synthetic.columns]
        if missing or len(real.columns) != len(synthetic.columns):
            raise ValueError(f"real and synthetic must have the same columns; synthetic lacks {missing}")


def ks_complement(real, synthetic) -> float:
    """1 - sup_x |F_real(x) - F_syn(x)| of two numeric samples (missing values dropped)."""
    a = np.sort(np.asarray(real, dtype=np.float64))
    b = np.sort(np.asarray(synthetic, dtype=np.float64))
    a, b = np.round(a[~np.isnan(a)], 14), np.round(b[~np.isnan(b)], 14)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    grid = np.concatenate([a, b])
    gap = np.abs(np.searchsorted(a, grid, "right") / len(a) - np.searchsorted(b, grid, "right") / len(b))
    return float(1.0 - gap.max())


def _frequencies(values) -> dict:
    import pandas as pd

    counts = pd.Series(values).dropna().value_counts(normalize=True)
    return counts.to_dict()


def tv_complement(real, synthetic) -> float:
    """1 - (1/2) sum_c |p_real(c) - p_syn(c)| over the categories (missing values dropped)."""
    p, q = _frequencies(real), _frequencies(synthetic)
    if not p or not q:
        return float("nan")
    return float(1.0 - 0.5 * sum(abs(p.get(c, 0.0) - q.get(c, 0.0)) for c in set(p) | set(q)))


def correlation_similarity(real_a, real_b, syn_a, syn_b) -> float:
    """1 - |r_real - r_syn| / 2 with Pearson's r (rows missing either value dropped)."""
    def pearson(x, y):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        keep = ~(np.isnan(x) | np.isnan(y))
        x, y = x[keep] - x[keep].mean(), y[keep] - y[keep].mean()
        denominator = np.sqrt((x * x).sum() * (y * y).sum())
        return float((x * y).sum() / denominator) if denominator > 0 else float("nan")

    return float(1.0 - abs(pearson(real_a, real_b) - pearson(syn_a, syn_b)) / 2)


def _bin_codes(real, synthetic, bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bins of the real values' range, the outer ones open; missing -> -1."""
    r = np.asarray(real, dtype=np.float64)
    s = np.asarray(synthetic, dtype=np.float64)
    edges = np.histogram_bin_edges(r[~np.isnan(r)], bins=bins)
    edges[0], edges[-1] = -np.inf, np.inf
    return tuple(np.where(np.isnan(v), -1, np.digitize(v, edges)) for v in (r, s))


def contingency_similarity(real_a, real_b, syn_a, syn_b, numeric: tuple[bool, bool] = (False, False)
                           ) -> float:
    """1 - (1/2) sum |p_real(a, b) - p_syn(a, b)| over the joint cells; ``numeric`` marks which of
    the two columns are binned first (10 equal-width bins of the real range)."""
    import pandas as pd

    real_cols, syn_cols = [real_a, real_b], [syn_a, syn_b]
    for k in (0, 1):
        if numeric[k]:
            real_cols[k], syn_cols[k] = _bin_codes(real_cols[k], syn_cols[k])

    def joint(a, b):
        frame = pd.DataFrame({"a": _labels(pd.Series(a)), "b": _labels(pd.Series(b))})
        return frame.value_counts(normalize=True).to_dict()

    p, q = joint(*real_cols), joint(*syn_cols)
    return float(1.0 - 0.5 * sum(abs(p.get(c, 0.0) - q.get(c, 0.0)) for c in set(p) | set(q)))


def column_shapes(real, synthetic, discrete_columns: Iterable[str] | None = None) -> dict[str, float]:
    """``{column: score}``: ``ks_complement`` for numeric columns, ``tv_complement`` for discrete ones."""
    _check_frames(real, synthetic)
    discrete = _discrete_set(real, discrete_columns)
    return {c: (tv_complement(real[c], synthetic[c]) if c in discrete
                else ks_complement(real[c], synthetic[c])) for c in real.columns}


def column_pair_trends(real, synthetic, discrete_columns: Iterable[str] | None = None
                       ) -> dict[tuple[str, str], float]:
    """``{(a, b): score}`` for every pair of columns (see the module doc)."""
    _check_frames(real, synthetic)
    discrete = _discrete_set(real, discrete_columns)
    scores = {}
    for a, b in combinations(real.columns, 2):
        if a not in discrete and b not in discrete:
            scores[(a, b)] = correlation_similarity(real[a], real[b], synthetic[a], synthetic[b])
        else:
            scores[(a, b)] = contingency_similarity(real[a], real[b], synthetic[a], synthetic[b],
                                                    (a not in discrete, b not in discrete))
    return scores


def quality(real, synthetic, discrete_columns: Iterable[str] | None = None) -> dict[str, float]:
    """``{"column_shapes", "column_pair_trends", "quality"}``: the two averages and their mean."""
    shapes = np.nanmean(list(column_shapes(real, synthetic, discrete_columns).values()))
    pairs = list(column_pair_trends(real, synthetic, discrete_columns).values())
    trends = np.nanmean(pairs) if pairs else float("nan")
    return {"column_shapes": float(shapes), "column_pair_trends": float(trends),
            "quality": float(np.nanmean([shapes, trends]))}


def _design_matrix(frames: list, discrete: set, columns: list[str]) -> list[np.ndarray]:
    """One-hot discrete columns over the union of categories, numeric ones standardised by the
    first frame (missing -> 0 and an indicator), the same layout for every frame."""
    import pandas as pd

    blocks = [[] for _ in frames]
    for c in columns:
        if c in discrete:
            categories = sorted({v for f in frames for v in _labels(f[c])})
            for i, f in enumerate(frames):
                codes = pd.Categorical(_labels(f[c]), categories=categories).codes
                blocks[i].append(np.eye(len(categories))[codes])
        else:
            first = frames[0][c].to_numpy(dtype=np.float64, na_value=np.nan)
            mean, std = np.nanmean(first), np.nanstd(first) or 1.0
            for i, f in enumerate(frames):
                v = f[c].to_numpy(dtype=np.float64, na_value=np.nan)
                blocks[i].append(np.stack([np.nan_to_num((v - mean) / std), np.isnan(v)], 1))
    return [np.concatenate(b, 1) for b in blocks]


def ml_efficacy(synthetic, real_train, real_test, target: str,
                discrete_columns: Iterable[str] | None = None, seed: int = 0) -> dict[str, float]:
    """Train on synthetic, test on real: ``{"synthetic": score, "real": score, "metric": name}``.

    A gradient-boosted tree model (50 rounds) is trained on the synthetic rows and, for reference, on
    ``real_train``; both are scored on ``real_test``. Categories present only in some frames are
    handled (one-hot over their union); a synthetic table with a single class predicts it.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.metrics import f1_score, r2_score

    _check_frames(real_train, synthetic)
    _check_frames(real_train, real_test)
    if target not in real_train.columns:
        raise ValueError(f"target {target!r} is not a column")
    discrete = _discrete_set(real_train, discrete_columns)
    features = [c for c in real_train.columns if c != target]
    X_train, X_syn, X_test = _design_matrix([real_train, synthetic, real_test], discrete, features)
    scores = {}
    if target in discrete:
        y_syn, y_train, y_test = (_labels(f[target]) for f in (synthetic, real_train, real_test))
        classes = sorted(set(y_train))
        binary = len(classes) == 2
        # the positive class of a binary target: the rarer one in the real training data
        positive = min(classes, key=lambda c: (y_train == c).sum()) if binary else None
        for name, X, y in (("synthetic", X_syn, y_syn), ("real", X_train, y_train)):
            if len(set(y)) < 2:
                predicted = np.full(len(y_test), y[0])
            else:
                model = HistGradientBoostingClassifier(max_iter=50, random_state=seed).fit(X, y)
                predicted = model.predict(X_test)
            scores[name] = float(f1_score(y_test, predicted, pos_label=positive, average="binary")
                                 if binary else f1_score(y_test, predicted, average="macro"))
        scores["metric"] = "f1" if binary else "macro_f1"
    else:
        value = lambda f: f[target].to_numpy(dtype=np.float64, na_value=np.nan)
        for name, X, frame in (("synthetic", X_syn, synthetic), ("real", X_train, real_train)):
            y = value(frame)
            keep = ~np.isnan(y)
            model = HistGradientBoostingRegressor(max_iter=50, random_state=seed).fit(X[keep], y[keep])
            y_test = value(real_test)
            ok = ~np.isnan(y_test)
            scores[name] = float(r2_score(y_test[ok], model.predict(X_test[ok])))
        scores["metric"] = "r2"
    return scores


def detection(real, synthetic, discrete_columns: Iterable[str] | None = None, seed: int = 0,
              max_rows: int = 10_000) -> dict[str, float]:
    """``{"auc", "score"}``: 5-fold ROC AUC of a logistic regression telling real rows from
    synthetic ones (at most ``max_rows`` of each, drawn with ``seed``), and ``1 - (max(AUC, 0.5) * 2 - 1)``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    _check_frames(real, synthetic)
    rng = np.random.default_rng(seed)
    real = real.iloc[rng.permutation(len(real))[:max_rows]]
    synthetic = synthetic.iloc[rng.permutation(len(synthetic))[:max_rows]]
    X_real, X_syn = _design_matrix([real, synthetic], _discrete_set(real, discrete_columns),
                                   list(real.columns))
    X = np.concatenate([X_real, X_syn])
    y = np.concatenate([np.zeros(len(X_real)), np.ones(len(X_syn))])
    auc = float(np.mean(cross_val_score(LogisticRegression(max_iter=1000), X, y, cv=5,
                                        scoring="roc_auc")))
    return {"auc": auc, "score": 1.0 - (max(auc, 0.5) * 2 - 1)}


def _labels(series) -> np.ndarray:
    """Values as strings (integral floats as integers, so 1.0 and 1 agree), missing as "\\0"."""
    values = series.astype(object).where(series.notna(), "\0")
    return np.array([str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
                     for v in values], dtype=object)


def _category_codes(frames: list, columns: list[str]) -> list[torch.Tensor]:
    """Integer codes ``[len(frame), len(columns)]`` per frame over the union of their categories."""
    codes = [np.empty((len(f), len(columns)), dtype=np.int64) for f in frames]
    for k, c in enumerate(columns):
        _, inverse = np.unique(np.concatenate([_labels(f[c]) for f in frames]), return_inverse=True)
        for i, part in enumerate(np.split(inverse, np.cumsum([len(f) for f in frames])[:-1])):
            codes[i][:, k] = part
    return [torch.as_tensor(c) for c in codes]


def distance_to_closest_record(data, reference, discrete_columns: Iterable[str] | None = None,
                               chunk: int = 128, ranges_from=None) -> np.ndarray:
    """For each row of ``data``, the smallest mean per-column distance to a row of ``reference``
    ``[len(data)]``: numbers ``min(|a - b| / range, 1)`` with the range of ``ranges_from`` (default:
    the reference; 0 range: 0 if equal else 1), categories 0 if equal else 1; a missing value is 0
    from a missing one and 1 from any value."""
    _check_frames(reference, data)
    discrete = _discrete_set(reference, discrete_columns)
    num_cols = [c for c in reference.columns if c not in discrete]
    cat_cols = [c for c in reference.columns if c in discrete]

    def numbers(f):
        return torch.as_tensor(f[num_cols].to_numpy(dtype=np.float64, na_value=np.nan)).reshape(len(f), -1)

    ref_num, data_num = numbers(reference), numbers(data)
    by = ref_num if ranges_from is None else numbers(ranges_from)
    low = torch.nan_to_num(by, nan=float("inf")).amin(0)
    span = torch.nan_to_num(by, nan=-float("inf")).amax(0) - low
    ref_cat, data_cat = _category_codes([reference, data], cat_cols)
    result = np.empty(len(data))
    columns = len(reference.columns)
    for start in range(0, len(data), chunk):
        total = torch.zeros(min(chunk, len(data) - start), len(reference), dtype=torch.float64)
        if num_cols:
            a, b = data_num[start:start + chunk, None, :], ref_num[None]
            distance = torch.where(span > 0, ((a - b).abs() / span.clamp(min=1e-300)).clamp(max=1.0),
                                   (a != b).double())
            both, one = a.isnan() & b.isnan(), a.isnan() ^ b.isnan()
            total += torch.where(both, 0.0, torch.where(one, 1.0, distance)).sum(-1)
        if cat_cols:
            total += (data_cat[start:start + chunk, None, :] != ref_cat[None]).sum(-1).double()
        result[start:start + chunk] = (total / columns).amin(1).numpy()
    return result


def random_table(real, n: int, discrete_columns: Iterable[str] | None = None, seed: int = 0):
    """``n`` rows drawn independently and uniformly per column: integers and floats within the real
    range, categories among the observed ones; missing values at the real column's rate."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    discrete = _discrete_set(real, discrete_columns)
    out = {}
    for c in real.columns:
        observed = real[c].dropna()
        if c in discrete:
            values = pd.Series(rng.choice(observed.unique(), n), dtype=object)
        elif pd.api.types.is_integer_dtype(real[c].dtype):
            values = pd.Series(rng.integers(observed.min(), observed.max() + 1, n))
        else:
            values = pd.Series(rng.uniform(observed.min(), observed.max(), n))
        rate = real[c].isna().mean()
        if rate > 0:
            values = values.astype(object if c in discrete else np.float64)
            values[rng.random(n) < rate] = None if c in discrete else np.nan
        out[c] = values
    return pd.DataFrame(out)


def dcr_baseline_protection(real, synthetic, discrete_columns: Iterable[str] | None = None,
                            seed: int = 0, max_rows: int = 2000) -> dict[str, float]:
    """``{"score", "synthetic_median_dcr", "random_median_dcr"}``: the median distance to the
    closest real record of (at most ``max_rows``) synthetic rows over that of as many uniformly
    random rows (``random_table``), capped at 1. Higher is more private."""
    _check_frames(real, synthetic)
    rng = np.random.default_rng(seed)
    synthetic = synthetic.iloc[rng.permutation(len(synthetic))[:max_rows]]
    random = random_table(real, len(synthetic), discrete_columns, seed)
    syn = float(np.median(distance_to_closest_record(synthetic, real, discrete_columns)))
    base = float(np.median(distance_to_closest_record(random, real, discrete_columns)))
    return {"score": min(syn / base, 1.0) if base > 0 else float("nan"),
            "synthetic_median_dcr": syn, "random_median_dcr": base}


def dcr_overfitting_protection(real_train, real_holdout, synthetic,
                               discrete_columns: Iterable[str] | None = None, seed: int = 0,
                               max_rows: int = 2000) -> dict[str, float]:
    """``{"score", "closer_to_training"}``: the share of (at most ``max_rows``) synthetic rows whose
    closest record among as many training rows as there are ``real_holdout`` rows (a seeded
    subsample, so a synthesizer that copies no row is at 0.5 in expectation) is nearer than their
    closest held-out row (ties count as held out), and ``min(2 (1 - share), 1)``, SDMetrics'
    ``DCROverfittingProtection`` score. Distances as ``distance_to_closest_record``'s, both with
    the training rows' ranges. Unlike ``dcr_baseline_protection`` it does not reward rows that are
    far from every real row, only rows that are no nearer the training rows than fresh ones are."""
    _check_frames(real_train, synthetic)
    _check_frames(real_train, real_holdout)
    rng = np.random.default_rng(seed)
    synthetic = synthetic.iloc[rng.permutation(len(synthetic))[:max_rows]]
    holdout = real_holdout.iloc[rng.permutation(len(real_holdout))[:max_rows]]
    train = real_train.iloc[rng.permutation(len(real_train))[:len(holdout)]]
    to_train = distance_to_closest_record(synthetic, train, discrete_columns, ranges_from=real_train)
    to_holdout = distance_to_closest_record(synthetic, holdout, discrete_columns, ranges_from=real_train)
    share = float(np.mean(to_train < to_holdout))
    return {"score": min(2 * (1 - share), 1.0), "closer_to_training": share}
