"""llama.cpp's converter's vocabulary keys, remembered between exports.

The converter's `set_vocab` builds the same GGUF keys from the same tokenizer files at every
export: Qwen's 151,936 tokens and their types, its 151,387 merges, the special tokens and the
chat template. It loads the tokenizer with transformers, lists its vocabulary and reads the
merges: 2.0 s of the tiny model's direct export on a 2-core CPU (cProfile of the child,
2026-12-07), the same vocabulary as the 4B's, on the CPU, before the first tensor is written.

So the direct child (fastft.export.direct) keeps the keys that `set_vocab` added, in order,
in fastft's cache, named by a hash of everything they can depend on: every file of the folder
the converter reads (config, generation config, the run's tokenizer; no weights) and the source
of the converter's class, its base and gguf's vocabulary and writer modules. A later export
with the same key adds the same keys with the same values and types, in the same order, without
calling `set_vocab`: the same GGUF, byte for byte (tests/test_export_direct.py). Only values
that JSON holds exactly (strings, ints, floats, bools and lists of them) are kept; anything else
is not remembered. A cache that cannot be read or written costs nothing but the time.

Replayed or not, those keys are packed into the GGUF's header by gguf's writer one item at a
time (`_pack_val`: 0.73 s for the 455,000 items on a 2-core CPU, in the child's prepare);
`packed_fast` packs each long array of strings or integers in one go, to the same bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import os
import struct
import time
from pathlib import Path

log = logging.getLogger(__name__)
KEEP = 4          # files kept (~9 MB each for Qwen's vocabulary): the newest, by use
FOLDER = "gguf-vocab"
STALE_S = 600     # a write takes well under a second: an older temporary's writer was killed


def remembering(set_vocab, conversion, gguf, model_cls):
    """A `set_vocab` for `model_cls` that replays the keys remembered for its folder, or calls
    `set_vocab` and remembers what it added."""
    sources = _sources(conversion, gguf, model_cls)

    def cached_set_vocab(self):
        path = _path(Path(self.dir_model), sources)
        items = _read(path)
        if items is not None:
            for name, value, vtype, sub in items:
                self.gguf_writer.add_key_value(name, value, gguf.GGUFValueType(vtype),
                                               None if sub is None else gguf.GGUFValueType(sub))
            log.info("fastft: the vocabulary's %d keys replayed from %s", len(items), path)
            return
        kv = self.gguf_writer.kv_data[0]
        before = set(kv)
        set_vocab(self)
        added = [[k, v.value, int(v.type), None if v.sub_type is None else int(v.sub_type)]
                 for k, v in kv.items() if k not in before]
        if _write(path, added):
            log.info("fastft: the vocabulary's %d keys remembered in %s", len(added), path)

    return cached_set_vocab


def _sources(conversion, gguf, model_cls) -> bytes:
    """The converter code the keys come from."""
    h = hashlib.sha256()
    modules = {inspect.getmodule(c) for c in model_cls.__mro__} | {gguf.vocab, gguf.gguf_writer}
    for file in sorted({m.__file__ for m in modules if m is not None and getattr(m, "__file__", None)}):
        h.update(file.encode() + b"\0" + Path(file).read_bytes())
    return h.digest()


def _path(folder: Path, sources: bytes) -> Path | None:
    from ..core.cache import CacheError, cache_dir

    h = hashlib.sha256(sources)
    digests = _digests(folder)
    for name, digest in digests:
        h.update(name.encode() + b"\0" + digest)
    # which input changed, when a later export of the same base does not replay
    log.info("fastft: the vocabulary's key from the converter %s, %s", sources.hex()[:8],
             ", ".join(f"{name} {digest.hex()[:8]}" for name, digest in digests))
    try:
        return cache_dir() / FOLDER / f"{h.hexdigest()[:32]}.json"
    except CacheError:
        return None


def _digests(folder: Path) -> list[tuple[str, bytes]]:
    """(name, SHA-256) of each file the converter may read: all but the weights."""
    return [(str(p.relative_to(folder)), hashlib.sha256(p.read_bytes()).digest())
            for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.endswith((".safetensors", ".safetensors.index.json"))]


def _read(path: Path | None) -> list | None:
    if path is None:
        return None
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)                      # used: kept longest
    return items


def _write(path: Path | None, items: list) -> bool:
    """Written under a temporary name, then renamed: a reader sees a whole file or none."""
    from ..core.run import write_text_atomic   # on a miss only: the child starts without it

    if path is None or not all(_exact(item[1]) for item in items):
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(items, ensure_ascii=False))
        _prune(path.parent)
        return True
    except OSError:
        return False


def _exact(value) -> bool:
    """Whether JSON gives `value` back as it is (type included)."""
    if isinstance(value, list):
        return all(_exact(v) for v in value)
    return isinstance(value, (str, bool, int, float)) and value == value   # NaN is not exact


def _prune(folder: Path) -> None:
    """Keeps the KEEP files used last, and removes the temporaries a killed writer left."""
    files = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[KEEP:]:
        old.unlink(missing_ok=True)
    now = time.time()
    for tmp in folder.glob(".*.json.tmp-*"):
        with contextlib.suppress(OSError):      # another writer's, renamed meanwhile
            if now - tmp.stat().st_mtime > STALE_S:
                tmp.unlink()


@contextlib.contextmanager
def packed_fast(gguf):
    """gguf's writer packing arrays of strings or of integers (the vocabulary's tokens, merges
    and token types) in one go each, for the block; any other value its own way. The bytes
    are its own: a length-prefixed UTF-8 string per item, or the items in its struct format
    and byte order (tests/test_export_direct.py compares whole files with the older path's)."""
    writer, vt = getattr(gguf, "GGUFWriter", None), getattr(gguf, "GGUFValueType", None)
    original = getattr(writer, "_pack_val", None)
    formats = getattr(writer, "_simple_value_packing", None)
    if original is None or vt is None or not isinstance(formats, dict):   # another gguf-py
        yield
        return

    def pack_val(self, val, vtype, add_vtype, sub_type=None):
        if (body := _array_body(self, val, vtype, sub_type)) is None:
            return original(self, val, vtype, add_vtype, sub_type)
        return (self._pack("I", vtype) if add_vtype else b"") + body

    def _array_body(self, val, vtype, sub_type) -> bytes | None:
        if vtype != vt.ARRAY or type(val) is not list or len(val) < 2:
            return None
        ltype = vt.get_type(val[0]) if sub_type is None else sub_type
        order = "<" if self.endianess == gguf.GGUFEndian.LITTLE else ">"
        if ltype == vt.STRING and all(type(v) is str for v in val):
            length = struct.Struct(order + "Q").pack
            body = b"".join([part for v in val for b in (v.encode("utf-8"),)
                             for part in (length(len(b)), b)])
        elif formats.get(ltype, "") in tuple("bBhHiIqQ") and all(type(v) is int for v in val):
            body = struct.pack(f"{order}{len(val)}{formats[ltype]}", *val)
        else:
            return None
        return self._pack("I", ltype) + self._pack("Q", len(val)) + body

    writer._pack_val = pack_val
    try:
        yield
    finally:
        writer._pack_val = original
