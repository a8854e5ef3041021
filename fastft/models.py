"""Resolve a model name and load it through Unsloth's `FastLanguageModel`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .tiny import is_tiny, tiny_model_path

DEFAULT_MODEL = "unsloth/Qwen3-4B-Instruct-2507"


@dataclass
class ModelRef:
    name: str          # what the user asked for ("tiny", a hub id, a folder)
    path: str          # what from_pretrained gets: a local folder or a hub id

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def resolve_model(name: str) -> ModelRef:
    """`tiny`/`tiny-hybrid` -> the cached built-in model; a folder -> itself; else a hub id."""
    if is_tiny(name):
        return ModelRef(name, str(tiny_model_path(name)))
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef(name, str(path.resolve()))
    return ModelRef(name, name)


def load_model(ref: ModelRef, max_seq_len: int, load_in_4bit: bool = True):
    """(model, tokenizer) through Unsloth. Safetensors only; remote code is never trusted."""
    from unsloth import FastLanguageModel  # heavy import: keep it off the CLI's start-up path

    return FastLanguageModel.from_pretrained(
        model_name=ref.path,
        max_seq_length=max_seq_len,
        load_in_4bit=load_in_4bit,
        dtype=None,  # Unsloth picks bf16 where the device supports it, else fp16/fp32
        trust_remote_code=False,
        use_safetensors=True,
        local_files_only=ref.is_local,
    )
