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


def cache_dir() -> Path:
    """`$FASTFT_CACHE`, else `$XDG_CACHE_HOME/fastft`, else `~/.cache/fastft`."""
    if env := os.environ.get("FASTFT_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastft"


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
