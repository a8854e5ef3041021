"""What `fastft train` checks before anything heavy is imported: the data (every record read and
validated), the eval file, the model's name or folder, and --tensorboard's package. Importing
Unsloth, torch and transformers costs 10-40 s; a missing file or a malformed line is the
commonest mistake, and it is reported in well under a second. Nothing here may import them."""

from __future__ import annotations

import importlib.util
import random
from typing import NamedTuple

from ..core.config import TrainConfig
from ..core.errors import TrainError
from ..core.models import check_model
from ..data.read import Dataset, Example, load_conversations


class Inputs(NamedTuple):
    """The checked inputs of a run: its training data, and the examples of --eval-file."""
    train: Dataset
    eval_examples: list[Example]


def load_data(cfg: TrainConfig) -> Inputs:
    """The training data and --eval-file's examples. Raises DataError on bad input."""
    train_ds = load_conversations(cfg.data, skip_invalid=cfg.skip_invalid)
    eval_examples: list[Example] = []
    if cfg.eval_file:
        eval_examples = load_conversations(cfg.eval_file, skip_invalid=cfg.skip_invalid).examples
    return Inputs(train_ds, eval_examples)


def split_eval(cfg: TrainConfig, examples: list[Example]) -> tuple[list[Example], list[Example]]:
    """(train, eval): a seeded --eval-split share held out, or nothing. (Also the export's
    retention gate, which must not import the trainer: it imports Unsloth.)"""
    if cfg.eval_file or cfg.eval_split <= 0:
        return examples, []
    shuffled = examples[:]
    random.Random(cfg.seed).shuffle(shuffled)
    n_eval = max(1, round(len(shuffled) * cfg.eval_split))
    if n_eval >= len(shuffled):
        raise TrainError(f"--eval-split {cfg.eval_split} leaves no training examples")
    return shuffled[n_eval:], shuffled[:n_eval]


def check_inputs(cfg: TrainConfig) -> Inputs:
    """Data first (the cheapest check, and the commonest mistake), then the model, which may ask
    the hub whether it exists, then --tensorboard's package."""
    inputs = load_data(cfg)   # before paths are made absolute: errors name the file as given
    check_model(cfg.model)
    if cfg.tensorboard:
        require_tensorboard()
    return inputs


def require_tensorboard() -> None:
    """--tensorboard needs a SummaryWriter (the tensorboard package, or tensorboardX, as
    transformers accepts); checked before the model loads, not after minutes of loading."""
    if not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise TrainError("--tensorboard needs the tensorboard package, which is not installed: "
                         "install it into fastft's environment (.venv/bin/pip install tensorboard) "
                         "or drop --tensorboard")
