"""Training curves: `loss.png` in every run folder, and the run's TensorBoard log (--tensorboard).

`loss.png` is drawn at the end of training (and of a resume, over the whole run) from
`metrics.jsonl` and the Trainer's eval losses: train and eval loss over the optimizer steps, and
the learning rate below on the same steps. It uses matplotlib's Agg canvas directly (no pyplot,
no display, no global backend switch) and is written under a temporary name, then renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.markup import escape

from .metrics import read_records
from ..core.run import RunFolder

TRAIN_COLOR = "#1f77b4"
EVAL_COLOR = "#d62728"
LR_COLOR = "#2ca02c"
SMOOTH_FROM = 50          # steps: from here on, a moving average is drawn over the raw loss


def log_tensorboard_to(trainer, log_dir: Path) -> None:
    """transformers 5 has no TrainingArguments.logging_dir: its TensorBoard callback writes to
    $TENSORBOARD_LOGGING_DIR or under output_dir (checkpoints/). Point it at the run folder."""
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback":
            callback.logging_dir = str(log_dir)


def eval_points(log_history: list[dict]) -> list[tuple[int, float]]:
    """(step, eval loss) of each evaluation in the Trainer's log history (restored on resume)."""
    return [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]


def plot_run(folder: RunFolder, log_history: list[dict], ui) -> Path | None:
    """`loss.png` of a finished run; a plot that fails costs a warning, never the run."""
    try:
        return write_loss_plot(folder.metrics_file, folder.loss_png, eval_points(log_history),
                               title=folder.name)
    except Exception as e:  # matplotlib, fonts, a full disk: the trained adapter matters more
        ui.status(f"[yellow]warning:[/] loss.png not written: {escape(f'{type(e).__name__}: {e}')}")
        return None


def write_loss_plot(metrics_file: Path, out: Path, evals: list[tuple[int, float]] = (),
                    title: str = "") -> Path:
    """Train loss (and `evals`) above, learning rate below, against the optimizer step."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = [r for r in read_records(metrics_file) if r.get("loss") is not None]
    if not records:
        raise ValueError(f"{metrics_file}: no step with a loss")
    fig = Figure(figsize=(8, 6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    _draw_losses(loss_ax, [r["step"] for r in records], [r["loss"] for r in records], list(evals))
    lr = [(r["step"], r["lr"]) for r in records if r.get("lr") is not None]
    if lr:
        lr_ax.plot(*zip(*lr), color=LR_COLOR, linewidth=1.5)
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    lr_ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _draw_losses(ax, steps: list[int], losses: list[float], evals: list[tuple[int, float]]) -> None:
    few = len(steps) < SMOOTH_FROM
    ax.plot(steps, losses, color=TRAIN_COLOR, linewidth=1.5 if few else 0.8,
            alpha=1.0 if few else 0.35, marker="o" if len(steps) <= 20 else None, markersize=3,
            label="train loss")
    if not few:
        window = max(2, len(steps) // 25)
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(steps, smooth, color=TRAIN_COLOR, linewidth=2, label=f"train loss ({window}-step mean)")
    if evals:
        ax.plot(*zip(*evals), color=EVAL_COLOR, linewidth=2, marker="o", markersize=5,
                label="eval loss")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
