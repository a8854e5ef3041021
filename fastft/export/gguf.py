"""Reading a GGUF file's metadata (`general.name`, `tokenizer.ggml.pre`, ...) without llama.cpp.

gguf-py's `GGUFReader` would do it but spends seconds per file decoding the 150k-entry
vocabulary; walking the header with `struct` and skipping the arrays is a few milliseconds.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass

from .llamacpp import LlamaCppError

# GGUF value types: scalar type -> struct format (its size follows); 8 is a string, 9 an array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
            12: "d"}
_STRING, _ARRAY = 8, 9


def _string(buf, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    return bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n


def _skip(buf, pos: int, vtype: int) -> int:
    """The position after a value of type `vtype` that starts at `pos`."""
    if vtype == _STRING:
        return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
    if vtype == _ARRAY:
        sub, count = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if sub in _SCALARS:
            return pos + count * struct.calcsize(_SCALARS[sub])
        for _ in range(count):
            pos = _skip(buf, pos, sub)
        return pos
    return pos + struct.calcsize(_SCALARS[vtype])


def _counts(buf) -> tuple[int, int, int]:
    """(version, tensors, key/values) of the GGUF header in `buf`; its entries start at 24."""
    if bytes(buf[:4]) != b"GGUF":
        raise LlamaCppError("not a GGUF file")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version > 0xFFFF:
        raise LlamaCppError("big-endian GGUF files are not supported")
    return version, n_tensors, n_kv


def parse_gguf_metadata(buf) -> dict:
    """The scalar and string key/values of the GGUF header in `buf` (arrays left out)."""
    _, _, n_kv = _counts(buf)
    pos, values = 24, {}
    for _ in range(n_kv):
        key, pos = _string(buf, pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if vtype == _STRING:
            values[key] = _string(buf, pos)[0]
        elif vtype in _SCALARS:
            values[key] = struct.unpack_from("<" + _SCALARS[vtype], buf, pos)[0]
        pos = _skip(buf, pos, vtype)
    return values


def read_gguf_metadata(path: str | os.PathLike) -> dict:
    """The scalar and string metadata of a GGUF file (arrays such as the vocabulary left out)."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return parse_gguf_metadata(m)


# -- the whole header: what fastft.export.gpuquant copies -----------------------------------------

@dataclass
class TensorInfo:
    name: str
    dims: tuple[int, ...]      # ggml's order: dims[0] is a row's length
    type: int                  # ggml_type
    offset: int                # from the start of the data section

    @property
    def elements(self) -> int:
        return math.prod(self.dims)


@dataclass
class Header:
    """A GGUF file's layout: its key/value entries as byte ranges (copied as they are), its
    tensor infos, and where the data starts."""
    version: int
    kv: list[tuple[str, int, int]]       # key, first byte of the entry, byte after it
    tensors: list[TensorInfo]
    alignment: int
    data_start: int


def read_header(buf) -> Header:
    version, n_tensors, n_kv = _counts(buf)
    pos, kv, alignment = 24, [], 32
    for _ in range(n_kv):
        start = pos
        key, pos = _string(buf, pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", buf, pos + 4)
        pos = _skip(buf, pos + 4, vtype)
        kv.append((key, start, pos))
    tensors = []
    for _ in range(n_tensors):
        name, pos = _string(buf, pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", buf, pos + 4)
        kind, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        tensors.append(TensorInfo(name, tuple(dims), kind, offset))
    return Header(version, kv, tensors, alignment, pad(pos, alignment))


def pad(n: int, alignment: int) -> int:
    """`n` rounded up to the alignment: where GGUF's data section and each tensor's data start."""
    return -(-n // alignment) * alignment
