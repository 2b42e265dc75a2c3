"""The headline claim across benchmarks and methods (``msvae compare-methods``,
``msvae.headline_benchmark``): beta-VAE (beta 1 and 4), FactorVAE, DIP-VAE-II, beta-TCVAE (beta 2, 6,
10) and the decomposition objective with an anisotropic prior, each followed by the same VAE stage
2, on dSprites and 3D Shapes; resumable. Writes runs.jsonl, summary.md / summary.json and
plane_<dataset>.png under bench/results/headline_cpu unless --out is given.

    python bench/bench_headline.py [--preset cpu|paper] [--seeds 0 1] [--datasets dsprites shapes3d]
"""
from __future__ import annotations

import sys
from pathlib import Path

from msvae.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args = ["--out", str(Path(__file__).parent / "results" / "headline_cpu"), *args]
    main(["compare-methods", *args])
