"""Benchmark of the mixture log-density op (the beta-TCVAE estimator's core).

Times forward and forward+backward (median of repeated runs) of each implementation on a grid of
batch sizes (Q = B, MSS weights) and dimensions, with the speed-up against the eager reference
measured in the same run and the peak extra memory above what the inputs hold: on CPU the rise of
the process's peak RSS (reset through /proc/self/clear_refs after the warm-up, so compilation is
not counted), on CUDA ``torch.cuda.max_memory_allocated``. On CUDA it also reports the
fraction of the exponential-throughput bound achieved: a pass needs Q*B*(D+1) exponentials, and
the bound is 16 exp2 per clock per SM (the MUFU rate of sm_80/sm_90) at the maximum SM clock.

    python bench/bench_tc.py                       # CPU grid (issue #2)
    python bench/bench_tc.py --device cuda         # GPU grid (issue #3)

Writes ``bench/results/tc_<device>_<timestamp>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import gc
import resource
import statistics
import subprocess
import time
from pathlib import Path

import torch

from msvae.ops import available_backends, mixture_log_density, mixture_weights
from msvae.ops import reference

RESULTS = Path(__file__).resolve().parent / "results"
DATASET_SIZE = 737_280  # dSprites


def make_inputs(B, D, device, dtype=torch.float32):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(B, D, generator=g, dtype=dtype)
    mu = x + 0.3 * torch.randn(B, D, generator=g, dtype=dtype)
    logvar = torch.empty(B, D, dtype=dtype).uniform_(-3.0, 0.0, generator=g)
    return [t.to(device).requires_grad_() for t in (x, mu, logvar)]


def implementation(name, B):
    w = mixture_weights("mss", B, B, DATASET_SIZE)
    if name == "reference":
        return lambda x, mu, lv: reference.mixture_log_density(x, mu, lv, *w)
    if name == "compiled_reference":
        return torch.compile(lambda x, mu, lv: reference.mixture_log_density(x, mu, lv, *w))
    return lambda x, mu, lv: mixture_log_density(x, mu, lv, weights="mss", dataset_size=DATASET_SIZE,
                                                 backend=name)


def time_call(fn, device, min_runs=5, budget_s=10.0):
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


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def reset_peak_rss():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))


def measure(name, B, D, device, modes):
    """{mode: (median seconds, peak extra bytes)} for one implementation and shape, in this process."""
    x, mu, logvar = make_inputs(B, D, device)
    fn = implementation(name, B)

    def forward():
        with torch.no_grad():
            fn(x, mu, logvar)

    def forward_backward():
        joint, marginal = fn(x, mu, logvar)
        (joint.sum() + marginal.sum()).backward()
        x.grad = mu.grad = logvar.grad = None

    out = {}
    for mode in modes:
        call = forward if mode == "forward" else forward_backward
        call()  # warm-up (and compilation)
        gc.collect()
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            seconds = time_call(call, device)
            peak = torch.cuda.max_memory_allocated() - base
        else:
            base = rss_bytes()
            reset_peak_rss()
            seconds = time_call(call, device)
            peak = max(0, peak_rss_bytes() - base)
        out[mode] = (seconds, peak)
    return out


def device_name(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        import cpuinfo
        return cpuinfo.get_cpu_info()["brand_raw"]
    except ImportError:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else platform.processor()


def exp_rate_per_s():
    """MUFU exp2 throughput bound: 16 per clock per SM at the maximum SM clock."""
    props = torch.cuda.get_device_properties(0)
    clock_mhz = float(subprocess.run(["nvidia-smi", "--query-gpu=clocks.max.sm", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True).stdout.split()[0])
    return 16 * props.multi_processor_count * clock_mhz * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--B", type=int, nargs="+")
    parser.add_argument("--D", type=int, nargs="+")
    parser.add_argument("--impls", nargs="+")
    parser.add_argument("--modes", nargs="+", default=["forward", "forward_backward"])
    parser.add_argument("--reference-max-B", type=int, default=None,
                        help="skip the eager reference above this B (default: CPU 4096, CUDA 16384)")
    parser.add_argument("--compiled-max-B", type=int, default=None,
                        help="skip torch.compile(reference) above this B (default: CPU 4096, CUDA 4096)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cpu = args.device == "cpu"
    Bs = args.B or ([256, 512, 1024, 2048, 4096] if cpu else [1024, 4096, 16384, 65536])
    Ds = args.D or ([10, 32] if cpu else [10, 32, 64])
    fused = [b for b in (["cpu"] if cpu else ["triton", "cuda"]) if available_backends()[b] is None]
    impls = args.impls or ["reference", "compiled_reference", *fused]
    max_B = {"reference": args.reference_max_B or (4096 if cpu else 16384),
             "compiled_reference": args.compiled_max_B or 4096}
    exp_rate = None if cpu else exp_rate_per_s()

    rows = []
    for D in Ds:
        for B in Bs:
            results = {}
            for name in impls:
                if name in max_B and B > max_B[name]:
                    results[name] = {m: (None, None, f"skipped (B > {max_B[name]})") for m in args.modes}
                    continue
                try:
                    results[name] = measure(name, B, D, args.device, args.modes)
                except torch.OutOfMemoryError:
                    results[name] = {m: (None, None, "out of memory") for m in args.modes}
                if not cpu:
                    torch.cuda.empty_cache()
                torch._dynamo.reset()
            for mode in args.modes:
                ref = results.get("reference", {}).get(mode, (None,))[0]
                for name in impls:
                    seconds, peak, *note = results[name][mode]
                    row = {"impl": name, "B": B, "D": D, "mode": mode, "median_ms": None if seconds is None else seconds * 1e3,
                           "peak_mib": None if peak is None else peak / 2 ** 20,
                           "speedup_vs_reference": (ref / seconds) if (ref and seconds) else None,
                           "note": note[0] if note else ""}
                    if exp_rate and seconds:
                        passes = 1 if mode == "forward" else 2
                        row["exp_bound_fraction"] = passes * B * B * (D + 1) / exp_rate / seconds
                    rows.append(row)
                    print(json.dumps(row), flush=True)

    meta = {"device": args.device, "device_name": device_name(args.device), "machine": platform.node(),
            "platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "dtype": "float32", "weights": "mss", "dataset_size": DATASET_SIZE,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if exp_rate:
        meta["exp_rate_per_s"] = exp_rate
    RESULTS.mkdir(exist_ok=True)
    out = args.out or RESULTS / f"tc_{args.device}_{datetime.datetime.now():%Y%m%d_%H%M%S}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"\n{meta['device_name']} ({meta['threads']} threads), torch {meta['torch']} -> {out}\n")
    print(markdown_table(rows, with_bound=exp_rate is not None))


def markdown_table(rows, with_bound=False):
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    head = "| impl | B | D | mode | median ms | × reference | peak MiB |" + (" exp-bound |" if with_bound else "")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        line = (f"| {r['impl']} | {r['B']} | {r['D']} | {r['mode']} | {fmt(r['median_ms'], '.2f')} "
                f"| {fmt(r['speedup_vs_reference'], '.1f')} | {fmt(r['peak_mib'], '.2f')} |")
        if with_bound:
            line += f" {fmt(r.get('exp_bound_fraction'), '.1%')} |"
        if r["note"]:
            line += f" {r['note']}"
        lines.append(line)
    return "\n".join(lines)


if __name__ == "__main__":
    main()
