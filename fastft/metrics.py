"""Step metrics shared by `fastft train` and the benchmark's classic recipe, so both are measured alike.

Tokens come from the Trainer's own count of the non-padding tokens each step consumed (padded or
padding-free); trainers must set `include_num_input_tokens_seen="non_padding"`. Time and memory
are read at each optimizer step.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from .run import write_text_atomic


@dataclass
class StepRecord:
    step: int
    loss: float | None
    lr: float | None
    grad_norm: float | None
    tokens: int                 # tokens in this optimizer step
    seconds: float              # wall time of this optimizer step
    tokens_per_s: float
    mem_alloc_gib: float | None  # peak since start, GPU only
    mem_reserved_gib: float | None


def gpu_peak_gib() -> tuple[float | None, float | None]:
    if not torch.cuda.is_available():
        return None, None
    g = 2 ** 30
    return torch.cuda.max_memory_allocated() / g, torch.cuda.max_memory_reserved() / g


class StepMetrics(TrainerCallback):
    """Records one StepRecord per optimizer step and appends it to `metrics.jsonl`."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.records: list[StepRecord] = []
        self._t = None
        self._tokens = 0
        self._pending: StepRecord | None = None

    def on_step_begin(self, args, state, control, **kw):
        if self._t is None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._t = time.perf_counter()
            self._tokens = state.num_input_tokens_seen  # nonzero when resuming

    def on_step_end(self, args, state, control, **kw):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        alloc, reserved = gpu_peak_gib()
        seen = state.num_input_tokens_seen
        tokens, self._tokens = int(seen - self._tokens), seen
        seconds = now - self._t
        self._pending = StepRecord(state.global_step, None, None, None, tokens, seconds,
                                   tokens / seconds if seconds > 0 else 0.0, alloc, reserved)
        self._t = now

    def on_log(self, args, state, control, logs=None, **kw):
        rec = self._pending
        if rec is None or logs is None or "loss" not in logs:
            return
        rec.loss = float(logs["loss"])
        rec.lr = float(logs["learning_rate"]) if "learning_rate" in logs else None
        rec.grad_norm = float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None
        self._pending = None
        self.records.append(rec)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(asdict(rec)) + "\n")

    def summary(self, skip: int = 2) -> dict:
        """Throughput over steps after the first `skip` (compilation and warm-up excluded)."""
        recs = self.records[skip:] if len(self.records) > skip else self.records
        tokens = sum(r.tokens for r in recs)
        seconds = sum(r.seconds for r in recs)
        alloc, reserved = gpu_peak_gib()
        return {
            "steps": len(self.records),
            "timed_steps": len(recs),
            "tokens_per_s": tokens / seconds if seconds else None,
            "seconds_per_step": seconds / len(recs) if recs else None,
            "last_loss": self.records[-1].loss if self.records else None,
            "peak_mem_alloc_gib": alloc,
            "peak_mem_reserved_gib": reserved,
        }


def read_records(path: Path) -> list[dict]:
    """The records in a metrics.jsonl; a line cut short by a crash mid-write is skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def truncate_after(path: Path, step: int) -> int:
    """Keep only the records of steps <= `step` (the checkpoint a resume starts from): the steps
    after it are trained again, and must not be recorded twice. Returns how many were dropped."""
    records = read_records(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) != len(records):
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    return len(records) - len(kept)


def mean_loss(path: Path) -> float | None:
    """The mean step loss over the whole run as recorded in metrics.jsonl, across resumes (the
    Trainer's own `training_loss` only covers the steps its process trained)."""
    losses = [r["loss"] for r in read_records(path) if r.get("loss") is not None]
    return sum(losses) / len(losses) if losses else None
