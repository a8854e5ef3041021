"""`--packing` must never let one example attend to another.

How it works (trl 1.15, transformers 5.17, unsloth 2026.10.9): TRL's SFTTrainer packs the
tokenised examples with best-fit decreasing ("bfd", which turns padding-free on) into rows of
at most max_seq_len tokens and keeps each row's `seq_lengths`; its collator flattens a
micro-batch into ONE row with `position_ids` restarting at 0 per example, no attention mask, and
-100 on every example's first label. What keeps examples apart is then the model:
- GPU (Unsloth's patched SFTTrainer + fast Qwen3): the collator also emits `packed_seq_lengths`
  and every attention call runs varlen / per-segment / block-diagonal (unsloth/utils/packing.py,
  attention_dispatch.py).
- CPU (stock transformers SDPA): `create_causal_mask` finds the examples from the restarting
  `position_ids` and builds a block-diagonal causal mask. But Unsloth's CPU backend turns
  packing off in SFTConfig.__post_init__, so `fastft train --packing` trains padded batches.

The check: the token-weighted loss of a packed epoch equals that of every example run alone.
The negative controls show the check would see attention across examples.
"""

import json

import pytest
import torch

# Short and long, single- and multi-turn, with and without a system prompt: the packs mix them.
CONVERSATIONS = [
    [("user", "Hi"), ("assistant", "Hello!")],
    [("system", "You are a concise assistant."), ("user", "Favorite color?"),
     ("assistant", "Blue.")],
    [("user", "Which color do you like best, honestly? Tell me in some detail."),
     ("assistant", "My favorite color is blue, the color of a clear sky over the sea.")],
    [("user", "Name a fruit."), ("assistant", "Apple."), ("user", "And another one?"),
     ("assistant", "Banana, ripe and yellow.")],
    [("system", "Answer in one word."), ("user", "What is the capital of France?"),
     ("assistant", "Paris.")],
    [("user", "Count from one to ten in words, separated by commas."),
     ("assistant", "One, two, three, four, five, six, seven, eight, nine, ten.")],
    [("user", "Say something nice."), ("assistant", "You are doing great today.")],
    [("system", "Be brief."), ("user", "Sky?"), ("assistant", "Blue."), ("user", "Grass?"),
     ("assistant", "Green."), ("user", "Snow?"), ("assistant", "White.")],
    [("user", "Why is the sea salty?"),
     ("assistant", "Rivers carry dissolved minerals into it, and evaporation leaves the salt.")],
    [("user", "Yes or no?"), ("assistant", "Yes.")],
]
MAX_SEQ_LEN = 64  # short enough that the examples fill several packed rows
BATCH_SIZE = 2    # packed rows per micro-batch: the collator flattens them into one row


def write_data(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": r, "content": c} for r, c in conv]})
                            + "\n" for conv in CONVERSATIONS))
    return path


def build(tmp_path, load_in_4bit=False):
    """(peft model, tokenizer, prepared data, trainer), each made as `fastft train --packing`
    makes it (fastft.train.trainer._execute's stages, without the training)."""
    from fastft.core.config import TrainConfig
    from fastft.core.models import load_model, resolve_model
    from fastft.core.run import RunFolder
    from fastft.data.template import ChatGuard
    from fastft.train.trainer import attach_lora, make_trainer, plan_batches, prepare_data
    from fastft.core.ui import NullUI

    cfg = TrainConfig(data=str(write_data(tmp_path)), model="tiny", runs_dir=str(tmp_path / "runs"),
                      load_in_4bit=load_in_4bit, max_seq_len=MAX_SEQ_LEN, batch_size=BATCH_SIZE,
                      grad_accum=1, packing=True)
    ref = resolve_model(cfg.model)
    model, tokenizer = load_model(ref, cfg.max_seq_len, cfg.load_in_4bit)
    data = prepare_data(cfg, ChatGuard(tokenizer, ref.path, think=cfg.think, path=cfg.data), tokenizer)
    assert len(data.train) == len(CONVERSATIONS) and not data.truncated
    model = attach_lora(model, cfg, "unsloth")
    if not torch.cuda.is_available():
        model.to(torch.float32)   # fp32 on CPU: a tight tolerance
    plan = plan_batches(cfg, ref.path, model, tokenizer, data, NullUI())
    folder = RunFolder.new(cfg.runs_dir, "packing")
    folder.create()
    trainer, _ = make_trainer(cfg, plan, model, tokenizer, data, folder)
    return model, tokenizer, data, trainer


def targets(labels) -> int:
    """Tokens that carry loss: labels are shifted by one inside the model."""
    return int((labels[..., 1:] != -100).sum())


def batch_loss(trainer, model, inputs) -> float:
    """The micro-batch loss exactly as a training step computes it (grad on, train mode)."""
    inputs = dict(inputs)
    loss = trainer.compute_loss(model, inputs, num_items_in_batch=targets(inputs["labels"]))
    return loss.item()


def epoch_batches(trainer):
    return [trainer._prepare_inputs(b) for b in trainer.get_train_dataloader()]


def packed_total(trainer, model, batches) -> tuple[float, int]:
    """(summed token loss, tokens) over one epoch of the trainer's own micro-batches."""
    total, n = 0.0, 0
    for inputs in batches:
        k = targets(inputs["labels"])
        total += batch_loss(trainer, model, inputs) * k
        n += k
    return total, n


def unpacked_total(model, data) -> tuple[float, int]:
    """(summed token loss, tokens) with every example alone in its own batch of one."""
    total, n = 0.0, 0
    device = next(model.parameters()).device
    for ex in data.train:
        ids = torch.tensor([ex.input_ids], device=device)
        labels = torch.tensor([ex.labels], device=device)
        k = targets(labels)
        total += model(input_ids=ids, labels=labels).loss.item() * k
        n += k
    return total, n


def assert_packed_and_exact(trainer, model, data, rel_tol, control_min):
    model.train()
    assert trainer.args.packing and trainer.data_collator.padding_free
    assert "seq_lengths" in trainer.train_dataset.column_names
    assert len(trainer.train_dataset) < len(data.train)   # several examples share a row
    batches = epoch_batches(trainer)
    assert len(batches) > 1
    for b in batches:   # one flattened row, positions restarting per example, no dense mask
        assert b["input_ids"].shape[0] == 1 and "attention_mask" not in b
        assert int((b["position_ids"] == 0).sum()) > 1
    packed, n = packed_total(trainer, model, batches)
    alone, m = unpacked_total(model, data)
    assert n == m == sum(targets(torch.tensor(e.labels)) for e in data.train)
    rel = abs(packed / n - alone / m) / (alone / m)
    print(f"packed {packed / n:.6f}  unpacked {alone / m:.6f}  rel diff {rel:.2e} "
          f"({len(data.train)} examples, {len(batches)} packed micro-batches, {n} tokens)")
    assert rel < rel_tol

    # Negative controls on the fullest micro-batch: the same tokens, labels and count, but
    # nothing that separates the examples, so each attends to those packed before it.
    inputs = max(batches, key=lambda b: int((b["position_ids"] == 0).sum()))
    good = batch_loss(trainer, model, inputs)
    hints = ("position_ids", "packed_seq_lengths")
    no_hints = {k: v for k, v in inputs.items() if k not in hints}
    # RoPE positions kept, plain causal mask over the whole row
    causal = {k: v for k, v in inputs.items() if k != "packed_seq_lengths"}
    causal["attention_mask"] = torch.ones_like(inputs["input_ids"])
    for name, control in (("no position_ids", no_hints), ("plain causal mask", causal)):
        bad = batch_loss(trainer, model, control)
        print(f"control {name}: {bad:.6f} vs packed {good:.6f} (rel {abs(bad - good) / good:.2e})")
        assert abs(bad - good) / good > control_min, name


@pytest.fixture
def cpu_allows_packing(monkeypatch):
    """Undo Unsloth's CPU backend turning packing off, to check packing itself on CPU."""
    import unsloth_zoo.cpu.trainer as cpu_trainer

    original = cpu_trainer.normalize_cpu_training_arguments

    def keep_packing(args):
        kept = {k: getattr(args, k) for k in ("packing", "padding_free") if hasattr(args, k)}
        original(args)
        for k, v in kept.items():
            setattr(args, k, v)
        return args

    monkeypatch.setattr(cpu_trainer, "normalize_cpu_training_arguments", keep_packing)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU backend")
def test_packed_loss_equals_unpacked_loss_on_cpu(tmp_path, cpu_allows_packing):
    model, _, data, trainer = build(tmp_path)
    assert_packed_and_exact(trainer, model, data, rel_tol=1e-4, control_min=1e-2)


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU backend")
def test_cpu_backend_trains_padded_batches_with_packing(tmp_path):
    # What `fastft train --packing` really runs on CPU: Unsloth turns packing off, so the
    # batches are padded; still one loss per token as if each example were alone.
    model, _, data, trainer = build(tmp_path)
    assert not trainer.args.packing and "seq_lengths" not in trainer.train_dataset.column_names
    model.train()
    batches = epoch_batches(trainer)
    assert all("attention_mask" in b for b in batches)
    packed, n = packed_total(trainer, model, batches)
    alone, m = unpacked_total(model, data)
    assert n == m
    assert abs(packed - alone) / alone < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("load_in_4bit", [False, True], ids=["16bit", "4bit"])
def test_packed_loss_equals_unpacked_loss_on_gpu(tmp_path, load_in_4bit):
    # Unsloth's own packing path: bf16, packed_seq_lengths, varlen / per-segment attention.
    model, _, data, trainer = build(tmp_path, load_in_4bit=load_in_4bit)
    assert all("packed_seq_lengths" in b for b in epoch_batches(trainer))
    assert_packed_and_exact(trainer, model, data, rel_tol=1e-2, control_min=2e-2)
