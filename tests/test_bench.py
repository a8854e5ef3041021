"""CPU smoke tests of the benchmark pieces that do not need `fastft train` or a GPU."""

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from conftest import REPO

if str(REPO) not in sys.path:  # `bench` is a folder of scripts, not an installed package
    sys.path.insert(0, str(REPO))

from bench import run as bench_run  # noqa: E402
from bench.make_data import TOLERANCE, main as make_data_main, make_data, target_lengths  # noqa: E402

CHAT_TEMPLATE = (REPO / "fastft" / "core" / "templates" / "qwen3_instruct_2507.jinja").read_text()


def rendered_lengths(path, tok):
    out = []
    for line in path.read_text().splitlines():
        msgs = json.loads(line)["messages"]
        assert [m["role"] for m in msgs] == ["user", "assistant"]
        text = tok.apply_chat_template(msgs, tokenize=False, chat_template=CHAT_TEMPLATE)
        out.append(len(tok(text, add_special_tokens=False)["input_ids"]))
    return out


def test_make_data_gives_the_token_lengths_asked(tmp_path, tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    path = tmp_path / "fixed.jsonl"
    reported = make_data(path, n=6, tokens=1024, seed=1, tokenizer=tok, dist="fixed")
    measured = rendered_lengths(path, tok)
    assert measured == reported
    assert all(1024 - TOLERANCE <= n <= 1024 for n in measured), measured
    # Deterministic from the seed; another seed gives other text.
    again = tmp_path / "again.jsonl"
    make_data(again, n=6, tokens=1024, seed=1, tokenizer=tok, dist="fixed")
    assert again.read_text() == path.read_text()
    make_data(again, n=6, tokens=1024, seed=2, tokenizer=tok, dist="fixed")
    assert again.read_text() != path.read_text()


def test_make_data_vary_spreads_lengths(tmp_path, tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    path = tmp_path / "vary.jsonl"
    make_data(path, n=24, tokens=1024, min_tokens=128, seed=0, vary=True, tokenizer=tok)
    measured = rendered_lengths(path, tok)
    assert all(128 - TOLERANCE <= n <= 1024 for n in measured), measured
    assert max(measured) - min(measured) > 400  # spread, not all alike


def test_target_lengths_longtail_looks_like_chat_sft_data():
    import statistics
    lengths = target_lengths(4000, "longtail", seed=0)
    assert lengths == target_lengths(4000, "longtail", seed=0)
    assert lengths != target_lengths(4000, "longtail", seed=1)
    assert min(lengths) >= 64 and max(lengths) <= 2048
    assert 350 <= statistics.median(lengths) <= 450
    assert statistics.mean(lengths) > 1.2 * statistics.median(lengths)  # skewed right
    assert 0.01 <= sum(n > 1536 for n in lengths) / len(lengths) <= 0.10  # a tail near max_seq_len
    assert sum(n == 2048 for n in lengths) >= 40  # over-long conversations cut at the maximum
    assert sum(n < 256 for n in lengths) / len(lengths) > 0.2  # many short ones
    # --tokens / --min-tokens bound it.
    small = target_lengths(500, "longtail", tokens=1024, min_tokens=128, seed=0)
    assert min(small) == 128 and max(small) == 1024


def test_target_lengths_fixed_and_uniform():
    assert target_lengths(5, "fixed", tokens=512) == [512] * 5
    assert target_lengths(3, "fixed") == [1024] * 3
    uniform = target_lengths(1000, "uniform", seed=0)
    assert min(uniform) >= 128 and max(uniform) <= 1024 and max(uniform) - min(uniform) > 800
    with pytest.raises(ValueError):
        target_lengths(3, "nope")
    with pytest.raises(ValueError):
        target_lengths(3, "uniform", tokens=100, min_tokens=200)


def test_make_data_default_is_longtail_and_exact(tmp_path, tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    path = tmp_path / "longtail.jsonl"
    reported = make_data(path, n=64, seed=0, tokenizer=tok)
    measured = rendered_lengths(path, tok)
    targets = target_lengths(64, "longtail", seed=0)
    assert measured == reported
    assert all(t - TOLERANCE <= n <= t for t, n in zip(targets, measured)), list(zip(targets, measured))
    assert min(measured) <= 100 and max(measured) >= 2048 - TOLERANCE


def test_make_data_cli_dists(tmp_path, tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    common = ["--n", "3", "--tokenizer", str(tiny_path)]
    assert make_data_main([str(tmp_path / "f.jsonl"), "--dist", "fixed", "--tokens", "256"] + common) == 0
    assert all(256 - TOLERANCE <= n <= 256 for n in rendered_lengths(tmp_path / "f.jsonl", tok))
    # --vary is the old spelling of --dist uniform.
    make_data_main([str(tmp_path / "v.jsonl"), "--vary"] + common)
    make_data_main([str(tmp_path / "u.jsonl"), "--dist", "uniform"] + common)
    assert (tmp_path / "v.jsonl").read_text() == (tmp_path / "u.jsonl").read_text()
    targets = target_lengths(3, "uniform", seed=0)
    assert all(t - TOLERANCE <= n <= t for t, n in zip(targets, rendered_lengths(tmp_path / "u.jsonl", tok)))


@pytest.mark.slow
def test_classic_recipe_runs_two_steps_on_cpu(tmp_path, tiny_path, tokenizer_of):
    import torch

    data = tmp_path / "data.jsonl"
    make_data(data, n=4, tokens=128, seed=0, tokenizer=tokenizer_of(tiny_path), dist="fixed")
    out, metrics = tmp_path / "classic.json", tmp_path / "metrics.jsonl"
    cmd = [sys.executable, str(REPO / "bench" / "classic.py"), "--model", str(tiny_path),
           "--data", str(data), "--out", str(out), "--metrics", str(metrics),
           "--steps", "2", "--micro-batch", "1", "--grad-accum", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r = json.loads(out.read_text())
    assert r["status"] == "ok"
    assert r["recipe"] == "classic" and r["micro_batch"] == 1 and r["grad_accum"] == 1
    assert r["steps"] == 2 and len(r["losses"]) == 2 and len(r["records"]) == 2
    assert all(isinstance(x, float) and 5 < x < 30 for x in r["losses"])
    assert r["last_loss"] == r["losses"][-1]
    assert r["tokens_per_s"] > 0 and r["seconds_per_step"] > 0
    # Every step saw the micro-batch's tokens (one ~128-token example each).
    assert all(120 <= rec["tokens"] <= 128 for rec in r["records"])
    assert r["loss_mask"] in ("assistant_only_loss", "completion_only_loss")
    for key in ("peak_mem_alloc_gib", "peak_mem_reserved_gib", "versions", "gpu"):
        assert key in r
    assert r["versions"]["trl"] and r["versions"]["peft"] and r["versions"]["bitsandbytes"]
    if not torch.cuda.is_available():
        assert r["optim"] == "adamw_torch" and r["gpu"] is None
        assert any("paged_adamw_8bit" in n for n in r["notes"])
    assert len(metrics.read_text().splitlines()) == 2


# -- run.py's bookkeeping (no subprocesses) -----------------------------------------------------

def fake(name, tps, alloc, losses, mb=2, ga=4, **kw):
    return dict(recipe=name, status="ok", micro_batch=mb, grad_accum=ga, tokens_per_s=tps,
                peak_mem_alloc_gib=alloc, peak_mem_reserved_gib=alloc + 1, seconds_per_step=1.0,
                steps=len(losses), losses=losses, last_loss=losses[-1],
                records=[{"step": i + 1, "loss": x, "steps": 1} for i, x in enumerate(losses)], **kw)


def test_comparisons_and_targets():
    results = [
        fake("classic", 1000, 4.8, [12.0, 11.0], eval_loss=11.0),
        fake("fastft2x4", 4800, 3.3, [12.0, 11.05]),
        fake("fastft", 14000, 4.1, [12.0, 11.2], mb=8, ga=1, auto=True, eval_loss=11.05),
        fake("fastft@12GB", 13000, 4.0, [12.0], mb=4, ga=2, budget=12.0),
        fake("fastft@8GB", 6000, 4.0, [12.0], mb=4, ga=2, budget=8.0),
        {"recipe": "fastft@4GB", "status": "error", "error": "boom"},
    ]
    t = bench_run.add_comparisons(results, "longtail")
    assert t["speedup"]["value"] == pytest.approx(14.0) and t["speedup"]["pass"]
    assert t["mem_ratio_2x4"]["value"] == pytest.approx(3.3 / 4.8) and t["mem_ratio_2x4"]["pass"]
    assert t["eval_loss_rel_diff"]["value"] == pytest.approx(0.05 / 11.0) and t["eval_loss_rel_diff"]["pass"]
    assert t["budget8_speedup"]["value"] == pytest.approx(6.0) and t["budget8_speedup"]["pass"]
    assert t["budget8_reserved_gib"]["value"] == 5.0 and t["budget8_reserved_gib"]["pass"]
    # The fixed-length scenario asks 6x, not 10x.
    assert "6x" in bench_run.add_comparisons(results, "fixed")["speedup"]["target"]
    # Losses compare over the last steps both recipes have.
    assert results[3]["compare_steps"] == (0, 1) and results[3]["loss_rel_diff"] == 0.0
    rows = bench_run.table_rows(results)
    assert len(rows) == 6 and all(len(r) == len(bench_run.COLUMNS) for r in rows)
    assert rows[2][1] == "8 x 1" and rows[5][-1] == "error"


def test_losses_compare_over_the_coarser_logging_interval():
    """fastft logs every 10 steps on a GPU, classic every step: one fastft record of steps 1-2
    compares with the mean of classic's steps 1 and 2."""
    classic = fake("classic", 1000, 4.8, [12.0, 11.0])
    fastft = fake("fastft", 9000, 4.0, [11.5], mb=8, ga=1)
    fastft["records"] = [{"step": 2, "loss": 11.5, "steps": 2}]
    bench_run.add_comparisons([classic, fastft], "longtail")
    assert fastft["compare_steps"] == (0, 2) and fastft["loss_rel_diff"] == pytest.approx(0.0)
    assert bench_run.table_rows([classic, fastft])[1][9] == "11.5000 @1-2"


def test_targets_fail_and_missing():
    results = [fake("classic", 2600, 4.8, [11.0], eval_loss=11.0),
               fake("fastft2x4", 2700, 4.0, [11.5]),
               fake("fastft", 20000, 4.0, [11.5], eval_loss=11.5)]
    t = bench_run.add_comparisons(results, "longtail")
    assert t["mem_ratio_2x4"]["pass"] is False and t["eval_loss_rel_diff"]["pass"] is False
    assert t["speedup"]["pass"] is False  # 7.7x < 10x
    assert t["budget8_speedup"]["pass"] is None and t["budget8_reserved_gib"]["pass"] is None


def test_chart_and_slug(tmp_path):
    summary = {"shape": "4b", "steps": 20, "gpu_name": "NVIDIA H100 80GB HBM3", "date": "2026-11-26",
               "results": [fake("classic", 2600, 4.8, [11.0]), fake("fastft", 14000, 4.1, [11.0], mb=8, ga=1)]}
    path = bench_run.write_chart(summary, tmp_path / "chart.png")
    assert path.exists() and path.stat().st_size > 1000
    assert bench_run.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert bench_run.gpu_slug(None) == "cpu"
    svg = bench_run._svg_chart(["a", "b"], [1.0, 2.0], [1.0, 1.5], [2.0, 2.5], "t")
    assert svg.startswith("<svg") and svg.count("<rect") == 6


def test_fastft_command_is_accepted_by_the_train_cli(tmp_path):
    # Every flag the bench passes must exist in `fastft train` (checked by click's own parser).
    from click.testing import CliRunner

    from fastft.cli import main
    a = Namespace(lr=2e-4, seed=42)
    data = tmp_path / "d.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n')
    auto = bench_run.fastft_cmd({"name": "fastft@12GB", "auto": True, "budget": 12.0, "steps": 10},
                                a, tmp_path / "m", data, tmp_path / "runs")
    fixed = bench_run.fastft_cmd({"name": "fastft2x4", "auto": False, "steps": 20},
                                 a, tmp_path / "m", data, tmp_path / "runs")
    assert auto[auto.index("--vram-budget") + 1] == "12" and "--auto-batch" in auto
    assert "--no-auto-batch" in fixed and fixed[fixed.index("--batch-size") + 1] == "2"
    for cmd in (auto, fixed):
        args = cmd[cmd.index("train"):] + ["--print-config"]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert "max_steps = " in result.stdout


def test_plan_selects_recipes():
    a = Namespace(vram_budget="12,8", steps=20, budget_steps=10, only=None)
    names = [r["name"] for r in bench_run.plan(a, cuda=True)]
    assert names == ["classic", "fastft2x4", "fastft", "fastft@12GB", "fastft@8GB"]
    assert [r["name"] for r in bench_run.plan(a, cuda=False)] == ["classic", "fastft2x4", "fastft"]
    a.only = "classic,budget"
    assert [r["name"] for r in bench_run.plan(a, cuda=True)] == ["classic", "fastft@12GB", "fastft@8GB"]
    a.only = "nope"
    with pytest.raises(SystemExit):
        bench_run.plan(a, cuda=True)


def test_a_baseline_source_runs_with_the_options_it_knows(tmp_path):
    """--baseline DIR: a recipe 'baseline' after fastft's defaults, run from DIR's fastft (its
    own `train --help` decides which of the bench's options it gets: an older fastft has no
    --compile or --retune), read from its run folder's JSON as such, and compared with fastft's
    defaults in the targets."""
    src = tmp_path / "old"
    (src / "fastft").mkdir(parents=True)
    (src / "fastft" / "__init__.py").write_text("")
    (src / "fastft" / "cli.py").write_text(
        "import sys\nprint('Options:\\n  --model TEXT\\n  --max-steps INTEGER  (e.g. --seed)\\n'"
        "      '  --name, --runs-dir TEXT\\n  --lr FLOAT\\n  --auto-batch / --no-auto-batch')\n")
    a = Namespace(vram_budget="8", steps=20, budget_steps=10, only=None, baseline=src, lr=2e-4, seed=42)
    recipes = bench_run.plan(a, cuda=True)
    assert [r["name"] for r in recipes] == ["classic", "fastft2x4", "fastft", "baseline", "fastft@8GB"]
    base = recipes[3]
    cmd = bench_run.fastft_cmd(base, a, tmp_path / "m", tmp_path / "d.jsonl", tmp_path / "runs")
    assert cmd[cmd.index("--seed") + 1] == "42" and "--auto-batch" in cmd and "--lr" in cmd
    for gone in ("--compile", "on", "--retune", "--batch-size", "--grad-accum", "--warmup-ratio"):
        assert gone not in cmd
    assert "--compile" in bench_run.fastft_cmd(recipes[2], a, tmp_path / "m", tmp_path / "d.jsonl",
                                                tmp_path / "runs")
    assert bench_run.source_env(src)["PYTHONPATH"].split(os.pathsep)[0] == str(src)

    run = tmp_path / "runs" / "baseline"
    run.mkdir(parents=True)
    (run / "fastft.json").write_text(json.dumps({
        "status": "done", "schema_version": 1, "plan": {"batch_size": 8, "grad_accum": 1,
                                                       "gradient_checkpointing": "false"},
        "final": {"tokens_per_s": 10000.0, "seconds_per_step": 0.4, "steps": 2, "timed_steps": 1,
                  "last_loss": 11.2, "future_field": 1}}))
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 12.0, "steps": 1}\n'
                                       '{"step": 2, "loss": 11.2, "steps": 1}\n')
    got = bench_run.read_fastft_json(run, base)
    assert got["tokens_per_s"] == 10000.0 and got["micro_batch"] == 8 and got["losses"] == [12.0, 11.2]
    results = [fake("classic", 1000, 4.8, [12.0, 11.0]), fake("fastft", 9000, 4.1, [12.0, 11.2]), got]
    t = bench_run.add_comparisons(results, "longtail")
    assert t["vs_baseline"]["value"] == pytest.approx(0.9) and t["vs_baseline"]["pass"] is False


# -- bench/ttfc.py: time to first chat ---------------------------------------------------------

from bench import ttfc  # noqa: E402


def check_ttfc_run(r):
    """Every stage present, each phase's stages adding up to its wall time, the totals adding up."""
    assert set(r["stages"]) == set(ttfc.STAGES)
    assert sum(r["stages"].values()) == pytest.approx(r["end_to_end_s"], abs=1e-6)
    assert r["train_wall_s"] + r["export_wall_s"] == pytest.approx(r["end_to_end_s"], abs=1e-6)
    assert sum(r["phases"]["train"].values()) == pytest.approx(r["train_wall_s"], abs=1e-6)
    assert sum(r["phases"]["export"].values()) == pytest.approx(r["export_wall_s"], abs=1e-6)


def test_ttfc_stages_add_up():
    record = {"timings": {"startup_s": 0.5, "checks_s": 0.1, "imports_s": 30.0, "load_s": 5.0,
                          "prepare_s": 0.4, "plan_s": 46.0, "train_s": 20.0, "save_s": 4.0,
                          "total_s": 106.0}}
    manifest = {"timings": {"load_s": 50.0, "merge_s": 24.0, "convert_s": 55.0, "quantize_s": 35.0,
                            "quantize_q4_k_m_s": 35.0, "check_s": 6.0, "docs_s": 1.0}}
    f = {**{"status": "ok"}, **ttfc.totals(ttfc.fastft_stages(115.0, record, 180.0, manifest))}
    f["phases"] = ttfc.fastft_stages(115.0, record, 180.0, manifest)
    check_ttfc_run(f)
    assert f["stages"]["startup"] == pytest.approx(39.6 + 9.0)  # 115-75.4, 180-171
    assert f["stages"]["probe"] == 46.0 and f["stages"]["save"] == 4.0 and f["stages"]["prep"] == 0.4
    assert f["stages"]["load"] == 55.0 and f["stages"]["quantize"] == 35.0  # not twice
    assert f["end_to_end_s"] == 295.0

    nb_t = {"imports_s": 30.0, "load_s": 10.0, "prep_s": 3.0, "train_s": 40.0, "merge_s": 30.0,
            "convert_s": 50.0, "quantize_s": 30.0, "save_gguf_s": 115.0, "total_s": 198.0}
    n = {"phases": ttfc.notebook_stages(200.0, nb_t)}
    n.update(ttfc.totals(n["phases"]))
    check_ttfc_run(n)
    assert n["export_wall_s"] == 115.0 and n["stages"]["save"] == pytest.approx(5.0)
    assert n["stages"]["startup"] == pytest.approx(32.0)  # imports + 2 s outside the script
    assert n["stages"]["probe"] == 0.0 and n["stages"]["check"] == 0.0

    runs = [{"scenario": "favorite", "recipe": "fastft", "attempt": "cold", "status": "ok", **f},
            {"scenario": "favorite", "recipe": "notebook", "attempt": "cold", "status": "ok", **n},
            {"scenario": "favorite", "recipe": "fastft", "attempt": "warm", "status": "ok", **f},
            {"scenario": "favorite", "recipe": "notebook", "attempt": "warm", "status": "error"}]
    (ratio,) = ttfc.ratios(runs)
    assert ratio["attempt"] == "cold" and ratio["notebook_over_fastft"] == pytest.approx(200 / 295)
    rows = ttfc.table_rows(runs)
    assert all(len(r) == len(ttfc.COLUMNS) for r in rows) and rows[-1][-1] == "error"


def test_ttfc_makes_every_cache_folder_it_points_a_run_at(tmp_path):
    """As a user's ~/.cache exists: torch makes its CUDA kernel cache's folder under
    XDG_CACHE_HOME only where that exists, and otherwise caches nothing (every H100 run's
    train.log warned so before the folders were made)."""
    env = ttfc.run_env(tmp_path / "caches", tmp_path / "llama")
    folders = [env[v] for v in ("FASTFT_CACHE", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR",
                                "UNSLOTH_COMPILE_LOCATION", "HF_HOME", "XDG_CACHE_HOME")]
    assert all(Path(f).parent == tmp_path / "caches" and Path(f).is_dir() for f in folders)


def test_ttfc_gives_the_notebook_its_own_copy_of_llama_cpp(tmp_path):
    """Unsloth patches the converter of the llama.cpp it is given; the notebook's copy takes the
    patch, fastft's build does not see it. The copy is made once, its links kept as links."""
    llama, work = tmp_path / "llama.cpp", tmp_path / "work"
    (llama / "conversion").mkdir(parents=True)
    (llama / "build" / "bin").mkdir(parents=True)
    (llama / "conversion" / "base.py").write_text("upstream\n")
    (llama / "build" / "bin" / "llama-quantize").write_text("binary")
    (llama / "llama-quantize").symlink_to("build/bin/llama-quantize")
    work.mkdir()
    assert ttfc.recipe_llama("fastft", llama, work) == llama
    copy = ttfc.recipe_llama("notebook", llama, work)
    assert copy != llama and (copy / "llama-quantize").is_symlink()
    assert (copy / "llama-quantize").resolve() == (copy / "build/bin/llama-quantize").resolve()
    (copy / "conversion" / "base.py").write_text("upstream\n# UNSLOTH_BRANDING_APPLIED\n")
    assert (llama / "conversion" / "base.py").read_text() == "upstream\n"
    assert ttfc.recipe_llama("notebook", llama, work) == copy          # made once: patched stays
    assert "UNSLOTH" in (copy / "conversion" / "base.py").read_text()
    env = ttfc.run_env(tmp_path / "caches", ttfc.recipe_llama("notebook", llama, work))
    assert env["UNSLOTH_LLAMA_CPP_PATH"] == str(copy)


def test_ttfc_selection_and_order():
    a = Namespace(only="fastft", scenarios="favorite")
    assert ttfc.select(a) == (["fastft"], ["favorite"])
    assert ttfc.select(Namespace(only=None, scenarios=None)) == (list(ttfc.RECIPES), list(ttfc.SCENARIOS))
    assert ttfc.select(Namespace(only="longtail,notebook", scenarios=None)) == (["notebook"], ["longtail"])
    with pytest.raises(SystemExit):
        ttfc.select(Namespace(only="nope", scenarios=None))
    ids = [r["id"] for r in ttfc.plan_runs(["fastft", "notebook"], ["favorite"], 2)]
    assert ids == ["favorite-fastft-cold", "favorite-notebook-cold",
                   "favorite-fastft-warm", "favorite-notebook-warm"]


def test_ttfc_chart(tmp_path):
    st = {s: 1.0 for s in ttfc.STAGES}
    run = {"scenario": "favorite", "recipe": "fastft", "attempt": "cold", "status": "ok",
           "stages": st, "end_to_end_s": 11.0}
    summary = {"shape": "tiny", "gpu_name": "CPU", "date": "2026-12-05", "runs": [run, run]}
    path = ttfc.write_chart(summary, tmp_path / "c.png")
    assert path.exists() and path.stat().st_size > 1000
    svg = ttfc.svg_stacked(["a", "b"], [st, st], "t")
    assert svg.startswith("<svg") and svg.count("<rect") == 2 * len(st) + len(st)


def test_ttfc_combine_keeps_each_runs_finished_result_and_refuses_other_hosts(tmp_path):
    """Results of two calls on one host merge into one with the ratio neither had alone; a run
    finished in the first call is not replaced by the second call's skip of it."""
    def run(recipe, attempt, status="ok", seconds=100.0):
        return {"id": f"favorite-{recipe}-{attempt}", "scenario": "favorite", "recipe": recipe,
                "attempt": attempt, "status": status, "end_to_end_s": seconds,
                "train_wall_s": seconds / 2, "export_wall_s": seconds / 2,
                "stages": {s: seconds / len(ttfc.STAGES) for s in ttfc.STAGES}}

    def result(name, runs, work="/tmp/ttfc"):
        path = tmp_path / name
        path.write_text(json.dumps({"shape": "4b", "gpu_name": "NVIDIA H200", "work": work,
                                    "date": "2026-12-06", "command": name, "started": "t",
                                    "runs": runs, "ratios": []}))
        return path

    first = result("a.json", [run("fastft", "cold", seconds=170.0)])
    second = result("b.json", [run("fastft", "cold", status="skipped (deadline)"),
                               run("notebook", "cold", seconds=265.0)])
    out = tmp_path / "out"
    out.mkdir()
    merged = json.loads(ttfc.combine([first, second], out).read_text())
    assert [r["id"] for r in merged["runs"]] == ["favorite-fastft-cold", "favorite-notebook-cold"]
    assert merged["runs"][0]["status"] == "ok"
    (ratio,) = merged["ratios"]
    assert ratio["notebook_over_fastft"] == pytest.approx(265.0 / 170.0)
    assert merged["combined_from"] == [{"command": "a.json", "started": "t"},
                                       {"command": "b.json", "started": "t"}]
    other = result("c.json", [run("notebook", "warm")], work="/elsewhere")
    with pytest.raises(SystemExit, match="different shapes, GPUs, hosts or days"):
        ttfc.combine([first, other], out)


@pytest.mark.slow
def test_ttfc_tiny_fastft_end_to_end(tmp_path):
    """The real `fastft train` + `fastft export` pair on the tiny model, one cold run (a warm
    one would double the ~100 s this takes on 2 cores; the stage bookkeeping is the same)."""
    from fastft.export.llamacpp import ensure_llama_cpp

    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "bench" / "ttfc.py"), "--shape", "tiny", "--only", "fastft",
           "--scenarios", "favorite", "--max-steps", "2", "--out", str(out), "--work",
           str(tmp_path / "work"), "--llama-cpp", str(ensure_llama_cpp().root), "--quiet",
           "--no-import-warmup", "--runs-per", "1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (result,) = out.glob("*-ttfc.json")
    s = json.loads(result.read_text())
    assert s["status"] == "done" and s["shape"] == "tiny" and s["recipes"] == ["fastft"]
    assert [(r["recipe"], r["attempt"]) for r in s["runs"]] == [("fastft", "cold")]
    for r in s["runs"]:
        assert r["status"] == "ok" and r["steps"] == 2
        check_ttfc_run(r)
        assert r["fastft_timings"]["train"]["train_s"] == r["phases"]["train"]["train"]
        assert r["fastft_timings"]["export"]["convert_s"] == r["stages"]["convert"]
        assert any(name.endswith(".Q4_K_M.gguf") for name in r["ggufs"])
        assert r["commands"][0][2:4] == ["fastft.cli", "train"]
    assert s["ratios"] == []
    assert (out / result.name.replace(".json", ".png")).exists()
    assert (out / result.name.replace(".json", ".log")).stat().st_size > 0
    assert "end to" in proc.stdout   # the table's last column (its header may wrap)


def test_scorer_threads_runs_llama_cpp_with_each_count_asked(color, tmp_path, monkeypatch):
    """bench/scorer_threads.py hands fastft-score the thread counts it is asked to time, for
    each request length, alternately (from 21dacb2 to this test, the export's busy-thread
    argument took the count's place: every run got 0 threads, llama.cpp's default of 4)."""
    from bench import scorer_threads
    from fastft.export import retention

    gguf = next(color[1].glob("*.Q4_K_M.gguf"))
    threads, popen = [], retention.subprocess.Popen

    def spied(cmd, **kw):                       # fastft-score's runs: the last argument, threads
        if str(gguf) in cmd:
            threads.append(cmd[-1])
        return popen(cmd, **kw)

    monkeypatch.setattr(retention.subprocess, "Popen", spied)
    assert scorer_threads.main([str(gguf), "--threads", "1,2", "--tokens", "24,12", "--runs", "1",
                                "--out", str(tmp_path / "t.json")]) == 0
    assert threads == ["1", "2", "1", "2"] * 2                   # a warm-up round, then one run
    seconds = json.loads((tmp_path / "t.json").read_text())["seconds"]
    assert sorted(seconds) == sorted(f"{k} tokens, threads {n}" for k in (24, 12) for n in (1, 2))



def test_scorer_threads_against_another_scorer_compares_their_results(color, tmp_path):
    """--against runs a second fastft-score on the same requests, alternately, and says whether
    its rows are the first's: the same program is, one that changes a float is not."""
    from bench import scorer_threads
    from fastft.export.llamacpp import ensure_scorer

    gguf, scorer = next(color[1].glob("*.Q4_K_M.gguf")), ensure_scorer()
    changed = tmp_path / "changed-score"        # fastft-score, then its last float's low byte flipped
    changed.write_text(f"#!/bin/sh\n'{scorer}' \"$@\" || exit $?\n"
                       f"'{sys.executable}' -c \"import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb')"
                       f".read()); b[-4] ^= 1; open(p, 'wb').write(b)\" \"$3\"\n")
    changed.chmod(0o755)
    for other, alike in ((scorer, True), (changed, False)):
        out = tmp_path / f"{alike}.json"
        assert scorer_threads.main([str(gguf), "--threads", "1", "--tokens", "12", "--runs", "1",
                                    "--against", str(other), "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["same_results"] == {"12 tokens, threads 1": alike}
        assert sorted(result["seconds"]) == ["12 tokens, threads 1", "12 tokens, threads 1 (--against)"]


def test_scorer_threads_memory_is_the_programs_peak_with_the_rows_it_keeps(color, tmp_path):
    """--memory reports fastft-score's own peak resident memory per run: three examples, whose
    first two the program copies (the next decode would overwrite their rows), peak higher than
    one by at least those copies (99 rows of 151,936 floats each)."""
    from bench import scorer_threads

    gguf = next(color[1].glob("*.Q4_K_M.gguf"))
    peak = {}
    for examples in (1, 3):
        out = tmp_path / f"{examples}.json"
        assert scorer_threads.main([str(gguf), "--threads", "1", "--tokens", "100", "--runs", "1",
                                    "--examples", str(examples), "--memory", "--out", str(out)]) == 0
        (peak[examples],) = json.loads(out.read_text())["peak_rss_mib"]["100 tokens, threads 1"]
    copies = 2 * 99 * 151_936 * 4 / 2**20
    assert peak[1] > 50 and peak[3] - peak[1] > 0.9 * copies, (peak, copies)

def test_export_paths_runs_a_patched_case_with_its_constant_set():
    """bench/export_paths.py's A/B cases run `fastft` with a module constant set first: the
    process that runs the CLI sees it (here fastft's version, which --version prints)."""
    from bench.export_paths import CASES, PATCHES, fastft

    assert set(PATCHES) <= set(CASES)
    p = subprocess.run(fastft("--version", patch="fastft.__version__ = '9.9.9-patched'"),
                       capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "fastft, version 9.9.9-patched", p.stderr
    two = ["fastft.__version__ = '9.9.9'", "fastft.__version__ = fastft.__version__ + '-two'"]
    p = subprocess.run(fastft("--version", patch=two), capture_output=True, text=True, cwd=REPO,
                       timeout=300)                     # several, in order (a case and --child-device)
    assert p.returncode == 0 and p.stdout.strip() == "fastft, version 9.9.9-two", p.stderr


def test_cold_compiles_reads_each_triton_compile_from_the_cache_listing(tmp_path):
    from bench import cold_compiles

    listing = tmp_path / "caches.txt"   # as gpu_check's find -printf '%T@ %s %P\n' writes it
    listing.write_text("\n".join([
        "1000.0 10 longtail-fastft/fastft/tuning/a.json",
        "1002.0 100 longtail-fastft/triton/K1/_rms_layernorm_forward.ttir",
        "1003.0 5000 longtail-fastft/triton/K1/_rms_layernorm_forward.cubin",
        "1003.1 300 longtail-fastft/triton/K1/_rms_layernorm_forward.json",
        "1003.5 100 longtail-fastft/triton/K2/_rope_embedding.ttir",
        "1004.0 6000 longtail-fastft/triton/K2/_rope_embedding.cubin",
        "1004.5 100 longtail-fastft/triton/K3/_rms_layernorm_forward.ttir",   # another specialization
        "1006.0 6000 longtail-fastft/triton/K3/_rms_layernorm_forward.cubin",
        "1001.0 2048 longtail-notebook/xdg/torch/kernels/x",
    ]) + "\n")
    rep = cold_compiles.report(cold_compiles.read_listing(listing.read_text()))
    fastft = rep["longtail-fastft"]
    assert fastft["parts"] == {"fastft": {"files": 1, "bytes": 10},
                               "triton": {"files": 7, "bytes": 17600}}
    assert [(c["kernel"], c["folder"], c["at_s"], c["took_s"], c["after_s"])
            for c in fastft["triton"]] == [("_rms_layernorm_forward", "K1", 3.0, 1.0, 3.0),
                                           ("_rope_embedding", "K2", 4.0, 0.5, 1.0),
                                           ("_rms_layernorm_forward", "K3", 6.0, 1.5, 2.0)]
    assert rep["longtail-notebook"] == {"parts": {"xdg": {"files": 1, "bytes": 2048}}, "triton": []}
    assert list(cold_compiles.report(cold_compiles.read_listing(listing.read_text()),
                                     "longtail-notebook")) == ["longtail-notebook"]
