"""The errors a user causes or can fix, under one base class.

The CLI prints a `FastftError` as one clear line and exits 1. Anything else that escapes is a
bug (ours or a library's): the CLI says so, writes the traceback to a log file and exits 70.
Each stage keeps its own subclass next to its code (`data.DataError`, `template.GuardError`,
`export.ExportError`, ...); the ones without a natural home live here.
"""

from __future__ import annotations

import errno
from typing import Any

# Exit codes, documented in the README: 0 ok, 1 a FastftError (bad input, config or state),
# 2 a usage error (click's own), 70 an internal error (EX_SOFTWARE from sysexits.h), 130 Ctrl-C.
EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 70
EXIT_INTERRUPTED = 130


def is_out_of_memory(e: BaseException) -> bool:
    """A GPU out-of-memory error: torch.OutOfMemoryError (matched by name, so torch need not be
    imported), or a CUDA error raised as a plain RuntimeError ("CUDA error: out of memory")."""
    return type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()


def is_disk_full(e: BaseException | None) -> bool:
    """No space left (or the disk quota reached): an OSError with ENOSPC/EDQUOT, or a library's
    error caused by one or only saying so in its text (safetensors: "os error 28")."""
    for _ in range(10):   # the chain of causes, which is short
        if e is None:
            return False
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(e) or "(os error 28)" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


class FastftError(Exception):
    """Base of every error fastft reports to the user as a message rather than a traceback."""


class ConfigError(FastftError, ValueError):
    """An option's value is invalid (from a flag or from a TOML file alike)."""


class TrainError(FastftError):
    """Training cannot start or continue: no trainable example, no checkpoint to resume, ..."""


class RunFolderError(FastftError):
    """A run folder is missing, malformed, of a newer schema, or in use by another process."""


# Characters of a value a message quotes: one 200,000-character value must not make a 200 kB line.
PREVIEW_CHARS = 80


def quote(value: Any) -> str:
    """``value`` quoted (repr) in a message, cut to a preview of PREVIEW_CHARS characters."""
    if isinstance(value, str) and len(value) > PREVIEW_CHARS:
        return f"{value[:PREVIEW_CHARS]!r}… ({len(value):,} characters)"
    text = repr(value)
    return text if len(text) <= PREVIEW_CHARS else f"{text[:PREVIEW_CHARS]}… ({len(text):,} characters)"
