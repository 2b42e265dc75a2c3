"""Mathieu et al. (2019)'s decomposition claims reproduced (``msvae.decomposition_benchmark``):
anisotropic vs isotropic prior on dSprites (MIG), spike-and-slab vs isotropic on the 8x8 digits
(Hoyer sparsity), learned mixture vs isotropic on the digits (clustering by class); 3 seeds each,
resumable. Writes runs.jsonl, summary.md / summary.json and a figure per experiment.

    python bench/bench_decomposition.py [--out bench/results/decomposition_cpu] [--seeds 0 1 2]
        [--experiments anisotropic sparse clusters] [--stage2-steps 2000] [--threads 1]
"""
from __future__ import annotations

import sys
from pathlib import Path

from msvae.decomposition_benchmark import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args = ["--out", str(Path(__file__).parent / "results" / "decomposition_cpu"), *args]
    main(args)
