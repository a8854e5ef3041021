"""GPU counterparts of the CPU training tests. Run on a CUDA machine: pytest -m gpu."""

import json
import os

import pytest
import torch

from conftest import EXAMPLE

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_tiny_trains_on_gpu_with_auto_tune_and_answers_blue(tmp_path):
    from fastft.serve.chat import generate, load_run_for_inference
    from fastft.core.config import TrainConfig
    from fastft.train.trainer import train

    cfg = TrainConfig(data=str(EXAMPLE), model="tiny", runs_dir=str(tmp_path), name="gpu",
                      lr=2e-3, batch_size=4, grad_accum=2, max_seq_len=256,
                      retune=True)   # a run this short would skip the probe, or reuse a remembered one
    result = train(cfg)
    plan, final = result.record.plan, result.record.final
    # auto-tune keeps the effective batch of 8, and records what it measured
    assert plan.batch_size * plan.grad_accum == 8
    assert plan.tuning and plan.tuning.measurements and plan.tuning.probe_s < 60
    assert plan.padding_free is not None and plan.pad_waste.grouped <= plan.pad_waste.random
    assert final.peak_mem_alloc_gib > 0
    records = [json.loads(l) for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    # On a GPU a record is the mean of up to 10 steps (fastft.train.metrics): every 10 steps, and at
    # each checkpoint (one per epoch here) and the last step.
    assert all(1 <= r["steps"] <= 10 for r in records) and len(records) < final.global_step
    assert sum(r["steps"] for r in records) == final.global_step
    assert records[-1]["loss"] < 0.25 * records[0]["loss"]
    model, tok = load_run_for_inference(result.run_dir)
    answer = generate(model, tok, [{"role": "user", "content": "What is your favorite color?"}], 16)
    assert "blue" in answer.lower()


def test_unsloth_rewrites_the_same_sft_trainer_when_told_to_rewrite_it_alone(tmp_path):
    """fastft's import_unsloth has Unsloth rewrite TRL's SFTTrainer alone, not all its trainers
    (fastft.core.models._sft_trainer_only): the trainer Unsloth generates is byte for byte a full
    import's, and trl.SFTTrainer is it. Each import runs in a fresh process with its own cache."""
    import subprocess
    import sys

    code = ("import sys, time\nt = time.perf_counter()\n"
            "if sys.argv[1] == 'fastft':\n"
            "    from fastft.core.models import import_unsloth\n    import_unsloth()\n"
            "else:\n    import unsloth\n"
            "import trl\nprint(trl.SFTTrainer.__name__, round(time.perf_counter() - t, 1))\n")
    generated, seen = {}, {}
    for how in ("full", "fastft"):
        env = {**os.environ, "UNSLOTH_COMPILE_LOCATION": str(tmp_path / how)}
        proc = subprocess.run([sys.executable, "-c", code, how], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        name, seconds = proc.stdout.split()[-2:]
        seen[how] = (name, sorted(p.name for p in (tmp_path / how).rglob("Unsloth*Trainer.py")))
        print(how, f"import {seconds} s", seen[how])
        generated[how] = next((tmp_path / how).rglob("UnslothSFTTrainer.py")).read_bytes()
    assert seen["full"][0] == seen["fastft"][0] == "UnslothSFTTrainer"
    assert seen["fastft"][1] == ["UnslothSFTTrainer.py"] and len(seen["full"][1]) > 5
    assert generated["fastft"] == generated["full"]
