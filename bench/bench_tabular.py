"""Synthetic tables: msvae (multi-stage), its stage 1 alone, CTGAN and TVAE on Adult and
scikit-learn tables, 3 seeds; writes bench/results/tabular_cpu_<time>/ (rows, summary table,
figures). Needs the [bench] extra (ctgan).

    python bench/bench_tabular.py --epochs 100
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

from msvae.cli import main

if __name__ == "__main__":
    out = Path(__file__).parent / "results" / f"tabular_cpu_{datetime.datetime.now():%Y%m%d_%H%M%S}"
    main(["compare-tables", "--out", str(out), *sys.argv[1:]])
