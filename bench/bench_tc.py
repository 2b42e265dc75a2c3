"""Benchmark of the mixture log-density op (the beta-TCVAE estimator's core).

Times forward and forward+backward (median of repeated runs) of each implementation on a grid of
batch sizes (Q = B, MSS weights) and dimensions, with the speed-up against the eager reference
measured in the same run and the peak extra memory above what the inputs hold: on CPU the rise of
the process's peak RSS (reset through /proc/self/clear_refs after the warm-up, so compilation is
not counted), on CUDA ``torch.cuda.max_memory_allocated``. On CUDA it also reports the
fraction of the exponential-throughput bound achieved: a pass needs Q*B*(D+1) exponentials
(forward one pass, forward+backward three: the backward's row and column kernels both recompute), and
the bound is 16 exp2 per clock per SM (the MUFU rate of sm_80/sm_90) at the maximum SM clock.

    python bench/bench_tc.py                       # CPU grid (issue #2)
    python bench/bench_tc.py --device cuda         # GPU grid (issue #3)

Writes ``bench/results/tc_<device>_<timestamp>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import torch
from common import markdown_table, measure_modes, run_metadata, write_results

from msvae.ops import available_backends, mixture_log_density, mixture_weights
from msvae.ops import reference

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


def measure(name, B, D, device, modes):
    """{mode: (median seconds, peak extra bytes)} for one implementation and shape."""
    x, mu, logvar = make_inputs(B, D, device)
    fn = implementation(name, B)

    def run(mode):
        if mode == "forward":
            with torch.no_grad():
                fn(x, mu, logvar)
        else:
            joint, marginal = fn(x, mu, logvar)
            (joint.sum() + marginal.sum()).backward()
            x.grad = mu.grad = logvar.grad = None

    return measure_modes(run, modes, device)


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
                        passes = 1 if mode == "forward" else 3  # backward recomputes in two kernels
                        row["exp_bound_fraction"] = passes * B * B * (D + 1) / exp_rate / seconds
                    rows.append(row)
                    print(json.dumps(row), flush=True)

    meta = run_metadata(args.device, dtype="float32", weights="mss", dataset_size=DATASET_SIZE)
    if exp_rate:
        meta["exp_rate_per_s"] = exp_rate
    write_results("tc", meta, rows, args.out)
    columns = [("impl", "impl", None), ("B", "B", None), ("D", "D", None), ("mode", "mode", None),
               ("median ms", "median_ms", ".2f"), ("× reference", "speedup_vs_reference", ".1f"),
               ("peak MiB", "peak_mib", ".2f")]
    if exp_rate:
        columns.append(("exp-bound", "exp_bound_fraction", ".1%"))
    print(markdown_table(rows, columns))


if __name__ == "__main__":
    main()
