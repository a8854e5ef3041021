"""A lock another process holds is waited for out loud: what, held by whom, since when."""

from __future__ import annotations

import io
import subprocess
import sys

from rich.console import Console

from fastft.core.locks import held

HOLDER = """
import sys, time
from pathlib import Path
from fastft.core.locks import held
with held(Path(sys.argv[1]), "the test build"):
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_held_lock_names_its_holder_and_is_taken_once_free(tmp_path):
    lock = tmp_path / ".build.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock), "3"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline() == "holding\n"
    out = io.StringIO()
    with held(lock, "the test build", Console(file=out, width=300)):
        pass
    proc.wait(timeout=30)
    line = out.getvalue()
    assert line.startswith(f"• waiting for the test build: held by process {proc.pid} (")
    assert ", since " in line
    out = io.StringIO()
    with held(lock, "the test build", Console(file=out)):   # free now: taken at once, silently
        pass
    assert out.getvalue() == ""
