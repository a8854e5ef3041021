"""The model's weights read into the OS page cache while `fastft train` imports Unsloth.

The first run after a reboot, or after other work pushed the files out of memory, reads the
weights from disk inside the load stage: on an H100 host the 4B shape's load took 6.9 s with
its 7.5 GB of weights dropped from the page cache and 3.6 s with them cached, and reading them
alone took 4.4 s (bench/read_ahead.py, bench/ttfc.py, 2026-12-07). Which files the load will
read is known before the 10-40 s import of Unsloth, torch and transformers, which keeps one CPU
core busy and leaves the disk idle. So a thread reads them meanwhile, into one reused buffer
(the reads release the GIL); what stays behind is the page cache the load then reads from.

Read, not advised: posix_fadvise(WILLNEED) returned at once and read nothing of the 7.5 GB on
that host. Linux reads no more for it than the disk's readahead window (read_ahead_kb; 8 MB on
the machine this was written on, where it seemed to work on small files). Only files that fit
in half the memory available are read, so that reading ahead never pushes out what the import
and the load need.
"""

from __future__ import annotations

import contextlib
import importlib.util
import threading
from pathlib import Path

from .models import cached_snapshot, resolve_model

SHARE_OF_AVAILABLE = 0.5
CHUNK = 16 * 2**20


def unsloth_repo(name: str, load_in_4bit: bool) -> str:
    """The hub repo Unsloth's FastLanguageModel loads for `name`: its mapper sends a 16-bit
    name to the pre-quantised 4-bit repo (unsloth/Qwen3-4B-Instruct-2507 ->
    ...-unsloth-bnb-4bit) and back, as unsloth.models.loader_utils.__get_model_name does.
    Read from Unsloth's own table without importing Unsloth; `name` if it is not there."""
    tables = _unsloth_mapper()
    if tables is None:
        return name
    low = name.lower()
    if load_in_4bit:
        return name if low.endswith("-bnb-4bit") else tables.FLOAT_TO_INT_MAPPER.get(low, name)
    return tables.INT_TO_FLOAT_MAPPER.get(low) or tables.MAP_TO_UNSLOTH_16bit.get(low) or name


def _unsloth_mapper():
    """unsloth/models/mapper.py, run on its own (it imports nothing), or None."""
    with contextlib.suppress(Exception):   # not installed, or a mapper of another shape
        package = importlib.util.find_spec("unsloth")   # found, not imported
        path = Path(next(iter(package.submodule_search_locations))) / "models" / "mapper.py"
        spec = importlib.util.spec_from_file_location("fastft._unsloth_mapper", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module if hasattr(module, "FLOAT_TO_INT_MAPPER") else None
    return None


def weight_files(name: str, load_in_4bit: bool) -> list[Path]:
    """The safetensors files that loading model `name` will read, where they are on this
    machine: a local folder's, or the cached snapshot of the repo Unsloth maps a hub id to
    (none when it is not cached: then it is downloaded, and read from the network)."""
    ref = resolve_model(name)
    folder = Path(ref.path) if ref.is_local else cached_snapshot(unsloth_repo(name, load_in_4bit))
    return sorted(folder.glob("*.safetensors")) if folder else []


def available_memory() -> int | None:
    """MemAvailable (bytes) from /proc/meminfo; None where there is none (not Linux)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/meminfo") as f:
            line = next(x for x in f if x.startswith("MemAvailable:"))
        return int(line.split()[1]) * 1024
    return None


def read_ahead(files: list[Path]) -> threading.Thread | None:
    """Read `files` into the page cache from a daemon thread (returned), or None when not: no
    files, or more than half the memory available (or no way to tell how much that is)."""
    sizes = [p.stat().st_size for p in files if p.is_file()]
    memory = available_memory()
    if not (sizes and memory) or sum(sizes) > SHARE_OF_AVAILABLE * memory:
        return None
    thread = threading.Thread(target=_read, args=(files,), name="fastft-read-ahead", daemon=True)
    thread.start()
    return thread


def _read(files: list[Path]) -> None:
    buffer = memoryview(bytearray(CHUNK))
    for path in files:
        with contextlib.suppress(OSError):   # gone or unreadable: the load will say so
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buffer):
                    pass
