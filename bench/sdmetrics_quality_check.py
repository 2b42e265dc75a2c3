"""Seed-0 Adult check of the quality ranking (msvae, CTGAN, TVAE; 100 epochs) with SDMetrics' own
QualityReport, at its default pair thresholds and with every pair counted; prints one JSON line a model.

    python bench/sdmetrics_quality_check.py > bench/results/<run>/sdmetrics_check.jsonl
"""
import json
import warnings

import ctgan
import torch
from sdmetrics.reports.single_table import QualityReport

from msvae import TabularSynthesizer
from msvae import tabular_benchmark as tb

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
df, d, target = tb.load_table("adult")
train, test = tb.split(df)
meta = {"columns": {c: {"sdtype": "categorical" if c in d else "numerical"} for c in train.columns}}
models = {"msvae": TabularSynthesizer(epochs=100, stage2_epochs=100, seed=0, progress=False),
          "ctgan": ctgan.CTGAN(epochs=100, enable_gpu=False), "tvae": ctgan.TVAE(epochs=100, enable_gpu=False)}
for name, m in models.items():
    if name != "msvae":
        m.set_random_state(0)
    m.fit(train, discrete_columns=list(d))
    syn = m.sample(len(train))
    out = {"name": name, "ours": tb.metrics.quality(train, syn, d)}
    for label, thresholds in (("sdmetrics_default", None), ("sdmetrics_all_pairs", 0.0)):
        report = QualityReport()
        if thresholds is not None:
            report.real_correlation_threshold = 0.0
            report.real_association_threshold = 0.0
        report.generate(train, syn, meta, verbose=False)
        props = report.get_properties()
        out[label] = {"quality": report.get_score(), **dict(zip(props["Property"], props["Score"]))}
    print(json.dumps(out), flush=True)
