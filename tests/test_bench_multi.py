"""bench/multi_gpu.py's parts that need no GPU: the two command lines, reading a finished run
folder, and the comparison against the issue's targets."""

import json
import sys
from pathlib import Path

from click.testing import CliRunner

from conftest import REPO, write_run

if str(REPO) not in sys.path:  # `bench` is a folder of scripts, not an installed package
    sys.path.insert(0, str(REPO))

from bench import multi_gpu  # noqa: E402


def test_the_two_runs_differ_only_in_gpus_and_name(tmp_path):
    one, two = (multi_gpu.train_cmd(r, Path("/m"), Path("/d.jsonl"), tmp_path, 30, 2e-4, 42,
                                     python="py") for r in multi_gpu.runs(2))
    assert one[:4] == ["py", "-m", "fastft.cli", "train"]
    fixed = ["--batch-size", "8", "--grad-accum", "2", "--no-auto-batch", "--padding", "padded",
             "--gradient-checkpointing", "false"]
    assert " ".join(fixed) in " ".join(one) and "--gpus" not in one
    assert two[-2:] == ["--gpus", "2"]
    assert two[:-2] == [a if a != "1gpu" else "2gpu" for a in one]
    assert one[one.index("--max-steps") + 1] == "30"


def test_the_commands_parse_as_fastft_train_options(tmp_path, monkeypatch):
    """Every flag the bench passes exists and validates: --print-config resolves it."""
    from fastft.cli import main
    data = tmp_path / "d.jsonl"
    data.write_text("")
    cmd = multi_gpu.train_cmd({"name": "2gpu", "gpus": 2}, tmp_path, data, tmp_path, 30, 2e-4, 42)
    r = CliRunner().invoke(main, cmd[3:] + ["--print-config"])
    assert r.exit_code == 0, r.output
    assert {"gpus = 2", "batch_size = 8", "grad_accum = 2", "auto_batch = false",
            'padding = "padded"', 'gradient_checkpointing = "false"', "max_steps = 30"} <= set(
        r.output.splitlines())


def finished_run(root: Path, name: str, world: int, tokens_per_s: float, losses: list[float]) -> Path:
    """A run folder as fastft leaves it, with metrics every 10 steps (a GPU's logging)."""
    from fastft.core.run import Final, RunFolder
    run = write_run(root / name)
    folder = RunFolder(run)
    rec = folder.read()
    plan = rec.plan.model_copy(update=dict(batch_size=8, grad_accum=2 // world, world_size=world,
                                           launcher="torchrun" if world > 1 else None))
    folder.write(rec.model_copy(update=dict(plan=plan, final=Final(
        global_step=30, steps=30, timed_steps=20, tokens_per_s=tokens_per_s, last_loss=losses[-1]))))
    folder.metrics_file.write_text("".join(
        json.dumps({"step": 10 * (i + 1), "steps": 10, "loss": loss, "tokens": 1000,
                    "seconds": 1.0, "tokens_per_s": 1000.0}) + "\n" for i, loss in enumerate(losses)))
    return run


def test_results_are_read_from_the_run_folders_and_compared(tmp_path):
    one = multi_gpu.collect(finished_run(tmp_path, "1gpu", 1, 10_000.0, [2.0, 1.5, 1.20]),
                            {"name": "1gpu", "gpus": 1})
    two = multi_gpu.collect(finished_run(tmp_path, "2gpu", 2, 19_000.0, [2.0, 1.5, 1.206]),
                            {"name": "2gpu", "gpus": 2})
    assert (two["world_size"], two["launcher"], two["micro_batch"], two["grad_accum"]) == (2, "torchrun", 8, 1)
    c = multi_gpu.compare([one, two])
    assert c["tokens_per_s_ratio"] == 1.9
    assert c["loss_steps"] == [21, 30] and c["loss_1gpu"] == 1.2 and c["loss_multi"] == 1.206
    assert abs(c["loss_rel_diff"] - 0.005) < 1e-9
    assert {k: t["pass"] for k, t in c["targets"].items()} == {"tokens_per_s_ratio": True,
                                                               "loss_rel_diff": True}
    slow = dict(two, tokens_per_s=17_000.0)
    off = dict(two, records=[dict(r, loss=r["loss"] * 1.02) for r in two["records"]])
    assert multi_gpu.compare([one, slow])["targets"]["tokens_per_s_ratio"]["pass"] is False
    assert multi_gpu.compare([one, off])["targets"]["loss_rel_diff"]["pass"] is False
    failed = {"recipe": "2gpu", "status": "error"}
    assert {t["pass"] for t in multi_gpu.compare([one, failed])["targets"].values()} == {None}
    text = multi_gpu.table({"shape": "4b", "steps": 30, "gpu_name": "H100", "gpus_visible": 2,
                            "date": "2026-11-27", "results": [one, two], "comparison": c})
    assert "[PASS] tokens_per_s_ratio: 1.9" in text and "mean over steps 21-30" in text
