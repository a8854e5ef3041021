"""`fastft train`: QLoRA SFT through Unsloth and TRL, into a self-describing run folder.

`train` (a new run) and `resume` (an existing one) share one pipeline, `_execute`, which reads
as the stages in order: read and validate the data, load the model, apply the chat-template
guard, tokenise with an assistant-only label mask, attach LoRA, plan the batches (auto-tune on
a GPU), train, save the adapter. Everything that can be checked is checked before the run
folder is created or the model is loaded; a new run that fails before its first optimizer step
leaves no folder behind, and `runs/latest` moves to it only once it has trained a step.

While training, a checkpoint is also saved every --save-minutes, and the first Ctrl-C or SIGTERM
saves one at the end of the current step and stops (`TrainInterrupted`; a second stops at once).
"""

from __future__ import annotations

from ..core.models import import_unsloth

import_unsloth()  # before transformers, peft and trl (see fastft.core.models)

import contextlib  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

from . import compiling, distributed  # noqa: E402
from .autobatch import (DEFAULT_MODE, UNSLOTH_GC, choose_optimizer, cpu_optimizer,  # noqa: E402
                        set_checkpointing, tune)
from ..core.cache import building  # noqa: E402
from ..core.config import TrainConfig  # noqa: E402
from ..data.read import Example  # noqa: E402
from ..core.errors import RunFolderError, TrainError, is_disk_full, is_out_of_memory  # noqa: E402
from .metrics import mean_loss, truncate_after  # noqa: E402
from ..core.models import hub_problem, load_model, resolve_model  # noqa: E402
from .inputs import Inputs, check_inputs, load_data, require_tensorboard, split_eval  # noqa: E402
from ..core.timeline import Timeline, timings_line  # noqa: E402
from .plot import log_tensorboard_to, plot_run  # noqa: E402
from ..core.quiet import move_log  # noqa: E402
from ..core.signals import STOP_SIGNALS, Terminated  # noqa: E402
from ..core.preflight import check_train_space  # noqa: E402
from ..core.run import (DataInfo, Final, GuardRecord, Hardware, PadWaste, Plan, Run,  # noqa: E402
                        RunFolder, RunRecord, Versions, checkpoint_step, default_run_name)
from ..data.template import ChatGuard, TokenizedExample, encode_all  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


@dataclass
class PreparedData:
    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    truncated: int
    dropped: int                # no trainable token left after truncation
    sha256: str
    examples: int


class TrainInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (`signum`) stopped training after saving a checkpoint of the current
    step: resumable."""

    def __init__(self, folder: RunFolder, step: int, checkpoint: Path | None,
                 signum: int = signal.SIGINT):
        super().__init__(f"interrupted at step {step}")
        self.folder, self.step, self.checkpoint, self.signum = folder, step, checkpoint, signum


# -- entry points ------------------------------------------------------------------------------

def train(cfg: TrainConfig, ui=None, inputs: Inputs | None = None,
          timeline: Timeline | None = None) -> Run:
    """A new run. Data, names and a local model folder are checked before the run folder exists
    (`inputs`: already checked by the caller, as the CLI does before importing this module); if
    the run fails before its first optimizer step, the folder is removed again. `timeline`: the
    command's, whose stages so far (start-up, checks, imports) the run record keeps too."""
    timeline = timeline or Timeline()
    loaded = inputs or check_inputs(cfg)
    main = distributed.start(cfg.gpus).is_main   # with --gpus N: one of N processes
    cfg = cfg.model_copy(update=_absolute_paths(cfg))
    # Rank 0 names (the default name holds the time) and creates the folder; the others open it.
    folder = distributed.from_main(lambda: _create_folder(cfg))
    if main:
        move_log(folder.train_log)  # the libraries' output so far, and from now on, goes there
    try:
        with folder.lock() if main else contextlib.nullcontext(), resumable_on_disk_full(folder):
            return _execute(cfg, folder, loaded, None, None, ui, timeline, new_run=True)
    except BaseException:
        # Nothing trained yet (a load, guard or tokenisation error, an early Ctrl-C): an empty
        # run folder would only be in the way of the next attempt's name and of runs/latest.
        if main and not folder.has_trained():
            folder.discard()
        raise


def _create_folder(cfg: TrainConfig) -> RunFolder:
    folder = RunFolder.new(cfg.runs_dir, cfg.name or default_run_name(cfg.data))
    check_train_space(cfg, cfg.runs_dir, resolve_model(cfg.model).path)
    folder.create()
    distributed.note_run_folder(folder.path, new=True)
    return folder


def resume(path: str | os.PathLike, ui=None, timeline: Timeline | None = None) -> Run:
    """Continue a run from its last complete checkpoint, with exactly the config and plan it saved."""
    from ..core.ui import NullUI
    ui = ui or NullUI()
    main = distributed.start(None).is_main
    folder = RunFolder.open(path)
    refuse_finished(folder, folder.read())   # before the lock, whose file would be a change
    with folder.lock() if main else contextlib.nullcontext():
        saved = folder.read()
        if main:
            move_log(folder.train_log)
            distributed.note_run_folder(folder.path, new=False)
        if saved.plan.world_size != distributed.world().size:
            raise TrainError(distributed.mismatch(folder.name, saved.plan.world_size,
                                                  distributed.world().size))
        if saved.config.tensorboard:
            require_tensorboard()
        checkpoint = folder.last_checkpoint()  # None (killed before one was saved): from step 0
        loaded = load_data(saved.config)
        if loaded.train.sha256 != saved.data.sha256:
            raise TrainError(f"{saved.config.data} changed since {folder.name} started (sha256 "
                             f"differs); resuming would train on other data: start a new run")
        if main:
            check_train_space(saved.config, folder.path, saved.plan.model_path)
            _drop_after(folder, checkpoint, ui)
        distributed.barrier()   # the others start once rank 0 has cleaned up after the checkpoint
        with resumable_on_disk_full(folder):
            return _execute(saved.config, folder, loaded, checkpoint, saved.plan, ui,
                            timeline or Timeline(), new_run=False)


def refuse_finished(folder: RunFolder, saved: RunRecord) -> None:
    """A finished run has nothing left to train: resuming it would train past its last step
    and overwrite the adapter it finished with."""
    if saved.status == "done":
        steps = f" after {saved.final.global_step} steps" if saved.final else ""
        raise TrainError(f"{folder.path} finished{steps}: nothing to resume, and it was left "
                         f"unchanged; its adapter is in {folder.adapter}. To train more, start a "
                         f"new run (fastft train DATA --name NEW ...)")


def _drop_after(folder: RunFolder, checkpoint: Path | None, ui) -> None:
    """What lies past the checkpoint a resume starts from: incomplete checkpoint folders (cut
    short while saving; left in place, the Trainer would save into them and could rotate the
    good checkpoint away), temporaries of a killed save (we hold the run's lock, so no other
    process is writing them) and metrics of the steps about to be trained again."""
    step = checkpoint_step(checkpoint) if checkpoint else 0
    incomplete = [p for p in folder.incomplete_checkpoints() if checkpoint_step(p) > step]
    for p in incomplete:
        shutil.rmtree(p)
    if incomplete:
        ui.status(f"skipped incomplete {', '.join(p.name for p in incomplete)} (no whole "
                  f"trainer_state.json: cut short while saving); removed")
    staging = folder.checkpoints_dir / STAGING
    if staging.exists():
        names = ", ".join(p.name for p in staging.iterdir()) or "nothing"
        shutil.rmtree(staging)
        ui.status(f"removed {staging.name}/ ({names}): a checkpoint cut short while saving")
    for p in folder.path.glob(".*tmp-*"):   # .tmp-adapter-*, .fastft.json.tmp-<pid>
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
        ui.status(f"removed {p.name}, left by a save that was killed")
    ui.status(f"resuming from {checkpoint.name}" if checkpoint else
              "no complete checkpoint (killed before the first was saved): training again from "
              "step 0 with the saved config")
    truncate_after(folder.metrics_file, step)


def _load(cfg: TrainConfig, ui):
    """(ref, model, tokenizer); a hub model that cannot be fetched is one clear error."""
    ref = resolve_model(cfg.model)
    ui.status(f"loading {cfg.model} ({'4-bit' if cfg.load_in_4bit else '16-bit'})")
    try:
        return (ref, *load_model(ref, cfg.max_seq_len, cfg.load_in_4bit))
    except OSError as e:  # huggingface_hub's and transformers' lookup errors are OSErrors
        if ref.is_local:
            raise
        why = hub_problem(cfg.model) or (str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise TrainError(f"cannot load {cfg.model}: {why}; check the hub id (owner/name) or give "
                         f"a local folder with --model") from None


def _execute(cfg: TrainConfig, folder: RunFolder, loaded, checkpoint: Path | None,
             saved_plan: Plan | None, ui, timeline: Timeline, new_run: bool) -> Run:
    from ..core.ui import NullUI
    main = distributed.world().is_main
    ui = ui if ui is not None and main else NullUI()   # with --gpus N, rank 0 alone reports
    with timeline.stage("load"):
        ref, model, tokenizer = _load(cfg, ui)

    with timeline.stage("prepare"):
        guard = ChatGuard(tokenizer, ref.path, think=cfg.think, path=cfg.data)
        data = prepare_data(cfg, guard, tokenizer, loaded)
        ui.guard_report(guard.report, data)
        # Generation must stop where training taught the model to stop.
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        first_mode = saved_plan.gradient_checkpointing if saved_plan else _initial_checkpointing(cfg)
        model = attach_lora(model, cfg, first_mode)
    with timeline.stage("plan"):   # auto-tune (a probe, a remembered plan or an estimate)
        plan = saved_plan or distributed.from_main(   # on rank 0, its plan for every rank
            lambda: plan_batches(cfg, ref.path, model, tokenizer, data, ui, distributed.world().size))
        if plan.gradient_checkpointing != first_mode:
            set_checkpointing(model, plan.gradient_checkpointing)
        trainer, metrics = make_trainer(cfg, plan, model, tokenizer, data, folder)

    # GuardReport's own serialisation, read back into the record's type at once.
    record = RunRecord(config=cfg, plan=plan, variant=guard.variant,
                       guard=GuardRecord.model_validate(guard.report.to_dict()),
                       data=data_info(cfg, data), versions=Versions.installed(), hardware=hardware())
    _write(folder, record)

    with timeline.stage("train"), compiling.applied(plan.compile):
        fit(trainer, metrics, folder, record, checkpoint, ui, new_run)

    if main:   # DDP kept every rank's weights equal: rank 0 saves them
        with timeline.stage("save"):
            save_adapter(model, tokenizer, folder.adapter)
            final = final_metrics(trainer, metrics, folder)
        record = record.model_copy(update=dict(status="done", timings=timeline.timings(),
                                               final=final))
        folder.write(record)
        if folder.train_log.exists():   # beside the libraries' lines (-v: no log is kept)
            with open(folder.train_log, "a", encoding="utf-8") as log:
                log.write(f"fastft: stages: {timings_line(record.timings)}\n")
        plot_run(folder, trainer.state.log_history, ui)  # loss.png, over the whole run
    distributed.finish()
    return Run(folder, record)


def _write(folder: RunFolder, record: RunRecord) -> None:
    """fastft.json, written by rank 0 alone when several processes train."""
    if distributed.world().is_main:
        folder.write(record)


def fit(trainer, metrics, folder: RunFolder, record: RunRecord, checkpoint: Path | None, ui,
        new_run: bool) -> None:
    """trainer.train() with time-based and Ctrl-C checkpoints; the record says how it ended.
    Raises TrainInterrupted when a Ctrl-C stopped it early (after saving a checkpoint)."""
    stop = SaveOnInterrupt()
    trainer.add_callback(SaveEveryMinutes(record.config.save_minutes))
    trainer.add_callback(stop)
    trainer.add_callback(FirstStep(folder if new_run and distributed.world().is_main else None))
    try:
        with ui.training(metrics) as progress, stop.installed():
            trainer.add_callback(progress)
            trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except BaseException as e:  # the record says how the run ended, then the error goes on
        stopped = isinstance(e, (KeyboardInterrupt, SystemExit))
        _write(folder, record.model_copy(update={"status": "interrupted" if stopped else "failed"}))
        if is_out_of_memory(e):
            raise out_of_memory(folder, record, trainer.state.global_step) from None
        raise
    state = trainer.state
    if stop.stopped and state.global_step < state.max_steps:
        _write(folder, record.model_copy(update={"status": "interrupted"}))
        raise TrainInterrupted(folder, state.global_step, folder.last_checkpoint(), stop.signum)


@contextlib.contextmanager
def resumable_on_disk_full(folder: RunFolder):
    """A full disk while saving a checkpoint, the adapter or the record is no bug: the run is
    marked interrupted, the checkpoint cut short is removed (freeing its space), and the one
    line says how to go on."""
    try:
        yield
    except Exception as e:
        if not is_disk_full(e):
            raise
        if distributed.world().is_main:
            shutil.rmtree(folder.checkpoints_dir / STAGING, ignore_errors=True)
            with contextlib.suppress(OSError, RunFolderError):   # the disk may still be full
                folder.write(folder.read().model_copy(update={"status": "interrupted"}))
        then = (f"once space is freed, continue with: fastft train --resume {folder.path}"
                if folder.has_trained() else "free space, then train again")
        raise TrainError(f"no space left on the device of {folder.path} while saving; {then}") from None


def out_of_memory(folder: RunFolder, record: RunRecord, step: int) -> TrainError:
    """One line for a GPU out-of-memory error in training, with what to change. Auto-tune
    measured the longest micro-batch, so this is rare: another process on the GPU, or
    fragmentation late in a run."""
    plan = record.plan
    resume = f"; or fastft train --resume {folder.path}" if folder.last_checkpoint() else ""
    return TrainError(
        f"out of GPU memory at step {step + 1} (micro-batch {plan.batch_size} x {plan.grad_accum}, "
        f"checkpointing {plan.gradient_checkpointing}); try --vram-budget with less than the card "
        f"has, --batch-size {max(1, plan.batch_size // 2)} --grad-accum {plan.grad_accum * 2}, "
        f"--gradient-checkpointing unsloth or a smaller --max-seq-len{resume}")


# -- callbacks ---------------------------------------------------------------------------------

class SaveEveryMinutes(TrainerCallback):
    """A checkpoint every N minutes besides the per-epoch (or --save-steps) ones: an epoch of a
    large dataset can take hours, and a crash would otherwise lose all of it."""

    def __init__(self, minutes: float):
        self.seconds = minutes * 60
        self.last = time.monotonic()

    def on_train_begin(self, args, state, control, **kw):
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kw):
        # With --gpus N every rank saves at the same step, when any rank's clock says so; with
        # --save-minutes 0 (the same on every rank) there is nothing to agree on.
        if self.seconds > 0 and distributed.any_rank(time.monotonic() - self.last >= self.seconds):
            control.should_save = True

    def on_save(self, args, state, control, **kw):
        self.last = time.monotonic()


class SaveOnInterrupt(TrainerCallback):
    """The first Ctrl-C (or SIGTERM, in one process) asks for a checkpoint at the end of the
    current step and a stop, instead of killing the process mid-step with everything since the
    last checkpoint lost; a second signal interrupts at once, as usual. The previous handlers
    are restored afterwards. Under --gpus, SIGTERM keeps the handler fastft.cli gave it: torchrun
    sends it to stop a rank at once when another failed (a user's SIGTERM reaches the ranks as
    SIGINT, from fastft.train.launch)."""

    def __init__(self):
        self.interrupted = False
        self.stopped = False
        self.signum = signal.SIGINT
        self._previous: dict = {}

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be set from the main thread
            return
        ours = STOP_SIGNALS if distributed.world().size == 1 else (signal.SIGINT,)
        self._previous = {s: signal.signal(s, self._handle) for s in ours}
        try:
            yield
        finally:  # None: a handler set outside Python, which cannot be put back; the default then
            for s, previous in self._previous.items():
                signal.signal(s, signal.SIG_DFL if previous is None else previous)

    def _handle(self, signum, frame):
        if self.interrupted:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt
        self.interrupted, self.signum = True, signum

    def on_step_end(self, args, state, control, **kw):
        # torchrun passes Ctrl-C to every rank, each between other steps: they stop together.
        if distributed.any_rank(self.interrupted):
            self.stopped = True   # not `interrupted`: this rank's own first Ctrl-C may come later
            control.should_save = True
            control.should_training_stop = True


class FirstStep(TrainerCallback):
    """Points `runs/latest` at a new run once it has trained a step (not when it is created:
    a run that fails while loading must not become the latest)."""

    def __init__(self, folder: RunFolder | None):
        self.folder = folder

    def on_step_end(self, args, state, control, **kw):
        if self.folder is not None:
            self.folder.point_latest()
            self.folder = None


def _absolute_paths(cfg: TrainConfig) -> dict:
    """Data paths as absolute paths, so a resume works from any directory."""
    return {k: str(Path(v).absolute()) for k in ("data", "eval_file") if (v := getattr(cfg, k))}


# -- data preparation (pure functions, tested directly) ----------------------------------------

def prepare_data(cfg: TrainConfig, guard: ChatGuard, tokenizer,
                 loaded: Inputs | None = None) -> PreparedData:
    """Guard and tokenise the training (and eval) data. Raises DataError/GuardError."""
    train_ds, eval_examples = loaded or load_data(cfg)
    examples, held_out = split_eval(cfg, train_ds.examples)
    eval_examples = eval_examples or held_out

    def tokenise(exs: list[Example], path: str) -> tuple[list[TokenizedExample], int, int]:
        guard.path = path
        done = [e for e in encode_all(guard, exs, cfg.max_seq_len, cfg.train_on_all,
                                      strict=not cfg.skip_invalid) if e is not None]
        out = [e.tokens for e in done if e.trained]   # no trained token left: dropped
        return out, sum(e.truncated for e in done), len(done) - len(out)

    train, t1, d1 = tokenise(examples, cfg.data)
    evals, t2, d2 = tokenise(eval_examples, cfg.eval_file or cfg.data)
    if not train:
        raise TrainError(f"{cfg.data}: no example has a trainable token within --max-seq-len "
                         f"{cfg.max_seq_len}")
    return PreparedData(train, evals, t1 + t2, d1 + d2, train_ds.sha256, len(train_ds.examples))


def data_info(cfg: TrainConfig, data: PreparedData) -> DataInfo:
    return DataInfo(path=cfg.data, sha256=data.sha256, examples=data.examples,
                    train=len(data.train), eval=len(data.eval), truncated=data.truncated,
                    dropped=data.dropped, train_tokens=sum(len(e.input_ids) for e in data.train),
                    trained_tokens=sum(sum(lb != -100 for lb in e.labels) for e in data.train))


# -- model and batches -------------------------------------------------------------------------

def _initial_checkpointing(cfg: TrainConfig) -> str:
    """The checkpointing LoRA is attached with; auto-tune may switch it afterwards."""
    return DEFAULT_MODE if cfg.gradient_checkpointing == "auto" else cfg.gradient_checkpointing


def attach_lora(model, cfg: TrainConfig, checkpointing: str):
    check_target_modules(model, cfg)
    unsloth = import_unsloth()
    return unsloth.FastLanguageModel.get_peft_model(
        model, r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), bias="none",
        use_gradient_checkpointing=UNSLOTH_GC[checkpointing],
        random_state=cfg.seed, use_rslora=cfg.rslora, use_dora=cfg.dora)


def check_target_modules(model, cfg: TrainConfig) -> None:
    """Each --target-modules name is a module of the model: peft fails with a traceback when
    none is, and silently skips the ones that are not."""
    import torch
    leaves = {name.rsplit(".", 1)[-1]: m for name, m in model.named_modules()}
    unknown = [t for t in cfg.target_modules if t not in leaves]
    if unknown:
        linear = sorted(n for n, m in leaves.items() if isinstance(m, torch.nn.Linear) and n != "lm_head")
        raise TrainError(f"--target-modules {','.join(unknown)}: no such module in {cfg.model}; "
                         f"its linear modules are {','.join(linear)}")


def plan_batches(cfg: TrainConfig, model_path: str, model, tokenizer, data: PreparedData, ui,
                 world_size: int = 1) -> Plan:
    """Micro-batch, padding and checkpointing: measured by auto-tune on a GPU, else as configured.
    With `world_size` GPUs, each GPU's share of the effective batch (fastft.train.launch)."""
    import torch

    from .batching import grouped_batches, pad_waste, random_batches
    from .launch import per_device_batch
    on_gpu = torch.cuda.is_available()
    batch_size, grad_accum = per_device_batch(cfg.batch_size, cfg.grad_accum, world_size)
    cfg = cfg.model_copy(update=dict(batch_size=batch_size, grad_accum=grad_accum))  # auto-tune's
    checkpointing, tuning, origin = _initial_checkpointing(cfg), None, None
    optim = choose_optimizer(cfg.optim, model, cfg.vram_budget) if on_gpu else cpu_optimizer(cfg.optim, ui)
    # Without a measurement, padded (grouped) batches: on an H100 they beat padding-free 1.6x.
    padding_free = {"free": True, "padded": False}.get(cfg.padding, False if on_gpu else None)
    if cfg.packing:
        padding_free = None  # TRL's packing decides its own collation
    elif on_gpu and cfg.auto_batch:
        # Probed, remembered or estimated (a short run): fastft.train.autobatch.tune says which.
        tuned, origin = tune(model, tokenizer, data.train, cfg, model_path, ui,
                             cfg.gradient_checkpointing, optim, world_size)
        batch_size, grad_accum = tuned.batch_size, tuned.grad_accum
        padding_free, checkpointing, tuning = tuned.padding_free, tuned.checkpointing, tuned
    lengths = [len(e.input_ids) for e in data.train]
    group = cfg.group_by_length and not cfg.packing
    waste = PadWaste(random=pad_waste(lengths, random_batches(len(lengths), batch_size, cfg.seed)),
                     grouped=pad_waste(lengths, grouped_batches(lengths, batch_size, cfg.seed)))
    if not padding_free and not cfg.packing:
        ui.status(f"batches: padded, {'length-grouped' if group else 'random'}; padding is "
                  f"{waste.grouped if group else waste.random:.0%} of computed tokens "
                  f"(random batches: {waste.random:.0%})")
    choice = compiling.decide(cfg.compile, on_gpu, None if cfg.packing else padding_free,
                              _estimate(cfg, origin, model, lengths, batch_size, grad_accum,
                                        padding_free, checkpointing, world_size) if on_gpu else None,
                              probed=origin is not None and origin.how == "probed")
    if choice.why:
        ui.status(choice.why)
    return Plan(model_path=model_path, batch_size=batch_size, grad_accum=grad_accum,
                padding_free=padding_free, gradient_checkpointing=checkpointing,
                optim=optim, group_by_length=group, pad_waste=waste, tuning=tuning,
                tuning_origin=origin,
                world_size=world_size,
                launcher=distributed.launcher_name() if world_size > 1 else None,
                compile=choice.on)


def _estimate(cfg: TrainConfig, origin, model, lengths, batch_size, grad_accum, padding_free,
              checkpointing, world_size) -> float | None:
    """The estimated training time at this plan: auto-tune's, or (--no-auto-batch) the same
    throughput model's. Only --compile auto needs it."""
    if cfg.compile != "auto" or padding_free is not False:
        return None
    if origin is not None:
        return origin.estimate_s
    from .autobatch import ModelShape, estimate_train_s, on_reference_card
    return estimate_train_s(lengths, batch_size, grad_accum, False, checkpointing, cfg.epochs,
                            cfg.max_steps, ModelShape.of(model.config), on_reference_card(),
                            world_size, cfg.seed)


# -- the trainer -------------------------------------------------------------------------------

def make_trainer(cfg: TrainConfig, plan: Plan, model, tokenizer, data: PreparedData, folder: RunFolder):
    from datasets import Dataset as HFDataset
    from transformers.trainer_callback import PrinterCallback

    from .metrics import StepMetrics

    def to_hf(rows: list[TokenizedExample]):
        return HFDataset.from_dict({"input_ids": [r.input_ids for r in rows],
                                    "labels": [r.labels for r in rows]})

    trainer = _trainer_class()(model=model, processing_class=tokenizer,
                               args=sft_config(cfg, plan, folder, has_eval=bool(data.eval)),
                               train_dataset=to_hf(data.train),
                               eval_dataset=to_hf(data.eval) if data.eval else None)
    if plan.group_by_length:
        # Lengths as the trainer will batch them (after any filtering of its own).
        trainer.fastft_lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    trainer.remove_callback(PrinterCallback)  # rich progress replaces its raw log dicts
    main = distributed.world().is_main
    if cfg.tensorboard and main:
        log_tensorboard_to(trainer, folder.tensorboard_dir)
    metrics = StepMetrics(folder.metrics_file if main else None)   # rank 0 keeps the records
    trainer.add_callback(metrics)
    return trainer, metrics


def sft_config(cfg: TrainConfig, plan: Plan, folder: RunFolder, has_eval: bool):
    import torch
    from trl import SFTConfig

    from .batching import PAD_MULTIPLE
    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    per_epoch = cfg.save_steps is None
    return SFTConfig(
        output_dir=str(folder.checkpoints_dir),
        per_device_train_batch_size=plan.batch_size, per_device_eval_batch_size=plan.batch_size,
        gradient_accumulation_steps=plan.grad_accum,
        learning_rate=cfg.lr, lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,   # transformers 5: a float < 1 is a ratio of total steps
        num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        optim=plan.optim, weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        bf16=bf16, fp16=on_gpu and not bf16, seed=cfg.seed, data_seed=cfg.seed,
        # Explicit, or TRL's default (True) turns checkpointing back on after auto-tune chose off.
        gradient_checkpointing=plan.gradient_checkpointing != "false",
        logging_steps=cfg.logging_steps or (10 if on_gpu else 1),
        # Its check reads every step's loss off the GPU; a NaN loss is logged as NaN instead.
        logging_nan_inf_filter=False,
        include_num_input_tokens_seen="non_padding",  # read by StepMetrics
        eval_strategy=("epoch" if per_epoch else "steps") if has_eval else "no",
        eval_steps=cfg.save_steps if has_eval and not per_epoch else None,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        save_total_limit=cfg.save_total_limit,
        save_strategy="epoch" if per_epoch else "steps", save_steps=cfg.save_steps,
        max_length=cfg.max_seq_len, packing=cfg.packing, padding_free=plan.padding_free,
        # Padded batches meet few shapes, so Unsloth's compiled blocks recompile rarely.
        pad_to_multiple_of=PAD_MULTIPLE if plan.padding_free is False else None,
        dataset_num_proc=1, report_to="tensorboard" if cfg.tensorboard else "none",
        disable_tqdm=True,
        # --gpus N (DDP): every LoRA weight takes part in every step, so DDP need not search the
        # graph for unused ones each step; a rank that stops answering fails the run in time.
        # The buffers (rotary tables) never change, so DDP need not broadcast them every forward.
        ddp_find_unused_parameters=False, ddp_broadcast_buffers=False,
        ddp_timeout=distributed.timeout_s(),
    )


def _trainer_class():
    """TRL's SFTTrainer (as patched by Unsloth), drawing length-grouped micro-batches when the
    plan says so: similar lengths share a padded micro-batch, batches shuffled, each example
    once per epoch (fastft.train.batching)."""
    from trl import SFTTrainer

    from .batching import LengthGroupedSampler

    class FastftTrainer(StagedCheckpoints, SFTTrainer):
        fastft_lengths: list[int] | None = None

        def _get_train_sampler(self, *args, **kwargs):
            if self.fastft_lengths is None:
                return super()._get_train_sampler(*args, **kwargs)
            return LengthGroupedSampler(self.fastft_lengths, self.args.per_device_train_batch_size,
                                        self.args.seed, per_step=self.args.gradient_accumulation_steps
                                        * self.args.world_size)

        _tokens = None   # non-padding tokens since the last log, summed on the device

        def _track_num_input_tokens(self, inputs):
            # transformers reads each micro-batch's count off the GPU (with --gpus N after
            # gathering it from every GPU), a wait every step (see fastft.train.metrics); the sum
            # stays on the device until the next log or save.
            ids, mask = inputs["input_ids"], inputs.get("attention_mask")
            pad = getattr(self.processing_class, "pad_token_id", None)
            n = mask.sum() if mask is not None else (ids != pad).sum() if pad is not None else ids.numel()
            self._tokens = n if self._tokens is None else self._tokens + n

        def _maybe_log_save_evaluate(self, *args, **kwargs):
            if self.control.should_save or self.control.should_evaluate:
                self.control.should_log = True   # metrics.jsonl then ends at each checkpoint
            if self._tokens is not None and self.control.should_log:
                # Every rank logs at the same steps: the run's tokens, summed over the GPUs.
                tokens = self.accelerator.reduce(self._tokens) if self.args.world_size > 1 else self._tokens
                self.state.num_input_tokens_seen += int(tokens)
                self._tokens = None
            return super()._maybe_log_save_evaluate(*args, **kwargs)

        def create_scheduler(self, num_training_steps, optimizer=None):
            # Two schedules need an argument transformers has no default for; the decay
            # length is in steps, known only here.
            self.args.lr_scheduler_kwargs = scheduler_kwargs(self.args.lr_scheduler_type,
                                                             num_training_steps)
            return super().create_scheduler(num_training_steps, optimizer)

        def create_model_card(self, *args, **kwargs):
            # TRL writes a hub model card into checkpoints/ at every save, about a base model
            # it cannot name ("a fine-tuned version of [None](https://huggingface.co/None)");
            # a run folder describes itself (fastft.json).
            return None

        def _load_optimizer_and_scheduler(self, checkpoint):
            with _optimizer_state_to_cpu(self.args.world_size > 1 and self.args.device.type == "cpu"):
                return super()._load_optimizer_and_scheduler(checkpoint)

    return FastftTrainer


def scheduler_kwargs(scheduler, steps: int) -> dict:
    """cosine_with_min_lr ends at 10% of --lr; warmup_stable_decay decays over the last 10% of
    the steps (as in its paper); the other schedules need nothing more."""
    name = getattr(scheduler, "value", scheduler)
    if name == "cosine_with_min_lr":
        return {"min_lr_rate": 0.1}
    if name == "warmup_stable_decay":
        return {"num_decay_steps": max(1, steps // 10)}
    return {}


STAGING = ".tmp"   # inside checkpoints/; a resume removes what a killed save left there


class StagedCheckpoints:
    """Trainer mixin: a checkpoint is written into checkpoints/.tmp/ and renamed once whole,
    so a kill while saving leaves nothing partial under a checkpoint-N name."""
    _staging: str | None = None

    def _get_output_dir(self, trial):
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial):
        final_root = super()._get_output_dir(trial)
        self._staging = os.path.join(final_root, STAGING)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        _publish_checkpoint(self, final_root)


def _publish_checkpoint(trainer, final_root: str) -> None:
    """Move the checkpoint just saved from checkpoints/.tmp/ to its final name, with the best
    checkpoint's path in its trainer state pointing at the final name, then keep the newest
    `save_total_limit` (and the best), as the Trainer would have in checkpoints/."""
    from transformers.trainer_utils import rotate_checkpoints
    name = f"checkpoint-{trainer.state.global_step}"
    staged, final = os.path.join(final_root, STAGING, name), os.path.join(final_root, name)
    if trainer.state.best_model_checkpoint == staged:
        trainer.state.best_model_checkpoint = final
        if trainer.args.should_save:
            trainer.state.save_to_json(os.path.join(staged, "trainer_state.json"))
    trainer.accelerator.wait_for_everyone()   # every rank has written its files (rng_state_<rank>)
    if trainer.args.should_save:
        # PEFT's generic model card ("More Information Needed"), written by its save_pretrained.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(staged, "README.md"))
        if os.path.isdir(final):   # saved before, and trained again after a resume
            shutil.rmtree(final)
        os.replace(staged, final)
        with contextlib.suppress(OSError):
            os.rmdir(os.path.dirname(staged))
        rotate_checkpoints(output_dir=final_root, save_total_limit=trainer.args.save_total_limit,
                           best_model_checkpoint=trainer.state.best_model_checkpoint, use_mtime=False)
    trainer.accelerator.wait_for_everyone()


def _optimizer_state_to_cpu(needed: bool):
    """Several processes on the CPU (FASTFT_DDP_ON_CPU, the tests): transformers loads a resumed
    optimizer state onto args.device, there "cpu:<rank>", which torch.load cannot restore to.
    torch.load is patched only then, and only for the load of that state (mock restores it)."""
    if not needed:
        return contextlib.nullcontext()
    from unittest import mock

    import torch
    load = torch.load
    return mock.patch.object(torch, "load", lambda *a, map_location=None, **k: load(*a, map_location="cpu", **k))


# -- results -----------------------------------------------------------------------------------

def final_metrics(trainer, metrics, folder: RunFolder) -> Final:
    """train_loss is the mean step loss over the whole run as metrics.jsonl records it, across
    resumes: the Trainer's own training_loss covers only the steps of its own process."""
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    extra = dict(eval_loss=evals[-1], best_eval_loss=min(evals), eval_losses=evals,
                 best_checkpoint=trainer.state.best_model_checkpoint) if evals else {}
    return Final(**metrics.summary().model_dump(), global_step=trainer.state.global_step,
                 train_loss=mean_loss(folder.metrics_file), **extra)


def save_adapter(model, tokenizer, adapter: Path) -> None:
    """Adapter + tokenizer (with the guarded chat template), swapped in atomically."""
    if adapter.exists():
        shutil.rmtree(adapter)
    with building(adapter) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def hardware() -> Hardware:
    import torch
    hw = Hardware(platform=platform.platform(), python=platform.python_version(), cpus=os.cpu_count())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        hw = hw.model_copy(update=dict(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1),
                                       gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda))
    return hw
