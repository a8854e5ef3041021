"""Helpers shared by the benchmark scripts: paths, logging, versions, offline llama.cpp vocab.

Imports nothing heavy at module level (no torch, no unsloth), so `run.py` starts fast and the
classic recipe's process never imports Unsloth (which patches transformers on import).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
WORK = BENCH / "work"          # models, data, per-recipe raw results (git-ignored)
RESULTS = BENCH / "results"

VERSION_PACKAGES = ("torch", "unsloth", "unsloth_zoo", "transformers", "trl", "peft",
                    "bitsandbytes", "accelerate", "datasets")

_T0 = time.perf_counter()


def log(*parts) -> None:
    """A progress line on stderr, flushed at once, stamped with seconds since start."""
    print(f"[bench {time.perf_counter() - _T0:7.1f}s]", *parts, file=sys.stderr, flush=True)


def versions() -> dict:
    out = {"python": sys.version.split()[0]}
    for pkg in VERSION_PACKAGES:
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def gpu_info() -> dict | None:
    """Name and memory of GPU 0, or None on a CPU-only machine (imports torch)."""
    import torch

    if not torch.cuda.is_available():
        return None
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "mem_gib": round(p.total_memory / 2**30, 1),
            "cuda": torch.version.cuda, "capability": f"{p.major}.{p.minor}"}


def write_json(path: Path, data) -> None:
    """Write JSON atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def pyplot():
    """matplotlib.pyplot on the Agg backend, or None (logged) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: writing an SVG chart instead of PNG")
        return None
    return plt


def print_rows(title: str, columns: list[str], rows: list[list[str]], left=()) -> None:
    """A table on stdout: rich's when installed, else aligned plain text. `left`: the columns
    aligned left (the others are numbers, aligned right)."""
    import shutil

    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for c in columns:
            t.add_column(c, justify="left" if c in left else "right")
        for row in rows:
            t.add_row(*row)
        Console(stderr=False, width=max(160, shutil.get_terminal_size().columns)).print(t)
    except ImportError:
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        print(title)
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
        for row in rows:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


# -- the Qwen vocabulary, offline --------------------------------------------------------------

def _llama_cpp_tarballs() -> list[Path]:
    """Trimmed llama.cpp source tarballs (from ../shared/gpu/make_wheelhouse.sh --llamacpp)."""
    cands = []
    if env := os.environ.get("FASTFT_BENCH_LLAMA_CPP_TAR"):
        cands.append(Path(env))
    cands.append(REPO / ".whl" / "llama.cpp-src.tar.gz")
    return [c for c in cands if c.is_file()]


def ensure_llama_cpp_source() -> None:
    """Make `fastft.core.sources.llama_cpp_source()` work without network where we can.

    fastft downloads llama-cpp-python's sdist from PyPI for the real Qwen vocabulary. The GPU host
    has no network, but every run there carries `.whl/llama.cpp-src.tar.gz` (the same vendored
    tree, without the sdist's outer folders): unpack that into fastft's cache folder instead.
    """
    from fastft.core.cache import building, cache_dir
    from fastft.core.sources import LLAMA_CPP_PYTHON_VERSION

    final = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    if (final / "convert_hf_to_gguf.py").exists() or os.environ.get("FASTFT_LLAMA_CPP_SDIST"):
        return
    for tb in _llama_cpp_tarballs():
        log(f"unpacking {tb} into {final} (offline Qwen vocabulary)")
        with building(final) as tmp, tarfile.open(tb) as tar:
            tar.extractall(tmp, filter="data")
            if not (tmp / "convert_hf_to_gguf.py").exists() or \
                    not (tmp / "models" / "ggml-vocab-qwen2.gguf").exists():
                raise RuntimeError(f"{tb}: not a llama.cpp source tarball with the Qwen2 vocab")
        return
    # Nothing local: fastft will try PyPI (works on the CPU machines, not on the GPU host).


def llama_cpp_root(fallback_cache: str) -> Path:
    """A built llama.cpp (converter, llama-quantize and llama-simple): the user's
    (UNSLOTH_LLAMA_CPP_PATH) or fastft's cached one (waiting for a build in progress there),
    else one built from the offline source into `fallback_cache` (used as FASTFT_CACHE)."""
    from fastft.core.cache import cache_dir
    from fastft.core.sources import LLAMA_CPP_PYTHON_VERSION
    from fastft.export.llamacpp import ensure_llama_cpp, ensure_scorer

    if not (os.environ.get("UNSLOTH_LLAMA_CPP_PATH")
            or (cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}").is_dir()):
        os.environ["FASTFT_CACHE"] = fallback_cache
    ensure_llama_cpp_source()
    root = ensure_llama_cpp().root
    ensure_scorer()   # the export's retention gate: built here, untimed, with the other tools
    return root


def tiny_model_dir() -> Path:
    """fastft's built-in tiny Instruct-2507 model (built on first use, with its tokenizer)."""
    ensure_llama_cpp_source()
    from fastft.core.tiny import tiny_model_path

    return tiny_model_path("tiny")
