"""The 2-GPU measurement of `fastft train --gpus 2`: the same run on one GPU and on two.

    python bench/multi_gpu.py --out bench/results/ --deadline-s 560

On the speed benchmark's Qwen3-4B-shaped model (bench/make_model.py) and long-tailed,
variable-length data (bench/make_data.py), at a global effective batch of 16 and the same
number of optimizer steps (30), one run after the other on the same host:

  1gpu   fastft train --batch-size 8 --grad-accum 2              8 x 2 on one GPU
  2gpu   fastft train --batch-size 8 --grad-accum 2 --gpus 2     8 x 1 on each of two GPUs

Both pass --no-auto-batch --padding padded --gradient-checkpointing false: auto-tune's probe
(about 55 s a run) is skipped, so model, data and both runs fit one 10-minute command, and both
train on the same batches (the ones auto-tune picks for this data on an H100: padded,
length-grouped micro-batches of 8 without checkpointing). The two runs see the same micro-batches
in the same optimizer steps: on two GPUs rank r takes micro-batches r, r+2, ... (fastft.train.launch).

tokens/s is each run's fastft.json `final.tokens_per_s` (non-padding tokens of every GPU over
wall time): fastft logs every 10 steps on a GPU and leaves the first interval (compilation,
warm-up) out, so steps 11-30 are timed. The loss compared is the mean over the last logged
interval (steps 21-30) from metrics.jsonl. Targets (issue 12): two GPUs give >= 1.8x the
tokens/s of one; the loss after the same steps is within 1%.

Writes <date>-<gpu>-multi-gpu.json (every number, the commands, per-interval records) and a
.log of every subprocess to --out, and prints a short table.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH, WORK, log, versions, write_json  # noqa: E402
from bench.run import (Logfile, _on_signal, child_env, compare_window, gpu_slug, loss_over,  # noqa: E402
                       make_data, probe_env, read_fastft, run_cmd)

MICRO_BATCH, GRAD_ACCUM = 8, 2     # one GPU: 8 x 2 = the global effective batch of 16
TARGETS = {"tokens_per_s_ratio": 1.8, "loss_rel_diff": 0.01}
# Skips auto-tune's probe (fast, and the same batches in both runs); see the docstring.
FIXED_PLAN = ["--no-auto-batch", "--padding", "padded", "--gradient-checkpointing", "false"]


def runs(gpus: int) -> list[dict]:
    return [{"name": "1gpu", "gpus": 1}, {"name": f"{gpus}gpu", "gpus": gpus}]


def train_cmd(run: dict, model: Path, data: Path, runs_dir: Path, steps: int, lr: float, seed: int,
              python: str = sys.executable) -> list[str]:
    """`fastft train` for one run: the same everything but --gpus (and the run's name)."""
    cmd = [python, "-m", "fastft.cli", "train", str(data), "--model", str(model),
           "--max-steps", str(steps), "--name", run["name"], "--runs-dir", str(runs_dir),
           "--lr", str(lr), "--seed", str(seed), "--warmup-ratio", "0.03",
           "--batch-size", str(MICRO_BATCH), "--grad-accum", str(GRAD_ACCUM), *FIXED_PLAN]
    return cmd + (["--gpus", str(run["gpus"])] if run["gpus"] > 1 else [])


def collect(run_dir: Path, run: dict) -> dict:
    """A finished run's numbers (bench.run.read_fastft), with how many GPUs trained it."""
    res = read_fastft(run_dir, {"name": run["name"]})
    from fastft.core.run import RunFolder
    plan = RunFolder.open(run_dir).read().plan
    res.update(gpus=run["gpus"], world_size=plan.world_size, launcher=plan.launcher)
    return res


def compare(results: list[dict]) -> dict:
    """Ratios of the multi-GPU run to the one-GPU run, and the issue's two targets."""
    ok = {r["recipe"]: r for r in results if r.get("status") == "ok"}
    one = ok.get("1gpu")
    many = next((r for name, r in ok.items() if name != "1gpu"), None)
    out = {"tokens_per_s_ratio": None, "loss_steps": None, "loss_1gpu": None, "loss_multi": None,
           "loss_rel_diff": None}
    if one and many:
        if one.get("tokens_per_s") and many.get("tokens_per_s"):
            out["tokens_per_s_ratio"] = many["tokens_per_s"] / one["tokens_per_s"]
        window = compare_window(many, one)
        if window:
            a, b = loss_over(one, *window), loss_over(many, *window)
            out.update(loss_steps=[window[0] + 1, window[1]], loss_1gpu=a, loss_multi=b,
                       loss_rel_diff=(b - a) / a if a and b is not None else None)
    ratio, diff = out["tokens_per_s_ratio"], out["loss_rel_diff"]
    out["targets"] = {
        "tokens_per_s_ratio": {"value": ratio, "target": f">= {TARGETS['tokens_per_s_ratio']}x",
                               "pass": None if ratio is None else ratio >= TARGETS["tokens_per_s_ratio"]},
        "loss_rel_diff": {"value": diff, "target": f"within {TARGETS['loss_rel_diff']:.0%}",
                          "pass": None if diff is None else abs(diff) <= TARGETS["loss_rel_diff"]},
    }
    return out


def table(summary: dict) -> str:
    lines = [f"fastft --gpus: {summary['shape']}, longtail data, {summary['steps']} steps, effective "
             f"batch 16, {summary['gpu_name']} x {summary['gpus_visible']}, {summary['date']}",
             f"{'run':6} {'per GPU':>9} {'tokens/s':>10} {'loss':>8} {'peak GiB':>9} {'wall s':>7}  status"]
    c = summary["comparison"]
    for r in summary["results"]:
        loss = c["loss_1gpu"] if r["recipe"] == "1gpu" else c["loss_multi"]
        batch = f"{_fmt(r.get('micro_batch'), 'd')} x {_fmt(r.get('grad_accum'), 'd')}"
        lines.append(f"{r['recipe']:6} {batch:>9} {_fmt(r.get('tokens_per_s'), ',.0f'):>10} "
                     f"{_fmt(loss, '.4f'):>8} {_fmt(r.get('peak_mem_alloc_gib'), '.2f'):>9} "
                     f"{_fmt(r.get('wall_s'), '.0f'):>7}  {r.get('status')}")
    if c["loss_steps"]:
        lines.append(f"  loss: mean over steps {c['loss_steps'][0]}-{c['loss_steps'][1]}")
    for name, t in c["targets"].items():
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
        value = "-" if t["value"] is None else f"{t['value']:.4g}"
        lines.append(f"  [{mark}] {name}: {value} ({t['target']})")
    return "\n".join(lines)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def visible_gpus() -> int:
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(), capture_output=True,
                          text=True, timeout=300)
    return int(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=2, help="GPUs of the multi-GPU run (2)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps of each run (30)")
    ap.add_argument("--examples", type=int, default=0,
                    help="examples in the data (default: enough for --steps x 16, at least 256)")
    ap.add_argument("--out", type=Path, default=BENCH / "results", help="results folder (bench/results)")
    ap.add_argument("--work", type=Path, default=WORK, help="models, data, runs (bench/work)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--deadline-s", type=float, default=0,
                    help="stop a run still going this many seconds after start; 0 = none")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse_args(argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    t0 = time.perf_counter()

    def remaining() -> float | None:
        return a.deadline_s - (time.perf_counter() - t0) if a.deadline_s else None

    env = probe_env()
    gpus = visible_gpus()
    if gpus < a.gpus:
        raise SystemExit(f"this bench needs {a.gpus} GPUs; {gpus} visible")
    work, out = a.work.resolve(), a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    date, name = datetime.now().strftime("%Y-%m-%d"), env["gpu"]["name"]
    stem = f"{date}-{gpu_slug(name)}-multi-gpu"
    logfile = Logfile(out / f"{stem}.log")
    summary = {"date": date, "shape": "4b", "steps": a.steps, "effective_batch": MICRO_BATCH * GRAD_ACCUM,
               "gpu_name": name, "gpu": env["gpu"], "gpus_visible": gpus, "versions": env["versions"],
               "runner_versions": versions(), "plan": "fixed: " + " ".join(FIXED_PLAN) +
               " (auto-tune's probe skipped in both runs)", "results": [], "commands": [],
               "timings": {}, "command": " ".join([Path(sys.executable).name, *sys.argv])}
    try:
        model, data = _prepare(a, work, logfile, remaining, summary)
        for run in runs(a.gpus):
            summary["results"].append(_train(run, a, model, data, work / "runs-multi", logfile,
                                             remaining, summary))
        summary["status"] = "done"
    finally:
        summary["comparison"] = compare(summary["results"])
        summary["timings"]["total_s"] = time.perf_counter() - t0
        write_json(out / f"{stem}.json", summary)
        print(table(summary), flush=True)
        log(f"results: {out / f'{stem}.json'}, log: {logfile.path}")
    return 0 if all(t["pass"] for t in summary["comparison"]["targets"].values()) else 1


def _prepare(a, work: Path, logfile, remaining, summary: dict) -> tuple[Path, Path]:
    """The 4B-shaped model and the long-tailed data, built once and kept in --work."""
    t = time.perf_counter()
    rc, tail, _ = run_cmd("make_model", [sys.executable, str(BENCH / "make_model.py"), "--shape", "4b",
                                         "--out-dir", str(work / "models")], logfile, timeout=remaining())
    if rc != 0:
        raise SystemExit("building the model failed:\n" + "\n".join(tail[-30:]))
    model = Path(next(line.strip() for line in reversed(tail) if Path(line.strip()).is_dir()))
    summary["timings"]["model_s"] = time.perf_counter() - t
    t = time.perf_counter()
    n = a.examples or max(256, a.steps * MICRO_BATCH * GRAD_ACCUM)
    data = make_data(work, "longtail", 2048, n, 0, model, logfile, remaining, True)
    summary["timings"]["data_s"] = time.perf_counter() - t
    summary.update(model=str(model), data={"path": str(data), "examples": n, "dist": "longtail",
                                           "tokens": 2048})
    return model, data


def _train(run: dict, a, model: Path, data: Path, runs_dir: Path, logfile, remaining,
           summary: dict) -> dict:
    run_dir = runs_dir / run["name"]
    if run_dir.exists():
        shutil.rmtree(run_dir)
    cmd = train_cmd(run, model, data, runs_dir, a.steps, a.lr, a.seed)
    summary["commands"].append(" ".join(cmd))
    left, tail = remaining(), []
    try:
        rc, tail, secs = run_cmd(run["name"], cmd, logfile, None if left is None else left - 10,
                                 watch=run_dir / "metrics.jsonl")
        if rc != 0:
            raise RuntimeError(f"exit {rc}")
        res = collect(run_dir, run)
        res["wall_s"] = secs
        return res
    except (SystemExit, KeyboardInterrupt):
        raise
    except Exception as e:   # the other run's numbers are still worth keeping
        log(f"[{run['name']}] FAILED: {e}")
        return {"recipe": run["name"], "gpus": run["gpus"], "status": "error", "error": str(e),
                "output_tail": tail[-40:]}


if __name__ == "__main__":
    sys.exit(main())
