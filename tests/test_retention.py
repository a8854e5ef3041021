"""The export's retention gate (fastft.export.retention) on the tiny favorite-color run: what
each GGUF keeps of the fine-tune, measured by llama.cpp, and proof that the gate fails a GGUF
that is wrong (a perturbed tensor, another tokenizer, a chat template that drops the system turn).

The wrong GGUFs are made from the session's exported q4_k_m file (tests/conftest.py, `color`)
and scored against one reference (the run's model, loaded once); one export end to end shows a
failing file failing the export, written and recorded.
"""

import contextlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from fastft.core.errors import FastftError
from fastft.export import retention
from fastft.export.config import AUTO_QUANTS
from fastft.export.manifest import ExportManifest
from test_modelfile import go_render  # noqa: F401  (the Go renderer fixture, shared)


@pytest.fixture(scope="module")
def color_export(color_run, tmp_path_factory):
    """The favorite-color run exported to q8_0 and q4_k_m."""
    from fastft.export.pipeline import ExportOptions, export_run
    from rich.console import Console

    out = tmp_path_factory.mktemp("retention") / "color"
    return export_run(ExportOptions(run=str(color_run.run_dir), gguf=("q8_0", "q4_k_m"),
                                    out=str(out)), Console(file=io.StringIO()))


def test_q8_0_keeps_the_gain_and_every_report_shows_q4_k_m(color_export):
    r = color_export.retention
    rows = {f.quant: f for f in r.files}
    assert rows["q8_0"].retention >= 0.98 and rows["q8_0"].passed
    assert rows["q4_k_m"].retention is not None and rows["q4_k_m"].passed
    assert r.base.loss > r.adapter.loss                  # the fine-tune gained something
    assert rows["q8_0"].kl <= rows["q4_k_m"].kl + 1e-4   # the coarser file strays further
    assert "a sample of the training data" in r.data     # the run has no eval split: said so
    # The same table in the manifest, the README and the terminal.
    manifest = ExportManifest.read(color_export.out_dir)
    assert manifest.retention == r
    readme = (color_export.out_dir / "README.md").read_text()
    assert f"| `{rows['q4_k_m'].file}` | {rows['q4_k_m'].loss:.4f} |" in readme
    shown = "\n".join(color_export.summary_lines())
    assert rows["q4_k_m"].file in shown and f"{rows['q4_k_m'].retention:.1%}" in shown
    print("\n".join(retention.table_lines(r)), f"\ngate: {r.seconds:.2f}s",
          {k: v for k, v in color_export.timings.items() if k in ("reference_s", "retention_s")})


@pytest.fixture(scope="module")
def loaded(color_run, tmp_path_factory):
    """(model, tokenizer, run) for the gate's 16-bit side of the color run, loaded once, as the
    export does."""
    from fastft.core.models import load_base_with_adapter
    from fastft.core.run import read_trained

    info = read_trained(color_run.run_dir, "export")
    model, tokenizer = load_base_with_adapter(info.adapter_dir, info.model_path, info.max_seq_len,
                                              tmp_path_factory.mktemp("reference"))
    return model, tokenizer, info


@pytest.fixture(scope="module")
def reference(loaded):
    return retention.reference(*loaded, None)


@pytest.fixture(scope="module")
def scorer():
    from fastft.export.llamacpp import ensure_scorer

    return ensure_scorer()


@pytest.fixture
def q4(color, tmp_path) -> Path:
    """A copy of the session export's q4_k_m GGUF, to break."""
    src = next(color[1].glob("*.Q4_K_M.gguf"))
    return Path(shutil.copy(src, tmp_path / src.name))


def score(scorer, gguf: Path, reference, tmp_path: Path):
    return retention.score_file(scorer, gguf, "q4_k_m", reference, tmp_path, 0.9).row


def test_the_exported_file_passes(scorer, q4, reference, tmp_path):
    row = score(scorer, q4, reference, tmp_path)
    assert row.passed and row.retention > 0.9, row



def test_the_scorer_gives_the_same_rows_on_one_thread_and_on_several(scorer, q4, reference,
                                                                      tmp_path, monkeypatch):
    """fastft-score computes the rows' log-softmaxes on llama.cpp's threads, each row one
    thread's loop, and writes them in order: the same floats, in the same places, as on one."""
    check = retention.Check("<|im_start|>user\nWhat is your favorite color?<|im_end|>\n"
                            "<|im_start|>assistant\n", 8)
    got = {}
    for n in (1, 3):
        monkeypatch.setattr(retention, "threads_for", lambda _bytes, _busy=0, n=n: n)
        got[n] = retention.run_scorer(scorer, q4, reference, tmp_path, check)
    (texts1, rows1, check1), (texts3, rows3, check3) = got[1], got[3]
    assert sum(len(r) for r in rows1) > 3 and texts1 == texts3
    assert [r.shape for r in rows1] == [r.shape for r in rows3]
    for a, b in zip(rows1, rows3):
        np.testing.assert_array_equal(a, b)
    assert check1.output == check3.output


def test_each_examples_rows_are_its_own_when_scored_with_the_others(scorer, q4, reference,
                                                                     tmp_path):
    """fastft-score decodes the examples one after another into one context, so it copies an
    example's rows before the next decode overwrites them, all but the last one's (nothing
    decodes after it). Each example scored alone (then it is the last) gives the rows it gets
    among the others."""
    import dataclasses

    n = len(reference.held.encoded)
    assert n >= 3
    together = retention.run_scorer(scorer, q4, reference, tmp_path)[1]
    for i in range(n):
        alone = dataclasses.replace(
            reference, held=dataclasses.replace(reference.held,
                                                encoded=[reference.held.encoded[i]],
                                                messages=[reference.held.messages[i]]),
            positions=[reference.positions[i]], targets=[reference.targets[i]],
            top_ids=[reference.top_ids[i]], top_logp=[reference.top_logp[i]])
        rows = retention.run_scorer(scorer, q4, alone, tmp_path)[1]
        assert len(rows) == 1
        np.testing.assert_array_equal(rows[0], together[i])


def test_a_scoring_started_early_is_used_only_for_the_tokens_it_decodes(scorer, q4, reference,
                                                                       tmp_path):
    """fastft-score started before the reference is known (retention.Scoring, as the export
    starts it once the direct child has written the file) gives the rows when the reference is
    of the held-out tokens it decodes; when the gate's reference is another (the child gave
    none and the export measured its own), that process is stopped and fastft-score runs again
    on the reference's tokens. Both give a fresh run's rows."""
    import dataclasses

    want_texts, want_rows, _ = retention.run_scorer(scorer, q4, reference, tmp_path)
    same = retention.Scoring(scorer, q4, reference.held, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = retention.Scoring(scorer, q4, dataclasses.replace(reference.held), elsewhere)
    for started in (same, other):
        texts, rows, _ = retention.run_scorer(scorer, q4, reference, tmp_path, started=started)
        assert texts == want_texts and len(rows) == len(want_rows)
        for a, b in zip(rows, want_rows):
            np.testing.assert_array_equal(a, b)
    assert same.proc.returncode == 0                   # it gave the rows
    assert other.proc.returncode not in (None, 0)      # stopped while it waited for the ids


def test_the_scorer_exits_4_when_its_result_cannot_be_written(scorer, q4, reference, tmp_path):
    """fastft-score checks fclose: a result that fits stdio's buffer is written only there, so a
    full disk (/dev/full) fails at the close and must not exit 0 with nothing written."""
    import dataclasses
    import subprocess

    one = dataclasses.replace(                    # one example, three positions: a small result
        reference, held=dataclasses.replace(reference.held, encoded=reference.held.encoded[:1]),
        positions=[reference.positions[0][:3]], targets=[reference.targets[0][:3]],
        top_ids=[reference.top_ids[0][:3]])
    request = tmp_path / "request"
    request.write_bytes(retention._request(one.held, one.positions, one.targets))
    ids = retention._top_ids(one)
    ok = subprocess.run([str(scorer), str(q4), str(request), str(tmp_path / "result"), "2"],
                        input=ids, capture_output=True, timeout=600)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert 0 < (tmp_path / "result").stat().st_size < 4096   # buffered whole: fails at fclose
    full = subprocess.run([str(scorer), str(q4), str(request), "/dev/full", "2"],
                          input=ids, capture_output=True, timeout=600)
    assert full.returncode == 4
    assert b"cannot write /dev/full" in full.stderr


@contextlib.contextmanager
def float32(model):
    """`model` computing in float32, then each parameter back in its dtype (exactly: float32
    holds every bf16 and fp16 value). In bf16 the scores of the same positions differ with the
    sequence's length by up to 0.03 on a CPU without native bf16 (a 2-core AMD EPYC), where
    torch's kernels split the work by it; the cut is about causality, not that rounding."""
    dtypes = {name: p.dtype for name, p in model.named_parameters()}
    model.float()
    try:
        yield
    finally:
        for name, p in model.named_parameters():
            p.data = p.data.to(dtypes[name])


def test_the_example_that_reaches_the_trained_budget_is_cut_where_it_does(
        loaded, reference, scorer, q4, tmp_path, monkeypatch):
    """With a trained budget that ends inside the first example, the gate takes that example
    up to its budget-th trained token only; torch and llama.cpp score the positions kept as
    they score them in the whole example (a causal model: each sees only the tokens before)."""
    first = reference.held.encoded[0]
    budget = first.trained // 2
    assert budget >= 2
    with float32(loaded[0]):
        monkeypatch.setattr(retention, "TRAINED_TOKENS", first.trained)
        whole = retention.reference(*loaded, None)      # the first example alone, as a whole
        monkeypatch.setattr(retention, "TRAINED_TOKENS", budget)
        cut = retention.reference(*loaded, None)
    ids = cut.held.encoded[0].tokens.input_ids
    assert whole.held.encoded[0].tokens == first.tokens and whole.tokens == first.trained
    assert len(cut.held.encoded) == 1 and cut.tokens == budget
    assert len(ids) < len(first.tokens.input_ids) and ids == first.tokens.input_ids[:len(ids)]
    kept = cut.positions[0]
    assert kept == whole.positions[0][:budget] and kept[-1] == len(ids) - 2
    np.testing.assert_allclose(cut.top_logp[0], whole.top_logp[0][:budget], atol=1e-4)
    texts, rows, _ = retention.run_scorer(scorer, q4, cut, tmp_path)
    assert retention.tokenizer_problem(cut, texts) is None
    whole_rows = retention.run_scorer(scorer, q4, whole, tmp_path)[1]
    np.testing.assert_allclose(rows[0], whole_rows[0][:budget], atol=1e-4)


def _tensor(gguf: Path, name: str):
    """(offset, bytes) of tensor `name`'s data in `gguf`: its header walked by
    fastft.export.gguf (gguf-py's GGUFReader would take ~8 s here decoding the vocabulary), its
    size from gguf-py's table of block sizes."""
    from fastft.export.gguf import read_header

    sys.path.insert(0, str(_gguf_py()))
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    header = read_header(gguf.read_bytes())
    ti = next(t for t in header.tensors if t.name == name)
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ti.type)]
    return header.data_start + ti.offset, ti.elements // block * size


def _gguf_py() -> Path:
    from fastft.core.sources import llama_cpp_source

    return llama_cpp_source() / "gguf-py"


def test_a_perturbed_tensor_fails(scorer, q4, reference, tmp_path):
    offset, size = _tensor(q4, "blk.1.ffn_down.weight")
    with open(q4, "r+b") as f:     # noise over the whole tensor: the layer's output is garbage
        f.seek(offset)
        f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    row = score(scorer, q4, reference, tmp_path)
    assert not row.passed and row.failed == "retention", row
    assert row.retention < 0.9 and "below --min-retention 0.9" in row.problem


def _swap_tokens(gguf: Path, a: str, b: str) -> None:
    """Swap two vocabulary entries of the same length in place (each stored as its length, 8
    bytes, then its text): a tokenizer that is not the run's (' blue' gets the id of ' Blue')."""
    data = bytearray(gguf.read_bytes())
    entry = lambda s: len(s.encode()).to_bytes(8, "little") + s.encode()  # noqa: E731
    i, j = data.index(entry(a)), data.index(entry(b))
    n = len(entry(a))
    data[i:i + n], data[j:j + n] = entry(b), entry(a)
    gguf.write_bytes(bytes(data))


def test_a_tokenizer_mismatch_fails(scorer, q4, reference, tmp_path):
    _swap_tokens(q4, "Ġblue", "ĠBlue")   # byte-level BPE: Ġ is the space
    row = score(scorer, q4, reference, tmp_path)
    assert not row.passed and row.failed == "tokenizer", row
    assert "other token ids than training" in row.problem


def _with_template(gguf: Path, template: str, out: Path) -> Path:
    """`gguf` with its tokenizer.chat_template replaced, written to `out`: the header's entry
    rewritten (fastft.export.gguf walks it), the data section padded to its alignment again,
    every tensor's bytes as they were (their offsets count from the data section). The same
    metadata, tensor infos and data as llama.cpp's gguf_new_metadata.py --chat-template writes
    (which moves the key to the end), without its ~9 s here decoding the vocabulary through
    GGUFReader."""
    from fastft.export.gguf import pad, read_header, read_gguf_metadata

    data = gguf.read_bytes()
    header = read_header(data)
    key = "tokenizer.chat_template"
    [(start, end)] = [(a, b) for k, a, b in header.kv if k == key]
    text = template.encode()
    entry = (len(key).to_bytes(8, "little") + key.encode() + (8).to_bytes(4, "little")
             + len(text).to_bytes(8, "little") + text)             # type 8: a string
    infos_end = header.kv[-1][2] + sum(8 + len(t.name.encode()) + 4 + 8 * len(t.dims) + 12
                                       for t in header.tensors)
    assert pad(infos_end, header.alignment) == header.data_start
    head = data[:start] + entry + data[end:infos_end]
    head += bytes(pad(len(head), header.alignment) - len(head))
    out.write_bytes(head + data[header.data_start:])
    assert read_gguf_metadata(out)[key] == template
    assert read_header(out.read_bytes()).tensors == header.tensors
    return out


def test_a_template_that_drops_the_system_turn_fails(scorer, q4, reference, tmp_path):
    from fastft.export.gguf import read_gguf_metadata

    template = read_gguf_metadata(q4)["tokenizer.chat_template"]
    # The system turn left out: what a template written for a model without a system role does.
    dropped = template.replace(r"{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}", "")
    assert dropped != template
    assert any(m[0]["role"] == "system" for m, _ in reference.held.messages)
    broken = _with_template(q4, dropped, tmp_path / "broken.gguf")
    row = score(scorer, broken, reference, tmp_path)
    assert not row.passed and row.failed == "template", row
    assert "chat template renders the prompt" in row.problem and "system" in row.problem


def test_the_modelfile_serves_the_held_out_prompts_and_one_without_system_does_not(
        color_export, reference, go_render):
    """ollama's side, by ollama's own Go code: the exported Modelfile's TEMPLATE renders every
    serving prompt the gate checks exactly as training did; the same TEMPLATE with the system
    turn left out does not."""
    from ollama_contract import template_from_modelfile

    template = template_from_modelfile((color_export.out_dir / "Modelfile").read_text())
    cases = list(retention.served_prompts(reference))
    assert any(m[0]["role"] == "system" for _, m, _, _ in cases)
    want = [prompt for *_, prompt in cases]
    assert go_render.many([(template, m, t, None) for _, m, t, _ in cases]) == want
    system = "<|im_start|>system\n{{ $m.Content }}<|im_end|>\n"
    assert template.count(system) == 1
    dropped = template.replace(system, "")
    assert go_render.many([(dropped, m, t, None) for _, m, t, _ in cases]) != want


def test_a_failing_gguf_fails_the_export_which_records_it(color_run, tmp_path, monkeypatch):
    """End to end: llama-quantize's output perturbed, the export fails with a user error naming
    the file and what to do, and the written folder's manifest records the failure."""
    import fastft.export.gpuquant as gpuquant
    from fastft.export.pipeline import ExportOptions, export_run
    from rich.console import Console

    real = gpuquant.quantize

    def quantize_then_break(llama, src, outputs, log_dir, on):
        made = real(llama, src, outputs, log_dir, on)
        for dst in outputs.values():
            offset, size = _tensor(dst, "blk.1.ffn_down.weight")
            with open(dst, "r+b") as f:
                f.seek(offset)
                f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
        return made
    monkeypatch.setattr(gpuquant, "quantize", quantize_then_break)
    out = tmp_path / "broken"
    with pytest.raises(retention.RetentionError) as e:
        export_run(ExportOptions(run=str(color_run.run_dir), gguf=("q4_k_m",), out=str(out),
                                 check=False), Console(file=io.StringIO()))
    assert isinstance(e.value, FastftError)          # one line, exit 1 (fastft.cli)
    message = str(e.value)
    assert "color.Q4_K_M.gguf: it keeps" in message and "larger quant" in message
    assert "adapter (16-bit)" in message                 # the table, where the error is read
    manifest = json.loads((out / "fastft-export.json").read_text())
    recorded = manifest["retention"]
    assert recorded["passed"] is False and recorded["files"][0]["failed"] == "retention"
    assert manifest["checks"] == [] and "check_s" not in manifest["timings"]   # --no-check


def test_threads_for_leaves_the_busy_threads_their_cores(monkeypatch):
    """llama.cpp gets a thread per usable core less one per busy thread of the export (at least
    one), and a small model one thread whatever the cores."""
    monkeypatch.setattr(retention.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    big = 8 << 30
    assert [retention.threads_for(big, busy) for busy in (0, 1, 4, 16, 20)] == [16, 15, 12, 1, 1]
    assert retention.threads_for(10 << 20) == retention.threads_for(10 << 20, busy=1) == 1


def test_the_gate_leaves_a_core_to_each_file_being_hashed(color_run, tmp_path, monkeypatch):
    """The export hashes each finished GGUF for its manifest while the gate scores it: the
    gate's llama.cpp process is given the cores less the one that hash is using (here 16 cores,
    as if the tiny model were large enough for all; the scorer then runs on one thread, as
    this 2-core machine needs)."""
    import threading

    import fastft.export.pipeline as pipeline
    from fastft.core.procs import command_of
    from fastft.export.pipeline import ExportOptions, export_run
    from rich.console import Console

    monkeypatch.setattr(retention.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(retention, "BYTES_PER_THREAD", 1)
    scored, hashing = threading.Event(), []
    real_hash, real_popen = pipeline.sha256_file, retention.subprocess.Popen

    def slow_hash(path):                       # still hashing when the gate starts
        if str(path).endswith(".gguf"):
            hashing.append(path)
            assert scored.wait(120)
        return real_hash(path)

    given = []

    def popen(cmd, *args, **kwargs):
        scorer = command_of(cmd)
        if Path(scorer[0]).name == "fastft-score" and len(scorer) == 5:   # GGUF, request, result, threads
            given.append(int(cmd[-1]))
            cmd = [*cmd[:-1], "1"]
            try:
                return real_popen(cmd, *args, **kwargs)
            finally:
                scored.set()                   # its threads are counted: the hash may end
        return real_popen(cmd, *args, **kwargs)

    monkeypatch.setattr(pipeline, "sha256_file", slow_hash)
    monkeypatch.setattr(retention.subprocess, "Popen", popen)
    result = export_run(ExportOptions(run=str(color_run.run_dir), gguf=("q8_0",), check=False,
                                      out=str(tmp_path / "out")), Console(file=io.StringIO()))
    assert [p.name for p in hashing] == [result.ggufs["q8_0"].name]
    assert given == [15]
    assert result.retention.passed


def test_auto_keeps_the_smallest_quant_that_passes(color_run, tmp_path):
    from fastft.export.pipeline import ExportOptions, export_run
    from rich.console import Console

    result = export_run(ExportOptions(run=str(color_run.run_dir), gguf=("auto",),
                                      out=str(tmp_path / "auto")), Console(file=io.StringIO()))
    first = AUTO_QUANTS[0]
    assert list(result.ggufs) == [first] and result.retention.files[0].passed
    assert [c.file for c in result.checks] == [result.ggufs[first].name]   # checked as scored
    assert f"FROM ./{result.ggufs[first].name}" in (result.out_dir / "Modelfile").read_text()
    assert sorted(p.name for p in result.out_dir.glob("*.gguf")) == [result.ggufs[first].name]


def test_auto_is_given_alone():
    from fastft.export.pipeline import ExportError, normalise_quants

    with pytest.raises(ExportError, match="auto picks one quant"):
        normalise_quants(("auto", "q8_0"), {"Q8_0": "8-bit"})
