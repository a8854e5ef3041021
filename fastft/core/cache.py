"""Where fastft keeps what it builds once and reuses (the tiny model, llama.cpp), and the file
helpers its writers share."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import FastftError


class CacheError(FastftError):
    """The cache folder cannot be one: a file is where it should be."""


def cache_dir() -> Path:
    """`$FASTFT_CACHE`, else `$XDG_CACHE_HOME/fastft`, else `~/.cache/fastft`. A read-only cache
    is fine (what it holds is read), one that cannot be a folder is not."""
    if env := os.environ.get("FASTFT_CACHE"):
        path, source = Path(env).expanduser(), "FASTFT_CACHE"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path, source = Path(base) / "fastft", "XDG_CACHE_HOME" if "XDG_CACHE_HOME" in os.environ else "HOME"
    if problem := folder_problem(path, writable=False):
        raise CacheError(f"fastft's cache folder {path} (from {source}): {problem}; set "
                         f"FASTFT_CACHE to a folder")
    return path


def folder_problem(path: str | os.PathLike, writable: bool = True) -> str | None:
    """Why `path` cannot be (or become) a folder to create files in: a file in the way, or the
    nearest existing folder read-only; None when it can. Checked before anything is created."""
    given = Path(path).absolute()
    p = given
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():   # a file, or a device such as /dev/null
        what = "is a file, not a folder" if p.is_file() else "is not a folder"
        return what if p == given else f"{p} {what}"
    if writable and not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable"
    return None


@contextmanager
def building(final: Path) -> Iterator[Path]:
    """Yield a scratch folder beside `final`; on success rename it to `final` in one step.

    A crash or Ctrl-C leaves only a `.tmp-*` folder, never a half-built `final`. If another
    process finished the same build first, its result is kept and ours is dropped.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        yield tmp
        try:
            tmp.rename(final)
        except OSError:
            if not final.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
