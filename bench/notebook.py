"""The recipe a user writes from Unsloth's Qwen3-2507 notebooks: train, then save a GGUF.

    python bench/notebook.py --model DIR --data FILE.jsonl --epochs 3 --out-dir DIR --result R.json

As the notebook (Qwen3_(4B)-Instruct.ipynb): `FastLanguageModel.from_pretrained(load_in_4bit=True,
max_seq_length=2048)`, `get_peft_model(r=16, lora_alpha=32, all seven projections, dropout 0,
use_gradient_checkpointing="unsloth", random_state=3407)`, the "qwen3-instruct" chat template,
`standardize_data_formats`, a "text" column from `apply_chat_template`, TRL `SFTTrainer` with
per_device_train_batch_size=2, gradient_accumulation_steps=4, warmup_steps=5, lr 2e-4, linear,
adamw_8bit, weight_decay 0.001, seed 3407, `train_on_responses_only`, then
`model.save_pretrained_gguf(out_dir, tokenizer, quantization_method="q4_k_m")`.

Departures, each for a like-for-like comparison: `num_train_epochs` (not the notebook's
max_steps=60) so it trains what `fastft train` trains; max_length=2048 (TRL's default is 1024,
which would cut the long examples fastft trains in full). On a machine without CUDA (smoke tests
only): adamw_torch (8-bit AdamW needs CUDA) and a 16-bit load (Unsloth's CPU backend cannot merge
LoRA into a 4-bit model for GGUF). llama.cpp comes from UNSLOTH_LLAMA_CPP_PATH (the bench sets it).

Writes `--result` JSON with its own stage times: imports, load (from_pretrained + get_peft_model),
prep (template, data, trainer), train, and save_pretrained_gguf split into merge (the 16-bit
merge and save), convert (convert_hf_to_gguf), quantize (llama-quantize) and the rest of save.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before any import: the script's own start-up is measured from here

import argparse  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

TIMES: dict[str, float] = {}
_ACTIVE: set[str] = set()


def timed(fn, key: str):
    """Wrap `fn` so every call adds its seconds to TIMES[key] (instrumentation only); a call
    inside another timed under the same key is not counted twice."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if key in _ACTIVE:
            return fn(*args, **kwargs)
        _ACTIVE.add(key)
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _ACTIVE.discard(key)
            TIMES[key] = TIMES.get(key, 0.0) + time.perf_counter() - t
    return wrapper


def time_gguf_stages(cuda: bool) -> None:
    """Time what save_pretrained_gguf calls, by wrapping the functions it looks up by module
    name: the 16-bit merge, convert_hf_to_gguf and llama-quantize. Unsloth's GPU path
    (unsloth.save) and its CPU backend (unsloth_zoo.cpu.loader) call different ones."""
    import importlib

    targets = [("unsloth.save", "unsloth_generic_save", "merge_s"),
               ("unsloth.save", "convert_to_gguf", "convert_s"),
               ("unsloth.save", "quantize_gguf", "quantize_s")]
    if not cuda:
        targets += [("unsloth_zoo.cpu.loader", "_merged_copy", "merge_s"),
                    ("unsloth_zoo.llama_cpp", "convert_to_gguf", "convert_s"),
                    ("unsloth_zoo.llama_cpp", "quantize_gguf", "quantize_s")]
    for module, name, key in targets:
        mod = importlib.import_module(module)
        if hasattr(mod, name):
            setattr(mod, name, timed(getattr(mod, name), key))


def write(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def run(a) -> dict:
    # -- the notebook, cell by cell --------------------------------------------------------------
    from unsloth import FastLanguageModel  # first: Unsloth patches transformers and TRL on import
    import torch
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer
    from unsloth.chat_templates import (get_chat_template, standardize_data_formats,
                                        train_on_responses_only)
    TIMES["imports_s"] = time.perf_counter() - T0

    cuda = torch.cuda.is_available()
    notes = [] if cuda else [
        "no CUDA: optim adamw_8bit -> adamw_torch",
        "no CUDA: load_in_4bit=False (Unsloth's CPU backend cannot merge LoRA into a 4-bit "
        "model for GGUF)"]
    t = time.perf_counter()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=a.model, max_seq_length=a.max_seq_length, load_in_4bit=cuda,
        load_in_8bit=False, full_finetuning=False)
    model = FastLanguageModel.get_peft_model(
        model, r=a.rank, lora_alpha=a.alpha, lora_dropout=0, bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth", random_state=3407, use_rslora=False, loftq_config=None)
    TIMES["load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    tokenizer = get_chat_template(tokenizer, chat_template="qwen3-instruct")
    dataset = load_dataset("json", data_files=str(a.data), split="train")
    dataset = standardize_data_formats(dataset)

    def formatting_prompts_func(examples):
        texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=False)
                 for c in examples["messages"]]
        return {"text": texts}

    dataset = dataset.map(formatting_prompts_func, batched=True)
    trainer = SFTTrainer(
        model=model, tokenizer=tokenizer, train_dataset=dataset, eval_dataset=None,
        args=SFTConfig(
            dataset_text_field="text",
            per_device_train_batch_size=2,
            gradient_accumulation_steps=4,
            warmup_steps=5,
            num_train_epochs=a.epochs,
            max_steps=a.max_steps,
            learning_rate=2e-4,
            logging_steps=1,
            optim="adamw_8bit" if cuda else "adamw_torch",
            weight_decay=0.001,
            lr_scheduler_type="linear",
            seed=3407,
            report_to="none",
            max_length=a.max_seq_length,
            output_dir=str(a.out_dir / "outputs"),
            save_strategy="no",
        ),
    )
    trainer = train_on_responses_only(trainer, instruction_part="<|im_start|>user\n",
                                      response_part="<|im_start|>assistant\n")
    TIMES["prep_s"] = time.perf_counter() - t

    t = time.perf_counter()
    stats = trainer.train()
    TIMES["train_s"] = time.perf_counter() - t

    time_gguf_stages(cuda)
    gguf_dir = a.out_dir / "model"
    t = time.perf_counter()
    model.save_pretrained_gguf(str(gguf_dir), tokenizer, quantization_method="q4_k_m")
    TIMES["save_gguf_s"] = time.perf_counter() - t
    TIMES["total_s"] = time.perf_counter() - T0

    ggufs = sorted(str(p) for p in a.out_dir.rglob("*.gguf"))
    return {"recipe": "notebook", "status": "ok", "timings": dict(TIMES),
            "steps": trainer.state.global_step, "train_loss": stats.training_loss,
            "examples": len(dataset), "epochs": a.epochs, "max_steps": a.max_steps,
            "ggufs": {p: os.path.getsize(p) for p in ggufs}, "notes": notes,
            "llama_cpp": os.environ.get("UNSLOTH_LLAMA_CPP_PATH")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out-dir", required=True, type=Path, help="trainer outputs and the GGUF folder")
    ap.add_argument("--result", required=True, type=Path, help="JSON of stage times to write")
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--max-steps", type=int, default=-1, help="-1: train --epochs")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=2048)
    a = ap.parse_args(argv)
    try:
        result = run(a)
    except BaseException as e:
        write(a.result, {"recipe": "notebook", "status": "error", "error": f"{type(e).__name__}: {e}",
                         "traceback": traceback.format_exc(), "timings": dict(TIMES)})
        raise
    write(a.result, result)
    print(json.dumps({"timings": result["timings"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
