"""Rich console output for the stages; `NullUI` keeps library calls (and tests) silent."""

from __future__ import annotations

from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from transformers import TrainerCallback

from .timeline import timings_line


class NullUI:
    def status(self, text: str) -> None:
        pass

    def guard_report(self, report, data) -> None:
        pass

    @contextmanager
    def training(self, metrics):
        yield TrainerCallback()


class _ProgressCallback(TrainerCallback):
    def __init__(self, progress: Progress, metrics):
        self.progress, self.metrics, self.task = progress, metrics, None

    def on_train_begin(self, args, state, control, **kw):
        self.task = self.progress.add_task("training", total=state.max_steps,
                                           completed=state.global_step, info="")

    def on_step_end(self, args, state, control, **kw):
        if self.task is not None:  # the bar moves every step; the numbers at each log
            self.progress.update(self.task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kw):
        if self.task is None or not logs:
            return
        info = []
        if "loss" in logs and self.metrics.records:
            r = self.metrics.records[-1]
            info.append(f"loss {r.loss:.4f}  {r.tokens_per_s:,.0f} tok/s")
            if r.mem_alloc_gib is not None:
                info.append(f"{r.mem_alloc_gib:.1f} GiB")
        if "eval_loss" in logs:
            info.append(f"eval {logs['eval_loss']:.4f}")
        self.progress.update(self.task, completed=state.global_step,
                             info="  ".join(info) or self.progress.tasks[self.task].fields["info"])


class TrainUI(NullUI):
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)

    def status(self, text: str) -> None:
        self.console.print(f"[bold cyan]•[/] {text}")

    def guard_report(self, report, data) -> None:
        t = Table(title="Chat-template guard and data", show_header=False, title_justify="left")
        for entry in report.entries():   # fastft.data.template.GuardEntry
            t.add_row(entry.what, entry.detail)
        t.add_row("examples", f"{data.examples} ({len(data.train)} train, {len(data.eval)} eval)")
        if data.truncated:
            t.add_row("truncated", f"[yellow]{data.truncated} examples cut at max_seq_len[/]")
        if data.dropped:
            t.add_row("dropped", f"[yellow]{data.dropped} with no assistant token left[/]")
        if report.issues:
            t.add_row("skipped", f"[yellow]{len(report.issues)} examples failed the guard[/]")
        self.console.print(t)

    @contextmanager
    def training(self, metrics):
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} steps"),
                            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                            TextColumn("{task.fields[info]}"), console=self.console,
                            # Library prints stay in train.log (fastft.core.quiet), not on the bar.
                            redirect_stdout=False, redirect_stderr=False)
        with progress:
            yield _ProgressCallback(progress, metrics)


def run_summary(folder, record) -> dict:
    """The essentials of a finished run (`fastft train --json`); fastft.json has everything."""
    return {"run": folder.name, "path": str(folder.path), "status": record.status,
            "adapter": str(folder.adapter), "record": str(folder.record_file),
            "train_log": str(folder.train_log), "model": record.config.model,
            "data": record.data.model_dump(include={"path", "examples", "train", "eval",
                                                   "truncated", "dropped", "trained_tokens"}),
            "plan": record.plan.model_dump(include={"batch_size", "grad_accum", "padding_free",
                                                   "gradient_checkpointing", "optim", "world_size"}),
            "final": record.final.model_dump() if record.final else None,
            "timings": record.timings}


def print_run_summary(folder, record, console: Console,
                      next_step: str | None = "fastft export --gguf q4_k_m") -> None:
    """The run's table; `next_step` is the command to run next (None: the caller runs it)."""
    final, cfg, plan = record.final, record.config, record.plan
    t = Table(title=f"Run {folder.name}", show_header=False, title_justify="left")
    t.add_row("run folder", str(folder.path))
    t.add_row("model", f"{cfg.model} ({'4-bit' if cfg.load_in_4bit else '16-bit'})")
    gpus = f" x {plan.world_size} GPUs" if plan.world_size > 1 else ""
    t.add_row("batch", f"{plan.batch_size} x {plan.grad_accum} accumulation{gpus}, "
                       f"{'padding-free' if plan.padding_free else 'padded'}, "
                       f"checkpointing {plan.gradient_checkpointing}")
    t.add_row("steps", str(final.global_step))
    if final.last_loss is not None:
        t.add_row("loss (last step)", f"{final.last_loss:.4f}")
    if final.eval_loss is not None:
        t.add_row("eval loss (last / best)", f"{final.eval_loss:.4f} / {final.best_eval_loss:.4f}")
    if final.tokens_per_s:
        t.add_row("tokens/s", f"{final.tokens_per_s:,.0f}")
    if final.peak_mem_alloc_gib is not None:
        t.add_row("peak GPU memory", f"{final.peak_mem_alloc_gib:.2f} GiB allocated, "
                                     f"{final.peak_mem_reserved_gib:.2f} GiB reserved")
    t.add_row("time", timings_line(record.timings))
    if next_step:
        t.add_row("next", next_step)
    console.print(t)
