"""The run folder (`fastft.core.run`): safe names, creation, `latest`, checkpoints, the lock, the record.

Plain file-system tests: no model, no training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from fastft.core.config import TrainConfig
from fastft.core.errors import ConfigError, RunFolderError
from fastft.core.run import NAME_RE, DataInfo, Final, Plan, RunFolder, RunRecord, default_run_name

REPO = Path(__file__).resolve().parent.parent


def made(runs: Path, name: str) -> RunFolder:
    folder = RunFolder.new(runs, name)
    folder.create()
    return folder


def record(**config) -> RunRecord:
    return RunRecord(
        config=TrainConfig(data="x.jsonl", **config),
        plan=Plan(model_path="tiny", batch_size=2, grad_accum=4, padding_free=None,
                  gradient_checkpointing="unsloth", optim="adamw_torch", group_by_length=True),
        variant="instruct-2507", guard={"variant": "instruct-2507", "data_think_stripped": 1},
        data=DataInfo(path="/data/x.jsonl", sha256="0" * 64, examples=3, train=3, eval=0,
                      truncated=0, dropped=0, train_tokens=30, trained_tokens=12),
        versions={"fastft": "0.1.0"}, hardware={"gpu": None},
        final=Final(global_step=3, train_loss=1.5, eval_losses=[2.0, 1.8]))


# -- names --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", [
    "../x", "/abs/path", "a/b", ".hidden", "latest", "", "a" * 101, "..", ".",
    "run\n",   # `$` alone would let a trailing newline through
])
def test_new_refuses_names_that_escape_or_are_special(tmp_path, name):
    runs = tmp_path / "runs"
    with pytest.raises(RunFolderError, match="invalid run name"):
        RunFolder.new(runs, name)
    assert not runs.exists()


def test_new_accepts_a_name_of_100_characters_and_creates_nothing(tmp_path):
    folder = RunFolder.new(tmp_path / "runs", "a" * 100)
    assert folder.path == tmp_path / "runs" / ("a" * 100)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("stem, expected", [
    ("My data (v2)!", "My-data-v2-20250102-030405"),
    (".hidden", "hidden-20250102-030405"),
    ("日本語", "run-20250102-030405"),
    ("...", "run-20250102-030405"),
    ("latest", "latest-20250102-030405"),
    ("x" * 300, "x" * 80 + "-20250102-030405"),
])
def test_default_run_name_is_sanitised_and_valid(tmp_path, stem, expected):
    name = default_run_name(f"/some/dir/{stem}.jsonl", now=datetime(2025, 1, 2, 3, 4, 5))
    assert name == expected
    assert NAME_RE.match(name)
    assert RunFolder.new(tmp_path / "runs", name).name == name
    assert TrainConfig(data="x.jsonl", name=name).name == name


# -- creating -----------------------------------------------------------------------------------

def test_new_refuses_an_existing_non_empty_folder(tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    (tmp_path / "runs" / "taken" / "fastft.json").write_text("{}")
    with pytest.raises(RunFolderError, match="already exists"):
        RunFolder.new(tmp_path / "runs", "taken")


def test_create_makes_the_folder_and_the_runs_dir(tmp_path):
    folder = RunFolder.new(tmp_path / "runs", "a")
    folder.create()
    assert folder.path.is_dir() and not any(folder.path.iterdir())


def test_create_refuses_a_folder_another_process_filled_after_new(tmp_path):
    folder = RunFolder.new(tmp_path / "runs", "a")
    folder.path.mkdir(parents=True)                    # the other process, between new and create
    (folder.path / "fastft.json").write_text("{}")
    with pytest.raises(RunFolderError, match="another process"):
        folder.create()


# -- runs/latest --------------------------------------------------------------------------------

def test_point_latest_creates_and_replaces_a_relative_symlink(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    a, b = made(runs, "a"), made(runs, "b")
    latest = runs / "latest"
    a.point_latest()
    assert latest.is_symlink() and os.readlink(latest) == "a"

    # Atomic: before every file-system change of the swap, `latest` still points at a.
    for op in ("replace", "rename", "symlink", "unlink", "remove"):
        def checked(*args, _real=getattr(os, op), **kwargs):
            assert os.readlink(latest) == "a"
            return _real(*args, **kwargs)
        monkeypatch.setattr(os, op, checked)
    b.point_latest()
    monkeypatch.undo()
    assert os.readlink(latest) == "b"
    assert latest.resolve() == b.path.resolve()
    assert sorted(p.name for p in runs.iterdir()) == ["a", "b", "latest"]  # no temp link left


def test_point_latest_replaces_a_dangling_link(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "latest").symlink_to("deleted-run")
    made(runs, "a").point_latest()
    assert os.readlink(runs / "latest") == "a"


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_point_latest_leaves_a_users_latest_alone(tmp_path, kind):
    runs = tmp_path / "runs"
    folder = made(runs, "a")
    latest = runs / "latest"
    if kind == "file":
        latest.write_text("mine")
    else:
        latest.mkdir()
        (latest / "notes.txt").write_text("mine")
    folder.point_latest()
    assert not latest.is_symlink()
    assert (latest if kind == "file" else latest / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in runs.iterdir()) == ["a", "latest"]


# -- checkpoints --------------------------------------------------------------------------------

def test_only_complete_checkpoints_count_in_numeric_order(tmp_path):
    folder = made(tmp_path / "runs", "a")
    assert folder.checkpoints() == [] and folder.last_checkpoint() is None
    for step, complete in [(10, True), (9, True), (2, True), (11, False), ("x", True),
                           ("foo-12", True)]:   # not the Trainer's name for a step
        ck = folder.checkpoints_dir / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        if complete:
            (ck / "trainer_state.json").write_text("{}")
    assert [p.name for p in folder.checkpoints()] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert folder.last_checkpoint() == folder.checkpoints_dir / "checkpoint-10"
    assert [p.name for p in folder.incomplete_checkpoints()] == ["checkpoint-11"]


# -- the lock -----------------------------------------------------------------------------------

def test_a_second_lock_in_the_same_process_is_refused(tmp_path):
    """flock belongs to the open file description: lock() opens the file anew, so it conflicts."""
    folder = made(tmp_path / "runs", "a")
    with folder.lock():
        with pytest.raises(RunFolderError, match="in use by another fastft process"):
            with folder.lock():
                pass
    with folder.lock():  # released on exit
        pass


def test_a_lock_held_here_refuses_another_process(tmp_path):
    folder = made(tmp_path / "runs", "a")
    code = ("import sys; from pathlib import Path; from fastft.core.run import RunFolder\n"
            "try:\n"
            "    with RunFolder(Path(sys.argv[1])).lock(): print('locked')\n"
            "except Exception as e: print(type(e).__name__)\n")

    def other() -> str:
        return subprocess.run([sys.executable, "-c", code, str(folder.path)], cwd=REPO,
                              capture_output=True, text=True, timeout=120).stdout.strip()
    with folder.lock():
        assert other() == "RunFolderError"
    assert other() == "locked"


# -- the record ---------------------------------------------------------------------------------

def test_write_and_read_round_trip_without_a_temp_file(tmp_path):
    folder = made(tmp_path / "runs", "a")
    rec = record(rank=8, target_modules="q_proj,v_proj")
    folder.write(rec)
    assert folder.read() == rec
    folder.write(rec.model_copy(update={"status": "done"}))
    assert folder.read().status == "done"
    assert os.listdir(folder.path) == ["fastft.json"]


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_a_non_finite_config_value_is_refused(value):
    # fastft.json (JSON) and --print-config (TOML) could not carry it back.
    with pytest.raises(ConfigError, match="max_grad_norm"):
        TrainConfig.parse({"data": "x.jsonl", "max_grad_norm": value})


@pytest.mark.parametrize("text, match", [
    ("schema1", "schema version 1"),
    ("{not json", "unreadable"),
    ('{"schema_version": 2, "status": "done"}', "malformed"),
])
def test_read_refuses_old_and_malformed_records_naming_the_file(tmp_path, text, match):
    folder = made(tmp_path / "runs", "a")
    if text == "schema1":
        text = json.dumps({**record().model_dump(mode="json"), "schema_version": 1})
    folder.record_file.write_text(text)
    with pytest.raises(RunFolderError, match=match) as e:
        folder.read()
    assert str(folder.record_file) in str(e.value)


# What fastft wrote before guard, versions, hardware, pad_waste and tuning were typed (untyped
# dicts, schema version 2): the parts of a GPU run's fastft.json those fields held.
PREVIOUS_SHAPE = {
    "guard": {"variant": "instruct-2507", "template_replaced": True, "eos_set": "<|endoftext|>",
              "pad_set": None, "empty_think_removed": 0, "data_think_stripped": 2,
              "data_think_kept": 0, "issues": ["data.jsonl:3: think block: unclosed"]},
    "versions": {"fastft": "0.1.0", "unsloth": "2025.11.1", "unsloth_zoo": "2025.11.1",
                 "torch": "2.8.0", "transformers": "4.57.1", "trl": "0.24.0", "peft": "0.17.1",
                 "datasets": "4.3.0", "bitsandbytes": None, "accelerate": "1.11.0"},
    "hardware": {"platform": "Linux-6.8-x86_64", "python": "3.11.9", "cpus": 16,
                 "gpu": "NVIDIA H100 80GB HBM3", "gpu_mem_gib": 79.2, "gpu_count": 1, "cuda": "12.8"},
    "pad_waste": {"random": 0.41, "grouped": 0.07},
    "tuning": {"batch_size": 8, "grad_accum": 1, "padding_free": False, "checkpointing": "false",
               "budget_gib": 79.1, "probe_s": 31.5, "reserve_gib": 0.2, "measurements": [
                   {"micro_batch": 8, "padding_free": False, "checkpointing": "false",
                    "peak_gib": 30.39, "tokens_per_s": 11668.0},
                   {"micro_batch": 8, "padding_free": False, "checkpointing": "true",
                    "peak_gib": None, "tokens_per_s": None}]},
}


def test_a_record_of_the_previous_shape_still_loads(tmp_path):
    folder = made(tmp_path / "runs", "old")
    raw = record().model_dump(mode="json")
    raw.update({k: PREVIOUS_SHAPE[k] for k in ("guard", "versions", "hardware")})
    raw["plan"].update({k: PREVIOUS_SHAPE[k] for k in ("pad_waste", "tuning")})
    raw["hardware"] = {k: v for k, v in raw["hardware"].items() if k != "gpu_count"}
    folder.record_file.write_text(json.dumps(raw))
    rec = folder.read()
    assert rec.guard.data_think_stripped == 2 and rec.guard.issues == PREVIOUS_SHAPE["guard"]["issues"]
    assert rec.versions.torch == "2.8.0" and rec.versions.bitsandbytes is None
    assert rec.hardware.gpu_mem_gib == 79.2 and rec.hardware.gpu_count is None
    assert rec.plan.pad_waste.grouped == 0.07
    assert rec.plan.tuning.measurements[1].peak_gib is None and rec.plan.tuning.reserve_gib == 0.2
    # Written again, it keeps every value, in the same keys.
    folder.write(rec)
    again = json.loads(folder.record_file.read_text())
    assert again["guard"] == PREVIOUS_SHAPE["guard"] and again["plan"]["tuning"] == PREVIOUS_SHAPE["tuning"]
    assert again["versions"] == PREVIOUS_SHAPE["versions"]
    assert again["plan"]["pad_waste"] == PREVIOUS_SHAPE["pad_waste"]


# -- opening ------------------------------------------------------------------------------------

def test_open_refuses_a_folder_without_a_record(tmp_path):
    folder = made(tmp_path / "runs", "a")
    with pytest.raises(RunFolderError, match="not a fastft run folder, no fastft.json") as e:
        RunFolder.open(folder.path)
    assert "train one first" not in str(e.value)


def test_open_resolves_latest_to_its_run(tmp_path):
    folder = made(tmp_path / "runs", "a")
    folder.write(record())
    folder.point_latest()
    opened = RunFolder.open(tmp_path / "runs" / "latest")
    assert opened.path == folder.path and opened.name == "a"
    assert opened.read() == record()


def test_open_missing_latest_says_train_one_first(tmp_path):
    with pytest.raises(RunFolderError, match=r"train one first: fastft train DATA"):
        RunFolder.open(tmp_path / "runs" / "latest")


def test_a_folder_left_by_a_run_killed_while_loading_does_not_block_its_name(tmp_path):
    """SIGKILL before fastft.json exists leaves the lock file (and a log): nothing to resume, so
    a new run of that name replaces it; while a live process holds the lock it is refused, and
    a folder that is not fastft's is never taken."""
    import fcntl

    killed = tmp_path / "runs" / "r"
    killed.mkdir(parents=True)
    (killed / ".lock").write_text("")
    (killed / "train.log").write_text("Unsloth: loading ...\n")
    folder = RunFolder.new(tmp_path / "runs", "r")
    folder.create()
    assert folder.path.is_dir() and not any(folder.path.iterdir())

    (killed / ".lock").write_text("")
    with open(killed / ".lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RunFolderError, match="already exists"):
            RunFolder.new(tmp_path / "runs", "r")

    theirs = tmp_path / "runs" / "mine"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("a user's file")
    with pytest.raises(RunFolderError, match="already exists"):
        RunFolder.new(tmp_path / "runs", "mine")
