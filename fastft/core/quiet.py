"""Third-party output off the terminal: what Unsloth, torch, transformers, datasets and
bitsandbytes print (banners, warnings, progress bars, C-level logging) goes to a log file,
while fastft's own rich output still reaches the terminal. `-v` shows everything instead.

The capture works on file descriptors (os.dup2 onto fds 1 and 2), not on sys.stdout alone:
much of the noise never passes through Python's streams (C++ and CUDA logging, child
processes, libraries holding a reference to the original stream object). Python's warnings,
logging and tqdm end in fd 2 too. A rich Console handed to `captured` is pointed at a duplicate
of the stream it wrote to before, so progress bars and status lines are unaffected.

Displays (rich Live, Progress, Status) that run inside a capture must be made with
`redirect_stdout=False, redirect_stderr=False` (see `status`): by default rich routes sys.stdout
and sys.stderr through the console while a display is live, which on a terminal would put the
libraries' prints back on screen.

A training run's folder does not exist yet when Unsloth is imported, so a capture can start with
a pending log in the cache and be moved into the run folder once it exists (`move_log`).
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from .cache import cache_dir
from .errors import FastftError

STDOUT, STDERR = 1, 2


@dataclass
class Capture:
    log: Path | None            # where fds 1 and 2 go; None when verbose
    file: IO[bytes] | None      # open on `log`
    pending: bool               # `log` is a temporary file in the cache, not yet moved


_stack: list[Capture] = []
_fd_streams: dict[int, IO[str]] = {}
_pinned: list = []   # the consoles captures pinned: inside one, the way to the user's terminal


def user_console():
    """Where a line for the user goes: inside a capture, the console it pinned to the terminal
    (a new stderr console would write into the log), else a new stderr console."""
    if _pinned:
        return _pinned[-1]
    from rich.console import Console
    return Console(stderr=True)


def say(text: str, console=None) -> None:
    """One `• text` line for the user (to `console`, else `user_console()`): what fastft is about
    to wait for, before a wait of seconds or minutes that would otherwise be silent."""
    (console or user_console()).print(f"• {text}", markup=False, highlight=False)


def pending_log_path(what: str) -> Path:
    return cache_dir() / "logs" / f"{what}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextlib.contextmanager
def captured(log: str | os.PathLike | None = None, console=None, verbose: bool = False,
             what: str = "fastft") -> Iterator[Capture]:
    """Inside: fds 1 and 2 (and Python's sys.stdout/sys.stderr) go to `log`, appended, or to a
    pending log in the cache when `log` is None. With `verbose`, nothing is hidden, but stdout
    goes to stderr: stdout is for results. `console` keeps writing where it wrote before.

    On a failure other than a FastftError the log is kept (copied to the cache if its folder was
    removed meanwhile) and its path printed; a pending log of a run that ended well is removed."""
    # First, while nothing is redirected yet: the cache folder may be unusable (a CacheError).
    path = None if verbose else Path(log) if log is not None else pending_log_path(what)
    _flush()
    restore_console = _pin_console(console)
    saved = os.dup(STDOUT), os.dup(STDERR)
    if verbose:
        cap = Capture(None, None, False)
        os.dup2(STDERR, STDOUT)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        cap = Capture(path, open(path, "a+b"), pending=log is None)
        _point_fds(cap.file)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _fd_stream(STDERR if verbose else STDOUT, streams[0]), _fd_stream(STDERR, streams[1])
    _stack.append(cap)
    failure: BaseException | None = None
    try:
        yield cap
    except BaseException as e:
        failure = e
        raise
    finally:
        _flush()
        _stack.pop()
        sys.stdout, sys.stderr = streams
        for saved_fd, fd in zip(saved, (STDOUT, STDERR)):
            os.dup2(saved_fd, fd)
            os.close(saved_fd)
        restore_console()
        _finish(cap, failure, console)


def move_log(path: str | os.PathLike) -> None:
    """Continue the current capture's log at `path` (appended to; what was logged so far is
    copied over first). Does nothing outside a capture and in verbose mode."""
    if not _stack or _stack[-1].file is None or Path(path) == _stack[-1].log:
        return
    cap = _stack[-1]
    _flush()
    new = open(path, "a+b")
    cap.file.seek(0)
    shutil.copyfileobj(cap.file, new)
    new.flush()
    _point_fds(new)
    cap.file.close()
    if cap.pending:
        cap.log.unlink(missing_ok=True)
    cap.file, cap.log, cap.pending = new, Path(path), False


def status(console, text: str):
    """A spinner with `text`, like `console.status`, that leaves sys.stdout and sys.stderr
    alone (rich's Status has no switch for that)."""
    from rich.live import Live
    from rich.spinner import Spinner

    return Live(Spinner("dots", text), console=console, transient=True, refresh_per_second=12.5,
                redirect_stdout=False, redirect_stderr=False)


# -- helpers ---------------------------------------------------------------------------------------

_libc = None


def _flush() -> None:
    """Python's and C's buffered output goes out before a descriptor is switched."""
    global _libc
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, ValueError, OSError):
            stream.flush()
    with contextlib.suppress(OSError, AttributeError):
        _libc = _libc or ctypes.CDLL(None)
        _libc.fflush(None)   # printf from C code is buffered when fd 1 is a file


def _point_fds(file: IO[bytes]) -> None:
    os.dup2(file.fileno(), STDOUT)
    os.dup2(file.fileno(), STDERR)


def _fileno(stream) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None


def _fd_stream(fd: int, current: IO[str]) -> IO[str]:
    """`current` if it writes to fd 1 or 2 already (then the descriptor switch moves it), else a
    stream on `fd`: under click's CliRunner sys.stdout is a memory buffer that no descriptor
    switch reaches. Such a stream is never closed, as a library may keep it (logging handlers)."""
    if fd == _fileno(current) or (fd == STDERR and _fileno(current) == STDOUT):
        return current
    if fd not in _fd_streams:
        _fd_streams[fd] = open(fd, "w", encoding="utf-8", errors="backslashreplace",
                               buffering=1, closefd=False)
    return _fd_streams[fd]


def _pin_console(console):
    """Keep `console` writing where it writes now: a duplicate of that descriptor when it is fd 1
    or 2 (with the width measured now, while they are still the terminal's), else that very
    stream (under CliRunner, a buffer that sys.stderr stops pointing at). Returns the undo."""
    if console is None or _stack:   # nested: the outer capture pinned it already
        return lambda: None
    old_file, old_width = console._file, console._width
    target = console.file
    fd = _fileno(target)
    owned = None
    if fd in (STDOUT, STDERR):
        console.width = console.width
        owned = open(os.dup(fd), "w", encoding=getattr(target, "encoding", None) or "utf-8",
                     errors="replace", buffering=1)
    console.file = owned or target
    _pinned.append(console)

    def restore():
        _pinned.remove(console)
        if owned is not None:
            owned.close()
        console._file, console._width = old_file, old_width
    return restore


def _finish(cap: Capture, failure: BaseException | None, console) -> None:
    """Close the log. After a failure keep it where the user can read it (a log whose run folder
    was removed meanwhile is copied to the cache) and say where; else drop a pending one."""
    if cap.file is None:
        return
    ok = failure is None or isinstance(failure, FastftError) or (
        isinstance(failure, SystemExit) and failure.code in (0, None))
    keep = cap.log
    if not ok and not cap.log.exists():
        keep = pending_log_path(cap.log.stem)
        keep.parent.mkdir(parents=True, exist_ok=True)
        cap.file.seek(0)
        with open(keep, "wb") as out:
            shutil.copyfileobj(cap.file, out)
    cap.file.close()
    if ok and cap.pending:
        cap.log.unlink(missing_ok=True)
    elif not ok and console is not None:
        console.print(f"the libraries' output (warnings, progress) is in {keep}", markup=False,
                      highlight=False, style="dim", soft_wrap=True)
