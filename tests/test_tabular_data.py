"""msvae.data.tabular (the reversible table transformer) and msvae.data.tables (offline tables)."""
import numpy as np
import pytest

pd = pytest.importorskip("pandas")

from msvae.data.tables import ADULT_DISCRETE, load_adult, load_sklearn_table, read_table  # noqa: E402
from msvae.data.tabular import TabularTransformer, infer_kind  # noqa: E402


def mixed_frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "age": rng.integers(17, 90, n),                                     # integer
        "income": np.where(rng.random(n) < 0.5, rng.normal(10, 1, n), rng.normal(50, 5, n)),
        "gain": np.where(rng.random(n) < 0.9, 0.0, rng.exponential(1000, n)).round(),  # spiky, >= 0
        "city": rng.choice(["a", "b", "c"], n),
        "flag": rng.random(n) < 0.3,
        "hours": np.where(rng.random(n) < 0.1, np.nan, rng.normal(40, 5, n)),  # 10% missing
        "job": np.where(rng.random(n) < 0.05, None, rng.choice(["x", "y"], n)),
        "rating": pd.Categorical(rng.choice(["lo", "hi"], n)),
    })


@pytest.mark.parametrize("continuous", ["mode", "quantile"])
def test_round_trip_keeps_values_types_and_missing(continuous):
    df = mixed_frame()
    transformer = TabularTransformer(continuous).fit(df)
    X = transformer.transform(df)
    assert X.shape == (len(df), transformer.num_features) and X.dtype == np.float32
    assert sum(s.size for s in transformer.spans) == X.shape[1]
    back = transformer.inverse_transform(X)
    assert list(back.columns) == list(df.columns)
    for column in ("age", "city", "flag", "job", "rating"):
        assert back[column].dtype == df[column].dtype, column
        assert (back[column].astype(str) == df[column].astype(str)).all(), column
    tolerance = 1e-4 if continuous == "mode" else 1e-2  # float32 offsets; quantile interpolation
    for column in ("income", "gain", "hours"):
        np.testing.assert_allclose(back[column], df[column], rtol=tolerance, atol=tolerance)
    assert back["hours"].isna().sum() == df["hours"].isna().sum()


def test_layout_and_inferred_kinds():
    df = mixed_frame()
    kinds = {c: infer_kind(df[c]) for c in df.columns}
    assert kinds == {"age": "integer", "income": "continuous", "gain": "integer", "city": "categorical",
                     "flag": "categorical", "hours": "continuous", "job": "categorical",
                     "rating": "categorical"}
    transformer = TabularTransformer("mode").fit(df, discrete_columns=["age"])
    by_column = {}
    for span in transformer.spans:
        by_column.setdefault(span.column, []).append(span.kind)
    assert by_column["age"] == ["softmax"]                       # declared discrete
    assert by_column["hours"] == ["scalar", "softmax", "binary"]  # offset, mode, missing flag
    assert by_column["job"] == ["softmax"]                        # missing is a category
    starts = [s.start for s in transformer.spans]
    assert starts == sorted(starts) and starts[0] == 0


def test_inverse_respects_range_sign_and_integers():
    df = mixed_frame()
    transformer = TabularTransformer().fit(df)
    noise = np.random.default_rng(1).normal(0, 3, (300, transformer.num_features))
    back = transformer.inverse_transform(noise)  # arbitrary scores: far outside the data
    assert back["gain"].min() >= 0 and back["gain"].max() <= df["gain"].max()
    assert back["age"].between(df["age"].min(), df["age"].max()).all()
    assert (back["age"] == back["age"].round()).all() and back["age"].dtype == np.int64
    assert set(back["city"]) <= {"a", "b", "c"}
    # the missing flag comes back at the rate the scores say
    flag = [s for s in transformer.spans if s.column == "hours" and s.kind == "binary"][0]
    scores = transformer.transform(df)
    scores[:, flag.start] = np.arange(len(df)) % 4 == 0
    assert transformer.inverse_transform(scores)["hours"].isna().mean() == pytest.approx(0.25)


def test_soft_one_hot_scores_decode_to_their_largest_entry():
    """A categorical block decodes by its largest score, not by rounding each entry (rounding
    would send ``[.2, .9, .1]`` and ``[.1, .3, .8]`` to the first category)."""
    df = pd.DataFrame({"city": ["a", "b", "c"] * 10})
    transformer = TabularTransformer().fit(df)
    assert transformer.num_features == 3
    back = transformer.inverse_transform(np.array([[.2, .9, .1], [.1, .3, .8], [.6, .7, .65]]))
    assert list(back["city"]) == ["b", "c", "b"]


def test_a_value_most_rows_hold_is_a_point_mass_decoded_exactly():
    """``gain`` is 0 in ~90 % of rows: that value is a mode of its own (std 0, offset 0), so every
    row whose mode is it decodes to exactly 0, whatever its offset score; a value held by fewer than
    ``POINT_MIN_ROWS`` rows is no point, however large its share of a small table."""
    from msvae.data.tabular import POINT_MIN_ROWS

    df = mixed_frame()
    transformer = TabularTransformer().fit(df)
    gain = next(c for c in transformer.columns if c.name == "gain")
    point = gain.stds == 0
    assert gain.means[point].tolist() == [0.0]
    assert gain.weights[point][0] == pytest.approx((df["gain"] == 0).mean())
    assert gain.weights.sum() == pytest.approx(1.0)
    offset, modes = [s for s in transformer.spans if s.column == "gain"]
    X = transformer.transform(df)
    zero = (df["gain"] == 0).to_numpy()
    at_point = X[:, modes.start + np.flatnonzero(point)[0]] == 1
    assert (at_point == zero).all() and (X[zero, offset.start] == 0).all()
    X[:, offset.start] = np.random.default_rng(0).uniform(-1, 1, len(df))  # any offset score
    assert (transformer.inverse_transform(X)["gain"][zero] == 0).all()
    # without points (point_share 1) the zeros go to a Gaussian mode and come back smeared
    smooth = TabularTransformer(point_share=1.0).fit(df)
    assert not (next(c for c in smooth.columns if c.name == "gain").stds == 0).any()
    Y = smooth.transform(df)
    start = next(s for s in smooth.spans if s.column == "gain").start
    Y[:, start] = np.random.default_rng(0).uniform(-1, 1, len(df))
    assert (smooth.inverse_transform(Y)["gain"][zero] != 0).mean() > 0.5
    # a table where every value is held by many rows: all points, an exact round trip
    coded = pd.DataFrame({"v": np.repeat([0.5, 1.25, 7.0], 40)})
    column = TabularTransformer().fit(coded).columns[0]
    assert sorted(column.means.tolist()) == [0.5, 1.25, 7.0] and (column.stds == 0).all()
    # a small table's repeated value stays smooth
    small = pd.DataFrame({"v": np.r_[np.zeros(POINT_MIN_ROWS - 1), np.linspace(1, 2, 11)]})
    assert not (TabularTransformer().fit(small).columns[0].stds == 0).any()


def test_bad_input_is_a_clear_error():
    df = mixed_frame(20)
    with pytest.raises(ValueError, match="df is empty"):
        TabularTransformer().fit(df.iloc[:0])
    with pytest.raises(ValueError, match="'hours' has no values"):
        TabularTransformer().fit(df.assign(hours=np.nan))
    with pytest.raises(ValueError, match="'when' has dtype datetime64"):
        TabularTransformer().fit(df.assign(when=pd.Timestamp("2020-01-01")))
    with pytest.raises(ValueError, match="'mixed' mixes strings with int"):
        TabularTransformer().fit(df.assign(mixed=["a", 1] * 10))
    with pytest.raises(ValueError, match=r"columns \['nope'\] are not in df"):
        TabularTransformer().fit(df, discrete_columns=["nope"])
    with pytest.raises(ValueError, match="column types must be one of"):
        TabularTransformer().fit(df, column_types={"age": "date"})
    with pytest.raises(ValueError, match="not fitted"):
        TabularTransformer().transform(df)
    with pytest.raises(ValueError, match="continuous must be one of"):
        TabularTransformer("minmax")
    with pytest.raises(ValueError, match=r"point_share must be in \(0, 1\]"):
        TabularTransformer(point_share=0)
    transformer = TabularTransformer().fit(df)
    with pytest.raises(ValueError, match="'city' has the category 'z', unseen"):
        transformer.transform(df.assign(city="z"))
    with pytest.raises(ValueError, match=r"data must have shape \[N, "):
        transformer.inverse_transform(np.zeros((3, 2)))


def test_bundled_and_sklearn_tables(tmp_path):
    adult = load_adult()
    assert adult.shape == (32561, 15)
    assert adult.isna().sum().to_dict() == {**{c: 0 for c in adult.columns}, "workclass": 1836,
                                            "occupation": 1843, "native_country": 583}
    assert (adult["income"].value_counts().to_dict() == {"<=50K": 24720, ">50K": 7841})
    assert set(ADULT_DISCRETE) == {c for c in adult.columns if adult[c].dtype == object}
    table, discrete = load_sklearn_table("wine")
    assert table.shape == (178, 14) and discrete == ("target",)
    with pytest.raises(ValueError, match="name must be one of"):
        load_sklearn_table("mnist")
    adult.head(50).to_csv(tmp_path / "t.csv", index=False)
    assert read_table(tmp_path / "t.csv").shape == (50, 15)
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "missing.csv")
