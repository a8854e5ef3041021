"""Child processes that die with fastft.

A `fastft export` killed with SIGKILL (or by the OOM killer) runs no `finally`: without help, the
GGUF converter it started would go on writing gigabytes into a scratch folder nobody owns, and
llama-quantize or a compiler likewise. Linux can signal a child when its parent dies
(prctl PR_SET_PDEATHSIG); Python can only ask for that in a `preexec_fn`, which makes subprocess
fork the whole (possibly GPU-holding, multi-threaded) process instead of spawning. So every
child is started through a small Python trampoline that sets the signal on itself and then
`exec`s the real program, which keeps it (the setting survives exec).

`group=True` is for a command that starts children of its own (cmake -> make -> compilers):
the trampoline stays as a supervisor, runs the command in a process group of its own, and on
its parent's death (or on SIGTERM) kills that whole group. Stop such a child with
`proc.terminate()`, not `proc.kill()`, so the supervisor can do so.

Elsewhere than Linux the trampoline just runs the command.
"""

from __future__ import annotations

import os
import sys

_TRAMPOLINE = r"""
import os, signal, subprocess, sys
parent, group, cmd = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3:]
try:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM if group else signal.SIGKILL)
except (OSError, AttributeError):   # not Linux: no parent-death signal to ask for
    pass
if os.getppid() != parent:          # the parent died before prctl took effect
    sys.exit(137)
if not group:
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        sys.exit(f"cannot run {cmd[0]}: {e.strerror}")
child = subprocess.Popen(cmd, start_new_session=True)
def stop(signum, frame):
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os._exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
sys.exit(child.wait())
"""


def dying_with_parent(cmd: list[str], group: bool = False) -> list[str]:
    """`cmd`, started so that it is killed when this process dies (see the module's doc)."""
    return [*_PREFIX, str(os.getpid()), str(int(group)), *map(str, cmd)]


def command_of(argv: list[str]) -> list[str]:
    """The command a `dying_with_parent` argv runs (any other argv as it is): for logs and tests."""
    n = len(_PREFIX)
    return list(argv[n + 2:]) if list(argv[:n]) == _PREFIX else list(argv)


_PREFIX = [sys.executable, "-I", "-S", "-c", _TRAMPOLINE]
