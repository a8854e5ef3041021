"""Shared fixtures. Tests never reach the model hub: the tiny model is built from PyPI packages."""

import os

# No machine that runs these tests reaches the hub; failing fast beats five retries per lookup.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import contextlib
import sys
from pathlib import Path

import pytest

# As in `fastft train`: Unsloth first, so it patches transformers/peft/trl before they load.
with contextlib.redirect_stdout(sys.stderr):
    import unsloth  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "favorite_color.jsonl"


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    from fastft.tiny import tiny_model_path
    return tiny_model_path("tiny")


@pytest.fixture(scope="session")
def tiny_hybrid_path() -> Path:
    from fastft.tiny import tiny_model_path
    return tiny_model_path("tiny-hybrid")


@pytest.fixture
def tokenizer_of():
    """Fresh tokenizer per call: the guard mutates tokenizers in place."""
    from transformers import AutoTokenizer
    return lambda path: AutoTokenizer.from_pretrained(path)


def write_run(run: Path, model_path: str = "x", max_seq_len: int = 64, status: str = "done",
              variant: str = "instruct-2507", model: str = "tiny") -> Path:
    """A run folder whose fastft.json is a valid RunRecord, for tests that need one without
    training (written through fastft.run, the record's one owner)."""
    from fastft.config import TrainConfig
    from fastft.run import DataInfo, Plan, RunFolder, RunRecord

    run.mkdir(parents=True, exist_ok=True)
    RunFolder(run).write(RunRecord(
        status=status, variant=variant, guard={}, versions={}, hardware={},
        config=TrainConfig(data=str(EXAMPLE), model=model, max_seq_len=max_seq_len),
        plan=Plan(model_path=model_path, batch_size=2, grad_accum=4, padding_free=None,
                  gradient_checkpointing="unsloth", optim="adamw_torch", group_by_length=True),
        data=DataInfo(path=str(EXAMPLE), sha256="0" * 64, examples=1, train=1, eval=0,
                      truncated=0, dropped=0, train_tokens=1, trained_tokens=1)))
    return run
