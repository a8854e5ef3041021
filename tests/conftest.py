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
