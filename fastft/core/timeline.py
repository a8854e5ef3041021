"""One timeline per command: where the seconds of `fastft train` or `fastft export` went, each
stage once, waits included, from the moment the process started (interpreter and imports are
"start-up", the stage users feel and no library reports). Recorded as `timings` in fastft.json
and fastft-export.json ("<stage>_s" -> seconds, in order, plus "total_s"), read by bench/ttfc.py,
and printed as one line after the command's result."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator


def process_age() -> float:
    """Seconds since this process started (Linux: /proc), else 0: then start-up is not counted."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime = float(open("/proc/uptime").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


_started: list[bool] = []   # a process starts once: only its first command's timeline counts it


class Timeline:
    """Stages in the order they first ran; a stage entered twice adds up."""

    def __init__(self, from_process_start: bool = False):
        self.seconds: dict[str, float] = {}
        self._t0 = time.perf_counter()
        if from_process_start and not _started:   # a command's own process: before now is start-up
            _started.append(True)
            age = process_age()
            self._t0 -= age
            self.seconds["startup"] = age

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def total(self) -> float:
        return time.perf_counter() - self._t0

    def timings(self) -> dict[str, float]:
        """What the records keep: "<stage>_s" in order, then "total_s" (the rest of the total,
        not in any stage, is what the command did between stages: a few milliseconds)."""
        return {f"{k}_s": round(v, 2) for k, v in self.seconds.items()} | {"total_s": round(self.total(), 2)}


def timings_line(timings: dict[str, float]) -> str:
    """"31 s: startup 12 s, load 1.2 s, train 15 s" from a record's timings."""
    stages = [(k.removesuffix("_s").replace("_", " "), v) for k, v in timings.items() if k != "total_s"]
    parts = ", ".join(f"{name} {_seconds(v)}" for name, v in stages)
    total = timings.get("total_s", sum(v for _, v in stages))
    return f"{_seconds(total)}" + (f": {parts}" if parts else "")


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s >= 10 else f"{s:.1f} s"
