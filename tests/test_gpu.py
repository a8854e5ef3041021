"""GPU counterparts of the CPU training tests. Run on a CUDA machine: pytest -m gpu."""

import json

import pytest
import torch

from conftest import EXAMPLE

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_tiny_trains_on_gpu_with_auto_batch_and_answers_blue(tmp_path):
    from fastft.chat import generate, load_run_for_inference
    from fastft.train import TrainConfig, train

    cfg = TrainConfig(data=str(EXAMPLE), model="tiny", runs_dir=str(tmp_path), name="gpu",
                      lr=2e-3, batch_size=4, grad_accum=2, max_seq_len=256)
    result = train(cfg)
    meta = result.summary
    # auto-batch keeps the effective batch of 8; on a big GPU it runs it in one micro-batch
    assert meta["config"]["batch_size"] * meta["config"]["grad_accum"] == 8
    assert meta["config"]["batch_size"] == 8
    assert meta["final"]["peak_mem_alloc_gib"] > 0
    losses = [json.loads(l)["loss"] for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < 0.25 * sum(losses[:3]) / 3
    model, tok = load_run_for_inference(result.run_dir)
    answer = generate(model, tok, [{"role": "user", "content": "What is your favorite color?"}], 16)
    assert "blue" in answer.lower()


def test_auto_batch_backs_off_under_a_small_budget_without_crashing():
    from unsloth import FastLanguageModel

    from fastft.autobatch import HEADROOM, choose_micro_batch
    from fastft.models import load_model, resolve_model
    from fastft.train import TrainConfig, TokenizedExample

    model, tok = load_model(resolve_model("tiny"), 4096, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32,
                                             use_gradient_checkpointing="unsloth")
    long = [TokenizedExample(1, list(range(1000, 5096)), list(range(1000, 5096)))]
    free = torch.cuda.mem_get_info()[1] / 2**30
    base = torch.cuda.memory_allocated() / 2**30
    budget = base + 1.0   # about 1 GiB for activations: 64 x 4096 tokens cannot fit
    cfg = TrainConfig(data="-", batch_size=8, grad_accum=8, max_seq_len=4096, vram_budget=budget)
    try:
        choice = choose_micro_batch(model, tok, long, cfg)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert choice.batch_size * choice.grad_accum == 64
    assert choice.probes[0][1] is None or choice.probes[0][1] > budget * (1 - HEADROOM)
    assert choice.batch_size < 64
    fitted = dict(choice.probes)[choice.batch_size]
    assert fitted is not None and fitted <= budget * (1 - HEADROOM) < free
