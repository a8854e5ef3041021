"""The built-in tiny Qwen3: the real Qwen3 tokenizer on small random weights, built once, cached,
and loadable through Unsloth on CPU exactly like the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fastft.core.tiny
from fastft.core.models import ModelRef, resolve_model
from fastft.core.tiny import tiny_model_path

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "fastft" / "core" / "templates"
VOCAB = 151936  # Qwen3's embedding rows (config.vocab_size of every Qwen3 model)

# Qwen3's special tokens at their ids in the released tokenizer.
QWEN3_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<think>": 151667,
    "</think>": 151668,
}


@pytest.fixture(scope="module")
def tok(tiny_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_path)


@pytest.fixture(scope="module")
def hybrid_tok(tiny_hybrid_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_hybrid_path)


# -- tokenizer -----------------------------------------------------------------------------------

def test_tokenizer_is_the_real_qwen_vocabulary(tok):
    assert tok("Hello world, 你好", add_special_tokens=False)["input_ids"] == [9707, 1879, 11, 220, 108386]


@pytest.mark.parametrize("token, tid", sorted(QWEN3_IDS.items(), key=lambda kv: kv[1]))
def test_special_tokens_are_single_tokens_at_qwen3_ids(tok, token, tid):
    assert tok.encode(token, add_special_tokens=False) == [tid]
    assert tok.convert_tokens_to_ids(token) == tid
    assert tok.decode([tid]) == token
    # also inside running text, as in a rendered conversation
    assert tok.encode(f"a{token}b", add_special_tokens=False).count(tid) == 1


def test_tokenizer_size_and_special_tokens(tok):
    assert len(tok) == VOCAB
    assert tok.eos_token == "<|im_end|>" and tok.eos_token_id == 151645
    assert tok.pad_token == "<|endoftext|>" and tok.pad_token_id == 151643


# -- the two variants -------------------------------------------------------------------------

def test_both_variants_exist_with_their_templates(tiny_path, tiny_hybrid_path, tok, hybrid_tok):
    assert tiny_path != tiny_hybrid_path
    assert tiny_path.name.endswith("Instruct-2507") and not tiny_hybrid_path.name.endswith("Instruct-2507")
    assert tok.chat_template == (TEMPLATES / "qwen3_instruct_2507.jinja").read_text()
    assert hybrid_tok.chat_template == (TEMPLATES / "qwen3.jinja").read_text()


def test_only_the_hybrid_variant_injects_an_empty_think_block(tok, hybrid_tok):
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert tok.apply_chat_template(conv, tokenize=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")
    assert hybrid_tok.apply_chat_template(conv, tokenize=False) == (
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello!<|im_end|>\n")


# -- weights and config ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["tiny", "tiny-hybrid"])
def test_config_and_safetensors_only(variant):
    folder = tiny_model_path(variant)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["model_type"] == "qwen3"
    assert config["vocab_size"] == VOCAB
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt*"))


def test_safetensors_embedding_covers_the_vocabulary(tiny_path):
    from safetensors import safe_open
    with safe_open(str(tiny_path / "model.safetensors"), framework="pt") as f:
        name = next(k for k in f.keys() if k.endswith("embed_tokens.weight"))
        assert f.get_slice(name).get_shape()[0] == VOCAB


# -- built once, reused ---------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["tiny", "tiny-hybrid"])
def test_built_once_and_reused(variant, monkeypatch):
    first = tiny_model_path(variant)  # builds it if this machine has no cache yet
    weights = first / "model.safetensors"
    before = weights.stat().st_mtime_ns

    def no_rebuild(*a, **k):
        raise AssertionError("tiny model rebuilt although it is cached")
    monkeypatch.setattr(fastft.core.tiny, "_base_weights", no_rebuild)
    monkeypatch.setattr(fastft.core.tiny, "building", no_rebuild)

    assert tiny_model_path(variant) == first
    assert weights.stat().st_mtime_ns == before


def test_cache_lives_under_fastft_cache(tmp_path, monkeypatch):
    from fastft.core.cache import cache_dir
    monkeypatch.setenv("FASTFT_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path


# -- resolve_model -------------------------------------------------------------------------------

def test_resolve_tiny_names_to_the_cached_folders(tiny_path, tiny_hybrid_path):
    assert resolve_model("tiny") == ModelRef("tiny", str(tiny_path))
    assert resolve_model("tiny-hybrid") == ModelRef("tiny-hybrid", str(tiny_hybrid_path))
    assert resolve_model("tiny").is_local


def test_resolve_an_existing_folder_to_itself(tmp_path, monkeypatch):
    folder = tmp_path / "my-model"
    folder.mkdir()
    ref = resolve_model(str(folder))
    assert Path(ref.path) == folder.resolve() and ref.is_local
    monkeypatch.chdir(tmp_path)
    ref = resolve_model("my-model")  # relative
    assert ref.name == "my-model"
    assert Path(ref.path) == folder.resolve() and ref.is_local


@pytest.mark.parametrize("name", ["unsloth/Qwen3-4B-Instruct-2507", "Qwen/Qwen3-8B", "tiny-ish"])
def test_resolve_anything_else_is_a_hub_id(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no such folder here
    ref = resolve_model(name)
    assert ref == ModelRef(name, name)
    assert not ref.is_local


# -- loading through Unsloth on CPU -----------------------------------------------------------------

def _forward_logits(model, tokenizer):
    import torch
    ids = tokenizer("What is your favorite color?", return_tensors="pt")
    n = ids["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**ids).logits
    return logits, n


@pytest.mark.slow
def test_load_in_4bit_gives_bitsandbytes_linear4bit(tiny_path):
    import bitsandbytes as bnb
    import torch

    from fastft.core.models import load_model
    model, tokenizer = load_model(resolve_model("tiny"), 256, load_in_4bit=True)
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit)
    assert tokenizer.convert_tokens_to_ids("<think>") == QWEN3_IDS["<think>"]
    logits, n = _forward_logits(model, tokenizer)
    assert n > 1
    assert tuple(logits.shape) == (1, n, VOCAB)
    assert torch.isfinite(logits.float()).all()


@pytest.mark.slow
def test_load_in_16bit_gives_plain_linear_in_the_machines_dtype(tiny_path):
    import bitsandbytes as bnb
    import torch
    from unsloth_zoo.cpu import cpu_bf16_supported

    from fastft.core.models import load_model
    model, tokenizer = load_model(resolve_model("tiny"), 256, load_in_4bit=False)
    q = model.model.layers[0].self_attn.q_proj
    assert type(q) is torch.nn.Linear and not isinstance(q, bnb.nn.Linear4bit)
    # Unsloth's CPU backend keeps the stored bf16 where the CPU computes in it natively, and
    # loads float32 where bf16 would be emulated (CI has run on both kinds of CPU).
    native = torch.cuda.is_available() or cpu_bf16_supported()
    assert q.weight.dtype == (torch.bfloat16 if native else torch.float32)
    logits, n = _forward_logits(model, tokenizer)
    assert tuple(logits.shape) == (1, n, VOCAB)
    assert torch.isfinite(logits.float()).all()
