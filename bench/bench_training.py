"""One full stage-1 training step on dSprites — data, forward, beta-TCVAE loss, backward, Adam —
as msvae's ``fit`` runs it, against a plain eager PyTorch step with the same network, loss and
batch, as the peer libraries write it (disentangling-vae, disent: images rendered on the step's
thread, contiguous NCHW, float32, the loss's minibatch estimator materialising the B x B x D
tensor: ``backend="reference"``; the decoder's last layer torch's ``nn.ConvTranspose2d``).

msvae's step: ``RandomBatches`` (procedural rendering), channels-last images and weights,
subnormals flushed, ``--precision auto`` (bf16 autocast on CPUs with AMX, else float32), the
fused ``mixture_log_density`` in the loss, the decoder's ``ToImageConvTranspose2d``. Per batch
size and thread count the two steps alternate for ``--rounds`` rounds after a warm-up, a round
timing as many consecutive steps as fill about a second; medians; peak memory is the rise of
the process's peak RSS over a round (as ``bench_tc.py``). Writes
``bench/results/training_<device>_<time>.json``.

    python bench/bench_training.py [--batch-sizes 64 256 1024 4096] [--threads 1 2] [--rounds 5]
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import statistics
import time

import numpy as np
import torch
from torch import nn
from common import (markdown_table, peak_rss_bytes, release_free_heap, reset_peak_rss, run_metadata,
                    vae_training_step, write_results)

from msvae.data import DSprites
from msvae.losses import BetaTCVAELoss
from msvae.models import DisentangledVAE
from msvae.models.training import RandomBatches, flush_denormals, resolve_precision


def make_steps(batch_size: int):
    """{"msvae": step, "eager": step}: each a closure running one full training step."""
    dataset = DSprites()
    steps = {}
    for mode in ("msvae", "eager"):
        torch.manual_seed(0)
        model = DisentangledVAE.for_images(10)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        if mode == "msvae":
            loss_fn = BetaTCVAELoss(dataset_size=len(dataset), beta=6.0)
            precision = resolve_precision("auto", "cpu")
            model.to(memory_format=torch.channels_last)
            batches = RandomBatches(dataset, batch_size, torch.Generator().manual_seed(0), model.device)

            def step(model=model, optimizer=optimizer, loss_fn=loss_fn, batches=batches, precision=precision):
                vae_training_step(model, optimizer, loss_fn, next(batches), precision)
        else:
            last = model.decoder.deconvs[-1]
            last.__class__ = nn.ConvTranspose2d  # torch's own layer, as a peer's network has it
            loss_fn = BetaTCVAELoss(dataset_size=len(dataset), beta=6.0, backend="reference")
            rng = np.random.default_rng(0)

            def step(model=model, optimizer=optimizer, loss_fn=loss_fn, rng=rng):
                vae_training_step(model, optimizer, loss_fn, dataset.images(rng.integers(0, len(dataset), batch_size)))
        steps[mode] = step
    return steps


def measure(steps: dict, rounds: int, round_seconds: float = 1.0) -> dict:
    """{mode: (median seconds a step, peak extra bytes)}; modes alternate, each warmed up first;
    a round of a mode times as many consecutive steps as fill about ``round_seconds``."""
    repeats = {}
    for mode, step in steps.items():
        with flush_denormals() if mode == "msvae" else contextlib.nullcontext():
            step()
            start = time.perf_counter()
            step()
            repeats[mode] = max(1, round(round_seconds / (time.perf_counter() - start)))
    seconds = {mode: [] for mode in steps}
    peaks = {mode: 0 for mode in steps}
    for _ in range(rounds):
        for mode, step in steps.items():
            gc.collect()
            release_free_heap()
            reset_peak_rss()
            base = peak_rss_bytes()
            with flush_denormals() if mode == "msvae" else contextlib.nullcontext():
                start = time.perf_counter()
                for _ in range(repeats[mode]):
                    step()
                seconds[mode].append((time.perf_counter() - start) / repeats[mode])
            peaks[mode] = max(peaks[mode], peak_rss_bytes() - base)
    return {mode: (statistics.median(seconds[mode]), peaks[mode]) for mode in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256, 1024, 4096])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch_size in args.batch_sizes:
            result = measure(make_steps(batch_size), args.rounds)
            for mode, (seconds, peak) in result.items():
                rows.append(dict(mode=mode, threads=threads, batch_size=batch_size, ms=1e3 * seconds,
                                 samples_per_s=batch_size / seconds, peak_mib=peak / 2**20))
            ratio = result["eager"][0] / result["msvae"][0]
            rows[-2]["speedup"], rows[-1]["speedup"] = ratio, 1.0
            print(f"threads {threads}, B {batch_size}: msvae {1e3 * result['msvae'][0]:.0f} ms, "
                  f"eager {1e3 * result['eager'][0]:.0f} ms ({ratio:.2f}x)", flush=True)
    meta = run_metadata("cpu", rounds=args.rounds, precision=resolve_precision("auto", "cpu"),
                        capability=torch.backends.cpu.get_cpu_capability())
    write_results("training", meta, rows)
    print(markdown_table(rows, [("mode", "mode", None), ("threads", "threads", "d"), ("B", "batch_size", "d"),
                                ("ms / step", "ms", ".0f"), ("samples/s", "samples_per_s", ".0f"),
                                ("× eager", "speedup", ".2f"), ("peak MiB", "peak_mib", ".0f")]))


if __name__ == "__main__":
    main()
