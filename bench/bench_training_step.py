"""One training step of each stage of the quick preset's model, by memory layout, arithmetic and
subnormal handling.

Times a full step as ``fit`` runs it (stage 1: forward, beta-TCVAE loss, backward, Adam; stage 2
(VAE, neighbour centring, its table full): stage 1's float32 forward at a sampled code, then the
stage-2 step) on one fixed dSprites batch, for the layouts ``contiguous`` / ``channels_last``, the
precisions ``fp32`` / ``bf16`` (autocast of the networks' forward passes; losses and weights
float32) and subnormal floats kept or flushed to zero (``training.flush_denormals``; they appear
once a model has learned: sigmoid means of saturated logits, so ``--model`` should name a trained
model, e.g. a quick run's ``model.pt``). Median of repeated runs after a warm-up, rounds
interleaved, peak memory as in ``bench_tc.py``; the ratio is against the plain step (contiguous,
fp32, subnormals kept) in the same run. Data rendering is not in the step (a batch is drawn once).

    python bench/bench_training_step.py --model runs/quick/model.pt [--batch-size 64] [--threads 1]

Writes ``bench/results/training_step_<device>_<timestamp>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse

import torch
from common import markdown_table, measure_modes, run_metadata, vae_training_step, write_results

from msvae.data import DSprites
from msvae.losses import BetaTCVAELoss
from msvae.models import MultiStageModel
from msvae.models.stage2 import sampled_stage1_output

VARIANTS = [("contiguous", "fp32", "kept"), ("contiguous", "fp32", "flushed"),
            ("channels_last", "fp32", "flushed"), ("channels_last", "bf16", "flushed"),
            ("channels_last", "bf16", "kept")]


def make_steps(batch_size: int, device: str, path: str | None):
    """{variant: (stage-1 step, stage-2 step)} on one copy of the model per variant."""
    dataset = DSprites()
    images = dataset.images(torch.arange(batch_size) * (len(dataset) // batch_size)).float().to(device)
    loss_fn = BetaTCVAELoss(dataset_size=len(dataset), beta=6.0).to(device)
    steps = {}
    for layout, precision, subnormals in VARIANTS:
        torch.manual_seed(0)
        model = (MultiStageModel.load(path) if path else
                 MultiStageModel.for_images(10, stage2="vae", w_dim=16, kl_warmup=500)).to(device)
        centre = model.stage2.centre
        if centre is not None and hasattr(centre, "filled") and int(centre.filled) == 0:
            centre.filled.fill_(len(centre.keys))  # a full table, as after the first 256 steps
        form = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        model.to(memory_format=form)
        x = images.contiguous(memory_format=form)
        first, second = model.stage1, model.stage2
        opt1 = torch.optim.Adam(first.parameters(), lr=1e-3)
        opt2 = second.optimizers(1e-3)

        def stage1_step(first=first, x=x, opt1=opt1, precision=precision):
            first.train()
            vae_training_step(first, opt1, loss_fn, x, precision)

        def stage2_step(first=first, second=second, x=x, opt2=opt2, precision=precision):
            first.eval()
            _, _, x1, x1_mean = sampled_stage1_output(first, x)
            second.training_step(x, x1, x1_mean, 1500, opt2, precision)

        steps[layout, precision, subnormals] = (stage1_step, stage2_step)
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a trained model file (default: untrained)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (the median is kept)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = make_steps(args.batch_size, args.device, args.model)
    names = ["/".join((stage, *variant)) for stage in ("stage1", "stage2") for variant in VARIANTS]

    def run(name: str):
        stage, *variant = name.split("/")
        torch.set_flush_denormal(variant[2] == "flushed")
        try:
            steps[tuple(variant)][stage == "stage2"]()
        finally:
            torch.set_flush_denormal(False)

    rounds = [measure_modes(run, names, args.device) for _ in range(args.rounds)]
    rows = []
    for name in names:
        seconds = sorted(r[name][0] for r in rounds)[len(rounds) // 2]
        peak = max(r[name][1] for r in rounds)
        stage, layout, precision, subnormals = name.split("/")
        rows.append(dict(stage=stage, layout=layout, precision=precision, subnormals=subnormals,
                         batch_size=args.batch_size,
                         ms=1e3 * seconds, steps_per_s=1 / seconds, peak_mib=peak / 2**20))
    for row in rows:
        base = next(r for r in rows if r["stage"] == row["stage"] and r["layout"] == "contiguous"
                    and r["precision"] == "fp32" and r["subnormals"] == "kept")
        row["speedup"] = base["ms"] / row["ms"]
    meta = run_metadata(args.device, batch_size=args.batch_size, rounds=args.rounds, model=args.model,
                        amx=torch.cpu._is_amx_tile_supported() if args.device == "cpu" else None)
    write_results("training_step", meta, rows)
    print(markdown_table(rows, [("stage", "stage", None), ("layout", "layout", None),
                                ("precision", "precision", None), ("subnormals", "subnormals", None),
                                ("ms / step", "ms", ".1f"), ("steps/s", "steps_per_s", ".2f"),
                                ("× plain step", "speedup", ".2f"),
                                ("peak MiB", "peak_mib", ".0f")]))


if __name__ == "__main__":
    main()
