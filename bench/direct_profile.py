"""Where the direct export's child spends its time: `fastft.export.direct.export` run in this
process on a trained run, GGUF only (the child quantizes: no 16-bit file), with each step's
function timed from outside (summed over the threads that call it), so no timer lives in the
product's hot path.

    python bench/direct_profile.py RUN [--gguf q4_k_m] [--out DIR]

Prints one row per function: calls, seconds summed over threads, and the wall of the whole.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

TOTALS: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
LOCK = threading.Lock()


def timed(owner, attr: str, label: str | None = None) -> None:
    """Replace owner.attr with a wrapper adding its calls and seconds to TOTALS[label]."""
    fn = getattr(owner, attr)
    label = label or f"{getattr(owner, '__name__', owner)}.{attr}"

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with LOCK:
                TOTALS[label][0] += 1
                TOTALS[label][1] += time.perf_counter() - t

    setattr(owner, attr, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--gguf", action="append", default=None)
    ap.add_argument("--out", type=Path, default=None, help="write the table here as JSON too")
    ap.add_argument("--device", default="auto", help="where the child quantizes (cpu: a check)")
    ap.add_argument("--lookahead", type=int, default=None,
                    help="tensors the converter computes ahead (direct.LOOKAHEAD) instead")
    ap.add_argument("--no-graphs", action="store_true", help="quantize without CUDA graphs")
    ap.add_argument("--keep", type=Path, default=None, help="move the GGUF files made here into this folder")
    ap.add_argument("--no-handoff", action="store_true",
                    help="quantize every tensor from its 16-bit bytes moved back to the GPU, as "
                         "before 2026-12-07's thirteenth session (direct.merged_values off)")
    ap.add_argument("--no-streams", action="store_true",
                    help="every thread on the default CUDA stream, as before 2026-12-07's "
                         "thirteenth session (gpuquant.own_stream off)")
    ap.add_argument("--copy-back", action="store_true",
                    help="every merged tensor copied back to the CPU for the converter and compared "
                         "with its bytes, as before 2026-12-07's fourteenth session (direct.STAND_IN "
                         "off: no base tensor standing in for the merge)")
    ap.add_argument("--quant-lookahead", type=int, default=None,
                    help="tensors quantized ahead of the writer (gpuquant.LOOKAHEAD) instead")
    a = ap.parse_args()
    t0 = time.perf_counter()
    import torch  # noqa: F401
    import transformers  # noqa: F401
    t_imports = time.perf_counter() - t0

    from fastft.export import direct, gpuquant, pipeline
    from fastft.export.config import ExportConfig
    from rich.console import Console

    with tempfile.TemporaryDirectory(dir=a.run.parent) as tmp:
        opts = ExportConfig(run=str(a.run), gguf=tuple(a.gguf or ("q4_k_m",)), out=f"{tmp}/out",
                            min_retention=0)
        pipeline.DIRECT_QUANTIZE_DEVICE = a.device
        direct.LOOKAHEAD = a.lookahead or direct.LOOKAHEAD
        gpuquant.LOOKAHEAD = a.quant_lookahead or gpuquant.LOOKAHEAD
        if a.no_graphs:
            gpuquant.MAX_GRAPHS = 0
        if a.no_handoff:
            direct.merged_values = lambda raw, made: None
        if a.no_streams:
            gpuquant.own_stream = lambda device: None
        if a.copy_back:
            direct.STAND_IN = False
        print(f"lookahead {direct.LOOKAHEAD}, quantize lookahead {gpuquant.LOOKAHEAD}, "
              f"CUDA graphs at most {getattr(gpuquant, 'MAX_GRAPHS', 0)}, "
              f"merged tensors handed to the quantizer: {not a.no_handoff}, "
              f"a stream per thread: {not a.no_streams}, copied back: {a.copy_back}")
        plan = pipeline.make_plan(opts)
        pipeline.find_tools(plan, Console(stderr=True, quiet=True))
        plan.scratch = Path(tmp) / "scratch"
        plan.work.mkdir(parents=True)
        plan.stage.mkdir()
        job = pipeline._direct_job(plan, direct.weights_dtype(plan.info.model_path))
        job.work.mkdir(parents=True)
        converter_modules = direct.llama_cpp_modules

        @contextlib.contextmanager
        def llama_cpp_modules(root):   # llama.cpp's converter, timed inside once imported
            with converter_modules(root) as (conversion, gguf):
                timed(gguf.lazy.LazyBase, "to_eager",
                      "converter: a tensor computed (to_eager: merge, casts, 16-bit rounding)")
                timed(gguf.quants, "_apply_over_grouped_rows",
                      "converter: numpy 16-bit rounding (gguf.quants, 16 rows at a time)")
                yield conversion, gguf

        direct.llama_cpp_modules = llama_cpp_modules
        for owner, attr in [(direct, "merge_source"), (direct, "write_config_folder"),
                            (direct, "_prepared"),
                            (direct, "_plans"), (direct, "_write_probe"), (direct, "_write_quantized"),
                            (direct, "_write_gguf"), (direct.MergeSource, "_merged"),
                            (direct, "bf16_bytes"), (direct, "merged_values"),
                            (gpuquant, "dry_run"), (gpuquant, "quantize_file"),
                            (gpuquant, "_tensor"), (gpuquant, "_floats"), (gpuquant, "_quantized"),
                            (gpuquant, "header_bytes")]:
            timed(owner, attr)
        original = gpuquant.quantize_file

        def quantize_file(src, plans, on, read=None):   # the quantizing thread's waits for tensors
            def waited(ti):
                t = time.perf_counter()
                try:
                    return read(ti)
                finally:
                    with LOCK:
                        TOTALS["quantize thread waiting for a computed tensor"][0] += 1
                        TOTALS["quantize thread waiting for a computed tensor"][1] += time.perf_counter() - t
            return original(src, plans, on, waited if read else None)

        gpuquant.quantize_file = quantize_file
        result = direct.ChildResult()
        t1 = time.perf_counter()
        why = direct.export(job, result)
        wall = time.perf_counter() - t1
        if a.keep:
            a.keep.mkdir(parents=True, exist_ok=True)
            for path in job.quants.values():
                if path.exists():
                    path.rename(a.keep / path.name)
    rows = {"imports (torch, transformers)": [1, t_imports], **TOTALS,
            "export() wall": [1, wall]}
    print(f"job: quants {list(job.quants)}, device {job.device}; declined: {why}")
    print(f"child's own stage times: {json.dumps({k: round(v, 2) for k, v in result.seconds.items()})}")
    print(f"quantized: {result.quantized}")
    for label, (calls, seconds) in rows.items():
        print(f"{seconds:9.2f} s  {int(calls):5d} calls  {label}")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "direct-profile.json").write_text(json.dumps(
            {"rows": rows, "child": result.seconds, "quantized": result.quantized}, indent=1))


if __name__ == "__main__":
    main()
