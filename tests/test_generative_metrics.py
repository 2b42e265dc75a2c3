"""Sample, code and traversal scores: the plain metric functions, the dSprites factor classes and
the classifier that judges samples."""
import numpy as np
import pytest
import torch

from msvae import metrics
from msvae.data import CLASS_SIZES, DSprites, factor_classes
from msvae.evaluation import factor_classifier, train_factor_classifier_in_background
from msvae.models.factor_classifier import FactorClassifier


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert metrics.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    b = a * np.array([2.0, 1.0, 1.0]) + np.array([1.0, 0.0, 0.0])
    # per dimension (m_a - m_b)^2 + (s_a - s_b)^2 for diagonal covariances: 1 + (1 - 2)^2 in the first
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    assert metrics.frechet_distance(a, b) == pytest.approx(
        (a.mean(0) - b.mean(0)) @ (a.mean(0) - b.mean(0)) + np.trace(sa + sb)
        - 2 * np.trace(np.real(__import__("scipy").linalg.sqrtm(sa @ sb))), rel=1e-6)
    assert metrics.frechet_distance(a, b) == pytest.approx(2.0, abs=0.1)
    with pytest.raises(ValueError, match="same width"):
        metrics.frechet_distance(a, a[:, :2])


def test_factor_coverage_is_a_total_variation_distance():
    data = np.array([[0, 1], [1, 1], [2, 0], [0, 0]])
    assert metrics.factor_coverage(data, data, [3, 2]).tolist() == [0.0, 0.0]
    only_zero = np.zeros((5, 2), dtype=int)
    tv = metrics.factor_coverage(only_zero, data, [3, 2])
    assert tv.tolist() == pytest.approx([0.5, 0.5])
    with pytest.raises(ValueError, match="must agree on the number of factors"):
        metrics.factor_coverage(data, data, [3])


def test_code_leak_is_high_for_a_copied_factor_and_zero_for_noise():
    rng = np.random.default_rng(1)
    classes = np.stack([rng.integers(0, 3, 2000), rng.integers(0, 8, 2000)], 1)
    noise = rng.normal(size=(2000, 6))
    copy = noise.copy()
    copy[:, 0] = classes[:, 1] + 0.1 * rng.normal(size=2000)  # w_0 encodes the second factor
    copy[:, 1] = np.eye(3)[classes[:, 0]] @ np.array([-1.0, 0.0, 1.0]) * 0.3 + 0.1 * rng.normal(size=2000)
    leak_noise = metrics.code_leak(noise, classes)
    leak_copy = metrics.code_leak(copy, classes)
    assert np.abs(leak_noise).max() < 0.05
    assert leak_copy.min() > 0.6
    wide = rng.normal(size=(400, 100))  # wider than max_components: reduced by PCA first
    assert metrics.code_leak(wide, classes[:400]).shape == (2,)


def test_leak_of_z_separates_duplicating_z_from_adding_what_z_misses():
    """Factor 0 is captured by z; factor 1 (8 classes) only coarsely (z sees class // 4). A ``w``
    that carries factor 1's fine part (class % 4) predicts factor 1 itself — ``code_leak`` is high
    — but not what z says about it: ``code_leak`` of ``predicted_classes(z)`` is ~0. A ``w`` that
    copies z's factor 0 is high on both; noise on neither."""
    rng = np.random.default_rng(2)
    n = 3000
    classes = np.stack([rng.integers(0, 4, n), rng.integers(0, 8, n)], 1)
    z = np.stack([classes[:, 0] + 0.1 * rng.normal(size=n), classes[:, 1] // 4 + 0.1 * rng.normal(size=n),
                  rng.normal(size=n)], 1)
    predicted, accuracy = metrics.predicted_classes(z, classes)
    assert accuracy[0] > 0.95 and 0.08 < accuracy[1] < 0.3  # z knows factor 1 in part (chance-corrected 1/7 at best)
    fine = np.stack([classes[:, 1] % 4 + 0.1 * rng.normal(size=n), rng.normal(size=n)], 1)
    copy = np.stack([classes[:, 0] + 0.3 * rng.normal(size=n), rng.normal(size=n)], 1)
    noise = rng.normal(size=(n, 2))
    assert metrics.code_leak(fine, classes)[1] > 0.2  # it predicts the factor...
    assert abs(metrics.code_leak(fine, predicted)[1]) < 0.05  # ...but not what z says of it
    assert metrics.code_leak(copy, predicted)[0] > 0.8
    assert np.abs(metrics.code_leak(noise, predicted)).max() < 0.05
    with pytest.raises(ValueError, match="at least 10 rows"):
        metrics.predicted_classes(z[:5], classes[:5])


def _render_traversal(codes):
    """A decoder that renders the factors directly: z_0 -> pos_x, z_1 -> pos_y (others fixed)."""
    idx = np.clip(((codes + 2.5) / 5 * 31.999).astype(int), 0, 31)
    factors = np.stack([np.zeros(len(codes), int), np.full(len(codes), 3), np.zeros(len(codes), int),
                        idx[:, 0], idx[:, 1]], 1)
    return factors


def test_traversal_fidelity_is_one_for_a_decoder_that_renders_the_factors():
    values = np.linspace(-2.5, 2.5, 9)
    sweeps, own = [], []
    rng = np.random.default_rng(0)
    for base in rng.uniform(-2, 2, (5, 2)):
        for k, factor in ((0, 3), (1, 4)):
            codes = np.repeat(base[None], len(values), 0)
            codes[:, k] = values
            sweeps.append(factor_classes(_render_traversal(codes)))
            own.append(factor)
    faithful = metrics.traversal_fidelity(np.stack(sweeps), np.array(own))
    assert faithful["score"] == 1.0
    # an entangled decoder: the traversal also moves another factor at every step
    entangled = np.stack(sweeps).copy()
    entangled[:, :, 1] = np.arange(9) % 6
    assert metrics.traversal_fidelity(entangled, np.array(own))["score"] == 0.0
    # a traversal that changes nothing scores 0 however still it is
    frozen = np.repeat(np.stack(sweeps)[:, :1], 9, 1)
    assert metrics.traversal_fidelity(frozen, np.array(own))["score"] == 0.0
    with pytest.raises(ValueError, match="own must be"):
        metrics.traversal_fidelity(np.stack(sweeps), np.array(own) + 5)


def test_factor_classes_are_coarse_and_respect_the_squares_symmetry():
    factors = DSprites.sample_factors(1000, rng=0)
    classes = factor_classes(factors)
    assert classes.shape == (1000, 5) and classes.dtype == np.int64
    assert (classes.max(0) < np.array(CLASS_SIZES)).all() and classes.min() >= 0
    np.testing.assert_array_equal(classes[:, [0, 1]], factors[:, [0, 1]])
    np.testing.assert_array_equal(classes[:, 3:], factors[:, 3:] // 4)
    first, last = np.array([[0, 0, 0, 0, 0]]), np.array([[0, 0, 39, 0, 0]])  # 0 and 2 pi
    assert factor_classes(first)[0, 2] == factor_classes(last)[0, 2] == 0


@pytest.fixture(scope="module")
def classifier():
    dataset = DSprites()
    train, test = DSprites.split(0.1, seed=0)
    model, accuracy = factor_classifier(dataset, train, test, steps=150, progress=False)
    return dataset, test, model, accuracy


def test_factor_classifier_is_trained_seeded_and_cached(classifier):
    dataset, test, model, accuracy = classifier
    assert isinstance(model, FactorClassifier) and len(accuracy) == 5
    assert accuracy[3] > 0.5 and accuracy[4] > 0.5  # positions are easy; chance is 1/8
    train, _ = DSprites.split(0.1, seed=0)
    again, again_accuracy = factor_classifier(dataset, train, test, steps=150, progress=False)
    assert again_accuracy == accuracy  # loaded from the cache
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)


def test_the_classifier_trained_in_a_background_process_is_the_one_trained_here(tmp_path, monkeypatch):
    dataset = DSprites()
    train, test = DSprites.split(0.1, seed=0)
    monkeypatch.setenv("MSVAE_CACHE", str(tmp_path / "here"))
    torch.set_num_threads(1)  # the background process trains on one thread
    here, here_accuracy = factor_classifier(dataset, train, test, steps=20, seed=3, progress=False)
    monkeypatch.setenv("MSVAE_CACHE", str(tmp_path / "there"))  # the spawned process inherits it
    future = train_factor_classifier_in_background(dataset, train, test, steps=20, seed=3)
    assert future is not None
    future.result(timeout=300)
    assert len(list((tmp_path / "there").glob("*.pt"))) == 1  # it trained into the cache
    there, there_accuracy = factor_classifier(dataset, train, test, steps=20, seed=3, progress=False,
                                              background=future)
    assert there_accuracy == here_accuracy
    for a, b in zip(here.state_dict().values(), there.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # cached: nothing to start
    assert train_factor_classifier_in_background(dataset, train, test, steps=20, seed=3) is None


def test_frechet_distance_of_classifier_features(classifier):
    dataset, test, model, _ = classifier
    rng = np.random.default_rng(0)
    real = dataset.images(rng.choice(test, 600, replace=False))
    other = dataset.images(rng.choice(test, 600, replace=False))
    factors = DSprites.sample_factors(600, rng=1)
    factors[:, 0] = 0  # only squares ...
    factors[:, 3] = factors[:, 3] // 2  # ... in the left half
    skewed = dataset.render(factors)
    shuffled = real.flatten(1)[:, torch.randperm(64 * 64)].view_as(real)  # pixels shuffled
    feats = {name: model.embed(images)[0] for name, images in
             (("real", real), ("other", other), ("skewed", skewed), ("shuffled", shuffled))}
    same = metrics.frechet_distance(feats["real"], feats["real"])
    fresh = metrics.frechet_distance(feats["real"], feats["other"])
    assert abs(same) < 1e-6 * max(1.0, fresh)
    assert metrics.frechet_distance(feats["real"], feats["skewed"]) > 3 * fresh
    assert metrics.frechet_distance(feats["real"], feats["shuffled"]) > 3 * fresh


def test_a_small_evaluation_is_quiet():
    """A few held-out images with many factor values: the report has its numbers and no
    scikit-learn small-sample warnings."""
    import warnings

    from msvae.data import DSprites
    from msvae.evaluation import disentanglement_report

    idx = np.random.default_rng(0).choice(len(DSprites()), 100, replace=False)
    factors = DSprites().factors(idx)
    mu = torch.as_tensor(factors[:, 3:5], dtype=torch.float32) + 0.1 * torch.randn(100, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = disentanglement_report(mu, torch.zeros_like(mu), factors)
    assert report["mig"] is not None
    assert not [w for w in caught if "unique classes" in str(w.message) or "least populated" in str(w.message)]
