"""Serving parity with ollama's server, case by case (fastft issue 18): what the guard trains
before each answer must be the prompt ollama's /api/chat builds for the same request.

ollama's side is always computed by ollama's own code (tests/gotemplate: its api, template and
thinking packages, and the server's filterThinkTags copied from server/routes.go), from the
request as a client sends it; fastft's side is the guard's training text for the record read
as training reads it. Where ollama itself renders one conversation two ways, the guard must
refuse the record and say why.
"""

from __future__ import annotations

import json

import pytest

from fastft.core.qwen3 import EOS, INSTRUCT_2507
from fastft.data.read import read_dataset
from fastft.data.template import ChatGuard
from fastft.data.tools import go_isprint
from fastft.export.modelfile import render_modelfile
from ollama_contract import template_from_modelfile
from test_modelfile import go_render  # noqa: F401  (the Go renderer fixture, shared)

U1 = {"role": "user", "content": "Hi!"}
U2 = {"role": "user", "content": "Thanks. And the weather in Paris?"}
A_LAST = {"role": "assistant", "content": "It is sunny."}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def asst(content, calls=None):
    m = {"role": "assistant", "content": content}
    if calls is not None:
        m["tool_calls"] = [{"type": "function", "function": {"name": "get_weather", "arguments": a}}
                           for a in calls]
    return m


def tool(content):
    return {"role": "tool", "content": content}


@pytest.fixture(scope="module")
def template():
    return template_from_modelfile(
        render_modelfile(name="m", gguf="m.gguf", variant=INSTRUCT_2507, num_ctx=512).text)


@pytest.fixture
def guard(tiny_path):
    from transformers import AutoTokenizer
    return ChatGuard(AutoTokenizer.from_pretrained(tiny_path), str(tiny_path), path="data.jsonl")


def read(tmp_path, messages, tools=None):
    """The record read as training reads it: (examples, issues as `field: message`)."""
    path = tmp_path / "data.jsonl"
    record = {"messages": messages} | ({"tools": tools} if tools else {})
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    ds = read_dataset(path)
    return ds.examples, [f"{i.field}: {i.message}" for i in ds.issues]


def ollama_request(messages):
    """The messages as a client sends them and ollama decodes them: arguments given as a JSON
    string are parsed into a map the way Go does it (every number a float64; its openai layer)."""
    out = []
    for m in messages:
        m = json.loads(json.dumps(m))
        m["content"] = m.get("content") or ""
        for c in m.get("tool_calls", []):
            if isinstance(c["function"]["arguments"], str):
                c["function"]["arguments"] = json.loads(c["function"]["arguments"], parse_int=float)
        out.append(m)
    return out


def ollama_prompts(go_render, template, messages, tools=None):
    """{i: the prompt ollama builds for the request messages[:i]} for each assistant turn i."""
    cuts = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    req = ollama_request(messages)
    prompts = go_render.many([(template, req[:i], tools, None) for i in cuts])
    return dict(zip(cuts, prompts))


def assert_served_as_trained(go_render, template, guard, tmp_path, messages, tools=None):
    """Every answer is trained after exactly the prompt ollama builds before it: the rendered
    training text, as a whole."""
    (example,), issues = read(tmp_path, messages, tools)
    assert issues == []
    r = guard.render(example)
    assert r is not None and guard.report.issues == [], guard.report.issues
    for i, prompt in ollama_prompts(go_render, template, messages, tools).items():
        assert r.text.startswith(prompt), f"prompt before messages[{i}]"
    return r


# -- 1. --think strip edits only what ollama's filter removes -----------------------------------

def test_think_tags_in_user_content_are_content(go_render, template, guard, tmp_path):
    user = {"role": "user", "content": "What do <think> and </think> mark?"}
    r = assert_served_as_trained(go_render, template, guard, tmp_path, [user, A_LAST])
    assert "<|im_start|>user\nWhat do <think> and </think> mark?<|im_end|>" in r.text
    assert guard.report.content_think == 1 and guard.report.data_think_stripped == 0
    assert ("note", 1) in [(e.what, e.count) for e in guard.report.entries()]


def test_think_tags_in_a_tool_result_are_content(go_render, template, guard, tmp_path):
    messages = [U1, asst("", [{"city": "Paris"}]), tool("<think>cached</think> 21 C"), A_LAST]
    r = assert_served_as_trained(go_render, template, guard, tmp_path, messages, [WEATHER])
    assert "<tool_response>\n<think>cached</think> 21 C\n</tool_response>" in r.text
    assert guard.report.content_think == 1


def test_think_block_inside_an_earlier_reply_is_sent_and_not_trained(go_render, template, guard, tmp_path):
    """ollama removes only a leading think block: this one reaches the model, so training
    renders it too, and keeps it out of the loss (--think strip)."""
    earlier = "Hello! <think>x</think>How can I help?"
    r = assert_served_as_trained(go_render, template, guard, tmp_path,
                                 [U1, asst(earlier), U2, A_LAST])
    assert f"<|im_start|>assistant\n{earlier}{EOS}" in r.text
    trained = "".join(r.text[s:e] for s, e in r.assistant_spans)
    assert trained == f"Hello! How can I help?{EOS}\n{A_LAST['content']}{EOS}\n"


@pytest.mark.parametrize("think", ["strip", "keep"])
def test_leading_think_block_of_an_earlier_reply_goes_as_ollama_removes_it(
        go_render, template, tiny_path, tmp_path, think):
    """Under any --think: ollama's server removes it whatever the client asked."""
    from transformers import AutoTokenizer
    guard = ChatGuard(AutoTokenizer.from_pretrained(tiny_path), str(tiny_path), think=think)
    r = assert_served_as_trained(go_render, template, guard, tmp_path,
                                 [U1, asst("\n<think>x</think>\n\nHello!"), U2, A_LAST])
    assert f"<|im_start|>assistant\nHello!{EOS}" in r.text    # not "\nHello!"
    assert guard.report.history_filtered == 1


def test_data_preview_shows_what_ollamas_filter_drops(guard, tmp_path):
    from fastft.data.preview import guard_removals
    (example,), _ = read(tmp_path, [U1, asst("\n<think>x</think>\n\nHello!"), U2, A_LAST])
    r = guard.render(example)
    (at, text), = guard_removals(guard, example, r.text)
    assert text == "\n<think>x</think>\n\n" and r.text[at:].startswith(f"Hello!{EOS}")


def test_the_last_answer_is_still_stripped(guard, tmp_path):
    (example,), _ = read(tmp_path, [U1, asst("<think>x</think>\n\nHello!")])
    r = guard.render(example)
    assert f"<|im_start|>assistant\nHello!{EOS}" in r.text and guard.report.data_think_stripped == 1


# -- 2. earlier content ollama erases ------------------------------------------------------------

@pytest.mark.parametrize("content", ["\n\n\n", "<"])
def test_erased_content_beside_tool_calls_is_refused_where_ollama_renders_it_two_ways(
        go_render, template, guard, tmp_path, content):
    messages = [U1, asst(content, [{"city": "Paris"}]), tool("sunny"), asst("Sunny."), U2, A_LAST]
    prompts = ollama_prompts(go_render, template, messages, [WEATHER])
    # ollama's own two renderings of messages[1]: as it is before messages[3], erased before [5]
    assert f"<|im_start|>assistant\n{content}\n<tool_call>" in prompts[3]
    assert "<|im_start|>assistant\n<tool_call>" in prompts[5]
    (example,), _ = read(tmp_path, messages, [WEATHER])
    assert guard.render(example) is None
    issue, = guard.report.issues
    assert issue.field == "messages[1].content"
    assert issue.message.startswith(f"ollama's server sends this reply as '' to the turns after "
                                    f"the next user message but as {content!r} to messages[3]")
    assert issue.message.endswith('write its content as ""')


def test_the_fix_it_names_is_served_as_trained(go_render, template, guard, tmp_path):
    messages = [U1, asst("", [{"city": "Paris"}]), tool("sunny"), asst("Sunny."), U2, A_LAST]
    assert_served_as_trained(go_render, template, guard, tmp_path, messages, [WEATHER])


def test_a_reply_ollama_erases_whole_is_refused(go_render, template, guard, tmp_path):
    messages = [U1, asst("<"), U2, A_LAST]
    assert "<|im_start|>assistant\n<|im_end|>" in ollama_prompts(go_render, template, messages)[3]
    (example,), _ = read(tmp_path, messages)
    assert guard.render(example) is None
    issue, = guard.report.issues
    assert issue.field == "messages[1].content" and "trained as an empty answer" in issue.message


# -- 3. numbers in arguments given as a JSON string ---------------------------------------------

SPELLINGS = ["-0", "-0.0", "1E2", "1.50", "1e-7", "0.00001", "2.5e+3", "100000000000000000000000",
             "5e-324", "-1.7976931348623157e308"]


def test_number_spellings_in_string_arguments_are_written_as_ollama_writes_them(
        go_render, template, guard, tmp_path):
    args = "{" + ", ".join(f'"n{k:02d}": {v}' for k, v in enumerate(SPELLINGS)) + "}"
    messages = [U1, asst("", [args]), tool("sunny"), A_LAST]
    r = assert_served_as_trained(go_render, template, guard, tmp_path, messages, [WEATHER])
    assert '"n00": -0, "n01": -0, "n02": 100, ' in r.text


# -- 4. false rejections -------------------------------------------------------------------------

def test_an_emoji_newer_than_pythons_unicode_tables_is_accepted(go_render, template, guard, tmp_path):
    messages = [U1, asst("", [{"city": "Paris \U0001FA75"}]), tool("sunny"), A_LAST]
    assert_served_as_trained(go_render, template, guard, tmp_path, messages, [WEATHER])


def test_go_isprint_is_gos_for_every_code_point(go_render):
    """go_isprint against Go's `printf "%q"` (strconv.Quote) itself, over every code point past
    ASCII (surrogates aside: no UTF-8 string holds one), among them the thousands Python's
    unicodedata leaves unassigned (U+1FA75, ...)."""
    import unicodedata
    text = "".join(chr(c) for c in range(0x80, 0x110000) if not 0xD800 <= c < 0xE000)
    quoted = go_render('{{ range .Messages }}{{ printf "%q" .Content }}{{ end }}',
                       [{"role": "user", "content": text}])
    raw = {ch for ch in quoted if ord(ch) >= 0x80}   # written as they are, not as \u escapes
    wrong = [f"U+{ord(ch):04X}" for ch in text if go_isprint(ch) != (ch in raw)]
    assert wrong == []
    assert sum(unicodedata.category(ch) == "Cn" for ch in raw) > 10_000   # what the old check refused


def test_a_control_character_is_still_refused(tmp_path):
    _, issues = read(tmp_path, [U1, asst("", [{"city": "Paris\x07"}]), tool("sunny"), A_LAST],
                     [WEATHER])
    assert issues == ["messages[1].tool_calls[0].function.arguments.city: holds U+0007 (a control "
                      "character), which ollama's template would write escaped differently from "
                      "training's JSON; remove it"]


@pytest.mark.parametrize("tools", [None, [WEATHER]], ids=["no tools", "tools"])
def test_an_empty_system_message_is_accepted_and_served_as_trained(
        go_render, template, guard, tmp_path, tools):
    messages = [{"role": "system", "content": ""}, U1, A_LAST]
    r = assert_served_as_trained(go_render, template, guard, tmp_path, messages, tools)
    assert r.text.startswith("<|im_start|>system\n")


def test_data_check_counts_think_tags_in_user_content_as_a_note(tmp_path):
    from click.testing import CliRunner

    from fastft.cli import main
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"messages": [
        {"role": "user", "content": "What do <think> and </think> mark?"}, A_LAST]}) + "\n")
    result = CliRunner().invoke(main, ["data", "check", str(path), "--model", "tiny", "--json"])
    assert result.exit_code == 0, result.output
    guard = json.loads(result.output)["guard"]
    assert guard["content_think"] == 1 and guard["issues"] == [] and guard["data_think_stripped"] == 0
