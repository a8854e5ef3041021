"""Inside a data-parallel run: which process this is, and the few things its processes agree on.

`fastft train --gpus N` starts N copies of `fastft train` through torchrun (fastft.train.launch). Each
reads its place from what torchrun puts in its environment (RANK, WORLD_SIZE, LOCAL_RANK) and
trains on GPU LOCAL_RANK with a full copy of the model; DDP (through the Trainer) averages the
gradients, so every copy takes the same optimizer steps. Rank 0 alone owns the run folder: it
creates and locks it, writes fastft.json, metrics.jsonl, train.log, loss.png and the adapter,
and runs auto-tune, whose plan it hands to the others (`from_main`).

Decisions a process takes on its own must be taken together, or one rank would wait forever in a
collective the others never join: a checkpoint every --save-minutes and the stop after Ctrl-C go
through `any_rank`. Those small messages travel over a gloo group on the CPU, so they never make
the host wait for the GPU. Every collective has a timeout (FASTFT_DIST_TIMEOUT_S, default 600 s):
a rank that stops answering fails the run instead of hanging it.

Alone (WORLD_SIZE unset or 1) everything here is a no-op that never imports torch.distributed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import FastftError, TrainError, is_out_of_memory
from ..core.run import write_text_atomic

LAUNCH_DIR_ENV = "FASTFT_LAUNCH_DIR"   # set by fastft.train.launch: each rank's output and failure go there
TIMEOUT_ENV = "FASTFT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600   # longer than auto-tune on rank 0 (< 2 min), which the others wait for

_control = None   # the process group of the small CPU messages (gloo)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0      # the GPU this process trains on

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world() -> World:
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def launcher_name() -> str:
    """What started these processes, for fastft.json."""
    if any(k.startswith("ACCELERATE_") for k in os.environ):
        return "accelerate"
    return "torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "unknown"


def timeout_s() -> int:
    return int(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)


def mismatch(name: str, trained_on: int, now: int) -> str:
    """Why a run trained by `trained_on` processes cannot go on in `now`."""
    return (f"{name} was trained on {trained_on} GPU{'s' if trained_on > 1 else ''} "
            f"(data-parallel processes); resuming on {now} would change how the batches are shared "
            f"out and the data order: resume it with --gpus {trained_on}")


# -- joining the others --------------------------------------------------------------------------

def start(gpus: int | str | None) -> World:
    """Join the other processes of this run (nothing to do alone): check that --gpus matches how
    many were launched, take this process's GPU, and open the process groups with a timeout."""
    w = world()
    if isinstance(gpus, int) and gpus != w.size:
        how = (f"torchrun started {w.size} processes" if w.size > 1
               else "this process trains alone")
        raise TrainError(f"--gpus {gpus}, but {how}: start it with `fastft train --gpus N`, which "
                         f"launches the N processes, or pass --gpus {w.size} (or auto)")
    if w.size == 1:
        return w
    import datetime

    import torch
    import torch.distributed as dist

    global _control
    if dist.is_initialized():
        return w
    timeout = datetime.timedelta(seconds=timeout_s())
    if torch.cuda.is_available():
        try:
            torch.cuda.set_device(w.local_rank)
        except (RuntimeError, AssertionError) as e:
            raise TrainError(f"GPU {w.local_rank} (rank {w.rank} of {w.size}) is not usable: "
                             f"{str(e).splitlines()[0]}") from None
        # accelerate (the Trainer's) finds this group and keeps it, timeout included.
        dist.init_process_group("nccl", timeout=timeout)
        _control = dist.new_group(backend="gloo", timeout=timeout)
    else:
        dist.init_process_group("gloo", timeout=timeout)
        _control = dist.group.WORLD
    return w


def from_main(make):
    """`make()` on rank 0 only; every rank gets its result (so this is a barrier too). If rank 0
    fails, it exits, and the launcher stops the ranks waiting here."""
    if world().size == 1:
        return make()
    import torch.distributed as dist

    box = [make() if world().is_main else None]
    dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def barrier() -> None:
    if world().size > 1:
        import torch.distributed as dist
        dist.barrier(group=_control)


def any_rank(flag: bool) -> bool:
    """True on every rank when `flag` is true on any: a decision all ranks take at the same step."""
    if world().size == 1:
        return bool(flag)
    import torch
    import torch.distributed as dist

    t = torch.tensor([int(bool(flag))])
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=_control)
    return bool(t.item())


def finish() -> None:
    """Wait for rank 0's last writes (adapter, fastft.json, loss.png), then leave the groups."""
    if world().size > 1:
        import torch.distributed as dist
        if dist.is_initialized():
            barrier()
            dist.destroy_process_group()


# -- a process that fastft.train.launch started ------------------------------------------------------

def launch_dir() -> Path | None:
    d = os.environ.get(LAUNCH_DIR_ENV)
    return Path(d) if d and world().size > 1 else None


def attach() -> None:
    """First thing in a process that `fastft train --gpus N` started: its stdout and stderr go to
    files in the launch folder (the launcher shows rank 0's on the terminal, keeps the others'),
    and it dies with the launcher."""
    d, w = launch_dir(), world()
    if d is None:
        return
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    for fd, name in ((1, "stdout"), (2, "stderr")):
        f = os.open(d / f"rank{w.rank}.{name}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(f, fd)
        os.close(f)
    _die_with_parent()
    if w.rank != 0:   # only rank 0's output reaches a terminal
        for k in ("TTY_COMPATIBLE", "TTY_INTERACTIVE"):
            os.environ.pop(k, None)


def _die_with_parent() -> None:
    """Linux kills this process when its parent, torchrun's agent, dies (even by SIGKILL): a
    rank is never left training, or waiting in a collective, on its own."""
    import ctypes
    import signal
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class RankFailure:
    """Why one process of a launch failed: written by it (`rank_failed`), read by the launcher
    (fastft.train.launch), which prints one message for the whole run."""
    rank: int
    local_rank: int
    gpu: bool             # it trained on a GPU (torch imported and CUDA there)
    kind: str             # error (a FastftError), interrupted, oom or internal
    message: str
    time: float           # when it failed: the first to fail caused the others' failures
    world: int = 1
    code: int = 1
    traceback: str = ""

    def write(self, folder: Path) -> Path:
        path = failure_file(folder, self.rank)
        _write_json(path, asdict(self))
        return path

    @classmethod
    def read_all(cls, folder: Path) -> list["RankFailure"]:
        return [cls(**json.loads(p.read_text(encoding="utf-8")))
                for p in sorted(folder.glob("failure-rank*.json"))]


def failure_file(folder: Path, rank: int) -> Path:
    return folder / f"failure-rank{rank}.json"


@dataclass(frozen=True)
class RunNote:
    """run-folder.json: rank 0 tells the launcher where the run is, so that after a failure it
    can mark the run failed (or remove a new one that never trained a step), as one process does
    for itself."""
    path: str
    new: bool             # created by this launch (not a resume)

    FILE = "run-folder.json"

    def write(self, folder: Path) -> None:
        _write_json(folder / self.FILE, asdict(self))

    @classmethod
    def read(cls, folder: Path) -> "RunNote | None":
        note = folder / cls.FILE
        return cls(**json.loads(note.read_text(encoding="utf-8"))) if note.is_file() else None


def rank_failed(e: BaseException, code: int) -> bool:
    """In a process fastft.train.launch started: record why it failed for the launcher, which prints
    one message for the whole run, and return True (then print nothing here). Else False."""
    d = launch_dir()
    if d is None:
        return False
    w = world()
    if isinstance(e, FastftError):
        kind, message = "error", str(e)
    elif isinstance(e, KeyboardInterrupt):
        kind, message = "interrupted", "interrupted"
    else:
        kind, message = ("oom" if is_out_of_memory(e) else "internal"), f"{type(e).__name__}: {e}"
    torch = sys.modules.get("torch")   # not imported yet: it failed before any GPU work
    RankFailure(rank=w.rank, world=w.size, local_rank=w.local_rank,
                gpu=torch is not None and torch.cuda.is_available(), kind=kind, message=message,
                code=code, time=time.time(),
                traceback="".join(traceback.format_exception(type(e), e, e.__traceback__))).write(d)
    return True


def note_run_folder(path: Path, new: bool) -> None:
    """Rank 0 tells the launcher where the run is (RunNote)."""
    d = launch_dir()
    if d is not None and world().is_main:
        RunNote(str(path), new).write(d)


def _write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))
