"""`fastft train` on the tiny model through the real Unsloth code path (CPU)."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import EXAMPLE, built_once, mark_killed
from fastft.data.read import Example
from fastft.data.template import ChatGuard
from fastft.core.config import TrainConfig
from fastft.data.template import tokenize_rendered
from fastft.train.trainer import resume, train

THINK_IDS = {151667, 151668}


def tiny_config(tmp_path, **kw) -> TrainConfig:
    # lr 2e-3: the tiny model's weights are random, see fastft/demo.py.
    base = dict(data=str(EXAMPLE), model="tiny", runs_dir=str(tmp_path / "runs"), lr=2e-3,
                batch_size=4, grad_accum=2, max_seq_len=256)
    return TrainConfig(**(base | kw))


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module", params=[True, False], ids=["4bit", "16bit"])
def trained(request, tmp_path_factory):
    """The session's runs with exactly tiny_config's settings: in 16 bits the shared color run,
    in 4 bits `fastft demo`'s (conftest's `demo`), each trained once per session."""
    if request.param:
        from fastft.core.run import Run, RunFolder

        folder = RunFolder.open(request.getfixturevalue("demo")[0] / "runs" / "demo")
        run = Run(folder, folder.read())
    else:
        run = request.getfixturevalue("color_run")
    other = {"runs_dir", "name", "data"}   # data: the same file, shipped (fastft/resources)
    assert run.record.config.model_dump(exclude=other) == tiny_config(
        tmp_path_factory.getbasetemp(), load_in_4bit=request.param).model_dump(exclude=other)
    assert Path(run.record.config.data).read_bytes() == EXAMPLE.read_bytes()
    return run.record.config, run


@pytest.mark.slow
def test_training_lowers_the_loss_and_writes_the_run(trained):
    cfg, result = trained
    run = result.run_dir
    ls = losses(run)
    assert len(ls) == result.record.final.global_step == 39  # 100 examples / 8, 3 epochs
    assert sum(ls[-5:]) / 5 < 0.25 * sum(ls[:3]) / 3

    meta = json.loads((run / "fastft.json").read_text())
    assert meta["status"] == "done"
    assert meta["config"]["load_in_4bit"] is cfg.load_in_4bit
    assert meta["config"]["rank"] == 16 and meta["config"]["alpha"] == 32
    assert meta["data"]["examples"] == 100 and len(meta["data"]["sha256"]) == 64
    assert meta["data"]["sha256"] == hashlib.sha256(EXAMPLE.read_bytes()).hexdigest()
    assert meta["versions"]["unsloth"] and meta["final"]["tokens_per_s"] > 0
    assert (run.parent / "latest").resolve() == run.resolve()

    adapter = result.adapter_dir
    assert (adapter / "adapter_model.safetensors").exists()
    assert not list(adapter.glob("*.bin"))
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 16 and adapter_cfg["lora_alpha"] == 32
    assert set(adapter_cfg["target_modules"]) == set(cfg.target_modules)
    from safetensors.torch import load_file
    weights = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # it trained

    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mem_alloc_gib"} <= set(record)


@pytest.mark.slow
def test_trained_tiny_model_answers_blue(trained):
    from fastft.serve.chat import generate, load_run_for_inference

    _, result = trained
    model, tokenizer = load_run_for_inference(result.run_dir)
    answer = generate(model, tokenizer, [{"role": "user", "content": "What is your favorite color?"}],
                      max_new_tokens=16)
    assert "blue" in answer.lower()


def test_only_assistant_tokens_carry_loss(tiny_hybrid_path, tokenizer_of):
    # The hybrid tokenizer, as the real Instruct-2507 repo once shipped: the guard must still
    # produce think-free tokens, and labels only on the assistant turns.
    tok = tokenizer_of(tiny_hybrid_path)
    guard = ChatGuard(tok, "unsloth/Qwen3-4B-Instruct-2507")
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "<think>greet back</think>Hello!"},
            {"role": "user", "content": "Favorite color?"},
            {"role": "assistant", "content": "My favorite color is blue."}]
    rendered = guard.render(Example(msgs, 7, "messages"))
    ex, truncated = tokenize_rendered(rendered, tok, max_seq_len=512)
    assert not truncated
    assert not THINK_IDS & set(ex.input_ids)

    trained = tok.decode([t for t, l in zip(ex.input_ids, ex.labels) if l != -100])
    assert trained == "Hello!<|im_end|>\nMy favorite color is blue.<|im_end|>\n"
    assert all(l in (-100, t) for t, l in zip(ex.input_ids, ex.labels))

    everything, _ = tokenize_rendered(rendered, tok, max_seq_len=512, train_on_all=True)
    assert everything.labels == everything.input_ids


def test_padding_free_batches_keep_the_label_mask(tiny_path, tokenizer_of):
    # Unsloth turns padding-free batching on by default; examples are concatenated into one row
    # and must keep their own masks (and never learn across the boundary).
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = tokenizer_of(tiny_path)
    guard = ChatGuard(tok, str(tiny_path))
    rows = []
    for i, q in enumerate(["Favorite color?", "Which color do you like best, honestly?"]):
        r = guard.render(Example([{"role": "user", "content": q},
                                  {"role": "assistant", "content": "Blue."}], i + 1, "messages"))
        ex, _ = tokenize_rendered(r, tok, 512)
        rows.append({"input_ids": ex.input_ids, "labels": ex.labels})
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(rows)
    assert batch["input_ids"].shape[0] == 1
    expected = torch.tensor(rows[0]["labels"] + rows[1]["labels"])
    expected[len(rows[0]["labels"])] = -100
    assert torch.equal(batch["labels"][0], expected)


def test_truncation_is_counted(tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    guard = ChatGuard(tok, str(tiny_path))
    r = guard.render(Example([{"role": "user", "content": "word " * 50},
                              {"role": "assistant", "content": "ok"}], 1, "messages"))
    ex, truncated = tokenize_rendered(r, tok, max_seq_len=16)
    assert truncated and len(ex.input_ids) == 16 and all(l == -100 for l in ex.labels)


def six_step_run(tmp_path_factory, tmp_path) -> Path:
    """A copy, in tmp_path/runs/, of a 6-step run checkpointed every 3 steps (tiny_config's
    4-bit default): trained once per session, as tests here and in tests/test_faults.py that
    damage a finished run to resume it start from the same one (a run folder can be moved:
    resume reads everything from the folder)."""
    def build(folder: Path) -> None:
        train(tiny_config(folder, name="resume", max_steps=6, save_steps=3))

    built = built_once(tmp_path_factory, "six-steps", build) / "runs" / "resume"
    return Path(shutil.copytree(built, tmp_path / "runs" / built.name, symlinks=True))


@pytest.mark.slow
def test_resume_continues_from_the_last_checkpoint(tmp_path_factory, tmp_path):
    run = six_step_run(tmp_path_factory, tmp_path)
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    # Simulate a run killed after step 4: the last checkpoint is step 3.
    shutil.rmtree(run / "checkpoints" / "checkpoint-6")
    shutil.rmtree(run / "adapter")
    lines = (run / "metrics.jsonl").read_text().splitlines()[:4]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    mark_killed(run)

    resumed = resume(str(run))
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]   # restarted at step 4, from checkpoint-3; step 4 once
    assert resumed.record.final.global_step == 6
    assert (run / "adapter" / "adapter_model.safetensors").exists()


def first_examples(tmp_path, n: int, skip: int = 0) -> str:
    """A data file of EXAMPLE's examples skip+1 .. skip+n: the eval tests train two epochs of
    it (an eval each), and their assertions hold for any size; 20 is 3 steps an epoch, not 13."""
    path = tmp_path / f"examples-{skip}-{n}.jsonl"
    path.write_text("\n".join(EXAMPLE.read_text().splitlines()[skip:skip + n]) + "\n")
    return str(path)


@pytest.mark.slow
def test_eval_split_reports_eval_loss_and_keeps_best(tmp_path):
    result = train(tiny_config(tmp_path, name="eval", eval_split=0.1, epochs=2,
                               data=first_examples(tmp_path, 20)))
    final = result.record.final
    assert result.record.data.eval == 2 and result.record.data.train == 18
    assert final.eval_loss >= final.best_eval_loss > 0
    assert final.best_checkpoint


@pytest.mark.slow
def test_packing_trains_with_the_label_mask(tmp_path):
    # --packing: TRL packs input_ids and labels together, so prompts stay masked inside packs.
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    result = train(tiny_config(tmp_path, name="packed", packing=True, max_steps=3))
    assert result.record.final.global_step == 3
    assert all(l == l and l > 0 for l in losses(result.run_dir))  # finite, positive

    rows = {"input_ids": [[1, 2, 3], [4, 5, 6, 7]], "labels": [[-100, 2, 3], [-100, -100, 6, 7]]}
    packed = pack_dataset(Dataset.from_dict(rows), seq_length=16, strategy="bfd")[0]
    assert sorted(zip(packed["input_ids"], packed["labels"])) == sorted(
        zip(sum(rows["input_ids"], []), sum(rows["labels"], [])))


@pytest.mark.slow
def test_eval_file_is_evaluated_each_epoch(tmp_path):
    held_out = first_examples(tmp_path, 5)
    result = train(tiny_config(tmp_path, name="evalfile", eval_file=held_out, epochs=2,
                               data=first_examples(tmp_path, 20, skip=5)))
    assert result.record.data.eval == 5 and result.record.data.train == 20
    final = json.loads((result.run_dir / "fastft.json").read_text())["final"]
    assert len(final["eval_losses"]) == 2 and final["eval_loss"] == final["eval_losses"][-1] > 0


# Golden numbers of the tiny favorite-color run (the demo's settings, 16-bit, seed 42): the first
# losses and the token counts, as CPU training gives them (deterministic: bit for bit on the CI
# machine, and across sessions). A change to data reading, the template, the mask, LoRA's
# initialisation or the data order moves them; the tolerance leaves room for other CPUs' kernels.
GOLDEN_FIRST_LOSSES = [16.954387664794922, 16.4171142578125, 13.967988967895508]
GOLDEN_TOKENS = {"train_tokens": 3161, "trained_tokens": 1003, "examples": 100, "truncated": 0}


@pytest.mark.slow
def test_the_tiny_run_reproduces_its_golden_losses_and_mask_counts(color_run):
    assert losses(color_run.run_dir)[:3] == pytest.approx(GOLDEN_FIRST_LOSSES, rel=1e-3)
    data = color_run.record.data
    assert {k: getattr(data, k) for k in GOLDEN_TOKENS} == GOLDEN_TOKENS


@pytest.mark.slow
def test_checkpoints_hold_no_generated_model_card(color_run):
    """TRL writes a hub model card into checkpoints/ ("a fine-tuned version of [None](...)"),
    PEFT one into each checkpoint: a run folder describes itself in fastft.json instead."""
    checkpoints = color_run.run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("checkpoint-*"))   # saved, per epoch
    assert sorted(checkpoints.rglob("README.md")) == []
