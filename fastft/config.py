"""The training configuration: plain data, cheap to import (the CLI builds it before any model code)."""

from __future__ import annotations

from dataclasses import dataclass, fields

from .models import DEFAULT_MODEL


class TrainError(RuntimeError):
    pass


ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class TrainConfig:
    """Everything that decides a run; written to fastft.json so a run can be reproduced or resumed."""
    data: str
    model: str = DEFAULT_MODEL
    name: str | None = None
    runs_dir: str = "runs"
    load_in_4bit: bool = True
    max_seq_len: int = 2048
    # LoRA: the field's defaults (r=16, alpha=2r, no dropout, every linear projection).
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ALL_PROJECTIONS
    rslora: bool = False
    dora: bool = False
    # Optimisation.
    lr: float = 2e-4
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    epochs: float = 3.0
    max_steps: int = -1
    batch_size: int = 2          # micro-batch per step; batch_size x grad_accum is the effective batch
    grad_accum: int = 4
    auto_batch: bool = True      # on a GPU, raise the micro-batch (same effective batch) while it fits
    vram_budget: float | None = None  # GiB; caps what auto-batch may use
    # "unsloth" offloads checkpointed activations to CPU RAM (least VRAM); "true" keeps them on
    # the GPU; "false" keeps every activation (fastest, most VRAM).
    gradient_checkpointing: str = "unsloth"
    optim: str = "adamw_8bit"
    weight_decay: float = 0.0
    seed: int = 42
    train_on_all: bool = False   # loss on prompts too, not only on assistant turns
    think: str = "strip"
    packing: bool = False
    padding: str = "auto"        # auto | padded | free (padding-free); auto decides by pad waste
    # Evaluation and checkpoints.
    eval_split: float = 0.0
    eval_file: str | None = None
    save_steps: int | None = None  # default: a checkpoint each epoch
    skip_invalid: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
        d = dict(d)
        if "target_modules" in d:
            d["target_modules"] = tuple(d["target_modules"])
        return cls(**d)

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.grad_accum
