"""`python -m fastft.cli ARGS` processes for the fault tests, without paying the imports each time.

Every `fastft train` (and `fastft export --no-direct`) process spends ~8.8 s on this 2-core CPU
importing Unsloth, torch, transformers and TRL before it does anything; the fault matrix and the
killed exports start 17 of them only to kill them. A fork server, one per pytest worker, imports
them once (with the test hooks on its path: tests/hooks/sitecustomize.py) and forks a child per
command. The child is a process of its own, as `subprocess.Popen` makes one: its own pid, its
own session if asked (`start_new_session`), its own directory and environment, stdin from
/dev/null, stdout and stderr captured, Python's default signal handlers, and fastft.cli run as
`__main__` there (runpy, as `python -m` does), so the CLI module and its console are made in
the child's environment. It ends as a Python process ends (SystemExit, atexit, an uncaught
KeyboardInterrupt re-raised as SIGINT), and a signal kills it as it kills any process.

The test hooks are installed in every child; without FASTFT_FAULT (or FASTFT_DEBUG_WEIGHTS_DIR)
in its environment they do nothing, as in a plain process whose PYTHONPATH lacks them.

Forking after these imports is safe only while the server has run no torch operation (a child of
a process whose OpenMP pool has started hangs) and has not initialised CUDA (which a child cannot
use): the server never runs one, and declines when CUDA is initialised (a GPU host), as it does
with FASTFT_TEST_FORKSERVER=0; `popen` then starts a plain `python -m fastft.cli`. Commands that
must not see Unsloth imported (the direct export) are not run here.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import shutil
import tempfile
import threading
from pathlib import Path

import train_hooks

SERVER = r"""
import contextlib, gc, json, os, runpy, select, signal, sys

replies = os.fdopen(int(sys.argv[1]), "w", buffering=1)
from fastft.core.models import heavy_imports   # the collector off while importing (none of them)
with contextlib.redirect_stdout(sys.stderr), heavy_imports():
    import unsloth  # noqa: F401  (first, as in `fastft train`)
    import fastft.cli, fastft.export.llamacpp, fastft.export.pipeline, fastft.train.trainer  # noqa
    import torch

replies.write(json.dumps({"ready": not torch.cuda.is_initialized()}) + "\n")
children = set()
while True:
    ready, _, _ = select.select([sys.stdin], [], [], 0.05)
    while children:                       # report each child that ended
        pid, status = os.waitpid(-1, os.WNOHANG)
        if not pid:
            break
        children.discard(pid)
        replies.write(json.dumps({"pid": pid, "code": os.waitstatus_to_exitcode(status)}) + "\n")
    if not ready:
        continue
    line = sys.stdin.readline()
    if not line:
        break                             # the test process is gone
    req = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    # The imported modules' objects, out of every later collection (the use gc.freeze is made
    # for: a fork server's children). A child's own objects are collected as in any process;
    # the millions left from the imports are not scanned again, by its collections while it
    # runs nor by the last one as it exits (2 s of a child's exit here, 0.5 s with them frozen).
    gc.freeze()
    pid = os.fork()
    if pid:
        children.add(pid)
        replies.write(json.dumps({"started": pid}) + "\n")
        continue
    # the child: a `python -m fastft.cli ARGS` from here on
    replies.close()
    if req["session"]:
        os.setsid()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                            (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags)
        os.dup2(opened, fd)
        os.close(opened)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    sys.argv = [fastft.cli.__file__, *req["argv"]]
    runpy.run_module("fastft.cli", run_name="__main__", alter_sys=True)
    sys.exit(0)
"""


class ForkServer:
    """One server process; `start` asks it for a child and returns its pid."""

    def __init__(self):
        read, write = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(write)], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(write,), text=True,
            env=train_hooks.env(COLUMNS="200"))
        os.close(write)
        self.replies = os.fdopen(read)
        self.codes: dict[int, int] = {}
        self.started: list[int] = []
        self.changed = threading.Condition()
        self.ready = json.loads(self.replies.readline() or '{"ready": false}')["ready"]
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self):
        for line in self.replies:
            reply = json.loads(line)
            with self.changed:
                if "started" in reply:
                    self.started.append(reply["started"])
                else:
                    self.codes[reply["pid"]] = reply["code"]
                self.changed.notify_all()

    def start(self, argv, cwd, env, session, stdout, stderr) -> int:
        with self.changed:
            self.proc.stdin.write(json.dumps({
                "argv": list(argv), "cwd": str(cwd), "env": dict(env), "session": session,
                "stdout": str(stdout), "stderr": str(stderr)}) + "\n")
            self.proc.stdin.flush()
            assert self.changed.wait_for(lambda: self.started, timeout=60), "fork server: no child"
            return self.started.pop()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


class Forked:
    """The part of subprocess.Popen (text=True, stdout and stderr piped) the tests use."""

    def __init__(self, server: ForkServer, args, cwd, env, session):
        self.server, self.returncode, self.output = server, None, None
        self.args = [sys.executable, "-m", "fastft.cli", *args]
        self.folder = Path(tempfile.mkdtemp(prefix="fastft-forked-"))
        self.pid = server.start(args, cwd, env, session, self.folder / "stdout",
                                self.folder / "stderr")

    def poll(self):
        with self.server.changed:
            self.returncode = self.server.codes.get(self.pid)
        return self.returncode

    def wait(self, timeout=None):
        with self.server.changed:
            if not self.server.changed.wait_for(lambda: self.pid in self.server.codes, timeout):
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.poll()

    def communicate(self, timeout=None):
        self.wait(timeout)
        if self.output is None:
            self.output = tuple((self.folder / name).read_text(errors="replace")
                                for name in ("stdout", "stderr"))
            shutil.rmtree(self.folder)
        return self.output

    def send_signal(self, sig):
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self):
        self.send_signal(signal.SIGKILL)


_server: ForkServer | None = None
_lock = threading.Lock()


def server() -> ForkServer | None:
    global _server
    if os.environ.get("FASTFT_TEST_FORKSERVER") == "0":
        return None
    with _lock:
        if _server is None:
            _server = ForkServer()
            atexit.register(_server.close)
        return _server if _server.ready else None


def imports_unsloth(args: list[str]) -> bool:
    """Whether `fastft ARGS` imports Unsloth anyway (training; an export through the merged
    checkpoint): only those are forked, as the server has it imported."""
    return args[0] == "train" or (args[0] == "export" and bool({"--no-direct", "--merged"} & set(args)))


def popen(args: list[str], cwd, env: dict, start_new_session: bool = False,
          fork: bool | None = None):
    """`python -m fastft.cli ARGS`, forked from the server where it may be (else a plain one).
    `fork=True` forks a command that does not import Unsloth itself too (a direct export), for a
    test to which what the process imported does not matter (where it is killed, say)."""
    forks = server() if (imports_unsloth(args) if fork is None else fork) else None
    if forks is None:
        return subprocess.Popen([sys.executable, "-m", "fastft.cli", *args], cwd=cwd, env=env,
                                text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=start_new_session)
    return Forked(forks, args, cwd, env, start_new_session)


def run(args: list[str], cwd, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`popen` to the end: subprocess.run(..., capture_output=True, text=True) for it."""
    proc = popen(args, cwd, env)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
