"""fastft.export.gpuquant and kquants: llama-quantize's files, made with torch.

The claim is bytes: each block, and each whole file, equal to what llama-quantize writes from
the same 16-bit GGUF of the tiny model. On this CPU the k-quant search over the tiny model's
39M-element embedding takes half a minute, so the CPU tests compare every Q4_K and Q6_K block
of the layers and a slice of the embedding, and the whole Q8_0 file; the GPU test compares the
whole Q4_K_M, Q6_K and Q8_0 files made on CUDA.
"""

from __future__ import annotations

import numpy as np
import pytest

EMBED_ROWS = 2048          # of the embedding's 151,936: a slice the CPU quantizes in a second


@pytest.fixture(scope="module")
def llama():
    from fastft.export.llamacpp import ensure_llama_cpp

    return ensure_llama_cpp()


@pytest.fixture(scope="module")
def files(llama, tiny_path, tmp_path_factory):
    """The tiny model as a BF16 GGUF, and llama-quantize's Q4_K_M, Q8_0 and Q6_K of it."""
    from fastft.export.llamacpp import convert_to_gguf, quantize_ggufs

    folder = tmp_path_factory.mktemp("gpuquant")
    src = folder / "tiny.BF16.gguf"
    convert_to_gguf(llama, tiny_path, src, "bf16", "tiny", folder / "convert.log")
    refs = {q: folder / f"ref.{q}.gguf" for q in ("Q4_K_M", "Q8_0", "Q6_K")}
    quantize_ggufs(llama, src, refs, folder)
    return src, refs


def _tensors(path) -> dict[str, tuple[str, bytes, tuple]]:
    """name -> (type as llama-quantize names it, data bytes, dims) of each tensor in `path`."""
    from fastft.export.gguf import read_header
    from fastft.export.gpuquant import _TYPE_NAMES, _nbytes

    buf = path.read_bytes()
    header = read_header(buf)
    out = {}
    for ti in header.tensors:
        kind = _TYPE_NAMES.get(ti.type, f"type {ti.type}")
        start = header.data_start + ti.offset
        size = _nbytes(ti.elements, kind) if ti.type in _TYPE_NAMES else 0
        out[ti.name] = kind, buf[start:start + size], ti.dims
    return out


def _floats(data: bytes):
    import torch

    return torch.frombuffer(bytearray(data), dtype=torch.bfloat16).float()


def test_the_plan_is_the_file_llama_quantize_writes(llama, files):
    """--dry-run's plan lists the tensors in the order, and with the types, of the real file."""
    from fastft.export.gpuquant import dry_run

    src, refs = files
    for qtype, ref in refs.items():
        plan = dry_run(llama.quantize, src, qtype)
        written = _tensors(ref)
        assert [name for name, _, _ in plan] == list(written)
        assert [new for _, _, new in plan] == [kind for kind, _, _ in written.values()]
        assert {old for _, old, _ in plan} == {"bf16", "f32"}


def test_q4_k_and_q6_k_blocks_are_llama_quantizes(llama, files):
    """Every Q4_K and Q6_K block of the Q4_K_M file's layers, and the embedding's first rows
    (Q6_K: it is tied to the output), byte for byte."""
    from fastft.export import kquants

    src, refs = files
    source, written = _tensors(src), _tensors(refs["Q4_K_M"])
    seen = set()
    for name, (kind, want, dims) in written.items():
        if not kquants.supported(kind):
            continue
        x = _floats(source[name][1])
        if name == "token_embd.weight":
            x = x[:EMBED_ROWS * dims[0]]
            want = want[:x.numel() // 256 * kquants.BLOCKS[kind][1]]
        assert kquants.quantize(x, kind).numpy().tobytes() == want, name
        seen.add(kind)
    assert seen == {"q4_K", "q6_K"}


def test_q8_0_file_is_llama_quantizes_and_other_types_go_to_it(llama, files, tmp_path):
    """One call: Q8_0 made by torch (here on the CPU) is llama-quantize's file, byte for byte;
    Q5_K_M, whose q5_K blocks torch does not make, is made by llama-quantize meanwhile."""
    from fastft.export.gpuquant import quantize

    src, refs = files
    outputs = {"Q8_0": tmp_path / "t.Q8_0.gguf", "Q5_K_M": tmp_path / "t.Q5_K_M.gguf"}
    made = quantize(llama, src, outputs, tmp_path, on="cpu")
    assert made == {"Q8_0": "cpu", "Q5_K_M": "llama-quantize"}
    assert outputs["Q8_0"].read_bytes() == refs["Q8_0"].read_bytes()
    assert "type 13" in {kind for kind, _, _ in _tensors(outputs["Q5_K_M"]).values()}   # q5_K


def test_no_gpu_means_llama_quantize(llama, files, tmp_path):
    from fastft.export.gpuquant import quantize

    src, _ = files
    out = tmp_path / "t.Q8_0.gguf"
    assert quantize(llama, src, {"Q8_0": out}, tmp_path, on=None) == {"Q8_0": "llama-quantize"}
    assert out.is_file()


def test_out_of_gpu_memory_falls_back_to_llama_quantize(llama, files, tmp_path, monkeypatch):
    """A GPU another process fills (or a small card) is no failed export: llama-quantize makes
    the file instead, and the result says so."""
    import torch

    from fastft.export import gpuquant, kquants

    def full(x, kind):
        raise torch.OutOfMemoryError("CUDA out of memory")
    monkeypatch.setattr(kquants, "quantize", full)
    src, refs = files
    out = tmp_path / "t.Q8_0.gguf"
    assert gpuquant.quantize(llama, src, {"Q8_0": out}, tmp_path, on="cpu") == \
        {"Q8_0": "llama-quantize"}
    assert out.read_bytes() == refs["Q8_0"].read_bytes()


def test_a_plan_that_does_not_fit_the_file_fails_and_leaves_nothing(llama, files, tmp_path):
    """A plan that names another file's tensors (here: one missing) writes nothing; one that
    fails midway (a type read wrongly) removes what it began."""
    from fastft.export.gpuquant import GpuQuantError, Plan, dry_run, quantize_file

    src, _ = files
    rows = dry_run(llama.quantize, src, "Q8_0")
    plan = Plan("Q8_0", tmp_path / "t.Q8_0.gguf", rows[:-1])
    with pytest.raises(GpuQuantError, match="tensors"):
        quantize_file(src, [plan], "cpu")
    assert not plan.dst.exists()
    last = rows[-1]
    plan = Plan("Q8_0", tmp_path / "t.Q8_0.gguf", rows[:-1] + [(last[0], "f16", last[2])])
    with pytest.raises(GpuQuantError, match="reads it as f16"):
        quantize_file(src, [plan], "cpu")
    assert not plan.dst.exists()


def test_a_small_card_quantizes_in_smaller_chunks_to_the_same_bytes(monkeypatch):
    """Less free GPU memory (the direct child quantizes beside the gate's model): chunks within a
    quarter of what is free; whole blocks either way, so the same bytes."""
    import torch

    from fastft.export import gpuquant

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (400 << 20, 8 << 30))
    n = gpuquant.chunk_elements("cuda")
    assert n < gpuquant.CHUNK and n * gpuquant.BYTES_PER_ELEMENT <= (400 << 20) // 4
    assert gpuquant.chunk_elements("cpu") == gpuquant.CHUNK
    x = torch.randn(1 << 16, generator=torch.Generator().manual_seed(0)) * 0.02
    whole = gpuquant._quantized(x, "q4_K")
    monkeypatch.setattr(gpuquant, "chunk_elements", lambda device: 1 << 12)
    assert gpuquant._quantized(x, "q4_K") == whole


def test_bytes_standing_in_for_a_tensor_are_never_written():
    """A tensor the direct export hands over with the base's bytes standing in (Given.stand_in)
    is written only as its values quantized: a plan that keeps it 16-bit, or no values, fails;
    values of another dtype than the file's fail too, where before they read the bytes."""
    import torch

    from fastft.export import gpuquant
    from fastft.export.gguf import TensorInfo

    values = torch.randn(4, 256, generator=torch.Generator().manual_seed(0)).bfloat16()
    base = torch.zeros_like(values).view(torch.uint8).numpy().reshape(-1)
    ti = TensorInfo("blk.0.attn_q.weight", (256, 4), gpuquant.TYPE_IDS["bf16"], 0)
    quantizer = gpuquant.Quantizer("cpu")
    made = gpuquant._tensor(gpuquant.Given(base, values, stand_in=True), None, ti,
                            [(ti.name, "bf16", "q8_0")], quantizer)
    assert made == [gpuquant._quantized(values.reshape(-1).float(), "q8_0")]
    for given, rows in [(gpuquant.Given(base, values, stand_in=True),
                         [(ti.name, "bf16", "q8_0"), (ti.name, "bf16", "bf16")]),
                        (gpuquant.Given(base, None, stand_in=True), [(ti.name, "bf16", "q8_0")]),
                        (gpuquant.Given(base, values.half()), [(ti.name, "bf16", "q8_0")])]:
        with pytest.raises(gpuquant.GpuQuantError):
            gpuquant._tensor(given, None, ti, rows, quantizer)


def test_c_rounding_is_kept():
    """The steps where torch's defaults round otherwise than the C: a number over a tensor
    (torch multiplies by a reciprocal), sqrtf (torch's CPU sqrt can be an ulp off), roundf."""
    import torch

    from fastft.export import kquants

    x = torch.tensor([0.00036586725036613643], dtype=torch.float32)
    assert kquants._sqrt(x).item() == float(np.sqrt(np.float32(x.item())))
    d = torch.tensor([3.0, 7.0, 0.1, 1e-3], dtype=torch.float32)
    assert kquants._div(63, d).tolist() == [float(np.float32(63) / np.float32(v)) for v in d.tolist()]
    v = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.49999997], dtype=torch.float32)
    assert kquants._roundf(v).tolist() == [-3, -2, -1, 1, 2, 3, 0]
    assert kquants._nearest(v).tolist() == [-2, -2, -0.0, 0, 2, 2, 0]


@pytest.mark.gpu
def test_whole_files_on_cuda_are_llama_quantizes(llama, files, tmp_path, caplog):
    """Through CUDA graphs (none failed to capture: a failure would fall back without them)."""
    from fastft.export.gpuquant import quantize

    src, refs = files
    outputs = {q: tmp_path / f"t.{q}.gguf" for q in refs}
    assert quantize(llama, src, outputs, tmp_path, on="cuda") == {q: "cuda" for q in refs}
    for q, ref in refs.items():
        assert outputs[q].read_bytes() == ref.read_bytes(), q
    assert "graph capture" not in caplog.text


@pytest.mark.gpu
def test_a_graph_replays_the_same_bytes_for_each_tensor_of_its_size():
    """One capture per (type, size), replayed for every tensor of that size: each replay's
    bytes are those of the kernels launched one by one."""
    import torch

    from fastft.export import gpuquant

    quantizer = gpuquant.Quantizer("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    for target in ("q4_K", "q6_K", "q8_0"):
        for scale in (0.02, 1.0, 0.0):
            x = torch.randn(1 << 20, device="cuda", generator=g) * scale
            assert quantizer.quantized(x, target) == gpuquant._quantized(x, target), (target, scale)
    assert sorted(quantizer.graphs) == [("q4_K", 1 << 20), ("q6_K", 1 << 20), ("q8_0", 1 << 20)]
