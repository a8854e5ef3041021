"""`--merged` through the direct path (fastft.export.direct, fastft.export.checkpoint) against
the older path (--no-direct: Unsloth's save_pretrained_merged, then convert_hf_to_gguf.py), on
the tiny model (CPU): the same merged folder, byte for byte, and the same GGUF.

The exports are made once per session (conftest's `built_once`: one pytest-xdist worker makes
them, the others read them from disk).
"""

import io
import json
import shutil
from pathlib import Path

import pytest

from conftest import built_once, write_run
from fastft.core.cache import sha256_file
from fastft.export.checkpoint import (INDEX, MergedCheckpoint, checkpoint_problem,
                                      write_folder_files, write_rest)
from fastft.export.direct import Job, MergeSource
from fastft.export.manifest import MANIFEST, ExportManifest
from fastft.export.pipeline import ExportOptions, export_run
from test_export import argv, record_processes

NAME = "fastft-tiny"
# Written by both paths from the same sources; config.json is compared on its own (see below).
CONFIG = "merged/config.json"


def export(run_dir, out: Path, quants, direct: bool) -> tuple[str, list[list[str]]]:
    """The export into `out`: what it printed and the argv of every process it started."""
    from rich.console import Console

    said = io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        started = record_processes(mp)
        export_run(ExportOptions(run=str(run_dir), gguf=quants, merged=True, out=str(out),
                                 name=NAME, check=False, direct=direct), Console(file=said, width=300))
    return said.getvalue(), [argv(p) for p in started]


@pytest.fixture(scope="module")
def exports(color_run, tmp_path_factory) -> Path:
    """old/ (--no-direct), new/ (direct) with --merged --gguf q8_0, alone/ (direct, --merged
    without GGUF), each with said.txt and procs.json beside it."""
    def build(root: Path) -> None:
        for name, quants, direct in [("old", ("q8_0",), False), ("new", ("q8_0",), True),
                                     ("alone", (), True)]:
            said, procs = export(color_run.run_dir, root / name, quants, direct)
            (root / f"{name}-said.txt").write_text(said)
            (root / f"{name}-procs.json").write_text(json.dumps(procs))

    from fastft.export.llamacpp import ensure_llama_cpp

    ensure_llama_cpp()
    return built_once(tmp_path_factory, "merged-direct", build)


def manifest(exports: Path, name: str) -> ExportManifest:
    return ExportManifest.read(exports / name)


def merged_files(m: ExportManifest) -> dict[str, str]:
    return {k: v.sha256 for k, v in m.files.items() if k.startswith("merged/")}


@pytest.mark.slow
def test_merged_folder_and_gguf_equal_the_older_paths(exports):
    """Every file of merged/ (safetensors, tokenizer, generation_config.json) and the GGUF hash
    the same on both paths; the manifest says which path ran."""
    old, new = manifest(exports, "old"), manifest(exports, "new")
    assert (old.path, new.path) == ("detour", "direct")
    assert old.merged and new.merged
    assert sorted(new.files) == sorted(old.files)
    assert any(k.endswith(".safetensors") for k in merged_files(new))
    differ = {k for k in old.files if old.files[k].sha256 != new.files[k].sha256}
    # The README and Modelfile do not depend on the path; the manifest is not in its own list.
    assert differ <= {CONFIG}, differ
    assert old.files[f"{NAME}.Q8_0.gguf"] == new.files[f"{NAME}.Q8_0.gguf"]


@pytest.mark.slow
def test_config_is_the_bases_as_transformers_saves_it(exports, color_run, tmp_path):
    """config.json: the base's, saved by transformers (as unsloth_zoo's GPU merge writes it).
    Unsloth's CPU merge, the older path here, saves the training-time config instead, whose
    only difference is use_cache (False while training)."""
    from transformers import AutoConfig

    new = json.loads((exports / "new" / CONFIG).read_text())
    old = json.loads((exports / "old" / CONFIG).read_text())
    assert {k for k in new if new[k] != old.get(k)} == {"use_cache"} and new["use_cache"]
    AutoConfig.from_pretrained(color_run.record.plan.model_path).save_pretrained(tmp_path)
    assert (exports / "new" / CONFIG).read_bytes() == (tmp_path / "config.json").read_bytes()


@pytest.mark.slow
def test_the_manifest_lists_and_hashes_the_merged_files(exports):
    out = exports / "new"
    listed = manifest(exports, "new").files
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(listed) == on_disk and any(k.startswith("merged/") for k in listed)
    for rel, entry in listed.items():
        assert (sha256_file(out / rel), (out / rel).stat().st_size) == (entry.sha256, entry.bytes)
    assert [p.name for p in exports.glob(".tmp-*")] == []       # the staging folder is gone


@pytest.mark.slow
def test_one_child_merges_for_both_and_no_converter_script_runs(exports):
    """One direct child writes the GGUF and merged/; Unsloth's merge and convert_hf_to_gguf.py
    never run (the older path's: one merge, one converter process)."""
    new = json.loads((exports / "new-procs.json").read_text())
    old = json.loads((exports / "old-procs.json").read_text())
    [child] = [p for p in new if p[1:3] == ["-m", "fastft.export.direct"]]
    # merged/ in the staging folder (renamed into place at commit), the BF16 GGUF in scratch
    job = Job.from_argv(child[3:])
    assert job.merged.name == "merged" and job.merged.parent.name == "out"
    assert job.outfile.name == f"{NAME}.BF16.gguf"
    assert not any(Path(a).name == "convert_hf_to_gguf.py" for p in new for a in p[:2])
    assert any(Path(a).name == "convert_hf_to_gguf.py" for p in old for a in p[:2])
    timings = manifest(exports, "new").timings
    assert "merge_s" not in timings and "convert_s" in timings      # no Unsloth merge stage
    assert "merge_s" in manifest(exports, "old").timings


@pytest.mark.slow
def test_merged_alone_is_the_same_folder_and_loads(exports):
    """--merged without GGUF: the child writes the same folder; nothing is loaded in this
    process, no llama.cpp runs; transformers loads the folder, every weight in place."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    alone = manifest(exports, "alone")
    assert alone.path == "direct" and alone.quants == [] and alone.converted_from is None
    expected = merged_files(manifest(exports, "new"))
    assert merged_files(alone) == expected
    assert "load_s" not in alone.timings and "merge_s" in alone.timings
    procs = json.loads((exports / "alone-procs.json").read_text())
    assert [p[2] for p in procs if p[1] == "-m"] == ["fastft.export.direct"]
    folder = exports / "alone" / "merged"
    model, info = AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info.values()), info                 # nothing missing, unexpected or mismatched
    stored = load_file(folder / "model.safetensors")
    params = dict(model.named_parameters())
    for name, tensor in stored.items():
        assert torch.equal(params[name].data, tensor), name


@pytest.mark.slow
def test_a_base_it_cannot_copy_exactly_takes_the_older_path(color_run, tmp_path):
    """A base folder with a safetensors file beside its weights (which Unsloth's merge on a GPU
    would copy too): the child declines, one line says why, and the older path writes merged/."""
    base = tmp_path / "base"
    shutil.copytree(color_run.record.plan.model_path, base)
    shutil.copyfile(base / "model.safetensors", base / "extra.safetensors")
    run = write_run(tmp_path / "run", model_path=str(base), max_seq_len=64)
    shutil.copytree(color_run.run_dir / "adapter", run / "adapter")
    said, procs = export(run, tmp_path / "out", (), direct=True)
    notes = [line for line in said.splitlines() if line.startswith("note:")]
    assert notes == ["note: merging through Unsloth into merged/: the base folder holds "
                     "extra.safetensors, which is not one of its weight files"]
    m = ExportManifest.read(tmp_path / "out")
    assert m.path == "detour" and "merge_s" in m.timings
    assert sorted(p.name for p in (tmp_path / "out" / "merged").iterdir()) == sorted(
        k.removeprefix("merged/") for k in merged_files(m))


# -- the checkpoint writer, on small hand-made checkpoints ------------------------------------------

def safetensors_bytes(tensors: dict, order: list[str], pad: int = 0, metadata=None) -> bytes:
    """A safetensors file with its header in `order` (not the writer's sorted one) and `pad`
    spaces after it: what another writer may have made, which the merged copy must keep."""
    import torch

    header, data, offset = {}, b"", 0
    if metadata:
        header["__metadata__"] = metadata
    for name in order:
        raw = tensors[name].contiguous().view(torch.uint8).numpy().tobytes()
        dtype = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}[tensors[name].dtype]
        header[name] = {"dtype": dtype, "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(raw)]}
        data, offset = data + raw, offset + len(raw)
    text = json.dumps(header).encode() + b" " * pad
    return len(text).to_bytes(8, "little") + text + data


@pytest.fixture
def sharded_base(tmp_path) -> Path:
    """Two shards and their index, headers in an order of their own, bf16 and f32."""
    import torch

    gen = torch.Generator().manual_seed(0)
    w = lambda *s, dtype=torch.bfloat16: torch.randn(*s, generator=gen).to(dtype)  # noqa: E731
    shards = {"model-00001-of-00002.safetensors": {"a.weight": w(8, 4),
                                                   "n.weight": w(4, dtype=torch.float32)},
              "model-00002-of-00002.safetensors": {"b.weight": w(6, 8), "c.weight": w(3, 6)}}
    base = tmp_path / "base"
    base.mkdir()
    weight_map = {}
    for part, tensors in shards.items():
        order = sorted(tensors, reverse=True)
        (base / part).write_bytes(safetensors_bytes(tensors, order, pad=5, metadata={"format": "pt"}))
        weight_map |= dict.fromkeys(tensors, part)
    (base / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return base


def write_merged(base: Path, out: Path, lora: dict) -> None:
    parts = sorted(p.name for p in base.glob("*.safetensors"))
    source = MergeSource(base, parts, lora, 2.0, "cpu")
    out.mkdir()
    source.sink = MergedCheckpoint(out, base, parts)
    try:
        source.tensor("b.weight", source.sink.stored["b.weight"])   # as the GGUF writer would
        write_rest(source)
    finally:
        source.sink.close()


def test_the_checkpoint_keeps_the_bases_layout_byte_for_byte(sharded_base, tmp_path):
    """Without an adapted tensor the merged files are the base's files, headers and all."""
    write_merged(sharded_base, tmp_path / "out", {})
    for part in sharded_base.glob("*.safetensors"):
        assert (tmp_path / "out" / part.name).read_bytes() == part.read_bytes(), part.name


def test_adapted_tensors_are_merged_in_place(sharded_base, tmp_path):
    """An adapted weight gets W + scaling·B·A (float32, back to its dtype) at its own offset;
    every other byte stays the base's."""
    import torch
    from safetensors.torch import load_file

    a, b = torch.randn(2, 8), torch.randn(6, 2)
    write_merged(sharded_base, tmp_path / "out", {"b.weight": (a, b)})
    part = "model-00002-of-00002.safetensors"
    got, base = load_file(tmp_path / "out" / part), load_file(sharded_base / part)
    assert torch.equal(got["b.weight"], (base["b.weight"].float() + 2.0 * b @ a).to(torch.bfloat16))
    assert torch.equal(got["c.weight"], base["c.weight"])
    assert not torch.equal(got["b.weight"], base["b.weight"])
    first = "model-00001-of-00002.safetensors"
    assert (tmp_path / "out" / first).read_bytes() == (sharded_base / first).read_bytes()
    assert len((tmp_path / "out" / part).read_bytes()) == len((sharded_base / part).read_bytes())


def test_the_folder_files_come_with_the_index(sharded_base, tiny_path, tmp_path):
    """Several shards: the base's index, byte for byte; the config as transformers saves it."""
    for name in ("config.json", "generation_config.json"):
        shutil.copyfile(tiny_path / name, sharded_base / name)

    class Tokenizer:
        def save_pretrained(self, folder):
            Path(folder, "tokenizer.json").write_text("{}")

    write_folder_files(tmp_path / "merged", sharded_base, ["model-00001-of-00002.safetensors",
                                                           "model-00002-of-00002.safetensors"],
                       Tokenizer())
    assert (tmp_path / "merged" / INDEX).read_bytes() == (sharded_base / INDEX).read_bytes()
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == [
        "config.json", "generation_config.json", INDEX, "tokenizer.json"]


@pytest.mark.parametrize("change, why", [
    ("gap", "model-00001-of-00002.safetensors has bytes between its tensors"),
    ("tail", "model-00001-of-00002.safetensors has bytes after its last tensor"),
    ("stray", "the base folder holds stray.safetensors, which is not one of its weight files"),
    ("auto_map", "the base's config.json has auto_map"),
    ("quantization_config", "the base's config.json has quantization_config"),
])
def test_what_the_checkpoint_cannot_copy_exactly_is_named(sharded_base, tiny_path, change, why):
    shutil.copyfile(tiny_path / "config.json", sharded_base / "config.json")
    parts = sorted(p.name for p in sharded_base.glob("*.safetensors"))
    assert checkpoint_problem(sharded_base, parts) is None
    first = sharded_base / parts[0]
    if change == "gap":
        head_len = 8 + int.from_bytes(first.read_bytes()[:8], "little")
        header = json.loads(first.read_bytes()[8:head_len])
        header["a.weight"]["data_offsets"] = [o + 2 for o in header["a.weight"]["data_offsets"]]
        text = json.dumps(header).encode()
        first.write_bytes(len(text).to_bytes(8, "little") + text + first.read_bytes()[head_len:] + b"xx")
    elif change == "tail":
        first.write_bytes(first.read_bytes() + b"\0")
    elif change == "stray":
        shutil.copyfile(first, sharded_base / "stray.safetensors")
    else:
        config = json.loads((sharded_base / "config.json").read_text())
        (sharded_base / "config.json").write_text(json.dumps(config | {change: {}}))
    assert checkpoint_problem(sharded_base, parts) == why


@pytest.mark.slow
def test_a_child_that_declines_late_leaves_no_merged_folder(color_run, tmp_path):
    """The converter is checked after merged/ got its config and tokenizer: a child declining
    then removes the folder, which the older path writes next."""
    from fastft.export.direct import DECLINED, main
    from fastft.export.llamacpp import ensure_llama_cpp
    from test_export_direct import fake_llama_cpp

    root = fake_llama_cpp(ensure_llama_cpp().root, tmp_path / "llama.cpp",
                          "def index_tensors(self, remote_hf_model_id: str | None = None)",
                          "def index_tensors(self, remote_hf_model_id: str | None = None, "
                          "parts=None)")
    stage = tmp_path / "out"
    stage.mkdir()
    job = Job(color_run.adapter_dir, color_run.model_path, root, tmp_path / "work",
              stage / f"{NAME}.BF16.gguf", "bf16", NAME, stage / "merged")
    assert main(job.argv()) == DECLINED
    assert job.reason_file.read_text() == "ModelBase.index_tensors takes other arguments\n"
    assert list(stage.iterdir()) == []
