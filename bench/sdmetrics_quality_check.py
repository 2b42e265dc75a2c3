"""Adult check of the quality ranking with SDMetrics' own QualityReport (at its default pair
thresholds and with every pair counted) beside ours; prints one JSON line a (model, seed).

``msvae_stage1`` is the msvae fit's own stage 1 sampled alone (same fit, same number of rows), so
the two lines of a seed say whether the second stage improves on its stage 1.

    python bench/sdmetrics_quality_check.py --models msvae ctgan tvae --seeds 0 \
        > bench/results/<run>/sdmetrics_check.jsonl
"""
import argparse
import json
import time
import warnings

import torch
from sdmetrics.reports.single_table import QualityReport

from msvae import TabularSynthesizer
from msvae import tabular_benchmark as tb

warnings.filterwarnings("ignore")
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--models", nargs="+", default=["msvae", "ctgan", "tvae"])
parser.add_argument("--seeds", nargs="+", type=int, default=[0])
parser.add_argument("--epochs", type=int, default=100)
parser.add_argument("--stage2", default="flow", help="msvae's stage 2 (flow, vae, mog)")
parser.add_argument("--stage2-epochs", type=int, default=None, help="default: --epochs")
parser.add_argument("--stage2-options", type=json.loads, default={}, help='e.g. \'{"layers": 8}\'')
parser.add_argument("--threads", type=int, default=1)
args = parser.parse_args()
torch.set_num_threads(args.threads)
df, d, target = tb.load_table("adult")
train, test = tb.split(df)
meta = {"columns": {c: {"sdtype": "categorical" if c in d else "numerical"} for c in train.columns}}


def make(name: str, seed: int):
    if name == "msvae":
        return TabularSynthesizer(epochs=args.epochs, stage2_epochs=args.stage2_epochs or args.epochs,
                                  stage2=args.stage2, stage2_options=args.stage2_options, seed=seed,
                                  progress=False)
    import ctgan

    model = {"ctgan": ctgan.CTGAN, "tvae": ctgan.TVAE}[name](epochs=args.epochs, enable_gpu=False)
    model.set_random_state(seed)
    return model


def score(name: str, seed: int, syn, fit_seconds: float) -> dict:
    out = {"name": name, "seed": seed, "rows": len(syn), "fit_seconds": fit_seconds,
           "ours": tb.metrics.quality(train, syn, d)}
    for label, thresholds in (("sdmetrics_default", None), ("sdmetrics_all_pairs", 0.0)):
        report = QualityReport()
        if thresholds is not None:
            report.real_correlation_threshold = 0.0
            report.real_association_threshold = 0.0
        report.generate(train, syn, meta, verbose=False)
        props = report.get_properties()
        out[label] = {"quality": report.get_score(), **dict(zip(props["Property"], props["Score"]))}
    return out


for seed in args.seeds:
    for name in args.models:
        model = make(name, seed)
        started = time.monotonic()
        model.fit(train, discrete_columns=list(d))
        seconds = time.monotonic() - started
        print(json.dumps(score(name, seed, model.sample(len(train), **({"seed": seed} if name == "msvae" else {})), seconds)), flush=True)
        if name == "msvae":
            print(json.dumps({"name": "msvae", "seed": seed, "stage2": args.stage2,
                              "stage2_options": args.stage2_options, "stage2_epochs": args.stage2_epochs,
                              "held_out_nll_bound": model.nll_bound(test, seed=seed)}), flush=True)
            print(json.dumps(score("msvae_stage1", seed, model.sample(len(train), stage="stage1", seed=seed),
                                   seconds)), flush=True)
