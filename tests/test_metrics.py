"""msvae.metrics: disentanglement scores on synthetic factors, against readable references."""
import math

import numpy as np
import pytest
import scipy.stats
import torch
from sklearn.metrics import mutual_info_score

from msvae.metrics import (beta_vae_score, dci, dci_completeness, dci_disentanglement,
                           discrete_entropy, discrete_mutual_info, factor_vae_score,
                           gaussian_total_correlation, histogram_discretize, hoyer_sparsity, mig,
                           mig_chen, mig_chen_details, mig_details, mutual_info_matrix, sap)

FACTOR_SIZES = (3, 5, 6, 8, 10)


def synthetic(num_rows, seed, sizes=FACTOR_SIZES):
    """``factors [N, K]``, and codes: the standardised factors plus tiny noise, a random rotation
    of those, and pure noise (all ``[N, K]``)."""
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(size, size=num_rows) for size in sizes], axis=1)
    aligned = (factors - factors.mean(0)) / factors.std(0)
    aligned = aligned + 0.01 * rng.standard_normal(aligned.shape)
    rotation, _ = np.linalg.qr(rng.standard_normal((len(sizes), len(sizes))))
    noise = rng.standard_normal(aligned.shape)
    return factors, {"aligned": aligned, "rotated": aligned @ rotation, "noise": noise}


@pytest.fixture(scope="module")
def scores():
    """Every supervised score of the three kinds of codes (computed once: the tests read them)."""
    factors, codes = synthetic(3000, seed=7)
    train, test = slice(0, 2000), slice(2000, None)
    result = {}
    for name, c in codes.items():
        result[name] = {
            "mig": mig(c, factors),
            "sap": sap(c[train], factors[train], c[test], factors[test]),
            "factor_vae": factor_vae_score(c, factors, num_train=3000, num_eval=2000),
            "beta_vae": beta_vae_score(c, factors, num_train=3000, num_eval=2000),
            **dci(c[train], factors[train], c[test], factors[test],
                  gbt_options={"n_estimators": 20}),
        }
    for name, values in result.items():  # shown with -s (pytest -rP shows them for passes too)
        print(name, {key: round(v, 3) for key, v in values.items() if key != "importance"})
    return result


# ---- information measures -----------------------------------------------------------------

def test_discrete_information_matches_sklearn():
    rng = np.random.default_rng(0)
    a, b = rng.integers(7, size=997), rng.integers(4, size=997)
    b = np.where(rng.random(997) < 0.5, a % 4, b)  # dependent, with unused label values mixed in
    assert discrete_mutual_info(a, b) == pytest.approx(mutual_info_score(a, b), rel=1e-12)
    assert discrete_entropy(a) == pytest.approx(mutual_info_score(a, a), rel=1e-12)
    assert discrete_mutual_info(a, a) == pytest.approx(discrete_entropy(a), rel=1e-12)
    assert discrete_mutual_info(a, np.zeros_like(a)) == pytest.approx(0.0, abs=1e-15)
    codes, factors = rng.integers(5, size=(50, 3)), rng.integers(3, size=(50, 2))
    expected = [[mutual_info_score(codes[:, d], factors[:, k]) for k in range(2)] for d in range(3)]
    np.testing.assert_allclose(mutual_info_matrix(codes, factors), expected, rtol=1e-12)


def test_histogram_discretize_equal_width_bins():
    rng = np.random.default_rng(1)
    codes = np.concatenate([rng.standard_normal((301, 2)), rng.exponential(size=(301, 1))], 1)
    binned = histogram_discretize(codes, num_bins=20)
    low, high = codes.min(0), codes.max(0)
    expected = np.minimum(np.floor((codes - low) / ((high - low) / 20)) + 1, 20)
    # Floating-point edges may put a value that lies exactly on an edge in either neighbour.
    assert (np.abs(binned - expected) <= 1).all() and (binned == expected).mean() > 0.99
    assert binned.min() == 1 and binned.max() == 20
    assert (binned[codes.argmin(0), [0, 1, 2]] == 1).all()
    assert (binned[codes.argmax(0), [0, 1, 2]] == 20).all()


# ---- MIG ----------------------------------------------------------------------------------

def test_mig_is_the_normalised_gap_of_binned_mutual_information():
    rng = np.random.default_rng(2)
    factors = rng.integers(4, size=(400, 3))
    codes = np.concatenate([factors[:, :1] + 0.3 * rng.standard_normal((400, 1)),
                            rng.standard_normal((400, 4))], 1)
    details = mig_details(codes, factors, num_bins=7)
    binned = histogram_discretize(codes, 7)
    info = np.array([[mutual_info_score(binned[:, d], factors[:, k]) for k in range(3)]
                     for d in range(5)])
    entropy = np.array([mutual_info_score(factors[:, k], factors[:, k]) for k in range(3)])
    top, second = np.sort(info, axis=0)[-1], np.sort(info, axis=0)[-2]
    np.testing.assert_allclose(details["mutual_info"], info, rtol=1e-12)
    np.testing.assert_allclose(details["factor_entropy"], entropy, rtol=1e-12)
    np.testing.assert_allclose(details["per_factor"], (top - second) / entropy, rtol=1e-12)
    assert details["mig"] == pytest.approx(np.mean((top - second) / entropy), rel=1e-12)
    assert mig(torch.from_numpy(codes).float(), torch.from_numpy(factors), 7) == pytest.approx(
        mig(codes.astype(np.float32), factors, 7), rel=1e-12)


def test_scores_rank_aligned_above_rotated_above_noise(scores):
    aligned, rotated, noise = scores["aligned"], scores["rotated"], scores["noise"]
    assert aligned["mig"] >= 0.9 and aligned["disentanglement"] >= 0.9
    assert aligned["completeness"] >= 0.9 and aligned["informativeness_test"] >= 0.95
    assert aligned["factor_vae"] >= 0.95 and aligned["beta_vae"] >= 0.95
    # A 1-D linear one-vs-rest SVM cannot single out the middle values of a many-valued factor,
    # so disentanglement_lib's discrete SAP stays well below 1 even for perfect codes.
    assert aligned["sap"] >= 0.25
    assert rotated["mig"] < 0.5 * aligned["mig"] and rotated["sap"] < 0.5 * aligned["sap"]
    assert rotated["disentanglement"] < 0.6 and rotated["factor_vae"] < 0.9
    assert noise["mig"] < 0.03 and noise["sap"] < 0.03 and noise["disentanglement"] < 0.05
    chance = 1 / len(FACTOR_SIZES)
    assert abs(noise["factor_vae"] - chance) < 0.06 and abs(noise["beta_vae"] - chance) < 0.06


# ---- DCI ----------------------------------------------------------------------------------

def test_dci_entropy_scores_by_hand():
    importance = np.array([[0.8, 0.2, 0.0], [0.1, 0.1, 0.9], [0.0, 0.0, 0.3], [0.5, 0.0, 0.0]])
    smoothed = importance + 1e-11
    per_code = 1 - scipy.stats.entropy(smoothed.T, base=3)
    per_factor = 1 - scipy.stats.entropy(smoothed, base=4)
    total = importance.sum()
    assert dci_disentanglement(importance) == pytest.approx(
        (per_code * importance.sum(1) / total).sum(), rel=1e-12)
    assert dci_completeness(importance) == pytest.approx(
        (per_factor * importance.sum(0) / total).sum(), rel=1e-12)
    assert dci_disentanglement(np.eye(3)) == pytest.approx(1.0, abs=1e-8)
    assert dci_disentanglement(np.ones((4, 3))) == pytest.approx(0.0, abs=1e-8)
    assert dci_completeness(np.ones((4, 1))) == pytest.approx(0.0, abs=1e-8)
    assert dci_disentanglement(np.ones((4, 1))) == 1.0  # a single factor: nothing to confuse


def test_dci_default_gradient_boosting():
    factors, codes = synthetic(450, seed=3, sizes=(3, 4))
    result = dci(codes["aligned"][:300], factors[:300], codes["aligned"][300:], factors[300:])
    importance = result["importance"]
    assert importance.shape == (2, 2) and (importance >= 0).all()
    np.testing.assert_allclose(importance.sum(0), 1.0, rtol=1e-9)  # sklearn normalises per fit
    assert result["disentanglement"] >= 0.9 and result["completeness"] >= 0.9
    assert result["informativeness_train"] == 1.0 and result["informativeness_test"] >= 0.95
    again = dci(codes["aligned"][:300], factors[:300], codes["aligned"][300:], factors[300:])
    np.testing.assert_array_equal(again["importance"], importance)


# ---- FactorVAE / BetaVAE ------------------------------------------------------------------

def test_factor_vae_prunes_collapsed_dimensions():
    factors, codes = synthetic(1500, seed=4)
    collapsed = 0.01 * codes["aligned"]  # standard deviation 0.01 < 0.05 in every dimension
    assert factor_vae_score(collapsed, factors, num_train=500, num_eval=500) == 0.0
    assert factor_vae_score(collapsed, factors, num_train=500, num_eval=500,
                            prune_threshold=0.0) >= 0.95
    # One live dimension per factor except the first, whose dimension collapsed: the first
    # factor's votes then go to a live dimension that belongs to another factor.
    partly = np.concatenate([collapsed[:, :1], codes["aligned"][:, 1:]], 1)
    score = factor_vae_score(partly, factors, num_train=2000, num_eval=2000)
    assert 0.7 <= score <= 0.9


def test_batch_scores_are_seeded():
    factors, codes = synthetic(800, seed=5)
    for score in (factor_vae_score, beta_vae_score):
        first = score(codes["noise"], factors, num_train=300, num_eval=300, seed=11)
        assert score(torch.from_numpy(codes["noise"]), torch.from_numpy(factors), num_train=300,
                     num_eval=300, seed=11) == first
        others = {score(codes["noise"], factors, num_train=300, num_eval=300, seed=s)
                  for s in (12, 13, 14)}
        assert others != {first}


def test_same_value_batches_share_the_factor():
    from msvae.metrics.batch_scores import _SameValueSampler
    rng = np.random.default_rng(6)
    factors = rng.integers(5, size=(257, 3))
    factors[:, 2] = rng.integers(2, size=257) * 10 - 3  # arbitrary, non-contiguous values
    factor_index = rng.integers(3, size=40)
    anchors = rng.integers(257, size=(40, 9))
    rows = _SameValueSampler(factors).draw(factor_index, anchors, rng)
    assert (factors[rows, factor_index[:, None]] == factors[anchors, factor_index[:, None]]).all()
    assert len(np.unique(rows)) > 100  # spread over the groups, not stuck on a few rows


# ---- unsupervised -------------------------------------------------------------------------

def test_gaussian_total_correlation():
    rng = np.random.default_rng(8)
    a = rng.standard_normal((4, 4))
    covariance = a @ a.T + 0.5 * np.eye(4)
    scale = np.sqrt(np.diag(covariance))
    correlation = covariance / np.outer(scale, scale)
    samples = rng.multivariate_normal(np.zeros(4), covariance, size=200_000)
    expected = -0.5 * np.linalg.slogdet(correlation)[1]
    assert expected > 0.3
    assert gaussian_total_correlation(samples) == pytest.approx(expected, abs=0.02)
    exact = -0.5 * np.linalg.slogdet(np.corrcoef(samples, rowvar=False))[1]
    assert gaussian_total_correlation(samples) == pytest.approx(exact, rel=1e-9)
    independent = rng.standard_normal((200_000, 4)) * [1.0, 3.0, 0.2, 7.0]
    assert abs(gaussian_total_correlation(independent)) < 1e-3


def test_hoyer_sparsity():
    rng = np.random.default_rng(9)
    one_hot = np.eye(6)[rng.integers(6, size=500)] * rng.uniform(0.5, 3.0, size=(500, 1))
    assert hoyer_sparsity(one_hot) == pytest.approx(1.0, abs=1e-12)
    dense = rng.choice([-1.0, 1.0], size=(500, 6))  # equal magnitudes, std ~1 in every dimension
    assert hoyer_sparsity(dense) < 0.01
    codes = rng.standard_normal((300, 7)) * rng.uniform(0.1, 5.0, size=7)
    codes[rng.random(codes.shape) < 0.5] = 0.0
    codes[:3] = 0.0  # all-zero rows are left out
    std = codes.std(axis=0, ddof=1)
    expected = []
    for row in codes:
        x = np.abs(row / std)
        if not x.any():
            continue
        expected.append((math.sqrt(7) - x.sum() / math.sqrt((x ** 2).sum())) / (math.sqrt(7) - 1))
    assert hoyer_sparsity(codes) == pytest.approx(np.mean(expected), rel=1e-12)
    assert hoyer_sparsity(codes * [1, 100, 1, 1, 1, 1, 1]) == pytest.approx(np.mean(expected))


# ---- MIG of Chen et al. -------------------------------------------------------------------

def test_mig_chen_aligned_rotated_noise():
    factors, codes = synthetic(2000, seed=10)
    small = np.full(codes["aligned"].shape, 2 * math.log(0.05))  # spacing of values >= 0.35
    aligned = mig_chen(codes["aligned"], small, factors, num_samples=2000)
    rotated = mig_chen(codes["rotated"], small, factors, num_samples=2000)
    noise = mig_chen(codes["noise"], np.zeros_like(small), factors, num_samples=2000)
    print("mig_chen aligned / rotated / noise:", round(aligned, 3), round(rotated, 3), round(noise, 3))
    assert aligned >= 0.9 and rotated < 0.5 * aligned and abs(noise) < 0.05


def test_mig_chen_entropies_of_separated_clusters():
    """Two far-apart clusters of posteriors N(+-10, 0.5^2) on z_0: H(z_0) = H_gauss + log 2 and
    H(z_0 | v) = H_gauss, so I(z_0; v) = log 2 = H(v); z_1 ~ N(0, 1) carries nothing."""
    factor = np.repeat([[0], [1]], 500, axis=0)
    mu = np.stack([20.0 * factor[:, 0] - 10.0, np.zeros(1000)], 1)
    logvar = np.stack([np.full(1000, 2 * math.log(0.5)), np.zeros(1000)], 1)
    details = mig_chen_details(mu, logvar, factor, num_samples=1000, seed=11)
    gaussian = 0.5 * np.log(2 * math.pi * math.e * np.array([0.25, 1.0]))
    np.testing.assert_allclose(details["marginal_entropy"], gaussian + [math.log(2), 0], atol=0.06)
    np.testing.assert_allclose(details["conditional_entropy"][:, 0], gaussian, atol=0.06)
    assert details["factor_entropy"][0] == pytest.approx(math.log(2))
    assert details["mig"] == pytest.approx(1.0, abs=0.1)


def test_mig_chen_backends_and_inputs_agree():
    factors, codes = synthetic(300, seed=12, sizes=(2, 3))
    logvar = np.log(np.random.default_rng(13).uniform(0.05, 0.5, size=(300, 2)))
    fused = mig_chen_details(codes["aligned"], logvar, factors, num_samples=200, seed=3)
    reference = mig_chen_details(torch.from_numpy(codes["aligned"]), torch.from_numpy(logvar),
                                 torch.from_numpy(factors), num_samples=200, seed=3,
                                 backend="reference")
    for key in ("marginal_entropy", "conditional_entropy", "per_factor"):
        np.testing.assert_allclose(fused[key], reference[key], rtol=1e-9, atol=1e-12)
    other_seed = mig_chen_details(codes["aligned"], logvar, factors, num_samples=200, seed=4)
    assert not np.array_equal(other_seed["marginal_entropy"], fused["marginal_entropy"])


# ---- bad input ----------------------------------------------------------------------------

def _call(metric, codes, factors):
    if metric in (dci, sap):
        return metric(codes, factors, codes, factors)
    if metric is mig_chen:
        return metric(codes, np.zeros(np.shape(codes)), factors, num_samples=10)
    return metric(codes, factors)


@pytest.mark.parametrize("metric", [mig, mig_chen, dci, sap, factor_vae_score, beta_vae_score])
@pytest.mark.parametrize("case, match", [
    ("non-integer factors", "integer-valued"),
    ("string factors", "integer-valued"),
    ("row mismatch", "rows but"),
    ("one row", "at least 2 rows"),
    ("nan codes", "NaN"),
    ("constant factor", "single value"),
    ("1-D codes", "2-D"),
])
def test_bad_input_raises(metric, case, match):
    rng = np.random.default_rng(14)
    codes, factors = rng.standard_normal((40, 3)), rng.integers(3, size=(40, 2))
    if case == "non-integer factors":
        factors = factors + 0.5
    elif case == "string factors":
        factors = factors.astype(str)
    elif case == "row mismatch":
        factors = factors[:-1]
    elif case == "one row":
        codes, factors = codes[:1], factors[:1]
    elif case == "nan codes":
        codes[3, 1] = np.nan
    elif case == "constant factor":
        factors[:, 1] = 4
    elif case == "1-D codes":
        codes = codes[:, 0]
    with pytest.raises(ValueError, match=match):
        _call(metric, codes, factors)


def test_bad_input_raises_specific():
    rng = np.random.default_rng(15)
    codes, factors = rng.standard_normal((40, 3)), rng.integers(3, size=(40, 2))
    assert mig(codes, factors.astype(np.float32)) == mig(codes, factors)  # whole floats are fine
    with pytest.raises(ValueError, match="codes needs at least 2 columns"):
        mig(codes[:, :1], factors)
    with pytest.raises(ValueError, match="codes_test has 2 dimensions"):
        sap(codes, factors, codes[:, :2], factors)
    with pytest.raises(ValueError, match="factors_test has 1 factors"):
        dci(codes, factors, codes, factors[:, :1])
    with pytest.raises(ValueError, match="logvar must have the shape of mu"):
        mig_chen(codes, np.zeros((40, 2)), factors)
    with pytest.raises(ValueError, match="batch_size must be an int >= 2"):
        factor_vae_score(codes, factors, batch_size=1)
    with pytest.raises(ValueError, match="num_bins"):
        mig(codes, factors, num_bins=0)
    with pytest.raises(ValueError, match="factors needs at least 2 columns"):
        beta_vae_score(codes, factors[:, :1])
    with pytest.raises(ValueError, match="constant"):
        gaussian_total_correlation(np.concatenate([codes, np.ones((40, 1))], 1))
    with pytest.raises(ValueError, match="singular"):
        gaussian_total_correlation(np.concatenate([codes, codes[:, :1] * 2], 1))
    with pytest.raises(ValueError, match="constant"):
        hoyer_sparsity(np.concatenate([codes, np.zeros((40, 1))], 1))
    with pytest.raises(ValueError, match="codes contains NaN"):
        hoyer_sparsity(np.where(codes > 2, np.inf, codes))
