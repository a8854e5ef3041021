"""The direct GGUF export (fastft.export.direct) against the older path, on the tiny model (CPU).

The same run is exported both ways (--no-direct: through a merged 16-bit checkpoint on disk);
the GGUF files must hold the same tensors (names, shapes, types, bytes) and the same metadata.
"""

import filecmp
import io
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import private_run
from fastft.export.direct import merge_source
from fastft.export.gguf import read_gguf_metadata
from fastft.export.manifest import ExportManifest
from fastft.export.pipeline import ExportOptions, export_run, read_run
from test_export import argv, detour_16bit, record_processes  # noqa: F401  (detour_16bit: shared)

NAME = "fastft-tiny"


@pytest.fixture(scope="module")
def run_dir(color_run):
    return color_run.run_dir


@pytest.fixture(scope="module")
def llama():
    from fastft.export.llamacpp import ensure_llama_cpp

    return ensure_llama_cpp()


def export(run_dir, out: Path, quants, direct: bool, console_file=None):
    """The export and the argv of every process it started."""
    from rich.console import Console

    console = Console(file=console_file or io.StringIO(), width=200)
    with pytest.MonkeyPatch.context() as mp:
        started = record_processes(mp)
        res = export_run(ExportOptions(run=str(run_dir), gguf=quants, out=str(out), name=NAME,
                                       check=False, direct=direct), console)
    return res, [argv(p) for p in started]


WHAT_WAS_IMPORTED = """import runpy, sys
sys.argv = ["fastft", *sys.argv[1:]]
try:
    runpy.run_module("fastft.cli", run_name="__main__")
finally:
    print("imported:", " ".join(m for m in ("unsloth", "transformers") if m in sys.modules))
"""


@pytest.fixture(scope="module")
def fresh(run_dir, llama, tmp_path_factory) -> dict:
    """Exports by a fresh `fastft export --json` process each: path -> (the libraries it had
    imported when it ended, its result as printed). The direct one (q8_0) is also the peak-disk
    test's; the older path's (--merged alone: Unsloth's load and merge, no converter) is also
    the merged checkpoint the older path's F16 GGUF is converted from (`both`): a fresh
    process costs ~9 s here in imports alone, so each is made once, not once for each test."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("fresh")
    made = {}
    for path, flags in [("direct", ["--gguf", "q8_0"]), ("detour", ["--merged", "--no-direct"])]:
        out = subprocess.run([sys.executable, "-c", WHAT_WAS_IMPORTED, "export", str(run_dir),
                              "--no-check", "--out", str(root / path), "--name", NAME, "--json",
                              *flags], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        printed, imported = out.stdout.rstrip("\n").rsplit("\n", 1)
        made[path] = imported, json.loads(printed)
    return made


def printed_result(printed: dict) -> SimpleNamespace:
    """The parts of an ExportResult the tests below read, from what `--json` printed of it."""
    return SimpleNamespace(path=printed["path"], timings=printed["timings"],
                           out_dir=Path(printed["out_dir"]),
                           run_dir=Path(printed["run"]), peak_disk_bytes=printed["peak_disk_bytes"],
                           ggufs={q: Path(g["path"]) for q, g in printed["ggufs"].items()})


def older_f16(printed: dict, llama, folder: Path) -> SimpleNamespace:
    """The older path's `--gguf f16`, from the merged checkpoint an older-path export wrote
    (`printed`, with --merged): what that path does after its merge, llama.cpp's converter on
    that folder to F16, named from the start (fastft.export.pipeline._convert)."""
    from fastft.export.llamacpp import convert_to_gguf

    assert printed["path"] == "detour" and printed["merged_dir"]
    folder.mkdir()
    gguf = folder / f"{NAME}.F16.gguf"
    convert_to_gguf(llama, Path(printed["merged_dir"]), gguf, "f16", NAME, folder / "convert.log")
    return SimpleNamespace(path=printed["path"], ggufs={"f16": gguf})


@pytest.fixture(scope="module")
def both(run_dir, llama, fresh, detour_16bit, tmp_path_factory):
    """quants -> (older result, direct result, processes the direct export started). The older
    path's bf16 and q8_0 are test_export.py's (`detour_16bit`, the same export, made once per
    session); its f16 is converted from `fresh`'s older-path merge (`older_f16`)."""
    root = tmp_path_factory.mktemp("direct")
    out = {}
    for quants in (("bf16", "q8_0"), ("f16",)):
        tag = "-".join(quants)
        if quants == ("bf16", "q8_0"):
            old = printed_result(detour_16bit[0])
        else:
            old = older_f16(fresh["detour"][1], llama, root / f"old-{tag}")
        new, procs = export(run_dir, root / f"new-{tag}", quants, direct=True)
        out[quants] = old, new, procs
    return out


def read_gguf(path: Path) -> tuple[dict, list]:
    """(metadata key -> (types, raw value bytes), [(tensor name, shape, type, data bytes)])."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    kv = {f.name: (f.types, [bytes(f.parts[i]) for i in f.data])
          for f in reader.fields.values() if not f.name.startswith("GGUF.")}
    return kv, [(t.name, tuple(t.shape), t.tensor_type, bytes(t.data)) for t in reader.tensors]


@pytest.mark.slow
@pytest.mark.parametrize("quants", [("bf16", "q8_0"), ("f16",)])
def test_direct_gguf_equals_the_older_paths(both, quants):
    """Same tensors (bytes) and metadata as through the merged checkpoint, for 16-bit and q8_0."""
    old, new, _ = both[quants]
    assert (old.path, new.path) == ("detour", "direct")
    assert set(old.ggufs) == set(new.ggufs) == set(quants)
    if "q8_0" in quants:       # no GPU here: llama-quantize made it, and the manifest says so
        from fastft.export.manifest import ExportManifest

        for result in (old, new):
            made = ExportManifest.read(result.out_dir).quantized_by
            assert made == {result.ggufs["q8_0"].name: "llama-quantize"}
    for quant in quants:
        assert read_gguf_metadata(new.ggufs[quant])["general.name"] == NAME
        # Equal files hold the same tensors and metadata: compared field by field only if they
        # differ, to say where (GGUFReader takes ~8 s a file here, parsing the vocabulary).
        if filecmp.cmp(old.ggufs[quant], new.ggufs[quant], shallow=False):
            continue
        old_kv, old_tensors = read_gguf(old.ggufs[quant])
        new_kv, new_tensors = read_gguf(new.ggufs[quant])
        assert [t[:3] for t in new_tensors] == [t[:3] for t in old_tensors], quant
        for a, b in zip(old_tensors, new_tensors):
            assert a[3] == b[3], (quant, a[0])            # bit for bit: the same merge
        assert new_kv == old_kv, quant


@pytest.mark.slow
def test_direct_writes_no_checkpoint_and_runs_no_converter_script(both):
    """One child process does merge + convert; no convert_hf_to_gguf.py, no Unsloth merge."""
    old, new, procs = both[("bf16", "q8_0")]
    assert not any(Path(a).name == "convert_hf_to_gguf.py" for p in procs for a in p[:2])
    assert [p[2:4] for p in procs if p[1:3] == ["-m", "fastft.export.direct"]] == [
        ["fastft.export.direct", str(new.run_dir / "adapter")]]
    # Loaded and merged only in the child, which also measures the gate's 16-bit side: here
    # only the held-out tokens are made for it (reference)
    assert not {"merge_s", "load_s"} & set(new.timings)
    assert {"reference_s", "convert_s"} <= set(new.timings)
    assert {"load_s", "merge_s", "convert_s"} <= set(old.timings)


@pytest.mark.slow
def test_peak_disk_is_measured_and_bounded(both, fresh, run_dir):
    """GGUF only: at most 1.2x the final files plus one 16-bit GGUF; the older path held the
    merged checkpoint and the GGUF at once. `--json` prints it, as the manifest records it."""
    printed = fresh["direct"][1]                 # q8_0 alone: the BF16 in scratch
    new = printed_result(printed)
    final = sum(p.stat().st_size for p in new.ggufs.values())
    bf16 = both[("bf16", "q8_0")][1].ggufs["bf16"].stat().st_size
    assert new.path == "direct"
    assert final + bf16 <= new.peak_disk_bytes <= 1.2 * final + bf16
    old = both[("bf16", "q8_0")][0]
    checkpoint = sum(p.stat().st_size for p in Path(read_run(run_dir).model_path).glob(
        "*.safetensors"))                        # the merged one is as large as the base
    assert old.peak_disk_bytes >= checkpoint + bf16
    assert new.peak_disk_bytes == printed["manifest"]["peak_disk_bytes"] == ExportManifest.read(
        Path(printed["out_dir"])).peak_disk_bytes


def fake_llama_cpp(real: Path, root: Path, old: str, new: str) -> Path:
    """llama.cpp's tools and converter at `root`, with `old` replaced by `new` in its
    conversion/base.py: a converter that is not the one fastft.export.direct was written for."""
    root.mkdir()
    for name in ("convert_hf_to_gguf.py", "gguf-py", "llama-quantize", "llama-simple"):
        (root / name).symlink_to((real / name).resolve())
    shutil.copytree(real / "conversion", root / "conversion",
                    ignore=shutil.ignore_patterns("__pycache__"))
    base = root / "conversion" / "base.py"
    text = base.read_text()
    assert text.count(old) == 1
    base.write_text(text.replace(old, new))
    return root


@pytest.mark.slow
def test_an_unexpected_converter_falls_back_and_says_so(run_dir, llama, tmp_path, monkeypatch):
    root = fake_llama_cpp(llama.root, tmp_path / "llama.cpp",
                          "def index_tensors(self, remote_hf_model_id: str | None = None)",
                          "def index_tensors(self, remote_hf_model_id: str | None = None, "
                          "parts=None)")
    monkeypatch.setenv("UNSLOTH_LLAMA_CPP_PATH", str(root))
    said = io.StringIO()
    res, procs = export(run_dir, tmp_path / "out", ("q8_0",), direct=True, console_file=said)
    notes = [line for line in said.getvalue().splitlines() if line.startswith("note:")]
    assert notes == ["note: exporting through a 16-bit checkpoint on disk: "
                     "ModelBase.index_tensors takes other arguments"]
    assert res.path == "detour" and res.ggufs["q8_0"].is_file()
    assert any(Path(a).name == "convert_hf_to_gguf.py" for p in procs for a in p[:2])


# What unsloth_zoo 2026.10.9's save_pretrained_gguf (`_apply_branding_patch_to_base`) inserts
# after the metadata's load in the conversion/base.py of the llama.cpp it exports with.
METADATA_LOAD = ("        self.metadata = gguf.Metadata.load(self.metadata_override, "
                 "self.dir_model_card, self.model_name, total_params)\n")
UNSLOTH_BRANDING = (
    "        # UNSLOTH_BRANDING_APPLIED\n"
    "        if hasattr(self.metadata, 'quantized_by'): self.metadata.quantized_by = 'Unsloth'\n"
    "        if hasattr(self.metadata, 'repo_url'): self.metadata.repo_url = "
    "'https://huggingface.co/unsloth'\n"
    "        if hasattr(self.metadata, 'tags'): self.metadata.tags = ['unsloth', 'llama.cpp']\n")


@pytest.mark.slow
def test_a_converter_unsloth_branded_is_named_in_the_exports_warnings(run_dir, llama, fresh,
                                                                     tmp_path, monkeypatch):
    """A llama.cpp that Unsloth's save_pretrained_gguf has exported with carries its branding
    patch: the GGUFs it converts say Unsloth quantized them. fastft converts with it all the
    same (it is the user's UNSLOTH_LLAMA_CPP_PATH) and says so in the export's warnings, with
    the way out; `fastft doctor` warns too. fastft's own llama.cpp (the session's direct
    export, `fresh`): no branding, no warning."""
    from fastft import doctor

    root = fake_llama_cpp(llama.root, tmp_path / "llama.cpp", METADATA_LOAD,
                          METADATA_LOAD + UNSLOTH_BRANDING)
    monkeypatch.setenv("UNSLOTH_LLAMA_CPP_PATH", str(root))
    res, _ = export(run_dir, tmp_path / "out", ("q8_0",), direct=True)
    assert res.path == "direct"
    meta = read_gguf_metadata(res.ggufs["q8_0"])
    assert meta["general.quantized_by"] == "Unsloth"
    (note,) = [w for w in res.warnings if "Unsloth" in w]
    assert f"Unsloth has patched the converter in {root}" in note
    assert "unset UNSLOTH_LLAMA_CPP_PATH" in note
    row = doctor._llama_cpp()
    assert row.status == "warn" and "patched by Unsloth" in row.value
    assert row.hint.startswith("the GGUFs it writes name Unsloth") and "unset" in row.hint
    _, plain = fresh["direct"]
    assert "general.quantized_by" not in read_gguf_metadata(plain["ggufs"]["q8_0"]["path"])
    assert not [w for w in plain["warnings"] if "Unsloth" in w] and not llama.branded_by_unsloth
    monkeypatch.setenv("UNSLOTH_LLAMA_CPP_PATH", str(llama.root))
    assert doctor._llama_cpp().status == "ok"


def test_an_adapter_beyond_a_plain_merge_is_declined(run_dir, tmp_path):
    """DoRA, trained biases, extra saved modules: not W + scaling·B·A, so the older path."""
    cases = {"use_dora": True, "modules_to_save": ["lm_head"], "bias": "all"}
    for key, value in cases.items():
        adapter = tmp_path / key
        shutil.copytree(run_dir / "adapter", adapter)
        cfg = json.loads((adapter / "adapter_config.json").read_text())
        cfg[key] = value
        (adapter / "adapter_config.json").write_text(json.dumps(cfg))
        model = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
        why = merge_source(adapter, model)
        assert isinstance(why, str) and (key in why or str(value) in why), (key, why)
    # LoRA on a weight the base does not store (the tiny model ties lm_head to the embeddings)
    import torch
    from safetensors.torch import load_file, save_file

    adapter = tmp_path / "lm_head"
    shutil.copytree(run_dir / "adapter", adapter)
    tensors = load_file(adapter / "adapter_model.safetensors")
    for kind in "AB":
        tensors[f"base_model.model.lm_head.lora_{kind}.weight"] = torch.zeros(4, 4)
    save_file(tensors, adapter / "adapter_model.safetensors")
    assert merge_source(adapter, model) == ("the adapter adapts lm_head.weight, which the base's "
                                            "safetensors do not hold")
    plain = merge_source(run_dir / "adapter", cfg["base_model_name_or_path"])
    assert not isinstance(plain, str) and plain.scaling == cfg["lora_alpha"] / cfg["r"]
    from safetensors import safe_open

    with safe_open(str(run_dir / "adapter" / "adapter_model.safetensors"), "pt") as f:
        assert len(plain.lora) * 2 == len(list(f.keys()))     # every A and B, paired


@pytest.mark.slow
def test_ctrl_c_in_the_direct_child_leaves_nothing(run_dir, llama, tmp_path):
    """Ctrl-C (SIGINT to the group) while the direct child merges and writes: exit 130, no
    scratch folder, no output. (SIGKILL of fastft alone: tests/test_faults.py.)"""
    import signal

    from test_faults import run_killed

    exports = tmp_path / "exports"
    killed = run_killed(["export", str(run_dir), "--gguf", "q8_0", "--out", str(exports / "m"),
                         "--name", "m", "--no-check"], "direct:SIGINT", tmp_path)
    assert killed.returncode == 128 + signal.SIGINT, killed.stderr[-3000:]
    assert list(exports.iterdir()) == []


@pytest.mark.slow
def test_the_direct_path_never_imports_unsloth(fresh):
    """The gate's 16-bit side is scored with transformers and peft while the child writes:
    Unsloth's import and patching (30 s of the export's 41 s load on an H200) is not paid.
    The older path (--no-direct) still loads through Unsloth."""
    assert fresh["direct"][0] == "imported: transformers"
    assert fresh["detour"][0] == "imported: unsloth transformers"


def test_bf16_by_torch_writes_ggufs_own_rounding(llama, monkeypatch):
    """The converter's BF16 rounding done by torch's cast (direct.bf16_by_torch) gives the bytes
    gguf's numpy rounding gives: random bit patterns of every exponent, exact ties (to even),
    the infinities, zeros and subnormals; an array with a NaN goes gguf's own way; the block
    puts gguf's function back."""
    import numpy as np

    from fastft.export import direct

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    bits[::5] = (bits[::5] & 0xFFFF0000) | 0x8000                     # ties, even and odd
    bits[1::5] = (bits[1::5] & 0xFFFF0000) | rng.choice([0x7FFF, 0x8001], bits[1::5].size)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    bits[nan] ^= 0x40000000                                            # no NaN here
    bits[:10] = [0x7F800000, 0xFF800000, 0, 0x80000000, 1, 0x807FFFFF, 0x7F7FFFFF, 0x7F7F8000,
                 0x3F808000, 0x3F818000]
    finite = bits.view(np.float32).reshape(-1, 256)
    with_nan = finite.copy()
    with_nan[3, 7] = np.nan
    used = []
    real = direct.bf16_bytes
    monkeypatch.setattr(direct, "bf16_bytes", lambda a: used.append(a.shape) or real(a))
    with direct.llama_cpp_modules(llama.root) as (_, gguf):
        bf16 = gguf.GGMLQuantizationType.BF16
        grouped = gguf.quants._apply_over_grouped_rows
        numpy_way = [gguf.quants.quantize(a, bf16) for a in (finite, with_nan)]
        with direct.bf16_by_torch(gguf):
            torch_way = [gguf.quants.quantize(a, bf16) for a in (finite, with_nan)]
        assert gguf.quants._apply_over_grouped_rows is grouped
    assert used == [finite.shape, with_nan.shape]           # both offered to torch
    assert real(finite) is not None and real(with_nan) is None   # the NaN one declined
    for ours, theirs in zip(torch_way, numpy_way):
        assert ours.dtype == theirs.dtype == np.uint8 and ours.shape == theirs.shape
        assert np.array_equal(ours, theirs)


def test_the_fast_packing_writes_the_header_bytes_gguf_writes(llama):
    """gguf_vocab.packed_fast packs arrays of strings and of integers in one go, to the bytes
    gguf's writer packs item by item, in either byte order; every other value (an array of
    enum members, bools, floats, bytes, one item; a scalar) goes gguf's way, and a mixed array
    fails as gguf's does. The block puts gguf's method back."""
    import enum

    from fastft.export import direct, gguf_vocab

    class Kind(enum.IntEnum):
        NORMAL = 1
        CONTROL = 3

    with direct.llama_cpp_modules(llama.root) as (_, gguf):
        vt, own = gguf.GGUFValueType, gguf.GGUFWriter._pack_val
        values = [(["Ġthe", "é", "", "<|im_end|>", "日本"] * 50, vt.ARRAY, None),
                  (["a b", "c"], vt.ARRAY, vt.STRING), (list(range(-300, 300)), vt.ARRAY, None),
                  ([0, 2**31 - 1, -2**31], vt.ARRAY, vt.INT32), ([1, 2**40], vt.ARRAY, vt.UINT64),
                  ([5, 250], vt.ARRAY, vt.UINT8), ([Kind.NORMAL, Kind.CONTROL], vt.ARRAY, None),
                  ([True, False], vt.ARRAY, None), ([0.5, 1.25], vt.ARRAY, None),
                  ([b"x", b"yz"], vt.ARRAY, None), (["one"], vt.ARRAY, None),
                  ("qwen3", vt.STRING, None), (7, vt.UINT32, None)]
        for endian in (gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG):
            writer = gguf.GGUFWriter(None, "qwen3", endianess=endian)
            gguf_way = [writer._pack_val(v, t, True, sub) for v, t, sub in values]
            with gguf_vocab.packed_fast(gguf):
                assert gguf.GGUFWriter._pack_val is not own
                fast = [writer._pack_val(v, t, True, sub) for v, t, sub in values]
                with pytest.raises(ValueError, match="same type"):
                    writer._pack_val([1, True], vt.ARRAY, True)
            assert fast == gguf_way
        assert gguf.GGUFWriter._pack_val is own


def test_the_vocabulary_keys_are_named_by_the_tokenizer_files_and_the_converter(llama, tmp_path):
    """fastft.export.gguf_vocab's cache file: the same for the same files and converter, in
    any process (the modules are hashed in one order); another for a changed tokenizer file; the
    same whatever the weights."""
    import subprocess
    import sys

    from fastft.export import gguf_vocab
    from fastft.export.direct import llama_cpp_modules

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text('{"architectures": ["Qwen3ForCausalLM"]}')
    (folder / "tokenizer.json").write_text('{"model": {"vocab": {"a": 0}}}')

    def named() -> Path:
        with llama_cpp_modules(llama.root) as (conversion, gguf):
            cls = conversion.get_model_class("Qwen3ForCausalLM")
            return gguf_vocab._path(folder, gguf_vocab._sources(conversion, gguf, cls))

    first = named()
    assert first.parent.name == gguf_vocab.FOLDER and named() == first
    elsewhere = subprocess.run([sys.executable, "-c", (
        "import sys; from pathlib import Path; from fastft.export import gguf_vocab\n"
        "from fastft.export.direct import llama_cpp_modules\n"
        f"with llama_cpp_modules(Path({str(llama.root)!r})) as (c, g):\n"
        "    s = gguf_vocab._sources(c, g, c.get_model_class('Qwen3ForCausalLM'))\n"
        f"print(gguf_vocab._path(Path({str(folder)!r}), s))")],
        capture_output=True, text=True, timeout=300)
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert elsewhere.stdout.strip() == str(first)
    (folder / "model.safetensors").write_bytes(b"weights")
    assert named() == first
    (folder / "tokenizer.json").write_text('{"model": {"vocab": {"b": 0}}}')
    assert named() != first


@pytest.mark.slow
def test_a_second_export_replays_the_vocabulary_and_writes_the_same_file(color_run, llama, tmp_path,
                                                                         monkeypatch):
    """The first direct export remembers the converter's vocabulary keys in fastft's cache, the
    second replays them (the child's log says so) and writes the same GGUF, byte for byte. On a
    copy of the run (conftest.private_run): the test reads its export.log."""
    run_dir = private_run(color_run, tmp_path).run_dir
    cache = tmp_path / "cache"
    monkeypatch.setenv("FASTFT_CACHE", str(cache))              # an empty cache of the keys ...
    monkeypatch.setenv("UNSLOTH_LLAMA_CPP_PATH", str(llama.root))   # ... and the built llama.cpp
    log = read_run(run_dir).folder.export_log
    said = []
    for i in (1, 2):
        res, _ = export(run_dir, tmp_path / f"out{i}", ("bf16",), direct=True)
        assert res.path == "direct"
        said.append([line for line in log.read_text(errors="replace").splitlines()
                     if "fastft: the vocabulary's" in line][-1])
    assert " remembered in " in said[0] and " replayed from " in said[1], said
    # where the child's time went, for bench/ttfc.py's runs: what it copied, each input of the
    # vocabulary's key, its stages and its exit
    text = log.read_text(errors="replace")
    assert "fastft: the run's tokenizer files copied: tokenizer.json, tokenizer_config.json" in text
    assert "fastft: the vocabulary's key from the converter " in text and " tokenizer.json " in text
    assert re.search(r"fastft: the direct child's stages: prepare [\d.]+s, write [\d.]+s(, \w+ [\d.]+s)*; "
                     r"it exited [\d.]+s after writing its result", text), text[-2000:]
    assert [p.name for p in (cache / "gguf-vocab").iterdir()] == [said[0].rsplit("/", 1)[1]]
    assert filecmp.cmp(tmp_path / "out1" / f"{NAME}.BF16.gguf", tmp_path / "out2" / f"{NAME}.BF16.gguf",
                       shallow=False)


def test_the_vocabulary_cache_keeps_the_newest_files_and_drops_a_killed_writers_temporary(tmp_path):
    """gguf_vocab._prune: the KEEP files used last stay, older ones go; a temporary older than
    STALE_S (its writer was killed before the rename) goes, a fresh one (a writer at work) stays."""
    import os
    import time

    from fastft.export import gguf_vocab

    now = time.time()
    names = [f"{i}.json" for i in range(gguf_vocab.KEEP + 2)]
    for age, name in enumerate(names):              # 0.json used last
        (tmp_path / name).write_text("[]")
        os.utime(tmp_path / name, (now - age, now - age))
    stale, fresh = tmp_path / ".6.json.tmp-999", tmp_path / ".7.json.tmp-998"
    for path, age in ((stale, gguf_vocab.STALE_S + 5), (fresh, 1)):
        path.write_text("[")
        os.utime(path, (now - age, now - age))
    gguf_vocab._prune(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(names[:gguf_vocab.KEEP] + [fresh.name])


def test_the_run_tokenizer_files_copied_are_what_loading_and_saving_writes(run_dir, tmp_path):
    """A GGUF-only direct export copies the run's tokenizer files into the converter's folder
    instead of loading and saving the tokenizer: the same files, byte for byte, but for
    tokenizer_config.json's `local_files_only`, which the converter does not read. A run folder
    with another tokenizer's files (a slow tokenizer's vocab.json) or without tokenizer.json is
    loaded and saved as before."""
    from transformers import AutoTokenizer

    from fastft.export.direct import run_tokenizer_files, write_config_folder

    adapter = read_run(run_dir).adapter_dir
    base = Path(json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"])
    files = run_tokenizer_files(adapter)
    assert files is not None and {p.name for p in files} >= {"tokenizer.json", "tokenizer_config.json"}
    write_config_folder(tmp_path / "copied", base, files)
    write_config_folder(tmp_path / "saved", base, AutoTokenizer.from_pretrained(str(adapter)))
    copied = sorted(p.name for p in (tmp_path / "copied").iterdir())
    assert copied == sorted(p.name for p in (tmp_path / "saved").iterdir())
    for name in copied:
        a, b = (tmp_path / "copied" / name).read_bytes(), (tmp_path / "saved" / name).read_bytes()
        if name == "tokenizer_config.json":
            a, b = json.loads(a), json.loads(b)
            assert {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} <= {"local_files_only"}
        else:
            assert a == b, name
    other = tmp_path / "other"
    shutil.copytree(adapter, other)
    (other / "vocab.json").write_text("{}")
    assert run_tokenizer_files(other) is None
    (other / "vocab.json").unlink()
    (other / "tokenizer.json").unlink()
    assert run_tokenizer_files(other) is None
