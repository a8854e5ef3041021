"""The direct child quantizing from the merged tensors (fastft.export.direct, fastft.export.gpuquant).

No 16-bit GGUF is written: the child plans from the 16-bit file's header alone and quantizes
each tensor as the converter computes it. The claim is bytes: the file equals llama-quantize's
from the 16-bit GGUF the child writes otherwise. Here on the CPU (Q8_0; the k-quants' search is
too slow on this CPU for the tiny model's embedding); tests/test_gpuquant.py's GPU test makes
Q4_K_M and Q8_0 this way on CUDA.
"""

from __future__ import annotations

import contextlib
import filecmp
import io
import json
from pathlib import Path

import pytest

from conftest import private_run
from fastft.export.manifest import ExportManifest
from test_export import detour_16bit  # noqa: F401  (the session's older-path export)

NAME = "fastft-tiny"


@pytest.fixture(scope="module")
def llama():
    from fastft.export.llamacpp import ensure_llama_cpp

    return ensure_llama_cpp()


def child_job(color_run, llama, folder, quants: tuple[str, ...]):
    """The direct child's job for a GGUF-only export into `folder`, quantizing `quants` on the CPU."""
    from fastft.export.direct import Job

    folder.mkdir()
    job = Job(color_run.adapter_dir, color_run.model_path, llama.root, folder / "work",
              folder / "work" / f"{NAME}.BF16.gguf", "bf16", NAME)
    job.quants = {q: folder / f"{NAME}.{q}.gguf" for q in quants}
    job.quantize, job.device = llama.quantize, "cpu"
    return job


def export(color_run, out, quants):
    from rich.console import Console

    from fastft.export.pipeline import ExportOptions, export_run

    return export_run(ExportOptions(run=str(color_run.run_dir), gguf=quants, out=str(out),
                                    name=NAME, check=False), Console(file=io.StringIO()))


@pytest.fixture(scope="module")
def reference(detour_16bit):
    """The 16-bit GGUF and llama-quantize's Q8_0 of it, from test_export.py's export of the older
    path (made once per session; tests/test_export_direct.py shows the direct child writes that
    same 16-bit file)."""
    from pathlib import Path

    out = Path(detour_16bit[1]["out"])
    return {"BF16": out / f"{NAME}.BF16.gguf", "Q8_0": out / f"{NAME}.Q8_0.gguf"}


@pytest.mark.slow
def test_the_export_quantizes_in_the_child_with_no_16_bit_file(color_run, reference, tmp_path,
                                                               monkeypatch):
    """`fastft export --gguf q8_0` with the child's device set (here the CPU): the Q8_0 is
    llama-quantize's, byte for byte; no quantize stage ran here; the scratch folder never held
    a 16-bit GGUF; the manifest says what made the file."""
    from fastft.export import pipeline

    monkeypatch.setattr(pipeline, "DIRECT_QUANTIZE_DEVICE", "cpu")
    res = export(color_run, tmp_path / "out", ("q8_0",))
    made = res.ggufs["q8_0"]
    assert res.path == "direct"
    assert filecmp.cmp(made, reference["Q8_0"], shallow=False)
    assert ExportManifest.read(res.out_dir).quantized_by == {made.name: "cpu"}
    assert "quantize_s" not in res.timings and "convert_s" in res.timings
    assert made.stat().st_size <= res.peak_disk_bytes <= 1.2 * made.stat().st_size
    assert res.peak_disk_bytes < made.stat().st_size + reference["BF16"].stat().st_size


@pytest.mark.slow
def test_the_gate_scores_the_childs_file_while_the_child_measures_its_16_bit_side(
        color_run, tmp_path, monkeypatch):
    """With pipeline.SCORE_EARLY (off by default: no gain on an H100 host), once the child has
    written the file it quantized it says so, and the export starts the gate's llama.cpp side on
    that file while the child, still running, measures the 16-bit side; that one process scores
    it (no second start), and its row is what fastft-score started afterwards gives against the
    same reference. The wait for it is the retention stage, never below 0."""
    from fastft.export import pipeline, retention
    from fastft.export.llamacpp import ensure_scorer

    monkeypatch.setattr(pipeline, "DIRECT_QUANTIZE_DEVICE", "cpu")
    monkeypatch.setattr(pipeline, "SCORE_EARLY", True)
    alive, early, started, refs = [], [], [], []
    start_scoring, init, score_file = (pipeline._start_scoring, retention.Scoring.__init__,
                                       retention.score_file)

    def spied_start(plan, child, held):
        start_scoring(plan, child, held)
        alive.append(child.proc.poll() is None)
        early.extend(plan.scoring)

    def spied_init(self, scorer, gguf, *a, **kw):
        started.append(gguf.name)
        init(self, scorer, gguf, *a, **kw)

    def spied_score(scorer, gguf, quant, ref, *a, **kw):
        refs.append(ref)
        return score_file(scorer, gguf, quant, ref, *a, **kw)

    monkeypatch.setattr(pipeline, "_start_scoring", spied_start)
    monkeypatch.setattr(retention.Scoring, "__init__", spied_init)
    monkeypatch.setattr(retention, "score_file", spied_score)
    res = export(private_run(color_run, tmp_path), tmp_path / "out", ("q8_0",))
    made = res.ggufs["q8_0"]
    assert res.path == "direct" and alive == [True] and early == ["q8_0"]
    assert started == [made.name]                        # the early process gave the row
    assert f"llama.cpp started on {made.name} while the direct child" in res.log.read_text()
    row = res.retention.files[0]
    afresh = retention.score_file(ensure_scorer(), made, "q8_0", refs[0], tmp_path, 0.0).row
    assert started == [made.name, made.name]
    assert (row.loss, row.kl, row.retention) == (afresh.loss, afresh.kl, afresh.retention)
    assert row.passed and res.timings["retention_s"] >= 0


@pytest.mark.slow
def test_each_merged_tensor_reaches_the_quantizer_where_it_was_merged(color_run, llama, reference,
                                                                      tmp_path, monkeypatch):
    """The child hands each adapted tensor to the quantizer as merged, on the merge device (here
    the CPU; the GPU on a GPU host), instead of its 16-bit bytes to move there again; the base's
    own tensors (the embedding) go from their bytes. The file is llama-quantize's either way."""
    from fastft.export import direct, gpuquant
    from fastft.export.direct import ChildResult, main

    sources, given = [], []
    merge_source, floats = direct.merge_source, gpuquant._floats
    monkeypatch.setattr(direct, "merge_source",
                        lambda *a: sources.append(merge_source(*a)) or sources[-1])
    monkeypatch.setattr(gpuquant, "_floats",
                        lambda g, *a: given.append(g.values is not None) or floats(g, *a))
    job = child_job(color_run, llama, tmp_path / "x", ("Q8_0",))
    assert main(job.argv()) == 0
    assert ChildResult.read(job.result_file).quantized == {"Q8_0": "cpu"}
    assert filecmp.cmp(job.quants["Q8_0"], reference["Q8_0"], shallow=False)
    adapted = len(sources[0].lora)
    assert adapted > 0 and given.count(True) == adapted
    assert given.count(False) == len(given) - adapted >= 1     # token_embd.weight: not adapted


@pytest.mark.slow
def test_no_merge_crosses_back_to_the_cpu_where_the_converter_passes_it_through(
        color_run, llama, reference, tmp_path, monkeypatch):
    """Every adapted tensor is quantized in Q8_0, so the converter computes it with the base's
    own tensor standing in for the merge: every merge is made under a stand-in, none is copied
    back for the converter, and the file is still llama-quantize's. With direct.STAND_IN off
    (as before), or a gguf whose lazy tensors are not read as they were, every merge is copied
    back: the spy sees the difference."""
    from fastft.export import direct
    from fastft.export.direct import main

    recording, lazy_graph = direct.recording, direct.LAZY_GRAPH

    def merges(stand_in: bool, drifted: bool = False) -> dict[bool, int]:
        counts = {True: 0, False: 0}
        monkeypatch.setattr(direct, "LAZY_GRAPH", lazy_graph | ({"_renamed"} if drifted else set()))

        @contextlib.contextmanager
        def spied(stand_in=False):
            with recording(stand_in) as made:
                yield made
            counts[stand_in] += len(made)

        monkeypatch.setattr(direct, "recording", spied)
        monkeypatch.setattr(direct, "STAND_IN", stand_in)
        job = child_job(color_run, llama, tmp_path / f"stand-in-{stand_in}-{drifted}", ("Q8_0",))
        assert main(job.argv()) == 0
        assert filecmp.cmp(job.quants["Q8_0"], reference["Q8_0"], shallow=False)
        return counts

    standing_in, copied_back = merges(True), merges(False)
    assert standing_in[True] > 0 and standing_in[False] == 0
    assert copied_back == {True: 0, False: standing_in[True]}
    assert merges(True, drifted=True) == copied_back


@pytest.mark.slow
def test_a_tensor_the_converter_changes_is_quantized_from_the_merge_itself(
        color_run, llama, reference, tmp_path, monkeypatch):
    """A converter that swaps the halves of each attn_q (through a split, whose two halves share
    one computation): the base standing in shows the change, so those tensors are computed again
    from the merge, untouched by the stand-in's computation, and quantized from those bytes. The
    file is the one made with every merge copied back (direct.STAND_IN off)."""
    import torch

    from fastft.export import direct, gpuquant
    from fastft.export.direct import main

    real = direct.direct_class

    def swapping(conversion, gguf, model_cls, source):
        cls = real(conversion, gguf, model_cls, source)

        def modify_tensors(self, data, name, bid):
            for new, t in cls.modify_tensors(self, data, name, bid):
                if new.endswith("attn_q.weight"):
                    top, bottom = torch.chunk(t, 2, dim=0)
                    t = torch.cat([bottom, top])
                yield new, t

        return type(cls.__name__, (cls,), {"model_arch": cls.model_arch,
                                           "modify_tensors": modify_tensors})

    monkeypatch.setattr(direct, "direct_class", swapping)
    given, floats = [], gpuquant._floats
    monkeypatch.setattr(gpuquant, "_floats",
                        lambda g, *a: given.append(g.values is not None) or floats(g, *a))
    files, handed = {}, {}
    for stand_in in (True, False):
        monkeypatch.setattr(direct, "STAND_IN", stand_in)
        job = child_job(color_run, llama, tmp_path / f"stand-in-{stand_in}", ("Q8_0",))
        assert main(job.argv()) == 0
        files[stand_in], handed[stand_in] = job.quants["Q8_0"], given.count(True)
        given.clear()
    assert filecmp.cmp(files[True], files[False], shallow=False)
    assert not filecmp.cmp(files[True], reference["Q8_0"], shallow=False)   # the swap took
    config = json.loads((Path(color_run.model_path) / "config.json").read_text())
    adapted = len(direct.merge_source(color_run.adapter_dir, color_run.model_path).lora)
    # each attn_q from its bytes, every other adapted tensor handed over, either way
    assert handed == {True: adapted - config["num_hidden_layers"], False: handed[True]}


def test_merged_values_are_handed_over_only_for_the_merge_s_own_bytes():
    """merged_values gives the merge device's tensor only when the converter's bytes are exactly
    the one merge's: a changed element, another length or dtype, two merges or none: None."""
    import numpy as np
    import torch

    from fastft.export.direct import merged_values

    values = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4)
    made = [(values.clone(), values)]
    raw = values.view(torch.uint8).numpy().reshape(-1).copy()
    assert merged_values(raw, made) is values
    changed = raw.copy()
    changed[5] ^= 1
    assert merged_values(changed, made) is None
    assert merged_values(raw[:-2], made) is None
    widened = values.float().view(torch.uint8).numpy().reshape(-1).copy()
    assert merged_values(widened, made) is None
    assert merged_values(raw, made * 2) is None
    assert merged_values(raw, []) is None
    odd = np.frombuffer(b"\x01\x02\x03", dtype=np.uint8)        # not a whole number of words
    assert merged_values(odd, [(torch.tensor([1, 2, 3], dtype=torch.uint8), "on device")]) \
        == "on device"


@pytest.mark.slow
def test_a_type_it_cannot_make_gets_the_16_bit_file(color_run, llama, reference, tmp_path,
                                                     monkeypatch):
    """When llama-quantize's plan names a type gpuquant does not make, the child writes the
    16-bit GGUF after all (the header it planned from rewound), for llama-quantize."""
    from fastft.export import gpuquant
    from fastft.export.direct import ChildResult, main

    monkeypatch.setattr(gpuquant.Plan, "unsupported", lambda self: "output.weight becomes iq4_xs")
    job = child_job(color_run, llama, tmp_path / "x", ("Q8_0",))
    assert main(job.argv()) == 0
    assert ChildResult.read(job.result_file).quantized == {}
    assert not job.quants["Q8_0"].exists()
    assert filecmp.cmp(job.outfile, reference["BF16"], shallow=False)


@pytest.mark.slow
def test_out_of_memory_while_quantizing_gets_the_16_bit_file(color_run, llama, reference,
                                                             tmp_path, monkeypatch):
    """The device out of memory halfway: what was begun is removed, and the 16-bit GGUF is
    written from a second pass over the merge (the first one's tensors are gone)."""
    import torch

    from fastft.export import kquants
    from fastft.export.direct import ChildResult, main

    real, calls = kquants.quantize, []

    def fails_later(x, kind):
        calls.append(kind)
        if len(calls) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (a test)")
        return real(x, kind)

    monkeypatch.setattr(kquants, "quantize", fails_later)
    job = child_job(color_run, llama, tmp_path / "x", ("Q8_0",))
    assert main(job.argv()) == 0
    assert len(calls) > 3              # it did run out, after some tensors were written
    assert ChildResult.read(job.result_file).quantized == {}
    assert not job.quants["Q8_0"].exists()
    assert filecmp.cmp(job.outfile, reference["BF16"], shallow=False)


@pytest.mark.gpu
def test_on_cuda_q4_k_m_and_q8_0_are_made_in_the_child(color_run, llama, reference, tmp_path):
    """On a GPU, by default: both files from one pass over the merge, each llama-quantize's
    from the 16-bit GGUF, byte for byte."""
    from fastft.export.llamacpp import quantize_ggufs

    res = export(color_run, tmp_path / "out", ("q4_k_m", "q8_0"))
    assert ExportManifest.read(res.out_dir).quantized_by == {
        p.name: "cuda" for p in res.ggufs.values()}
    q4 = tmp_path / "ref.Q4_K_M.gguf"
    quantize_ggufs(llama, reference["BF16"], {"Q4_K_M": q4}, tmp_path)
    assert filecmp.cmp(res.ggufs["q4_k_m"], q4, shallow=False)
    assert filecmp.cmp(res.ggufs["q8_0"], reference["Q8_0"], shallow=False)


@pytest.mark.gpu
def test_each_thread_gets_its_own_cuda_stream():
    """gpuquant.own_stream: one stream per thread, kept for the thread, never the default one
    (which would make every thread's copies and kernels wait for the others'); None off CUDA."""
    import threading

    import torch

    from fastft.export.gpuquant import own_stream

    mine = own_stream("cuda")
    assert mine is own_stream("cuda") and mine != torch.cuda.default_stream()
    other = []
    thread = threading.Thread(target=lambda: other.append(own_stream("cuda")))
    thread.start()
    thread.join()
    assert other[0] != mine and other[0] != torch.cuda.default_stream()
    assert own_stream("cpu") is None
