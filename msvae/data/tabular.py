"""A reversible transformer between mixed-type tables (pandas DataFrames) and float matrices.

Column kinds (declared, or inferred: numbers are continuous, integral numbers integer, strings,
booleans and categoricals categorical):

- ``continuous``: mode-specific normalisation (``continuous="mode"``, as in CTGAN): a variational
  Gaussian mixture per column; a value becomes the one-hot of a mode drawn from its posterior and
  its offset from that mode's mean in units of 4 standard deviations, in [-1, 1]. A value held by
  at least ``point_share`` of the rows (and by ``POINT_MIN_ROWS`` rows or more; e.g. Adult's
  ``capital_gain`` = 0 in 92 % of rows) is a mode of its own, a point mass (standard deviation 0):
  its offset is 0 and it decodes to exactly that value; the mixture is fitted to the other values.
  Or quantile scaling (``continuous="quantile"``): the standard-normal score of the value's rank
  among the column's other (non-point) values; where the column has point masses (the same
  rule), a one-hot block follows, one entry per point and one for every other value, and a
  point's score is 0 (it decodes to exactly the point).
- ``integer``: as continuous, rounded on the way back.
- ``categorical``: one-hot over the categories seen when fitting.

On the way back continuous and integer values are clipped to the column's observed range, so a
column that is never negative stays so. Missing values: a categorical column's missing values
are one more category; a numeric column with missing values gets a 0/1 missingness indicator
(its values filled with the median), and values come back missing where the indicator is > 0.5.

The matrix layout is ``spans``: ``Span(column, kind, start, size, fixed_by)`` with kind
``"scalar"`` (a real value), ``"softmax"`` (a one-hot block) or ``"binary"`` (a 0/1 indicator),
which a model uses to pick its likelihood per block. A scalar's ``fixed_by`` lists the features
(its point modes' one-hot entries, its missingness indicator) whose 1 makes the row's value
certain: the scalar then carries no information (0, or the median's offset), and a likelihood
must not score it — a density on a value that is certain grows without bound as its scale
shrinks.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Iterable, NamedTuple

import numpy as np
from scipy.special import ndtr, ndtri

KINDS = ("continuous", "integer", "categorical")
CONTINUOUS_METHODS = ("mode", "quantile")
POINT_MIN_ROWS = 10  # a point mass needs this many rows, so a small table's values are not memorised


class Span(NamedTuple):
    column: str
    kind: str  # "scalar" | "softmax" | "binary"
    start: int
    size: int
    fixed_by: tuple = ()  # a scalar's: the features whose 1 makes its value certain (a point, missing)


@dataclass
class _Column:
    name: str
    kind: str
    dtype: object
    missing: bool
    low: float = 0.0
    high: float = 0.0
    fill: float = 0.0
    categories: list = field(default_factory=list)
    weights: np.ndarray | None = None  # mode-specific normalisation: the kept mixture components
    means: np.ndarray | None = None
    stds: np.ndarray | None = None  # 0 for a point mass
    quantiles: np.ndarray | None = None  # quantile scaling: values at evenly spaced ranks


def _interp_ranks(values: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Ranks in [0, 1] of ``values`` by the quantile table (ties in the table get their middle rank)."""
    grid = np.linspace(0, 1, len(quantiles))
    low = np.interp(values, quantiles, grid, left=0.0, right=1.0)
    high = -np.interp(-values, -quantiles[::-1], -grid[::-1], left=-1.0, right=-0.0)
    return 0.5 * (low + high)


def _pandas():
    try:
        import pandas
    except ImportError as error:  # pragma: no cover - pandas is in the [tabular] extra
        raise ImportError("msvae.data.tabular needs pandas: pip install 'msvae[tabular]'") from error
    return pandas


def infer_kind(series) -> str:
    """The column kind of a pandas Series; ValueError for one it cannot handle."""
    pd = _pandas()
    dtype = series.dtype
    if (pd.api.types.is_bool_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype)
            or pd.api.types.is_string_dtype(dtype)):
        values = series.dropna()
        if pd.api.types.is_object_dtype(dtype) and not values.map(
                lambda v: isinstance(v, (str, bool, np.bool_))).all():
            bad = values[~values.map(lambda v: isinstance(v, (str, bool, np.bool_)))].iloc[0]
            raise ValueError(f"column {series.name!r} mixes strings with {type(bad).__name__} values "
                             f"(e.g. {bad!r}); declare its type or clean it")
        return "categorical"
    if pd.api.types.is_integer_dtype(dtype):
        return "integer"
    if pd.api.types.is_float_dtype(dtype):
        values = series.dropna().to_numpy(dtype=np.float64)
        return "integer" if len(values) and np.all(values == np.round(values)) else "continuous"
    raise ValueError(f"column {series.name!r} has dtype {dtype}, which msvae cannot model "
                     f"(numbers, strings, booleans and categoricals are supported)")


class TabularTransformer:
    """``fit(df)`` then ``transform(df) -> [N, F]`` float32 and ``inverse_transform([N, F]) -> df``.

    Args:
        continuous: ``"mode"`` (variational Gaussian mixture per column) or ``"quantile"``.
        max_modes: mixture components per column before pruning (modes of weight < 0.005 go).
        point_share: the share of rows a value must hold to be a point-mass mode (``1`` for none).
        seed: seeds the mixtures and the mode draws of ``transform``.
    """

    def __init__(self, continuous: str = "mode", max_modes: int = 10, seed: int = 0,
                 point_share: float = 0.05):
        if continuous not in CONTINUOUS_METHODS:
            raise ValueError(f"continuous must be one of {CONTINUOUS_METHODS}, got {continuous!r}")
        if max_modes < 1:
            raise ValueError(f"max_modes must be >= 1, got {max_modes}")
        if not 0 < point_share <= 1:
            raise ValueError(f"point_share must be in (0, 1], got {point_share}")
        self.continuous, self.max_modes, self.seed = continuous, max_modes, seed
        self.point_share = point_share
        self.columns: list[_Column] = []
        self.spans: list[Span] = []

    @property
    def num_features(self) -> int:
        return sum(span.size for span in self.spans)

    def fit(self, df, discrete_columns: Iterable[str] = (),
            column_types: dict[str, str] | None = None) -> "TabularTransformer":
        """Learns every column's encoding. ``discrete_columns`` are categorical; ``column_types``
        maps columns to a kind of ``KINDS``; other columns' kinds are inferred."""
        pd = _pandas()
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}")
        if df.shape[0] == 0 or df.shape[1] == 0:
            raise ValueError(f"df is empty (shape {df.shape})")
        if len(set(df.columns)) != df.shape[1]:
            raise ValueError("df has duplicate column names")
        types = {name: "categorical" for name in discrete_columns}
        types.update(column_types or {})
        unknown = sorted(set(types) - set(df.columns), key=str)
        if unknown:
            raise ValueError(f"columns {unknown} are not in df")
        bad = {k: v for k, v in types.items() if v not in KINDS}
        if bad:
            raise ValueError(f"column types must be one of {KINDS}, got {bad}")
        rng = np.random.default_rng(self.seed)
        self.columns, self.spans, start = [], [], 0
        for name in df.columns:
            series = df[name]
            if series.isna().all():
                raise ValueError(f"column {name!r} has no values (all missing)")
            kind = types.get(name) or infer_kind(series)
            column = self._fit_column(series, kind, rng)
            self.columns.append(column)
            self.spans += self._spans(column, start)
            start = self.spans[-1].start + self.spans[-1].size
        return self

    def _fit_column(self, series, kind: str, rng: np.random.Generator) -> _Column:
        missing = bool(series.isna().any())
        column = _Column(series.name, kind, series.dtype, missing)
        if kind == "categorical":
            values = series.dropna().unique().tolist()
            try:
                values = sorted(values)
            except TypeError:
                values = sorted(values, key=str)
            column.categories = values + ([None] if missing else [])
            return column
        try:
            values = series.dropna().to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ValueError(f"column {series.name!r} was declared {kind} but holds non-numbers") from error
        column.low, column.high, column.fill = values.min(), values.max(), float(np.median(values))
        unique, counts = np.unique(values, return_counts=True)
        point = (counts >= self.point_share * len(values)) & (counts >= POINT_MIN_ROWS)
        rest = values[~np.isin(values, unique[point])]
        if len(np.unique(rest)) < 2:  # nothing left to fit a mixture to: every value is a point
            point = np.isin(unique, rest) | point
            rest = rest[:0]
        weights, means, stds = [counts[point] / len(values)], [unique[point]], [np.zeros(point.sum())]
        if self.continuous == "quantile":  # the points, then one entry for every other value
            column.quantiles = np.quantile(rest if len(rest) else values,
                                           np.linspace(0, 1, min(1000, max(len(rest), 1))))
            if point.any():
                if len(rest):
                    weights.append([len(rest) / len(values)]), means.append([np.median(rest)]), stds.append([1.0])
                column.weights, column.means, column.stds = (np.concatenate(a) for a in (weights, means, stds))
            return column
        from sklearn.mixture import BayesianGaussianMixture

        if len(rest):
            mixture = BayesianGaussianMixture(
                n_components=min(self.max_modes, len(np.unique(rest))),
                weight_concentration_prior_type="dirichlet_process", weight_concentration_prior=1e-3,
                max_iter=100, n_init=1, random_state=int(rng.integers(2**31)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence warnings on spiky columns
                mixture.fit(rest[:, None])
            keep = mixture.weights_ > 5e-3
            if not keep.any():
                keep = mixture.weights_ == mixture.weights_.max()
            weights.append(mixture.weights_[keep] / mixture.weights_[keep].sum() * len(rest) / len(values))
            means.append(mixture.means_[keep, 0])
            stds.append(np.sqrt(mixture.covariances_[keep].reshape(-1)).clip(min=1e-6))
        column.weights, column.means, column.stds = (np.concatenate(a) for a in (weights, means, stds))
        return column

    def _spans(self, column: _Column, start: int) -> list[Span]:
        """The column's spans from feature ``start``; its scalar is ``fixed_by`` its point modes'
        one-hot entries and its missingness indicator (where they are 1, the value is certain)."""
        spans = []
        for kind, size in self._layout(column):
            spans.append(Span(str(column.name), kind, start, size))
            start += size
        if spans[0].kind == "scalar":
            fixed = [] if column.stds is None else [spans[1].start + i for i in np.flatnonzero(column.stds == 0)]
            fixed += [span.start for span in spans if span.kind == "binary"]
            spans[0] = spans[0]._replace(fixed_by=tuple(int(i) for i in fixed))
        return spans

    def _layout(self, column: _Column) -> list[tuple[str, int]]:
        if column.kind == "categorical":
            return [("softmax", len(column.categories))]
        layout = [("scalar", 1)]
        if column.means is not None:  # mode-normalised, or quantile-scored with point masses
            layout.append(("softmax", len(column.means)))
        return layout + ([("binary", 1)] if column.missing else [])

    def state_dict(self) -> dict:
        """The fitted transformer as plain containers (lists, strings, numbers), for saving with
        ``torch.save`` and loading with ``weights_only=True``."""
        self._check_fitted()
        columns = []
        for c in self.columns:
            state = {"name": c.name, "kind": c.kind, "dtype": str(c.dtype), "missing": c.missing,
                     "low": float(c.low), "high": float(c.high), "fill": float(c.fill),
                     "categories": [v.item() if isinstance(v, np.generic) else v for v in c.categories]}
            for key in ("weights", "means", "stds", "quantiles"):
                value = getattr(c, key)
                state[key] = None if value is None else value.tolist()
            columns.append(state)
        return {"continuous": self.continuous, "max_modes": self.max_modes, "seed": self.seed,
                "point_share": self.point_share, "columns": columns}

    @classmethod
    def from_state(cls, state: dict) -> "TabularTransformer":
        """The transformer saved by ``state_dict``."""
        transformer = cls(state["continuous"], state["max_modes"], state["seed"], state.get("point_share", 1.0))
        start = 0
        for saved in state["columns"]:
            saved = dict(saved)
            dtype = saved.pop("dtype")
            arrays = {k: None if saved[k] is None else np.asarray(saved.pop(k))
                      for k in ("weights", "means", "stds", "quantiles")}
            column = _Column(dtype=dtype if dtype == "category" else np.dtype(dtype),
                             **{k: v for k, v in saved.items() if k in ("name", "kind", "missing", "low",
                                                                         "high", "fill", "categories")},
                             **arrays)
            transformer.columns.append(column)
            transformer.spans += transformer._spans(column, start)
            start = transformer.spans[-1].start + transformer.spans[-1].size
        return transformer

    def _check_fitted(self) -> None:
        if not self.columns:
            raise ValueError("the transformer is not fitted: call fit(df) first")

    def transform(self, df, seed: int | None = None) -> np.ndarray:
        """``df`` (the fitted columns) -> ``[N, num_features]`` float32. Modes are drawn from
        their posterior with ``seed`` (default: the transformer's)."""
        self._check_fitted()
        pd = _pandas()
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"df must be a pandas DataFrame, got {type(df).__name__}")
        missing = [c.name for c in self.columns if c.name not in df.columns]
        if missing:
            raise ValueError(f"df lacks the fitted columns {missing}")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        blocks = [self._transform_column(c, df[c.name], rng) for c in self.columns]
        return np.concatenate(blocks, axis=1).astype(np.float32)

    def _transform_column(self, column: _Column, series, rng: np.random.Generator) -> np.ndarray:
        n = len(series)
        isna = series.isna().to_numpy()
        if column.kind == "categorical":
            lookup = {value: i for i, value in enumerate(column.categories) if value is not None}
            codes = np.array([len(column.categories) - 1 if na else lookup.get(v, -1)
                              for v, na in zip(series.tolist(), isna)])
            if (codes < 0).any():
                unseen = series[codes < 0].iloc[0]
                raise ValueError(f"column {column.name!r} has the category {unseen!r}, unseen when fitting")
            return np.eye(len(column.categories), dtype=np.float32)[codes]
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
        values = np.where(isna, column.fill, values)
        if column.quantiles is not None:
            scores = ndtri(_interp_ranks(values, column.quantiles).clip(1e-7, 1 - 1e-7))
            blocks = [scores[:, None]]
            if column.means is not None:  # point masses: their one-hot entry, and a score of 0
                modes, at = self._points(column, values)
                blocks = [np.where(at, 0.0, scores)[:, None], np.eye(len(column.means))[modes]]
        else:
            modes, offset = self._modes(column, values, rng)
            blocks = [offset.clip(-0.99, 0.99)[:, None], np.eye(len(column.means))[modes]]
        if column.missing:
            blocks.append(isna[:, None].astype(np.float64))
        return np.concatenate(blocks, axis=1)

    @staticmethod
    def _points(column: _Column, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A quantile-scored column's entry per value ``[N]`` (a point's own, else the entry of
        every other value, else, where every entry is a point, the nearest) and whether the value
        is a point ``[N]``."""
        point = np.flatnonzero(column.stds == 0)
        at = values[:, None] == column.means[point]
        other = np.flatnonzero(column.stds > 0)
        fallback = (np.full(len(values), other[0]) if len(other)
                    else np.abs(values[:, None] - column.means).argmin(1))
        return np.where(at.any(1), point[at.argmax(1)], fallback), at.any(1)

    @staticmethod
    def _modes(column: _Column, values: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Each value's mode ``[N]`` (a point mass's own value goes to it; another value to a mode
        drawn from its posterior over the mixture's, or to the nearest point if there is no
        mixture) and its offset ``[N]`` (0 at a point)."""
        point = column.stds == 0
        smooth = np.flatnonzero(~point)
        if len(smooth):
            stds = column.stds[smooth]
            log_density = (np.log(column.weights[smooth]) - np.log(stds)
                           - 0.5 * ((values[:, None] - column.means[smooth]) / stds) ** 2)
            posterior = np.exp(log_density - log_density.max(1, keepdims=True))
            posterior /= posterior.sum(1, keepdims=True)
            modes = smooth[(posterior.cumsum(1) > rng.random((len(values), 1))).argmax(1)]
        else:
            modes = np.abs(values[:, None] - column.means).argmin(1)
        if point.any():
            at = values[:, None] == column.means[point]
            modes = np.where(at.any(1), np.flatnonzero(point)[at.argmax(1)], modes)
        std = column.stds[modes]
        offset = np.where(std > 0, (values - column.means[modes]) / (4 * np.where(std > 0, std, 1)), 0.0)
        return modes, offset

    def inverse_transform(self, data):
        """``[N, num_features]`` (array or tensor) -> a DataFrame with the fitted columns and dtypes.
        One-hot blocks are read by their largest entry (scores need not be normalised)."""
        self._check_fitted()
        pd = _pandas()
        data = np.asarray(data.detach().cpu() if hasattr(data, "detach") else data, dtype=np.float64)
        if data.ndim != 2 or data.shape[1] != self.num_features:
            raise ValueError(f"data must have shape [N, {self.num_features}], got {data.shape}")
        out, start = {}, 0
        for column in self.columns:
            width = sum(size for _, size in self._layout(column))
            out[column.name] = self._inverse_column(column, data[:, start:start + width])
            start += width
        return pd.DataFrame(out)

    def _inverse_column(self, column: _Column, block: np.ndarray):
        pd = _pandas()
        if column.kind == "categorical":
            values = [column.categories[i] for i in block.argmax(1)]
            series = pd.Series(values, dtype=object)
            if column.missing:
                series = series.where(series.notna(), None)
            return self._restore_dtype(series, column)
        if column.quantiles is not None:
            ranks = ndtr(block[:, 0])
            values = np.interp(ranks, np.linspace(0, 1, len(column.quantiles)), column.quantiles)
            if column.means is not None:
                modes = block[:, 1:1 + len(column.means)].argmax(1)
                values = np.where(column.stds[modes] == 0, column.means[modes], values)
        else:
            modes = block[:, 1:1 + len(column.means)].argmax(1)
            values = block[:, 0].clip(-1, 1) * 4 * column.stds[modes] + column.means[modes]
        values = values.clip(column.low, column.high)
        if column.kind == "integer":
            values = np.round(values)
        series = pd.Series(values)
        if column.missing:
            series[block[:, -1] > 0.5] = np.nan
        return self._restore_dtype(series, column)

    @staticmethod
    def _restore_dtype(series, column: _Column):
        try:
            if column.kind == "categorical" and column.missing:
                return series.astype(column.dtype) if str(column.dtype) == "category" else series
            return series.astype(column.dtype)
        except (TypeError, ValueError):
            return series
