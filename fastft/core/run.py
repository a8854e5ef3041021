"""The run folder: its layout and its record (`fastft.json`), owned here and nowhere else.

    runs/<name>/
      fastft.json      RunRecord: the config, what the run derived from it (plan), data, results
      metrics.jsonl    one StepRecord per optimizer step (fastft.train.metrics)
      loss.png         train/eval loss and learning rate per step, drawn at the end (fastft.train.plot)
      tensorboard/     TensorBoard event files (--tensorboard)
      checkpoints/     checkpoint-<step>/: written into checkpoints/.tmp/, renamed once whole
      adapter/         the trained LoRA adapter and the guarded tokenizer, swapped in atomically
      train.log        what the libraries printed while training (fastft.core.quiet); export.log, exporting
      .lock            locked while a process trains in the folder (fastft.core.locks)
    runs/latest        symlink to the newest run

Train, resume, export, chat, the CLI summary, the benchmark and the tests all read and write a
run through `RunFolder` and `RunRecord`, so the schema has one definition and one version.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from .cache import folder_problem
from .config import RUN_NAME_PATTERN, TrainConfig
from .errors import RunFolderError
from .locks import is_free, try_lock

SCHEMA_VERSION = 2
RECORD_FILE = "fastft.json"
LATEST = "latest"
NAME_RE = re.compile(RUN_NAME_PATTERN)
CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)")   # the Trainer's folder name for a step


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataInfo(_Record):
    path: str                    # absolute, so a resume works from any directory
    sha256: str
    examples: int                # valid records in the file
    train: int                   # tokenised training examples (after the eval split and drops)
    eval: int
    truncated: int
    dropped: int                 # no trainable token left after truncation
    train_tokens: int
    trained_tokens: int          # tokens that carry loss


class PadWaste(_Record):
    """Share of computed tokens that are padding, with random and with length-grouped batches."""
    random: float
    grouped: float


@dataclass
class Measurement:
    """One candidate auto-tune probed. peak_gib None: out of memory; tokens_per_s None: not
    timed. A dataclass (fastft.train.autobatch builds many, positionally) that pydantic
    validates inside Plan."""
    micro_batch: int
    padding_free: bool
    checkpointing: str
    peak_gib: float | None
    tokens_per_s: float | None

    def label(self) -> str:
        head = f"{self.micro_batch} {'free' if self.padding_free else 'padded'} {self.checkpointing}"
        if self.peak_gib is None:
            return f"{head}: OOM"
        speed = "not timed" if self.tokens_per_s is None else f"{self.tokens_per_s:,.0f} tok/s"
        return f"{head}: {speed}, {self.peak_gib:.1f} GiB"


@dataclass
class Tuning:
    """Auto-tune's choice and what it measured (fastft.train.autobatch)."""
    batch_size: int
    grad_accum: int
    padding_free: bool
    checkpointing: str
    budget_gib: float
    probe_s: float
    measurements: list[Measurement] = field(default_factory=list)
    reserve_gib: float = 0.0   # optimizer state the probe does not see, kept free as well

    def chosen(self) -> Measurement | None:
        """The timed measurement of the plan chosen; None when nothing fitted or none was made."""
        return next((m for m in self.measurements if (m.micro_batch, m.padding_free,
                     m.checkpointing) == (self.batch_size, self.padding_free, self.checkpointing)
                     and m.tokens_per_s), None)

    def plan_words(self) -> str:
        """'8 x 1 padded, no checkpointing'."""
        mode = ("no checkpointing" if self.checkpointing == "false"
                else f"checkpointing {self.checkpointing}")
        return (f"{self.batch_size} x {self.grad_accum} "
                f"{'padding-free' if self.padding_free else 'padded'}, {mode}")

    def describe(self) -> str:
        chosen = self.chosen()
        others = "; ".join(m.label() for m in self.measurements if m is not chosen)
        speed = f" ({chosen.label().split(': ', 1)[1]})" if chosen else " (nothing fitted)"
        return (f"auto-tune: micro-batch {self.batch_size} x {self.grad_accum} accumulation, "
                f"{'padding-free' if self.padding_free else 'padded'}, checkpointing "
                f"{self.checkpointing}{speed}; budget {self.budget_gib:.1f} GiB, "
                f"{self.reserve_gib:.2f} GiB for optimizer state; also measured: "
                f"{others or 'nothing'}; {self.probe_s:.0f} s")

    def to_dict(self) -> dict:
        return asdict(self)


class TuningOrigin(_Record):
    """How auto-tune got the plan (fastft.train.autobatch.tune): measured by a probe in this run,
    reused from an earlier probe of the same key (fastft.train.tuning_cache), or estimated
    without a probe because the run looked too short for one to pay for itself."""
    how: Literal["probed", "reused", "estimated"]
    reused_from: Optional[str] = None     # reused: the date (YYYY-MM-DD) of the probe reused
    estimate_s: Optional[float] = None    # training time the throughput model expected
    probe_budget_s: Optional[float] = None  # probed: no new candidate started after this
    cache_key: Optional[str] = None       # the tuning cache entry looked up (its file's name)


class Plan(_Record):
    """What the run derived from its config on this machine; a resume reuses it as it is."""
    model_path: str              # what from_pretrained was given: a local folder or a hub id
    batch_size: int              # micro-batch actually used (on each GPU)
    grad_accum: int              # ... and accumulation: x world_size GPUs = the effective batch
    padding_free: Optional[bool]  # None: left to Unsloth (CPU, packing)
    gradient_checkpointing: str
    optim: str                   # the optimizer actually used (adamw_torch on CPU)
    group_by_length: bool
    pad_waste: Optional[PadWaste] = None
    tuning: Optional[Tuning] = None    # None: not auto-tuned (CPU, packing, --no-auto-batch)
    tuning_origin: Optional[TuningOrigin] = None   # None: not auto-tuned, or recorded before it was kept
    world_size: int = 1                # data-parallel processes, one per GPU (a resume needs as many)
    launcher: Optional[str] = None     # what started them: "torchrun" (fastft train --gpus N)
    # Unsloth's per-block compile of padded batches: False where fastft turned it off (a run
    # too short to repay it, or --compile off); None: left to Unsloth (CPU, padding-free, packing,
    # or recorded before fastft decided it).
    compile: Optional[bool] = None


class Throughput(_Record):
    """What fastft.train.metrics.StepMetrics measured (warm-up steps left out of the timing)."""
    steps: int = 0               # steps recorded in metrics.jsonl by this process
    timed_steps: int = 0
    tokens_per_s: Optional[float] = None
    seconds_per_step: Optional[float] = None
    last_loss: Optional[float] = None
    peak_mem_alloc_gib: Optional[float] = None
    peak_mem_reserved_gib: Optional[float] = None


class Final(Throughput):
    global_step: int
    train_loss: Optional[float] = None
    eval_loss: Optional[float] = None
    best_eval_loss: Optional[float] = None
    eval_losses: list[float] = []
    best_checkpoint: Optional[str] = None


# The guard's report, versions and hardware: every field has a default, so a record that left one
# out (or wrote it as {}, as the tests' minimal runs do) still loads.

class GuardRecord(_Record):
    """The chat-template guard's report (fastft.data.template.GuardReport), as the record keeps it."""
    variant: str = ""
    template_replaced: bool = False
    eos_set: Optional[str] = None        # the EOS replaced, if any
    pad_set: Optional[str] = None        # the pad token replaced, if any
    empty_think_removed: int = 0
    data_think_stripped: int = 0
    data_think_kept: int = 0
    issues: list[str] = []               # think errors and parity failures, one line each


def package_version(name: str) -> str | None:
    """An installed distribution's version from its metadata (no import: Unsloth's takes
    seconds), None if it is not installed. The one reading, for fastft.json and `fastft doctor`."""
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


class Versions(_Record):
    """The versions a run was trained with; None: not installed."""
    fastft: Optional[str] = None
    unsloth: Optional[str] = None
    unsloth_zoo: Optional[str] = None
    torch: Optional[str] = None
    transformers: Optional[str] = None
    trl: Optional[str] = None
    peft: Optional[str] = None
    datasets: Optional[str] = None
    bitsandbytes: Optional[str] = None
    accelerate: Optional[str] = None

    @classmethod
    def installed(cls) -> "Versions":
        return cls(**{name: package_version(name) for name in cls.model_fields})


class Hardware(_Record):
    platform: str = ""
    python: str = ""
    cpus: Optional[int] = None
    gpu: Optional[str] = None            # GPU 0's name; None: trained on the CPU
    gpu_mem_gib: Optional[float] = None
    gpu_count: Optional[int] = None
    cuda: Optional[str] = None


class RunRecord(_Record):
    schema_version: int = SCHEMA_VERSION
    status: Literal["training", "done", "failed", "interrupted"] = "training"
    config: TrainConfig
    plan: Plan
    variant: str                 # which chat template family (fastft.core.qwen3.detect_variant)
    guard: GuardRecord
    data: DataInfo
    versions: Versions
    hardware: Hardware
    timings: dict[str, float] = {}
    final: Optional[Final] = None


STAMP_FORMAT = "%Y%m%d-%H%M%S"              # the timestamp a default run name ends with
STAMP_RE = re.compile(r"-\d{8}-\d{6}$")      # ... as STAMP_FORMAT writes it, with its dash


def default_run_name(data: str, now: datetime | None = None) -> str:
    """`<data file stem>-<timestamp>`, made a valid run name."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(data).stem).strip("-._")[:80] or "run"
    return f"{stem}-{(now or datetime.now()):{STAMP_FORMAT}}"


def run_name_stem(name: str) -> str:
    """A run name without the timestamp `default_run_name` ended it with."""
    return STAMP_RE.sub("", name) or name


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def record_file(self) -> Path:
        return self.path / RECORD_FILE

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_png(self) -> Path:
        return self.path / "loss.png"

    @property
    def tensorboard_dir(self) -> Path:
        return self.path / "tensorboard"

    @property
    def train_log(self) -> Path:
        return self.path / "train.log"

    @property
    def export_log(self) -> Path:
        return self.path / "export.log"

    # -- finding and creating ------------------------------------------------------------------

    @classmethod
    def new(cls, runs_dir: str | os.PathLike, name: str) -> "RunFolder":
        """The folder a new run `name` would use; refuses unsafe names and taken folders.
        Creates nothing (see `create`), so a run can be checked completely first."""
        if not NAME_RE.fullmatch(name):
            raise RunFolderError(f"invalid run name {name!r}: use letters, digits, '.', '_', '-' "
                                 f"(at most 100, starting with a letter or digit; not {LATEST!r})")
        if problem := folder_problem(runs_dir):
            raise RunFolderError(f"--runs-dir {runs_dir}: {problem}; give a folder fastft can write to")
        folder = cls(Path(runs_dir).absolute() / name)
        if folder.path.exists() and not folder.abandoned() and (
                not folder.path.is_dir() or any(folder.path.iterdir())):
            raise RunFolderError(f"run folder {folder.path} already exists; pick another --name "
                                 f"or --resume it")
        return folder

    def abandoned(self) -> bool:
        """Left by a run killed before it wrote its record (while loading the model): a fastft
        folder (it has the lock file) with no fastft.json, whose lock nobody holds. It holds
        nothing to resume, so a new run of that name may replace it."""
        lock = self.path / ".lock"
        if not lock.is_file() or self.record_file.exists():
            return False
        return is_free(lock)

    def create(self) -> None:
        if self.abandoned():
            import shutil
            shutil.rmtree(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.path.mkdir()
        except FileExistsError:
            if any(self.path.iterdir()):  # another process won the race for this name
                raise RunFolderError(f"run folder {self.path} was created by another process") from None

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunFolder":
        """An existing run (symlinks such as runs/latest resolved)."""
        given = Path(path)
        folder = cls(given.resolve())
        if not folder.record_file.is_file():
            hint = " (train one first: fastft train DATA)" if given.name == LATEST else ""
            raise RunFolderError(f"{given}: not a fastft run folder, no {RECORD_FILE}{hint}")
        return folder

    # -- the record ------------------------------------------------------------------------------

    def read(self) -> RunRecord:
        try:
            raw = json.loads(self.record_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RunFolderError(f"{self.record_file}: unreadable: {e}") from None
        version = raw.get("schema_version") if isinstance(raw, dict) else None
        if version != SCHEMA_VERSION:
            raise RunFolderError(f"{self.record_file}: schema version {version!r}, this fastft "
                                 f"reads version {SCHEMA_VERSION}; use the fastft that wrote it")
        try:
            return RunRecord.model_validate(raw)
        except ValidationError as e:
            raise RunFolderError(f"{self.record_file}: malformed: {e}") from None

    def write(self, record: RunRecord) -> None:
        """Atomically: a reader never sees half a file."""
        write_text_atomic(self.record_file, record.model_dump_json(indent=2) + "\n")

    # -- checkpoints, the latest pointer, the lock ---------------------------------------------

    def _checkpoint_dirs(self) -> list[Path]:
        """Every `checkpoint-<step>` folder the Trainer wrote, oldest step first."""
        found = [p for p in self.checkpoints_dir.glob("checkpoint-*")
                 if checkpoint_step(p) is not None and p.is_dir()]
        return sorted(found, key=checkpoint_step)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first. The Trainer writes trainer_state.json last, so a
        checkpoint without it was cut short and cannot be resumed from."""
        return [p for p in self._checkpoint_dirs() if _complete(p)]

    def incomplete_checkpoints(self) -> list[Path]:
        """Checkpoint folders without a whole trainer_state.json: cut short while saving."""
        return [p for p in self._checkpoint_dirs() if not _complete(p)]

    def last_checkpoint(self) -> Path | None:
        cks = self.checkpoints()
        return cks[-1] if cks else None

    def has_trained(self) -> bool:
        """It recorded a step or saved a checkpoint: worth keeping after a failure."""
        return self.metrics_file.exists() or bool(self.checkpoints())

    def discard(self) -> None:
        """Remove a run that never trained a step, and a `latest` link pointing at it."""
        import shutil
        latest = self.path.parent / LATEST
        if latest.is_symlink() and latest.resolve() == self.path.resolve():
            latest.unlink()
        shutil.rmtree(self.path, ignore_errors=True)

    def point_latest(self) -> None:
        """`<runs>/latest` -> this run, swapped atomically; never replaces a non-link."""
        latest = self.path.parent / LATEST
        if latest.exists() and not latest.is_symlink():
            return  # a file or folder of the user's: leave it alone
        tmp = self.path.parent / f".{LATEST}-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.path.name)
        os.replace(tmp, latest)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Held while training; a second process training into the same folder is refused."""
        lock = try_lock(self.path / ".lock")
        if lock is None:
            raise RunFolderError(f"{self.path} is in use by another fastft process")
        try:
            yield
        finally:
            lock.release()


def read_trained(path: str | os.PathLike, command: str) -> Run:
    """The run folder `path` (symlinks such as runs/latest resolved), refused unless it has a
    trained adapter: what export, chat and eval read."""
    folder = RunFolder.open(path)
    record = folder.read()
    if not (folder.adapter / "adapter_config.json").is_file():
        why = f" (its status is {record.status!r})" if record.status != "done" else ""
        resume = (f"; finish it with fastft train --resume {folder.path}"
                  if record.status != "done" else "")
        raise RunFolderError(f"{folder.path}: no trained adapter in {folder.adapter}{why}; "
                             f"{command} runs after `fastft train` finishes{resume}")
    return Run(folder, record)


def _complete(checkpoint: Path) -> bool:
    """Its trainer_state.json is there and whole: the Trainer writes it in place, so a kill or a
    power cut while writing it can leave it cut short or empty."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step of a Trainer checkpoint folder (`checkpoint-<step>`), else None."""
    m = CHECKPOINT_RE.fullmatch(path.name)
    return int(m.group(1)) if m else None


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:   # a full disk: no half-written temporary left behind
        tmp.unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class Run:
    """A run folder and its record, as training wrote it or export and chat read it."""
    folder: RunFolder
    record: RunRecord

    @property
    def run_dir(self) -> Path:
        return self.folder.path

    @property
    def adapter_dir(self) -> Path:
        return self.folder.adapter

    @property
    def variant(self) -> str:
        return self.record.variant

    @property
    def model(self) -> str:
        return self.record.config.model

    @property
    def model_path(self) -> str:
        return self.record.plan.model_path

    @property
    def max_seq_len(self) -> int:
        return self.record.config.max_seq_len
