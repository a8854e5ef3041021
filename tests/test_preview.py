"""`fastft data preview`: the loss mask, the guard's changes and the length histogram, through
click on the tiny model's tokenizer (the real Qwen3 vocabulary)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rich.console import Console

from fastft.cli import main
from fastft.data.preview import (ADDED, REMOVED, STYLE_MASKED, STYLE_REMOVED, STYLE_TRAINED, _removals,
                            example_text, histogram)

SYSTEM = "Answer in one sentence."
USER = "What is your favorite color?"
THOUGHT = "The user wants my favorite color."
ANSWER = "My favorite color is blue."
RECORDS = [
    {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER},
                  {"role": "assistant", "content": f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"}]},
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye."}]},
    {"prompt": "What is 2+2?", "completion": "4"},
    {"instruction": "Name a primary color.", "output": "Red."},
]


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("preview") / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    return path


def preview(*args):
    result = CliRunner().invoke(main, ["data", "preview", *map(str, args), "--model", "tiny"])
    return result


@pytest.fixture(scope="module")
def as_json(data_file):
    result = preview(data_file, "--json", "--n", "2")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def text_of(segments, **want) -> str:
    return "".join(s["text"] for s in segments if all(s[k] == v for k, v in want.items()))


def test_assistant_text_is_trained_and_the_prompt_is_not(as_json):
    first, second = as_json["shown"]
    assert (first["index"], first["line"], second["line"]) == (0, 1, 2)
    trained = text_of(first["segments"], trained=True)
    masked = text_of(first["segments"], trained=False, guard=None)
    assert ANSWER in trained and USER not in trained and SYSTEM not in trained
    assert USER in masked and SYSTEM in masked and "<|im_start|>user" in masked
    # Both assistant turns of a multi-turn example carry loss; neither user turn does.
    trained2 = text_of(second["segments"], trained=True)
    assert "Hello!" in trained2 and "Goodbye." in trained2
    assert "Hi" not in trained2 and "Bye" not in trained2
    # The segments are the whole training text, in order: nothing lost, nothing invented.
    assert text_of(second["segments"]) == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                                           "Hello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                                           "<|im_start|>assistant\nGoodbye.<|im_end|>\n")


def test_the_guard_stripped_think_block_shows_as_removed(as_json):
    segs = as_json["shown"][0]["segments"]
    removed = [s for s in segs if s["guard"] == REMOVED]
    assert len(removed) == 1 and not removed[0]["trained"]
    assert removed[0]["text"].startswith("<think>") and THOUGHT in removed[0]["text"]
    assert "</think>" in removed[0]["text"]
    assert THOUGHT not in text_of(segs, guard=None)
    # It sits where it was: between the assistant header and the answer.
    order = [s["text"] for s in segs]
    at = order.index(removed[0]["text"])
    assert order[at - 1].endswith("<|im_start|>assistant\n") and order[at + 1].startswith("My")
    assert as_json["guard"] == ["model variant: instruct-2507",
                                "data think blocks: stripped from 1 examples"]


def test_the_eos_ending_each_trained_turn_is_marked_added(as_json):
    for ex, turns in zip(as_json["shown"], (1, 2)):
        added = [s for s in ex["segments"] if s["guard"] == ADDED]
        assert [s["text"] for s in added] == ["<|im_end|>"] * turns
        assert all(s["trained"] for s in added)
    # User turns end with the same token, masked and not marked.
    masked_ends = text_of(as_json["shown"][1]["segments"], trained=False).count("<|im_end|>")
    assert masked_ends == 2


def test_histogram_and_counts_cover_the_whole_file(as_json):
    assert as_json["examples"] == len(RECORDS)
    assert sum(b["count"] for b in as_json["histogram"]) == len(RECORDS)
    assert as_json["truncated"] == 0 and as_json["dropped"] == 0
    shown_trained = sum(e["trained_tokens"] for e in as_json["shown"])
    assert as_json["trained_tokens"] > shown_trained > 0  # the other two examples count too
    assert as_json["masked_tokens"] > as_json["trained_tokens"]


def test_rich_output_shows_text_histogram_and_counts(data_file):
    result = preview(data_file, "--index", "0", "--max-seq-len", "30")
    assert result.exit_code == 0, result.output
    out = result.stdout
    for text in (USER, ANSWER, THOUGHT, "<|im_start|>assistant", "<|im_end|>",
                 "removed by the guard", "EOS added to the loss by the guard"):
        assert text in out, text
    assert "example 0 (line 1)" in out and "example 1" not in out
    assert "Tokens per example (4 examples, --max-seq-len 30)" in out
    assert "◀ max-seq-len 30" in out and "█" in out
    assert "truncated" in out and "trained tokens" in out and "masked tokens" in out


def test_styles_trained_masked_and_removed():
    segs = [{"text": "<|im_start|>user\nHi", "trained": False, "guard": None, "cut": False},
            {"text": "<think>x</think>", "trained": False, "guard": REMOVED, "cut": False},
            {"text": "Hello!", "trained": True, "guard": None, "cut": False}]
    from fastft.data.preview import PreviewExample, Segment
    text = example_text(PreviewExample(0, 1, 9, 2, False, [Segment(**s) for s in segs]))
    styles = {text.plain[s.start:s.end]: s.style for s in text.spans}
    assert styles == {"<|im_start|>user\nHi": STYLE_MASKED, "<think>x</think>": STYLE_REMOVED,
                      "Hello!": STYLE_TRAINED}
    console = Console(record=True, force_terminal=True, color_system="standard", width=80)
    console.print(text)
    assert "\x1b[1;32mHello!" in console.export_text(styles=True)  # bold green on a terminal


def test_cut_tokens_are_marked_and_counted(data_file):
    result = preview(data_file, "--json", "--index", "1", "--max-seq-len", "16")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    ex = out["shown"][0]
    assert ex["truncated"] and ex["tokens"] > 16
    assert "Goodbye." in text_of(ex["segments"], cut=True)
    assert "Goodbye." not in text_of(ex["segments"], trained=True)
    assert out["truncated"] == sum(b["cut"] for b in out["histogram"]) >= 1


def test_a_bad_file_fails_with_file_and_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_text(json.dumps(RECORDS[0]) + "\n{not json\n", encoding="utf-8")
    result = preview("bad.jsonl")
    assert result.exit_code == 1
    assert "bad.jsonl:2: <json>: invalid JSON" in result.output


def test_an_index_past_the_end_is_one_clear_error(data_file):
    result = preview(data_file, "--index", "9")
    assert result.exit_code == 1
    message = " ".join(result.output.split())  # rich wraps the line at the runner's width
    assert "--index 9" in message and "has 4 examples (0 to 3)" in message


def test_histogram_buckets_are_round_and_count_the_cut():
    buckets = histogram([10, 12, 55, 130], max_seq_len=100, rows=12)
    assert sum(b.count for b in buckets) == 4
    # (130 - 10 + 1) / 12 rounds up to 20; buckets start at multiples of it.
    assert [(b.min, b.max, b.count) for b in buckets] == [
        (0, 19, 2), (20, 39, 0), (40, 59, 1), (60, 79, 0), (80, 99, 0), (100, 119, 0), (120, 139, 1)]
    assert sum(b.cut for b in buckets) == 1 and buckets[-1].cut == 1
    assert histogram([], 100) == []


def test_removals_are_placed_in_the_guarded_text():
    before = "a\n<think>\nwhy\n</think>\n\nanswer"
    after = "a\nanswer"
    [(at, text)] = _removals(before, after)
    assert rebuild(after, [(at, text)]) == before
    assert "<think>" in text and "why" in text


def test_removals_inside_a_line_and_across_lines():
    before = "<|im_start|>assistant\n<think>a</think>Blue.<|im_end|>\nx\n<think>\nb\n</think>\n\nRed.\n"
    after = "<|im_start|>assistant\nBlue.<|im_end|>\nx\nRed.\n"
    found = _removals(before, after)
    assert [text for _, text in found] == ["<think>a</think>", "<think>\nb\n</think>\n\n"]
    assert rebuild(after, found) == before


def rebuild(after: str, removals: list[tuple[int, str]]) -> str:
    out, last = "", 0
    for at, text in removals:
        out += after[last:at] + text
        last = at
    return out + after[last:]


@pytest.mark.parametrize("content", [
    "<think>\nhmm\n</think>\n\nBlue.", "a<think>x</think>b</think> c<think>y</think>",
    "</think>  <think>q</think>x", "plain", "A </think>\n<think>b</think>\n\nC<think>d</think>"])
def test_strip_think_reports_exactly_what_it_removed(content):
    from fastft.core.qwen3 import THINK_BLOCK, THINK_TAG
    from fastft.data.template import strip_think
    stripped, removed = strip_think(content)
    assert stripped == THINK_TAG.sub("", THINK_BLOCK.sub("", content))  # what training always did
    assert rebuild(stripped, removed) == content


def test_a_long_inline_think_block_is_placed_exactly_and_fast(tiny_path, tokenizer_of):
    import time

    from fastft.data.read import Example
    from fastft.data.preview import guard_removals
    from fastft.data.template import ChatGuard
    words = " ".join(f"w{i % 50}" for i in range(8000))
    example = Example([{"role": "user", "content": "q"},
                       {"role": "assistant", "content": f"<think>{words}</think>{words}"}], 1, "messages")
    guard = ChatGuard(tokenizer_of(tiny_path), str(tiny_path))
    rendered = guard.render(example)
    t0 = time.perf_counter()
    removed = guard_removals(guard, example, rendered.text)
    assert time.perf_counter() - t0 < 1  # a character diff of this took 86 s
    assert removed == [(rendered.text.index(words), f"<think>{words}</think>")]
    assert rebuild(rendered.text, removed) == guard.unguarded_text(example.chat())
