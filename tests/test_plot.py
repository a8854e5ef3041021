"""loss.png in the run folder (fastft.train.plot) and --tensorboard's wiring."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_rgb
from matplotlib.image import imread

from conftest import EXAMPLE, mark_killed
from fastft.train import plot
from fastft.core.config import TrainConfig
from fastft.core.errors import TrainError
from fastft.core.run import RunFolder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def color_pixels(image: np.ndarray, color: str, rows: slice = slice(None)) -> int:
    """How many pixels in `rows` have (about) this color."""
    rgb = image[rows, :, :3]
    return int((np.abs(rgb - np.array(to_rgb(color))).max(axis=-1) < 0.03).sum())


def assert_shows_curves(png, evals: bool) -> np.ndarray:
    """A real, non-blank PNG with the train-loss curve above and the learning rate below."""
    data = png.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 15_000
    image = imread(png)
    h = image.shape[0]
    assert image.shape[1] >= 600 and h >= 400 and image[..., :3].var() > 0.001
    top, bottom = slice(0, h * 2 // 3), slice(h * 2 // 3, h)
    # A curve across the plot, not only the legend's short sample of its color.
    assert color_pixels(image, plot.TRAIN_COLOR, top) > 400
    assert color_pixels(image, plot.LR_COLOR, bottom) > 400
    assert (color_pixels(image, plot.EVAL_COLOR, top) > 150) is evals
    return image


def write_metrics(path, steps: int) -> None:
    lines = [json.dumps({"step": s, "loss": 3 * math.exp(-s / 15) + 0.1 * (s % 3), "lr": 2e-4 * (1 - s / steps),
                         "grad_norm": 1.0, "tokens": 100, "seconds": 0.1, "tokens_per_s": 1000.0,
                         "mem_alloc_gib": None, "mem_reserved_gib": None}) for s in range(1, steps + 1)]
    path.write_text("\n".join(lines) + '\n{"step": 61, "lo', encoding="utf-8")  # cut short by a kill


def test_plot_of_a_synthetic_run(tmp_path):
    folder = RunFolder(tmp_path)
    write_metrics(folder.metrics_file, 60)
    history = [{"step": 20, "eval_loss": 1.5}, {"loss": 1.0, "step": 21}, {"step": 40, "eval_loss": 0.9},
               {"step": 60, "eval_loss": 0.7}]
    assert plot.eval_points(history) == [(20, 1.5), (40, 0.9), (60, 0.7)]
    assert plot.plot_run(folder, history, ui=None) == folder.loss_png
    assert_shows_curves(folder.loss_png, evals=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.png", "metrics.jsonl"]  # no temporary


def test_plot_without_eval_has_no_eval_curve(tmp_path):
    folder = RunFolder(tmp_path)
    write_metrics(folder.metrics_file, 8)
    plot.plot_run(folder, [], ui=None)
    assert_shows_curves(folder.loss_png, evals=False)


class Recorder:
    def __init__(self):
        self.lines = []

    def status(self, text):
        self.lines.append(text)


def test_a_failed_plot_is_a_warning_not_an_error(tmp_path):
    folder = RunFolder(tmp_path)
    folder.metrics_file.write_text("")  # no step recorded
    ui = Recorder()
    assert plot.plot_run(folder, [], ui) is None
    assert not folder.loss_png.exists()
    assert len(ui.lines) == 1 and "loss.png not written" in ui.lines[0] and "no step with a loss" in ui.lines[0]


def test_tensorboard_missing_fails_before_anything_loads(tmp_path, monkeypatch):
    from fastft.train.trainer import train
    from fastft.train import inputs
    monkeypatch.setattr(inputs.importlib.util, "find_spec", lambda name, *a: None)
    cfg = TrainConfig(data=str(EXAMPLE), model="tiny", runs_dir=str(tmp_path / "runs"), tensorboard=True)
    with pytest.raises(TrainError, match="--tensorboard needs the tensorboard package"):
        train(cfg)
    assert not (tmp_path / "runs").exists()


def test_tensorboard_flag_reaches_the_trainer_arguments(tmp_path):
    from fastft.cli import main
    from fastft.core.run import Plan
    from fastft.train.trainer import sft_config

    printed = CliRunner().invoke(main, ["train", str(EXAMPLE), "--tensorboard", "--print-config"])
    assert "tensorboard = true" in printed.stdout.splitlines()
    plan = Plan(model_path="x", batch_size=2, grad_accum=1, padding_free=None,
                gradient_checkpointing="unsloth", optim="adamw_torch", group_by_length=True)
    folder = RunFolder(tmp_path)
    on = sft_config(TrainConfig(data="d.jsonl", tensorboard=True), plan, folder, has_eval=False)
    off = sft_config(TrainConfig(data="d.jsonl"), plan, folder, has_eval=False)
    assert on.report_to == ["tensorboard"] and off.report_to == []


class TensorBoardCallback:  # stands in for transformers' (matched by name)
    logging_dir = None


def test_tensorboard_logs_into_the_run_folder(tmp_path):
    callback = TensorBoardCallback()

    class Trainer:
        class callback_handler:
            callbacks = [object(), callback]

    plot.log_tensorboard_to(Trainer, RunFolder(tmp_path).tensorboard_dir)
    assert callback.logging_dir == str(tmp_path / "tensorboard")


@pytest.mark.slow
def test_training_and_resume_write_loss_png(tmp_path):
    """A real tiny run (with eval every 3 steps) draws its curves; a resume redraws them for
    the whole run."""
    from fastft.train.trainer import resume, train

    cfg = TrainConfig(data=str(EXAMPLE), model="tiny", runs_dir=str(tmp_path / "runs"), name="plot",
                      lr=2e-3, batch_size=4, grad_accum=2, max_seq_len=256, max_steps=6,
                      save_steps=3, eval_split=0.1)
    result = train(cfg)
    folder = result.folder
    assert_shows_curves(folder.loss_png, evals=True)

    shutil.rmtree(folder.checkpoints_dir / "checkpoint-6")
    folder.loss_png.unlink()
    mark_killed(folder.path)
    resume(str(folder.path))
    assert_shows_curves(folder.loss_png, evals=True)
