"""GPU counterparts of the CPU training tests. Run on a CUDA machine: pytest -m gpu."""

import json

import pytest
import torch

from conftest import EXAMPLE

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_tiny_trains_on_gpu_with_auto_tune_and_answers_blue(tmp_path):
    from fastft.chat import generate, load_run_for_inference
    from fastft.config import TrainConfig
    from fastft.train import train

    cfg = TrainConfig(data=str(EXAMPLE), model="tiny", runs_dir=str(tmp_path), name="gpu",
                      lr=2e-3, batch_size=4, grad_accum=2, max_seq_len=256)
    result = train(cfg)
    plan, final = result.record.plan, result.record.final
    # auto-tune keeps the effective batch of 8, and records what it measured
    assert plan.batch_size * plan.grad_accum == 8
    assert plan.tuning and plan.tuning["measurements"] and plan.tuning["probe_s"] < 60
    assert plan.padding_free is not None and plan.pad_waste["grouped"] <= plan.pad_waste["random"]
    assert final.peak_mem_alloc_gib > 0
    losses = [json.loads(l)["loss"] for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(losses[-3:]) / 3 < 0.25 * sum(losses[:3]) / 3
    model, tok = load_run_for_inference(result.run_dir)
    answer = generate(model, tok, [{"role": "user", "content": "What is your favorite color?"}], 16)
    assert "blue" in answer.lower()
