"""Quiet by default: a `fastft train` shows fastft's own lines only (the libraries' banners,
warnings and progress bars go to the run's train.log), `-v` shows everything, results go to
stdout and diagnostics to stderr, `--json` keeps stdout pure JSON, NO_COLOR is honoured.

Real processes, since much of the noise is written to the file descriptors directly (C code,
child processes) and never passes through sys.stdout.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import EXAMPLE, REPO

# What the libraries print during a tiny `fastft train` on this stack (see the module docstring).
NOISE = ("Unsloth", "_pytree", "Warning", "WARNING", "it/s", "%|", "Loading weights",
         "Truncating train dataset", "Dropping fully masked", "PAD/BOS", "bitsandbytes",
         "[transformers]")
# fastft's own lines on stderr: status lines, the guard's table, the progress bar.
OWN_STDERR = re.compile(r"^(• |training |Chat-template guard and data|[┌│├└])")
# ... and on stdout: the run summary table.
OWN_STDOUT = re.compile(r"^(Run \S+|[┌│├└])")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
COLOR = re.compile(r"\x1b\[[0-9;]*(3[0-7]|38;[0-9;]+|9[0-7])m")
TRAIN = ["train", str(EXAMPLE), "--model", "tiny", "--max-steps", "2", "--max-seq-len", "128",
         "--batch-size", "4", "--grad-accum", "1"]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return e | {"COLUMNS": "200", "TERM": "xterm-256color", "HF_HUB_OFFLINE": "1"} | extra


def fastft(*args: str, cwd: Path, terminal: bool = False, **extra_env) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `fastft ARGS` in a new process; with `terminal`, stderr is
    a pseudo-terminal (rich then draws live progress and colours) and comes back with its
    escape sequences removed and \\r as line breaks."""
    cmd = [sys.executable, "-m", "fastft.cli", *args]
    if not terminal:
        p = subprocess.run(cmd, cwd=cwd, env=env(**extra_env), capture_output=True, text=True,
                           timeout=600)
        return p.returncode, p.stdout, p.stderr
    raw = run_with_terminal_stderr(cmd, cwd, env(**extra_env))
    text = raw[2].decode("utf-8", "replace")
    return raw[0], raw[1].decode(), ANSI.sub("", text).replace("\r\n", "\n").replace("\r", "\n")


def run_with_terminal_stderr(cmd, cwd, environ) -> tuple[int, bytes, bytes]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, cwd=cwd, env=environ, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def drain():   # the child blocks once the terminal's buffer is full
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:   # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)
    reader = threading.Thread(target=drain)
    reader.start()
    out = proc.stdout.read()
    rc = proc.wait(timeout=600)
    reader.join(timeout=30)
    os.close(master)
    return rc, out, b"".join(chunks)


def noise_in(text: str) -> list[str]:
    return [n for n in NOISE if n in text]


def strange_lines(text: str, own: re.Pattern) -> list[str]:
    return [line for line in text.splitlines() if line.strip() and not own.match(line)]


# -- the capture itself, in a small process ---------------------------------------------------------

CAPTURE_SCRIPT = textwrap.dedent("""
    import logging, os, subprocess, sys, warnings
    from rich.console import Console
    from fastft.core.quiet import captured, move_log
    console = Console(stderr=True)
    with captured(None, console, what="t"):
        print("noise-print"); print("noise-print-err", file=sys.stderr)
        os.write(1, b"noise-fd1\\n"); os.write(2, b"noise-fd2\\n")
        subprocess.run(["sh", "-c", "echo noise-child; echo noise-child-err >&2"])
        warnings.warn("noise-warning"); logging.getLogger("lib").warning("noise-logging")
        console.print("fastft's own line")
        move_log(sys.argv[1])
        os.write(2, b"noise-after-move\\n")
        if sys.argv[2] == "fail":
            raise RuntimeError("boom")
    print("result")
""")


def capture(tmp_path: Path, mode: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", CAPTURE_SCRIPT, str(tmp_path / "run.log"), mode],
                          cwd=REPO, env=env(FASTFT_CACHE=str(tmp_path / "cache")),
                          capture_output=True, text=True, timeout=120)


def test_capture_takes_every_kind_of_write_and_leaves_the_console(tmp_path):
    p = capture(tmp_path, "ok")
    assert p.returncode == 0, p.stderr
    assert p.stdout == "result\n"
    assert p.stderr == "fastft's own line\n"
    log = (tmp_path / "run.log").read_text()
    for marker in ("noise-print\n", "noise-print-err", "noise-fd1", "noise-fd2", "noise-child\n",
                   "noise-child-err", "noise-warning", "noise-logging", "noise-after-move"):
        assert marker in log, marker
    assert log.index("noise-fd1") < log.index("noise-after-move")   # moved, in order
    assert not list((tmp_path / "cache" / "logs").glob("*"))        # the pending log is gone


def test_after_a_failure_the_log_is_kept_and_named(tmp_path):
    p = capture(tmp_path, "fail")
    assert p.returncode == 1 and "RuntimeError: boom" in p.stderr
    assert f"the libraries' output (warnings, progress) is in {tmp_path / 'run.log'}" in p.stderr
    assert "noise-fd2" not in p.stderr and "noise-after-move" in (tmp_path / "run.log").read_text()


def test_under_click_runner_the_console_keeps_its_stream(tmp_path, monkeypatch):
    """CliRunner's streams are buffers that no descriptor switch reaches: the libraries' Python
    prints still go to the log, fastft's console output to the buffer."""
    import io

    from rich.console import Console

    from fastft.core.quiet import captured

    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    console = Console(stderr=True)
    with captured(tmp_path / "log", console):
        print("noise-out")
        print("noise-err", file=sys.stderr)
        console.print("own line")
    console.print("after")
    assert err.getvalue() == "own line\nafter\n" and out.getvalue() == ""
    assert (tmp_path / "log").read_text() == "noise-out\nnoise-err\n"


# -- a real tiny `fastft train` -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def quiet_train(tmp_path_factory):
    """A default train, its stderr a terminal and its stdout a pipe."""
    cwd = tmp_path_factory.mktemp("quiet")
    rc, out, err = fastft(*TRAIN, "--runs-dir", "runs", "--name", "quiet", cwd=cwd, terminal=True)
    return rc, out, err, cwd / "runs" / "quiet"


@pytest.mark.slow
def test_default_train_prints_only_fastfts_own_lines(quiet_train):
    rc, out, err, _ = quiet_train
    assert rc == 0, err
    assert not noise_in(out + err), out + err
    assert not strange_lines(err, OWN_STDERR), err
    assert not strange_lines(out, OWN_STDOUT), out
    assert "loading tiny" in err and "training" in err          # progress: stderr
    assert out.startswith("Run quiet") and "run folder" in out   # the result: stdout


@pytest.mark.slow
def test_the_libraries_output_is_in_train_log(quiet_train):
    *_, run = quiet_train
    log = (run / "train.log").read_text(errors="replace")
    for marker in ("Unsloth", "Loading weights", "Truncating train dataset"):
        assert marker in log, marker


@pytest.mark.slow
def test_verbose_shows_everything_and_json_keeps_stdout_pure(tmp_path):
    rc, out, err = fastft(*TRAIN, "--runs-dir", "runs", "--name", "loud", "-v", "--json",
                          cwd=tmp_path)
    assert rc == 0, err
    summary = json.loads(out)   # nothing but the JSON, though the libraries print to stdout too
    assert summary["run"] == "loud" and summary["final"]["global_step"] == 2
    assert Path(summary["adapter"]).is_dir() and summary["status"] == "done"
    assert {"Unsloth", "Loading weights"} <= set(noise_in(err))
    assert not (tmp_path / "runs" / "loud" / "train.log").exists()


# -- colour --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("no_color", [False, True])
def test_no_color(tmp_path, no_color):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    extra = {"NO_COLOR": "1"} if no_color else {}
    cmd = [sys.executable, "-m", "fastft.cli", "data", "check", str(bad), "--model", "tiny"]
    master, slave = pty.openpty()   # stdout a terminal: rich colours only for terminals
    p = subprocess.run(cmd, cwd=tmp_path, env=env(**extra), stdout=slave, stderr=slave,
                       stdin=subprocess.DEVNULL, timeout=300)
    os.close(slave)
    text = b""
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        text += data
    os.close(master)
    text = text.decode("utf-8", "replace")
    assert p.returncode == 1 and "missing assistant turn" in ANSI.sub("", text), text
    assert bool(COLOR.search(text)) is not no_color, text


STAGES = ["startup", "checks", "imports", "load", "prepare", "plan", "train", "save"]


@pytest.mark.slow
def test_one_timeline_from_process_start_in_the_record_the_log_and_the_table(quiet_train):
    """`fastft train` records each stage once, in order, from its process start (start-up and
    the imports are the stages a user waits through that no library reports); train.log ends
    with the same stages, and the result table's time row lists them."""
    from fastft.core.timeline import timings_line

    rc, out, err, run = quiet_train
    assert rc == 0, err
    timings = json.loads((run / "fastft.json").read_text())["timings"]
    assert list(timings) == [f"{s}_s" for s in STAGES] + ["total_s"]
    assert timings["imports_s"] > 1 and timings["startup_s"] > 0   # a fresh process paid both
    assert sum(v for k, v in timings.items() if k != "total_s") <= timings["total_s"] + 0.05
    line = timings_line(timings)
    assert f"fastft: stages: {line}" in (run / "train.log").read_text(errors="replace")
    flat = " ".join(out.split())
    assert all(f"{s} " in flat for s in STAGES) and "time │ " in flat
