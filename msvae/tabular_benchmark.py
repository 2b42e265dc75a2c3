"""Synthetic-table comparison: the multi-stage model, its stage 1 alone, and the peers — CTGAN and
TVAE (the ``ctgan`` package) at their default epochs and at msvae's wall time, SDV's Gaussian
copula.

Every synthesizer is fitted on the same training split of each table with each seed, samples as
many rows as the split has, and is scored against the real rows by ``msvae.metrics.tabular``
(quality, ML efficacy on the held-out split, detection, DCR privacy against random rows and
against held-out rows) and by SDMetrics' own ``QualityReport``, ``LogisticDetection`` and
``DCROverfittingProtection``; msvae's rows also carry its held-out likelihood bound
(``TabularSynthesizer.nll_bound``). ``run`` writes the rows as JSON (a rerun resumes: finished
rows are kept), a markdown table of mean +- std per metric, and figures (marginals real vs
synthetic, association-difference heatmaps, the multi-stage model's factor traversals).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from msvae.data.tables import ADULT_DISCRETE, load_adult, load_sklearn_table, read_table
from msvae.metrics import tabular as metrics

METRICS = ("quality", "sdmetrics_quality", "column_shapes", "column_pair_trends", "ml_efficacy",
           "detection", "sdmetrics_detection", "privacy", "overfitting_protection",
           "sdmetrics_overfitting_protection", "held_out_nll", "fit_seconds", "sample_seconds")
PEER_DEFAULT_EPOCHS = 300  # CTGAN's and TVAE's defaults in the ctgan package
EQUAL_TIME = "_equal_time"  # suffix of a peer trained for msvae's fit time on the same table and seed
REFERENCE = "real_held_out"  # the test split scored as a synthetic table (DCR only): the reference


def load_table(name: str, target: str | None = None, discrete_columns: Iterable[str] = ()):
    """``(df, discrete_columns, target)`` of a table: ``adult``, a scikit-learn table, or a CSV file
    (a name ending in ``.csv``; ``target`` names its prediction column, ``discrete_columns`` its
    categorical columns beyond the non-numeric ones)."""
    if name.endswith(".csv"):
        df = read_table(name)
        if target is None or target not in df.columns:
            raise ValueError(f"a CSV table needs target= one of its columns {list(df.columns)}, got {target!r}")
        discrete = set(discrete_columns) | {c for c in df.columns if not metrics._numeric(df[c])}
        return df, tuple(c for c in df.columns if c in discrete), target
    if name == "adult":
        return load_adult(), ADULT_DISCRETE, "income"
    df, discrete = load_sklearn_table(name)
    return df, discrete, "target"


def split(df, test_fraction: float = 0.2, seed: int = 0):
    """A fixed random train/test split of the rows (the same for every synthesizer and seed)."""
    order = np.random.default_rng(seed).permutation(len(df))
    cut = int(round(len(df) * (1 - test_fraction)))
    return df.iloc[order[:cut]].reset_index(drop=True), df.iloc[order[cut:]].reset_index(drop=True)


class GaussianCopula:
    """SDV's ``GaussianCopulaSynthesizer`` behind the ``fit(df, discrete_columns)`` / ``sample(n)``
    interface the benchmark uses."""

    def __init__(self, seed: int):
        self.seed = seed

    def fit(self, df, discrete_columns: Iterable[str] = ()) -> "GaussianCopula":
        from sdv.metadata import Metadata
        from sdv.single_table import GaussianCopulaSynthesizer

        discrete = set(discrete_columns)
        metadata = Metadata.load_from_dict({"tables": {"table": {"columns": {
            c: {"sdtype": "categorical" if c in discrete else "numerical"} for c in df.columns}}}})
        np.random.seed(self.seed)
        self.model = GaussianCopulaSynthesizer(metadata)
        self.model.fit({"table": df})  # sdv >= 2 takes {table name: frame}
        return self

    def sample(self, n: int):
        rows = self.model.sample(n)
        return rows["table"] if isinstance(rows, dict) else rows


def make_synthesizers(epochs: int, stage2_epochs: int | None = None, peer_epochs: int | None = None,
                      stage2: str = "flow", min_steps: int = 1000) -> dict[str, Callable]:
    """``{name: make(seed, epochs=None) -> object with fit(df, discrete_columns) and sample(n)}``.
    ``msvae`` is the multi-stage model (stage 2 ``stage2``); its stage 1 alone is scored from the
    same fit (``msvae_stage1``). With the ``ctgan`` package: ``ctgan``, ``tvae`` at
    ``peer_epochs`` (default: theirs, 300) and ``ctgan_equal_time``, ``tvae_equal_time``, whose
    epochs ``run`` sets to match msvae's fit time; with ``sdv``: ``gaussian_copula``."""
    from msvae.models.tabular import TabularSynthesizer

    stage2_epochs = epochs if stage2_epochs is None else stage2_epochs
    peer_epochs = PEER_DEFAULT_EPOCHS if peer_epochs is None else peer_epochs
    makers: dict[str, Callable] = {
        "msvae": lambda seed, epochs_=None: TabularSynthesizer(
            epochs=epochs, stage2_epochs=stage2_epochs, min_steps=min_steps, stage2=stage2, seed=seed,
            progress=False),
    }
    try:
        import ctgan
    except ImportError:
        ctgan = None
    if ctgan is not None:
        def peer(cls):
            def make(seed, epochs_=None):
                model = cls(epochs=peer_epochs if epochs_ is None else epochs_, enable_gpu=False)
                model.set_random_state(seed)
                return model
            return make

        for name, cls in (("ctgan", ctgan.CTGAN), ("tvae", ctgan.TVAE)):
            makers[name] = makers[name + EQUAL_TIME] = peer(cls)
    try:
        import sdv  # noqa: F401
    except ImportError:
        return makers
    makers["gaussian_copula"] = lambda seed, epochs_=None: GaussianCopula(seed)
    return makers


def _equal_time_epochs(rows: list[dict], table: str, seed: int, peer: str, peer_epochs: int) -> int:
    """Epochs that give ``peer`` msvae's fit time on ``table`` and ``seed``, from the two fits' rows."""
    seconds = {r["synthesizer"]: r["fit_seconds"] for r in rows  # the reference rows fit nothing
               if r["table"] == table and r["seed"] == seed and "fit_seconds" in r}
    if "msvae" not in seconds or peer not in seconds:
        raise ValueError(f"{peer}{EQUAL_TIME} needs msvae and {peer} fitted first on {table}, seed {seed}")
    return max(1, round(peer_epochs * seconds["msvae"] / seconds[peer]))


def sdmetrics_scores(real, synthetic, discrete: Iterable[str], holdout=None, seed: int = 0) -> dict[str, float]:
    """SDMetrics' ``QualityReport`` score (default pair thresholds), ``LogisticDetection`` and, with
    ``holdout`` rows, ``DCROverfittingProtection`` (training, synthetic and held-out rows each
    subsampled to the held-out count, at most 1,000, one draw, numpy seeded with ``seed``: on
    Adult five draws of 2,000 took 84 s)."""
    import warnings

    from sdmetrics.reports.single_table import QualityReport
    from sdmetrics.single_table import DCROverfittingProtection, LogisticDetection

    discrete = set(discrete)
    metadata = {"columns": {c: {"sdtype": "categorical" if c in discrete else "numerical"}
                            for c in real.columns}}
    def labelled(frame):  # a missing category is one more label (SDMetrics' encoder refuses None)
        frame = frame.copy()
        for c in discrete & set(frame.columns):
            frame[c] = frame[c].astype(object).where(frame[c].notna(), "<missing>").astype(str)
        return frame
    real, synthetic = labelled(real), labelled(synthetic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = QualityReport()
        report.generate(real, synthetic, metadata, verbose=False)
        scores = {"sdmetrics_quality": float(report.get_score()),
                  "sdmetrics_detection": float(LogisticDetection.compute(real, synthetic, metadata))}
        if holdout is not None:
            state = np.random.get_state()  # DataFrame.sample draws from numpy's global generator
            np.random.seed(seed)
            try:
                scores["sdmetrics_overfitting_protection"] = float(DCROverfittingProtection.compute(
                    real, synthetic, labelled(holdout), metadata, None,
                    num_rows_subsample=min(len(holdout), len(synthetic), 1000), num_iterations=1))
            finally:
                np.random.set_state(state)  # the caller's draws are left as they were
        return scores


def evaluate(real_train, real_test, synthetic, discrete: Iterable[str], target: str, seed: int) -> dict:
    """Every metric of one synthetic table (see ``msvae.metrics.tabular``)."""
    discrete = list(discrete)
    scores = metrics.quality(real_train, synthetic, discrete)
    efficacy = metrics.ml_efficacy(synthetic, real_train, real_test, target, discrete, seed=seed)
    return {**scores, "ml_efficacy": efficacy["synthetic"], "ml_efficacy_real": efficacy["real"],
            "ml_metric": efficacy["metric"],
            "detection": metrics.detection(real_train, synthetic, discrete, seed=seed)["score"],
            "privacy": metrics.dcr_baseline_protection(real_train, synthetic, discrete, seed=seed)["score"],
            "overfitting_protection": metrics.dcr_overfitting_protection(
                real_train, real_test, synthetic, discrete, seed=seed)["score"],
            **sdmetrics_scores(real_train, synthetic, discrete, real_test, seed)}


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (table, synthesizer) and metric."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["table"], row["synthesizer"]), []).append(row)
    summary = []
    for (table, name), group in groups.items():
        entry = {"table": table, "synthesizer": name, "seeds": len(group)}
        for metric in METRICS:
            values = np.array([r[metric] for r in group if r.get(metric) is not None], dtype=np.float64)
            entry[metric] = (None if not len(values) else
                             {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0})
        summary.append(entry)
    return summary


def markdown(summary: list[dict]) -> str:
    header = "| table | synthesizer | " + " | ".join(METRICS) + " |"
    lines = [header, "|" + "---|" * (len(METRICS) + 2)]
    for entry in summary:
        cells = ["n/a" if entry[m] is None else
                 f"{entry[m]['mean']:.3f} ± {entry[m]['std']:.3f}" if "seconds" not in m and m != "held_out_nll"
                 else f"{entry[m]['mean']:.1f} ± {entry[m]['std']:.1f}" for m in METRICS]
        lines.append(f"| {entry['table']} | {entry['synthesizer']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_marginals(real, synthetics: dict, discrete: Iterable[str], path: Path) -> None:
    """One panel per column: the real distribution against every synthesizer's."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    discrete = set(discrete)
    columns = list(real.columns)
    frames = {"real": real, **synthetics}
    colors = {name: ("0.45" if name == "real" else f"C{i}") for i, name in enumerate(frames)}
    cols = 4
    rows = (len(columns) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    for ax, column in zip(axes.flat, columns):
        if column in discrete or real[column].dtype == object:
            top = real[column].astype(str).value_counts().index[:8]
            width = 0.8 / (1 + len(synthetics))
            for i, (name, frame) in enumerate(frames.items()):
                freqs = frame[column].astype(str).value_counts(normalize=True).reindex(top).fillna(0)
                ax.bar(np.arange(len(top)) + i * width, freqs.values, width, label=name,
                       color=colors[name])
            ax.set_xticks(np.arange(len(top)) + 0.4 - width / 2)
            ax.set_xticklabels([t[:10] for t in top], rotation=45, ha="right", fontsize=7)
        else:
            data = real[column].dropna()
            bins = np.histogram_bin_edges(data, bins=30)
            ax.hist(data, bins=bins, density=True, alpha=0.5, label="real", color=colors["real"])
            for name, frame in synthetics.items():
                ax.hist(frame[column].dropna().clip(bins[0], bins[-1]), bins=bins, density=True,
                        histtype="step", label=name, color=colors[name])
        ax.set_title(str(column), fontsize=9)
    for ax in list(axes.flat)[len(columns):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _association(df, discrete: set) -> np.ndarray:
    """Pairwise association in [0, 1]: |Pearson r| of numeric pairs, Cramer's V otherwise (numbers
    cut into 10 bins)."""
    import pandas as pd
    from scipy.stats.contingency import association

    columns = list(df.columns)
    coded = {}
    for c in columns:
        if c in discrete or df[c].dtype == object:
            coded[c] = pd.Series(df[c].astype(str)).astype("category").cat.codes.to_numpy()
        else:
            values = df[c].to_numpy(dtype=float, na_value=np.nan)
            edges = np.histogram_bin_edges(values[~np.isnan(values)], bins=10)
            coded[c] = np.digitize(np.nan_to_num(values, nan=edges[0] - 1), edges)
    out = np.eye(len(columns))
    for i, a in enumerate(columns):
        for j in range(i + 1, len(columns)):
            b = columns[j]
            if a not in discrete and b not in discrete and df[a].dtype != object and df[b].dtype != object:
                value = abs(df[[a, b]].astype(float).corr().iloc[0, 1])
            else:
                table = pd.crosstab(coded[a], coded[b]).to_numpy()
                value = association(table) if min(table.shape) > 1 else 0.0
            out[i, j] = out[j, i] = 0.0 if np.isnan(value) else value
    return out


def plot_association_differences(real, synthetics: dict, discrete: Iterable[str], path: Path) -> None:
    """Heatmaps of |association(real) - association(synthetic)| per synthesizer."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    discrete = set(discrete)
    reference = _association(real, discrete)
    fig, axes = plt.subplots(1, len(synthetics), figsize=(4.2 * len(synthetics), 4), squeeze=False)
    for ax, (name, frame) in zip(axes.flat, synthetics.items()):
        difference = np.abs(reference - _association(frame, discrete))
        image = ax.imshow(difference, vmin=0, vmax=0.5, cmap="magma_r")
        ax.set_title(f"{name}: mean {difference[np.triu_indices(len(difference), 1)].mean():.3f}",
                     fontsize=9)
        ax.set_xticks(range(len(real.columns)))
        ax.set_xticklabels([str(c)[:8] for c in real.columns], rotation=90, fontsize=6)
        ax.set_yticks(range(len(real.columns)))
        ax.set_yticklabels([str(c)[:8] for c in real.columns], fontsize=6)
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8)
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)


def plot_traversals(profiles: dict, ranking, path: Path, values: list[float], top: int = 3) -> None:
    """One panel per factor: the ``top`` columns it moves most, their statistic against ``z_k``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    factors = sorted(profiles)
    fig, axes = plt.subplots(1, len(factors), figsize=(3.2 * len(factors), 2.8), squeeze=False)
    for ax, k in zip(axes.flat, factors):
        best = ranking[ranking.factor == k].head(top)
        for _, row in best.iterrows():
            series = np.asarray(profiles[k][row.column], dtype=float)
            span = series.max() - series.min() or 1.0
            ax.plot(values, (series - series.min()) / span, label=f"{row.column} ({row.effect:.2f})")
        ax.set_title(f"z_{k}", fontsize=9)
        ax.set_xlabel("value", fontsize=8)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def run(tables: Iterable[str], seeds: Iterable[int], out: str | Path, epochs: int = 100,
        stage2_epochs: int | None = None, peer_epochs: int | None = None,
        synthesizers: Iterable[str] | None = None, max_rows: int | None = None,
        target: str | None = None, discrete_columns: Iterable[str] = (), stage2: str = "flow",
        min_steps: int = 1000, log: Callable[[str], None] = print) -> list[dict]:
    """Fits and scores every synthesizer on every table with every seed; writes ``rows.json``
    (after every fit; a rerun keeps the rows there and fits only what is missing), the synthetic
    tables (``synthetic/``), msvae's models (``models/``), ``summary.json``, ``summary.md`` and
    figures to ``out``; returns the summary. ``target`` and ``discrete_columns`` describe CSV tables
    (see ``load_table``); ``stage2`` and ``min_steps`` (``TabularSynthesizer``'s) are msvae's."""
    import pandas as pd

    from msvae.models.tabular import TabularSynthesizer

    out = Path(out)
    for folder in (out, out / "synthetic", out / "models"):
        folder.mkdir(parents=True, exist_ok=True)
    makers = make_synthesizers(epochs, stage2_epochs, peer_epochs, stage2, min_steps)
    names = list(makers) if synthesizers is None else list(synthesizers)
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise ValueError(f"unknown or unavailable synthesizers {unknown}; available: {list(makers)}")
    names.sort(key=lambda n: n.endswith(EQUAL_TIME))  # they need msvae's and their peer's fit times
    peer_epochs = PEER_DEFAULT_EPOCHS if peer_epochs is None else peer_epochs
    path = out / "rows.json"
    rows = json.loads(path.read_text()) if path.exists() else []
    for table in tables:
        df, discrete, target_column = load_table(table, target, discrete_columns)
        label = Path(table).stem if table.endswith(".csv") else table
        if max_rows is not None:
            df = df.iloc[np.random.default_rng(0).permutation(len(df))[:max_rows]]
        train, test = split(df)
        for seed in seeds:
            if (label, REFERENCE, seed) not in {(r["table"], r["synthesizer"], r["seed"]) for r in rows}:
                # fresh real rows' DCR: what a synthesizer that draws from the rows' own
                # distribution, copying none of them, scores (a larger DCR is further from it)
                privacy = metrics.dcr_baseline_protection(train, test, discrete, seed=seed)["score"]
                rows.append({"table": label, "synthesizer": REFERENCE, "seed": seed, "rows": len(test),
                             "privacy": privacy})
            for name in names:
                done = {(r["table"], r["synthesizer"], r["seed"]) for r in rows}
                if (label, name, seed) in done:
                    continue
                extra = None
                if name.endswith(EQUAL_TIME):
                    extra = _equal_time_epochs(rows, label, seed, name[:-len(EQUAL_TIME)], peer_epochs)
                model = makers[name](seed, extra)
                started = time.perf_counter()
                model.fit(train, discrete_columns=list(discrete))
                fit_seconds = time.perf_counter() - started
                variants = ({name: {"seed": seed}, "msvae_stage1": {"stage": "stage1", "seed": seed}}
                            if name == "msvae" else {name: {}})
                if name == "msvae":  # held-out rows whose categories the fit has seen
                    known = np.ones(len(test), dtype=bool)
                    for c in discrete:
                        known &= test[c].isin(train[c].unique()).to_numpy() | test[c].isna().to_numpy()
                    nll = model.nll_bound(test[known], seed=seed)
                else:
                    nll = {}
                if name == "msvae":
                    model.save(out / "models" / f"{label}_seed{seed}.pt")
                for variant, options in variants.items():
                    started = time.perf_counter()
                    synthetic = model.sample(len(train), **options)
                    sample_seconds = time.perf_counter() - started
                    synthetic.to_csv(out / "synthetic" / f"{label}_{variant}_seed{seed}.csv.gz", index=False)
                    row = {"table": label, "synthesizer": variant, "seed": seed, "rows": len(train),
                           **evaluate(train, test, synthetic, discrete, target_column, seed),
                           "held_out_nll": nll.get("full" if variant == "msvae" else "stage1"),
                           "fit_seconds": fit_seconds, "sample_seconds": sample_seconds,
                           "epochs": extra if extra is not None else peer_epochs if name in ("ctgan", "tvae") else None}
                    rows.append(row)
                    log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}))
                path.write_text(json.dumps(rows, indent=1) + "\n")
        last = max(seeds)
        synthetics = {}
        for name in [v for n in names for v in ((n, "msvae_stage1") if n == "msvae" else (n,))]:
            file = out / "synthetic" / f"{label}_{name}_seed{last}.csv.gz"
            if file.exists():
                synthetics[name] = pd.read_csv(file)
        plot_marginals(train, synthetics, discrete, out / f"{label}_marginals.png")
        plot_association_differences(train, synthetics, discrete, out / f"{label}_association_difference.png")
        model_path = out / "models" / f"{label}_seed{last}.pt"
        if model_path.exists():
            values = list(np.linspace(-2.5, 2.5, 11))
            ranking, profiles = TabularSynthesizer.load(model_path).traversal_report(values, n=1000)
            ranking.to_csv(out / f"{label}_factors.csv", index=False)
            plot_traversals(profiles, ranking, out / f"{label}_factors.png", values)
    labels = {Path(t).stem if t.endswith(".csv") else t for t in tables}
    summary = summarize([r for r in rows if r["table"] in labels and r["seed"] in set(seeds)])
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(summary) + "\n")
    log(markdown(summary))
    return summary
