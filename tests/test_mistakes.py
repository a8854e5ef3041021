"""User and environment mistakes are one line and exit 1, never exit 70 ('a bug in fastft'),
and leave nothing created or half-written. Each test runs the real CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rich.console import Console

import fastft.cli
from conftest import EXAMPLE
from fastft.cli import main


@pytest.fixture
def runner(monkeypatch):
    # The error line goes to a rich console on stderr: wide, so no line is wrapped.
    monkeypatch.setattr(fastft.cli, "console", Console(stderr=True, width=10_000))
    return CliRunner()


def train_args(tmp_path, *extra) -> list[str]:
    return ["train", str(EXAMPLE), "--model", "tiny", "--runs-dir", str(tmp_path / "runs"),
            "--max-seq-len", "256", "--lr", "2e-3", *extra]


def error_line(result) -> str:
    """The one error line of a run that must exit 1."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("scheduler", ["cosine_with_min_lr", "warmup_stable_decay"])
def test_every_listed_scheduler_trains(runner, tmp_path, scheduler):
    result = runner.invoke(main, train_args(tmp_path, "--scheduler", scheduler, "--max-steps", "2",
                                            "--name", "s", "--json"))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "runs" / "s" / "fastft.json").read_text())
    assert record["status"] == "done" and record["config"]["scheduler"] == scheduler


@pytest.mark.parametrize("flag, value, message", [
    ("--seed", "-1", "seed (--seed): Input should be greater than or equal to 0, got -1"),
    ("--seed", str(2**32), "seed (--seed): Input should be less than or equal to 4294967295"),
    ("--max-steps", str(2**40), "max_steps (--max-steps): Input should be less than or equal to"),
])
def test_out_of_range_numbers_name_their_option(runner, tmp_path, flag, value, message):
    result = runner.invoke(main, train_args(tmp_path, flag, value))
    assert message in error_line(result)
    assert not (tmp_path / "runs").exists()


def nothing_created(tmp_path) -> bool:
    runs = tmp_path / "runs"
    return not runs.exists() or not any(runs.iterdir())


def test_target_modules_the_model_lacks_are_listed_against_its_own(runner, tmp_path):
    result = runner.invoke(main, train_args(tmp_path, "--target-modules", "q_proj,qkv", "--max-steps", "1"))
    line = error_line(result)
    assert "--target-modules qkv: no such module in tiny; its linear modules are " in line
    assert "q_proj" in line.split("are ")[1] and "lm_head" not in line
    assert nothing_created(tmp_path)


@pytest.mark.parametrize("files, missing", [
    ([], "no config.json and no *.safetensors weights"),
    (["config.json"], "no *.safetensors weights"),
    (["model.safetensors", "notes.txt"], "no config.json"),
])
def test_a_folder_that_holds_no_model_is_refused_first(runner, tmp_path, files, missing):
    model = tmp_path / "model"
    model.mkdir()
    for name in files:
        (model / name).write_text("{}")
    line = error_line(runner.invoke(main, train_args(tmp_path, "--model", str(model))))
    assert f"--model {model}: not a model folder ({missing}); give a folder written by " in line
    assert nothing_created(tmp_path)


def closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_uncached_hub_model_without_network_fails_fast_saying_so(runner, tmp_path, monkeypatch):
    import time

    from huggingface_hub import constants
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    port = closed_port()   # the hub as HF_ENDPOINT names it, where nothing listens: no network
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    t0 = time.monotonic()
    line = error_line(runner.invoke(main, train_args(tmp_path, "--model", "fastft-test/not-cached")))
    assert time.monotonic() - t0 < 30
    assert (f"--model fastft-test/not-cached: not in the local Hugging Face cache, and no network "
            f"(127.0.0.1:{port} cannot be reached): connect to download fastft-test/not-cached "
            f"once; or give a local folder with --model") in line
    assert "HF_HUB_OFFLINE" not in line and nothing_created(tmp_path)


def test_an_uncached_hub_model_in_offline_mode_names_the_variable(runner, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    line = error_line(runner.invoke(main, train_args(tmp_path, "--model", "fastft-test/not-cached")))
    assert "TRANSFORMERS_OFFLINE=1 is set (offline mode): unset it to download" in line
    assert nothing_created(tmp_path)


def read_only_folder(tmp_path):
    """A folder this process cannot write in; None where permissions do not stop it (root)."""
    import os
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return None if os.access(folder, os.W_OK) else folder


@pytest.mark.parametrize("where", ["file", "under-file", "read-only", "proc"])
def test_a_runs_dir_that_cannot_hold_runs_is_refused_first(runner, tmp_path, where):
    from pathlib import Path
    (tmp_path / "f").write_text("mine")
    runs_dir, problem = {
        "file": lambda: (tmp_path / "f", "is a file, not a folder"),
        "under-file": lambda: (tmp_path / "f" / "runs", f"{tmp_path / 'f'} is a file, not a folder"),
        "read-only": lambda: (read_only_folder(tmp_path), f"{tmp_path / 'ro'} is not writable"),
        "proc": lambda: (Path("/proc/sys/fastft-runs"), "/proc/sys is not writable"),   # even for root
    }[where]()
    if runs_dir is None:
        pytest.skip("permissions do not stop root")
    args = train_args(tmp_path, "--runs-dir", str(runs_dir), "--max-steps", "1")
    line = error_line(runner.invoke(main, args))
    assert f"--runs-dir {runs_dir}: {problem}; give a folder fastft can write to" in line
    assert (tmp_path / "f").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"] + ["ro"] * (where == "read-only")


@pytest.mark.parametrize("var, cache", [("FASTFT_CACHE", "f"), ("XDG_CACHE_HOME", "f/fastft")])
def test_a_cache_path_that_is_a_file_is_named(runner, tmp_path, monkeypatch, var, cache):
    (tmp_path / "f").write_text("mine")
    monkeypatch.delenv("FASTFT_CACHE", raising=False)
    monkeypatch.setenv(var, str(tmp_path / "f"))
    line = error_line(runner.invoke(main, ["data", "check", str(EXAMPLE), "--model", "tiny"]))
    problem = "is a file, not a folder" if cache == "f" else f"{tmp_path / 'f'} is a file, not a folder"
    assert (f"fastft's cache folder {tmp_path / cache} (from {var}): {problem}; set FASTFT_CACHE "
            f"to a folder") in line
    assert (tmp_path / "f").read_text() == "mine"


@pytest.mark.parametrize("where", ["read-only", "proc"])
def test_init_into_a_folder_it_cannot_write_is_one_line(runner, tmp_path, where):
    from pathlib import Path
    folder = read_only_folder(tmp_path) if where == "read-only" else Path("/proc/sys")
    if folder is None:
        pytest.skip("permissions do not stop root")
    line = error_line(runner.invoke(main, ["init", str(folder / "fastft.toml")]))
    assert f"cannot write {folder / 'fastft.toml'}: {folder} is not writable; give a PATH in a folder" in line
    assert not (folder / "fastft.toml").exists()


@pytest.mark.parametrize("command", [["eval", "{run}", str(EXAMPLE)], ["chat", "{run}", "-p", "hi"],
                                     ["export", "{run}"]])
def test_a_run_without_an_adapter_is_refused_by_every_reader(runner, tmp_path, command):
    from conftest import write_run
    run = write_run(tmp_path / "r", status="interrupted")
    before = sorted(p.name for p in run.iterdir())
    line = error_line(runner.invoke(main, [a.format(run=run) for a in command]))
    assert (f"{run}: no trained adapter in {run / 'adapter'} (its status is 'interrupted'); "
            f"{command[0]} runs after `fastft train` finishes; finish it with fastft train "
            f"--resume {run}") in line
    assert sorted(p.name for p in run.iterdir()) == before


# -- a full disk -------------------------------------------------------------------------------

def disk_full(*args, **kwargs):
    import errno
    import os
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def assert_resumable_after_disk_full(result, run):
    from fastft.core.run import RunFolder
    line = error_line(result)
    assert (f"no space left on the device of {run} while saving; once space is freed, continue "
            f"with: fastft train --resume {run}") in line
    assert RunFolder(run).read().status == "interrupted"
    assert [p for p in run.rglob("*") if ".tmp" in p.name] == []
    assert RunFolder(run).incomplete_checkpoints() == []


def test_a_disk_full_while_checkpointing_leaves_a_resumable_run(runner, tmp_path, monkeypatch):
    import fastft.train.trainer
    import train_hooks

    def fault(name):   # the checkpoint's weights are written, its trainer state not yet
        if name == "checkpoint-write":
            disk_full()
    with monkeypatch.context() as m:
        train_hooks.install(fastft.train.trainer, m.setattr)
        m.setattr(train_hooks, "fault_point", fault)
        result = runner.invoke(main, train_args(tmp_path, "--max-steps", "3", "--save-steps", "2",
                                                "--name", "full"))
    run = tmp_path / "runs" / "full"
    assert_resumable_after_disk_full(result, run)
    resumed = runner.invoke(main, ["train", "--resume", str(run)])   # space freed
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((run / "fastft.json").read_text())["status"] == "done"


def test_a_disk_full_while_saving_the_adapter_leaves_no_half_adapter(runner, tmp_path, monkeypatch):
    from pathlib import Path

    from transformers import PreTrainedTokenizerBase

    def save_half(self, directory, *args, **kwargs):
        (Path(directory) / "tokenizer.json").write_text('{"trunc')
        disk_full()
    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", save_half)
    result = runner.invoke(main, train_args(tmp_path, "--max-steps", "1", "--name", "full"))
    run = tmp_path / "runs" / "full"
    assert_resumable_after_disk_full(result, run)
    assert not (run / "adapter").exists()


def test_a_record_write_that_fails_leaves_no_temporary(tmp_path, monkeypatch):
    from pathlib import Path

    from fastft.core.run import write_text_atomic
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: Path.touch(self) or disk_full())
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "fastft.json", "{}")
    assert list(tmp_path.iterdir()) == []


# -- stdout that cannot be written ----------------------------------------------------------

def fastft_cli(*args, env=None, **kwargs):
    import os
    import subprocess
    import sys
    env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "fastft.cli", *args], env=env, text=True,
                          stderr=subprocess.PIPE, **kwargs)


@pytest.mark.parametrize("args", [["--help"], ["train", str(EXAMPLE), "--print-config"],
                                  ["init", "--help"]])
def test_stdout_to_a_full_device_is_one_line(args):
    with open("/dev/full", "w") as full:
        done = fastft_cli(*args, stdout=full)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == ["error: no space left on device while writing the output "
                                        "or a file; free space (or send the output elsewhere) and "
                                        "run again"]


def test_stdout_to_a_closed_pipe_ends_quietly():
    import subprocess
    import sys
    import os
    read, write = os.pipe()
    os.close(read)   # the reader is gone before fastft writes, as with `| head` done early
    done = subprocess.run([sys.executable, "-m", "fastft.cli", "train", str(EXAMPLE), "--print-config"],
                          stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert (done.returncode, done.stderr) == (1, "")


def test_an_ascii_only_stream_gets_ascii_marks(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "h\\u00e9"}]}\n')
    done = fastft_cli("data", "check", str(bad), "--model", "tiny", env={"PYTHONIOENCODING": "ascii",
                                                                      "COLUMNS": "200"},
                      stdout=__import__("subprocess").PIPE)
    assert done.returncode == 1, done.stderr
    assert "x nothing to train on" in done.stdout and "x " in done.stdout
    assert "Traceback" not in done.stderr and "internal error" not in done.stderr


@pytest.mark.parametrize("optim, used, said", [
    ("sgd", "sgd", False),
    ("adamw_8bit", "adamw_torch", True),
])
def test_the_optimizer_asked_for_is_used_on_cpu_or_the_swap_is_said(runner, tmp_path, optim, used, said):
    result = runner.invoke(main, train_args(tmp_path, "--optim", optim, "--max-steps", "1", "--name", "o"))
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "runs" / "o" / "fastft.json").read_text())["plan"]["optim"] == used
    line = f"--optim {optim} needs a CUDA GPU (bitsandbytes): training on CPU with adamw_torch"
    assert (line in " ".join(result.output.split())) == said
