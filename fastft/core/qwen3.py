"""What fastft knows about Qwen3 chat models, in one place: ChatML's markers, the think tags,
which flavour a model is, and the chat templates fastft ships (core/templates/)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

IM_START = "<|im_start|>"
IM_END = EOS = "<|im_end|>"   # ChatML's turn end: the EOS a Qwen3 chat model must learn to stop on
PAD = "<|endoftext|>"

# The flavours: Instruct-2507 never thinks, Thinking-2507 always does, the original Qwen3 can.
INSTRUCT_2507 = "instruct-2507"
THINKING = "thinking"
HYBRID = "hybrid"
OTHER = "other"

EMPTY_THINK = re.compile(r"<think>\s*</think>\s*")
THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.DOTALL)
THINK_TAG = re.compile(r"</?think>\s*")


def detect_variant(model: str) -> str:
    """Which Qwen3 flavour a hub id or local folder name is: decides template and think policy."""
    name = Path(model.rstrip("/")).name.lower()
    if "qwen3" not in name:
        return OTHER
    if "instruct-2507" in name:
        return INSTRUCT_2507
    if "thinking" in name:
        return THINKING
    return HYBRID


def template_text(filename: str) -> str:
    """A chat template shipped in fastft/core/templates/."""
    return resources.files("fastft.core.templates").joinpath(filename).read_text()
