"""Does a large batch pay off on this machine? Stage 1 (the quick preset's beta-TCVAE on dSprites)
trained at several batch sizes for the same wall time, with held-out MIG and reconstruction
measured along the way.

Each batch size B trains as ``msvae stage1`` would with the quick preset's settings, except
the learning rate, scaled by sqrt(B / 64) from the preset's 1e-3 (Adam's usual rule), and the
penalty warm-up, kept at the preset's 32,000 images (500 steps of 64). Training stops at each
of ``--points`` wall-time marks (training seconds only: the evaluation between marks is not
counted), where the posterior means of ``--eval-size`` held-out images give MIG and stage 1's
reconstruction BCE / MSE per image; it then resumes exactly from its checkpoint. Resumable:
a rerun skips the marks already in ``<work>/B<batch>_seed<seed>/points.json`` (so another
``--initial-logvar`` needs another ``--work``).

    python bench/bench_large_batch.py [--batch-sizes 64 1024] [--seeds 0 1] [--minutes 6] [--points 6]

Writes ``bench/results/large_batch_<device>_<time>.json`` (every run's points) and prints a
markdown table.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from common import markdown_table, run_metadata, write_results

from msvae.data import DSprites
from msvae.evaluation import encode_images
from msvae.methods import stage1_loss
from msvae.metrics import mig
from msvae.models import DisentangledVAE
from msvae.models.training import flush_denormals, keep_freed_memory, resolve_precision

BASE_BATCH, BASE_LR, WARMUP_IMAGES = 64, 1e-3, 500 * 64  # the quick preset's stage 1


def settings(batch_size: int) -> dict:
    """The quick preset's stage-1 settings at ``batch_size`` (lr by the square-root rule)."""
    return {"batch_size": batch_size, "lr": BASE_LR * math.sqrt(batch_size / BASE_BATCH),
            "penalty_warmup": max(1, round(WARMUP_IMAGES / batch_size))}


def evaluate(model, dataset, eval_idx, seed: int) -> dict:
    """Held-out MIG of the posterior means and stage 1's reconstruction BCE / MSE per image."""
    encoded = encode_images(model, dataset.images, eval_idx, seed=seed)
    return {"mig": float(mig(encoded["mu"].numpy(), dataset.factors(eval_idx))),
            "bce": float(encoded["bce"].mean()), "mse": float(encoded["mse"].mean())}


def run(batch_size: int, seed: int, marks: list[float], folder: Path, eval_size: int,
        precision: str, initial_logvar: float | None) -> list[dict]:
    """Trains one batch size to every mark (seconds), evaluating at each; resumable."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "points.json"
    points = json.loads(path.read_text()) if path.exists() else []
    dataset = DSprites()
    train_idx, test_idx = dataset.split(0.1, seed=seed)
    eval_idx = np.random.default_rng(seed).choice(test_idx, min(eval_size, len(test_idx)), replace=False)
    setting = settings(batch_size)
    for mark in marks[len(points):]:
        torch.manual_seed(seed)
        model = DisentangledVAE.for_images(10, initial_logvar=initial_logvar)
        loss = stage1_loss("betatcvae", latent_dim=10, dataset_size=len(train_idx), alpha=1.0, beta=6.0,
                           gamma=1.0, estimator="mss")
        history = model.fit(torch.utils.data.Subset(dataset, train_idx.tolist()), loss=loss,
                            steps=10 ** 8, checkpoint_dir=folder, progress=False, seed=seed,
                            time_limit=mark, precision=precision, **setting)
        last = history[-1] if history else {"step": 0, "seconds": 0.0}
        point = {"mark_seconds": mark, "train_seconds": last.get("seconds"), "step": last["step"],
                 "images_seen": last["step"] * batch_size, **evaluate(model, dataset, eval_idx, seed)}
        points.append(point)
        path.write_text(json.dumps(points, indent=1) + "\n")
        print(f"B={batch_size} seed={seed}: {point}", flush=True)
    return points


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="training wall time of each run")
    parser.add_argument("--points", type=int, default=6, help="evaluations, evenly spaced in time")
    parser.add_argument("--eval-size", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--initial-logvar", type=lambda v: None if v == "none" else float(v), default=None,
                        help="the encoder's initial logvar bias (ConvEncoder; 'none': torch's init)")
    parser.add_argument("--work", type=Path, default=Path("runs/large_batch"), help="checkpoints (resumable)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    precision = resolve_precision(args.precision, "cpu")
    marks = [args.minutes * 60 * (i + 1) / args.points for i in range(args.points)]
    rows, runs = [], {}
    with flush_denormals():
        for seed in args.seeds:
            for batch_size in args.batch_sizes:
                points = run(batch_size, seed, marks, args.work / f"B{batch_size}_seed{seed}",
                             args.eval_size, precision, args.initial_logvar)
                runs[f"B{batch_size}_seed{seed}"] = {**settings(batch_size), "seed": seed, "points": points}
                rows += [{"B": batch_size, "seed": seed, "lr": settings(batch_size)["lr"], **p} for p in points]
    meta = run_metadata("cpu", threads=args.threads, precision=precision, eval_size=args.eval_size,
                        minutes=args.minutes, initial_logvar=args.initial_logvar, runs=runs)
    write_results("large_batch", meta, rows, args.out)
    print(markdown_table(rows, [("B", "B", None), ("seed", "seed", None), ("lr", "lr", ".2g"),
                                ("train s", "train_seconds", ".0f"), ("steps", "step", None),
                                ("images", "images_seen", None), ("MIG", "mig", ".3f"),
                                ("BCE", "bce", ".1f"), ("MSE", "mse", ".1f")]))


if __name__ == "__main__":
    main()
