"""fastft.export.kquants_triton: the Triton kernels' Q4_K and Q6_K blocks are the torch path's,
byte for byte (the torch path is checked against llama-quantize in tests/test_gpuquant.py).

On the CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, read when Triton is
imported: a child process), whose float32 arithmetic is numpy's: IEEE, each operation rounded
once, div_rn and sqrt_rn correctly rounded. Whether the GPU rounds the same is the compiled
code's question: its PTX is checked here (no fused multiply-add, no flush to zero, the exact
division and root), and its bytes on CUDA by the GPU tests.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

TYPES = ("q4_K", "q6_K")
BLOCKS = 64                # blocks (256 elements) per case
# The interpreter's time is per operation, hardly per element (one program takes 2^16
# sub-blocks): 2048 more blocks of weights cost a second, and catch the one-ulp slips (a
# product's operands grouped otherwise, a reciprocal for a division) that change a decision
# once in a few thousand sub-blocks.
WEIGHTS_BLOCKS = 2048


def _per_block(x, make):
    """x (a whole number of 256-element blocks) with each block replaced by make(block index)."""
    return torch.stack([make(i) for i in range(x.numel() // 256)]).reshape(-1)


def _ties(g, n: int):
    """Sub-blocks whose first levels are halves: Q4_K's 32 elements span 15 * 2^k, with
    half-integer steps of 2^k in between (iscale 2^-k, shifted or not); Q6_K's 16 have one of
    -32 * 2^k and halves (iscale 2^-k). Both round half to even."""
    groups = []
    for j in range(n // 32):
        k = float(2 ** (j % 7 - 3))
        halves = torch.arange(15) + 0.5
        if j % 2:
            q4 = torch.cat([torch.tensor([0.0, 15.0]), halves, halves.flip(0)])
            groups.append((q4[torch.randperm(32, generator=g)] - 7.5 * (j % 4 == 1)) * k)
        else:
            q6 = torch.randint(-31, 31, (2, 15), generator=g) + 0.5
            groups.append(torch.cat([torch.full((2, 1), -32.0), q6], dim=1).reshape(-1) * k)
    return torch.cat(groups)


def cases(blocks: int = BLOCKS) -> dict[str, torch.Tensor]:
    """name -> float32 values, a whole number of blocks each: what the searches meet in
    weights, and the edges where a float operation or a comparison could go otherwise."""
    g = torch.Generator().manual_seed(0)
    n = blocks * 256

    def normal():
        return torch.randn(n, generator=g)

    out = {f"normal*{s:g}": normal() * s for s in (0.02, 1.0, 1e-3, 300.0)}
    out["many normal*0.02"] = torch.randn(WEIGHTS_BLOCKS * 256, generator=g) * 0.02
    out["bf16 weights"] = (normal() * 0.02).bfloat16().float()
    out["zeros"] = torch.zeros(n)
    out["negative zeros"] = torch.full((n,), -0.0)
    signed = normal().abs()
    signed[::7], signed[3::11] = -0.0, 0.0        # a sub-block's lowest is +0 or -0
    out["positive with signed zeros"] = signed
    flat = torch.randn(n // 32, generator=g)
    flat[::3] = 0.0
    out["flat sub-blocks"] = flat.repeat_interleave(32)
    out["flat halves"] = torch.randn(n // 16, generator=g).repeat_interleave(16)
    for size in (1e4, 1e20):                        # 1e20: its square is inf
        spiked = normal() * 0.02
        at = torch.randint(0, 256, (blocks,), generator=g) + torch.arange(blocks) * 256
        spiked[at] = size * torch.sign(torch.randn(blocks, generator=g))
        out[f"outlier {size:g}"] = spiked
    out["tiny 1e-38"] = normal() * 1e-38            # normal and subnormal floats
    out["subnormal 1e-43"] = normal() * 1e-43
    out["ties"] = _ties(g, n)
    signs = torch.tensor([1.0, -1.0]).repeat_interleave(16).repeat(n // 32)
    out["sub-blocks of one sign"] = normal().abs() * signs
    out["only negative"] = -normal().abs()
    out["only positive"] = normal().abs()
    ends = normal() * 0.1
    ends[::16], ends[5::16] = 2.0, -2.0             # equal magnitudes: the first is Q6_K's top
    ends[8::32], ends[13::32] = -3.0, 3.0
    out["equal largest magnitudes"] = ends
    nan = normal() * 0.02
    nan[7::512] = float("nan")                     # torch's argmax takes NaN as the largest
    out["a NaN in some sub-blocks"] = nan
    return out


def compare(device: str, extra: dict | None = None) -> list[str]:
    """Each case's blocks by the Triton kernels and by torch, on `device`: the cases (and
    `extra`) whose bytes differ, or where the torch search ran on the Triton path."""
    from fastft.export import kquants

    data = {**cases(), **(extra or {})}
    x = torch.cat(list(data.values())).to(device)
    bad = []
    for kind in TYPES:
        want = kquants.quantize(x, kind, triton=False)
        saved = kquants._make_qkx2_quants, kquants._make_qx_quants
        kquants._make_qkx2_quants = kquants._make_qx_quants = _not_here
        try:
            got = kquants.quantize(x, kind, triton=True)
        finally:
            kquants._make_qkx2_quants, kquants._make_qx_quants = saved
        assert got.shape == want.shape == (x.numel() // 256 * kquants.BLOCKS[kind][1],)
        start = 0
        for name, values in data.items():
            end = start + values.numel() // 256 * kquants.BLOCKS[kind][1]
            if not torch.equal(got[start:end], want[start:end]):
                bad.append(f"{kind} {name}: {int((got[start:end] != want[start:end]).sum())} bytes")
            start = end
    return bad


def _not_here(*args):
    raise AssertionError("the torch search ran on the Triton path")


def test_interpreted_kernels_make_the_torch_paths_bytes():
    """Every case through Triton's interpreter on the CPU, against the torch path."""
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_kquants_triton import compare
        bad = compare("cpu")
        print("\\n".join(bad) or "same bytes")
        sys.exit(1 if bad else 0)
    """)
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parent.parent, timeout=300)
    assert proc.returncode == 0 and "same bytes" in proc.stdout, proc.stdout + proc.stderr[-3000:]


def test_cases_reach_the_edges():
    """The cases hold what they are named for: flat and all-zero sub-blocks, halves in the
    first rounding, subnormals, an overflowing square."""
    data = cases()
    q4 = data["flat sub-blocks"].reshape(-1, 32)
    assert (q4 == q4[:, :1]).all() and (q4[:, 0] < 0).any() and (q4[:, 0] == 0).any()
    ties = data["ties"].reshape(-1, 32)[1::2]          # Q4_K's: lowest 0 or shifted
    lo = ties.amin(dim=1, keepdim=True).clamp(max=0)
    first = (15 / (ties.amax(dim=1, keepdim=True) - lo)) * (ties - lo)
    assert ((first - first.floor()) == 0.5).sum(dim=1).min() == 30
    tiny = data["subnormal 1e-43"]
    assert (tiny.abs() < torch.finfo(torch.float32).tiny).all() and (tiny != 0).float().mean() > 0.9
    assert torch.isinf(data["outlier 1e+20"] ** 2).sum() == BLOCKS


def test_the_path_is_triton_for_cuda_tensors_unless_triton_is_off_or_missing(monkeypatch):
    """Left to choose, a CUDA tensor's searches run in Triton and a CPU tensor's in torch;
    kquants.TRITON off, or a Triton that does not import, means torch (asked for, it raises)."""
    from types import SimpleNamespace

    from fastft.export import kquants, kquants_triton

    cuda, cpu = SimpleNamespace(is_cuda=True), SimpleNamespace(is_cuda=False)
    assert kquants._kernels(cuda, None) is kquants_triton and kquants._kernels(cpu, None) is None
    assert kquants._kernels(cpu, True) is kquants_triton and kquants._kernels(cuda, False) is None
    monkeypatch.setattr(kquants, "TRITON", False)
    assert kquants._kernels(cuda, None) is None
    monkeypatch.setattr(kquants, "TRITON", True)
    import fastft.export

    monkeypatch.delattr(fastft.export, "kquants_triton")
    monkeypatch.setitem(sys.modules, "fastft.export.kquants_triton", None)   # import fails
    assert kquants._kernels(cuda, None) is None
    with pytest.raises(ImportError):
        kquants._kernels(cuda, True)


def test_kernels_that_fail_to_build_leave_the_torch_path(monkeypatch, caplog):
    """Left to choose, a Triton that cannot build or launch its kernels (a GPU or toolchain it
    does not support) gives the torch path's bytes, says so once and stays off; asked for, or
    out of GPU memory (the export then falls back to llama-quantize), the error is the caller's."""
    import types

    import torch

    from fastft.export import kquants

    x = torch.randn(4 * kquants.QK_K, generator=torch.Generator().manual_seed(3)) * 0.02
    expected = {t: kquants.quantize(x, t, triton=False) for t in ("q4_K", "q6_K")}

    def broken(*args, **kwargs):
        raise RuntimeError("PTX .version 8.7 does not support .target sm_35\nmore")

    failing = types.SimpleNamespace(make_qkx2_quants=broken, make_qx_quants=broken)
    monkeypatch.setattr(kquants, "_kernels", lambda x, triton: failing if kquants.TRITON else None)
    monkeypatch.setattr(kquants, "TRITON", True)
    with pytest.raises(RuntimeError):
        kquants.quantize(x, "q4_K", triton=True)
    assert kquants.TRITON
    for t in ("q4_K", "q6_K"):
        assert torch.equal(kquants.quantize(x, t), expected[t])
    assert not kquants.TRITON and caplog.text.count("Triton k-quant kernels failed") == 1
    assert "sm_35" in caplog.text and "more" not in caplog.text

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(kquants, "TRITON", True)
    failing.make_qkx2_quants = no_memory
    with pytest.raises(torch.OutOfMemoryError):
        kquants.quantize(x, "q4_K")
    assert kquants.TRITON


def test_compiled_kernels_round_each_operation_once():
    """The kernels as compiled for an H100 (no GPU needed): no fused multiply-add in the PTX
    (with Triton's default fusion there is), every float add, subtract and multiply rounded to
    nearest, divisions and roots IEEE's (div.rn, sqrt.rn), nothing flushed to zero."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fastft.export import kquants_triton as kt

    signatures = {
        kt._q4_search: ({"x_ptr": "*fp32", "lo_ptr": "*fp32", "hi_ptr": "*fp32", "l_ptr": "*fp32",
                         "scale_ptr": "*fp32", "min_ptr": "*fp32", "S": "i32"},
                        {"NMAX": 15, "RMIN": -1.0, "RDELTA": 0.1, "NSTEP": 20}),
        kt._q6_search: ({"x_ptr": "*fp32", "l_ptr": "*fp32", "scale_ptr": "*fp32", "S": "i32"},
                        {"NMAX": 32, "EPS": 1e-15}),
    }
    for kernel, (signature, constants) in signatures.items():
        constants = {**constants, "BLOCK": kt.CUDA_BLOCK}
        source = ASTSource(kernel, signature={**signature, **{k: "constexpr" for k in constants}},
                           constexprs=constants)
        ptx = {}
        for fused in (False, True):
            options = {**kt.OPTIONS, "enable_fp_fusion": fused}
            ptx[fused] = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                                        options=options).asm["ptx"]
        name, code = kernel.fn.__name__, ptx[False]
        assert "fma." in ptx[True], name
        ops = set(re.findall(r"\b(?:fma|mad|add|sub|mul|div|sqrt|rcp)\.[a-z0-9.]*f32\b", code))
        assert ops <= {"add.rn.f32", "sub.rn.f32", "mul.rn.f32", "div.rn.f32", "sqrt.rn.f32"}, \
            (name, ops)
        assert "div.rn.f32" in ops and ".ftz" not in code and ".approx" not in code, name


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_cuda_kernels_make_the_torch_paths_bytes():
    """The cases, and 2^22 normal values, on the GPU: the compiled kernels against torch."""
    g = torch.Generator().manual_seed(1)
    extra = {"2^22 normal*0.02": torch.randn(1 << 22, generator=g) * 0.02}
    assert compare("cuda", extra) == []


@pytest.mark.gpu
@needs_cuda
def test_a_cuda_graph_of_the_kernels_makes_the_torch_paths_bytes():
    """gpuquant's Quantizer captures kquants.quantize, here the Triton path, as a CUDA graph:
    each replay's bytes are the torch path's launched one by one."""
    from functools import partial

    from fastft.export import gpuquant, kquants, kquants_triton

    quantizer = gpuquant.Quantizer("cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    torch_path = partial(kquants.quantize, triton=False)
    for kind in TYPES:
        for scale in (0.02, 1.0, 0.0):
            x = torch.randn(1 << 20, device="cuda", generator=g) * scale
            assert kquants._kernels(x, None) is kquants_triton
            assert quantizer.quantized(x, kind) == gpuquant._quantized(x, kind, run=torch_path), \
                (kind, scale)
    assert sorted(quantizer.graphs) == [(kind, 1 << 20) for kind in TYPES]
