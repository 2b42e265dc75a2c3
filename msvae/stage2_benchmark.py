"""The four stage-2 classes side by side on dSprites: one stage 1, then a VAE, a flow, a GAN and a
mixture stage 2, each trained for the same wall-clock budget on it and evaluated by the same
held-out report as ``msvae fit`` (``msvae.cli``'s evaluation). ``run`` writes, in one folder:
``stage1.pt``, a folder per class (checkpoint, ``model.pt``, ``metrics.json``; a rerun resumes),
``rows.jsonl`` (one summary row a class), ``summary.md`` (the table) and ``compare.png`` (inputs,
stage-1 reconstructions, each class's reconstructions, then stage 1's samples and each class's for
the same ``z``).
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import torch
from torch.utils.data import Subset

from msvae import cli
from msvae.models import DisentangledVAE, MultiStageModel
from msvae.plotting import save_grid

KINDS = ("vae", "flow", "gan", "mog")
STEP_CAP = 10 ** 6  # the time budget, not this, ends each class's training


def _row(kind: str, metrics: dict, history: list[dict]) -> dict:
    nll = metrics["nll_bound"]
    return {
        "stage2": kind, "steps": history[-1]["step"] if history else 0,
        "fit_seconds": history[-1]["seconds"] if history else 0.0,
        "bce": {"stage1": metrics["stage1"]["bce"], "full": metrics["full"]["bce"]},
        "mse": {"stage1": metrics["stage1"]["mse"], "full": metrics["full"]["mse"]},
        "exact_inverse": bool(metrics["full"].get("exact_inverse", False)),
        "nll_bound_nats": {"stage1": nll["stage1"]["nats"],
                           "full": None if nll["full"] is None else nll["full"]["nats"]},
        "bound": nll["bound"],
        "frechet_distance": metrics["samples"]["frechet_distance"],
        "coverage_tv_mean": {s: sum(v.values()) / len(v) for s, v in metrics["samples"]["coverage_tv"].items()},
        "w_leak_max_captured": metrics["w_leak"]["max_captured"],
        "w_leak_max_of_z_captured": metrics["w_leak"]["max_of_z_captured"],
        "traversal_fidelity": {s: metrics["traversal_fidelity"][s] for s in ("stage1", "full")},
    }


def _f(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _markdown(rows: list[dict], minutes: float) -> str:
    lines = [f"Each stage 2 trained for {minutes:g} min on the same stage 1; held-out images; "
             "\"s1\" = stage 1 alone.", "",
             "| stage 2 | steps | BCE full (s1) | MSE full (s1) | nll_bound nats full (s1) | "
             "sample FD full (s1) | coverage TV full (s1) | w_leak of z | traversal fidelity full (s1) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        nll, fd, tv, tf = r["nll_bound_nats"], r["frechet_distance"], r["coverage_tv_mean"], r["traversal_fidelity"]
        exact = " (exact inverse)" if r["exact_inverse"] else ""
        lines.append(
            f"| {r['stage2']} | {r['steps']} | {_f(r['bce']['full'], '.1f')}{exact} ({_f(r['bce']['stage1'], '.1f')}) | "
            f"{_f(r['mse']['full'], '.1f')} ({_f(r['mse']['stage1'], '.1f')}) | "
            f"{_f(nll['full'], '.1f')} ({_f(nll['stage1'], '.1f')}) | {_f(fd['full'], '.0f')} ({_f(fd['stage1'], '.0f')}) | "
            f"{_f(tv['full'], '.3f')} ({_f(tv['stage1'], '.3f')}) | {_f(r['w_leak_max_of_z_captured'], '.3f')} | "
            f"{_f(tf['full'], '.3f')} ({_f(tf['stage1'], '.3f')}) |")
    return "\n".join(lines) + "\n"


def run(out, kinds=KINDS, minutes: float = 10.0, seed: int = 0, eval_size: int = 2000,
        stage1: str | None = None, stage1_steps: int | None = None, progress: bool = True,
        classifier_steps: int = cli.CLASSIFIER_STEPS) -> list[dict]:
    """Stage 1 by the quick preset (``stage1_steps`` overrides its length; a ``stage1`` checkpoint
    is copied in and resumed — as complete when its settings are the preset's), then each stage 2
    in ``kinds`` for ``minutes`` of training; returns the summary rows."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be among {KINDS}, got {list(kinds)}")
    if not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"minutes must be a finite number > 0, got {minutes!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    config = {**cli.PRESETS["quick"], "seed": seed, "eval_size": eval_size, "held_out": 0.1,
              "dsprites": None}
    if stage1_steps is not None:
        config["stage1_steps"] = stage1_steps
    dataset, train_idx, test_idx, eval_idx = cli._data(config)
    train = Subset(dataset, train_idx.tolist())
    if stage1 is not None and not (out / "stage1.pt").exists():
        shutil.copyfile(stage1, out / "stage1.pt")
    torch.manual_seed(seed)
    first = DisentangledVAE.for_images(config["latent_dim"])
    first.fit(train, loss=cli._stage1_loss(config, len(train_idx)), steps=config["stage1_steps"],
              lr=config["lr"], batch_size=config["batch_size"], penalty_warmup=config["warmup"],
              checkpoint_dir=out, progress=progress, seed=seed, precision=config["precision"])
    rows, models = [], {}
    for kind in kinds:
        torch.manual_seed(seed)
        model = MultiStageModel.for_images(config["latent_dim"], stage2=kind,
                                           **cli.stage2_options(config, kind))
        model.stage1.load_state_dict(first.state_dict())
        model.stage1.history = first.history
        model.eval()
        model.stage2.fit(model.stage1, train, steps=STEP_CAP, lr=config["stage2_lr"],
                         batch_size=config["batch_size"], checkpoint_dir=out / kind,
                         time_limit=60.0 * minutes, progress=progress, seed=seed,
                         precision=config["precision"])
        model.save(out / kind / "model.pt")
        metrics = cli._evaluate(model, dataset, train_idx, test_idx, eval_idx, seed, progress=progress,
                                classifier_steps=classifier_steps)
        (out / kind / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
        rows.append(_row(kind, metrics, model.stage2.history))
        models[kind] = model
    (out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "summary.md").write_text(_markdown(rows, minutes))
    _figure(models, dataset.images(eval_idx[:8]), out / "compare.png", seed)
    return rows


@torch.no_grad()
def _figure(models: dict, images, path: Path, seed: int) -> None:
    """Inputs, stage 1's reconstructions, each class's; stage 1's samples, each class's (same z)."""
    first = next(iter(models.values()))
    rows = [images, first.reconstruct(images, "stage1")]
    rows += [model.reconstruct(images, "full") for model in models.values()]
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        z = torch.randn(len(images), first.stage1.latent_dim)
        rows.append(first.stage1_output(z)[1])
        for model in models.values():
            rows.append(model.sample(len(images), z=z))
    save_grid(torch.cat([r.cpu() for r in rows]), path, nrow=len(images))
