"""The classic QLoRA recipe, in one process: plain transformers + peft + bitsandbytes + trl.

    python bench/classic.py --model DIR --data FILE.jsonl --out RESULT.json \
        --micro-batch 2 --grad-accum 4 --steps 20

Recipe: nf4 4-bit base with double quantisation and bf16 compute,
`peft.prepare_model_for_kbit_training`, LoRA r=16 alpha=32 dropout 0 on all seven projections,
gradient checkpointing, TRL `SFTTrainer` with paged 8-bit AdamW, lr 2e-4, cosine, 3% warmup,
bf16, seed 42, loss on assistant tokens only (TRL's `assistant_only_loss`, through TRL's own
training variant of the Qwen3 Instruct-2507 template), logging every step, no checkpoints.

Measured with `fastft.train.metrics.StepMetrics`, the same callback `fastft train` uses, so both
recipes count tokens, time and peak memory identically. Never imports Unsloth.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import gpu_info, log, versions, write_json  # noqa: E402

TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _assistant_only_setup(tokenizer) -> str:
    """Make TRL's `assistant_only_loss` work; returns how the loss mask is built.

    TRL 1.15 adds `{% generation %}` markers only to templates it recognises byte for byte. The
    Instruct-2507 template fastft installs differs from TRL's copy by a trailing newline (which
    Jinja drops: both render identically), so install TRL's copy when that is the only
    difference. If TRL cannot patch the template, fall back to prompt/completion records with
    `completion_only_loss` (the same tokens carry loss in a one-turn conversation).
    """
    from trl.chat_template_utils import get_training_chat_template

    try:
        from importlib import resources
        trl_tmpl = resources.files("trl").joinpath("chat_templates/qwen3_instruct_2507.jinja").read_text()
    except (OSError, ModuleNotFoundError):
        trl_tmpl = None
    cur = tokenizer.chat_template or ""
    if trl_tmpl and cur != trl_tmpl and cur.strip() == trl_tmpl.strip():
        tokenizer.chat_template = trl_tmpl
    try:
        get_training_chat_template(tokenizer)
        return "assistant_only_loss"
    except ValueError as e:
        log(f"TRL cannot patch this chat template ({e}); using prompt/completion instead")
        return "completion_only_loss"


def _to_prompt_completion(row: dict) -> dict:
    msgs = row["messages"]
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return {"prompt": msgs[:last], "completion": msgs[last:last + 1]}


class _TorchLogProbs:
    """Plain-torch stand-in for TRL's Triton `ChunkedLogProbFunction` (same `apply` signature).

    TRL 1.15's SFTTrainer always computes the loss through a fused LM-head kernel that runs on
    CUDA/XPU only. Used on CPU-only machines (the smoke test) and nowhere else.
    """

    @staticmethod
    def apply(hidden, weight, bias, targets, temperature, chunk_size, softcap=None,
              logit_scale=1.0, outputs=()):
        import torch

        logits = torch.nn.functional.linear(hidden, weight.to(hidden.dtype), bias).float()
        logits = logits * logit_scale
        if softcap:
            logits = softcap * torch.tanh(logits / softcap)
        logp = torch.log_softmax(logits / temperature, dim=-1)
        log_probs = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        p = logp.exp()
        want = set(outputs)
        return (log_probs,
                -(p * logp).sum(-1) if "entropy" in want else None,
                torch.logsumexp(2 * logp, dim=-1) if "log_sum_sq_probs" in want else None,
                logits.mean(-1) if "mean_logits" in want else None,
                (logits.argmax(-1) == targets) if "is_top1" in want else None)


def _step_metrics(trainer, path: Path):
    """fastft's own StepMetrics, so both recipes are measured by the same code."""
    from fastft.train.metrics import StepMetrics
    return StepMetrics(path)


def run(a) -> dict:
    t_start = time.perf_counter()
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    notes = []
    log(f"classic: {a.micro_batch}x{a.grad_accum}, {a.steps} steps, "
        f"device {'cuda: ' + torch.cuda.get_device_name(0) if cuda else 'cpu'}")

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    loss_mask = _assistant_only_setup(tokenizer)
    ds = load_dataset("json", data_files=str(a.data), split="train")
    eval_ds = load_dataset("json", data_files=str(a.eval_data), split="train") if a.eval_data else None
    if loss_mask == "completion_only_loss":
        ds = ds.map(_to_prompt_completion, remove_columns=ds.column_names)
        eval_ds = eval_ds and eval_ds.map(_to_prompt_completion, remove_columns=eval_ds.column_names)

    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                             bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(
        a.model, quantization_config=bnb, dtype=torch.bfloat16,
        device_map={"": 0} if cuda else None)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(
        r=a.rank, lora_alpha=a.alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=TARGET_MODULES))
    load_s = time.perf_counter() - t0
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log(f"classic: model loaded in {load_s:.1f}s, {trainable / 1e6:.1f}M trainable parameters")

    optim = a.optim
    if not cuda and optim.startswith("paged_"):
        # Paged optimizers page state through CUDA unified memory; without CUDA use plain AdamW.
        notes.append(f"no CUDA: optim {optim} -> adamw_torch")
        optim = "adamw_torch"
    bf16 = cuda  # as fastft: CPU runs (smoke tests) train without bf16 autocast
    if not cuda:
        notes.append("no CUDA: bf16 mixed precision off, use_cpu")
        import trl.trainer.utils as trl_utils
        if hasattr(trl_utils, "_ChunkedLogProbFunction"):
            trl_utils._ChunkedLogProbFunction = _TorchLogProbs
            notes.append("no CUDA: TRL's Triton LM-head loss kernel replaced by plain torch")

    with tempfile.TemporaryDirectory(prefix="bench-classic-") as tmp:
        cfg = SFTConfig(
            output_dir=tmp,
            per_device_train_batch_size=a.micro_batch,
            per_device_eval_batch_size=a.micro_batch,
            gradient_accumulation_steps=a.grad_accum,
            max_steps=a.steps,
            learning_rate=a.lr,
            lr_scheduler_type="cosine",
            warmup_steps=a.warmup_ratio,   # transformers 5: a float < 1 is a ratio (was warmup_ratio)
            optim=optim,
            weight_decay=0.0,
            bf16=bf16,
            use_cpu=not cuda,
            seed=a.seed,
            gradient_checkpointing=True,
            logging_steps=1,
            include_num_input_tokens_seen="non_padding",  # read by fastft.train.metrics.StepMetrics
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            disable_tqdm=True,
            max_length=a.max_length,
            packing=False,
            padding_free=False,
            assistant_only_loss=loss_mask == "assistant_only_loss",
            completion_only_loss=True if loss_mask == "completion_only_loss" else None,
            dataset_num_proc=1,
        )
        trainer = SFTTrainer(model=model, args=cfg, train_dataset=ds, eval_dataset=eval_ds,
                             processing_class=tokenizer)
        row = trainer.train_dataset[0]
        n_loss = sum(l != -100 for l in row["labels"])
        log(f"classic: example 0 has {len(row['input_ids'])} tokens, {n_loss} with loss ({loss_mask})")
        metrics_path = Path(a.metrics) if a.metrics else None
        if metrics_path:
            metrics_path.parent.mkdir(parents=True, exist_ok=True)
            metrics_path.unlink(missing_ok=True)
        metrics = _step_metrics(trainer, metrics_path)
        trainer.add_callback(metrics)
        t1 = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t1
        eval_loss = trainer.evaluate()["eval_loss"] if eval_ds is not None else None

    s = metrics.summary().model_dump()
    records = [asdict(r) for r in metrics.records]
    return {
        "recipe": a.name,
        "status": "ok",
        "micro_batch": a.micro_batch,
        "grad_accum": a.grad_accum,
        "steps": s["steps"],
        "timed_steps": s["timed_steps"],
        "tokens_per_s": s["tokens_per_s"],
        "seconds_per_step": s["seconds_per_step"],
        "peak_mem_alloc_gib": s["peak_mem_alloc_gib"],
        "peak_mem_reserved_gib": s["peak_mem_reserved_gib"],
        "last_loss": s["last_loss"],
        "eval_loss": eval_loss,
        "losses": [r["loss"] for r in records],
        "records": records,
        "optim": optim,
        "bf16": bf16,
        "loss_mask": loss_mask,
        "lora": {"r": a.rank, "alpha": a.alpha, "dropout": 0.0, "target_modules": TARGET_MODULES},
        "lr": a.lr, "seed": a.seed, "max_length": a.max_length,
        "notes": notes,
        "model": str(a.model),
        "data": str(a.data),
        "timings": {"load_s": load_s, "train_s": train_s,
                    "total_s": time.perf_counter() - t_start},
        "versions": versions(),
        "gpu": gpu_info(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model folder (bench/make_model.py)")
    ap.add_argument("--data", required=True, help="JSONL of `messages` records (bench/make_data.py)")
    ap.add_argument("--out", required=True, type=Path, help="result JSON to write")
    ap.add_argument("--metrics", help="also append per-step records to this JSONL")
    ap.add_argument("--name", default="classic", help="recipe name in the result (default classic)")
    ap.add_argument("--micro-batch", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=4)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup-ratio", type=float, default=0.03)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--alpha", type=int, default=32)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--max-length", type=int, default=2048,
                    help="truncation length (default 2048, as fastft; the data is shorter)")
    ap.add_argument("--optim", default="paged_adamw_8bit")
    ap.add_argument("--eval-data", help="JSONL of held-out `messages` records: eval loss after the last step")
    a = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        result = run(a)
    except BaseException as e:  # record the failure, then fail loudly
        write_json(a.out, {"recipe": a.name, "status": "error", "error": f"{type(e).__name__}: {e}",
                           "traceback": traceback.format_exc(), "versions": versions()})
        raise
    write_json(a.out, result)
    log(f"classic: {result['tokens_per_s'] or 0:,.0f} tokens/s, {result['seconds_per_step'] or 0:.2f} s/step, "
        f"peak alloc {result['peak_mem_alloc_gib']} GiB, last loss {result['last_loss']} -> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
