"""`fastft train`: QLoRA SFT through Unsloth and TRL, into a self-describing run folder.

The stages, in order: read and validate the data, load the model, apply the chat-template
guard, tokenise with an assistant-only label mask, attach LoRA, train, save the adapter.
"""

from __future__ import annotations

import contextlib
import sys

# Unsloth patches transformers, peft and trl when imported; imported after them, its fast paths
# are silently skipped. This module is only imported to train, so pay for it here (its banner
# goes to stderr, keeping stdout clean for piped output).
with contextlib.redirect_stdout(sys.stderr):
    import unsloth  # noqa: F401  isort: skip

import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from .cache import sha256_file
from .config import TrainConfig, TrainError
from .data import Dataset, Example, load_conversations
from .models import load_model, resolve_model
from .template import ChatGuard, GuardError, TokenizedExample, tokenize_rendered

@dataclass
class PreparedData:
    train: list[TokenizedExample]
    eval: list[TokenizedExample]
    truncated: int
    dropped: int                # no trainable token left after truncation
    sha256: str
    examples: int


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    summary: dict = field(default_factory=dict)


DERIVED_KEYS = ("model_path", "padding_free")


# -- data preparation (pure functions, tested directly) ----------------------------------------

def load_data(cfg: TrainConfig) -> tuple[Dataset, list[Example]]:
    """(training dataset, eval examples from --eval-file). Raises DataError on bad input."""
    train_ds = load_conversations(cfg.data, skip_invalid=cfg.skip_invalid)
    eval_examples: list[Example] = []
    if cfg.eval_file:
        eval_examples = load_conversations(cfg.eval_file, skip_invalid=cfg.skip_invalid).examples
    return train_ds, eval_examples


def prepare_data(cfg: TrainConfig, guard: ChatGuard, tokenizer,
                 loaded: tuple[Dataset, list[Example]] | None = None) -> PreparedData:
    """Guard and tokenise the training (and eval) data. Raises DataError/GuardError."""
    train_ds, eval_examples = loaded or load_data(cfg)
    examples = train_ds.examples
    if not cfg.eval_file and cfg.eval_split > 0:
        shuffled = examples[:]
        random.Random(cfg.seed).shuffle(shuffled)
        n_eval = max(1, round(len(shuffled) * cfg.eval_split))
        if n_eval >= len(shuffled):
            raise TrainError(f"--eval-split {cfg.eval_split} leaves no training examples")
        eval_examples, examples = shuffled[:n_eval], shuffled[n_eval:]

    def tokenise(exs: list[Example], path: str) -> tuple[list[TokenizedExample], int, int]:
        guard.path = path
        before = len(guard.report.issues)
        rendered = guard.render_all(exs)
        if len(guard.report.issues) > before and not cfg.skip_invalid:
            raise GuardError("\n".join(str(i) for i in guard.report.issues[before:]))
        out, truncated, dropped = [], 0, 0
        for r in rendered:
            tok, was_cut = tokenize_rendered(r, tokenizer, cfg.max_seq_len, cfg.train_on_all)
            truncated += was_cut
            if all(l == -100 for l in tok.labels):
                dropped += 1
                continue
            out.append(tok)
        return out, truncated, dropped

    train, t1, d1 = tokenise(examples, cfg.data)
    evals, t2, d2 = tokenise(eval_examples, cfg.eval_file or cfg.data)
    if not train:
        raise TrainError(f"{cfg.data}: no example has a trainable token within --max-seq-len "
                         f"{cfg.max_seq_len}")
    return PreparedData(train, evals, t1 + t2, d1 + d2, sha256_file(cfg.data), len(train_ds.examples))


# -- run folder --------------------------------------------------------------------------------

def new_run_dir(cfg: TrainConfig) -> Path:
    name = cfg.name or f"{Path(cfg.data).stem}-{datetime.now():%Y%m%d-%H%M%S}"
    run = Path(cfg.runs_dir) / name
    if run.exists() and any(run.iterdir()):
        raise TrainError(f"run folder {run} already exists; pick another --name or --resume it")
    run.mkdir(parents=True, exist_ok=True)
    return run


def point_latest(run: Path) -> None:
    """`runs/latest` -> the newest run, swapped atomically (symlink to a temp name, then rename)."""
    latest = run.parent / "latest"
    tmp = run.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.name)
    os.replace(tmp, latest)


def resolve_run(path: str | os.PathLike) -> Path:
    run = Path(path)
    if not (run / "fastft.json").exists():
        raise TrainError(f"{run}: not a fastft run folder (no fastft.json)")
    return run.resolve()


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def last_checkpoint(run: Path) -> Path | None:
    cks = sorted((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return cks[-1] if cks else None


def environment() -> tuple[dict, dict]:
    import importlib.metadata as md

    import torch
    versions = {}
    for pkg in ("fastft", "unsloth", "unsloth_zoo", "torch", "transformers", "trl", "peft",
                "datasets", "bitsandbytes", "accelerate"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    hw = {"platform": platform.platform(), "python": platform.python_version(),
          "cpus": os.cpu_count(), "gpu": None}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        hw.update(gpu=p.name, gpu_mem_gib=round(p.total_memory / 2**30, 1),
                  gpu_count=torch.cuda.device_count(), cuda=torch.version.cuda)
    return versions, hw


# -- training ----------------------------------------------------------------------------------

def train(cfg: TrainConfig, resume: str | None = None, ui=None) -> RunResult:
    """Run one training job. `ui` (fastft.ui.TrainUI or None) receives progress and reports."""
    import torch

    from .ui import NullUI
    ui = ui or NullUI()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    if resume:
        run = resolve_run(resume)
        saved = json.loads((run / "fastft.json").read_text())
        # fastft.json's config also records what was derived from it; the run re-derives those.
        saved_cfg = {k: v for k, v in saved["config"].items() if k not in DERIVED_KEYS}
        cfg = TrainConfig.from_dict(saved_cfg | {"runs_dir": str(run.parent), "name": run.name})
        checkpoint = last_checkpoint(run)
        if checkpoint is None:
            raise TrainError(f"{run}: no checkpoint to resume from")
    else:
        run, checkpoint = None, None
    # Read and validate the data before the (slow) model load, so bad input fails in a second.
    loaded = load_data(cfg)
    if run is None:
        run = new_run_dir(cfg)

    ref = resolve_model(cfg.model)
    ui.status(f"loading {cfg.model} ({'4-bit' if cfg.load_in_4bit else '16-bit'})")
    model, tokenizer = load_model(ref, cfg.max_seq_len, cfg.load_in_4bit)
    timings["load_s"] = time.perf_counter() - t0

    guard = ChatGuard(tokenizer, ref.path, think=cfg.think, path=cfg.data)
    data = prepare_data(cfg, guard, tokenizer, loaded)
    ui.guard_report(guard.report, data)
    # Generation must stop where training taught the model to stop.
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    from unsloth import FastLanguageModel
    model = FastLanguageModel.get_peft_model(
        model, r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules), bias="none",
        use_gradient_checkpointing={"true": True, "false": False}.get(
            cfg.gradient_checkpointing, cfg.gradient_checkpointing),
        random_state=cfg.seed,
        use_rslora=cfg.rslora, use_dora=cfg.dora,
    )

    batch_size, grad_accum = cfg.batch_size, cfg.grad_accum
    if cfg.auto_batch and torch.cuda.is_available() and checkpoint is None:
        from .autobatch import choose_micro_batch
        choice = choose_micro_batch(model, tokenizer, data.train, cfg, ui=ui)
        batch_size, grad_accum = choice.batch_size, choice.grad_accum
        ui.status(choice.describe())

    padding_free = resolve_padding(cfg, [len(e.input_ids) for e in data.train], batch_size, ui)
    trainer, metrics = _make_trainer(cfg, model, tokenizer, data, run, batch_size, grad_accum,
                                     padding_free)
    meta = {
        "config": asdict(cfg) | {"model_path": ref.path, "batch_size": batch_size,
                                 "grad_accum": grad_accum, "padding_free": padding_free},
        "variant": guard.variant,
        "guard": asdict(guard.report) | {"issues": [str(i) for i in guard.report.issues]},
        "data": {"path": str(cfg.data), "sha256": data.sha256, "examples": data.examples,
                 "train": len(data.train), "eval": len(data.eval), "truncated": data.truncated,
                 "dropped": data.dropped,
                 "train_tokens": sum(len(e.input_ids) for e in data.train),
                 "trained_tokens": sum(sum(l != -100 for l in e.labels) for e in data.train)},
    }
    versions, hw = environment()
    meta.update(versions=versions, hardware=hw, status="training")
    write_json_atomic(run / "fastft.json", meta)
    if not resume:
        point_latest(run)

    t1 = time.perf_counter()
    with ui.training(metrics) as progress:
        trainer.add_callback(progress)
        out = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    timings["train_s"] = time.perf_counter() - t1

    adapter = run / "adapter"
    _save_adapter(model, tokenizer, adapter)
    steps = trainer.state.global_step
    final = metrics.summary() | {"global_step": steps, "train_loss": out.training_loss}
    evals = [h["eval_loss"] for h in trainer.state.log_history if "eval_loss" in h]
    if evals:
        final.update(eval_loss=evals[-1], best_eval_loss=min(evals), eval_losses=evals,
                     best_checkpoint=trainer.state.best_model_checkpoint)
    timings["total_s"] = time.perf_counter() - t0
    meta.update(status="done", timings=timings, final=final)
    write_json_atomic(run / "fastft.json", meta)
    return RunResult(run, adapter, meta)


def resolve_padding(cfg: TrainConfig, lengths: list[int], batch_size: int, ui) -> bool | None:
    """True: padding-free; False: padded; None: leave it to Unsloth (CPU, or packing)."""
    import torch

    from .autobatch import choose_padding_free
    if cfg.packing or cfg.padding == "auto" and not torch.cuda.is_available():
        return None
    if cfg.padding != "auto":
        return cfg.padding == "free"
    free, waste = choose_padding_free(lengths, batch_size, cfg.seed)
    ui.status(f"batches: {'padding-free' if free else 'padded'} "
              f"(padding would waste {waste:.0%} of tokens at micro-batch {batch_size})")
    return free


def _make_trainer(cfg, model, tokenizer, data: PreparedData, run: Path, batch_size, grad_accum,
                  padding_free: bool | None):
    import torch
    from datasets import Dataset as HFDataset
    from trl import SFTConfig, SFTTrainer

    from transformers.trainer_callback import PrinterCallback

    from .metrics import StepMetrics

    def to_hf(rows: list[TokenizedExample]):
        return HFDataset.from_dict({"input_ids": [r.input_ids for r in rows],
                                    "labels": [r.labels for r in rows]})

    on_gpu = torch.cuda.is_available()
    bf16 = on_gpu and torch.cuda.is_bf16_supported()
    has_eval = bool(data.eval)
    save = dict(save_strategy="epoch") if cfg.save_steps is None else dict(
        save_strategy="steps", save_steps=cfg.save_steps)
    args = SFTConfig(
        output_dir=str(run / "checkpoints"),
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        gradient_accumulation_steps=grad_accum,
        learning_rate=cfg.lr,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,   # transformers 5: a float < 1 is a ratio of total steps
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        # bitsandbytes' 8-bit AdamW needs CUDA; CPU runs (CI, demo) use plain AdamW.
        optim=cfg.optim if on_gpu else "adamw_torch",
        weight_decay=cfg.weight_decay,
        bf16=bf16,
        fp16=on_gpu and not bf16,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=1,
        include_num_input_tokens_seen="non_padding",  # read by StepMetrics
        eval_strategy=("epoch" if cfg.save_steps is None else "steps") if has_eval else "no",
        eval_steps=cfg.save_steps if has_eval and cfg.save_steps else None,
        load_best_model_at_end=has_eval,
        metric_for_best_model="eval_loss" if has_eval else None,
        save_total_limit=2,       # with eval: the best and the last; without: the last two
        **save,
        max_length=cfg.max_seq_len,
        packing=cfg.packing,
        padding_free=padding_free,
        dataset_num_proc=1,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = SFTTrainer(model=model, processing_class=tokenizer, args=args,
                         train_dataset=to_hf(data.train),
                         eval_dataset=to_hf(data.eval) if has_eval else None)
    trainer.remove_callback(PrinterCallback)  # rich progress replaces its raw log dicts
    metrics = StepMetrics(run / "metrics.jsonl")
    trainer.add_callback(metrics)
    return trainer, metrics


def _save_adapter(model, tokenizer, adapter: Path) -> None:
    """Adapter + tokenizer (with the guarded chat template), swapped in atomically."""
    from .cache import building
    import shutil
    if adapter.exists():
        shutil.rmtree(adapter)
    with building(adapter) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
