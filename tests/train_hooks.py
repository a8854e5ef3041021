"""Test-side hooks into training and export, so that fastft's own code carries none.

    FASTFT_FAULT=<point>:<SIGNAL>[:<n>]   the n-th arrival (default: the first) at a kill point
                                          sends SIGNAL (or, for `raise`, raises an unexpected
                                          error, as a bug would): `step` (inside an optimizer
                                          step), `checkpoint-write` (a checkpoint's weights are
                                          written, its trainer_state.json is not), `convert`
                                          (llama.cpp's converter has started), `direct` (the
                                          direct GGUF export's child has started), `quantize`
                                          (a llama-quantize has started)
    FASTFT_FAULT_RANK=R                   ... on rank R only (--gpus N)
    FASTFT_DEBUG_WEIGHTS_DIR=D            each rank writes D/rank<R>.json, the SHA-256 of its
                                          LoRA weights, when training ends

They work by subclassing the Trainer class fastft.train.trainer builds (`install`), and by
seeing the processes fastft.export.llamacpp starts (`install_export`). A `fastft` subprocess
gets them through `env()`, which puts tests/hooks/ on PYTHONPATH: its sitecustomize.py installs
them when those modules are imported. In-process tests call `install(trainer_module,
monkeypatch.setattr)`, undone with the monkeypatch.

A process that leads its own process group (the tests start it with `start_new_session=True`)
signals the whole group, as a terminal's Ctrl-C or a `kill -9 -PGID` does; otherwise only
itself (a SIGKILL of fastft alone, as the OOM killer sends).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path


HOOKS_DIR = Path(__file__).resolve().parent / "hooks"
REPO = HOOKS_DIR.parent.parent
WEIGHTS_DIR_ENV = "FASTFT_DEBUG_WEIGHTS_DIR"
FAULT_RANK_ENV = "FASTFT_FAULT_RANK"


def env(base: dict | None = None, **extra: str) -> dict:
    """`base` (os.environ) with the hooks and the repo first on PYTHONPATH, and `extra`."""
    base = dict(os.environ if base is None else base)
    path = [str(HOOKS_DIR), str(REPO), base.get("PYTHONPATH")]
    return base | {"PYTHONPATH": os.pathsep.join(p for p in path if p)} | extra


def fault_point(name: str) -> None:
    """A kill point (FASTFT_FAULT), kept to rank FASTFT_FAULT_RANK when that is set."""
    rank = os.environ.get(FAULT_RANK_ENV)
    if rank is None or int(rank) == int(os.environ.get("RANK", 0)):
        _arrive(name)


FAULT_ENV = "FASTFT_FAULT"
_arrivals: dict[str, int] = {}


def _arrive(name: str) -> None:
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    point, sig, *nth = spec.split(":")
    if point != name:
        return
    _arrivals[name] = _arrivals.get(name, 0) + 1
    if _arrivals[name] != int(nth[0] if nth else 1):
        return
    if sig == "raise":
        raise RuntimeError(f"fault injected at {name} ({FAULT_ENV})")
    signum = signal.Signals[sig.upper()]
    if os.getpgrp() == os.getpid():
        os.killpg(os.getpgrp(), signum)
    else:
        os.kill(os.getpid(), signum)


def install_export(llamacpp_module, setattr=setattr) -> None:
    """Kill points `convert`, `direct` and `quantize`, right after fastft.export.llamacpp starts
    the converter, the direct export's child (fastft.export.direct) or a llama-quantize."""
    import subprocess

    from fastft.core.procs import command_of

    class Popen(subprocess.Popen):
        def __init__(self, args, *a, **kw):
            super().__init__(args, *a, **kw)
            cmd = [Path(str(x)).name for x in command_of([str(x) for x in args])]
            if "convert_hf_to_gguf.py" in cmd[:2]:
                fault_point("convert")
            elif cmd[1:3] == ["-m", "fastft.export.direct"]:
                fault_point("direct")
            elif cmd and cmd[0] == "llama-quantize" and "--help" not in cmd:
                fault_point("quantize")

    class Subprocess:   # the module's `subprocess`, with a Popen that reports what it started
        def __getattr__(self, name):
            return Popen if name == "Popen" else getattr(subprocess, name)
    setattr(llamacpp_module, "subprocess", Subprocess())


def install(trainer_module, setattr=setattr) -> None:
    """Make fastft.train.trainer build its Trainer with the hooks (`setattr`: monkeypatch's, to
    undo it after the test)."""
    build = trainer_module._trainer_class
    setattr(trainer_module, "_trainer_class", lambda: hooked(build()))


def hooked(base):
    class HookedTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if os.environ.get(WEIGHTS_DIR_ENV):
                self.add_callback(weights_digest_callback(Path(os.environ[WEIGHTS_DIR_ENV])))

        def training_step(self, *args, **kwargs):
            fault_point("step")
            return super().training_step(*args, **kwargs)

        def _save_optimizer_and_scheduler(self, output_dir):
            fault_point("checkpoint-write")   # the weights are saved, trainer_state.json is not
            return super()._save_optimizer_and_scheduler(output_dir)

    return HookedTrainer


def weights_digest(state_dict: dict) -> str:
    """SHA-256 over a LoRA state dict's names and values (as float32), in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_digest_callback(folder: Path):
    """A callback writing this rank's LoRA weights' digest when training ends: the same function
    of the same tensors that rank 0 saves as the adapter. (transformers is imported here, not at
    the top: an export process imports this module before Unsloth, which must come first.)"""
    from transformers import TrainerCallback

    class WeightsDigest(TrainerCallback):
        """When training ends, this rank's LoRA weights' digest: the same function of the same
        tensors that rank 0 saves as the adapter."""

        def __init__(self, folder: Path):
            self.folder = folder

        def on_train_end(self, args, state, control, model=None, **kw):
            from peft import get_peft_model_state_dict

            rank = int(os.environ.get("RANK", 0))
            weights = get_peft_model_state_dict(model)
            (self.folder / f"rank{rank}.json").write_text(json.dumps(
                {"rank": rank, "sha256": weights_digest(weights), "tensors": len(weights)}))

    return WeightsDigest(folder)
