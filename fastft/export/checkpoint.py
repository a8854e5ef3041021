"""`--merged` on the direct path: the merged 16-bit safetensors folder, from the direct merge.

The older path's folder (Unsloth's `save_pretrained_merged`; on a GPU, unsloth_zoo.saving_utils
`merge_and_overwrite_lora`) is the base's checkpoint with the adapter merged in: each base
safetensors file copied under its own name and each adapted tensor overwritten in place, so
every header, offset and untouched byte is the base's; its index copied when there are several
files; the base's config.json and generation_config.json as transformers saves them; the run's
tokenizer. `MergedCheckpoint` writes that layout directly: each file created with the base's
header, byte for byte, and every tensor written at the base's offset as `MergeSource.tensor`
makes it (`sink`), while llama.cpp's writer consumes the same tensor for the GGUF. One merge per
tensor, no second pass reading the checkpoint back, and at most the writer's look-ahead of
tensors in memory. Tensors the converter never asks for are written after it (`write_rest`).

`checkpoint_problem` names what this layout cannot reproduce exactly (stray or nested
safetensors files, gaps in a file, a remote-code or quantized config); the child then declines.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import FastftError

INDEX = "model.safetensors.index.json"
# unsloth_zoo's is_hf_sharded_safetensors: a file so named brings the index even when alone
SHARD_NAME = re.compile(r"^(.+?)-(\d+)-of-(\d+)\.safetensors$")
WORKERS = 8   # tensors merged and written at once (as Prefetch's look-ahead)


class MergedCheckpointError(FastftError):
    pass


def read_header(path: Path) -> tuple[bytes, dict]:
    """A safetensors file's first bytes (length and JSON header, as stored) and the header."""
    with open(path, "rb") as f:
        length = f.read(8)
        raw = f.read(int.from_bytes(length, "little"))
    return length + raw, json.loads(raw)


def _spans(header: dict) -> dict[str, tuple[int, int]]:
    return {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}


def file_problem(path: Path) -> str | None:
    """Why a copy of `path` rebuilt from its tensors would not be byte-equal: bytes that belong
    to no tensor (a gap, or anything after the last one)."""
    head, header = read_header(path)
    end = 0
    for start, stop in sorted(_spans(header).values()):
        if start != end:
            return f"{path.name} has bytes between its tensors"
        end = stop
    if len(head) + end != path.stat().st_size:
        return f"{path.name} has bytes after its last tensor"
    return None


def checkpoint_problem(base: Path, parts: list[str]) -> str | None:
    """Why the older path's merged folder cannot be rebuilt exactly from `base`, or None."""
    on_disk = {p.name for p in base.glob("*.safetensors")}
    # unsloth_zoo copies (and merges into) the files it finds beside config.json
    if extra := sorted(on_disk - set(parts)):
        return f"the base folder holds {extra[0]}, which is not one of its weight files"
    if missing := sorted(set(parts) - on_disk):
        return f"the base's weight file {missing[0]} is not beside its config.json"
    config = json.loads((base / "config.json").read_text())
    for key in ("auto_map", "quantization_config"):   # the older path rewrites these configs
        if key in config:
            return f"the base's config.json has {key}"
    for part in parts:
        if problem := file_problem(base / part):
            return problem
    return None


def write_folder_files(folder: Path, base: Path, parts: list[str], tokenizer) -> None:
    """Everything in the merged folder but the weights: the base's config.json and
    generation_config.json as transformers saves them (as unsloth_zoo does), its index when
    there are several files, the run's tokenizer, and the base's tokenizer.model if the
    tokenizer wrote none (unsloth_zoo copies it)."""
    from transformers import AutoConfig, GenerationConfig

    folder.mkdir(parents=True)
    config = AutoConfig.from_pretrained(str(base))
    config.save_pretrained(str(folder))
    try:
        generation = GenerationConfig.from_pretrained(str(base))
    except OSError:   # none in the base: the model's own, as save_pretrained writes it
        generation = GenerationConfig.from_model_config(config)
    generation.save_pretrained(str(folder))
    if (base / INDEX).is_file() and (len(parts) > 1 or SHARD_NAME.match(parts[0])):
        shutil.copyfile(base / INDEX, folder / INDEX)
    tokenizer.save_pretrained(str(folder))
    if (base / "tokenizer.model").is_file() and not (folder / "tokenizer.model").exists():
        shutil.copyfile(base / "tokenizer.model", folder / "tokenizer.model")


@dataclass
class Stored:
    """A base tensor where it is stored, shaped as llama.cpp's SafetensorsLocal gives it (what
    MergeSource.tensor reads), for the tensors the converter does not ask for."""
    path: Path
    dtype: str
    shape: tuple[int, ...]
    offset: int
    size: int

    def mmap_bytes(self):
        import numpy as np

        if not self.size:
            return np.empty(0, np.uint8)
        return np.memmap(self.path, mode="c", offset=self.offset, shape=self.size)


class MergedCheckpoint:
    """The merged safetensors files in `folder`, laid out as the base's (see the module's
    docstring): `put` writes a tensor's bytes where the base holds that tensor."""

    def __init__(self, folder: Path, base: Path, parts: list[str]):
        self.slots: dict[str, tuple[int, int, int]] = {}   # name -> (fd, file offset, bytes)
        self.stored: dict[str, Stored] = {}
        self.written: set[str] = set()
        self.fds: list[int] = []
        try:
            for part in parts:
                self._create(folder / part, base / part)
        except BaseException:
            self.close()
            raise

    def _create(self, out: Path, src: Path) -> None:
        head, header = read_header(src)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self.fds.append(fd)
        _pwrite(fd, head, 0)
        os.ftruncate(fd, src.stat().st_size)   # every byte after the header is a tensor's
        for name, (start, stop) in _spans(header).items():
            self.slots[name] = (fd, len(head) + start, stop - start)
            info = header[name]
            self.stored[name] = Stored(src, info["dtype"], tuple(info["shape"]),
                                       len(head) + start, stop - start)

    def put(self, name: str, tensor) -> None:
        """`tensor` (on the CPU, in its stored dtype) as `name`'s bytes. Thread-safe."""
        import torch

        fd, offset, size = self.slots[name]
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        if data.nbytes != size:
            raise MergedCheckpointError(f"{name}: {data.nbytes} bytes, the base holds {size}")
        _pwrite(fd, data, offset)
        self.written.add(name)

    def rest(self) -> list[str]:
        """The tensors not written yet, in file order."""
        return [n for n in self.slots if n not in self.written]

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def write_rest(source) -> None:
    """Merge and write into `source.sink` every tensor not written yet (all of them without
    GGUF), a few at once: the merge (numpy, torch, the GPU) and the writes release the GIL."""
    checkpoint = source.sink

    def one(name: str) -> None:
        source.tensor(name, checkpoint.stored[name])   # the sink writes it

    with ThreadPoolExecutor(max_workers=min(WORKERS, os.cpu_count() or 1)) as pool:
        for _ in pool.map(one, checkpoint.rest()):
            pass
    if missing := checkpoint.rest():
        raise MergedCheckpointError(f"{missing[0]} was not written")


def _pwrite(fd: int, data, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:   # one pwrite writes at most about 2 GiB on Linux
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
