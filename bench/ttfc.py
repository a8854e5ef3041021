"""Time to first chat: from a JSONL of conversations to a quantised GGUF, as a user waits for it.

    python bench/ttfc.py --shape 4b --out bench/results/ --deadline-s 560

Two recipes, side by side on the same host, model and data:

  fastft    the real CLI as a user runs it, two subprocesses timed from outside:
            `fastft train DATA --model M --epochs E` then `fastft export RUN --gguf q4_k_m`
  notebook  bench/notebook.py: Unsloth's Qwen3-2507 notebook (4-bit load, LoRA r=16 on all seven
            projections, SFTTrainer 2 x 4, `save_pretrained_gguf(..., "q4_k_m")`), one process

Scenarios: `favorite` (examples/favorite_color.jsonl: 100 conversations, 3 epochs) and
`longtail` (500 long-tailed conversations from bench/make_data.py, 1 epoch).

Each (scenario, recipe) runs --runs-per times (2): `cold` first, with fresh fastft, Triton,
Inductor, Unsloth-compile and Hugging Face cache folders and the model's files dropped from the
page cache, then `warm`, reusing the caches the cold run filled. Every run's stage times (start-up,
load, prep, probe, train, save, merge, convert, quantize, check, other) add up to its end-to-end
wall time. fastft's own stage times come from RUN/fastft.json and EXPORT/fastft-export.json.

Results go to --out: <date>-<gpu>-ttfc.json (every number, versions, commands), a PNG chart of
stacked stage bars (SVG without matplotlib) and a log. A finished run's result is kept in --work
and reused by the next invocation (unless --fresh), so when --deadline-s stops one invocation
early, running the same command again carries on where it stopped. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BENCH, REPO, WORK, log, print_rows, pyplot, versions, write_json  # noqa: E402
from bench.run import (Logfile, _on_signal, child_env, free_stem, gpu_slug, make_data,  # noqa: E402
                       make_model, probe_env, run_cmd)

RECIPES = ("fastft", "notebook")
SCENARIOS = {
    "favorite": {"what": "favorite-color data: 100 conversations, 3 epochs", "epochs": 3.0,
                 "file": REPO / "examples" / "favorite_color.jsonl"},
    "longtail": {"what": "500 long-tailed conversations (bench/make_data.py), 1 epoch",
                 "epochs": 1.0, "dist": "longtail", "tokens": 2048},
}
STAGES = ("startup", "load", "prep", "probe", "train", "save", "merge", "convert", "quantize",
          "check", "gate", "other")
STAGE_COLORS = dict(zip(STAGES, ("#bbbbbb", "#6baed6", "#9ecae1", "#fdae6b", "#e6550d", "#31a354",
                                 "#756bb1", "#9e9ac8", "#bcbddc", "#636363", "#e7ba52", "#dddddd")))
QUANT = "q4_k_m"
# Expected seconds of one run, to decide under --deadline-s whether to start it before an
# earlier run of the same pair has measured it (4b: the notes' 115 s train + ~170 s export).
# A cold run's seconds before any ran on the host (for --deadline-s), per shape, scenario and
# recipe: the measured ones with some margin (4B on H100/H200, 2026-12-06: fastft 86-126 s,
# the notebook 178-287 s on favorite-color and 223-322 s on longtail; 2026-12-07, an H100: the
# notebook still quantizing 270 s into a longtail run, so 230 s was too little).
ESTIMATE_S = {"4b": {"favorite": {"fastft": 150, "notebook": 300},
                     "longtail": {"fastft": 150, "notebook": 340}},
              "tiny": {"favorite": {"fastft": 90, "notebook": 90},
                       "longtail": {"fastft": 150, "notebook": 150}}}
NOTES = [
    "cold: fresh FASTFT_CACHE, TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR, UNSLOTH_COMPILE_LOCATION, "
    "HF_HOME and XDG_CACHE_HOME folders, and the model's files dropped from the OS page cache "
    "(posix_fadvise DONTNEED); warm: the second run, reusing the folders the cold run filled.",
    "Python's libraries are installed and byte-compiled before the first timed run (one "
    "import of unsloth, trl, datasets and fastft.cli), as pip leaves them; their files may be "
    "in the OS page cache for both recipes.",
    "Both recipes use the same llama.cpp build (UNSLOTH_LLAMA_CPP_PATH), the notebook a copy of "
    "it made once (Unsloth patches the converter it is given); building and copying are not timed.",
    "fastft train records load_s, train_s and total_s, and auto-batch its probe_s: the rest of "
    "its total (data preparation, LoRA set-up, saving the adapter) is reported as 'save', and "
    "its start-up is its wall time minus total_s (imports, config, data check, loss plot, exit).",
    "fastft export runs a load-and-generate check of the GGUF ('check'); the notebook has none. "
    "Since 2026-12-07 (3645e70) the gate's llama.cpp process makes it, the GGUF loaded once: "
    "'check' is then its generating alone, the load counted in 'gate'. "
    "'other' is export's README/Modelfile/manifest step.",
]


# -- what to run ---------------------------------------------------------------------------------

def attempt_names(runs_per: int) -> list[str]:
    return ["cold", "warm"] + [f"warm{i}" for i in range(2, runs_per)] if runs_per > 1 else ["cold"]


def select(a) -> tuple[list[str], list[str]]:
    """(recipes, scenarios) from --only (recipe or scenario names) and --scenarios."""
    want = {w.strip() for w in (a.only or "").split(",") if w.strip()}
    scen = {w.strip() for w in (a.scenarios or "").split(",") if w.strip()}
    unknown = (want | scen) - set(RECIPES) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"--only/--scenarios: unknown {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(RECIPES + tuple(SCENARIOS))}")
    scen |= want & set(SCENARIOS)
    recipes = [r for r in RECIPES if r in want] or list(RECIPES)
    return recipes, [s for s in SCENARIOS if s in scen] or list(SCENARIOS)


def plan_runs(recipes, scenarios, runs_per) -> list[dict]:
    """Every run, in order: per scenario, each recipe's cold run before any warm one."""
    return [{"scenario": s, "recipe": r, "attempt": at, "id": f"{s}-{r}-{at}"}
            for s in scenarios for at in attempt_names(runs_per) for r in recipes]


# -- caches ----------------------------------------------------------------------------------------

def run_env(caches: Path, llama: Path) -> dict:
    """A child's environment with every cache it fills under `caches`, and our llama.cpp."""
    env = child_env()
    for var, sub in (("FASTFT_CACHE", "fastft"), ("TRITON_CACHE_DIR", "triton"),
                     ("TORCHINDUCTOR_CACHE_DIR", "inductor"),
                     ("UNSLOTH_COMPILE_LOCATION", "unsloth_compiled_cache"),
                     ("HF_HOME", "hf"), ("XDG_CACHE_HOME", "xdg")):
        env[var] = str(caches / sub)
        # made, as a user's ~/.cache is: torch makes its CUDA kernel cache's folder under
        # XDG_CACHE_HOME only where that exists, and otherwise warns and caches nothing
        (caches / sub).mkdir(parents=True, exist_ok=True)
    env.pop("HF_DATASETS_CACHE", None)  # under HF_HOME
    env["UNSLOTH_LLAMA_CPP_PATH"] = str(llama)
    return env


def recipe_llama(recipe: str, llama: Path, work: Path) -> Path:
    """The llama.cpp a recipe's runs use: fastft's the build itself, the notebook's a copy of it
    made once in `work`. Unsloth's save_pretrained_gguf patches the converter it is given
    (unsloth_zoo 2026.10.9 writes its branding into conversion/base.py: quantized_by 'Unsloth',
    its repo_url and tags), so a fastft run after a notebook run on one folder converted with
    Unsloth's code: its GGUF branded so, and its vocabulary cache missed, the converter's digest
    changed (2026-12-08, H100: 39355924 cold, ad9d44b2 warm, every input file the same)."""
    if recipe != "notebook":
        return llama
    copy = work / "llama.cpp-notebook"
    if not copy.is_dir():
        tmp = work / f".llama.cpp-notebook-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(llama, tmp, symlinks=True)   # its links into build/bin stay relative
        os.replace(tmp, copy)
    return copy


def drop_page_cache(folder: Path) -> int:
    """Ask the kernel to drop `folder`'s files from the page cache (no root needed, only these
    files are touched); returns the bytes advised."""
    n = 0
    for p in folder.rglob("*"):
        if p.is_file() and hasattr(os, "posix_fadvise"):
            try:
                fd = os.open(p, os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += p.stat().st_size
            finally:
                os.close(fd)
    return n


# -- one run -------------------------------------------------------------------------------------

def fastft_commands(model: Path, data: Path, epochs: float, max_steps: int | None,
                    folder: Path, random_weights: bool = False) -> tuple[list[str], list[str], Path, Path]:
    """`fastft train` with its defaults and `fastft export --gguf q4_k_m`, as a user types them."""
    run, export = folder / "runs" / "ttfc", folder / "export"
    train = [sys.executable, "-m", "fastft.cli", "train", str(data), "--model", str(model),
             "--epochs", f"{epochs:g}", "--name", run.name, "--runs-dir", str(run.parent)]
    if max_steps:
        train += ["--max-steps", str(max_steps)]
    export_cmd = [sys.executable, "-m", "fastft.cli", "export", str(run), "--gguf", QUANT,
                  "--out", str(export)]
    if random_weights:
        # The retention gate still runs and is timed, and its figures are recorded; but the share
        # of a fine-tune that a quant keeps says nothing on random weights, so it may not fail.
        export_cmd += ["--min-retention", "0"]
    return train, export_cmd, run, export


def notebook_command(model: Path, data: Path, epochs: float, max_steps: int | None,
                     folder: Path) -> tuple[list[str], Path]:
    result = folder / "notebook.json"
    cmd = [sys.executable, str(BENCH / "notebook.py"), "--model", str(model), "--data", str(data),
           "--epochs", f"{epochs:g}", "--out-dir", str(folder), "--result", str(result)]
    if max_steps:
        cmd += ["--max-steps", str(max_steps)]
    return cmd, result


def fastft_stages(train_wall: float, record: dict, export_wall: float, manifest: dict) -> dict:
    """{phase: {stage: seconds}} from fastft's records (fastft.core.timeline: each command's
    stages from its process start); each phase sums to its wall time, the rest being start-up."""
    t = record.get("timings") or {}
    # The chart's names: "prep" is fastft's "prepare" (guard, tokenise, LoRA), "probe" its "plan"
    # (auto-tune's probe, a remembered plan or an estimate).
    train = {stage: t.get(f"{key}_s", 0.0) for stage, key in
             (("load", "load"), ("prep", "prepare"), ("probe", "plan"), ("train", "train"),
              ("save", "save"))}
    train["startup"] = train_wall - sum(train.values())    # interpreter, checks, imports, exit
    e = manifest.get("timings") or {}
    export = {k: e.get(f"{k}_s", 0.0) for k in ("load", "merge", "convert", "quantize", "check")}
    export["gate"] = e.get("reference_s", 0.0) + e.get("retention_s", 0.0)   # the retention gate
    export["other"] = e.get("docs_s", 0.0)
    export["startup"] = export_wall - sum(export.values())
    return {"train": train, "export": export}


def notebook_stages(wall: float, t: dict) -> dict:
    """{phase: {stage: seconds}} from bench/notebook.py's timings; sums to the process's wall."""
    saving = t.get("save_gguf_s", 0.0)
    export = {k: t.get(f"{k}_s", 0.0) for k in ("merge", "convert", "quantize")}
    export["save"] = saving - sum(export.values())
    train = {"load": t.get("load_s", 0.0), "prep": t.get("prep_s", 0.0),
             "train": t.get("train_s", 0.0)}
    train["startup"] = wall - saving - sum(train.values())  # interpreter, imports, exit
    return {"train": train, "export": export}


def totals(phases: dict) -> dict:
    """Stages summed over the phases (every stage present) and the wall-time totals."""
    stages = {s: sum(p.get(s, 0.0) for p in phases.values()) for s in STAGES}
    train_wall, export_wall = (sum(phases[p].values()) for p in ("train", "export"))
    return {"stages": stages, "train_wall_s": train_wall, "export_wall_s": export_wall,
            "end_to_end_s": train_wall + export_wall}


def run_one(spec: dict, model: Path, data: Path, scenario: dict, a, llama: Path, work: Path,
            logfile, timeout, echo: bool) -> dict:
    """One (scenario, recipe, attempt): run it, return its numbers (raises on failure)."""
    caches = work / "caches" / f"{spec['scenario']}-{spec['recipe']}"
    if spec["attempt"] == "cold":
        shutil.rmtree(caches, ignore_errors=True)
        dropped = drop_page_cache(model)
        log(f"[{spec['id']}] fresh caches in {caches}; {dropped / 2**30:.2f} GiB of model files "
            f"dropped from the page cache")
    caches.mkdir(parents=True, exist_ok=True)
    folder = work / "runs" / spec["id"]
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    env, epochs = run_env(caches, recipe_llama(spec["recipe"], llama, work)), scenario["epochs"]
    out = {"commands": [], "caches": str(caches), "folder": str(folder)}
    t0 = time.perf_counter()

    def left():
        return None if timeout is None else timeout - (time.perf_counter() - t0)

    if spec["recipe"] == "fastft":
        train_cmd, export_cmd, run, export = fastft_commands(model, data, epochs, a.max_steps, folder,
                                                              random_weights=a.shape != "tiny")
        out["commands"] = [train_cmd, export_cmd]
        rc, _, train_wall = run_cmd(f"{spec['id']} train", train_cmd, logfile, left(),
                                    watch=run / "metrics.jsonl", echo=echo, env=env, cwd=folder)
        if rc != 0:
            raise RuntimeError(f"fastft train exit {rc}")
        record = json.loads((run / "fastft.json").read_text())
        rc, _, export_wall = run_cmd(f"{spec['id']} export", export_cmd, logfile, left(),
                                     echo=echo, env=env, cwd=folder)
        if rc != 0:
            raise RuntimeError(f"fastft export exit {rc}")
        manifest = json.loads((export / "fastft-export.json").read_text())
        out["phases"] = fastft_stages(train_wall, record, export_wall, manifest)
        plan = record.get("plan") or {}
        out.update(fastft_timings={"train": record.get("timings"), "export": manifest.get("timings")},
                   steps=(record.get("final") or {}).get("global_step"),
                   micro_batch=plan.get("batch_size"), grad_accum=plan.get("grad_accum"),
                   padding_free=plan.get("padding_free"),
                   checkpointing=plan.get("gradient_checkpointing"),
                   ggufs={str(f): f.stat().st_size for f in sorted(export.glob("*.gguf"))},
                   checks=manifest.get("checks"), retention=manifest.get("retention"),
                   peak_disk_bytes=manifest.get("peak_disk_bytes"), versions=record.get("versions"))
    else:
        cmd, result = notebook_command(model, data, epochs, a.max_steps, folder)
        out["commands"] = [cmd]
        rc, _, wall = run_cmd(spec["id"], cmd, logfile, left(), echo=echo, env=env, cwd=folder)
        res = json.loads(result.read_text()) if result.exists() else {}
        if rc != 0 or res.get("status") != "ok":
            raise RuntimeError(res.get("error") or f"exit {rc}")
        out["phases"] = notebook_stages(wall, res["timings"])
        out.update(notebook_timings=res["timings"], steps=res.get("steps"), micro_batch=2,
                   grad_accum=4, ggufs=res.get("ggufs"), notes=res.get("notes"))
    out.update(totals(out["phases"]))
    return out


# -- set-up ----------------------------------------------------------------------------------------

WARMUP_CODE = "import unsloth, trl, datasets, fastft.cli, fastft.train.trainer, fastft.export.pipeline"


def setup_llama(a, work: Path, logfile, remaining, echo) -> Path:
    if a.llama_cpp:
        return a.llama_cpp.resolve()
    code = f"from bench.common import llama_cpp_root; print(llama_cpp_root({str(work / 'fastft-cache')!r}))"
    rc, tail, _ = run_cmd("llama.cpp", [sys.executable, "-c", code], logfile, remaining(), echo=echo)
    if rc != 0:
        raise SystemExit("finding or building llama.cpp failed:\n" + "\n".join(tail[-30:]))
    return Path(tail[-1].strip())


def data_for(name: str, a, work: Path, model: Path, logfile, remaining, echo) -> Path:
    sc = SCENARIOS[name]
    if "file" in sc:
        return sc["file"]
    return make_data(work, sc["dist"], sc["tokens"], a.longtail_examples, 0, model, logfile,
                     remaining, echo)


# -- output ------------------------------------------------------------------------------------

COLUMNS = ["scenario", "recipe", "run", *STAGES, "train wall", "export wall", "end to end", "status"]


def table_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    for r in runs:
        ok = r.get("status") == "ok"
        st = r.get("stages") or {}
        rows.append([r["scenario"], r["recipe"], r["attempt"],
                     *(f"{st[s]:.1f}" if ok and s in st else "-" for s in STAGES),
                     *(f"{r[k]:.1f}" if ok else "-" for k in ("train_wall_s", "export_wall_s",
                                                              "end_to_end_s")),
                     ("ok" + (" (earlier)" if r.get("reused") else "")) if ok else r.get("status", "?")])
    return rows


def ratios(runs: list[dict]) -> list[dict]:
    """notebook end to end / fastft end to end, per scenario and attempt, where both finished."""
    by = {(r["scenario"], r["recipe"], r["attempt"]): r for r in runs if r.get("status") == "ok"}
    out = []
    for (s, rec, at), r in by.items():
        other = by.get((s, "notebook", at))
        if rec == "fastft" and other:
            out.append({"scenario": s, "attempt": at,
                        "notebook_over_fastft": other["end_to_end_s"] / r["end_to_end_s"],
                        "notebook_s": other["end_to_end_s"], "fastft_s": r["end_to_end_s"]})
    return out


def print_summary(summary: dict) -> None:
    title = (f"time to first chat ({QUANT} GGUF), seconds: {summary['shape']}, "
             f"{summary['gpu_name']}, {summary['date']}")
    print_rows(title, COLUMNS, table_rows(summary["runs"]), left=("scenario", "recipe", "run", "status"))
    for x in summary["ratios"]:
        print(f"  notebook / fastft end to end, {x['scenario']} {x['attempt']}: "
              f"{x['notebook_over_fastft']:.2f}x ({x['notebook_s']:.0f} s / {x['fastft_s']:.0f} s)")
    if not summary["ratios"]:
        print("  notebook / fastft: n/a (needs both recipes of a scenario)")
    sys.stdout.flush()


def write_chart(summary: dict, path: Path) -> Path | None:
    """Stacked stage bars, one per run (PNG with matplotlib, else SVG)."""
    rs = [r for r in summary["runs"] if r.get("status") == "ok"]
    if not rs:
        return None
    names = [f"{r['scenario']} {r['recipe']} {r['attempt']}" for r in rs]
    title = (f"time to first chat, {summary['shape']} shape, {summary['gpu_name']} "
             f"({summary['date']}); seconds")
    plt = pyplot()
    if plt is None:  # no matplotlib: the same chart as SVG
        path = path.with_suffix(".svg")
        path.write_text(svg_stacked(names, [r["stages"] for r in rs], title))
        return path
    fig, ax = plt.subplots(figsize=(11, 1.2 + 0.45 * len(rs)))
    left = [0.0] * len(rs)
    for s in STAGES:
        vals = [max(0.0, r["stages"][s]) for r in rs]
        if any(vals):
            ax.barh(names, vals, left=left, color=STAGE_COLORS[s], label=s, edgecolor="white")
            left = [x + v for x, v in zip(left, vals)]
    for i, r in enumerate(rs):
        ax.text(left[i], i, f" {r['end_to_end_s']:.0f} s", va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds (lower is better)")
    ax.set_xlim(0, max(left) * 1.12)
    ax.legend(fontsize=7, ncol=6, loc="lower right")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def svg_stacked(names: list[str], stages: list[dict], title: str) -> str:
    W, row, x0 = 900, 26, 230
    H = 60 + row * len(names) + 30
    top = max(sum(max(0.0, v) for v in st.values()) for st in stages) or 1.0
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="11">', f'<text x="10" y="20" font-size="13">{title}</text>']
    for i, (name, st) in enumerate(zip(names, stages)):
        y, x = 40 + i * row, float(x0)
        out.append(f'<text x="{x0 - 6}" y="{y + 15}" text-anchor="end">{name}</text>')
        for s in STAGES:
            w = (W - x0 - 80) * max(0.0, st.get(s, 0.0)) / top
            if w > 0:
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row - 6}" '
                           f'fill="{STAGE_COLORS[s]}"><title>{s}: {st[s]:.1f} s</title></rect>')
                x += w
        out.append(f'<text x="{x + 4:.1f}" y="{y + 15}">{sum(st.values()):.0f} s</text>')
    ly = 40 + row * len(names) + 8
    for j, s in enumerate(STAGES):
        out.append(f'<rect x="{10 + j * 80}" y="{ly}" width="10" height="10" fill="{STAGE_COLORS[s]}"/>'
                   f'<text x="{24 + j * 80}" y="{ly + 9}">{s}</text>')
    out.append("</svg>")
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------------

def combine(paths: list[Path], out: Path) -> Path:
    """One result from the results of several calls on one host (a device call is capped at 10
    minutes, so a full comparison takes several): each run's latest finished result, the ratios
    recomputed, a new chart. Refuses results from other hosts, shapes or GPUs."""
    parts = [json.loads(p.read_text()) for p in paths]
    same = {(x["shape"], x["gpu_name"], x["work"], x["date"]) for x in parts}
    if len(same) != 1:
        raise SystemExit(f"--combine: results of different shapes, GPUs, hosts or days: {same}")
    runs: dict[str, dict] = {}
    for part in parts:
        for r in part["runs"]:
            if r.get("status") == "ok" or r["id"] not in runs:
                runs[r["id"]] = r
    summary = {**parts[-1], "runs": sorted(runs.values(), key=lambda r: r["id"]),
               "combined_from": [{"command": x["command"], "started": x["started"]} for x in parts]}
    summary["ratios"] = ratios(summary["runs"])
    stem = free_stem(out, f"{summary['date']}-{gpu_slug(summary['gpu_name'])}-ttfc")
    chart = write_chart(summary, out / f"{stem}.png")
    summary["chart"] = chart.name if chart else None
    write_json(out / f"{stem}.json", summary)
    print_summary(summary)
    return out / f"{stem}.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["4b", "tiny"], default="4b")
    ap.add_argument("--out", type=Path, default=BENCH / "results", help="results folder (bench/results)")
    ap.add_argument("--work", type=Path, default=WORK / "ttfc",
                    help="model, data, llama.cpp, caches, runs and finished results (bench/work/ttfc); "
                         "keep it outside the repo to reuse it across checkouts")
    ap.add_argument("--only", help="comma-separated recipes (fastft, notebook) and/or scenarios "
                                   "(favorite, longtail); default all")
    ap.add_argument("--scenarios", help="comma-separated scenarios (favorite, longtail); default all")
    ap.add_argument("--runs-per", type=int, default=2, help="runs of each (scenario, recipe): the first "
                                                             "cold, the rest warm (2)")
    ap.add_argument("--max-steps", type=int, help="cap training at N optimizer steps in both recipes "
                                                   "(for smoke tests; default: the scenario's epochs)")
    ap.add_argument("--longtail-examples", type=int, default=500)
    ap.add_argument("--llama-cpp", type=Path, help="a built llama.cpp (convert_hf_to_gguf.py and "
                    "llama-quantize at its top level); default: UNSLOTH_LLAMA_CPP_PATH, fastft's "
                    "cached build, else one built into --work")
    ap.add_argument("--deadline-s", type=float, default=0,
                    help="start no run that would not finish this many seconds after start (its "
                         "expected time: an earlier run of it, else an estimate) and stop one "
                         "still running then; results are written whatever happens; 0 = none")
    ap.add_argument("--fresh", action="store_true", help="rerun runs that finished in an earlier "
                                                         "invocation (default: reuse them)")
    ap.add_argument("--no-import-warmup", dest="import_warmup", action="store_false",
                    help="skip importing the libraries once before the first timed run")
    ap.add_argument("--quiet", action="store_true", help="do not echo subprocess output (log only)")
    ap.add_argument("--allow-cpu", action="store_true", help="run --shape 4b without a GPU (very slow)")
    ap.add_argument("--combine", type=Path, nargs="+", metavar="JSON",
                    help="only merge these results of earlier calls on one host into one result "
                         "(with ratios and chart) in --out")
    a = ap.parse_args(argv)
    if a.combine:
        log(f"results: {combine(a.combine, a.out.resolve())}")
        return 0
    recipes, scenarios = select(a)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _on_signal)
    t_start = time.perf_counter()
    deadline = t_start + a.deadline_s if a.deadline_s else None
    date = datetime.now().strftime("%Y-%m-%d")
    work = a.work.resolve()
    raw_dir = work / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    echo = not a.quiet

    def remaining() -> float | None:
        return None if deadline is None else deadline - time.perf_counter()

    env = probe_env()
    gpu = env["gpu"]
    gpu_name = gpu["name"] if gpu else "CPU"
    log(f"device: {gpu_name}; versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()))
    if a.shape == "4b" and not gpu and not a.allow_cpu:
        raise SystemExit("--shape 4b needs a CUDA GPU (use --shape tiny on CPU, or --allow-cpu)")
    out = a.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    stem = free_stem(out, f"{date}-{gpu_slug(gpu and gpu['name'])}-ttfc")
    result_path = out / f"{stem}.json"
    logfile = Logfile(out / f"{stem}.log")
    summary = {
        "benchmark": "time to first chat", "date": date,
        "started": datetime.now().isoformat(timespec="seconds"), "shape": a.shape,
        "gpu_name": gpu_name, "gpu": gpu, "versions": env["versions"],
        "runner_versions": versions(), "quant": QUANT, "runs_per": a.runs_per,
        "max_steps": a.max_steps, "recipes": recipes,
        "scenarios": {s: {k: str(v) if isinstance(v, Path) else v for k, v in SCENARIOS[s].items()}
                      for s in scenarios},
        "notes": NOTES, "setup": {}, "runs": [], "ratios": [], "status": "running",
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "work": str(work),
    }

    def save():
        summary["ratios"] = ratios(summary["runs"])
        summary["setup"]["total_s"] = time.perf_counter() - t_start
        write_json(result_path, summary)

    try:
        t = time.perf_counter()
        model = make_model(a.shape, work, logfile, remaining, echo)
        summary["model"], summary["setup"]["model_s"] = str(model), time.perf_counter() - t
        t = time.perf_counter()
        data = {s: data_for(s, a, work, model, logfile, remaining, echo) for s in scenarios}
        summary["data"], summary["setup"]["data_s"] = ({s: str(p) for s, p in data.items()},
                                                       time.perf_counter() - t)
        for s, p in data.items():
            summary["scenarios"][s]["examples"] = sum(1 for line in p.open() if line.strip())
        t = time.perf_counter()
        llama = setup_llama(a, work, logfile, remaining, echo)
        summary["llama_cpp"], summary["setup"]["llama_cpp_s"] = str(llama), time.perf_counter() - t
        save()

        todo = plan_runs(recipes, scenarios, a.runs_per)
        marker = work / "import-warmup.json"  # once per host and set of versions
        warmed = not a.import_warmup or (marker.exists() and
                                         json.loads(marker.read_text()) == env["versions"])
        for spec in todo:
            key = {"shape": a.shape, "model": model.name, "data": data[spec["scenario"]].name,
                   "epochs": SCENARIOS[spec["scenario"]]["epochs"], "max_steps": a.max_steps}
            raw = raw_dir / f"{spec['id']}.json"
            old = json.loads(raw.read_text()) if raw.exists() else {}
            if not a.fresh and old.get("status") == "ok" and old.get("key") == key:
                log(f"[{spec['id']}] done earlier ({old['end_to_end_s']:.0f} s): reusing it")
                summary["runs"].append({**old, "reused": True})
                continue
            if spec["attempt"] == "cold":  # a new cold run makes its pair's warm runs stale
                for f in raw_dir.glob(f"{spec['scenario']}-{spec['recipe']}-warm*.json"):
                    f.unlink()
            cold = next((r for r in summary["runs"] if r.get("status") == "ok" and r["scenario"] ==
                         spec["scenario"] and r["recipe"] == spec["recipe"]), None)
            expect = cold["end_to_end_s"] if cold else \
                ESTIMATE_S[a.shape][spec["scenario"]][spec["recipe"]]
            left = remaining()
            if left is not None and left < expect * 1.1 + 15:
                log(f"[{spec['id']}] skipped: {left:.0f} s left, it takes about {expect:.0f} s")
                summary["runs"].append({**spec, "status": "skipped (deadline)", "expected_s": expect})
                save()
                continue
            if spec["attempt"] != "cold" and cold is None:
                summary["runs"].append({**spec, "status": "skipped (no cold run)"})
                continue
            if not warmed:
                t = time.perf_counter()
                rc, _, _ = run_cmd("import warm-up", [sys.executable, "-c", WARMUP_CODE], logfile,
                                   remaining(), echo=echo, env=run_env(work / "caches" / "warmup", llama))
                summary["setup"]["import_warmup_s"] = time.perf_counter() - t
                warmed = True
                if rc == 0:
                    write_json(marker, env["versions"])
                left = remaining()
            res = {**spec, "key": key}
            try:
                res.update(run_one(spec, model, data[spec["scenario"]], SCENARIOS[spec["scenario"]],
                                   a, llama, work, logfile, None if left is None else left - 10, echo),
                           status="ok")
                log(f"[{spec['id']}] end to end {res['end_to_end_s']:.1f} s (train "
                    f"{res['train_wall_s']:.1f} + export {res['export_wall_s']:.1f})")
            except (SystemExit, KeyboardInterrupt):
                summary["runs"].append({**res, "status": "interrupted"})
                raise
            except Exception as e:  # one run failing must not lose the others
                status = "timeout" if "exit -9" in str(e) else "error"
                log(f"[{spec['id']}] FAILED ({status}): {e}")
                res.update(status=status, error=str(e))
            summary["runs"].append(res)
            write_json(raw, res)
            save()
        summary["status"] = "done"
    finally:
        save()
        try:
            chart = write_chart(summary, out / f"{stem}.png")
            if chart:
                summary["chart"] = chart.name
                save()
        except Exception as e:  # the chart is a nicety; the JSON is the result
            log(f"chart failed: {type(e).__name__}: {e}")
        print_summary(summary)
        log(f"results: {result_path}, log: {logfile.path}; total {time.perf_counter() - t_start:.0f} s")
    not_done = [r["id"] for r in summary["runs"] if r.get("status") != "ok"]
    if not_done:
        log(f"runs not finished: {', '.join(not_done)}"
            + (" (run the same command again to carry on)" if any(
                "deadline" in r.get("status", "") for r in summary["runs"]) else ""))
    return 1 if not_done else 0


if __name__ == "__main__":
    sys.exit(main())
