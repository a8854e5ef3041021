"""A Qwen3-shaped model with random weights, built from a config (no model hub), saved to a folder.

Shapes:
  4b    Qwen3-4B-Instruct-2507's shape: 36 layers, hidden 2560, intermediate 9728, 32 query / 8 kv
        heads, head_dim 128, vocab 151936, rope_theta 5e6, tied embeddings, 40960 positions.
        Saved as bf16 safetensors to <out-dir>/Qwen3-4B-shape-Instruct-2507, with the real Qwen
        tokenizer and the Instruct-2507 chat template copied from fastft's tiny model. The folder
        name carries "Qwen3" and "Instruct-2507", so fastft treats it as Instruct-2507.
        Built on the GPU when there is one (about 15 s), else on the CPU (8 GB of RAM, slower).
  tiny  fastft's built-in tiny model (fastft.core.tiny.tiny_model_path("tiny")), for CPU smoke tests.

Throughput and memory do not depend on the weights' values, only on the shapes.

    python bench/make_model.py --shape 4b --out-dir bench/work/models
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import WORK, log, tiny_model_dir  # noqa: E402

SHAPES = {
    "4b": dict(
        vocab_size=151936, hidden_size=2560, intermediate_size=9728, num_hidden_layers=36,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
        rope_theta=5_000_000.0, tie_word_embeddings=True, rms_norm_eps=1e-6, hidden_act="silu",
        attention_bias=False, use_sliding_window=False,
        bos_token_id=151643, eos_token_id=151645, pad_token_id=151643,
    ),
}
FOLDERS = {"4b": "Qwen3-4B-shape-Instruct-2507"}
BUILD_VERSION = 1  # bump when the recipe changes, so stale builds are rebuilt
MARKER = "bench_model.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json", "generation_config.json")


def model_dir(shape: str, out_dir: Path = WORK / "models") -> Path:
    if shape == "tiny":
        return tiny_model_dir()
    return Path(out_dir) / FOLDERS[shape]


def _is_built(folder: Path, shape: str) -> bool:
    try:
        meta = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("shape") == shape and meta.get("version") == BUILD_VERSION


def build_model(shape: str, out_dir: Path = WORK / "models", device: str | None = None,
                force: bool = False) -> Path:
    """Build (or reuse) the model of `shape`; returns its folder."""
    if shape == "tiny":
        return tiny_model_dir()
    if shape not in SHAPES:
        raise SystemExit(f"unknown shape {shape!r}; choose from tiny, {', '.join(SHAPES)}")
    final = model_dir(shape, out_dir)
    if not force and _is_built(final, shape):
        log(f"model {shape}: reusing {final}")
        return final
    if final.exists():
        shutil.rmtree(final)

    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from fastft.core.cache import building

    tok_src = tiny_model_dir()  # real Qwen vocab + Instruct-2507 template, built offline
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    t0 = time.perf_counter()
    log(f"model {shape}: building random weights on {dev}")
    config = Qwen3Config(**SHAPES[shape], dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device(dev):
        model = Qwen3ForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.eval()
    n = sum(p.numel() for p in model.parameters())
    if dev.type == "cuda":
        torch.cuda.synchronize()
    log(f"model {shape}: {n / 1e9:.2f}B parameters in {time.perf_counter() - t0:.1f}s; saving")
    with building(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="4GB")
        for name in TOKENIZER_FILES:
            if (tok_src / name).exists() and not (tmp / name).exists():
                shutil.copy2(tok_src / name, tmp / name)
        (tmp / MARKER).write_text(json.dumps({
            "shape": shape, "version": BUILD_VERSION, "parameters": n, "seed": 0,
            "tokenizer_from": str(tok_src), "built_on": str(dev)}, indent=2) + "\n")
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    log(f"model {shape}: saved {final} in {time.perf_counter() - t0:.1f}s")
    return final


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["tiny", *SHAPES], default="4b")
    ap.add_argument("--out-dir", type=Path, default=WORK / "models")
    ap.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the folder is up to date")
    a = ap.parse_args(argv)
    print(build_model(a.shape, a.out_dir, a.device, a.force), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
