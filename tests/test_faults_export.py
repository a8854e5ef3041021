"""Killed exports: Ctrl-C, SIGTERM and SIGKILL while llama.cpp converts or quantizes leave no
export half-written under its final name, and the next export cleans up and completes; a
SIGKILL of `fastft export` alone takes its converter (or the direct path's child) with it.
(A file of its own beside tests/test_faults.py, so pytest-xdist runs the two side by side.)"""

import io
import signal
import time
from pathlib import Path

import forkserver
import pytest
import train_hooks
from rich.console import Console

from fastft.core.cache import sha256_file
from test_faults import baseline, run_killed  # noqa: F401  (baseline: the session's run exported here)


@pytest.mark.slow
def test_export_killed_in_convert_and_quantize_is_redone_cleanly(baseline, tmp_path):
    """Ctrl-C and SIGKILL during the GGUF convert and during quantize, one after the other into
    the same exports folder: no export ever appears half-written under its final name, each
    next export removes the scratch a SIGKILL left (saying so), and the last one completes.

    The convert faults take the path with a converter process (--no-direct). The quantize
    faults take the direct path, whose child writes the same 16-bit GGUF into the same scratch
    `work/` for this process's llama-quantize (no GPU here) at less cost than the older path's
    Unsloth load, merge, save and converter; forked with the imports done, as nothing here
    depends on what the process imported."""
    from fastft.export.manifest import ExportManifest
    from fastft.export.pipeline import ExportOptions, export_run
    from fastft.export.gguf import read_gguf_metadata

    exports = tmp_path / "exports"
    final = exports / "m"
    direct = ["export", str(baseline.run_dir), "--gguf", "q4_k_m", "--out", str(final), "--name",
              "m", "--no-check"]
    left = None      # the scratch folder the previous SIGKILL left behind
    for fault in ["convert:SIGINT", "convert:SIGTERM", "convert:SIGKILL", "quantize:SIGINT",
                  "quantize:SIGTERM", "quantize:SIGKILL"]:
        converting = fault.startswith("convert")
        if converting:                           # the path with a converter process
            killed = run_killed([*direct, "--no-direct"], fault, tmp_path)
        else:
            killed = run_killed(direct, fault, tmp_path, fork=True)
        scratch = sorted(p.name for p in exports.glob(".tmp-*"))
        assert not final.exists(), fault
        if left:
            assert f"removed stale {left}" in killed.stderr, (fault, killed.stderr[-3000:])
        if not fault.endswith("SIGKILL"):
            sig = signal.Signals[fault.split(":")[1]]
            assert killed.returncode == 128 + sig, (fault, killed.stderr[-3000:])
            assert scratch == [], fault          # Ctrl-C and SIGTERM clean up after themselves
            left = None
        else:
            assert killed.returncode == -signal.SIGKILL, (fault, killed.stderr[-3000:])
            assert len(scratch) == 1, fault      # a SIGKILL cannot
            left = scratch[0]
            # Killed where it was meant to be: converting the merged model (the older path's
            # merged checkpoint on disk), or quantizing the 16-bit GGUF the direct child wrote
            # (no merged checkpoint: the child's own scratch is gone once it has finished).
            work = exports / left / "work"
            assert (work / "merged" / "config.json").is_file() == converting, fault
            assert converting or (work / "m.BF16.gguf").is_file(), fault
            assert converting or not (work / "direct").exists(), fault

    console = Console(file=io.StringIO(), width=300)
    result = export_run(ExportOptions(run=str(baseline.run_dir), gguf=("q4_k_m",), out=str(final),
                                      name="m"), console)
    assert f"removed stale {left}" in console.file.getvalue()
    assert sorted(p.name for p in exports.iterdir()) == ["m"]
    manifest = ExportManifest.read(final)
    gguf = result.ggufs["q4_k_m"]
    assert manifest.files[gguf.name].sha256 == sha256_file(gguf)
    assert read_gguf_metadata(gguf)["general.name"] == "m"
    assert result.checks and result.checks[0].file == gguf.name   # llama.cpp loaded it


def processes_mentioning(text: str) -> list[str]:
    """Command lines of the live processes whose arguments contain `text`."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            stat = (cmdline.parent / "stat").read_text()
        except OSError:
            continue                      # exited meanwhile
        if stat.split(") ")[-1].startswith("Z"):
            continue                      # a zombie: dead, waiting for its parent to reap it
        if any(text.encode() in a for a in argv):
            found.append(" ".join(a.decode(errors="replace") for a in argv))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("point, path", [("convert", "--no-direct"), ("direct", "--direct")])
def test_a_killed_export_takes_its_converter_with_it(baseline, tmp_path, point, path):
    """SIGKILL of `fastft export` alone (not its process group, as the OOM killer or `kill -9
    PID` do) while llama.cpp's converter runs (or the direct path's child, which merges and
    converts): it dies with it instead of writing on into a scratch folder nobody owns."""
    exports = tmp_path / "exports"
    proc = forkserver.run(["export", str(baseline.run_dir), "--gguf", "q8_0", "--out",
                           str(exports / "m"), "--name", "m", "--no-check", path], tmp_path,
                          train_hooks.env(FASTFT_FAULT=f"{point}:SIGKILL"), timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    deadline = time.monotonic() + 2     # the kernel signals the child as its parent exits
    while (left := processes_mentioning(str(exports))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []
