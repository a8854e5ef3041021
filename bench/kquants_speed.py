"""Seconds per 2^25 elements of fastft.export.kquants' q4_K and q6_K on CUDA: the torch path
against the Triton kernels, each launched as it is (eager) and replayed as the export runs it
(gpuquant.Quantizer's CUDA graph); medians of 3 after a warm-up (Triton compiles there), the
peak GPU memory of a call, and whether the two paths' bytes are the same.

    python bench/kquants_speed.py [--elements 33554432] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import time


def _median_seconds(run, runs: int) -> float:
    import torch

    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(x, kind: str, triton: bool, runs: int) -> tuple[float, float, float, object]:
    """(eager s, graph s, peak GiB of an eager call, its bytes) of one path."""
    import torch

    from fastft.export import gpuquant, kquants

    torch.cuda.reset_peak_memory_stats()
    out = kquants.quantize(x, kind, triton=triton)
    peak = torch.cuda.max_memory_allocated() / 2**30
    eager = _median_seconds(lambda: kquants.quantize(x, kind, triton=triton), runs)
    before, kquants.TRITON = kquants.TRITON, triton   # the Quantizer's quantize picks by it
    try:
        quantizer = gpuquant.Quantizer("cuda")
        graph = _median_seconds(lambda: quantizer._run(x, kind), runs)
    finally:
        kquants.TRITON = before
    return eager, graph, peak, out


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 25)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    x = torch.randn(args.elements, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    x *= 0.02
    print(f"{torch.cuda.get_device_name()}, {args.elements} elements, medians of {args.runs}")
    print(f"{'type':6} {'path':7} {'eager s':>9} {'graph s':>9} {'peak GiB':>9}  same bytes")
    for kind in ("q4_K", "q6_K"):
        rows = {path: _measure(x, kind, path == "triton", args.runs) for path in ("torch", "triton")}
        same = torch.equal(rows["torch"][3], rows["triton"][3])
        for path, (eager, graph, peak, _) in rows.items():
            print(f"{kind:6} {path:7} {eager:9.4f} {graph:9.4f} {peak:9.2f}  {same}")
        speedup = rows["torch"][1] / rows["triton"][1]
        print(f"{kind:6} graph speedup {speedup:.1f}x")


if __name__ == "__main__":
    main()
