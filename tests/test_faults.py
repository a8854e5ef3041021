"""Faults during a run: periodic and Ctrl-C checkpoints, resuming past a cut-short checkpoint,
metrics without duplicates, no run folder left by a run that never trained, and a demo that
keeps earlier results."""

import json
import os
import shutil
import signal
import subprocess
import time
from datetime import datetime

import forkserver
import pytest
import train_hooks

from conftest import EXAMPLE, built_once, mark_killed, write_run
from fastft.core.errors import TrainError
from fastft.core.run import Run, RunFolder, checkpoint_step
from fastft.train.trainer import resume, train
from fastft.core.ui import NullUI
from test_train import losses, six_step_run, tiny_config


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
def test_resume_skips_an_incomplete_checkpoint_and_records_each_step_once(tmp_path_factory,
                                                                         tmp_path):
    run = six_step_run(tmp_path_factory, tmp_path)   # 6 steps, checkpoints at 3 and 6
    # Killed while saving checkpoint-6: its trainer_state.json (written last) never came.
    (run / "checkpoints" / "checkpoint-6" / "trainer_state.json").unlink()
    shutil.rmtree(run / "adapter")
    mark_killed(run)
    assert steps(run) == [1, 2, 3, 4, 5, 6]

    ui, handler = RecordingUI(), signal.getsignal(signal.SIGINT)
    resumed = resume(str(run), ui=ui)
    assert any("checkpoint-6" in line and "incomplete" in line for line in ui.lines), ui.lines
    assert any("resuming from checkpoint-3" in line for line in ui.lines), ui.lines
    assert steps(run) == [1, 2, 3, 4, 5, 6]   # 4..6 trained again, recorded once
    ls = losses(run)
    assert resumed.record.final.global_step == 6
    assert resumed.record.final.train_loss == pytest.approx(sum(ls) / len(ls))
    assert signal.getsignal(signal.SIGINT) is handler   # the Ctrl-C handler was put back


def test_a_checkpoint_with_a_cut_short_trainer_state_is_incomplete(tmp_path):
    folder = RunFolder(tmp_path / "run")
    for step, state in [(3, '{"global_step": 3}'), (6, '{"global_st'), (9, "")]:
        (folder.checkpoints_dir / f"checkpoint-{step}").mkdir(parents=True)
        (folder.checkpoints_dir / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (folder.checkpoints_dir / "checkpoint-12").mkdir()
    assert [p.name for p in folder.checkpoints()] == ["checkpoint-3"]
    assert [p.name for p in folder.incomplete_checkpoints()] == ["checkpoint-6", "checkpoint-9",
                                                                 "checkpoint-12"]


def _wait_for_first_step(proc, metrics, timeout=600):
    deadline = time.monotonic() + timeout
    while not (metrics.exists() and metrics.read_text().strip()):
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no training step within the timeout"
        time.sleep(0.05)


@pytest.mark.slow
def test_resume_refuses_data_that_changed_since_the_run_started(tmp_path):
    # the recorded sha256 ("0" * 64) is not the data file's: resuming would train on other data
    run = write_run(tmp_path / "runs" / "r", status="interrupted")
    with pytest.raises(TrainError, match="changed since r started"):
        resume(str(run))


def test_ctrl_c_saves_a_checkpoint_and_the_run_resumes_to_the_end(tmp_path):
    max_steps = 12   # SIGINT comes after step 1; the resume runs the rest in this process
    cmd = ["train", str(EXAMPLE), "--model", "tiny",
           "--name", "sig", "--runs-dir", str(tmp_path / "runs"), "--max-steps", str(max_steps),
           "--epochs", "100", "--lr", "2e-3", "--batch-size", "4", "--grad-accum", "2",
           "--max-seq-len", "256"]
    proc = forkserver.popen(cmd, tmp_path, os.environ | {"COLUMNS": "200"})
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
    with pytest.raises(TrainError, match="--model fastft-test/not-cached: not in the local Hugging "
                                         "Face cache, and HF_HUB_OFFLINE=1 is set ") as e:
        train(tiny_config(tmp_path, name="hub", model="fastft-test/not-cached"))
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["latest", "old"]
    assert (tmp_path / "runs" / "latest").resolve() == old.path


@pytest.mark.parametrize("error", [TrainError("no trainable token"), KeyboardInterrupt()])
def test_a_run_that_fails_before_its_first_step_is_removed(tmp_path, monkeypatch, error):
    import fastft.train.trainer

    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(fastft.train.trainer, "prepare_data", fail)  # after the model loaded
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


# -- the fault matrix: real processes killed at named points (tests/train_hooks.py) ------------------
#
# A `fastft train` / `fastft export` subprocess, in its own session, is sent SIGINT (as a
# terminal's Ctrl-C: the whole process group) or SIGKILL at a deterministic point; then the next
# command (resume, or the export again) must finish the work, and nothing partial may sit under a
# final name at any time. One uninterrupted run with the same seed is the reference.

MATRIX_STEPS, MATRIX_SAVE_STEPS = 8, 3
MATRIX_FLAGS = ["--model", "tiny", "--16bit", "--max-steps", str(MATRIX_STEPS), "--save-steps",
                str(MATRIX_SAVE_STEPS), "--lr", "2e-3", "--batch-size", "4", "--grad-accum", "2",
                "--max-seq-len", "256"]
# (point, arrival) -> where it hits, with 2 micro-batches per step and checkpoints at 3 and 6.
TRAIN_POINTS = {
    "before-first-checkpoint": ("step", 3),     # step 2's first micro-batch
    "mid-step": ("step", 10),                   # step 5, between its two micro-batches
    "checkpoint-write": ("checkpoint-write", 2),  # checkpoint-6: weights written, state not yet
}
# Same seed, same data order, same CPU: resumed runs reproduce every step's loss (bit for bit
# on the CI machine); the tolerance leaves room for other CPUs' kernels.
LOSS_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> Run:
    """The uninterrupted run every killed-and-resumed run must match, trained once per session:
    tests/test_faults_export.py exports the same run (read-only, from its own worker)."""
    def build(folder):
        train(tiny_config(folder, name="base", load_in_4bit=False, max_steps=MATRIX_STEPS,
                          save_steps=MATRIX_SAVE_STEPS))

    folder = RunFolder(built_once(tmp_path_factory, "faults-baseline", build) / "runs" / "base")
    return Run(folder, folder.read())


def run_killed(args: list[str], fault: str, cwd, fork: bool | None = None
               ) -> subprocess.CompletedProcess:
    """`fastft ARGS` with FASTFT_FAULT=fault, in its own session (the fault signals its group);
    forked with its imports done where it imports Unsloth anyway, or where `fork` says
    (tests/forkserver.py)."""
    proc = forkserver.popen(args, cwd, train_hooks.env(FASTFT_FAULT=fault, COLUMNS="200"),
                            start_new_session=True, fork=fork)
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def assert_nothing_partial(run):
    """Every checkpoint under a final name is complete, and no temporary is left in the run."""
    folder = RunFolder(run)
    assert folder.incomplete_checkpoints() == []
    for ck in folder.checkpoints():
        json.loads((ck / "trainer_state.json").read_text())
        assert (ck / "adapter_model.safetensors").is_file() and (ck / "optimizer.pt").is_file()
    assert not list(run.glob(".*tmp-*")) and not list(run.glob("checkpoints/.*"))


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGKILL"])
@pytest.mark.parametrize("where", list(TRAIN_POINTS))
def test_train_killed_resumes_to_the_same_result(where, sig, baseline, tmp_path):
    point, nth = TRAIN_POINTS[where]
    run = tmp_path / "runs" / "f"
    killed = run_killed(["train", str(EXAMPLE), "--name", "f", "--runs-dir", str(run.parent),
                         *MATRIX_FLAGS], f"{point}:{sig}:{nth}", tmp_path)
    folder = RunFolder(run)
    if sig != "SIGKILL":   # saved a checkpoint of the step it was in, said how to resume
        assert killed.returncode == 128 + signal.Signals[sig], killed.stderr[-3000:]
        assert f"fastft train --resume {run}" in killed.stderr
        assert ("terminated (SIGTERM) at step" in killed.stderr) == (sig == "SIGTERM")
        assert folder.read().status == "interrupted"
    else:
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    sig = "SIGINT" if sig == "SIGTERM" else sig   # SIGTERM stops where Ctrl-C does
    saved = [checkpoint_step(p) for p in folder.checkpoints()]
    expected = {("before-first-checkpoint", "SIGINT"): [2], ("before-first-checkpoint", "SIGKILL"): [],
                ("mid-step", "SIGINT"): [3, 5], ("mid-step", "SIGKILL"): [3],
                ("checkpoint-write", "SIGINT"): [6, 7], ("checkpoint-write", "SIGKILL"): [3]}
    assert saved == expected[where, sig]
    # A checkpoint is written under checkpoints/.tmp/ and renamed when whole: a kill while
    # saving leaves it there, never under its final name.
    assert folder.incomplete_checkpoints() == []
    cut_short = [p.name for p in (folder.checkpoints_dir / ".tmp").glob("checkpoint-*")]
    assert cut_short == (["checkpoint-6"] if (where, sig) == ("checkpoint-write", "SIGKILL") else [])
    assert not folder.adapter.exists()

    ui = RecordingUI()
    resumed = resume(str(run), ui=ui)
    start = f"resuming from checkpoint-{saved[-1]}" if saved else "training again from step 0"
    assert any(start in line for line in ui.lines), ui.lines
    assert bool(cut_short) == any("checkpoint-6" in line and "cut short" in line for line in ui.lines)
    final, ref = resumed.record.final, baseline.record.final
    assert resumed.record.status == "done" and final.global_step == ref.global_step == MATRIX_STEPS
    assert steps(run) == list(range(1, MATRIX_STEPS + 1))
    assert losses(run) == pytest.approx(losses(baseline.run_dir), rel=LOSS_TOLERANCE)
    assert final.last_loss == pytest.approx(ref.last_loss, rel=LOSS_TOLERANCE)
    assert final.train_loss == pytest.approx(ref.train_loss, rel=LOSS_TOLERANCE)
    assert_nothing_partial(run)
    assert (resumed.adapter_dir / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("error", [
    lambda torch: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    lambda torch: RuntimeError("CUDA error: out of memory"),    # what some kernels raise instead
], ids=["OutOfMemoryError", "RuntimeError"])
def test_out_of_memory_in_training_is_one_line_with_what_to_change(tmp_path, monkeypatch, error):
    """A GPU out-of-memory error mid-run (simulated: this machine has no GPU) is a TrainError
    naming the step, the batch and the fixes, not an internal error; the record says failed.
    Either form of it, as under --gpus (fastft.train.distributed.rank_failed)."""
    import torch

    import fastft.train.trainer as T
    real_step = T._trainer_class()

    class OOMTrainer(real_step):
        def training_step(self, *a, **k):
            if self.state.global_step == 2:
                raise error(torch)
            return super().training_step(*a, **k)

    monkeypatch.setattr(T, "_trainer_class", lambda: OOMTrainer)
    with pytest.raises(TrainError) as e:
        train(tiny_config(tmp_path, name="oom", load_in_4bit=False, max_steps=4))
    msg = str(e.value)
    assert "out of GPU memory at step 3" in msg and "--batch-size" in msg and "\n" not in msg
    assert RunFolder(tmp_path / "runs" / "oom").read().status == "failed"


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path):
    from click.testing import CliRunner

    from fastft.cli import main

    run = write_run(tmp_path / "runs" / "done")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_model.safetensors").write_bytes(b"the finished weights")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = CliRunner().invoke(main, ["train", "--resume", str(run)])
    assert result.exit_code == 1, result.output
    assert f"{run} finished" in result.output and "nothing to resume" in result.output
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before
