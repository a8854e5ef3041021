"""Secrets stay out: with hub, W&B and OpenAI tokens in the environment, a real `fastft train`
and `fastft export` (and an internal error's crash log) write none of them anywhere, and print
none of them."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import train_hooks

from conftest import EXAMPLE

MARKER = "fastft-secret-marker-7c1e9a"
SECRETS = {"HF_TOKEN": f"hf_{MARKER}", "HUGGING_FACE_HUB_TOKEN": f"hf_{MARKER}",
           "WANDB_API_KEY": f"wandb_{MARKER}", "OPENAI_API_KEY": f"sk-{MARKER}"}


def fastft(*args, cwd, env_extra=None) -> subprocess.CompletedProcess:
    # The test hooks (tests/train_hooks.py) on its path: FASTFT_FAULT makes a crash on purpose.
    env = train_hooks.env(os.environ | SECRETS | {"COLUMNS": "200"} | (env_extra or {}))
    return subprocess.run([sys.executable, "-m", "fastft.cli", *args], cwd=cwd, env=env,
                          capture_output=True, timeout=900)


def files_holding(marker: bytes, *folders: Path) -> list[str]:
    return [str(p) for folder in folders for p in folder.rglob("*")
            if p.is_file() and not p.is_symlink() and marker in p.read_bytes()]


@pytest.mark.slow
def test_no_secret_reaches_a_file_or_the_output(tmp_path):
    from fastft.core.cache import cache_dir

    logs = cache_dir() / "logs"
    started = time.time()
    runs, exports = tmp_path / "runs", tmp_path / "exports"
    outputs = []
    # Checkpoints (training_args.bin, trainer_state.json), metrics, fastft.json, train.log, the
    # adapter; then the GGUF, Modelfile, README, manifest and export.log; --json prints results.
    outputs.append(fastft("train", str(EXAMPLE), "--model", "tiny", "--16bit", "--name", "s",
                          "--runs-dir", str(runs), "--max-steps", "2", "--save-steps", "1",
                          "--max-seq-len", "128", cwd=tmp_path))
    outputs.append(fastft("export", str(runs / "s"), "--gguf", "q4_k_m", "--out",
                          str(exports / "s"), "--json", cwd=tmp_path))
    for proc in outputs:
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    # An internal error writes its traceback to the crash-log folder: make one on purpose.
    crash = fastft("--debug", "train", str(EXAMPLE), "--model", "tiny", "--16bit", "--name",
                   "crash", "--runs-dir", str(runs), "--max-seq-len", "128", cwd=tmp_path,
                   env_extra={"FASTFT_FAULT": "step:raise"})
    assert crash.returncode == 70, crash.stderr.decode(errors="replace")[-3000:]
    new_logs = [p for p in logs.glob("crash-*.log") if p.stat().st_mtime >= started - 1]
    assert any(b"fault injected at step" in p.read_bytes() for p in new_logs), new_logs
    assert b"Traceback" in crash.stderr          # --debug printed it: the output is scanned too
    outputs.append(crash)

    assert (runs / "s" / "checkpoints" / "checkpoint-2" / "trainer_state.json").is_file()
    assert (exports / "s" / "s.Q4_K_M.gguf").is_file() and (exports / "s" / "Modelfile").is_file()
    for value in {*SECRETS.values(), MARKER}:
        assert files_holding(value.encode(), runs, exports) == []
        assert [str(p) for p in new_logs if value.encode() in p.read_bytes()] == []
        for proc in outputs:
            assert value.encode() not in proc.stdout + proc.stderr, proc.args
