"""Does Unsloth's per-block compile pay for itself on a short run? `fastft train` with
`--compile on` and `--compile off`, side by side on one host, model and data.

    python bench/compile_choice.py --shape 4b --work /tmp/ttfc --scenario favorite --runs on,on,off

Runs go in the order given, sharing one set of compile caches (Triton, Inductor, Unsloth's), so
the first `on` fills them and a later `on` is the warm case a user meets on a second run. For each
run: wall time, fastft's own stage times, the first logged steps' seconds (where the compile
happens), the steady tokens/s and the losses. The model and data are those of bench/ttfc.py
(built once into --work). Results: <date>-<gpu>-compile-<scenario>.json in --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH, log, print_rows, write_json  # noqa: E402
from bench.run import Logfile, free_stem, gpu_slug, make_model, probe_env, run_cmd  # noqa: E402
from bench.ttfc import SCENARIOS, data_for, run_env  # noqa: E402


def one_run(i: int, setting: str, a, model: Path, data: Path, caches: Path, logfile) -> dict:
    runs = a.work / "compile-runs"
    name = f"{a.scenario}-{i}-{setting}-{datetime.now():%H%M%S}"   # a warm host keeps older runs
    cmd = [sys.executable, "-m", "fastft.cli", "train", str(data), "--model", str(model),
           "--epochs", f"{SCENARIOS[a.scenario]['epochs']:g}", "--compile", setting,
           "--name", name, "--runs-dir", str(runs)]
    t = time.perf_counter()
    rc, tail, _ = run_cmd(name, cmd, logfile, a.timeout, echo=not a.quiet,
                          env=run_env(caches, Path("/nonexistent")))
    wall = time.perf_counter() - t
    out = {"run": name, "compile": setting, "rc": rc, "wall_s": round(wall, 2)}
    if rc != 0:
        return {**out, "tail": tail[-20:]}
    record = json.loads((runs / name / "fastft.json").read_text())
    steps = [json.loads(line) for line in (runs / name / "metrics.jsonl").read_text().splitlines()
             if line.strip()]
    first = next((s for s in steps if "seconds" in s), {})
    final = record.get("final") or {}
    return {**out, "plan_compile": record["plan"].get("compile"), "timings": record.get("timings"),
            "first_log": {k: first.get(k) for k in ("step", "seconds", "loss")},
            "tokens_per_s": final.get("tokens_per_s"), "seconds_per_step": final.get("seconds_per_step"),
            "train_loss": final.get("train_loss"), "last_loss": final.get("last_loss"),
            "steps": final.get("global_step")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["4b", "tiny"], default="4b")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ttfc"))
    ap.add_argument("--out", type=Path, default=BENCH / "results")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS), default="favorite")
    ap.add_argument("--runs", default="on,on,off", help="comma-separated --compile settings, in order")
    ap.add_argument("--longtail-examples", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=400, help="seconds per run")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    a.work = a.work.resolve()
    env = probe_env()
    gpu = env["gpu"]
    a.out.mkdir(parents=True, exist_ok=True)
    stem = free_stem(a.out, f"{datetime.now():%Y-%m-%d}-{gpu_slug(gpu and gpu['name'])}-compile-{a.scenario}")
    logfile = Logfile(a.out / f"{stem}.log")
    model = make_model(a.shape, a.work, logfile, lambda: None, not a.quiet)
    data = data_for(a.scenario, a, a.work, model, logfile, lambda: None, not a.quiet)
    caches = a.work / "compile-caches"
    result = {"benchmark": "compile choice", "scenario": a.scenario, "shape": a.shape,
              "gpu": gpu, "versions": env["versions"], "command": " ".join(sys.argv), "runs": []}
    for i, setting in enumerate(a.runs.split(",")):
        result["runs"].append(one_run(i, setting, a, model, data, caches, logfile))
        write_json(a.out / f"{stem}.json", result)
    rows = [[r["run"], f"{r['wall_s']:.1f}", str(r.get("plan_compile")),
             *(f"{(r.get('timings') or {}).get(k, 0):.1f}" for k in ("imports_s", "prepare_s", "plan_s", "train_s")),
             str((r.get("first_log") or {}).get("seconds")), str(r.get("tokens_per_s")),
             str(r.get("train_loss"))] for r in result["runs"]]
    print_rows(f"compile choice: {a.scenario}", ["run", "wall", "compiled", "imports", "prepare",
                                                 "plan", "train", "first log s", "tok/s", "train loss"], rows)
    log(f"results: {a.out / (stem + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
