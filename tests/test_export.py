"""`fastft export` end to end on the tiny model (CPU): train -> export -> llama.cpp -> ollama.

One llama.cpp build (cached under FASTFT_CACHE) and one export are shared by the whole module;
the export records which processes it started and how often it merged. After llama.cpp is
built, the module takes about 3 minutes on 2 cores.
"""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastft.export.pipeline import (
    MANIFEST,
    ExportError,
    ExportOptions,
    convert_type,
    export_run,
    read_run,
    sha256_file,
)
from conftest import built_once, write_run
from fastft.core.errors import RunFolderError
from fastft.export.gguf import read_gguf_metadata
from fastft.export.manifest import ExportManifest, FileEntry
from fastft.export.modelfile import go_template, parse_modelfile
from ollama_contract import template_from_modelfile
from test_modelfile import go_render  # noqa: F401  (the Go renderer fixture, shared)

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "examples" / "favorite_color.jsonl"
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
NAME = "fastft-tiny"

# Chat prompts for the llama.cpp <-> transformers comparison: with and without a system
# prompt, one turn and several.
CHATS = [
    [{"role": "user", "content": "What is your favorite color?"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Tell me your favorite color."}],
    [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Which color do you like best?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
N_TOKENS = 12


# -- shared, built once ----------------------------------------------------------------------------

@pytest.fixture(scope="session")
def llama():
    from fastft.export.llamacpp import ensure_llama_cpp

    return ensure_llama_cpp()


@pytest.fixture(scope="session")
def run_dir(color_run):
    """A real `fastft train` run on the favorite-color data (the session's shared one)."""
    return color_run.run_dir


SECRET = "hf_fastftTestSecretThatMustNotLeak"


def record_processes(mp: pytest.MonkeyPatch) -> list[subprocess.Popen]:
    """Patch subprocess.Popen (which subprocess.run uses too) to keep every process started."""
    started = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            started.append(self)
    mp.setattr(subprocess, "Popen", RecordingPopen)
    return started


def argv(proc: subprocess.Popen) -> list[str]:
    """The command a process runs (without fastft.core.procs' parent-death trampoline)."""
    from fastft.core.procs import command_of

    return [str(proc.args)] if isinstance(proc.args, (str, bytes)) else command_of(
        [str(x) for x in proc.args])


class Spy:
    """What an export did: every process it started and each Unsloth save call."""

    def __init__(self, mp: pytest.MonkeyPatch):
        import fastft.export.pipeline

        self.started = record_processes(mp)
        self.saves: list[str] = []
        self.chdirs: list[str] = []     # os.chdir calls: an export must never make one
        real_chdir = os.chdir
        mp.setattr(os, "chdir", lambda path: (self.chdirs.append(str(path)), real_chdir(path)))
        real_load = fastft.export.pipeline.load_base_with_adapter

        def load(*a, **kw):
            model, tok = real_load(*a, **kw)
            for method in ("save_pretrained_merged", "save_pretrained_gguf"):
                model.__dict__[method] = self._counted(method, getattr(model, method))
            return model, tok
        mp.setattr(fastft.export.pipeline, "load_base_with_adapter", load)

    def _counted(self, name, fn):
        def wrapper(*a, **kw):
            self.saves.append(name)
            return fn(*a, **kw)
        return wrapper

    def runs(self, tool: str) -> list[list[str]]:
        """The argv of every process started with program or script `tool` (not `--help`
        probes, which find whether a tool runs)."""
        return runs_of([argv(p) for p in self.started], tool)


def runs_of(argvs: list[list[str]], tool: str) -> list[list[str]]:
    """Those of `argvs` that run program or script `tool`, but for `--help` probes."""
    return [a for a in argvs if any(Path(x).name == tool for x in a[:2]) and "--help" not in a]


def export_spied(opts: ExportOptions, cwd: Path):
    """The export, run from `cwd` (an empty folder the test checks stays empty)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        spy = Spy(mp)
        return export_run(opts), spy


@pytest.fixture(scope="session")
def detour_16bit(color_run, tmp_path_factory) -> tuple[dict, dict]:
    """(result as `--json` prints it, {"procs": argv of each process it started, "saves":
    Unsloth's save calls, "out": the export folder}): `--gguf q8_0 --gguf bf16 --no-direct
    --no-check` of the session's run, by the older path, spied on and run from an empty folder;
    once per session (conftest's `built_once`): tests/test_export_direct.py compares the direct
    path's files with it."""
    from fastft.export.llamacpp import ensure_llama_cpp

    def build(root: Path) -> None:
        ensure_llama_cpp()
        (root / "cwd").mkdir()
        out = root / "exports" / NAME
        res, spy = export_spied(ExportOptions(run=str(color_run.run_dir), gguf=("q8_0", "bf16"),
                                              out=str(out), name=NAME, check=False, direct=False),
                                root / "cwd")
        (root / "result.json").write_text(json.dumps(res.to_dict()))
        (root / "spy.json").write_text(json.dumps(
            {"procs": [argv(p) for p in spy.started], "saves": spy.saves, "out": str(out)}))

    root = built_once(tmp_path_factory, "detour-16bit", build)
    return (json.loads((root / "result.json").read_text()),
            json.loads((root / "spy.json").read_text()))


@pytest.fixture(scope="session")
def export_cwd(tmp_path_factory):
    return tmp_path_factory.mktemp("cwd")


@pytest.fixture(scope="session")
def spied_export(run_dir, llama, tmp_path_factory, export_cwd):
    out = tmp_path_factory.mktemp("exports") / NAME
    previous_export(out, {"stale.txt": "from an older export"})   # --force replaces it
    old = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = SECRET                          # must not end up in any file
    try:
        # The older path (Unsloth's merge, the converter script), which these tests describe;
        # the direct path's --merged is compared with it in test_export_merged_direct.py.
        return export_spied(ExportOptions(run=str(run_dir), gguf=("q4_k_m", "q8_0"), merged=True,
                                          out=str(out), name=NAME, force=True, direct=False),
                            export_cwd)
    finally:
        if old is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = old


@pytest.fixture(scope="session")
def exported(spied_export):
    return spied_export[0]


@pytest.fixture(scope="session")
def tokenizer(exported):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(exported.merged_dir))


# -- the folder ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_export_folder(exported):
    out = exported.out_dir
    assert sorted(p.name for p in out.iterdir()) == sorted([
        f"{NAME}.Q4_K_M.gguf", f"{NAME}.Q8_0.gguf", "Modelfile", "README.md", MANIFEST, "merged"])
    # Only the finished folder is left: no scratch folder, no Unsloth intermediates.
    assert [p.name for p in out.parent.iterdir()] == [NAME]
    merged = {p.name for p in exported.merged_dir.iterdir()}
    assert {"config.json", "tokenizer.json", "chat_template.jinja"} <= merged
    assert any(n.endswith(".safetensors") for n in merged)
    assert not any(n.endswith(".bin") or n.endswith(".pt") for n in merged)

    for quant, path in exported.ggufs.items():
        meta = read_gguf_metadata(path)
        assert meta["general.name"] == NAME
        assert meta["tokenizer.ggml.pre"] == "qwen2"

    manifest = ExportManifest.read(out)
    assert not os.path.isabs(manifest.source_run)
    assert (exported.out_dir / manifest.source_run).resolve() == exported.run_dir.resolve()
    assert manifest.quants == ["q4_k_m", "q8_0"]
    listed = {k for k in manifest.files}
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} - {MANIFEST}
    assert listed == on_disk
    for rel, entry in manifest.files.items():
        assert sha256_file(out / rel) == entry.sha256, rel
    # The file as written: every key of the model, in its order (`from`, not `from_`).
    written = json.loads((out / MANIFEST).read_text())
    assert list(written) == list(ExportManifest.model_fields)
    assert list(written["modelfile"]) == ["from", "template", "system", "parameters"]
    assert ExportManifest.model_validate(written) == manifest

    readme = (out / "README.md").read_text()
    assert f"ollama create {NAME} -f Modelfile" in readme
    assert f"ollama run {NAME}" in readme


def test_readme_names_the_first_gguf_as_the_one_served(tmp_path):
    from types import SimpleNamespace

    from fastft.export.readme import readme_text
    info = SimpleNamespace(variant="other", model="m", run_dir=tmp_path / "r")
    modelfile = SimpleNamespace(template=None, system_mode="SYSTEM")
    ggufs = {q: tmp_path / f"{NAME}.{q.upper()}.gguf" for q in ("q8_0", "q4_k_m")}
    text = readme_text(NAME, info, ggufs, False, modelfile, MANIFEST)
    assert f"The Modelfile serves `{NAME}.Q8_0.gguf`; to serve another" in text
    assert f"`llama-cli -m {NAME}.Q8_0.gguf`." in text
    assert "| `fastft-tiny.Q4_K_M.gguf` | Q4_K_M |" in text
    assert "ollama" not in readme_text(NAME, info, {}, True, None, MANIFEST)


# -- merge once, convert once, quantize from that one file ----------------------------------------

@pytest.mark.slow
def test_export_never_changes_or_writes_in_the_working_directory(spied_export, export_cwd):
    """Unsloth's merge buffers go to the scratch folder by absolute path: no os.chdir, and
    nothing left (or written) where the user ran fastft."""
    _, spy = spied_export
    assert spy.chdirs == []
    assert list(export_cwd.iterdir()) == []


@pytest.mark.slow
def test_merges_once(spied_export):
    """One merge (into merged/), and never Unsloth's GGUF save, which merges a second time."""
    _, spy = spied_export
    assert spy.saves == ["save_pretrained_merged"]


@pytest.mark.slow
def test_one_convert_then_every_quant_from_that_file(spied_export):
    exported, spy = spied_export
    [convert] = spy.runs("convert_hf_to_gguf.py")
    converted = Path(convert[convert.index("--outfile") + 1])
    assert convert[convert.index("--outtype") + 1] == "bf16"        # the tiny model's weights
    assert convert[convert.index("--model-name") + 1] == NAME      # no header rewrite afterwards
    assert Path(convert[2]).name == "merged"                       # from the one merge
    assert converted.name == f"{NAME}.BF16.gguf"
    quantize = spy.runs("llama-quantize")
    assert sorted(q[3] for q in quantize) == ["Q4_K_M", "Q8_0"]
    assert all(Path(q[1]) == converted for q in quantize)          # both from the one 16-bit file
    # Side by side (see test_quantize_ggufs_*), each allowed every core.
    assert {q[4] for q in quantize} == {str(os.cpu_count() or 1)}
    assert {Path(q[2]).name for q in quantize} == {p.name for p in exported.ggufs.values()}
    assert ExportManifest.read(exported.out_dir).converted_from == converted.name
    assert not (exported.out_dir / converted.name).exists()        # not asked for: scratch only


@pytest.mark.slow
def test_stage_timings(exported):
    """Each stage once, in order (both quantizations ran in parallel: one stage), and the
    stage line printed with the result, before the commands to run next."""
    stages = ["checks_s", "tools_s", "load_s", "reference_s", "merge_s", "convert_s", "quantize_s",
              "check_s", "retention_s", "docs_s", "total_s"]
    assert list(ExportManifest.read(exported.out_dir).timings) == stages
    assert list(exported.timings) == stages
    assert all(v >= 0 for v in exported.timings.values())
    assert sum(exported.timings.values()) - exported.timings["total_s"] <= exported.timings["total_s"]
    lines = exported.summary_lines()
    times = next(i for i, line in enumerate(lines) if line.startswith("  time: "))
    assert times < lines.index("next:") and lines[times].count("quantize") == 1


@pytest.mark.slow
def test_16bit_output_is_the_converted_file(detour_16bit):
    """--gguf bf16 is written by the converter itself, and the other quants come from it; without
    --merged the merge goes to the scratch folder only."""
    res, spy = detour_16bit               # the export, made once (see the fixture)
    out = Path(spy["out"])
    assert Path(res["out_dir"]) == out and res["path"] == "detour"
    assert sorted(p.name for p in out.iterdir()) == sorted([
        f"{NAME}.Q8_0.gguf", f"{NAME}.BF16.gguf", "Modelfile", "README.md", MANIFEST])
    assert res["merged_dir"] is None and spy["saves"] == ["save_pretrained_merged"]
    [convert] = runs_of(spy["procs"], "convert_hf_to_gguf.py")
    [quantize] = runs_of(spy["procs"], "llama-quantize")
    converted = Path(convert[convert.index("--outfile") + 1])
    assert converted.name == f"{NAME}.BF16.gguf" and Path(quantize[1]) == converted
    assert quantize[3:] == ["Q8_0", str(os.cpu_count() or 1)]
    assert sorted(res["ggufs"]) == ["bf16", "q8_0"]
    for gguf in res["ggufs"].values():
        assert read_gguf_metadata(gguf["path"])["general.name"] == NAME
    assert [p.name for p in out.parent.iterdir()] == [NAME]


def test_convert_type():
    assert convert_type(("q4_k_m", "q8_0"), "bf16") == "bf16"
    assert convert_type(("q4_k_m",), "f16") == "f16"
    assert convert_type(("q4_k_m", "f16"), "bf16") == "f16"        # asked for: written directly
    assert convert_type(("f16", "bf16"), "bf16") == "bf16"


# -- llama-quantize processes, with a stand-in tool ------------------------------------------------

FAKE_QUANTIZE = """#!/bin/sh
# llama-quantize SRC DST TYPE NTHREADS, as a stand-in: records when it ran, then writes DST.
echo "start $3 $(date +%s.%N)" >> "$(dirname "$2")/events"
[ "$3" = "FAIL" ] && { echo "quantize: no such type"; exit 3; }
sleep "${FAKE_SLEEP:-1}"
cp "$1" "$2"
echo "end $3 $(date +%s.%N)" >> "$(dirname "$2")/events"
"""


@pytest.fixture
def fake_llama(tmp_path):
    from fastft.export.llamacpp import LlamaCpp

    tool = tmp_path / "llama-quantize"
    tool.write_text(FAKE_QUANTIZE)
    tool.chmod(0o755)
    src = tmp_path / "m.BF16.gguf"
    src.write_bytes(b"GGUF")
    return LlamaCpp(tmp_path, tool, None, "test"), src


def _events(folder: Path) -> dict[tuple[str, str], float]:
    lines = (folder / "events").read_text().split("\n")
    return {(kind, t): float(ts) for kind, t, ts in (ln.split() for ln in lines if ln)}


def test_quantize_ggufs_runs_them_side_by_side(fake_llama, tmp_path):
    from fastft.export.llamacpp import quantize_ggufs

    llama, src = fake_llama
    outs = {t: tmp_path / f"m.{t}.gguf" for t in ("Q4_K_M", "Q8_0", "Q5_K_M")}
    seconds = quantize_ggufs(llama, src, outs, tmp_path, cpus=4)
    assert set(seconds) == set(outs) and all(p.read_bytes() == b"GGUF" for p in outs.values())
    ev = _events(tmp_path)
    # All three started before any finished (up to one per core), each told to use every core.
    assert max(ev["start", t] for t in outs) < min(ev["end", t] for t in outs)


def test_quantize_ggufs_at_most_one_per_core(fake_llama, tmp_path, monkeypatch):
    from fastft.export.llamacpp import quantize_ggufs

    llama, src = fake_llama
    started = record_processes(monkeypatch)
    monkeypatch.setenv("FAKE_SLEEP", "0.2")
    outs = {t: tmp_path / f"m.{t}.gguf" for t in ("Q4_K_M", "Q8_0", "Q5_K_M")}
    quantize_ggufs(llama, src, outs, tmp_path, cpus=2)
    runs = [argv(p)[3:] for p in started]   # the first two start side by side, in either order
    assert sorted(runs[:2]) == [["Q4_K_M", "2"], ["Q8_0", "2"]] and runs[2] == ["Q5_K_M", "2"]
    ev = _events(tmp_path)
    assert ev["start", "Q5_K_M"] >= min(ev["end", "Q4_K_M"], ev["end", "Q8_0"])


def test_quantize_failure_or_interrupt_stops_the_others(fake_llama, tmp_path, monkeypatch):
    from fastft.export import llamacpp
    from fastft.export.llamacpp import LlamaCppError, quantize_ggufs

    llama, src = fake_llama
    started = record_processes(monkeypatch)
    monkeypatch.setenv("FAKE_SLEEP", "30")
    with pytest.raises(LlamaCppError, match="(?s)FAIL failed.*no such type"):
        quantize_ggufs(llama, src, {"Q8_0": tmp_path / "a.gguf", "FAIL": tmp_path / "b.gguf"},
                       tmp_path, cpus=2)
    # The other job was killed mid-run, or (its thread slower than the failure) never started.
    assert 1 <= len(started) <= 2 and all(p.returncode is not None for p in started)
    assert not (tmp_path / "a.gguf").exists()

    started.clear()

    def interrupted(futures):   # Ctrl-C while waiting for a llama-quantize that runs
        while not started:
            time.sleep(0.01)
        raise KeyboardInterrupt
    monkeypatch.setattr(llamacpp, "as_completed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quantize_ggufs(llama, src, {"Q8_0": tmp_path / "c.gguf"}, tmp_path, cpus=2)
    assert len(started) == 1 and started[0].returncode is not None   # killed, not left running
    assert not (tmp_path / "c.gguf").exists()


@pytest.mark.slow
def test_no_secrets_in_written_files(exported):
    for p in exported.out_dir.rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


@pytest.mark.slow
def test_modelfile(exported):
    parsed = dict(parse_modelfile(exported.modelfile.read_text()))
    assert parsed["model"] == f"./{NAME}.Q4_K_M.gguf"
    assert (exported.out_dir / parsed["model"]).is_file()
    assert parsed["stop"] == "<|im_end|>"
    assert parsed["num_ctx"] == str(read_run(exported.run_dir).max_seq_len)
    assert (parsed["temperature"], parsed["top_p"], parsed["top_k"], parsed["min_p"]) == \
        ("0.7", "0.8", "20", "0")
    assert parsed["template"] == go_template("instruct-2507")


@pytest.mark.slow
def test_modelfile_template_renders_the_trained_prompt(exported, tokenizer, go_render):
    """The exported Modelfile's TEMPLATE, rendered by Go as ollama does, equals the run's own
    chat template (after the guard) with add_generation_prompt=True."""
    # Parsed out of the Modelfile as ollama's parser does, then executed by Go's text/template.
    template = template_from_modelfile(exported.modelfile.read_text())
    outs = go_render.many([(template, c, None, None) for c in CHATS])
    for chat, got in zip(CHATS, outs):
        assert got == tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)


# -- llama.cpp agrees with the model it came from --------------------------------------------------

def greedy_hf(model, tokenizer, prompt: str, n: int, stop_ids: set[int]) -> str:
    import torch

    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(ids).logits[0, -1].argmax())
            if nxt in stop_ids:   # llama.cpp stops at any end-of-generation token, unprinted
                break
            out.append(nxt)
            ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return tokenizer.decode(out, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.mark.slow
def test_llama_cpp_greedy_matches_transformers(exported, tokenizer, llama):
    import torch
    from transformers import AutoModelForCausalLM

    from fastft.export.llamacpp import llama_generate

    # f32 compute on the merged bf16 weights: what llama.cpp does with (near-)exact weights.
    model = AutoModelForCausalLM.from_pretrained(str(exported.merged_dir), dtype=torch.float32)
    model.eval()
    # The tokens llama.cpp treats as end of generation for this vocabulary.
    stop = {tokenizer.convert_tokens_to_ids(t) for t in
            ("<|im_end|>", "<|endoftext|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")}
    q8 = exported.ggufs["q8_0"]
    for chat in CHATS:
        prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
        want = greedy_hf(model, tokenizer, prompt, N_TOKENS, stop)
        got = llama_generate(q8, prompt, N_TOKENS, llama=llama)
        assert got == want, chat


@pytest.mark.slow
def test_the_export_s_check_is_llama_simple_s_continuation(spied_export, llama, tmp_path):
    """The check fastft-score makes while it scores each GGUF (one llama.cpp process and load
    for both) is the text llama-simple generates from the same prompt: its tokens, its stop,
    its pieces."""
    from fastft.export import retention
    from fastft.export.llamacpp import ensure_scorer, llama_generate
    from fastft.export.pipeline import CHECK_TOKENS

    exported, spy = spied_export
    assert len(spy.runs("fastft-score")) == len(exported.ggufs) and spy.runs("llama-simple") == []
    checked = {c.file for c in exported.checks}
    assert checked == {p.name for p in exported.ggufs.values()}   # the export checked each file
    assert llama.runner.name == "llama-simple"
    for c in exported.checks:
        assert c.prompt.startswith("<|im_start|>user") and c.prompt.endswith("assistant\n")
        want = llama_generate(exported.out_dir / c.file, c.prompt, CHECK_TOKENS, llama=llama)
        assert want and c.output == want, c.file
    assert {"check_s", "retention_s"} <= set(exported.timings)
    assert any("llama.cpp loaded" in line for line in exported.summary_lines())
    # The export's prompt ends in a short answer; these run on past an end of turn, or to the limit.
    nothing = retention.Reference(retention.HeldOut("no text", [], [], None), None, None, 0)
    gguf, scorer = exported.ggufs["q8_0"], ensure_scorer()
    for prompt in (c.prompt + "My favorite color is blue.<|im_end|>\n", "Once upon a time", "1, 2, 3,"):
        want = llama_generate(gguf, prompt, CHECK_TOKENS, llama=llama)
        _, _, got = retention.run_scorer(scorer, gguf, nothing, tmp_path,
                                         retention.Check(prompt, CHECK_TOKENS))
        assert want and got.output == want, prompt


@pytest.mark.slow
def test_the_check_holds_the_prompt_not_the_gguf_s_whole_context(exported, llama, monkeypatch,
                                                                 tmp_path):
    """A check through llama-completion (a llama.cpp without llama-simple), whose default
    context is the GGUF's trained one (262,144 positions for Qwen3-4B-Instruct-2507: a 36 GiB
    KV cache, allocated whole), asks for what the prompt and its tokens need. Here the tiny
    GGUF claims 10M positions (a 19 GiB cache) and llama.cpp gets 4 GiB of address space: the
    check still loads it and generates."""
    import dataclasses
    import shutil

    import fastft.export.llamacpp as llamacpp
    from gguf import GGUFReader

    completion = dataclasses.replace(llama, runner=llamacpp.ensure_chat_runner())
    gguf = shutil.copy(exported.ggufs["q8_0"], tmp_path / "long.gguf")
    reader = GGUFReader(gguf, "r+")
    field = reader.fields["qwen3.context_length"]
    field.parts[field.data[0]][0] = 10_000_000
    reader.data.flush()
    assert read_gguf_metadata(gguf)["qwen3.context_length"] == 10_000_000
    limited = lambda cmd: ["bash", "-c", 'ulimit -v 4194304 && exec "$@"', "-", *cmd]  # noqa: E731
    monkeypatch.setattr(llamacpp, "dying_with_parent", limited)
    prompt = "<|im_start|>user\nWhat is your favorite color?<|im_end|>\n<|im_start|>assistant\n"
    assert completion.runner.name.startswith("llama-completion")
    assert isinstance(llamacpp.llama_generate(gguf, prompt, 4, llama=completion), str)
    assert llamacpp.generate_context(prompt, 4) == 256
    assert llamacpp.generate_context("x" * 300, 8) == 512


# -- the merge is lossless -------------------------------------------------------------------------

def _load_safetensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def ulp_bf16(x):
    """The spacing of bfloat16 numbers at |x| (8 significant bits)."""
    import torch

    return torch.exp2(torch.floor(torch.log2(x.abs().clamp_min(2.0 ** -126))) - 7)


@pytest.mark.slow
def test_merge_is_lossless(exported):
    """merged W == W_base16 + (alpha/r)·B·A, up to one bf16 rounding, for every projection."""
    import torch

    info = read_run(exported.run_dir)
    base = _load_safetensors(Path(info.model_path))
    merged = _load_safetensors(exported.merged_dir)
    adapter = _load_safetensors(info.adapter_dir)
    acfg = json.loads((info.adapter_dir / "adapter_config.json").read_text())
    r, alpha = acfg["r"], acfg["lora_alpha"]
    scale = alpha / (math.sqrt(r) if acfg.get("use_rslora") else r)

    assert set(base) <= set(merged)
    projections = 0
    for key, w in base.items():
        module = key.removesuffix(".weight")
        a = adapter.get(f"base_model.model.{module}.lora_A.weight")
        if a is None:       # not targeted: must be bit-identical
            assert torch.equal(merged[key], w), key
            continue
        b = adapter[f"base_model.model.{module}.lora_B.weight"]
        delta = scale * (b.double() @ a.double())
        want = w.double() + delta
        got = merged[key]
        assert got.dtype == torch.bfloat16, key
        # bf16 rounding: PEFT rounds the delta to the adapter's dtype (bf16 for a bf16 run) and
        # the sum is rounded to bf16, so each element may be off by half a unit in the last
        # place (ulp) of each. Merging into dequantised 4-bit weights instead would be off by
        # several percent of W: on the tiny model, a median 36x this bound.
        err = (got.double() - want).abs()
        tol = (ulp_bf16(delta) + ulp_bf16(torch.maximum(want.abs(), got.double().abs()))) / 2
        worst = float((err / tol).max())
        assert worst <= 1.0, f"{key}: error up to {worst:.2f}x the bf16 rounding bound"
        # and the merge did something (a zero B would make this test vacuous)
        assert float((got != w).float().mean()) > 0.2, key
        projections += 1
    layers = 1 + max(int(k.split(".")[2]) for k in base if k.startswith("model.layers."))
    assert projections == layers * len(PROJECTIONS)


# -- atomic writes ---------------------------------------------------------------------------------

def test_existing_folder_is_kept_without_force(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs / "r")
    (runs / "r" / "adapter").mkdir(parents=True)
    (runs / "r" / "adapter" / "adapter_config.json").write_text("{}")
    out = tmp_path / "exports" / "r"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="--force"):
        export_run(ExportOptions(run=str(runs / "r"), out=str(out)))
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert [p.name for p in out.parent.iterdir()] == ["r"]


def previous_export(folder: Path, files: dict[str, str]) -> Path:
    """A folder as an earlier export left it: `files` and a manifest that lists them."""
    from fastft.core.cache import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    listed = {n: FileEntry(sha256=sha256_file(folder / n), bytes=(folder / n).stat().st_size)
              for n in files}
    manifest(files=listed).write(folder)
    return folder


def manifest(**changes) -> ExportManifest:
    """A manifest as an export of the tiny model writes it, with `changes`."""
    values = dict(fastft_version="0", created="2026-01-01T00:00:00+00:00", name=NAME,
                  source_run="../../runs/r", base_model="tiny", variant="qwen3-instruct-2507",
                  quants=["q4_k_m"], merged=False, converted_from=f"{NAME}.BF16.gguf",
                  modelfile={"from": f"{NAME}.Q4_K_M.gguf", "template": True, "system": None,
                             "parameters": {"stop": "<|im_end|>", "num_ctx": 2048}},
                  checks=[{"file": f"{NAME}.Q4_K_M.gguf", "prompt": "p", "output": "o",
                           "seconds": 0.5}],
                  timings={"load_s": 1.25}, files={})
    return ExportManifest.model_validate({**values, **changes})


def test_manifest_round_trip(tmp_path):
    """Written and read back, a manifest is the same; its JSON keys are the documented ones."""
    from fastft.export.manifest import ManifestError

    m = manifest(files={"Modelfile": FileEntry(sha256="ab" * 32, bytes=12)})
    m.write(tmp_path)
    assert ExportManifest.read(tmp_path) == m
    text = (tmp_path / MANIFEST).read_text()
    assert text == m.to_json() and text.endswith("}\n")
    written = json.loads(text)
    assert list(written) == ["fastft_version", "created", "name", "source_run", "base_model",
                             "variant", "quants", "merged", "converted_from", "modelfile",
                             "checks", "timings", "files", "retention", "path",
                             "peak_disk_bytes", "quantized_by"]
    assert written["modelfile"]["from"] == f"{NAME}.Q4_K_M.gguf"
    assert written["files"] == {"Modelfile": {"sha256": "ab" * 32, "bytes": 12}}
    # An unknown key (a newer fastft's) survives a round trip; a missing one is no manifest.
    (tmp_path / MANIFEST).write_text(json.dumps({**written, "future": 1}))
    assert json.loads(ExportManifest.read(tmp_path).to_json())["future"] == 1
    del written["files"]
    (tmp_path / MANIFEST).write_text(json.dumps(written))
    with pytest.raises(ManifestError, match="not a fastft export manifest.*files"):
        ExportManifest.read(tmp_path)


def trained_run(tmp_path: Path) -> Path:
    run = write_run(tmp_path / "project" / "runs" / "r")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    return run


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("where", ["runs folder", "run", "run's parent's parent", "cwd", "home",
                                   "root", "latest link"])
def test_force_never_replaces_a_folder_holding_the_run_data_or_cwd(where, tmp_path, monkeypatch):
    from click.testing import CliRunner

    from fastft.cli import main

    run = trained_run(tmp_path)
    project = run.parent.parent
    (project / "notes.txt").write_text("my notes")
    (run.parent / "latest").symlink_to(run.name)
    monkeypatch.chdir(project)
    monkeypatch.setenv("HOME", str(project))
    out = {"runs folder": run.parent, "run": run, "run's parent's parent": project, "cwd": ".",
           "home": "~", "root": "/", "latest link": run.parent / "latest"}[where]
    out = os.path.expanduser(str(out))
    before = snapshot(tmp_path)
    result = CliRunner().invoke(main, ["export", str(run), "--gguf", "q8_0", "--out", out,
                                       "--force"])
    assert result.exit_code == 1, result.output
    assert "an export needs a folder of its own" in result.output
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("case", ["user folder", "extra file", "edited Modelfile", "no manifest"])
def test_force_replaces_only_a_previous_export_as_fastft_wrote_it(case, tmp_path):
    run = trained_run(tmp_path)
    out = previous_export(tmp_path / "exports" / "m", {"Modelfile": "FROM m.gguf\n", "README.md": "x"})
    if case == "user folder":
        (out / MANIFEST).unlink()
        (out / "Modelfile").unlink()
        (out / "data.jsonl").write_text("{}")
    elif case == "extra file":
        (out / "notes.txt").write_text("mine")
    elif case == "edited Modelfile":
        (out / "Modelfile").write_text("FROM m.gguf\nPARAMETER temperature 0\n")
    else:
        (out / MANIFEST).unlink()
    before = snapshot(out)
    with pytest.raises(ExportError, match="--force replaces only"):
        export_run(ExportOptions(run=str(run), gguf=(), merged=True, out=str(out), force=True))
    assert snapshot(out) == before


def test_out_under_a_file_is_one_error(tmp_path):
    run = trained_run(tmp_path)
    with pytest.raises(ExportError, match="/dev/null is not a folder"):
        export_run(ExportOptions(run=str(run), gguf=(), merged=True, out="/dev/null/m"))


def test_bad_input_fails_fast(tmp_path):
    with pytest.raises(RunFolderError, match="fastft.json"):
        export_run(ExportOptions(run=str(tmp_path / "nope")))
    run = write_run(tmp_path / "r", status="training")
    with pytest.raises(RunFolderError, match="no trained adapter"):
        export_run(ExportOptions(run=str(run)))
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(ExportError, match="unknown GGUF quant"):
        export_run(ExportOptions(run=str(run), gguf=("q3_x",)))
    with pytest.raises(ExportError, match="invalid --name"):
        export_run(ExportOptions(run=str(run), name="bad name"))
    assert not (tmp_path / "exports").exists()


@pytest.mark.slow
def test_interrupted_export_leaves_no_final_files(run_dir, llama, tmp_path, monkeypatch):
    """Ctrl-C at the last step, when every file exists under a temporary name: nothing lands
    under a final name, and the old export survives even with --force."""
    import fastft.export.pipeline

    out = tmp_path / "exports" / NAME
    previous_export(out, {"keep.txt": "previous export"})

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(fastft.export.pipeline.retention, "run_scorer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(ExportOptions(run=str(run_dir), gguf=("q8_0",), merged=True, out=str(out),
                                 name=NAME, force=True))
    assert [p.name for p in out.parent.iterdir()] == [NAME]          # no scratch left behind
    assert sorted(p.name for p in out.iterdir()) == ["fastft-export.json", "keep.txt"]
    assert (out / "keep.txt").read_text() == "previous export"


def test_export_merges_into_the_16bit_base(tmp_path, monkeypatch):
    """The adapter is attached to config.model_path loaded in 16 bits, whatever the run trained on
    (a QLoRA run's adapter_config may name a pre-quantised 4-bit checkpoint)."""
    import types

    from fastft.core.models import load_base_with_adapter

    adapter = tmp_path / "run" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "unsloth/qwen3-4b-instruct-2507-unsloth-bnb-4bit", "r": 16}))
    seen = {}

    class FakeFLM:
        @staticmethod
        def from_pretrained(model_name, **kw):
            seen.update(kw, base=json.loads((Path(model_name) / "adapter_config.json").read_text())
                        ["base_model_name_or_path"])
            return "model", "tokenizer"

    monkeypatch.setitem(sys.modules, "unsloth", types.SimpleNamespace(FastLanguageModel=FakeFLM))
    import transformers
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: "tok")
    (tmp_path / "work").mkdir()
    load_base_with_adapter(adapter, "/models/base16", 64, tmp_path / "work")
    assert seen["base"] == "/models/base16"
    assert seen["load_in_4bit"] is False
    assert seen["use_safetensors"] is True and seen["trust_remote_code"] is False
    assert seen["local_files_only"] is False       # a hub id: may need fetching (not cached)


def test_missing_build_tools_are_named(monkeypatch):
    """With no llama.cpp around and no way to build one, the error says what to install."""
    import fastft.export.llamacpp as lc

    monkeypatch.setattr(lc, "find_llama_cpp", lambda: None)
    monkeypatch.setattr(lc.shutil, "which", lambda name: None)
    with pytest.raises(lc.LlamaCppError) as e:
        lc.ensure_llama_cpp()
    msg = str(e.value)
    assert "cmake" in msg and "C++ compiler" in msg and "UNSLOTH_LLAMA_CPP_PATH" in msg


def test_runners_are_found_at_the_top_level_then_in_build_bin(tmp_path, monkeypatch):
    """The export's check runner and chat's llama-completion are looked for the same way: each
    name at the folder's top level (Unsloth's layout), then in cmake's build/bin."""
    import fastft.export.llamacpp as lc

    def tool(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\nexit 0\n")
        path.chmod(0o755)
        return path
    (tmp_path / lc.CONVERTER).write_text("")
    tool(tmp_path / lc.QUANTIZE)
    assert lc._inspect(tmp_path, "test").runner is None
    in_bin = tool(tmp_path / "build" / "bin" / "llama-completion")
    assert lc._inspect(tmp_path, "test").runner == in_bin
    monkeypatch.setattr(lc, "find_llama_cpp", lambda: lc._inspect(tmp_path, "test"))
    assert lc.ensure_chat_runner() == in_bin
    top = tool(tmp_path / "llama-completion")
    assert lc.ensure_chat_runner() == top
    # llama-simple comes first among the check's runners, wherever it is.
    assert lc._inspect(tmp_path, "test").runner == top
    simple = tool(tmp_path / "build" / "bin" / "llama-simple")
    assert lc._inspect(tmp_path, "test").runner == simple


class FakeMerge:
    """A loaded model whose merge raises `error`, and its tokenizer."""

    def __init__(self, error: Exception):
        self.error = error

    def apply_chat_template(self, *a, **kw):
        return "prompt"

    def save_pretrained_merged(self, *a, **kw):
        raise self.error


@pytest.mark.parametrize("error, code", [(KeyError("lm_head.weight"), 70),
                                         (OSError(13, "Permission denied"), 1),
                                         (MemoryError(), 1)])
def test_only_a_users_error_in_the_merge_is_a_user_error(error, code, tmp_path, monkeypatch):
    """A bug inside the merge (fastft's or Unsloth's) is an internal error (exit 70), with the
    end of Unsloth's output kept in the crash log; the disk or memory is the user's (exit 1)."""
    from click.testing import CliRunner

    import fastft.export.pipeline as pipeline
    from fastft.cli import main

    run = trained_run(tmp_path)
    model = FakeMerge(error)

    def load(adapter, base, seq, work):
        print("unsloth: merging shard 1 of 1")      # what Unsloth printed before failing
        return model, model
    monkeypatch.setattr(pipeline, "load_base_with_adapter", load)
    monkeypatch.setenv("FASTFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pipeline, "normalise_quants", lambda quants: ())   # no llama.cpp needed
    result = CliRunner().invoke(main, ["export", str(run), "--merged", "--out", str(tmp_path / "out")])
    assert result.exit_code == code, result.output
    assert not (tmp_path / "out").exists()
    logs = list((tmp_path / "cache" / "logs").glob("crash-*.log"))
    if code == 70:
        assert "internal error" in result.output and "KeyError" in result.output
        [log] = logs
        assert "unsloth: merging shard 1 of 1" in log.read_text()
    else:
        assert "export failed" in result.output and "unsloth: merging shard" in result.output
        assert logs == []


def test_a_model_that_cannot_be_loaded_is_a_user_error(tmp_path, monkeypatch):
    import fastft.export.pipeline as pipeline

    def load(*a):
        raise ValueError("Unrecognized model in /models/x: no model_type in its config.json")
    monkeypatch.setattr(pipeline, "load_base_with_adapter", load)
    with pytest.raises(ExportError, match="export failed: Unrecognized model"):
        export_run(ExportOptions(run=str(trained_run(tmp_path)), gguf=(), merged=True,
                                 out=str(tmp_path / "out")))
