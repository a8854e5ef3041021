"""The chat-template guard: what a model trains on is exactly what it is served with.

Expectations come from the spec (the Qwen3 chat formats and the guard's contract), not from
re-running the guard: spans are checked against the assistant content plus `<|im_end|>\\n`, served
prompts against what the Instruct-2507 template itself renders with a generation prompt.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fastft.data.read import DataIssue, Example, read_dataset
from fastft.core.qwen3 import HYBRID, INSTRUCT_2507, OTHER, THINKING, detect_variant
from fastft.data.template import ChatGuard, GuardError, Rendered

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "favorite_color.jsonl"
TEMPLATES = REPO / "fastft" / "core" / "templates"
INSTRUCT_TEMPLATE = (TEMPLATES / "qwen3_instruct_2507.jinja").read_text()
HYBRID_TEMPLATE = (TEMPLATES / "qwen3.jinja").read_text()

EOS = "<|im_end|>"
PAD = "<|endoftext|>"
EMPTY_THINK = "<think>\n\n</think>\n\n"

SYS = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "What is your favorite color?"}
A1 = {"role": "assistant", "content": "My favorite color is blue."}
U2 = {"role": "user", "content": "And your favorite animal?"}
A2 = {"role": "assistant", "content": "The otter, without a doubt."}

SINGLE = [U1, A1]
WITH_SYSTEM = [SYS, U1, A1]
MULTI = [SYS, U1, A1, U2, A2]
CONVERSATIONS = pytest.mark.parametrize("messages", [SINGLE, WITH_SYSTEM, MULTI],
                                        ids=["single-turn", "with-system", "multi-turn"])


# The guard changes exactly these tokenizer attributes (and the tests below set them too).
GUARDED = ("chat_template", "eos_token", "pad_token")


@pytest.fixture(scope="module")
def _tokenizers(tiny_path, tiny_hybrid_path):
    from transformers import AutoTokenizer
    return {path: AutoTokenizer.from_pretrained(path) for path in (tiny_path, tiny_hybrid_path)}


@pytest.fixture
def tokenizer_of(_tokenizers):
    """Overrides conftest's (a 1.5 s load per call): one tokenizer per tiny model, with what the
    guard mutates reset to the shipped values before each use and after each test."""
    shipped = {path: {k: getattr(tok, k) for k in GUARDED} for path, tok in _tokenizers.items()}

    def reset(path):
        tok = _tokenizers[path]
        for k, v in shipped[path].items():
            setattr(tok, k, v)
        return tok

    yield reset
    for path in _tokenizers:
        reset(path)


def ex(messages, line=1):
    return Example(messages=[dict(m) for m in messages], line=line, format="messages")


def asst(content):
    return {"role": "assistant", "content": content}


@pytest.fixture
def instruct_guard(tiny_path, tokenizer_of):
    """A guard for the built-in tiny Instruct-2507 (its own template is already the right one)."""
    def make(think="strip", path="data.jsonl"):
        return ChatGuard(tokenizer_of(tiny_path), str(tiny_path), think=think, path=path)
    return make


# -- detect_variant ----------------------------------------------------------------------------

@pytest.mark.parametrize("model, variant", [
    ("unsloth/Qwen3-4B-Instruct-2507", INSTRUCT_2507),
    ("Qwen/Qwen3-4B-Instruct-2507", INSTRUCT_2507),
    ("/home/me/.cache/fastft/tiny-v3/Qwen3-tiny-Instruct-2507", INSTRUCT_2507),
    ("/home/me/.cache/fastft/tiny-v3/Qwen3-tiny-Instruct-2507/", INSTRUCT_2507),
    ("./models/Qwen3-tiny-Instruct-2507", INSTRUCT_2507),
    ("Qwen/Qwen3-4B-Thinking-2507", THINKING),
    ("unsloth/Qwen3-4B-Thinking-2507", THINKING),
    ("Qwen/Qwen3-8B", HYBRID),
    ("/models/Qwen3-tiny", HYBRID),
    ("meta-llama/Llama-3.1-8B", OTHER),
    ("mistralai/Mistral-7B-Instruct-v0.3", OTHER),
])
def test_detect_variant(model, variant):
    assert detect_variant(model) == variant


def test_detect_variant_of_the_built_in_tiny_folders(tiny_path, tiny_hybrid_path):
    assert detect_variant(str(tiny_path)) == INSTRUCT_2507
    assert detect_variant(str(tiny_hybrid_path)) == HYBRID


def test_unknown_think_policy_is_refused(tiny_path, tokenizer_of):
    with pytest.raises(GuardError, match="--think"):
        ChatGuard(tokenizer_of(tiny_path), str(tiny_path), think="maybe")


# -- Instruct-2507 always trains on the Instruct-2507 template -------------------------------

def test_hybrid_tokenizer_really_injects_an_empty_think_block(tiny_hybrid_path, tokenizer_of):
    """Precondition of the tests below: without the guard the hybrid template pollutes answers."""
    tok = tokenizer_of(tiny_hybrid_path)
    text = tok.apply_chat_template(SINGLE, tokenize=False)
    assert "<|im_start|>assistant\n" + EMPTY_THINK + A1["content"] in text


@CONVERSATIONS
def test_instruct_2507_replaces_a_shipped_hybrid_template(messages, tiny_hybrid_path, tokenizer_of):
    tok = tokenizer_of(tiny_hybrid_path)
    assert tok.chat_template == HYBRID_TEMPLATE
    guard = ChatGuard(tok, str(tiny_hybrid_path.parent / "Qwen3-tiny-Instruct-2507"))

    assert guard.report.variant == INSTRUCT_2507
    assert guard.report.template_replaced is True
    assert tok.chat_template == INSTRUCT_TEMPLATE
    r = guard.render(ex(messages))
    assert r is not None and guard.report.issues == []
    assert "<think>" not in r.text and "</think>" not in r.text
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            assert "<|im_start|>assistant\n" + m["content"] + EOS in r.text
            assert "<think>" not in guard.prompt(messages[:i])


def test_instruct_2507_with_its_own_template_reports_no_replacement(tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    guard = ChatGuard(tok, str(tiny_path))
    assert guard.report.template_replaced is False
    assert tok.chat_template == INSTRUCT_TEMPLATE


@pytest.mark.parametrize("model", ["Qwen/Qwen3-8B", "Qwen/Qwen3-4B-Thinking-2507", "tiny-hybrid-folder"])
def test_hybrid_and_thinking_models_keep_their_template(model, tiny_hybrid_path, tokenizer_of):
    if model == "tiny-hybrid-folder":
        model = str(tiny_hybrid_path)
    tok = tokenizer_of(tiny_hybrid_path)
    guard = ChatGuard(tok, model)

    assert guard.report.template_replaced is False
    assert tok.chat_template == HYBRID_TEMPLATE
    r = guard.render(ex(SINGLE))
    assert r is not None and guard.report.issues == []
    assert "<|im_start|>assistant\n" + EMPTY_THINK + A1["content"] + EOS in r.text
    assert guard.report.empty_think_removed == 0


def test_hybrid_model_keeps_think_blocks_in_its_data(tiny_hybrid_path, tokenizer_of):
    """The --think policy is for the non-thinking model only: even `error` lets them through."""
    guard = ChatGuard(tokenizer_of(tiny_hybrid_path), "Qwen/Qwen3-8B", think="error")
    r = guard.render(ex([U1, asst("<think>\nBlue is calm.\n</think>\n\nBlue.")]))
    assert r is not None and guard.report.issues == []
    assert "<think>\nBlue is calm.\n</think>\n\nBlue." in r.text
    assert guard.report.data_think_stripped == 0 and guard.report.data_think_kept == 0


# -- think blocks in the data of the non-thinking model ---------------------------------------

def test_strip_removes_think_blocks_from_assistant_content(instruct_guard):
    guard = instruct_guard()  # strip is the default
    messages = [U1, asst("<think>\nThe user wants a colour.\n</think>\n\nMy favorite color is blue.")]
    r = guard.render(ex(messages))
    assert r is not None and guard.report.issues == []
    assert "<think>" not in r.text and "</think>" not in r.text
    assert "The user wants a colour." not in r.text
    (s, e), = r.assistant_spans
    assert r.text[s:e] == "My favorite color is blue." + EOS + "\n"
    assert guard.report.data_think_stripped == 1


@pytest.mark.parametrize("content", [
    "My favorite color is blue.</think>",
    "</think>\n\nMy favorite color is blue.",
])
def test_strip_removes_lone_think_tags(instruct_guard, content):
    guard = instruct_guard()
    r = guard.render(ex([U1, asst(content)]))
    assert r is not None and guard.report.issues == []
    assert "<think>" not in r.text and "</think>" not in r.text
    assert "My favorite color is blue." in r.text
    assert guard.report.data_think_stripped == 1


UNTOLD = ": the reasoning cannot be told from the answer; "


@pytest.mark.parametrize("content, message", [
    ("<think>Blue, surely. Blue.", "unclosed <think> (no </think> after it)" + UNTOLD + "close it"),
    ("<think>a</think>b<think>c", "unclosed <think> (no </think> after it)" + UNTOLD + "close it"),
    # an unclosed tag is named before any other tangle in the same content
    ("a</think>b<think>c", "unclosed <think> (no </think> after it)" + UNTOLD + "close it"),
    ("<think>a<think>b</think>Blue.", "a <think> inside another think block" + UNTOLD + "fix the tags"),
    ("<think>a</think>b</think>Blue.",
     "a </think> with no <think> before it, between text" + UNTOLD + "fix the tags"),
])
def test_strip_rejects_think_tags_it_cannot_strip_safely(instruct_guard, content, message):
    guard = instruct_guard()
    assert guard.render(ex([U1, asst(content)], line=5)) is None
    issue, = guard.report.issues
    assert (issue.line, issue.field) == (5, "messages[1].content")
    assert issue.message == message + ", or pass --think keep"


def test_strip_counts_examples_not_blocks(instruct_guard):
    guard = instruct_guard()
    think = "<think>hmm</think>\n\n"
    examples = [
        ex([U1, asst(think + "Blue.")], line=1),
        ex([U1, asst("Blue.")], line=2),                                  # nothing to strip
        ex([U1, asst(think + "Blue."), U2, asst(think + "Otters.")], line=3),  # two blocks, one example
    ]
    rendered = guard.render_all(examples)
    assert [r.line for r in rendered] == [1, 2, 3]
    assert guard.report.data_think_stripped == 2
    assert guard.report.data_think_kept == 0
    assert all("<think>" not in r.text for r in rendered)


def test_strip_reports_an_assistant_turn_that_was_only_a_think_block(instruct_guard):
    guard = instruct_guard(path="data.jsonl")
    r = guard.render(ex([U1, A1, U2, asst("<think>\nI only thought.\n</think>")], line=9))
    assert r is None
    issue, = guard.report.issues
    assert isinstance(issue, DataIssue)
    assert (issue.line, issue.field) == (9, "messages[3].content")
    assert str(issue).startswith("data.jsonl:9: messages[3].content:")
    assert "empty" in issue.message


def test_keep_leaves_think_blocks_verbatim(instruct_guard):
    guard = instruct_guard(think="keep")
    content = "<think>\nThe user wants a colour.\n</think>\n\nMy favorite color is blue."
    r = guard.render(ex([U1, asst(content)]))
    assert r is not None and guard.report.issues == []
    assert "<|im_start|>assistant\n" + content + EOS in r.text
    (s, e), = r.assistant_spans
    assert r.text[s:e] == content + EOS + "\n"
    assert guard.report.data_think_kept == 1
    assert guard.report.data_think_stripped == 0


def test_error_rejects_the_example_with_line_and_field(instruct_guard):
    guard = instruct_guard(think="error", path="chats.jsonl")
    good = ex([U1, A1], line=1)
    bad = ex([SYS, U1, A1, U2, asst("<think>otters</think>The otter.")], line=4)
    rendered = guard.render_all([good, bad])
    assert [r.line for r in rendered] == [1]
    issue, = guard.report.issues
    assert (issue.path, issue.line, issue.field) == ("chats.jsonl", 4, "messages[4].content")
    assert str(issue).startswith("chats.jsonl:4: messages[4].content:")
    assert guard.report.data_think_stripped == 0 and guard.report.data_think_kept == 0


# -- EOS and pad ------------------------------------------------------------------------------

def test_eos_becomes_im_end_and_pad_differs(tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    tok.eos_token = PAD
    tok.pad_token = PAD
    assert tok.eos_token == tok.pad_token == PAD  # the broken starting point

    guard = ChatGuard(tok, str(tiny_path))
    assert tok.eos_token == EOS
    assert tok.eos_token_id == tok.convert_tokens_to_ids(EOS)
    assert tok.pad_token is not None and tok.pad_token != tok.eos_token
    assert tok.pad_token_id != tok.eos_token_id
    assert guard.report.eos_set == PAD
    assert any(EOS in line and "EOS" in line for line in guard.report.lines())


def test_pad_equal_to_eos_is_replaced_and_reported(tiny_path, tokenizer_of):
    """EOS and pad swapped: both are replaced, and the report records both."""
    tok = tokenizer_of(tiny_path)
    tok.eos_token = PAD
    tok.pad_token = EOS
    guard = ChatGuard(tok, str(tiny_path))
    assert (tok.eos_token, tok.pad_token) == (EOS, PAD)
    assert guard.report.eos_set == PAD
    assert guard.report.pad_set == EOS
    lines = guard.report.lines()
    assert any(line.startswith("EOS:") for line in lines)
    assert any(line.startswith("pad:") for line in lines)


def test_pad_same_as_eos_alone_is_replaced(tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    tok.pad_token = EOS
    guard = ChatGuard(tok, str(tiny_path))
    assert tok.eos_token == EOS and tok.pad_token == PAD
    assert guard.report.eos_set is None
    assert guard.report.pad_set == EOS


def test_missing_pad_is_set_and_reported(tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    tok.pad_token = None
    guard = ChatGuard(tok, str(tiny_path))
    assert tok.pad_token == PAD
    assert any(line.startswith("pad:") for line in guard.report.lines())


def test_other_model_with_pad_equal_to_eos_is_refused(tiny_path, tokenizer_of):
    tok = tokenizer_of(tiny_path)
    tok.pad_token = tok.eos_token
    with pytest.raises(GuardError, match="pad token"):
        ChatGuard(tok, "meta-llama/Llama-3.1-8B")


# -- train/serve parity -------------------------------------------------------------------------

def test_every_example_of_the_demo_data_is_served_as_trained(instruct_guard):
    ds = read_dataset(EXAMPLE)
    assert len(ds.examples) == 100 and not ds.issues
    guard = instruct_guard(path=str(EXAMPLE))
    tok = guard.tokenizer
    for e in ds.examples:
        r = guard.render(e)
        assert isinstance(r, Rendered), guard.report.issues
        assert r.line == e.line
        turns = [i for i, m in enumerate(e.messages) if m.role == "assistant"]
        assert len(r.assistant_spans) == len(turns)
        for (start, end), i in zip(r.assistant_spans, turns):
            prompt = guard.prompt(e.chat()[:i])
            # what a server holding the Instruct-2507 template sends for this turn
            assert prompt == tok.apply_chat_template(e.chat()[:i], tokenize=False,
                                                     add_generation_prompt=True,
                                                     chat_template=INSTRUCT_TEMPLATE)
            assert r.text.startswith(prompt)
            assert start == len(prompt)  # loss starts exactly where the served prompt ends
            assert r.text[start:end] == e.messages[i].content + EOS + "\n"
    assert guard.report.issues == []


def _break_generation_prompt(template: str, new: str) -> str:
    head, sep, tail = template.rpartition("{%- if add_generation_prompt %}")
    broken_tail = tail.replace("'<|im_start|>assistant\\n'", new)
    assert sep and broken_tail != tail
    return head + sep + broken_tail


@pytest.mark.parametrize("generation_prompt", [
    "'<|im_start|>assistant\\n\\n'",   # an extra newline after the role
    "'<|im_start|>Assistant\\n'",      # the role cased differently than in the training text
], ids=["extra-newline", "role-case"])
def test_a_template_whose_generation_prompt_differs_is_caught(generation_prompt, tiny_path, tokenizer_of):
    ds = read_dataset(EXAMPLE)
    example = next(e for e in ds.examples if e.line == 3)
    tok = tokenizer_of(tiny_path)
    tok.chat_template = _break_generation_prompt(INSTRUCT_TEMPLATE, generation_prompt)
    guard = ChatGuard(tok, "acme/chat-model", path="favorite_color.jsonl")  # "other": template kept
    assert guard.variant == OTHER and guard.report.template_replaced is False

    assert guard.render(example) is None
    issue, = guard.report.issues
    assert issue.line == 3
    assert str(issue).startswith("favorite_color.jsonl:3:")
    assert "train/serve mismatch" in str(issue)


def test_the_unbroken_template_passes_the_same_parity_check(tiny_path, tokenizer_of):
    """Control for the test above: under the same "other" set-up the intact template renders."""
    ds = read_dataset(EXAMPLE)
    tok = tokenizer_of(tiny_path)
    tok.chat_template = INSTRUCT_TEMPLATE
    guard = ChatGuard(tok, "acme/chat-model", path="favorite_color.jsonl")
    assert len(guard.render_all(ds.examples)) == 100
    assert guard.report.issues == []


# -- assistant spans ---------------------------------------------------------------------------

def _overlaps(a, b, spans):
    return any(a < e and s < b for s, e in spans)


@CONVERSATIONS
def test_spans_cover_exactly_the_assistant_turns(messages, instruct_guard):
    guard = instruct_guard()
    r = guard.render(ex(messages))
    assistants = [m["content"] for m in messages if m["role"] == "assistant"]
    assert [r.text[s:e] for s, e in r.assistant_spans] == [c + EOS + "\n" for c in assistants]
    # spans are ordered and disjoint
    flat = [x for span in r.assistant_spans for x in span]
    assert flat == sorted(flat)
    # no span touches user or system text, nor any role header
    for m in messages:
        if m["role"] != "assistant":
            at = r.text.index(m["content"])
            assert not _overlaps(at, at + len(m["content"]), r.assistant_spans), m
    covered = "".join(r.text[s:e] for s, e in r.assistant_spans)
    assert "<|im_start|>" not in covered


def test_multi_turn_has_two_spans_with_exact_text(instruct_guard):
    guard = instruct_guard()
    r = guard.render(ex(MULTI))
    assert len(r.assistant_spans) == 2
    (s1, e1), (s2, e2) = r.assistant_spans
    assert r.text[s1:e1] == A1["content"] + EOS + "\n"
    assert r.text[s2:e2] == A2["content"] + EOS + "\n"
    between = r.text[e1:s2]
    assert between == "<|im_start|>user\n" + U2["content"] + EOS + "\n<|im_start|>assistant\n"


def test_a_long_conversation_gets_the_spans_an_exact_check_of_every_turn_gives(
        instruct_guard, monkeypatch):
    """Past the first EXACT_TURNS answers (rendered exactly) the answers are found by their
    header, so checking a 10,000-turn conversation is linear; the spans must be the same as
    rendering the serving prompt before every answer."""
    import fastft.data.template as T

    messages = [m for i in range(3 * T.EXACT_TURNS) for m in (
        {"role": "user", "content": f"question {i}?"},
        {"role": "assistant", "content": f"answer {i}" + ("\n" * (i % 3))})]
    example = ex([{"role": "system", "content": "Be brief."}, *messages])
    guard = instruct_guard()
    renders = []
    monkeypatch.setattr(guard, "_prompt", lambda *a, real=guard._prompt: renders.append(1) or real(*a))
    fast = guard.render(example)
    assert len(renders) == T.EXACT_TURNS + 1            # not one per answer
    monkeypatch.setattr(T, "EXACT_TURNS", 10**6)
    exact = guard.render(example)
    assert fast.text == exact.text and fast.assistant_spans == exact.assistant_spans
    assert len(fast.assistant_spans) == len(messages) // 2
    answer = [fast.text[a:b] for a, b in fast.assistant_spans][40]
    assert answer.startswith("answer 40") and answer.endswith("<|im_end|>\n")
