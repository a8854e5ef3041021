"""The k-quants' scale searches (fastft.export.kquants) as Triton kernels, for CUDA tensors.

In torch each of the 21 (Q4_K) or 19 (Q6_K) search steps is some thirty whole-tensor
elementwise kernels, each reading and writing the tensor: memory-bound. Here one program
takes a run of sub-blocks, reads each sub-block's elements from the same (elements, sub-blocks)
layout as kquants (element i of BLOCK sub-blocks: one contiguous row), and keeps every
sub-block's search state in registers; the elements are read again in each step, from cache.

The bytes are kquants' own, because each float operation is the torch code's, in its order:
- launched with enable_fp_fusion=False: no product is fused into a sum (the PTX has mul.rn and
  add.rn, which ptxas does not contract);
- every division tl.math.div_rn, every root tl.sqrt_rn: correctly rounded (div.rn.f32,
  sqrt.rn.f32, no .ftz: subnormals kept, as torch keeps them);
- each sum over a sub-block's elements a loop in element order, from 0.0 where kquants uses
  `_zero_chain`, from the first term where it uses `_chain` (a loop, not tl.static_range: the
  unrolled form held every element in registers and took Triton 16 s to compile);
- rounding half to even by ggml's own nearest_int (adding and removing 1.5 * 2^23, `_level`):
  exact for |v| <= 2^22, and beyond that the result lies outside the levels with v's sign, so
  the clamp gives what torch.round then torch.clamp give. (libdevice's rint would do as well,
  but Triton's interpreter, where the CPU tests run these kernels, cannot call libdevice.) The
  clamp keeps NaN, as torch.clamp does: a flat sub-block's search is NaN, and never improves;
- no unary minus: Triton 3.6 writes -x as 0 - x, which is +0 for +0.

Instead of each element's best level, a sub-block keeps the (iscale, shift) that made it and
computes the levels again at the end: the same float operations, so the same levels. The
lowest and highest element of a Q4_K sub-block come in from torch (`kquants._bounds`): which
zero torch's min picks between 0.0 and -0.0 reaches the file (a zero min is packed with its
sign), and only torch's own reduction is sure to pick the same one.
"""

from __future__ import annotations

import triton
import triton.language as tl

CUDA_BLOCK = 128          # sub-blocks per program on the GPU: one per thread of 4 warps
INTERPRETED_BLOCK = 1 << 16  # the interpreter's cost is per operation, hardly per element
# No FMA: each product rounds on its own, as in the C and in torch's separate kernels.
OPTIONS = {"num_warps": 4, "enable_fp_fusion": False}


@triton.jit
def _level(v, lo, hi):
    """torch.clamp(torch.round(v), lo, hi). One function, not three: the interpreter's cost
    is mostly per call of a jitted function."""
    r = (v + 12582912.0) - 12582912.0
    return tl.where(r < lo, lo, tl.where(r > hi, hi, r))


@triton.jit
def _q4_weights(xp, rows, mask, BLOCK: tl.constexpr):
    """av_x = sqrtf(sum x^2 / 32) (w = av_x + |x|), sum_w and sum_x (sums of w and w*x)."""
    s = tl.zeros([BLOCK], tl.float32)
    for i in range(32):
        x = tl.load(xp + i * rows, mask=mask, other=0.0)
        s = s + x * x
    av_x = tl.sqrt_rn(tl.math.div_rn(s, 32.0))
    x = tl.load(xp, mask=mask, other=0.0)
    w = av_x + tl.abs(x)
    sum_w = w
    sum_x = w * x
    for i in range(1, 32):
        x = tl.load(xp + i * rows, mask=mask, other=0.0)
        w = av_x + tl.abs(x)
        sum_w = sum_w + w
        sum_x = sum_x + w * x
    return av_x, sum_w, sum_x


@triton.jit
def _q4_sums(xp, rows, mask, av_x, iscale, shift, NMAX: tl.constexpr, BLOCK: tl.constexpr):
    """Sums of w*l, w*l*l and w*l*x over the levels l that (iscale, shift) gives."""
    sum_l = tl.zeros([BLOCK], tl.float32)
    sum_l2 = tl.zeros([BLOCK], tl.float32)
    sum_xl = tl.zeros([BLOCK], tl.float32)
    for i in range(32):
        x = tl.load(xp + i * rows, mask=mask, other=0.0)
        level = _level(iscale * (x - shift), 0.0, NMAX * 1.0)
        wl = (av_x + tl.abs(x)) * level
        sum_l = sum_l + wl
        sum_l2 = sum_l2 + wl * level
        sum_xl = sum_xl + wl * x
    return sum_l, sum_l2, sum_xl


@triton.jit
def _q4_error(xp, rows, mask, av_x, iscale, shift, scale, the_min, NMAX: tl.constexpr,
              BLOCK: tl.constexpr):
    """Sum of w * (scale*l + min - x)^2 over the levels l that (iscale, shift) gives."""
    err = tl.zeros([BLOCK], tl.float32)
    for i in range(32):
        x = tl.load(xp + i * rows, mask=mask, other=0.0)
        diff = scale * _level(iscale * (x - shift), 0.0, NMAX * 1.0) + the_min - x
        err = err + (av_x + tl.abs(x)) * (diff * diff)
    return err


@triton.jit
def _q4_step(xp, rows, mask, av_x, sum_w, sum_x, iscale, lo, NMAX: tl.constexpr,
             BLOCK: tl.constexpr):
    """One step's least-squares (scale, min) for the levels (iscale, lo) gives, its error and D."""
    sum_l, sum_l2, sum_xl = _q4_sums(xp, rows, mask, av_x, iscale, lo, NMAX, BLOCK)
    D = sum_w * sum_l2 - sum_l * sum_l
    this_scale = tl.math.div_rn(sum_w * sum_xl - sum_x * sum_l, D)
    this_min = tl.math.div_rn(sum_l2 * sum_x - sum_l * sum_xl, D)
    positive = this_min > 0.0
    this_min = tl.where(positive, 0.0, this_min)
    this_scale = tl.where(positive, tl.math.div_rn(sum_xl, sum_l2), this_scale)
    cur = _q4_error(xp, rows, mask, av_x, iscale, lo, this_scale, this_min, NMAX, BLOCK)
    return this_scale, this_min, cur, D


@triton.jit
def _q4_search(x_ptr, lo_ptr, hi_ptr, l_ptr, scale_ptr, min_ptr, S, NMAX: tl.constexpr,
               RMIN: tl.constexpr, RDELTA: tl.constexpr, NSTEP: tl.constexpr,
               BLOCK: tl.constexpr):
    """make_qkx2_quants for BLOCK sub-blocks (kquants._make_qkx2_quants, the weights from
    kquants._q4_k): the levels to l_ptr, the scale, and the min before its sign change."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < S
    xp = x_ptr + cols
    rows = tl.cast(S, tl.int64)
    lo = tl.load(lo_ptr + cols, mask=mask, other=0.0)
    hi = tl.load(hi_ptr + cols, mask=mask, other=0.0)
    flat = hi == lo
    av_x, sum_w, sum_x = _q4_weights(xp, rows, mask, BLOCK)
    iscale = tl.math.div_rn(NMAX * 1.0, hi - lo)
    scale = tl.math.div_rn(1.0, iscale)
    best = _q4_error(xp, rows, mask, av_x, iscale, lo, scale, lo, NMAX, BLOCK)
    best_iscale, best_shift = iscale, lo
    for step in range(NSTEP + 1):
        # kquants._step: rmin + rdelta*step + nmax, each operation rounded to float
        iscale = tl.math.div_rn((RMIN + RDELTA * tl.cast(step, tl.float32)) + NMAX * 1.0,
                                hi - lo)
        this_scale, this_min, cur, D = _q4_step(xp, rows, mask, av_x, sum_w, sum_x, iscale, lo,
                                                NMAX, BLOCK)
        better = (D > 0.0) & (cur < best)
        best_iscale = tl.where(better, iscale, best_iscale)
        best_shift = tl.where(better, lo, best_shift)
        best = tl.where(better, cur, best)
        scale = tl.where(better, this_scale, scale)
        lo = tl.where(better, this_min, lo)
    for i in range(32):
        x = tl.load(xp + i * rows, mask=mask, other=0.0)
        level = _level(best_iscale * (x - best_shift), 0.0, NMAX * 1.0)
        tl.store(l_ptr + cols + i * rows, tl.where(flat, 0.0, level), mask=mask)
    tl.store(scale_ptr + cols, tl.where(flat, 0.0, scale), mask=mask)
    tl.store(min_ptr + cols, lo, mask=mask)


@triton.jit
def _q6_top(xp, rows, mask):
    """The sub-block's element of largest magnitude, the first of equal ones (NaN the largest,
    as torch's argmax has it), and its magnitude."""
    top = tl.load(xp + 0 * rows, mask=mask, other=0.0)
    amax = tl.abs(top)
    for i in range(1, 16):
        x = tl.load(xp + i * rows, mask=mask, other=0.0)
        a = tl.abs(x)
        take = (a > amax) | ((a != a) & (amax == amax))
        top = tl.where(take, x, top)
        amax = tl.where(take, a, amax)
    return top, amax


@triton.jit
def _q6_sums(xp, rows, mask, iscale, NMAX: tl.constexpr, BLOCK: tl.constexpr):
    """Sums of w*x*l and w*l*l (w = x*x) over the levels l that iscale gives."""
    sumlx = tl.zeros([BLOCK], tl.float32)
    suml2 = tl.zeros([BLOCK], tl.float32)
    for i in range(16):
        x = tl.load(xp + i * rows, mask=mask, other=0.0)
        level = _level(iscale * x, NMAX * -1.0, NMAX - 1.0)
        w = x * x
        sumlx = sumlx + (w * x) * level
        suml2 = suml2 + (w * level) * level
    return sumlx, suml2


@triton.jit
def _q6_search(x_ptr, l_ptr, scale_ptr, S, NMAX: tl.constexpr, EPS: tl.constexpr,
               BLOCK: tl.constexpr):
    """make_qx_quants(rmse_type 1) for BLOCK sub-blocks (kquants._make_qx_quants): the levels
    plus NMAX to l_ptr, and the scale."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < S
    xp = x_ptr + cols
    rows = tl.cast(S, tl.int64)
    top, amax = _q6_top(xp, rows, mask)
    iscale = tl.math.div_rn(NMAX * -1.0, top)
    sumlx, suml2 = _q6_sums(xp, rows, mask, iscale, NMAX, BLOCK)
    scale = tl.where(suml2 != 0.0, tl.math.div_rn(sumlx, suml2), 0.0)
    best = scale * sumlx
    best_iscale = iscale
    for k in range(18):
        # steps -9 to 9 but 0; kquants._step: 0.1*step + nmax, each rounded to float
        step = tl.cast(k, tl.float32) - 9.0
        step = tl.where(step < 0.0, step, step + 1.0)
        iscale = tl.math.div_rn(((0.0 + 0.1 * step) + NMAX * 1.0) * -1.0, top)
        sumlx, suml2 = _q6_sums(xp, rows, mask, iscale, NMAX, BLOCK)
        better = (suml2 > 0.0) & (sumlx * sumlx > best * suml2)
        best_iscale = tl.where(better, iscale, best_iscale)
        scale = tl.where(better, tl.math.div_rn(sumlx, suml2), scale)
        best = tl.where(better, scale * sumlx, best)
    zero = amax < EPS
    for i in range(16):
        x = tl.load(xp + i * rows, mask=mask, other=0.0)
        level = _level(best_iscale * x, NMAX * -1.0, NMAX - 1.0) + NMAX * 1.0
        tl.store(l_ptr + cols + i * rows, tl.where(zero, 0.0, level), mask=mask)
    tl.store(scale_ptr + cols, tl.where(zero, 0.0, scale), mask=mask)


def _launch(kernel, S: int, on_cuda: bool, *args, **constants):
    if S == 0:
        return
    block = CUDA_BLOCK if on_cuda else min(INTERPRETED_BLOCK, triton.next_power_of_2(S))
    kernel[(triton.cdiv(S, block),)](*args, S, **constants, BLOCK=block, **OPTIONS)


def make_qkx2_quants(xs, lo, hi, nmax: int, rmin: float, rdelta: float, nstep: int):
    """kquants._make_qkx2_quants with its weights (kquants._q4_k's av_x + |x|), for the
    (32, sub-blocks) float32 `xs` and its `kquants._bounds`: (L, scale, the_min)."""
    import torch

    L = torch.empty_like(xs)
    scale, lo_out = torch.empty_like(lo), torch.empty_like(lo)
    with _on(xs):
        _launch(_q4_search, xs.shape[1], xs.is_cuda, xs, lo, hi, L, scale, lo_out,
                NMAX=nmax, RMIN=rmin, RDELTA=rdelta, NSTEP=nstep)
    return L, scale, -lo_out


def make_qx_quants(xs, nmax: int, eps: float):
    """kquants._make_qx_quants for the (16, sub-blocks) float32 `xs`: (L, scale)."""
    import torch

    L = torch.empty_like(xs)
    scale = torch.empty_like(xs[0])
    with _on(xs):
        _launch(_q6_search, xs.shape[1], xs.is_cuda, xs, L, scale, NMAX=nmax, EPS=eps)
    return L, scale


def _on(x):
    """x's GPU as the current one (Triton launches on the current device)."""
    import contextlib

    import torch

    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()
