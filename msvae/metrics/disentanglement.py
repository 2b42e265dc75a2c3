"""Predictor-based disentanglement scores from a train/test split: DCI and SAP (disentanglement_lib)."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.svm import LinearSVC

from msvae.metrics._inputs import train_test

IMPORTANCE_SMOOTHING = 1e-11  # disentanglement_lib adds this before taking entropies


def _one_minus_normalised_entropy(weights: np.ndarray, axis: int) -> np.ndarray:
    """``1 - H(p) / log n`` of ``p = weights / sum`` along ``axis`` (n entries); 1 where ``n == 1``."""
    n = weights.shape[axis]
    if n == 1:
        return np.ones(weights.shape[1 - axis])
    p = weights + IMPORTANCE_SMOOTHING
    p = p / p.sum(axis, keepdims=True)
    return 1.0 + (p * np.log(p)).sum(axis) / np.log(n)


def _weighted_score(importance: np.ndarray, axis: int) -> float:
    """Per-row (axis=1) or per-column (axis=0) scores averaged with their share of the importance."""
    scores = _one_minus_normalised_entropy(importance, axis)
    if importance.sum() == 0:
        importance = np.ones_like(importance)
    share = importance.sum(axis) / importance.sum()
    return float((scores * share).sum())


def dci_disentanglement(importance: np.ndarray) -> float:
    """From ``importance [D, K]``: each code's ``1 - H_K(its importances over factors)`` (entropy
    base K), averaged with weights ``sum_k importance[d, k] / total``."""
    return _weighted_score(importance, axis=1)


def dci_completeness(importance: np.ndarray) -> float:
    """From ``importance [D, K]``: each factor's ``1 - H_D(its importances over codes)`` (entropy
    base D), averaged with weights ``sum_d importance[d, k] / total``."""
    return _weighted_score(importance, axis=0)


def dci(codes_train, factors_train, codes_test, factors_test, *, seed: int = 0,
        gbt_options: Mapping | None = None) -> dict:
    """DCI of Eastwood & Williams (2018) as disentanglement_lib computes it.

    For each factor a ``sklearn.ensemble.GradientBoostingClassifier`` (default settings, as
    disentanglement_lib) predicts the factor from all codes; the absolute impurity-based
    ``feature_importances_`` form column ``k`` of ``importance [D, K]``. Then

    - disentanglement: ``sum_d rho_d (1 - H_K(P_d.))`` with ``P_d.`` code ``d``'s importances
      normalised over factors, ``H_K`` the entropy in base K, ``rho_d`` code ``d``'s share of
      the total importance (``dci_disentanglement``);
    - completeness: the same over codes for each factor, entropy base D (``dci_completeness``);
    - informativeness_train / _test: classification accuracy, averaged over factors.

    A ``1e-11`` is added to the importances before the entropies (as disentanglement_lib); with
    ``K == 1`` (or ``D == 1``) the normalised entropy is taken as 0, so that score is 1.

    Args:
        codes_train, factors_train: ``[N, D]`` representations and ``[N, K]`` discrete factors to
            fit on (disentanglement_lib: 10,000 points); every factor takes at least two values.
        codes_test, factors_test: ``[M, D]``, ``[M, K]`` held-out points (disentanglement_lib: 5,000).
        seed: ``random_state`` of the classifiers (with default settings it only breaks ties).
        gbt_options: keyword arguments for ``GradientBoostingClassifier`` overriding its defaults,
            e.g. ``{"n_estimators": 20}`` for a faster, coarser importance estimate.

    Returns:
        dict with ``disentanglement``, ``completeness``, ``informativeness_train``,
        ``informativeness_test`` (floats) and ``importance [D, K]``.
    """
    codes_train, factors_train, codes_test, factors_test = train_test(
        codes_train, factors_train, codes_test, factors_test)
    options = {"random_state": seed, **(gbt_options or {})}
    num_factors = factors_train.shape[1]
    importance = np.zeros((codes_train.shape[1], num_factors))
    train_accuracy, test_accuracy = np.zeros(num_factors), np.zeros(num_factors)
    for k in range(num_factors):
        model = GradientBoostingClassifier(**options).fit(codes_train, factors_train[:, k])
        importance[:, k] = np.abs(model.feature_importances_)
        train_accuracy[k] = np.mean(model.predict(codes_train) == factors_train[:, k])
        test_accuracy[k] = np.mean(model.predict(codes_test) == factors_test[:, k])
    return {"disentanglement": dci_disentanglement(importance),
            "completeness": dci_completeness(importance),
            "informativeness_train": float(train_accuracy.mean()),
            "informativeness_test": float(test_accuracy.mean()),
            "importance": importance}


def sap(codes_train, factors_train, codes_test, factors_test, *, seed: int = 0) -> float:
    """Separated Attribute Predictability (Kumar et al., 2018) for discrete factors.

    As disentanglement_lib: for every pair (code ``d``, factor ``k``) a
    ``sklearn.svm.LinearSVC(C=0.01, class_weight="balanced")`` is fitted on the single code
    column of the training split; its plain test accuracy is ``score[d, k]``. The SAP score is the
    mean over factors of the gap between the two highest scores of each factor. (The classes are
    balanced in the fit; the accuracy itself is not.)

    Args:
        codes_train, factors_train: ``[N, D]`` (``D >= 2``) and ``[N, K]``; every factor takes at
            least two values (disentanglement_lib: 10,000 points).
        codes_test, factors_test: ``[M, D]``, ``[M, K]`` held-out points (disentanglement_lib: 5,000).
        seed: ``random_state`` of the SVMs.
    """
    codes_train, factors_train, codes_test, factors_test = train_test(
        codes_train, factors_train, codes_test, factors_test, min_dims=2)
    score = np.zeros((codes_train.shape[1], factors_train.shape[1]))
    for d in range(codes_train.shape[1]):
        for k in range(factors_train.shape[1]):
            classifier = LinearSVC(C=0.01, class_weight="balanced", random_state=seed)
            classifier.fit(codes_train[:, d:d + 1], factors_train[:, k])
            score[d, k] = np.mean(classifier.predict(codes_test[:, d:d + 1]) == factors_test[:, k])
    top_two = np.sort(score, axis=0)[::-1][:2]
    return float((top_two[0] - top_two[1]).mean())
