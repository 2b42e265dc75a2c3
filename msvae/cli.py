"""The ``msvae`` command.

    msvae stage1 --out runs/stage1 --minutes 55     # beta-TCVAE on dSprites, evaluated on held-out images

Each run writes one folder: ``config.json``, the checkpoint ``stage1.pt`` (a rerun with the same
``--out`` resumes from it), the trained ``model.pt``, ``history.json``, ``metrics.json`` and PNG figures.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from msvae.data import DSprites
from msvae.evaluation import disentanglement_report, encode_images, save_stage1_figures
from msvae.losses import BetaTCVAELoss
from msvae.models import DisentangledVAE


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1) + "\n")


def stage1(args: argparse.Namespace) -> dict:
    """Trains and evaluates a stage-1 beta-TCVAE on dSprites; returns the metrics."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    _write_json(out / "config.json", config)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dataset = DSprites(args.dsprites)
    train_idx, test_idx = DSprites.split(args.held_out, seed=args.seed)
    model = DisentangledVAE.for_images(latent_dim=args.latent_dim).to(args.device)
    loss = BetaTCVAELoss(dataset_size=len(train_idx), alpha=args.alpha, beta=args.beta,
                         gamma=args.gamma, estimator=args.estimator)
    started = time.monotonic()
    model.fit(Subset(dataset, train_idx.tolist()), loss=loss, steps=args.steps,
              batch_size=args.batch_size, lr=args.lr, penalty_warmup=args.warmup, checkpoint_dir=out,
              checkpoint_every=args.checkpoint_every, progress=not args.quiet, seed=args.seed,
              time_limit=None if args.minutes is None else 60 * args.minutes)
    train_seconds = time.monotonic() - started
    model.save(out / "model.pt")
    _write_json(out / "history.json", model.history)

    eval_idx = np.random.default_rng(args.seed).choice(test_idx, min(args.eval_size, len(test_idx)),
                                                       replace=False)
    encoded = encode_images(model, dataset.images, eval_idx)
    report = disentanglement_report(encoded["mu"], encoded["logvar"], dataset.factors(eval_idx),
                                    seed=args.seed)
    results = {"stage1": {"bce": float(encoded["bce"].mean()), "mse": float(encoded["mse"].mean())},
               **report, "steps": model.history[-1]["step"] if model.history else 0,
               "train_seconds": train_seconds, "held_out_images": len(eval_idx)}
    _write_json(out / "metrics.json", results)
    save_stage1_figures(model, dataset.images(eval_idx[:8]), out)
    summary = {k: round(v, 4) for k, v in results.items() if isinstance(v, float)}
    print(json.dumps({"stage1": results["stage1"], **summary}, indent=1))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="msvae", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    s1 = commands.add_parser("stage1", help="train and evaluate a stage-1 beta-TCVAE on dSprites")
    s1.add_argument("--out", required=True, help="run folder (created; reused to resume)")
    s1.add_argument("--dsprites", default=None, help="official dSprites .npz (default: rendered procedurally)")
    s1.add_argument("--latent-dim", type=int, default=10)
    s1.add_argument("--alpha", type=float, default=1.0)
    s1.add_argument("--beta", type=float, default=6.0)
    s1.add_argument("--gamma", type=float, default=1.0)
    s1.add_argument("--estimator", choices=["mss", "mws"], default="mss")
    s1.add_argument("--batch-size", type=int, default=64)
    s1.add_argument("--lr", type=float, default=5e-4)
    s1.add_argument("--steps", type=int, default=300_000, help="maximum number of steps")
    s1.add_argument("--minutes", type=float, default=None, help="stop training after this many minutes")
    s1.add_argument("--warmup", type=int, default=0, help="steps of linear warm-up of the penalty")
    s1.add_argument("--held-out", type=float, default=0.1, help="fraction of images held out")
    s1.add_argument("--eval-size", type=int, default=10_000, help="held-out images evaluated")
    s1.add_argument("--checkpoint-every", type=int, default=1000)
    s1.add_argument("--seed", type=int, default=0)
    s1.add_argument("--threads", type=int, default=None)
    s1.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="torch device to train on (default: cuda when available)")
    s1.add_argument("--quiet", action="store_true", help="no progress bar")
    s1.set_defaults(func=stage1)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
