"""Global samples per second of stage-1 training (``DisentangledVAE.fit``, beta-TCVAE with the
global-batch MSS estimator) with 1 and 2 processes (gloo on the CPU, NCCL on GPUs), at a fixed
global batch.

Every configuration trains the quick preset's network for ``--warmup + --steps`` steps on a
fixed set of dSprites images (rendered before timing: the data is not in the step); the time is
that of the last ``--steps`` steps on the first rank, from the fit's own history (a step of every
rank ends with the same all-reduce, so one rank's clock is the group's). Rounds are interleaved
and the median kept; ``speedup`` is against one process with one thread in the same run.

    python bench/bench_data_parallel.py [--batch-sizes 64 256] [--steps 30] [--rounds 3]

Writes ``bench/results/data_parallel_<device>_<timestamp>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import markdown_table, run_metadata, write_results

from msvae.data import DSprites
from msvae.losses import BetaTCVAELoss
from msvae.models import DisentangledVAE


def _train(rank: int, processes: int, threads: int, batch_size: int, steps: int, warmup: int,
           device: str, init: str, out: str) -> None:
    torch.set_num_threads(threads)
    group = None
    if processes > 1:
        backend = "nccl" if device == "cuda" else "gloo"
        if device == "cuda":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=init, rank=rank, world_size=processes)
        group = dist.group.WORLD
    target = f"cuda:{rank}" if device == "cuda" else "cpu"
    dataset = DSprites()
    images = dataset.images(torch.arange(4096) * (len(dataset) // 4096)).float()
    torch.manual_seed(0)
    model = DisentangledVAE.for_images(10).to(target)
    loss = BetaTCVAELoss(dataset_size=len(dataset), beta=6.0, process_group=group)
    history = model.fit(images.to(target), loss=loss, steps=warmup + steps, batch_size=batch_size,
                        lr=1e-3, log_every=1, progress=False, precision="fp32")
    if rank == 0:
        seconds = history[-1]["seconds"] - history[warmup - 1]["seconds"]
        torch.save({"seconds": seconds}, out)
    if group is not None:
        dist.destroy_process_group()


def run(processes: int, threads: int, batch_size: int, steps: int, warmup: int, device: str) -> float:
    """Seconds per step of one configuration (a fresh set of processes)."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "result.pt")
        args = (processes, threads, batch_size, steps, warmup, device, f"file://{folder}/rendezvous", out)
        if processes == 1:
            _train(0, *args)
        else:
            mp.start_processes(_train, args=args, nprocs=processes, start_method="spawn")
        return torch.load(out)["seconds"] / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    # (processes, threads per process): one process on one thread and on two, two on one each
    configs = [(1, 1), (1, 2), (2, 1)]
    if args.device == "cuda":
        configs = [(1, 1), (torch.cuda.device_count(), 1)] if torch.cuda.device_count() > 1 else [(1, 1)]
    times: dict[tuple, list[float]] = {}
    for _ in range(args.rounds):
        for batch_size in args.batch_sizes:
            for processes, threads in configs:
                key = (batch_size, processes, threads)
                times.setdefault(key, []).append(run(processes, threads, batch_size, args.steps,
                                                     args.warmup, args.device))
    rows = []
    for (batch_size, processes, threads), values in times.items():
        seconds = statistics.median(values)
        base = statistics.median(times[batch_size, 1, 1])
        rows.append({"batch_size": batch_size, "processes": processes, "threads": threads,
                     "ms_per_step": 1e3 * seconds, "samples_per_s": batch_size / seconds,
                     "speedup": base / seconds, "runs_ms": [1e3 * v for v in values]})
    meta = run_metadata(args.device, steps=args.steps, warmup=args.warmup, rounds=args.rounds,
                        cpu_count=os.cpu_count())
    meta["threads"] = "per row"
    write_results("data_parallel", meta, rows)
    print(markdown_table(rows, [("global batch", "batch_size", "d"), ("processes", "processes", "d"),
                                ("threads each", "threads", "d"), ("ms / step", "ms_per_step", ".1f"),
                                ("samples / s", "samples_per_s", ".0f"), ("speedup", "speedup", ".2f")]))


if __name__ == "__main__":
    main()
