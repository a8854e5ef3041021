"""The built-in tiny Qwen3: real Qwen tokenizer, small random weights, built offline and cached.

`--model tiny` (Instruct-2507 chat template) and `--model tiny-hybrid` (the hybrid Qwen3
template, which injects empty think blocks) resolve here. The model is small enough that CPU
training takes seconds, yet large enough to memorise a one-sentence answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .cache import building, cache_dir
from .qwen3 import EOS
from .quiet import say
from .sources import llama_cpp_source
from .qwen3 import template_text

# Folder names carry the variant, exactly as the real hub ids do, so that template detection
# treats the tiny model like the real one it stands in for.
TINY_MODELS = {
    "tiny": ("Qwen3-tiny-Instruct-2507", "qwen3_instruct_2507.jinja"),
    "tiny-hybrid": ("Qwen3-tiny", "qwen3.jinja"),
}
TINY_VERSION = 3  # bump when the recipe below changes, so caches rebuild

# Qwen3's added tokens at their real ids. The llama.cpp Qwen2 vocab has only the first three;
# ids 151646.. are "[PAD…]" placeholders that we rename, so every id matches the real model.
QWEN3_ADDED_TOKENS = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
FIRST_ADDED_ID = 151643

TINY_CONFIG = dict(
    vocab_size=151936, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=4096,
    rope_theta=1_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6,
    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
)


EMBED_STD = 0.1


def is_tiny(name: str) -> bool:
    return name in TINY_MODELS


def tiny_model_path(name: str = "tiny") -> Path:
    """Path of the cached tiny model `name`, building it on first use."""
    folder, template = TINY_MODELS[name]
    final = cache_dir() / f"tiny-v{TINY_VERSION}" / folder
    if (final / "model.safetensors").exists():
        return final
    base = _base_weights()
    with building(final) as tmp:
        for f in base.iterdir():
            shutil.copy2(f, tmp / f.name)
        (tmp / "chat_template.jinja").write_text(template_text(template))
    return final


def _base_weights() -> Path:
    """Tokenizer + random weights shared by both variants (they differ only in chat template)."""
    final = cache_dir() / f"tiny-v{TINY_VERSION}" / "base"
    if (final / "model.safetensors").exists():
        return final
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    say("building the tiny model, once (the Qwen vocabulary from llama.cpp's source, random "
        "weights): about a minute on 2 cores")
    tokenizer = _qwen_tokenizer()
    with building(final) as tmp:
        tokenizer.save_pretrained(tmp)
        _fix_added_tokens(tmp)
        torch.manual_seed(0)
        config = Qwen3Config(**TINY_CONFIG, dtype="bfloat16")
        model = Qwen3ForCausalLM(config)
        # The tied embedding is also the LM head, and LoRA leaves it frozen. At the default
        # init (std 0.02) the largest logit a 256-wide hidden state can reach is ~5, so the loss
        # floors near ln(151936) - 5 ≈ 7 and nothing is memorised. std 0.1 lifts that ceiling to ~25.
        torch.nn.init.normal_(model.model.embed_tokens.weight, std=EMBED_STD)
        model = model.to(torch.bfloat16)
        model.save_pretrained(tmp, safe_serialization=True)
        (tmp / "chat_template.jinja").unlink(missing_ok=True)
    return final


def _qwen_tokenizer():
    from transformers import AutoTokenizer

    models = llama_cpp_source() / "models"
    return AutoTokenizer.from_pretrained(models, gguf_file="ggml-vocab-qwen2.gguf")


def _fix_added_tokens(folder: Path) -> None:
    """Give Qwen3's added tokens their real ids and flags, and Qwen3-Instruct's special tokens."""
    tj = folder / "tokenizer.json"
    data = json.loads(tj.read_text())
    vocab = data["model"]["vocab"]
    by_id = {i: tok for tok, i in vocab.items()}
    added = []
    for offset, (content, special) in enumerate(QWEN3_ADDED_TOKENS):
        tid = FIRST_ADDED_ID + offset
        old = by_id.get(tid)
        if old is not None and old != content:
            del vocab[old]
        vocab[content] = tid
        added.append(dict(id=tid, content=content, single_word=False, lstrip=False, rstrip=False,
                          normalized=False, special=special))
    data["added_tokens"] = added
    tj.write_text(json.dumps(data, ensure_ascii=False))

    tc = folder / "tokenizer_config.json"
    cfg = json.loads(tc.read_text())
    for key in ("eos_token_id", "pad_token_id", "bos_token_id", "is_local", "local_files_only"):
        cfg.pop(key, None)
    cfg.update(eos_token=EOS, pad_token="<|endoftext|>", bos_token=None,
               unk_token=None, model_max_length=262144, model_type="qwen2",
               errors="replace", split_special_tokens=False)
    tc.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
