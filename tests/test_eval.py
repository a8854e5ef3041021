"""`fastft eval RUN DATA` on the tiny demo run (shared with tests/test_chat.py: trained once)."""

import json
import math

import pytest
from click.testing import CliRunner

from conftest import EXAMPLE
from fastft.cli import main


def eval_cli(*args):
    return CliRunner().invoke(main, ["eval", *map(str, args)], catch_exceptions=False)


@pytest.mark.slow
def test_json_compares_base_and_tuned(color):
    run = color[0]
    result = eval_cli(run, EXAMPLE, "--samples", "2", "--max-new-tokens", "12", "--json")
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)               # stdout holds the JSON object and nothing else
    assert set(got) >= {"run", "data", "base", "tuned", "samples"}
    for side in ("base", "tuned"):
        assert set(got[side]) == {"loss", "ppl", "tokens", "examples"}
        assert math.isclose(got[side]["ppl"], math.exp(got[side]["loss"]))
    # Trained on this very data: the fine-tuned model fits it far better than the random base.
    assert got["tuned"]["loss"] < 0.5 * got["base"]["loss"]
    # Masked exactly as training masked it: the same number of loss-carrying tokens.
    record = json.loads((run / "fastft.json").read_text())
    assert got["tuned"]["tokens"] == got["base"]["tokens"] == record["data"]["trained_tokens"]
    assert got["tuned"]["examples"] == record["data"]["train"] == 100

    first = json.loads(EXAMPLE.read_text().splitlines()[0])["messages"]
    assert len(got["samples"]) == 2
    s = got["samples"][0]
    assert s["line"] == 1 and s["prompt"] == first[:-1] and s["reference"] == first[-1]["content"]
    assert "blue" in s["tuned"].lower() and s["base"] != s["tuned"]


@pytest.mark.slow
def test_table(color):
    result = eval_cli(color[0], EXAMPLE, "--samples", "1", "--max-new-tokens", "12")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for word in ("base", "fine-tuned", "loss", "perplexity", "trained tokens", "reference:"):
        assert word in out
    assert "Unsloth" not in out                   # loading chatter goes to stderr


@pytest.mark.slow
def test_loss_is_token_weighted_and_batching_does_not_change_it(color):
    """The mean over all trained tokens, whatever the batches: padding is masked out."""
    from fastft.serve.chat import load_run_for_inference
    from fastft.data.read import load_conversations
    from fastft.serve.evaluate import length_batches, score
    from fastft.core.run import RunFolder
    from fastft.data.template import ChatGuard, tokenize_rendered

    run = color[0]
    model, tok = load_run_for_inference(run)
    guard = ChatGuard(tok, RunFolder.open(run).read().plan.model_path)
    # Different lengths (multi-turn examples among them), so batches hold padding.
    examples = [tokenize_rendered(guard.render(e), tok, 256)[0]
                for e in load_conversations(EXAMPLE).examples[25:45]]
    assert len({len(e.input_ids) for e in examples}) > 3
    alone = [score(model, [e], tok.pad_token_id) for e in examples]
    together = score(model, examples, tok.pad_token_id)
    want = sum(s.loss * s.tokens for s in alone) / sum(s.tokens for s in alone)
    assert together.tokens == sum(s.tokens for s in alone)
    assert math.isclose(together.loss, want, rel_tol=2e-2)
    assert len(list(length_batches(examples, budget=100))) > 1


def test_bad_data_is_reported_by_line(tmp_path):
    from conftest import write_run

    run = write_run(tmp_path / "run")
    (run / "adapter").mkdir()                  # trained: eval gets as far as reading the data
    (run / "adapter" / "adapter_config.json").write_text("{}")
    bad = tmp_path / "bad.jsonl"
    good = EXAMPLE.read_text().splitlines()[0]
    bad.write_text(good + "\n{not json\n" + '{"messages": [{"role": "user", "content": "hi"}]}\n')
    result = eval_cli(run, bad)
    assert result.exit_code == 1
    text = " ".join(result.output.split())   # rich wraps long lines
    assert f"{bad}:2:" in text and f"{bad}:3:" in text
    assert eval_cli(run, tmp_path / "missing.jsonl").exit_code == 1


def test_not_a_run(tmp_path):
    result = eval_cli(tmp_path, EXAMPLE)
    assert result.exit_code == 1 and "not a fastft run folder" in " ".join(result.output.split())
