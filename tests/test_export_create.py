"""Export conveniences: every llama-quantize type (validated against llama.cpp's own list), a
readable default model name, `--create` (through a stand-in `ollama` that records its
arguments) and `--json`."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE, write_run
from fastft.cli import main
from fastft.export.pipeline import (ExportError, ExportOptions, ExportResult, default_name, export_run,
                           normalise_quants, ollama_create)
from fastft.export.llamacpp import (NEEDS_IMATRIX, QUANT_SOURCE, llama_cpp_source, parse_quant_options,
                             parse_quantize_help, quant_types)

RUN_NAME = "Favorite_Color-20261126-223511"


def stand_in_ollama(folder: Path, exit_code: int = 0) -> Path:
    """An `ollama` that records its arguments, working directory and that folder's files."""
    folder.mkdir(parents=True, exist_ok=True)
    record = folder / "calls"
    exe = folder / "ollama"
    exe.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > {record}.args\npwd > {record}.cwd\n"
                   f"ls > {record}.files\necho 'could not connect' >&2\nexit {exit_code}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return record


def on_path(monkeypatch, folder: Path) -> None:
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def trained_adapter_stub(runs: Path, name: str = "r") -> Path:
    """A run folder that export accepts up to the first slow step."""
    run = write_run(runs / name)
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    return run


# -- quant types -----------------------------------------------------------------------------------

def test_types_come_from_llama_cpp():
    types = quant_types()
    source = parse_quant_options((llama_cpp_source() / QUANT_SOURCE).read_text())
    source.pop("COPY")
    assert types == source
    assert {"Q2_K", "Q3_K_M", "Q4_0", "Q4_K_S", "Q5_K_S", "Q6_K", "IQ4_XS", "F32"} <= set(types)


def test_help_parser_reads_the_listing_only():
    help_text = ("usage: llama-quantize [--help]\n  --pure\n      disable k-quant mixtures\n"
                 "  example: --tensor-type attn_q=q8_0\n\n allowed quantization types\n\n"
                 "   2  or  Q4_0    :  4.34G, +0.4685 ppl @ Llama-3-8B\n"
                 "  12  or  Q3_K    : alias for Q3_K_M\n"
                 "          COPY    : only copy tensors, no quantizing\n")
    assert parse_quantize_help(help_text) == {"Q4_0": "4.34G, +0.4685 ppl @ Llama-3-8B",
                                              "Q3_K": "alias for Q3_K_M",
                                              "COPY": "only copy tensors, no quantizing"}


def test_every_type_without_imatrix_is_accepted():
    types = quant_types()
    usable = [t.lower() for t in types if t not in NEEDS_IMATRIX]
    got = normalise_quants(usable, types)
    assert set(got) == {t for t in usable if t not in ("q3_k", "q4_k", "q5_k")}   # aliases folded


@pytest.mark.parametrize("given, expected", [
    (("Q6_K", "q6_k"), ("q6_k",)), (("q4_k",), ("q4_k_m",)), ((" q2_k ", "f32"), ("q2_k", "f32"))])
def test_names_are_normalised(given, expected):
    assert normalise_quants(given) == expected


def test_unknown_and_imatrix_types_are_refused_with_the_list():
    with pytest.raises(ExportError, match="unknown GGUF quant type 'q3_x'.*q6_k.*f32") as e:
        normalise_quants(("q3_x",))
    assert "iq2_xs" not in str(e.value)
    with pytest.raises(ExportError, match="importance matrix"):
        normalise_quants(("iq2_xs",))


def test_a_bad_type_fails_before_anything_is_written(tmp_path):
    run = trained_adapter_stub(tmp_path / "runs")
    result = CliRunner().invoke(main, ["export", str(run), "--gguf", "q4_k_m", "--gguf", "q9_k",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "unknown GGUF quant type 'q9_k'" in result.stderr
    assert not (tmp_path / "out").exists() and not (run / "export.log").exists()


# -- the default name ------------------------------------------------------------------------------

@pytest.mark.parametrize("run, name", [
    ("favorite_color-20261126-223511", "favorite_color"), (RUN_NAME, "favorite_color"),
    ("My.Data-set_2-20260101-000000", "my.data-set_2"), ("demo", "demo"),
    ("color-20261126", "color-20261126"), ("20261126-223511", "20261126-223511")])
def test_default_name_drops_the_timestamp(run, name):
    assert default_name(Path("runs") / run) == name


# -- --create ----------------------------------------------------------------------------------------

def test_create_without_ollama_fails_before_exporting(tmp_path, monkeypatch):
    run = trained_adapter_stub(tmp_path / "runs")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ExportError, match="no `ollama` on PATH.*ollama.com/download"):
        export_run(ExportOptions(run=str(run), out=str(tmp_path / "out"), create=True))
    with pytest.raises(ExportError, match="--create needs a GGUF"):
        export_run(ExportOptions(run=str(run), gguf=(), merged=True, create=True))
    assert not (tmp_path / "out").exists()


def test_a_failing_ollama_create_is_an_error_naming_the_complete_export(tmp_path, monkeypatch):
    record = stand_in_ollama(tmp_path / "bin", exit_code=1)
    on_path(monkeypatch, tmp_path / "bin")
    out = tmp_path / "exports" / "m"
    out.mkdir(parents=True)
    res = ExportResult(out_dir=out, name="m", run_dir=tmp_path, ggufs={}, merged_dir=None,
                       modelfile=out / "Modelfile", readme=out / "README.md",
                       manifest=out / "fastft-export.json")
    with pytest.raises(ExportError, match=r"ollama create m -f Modelfile` failed \(exit 1\)"
                                          r".*complete:\ncould not connect"):
        ollama_create(res, None)
    assert Path(f"{record}.args").read_text().split() == ["create", "m", "-f", "Modelfile"]
    assert res.ollama_model is None


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from fastft.core.config import TrainConfig
    from fastft.train.trainer import train

    runs = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(data=str(EXAMPLE), model="tiny", runs_dir=str(runs), name=RUN_NAME,
                      load_in_4bit=False, max_seq_len=128, max_steps=1, batch_size=4, grad_accum=1)
    return train(cfg).run_dir


@pytest.mark.slow
def test_export_create_and_json(run_dir, tmp_path, monkeypatch):
    """A real export (q6_k and q4_k, which is q4_k_m) of a run with a timestamped name: the
    default name drops the stamp, ollama is called in the finished folder, --json is all of stdout."""
    record = stand_in_ollama(tmp_path / "bin")
    on_path(monkeypatch, tmp_path / "bin")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", str(run_dir), "--gguf", "q6_k", "--gguf", "q4_k",
                                       "--create", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    folder = tmp_path / "exports" / "favorite_color"
    assert out["name"] == "favorite_color" and out["out_dir"] == str(folder)
    assert out["ollama_model"] == "favorite_color"
    assert Path(f"{record}.args").read_text().split() == ["create", "favorite_color", "-f",
                                                          "Modelfile"]
    assert Path(f"{record}.cwd").read_text().strip() == str(folder)
    files = Path(f"{record}.files").read_text().split()   # ollama ran after the commit
    assert {"Modelfile", "favorite_color.Q6_K.gguf", "favorite_color.Q4_K_M.gguf"} <= set(files)
    for quant, name in (("q6_k", "Q6_K"), ("q4_k_m", "Q4_K_M")):
        gguf = out["ggufs"][quant]
        assert gguf["path"] == str(folder / f"favorite_color.{name}.gguf")
        assert gguf["bytes"] == (folder / f"favorite_color.{name}.gguf").stat().st_size
    assert out["manifest"]["quants"] == ["q6_k", "q4_k_m"]
    # the libraries' output is in the log: here llama.cpp's converter (GGUF only: the direct
    # path, whose child writes the 16-bit GGUF)
    assert out["path"] == "direct" and out["manifest"]["path"] == "direct"
    assert Path(out["log"]) == run_dir / "export.log" and "hf-to-gguf" in Path(out["log"]).read_text()
    assert "FROM ./favorite_color.Q6_K.gguf" in (folder / "Modelfile").read_text()
