"""Ask a trained run a question, through the same guarded chat template it was trained with."""

from __future__ import annotations

from pathlib import Path

from .models import load_for_inference
from .run import RunFolder


def load_run_for_inference(run: str | Path, load_in_4bit: bool | None = None):
    """(model, tokenizer) of a run's base model with its adapter, ready for generation."""
    folder = RunFolder.open(run)
    cfg = folder.read().config
    return load_for_inference(folder.adapter, cfg.max_seq_len,
                              cfg.load_in_4bit if load_in_4bit is None else load_in_4bit)


def generate(model, tokenizer, messages: list[dict], max_new_tokens: int = 64) -> str:
    """Greedy reply to `messages`. The adapter folder's tokenizer holds the guarded template."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True).strip()
