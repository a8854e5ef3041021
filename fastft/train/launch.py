"""`fastft train --gpus N`: the same training, data-parallel in N processes started by torchrun.

With more than one GPU asked for (`--gpus N`, or `--gpus auto` with several visible), `fastft
train` checks everything it can first (the config, that the effective batch splits among the
GPUs, that the GPUs and the launcher are there), then runs

    python -m torch.distributed.run --standalone --nproc_per_node N -m fastft.cli train ...

and waits for it, as Axolotl's `cli/launchers` hand a run to torchrun or accelerate. Inside, each
process finds torchrun's WORLD_SIZE and trains instead of launching again (fastft.train.distributed).

torchrun rather than `accelerate launch`: torchrun ships with torch, so it is always there,
and it takes its settings from the command line alone. `accelerate launch` also reads
~/.cache/huggingface/accelerate/default_config.yaml when one exists, which can switch the run to
FSDP or DeepSpeed, another precision or other GPUs without fastft knowing; under either, the
Trainer's accelerate sets up DDP the same way. It is started as `python -m torch.distributed.run`
so that no `torchrun` script has to be on PATH (installs with `--target`, as on the GPU host).

What the user sees is one run: rank 0's output, relayed from a file (rank N's goes to the launch
folder in the cache), then one line if the run fails: which process failed and why (an error,
running out of GPU memory, a crash), and the launch folder with every process's output. torchrun
stops the other processes when one fails; fastft marks the run folder failed, or removes it if
it never trained a step. Ctrl-C is passed on: each process saves a checkpoint at the end of its
step and stops, as in one process; a second Ctrl-C kills the launcher and, with it, every rank.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..core.config import TrainConfig, parse_gpus
from .distributed import LAUNCH_DIR_ENV, RankFailure, RunNote, failure_file, mismatch, world
from ..core.errors import ConfigError, EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, FastftError

TORCHRUN = "torch.distributed.run"   # the module behind the `torchrun` script
CPU_ENV = "FASTFT_DDP_ON_CPU"   # =1: --gpus N without a GPU runs N CPU processes (gloo; CI, debugging)


class LaunchError(FastftError):
    """Several GPUs were asked for, and they or the launcher are not there."""


# -- what to launch (pure functions, tested directly) ---------------------------------------------

def processes(gpus: int | str, visible: int, cpu_ok: bool = False) -> int:
    """How many processes `--gpus` means on a machine with `visible` GPUs."""
    if gpus == "auto":
        return max(1, visible)
    if gpus == 1 or visible >= gpus or (visible == 0 and cpu_ok):
        return gpus
    seen = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f" (CUDA_VISIBLE_DEVICES={seen})" if seen is not None else ""
    raise LaunchError(f"--gpus {gpus}: {visible or 'no'} GPU{'' if visible == 1 else 's'} visible"
                      f"{where}; a GPU that is missing, taken by another container or not usable "
                      f"with this driver is not visible (check nvidia-smi), or use --gpus {max(visible, 1)}")


def per_device_batch(batch_size: int, grad_accum: int, world_size: int) -> tuple[int, int]:
    """(micro-batch, accumulation) on each of `world_size` GPUs whose product, times the GPUs, is
    the effective batch batch_size x grad_accum: the accumulation shrinks first, then the
    micro-batch, to the largest that divides each GPU's share."""
    total = batch_size * grad_accum
    if total % world_size:
        raise ConfigError(f"--batch-size {batch_size} x --grad-accum {grad_accum} = effective batch "
                          f"{total}, which {world_size} GPUs cannot share evenly: make it a multiple "
                          f"of {world_size}")
    share = total // world_size
    micro = max(d for d in range(1, min(batch_size, share) + 1) if share % d == 0)
    return micro, share // micro


def command(nprocs: int, argv: list[str], folder: Path, python: str = sys.executable) -> list[str]:
    """The torchrun command line that runs `fastft <argv>` in `nprocs` processes on this host.
    torchrun's own per-run folder goes in the launch `folder`: left to itself it makes a
    /tmp/torchelastic_* folder at every launch and never removes it."""
    return [python, "-m", TORCHRUN, "--standalone", "--nproc_per_node", str(nprocs),
            "--log-dir", str(folder / "torchrun"), "-m", "fastft.cli", *argv]


def failure_message(failures: list[RankFailure], nprocs: int, returncode: int, folder: Path,
                    interrupted: int | None) -> tuple[str | None, int]:
    """(the one line to print, or None; the exit code) once torchrun has ended unsuccessfully,
    worded as one process words its own failure. The first process to fail caused it; the
    others were stopped, or failed waiting for it. `interrupted`: the signal that asked the
    launch to stop, if one did (the exit code is then 128 + its number)."""
    # True (asked to stop, by a signal not known) counts as Ctrl-C; bool first, as SIGHUP == 1 == True.
    stopped = 128 + (signal.SIGINT if isinstance(interrupted, bool) or not interrupted else interrupted)
    if not failures:
        if interrupted:   # rank 0 said where it stopped and how to resume
            return None, stopped
        return (f"internal error: a training process died without a message (torchrun exit "
                f"{returncode}; killed "
                f"by the system, e.g. out of host memory?); each process's output is in {folder}",
                EXIT_INTERNAL_ERROR)
    f = min(failures, key=lambda r: r.time)
    who = f"rank {f.rank} of {nprocs}" + (f" (GPU {f.local_rank})" if f.gpu else "")
    others = f"the other process{'es were' if nprocs > 2 else ' was'} stopped"
    if f.kind == "interrupted":
        return "interrupted", stopped
    if f.kind == "error":
        return f"error: {f.message}", EXIT_USER_ERROR
    if f.kind == "oom":
        return (f"error: {who} ran out of GPU memory ({f.message.splitlines()[0]}); lower --batch-size "
                f"(the micro-batch) or set --vram-budget; {others}"), EXIT_USER_ERROR
    return (f"internal error on {who} (a bug in fastft or a library it uses): "
            f"{f.message.splitlines()[0] if f.message else '?'}; {others}; the traceback is "
            f"in {failure_file(folder, f.rank)}"), EXIT_INTERNAL_ERROR


# -- deciding -----------------------------------------------------------------------------------

def dispatch(cfg: TrainConfig | None, resume: str | None, gpus_flag, argv: list[str], console,
             verbose: bool = False) -> int | None:
    """Where `fastft train` runs: here (None; in a process torchrun started, after attaching it to
    the launch), or through torchrun in several processes (their exit code)."""
    if world().size > 1:
        from .distributed import attach
        attach()
        return None
    cpu_ok = os.environ.get(CPU_ENV) == "1"
    if resume:
        n = _resume_processes(resume, gpus_flag, cpu_ok)
    elif cfg.gpus == 1:
        return None
    else:
        n = processes(cfg.gpus, visible_gpus(), cpu_ok)
        if n > 1:   # before anything is created or loaded
            per_device_batch(cfg.batch_size, cfg.grad_accum, n)
    if n == 1:
        return None
    require_launcher()
    return relaunch(n, argv, console, verbose)


def _resume_processes(resume: str, gpus_flag, cpu_ok: bool) -> int:
    from ..core.run import RunFolder

    folder = RunFolder.open(resume)
    n = folder.read().plan.world_size
    if gpus_flag is not None:
        try:
            asked = parse_gpus(gpus_flag)
        except ValueError as e:
            raise ConfigError(f"invalid config: gpus (--gpus): {e}, got {gpus_flag}") from None
        asked = processes(asked, visible_gpus(), cpu_ok) if asked == "auto" else asked
        if asked != n:
            raise LaunchError(mismatch(folder.name, n, asked))
    return processes(n, visible_gpus(), cpu_ok) if n > 1 else 1


def visible_gpus() -> int:
    import torch
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def require_launcher() -> None:
    import importlib.util

    import torch.distributed as dist
    if not dist.is_available() or importlib.util.find_spec(TORCHRUN) is None:
        raise LaunchError("several GPUs need torch's launcher (torch.distributed.run, `torchrun`), "
                          "which this torch build lacks (torch.distributed is not available): "
                          "install a CUDA build of torch, or train on one GPU (--gpus 1)")


# -- running it -------------------------------------------------------------------------------

def relaunch(nprocs: int, argv: list[str], console, verbose: bool = False) -> int:
    """Run `fastft <argv>` in `nprocs` processes through torchrun; print one line if it fails;
    return the exit code to end with."""
    from ..core.cache import cache_dir

    folder = cache_dir() / "launch" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder.mkdir(parents=True)
    console.print(f"[bold cyan]•[/] training on {nprocs} {'GPUs' if visible_gpus() else 'CPU processes'} "
                  f"(torchrun, data-parallel); rank 0's output follows", highlight=False)
    cmd = command(nprocs, argv, folder)
    (folder / "command.json").write_text(json.dumps(cmd), encoding="utf-8")
    returncode, interrupted = run(cmd, rank_env(folder), folder, verbose)
    if returncode == 0:
        shutil.rmtree(folder, ignore_errors=True)
        return 0
    failures = RankFailure.read_all(folder)
    settle_run(folder, interrupted)
    line, code = failure_message(failures, nprocs, returncode, folder, interrupted)
    if line:
        from rich.markup import escape
        label = next(w for w in ("error:", "internal error", "interrupted", "") if line.startswith(w))
        console.print(f"[bold red]{label}[/]{escape(line[len(label):])}", highlight=False,
                      soft_wrap=True)
    return code


def rank_env(folder: Path) -> dict:
    """The ranks' environment: ours (NCCL and CUDA settings included), the launch folder, and
    where both our streams are a terminal, rich told that rank 0's file stands for one."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env[LAUNCH_DIR_ENV] = str(folder)
    if sys.stderr.isatty() and sys.stdout.isatty():
        size = shutil.get_terminal_size()
        env.update(TTY_COMPATIBLE="1", TTY_INTERACTIVE="1", COLUMNS=str(size.columns),
                   LINES=str(size.lines))
    return env


def run(cmd: list[str], env: dict, folder: Path, verbose: bool = False) -> tuple[int, int | None]:
    """Run torchrun (its own messages to torchrun.log), relaying rank 0's stdout and stderr as
    they are written. Returns (exit code, the signal that asked it to stop, if one did)."""
    tails = [_Tail(folder / "rank0.stdout", sys.stdout), _Tail(folder / "rank0.stderr", sys.stderr)]
    if verbose:
        tails.append(_Tail(folder / "torchrun.log", sys.stderr))
    with open(folder / "torchrun.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    with _Forward(proc) as forward:
        while True:
            done = proc.poll() is not None
            for t in tails:
                t.pump()
            if done:
                break
            time.sleep(0.05)
    for t in tails:     # a killed rank 0 can leave a progress bar mid-line: our message starts anew
        t.end_line()
    return proc.returncode, forward.first


class _Tail:
    """Copies what is appended to a file to a stream, from where it last stopped."""

    def __init__(self, path: Path, stream):
        self.path, self.stream, self.pos, self.last = path, stream, 0, b"\n"

    def pump(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.pos += len(data)
            self.last = data[-1:]
            self._write(data)

    def end_line(self) -> None:
        if self.last != b"\n":
            self._write(b"\n")
            self.last = b"\n"

    def _write(self, data: bytes) -> None:
        out = getattr(self.stream, "buffer", None)
        if out is not None:
            self.stream.flush()
            out.write(data)
            out.flush()
        else:   # a text stream without bytes underneath (click's test runner)
            self.stream.write(data.decode("utf-8", "replace"))


class _Forward(contextlib.AbstractContextManager):
    """While torchrun runs in a session of its own (so a terminal's Ctrl-C reaches it once, from
    us): SIGINT and SIGTERM are passed on as SIGINT (every rank saves a checkpoint at the end of
    its step and stops, as one process does for either), SIGHUP as SIGTERM (no terminal is left
    to report to: stop at once); a second signal kills torchrun, and its ranks die with it
    (fastft.train.distributed.attach). `first`: the first signal received, if any."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.count, self.saved, self.first = proc, 0, {}, None

    def __enter__(self):
        with contextlib.suppress(ValueError):   # not the main thread: nothing to forward
            for s in self.SIGNALS:
                self.saved[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self.saved.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame):
        self.count += 1
        self.first = self.first or signum
        sig = signal.SIGKILL if self.count > 1 else (
            signal.SIGTERM if signum == signal.SIGHUP else signal.SIGINT)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)


def settle_run(folder: Path, interrupted: bool) -> None:
    """After a failed launch, what one process does for itself when it fails: a run folder still
    marked `training` is marked failed (interrupted), and removed if it never trained a step."""
    from ..core.errors import RunFolderError
    from ..core.run import RunFolder

    noted = RunNote.read(folder)
    if noted is None:
        return
    run_folder = RunFolder(Path(noted.path))
    if not run_folder.path.is_dir():
        return
    for _ in range(50):   # the ranks die with torchrun; wait until rank 0 let go of the lock
        try:
            with run_folder.lock():
                _settle(run_folder, noted.new, interrupted)
            return
        except RunFolderError:
            time.sleep(0.2)


def _settle(run_folder, new: bool, interrupted: bool) -> None:
    from ..core.errors import RunFolderError

    if new and not run_folder.has_trained():
        run_folder.discard()
        return
    with contextlib.suppress(RunFolderError):
        record = run_folder.read()
        if record.status == "training":
            run_folder.write(record.model_copy(update={
                "status": "interrupted" if interrupted else "failed"}))
