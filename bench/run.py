"""One benchmark: the classic QLoRA recipe vs `fastft train`, same model, data and GPU.

    python bench/run.py --shape 4b --steps 20 --out bench/results/

Builds the model (bench/make_model.py) and data (bench/make_data.py) if missing, then runs each
recipe in its own subprocess, one after another on the same GPU:

  classic       bench/classic.py at micro-batch 2 x accumulation 4
  fastft2x4     fastft train --batch-size 2 --grad-accum 4 --no-auto-batch  (memory, loss)
  fastft        fastft train with auto micro-batch, effective batch 8       (throughput)
  fastft@<G>GB  the same under --vram-budget G, for each G in --vram-budget (default 12,8)
  baseline      with --baseline DIR: fastft's defaults from another source of fastft (e.g. an
                older commit: git archive REV fastft | tar -x -C DIR), so that a change in the
                ratio to classic can be told from a change in the host

and writes to --out: <date>-<gpu>.json (every number, per-step records, versions), <date>-<gpu>.png
(tokens/s and peak memory side by side) and <date>-<gpu>.log (all subprocess output). The same
table is printed at the end. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH, REPO, WORK, log, print_rows, pyplot, versions, write_json  # noqa: E402

EFFECTIVE_BATCH = 8
# The speed issue's targets. Speed-up is fastft's defaults vs classic, both on the same data:
# 10x on variable-length (long-tailed) data, 6x on fixed-length data.
SPEEDUP = {"longtail": 10.0, "uniform": 10.0, "fixed": 6.0}
TARGETS = {
    "mem_ratio_2x4": 0.75,  # fastft 2x4 peak allocated <= 0.75x classic
    "eval_loss_rel_diff": 0.01,  # held-out loss after the same steps within 1% of classic's
    "budget8_speedup": 5.0,  # under --vram-budget 8: >= 5x classic ...
    "budget8_reserved_gib": 8.0,  # ... with peak reserved <= 8 GiB (and no out-of-memory)
    "vs_baseline": 0.95,  # fastft's defaults at least 0.95x --baseline's tokens/s, same run
}


# -- subprocesses ------------------------------------------------------------------------------

class Logfile:
    def __init__(self, path: Path | None):
        self.path = path
        self.lock = threading.Lock()
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("")

    def write(self, text: str) -> None:
        if self.path:
            with self.lock, open(self.path, "a") as f:
                f.write(text)


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    # Offline host: never wait on the hub, never send statistics.
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE",
              "UNSLOTH_DISABLE_STATISTICS"):
        env.setdefault(k, "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("COLUMNS", "120")
    return env


_ACTIVE: set[subprocess.Popen] = set()


def _die_with_parent() -> None:
    """In the child: ask Linux to SIGKILL it if run.py dies, so no orphan keeps the GPU busy."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _on_signal(signum, frame):
    """SIGTERM/SIGINT/SIGHUP: stop the running recipe, then unwind (results are still written)."""
    for proc in list(_ACTIVE):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    raise SystemExit(128 + signum)


def run_cmd(tag: str, cmd: list[str], logfile: Logfile, timeout: float | None,
            watch: Path | None = None, echo: bool = True, env: dict | None = None,
            cwd: Path | None = None) -> tuple[int, list[str], float]:
    """Run `cmd`, streaming its output (prefixed) to stderr and the log; returns (rc, tail, seconds).

    rc is -9 when the timeout killed it. `watch`: a metrics.jsonl to echo step lines from.
    `env` (default child_env()) and `cwd` (default the repo root) are the child's.
    """
    log(f"[{tag}] $ {' '.join(cmd)}")
    logfile.write(f"\n===== [{tag}] {' '.join(cmd)}\n")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd or REPO, env=env or child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            start_new_session=True, preexec_fn=_die_with_parent)
    _ACTIVE.add(proc)
    tail: list[str] = []

    def pump():
        for line in proc.stdout:
            logfile.write(line)
            for part in line.rstrip("\n").split("\r"):
                if part.strip():
                    tail.append(part)
                    del tail[:-60]
                    if echo:
                        print(f"  [{tag}] {part}", file=sys.stderr, flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen = 0
    rc = None
    while rc is None:
        try:
            rc = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        if watch is not None and watch.exists():
            lines = watch.read_text().splitlines()
            for line in lines[seen:]:
                try:
                    r = json.loads(line)
                    msg = (f"step {r['step']}: loss {r['loss']:.4f}, {r['tokens_per_s']:,.0f} tok/s"
                           + (f", peak {r['mem_alloc_gib']:.2f} GiB" if r.get("mem_alloc_gib") else ""))
                except (ValueError, KeyError, TypeError):
                    msg = line
                log(f"[{tag}] {msg}")
            seen = len(lines)
        if rc is None and timeout is not None and time.perf_counter() - t0 > timeout:
            log(f"[{tag}] timed out after {timeout:.0f}s: stopping it")
            _kill(proc)
            rc = -9
    _ACTIVE.discard(proc)
    reader.join(timeout=10)
    secs = time.perf_counter() - t0
    logfile.write(f"===== [{tag}] exit {rc} after {secs:.1f}s\n")
    log(f"[{tag}] exit {rc} after {secs:.1f}s")
    return rc, tail, secs


def _kill(proc: subprocess.Popen) -> None:
    """Stop the child we started and its own process group (it was started in a new session)."""
    for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# -- the train CLI -----------------------------------------------------------------------------

def run_name(recipe: dict) -> str:
    """A valid fastft run name for a recipe ("fastft@8GB" -> "fastft-8GB")."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", recipe["name"])


def fastft_cmd(recipe: dict, a, model: Path, data: Path, runs: Path) -> list[str]:
    """`fastft train` at the classic recipe's effective batch (2 x 4); auto-batch may regroup it."""
    cmd = [sys.executable, "-m", "fastft.cli", "train", str(data), "--model", str(model),
           "--max-steps", str(recipe["steps"]), "--name", run_name(recipe), "--runs-dir", str(runs),
           "--lr", str(a.lr), "--seed", str(a.seed), "--warmup-ratio", "0.03",
           "--batch-size", "2", "--grad-accum", str(EFFECTIVE_BATCH // 2),
           "--auto-batch" if recipe["auto"] else "--no-auto-batch",
           # The run is cut to --steps to measure a long run's steady speed, and a long run
           # compiles and (auto-batch) probes; fastft's estimate of this short run would skip
           # both (fastft.train.compiling, autobatch.should_probe), which is right for a short
           # run but not what this benchmark measures. bench/ttfc.py measures the short run.
           "--compile", "on", *(["--retune"] if recipe["auto"] else [])]
    if recipe.get("budget") is not None:
        cmd += ["--vram-budget", f"{recipe['budget']:g}"]
    if recipe.get("eval_data"):  # evaluated once, after the last step, like the classic recipe
        cmd += ["--eval-file", str(recipe["eval_data"]), "--save-steps", str(recipe["steps"])]
    if recipe.get("src"):
        cmd = known_options(cmd, train_options(Path(recipe["src"])))
    return cmd


def source_env(src: Path) -> dict:
    """The environment of a fastft run from the source in `src` instead of this repo's."""
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    return env


def train_options(src: Path) -> set[str]:
    """The options `fastft train` of the source in `src` knows (from its --help)."""
    proc = subprocess.run([sys.executable, "-m", "fastft.cli", "train", "--help"], cwd=src,
                          env={**source_env(src), "COLUMNS": "200"}, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0:
        raise RuntimeError(f"{src}: fastft train --help failed:\n{proc.stderr[-2000:]}")
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", proc.stdout))


def known_options(cmd: list[str], known: set[str]) -> list[str]:
    """`cmd` without the options (and their values) an older fastft does not know. Those this
    benchmark adds, --compile on and --retune, only stop a newer fastft from skipping what an
    older one always did (compile, probe)."""
    out, dropping = [], False
    for arg in cmd:
        if arg.startswith("--"):
            dropping = arg not in known
        if not dropping:    # fastft_cmd's positionals come before its options, no value is "--"
            out.append(arg)
    return out


# -- results -----------------------------------------------------------------------------------

def read_fastft(run: Path, recipe: dict) -> dict:
    from fastft.core.run import RunFolder

    folder = RunFolder.open(run)
    rec = folder.read()
    records = []
    if folder.metrics_file.exists():
        records = [json.loads(l) for l in folder.metrics_file.read_text().splitlines() if l.strip()]
    if rec.status != "done" or rec.final is None:
        raise RuntimeError(f"{folder.record_file}: status {rec.status!r}, no final metrics")
    final, plan = rec.final, rec.plan
    return {
        "recipe": recipe["name"], "status": "ok",
        "micro_batch": plan.batch_size, "grad_accum": plan.grad_accum,
        "padding_free": plan.padding_free, "checkpointing": plan.gradient_checkpointing,
        **plan.model_dump(mode="json", include={"pad_waste", "tuning"}),
        "steps": final.steps or len(records), "timed_steps": final.timed_steps,
        "tokens_per_s": final.tokens_per_s, "seconds_per_step": final.seconds_per_step,
        "peak_mem_alloc_gib": final.peak_mem_alloc_gib,
        "peak_mem_reserved_gib": final.peak_mem_reserved_gib,
        "last_loss": final.last_loss, "eval_loss": final.eval_loss,
        "losses": [r.get("loss") for r in records], "records": records,
        "vram_budget": rec.config.vram_budget, "auto_batch": rec.config.auto_batch,
        "optim": plan.optim, "final": final.model_dump(), "timings": rec.timings,
        **rec.model_dump(mode="json", include={"versions", "hardware"}),
        "run_dir": str(run),
    }


def read_fastft_json(run: Path, recipe: dict) -> dict:
    """What read_fastft reads, from the run folder's JSON as such: a run written by another
    fastft (--baseline), whose record may not parse as this one's types."""
    rec = json.loads((run / "fastft.json").read_text())
    final, plan = rec.get("final") or {}, rec.get("plan") or {}
    if rec.get("status") != "done" or not final:
        raise RuntimeError(f"{run}/fastft.json: status {rec.get('status')!r}, no final metrics")
    metrics = run / "metrics.jsonl"
    records = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()] \
        if metrics.exists() else []
    keys = ("tokens_per_s", "seconds_per_step", "peak_mem_alloc_gib", "peak_mem_reserved_gib",
            "last_loss", "eval_loss", "timed_steps")
    return {"recipe": recipe["name"], "status": "ok", "src": str(recipe["src"]),
            "micro_batch": plan.get("batch_size"), "grad_accum": plan.get("grad_accum"),
            "padding_free": plan.get("padding_free"), "checkpointing": plan.get("gradient_checkpointing"),
            "steps": final.get("steps") or len(records), **{k: final.get(k) for k in keys},
            "losses": [r.get("loss") for r in records], "records": records,
            "optim": plan.get("optim"), "final": final, "timings": rec.get("timings"),
            "versions": rec.get("versions"), "run_dir": str(run)}


def loss_over(r: dict, lo: int, hi: int) -> float | None:
    """Step-weighted mean loss of the records of steps lo+1..hi. Records cover one logging
    interval each (fastft logs every 10 steps on a GPU, classic every step)."""
    recs = [x for x in r.get("records") or [] if lo < x["step"] <= hi and x.get("loss") is not None]
    n = sum(x.get("steps", 1) for x in recs)
    return sum(x["loss"] * x.get("steps", 1) for x in recs) / n if n else None


def compare_window(r: dict, base: dict) -> tuple[int, int] | None:
    """Steps lo+1..hi that both runs' records cover: the last interval of the coarser one."""
    ra, rb = r.get("records") or [], base.get("records") or []
    if not ra or not rb:
        return None
    hi = min(ra[-1]["step"], rb[-1]["step"])
    return hi - max(ra[-1].get("steps", 1), rb[-1].get("steps", 1)), hi


def add_comparisons(results: list[dict], dist: str = "longtail") -> dict:
    """Ratios vs classic on every row, and the speed issue's targets."""
    by = {r["recipe"]: r for r in results if r.get("status") == "ok"}
    base = by.get("classic")
    for r in results:
        if r.get("status") != "ok" or base is None:
            continue
        window = compare_window(r, base)
        lr, lb = (loss_over(r, *window), loss_over(base, *window)) if window else (None, None)
        r["compare_steps"], r["compare_loss"] = window, lr
        r["tokens_per_s_ratio"] = _ratio(r.get("tokens_per_s"), base.get("tokens_per_s"))
        r["mem_alloc_ratio"] = _ratio(r.get("peak_mem_alloc_gib"), base.get("peak_mem_alloc_gib"))
        r["mem_reserved_ratio"] = _ratio(r.get("peak_mem_reserved_gib"), base.get("peak_mem_reserved_gib"))
        r["loss_rel_diff"] = (lr - lb) / lb if lr is not None and lb else None
        el, eb = r.get("eval_loss"), base.get("eval_loss")
        r["eval_loss_rel_diff"] = (el - eb) / eb if el is not None and eb else None
    return targets(by, dist)


def targets(by: dict, dist: str) -> dict:
    def target(value, ok, detail):
        return {"value": value, "target": detail, "pass": None if value is None else bool(ok(value))}

    fd, f24 = by.get("fastft", {}), by.get("fastft2x4", {})
    b8 = next((r for r in by.values() if r.get("budget") == 8), {})
    speedup = SPEEDUP[dist]
    return {
        "speedup": target(fd.get("tokens_per_s_ratio"), lambda v: v >= speedup,
                          f"fastft (defaults) tokens/s >= {speedup:g}x classic on {dist} data"),
        "eval_loss_rel_diff": target(fd.get("eval_loss_rel_diff"),
                                     lambda v: abs(v) <= TARGETS["eval_loss_rel_diff"],
                                     f"fastft (defaults) held-out loss after the same steps within "
                                     f"{TARGETS['eval_loss_rel_diff']:.0%} of classic"),
        "mem_ratio_2x4": target(f24.get("mem_alloc_ratio"), lambda v: v <= TARGETS["mem_ratio_2x4"],
                                f"fastft 2x4 peak allocated <= {TARGETS['mem_ratio_2x4']:g}x classic"),
        "budget8_speedup": target(b8.get("tokens_per_s_ratio"),
                                  lambda v: v >= TARGETS["budget8_speedup"],
                                  f"under --vram-budget 8: >= {TARGETS['budget8_speedup']:g}x classic"),
        "budget8_reserved_gib": target(b8.get("peak_mem_reserved_gib"),
                                       lambda v: v <= TARGETS["budget8_reserved_gib"],
                                       "under --vram-budget 8: peak reserved <= 8 GiB"),
        "vs_baseline": target(_ratio(fd.get("tokens_per_s"), by.get("baseline", {}).get("tokens_per_s")),
                              lambda v: v >= TARGETS["vs_baseline"],
                              f"fastft (defaults) tokens/s >= {TARGETS['vs_baseline']:g}x --baseline's "
                              f"in the same run"),
    }


def _ratio(a, b):
    return a / b if a is not None and b else None


# -- output ------------------------------------------------------------------------------------

COLUMNS = ["recipe", "micro x accum", "batches", "tokens/s", "x classic", "peak alloc GiB", "x classic",
           "peak reserved GiB", "s/step", "loss@step", "eval loss", "eval vs classic", "wall s", "status"]


def table_rows(results: list[dict]) -> list[list[str]]:
    def f(v, fmt):
        return "-" if v is None else format(v, fmt)

    rows = []
    for r in results:
        ok = r.get("status") == "ok"
        mb, ga = r.get("micro_batch"), r.get("grad_accum")
        window = r.get("compare_steps")
        loss = r.get("compare_loss") if window else r.get("last_loss")
        step = f"{window[0] + 1}-{window[1]}" if window else r.get("steps")
        rows.append([
            r["recipe"], f"{mb} x {ga}" if mb else "-", batches_label(r),
            f(r.get("tokens_per_s"), ",.0f"), f(r.get("tokens_per_s_ratio"), ".2f") + ("x" if r.get("tokens_per_s_ratio") else ""),
            f(r.get("peak_mem_alloc_gib"), ".2f"), f(r.get("mem_alloc_ratio"), ".2f") + ("x" if r.get("mem_alloc_ratio") else ""),
            f(r.get("peak_mem_reserved_gib"), ".2f"), f(r.get("seconds_per_step"), ".2f"),
            (f"{loss:.4f} @{step}" if loss is not None else "-"),
            f(r.get("eval_loss"), ".4f"),
            f(r.get("eval_loss_rel_diff"), "+.2%"),
            f(r.get("wall_s"), ".0f"), "ok" if ok else r.get("status", "?"),
        ])
    return rows


def batches_label(r: dict) -> str:
    """How a recipe batched: random padded (classic), grouped padded or padding-free; checkpointing."""
    if r.get("recipe") == "classic":
        return "random, padded, gc on-GPU"
    if "padding_free" not in r:
        return "-"
    kind = "padding-free" if r["padding_free"] else "grouped, padded"
    return f"{kind}, gc {r.get('checkpointing')}"


def print_table(summary: dict) -> None:
    rows = table_rows(summary["results"])
    title = (f"fastft bench: {summary['shape']}, {summary.get('data', {}).get('dist', '?')} data, "
             f"{summary['steps']} steps, {summary['gpu_name']}, {summary['date']}")
    print_rows(title, COLUMNS, rows, left=("recipe", "micro x accum", "status"))
    for name, t in summary["targets"].items():
        mark = {True: "PASS", False: "FAIL", None: "n/a "}[t["pass"]]
        val = "-" if t["value"] is None else (f"{t['value']:.3g}" if isinstance(t["value"], float) else t["value"])
        print(f"  [{mark}] {name}: {val}  ({t['target']})")
    sys.stdout.flush()


def write_chart(summary: dict, path: Path) -> Path | None:
    """PNG bar chart (matplotlib, Agg); an SVG with the same bars when matplotlib is missing."""
    rs = [r for r in summary["results"] if r.get("status") == "ok"]
    if not rs:
        return None
    names = [f"{r['recipe']}\n{r['micro_batch']}x{r['grad_accum']}" for r in rs]
    tps = [r.get("tokens_per_s") or 0 for r in rs]
    alloc = [r.get("peak_mem_alloc_gib") or 0 for r in rs]
    resv = [r.get("peak_mem_reserved_gib") or 0 for r in rs]
    title = f"{summary['shape']} QLoRA, {summary['steps']} steps, {summary['gpu_name']} ({summary['date']})"
    plt = pyplot()
    if plt is None:  # no matplotlib: the same chart as SVG
        path = path.with_suffix(".svg")
        path.write_text(_svg_chart(names, tps, alloc, resv, title))
        return path
    colors = ["#888888" if r["recipe"] == "classic" else "#2a7ab9" for r in rs]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(10, 2.4 * len(rs)), 4.8))
    x = range(len(rs))
    b = ax1.bar(x, tps, color=colors)
    ax1.bar_label(b, labels=[f"{v:,.0f}" for v in tps], fontsize=8)
    ax1.set_title("throughput (tokens/s, higher is better)")
    ax1.set_xticks(list(x), names, fontsize=8)
    w = 0.38
    b1 = ax2.bar([i - w / 2 for i in x], alloc, w, label="peak allocated", color="#2a7ab9")
    b2 = ax2.bar([i + w / 2 for i in x], resv, w, label="peak reserved", color="#9ccbe8")
    ax2.bar_label(b1, labels=[f"{v:.1f}" for v in alloc], fontsize=7)
    ax2.bar_label(b2, labels=[f"{v:.1f}" for v in resv], fontsize=7)
    if not any(alloc + resv):
        ax2.text(0.5, 0.5, "no GPU: no memory figures", ha="center", va="center",
                 transform=ax2.transAxes)
    ax2.set_title("peak GPU memory (GiB, lower is better)")
    ax2.set_xticks(list(x), names, fontsize=8)
    ax2.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _svg_chart(names, tps, alloc, resv, title) -> str:
    W, H, pad, gap = 900, 360, 40, 30
    pw = (W - 3 * pad) / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="10">',
           f'<text x="{W / 2}" y="16" text-anchor="middle" font-size="12">{title}</text>']
    for k, (label, series) in enumerate([("tokens/s", [tps]), ("peak GiB (alloc, reserved)", [alloc, resv])]):
        x0 = pad + k * (pw + pad)
        top = max(max(s) for s in series) or 1
        out.append(f'<text x="{x0 + pw / 2}" y="34" text-anchor="middle">{label}</text>')
        n = len(names)
        slot = pw / n
        for i, name in enumerate(names):
            for j, s in enumerate(series):
                bw = (slot - gap / 2) / len(series)
                h = (H - 110) * s[i] / top
                x = x0 + i * slot + j * bw
                out.append(f'<rect x="{x:.1f}" y="{H - 60 - h:.1f}" width="{bw - 2:.1f}" height="{h:.1f}" '
                           f'fill="{["#2a7ab9", "#9ccbe8"][j]}"/>')
                out.append(f'<text x="{x + bw / 2:.1f}" y="{H - 64 - h:.1f}" text-anchor="middle">{s[i]:,.1f}</text>')
            out.append(f'<text x="{x0 + i * slot + slot / 2:.1f}" y="{H - 44}" text-anchor="middle">'
                       f'{name.replace(chr(10), " ")}</text>')
    out.append("</svg>")
    return "\n".join(out)


def gpu_slug(name: str | None) -> str:
    if not name:
        return "cpu"
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return re.sub(r"^nvidia-", "", s) or "gpu"


# -- main --------------------------------------------------------------------------------------

def probe_env() -> dict:
    code = ("import json, torch; from bench.common import versions, gpu_info; "
            "print(json.dumps({'versions': versions(), 'gpu': gpu_info()}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"environment probe failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan(a, cuda: bool, quiet: bool = False) -> list[dict]:
    budgets = [] if a.vram_budget.strip().lower() in ("", "none") else \
        [float(b) for b in a.vram_budget.split(",") if b.strip()]
    recipes = [
        {"name": "classic", "kind": "classic", "steps": a.steps},
        {"name": "fastft2x4", "kind": "fastft", "auto": False, "steps": a.steps},
        {"name": "fastft", "kind": "fastft", "auto": True, "steps": a.steps},
    ]
    if getattr(a, "baseline", None):
        recipes.append({"name": "baseline", "kind": "fastft", "auto": True, "steps": a.steps,
                        "src": a.baseline.resolve()})
    for b in budgets:
        recipes.append({"name": f"fastft@{b:g}GB", "kind": "fastft", "auto": True, "budget": b,
                        "steps": a.budget_steps or a.steps})
    if a.only:
        want = {w.strip() for w in a.only.split(",") if w.strip()}
        known = {r["name"] for r in recipes} | {"budget"}
        unknown = want - known
        if unknown:
            raise SystemExit(f"--only: unknown recipe(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known))}")
        recipes = [r for r in recipes if r["name"] in want or ("budget" in want and "budget" in r)]
    if not cuda:
        dropped = [r["name"] for r in recipes if "budget" in r]
        if dropped and not quiet:
            log(f"no GPU: skipping the VRAM-budget runs ({', '.join(dropped)})")
        recipes = [r for r in recipes if "budget" not in r]
    return recipes


def make_model(shape: str, work: Path, logfile, remaining, echo: bool) -> Path:
    """The benchmark's model (bench/make_model.py, in a subprocess), built once into --work."""
    rc, tail, _ = run_cmd("make_model", [sys.executable, str(BENCH / "make_model.py"), "--shape",
                                         shape, "--out-dir", str(work / "models")], logfile,
                          timeout=remaining(), echo=echo)
    if rc != 0:
        raise SystemExit("building the model failed:\n" + "\n".join(tail[-30:]))
    return Path(next(l.strip() for l in reversed(tail) if Path(l.strip()).is_dir()))


def free_stem(out: Path, stem: str, suffix: str = ".json") -> str:
    """`stem`, or `stem-2`, `stem-3`, ... : the first whose `suffix` file is not yet in `out`."""
    base, n = stem, 2
    while (out / f"{stem}{suffix}").exists():
        stem, n = f"{base}-{n}", n + 1
    return stem


def make_data(work: Path, dist: str, tokens: int, n: int, seed: int, model: Path, logfile,
              remaining, echo: bool) -> Path:
    """The benchmark's JSONL (bench/make_data.py), made once per shape of data and kept in --work."""
    data = work / "data" / f"{dist}-{tokens}-n{n}-s{seed}.jsonl"
    if not data.exists() and n:
        cmd = [sys.executable, str(BENCH / "make_data.py"), str(data), "--n", str(n), "--dist", dist,
               "--tokens", str(tokens), "--seed", str(seed), "--tokenizer", str(model)]
        rc, tail, _ = run_cmd("make_data", cmd, logfile, timeout=remaining(), echo=echo)
        if rc != 0:
            raise SystemExit("making the data failed:\n" + "\n".join(tail[-30:]))
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["4b", "tiny"], default="4b")
    # 30: fastft logs every 10 steps on a GPU, and the first interval (compilation) is not timed.
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per recipe (30)")
    ap.add_argument("--budget-steps", type=int, default=20,
                    help="steps of the --vram-budget runs (20; they measure the chosen micro-batch "
                         "and its throughput, not the loss); 0 = --steps")
    ap.add_argument("--out", type=Path, default=BENCH / "results", help="results folder (bench/results)")
    ap.add_argument("--work", type=Path, default=WORK, help="models, data, runs (bench/work)")
    ap.add_argument("--only", help="comma-separated recipes to run: classic, fastft2x4, fastft, "
                                   "baseline, fastft@<G>GB, or budget (all budget runs); default all")
    ap.add_argument("--vram-budget", default="8",
                    help="GiB budgets for extra fastft runs, comma-separated; 'none' for none (8)")
    ap.add_argument("--examples", type=int, default=256, help="examples in the data (256)")
    ap.add_argument("--dist", choices=["longtail", "fixed", "uniform"], default="longtail",
                    help="example lengths: longtail (like real chat data; see bench/make_data.py), "
                         "fixed, or uniform over 128..--tokens (longtail)")
    ap.add_argument("--tokens", type=int,
                    help="longest example (2048 longtail/uniform) or every example's length (1024 fixed)")
    ap.add_argument("--vary", action="store_const", const="uniform", dest="dist",
                    help="the same as --dist uniform (kept for old command lines)")
    ap.add_argument("--eval-examples", type=int, default=32,
                    help="held-out examples (same length distribution, another seed) on which "
                         "classic and fastft report eval loss after the last step (32; 0: none)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--deadline-s", type=float, default=0,
                    help="stop starting recipes (and stop a running one) this many seconds after "
                         "start, leaving time to write results; 0 = no deadline")
    ap.add_argument("--min-recipe-s", type=float, default=60,
                    help="with --deadline-s: do not start a recipe with less time left (60)")
    ap.add_argument("--baseline", type=Path,
                    help="a folder holding another source of the fastft package (e.g. `git archive "
                         "REV fastft | tar -x -C DIR`): its defaults run too, as the recipe "
                         "'baseline', to tell a change in fastft from a change in the host")
    ap.add_argument("--reuse", action="store_true",
                    help="also report earlier results (from --work) of recipes not run now, if "
                         "they used the same shape, steps and data")
    ap.add_argument("--quiet", action="store_true", help="do not echo subprocess output (log only)")
    ap.add_argument("--allow-cpu", action="store_true", help="run --shape 4b without a GPU (very slow)")
    a = ap.parse_args(argv)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    t_start = time.perf_counter()
    deadline = t_start + a.deadline_s if a.deadline_s else None
    date = datetime.now().strftime("%Y-%m-%d")
    work = a.work.resolve()
    raw_dir, runs = work / "raw", work / "runs"
    raw_dir.mkdir(parents=True, exist_ok=True)

    log(f"probing the environment (python {sys.version.split()[0]}, repo {REPO})")
    env = probe_env()
    gpu = env["gpu"]
    gpu_name = gpu["name"] if gpu else "CPU"
    log(f"device: {gpu_name}; versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    if a.shape == "4b" and not gpu and not a.allow_cpu:
        raise SystemExit("--shape 4b needs a CUDA GPU (use --shape tiny on CPU, or --allow-cpu)")

    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = free_stem(out, f"{date}-{gpu_slug(gpu and gpu['name'])}")
    result_path, chart_path = out / f"{stem}.json", out / f"{stem}.png"
    logfile = Logfile(out / f"{stem}.log")
    echo = not a.quiet

    summary = {
        "date": date, "started": datetime.now().isoformat(timespec="seconds"),
        "shape": a.shape, "steps": a.steps, "budget_steps": a.budget_steps or a.steps,
        "effective_batch": EFFECTIVE_BATCH, "gpu_name": gpu_name, "gpu": gpu,
        "versions": env["versions"], "runner_versions": versions(), "targets": {},
        "results": [], "timings": {}, "status": "running",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }

    def save():
        summary["targets"] = add_comparisons(summary["results"], a.dist)
        summary["timings"]["total_s"] = time.perf_counter() - t_start
        write_json(result_path, summary)

    def remaining() -> float | None:
        return None if deadline is None else deadline - time.perf_counter()

    try:
        # 1. model and data (each in a subprocess: this process never touches the GPU)
        t = time.perf_counter()
        model = make_model(a.shape, work, logfile, remaining, echo)
        summary["timings"]["model_s"] = time.perf_counter() - t
        summary["model"] = str(model)

        t = time.perf_counter()
        examples = max(a.examples, a.steps * EFFECTIVE_BATCH)
        tokens = a.tokens or (1024 if a.dist == "fixed" else 2048)
        data, eval_data = (make_data(work, a.dist, tokens, n, seed, model, logfile, remaining, echo)
                           for n, seed in ((examples, 0), (a.eval_examples, 1)))
        eval_data = eval_data if a.eval_examples else None
        summary["timings"]["data_s"] = time.perf_counter() - t
        summary["data"] = {"path": str(data), "examples": examples, "tokens": tokens, "dist": a.dist,
                           "eval_path": str(eval_data) if eval_data else None,
                           "eval_examples": a.eval_examples}
        key = {"shape": a.shape, "data": data.name, "model": model.name}

        # 2. recipes
        recipes = plan(a, cuda=bool(gpu))
        for recipe in recipes:  # the budget runs measure memory and speed only
            recipe["eval_data"] = eval_data if "budget" not in recipe else None
        for recipe in recipes:
            name, tail = recipe["name"], []
            left = remaining()
            if left is not None and left < a.min_recipe_s:
                log(f"[{name}] skipped: {left:.0f}s left before the deadline")
                summary["results"].append({"recipe": name, "status": "skipped (deadline)"})
                save()
                continue
            timeout = None if left is None else left - 10
            raw = raw_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.json"
            raw.unlink(missing_ok=True)
            try:
                if recipe["kind"] == "classic":
                    cmd = [sys.executable, str(BENCH / "classic.py"), "--model", str(model),
                           "--data", str(data), "--out", str(raw), "--metrics",
                           str(raw.with_suffix(".metrics.jsonl")), "--steps", str(recipe["steps"]),
                           "--micro-batch", "2", "--grad-accum", str(EFFECTIVE_BATCH // 2),
                           "--lr", str(a.lr), "--seed", str(a.seed)]
                    if recipe["eval_data"]:
                        cmd += ["--eval-data", str(recipe["eval_data"])]
                    rc, tail, secs = run_cmd(name, cmd, logfile, timeout,
                                             watch=raw.with_suffix(".metrics.jsonl"), echo=echo)
                    res = json.loads(raw.read_text()) if raw.exists() else {}
                    if rc != 0 or res.get("status") != "ok":
                        raise RuntimeError(res.get("error") or f"exit {rc}")
                else:
                    run = runs / run_name(recipe)
                    if run.exists():
                        shutil.rmtree(run)
                    cmd = fastft_cmd(recipe, a, model, data, runs)
                    src = recipe.get("src")
                    rc, tail, secs = run_cmd(name, cmd, logfile, timeout,
                                             watch=run / "metrics.jsonl", echo=echo,
                                             env=source_env(src) if src else None, cwd=src)
                    if rc != 0:
                        raise RuntimeError(f"exit {rc}")
                    res = read_fastft_json(run, recipe) if src else read_fastft(run, recipe)
                res["wall_s"] = secs
            except (SystemExit, KeyboardInterrupt):  # a signal: record it, then unwind
                summary["results"].append({"recipe": name, "status": "interrupted",
                                           "output_tail": tail[-40:]})
                raise
            except Exception as e:  # one recipe failing must not lose the others
                status = "timeout" if "exit -9" in str(e) else "error"
                log(f"[{name}] FAILED ({status}): {e}")
                if not echo:
                    for line in tail[-15:]:
                        log(f"[{name}]   {line}")
                res = {"recipe": name, "status": status, "error": str(e),
                       "output_tail": tail[-40:]}
            res.update({k: v for k, v in recipe.items() if k in ("budget", "auto")}, key=key)
            summary["results"].append(res)
            write_json(raw, res)
            save()

        if a.reuse:
            ran = {r["recipe"] for r in summary["results"]}
            for f in sorted(raw_dir.glob("*.json")):
                try:
                    old = json.loads(f.read_text())
                except ValueError:
                    continue
                if old.get("recipe") not in ran and old.get("key") == key and old.get("status") == "ok" \
                        and old.get("steps") in (a.steps, a.budget_steps):
                    old["reused"] = True
                    summary["results"].append(old)
            everything = argparse.Namespace(**{**vars(a), "only": None})
            order = {r["name"]: i for i, r in enumerate(plan(everything, cuda=bool(gpu), quiet=True))}
            summary["results"].sort(key=lambda r: order.get(r["recipe"], 99))
        summary["status"] = "done"
    finally:
        save()
        try:
            chart = write_chart(summary, chart_path)
            if chart:
                summary["chart"] = chart.name
                save()
        except Exception as e:  # the chart is a nicety; the JSON is the result
            log(f"chart failed: {type(e).__name__}: {e}")
        print_table(summary)
        log(f"results: {result_path}" + (f", chart: {summary.get('chart')}" if summary.get("chart") else "")
            + f", log: {logfile.path}; total {time.perf_counter() - t_start:.0f}s")
    failed = [r["recipe"] for r in summary["results"] if r.get("status") != "ok"]
    if failed:
        log(f"recipes that did not finish: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
