"""Remembered batch plans: auto-tune's result, kept in the fastft cache for later runs that would
measure the same thing.

A probe costs 23-50 s on the 4B model (bench/results/2026-12-05-h100-80gb-hbm3-ttfc.json: 49.6 s
with cold compile caches, 22.9 s warm), as long as a short fine-tune trains, and a second run on
the same data measures the same candidates again. What decides the probe's outcome makes the
key (`TuningKey`): the card, the model and its 4/16-bit loading, the LoRA shape, the optimizer
(its state is kept free), the choices the user fixed, the VRAM budget, the library versions and
the shape of the data (`LengthProfile`). The data's size is not in it: it decides whether a
probe pays off (fastft.train.autobatch.should_probe), not what the probe finds.

One file per key, `<cache>/tuning/<hash>.json`, holds a `TuningEntry`. It is written to a
temporary file and renamed over the old one, so runs writing at once never leave half a file
(the last one wins; each wrote a whole measurement) and no lock is needed. A file that cannot
be read, is no entry, or holds another key is ignored with one line: the cache never stops a run.
"""

from __future__ import annotations

import hashlib
import math
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.cache import CacheError, cache_dir
from ..core.config import TrainConfig
from ..core.run import Tuning, Versions, write_text_atomic
from .batching import PAD_MULTIPLE

CACHE_VERSION = 1   # raise it when what a probe measures or chooses changes: older entries then miss
SUBDIR = "tuning"

Note = Callable[[str], None]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def bucket(n: int) -> int:
    """The smallest step of the grid 64, 90, 128, 181, 256, 362, 512, ... (x sqrt 2 each step,
    from PAD_MULTIPLE, which padded batches are rounded up to anyway) that holds `n` tokens.
    Integer arithmetic: a length on a step's edge always lands in the same bucket."""
    k, square = 0, PAD_MULTIPLE * PAD_MULTIPLE
    while (square << k) < n * n:
        k += 1
    return math.isqrt(square << k)   # the longest length of the step


class LengthProfile(_Frozen):
    """The shape of the training data, as coarse as the probe's outcome allows.

    The longest example (with the effective batch) decides the worst-case micro-batch, hence
    which modes and micro-batches fit; the median and the 90th percentile decide the typical
    batch's shape, hence speed (short batches are bound by the CPU, long ones by the GPU, and the
    spread decides padded vs padding-free). Each is put in a bucket of a x sqrt(2) grid: lengths
    within ~40% of each other share a bucket, so the same data, a shuffled copy, or more data of
    the same kind hit the cache, while data twice as long (or a much lower --max-seq-len) misses."""
    p50: int
    p90: int
    max: int
    effective_batch: int

    @classmethod
    def of(cls, lengths: list[int], effective_batch: int) -> "LengthProfile":
        s = sorted(lengths) or [0]
        at = lambda pct: s[min(len(s) - 1, len(s) * pct // 100)]   # noqa: E731
        return cls(p50=bucket(at(50)), p90=bucket(at(90)), max=bucket(s[-1]),
                   effective_batch=effective_batch)


class TuningKey(_Frozen):
    """Everything that decides what auto-tune measures and chooses (see the module's doc)."""
    gpu: str                      # name, memory and CUDA version of GPU 0
    model: str                    # what from_pretrained was given
    load_in_4bit: bool
    rank: int
    target_modules: tuple[str, ...]
    dora: bool
    dropout: float                # Unsloth's fast LoRA path needs dropout 0
    optim: str                    # its state is kept free of the budget
    gradient_checkpointing: str   # "auto", or the mode the user fixed
    padding: str                  # "auto", or the padding the user fixed
    budget_gib: float
    profile: LengthProfile
    versions: Versions

    @classmethod
    def of(cls, cfg: TrainConfig, model: str, gpu: str, budget_gib: float, optim: str,
           lengths: list[int], versions: Versions) -> "TuningKey":
        """`cfg` as auto-tune sees it (with --gpus N: each GPU's share of the batch)."""
        return cls(gpu=gpu, model=model, load_in_4bit=cfg.load_in_4bit, rank=cfg.rank,
                   target_modules=tuple(sorted(cfg.target_modules)), dora=cfg.dora,
                   dropout=cfg.dropout, optim=optim,
                   gradient_checkpointing=cfg.gradient_checkpointing, padding=cfg.padding,
                   budget_gib=round(budget_gib, 1),
                   profile=LengthProfile.of(lengths, cfg.batch_size * cfg.grad_accum),
                   versions=versions)

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:20]


class TuningEntry(BaseModel):
    """One remembered probe: its key, when, for how long it could run, and what it chose."""
    model_config = ConfigDict(extra="forbid")
    version: int = CACHE_VERSION
    created: str                  # ISO date and time of the probe
    probe_budget_s: float         # a shortened probe is not reused where a longer one would run
    key: TuningKey
    tuning: Tuning

    @property
    def date(self) -> str:
        return self.created[:10]


def cache_folder(note: Note) -> Optional[Path]:
    """`<fastft cache>/tuning`, or None (said on `note`) when the cache folder cannot be one."""
    try:
        return cache_dir() / SUBDIR
    except CacheError as e:
        note(f"batch plans are not remembered: {e}")
        return None


def lookup(key: TuningKey, folder: Optional[Path], note: Note) -> Optional[TuningEntry]:
    """The entry remembered for `key`, or None: none, or one that is unreadable or foreign
    (ignored, with one line on `note`)."""
    if folder is None:
        return None
    path = folder / f"{key.digest()}.json"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        note(f"ignored the remembered batch plan {path}: cannot read it ({e.strerror or e})")
        return None
    try:
        entry = TuningEntry.model_validate_json(text)
    except ValidationError as e:
        what = "not JSON" if any(x["type"] == "json_invalid" for x in e.errors()) else "not a batch plan"
        note(f"ignored the remembered batch plan {path}: {what} (fastft {CACHE_VERSION} reads its own)")
        return None
    if entry.version != CACHE_VERSION or entry.key != key:
        note(f"ignored the remembered batch plan {path}: written for another setup or fastft")
        return None
    return entry


def store(key: TuningKey, tuning: Tuning, probe_budget_s: float, folder: Optional[Path],
          note: Note, now: datetime | None = None) -> Optional[Path]:
    """Remember `tuning` for `key` (atomically: written aside, then renamed); the file, or None
    when it could not be written (said on `note`: a read-only cache only costs the next probe)."""
    if folder is None:
        return None
    path = folder / f"{key.digest()}.json"
    entry = TuningEntry(created=(now or datetime.now()).isoformat(timespec="seconds"),
                        probe_budget_s=probe_budget_s, key=key, tuning=tuning)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, entry.model_dump_json(indent=2) + "\n")
    except OSError as e:
        note(f"the batch plan is not remembered: cannot write {path} ({e.strerror or e})")
        return None
    return path
