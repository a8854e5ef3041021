"""Test-side hooks into training, so that fastft's training path carries none.

    FASTFT_FAULT=<point>:<SIGNAL>[:<n>]   a kill point (fastft.core.faults), at `step` (inside an
                                          optimizer step) or `checkpoint-write` (a checkpoint's
                                          weights are written, its trainer_state.json is not)
    FASTFT_FAULT_RANK=R                   ... on rank R only (--gpus N)
    FASTFT_DEBUG_WEIGHTS_DIR=D            each rank writes D/rank<R>.json, the SHA-256 of its
                                          LoRA weights, when training ends

They work by subclassing the Trainer class fastft.train.trainer builds (`install`). A `fastft`
subprocess gets them through `env()`, which puts tests/hooks/ on PYTHONPATH: its
sitecustomize.py installs them when fastft.train.trainer is imported. In-process tests call
`install(trainer_module, monkeypatch.setattr)`, undone with the monkeypatch.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from transformers import TrainerCallback

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
    """fastft.core.faults' kill point, kept to rank FASTFT_FAULT_RANK when that is set."""
    from fastft.core import faults
    rank = os.environ.get(FAULT_RANK_ENV)
    if rank is None or int(rank) == int(os.environ.get("RANK", 0)):
        faults.fault_point(name)


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
                self.add_callback(WeightsDigest(Path(os.environ[WEIGHTS_DIR_ENV])))

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
