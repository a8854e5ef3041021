"""Waiting for a lock another fastft process holds, and saying so.

A second export that needs llama.cpp while the first is still building it waits for the build
lock: minutes, with nothing on the screen unless the wait is named. `held` takes the lock
(filelock: an flock, which the kernel drops with a killed process) and, when another process
holds it, first says what it waits for, naming that process and since when it has held it. The
holder's pid and start time are in `<lock>.owner`, written once the lock is taken.
"""

from __future__ import annotations

import contextlib
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout


def file_lock(path: Path) -> FileLock:
    """An exclusive lock on `path` (created if missing and kept after release: its presence
    can mean something, as a run folder's `.lock` does)."""
    return FileLock(path, thread_local=False, preserve_lock_file=True)


def try_lock(path: Path) -> FileLock | None:
    """The lock on `path`, taken now (release it), or None when another process holds it."""
    lock = file_lock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def is_free(path: Path) -> bool:
    """Whether no process holds the lock on `path` (which must exist)."""
    lock = try_lock(path)
    if lock is not None:
        lock.release()
    return lock is not None


def holder(lock: Path) -> str:
    """Who holds `lock`, as its owner file says ("process 1234 (fastft export), since 18:02:11")."""
    try:
        return (lock.parent / f"{lock.name}.owner").read_text(encoding="utf-8").strip()
    except OSError:
        return "another process"


@contextlib.contextmanager
def held(lock: Path, what: str, console=None) -> Iterator[None]:
    """Hold the exclusive lock `lock` for the block; while another process holds it, say what
    is being waited for and who holds it."""
    taken = try_lock(lock)
    if taken is None:
        from .quiet import say

        say(f"waiting for {what}: held by {holder(lock)}", console)
        taken = file_lock(lock)
        taken.acquire()
    try:
        command = " ".join(Path(a).name for a in sys.argv[:2])
        (lock.parent / f"{lock.name}.owner").write_text(
            f"process {os.getpid()} ({command}), since {datetime.now():%Y-%m-%d %H:%M:%S}\n",
            encoding="utf-8")
        yield
    finally:
        taken.release()
