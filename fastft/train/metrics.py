"""Training metrics shared by `fastft train` and the benchmark's classic recipe, so both are
measured alike: one record per logging interval (`logging_steps` optimizer steps).

Reading a number off the GPU makes the host wait for the GPU. Done every step, those waits
keep the CPU, which launches the next step's kernels, from running ahead, and small
variable-length steps are bound by the CPU. So nothing here synchronises: a record is
written when the Trainer logs, which reads the loss off the GPU anyway. Time is wall time
between logs, which is exact over an interval; tokens are the Trainer's count of the
non-padding tokens consumed (trainers must set `include_num_input_tokens_seen="non_padding"`);
memory is the allocator's peak, which the host keeps without asking the GPU.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..core.run import Throughput, write_text_atomic


@dataclass
class StepRecord:
    step: int                   # optimizer step at the end of the interval
    loss: float | None          # mean over the interval's steps
    lr: float | None
    grad_norm: float | None     # of the interval's last step
    tokens: int                 # non-padding tokens in the interval
    seconds: float              # wall time of the interval
    tokens_per_s: float
    mem_alloc_gib: float | None  # peak since start, GPU only
    mem_reserved_gib: float | None
    steps: int = 1              # optimizer steps in the interval


def gpu_peak_gib() -> tuple[float | None, float | None]:
    if not torch.cuda.is_available():
        return None, None
    g = 2 ** 30
    return torch.cuda.max_memory_allocated() / g, torch.cuda.max_memory_reserved() / g


class StepMetrics(TrainerCallback):
    """Appends one StepRecord per Trainer log to `metrics.jsonl`."""

    def __init__(self, path: Path | None = None):
        self.path = path
        self.records: list[StepRecord] = []
        self._t = None
        self._tokens = 0
        self._step = 0

    def on_step_begin(self, args, state, control, **kw):
        if self._t is None:
            self._t = time.perf_counter()
            self._tokens = state.num_input_tokens_seen  # nonzero when resuming
            self._step = state.global_step

    def on_step_end(self, args, state, control, **kw):
        # Log the run's last step too, so the record covers every step trained.
        if state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args, state, control, logs=None, **kw):
        if self._t is None or logs is None or "loss" not in logs:
            return
        now = time.perf_counter()
        alloc, reserved = gpu_peak_gib()
        seen = state.num_input_tokens_seen
        tokens, seconds = int(seen - self._tokens), now - self._t
        rec = StepRecord(
            state.global_step, float(logs["loss"]),
            float(logs["learning_rate"]) if "learning_rate" in logs else None,
            float(logs["grad_norm"]) if logs.get("grad_norm") is not None else None,
            tokens, seconds, tokens / seconds if seconds > 0 else 0.0, alloc, reserved,
            steps=state.global_step - self._step)
        self._t, self._tokens, self._step = now, seen, state.global_step
        self.records.append(rec)
        if self.path is not None:
            with open(self.path, "a") as f:
                f.write(json.dumps(asdict(rec)) + "\n")

    def summary(self, skip: int = 2) -> Throughput:
        """Throughput over the records after the first `skip` steps (compilation and warm-up
        excluded): every interval that holds one of those steps is left out."""
        recs = [r for r in self.records if r.step - r.steps >= skip] or self.records
        tokens = sum(r.tokens for r in recs)
        seconds = sum(r.seconds for r in recs)
        steps = sum(r.steps for r in recs)
        alloc, reserved = gpu_peak_gib()
        return Throughput(
            steps=self.records[-1].step if self.records else 0,
            timed_steps=steps,
            tokens_per_s=tokens / seconds if seconds else None,
            seconds_per_step=seconds / steps if steps else None,
            last_loss=self.records[-1].loss if self.records else None,
            peak_mem_alloc_gib=alloc,
            peak_mem_reserved_gib=reserved,
        )


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
    recs = [(r["loss"], r.get("steps", 1)) for r in read_records(path) if r.get("loss") is not None]
    steps = sum(n for _, n in recs)
    return sum(loss * n for loss, n in recs) / steps if steps else None
