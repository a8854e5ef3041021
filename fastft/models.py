"""Resolve a model name, and load models through Unsloth's `FastLanguageModel`: the one place
that calls `from_pretrained`, so its rules live once: Unsloth is imported before transformers,
peft and trl; weights are safetensors only; remote code is never trusted.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .tiny import is_tiny, tiny_model_path

LOADING_RULES = dict(trust_remote_code=False, use_safetensors=True)
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")   # either keeps the hub libraries offline


def offline_vars() -> list[str]:
    """The variables of OFFLINE_VARS that are set on, as huggingface_hub reads them."""
    return [v for v in OFFLINE_VARS if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]


def import_unsloth():
    """Import Unsloth, which must come before transformers, peft and trl: it patches them when
    imported, and imported after them its fast paths are silently skipped. Its banner goes to
    stderr, keeping stdout clean for piped output. Every module that trains or loads a model
    calls this at its top; tests/test_layout.py checks that importing them never breaks the order."""
    if "unsloth" not in sys.modules:
        late = [m for m in ("transformers", "peft", "trl") if m in sys.modules]
        if late:
            raise ImportError(f"fastft bug: {', '.join(late)} imported before unsloth")
        with contextlib.redirect_stdout(sys.stderr):
            import unsloth  # noqa: F401
    return sys.modules["unsloth"]


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
    return from_pretrained(ref.path, max_seq_len, load_in_4bit, local_files_only=ref.is_local)


def from_pretrained(path: str, max_seq_len: int, load_in_4bit: bool, local_files_only: bool):
    """`FastLanguageModel.from_pretrained` under fastft's loading rules: (model, tokenizer)."""
    unsloth = import_unsloth()  # heavy: kept off the CLI's start-up path
    return unsloth.FastLanguageModel.from_pretrained(
        model_name=path, max_seq_length=max_seq_len, load_in_4bit=load_in_4bit,
        dtype=None,  # Unsloth picks bf16 where the device supports it, else fp16/fp32
        local_files_only=local_files_only, **LOADING_RULES)


def load_for_inference(adapter_dir: Path, max_seq_len: int, load_in_4bit: bool):
    """A trained run's base model with its adapter, in Unsloth's inference mode."""
    model, tokenizer = from_pretrained(str(adapter_dir), max_seq_len, load_in_4bit, True)
    import_unsloth().FastLanguageModel.for_inference(model)
    return model, tokenizer


def load_base_with_adapter(adapter_dir: Path, base_path: str, max_seq_len: int, work: Path):
    """(model, tokenizer): the ORIGINAL 16-bit base `base_path` with the adapter attached, via
    Unsloth's own adapter loading; for export, where merging into 16-bit weights (not dequantised
    4-bit ones) is what keeps the merge lossless: W = W_base + (alpha/r)·B·A.

    Unsloth reads the base from adapter_config.json, which after 4-bit training may name the
    pre-quantised 4-bit checkpoint; a copy of the adapter in `work` pointing at `base_path`
    makes it load the 16-bit original instead. The tokenizer is the run's own (guarded chat
    template, EOS, pad), as saved with the adapter.
    """
    import json
    import shutil

    adapter = work / "adapter"
    shutil.copytree(adapter_dir, adapter)
    cfg_file = adapter / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = base_path
    cfg_file.write_text(json.dumps(cfg, indent=2))
    model, _ = from_pretrained(str(adapter), max_seq_len, load_in_4bit=False,
                               local_files_only=Path(base_path).is_dir())
    from transformers import AutoTokenizer  # after Unsloth (imported by from_pretrained)

    return model, AutoTokenizer.from_pretrained(str(adapter))
