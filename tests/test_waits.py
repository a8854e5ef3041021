"""Nothing waits in silence: a llama.cpp build shows cmake's own step count while it runs, and a
lock wait inside a capture (train, export, chat) is announced on the terminal, not in the log.
The commands wait on a release file the test creates only once the message was seen."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from fastft.core.locks import held
from fastft.core.quiet import captured
from fastft.export.llamacpp import _run_logged, build_percent

# Prints what cmake prints, then blocks until the test creates $RELEASE.
FAKE_CMAKE = """#!/bin/sh
if [ "$1" = "--build" ]; then echo "[ 10%] Building C object ggml.c.o"; echo "[ 50%] Building CXX object llama.cpp.o"
else echo "-- The C compiler identification is GNU"; fi
while [ ! -e "$RELEASE" ]; do sleep 0.05; done
[ "$1" = "--build" ] && echo "[100%] Built target llama-quantize"
exit 0
"""


def seen(buffer: io.StringIO, text: str, until: threading.Thread | subprocess.Popen) -> bool:
    """Whether `text` appears in `buffer` while `until` still runs (a generous guard, no timing)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if text in buffer.getvalue():
            return True
        alive = until.is_alive() if isinstance(until, threading.Thread) else until.poll() is None
        if not alive:
            return text in buffer.getvalue()
        time.sleep(0.05)
    return False


@pytest.fixture
def fake_cmake(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cmake").write_text(FAKE_CMAKE)
    (bin_dir / "cmake").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    release = tmp_path / "release"
    monkeypatch.setenv("RELEASE", str(release))
    return release


def in_thread(target) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("terminal", [False, True], ids=["log", "terminal"])
def test_a_build_shows_cmakes_step_count_while_it_runs(fake_cmake, terminal):
    out = io.StringIO()
    console = Console(file=out, width=100, force_terminal=terminal, color_system=None)
    build = in_thread(lambda: _run_logged(["cmake", "--build", "b"], "building llama-quantize", console))
    try:
        assert seen(out, "50%", build), out.getvalue()
        assert "building llama-quantize" in out.getvalue()
    finally:
        fake_cmake.touch()
        build.join(timeout=60)
    assert not build.is_alive()


def test_configure_says_what_it_does_before_it_ends(fake_cmake):
    out = io.StringIO()
    console = Console(file=out, width=100)
    step = in_thread(lambda: _run_logged(["cmake", "-S", "s"], "configuring llama.cpp", console,
                                         counted=False))
    try:
        assert seen(out, "• configuring llama.cpp ...", step), out.getvalue()
    finally:
        fake_cmake.touch()
        step.join(timeout=60)


def test_cmakes_step_counts_of_make_and_ninja():
    assert build_percent("[ 42%] Building CXX object x.o\n") == 42
    assert build_percent("[100%] Built target llama-quantize") == 100
    assert build_percent("[12/48] Building CXX object x.o") == 25
    assert build_percent("-- Configuring done") is None


HOLDER = """
import sys, time
from pathlib import Path
from fastft.core.locks import held
with held(Path(sys.argv[1]), "the llama.cpp build"):
    print("holding", flush=True)
    while not Path(sys.argv[2]).exists():
        time.sleep(0.05)
"""


def take_and_release(lock: Path):
    def take():
        with held(lock, "the llama.cpp build"):
            pass
    return take


def test_a_lock_wait_inside_a_capture_is_announced_on_the_terminal(tmp_path):
    """As in `fastft export` (its output captured into export.log) waiting for another
    process's llama.cpp build: the line goes to the console the capture pinned, at once."""
    lock, release = tmp_path / ".build.lock", tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), str(release)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "holding\n"
        out = io.StringIO()
        terminal = Console(file=out, width=300)
        with captured(tmp_path / "export.log", terminal):
            waiter = in_thread(take_and_release(lock))
            assert seen(out, f"• waiting for the llama.cpp build: held by process {holder.pid} (",
                        holder), out.getvalue()
            release.touch()
            waiter.join(timeout=60)
        assert "waiting for" not in (tmp_path / "export.log").read_text()
    finally:
        release.touch()
        holder.wait(timeout=60)
