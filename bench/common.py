"""Measurement helpers shared by the benchmarks: timing, peak memory, device names, result files."""
from __future__ import annotations

import ctypes
import datetime
import gc
import json
import platform
import resource
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def time_call(fn: Callable[[], object], device: str, min_runs: int = 5, budget_s: float = 10.0) -> float:
    """Median seconds of fn() (already warmed up); at least 3 runs, up to min_runs within budget_s."""
    times, start = [], time.perf_counter()
    while len(times) < 3 or (len(times) < min_runs and time.perf_counter() - start < budget_s):
        if device == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def release_free_heap() -> None:
    """Returns freed heap pages to the OS, so the RSS baseline is what is held (else an earlier,
    larger implementation's freed memory is reused unseen and the next one reads as 0 MiB)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_modes(run: Callable[[str], object], modes: list[str], device: str, settle_runs: int = 0) -> dict:
    """{mode: (median seconds, peak extra bytes)} of run(mode), each warmed up first.

    Peak extra memory is above what is held before the timed runs: on CPU the rise of the peak RSS
    (reset through /proc/self/clear_refs after the warm-up, so compilation is not counted), on CUDA
    ``torch.cuda.max_memory_allocated``. ``settle_runs`` untimed runs follow the CPU baseline: with
    glibc keeping freed blocks (``training.keep_freed_memory``) the heap takes a few rounds of the
    same allocations to stop growing (measured: 3 runs of the 65536 x 64 spline fault, then none).
    """
    out = {}
    for mode in modes:
        run(mode)  # warm-up (and compilation)
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            seconds = time_call(lambda: run(mode), device)
            peak = torch.cuda.max_memory_allocated() - base
        else:
            release_free_heap()
            base = rss_bytes()
            reset_peak_rss()
            for _ in range(settle_runs):
                run(mode)
            seconds = time_call(lambda: run(mode), device)
            peak = max(0, peak_rss_bytes() - base)
        out[mode] = (seconds, peak)
    return out


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        import cpuinfo
        return cpuinfo.get_cpu_info()["brand_raw"]
    except ImportError:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.processor()


def run_metadata(device: str, **extra) -> dict:
    return {"device": device, "device_name": device_name(device), "machine": platform.node(),
            "platform": platform.platform(), "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **extra}


def write_results(prefix: str, meta: dict, rows: list[dict], out: Path | None = None) -> Path:
    """Writes ``{"meta", "rows"}`` to ``out`` or ``bench/results/<prefix>_<device>_<time>.json``."""
    RESULTS.mkdir(exist_ok=True)
    out = out or RESULTS / f"{prefix}_{meta['device']}_{datetime.datetime.now():%Y%m%d_%H%M%S}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n{meta['device_name']} ({meta['threads']} threads), torch {meta['torch']} -> {out}\n")
    return out


def markdown_table(rows: list[dict], columns: list[tuple[str, str, str | None]]) -> str:
    """``columns``: (header, row key, format spec or None for str); a row's ``note`` trails its line."""
    cell = lambda v, spec: "—" if v is None else (format(v, spec) if spec else str(v))  # noqa: E731
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        line = "| " + " | ".join(cell(r.get(key), spec) for _, key, spec in columns) + " |"
        if r.get("note"):
            line += f" {r['note']}"
        lines.append(line)
    return "\n".join(lines)


def vae_training_step(model, optimizer, loss_fn, x, precision: str = "fp32") -> None:
    """One training step of a ``DisentangledVAE``: forward under ``precision`` autocast
    (``msvae.models.training.autocast``), the loss, backward, the optimiser's step."""
    from msvae.models.training import autocast

    with autocast(x.device, precision):
        out = model(x)
    total, _ = loss_fn(x, out["output"], out["z"], out["mu"], out["logvar"])
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
