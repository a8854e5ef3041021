"""SIGTERM ends fastft the way Ctrl-C does.

Job schedulers, containers, `timeout` and `kill` send SIGTERM, and Python's default for it is
to die on the spot: no `finally` runs, so a training step's work is lost, the run stays marked
`training`, and an export's converter and scratch folder are left behind. Here SIGTERM raises
`Terminated`, a KeyboardInterrupt, so every path that cleans up after Ctrl-C cleans up after it
too (training saves a checkpoint at the end of the step: fastft.train.SaveOnInterrupt), and the
process exits 128 + the signal's number (143), as a shell reports a process it terminated.
"""

from __future__ import annotations

import contextlib
import signal
import threading

# What a stop on request means, by signal; both make training save a checkpoint and stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python raises KeyboardInterrupt for SIGINT."""

    signum = signal.SIGTERM


def signal_of(e: BaseException) -> int:
    """The signal that stopped the process: SIGTERM for `Terminated`, else SIGINT (Ctrl-C)."""
    return getattr(e, "signum", signal.SIGINT)


def exit_code(e: BaseException) -> int:
    """128 + the signal's number: 130 after Ctrl-C, 143 after SIGTERM."""
    return 128 + signal_of(e)


def describe(signum: int) -> str:
    return "interrupted" if signum == signal.SIGINT else f"terminated ({signal.Signals(signum).name})"


def _raise_terminated(signum, frame):
    raise Terminated(f"terminated ({signal.Signals(signum).name})")


@contextlib.contextmanager
def terminate_as_interrupt(enabled: bool = True):
    """While inside: SIGTERM raises `Terminated`. The previous handler is put back after."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
