"""`fastft train --gpus N`: the torchrun command line, the checks made before launching, how the
length-grouped batches are shared out, and real 2-process runs on the CPU (gloo).

FASTFT_DDP_ON_CPU=1 (fastft.train.launch) lets `--gpus N` start N CPU processes when no GPU is
visible. Test hooks (tests/train_hooks.py, on the ranks' PYTHONPATH): FASTFT_DEBUG_WEIGHTS_DIR makes
each rank write the SHA-256 of its LoRA weights when training ends; FASTFT_FAULT_RANK=R keeps
FASTFT_FAULT on rank R only. The runs use the tiny model through its folder, so FASTFT_CACHE can be a fresh one.
"""

import signal
import json
import os
import subprocess
import sys
from pathlib import Path

import forkserver
import pytest
import train_hooks
from click.testing import CliRunner

from conftest import EXAMPLE, write_run
from fastft.train import launch
from fastft.cli import main
from fastft.train.distributed import RankFailure, RunNote
from train_hooks import weights_digest
from fastft.core.errors import ConfigError
from fastft.train.launch import LaunchError, command, failure_message, per_device_batch, processes

# -- the command line and the checks before launching ---------------------------------------------


def test_the_launch_command_is_torchrun_as_a_module_running_fastft_cli():
    argv = ["train", "data.jsonl", "--gpus", "2", "--json"]
    assert command(2, argv, Path("/launch"), python="/venv/bin/python") == [
        "/venv/bin/python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "--log-dir", "/launch/torchrun", "-m", "fastft.cli", "train", "data.jsonl", "--gpus", "2",
        "--json"]
    assert command(4, argv, Path("/launch"))[0] == sys.executable   # no `torchrun` script needed on PATH


def test_the_effective_batch_is_shared_out_among_the_gpus():
    assert per_device_batch(8, 2, 2) == (8, 1)     # the bench: 8 x 2 on one GPU, 8 x 1 x 2 on two
    assert per_device_batch(2, 4, 2) == (2, 2)     # fastft's default 2 x 4
    assert per_device_batch(2, 4, 8) == (1, 1)     # accumulation first, then the micro-batch
    assert per_device_batch(4, 3, 2) == (3, 2)
    for (b, a, n) in [(8, 2, 2), (2, 4, 8), (4, 3, 2), (3, 4, 4), (16, 1, 4)]:
        micro, accum = per_device_batch(b, a, n)
        assert micro * accum * n == b * a and micro <= b
    with pytest.raises(ConfigError, match=r"effective batch 8, which 3 GPUs cannot share evenly"):
        per_device_batch(2, 4, 3)


def test_how_many_processes_gpus_means():
    assert processes("auto", 0) == 1 and processes("auto", 1) == 1 and processes("auto", 3) == 3
    assert processes(1, 0) == 1 and processes(2, 2) == 2 and processes(2, 4) == 2
    assert processes(2, 0, cpu_ok=True) == 2   # the CPU test hook
    with pytest.raises(LaunchError, match=r"--gpus 2: 1 GPU visible"):
        processes(2, 1)
    with pytest.raises(LaunchError, match=r"--gpus 4: no GPUs visible"):
        processes(4, 0)


def run_cli(*args, env=None):
    r = CliRunner().invoke(main, list(args), env=env)
    r.flat = " ".join(r.output.split())   # rich wraps long lines at 80 columns here
    return r


def test_gpus_that_are_not_there_fail_before_anything_is_created(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "visible_gpus", lambda: 1)
    r = run_cli("train", str(EXAMPLE), "--model", "tiny", "--gpus", "2", "--runs-dir", str(tmp_path))
    assert r.exit_code == 1 and r.output.startswith("error: --gpus 2: 1 GPU visible")
    assert r.output.count("error") == 1
    assert not any(tmp_path.iterdir())


def test_an_effective_batch_the_gpus_cannot_share_is_refused_before_launching(tmp_path, monkeypatch):
    monkeypatch.setattr(launch, "visible_gpus", lambda: 3)
    monkeypatch.setattr(launch, "relaunch", lambda *a, **k: pytest.fail("launched"))
    r = run_cli("train", str(EXAMPLE), "--gpus", "auto", "--runs-dir", str(tmp_path))
    assert r.exit_code == 1 and r.flat == ("error: --batch-size 2 x --grad-accum 4 = effective "
                                           "batch 8, which 3 GPUs cannot share evenly: make it a "
                                           "multiple of 3")
    assert not any(tmp_path.iterdir())


def test_a_missing_launcher_is_one_clear_error(tmp_path, monkeypatch):
    import importlib.util
    monkeypatch.setattr(launch, "visible_gpus", lambda: 2)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == launch.TORCHRUN else real(name, *a))
    r = run_cli("train", str(EXAMPLE), "--gpus", "2", "--runs-dir", str(tmp_path))
    assert r.exit_code == 1 and r.output.count("error") == 1
    assert r.flat.startswith(
        "error: several GPUs need torch's launcher (torch.distributed.run, `torchrun`)")


def test_the_ranks_get_the_command_as_given(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(launch, "visible_gpus", lambda: 2)
    monkeypatch.setattr(launch, "relaunch", lambda n, argv, *a, **k: seen.update(n=n, argv=argv) or 0)
    r = run_cli("--debug", "train", str(EXAMPLE), "--gpus", "2", "--16bit", "--rank", "8",
                "--no-auto-batch", "-v", "--json")
    assert r.exit_code == 0, r.output
    assert seen == {"n": 2, "argv": ["--debug", "train", str(EXAMPLE), "--gpus", "2", "--16bit",
                                     "--rank", "8", "--no-auto-batch", "-v", "--json"]}


def test_one_gpu_trains_in_this_process(monkeypatch):
    # --gpus 1 (the default) never imports torch to count GPUs, never launches.
    monkeypatch.setattr(launch, "visible_gpus", lambda: pytest.fail("counted GPUs"))
    from fastft.core.config import TrainConfig
    assert launch.dispatch(TrainConfig(data=str(EXAMPLE)), None, None, ["train"], console=None) is None


def two_gpu_run(tmp_path) -> Path:
    run = write_run(tmp_path / "runs" / "two", status="interrupted")
    record = json.loads((run / "fastft.json").read_text())
    record["plan"].update(world_size=2, launcher="torchrun", batch_size=4, grad_accum=1)
    (run / "fastft.json").write_text(json.dumps(record))
    return run


def test_resuming_with_another_number_of_gpus_is_refused(tmp_path, monkeypatch):
    run = two_gpu_run(tmp_path)
    monkeypatch.setattr(launch, "visible_gpus", lambda: 4)
    monkeypatch.setattr(launch, "relaunch", lambda *a, **k: pytest.fail("launched"))
    for gpus in ("1", "4", "auto"):
        r = run_cli("train", "--resume", str(run), "--gpus", gpus)
        assert r.exit_code == 1, r.output
        assert r.flat.startswith(
            "error: two was trained on 2 GPUs (data-parallel processes); resuming on "
            f"{4 if gpus == 'auto' else gpus} would change")
    monkeypatch.setattr(launch, "visible_gpus", lambda: 1)
    r = run_cli("train", "--resume", str(run))   # the saved 2, with 1 GPU left
    assert r.exit_code == 1 and "error: --gpus 2: 1 GPU visible" in r.output


def test_one_process_refuses_a_run_trained_on_two(tmp_path):
    from fastft.core.errors import TrainError
    from fastft.train.trainer import resume
    with pytest.raises(TrainError, match="two was trained on 2 GPUs .* resume it with --gpus 2"):
        resume(two_gpu_run(tmp_path))


def test_train_in_one_process_refuses_gpus_2(tmp_path):
    from fastft.core.config import TrainConfig
    from fastft.core.errors import TrainError
    from fastft.train.trainer import train
    with pytest.raises(TrainError, match="--gpus 2, but this process trains alone"):
        train(TrainConfig(data=str(EXAMPLE), model="tiny", gpus=2, runs_dir=str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_the_failure_message_names_the_rank_and_the_cause(tmp_path):
    def f(kind, message, rank=1, t=2.0, gpu=True):
        return RankFailure(rank=rank, local_rank=rank, gpu=gpu, kind=kind, message=message, time=t)

    oom = f("oom", "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    peer = f("internal", "RuntimeError: Connection closed by peer", rank=0, t=3.0)
    line, code = failure_message([peer, oom], 2, 1, tmp_path, False)   # the first failure counts
    assert code == 1 and line.startswith("error: rank 1 of 2 (GPU 1) ran out of GPU memory (OutOfMemory")
    assert "lower --batch-size" in line and "the other process was stopped" in line
    line, code = failure_message([f("error", "data.jsonl:3: messages: empty content")], 2, 1,
                                 tmp_path, False)
    assert (line, code) == ("error: data.jsonl:3: messages: empty content", 1)
    line, code = failure_message([f("internal", "RuntimeError: boom", gpu=False)], 4, 1, tmp_path, False)
    assert code == 70 and line.startswith("internal error on rank 1 of 4 (a bug")
    assert "the other processes were stopped" in line and str(tmp_path / "failure-rank1.json") in line
    assert failure_message([], 2, 1, tmp_path, True) == (None, 130)   # rank 0 said how to resume
    assert failure_message([f("interrupted", "interrupted")], 2, 1, tmp_path, signal.SIGINT) == ("interrupted", 130)
    line, code = failure_message([], 2, -9, tmp_path, False)
    assert code == 70 and line.startswith("internal error: a training process died without a")
    assert str(tmp_path) in line


def test_rank_0_output_left_mid_line_is_ended_before_our_message(tmp_path):
    # a rank killed while drawing its progress bar leaves no newline; the error line must not
    # be glued onto the bar (CI saw "…760 tok/sinternal error on rank 1")
    import io
    log = tmp_path / "rank0.stderr"
    log.write_bytes(b"training 3/6 steps\r")
    sink = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    tail = launch._Tail(log, sink)
    tail.pump()
    tail.end_line()
    tail.end_line()     # once only
    assert sink.buffer.getvalue() == b"training 3/6 steps\r\n"
    with open(log, "ab") as f:
        f.write(b"done\n")
    tail.pump()
    tail.end_line()     # already at a line start: nothing added
    assert sink.buffer.getvalue() == b"training 3/6 steps\r\ndone\n"


def test_a_rank_failure_is_written_by_the_rank_and_read_by_the_launcher(tmp_path, monkeypatch):
    from fastft.train.distributed import LAUNCH_DIR_ENV, rank_failed

    monkeypatch.setenv(LAUNCH_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert rank_failed(RuntimeError("boom"), 70)
    [failure] = RankFailure.read_all(tmp_path)
    assert (failure.rank, failure.world, failure.kind, failure.code) == (1, 2, "internal", 70)
    assert failure.message == "RuntimeError: boom" and "RuntimeError: boom" in failure.traceback
    line, code = failure_message([failure], 2, 1, tmp_path, None)
    assert code == 70 and line.startswith("internal error on rank 1 of 2 (a bug")


def test_after_a_killed_launch_the_run_is_marked_failed_or_removed(tmp_path):
    """What rank 0 could not do itself (torchrun killed it): a run still `training` is marked
    failed (interrupted after a Ctrl-C); a new one that never trained a step is removed."""
    from fastft.core.run import RunFolder

    def launched(name: str, new: bool, trained: bool) -> RunFolder:
        folder = RunFolder(write_run(tmp_path / "runs" / name, status="training"))
        if trained:
            folder.metrics_file.write_text('{"step": 1, "loss": 1.0}\n')
        note = tmp_path / name
        note.mkdir()
        RunNote(str(folder.path), new).write(note)
        assert json.loads((note / "run-folder.json").read_text()) == {"path": str(folder.path), "new": new}
        return folder

    for name, new, trained, interrupted, status in [("a", True, True, False, "failed"),
                                                    ("b", False, False, True, "interrupted")]:
        folder = launched(name, new, trained)
        launch.settle_run(tmp_path / name, interrupted)
        assert folder.read().status == status
    gone = launched("c", True, False)
    launch.settle_run(tmp_path / "c", False)
    assert not gone.path.exists()


# -- how accelerate shares out the length-grouped micro-batches -----------------------------------

def test_each_rank_gets_other_length_grouped_micro_batches(monkeypatch):
    """The Trainer hands its DataLoader (our sampler, batch_size = micro-batch) to accelerate,
    which gives rank r the micro-batches r, r+N, r+2N, ... (BatchSamplerShard, even_batches):
    each GPU's micro-batches stay length-grouped, the N GPUs of one step see the N consecutive
    micro-batches one process would have accumulated, and only the last round is filled up with
    examples from the epoch's start."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    from fastft.train.batching import LengthGroupedSampler, grouped_batches

    lengths = [(i * 37) % 500 + 10 for i in range(101)]
    micro, world = 4, 2
    for epoch in (0, 1):
        expected = grouped_batches(lengths, micro, seed=3, epoch=epoch)   # one process's order
        shards = []
        for rank in range(world):
            sampler = LengthGroupedSampler(lengths, micro, seed=3)
            dl = prepare_data_loader(DataLoader(list(range(len(lengths))), batch_size=micro,
                                                sampler=sampler), num_processes=world,
                                     process_index=rank, use_seedable_sampler=True)
            dl.set_epoch(epoch)
            shards.append([b.tolist() for b in dl])
        assert len(expected) == 26 and len(expected[-1]) == 1   # 101 examples: the last one short
        assert [len(s) for s in shards] == [13, 13]
        for rank, shard in enumerate(shards):
            mine = expected[rank::world]
            assert shard[:-1] == mine[:-1]                        # rank r: micro-batches r, r+2, ...
            assert shard[-1][:len(mine[-1])] == mine[-1]          # the short one is filled up
        assert not set(map(tuple, shards[0])) & set(map(tuple, shards[1]))
        seen = [i for s in shards for b in s for i in b]
        assert set(seen) == set(range(len(lengths)))              # every example, once but for
        assert len(seen) - len(lengths) == 3                      # the 3 that fill the last batch
    assert grouped_batches(lengths, micro, 3, 0) != grouped_batches(lengths, micro, 3, 1)


# -- real runs: 2 processes on the CPU (gloo) -----------------------------------------------------

STEPS = 6


def fastft(*args, env: dict, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`fastft ARGS` in a process of its own, forked with its imports done (tests/forkserver.py):
    the launcher's ~4 s import of torch and fastft, and the one-process run's ~9 s of Unsloth,
    are paid once per worker. torchrun and the ranks it starts are fresh processes either way."""
    return forkserver.run(list(args), cwd, env, timeout)


def python_path() -> str:
    """The test hooks and the repo first, then what the host had (the GPU host installs with
    --target)."""
    return train_hooks.env()["PYTHONPATH"]


def tiny_args(tiny_path, runs: Path, name: str, *extra) -> list[str]:
    # Effective batch 8: 4 x 2 in one process, 4 x 1 in each of two.
    return ["train", str(EXAMPLE), "--model", str(tiny_path), "--runs-dir", str(runs), "--name", name,
            "--batch-size", "4", "--grad-accum", "2", "--max-seq-len", "128", "--lr", "2e-3",
            "--max-steps", str(STEPS), *extra]


@pytest.fixture(scope="module")
def runs(tiny_path, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    # CPU processes even on a GPU host: CUDA_VISIBLE_DEVICES="" hides the GPUs.
    (tmp / "tmpdir").mkdir()
    env = dict(os.environ, FASTFT_CACHE=str(tmp / "cache"), FASTFT_DDP_ON_CPU="1",
               TMPDIR=str(tmp / "tmpdir"),
               CUDA_VISIBLE_DEVICES="", FASTFT_DEBUG_WEIGHTS_DIR=str(tmp / "weights"),
               HF_HUB_OFFLINE="1", PYTHONPATH=python_path(), OMP_NUM_THREADS="1")
    (tmp / "weights").mkdir()
    two = fastft(*tiny_args(tiny_path, tmp / "runs", "two", "--gpus", "2", "--json"), env=env, cwd=tmp)
    weights = {p.stem: json.loads(p.read_text()) for p in (tmp / "weights").glob("rank*.json")}
    one_env = {k: v for k, v in env.items() if k != "FASTFT_DEBUG_WEIGHTS_DIR"}
    one = fastft(*tiny_args(tiny_path, tmp / "one-process", "one"), env=one_env, cwd=tmp)
    return {"tmp": tmp, "env": env, "two": two, "one": one, "weights": weights}


def losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_processes_end_with_the_same_adapter(runs):
    two, tmp = runs["two"], runs["tmp"]
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout)["status"] == "done"   # rank 0's stdout, relayed
    w = runs["weights"]
    assert set(w) == {"rank0", "rank1"} and w["rank0"]["tensors"] > 0
    assert w["rank0"]["sha256"] == w["rank1"]["sha256"]   # DDP kept the copies equal
    from safetensors.torch import load_file
    saved = load_file(tmp / "runs" / "two" / "adapter" / "adapter_model.safetensors")
    assert weights_digest(saved) == w["rank0"]["sha256"]   # ... and rank 0 saved them
    assert not list((tmp / "cache" / "launch").iterdir())   # the launch folder goes after success
    assert not list((tmp / "tmpdir").glob("torchelastic_*"))   # torchrun's own folder went with it


@pytest.mark.slow
def test_rank_0_alone_writes_the_run_and_records_the_launch(runs):
    run = runs["tmp"] / "runs" / "two"
    record = json.loads((run / "fastft.json").read_text())
    assert record["plan"]["world_size"] == 2 and record["plan"]["launcher"] == "torchrun"
    assert (record["plan"]["batch_size"], record["plan"]["grad_accum"]) == (4, 1)   # per GPU
    assert (record["config"]["batch_size"], record["config"]["grad_accum"]) == (4, 2)
    assert record["final"]["global_step"] == STEPS
    assert len(losses(run)) == STEPS   # one metrics.jsonl, one record per step, not two
    assert {p.name for p in run.iterdir()} == {"adapter", "checkpoints", "fastft.json", "loss.png",
                                               "metrics.jsonl", "train.log", ".lock"}
    assert (runs["tmp"] / "runs" / "latest").resolve() == run


@pytest.mark.slow
def test_two_processes_follow_the_loss_curve_of_one(runs):
    assert runs["one"].returncode == 0, runs["one"].stderr[-3000:]
    one = losses(runs["tmp"] / "one-process" / "one")
    two = losses(runs["tmp"] / "runs" / "two")
    assert len(one) == len(two) == STEPS
    assert two == pytest.approx(one, rel=0.01)
    assert one[-1] < one[0]   # it trained
    tokens = [[json.loads(line)["tokens"] for line in (run / "metrics.jsonl").read_text().splitlines()]
              for run in (runs["tmp"] / "one-process" / "one", runs["tmp"] / "runs" / "two")]
    assert tokens[0] == tokens[1]   # tokens/s counts both GPUs' tokens


@pytest.mark.slow
def test_one_rank_failing_stops_both_with_one_message_and_resume_goes_on(runs, tiny_path):
    tmp = runs["tmp"]
    env = dict(runs["env"], FASTFT_FAULT="step:raise:4", FASTFT_FAULT_RANK="1")
    env.pop("FASTFT_DEBUG_WEIGHTS_DIR")
    failed = fastft(*tiny_args(tiny_path, tmp / "runs", "fail", "--gpus", "2", "--save-steps", "2"),
                    env=env, cwd=tmp)
    assert failed.returncode == 70
    errors = [line for line in failed.stderr.splitlines() if line.startswith(("error", "internal"))]
    assert len(errors) == 1, failed.stderr[-3000:]
    assert errors[0].startswith("internal error on rank 1 of 2 (a bug in fastft or a library it "
                                "uses): RuntimeError: fault injected at step")
    run = tmp / "runs" / "fail"
    assert json.loads((run / "fastft.json").read_text())["status"] == "failed"
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(run))]
    assert not alive   # no rank left behind

    env.pop("FASTFT_FAULT")
    resumed = fastft("train", "--resume", str(run), env=env, cwd=tmp)   # on the 2 it was trained on
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "fastft.json").read_text())["status"] == "done"
    assert losses(run) == pytest.approx(losses(tmp / "runs" / "two"), rel=0.01)


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_saves_one_checkpoint_on_every_rank_at_the_same_step(runs, tiny_path):
    """The launcher passes Ctrl-C on; each rank gets it between other steps, and they agree on
    the step to save and stop at (fastft.train.distributed.any_rank), as one process does alone."""
    import signal
    import time
    run = runs["tmp"] / "runs" / "ctrl-c"
    env = {k: v for k, v in runs["env"].items() if k != "FASTFT_DEBUG_WEIGHTS_DIR"}
    args = tiny_args(tiny_path, runs["tmp"] / "runs", "ctrl-c", "--gpus", "2")
    args[args.index("--max-steps") + 1] = "200"
    proc = forkserver.popen(args, runs["tmp"], env)     # see fastft() above
    deadline = time.monotonic() + 240
    while not ((run / "metrics.jsonl").exists() and len(losses(run)) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    record = json.loads((run / "fastft.json").read_text())
    step = len(losses(run))
    assert record["status"] == "interrupted" and 2 <= step < 200
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("checkpoint-")] == [
        f"checkpoint-{step}"]
    assert (run / "checkpoints" / f"checkpoint-{step}" / "rng_state_1.pth").exists()   # rank 1 too
    assert f"interrupted at step {step}, checkpoint checkpoint-{step} saved" in err
    assert f"fastft train --resume {run}" in err


@pytest.mark.gpu
def test_two_gpus_train_with_auto_tune_on_rank_0_and_end_equal(tmp_path, tiny_path):
    """On 2 real GPUs (NCCL): auto-tune runs on rank 0, both ranks use its plan, and both end
    with the adapter rank 0 saved."""
    import torch
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    env = dict(os.environ, FASTFT_DEBUG_WEIGHTS_DIR=str(tmp_path / "weights"), HF_HUB_OFFLINE="1",
               PYTHONPATH=python_path())
    (tmp_path / "weights").mkdir()
    # --retune: a run this short would skip the probe, or reuse one remembered from an earlier run
    r = fastft(*tiny_args(tiny_path, tmp_path / "runs", "gpu2", "--gpus", "2", "--retune"), env=env,
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    record = json.loads((tmp_path / "runs" / "gpu2" / "fastft.json").read_text())
    plan = record["plan"]
    assert plan["world_size"] == 2 and plan["tuning"]["measurements"]
    assert plan["batch_size"] * plan["grad_accum"] * 2 == 8   # the effective batch, shared out
    assert record["hardware"]["gpu_count"] >= 2 and record["final"]["peak_mem_alloc_gib"] > 0
    w = {p.stem: json.loads(p.read_text())["sha256"] for p in (tmp_path / "weights").glob("*.json")}
    assert set(w) == {"rank0", "rank1"} and w["rank0"] == w["rank1"]
