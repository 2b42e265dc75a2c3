"""Scores of a generative model's samples, traversals and second-stage codes, as plain functions of
features, predicted factor classes and codes (the networks that produce them live elsewhere).

- ``frechet_distance``: Fréchet distance between Gaussians fitted to two feature sets (as FID, in
  whatever feature space is given: here a factor classifier's, so nothing is downloaded).
- ``factor_coverage``: total-variation distance between the predicted factor-class histograms of
  samples and of data, per factor.
- ``code_leak``: how well a code (e.g. stage 2's ``w``) predicts each factor, chance-corrected.
- ``predicted_classes``: what a code (e.g. stage 1's ``z``) says about each factor, as held-out
  class predictions — the target for ``code_leak`` of "what ``w`` duplicates of ``z``".
- ``traversal_fidelity``: whether a traversal changes its own factor and nothing else.
"""
from __future__ import annotations

import numpy as np

from msvae.metrics._inputs import as_codes, as_factors, to_numpy


def _gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return features.mean(0), np.cov(features, rowvar=False)


def frechet_distance(features_a, features_b) -> float:
    """``|m_a - m_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of the Gaussians fitted to
    ``features_a [N, F]`` and ``features_b [M, F]`` (0 for identical sets; the trace of the matrix
    square root is computed as ``Tr (S_a^(1/2) S_b S_a^(1/2))^(1/2)``, symmetric and stable)."""
    a, b = as_codes(features_a, "features_a"), as_codes(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"features_a and features_b need the same width, got {a.shape[1]} and {b.shape[1]}")
    (m_a, s_a), (m_b, s_b) = _gaussian(a), _gaussian(b)
    values, vectors = np.linalg.eigh(s_a)
    root_a = (vectors * np.sqrt(values.clip(min=0))) @ vectors.T
    cross = np.linalg.eigvalsh(root_a @ s_b @ root_a).clip(min=0)
    return float(np.sum((m_a - m_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(cross).sum())


def factor_coverage(classes_samples, classes_data, class_sizes) -> np.ndarray:
    """Total-variation distance ``[K]`` between the histograms of each factor's classes in
    ``classes_samples [N, K]`` and ``classes_data [M, K]`` (0: the samples cover the factor as
    the data does; 1: disjoint). ``class_sizes [K]``: the number of classes per factor."""
    s = as_factors(classes_samples, "classes_samples", allow_constant=True)
    d = as_factors(classes_data, "classes_data", allow_constant=True)
    if s.shape[1] != d.shape[1] or len(class_sizes) != s.shape[1]:
        raise ValueError(f"classes_samples {s.shape}, classes_data {d.shape} and class_sizes "
                         f"({len(class_sizes)}) must agree on the number of factors")
    tv = []
    for k, size in enumerate(class_sizes):
        p, q = (np.bincount(c[:, k], minlength=size)[:size] / len(c) for c in (s, d))
        tv.append(0.5 * np.abs(p - q).sum())
    return np.array(tv)


def code_leak(codes, classes, seed: int = 0, max_components: int = 64) -> np.ndarray:
    """Chance-corrected held-out balanced accuracy ``[K]`` of predicting each factor's class from
    ``codes [N, W]``: rows are shuffled (seeded), a multinomial logistic regression on the
    standardised codes (reduced to their top ``max_components`` principal components when wider)
    trains on the first half and is scored on the second with
    ``sklearn.metrics.balanced_accuracy_score(adjusted=True)``: 0 at chance, 1 when perfect
    (may dip slightly below 0 by chance). ``classes [N, K]``: discrete factor classes."""
    import warnings

    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    codes = as_codes(codes)
    classes = as_factors(classes, "classes", num_rows=codes.shape[0], allow_constant=True)
    order = np.random.default_rng(seed).permutation(len(codes))
    codes, classes = codes[order], classes[order]
    half = len(codes) // 2
    scores = []
    for k in range(classes.shape[1]):
        train, test = classes[:half, k], classes[half:, k]
        if len(np.unique(train)) < 2:
            scores.append(0.0)
            continue
        steps = [StandardScaler()]
        if codes.shape[1] > max_components:
            steps.append(PCA(min(max_components, half), random_state=seed))
        model = make_pipeline(*steps, LogisticRegression(max_iter=2000))
        model.fit(codes[:half], train)
        with warnings.catch_warnings():  # small sets: a predicted class may be absent from the test half
            warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
            scores.append(balanced_accuracy_score(test, model.predict(codes[half:]), adjusted=True))
    return np.array(scores, dtype=np.float64)


def predicted_classes(codes, classes, folds: int = 5, neighbours: int = 25) -> tuple[np.ndarray, np.ndarray]:
    """Each factor's class as predicted from ``codes [N, D]`` alone, cross-fitted: a
    ``neighbours``-nearest-neighbour classifier on the standardised codes, trained on all folds
    but the row's own (``folds`` contiguous folds, so the rows' order is the only input besides
    the data). Returns ``(predictions [N, K], accuracy [K])``, the chance-corrected balanced
    accuracy of those predictions. ``code_leak(w, predictions)`` then measures how much of what
    ``codes`` say about each factor ``w`` also says — 0 when ``w`` is independent of the codes,
    whatever else ``w`` knows about the factor."""
    import warnings

    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    codes = as_codes(codes)
    classes = as_factors(classes, "classes", num_rows=codes.shape[0], allow_constant=True)
    if len(codes) < 2 * folds:
        raise ValueError(f"need at least {2 * folds} rows, got {len(codes)}")
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(min(neighbours, len(codes) // 2)))
    predictions = np.stack([cross_val_predict(model, codes, classes[:, k], cv=KFold(folds))
                            if len(np.unique(classes[:, k])) > 1 else classes[:, k]
                            for k in range(classes.shape[1])], 1)
    with warnings.catch_warnings():  # a class may never be predicted
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        accuracy = np.array([balanced_accuracy_score(classes[:, k], predictions[:, k], adjusted=True)
                             if len(np.unique(classes[:, k])) > 1 else 0.0
                             for k in range(classes.shape[1])])
    return predictions, accuracy


def traversal_fidelity(classes, own) -> dict:
    """How faithfully traversals change one factor: ``classes [T, S, K]`` are the predicted factor
    classes along ``T`` traversals of ``S`` steps each, ``own [T]`` the factor each traversal stands
    for. A traversal scores ``changed * still``: ``changed`` is 1 when its own factor's class takes
    more than one value along it, ``still`` the fraction of consecutive steps in which no other
    factor's class changes. Returns ``{"score": mean over traversals, "per_traversal": [T],
    "changed": [T], "still": [T]}``."""
    classes = to_numpy(classes, "classes")
    own = to_numpy(own, "own").astype(np.int64)
    if classes.ndim != 3 or classes.shape[1] < 2:
        raise ValueError(f"classes must be [T, S >= 2, K], got shape {classes.shape}")
    if own.shape != classes.shape[:1] or own.min(initial=0) < 0 or own.max(initial=0) >= classes.shape[2]:
        raise ValueError(f"own must be [{classes.shape[0]}] factor indices in [0, {classes.shape[2]})")
    T, _, K = classes.shape
    changed = np.array([len(np.unique(classes[t, :, own[t]])) > 1 for t in range(T)], dtype=np.float64)
    others = np.ones((T, K), dtype=bool)
    others[np.arange(T), own] = False
    moves = classes[:, 1:] != classes[:, :-1]  # [T, S-1, K]
    still = 1.0 - (moves & others[:, None, :]).any(2).mean(1)
    per_traversal = changed * still
    return {"score": float(per_traversal.mean()), "per_traversal": per_traversal,
            "changed": changed, "still": still}
