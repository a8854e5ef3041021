"""Faults during a run: periodic and Ctrl-C checkpoints, resuming past a cut-short checkpoint,
metrics without duplicates, no run folder left by a run that never trained, and a demo that
keeps earlier results."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime

import pytest

from conftest import EXAMPLE
from fastft.errors import TrainError
from fastft.run import RunFolder
from fastft.train import resume, train
from fastft.ui import NullUI
from test_train import tiny_config


class RecordingUI(NullUI):
    def __init__(self):
        self.lines = []

    def status(self, text):
        self.lines.append(text)


def steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def checkpoint_names(run):
    return sorted((p.name for p in (run / "checkpoints").glob("checkpoint-*")),
                  key=lambda n: int(n.split("-")[-1]))


@pytest.mark.slow
def test_save_minutes_saves_checkpoints_between_epoch_ends(tmp_path):
    # 5 steps of a 13-step epoch: without time-based saves the only checkpoint is the last step.
    result = train(tiny_config(tmp_path, name="timed", max_steps=5, save_minutes=0.001))
    assert "checkpoint-4" in checkpoint_names(result.run_dir)


@pytest.mark.slow
def test_resume_skips_an_incomplete_checkpoint_and_records_each_step_once(tmp_path):
    run = train(tiny_config(tmp_path, name="cut", max_steps=6, save_steps=3)).run_dir
    # Killed while saving checkpoint-6: its trainer_state.json (written last) never came.
    (run / "checkpoints" / "checkpoint-6" / "trainer_state.json").unlink()
    shutil.rmtree(run / "adapter")
    assert steps(run) == [1, 2, 3, 4, 5, 6]

    ui, handler = RecordingUI(), signal.getsignal(signal.SIGINT)
    resumed = resume(str(run), ui=ui)
    assert any("checkpoint-6" in line and "incomplete" in line for line in ui.lines), ui.lines
    assert any("resuming from checkpoint-3" in line for line in ui.lines), ui.lines
    assert steps(run) == [1, 2, 3, 4, 5, 6]   # 4..6 trained again, recorded once
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert resumed.record.final.global_step == 6
    assert resumed.record.final.train_loss == pytest.approx(sum(losses) / len(losses))
    assert signal.getsignal(signal.SIGINT) is handler   # the Ctrl-C handler was put back


def _wait_for_first_step(proc, metrics, timeout=600):
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no training step within the timeout"
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_to_the_end(tmp_path):
    max_steps = 30
    cmd = [sys.executable, "-m", "fastft.cli", "train", str(EXAMPLE), "--model", "tiny",
           "--name", "sig", "--runs-dir", str(tmp_path / "runs"), "--max-steps", str(max_steps),
           "--epochs", "100", "--lr", "2e-3", "--batch-size", "4", "--grad-accum", "2",
           "--max-seq-len", "256"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=os.environ | {"COLUMNS": "200"})
    run = tmp_path / "runs" / "sig"
    try:
        _wait_for_first_step(proc, run / "metrics.jsonl")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert f"fastft train --resume {run}" in out + err
    folder = RunFolder(run)
    checkpoint = folder.last_checkpoint()
    assert checkpoint is not None and (checkpoint / "trainer_state.json").is_file()
    step = int(checkpoint.name.split("-")[-1])
    assert 1 <= step < max_steps and folder.read().status == "interrupted"
    assert steps(run) == list(range(1, step + 1))

    resumed = resume(str(run))
    assert resumed.record.status == "done"
    assert resumed.record.final.global_step == max_steps
    assert steps(run) == list(range(1, max_steps + 1))


def test_a_missing_model_folder_is_refused_before_anything_is_created(tmp_path):
    with pytest.raises(TrainError, match=r"^--model \./missing-folder: no such folder$"):
        train(tiny_config(tmp_path, model="./missing-folder"))
    assert not (tmp_path / "runs").exists()


def _previous_run(tmp_path):
    old = RunFolder(tmp_path / "runs" / "old")
    old.create()
    old.point_latest()
    return old


def test_an_uncached_hub_model_offline_is_one_error_and_leaves_no_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    old = _previous_run(tmp_path)
    with pytest.raises(TrainError, match="cannot load fastft-test/not-cached: offline and not "
                                         "in the local cache; ") as e:
        train(tiny_config(tmp_path, name="hub", model="fastft-test/not-cached"))
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["latest", "old"]
    assert (tmp_path / "runs" / "latest").resolve() == old.path


@pytest.mark.parametrize("error", [TrainError("no trainable token"), KeyboardInterrupt()])
def test_a_run_that_fails_before_its_first_step_is_removed(tmp_path, monkeypatch, error):
    import fastft.train

    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(fastft.train, "prepare_data", fail)  # after the model loaded
    old = _previous_run(tmp_path)
    with pytest.raises(type(error)):
        train(tiny_config(tmp_path, name="early"))
    assert not (tmp_path / "runs" / "early").exists()
    assert (tmp_path / "runs" / "latest").resolve() == old.path


def test_demo_keeps_an_earlier_demo_run_and_export(tmp_path):
    from fastft.demo import demo_names

    runs, exports = tmp_path / "runs", tmp_path / "exports"
    assert demo_names(runs, exports) == ("demo", "fastft-demo")
    (runs / "demo").mkdir(parents=True)
    now = datetime(2026, 1, 2, 3, 4, 5)
    assert demo_names(runs, exports, now) == ("demo-20260102-030405", "fastft-demo-20260102-030405")
    shutil.rmtree(runs / "demo")
    (exports / "fastft-demo").mkdir(parents=True)
    assert demo_names(runs, exports, now) == ("demo-20260102-030405", "fastft-demo-20260102-030405")

