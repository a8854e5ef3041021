"""llama-quantize's files, made on the GPU: the 16-bit GGUF -> Q4_K_M, Q6_K or Q8_0.

What each tensor becomes, and the order of the tensors, is llama-quantize's own answer
(`llama-quantize --dry-run`, which reads only the header): the mixture rules (Q6_K for the tied
embedding and for attn_v and ffn_down in some layers of a Q4_K_M, F32 kept for the norms, the
fallbacks for odd shapes) are never restated here. When that answer names a type fastft.export.kquants
does not make, or there is no GPU, llama-quantize makes the file as before.

The header is the 16-bit file's, as llama-quantize writes it: every key/value entry copied as
its bytes, in order, then general.quantization_version and general.file_type set (ggml's
gguf_set_val_u32 removes a key and appends it), then the tensor infos with their new types.
(gguf-py's GGUFReader would spend 9 s decoding the 150k-token vocabulary that is copied here
unread; fastft.export.gguf walks the header in milliseconds.) One pass over the 16-bit file
makes every requested output, each tensor read and moved to the GPU once; the next tensors are
read and quantized in a thread while this one is written.
"""

from __future__ import annotations

import logging
import mmap
import re
import struct
import subprocess
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..core.ahead import ahead
from ..core.errors import FastftError
from . import kquants
from .gguf import Header, TensorInfo, pad, read_header

# One [N/M] line per tensor of `llama-quantize --dry-run`: its name, its type, and, when it is
# converted, the type it becomes in parentheses.
PLAN_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s+- \[[^\]]*\], type =\s*(\w+), size =.*?"
                       r"(?:\((\w+)\))?\s*$")
QUANTIZATION_VERSION = "general.quantization_version"
FILE_TYPE = "general.file_type"
GGML_QNT_VERSION = 2
# llama_ftype of the files whose tensors kquants can make (llama.h)
FILE_TYPES = {"Q8_0": 7, "Q4_K_M": 15, "Q6_K": 18}
# ggml_type ids (ggml.h) and (elements, bytes) per block of the types read or written here
TYPE_IDS = {"f32": 0, "f16": 1, "q8_0": 8, "q4_K": 12, "q6_K": 14, "bf16": 30}
_TYPE_NAMES = {v: k for k, v in TYPE_IDS.items()}
SIZES = {"f32": (1, 4), "f16": (1, 2), "bf16": (1, 2), **kquants.BLOCKS}
WIDENED = ("bf16", "f16", "f32")     # the types quantized from: widened to float32 exactly
# Elements quantized at once: the k-quant search holds about a dozen float32 copies of them
# (BYTES_PER_ELEMENT), so 2^25 needs about 1.6 GB of GPU memory; fewer, larger steps keep
# Python's per-op cost small beside the GPU's. On a card with less free (the direct child
# quantizes while the export's gate model is loaded), at most a quarter of what is free, in
# smaller chunks: the same blocks, so the same bytes.
CHUNK = 1 << 25
MIN_CHUNK = 1 << 18
BYTES_PER_ELEMENT = 48
LOOKAHEAD = 2
# A k-quant search is about two thousand small kernels (a chain of adds for each sum over a
# block, 21 search steps), each launched from Python, for a tensor of any size. On CUDA each
# (type, elements) is captured once as a CUDA graph and replayed: the same kernels, so the same
# bytes (tests/test_gpuquant.py, on an H100), in one launch. At most MAX_GRAPHS sizes (a model
# has a handful); any further size, or a capture that fails, runs as it is.
MAX_GRAPHS = 16


class GpuQuantError(FastftError):
    pass


@dataclass(frozen=True)
class Given:
    """A tensor as the 16-bit file has it: its bytes (bytes-like), and, when the caller still
    holds them there, the same values as a torch tensor of that 16-bit dtype on a device (the
    direct export's merge on the GPU), which spares moving the bytes back to the GPU. With
    `stand_in`, `raw` has the tensor's length but not its values (the direct export's base
    tensor, standing in for the merge): only `values` may be written, quantized."""
    raw: object
    values: object = None
    stand_in: bool = False


# Each tensor of the 16-bit file, by its tensor info.
Reader = Callable[[TensorInfo], Given]


@dataclass
class Plan:
    """One output: llama.cpp type ("Q4_K_M"), file, and (tensor, its type, the type it becomes)
    in the output's order, types as llama-quantize prints them ("bf16", "q4_K")."""
    qtype: str
    dst: Path
    tensors: list[tuple[str, str, str]]

    def unsupported(self) -> str | None:
        """A conversion this module cannot make (None: it can make them all)."""
        if self.qtype not in FILE_TYPES:
            return f"{self.qtype} files are made by llama-quantize"
        for name, old, new in self.tensors:
            if new != old and not (kquants.supported(new) and old in WIDENED):
                return f"{name} becomes {new}"
        return None


def dry_run(quantize: Path, src: Path, qtype: str) -> list[tuple[str, str, str]]:
    """llama-quantize's plan for `src` as `qtype`: (tensor, type, new type) in its output's order."""
    proc = subprocess.run([str(quantize), "--dry-run", str(src), qtype], capture_output=True,
                          text=True, timeout=300)
    rows = [m.group(1, 2, 3) for line in (proc.stdout + proc.stderr).splitlines()
            if (m := PLAN_LINE.match(line.strip()))]
    if proc.returncode != 0 or not rows:
        raise GpuQuantError(f"llama-quantize --dry-run {qtype} failed (exit {proc.returncode})")
    return [(name, old, new or old) for name, old, new in rows]


def device() -> str | None:
    """The GPU to quantize on, or None (llama-quantize does it)."""
    import torch

    return "cuda" if torch.cuda.is_available() else None


def split(quantize_tool: Path, src: Path, outputs: dict[str, Path], on: str | None
          ) -> tuple[list[Plan], dict[str, Path]]:
    """The outputs this module makes on device `on` (llama-quantize's plan for each), and the
    rest (`llama.cpp type -> file`), for llama-quantize: all of them when `on` is None."""
    plans = [Plan(q, dst, dry_run(quantize_tool, src, q)) for q, dst in outputs.items()
             if on and q in FILE_TYPES]
    plans = [p for p in plans if p.unsupported() is None]
    made_here = {p.qtype for p in plans}
    return plans, {q: dst for q, dst in outputs.items() if q not in made_here}


def quantize(llama, src: Path, outputs: dict[str, Path], log_dir: Path, on: str | None
             ) -> dict[str, str]:
    """Quantize the 16-bit GGUF `src` into each `llama.cpp type -> file` of `outputs`: with
    torch on device `on` (`device()`; None: none) each type whose every tensor this module
    makes, the others by llama-quantize meanwhile. Returns what made each (`on` or
    "llama-quantize")."""
    from .llamacpp import quantize_ggufs

    plans, rest = split(llama.quantize, src, outputs, on)
    made_here = {p.qtype for p in plans}
    with ThreadPoolExecutor(max_workers=1) as pool:
        cpu = pool.submit(quantize_ggufs, llama, src, rest, log_dir) if rest else None
        if plans and not _made_on(src, plans, on):
            quantize_ggufs(llama, src, {p.qtype: p.dst for p in plans}, log_dir)
            made_here = set()
        if cpu is not None:
            cpu.result()
    return {q: on if q in made_here else "llama-quantize" for q in outputs}


def _made_on(src: Path, plans: list[Plan], on: str) -> bool:
    """quantize_file, or False when the GPU ran out of memory (another process holds it, a
    small card): llama-quantize then makes the files, which quantize_file has removed."""
    import torch

    try:
        quantize_file(src, plans, on)
        return True
    except torch.OutOfMemoryError:
        return False


def quantize_file(src: Path, plans: list[Plan], on: str, read: Reader | None = None) -> None:
    """Write every plan's file from `src` in one pass, quantizing on device `on`. `read`: each
    tensor as the 16-bit file has it, asked for in the plans' order (default: from `src` itself;
    the direct export gives them from memory, `src` then holding only their header)."""
    with open(src, "rb") as f:
        # left to be closed by its collection: a tensor still alive in a traceback holds a
        # view of it, and closing would raise over the error being raised
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        header = read_header(buf)
        tensors = {ti.name: ti for ti in header.tensors}
        order = [t[0] for t in plans[0].tensors]
        if any([t[0] for t in p.tensors] != order for p in plans) or \
                sorted(order) != sorted(tensors):
            raise GpuQuantError("llama-quantize's plans do not list the file's tensors")
        outs = []
        try:
            for p in plans:
                outs.append(open(p.dst, "wb"))
                outs[-1].write(header_bytes(buf, header, p))
            _write_tensors(read or _reader(memoryview(buf), header), header,
                           [tensors[n] for n in order], plans, outs, on)
        except BaseException:
            for out in outs:
                out.close()
            for p in plans:
                p.dst.unlink(missing_ok=True)
            raise
        for out in outs:
            out.close()


def _reader(view, header: Header) -> Reader:
    def read(ti: TensorInfo):
        if ti.type not in _TYPE_NAMES:
            raise GpuQuantError(f"{ti.name}: ggml type {ti.type} is not read here")
        start = header.data_start + ti.offset
        return Given(view[start:start + _nbytes(ti.elements, _TYPE_NAMES[ti.type])])
    return read


_streams = threading.local()


def own_stream(device):
    """This thread's own CUDA stream on `device` (None, which torch.cuda.stream takes as "as
    it is", elsewhere). On the default stream every thread's copies and kernels run one after
    another, and each sync waits for all of them: in the direct export the quantizing thread's
    kernels and copies waited behind the eight merging threads'."""
    import torch

    if torch.device(device).type != "cuda":
        return None
    if getattr(_streams, "stream", None) is None:
        _streams.stream = torch.cuda.Stream(device)
    return _streams.stream


def _write_tensors(read: Reader, header: Header, tensors: list[TensorInfo], plans: list[Plan],
                   outs, on: str) -> None:
    """Each tensor as each plan has it, in order, each padded to the alignment; the next
    LOOKAHEAD tensors read and quantized in a thread meanwhile (one thread: `read` is called
    in order), on that thread's own stream."""
    import torch

    quantizer = Quantizer(on)

    def job(i: int):
        given = read(tensors[i])
        with torch.cuda.stream(own_stream(on)):
            return _tensor(given, header, tensors[i], [p.tensors[i] for p in plans], quantizer)

    with ahead(job, len(tensors), 1, LOOKAHEAD) as results:
        for data in results:
            for out, chunk in zip(outs, data):
                out.write(chunk)
                out.write(bytes(pad(len(chunk), header.alignment) - len(chunk)))


def header_bytes(buf, header: Header, plan: Plan) -> bytes:
    """llama-quantize's header for `plan`: the 16-bit file's entries (but the two it sets, and
    no split keys) as they are, the two set, the tensor infos; padded to the alignment."""
    kept = [bytes(buf[a:b]) for key, a, b in header.kv if not key.startswith("split.")
            and key not in (QUANTIZATION_VERSION, FILE_TYPE)]
    kept += [_u32_entry(QUANTIZATION_VERSION, GGML_QNT_VERSION),
             _u32_entry(FILE_TYPE, FILE_TYPES[plan.qtype])]
    by_name = {ti.name: ti for ti in header.tensors}
    infos, offset = [], 0
    for name, _, new in plan.tensors:
        ti = by_name[name]
        infos.append(_string(name) + struct.pack(f"<I{len(ti.dims)}Q", len(ti.dims), *ti.dims)
                     + struct.pack("<IQ", TYPE_IDS[new], offset))
        offset += pad(_nbytes(ti.elements, new), header.alignment)
    head = b"GGUF" + struct.pack("<IQQ", header.version, len(plan.tensors), len(kept)) \
        + b"".join(kept) + b"".join(infos)
    return head + bytes(pad(len(head), header.alignment) - len(head))


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _u32_entry(key: str, value: int) -> bytes:
    return _string(key) + struct.pack("<II", 4, value)     # 4: GGUF_TYPE_UINT32


def _nbytes(elements: int, kind: str) -> int:
    block, size = SIZES[kind]
    return elements // block * size


def _tensor(given: Given, header: Header, ti: TensorInfo, rows: list[tuple[str, str, str]],
            quantizer: Quantizer):
    """Tensor `ti` as each plan's row has it: its 16-bit bytes as they are, or quantized."""
    raw = given.raw
    if any(name != ti.name for name, _, _ in rows):
        raise GpuQuantError(f"{ti.name}: not where llama-quantize's plan has it")
    old = rows[0][1]
    if TYPE_IDS.get(old) != ti.type or len(raw) != _nbytes(ti.elements, old):
        raise GpuQuantError(f"{ti.name}: llama-quantize's plan reads it as {old}")
    if given.stand_in and (given.values is None or any(new == old for _, _, new in rows)):
        raise GpuQuantError(f"{ti.name}: its bytes stood in for its values, and are not its own")
    if all(new == old for _, _, new in rows):
        return [raw] * len(rows)
    x = _floats(given, old, quantizer.on)
    out = []
    for _, _, new in rows:
        if new == old:
            out.append(raw)
        elif ti.dims[0] % kquants.BLOCKS[new][0]:
            raise GpuQuantError(f"{ti.name}: rows of {ti.dims[0]} are not whole {new} blocks")
        else:
            out.append(quantizer.quantized(x, new))
    return out


def _floats(given: Given, source: str, on: str):
    """The tensor's values as float32 on `on`, widened as llama-quantize widens them (exactly):
    from the values the caller holds on a device (which must be of the file's type: they are
    the tensor's), else from its bytes."""
    import numpy as np
    import torch

    dtype = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}[source]
    if given.values is not None and given.values.dtype != dtype:
        raise GpuQuantError(f"values of {given.values.dtype} handed over for a {source} tensor")
    if given.values is not None:
        if given.values.is_cuda:   # made on another stream (and finished): freed after this one's use
            given.values.record_stream(torch.cuda.current_stream(given.values.device))
        return given.values.reshape(-1).to(on).float()
    with warnings.catch_warnings():   # the file's read-only map: read here, never written
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.frombuffer(given.raw, dtype=np.uint8)).view(dtype).to(on).float()


def chunk_elements(device) -> int:
    """Elements to quantize at once on `device`: CHUNK, or fewer where less GPU memory is free."""
    import torch

    if torch.device(device).type != "cuda":
        return CHUNK
    free, _ = torch.cuda.mem_get_info(device)
    fits = free // 4 // BYTES_PER_ELEMENT
    return max(MIN_CHUNK, min(CHUNK, 1 << max(fits, 1).bit_length() - 1))


def _quantized(x, target: str, chunk: int | None = None, run=kquants.quantize):
    """`x` as `target` blocks, `chunk` (default `chunk_elements`; whole blocks) at a time, each
    by `run` (kquants.quantize, or its replay), back on the CPU."""
    import torch

    chunk = chunk or chunk_elements(x.device)
    step = chunk - chunk % kquants.BLOCKS[target][0]
    parts = [run(x[i:i + step], target) for i in range(0, x.numel(), step)]
    return torch.cat(parts).cpu().numpy().tobytes()


class Quantizer:
    """kquants on device `on` for one file's tensors, in chunks sized once (so a size seen
    before is a size replayed), on CUDA through graphs (MAX_GRAPHS). One thread uses it."""

    def __init__(self, on: str):
        import torch

        self.on, self.chunk = on, chunk_elements(on)
        self.graphs: dict[tuple[str, int], tuple] | None = None
        if torch.device(on).type == "cuda":
            self.graphs, self.pool = {}, torch.cuda.graph_pool_handle()

    def quantized(self, x, target: str) -> bytes:
        return _quantized(x, target, self.chunk, self._run)

    def _run(self, x, target: str):
        key = (target, x.numel())
        if self.graphs is None or (key not in self.graphs and len(self.graphs) >= MAX_GRAPHS):
            return kquants.quantize(x, target)
        if key not in self.graphs:
            try:
                self.graphs[key] = self._capture(x, target)
            except RuntimeError as e:   # a torch that cannot capture these ops: launch them
                logging.warning("CUDA graph capture of %s failed (%s): quantizing without graphs",
                                target, e)
                self.graphs = None
                return kquants.quantize(x, target)
        graph, given, out = self.graphs[key]
        given.copy_(x)
        graph.replay()
        return out.clone()                   # the next replay writes `out` again

    def _capture(self, x, target: str) -> tuple:
        """(graph, its input, its output) of kquants.quantize for x's size; run once on a side
        stream first, as a capture requires. Graphs share one memory pool: they run one at a
        time, in this thread."""
        import torch

        given = x.clone()
        side, current = torch.cuda.Stream(x.device), torch.cuda.current_stream(x.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            kquants.quantize(given, target)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the direct child's other threads keep merging on the GPU meanwhile
        with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
            out = kquants.quantize(given, target)
        return graph, given, out
