"""Runs a test's work in several spawned CPU processes joined by one gloo process group."""
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _process(rank: int, work, init: str, out: str, ranks: int) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=ranks)
    try:
        torch.set_num_threads(1)
        torch.save(work(rank, dist.group.WORLD, out), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def on_ranks(work, ranks: int, out: Path) -> list:
    """``work(rank, group, out)`` on each of ``ranks`` processes (``work`` a module-level
    function; ``out`` a folder for its files); the list of what each rank returned."""
    mp.start_processes(_process, args=(work, f"file://{out}/rendezvous", str(out), ranks),
                       nprocs=ranks, start_method="spawn")
    return [torch.load(out / f"rank{r}.pt") for r in range(ranks)]
