"""`fastft export` through each path on the same run: direct (GGUF from memory) vs the detour.

    python bench/export_paths.py --shape 4b --out bench/results/

Builds the model (bench/make_model.py) and a short run on it (`fastft train
examples/favorite_color.jsonl --max-steps 5`), or takes one (--run), then times, --rounds times
(2) in the order given:

  gguf/direct    fastft export RUN --gguf q4_k_m                (the default: no 16-bit checkpoint)
  gguf/detour    fastft export RUN --gguf q4_k_m --no-direct    (through the merged checkpoint)
  merged         fastft export RUN --merged --gguf q4_k_m --gguf q8_0
  gguf/gate-beside  as gguf/direct, the gate's 16-bit model loaded by the export's process
                 beside the child (pipeline.REFERENCE_IN_CHILD off, as before 2026-12-07's
                 fifteenth session): the A/B of the child measuring it
  gguf/score-early  as gguf/direct, the gate's llama.cpp side started as soon as the child has
                 written the file it quantized, while the child measures the 16-bit side
                 (pipeline.SCORE_EARLY on, on half the cores), not once the child is done:
                 the A/B of that overlap (off since 2026-12-07's eighteenth session)
  gguf/score-early-all  the same on every core but the child's and the hashes'
                 (pipeline.EARLY_CORES 1.0, as e5abda8 had it)

--quant Q puts Q in place of q4_k_m; --child-device DEV has the direct child quantize on DEV
(pipeline.DIRECT_QUANTIZE_DEVICE: "cpu" on a machine without a GPU, where by default llama-
quantize quantizes after the child, and nothing overlaps it).

Each is one `fastft export --json` process timed from outside (wall), with the export's own stage
times, which path it took and its peak scratch disk (both from --json). The first round fills
the page cache (the targets are for a warm machine); compare the later ones. Results:
<date>-<gpu>-export-paths.json in --out, and a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (REPO, WORK, gpu_info, llama_cpp_root, log, print_rows,  # noqa: E402
                          versions, write_json)
from bench.run import Logfile, child_env, gpu_slug, make_model  # noqa: E402

CASES = {
    "gguf/direct": ["--gguf", "q4_k_m"],
    "gguf/detour": ["--gguf", "q4_k_m", "--no-direct"],
    "merged": ["--merged", "--gguf", "q4_k_m", "--gguf", "q8_0"],
    "gguf/gate-beside": ["--gguf", "q4_k_m"],
    "gguf/score-early": ["--gguf", "q4_k_m"],
    "gguf/score-early-all": ["--gguf", "q4_k_m"],
}
# Cases that run fastft with module constants set (their A/B toggles), as `module.NAME = value`
PATCHES = {"gguf/gate-beside": ["fastft.export.pipeline.REFERENCE_IN_CHILD = False"],
           "gguf/score-early": ["fastft.export.pipeline.SCORE_EARLY = True"],
           "gguf/score-early-all": ["fastft.export.pipeline.SCORE_EARLY = True",
                                    "fastft.export.pipeline.EARLY_CORES = 1.0"]}
# The targets on an H100 with the 4B shape, warm (seconds).
TARGETS = {"gguf/direct": 45.0, "merged": 120.0}
# The export's own timeline (fastft.core.timeline); the direct child's sub-stages are in export.log.
STAGES = ("startup", "imports", "tools", "load", "reference", "merge", "convert", "quantize",
          "check", "retention", "docs")


def fastft(*args: str, patch: list[str] | str | None = None) -> list[str]:
    """The fastft command line; with `patch` (`module.NAME = value` each), run as
    `python -m fastft.cli` after it."""
    patches = [patch] if isinstance(patch, str) else patch or []
    if not patches:
        return [sys.executable, "-m", "fastft.cli", *args]
    modules = ", ".join(dict.fromkeys(p.split("=")[0].strip().rsplit(".", 1)[0] for p in patches))
    program = (f"import sys, runpy, {modules}; {'; '.join(patches)}; "
               f"sys.argv = ['fastft', *sys.argv[1:]]; "
               f"runpy.run_module('fastft.cli', run_name='__main__')")
    return [sys.executable, "-c", program, *args]


def train_run(model: Path, work: Path, logfile: Logfile) -> Path:
    """A short run on `model` (only its adapter matters here); an earlier one in `work` is reused."""
    runs = work / "runs"
    if (runs / "latest" / "adapter" / "adapter_model.safetensors").is_file():
        return runs / "latest"
    cmd = fastft("train", str(REPO / "examples" / "favorite_color.jsonl"), "--model", str(model),
                 "--max-steps", "5", "--name", "export-paths", "--runs-dir", str(runs))
    p = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, errors="replace")
    logfile.write(p.stdout + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"training failed (exit {p.returncode}); see {logfile.path}")
    return runs / "latest"


def export_once(run: Path, case: str, out: Path, logfile: Logfile, quant: str = "q4_k_m",
                child_device: str | None = None) -> dict:
    """One export of `case`, timed from outside; its --json result's timings, path, disk."""
    patches = list(PATCHES.get(case, []))
    if child_device:
        patches.append(f"fastft.export.pipeline.DIRECT_QUANTIZE_DEVICE = {child_device!r}")
    args = [quant if a == "q4_k_m" else a for a in CASES[case]]
    cmd = fastft("export", str(run), *args, "--out", str(out), "--force", "--json", patch=patches)
    log(f"[{case}] $ {' '.join(cmd)}")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, errors="replace")
    wall = time.perf_counter() - t0
    logfile.write(f"\n===== [{case}] {' '.join(cmd)}\n{p.stderr}")
    if p.returncode != 0:
        return {"case": case, "wall_s": wall, "error": p.stderr[-2000:]}
    res = json.loads(p.stdout)
    return {"case": case, "wall_s": wall, "path": res["path"], "timings": res["timings"],
            "peak_disk_bytes": res["peak_disk_bytes"], "warnings": res["warnings"],
            # base, adapter and each file's loss and KL: where the gate's 16-bit side was
            # measured (gguf/gate-beside) must not change them
            "retention": res["manifest"].get("retention"),
            "files_bytes": {Path(g["path"]).name: g["bytes"] for g in res["ggufs"].values()}}


def rows(results: list[dict]) -> list[list[str]]:
    out = []
    for r in results:
        t = r.get("timings", {})
        out.append([str(r["round"]), r["case"], r.get("path", "error"), f"{r['wall_s']:.1f}",
                    *(f"{t[f'{s}_s']:.1f}" if f"{s}_s" in t else "-" for s in STAGES),
                    f"{r.get('peak_disk_bytes', 0) / 1e9:.2f}"])
    return out


def save(a, run: Path, results: list[dict]) -> None:
    gpu = gpu_info()
    last = {r["case"]: r["wall_s"] for r in results if r["round"] == a.rounds and "error" not in r}
    summary = {"date": datetime.now().isoformat(timespec="seconds"), "gpu": gpu, "shape": a.shape,
               "run": str(run), "versions": versions(), "results": results,
               "targets": {c: {"target_s": t, "measured_s": last.get(c),
                               "met": last.get(c) is not None and last[c] <= t}
                           for c, t in TARGETS.items()}}
    path = a.out / f"{datetime.now():%Y-%m-%d}-{gpu_slug((gpu or {}).get('name'))}-export-paths.json"
    write_json(path, summary)
    log(f"wrote {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="4b", choices=("4b", "tiny"))
    ap.add_argument("--run", type=Path, help="a trained run to export (default: train one)")
    ap.add_argument("--cases", default="gguf/direct,gguf/detour,merged",
                    help=f"comma-separated, in this order, of {', '.join(CASES)}")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quant", default="q4_k_m", help="the GGUF type of every case (q4_k_m)")
    ap.add_argument("--child-device", help="where the direct child quantizes (default: the GPU, "
                    "or llama-quantize after it); \"cpu\" for the overlap on a machine without one")
    ap.add_argument("--work", type=Path, default=WORK / "export-paths")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    a = ap.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.mkdir(parents=True, exist_ok=True)
    logfile = Logfile(a.out / "export-paths.log")
    # fastft's cached llama.cpp, else built from the offline source (.whl/llama.cpp-src.tar.gz)
    os.environ["UNSLOTH_LLAMA_CPP_PATH"] = str(llama_cpp_root(str(a.work / "fastft-cache")))
    run = a.run or train_run(make_model(a.shape, a.work, logfile, lambda: None, True), a.work, logfile)
    results: list[dict] = []
    for n in range(1, a.rounds + 1):
        for case in a.cases.split(","):
            out = a.work / "exports" / case.replace("/", "-")
            results.append({"round": n, **export_once(run, case, out, logfile, a.quant,
                                                      a.child_device)})
            save(a, run, results)              # after each: a killed bench keeps what it measured
    print_rows("fastft export, by path (seconds; peak scratch disk in GB)",
               ["round", "case", "path", "wall", *STAGES, "peak disk"], rows(results))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
