"""The four stage-2 classes (VAE, flow, GAN, mixture) on one dSprites stage 1, equal wall-clock
budgets; writes bench/results/stage2_cpu_<time>/ (rows.jsonl, summary.md, compare.png, a folder
per class). Options are ``msvae compare-stage2``'s.

    python bench/bench_stage2.py --minutes 10 --threads 2 [--stage1 runs/quick/stage1.pt]
"""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

from msvae.cli import main

if __name__ == "__main__":
    out = Path(__file__).parent / "results" / f"stage2_cpu_{datetime.datetime.now():%Y%m%d_%H%M%S}"
    main(["compare-stage2", "--out", str(out), *sys.argv[1:]])
