"""ggml's Q4_K, Q6_K and Q8_0 blocks, computed with torch (on the GPU when there is one, the
k-quants' scale searches there as Triton kernels).

llama-quantize spends most of its time in the k-quants' scale searches: 31.6 s of a 77 s export
of the 4B model on a 16-core host, while the GPU that merged the adapter sits idle. These are
ggml's reference quantizers (ggml/src/ggml-quants.c: quantize_row_q4_K_ref, _q6_K_ref, _q8_0_ref,
what llama-quantize runs without an importance matrix), restated op for op so that the bytes
are llama-quantize's own:

- that C is compiled into ggml-base for baseline x86-64 (no FMA) without -ffast-math, so each
  float operation rounds on its own and every sum adds its terms in order. Here each product and
  sum is one torch op (IEEE single precision, no contraction), and each sum over a block's
  elements is a chain of adds in the C loop's order (`_chain`), vectorised across blocks;
- `nearest_int` (the 1.5 * 2^23 trick) rounds half to even, as torch.round does; roundf rounds
  half away from zero (`_roundf`); float -> half rounds to nearest even in both.

A block's elements lie along dim 0 and the blocks along dim 1 (`x.T`), so that every element
step of a chain is a contiguous row. tests/test_gpuquant.py compares files made here with
llama-quantize's, byte for byte.

On CUDA the two scale searches (`_make_qkx2_quants` with Q4_K's weights, `_make_qx_quants`)
run as Triton kernels instead (fastft.export.kquants_triton; TRITON, or quantize's `triton`):
in torch each of their ~20 steps is some thirty whole-tensor kernels, memory-bound, where a
kernel reads each sub-block and keeps its search in registers. They are the same float
operations in the same order (no FMA, correctly rounded divisions and roots, in-order sums),
so the same bytes: tests/test_kquants_triton.py compares the two paths in Triton's interpreter
on the CPU and on CUDA, and checks the compiled PTX. The rest (super-block scales, packing)
is torch's in both.
"""

from __future__ import annotations

QK_K = 256
# type name (as llama-quantize prints it) -> (elements, bytes) per block
BLOCKS = {"q4_K": (QK_K, 144), "q6_K": (QK_K, 210), "q8_0": (32, 34)}
GROUP_MAX_EPS = 1e-15
# The scale searches of CUDA tensors as Triton kernels (kquants_triton); off: torch's ops there too.
TRITON = True


def supported(ggml_type: str) -> bool:
    return ggml_type in BLOCKS


def quantize(x, ggml_type: str, triton: bool | None = None):
    """`x` (float32, 1-D, a whole number of blocks) as `ggml_type` blocks: uint8, on x's device.
    `triton`: the scale searches as Triton kernels (the same bytes; the CPU tests run them in
    Triton's interpreter) or as torch ops; None: Triton for a CUDA tensor where TRITON is on
    and Triton imports."""
    blocks = x.reshape(-1, BLOCKS[ggml_type][0])
    if ggml_type == "q8_0":
        return _q8_0(blocks).reshape(-1)
    search = {"q4_K": _q4_k, "q6_K": _q6_k}[ggml_type]
    kernels = _kernels(x, triton)
    if kernels is None:
        return search(blocks).reshape(-1)
    import torch

    try:
        return search(blocks, kernels).reshape(-1)
    except Exception as e:
        if triton or isinstance(e, torch.OutOfMemoryError):   # the caller's to handle
            raise
        return _without_triton(e, search, blocks)


def _without_triton(e: Exception, search, blocks):
    """The torch path, for this call and the rest of the process, where Triton could not build
    or launch its kernels (a GPU or a toolchain it does not support): the same bytes, slower."""
    import logging

    global TRITON
    TRITON = False
    logging.warning("the Triton k-quant kernels failed (%s: %s): quantizing with torch's ops",
                    type(e).__name__, str(e).splitlines()[0] if str(e) else "")
    return search(blocks).reshape(-1)


def _kernels(x, triton: bool | None):
    """fastft.export.kquants_triton where the searches run in Triton, else None. Left to
    choose (None), not on AMD's GPUs (the kernels' bytes are checked on NVIDIA's), nor where
    Triton does not import; asked for, Triton must import."""
    import torch

    chosen = (x.is_cuda and TRITON and torch.version.hip is None) if triton is None else triton
    if not chosen:
        return None
    try:
        from . import kquants_triton
    except ImportError:
        if triton:
            raise
        return None
    return kquants_triton


# -- the C's arithmetic --------------------------------------------------------------------------

def _step(base: int, start: float, delta: float, step: int) -> float:
    """The C's `start + delta*step + base` with float operands (int ones converted), each
    operation rounded to float as the C rounds it."""
    import numpy as np

    f = np.float32
    return float(f(f(start) + f(delta) * f(step)) + f(base))


def _chain(t, start=None):
    """Sum over dim 0 in order: `s = start; for i: s += t[i]` (start None: s = t[0], then the rest)."""
    s = t[0].clone() if start is None else start + t[0]
    for i in range(1, t.shape[0]):
        s += t[i]
    return s


def _zero_chain(t):
    """`float s = 0; for i: s += t[i]`."""
    import torch

    return _chain(t, torch.zeros_like(t[0]))


def _div(a, b):
    """a / b, rounded once. torch turns a division by a number into a multiplication by its
    reciprocal (and a number over a tensor into the number times the tensor's reciprocal):
    two roundings, not the C's one. So a number becomes a tensor first."""
    import torch

    like = b if isinstance(b, torch.Tensor) else a
    a = a if isinstance(a, torch.Tensor) else torch.full_like(like, a)
    b = b if isinstance(b, torch.Tensor) else torch.full_like(like, b)
    return torch.div(a, b)


def _sqrt(v):
    """sqrtf, correctly rounded: torch's CPU sqrt is not always (one ulp off); the double's
    root rounded to float is (53 >= 2 * 24 + 2 bits)."""
    import torch

    return torch.sqrt(v.double()).float()


def _nearest(v):
    import torch

    return torch.round(v)


def _roundf(v):
    """C's roundf: halves away from zero."""
    import torch

    t = torch.trunc(v)
    return torch.where((v - t).abs() == 0.5, t + torch.sign(v), torch.round(v))


def _half_bytes(v):
    """float32 values -> their float16 (ggml_half) bytes, 2 per value, little-endian."""
    import torch

    return v.to(torch.float16).view(torch.uint8).reshape(*v.shape, 2)


# -- Q8_0 ----------------------------------------------------------------------------------------

def _q8_0(x):
    import torch

    amax = x.abs().amax(dim=1)
    d = _div(amax, 127)
    inv = torch.where(d != 0, _div(1, d), torch.zeros_like(d))
    q = _roundf(x * inv[:, None]).to(torch.int8).view(torch.uint8)
    return torch.cat([_half_bytes(d), q], dim=1)


# -- Q4_K ----------------------------------------------------------------------------------------

def _make_qkx2_quants(x, w, nmax: int, rmin: float, rdelta: float, nstep: int):
    """make_qkx2_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, false) for
    every column of x (its elements along dim 0): (L, scale, the_min)."""
    import torch

    lo, hi = _bounds(x)
    sum_w = _chain(w)
    sum_x = _chain(w * x)
    flat = hi == lo
    span = hi - lo
    iscale = _div(nmax, span)
    scale = _div(1, iscale)
    L = torch.clamp(_nearest(iscale * (x - lo)), 0, nmax)
    diff = scale * L + lo - x
    best = _zero_chain(w * (diff * diff))
    for step in range(nstep + 1):
        iscale = _div(_step(nmax, rmin, rdelta, step), hi - lo)
        laux = torch.clamp(_nearest(iscale * (x - lo)), 0, nmax)
        wl = w * laux
        sum_l, sum_l2, sum_xl = _zero_chain(torch.stack([wl, wl * laux, wl * x], dim=1))
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = _div(sum_w * sum_xl - sum_x * sum_l, D)
        this_min = _div(sum_l2 * sum_x - sum_l * sum_xl, D)
        positive = this_min > 0
        this_min = torch.where(positive, torch.zeros_like(this_min), this_min)
        this_scale = torch.where(positive, _div(sum_xl, sum_l2), this_scale)
        diff = this_scale * laux + this_min - x
        cur = _zero_chain(w * (diff * diff))
        better = (D > 0) & (cur < best)
        L = torch.where(better, laux, L)
        best = torch.where(better, cur, best)
        scale = torch.where(better, this_scale, scale)
        lo = torch.where(better, this_min, lo)
    zero = torch.zeros_like(scale)
    L = torch.where(flat, torch.zeros_like(L), L)
    return L, torch.where(flat, zero, scale), -lo


def _bounds(x):
    """Each column's lowest element (0 where it is positive) and its highest."""
    import torch

    return torch.clamp(x.amin(dim=0), max=0.0), x.amax(dim=0)


def _q4_k(x, kernels=None):
    import torch

    nb = x.shape[0]
    xs = x.reshape(nb * 8, 32).T.contiguous()            # (32, subblocks)
    if kernels is not None:
        L, scales, mins = kernels.make_qkx2_quants(xs, *_bounds(xs), 15, -1.0, 0.1, 20)
    else:
        av_x = _sqrt(_div(_zero_chain(xs * xs), 32))
        w = av_x + xs.abs()
        L, scales, mins = _make_qkx2_quants(xs, w, 15, -1.0, 0.1, 20)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    max_scale = torch.clamp(scales.amax(dim=1), min=0.0)
    max_min = torch.clamp(mins.amax(dim=1), min=0.0)
    inv_scale = torch.where(max_scale > 0, _div(63, max_scale), torch.zeros_like(max_scale))
    inv_min = torch.where(max_min > 0, _div(63, max_min), torch.zeros_like(max_min))
    # uint8_t ls = nearest_int(...); ls = MIN(63, ls): the int's low byte, then at most 63
    ls = torch.clamp(_nearest(inv_scale[:, None] * scales).to(torch.int64) & 0xFF, max=63)
    lm = torch.clamp(_nearest(inv_min[:, None] * mins).to(torch.int64) & 0xFF, max=63)
    d16 = _div(max_scale, 63).to(torch.float16)
    dmin16 = _div(max_min, 63).to(torch.float16)
    d = (d16.float()[:, None] * ls.float()).reshape(-1)   # per subblock
    dm = (dmin16.float()[:, None] * lm.float()).reshape(-1)
    requant = torch.clamp(_nearest(_div(xs + dm, d)), 0, 15)
    L = torch.where(d != 0, requant, L)                  # `if (!d) continue;` keeps the search's L
    q = L.T.reshape(nb, 4, 2, 32).to(torch.uint8)
    qs = (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(nb, 128)
    ls, lm = ls.to(torch.uint8), lm.to(torch.uint8)
    packed = torch.cat([ls[:, :4] | ((ls[:, 4:] >> 4) << 6),
                        lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
                        (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)], dim=1)
    return torch.cat([_half_bytes(d16), _half_bytes(dmin16), packed, qs], dim=1)


# -- Q6_K ----------------------------------------------------------------------------------------

def _make_qx_quants(x, nmax: int):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, NULL) for every column of x: (L, scale)."""
    import torch

    first = x.abs().argmax(dim=0, keepdim=True)          # the first of equal largest, as the C
    top = x.gather(0, first)[0]
    amax = top.abs()
    w = x * x
    wx = w * x

    def sums(iscale):
        l = torch.clamp(_nearest(iscale * x), -nmax, nmax - 1)
        sumlx, suml2 = _zero_chain(torch.stack([wx * l, (w * l) * l], dim=1))
        return l, sumlx, suml2

    l, sumlx, suml2 = sums(_div(-nmax, top))
    scale = torch.where(suml2 != 0, _div(sumlx, suml2), torch.zeros_like(sumlx))
    best = scale * sumlx
    L = l + nmax
    for step in range(-9, 10):
        if step == 0:
            continue
        l, sumlx, suml2 = sums(_div(-_step(nmax, 0.0, 0.1, step), top))
        better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        L = torch.where(better, l + nmax, L)
        scale = torch.where(better, _div(sumlx, suml2), scale)
        best = torch.where(better, scale * sumlx, best)
    zero = amax < GROUP_MAX_EPS
    return torch.where(zero, torch.zeros_like(L), L), torch.where(zero, torch.zeros_like(scale), scale)


def _q6_k(x, kernels=None):
    import torch

    nb = x.shape[0]
    xs = x.reshape(nb * 16, 16).T.contiguous()           # (16, subblocks)
    if kernels is not None:
        L, scales = kernels.make_qx_quants(xs, 32, GROUP_MAX_EPS)
    else:
        L, scales = _make_qx_quants(xs, 32)
    scales = scales.reshape(nb, 16)
    first = scales.abs().argmax(dim=1, keepdim=True)
    max_scale = scales.gather(1, first)[:, 0]
    empty = max_scale.abs() < GROUP_MAX_EPS
    iscale = _div(-128, max_scale)
    d16 = _div(1, iscale).to(torch.float16)
    sc = torch.clamp(_nearest(iscale[:, None] * scales), max=127)
    d = (d16.float()[:, None] * sc).reshape(-1)
    requant = torch.clamp(_nearest(_div(xs, d)), -32, 31) + 32
    L = torch.where(d != 0, requant, L).T.reshape(nb, 2, 4, 32).to(torch.uint8)
    ql = torch.cat([(L[:, :, 0] & 0xF) | ((L[:, :, 2] & 0xF) << 4),
                    (L[:, :, 1] & 0xF) | ((L[:, :, 3] & 0xF) << 4)], dim=2).reshape(nb, 128)
    qh = ((L[:, :, 0] >> 4) | ((L[:, :, 1] >> 4) << 2) | ((L[:, :, 2] >> 4) << 4)
          | ((L[:, :, 3] >> 4) << 6)).reshape(nb, 64)
    block = torch.cat([ql, qh, sc.to(torch.int8).view(torch.uint8), _half_bytes(d16)], dim=1)
    return torch.where(empty[:, None], torch.zeros_like(block), block)
