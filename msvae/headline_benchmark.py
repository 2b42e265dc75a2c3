"""The headline claim across benchmarks and methods: each stage-1 method, then the same VAE stage 2,
on dSprites and 3D Shapes over several seeds; one table and one figure per dataset, the
MIG-vs-reconstruction plane with an arrow from each stage-1 point to its multi-stage point.

Every run gets the same number of steps (``PRESETS``: equal steps, not minutes, so a busy machine
gives the same table, only later; the minutes each run took are reported beside it), in float32
(not ``--precision auto``: a sweep resumed on a machine with other bfloat16 support continues the
same arithmetic). ``run``
appends a line per finished (dataset, method, seed) to ``out/runs.jsonl`` and skips those there;
an interrupted run resumes from its checkpoints under ``out/checkpoints``.

    msvae compare-methods --out runs/headline             # the CPU default (see PRESETS)
    msvae compare-methods --out runs/headline --preset paper --device cuda
"""
from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from msvae.data import DSprites, Shapes3D
from msvae.evaluation import disentanglement_report, encode_images, reconstruction_summary
from msvae.methods import stage1_loss
from msvae.models import MultiStageModel

DATASETS = {"dsprites": DSprites, "shapes3d": Shapes3D}
# label -> (method, options): the stage-1 methods compared (each followed by the same stage 2)
METHODS = {
    "vae": ("betavae", {"beta": 1.0}),
    "betavae4": ("betavae", {"beta": 4.0}),
    "factorvae": ("factorvae", {"gamma": 40.0}),
    "dipvae2": ("dipvae", {"lambda_od": 10.0, "dip_variant": "ii"}),
    "betatcvae2": ("betatcvae", {"beta": 2.0}),
    "betatcvae6": ("betatcvae", {"beta": 6.0}),
    "betatcvae10": ("betatcvae", {"beta": 10.0}),
    "decomposition_aniso": ("decomposition", {"prior": "anisotropic", "beta": 1.0}),
}
PRESETS = {
    # 8 methods x 2 datasets x 2 seeds = 32 runs in about 100 minutes on a 2-core CPU (AVX2,
    # float32, 2 threads): ~3 minutes a run. Short: stage 1 barely leaves its first plateau.
    "cpu": dict(seeds=(0, 1), stage1_steps=600, stage2_steps=200, eval_size=1000, warmup=200,
                lr=1e-3, batch_size=64),
    "paper": dict(seeds=(0, 1, 2), stage1_steps=300_000, stage2_steps=100_000, eval_size=10_000,
                  warmup=5000, lr=5e-4, batch_size=64),
}
STAGE2 = dict(w_dim=16, encoder="pooled", centred=True, centring="neighbours", kl_warmup=500)


def _done(out: Path) -> list[dict]:
    path = out / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []


def run_one(dataset_name: str, label: str, seed: int, out: Path, settings: dict, device: str = "cpu",
            progress: bool = True) -> dict:
    """Stage 1 by ``METHODS[label]``, then the VAE stage 2; held-out scores of both."""
    start = time.perf_counter()
    dataset = DATASETS[dataset_name]()
    train_idx, test_idx = dataset.split(0.1, seed=0)  # one split: the seeds vary the training
    eval_idx = np.random.default_rng(0).choice(test_idx, settings["eval_size"], replace=False)
    method, options = METHODS[label]
    torch.manual_seed(seed)
    model = MultiStageModel.for_images(10, channels=dataset.channels, stage2="vae", **STAGE2).to(device)
    loss = stage1_loss(method, latent_dim=10, dataset_size=len(train_idx), **options)
    model.fit(Subset(dataset, train_idx.tolist()), stage1_loss=loss, stage1_steps=settings["stage1_steps"],
              stage2_steps=settings["stage2_steps"], stage1_lr=settings["lr"], stage2_lr=settings["lr"],
              batch_size=settings["batch_size"], penalty_warmup=settings["warmup"],
              checkpoint_dir=out / "checkpoints" / f"{dataset_name}_{label}_{seed}", progress=progress,
              seed=seed, precision="fp32")
    encoded = encode_images(model, dataset.images, eval_idx, seed=0)
    summary = reconstruction_summary(encoded, model.stage2)
    report = disentanglement_report(encoded["mu"], encoded["logvar"], dataset.factors(eval_idx), seed=0)
    nll = summary["nll_bound"]
    scores = {"mig": report["mig"], "dci_disentanglement": report["dci_disentanglement"],
              **{f"{k}_{stage}": summary[stage][k] for stage in ("stage1", "full") for k in ("bce", "mse")},
              "nll_stage1": nll["stage1"]["nats"], "nll_full": nll["full"]["nats"]}
    return {"dataset": dataset_name, "method": label, "seed": seed, "settings": settings, "scores": scores,
            "minutes": (time.perf_counter() - start) / 60}


def run(out, datasets=tuple(DATASETS), methods=tuple(METHODS), preset: str = "cpu", seeds=None,
        device: str = "cpu", progress: bool = True, **overrides) -> dict:
    """Every (dataset, method, seed) not yet in ``out/runs.jsonl`` with the ``preset``'s settings
    (``overrides``: any of them, e.g. ``stage1_steps``); then ``summarise(out)``."""
    for given, known, what in ((datasets, DATASETS, "datasets"), (methods, METHODS, "methods")):
        unknown = [x for x in given if x not in known]
        if unknown or not given:
            raise ValueError(f"{what} must be among {tuple(known)}, got {list(given)}")
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {tuple(PRESETS)}, got {preset!r}")
    settings = {k: v for k, v in PRESETS[preset].items() if k != "seeds"}
    unknown = sorted(set(overrides) - set(settings))
    if unknown:
        raise ValueError(f"unknown settings {unknown}; the settings are {sorted(settings)}")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    seeds = tuple(PRESETS[preset]["seeds"] if seeds is None else seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = _done(out)
    for row in done:
        if row["settings"] != settings:
            raise ValueError(f"{out} holds runs with other settings ({row['settings']}); use another --out")
    finished = {(r["dataset"], r["method"], r["seed"]) for r in done}
    for name in datasets:
        for seed in seeds:
            for label in methods:
                if (name, label, seed) in finished:
                    continue
                row = run_one(name, label, seed, out, settings, device, progress)
                with open(out / "runs.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
                s = row["scores"]
                print(f"{name} / {label} / seed {seed}: MIG {s['mig']:.3f}, BCE {s['bce_stage1']:.1f} -> "
                      f"{s['bce_full']:.1f} ({row['minutes']:.1f} min)", flush=True)
    return summarise(out)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def summarise(out) -> dict:
    """``summary.json``, ``summary.md`` and ``plane_<dataset>.png`` from ``out/runs.jsonl``; the
    checks of the claim per dataset: every method's full model at most 0.6x its stage 1's BCE (its
    MIG is stage 1's: the same ``z``), and the multi-stage beta-TCVAE (beta 6) reconstructing at
    least as well as the plain VAE's stage 1 with a higher MIG."""
    out = Path(out)
    rows = _done(out)
    summary = {}
    for name in DATASETS:
        mine = [r for r in rows if r["dataset"] == name]
        if not mine:
            continue
        table = {}
        for label in METHODS:
            runs = [r for r in mine if r["method"] == label]
            if runs:
                keys = runs[0]["scores"]
                table[label] = {"seeds": [r["seed"] for r in runs],
                                "minutes": statistics.fmean(r["minutes"] for r in runs),
                                **{k: _mean_std([r["scores"][k] for r in runs]) for k in keys}}
        checks = {label: t["bce_full"][0] <= 0.6 * t["bce_stage1"][0] for label, t in table.items()}
        headline = None
        if "betatcvae6" in table and "vae" in table:
            tc, vae = table["betatcvae6"], table["vae"]
            headline = tc["bce_full"][0] <= vae["bce_stage1"][0] and tc["mig"][0] > vae["mig"][0]
        summary[name] = {"methods": table, "full_at_most_0.6x_stage1_bce": checks,
                         "tcvae6_full_beats_vae_stage1": headline}
        _plane(out / f"plane_{name}.png", name, table)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "summary.md").write_text(_markdown(summary, rows))
    return summary


def _markdown(summary: dict, rows: list[dict]) -> str:
    settings = rows[0]["settings"] if rows else {}
    lines = [f"Settings: {settings}. Mean ± std over seeds; MIG and DCI are of `z` (the same for "
             "stage 1 and the full model); BCE / MSE per image, `nll_bound` in nats per image.", ""]
    f = lambda ms: f"{ms[0]:.3g} ± {ms[1]:.2g}"  # noqa: E731
    for name, s in summary.items():
        lines += [f"### {name}", "", "| method | seeds | min / run | MIG | DCI dis. | BCE s1 → full | MSE s1 → full | "
                  "nll_bound s1 → full | full ≤ 0.6× s1 BCE |", "|---|---|---|---|---|---|---|---|---|"]
        for label, t in s["methods"].items():
            lines.append(f"| {label} | {t['seeds']} | {t['minutes']:.1f} | {f(t['mig'])} | {f(t['dci_disentanglement'])} | "
                         f"{f(t['bce_stage1'])} → {f(t['bce_full'])} | {f(t['mse_stage1'])} → {f(t['mse_full'])} | "
                         f"{f(t['nll_stage1'])} → {f(t['nll_full'])} | {s['full_at_most_0.6x_stage1_bce'][label]} |")
        lines += ["", f"Multi-stage beta-TCVAE (beta 6) at or below the plain VAE's stage-1 BCE with a higher "
                      f"MIG: {s['tcvae6_full_beats_vae_stage1']}", ""]
    return "\n".join(lines)


def _plane(path: Path, name: str, table: dict) -> None:
    """MIG (y) against reconstruction BCE (x): each method's stage-1 point, an arrow to its
    multi-stage point (same MIG, lower BCE), error bars one std over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (label, t) in enumerate(table.items()):
        (mig, mig_sd), (b1, b1_sd), (bf, bf_sd) = t["mig"], t["bce_stage1"], t["bce_full"]
        sd = lambda v: 0.0 if math.isnan(v) else v  # noqa: E731
        ax.errorbar(b1, mig, xerr=sd(b1_sd), yerr=sd(mig_sd), fmt="o", color=f"C{i % 10}", label=label)
        ax.errorbar(bf, mig, xerr=sd(bf_sd), fmt="s", color=f"C{i % 10}", mfc="white")
        ax.annotate("", xy=(bf, mig), xytext=(b1, mig), arrowprops=dict(arrowstyle="->", color=f"C{i % 10}"))
    ax.set_xlabel("held-out reconstruction BCE (nats / image); ○ stage 1, □ multi-stage")
    ax.set_ylabel("MIG of z")
    ax.set_title(f"{name}: disentanglement vs reconstruction", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
