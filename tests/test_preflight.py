"""The preflight: train and export stop before creating or loading anything when the disk is too
small for what they will write, and an export removes the scratch folders of killed exports."""

import io
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from conftest import EXAMPLE, write_run
from fastft.cli import main
from fastft.core.config import TrainConfig
from fastft.core.preflight import (DiskSpaceError, Shape, check_train_space, export_bytes, owned_scratch,
                              remove_stale_scratch, train_bytes)

Usage = namedtuple("Usage", "total used free")
# Qwen3-4B-Instruct-2507's config.json (the default model), the fields the estimate reads.
QWEN3_4B = {"vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728,
            "num_hidden_layers": 36, "num_attention_heads": 32, "num_key_value_heads": 8,
            "head_dim": 128, "tie_word_embeddings": True}


def free_disk(monkeypatch, free: int):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: Usage(10**12, 10**12 - free, free))


def one_line(text: str) -> str:
    return " ".join(text.split())   # rich wraps long lines at the terminal width


def test_the_estimates_match_what_a_4b_model_writes():
    # The figures: a merged 4B model is about 8 GB, its q4_k_m GGUF about 2.5 GB.
    shape = Shape.from_config(QWEN3_4B)
    assert 4.0e9 < shape.embedding_params + shape.layer_params < 4.05e9   # Qwen3-4B: 4.02B
    peak, what = export_bytes(shape, ("q4_k_m",), merged=False)
    assert what == "merged 16-bit model 8.1 GB, 16-bit GGUF 8.1 GB, q4_k_m 2.5 GB"
    assert 16e9 < peak < 16.3e9          # the merged model and the 16-bit GGUF at once
    assert export_bytes(shape, ("q4_k_m", "q8_0"), merged=True)[0] > peak + 6.8e9
    # r=16 on all seven projections: 33M LoRA parameters (PEFT prints 33,030,144 for this model).
    need, what = train_bytes(shape, TrainConfig(data="x"))
    assert "33.0M-parameter LoRA" in what and 0.5e9 < need < 2e9
    assert train_bytes(shape, TrainConfig(data="x", rank=64))[0] > 3 * need
    assert train_bytes(shape, TrainConfig(data="x", save_total_limit=5))[0] > 1.5 * need


def test_the_direct_path_writes_no_merged_model_unless_asked():
    """Without --merged the direct path's peak is the 16-bit GGUF and the quants (4B: 10.6 GB,
    not the 16.2 GB of the merged model and the GGUF at once); with --merged it is all three."""
    shape = Shape.from_config(QWEN3_4B)
    detour, _ = export_bytes(shape, ("q4_k_m",), merged=False)
    peak, what = export_bytes(shape, ("q4_k_m",), merged=False, direct=True)
    assert what == "16-bit GGUF 8.1 GB, q4_k_m 2.5 GB"
    assert 10.5e9 < peak < 10.8e9 < detour
    assert export_bytes(shape, ("q4_k_m",), merged=True, direct=True) == \
        export_bytes(shape, ("q4_k_m",), merged=True)


def test_a_second_16_bit_gguf_is_counted_as_an_extra_file():
    # The converter writes one of bf16/f16; llama-quantize makes the other as a third 8 GB file
    # beside the kept merged model (4B: ~24.2 GB written).
    shape = Shape.from_config(QWEN3_4B)
    sixteen, _ = export_bytes(shape, (), merged=True)
    for quants in [("bf16", "f16"), ("f16", "bf16")]:
        peak, what = export_bytes(shape, quants, merged=True)
        assert what == f"merged 16-bit model 8.1 GB, 16-bit GGUF 8.1 GB, {quants[1]} 8.1 GB"
        assert peak == 3 * sixteen
    # Without --merged the merged model is gone before llama-quantize runs: the two 16-bit GGUFs
    # and the q4_k_m are on disk together.
    q4 = export_bytes(shape, ("q4_k_m",), merged=False)[1].split("q4_k_m ")[1]
    peak, what = export_bytes(shape, ("bf16", "f16", "q4_k_m"), merged=False)
    assert what.endswith(f"f16 8.1 GB, q4_k_m {q4}") and peak > 2 * sixteen + 2.4e9


def test_enough_space_passes(tiny_path, tmp_path, monkeypatch):
    free_disk(monkeypatch, 10**9)
    check_train_space(TrainConfig(data="x"), tmp_path / "runs", str(tiny_path))
    free_disk(monkeypatch, 10**6)
    with pytest.raises(DiskSpaceError, match=r"^not enough disk space in .*/runs: need ~0.2 GB, "
                                             r"have 1 MB free \(3 checkpoints"):
        check_train_space(TrainConfig(data="x"), tmp_path / "runs", str(tiny_path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_a_filesystem_that_stores_nothing_is_named_as_such(tiny_path):
    """Root passes the writable check in /proc or /sys; "0 MB free" would send them looking
    for disk space to free."""
    with pytest.raises(DiskSpaceError, match=r"^/proc/runs is on a filesystem that stores no "
                                             r"files \(such as /proc or /sys\); choose another "
                                             r"--runs-dir$"):
        check_train_space(TrainConfig(data="x"), Path("/proc/runs"), str(tiny_path))


def test_train_stops_before_creating_or_loading_anything(tmp_path, monkeypatch):
    import fastft.train.trainer

    def no_load(*a, **kw):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(fastft.train.trainer, "_load", no_load)
    free_disk(monkeypatch, 5 * 10**6)
    result = CliRunner().invoke(main, ["train", str(EXAMPLE), "--model", "tiny", "--name", "r",
                                       "--runs-dir", str(tmp_path / "runs")])
    assert result.exit_code == 1, result.output
    out = one_line(result.output)
    assert f"error: not enough disk space in {tmp_path / 'runs'}: need ~" in out
    assert "have 5 MB free" in out and "choose another --runs-dir" in out
    assert "Traceback" not in out
    assert not (tmp_path / "runs").exists()


def test_export_stops_before_creating_anything(tiny_path, tmp_path, monkeypatch):
    run = write_run(tmp_path / "runs" / "r", model_path=str(tiny_path))
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    free_disk(monkeypatch, 50 * 10**6)
    out_dir = tmp_path / "exports" / "r"
    args = ["export", str(run), "--gguf", "q4_k_m", "--out", str(out_dir)]
    # the direct path (a local 16-bit base) writes no merged model; the older path does
    for extra, counted in [([], "(16-bit GGUF"), (["--no-direct"], "(merged 16-bit model")]:
        result = CliRunner().invoke(main, args + extra)
        assert result.exit_code == 1, result.output
        out = one_line(result.output)
        assert f"error: not enough disk space in {out_dir.parent}: need ~" in out
        assert f"have 50 MB free {counted}" in out and "q4_k_m" in out
        assert not (tmp_path / "exports").exists()


# -- scratch folders ---------------------------------------------------------------------------

def _killed_export_scratch(parent):
    """A scratch folder as an export killed with SIGKILL leaves it: owned by a dead process."""
    code = ("import sys, os; from pathlib import Path; from fastft.core.preflight import owned_scratch\n"
            "with owned_scratch(Path(sys.argv[1]), 'm') as s:\n"
            "    (s / 'work').mkdir(); (s / 'work' / 'm.gguf').write_bytes(b'x' * 2000000)\n"
            "    os._exit(0)\n")   # no finally, no cleanup: as after a SIGKILL
    parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(parent)], check=True)
    return next(parent.glob(".tmp-m-*"))


def test_stale_scratch_is_removed_and_live_scratch_kept(tmp_path):
    stale = _killed_export_scratch(tmp_path)
    foreign = tmp_path / ".tmp-not-ours"            # no owner file: not ours to delete
    foreign.mkdir()
    (tmp_path / "m").mkdir()                        # a finished export
    with owned_scratch(tmp_path, "m") as live:
        removed = remove_stale_scratch(tmp_path)
        assert [name for name, _ in removed] == [stale.name] and removed[0][1] >= 2 * 10**6
        assert live.is_dir() and foreign.is_dir() and (tmp_path / "m").is_dir()
        assert not stale.exists()
    # Once its owner is done with it (here: the lock is released), a folder is stale too.
    assert [name for name, _ in remove_stale_scratch(tmp_path)] == [live.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-not-ours", "m"]


def test_export_says_it_removed_a_killed_exports_scratch(tmp_path, monkeypatch):
    """The next export removes the scratch of one killed earlier, and says so in one line."""
    import fastft.export.pipeline
    from fastft.export.pipeline import ExportOptions, export_run

    stale = _killed_export_scratch(tmp_path / "exports")
    run = write_run(tmp_path / "runs" / "r")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")

    def stop(plan, console):
        raise fastft.export.pipeline.ExportError("stopped after the scratch folder was made")
    monkeypatch.setattr(fastft.export.pipeline, "write_models", stop)
    monkeypatch.setattr(fastft.export.pipeline, "find_tools", lambda plan, console: None)
    console = Console(file=io.StringIO(), width=300)
    with pytest.raises(fastft.export.pipeline.ExportError, match="stopped"):
        export_run(ExportOptions(run=str(run), gguf=(), merged=True,
                                 exports_dir=str(tmp_path / "exports")), console)
    assert not stale.exists()
    assert console.file.getvalue() == (f"removed stale {stale.name} (2 MB, left by an export "
                                       f"that was killed)\n")
    assert list((tmp_path / "exports").iterdir()) == []   # its own scratch went too
