"""msvae.metrics.tabular: own implementations, cross-checked against SDMetrics on small frames."""
import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from msvae.metrics import tabular  # noqa: E402


def frames(seed=0, n=300, m=250):
    rng = np.random.default_rng(seed)

    def table(k, shift):
        x = rng.normal(shift, 1, k)
        return pd.DataFrame({
            "x": x,
            "y": 2 * x + rng.normal(0, 1 + shift, k),
            "n": rng.integers(0, 5, k),
            "c": rng.choice(["a", "b", "c"], k, p=[0.5, 0.3, 0.2] if shift == 0 else [0.2, 0.3, 0.5]),
            "d": np.where(rng.random(k) < 0.1, None, rng.choice(["u", "v"], k)),
        })

    return table(n, 0.0), table(m, 0.5)


def test_single_columns_match_sdmetrics():
    sdm = pytest.importorskip("sdmetrics.single_column")
    real, syn = frames()
    for column in ("x", "y", "n"):
        assert tabular.ks_complement(real[column], syn[column]) == pytest.approx(
            sdm.KSComplement.compute(real[column], syn[column]), abs=1e-12)
    for column in ("c", "d"):
        assert tabular.tv_complement(real[column], syn[column]) == pytest.approx(
            sdm.TVComplement.compute(real[column], syn[column]), abs=1e-12)


def test_column_pairs_match_sdmetrics():
    sdm = pytest.importorskip("sdmetrics.column_pairs")
    real, syn = frames(1)
    ours = tabular.correlation_similarity(real["x"], real["y"], syn["x"], syn["y"])
    assert ours == pytest.approx(sdm.CorrelationSimilarity.compute(real[["x", "y"]], syn[["x", "y"]],
                                                                   coefficient="Pearson"), abs=1e-12)
    assert ours < 1.0
    for a, b, numeric in (("c", "d", (False, False)), ("x", "c", (True, False)), ("x", "y", (True, True))):
        theirs = sdm.ContingencySimilarity.compute(
            real[[a, b]], syn[[a, b]], continuous_column_names=[c for c, n in zip((a, b), numeric) if n])
        assert tabular.contingency_similarity(real[a], real[b], syn[a], syn[b], numeric) == pytest.approx(
            theirs, abs=1e-12), (a, b)


def test_quality_is_one_for_identical_tables_and_lower_otherwise():
    real, syn = frames(2)
    same = tabular.quality(real, real, discrete_columns=["n"])
    assert same == {"column_shapes": 1.0, "column_pair_trends": 1.0, "quality": 1.0}
    scores = tabular.quality(real, syn, discrete_columns=["n"])
    assert 0.5 < scores["quality"] < 0.99
    assert len(tabular.column_pair_trends(real, syn)) == 10  # every pair of 5 columns
    with pytest.raises(ValueError, match="synthetic lacks"):
        tabular.quality(real, syn.drop(columns="x"))
    with pytest.raises(ValueError, match="synthetic has no rows"):
        tabular.quality(real, syn.iloc[:0])


def test_dcr_matches_sdmetrics_distances():
    dcr_utils = pytest.importorskip("sdmetrics.single_table.privacy.dcr_utils")
    real, syn = frames(3, n=120, m=60)
    metadata = {"columns": {"x": {"sdtype": "numerical"}, "y": {"sdtype": "numerical"},
                            "n": {"sdtype": "numerical"}, "c": {"sdtype": "categorical"},
                            "d": {"sdtype": "categorical"}}}
    theirs = dcr_utils.calculate_dcr(syn, real, metadata).to_numpy()
    np.testing.assert_allclose(tabular.distance_to_closest_record(syn, real, chunk=7), theirs, atol=1e-12)
    assert np.all(tabular.distance_to_closest_record(real, real) == 0.0)


def test_privacy_detection_and_efficacy_behave():
    real, syn = frames(4, n=600, m=600)
    copy = tabular.dcr_baseline_protection(real, real)
    assert copy["score"] == 0.0 and copy["random_median_dcr"] > 0  # copying the data is not private
    assert 0.0 < tabular.dcr_baseline_protection(real, syn)["score"] <= 1.0
    random = tabular.random_table(real, 500, seed=1)
    assert random["d"].isna().mean() == pytest.approx(real["d"].isna().mean(), abs=0.05)
    assert set(random["c"]) <= set(real["c"]) and random["n"].between(0, 4).all()
    assert tabular.detection(real, real.sample(frac=1.0, random_state=0))["score"] > 0.8
    assert tabular.detection(real, syn)["auc"] > 0.6  # the shifted table is told apart
    train, test = real.iloc[:400], real.iloc[400:]
    efficacy = tabular.ml_efficacy(syn, train, test, target="c")
    assert efficacy["metric"] == "macro_f1" and 0.0 <= efficacy["synthetic"] <= 1.0
    regression = tabular.ml_efficacy(train, train, test, target="y")
    assert regression["metric"] == "r2" and regression["synthetic"] == pytest.approx(regression["real"])
    assert regression["real"] > 0.5
    # a synthetic table that lacks a category of the real one, and has a single class
    one_class = syn.assign(c="a", d="u")
    assert tabular.ml_efficacy(one_class, train, test, target="c")["synthetic"] >= 0.0


def test_overfitting_protection_tells_copies_from_fresh_rows():
    """Rows drawn afresh from the real rows' distribution are no nearer the training rows than the
    held-out ones (share ~0.5, score ~1); copies of training rows are (score well below 1); the
    held-out rows themselves are nearest the held-out rows (share 0)."""
    fresh, _ = frames(5, n=1200, m=10)
    train, holdout, new = fresh.iloc[:600], fresh.iloc[600:900], fresh.iloc[900:]
    independent = tabular.dcr_overfitting_protection(train, holdout, new, discrete_columns=["n"])
    assert 0.35 < independent["closer_to_training"] < 0.65 and independent["score"] > 0.7
    copied = tabular.dcr_overfitting_protection(train, holdout, train, discrete_columns=["n"])
    assert copied["closer_to_training"] > 0.6 and copied["score"] < independent["score"] - 0.2
    itself = tabular.dcr_overfitting_protection(train, holdout, holdout, discrete_columns=["n"])
    assert itself == {"score": 1.0, "closer_to_training": 0.0}
    with pytest.raises(ValueError, match="lacks"):
        tabular.dcr_overfitting_protection(train, holdout.drop(columns="x"), new)
