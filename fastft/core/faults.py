"""Test-only fault injection: deterministic kill points for the fault-matrix tests.

    FASTFT_FAULT=<point>:<SIGNAL>[:<n>]      e.g. FASTFT_FAULT=checkpoint-write:SIGKILL:2

makes the n-th arrival (default: the first) at `fault_point("<point>")` send SIGNAL (or, for
`raise`, raise an unexpected error: an internal error, as a bug would cause). Points:
`convert` (llama.cpp's converter is running) and `quantize` (llama-quantize is running), called
in fastft.export.llamacpp; `step` and `checkpoint-write` are called by the test-side Trainer
subclass of tests/train_hooks.py, so training itself has no kill points.

A process that leads its own process group (the tests start it with `start_new_session=True`)
signals the whole group, as a terminal's Ctrl-C or a `kill -9 -PGID` does: the converter or
llama-quantize child dies with it instead of running on as an orphan. Otherwise only this
process is signalled. Unset (always, outside tests) it costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "FASTFT_FAULT"
_arrivals: dict[str, int] = {}


def fault_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    point, sig, *nth = spec.split(":")
    if point != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] != int(nth[0] if nth else 1):
        return
    if sig == "raise":
        raise RuntimeError(f"fault injected at {name} ({ENV})")
    signum = signal.Signals[sig.upper()]
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signum)
    else:
        os.kill(os.getpid(), signum)
