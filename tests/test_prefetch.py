"""`fastft train` reads the model's weights into the page cache in a thread while it imports
Unsloth (fastft.core.prefetch): the files the load will read, found before any heavy import."""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastft.core import prefetch

REPO = Path(__file__).resolve().parent.parent
DEFAULT = "unsloth/Qwen3-4B-Instruct-2507"
DEFAULT_4BIT = "unsloth/Qwen3-4B-Instruct-2507-unsloth-bnb-4bit"


def resident(path: Path) -> float:
    """The share of `path`'s pages in the page cache (mincore(2) over a mapping never touched)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    vec = (ctypes.c_ubyte * pages)()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), os.strerror(ctypes.get_errno())
        try:
            assert libc.mincore(addr, size, vec) == 0, os.strerror(ctypes.get_errno())
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec) / pages


def dropped(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_read_ahead_brings_the_weights_into_the_page_cache(tmp_path):
    # Larger than a disk's readahead window (read_ahead_kb: 128 KB to 8 MB), which is all that
    # posix_fadvise(WILLNEED) reads: on an H100 host it read nothing of 7.5 GB.
    files = [tmp_path / f"model-0000{i}-of-00002.safetensors" for i in (1, 2)]
    for p in files:
        p.write_bytes(os.urandom(24 * 2**20))
        dropped(p)
    (tmp_path / "config.json").write_text("{}")
    if max(resident(p) for p in files) > 0.1:
        pytest.skip("this file system keeps files cached after POSIX_FADV_DONTNEED (tmpfs?)")
    assert prefetch.weight_files(str(tmp_path), True) == files
    thread = prefetch.read_ahead(files)
    assert thread is not None and thread.daemon
    thread.join(30)
    assert not thread.is_alive()
    assert [round(resident(p), 2) for p in files] == [1.0, 1.0]


def test_no_read_ahead_past_half_the_available_memory(tmp_path, monkeypatch):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\0" * 4096)
    monkeypatch.setattr(prefetch, "available_memory", lambda: 2 * 4096 - 2)
    assert prefetch.read_ahead([weights]) is None
    monkeypatch.setattr(prefetch, "available_memory", lambda: 2 * 4096)
    prefetch.read_ahead([weights]).join(10)
    monkeypatch.setattr(prefetch, "available_memory", lambda: None)   # no /proc/meminfo
    assert prefetch.read_ahead([weights]) is None
    assert prefetch.read_ahead([]) is None


def snapshot(cache: Path, repo: str) -> Path:
    """A repo in a Hugging Face cache as huggingface_hub lays it out: refs/main -> snapshot."""
    root = cache / f"models--{repo.replace('/', '--')}"
    folder = root / "snapshots" / "0123abc"
    folder.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("0123abc")
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0")
    return folder


def test_a_hub_ids_files_are_those_of_the_cached_repo_unsloth_loads(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    four, sixteen = snapshot(tmp_path, DEFAULT_4BIT), snapshot(tmp_path, DEFAULT)
    assert prefetch.weight_files(DEFAULT, True) == [four / "model.safetensors"]
    assert prefetch.weight_files("Qwen/Qwen3-4B-Instruct-2507", True) == [four / "model.safetensors"]
    assert prefetch.weight_files(DEFAULT_4BIT, True) == [four / "model.safetensors"]
    assert prefetch.weight_files(DEFAULT, False) == [sixteen / "model.safetensors"]
    assert prefetch.weight_files("someone/not-cached", True) == []
    assert prefetch.weight_files("not a repo id", True) == []


@pytest.mark.parametrize("name", [DEFAULT, "Qwen/Qwen3-4B-Instruct-2507", DEFAULT_4BIT,
                                  "unsloth/Qwen3-8B", "someone/unknown"])
@pytest.mark.parametrize("load_in_4bit", [True, False])
def test_the_repo_is_the_one_unsloths_own_lookup_names(name, load_in_4bit, monkeypatch):
    """fastft reads Unsloth's table without importing Unsloth; Unsloth's own lookup agrees."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")   # its lookup asks GitHub for a newer table else
    from fastft.core.models import import_unsloth

    import_unsloth()
    from unsloth.models.loader_utils import get_model_name

    assert prefetch.unsloth_repo(name, load_in_4bit) == get_model_name(name, load_in_4bit)


def test_train_reads_the_weights_ahead_before_it_imports(tiny_path, monkeypatch):
    from fastft.cli import main

    asked = []
    monkeypatch.setattr(prefetch, "read_ahead", lambda files: asked.append(files))
    # Stop where the heavy import would begin: --gpus dispatch comes right before it.
    monkeypatch.setattr("fastft.train.launch.dispatch", lambda *a, **k: 0)
    data = REPO / "examples" / "favorite_color.jsonl"
    result = CliRunner().invoke(main, ["train", str(data), "--model", "tiny"])
    assert result.exit_code == 0, result.output
    assert asked == [sorted(Path(tiny_path).glob("*.safetensors"))] and asked[0]
