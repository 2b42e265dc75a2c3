"""Scores built from batches that share one factor's value: FactorVAE and BetaVAE (disentanglement_lib).

disentanglement_lib draws these batches from the ground-truth simulator (fix factor ``k`` at one
value, sample the other factors afresh). Here they are drawn from the given rows instead: a batch
that shares factor ``k`` is a set of rows drawn uniformly, with replacement, among the rows with
the same value of ``k``. On a full factor grid (dSprites) this is the same distribution.
"""
from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from msvae.metrics._inputs import as_codes, as_factors, check_positive_int

VOTES_PER_CHUNK = 1024  # bounds the [chunk, batch_size, D] gather


class _SameValueSampler:
    """Draws random rows that share a factor's value with given anchor rows."""

    def __init__(self, factors: np.ndarray):
        self.num_rows, self.num_factors = factors.shape
        self._order, self._start, self._size = [], [], []
        for column in factors.T:
            _, group, counts = np.unique(column, return_inverse=True, return_counts=True)
            group = group.reshape(-1)
            first = np.concatenate([[0], np.cumsum(counts)[:-1]])
            self._order.append(np.argsort(group, kind="stable"))
            self._start.append(first[group])
            self._size.append(counts[group])

    def draw(self, factor_index: np.ndarray, anchors: np.ndarray,
             rng: np.random.Generator) -> np.ndarray:
        """For ``anchors [n, m]`` and ``factor_index [n]``: rows sharing factor ``factor_index[i]``'s
        value with ``anchors[i, j]``, each uniform over those rows, ``[n, m]``."""
        offsets = rng.random(anchors.shape)
        rows = np.empty_like(anchors)
        for k in range(self.num_factors):
            mask = factor_index == k
            a = anchors[mask]
            offset = (offsets[mask] * self._size[k][a]).astype(np.int64)
            rows[mask] = self._order[k][self._start[k][a] + offset]
        return rows


def _factor_vae_votes(codes: np.ndarray, global_variance: np.ndarray, sampler: _SameValueSampler,
                      batch_size: int, num_votes: int, rng: np.random.Generator) -> np.ndarray:
    """``votes [K, D]``: how often a batch sharing factor k had its smallest normalised variance in d."""
    votes = np.zeros((sampler.num_factors, codes.shape[1]), dtype=np.int64)
    for start in range(0, num_votes, VOTES_PER_CHUNK):
        n = min(VOTES_PER_CHUNK, num_votes - start)
        factor_index = rng.integers(sampler.num_factors, size=n)
        anchors = rng.integers(sampler.num_rows, size=n)
        members = sampler.draw(factor_index, np.repeat(anchors[:, None], batch_size, 1), rng)
        local_variance = codes[members].var(axis=1, ddof=1)
        np.add.at(votes, (factor_index, np.argmin(local_variance / global_variance, axis=1)), 1)
    return votes


def factor_vae_score(codes, factors, batch_size: int = 64, num_train: int = 10000,
                     num_eval: int = 5000, seed: int = 0, prune_threshold: float = 0.05) -> float:
    """FactorVAE disentanglement score (Kim & Mnih, 2018) as disentanglement_lib computes it.

    Codes are scaled by their standard deviation over all rows (``ddof=1``). Each vote picks a
    factor ``k`` uniformly and an anchor row uniformly, draws ``batch_size`` rows sharing the
    anchor's value of ``k``, and the active dimension with the smallest variance of the scaled
    codes in the batch votes for ``k``. The classifier maps each dimension to the factor it got
    most training votes for (ties: lowest factor index); the score is the fraction of
    ``num_eval`` fresh votes it classifies correctly.

    Collapsed dimensions (global standard deviation below ``prune_threshold``) take no part;
    disentanglement_lib's study configuration sets this threshold to 0.05 on the standard
    deviation (its ``prune_dims.threshold``). With no active dimension the score is 0, as there.

    Args:
        codes: representations ``[N, D]``.
        factors: discrete ground-truth factors ``[N, K]``, each taking at least two values.
        batch_size: rows per vote, ``>= 2`` (disentanglement_lib: 64).
        num_train, num_eval: training and evaluation votes (disentanglement_lib: 10,000, 5,000).
        seed: seeds the votes.
        prune_threshold: minimum global standard deviation of an active dimension.
    """
    codes = as_codes(codes)
    factors = as_factors(factors, num_rows=codes.shape[0])
    batch_size = check_positive_int(batch_size, "batch_size", minimum=2)
    num_train = check_positive_int(num_train, "num_train")
    num_eval = check_positive_int(num_eval, "num_eval")
    global_variance = codes.var(axis=0, ddof=1)
    active = np.sqrt(global_variance) >= prune_threshold
    if not active.any():
        return 0.0
    codes, global_variance = codes[:, active], global_variance[active]
    rng = np.random.default_rng(seed)
    sampler = _SameValueSampler(factors)
    train_votes = _factor_vae_votes(codes, global_variance, sampler, batch_size, num_train, rng)
    classifier = np.argmax(train_votes, axis=0)
    eval_votes = _factor_vae_votes(codes, global_variance, sampler, batch_size, num_eval, rng)
    return float(eval_votes[classifier, np.arange(codes.shape[1])].sum() / num_eval)


def _beta_vae_points(codes: np.ndarray, sampler: _SameValueSampler, batch_size: int,
                     num_points: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``features [num_points, D]`` (mean |difference| of pairs sharing a factor) and that factor."""
    factor_index = rng.integers(sampler.num_factors, size=num_points)
    features = np.empty((num_points, codes.shape[1]))
    for start in range(0, num_points, VOTES_PER_CHUNK):
        stop = min(start + VOTES_PER_CHUNK, num_points)
        first = rng.integers(sampler.num_rows, size=(stop - start, batch_size))
        second = sampler.draw(factor_index[start:stop], first, rng)
        features[start:stop] = np.abs(codes[first] - codes[second]).mean(axis=1)
    return features, factor_index


def beta_vae_score(codes, factors, batch_size: int = 64, num_train: int = 10000,
                   num_eval: int = 5000, seed: int = 0) -> float:
    """BetaVAE disentanglement score (Higgins et al., 2017) as disentanglement_lib computes it.

    Each point picks a factor ``k`` uniformly and ``batch_size`` pairs of rows: the first row of
    a pair is uniform, the second uniform among the rows sharing its value of ``k``. The point's
    feature is the mean over pairs of ``|code_1 - code_2|`` ``[D]`` and its label is ``k``. A
    ``sklearn.linear_model.LogisticRegression`` (default settings, as disentanglement_lib, except
    ``max_iter=1000`` so that lbfgs converges) is fitted on ``num_train`` points; the score is its
    accuracy on ``num_eval`` fresh points. (Current scikit-learn's default is a multinomial lbfgs
    fit; the version disentanglement_lib pinned defaulted to one-vs-rest liblinear.)

    Args:
        codes: representations ``[N, D]``.
        factors: discrete ground-truth factors ``[N, K]``, ``K >= 2``, each taking at least two
            values.
        batch_size: pairs per point (disentanglement_lib: 64).
        num_train, num_eval: training and evaluation points (disentanglement_lib: 10,000, 5,000).
        seed: seeds the points and the classifier.
    """
    codes = as_codes(codes)
    factors = as_factors(factors, num_rows=codes.shape[0])
    if factors.shape[1] < 2:
        raise ValueError(f"factors needs at least 2 columns for the BetaVAE score (it predicts "
                         f"which factor is shared), got shape {factors.shape}")
    batch_size = check_positive_int(batch_size, "batch_size")
    num_train = check_positive_int(num_train, "num_train")
    num_eval = check_positive_int(num_eval, "num_eval")
    rng = np.random.default_rng(seed)
    sampler = _SameValueSampler(factors)
    train_features, train_labels = _beta_vae_points(codes, sampler, batch_size, num_train, rng)
    if len(np.unique(train_labels)) < 2:
        raise ValueError(f"num_train={num_train} points drew a single factor; use more points")
    model = LogisticRegression(random_state=seed, max_iter=1000).fit(train_features, train_labels)
    eval_features, eval_labels = _beta_vae_points(codes, sampler, batch_size, num_eval, rng)
    return float(model.score(eval_features, eval_labels))
