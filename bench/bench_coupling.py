"""Benchmark of the coupling transforms (rational-quadratic spline, soft-clamped affine).

Times forward, inverse (both without autograd) and forward+backward (gradients to x and every
raw parameter of ``y.sum() + logabsdet.sum()``), median of repeated runs, for each implementation
on ``x [N, C]`` with K bins, float32. The spline is compared with its peers on identical raw
parameters: nflows' ``unconstrained_rational_quadratic_spline`` (the same parametrisation: outputs
are checked to agree) and zuko's ``MonotonicRQSTransform`` (its own soft-clamped, exp-derivative
parametrisation of the same raw tensors: timed only). Speed-ups against the eager reference and
against nflows are measured in the same run; peak memory as in ``bench_tc.py`` (CPU: rise of the
process's peak RSS after warm-up, freed heap returned to the OS first; CUDA: ``max_memory_allocated``).

    python bench/bench_coupling.py                     # CPU
    python bench/bench_coupling.py --device cuda       # GPU (fused = triton)
    python bench/bench_coupling.py --keep-freed-memory # CPU, glibc keeping freed blocks (all impls)

On CPU a fresh 100 MB gradient faults in page by page, and what that costs depends on the machine
(the forward+backward's system time): ``--keep-freed-memory`` sets ``training.keep_freed_memory``
(as ``msvae fit`` does) for the whole process, every implementation alike, so the row compares the
arithmetic; the run's metadata says which allocator setting it had.

Writes ``bench/results/coupling_<device>_<timestamp>.json`` and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from common import markdown_table, measure_modes, run_metadata, write_results

from msvae.models.training import keep_freed_memory
from msvae.ops import affine_coupling, available_backends, rq_spline

TAIL_BOUND = 3.0
MODES = ("forward", "inverse", "forward_backward")


def spline_inputs(N, C, K, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(N, C, generator=g) * 1.5  # about 5% of the elements land in the tails
    w, h = torch.randn(N, C, K, generator=g), torch.randn(N, C, K, generator=g)
    d = torch.randn(N, C, K - 1, generator=g)
    return [t.to(device) for t in (x, w, h, d)]


def spline_impl(name):
    """fn(x, widths_raw, heights_raw, derivs_raw, inverse) -> (y, logabsdet), or None if missing."""
    if name == "nflows":
        try:
            from nflows.transforms.splines.rational_quadratic import unconstrained_rational_quadratic_spline
        except ImportError:
            return None
        return lambda x, w, h, d, inverse: unconstrained_rational_quadratic_spline(
            x, w, h, d, inverse=inverse, tail_bound=TAIL_BOUND)
    if name == "zuko":
        try:
            from zuko.transforms import MonotonicRQSTransform
        except ImportError:
            return None

        def zuko_spline(x, w, h, d, inverse):
            transform = MonotonicRQSTransform(w, h, d, bound=TAIL_BOUND)
            return (transform.inv if inverse else transform).call_and_ladj(x)
        return zuko_spline
    return lambda x, w, h, d, inverse: rq_spline(x, w, h, d, tail_bound=TAIL_BOUND, inverse=inverse,
                                                 backend=name)


def affine_inputs(N, C, K, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    return [(torch.randn(N, C, generator=g) * s).to(device) for s in (1.0, 1.0, 2.0)]


def affine_impl(name):
    return lambda x, t, r, inverse: affine_coupling(x, t, r, inverse=inverse, backend=name)


def measure(call, inputs, device, modes, settle_runs=0):
    """{mode: (median seconds, peak extra bytes)} of call(*inputs, inverse=...)."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs]

    def run(mode):
        if mode == "forward_backward":
            y, ld = call(*leaves, inverse=False)
            (y.sum() + ld.sum()).backward()
            for t in leaves:
                t.grad = None
        else:
            with torch.no_grad():
                call(*leaves, inverse=mode == "inverse")

    return measure_modes(run, modes, device, settle_runs)


def agreement_with_nflows(fused, N, C, K, device):
    """Max |difference| of (y, logabsdet) between the fused backend and nflows, forward and inverse,
    in float64 (float32 differences mostly measure the inverse's conditioning)."""
    nflows = spline_impl("nflows")
    if nflows is None:
        return None
    inputs = [t.double() for t in spline_inputs(min(N, 4096), C, K, device)]
    with torch.no_grad():
        diffs = [max((a - b).abs().max().item() for a, b in zip(spline_impl(fused)(*inputs, inverse),
                                                                nflows(*inputs, inverse)))
                 for inverse in (False, True)]
    return max(diffs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--shapes", nargs="+", default=None, help="N,C,K triples (default: 4096,64,8 65536,64,8)")
    parser.add_argument("--impls", nargs="+", default=None)
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--no-affine", action="store_true", help="skip the affine transform")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc keeps freed blocks for reuse (training.keep_freed_memory), for all impls")
    args = parser.parse_args(argv)
    kept = keep_freed_memory() if args.keep_freed_memory else False
    cpu = args.device == "cpu"
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else \
        ([(4096, 64, 8), (65536, 64, 8)] if cpu else [(65536, 64, 8), (262144, 64, 8)])
    fused = [b for b in (["cpu"] if cpu else ["triton"]) if available_backends()[b] is None]
    spline_impls = args.impls or ["reference", *fused, "nflows", "zuko"]

    rows = []
    for op, impls, make, get in (("rq_spline", spline_impls, spline_inputs, spline_impl),
                                 ("affine", ["reference", *fused], affine_inputs, affine_impl)):
        if op == "affine" and args.no_affine:
            continue
        for N, C, K in shapes:
            results = {}
            for name in impls:
                call = get(name)
                if call is None:
                    results[name] = {m: (None, None, "not installed") for m in args.modes}
                    continue
                try:
                    results[name] = measure(call, make(N, C, K, args.device), args.device, args.modes,
                                            settle_runs=3 if kept else 0)
                except torch.OutOfMemoryError:
                    results[name] = {m: (None, None, "out of memory") for m in args.modes}
                if not cpu:
                    torch.cuda.empty_cache()
            for mode in args.modes:
                ref = results.get("reference", {}).get(mode, (None,))[0]
                peer = results.get("nflows", {}).get(mode, (None,))[0]
                for name in impls:
                    seconds, peak, *note = results[name][mode]
                    row = {"op": op, "impl": name, "N": N, "C": C, "K": K, "mode": mode,
                           "median_ms": None if seconds is None else seconds * 1e3,
                           "peak_mib": None if peak is None else peak / 2 ** 20,
                           "speedup_vs_reference": ref / seconds if ref and seconds else None,
                           "speedup_vs_nflows": peer / seconds if peer and seconds else None,
                           "note": note[0] if note else ""}
                    rows.append(row)
                    print(json.dumps(row), flush=True)

    agreement = ({f"{N},{C},{K}": agreement_with_nflows(fused[0], N, C, K, args.device)
                  for N, C, K in shapes} if fused else None)
    meta = run_metadata(args.device, dtype="float32", tail_bound=TAIL_BOUND,
                        max_abs_diff_vs_nflows=agreement, keep_freed_memory=kept)
    write_results("coupling", meta, rows, args.out)
    print(f"max |fused - nflows| of (y, logabsdet): {agreement}\n")
    print(markdown_table(rows, [("op", "op", None), ("impl", "impl", None), ("N", "N", None),
                                ("C", "C", None), ("K", "K", None), ("mode", "mode", None),
                                ("median ms", "median_ms", ".1f"),
                                ("× reference", "speedup_vs_reference", ".1f"),
                                ("× nflows", "speedup_vs_nflows", ".1f"), ("peak MiB", "peak_mib", ".1f")]))


if __name__ == "__main__":
    main()
