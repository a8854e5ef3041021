"""Tool calling: the formats read, the problems reported (file:line: field), the loss mask on
tool turns, exact parity of the training text with what ollama renders from the Modelfile
TEMPLATE (by ollama's own code, tests/gotemplate), and the tiny model learning a tool call that
comes out exactly through transformers and through the GGUF in llama.cpp.

Expectations are written from the Qwen3 tool format (the `<tools>` system block, `<tool_call>`
in the assistant turn, `<tool_response>` in a user turn) and from ollama's data contract
(arguments a Go map, schemas Go structs), not from re-running fastft's own renderers.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from fastft.data.read import read_dataset
from fastft.export.modelfile import go_template, render_modelfile
from fastft.core.qwen3 import HYBRID, INSTRUCT_2507, template_text
from fastft.data.template import ChatGuard, tokenize_rendered
from fastft.data.tools import go_json_number
from ollama_contract import chat_case, template_from_modelfile
from test_modelfile import go_render, hf_render  # noqa: F401  (the Go renderer fixture, shared)

REPO = Path(__file__).resolve().parent.parent
TOOL_DATA = REPO / "examples" / "tool_calls.jsonl"
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
U = {"role": "user", "content": "What's the weather in Paris?"}
A = {"role": "assistant", "content": "It's sunny."}


def call(name="get_weather", args=None, **kw):
    return {"type": "function", "function": {"name": name, "arguments": args or {"city": "Paris"}}, **kw}


def asst_calls(*calls, content=None):
    return {"role": "assistant", "content": content, "tool_calls": list(calls)}


def tool(content, **kw):
    return {"role": "tool", "content": content, **kw}


def read(tmp_path, *records):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return read_dataset(path)


def issues(ds) -> list[str]:
    """Each issue as `line: field: message`, without the path."""
    return [f"{i.line}: {i.field}: {i.message}" for i in ds.issues]


def one_issue(tmp_path, record) -> tuple[str, str]:
    ds = read(tmp_path, record)
    assert not ds.examples, "the record should have been rejected"
    assert len(ds.issues) >= 1, ds.issues
    first = ds.issues[0]
    assert str(first).startswith(f"{tmp_path / 'data.jsonl'}:1: {first.field}: ")
    return first.field, first.message


# -- formats -------------------------------------------------------------------------------------

def test_openai_messages_with_tool_calls_tool_responses_and_tools(tmp_path):
    rec = {"messages": [U, asst_calls(call(id="c1")), tool("22 C, sunny", tool_call_id="c1", name="get_weather"), A],
           "tools": [WEATHER]}
    ds = read(tmp_path, rec)
    assert ds.issues == [] and ds.warnings == []
    ex, = ds.examples
    assert ex.format == "messages" and ex.tools == [WEATHER]
    assert ex.chat() == [
        U,
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}, "id": "c1"}]},
        {"role": "tool", "content": "22 C, sunny", "name": "get_weather", "tool_call_id": "c1"},
        A]


def test_arguments_as_a_json_string_read_like_an_object(tmp_path):
    as_object = {"messages": [U, asst_calls(call(args={"unit": "C", "city": "Paris"}))], "tools": [WEATHER]}
    as_string = copy.deepcopy(as_object)
    as_string["messages"][1]["tool_calls"][0]["function"]["arguments"] = '{"unit": "C", "city": "Paris"}'
    a, b = read(tmp_path, as_object, as_string).examples
    assert a.messages == b.messages
    # Canonical: keys sorted, whatever order the data had.
    assert list(a.messages[1].tool_calls[0]["function"]["arguments"]) == ["city", "unit"]


def test_sharegpt_function_call_and_observation_as_llama_factory_writes_them(tmp_path):
    fc = json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})
    sharegpt = {"conversations": [{"from": "human", "value": U["content"]},
                                  {"from": "function_call", "value": fc},
                                  {"from": "observation", "value": "22 C, sunny"},
                                  {"from": "gpt", "value": A["content"]}],
                "tools": json.dumps([WEATHER["function"]])}   # a JSON string of bare functions
    openai = {"messages": [U, asst_calls(call()), tool("22 C, sunny"), A], "tools": [WEATHER]}
    s, o = read(tmp_path, sharegpt, openai).examples
    assert s.format == "sharegpt"
    assert (s.messages, s.tools) == (o.messages, o.tools)


def test_sharegpt_function_call_with_several_calls(tmp_path):
    fc = json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"}},
                     {"name": "get_weather", "arguments": {"city": "Rome"}}])
    rec = {"conversations": [{"from": "human", "value": "Paris and Rome?"},
                             {"from": "function_call", "value": fc},
                             {"from": "observation", "value": "sunny"}, {"from": "observation", "value": "rain"},
                             {"from": "gpt", "value": "Sunny in Paris, rain in Rome."}], "tools": [WEATHER]}
    ex, = read(tmp_path, rec).examples
    cities = [c["function"]["arguments"]["city"] for c in ex.messages[1].tool_calls]
    assert cities == ["Paris", "Rome"] and [m.role for m in ex.messages] == \
        ["user", "assistant", "tool", "tool", "assistant"]


def test_conversations_role_content_and_flat_calls_are_read(tmp_path):
    flat = {"name": "get_weather", "arguments": {"city": "Paris"}}     # no "function" wrapper
    rec = {"conversations": [U, {"role": "assistant", "content": "Checking.", "tool_calls": [flat]},
                             tool("sunny"), A], "tools": [WEATHER]}
    ex, = read(tmp_path, rec).examples
    assert ex.format == "conversations"
    assert ex.messages[1].to_dict() == {"role": "assistant", "content": "Checking.", "tool_calls": [call()]}


def test_a_conversation_may_end_with_the_tool_call(tmp_path):
    ex, = read(tmp_path, {"messages": [U, asst_calls(call())], "tools": [WEATHER]}).examples
    assert ex.messages[-1].tool_calls == [call()]


def test_schemas_become_what_the_template_shows(tmp_path):
    raw = {"type": "function", "function": {
        "name": "search", "strict": True, "parameters": {
            "type": "object", "additionalProperties": False, "required": ["q"],
            "properties": {"q": {"description": "query", "type": ["string"], "default": "x"},
                           "filters": {"type": "object", "properties": {"a": {"type": "string"}}},
                           "tags": {"type": "array", "items": {"type": "string", "enum": ["b", "a"]}},
                           "limit": {"type": ["integer", "null"], "enum": [10, 20.0]}}}}}
    ds = read(tmp_path, {"messages": [U, A], "tools": [raw]})
    ex, = ds.examples
    assert ex.tools == [{"type": "function", "function": {"name": "search", "parameters": {
        "type": "object", "properties": {
            "filters": {"type": "object"},
            "limit": {"type": ["integer", "null"], "enum": [10, 20]},
            "q": {"type": "string", "description": "query"},
            "tags": {"type": "array", "items": {"enum": ["b", "a"], "type": "string"}}},
        "required": ["q"]}}}]
    warning, = ds.warnings
    assert (warning.line, warning.field) == (1, "tools[0]")
    for dropped in ("function.strict", "parameters.additionalProperties",
                    "parameters.properties.q.default", "parameters.properties.filters.properties"):
        assert dropped in warning.message


# -- problems, by file:line: field -------------------------------------------------------------------

@pytest.mark.parametrize("args, words", [
    ([1, 2], "must be a JSON object, got a list"),
    (42, "must be a JSON object, got a number"),
    ("[1, 2]", "must be a JSON object, got a list"),
    ('{"city": ', "the arguments string is not valid JSON"),
    ("Paris", "the arguments string is not valid JSON"),
])
def test_arguments_that_are_not_a_json_object(tmp_path, args, words):
    rec = {"messages": [U, asst_calls({"type": "function", "function": {"name": "get_weather", "arguments": args}})],
           "tools": [WEATHER]}
    field, message = one_issue(tmp_path, rec)
    assert field == "messages[1].tool_calls[0].function.arguments" and words in message


@pytest.mark.parametrize("messages, field, words", [
    ([U, tool("sunny"), A], "messages[1].role", "must follow an assistant message with tool_calls"),
    ([U, A, tool("sunny"), A], "messages[2].role", "must follow an assistant message with tool_calls"),
    ([tool("sunny"), U, A], "messages[0].role", "must follow an assistant message with tool_calls"),
    ([U, asst_calls(call()), U, A], "messages[2].role", "expected tool responses after an assistant message with tool_calls"),
    ([U, asst_calls(call()), tool("sunny"), U, A], "messages[3].role", "expected an assistant message after tool responses"),
    ([U, asst_calls(call()), tool("sunny")], "messages", "last is a tool response"),
    ([U, asst_calls(call(id="a")), tool("sunny", tool_call_id="b"), A], "messages[2].tool_call_id", "matches no call"),
])
def test_tool_messages_out_of_place(tmp_path, messages, field, words):
    got_field, message = one_issue(tmp_path, {"messages": messages, "tools": [WEATHER]})
    assert got_field == field and words in message


def test_sharegpt_observation_without_a_function_call(tmp_path):
    rec = {"conversations": [{"from": "human", "value": "hi"}, {"from": "observation", "value": "x"},
                             {"from": "gpt", "value": "ok"}]}
    field, message = one_issue(tmp_path, rec)
    assert field == "conversations[1].from" and "must follow an assistant message with tool_calls" in message


def test_a_call_to_a_function_not_offered_is_a_warning(tmp_path):
    other = {"messages": [U, asst_calls(call("get_time", {}))], "tools": [WEATHER]}
    none = {"messages": [U, asst_calls(call())]}
    ds = read(tmp_path, other, none)
    assert ds.issues == [] and len(ds.examples) == 2     # kept: a warning, not an error
    w1, w2 = ds.warnings
    assert (w1.line, w1.field) == (1, "messages[1].tool_calls[0].function.name")
    assert "'get_time'" in w1.message and "do not offer" in w1.message
    assert (w2.line, w2.field) == (2, "messages[1].tool_calls[0].function.name")
    assert "has no tools" in w2.message
    assert str(w1).startswith(f"{tmp_path / 'data.jsonl'}:1: messages[1].tool_calls[0].function.name: ")


def test_bad_calls(tmp_path):
    bad = [{"type": "function", "function": {"name": "get weather!", "arguments": {}}},
           {"type": "retrieval", "function": {"name": "f", "arguments": {}}},
           {"type": "function", "function": {"name": "f"}},
           "get_weather(city='Paris')"]
    rec = {"messages": [U, asst_calls(*bad)], "tools": [WEATHER]}
    assert issues(read(tmp_path, rec)) == [
        "1: messages[1].tool_calls[0].function.name: a function name must be 1-64 letters, digits, "
        "'_', '.' or '-', got 'get weather!'",
        "1: messages[1].tool_calls[1].type: only function calls are supported, got 'retrieval'",
        "1: messages[1].tool_calls[2].function.arguments: missing",
        "1: messages[1].tool_calls[3]: expected a tool call object, got a string",
    ]
    # An empty list is no tool call (OpenAI writes `"tool_calls": []`): the content is then required.
    assert one_issue(tmp_path, {"messages": [U, {"role": "assistant", "tool_calls": []}]}) == \
        ("messages[1].content", "missing (keys found: 'role', 'tool_calls')")


@pytest.mark.parametrize("tools, field, words", [
    ({"name": "f"}, "tools", "expected a list of tool schemas, got an object"),
    ("[{", "tools", "the tools string is not valid JSON"),
    (["get_weather"], "tools[0]", "expected an object, got a string"),
    ([{"type": "retrieval"}], "tools[0].type", "only function tools are supported"),
    ([{"type": "function"}], "tools[0].function", "expected an object, got null"),
    ([{"type": "function", "function": {"description": "x"}}], "tools[0].function.name", "function name"),
    ([{"name": "f", "description": 3}], "tools[0].description", "expected a string, got a number"),
    ([{"name": "f", "parameters": "city"}], "tools[0].parameters", "expected an object, got a string"),
    ([{"name": "f", "parameters": {"type": "string"}}], "tools[0].parameters.type", "of type 'object'"),
    ([{"name": "f", "parameters": {"type": "object", "properties": []}}], "tools[0].parameters.properties", "expected an object"),
    ([{"name": "f", "parameters": {"properties": {"a": "string"}}}], "tools[0].parameters.properties.a", "expected an object"),
    ([{"name": "f", "parameters": {"properties": {"a": {"type": "str"}}}}], "tools[0].parameters.properties.a.type", "JSON schema type"),
    ([{"name": "f", "parameters": {"properties": {"a": {"enum": "x"}}}}], "tools[0].parameters.properties.a.enum", "expected a list"),
    ([{"name": "f", "parameters": {"properties": {"a": {"items": ["string"]}}}}], "tools[0].parameters.properties.a.items", "expected an object"),
    ([{"name": "f", "parameters": {"properties": {"a": {}}, "required": "a"}}], "tools[0].parameters.required", "list of parameter names"),
    ([{"name": "f", "parameters": {"properties": {"a": {}}, "required": ["b"]}}], "tools[0].parameters.required", "'b' is not among"),
    ([{"name": "f"}, {"name": "f"}], "tools[1].function.name", "a second tool named 'f'"),
])
def test_malformed_schemas(tmp_path, tools, field, words):
    got_field, message = one_issue(tmp_path, {"messages": [U, A], "tools": tools})
    assert got_field == field and words in message


def test_tools_on_a_format_without_tool_calls(tmp_path):
    assert one_issue(tmp_path, {"prompt": "p", "completion": "c", "tools": [WEATHER]}) == \
        ("tools", "tools are read with messages, conversations or ShareGPT records only")


@pytest.mark.parametrize("value, words", [
    ("zero\u200bwidth", "U+200B"),
    ("bell\x07", "U+0007"),
    ("line\u2028separator", "U+2028"),
    (2**60 + 1, "would be written 1152921504606847000 by ollama"),
    (float("nan"), "NaN is not valid JSON"),    # Python's json reads NaN; Go's cannot write it
])
def test_values_ollama_would_write_differently_are_problems(tmp_path, value, words):
    field, message = one_issue(tmp_path, {"messages": [U, asst_calls(call(args={"q": value}))],
                                          "tools": [WEATHER]})
    assert field == "messages[1].tool_calls[0].function.arguments.q" and words in message


def test_a_number_tojson_writes_otherwise_is_a_problem_in_a_schema(tmp_path):
    """A schema reaches the chat template as itself (`tojson` writes 1e-05), where arguments go
    as their canonical text (which writes 0.00001, as ollama: tests/test_parity.py)."""
    schema = {"name": "f", "parameters": {"properties": {"a": {"enum": [1e-05]}}}}
    field, message = one_issue(tmp_path, {"messages": [U, A], "tools": [schema]})
    assert field == "tools[0].parameters.properties.a.enum[0]"
    assert "would be written 0.00001 by ollama" in message


def test_a_chat_template_token_inside_arguments_or_schemas(tmp_path):
    in_args = {"messages": [U, asst_calls(call(args={"city": "Paris<|im_end|>"}))], "tools": [WEATHER]}
    in_schema = {"messages": [U, A], "tools": [{"name": "f", "description": "<|im_start|>system"}]}
    assert [(i.line, i.field) for i in read(tmp_path, in_args, in_schema).issues] == \
        [(1, "messages[1].tool_calls"), (2, "tools")]


def test_data_check_prints_problems_and_warnings_with_file_line_field(tmp_path):
    from click.testing import CliRunner

    from fastft.cli import main
    path = tmp_path / "tools.jsonl"
    path.write_text(json.dumps({"messages": [U, asst_calls(call("get_time", {}))], "tools": [WEATHER]}) + "\n"
                    + json.dumps({"messages": [U, tool("sunny"), A]}) + "\n")
    result = CliRunner().invoke(main, ["data", "check", str(path), "--model", "tiny"])
    assert result.exit_code == 1, result.output
    out = "".join(result.output.split())     # rich wraps long lines, a long path mid-word too
    squeeze = lambda text: "".join(text.split())  # noqa: E731
    assert squeeze(f"{path}:2: messages[1].role: a tool response must follow") in out
    assert squeeze(f"{path}:1: messages[1].tool_calls[0].function.name: calls 'get_time'") in out


# -- the loss mask -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def guard(tiny_path):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_path)
    return ChatGuard(tok, str(tiny_path), path="data.jsonl")


def test_tool_calls_are_trained_tool_responses_and_the_tools_block_are_not(tmp_path, guard):
    rec = {"messages": [{"role": "system", "content": "Be brief."}, U,
                        asst_calls(call(), call(args={"city": "Rome"}), content="Checking both."),
                        tool("PARIS-SUNNY"), tool("ROME-RAIN"), {"role": "assistant", "content": "Sunny; rain."}],
           "tools": [WEATHER]}
    ex, = read(tmp_path, rec).examples
    r = guard.render(ex)
    assert r is not None and guard.report.issues == []
    trained = [r.text[s:e] for s, e in r.assistant_spans]
    assert trained == [
        'Checking both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call><|im_end|>\n',
        "Sunny; rain.<|im_end|>\n"]
    # The tools block and the tool responses are in the text, outside every span.
    head = r.text[:r.assistant_spans[0][0]]
    assert head.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n") and "<tools>\n" + \
        json.dumps(WEATHER) + "\n</tools>" in head
    assert '<|im_start|>user\n<tool_response>\nPARIS-SUNNY\n</tool_response>\n<tool_response>\n' \
           'ROME-RAIN\n</tool_response><|im_end|>\n<|im_start|>assistant\n' in r.text
    tok, _ = tokenize_rendered(r, guard.tokenizer, max_seq_len=4096)
    call_id, response_id = guard.tokenizer.convert_tokens_to_ids(["<tool_call>", "<tool_response>"])
    trained_ids = [t for t, label in zip(tok.input_ids, tok.labels) if label != -100]
    assert trained_ids.count(call_id) == 2 and response_id not in trained_ids
    assert tok.input_ids.count(response_id) == 2


def test_data_preview_shows_the_mask_on_tool_turns(tmp_path):
    from fastft.data.preview import build_preview
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"messages": [U, asst_calls(call()), tool("SUNNY-22"), A],
                                "tools": [WEATHER]}) + "\n")
    shown, = build_preview(str(path), "tiny", max_seq_len=2048).shown
    trained = "".join(s.text for s in shown.segments if s.trained)
    masked = "".join(s.text for s in shown.segments if not s.trained)
    assert CALL_TEXT in trained and "It's sunny." in trained
    assert "SUNNY-22" in masked and "<tool_response>" in masked and "# Tools" in masked
    assert "SUNNY-22" not in trained and "# Tools" not in trained


# -- one canonical rendering: training text == ollama's prompt ----------------------------------

NESTED_ARGS = {"query": {"filters": [{"field": "price", "op": "<", "value": 100},
                                     {"field": "tags", "op": "in", "value": ["a", "b"]}],
                         "sort": {"by": "date", "desc": True}}, "limit": 10, "page": None}
UNICODE_ARGS = {"city": "Zürich", "note": "你好，世界 👋🏽 café naïve Ελληνικά עברית", "emoji": "🌧️☀️"}
QUOTE_ARGS = {"text": 'She said "hi" \\ then left', "html": "<b>bold</b> & <i>it</i>",
              "multi": "line one\nline two\ttabbed\r\n", "braces": "{{ .Content }} {}", "empty": ""}
NUMBER_ARGS = {"int": 42, "neg": -7, "float": 3.14159, "small": 0.0001, "whole": 2.0,
               "big": 2**53, "huge": 1e20, "exp": 1.5e300, "tiny": 5e-324, "zero": 0, "t": True,
               "f": False, "n": None, "obj": {}, "list": []}
SEARCH = {"type": "function", "function": {
    "name": "search", "description": 'Search the "catalogue" — <fast> & cheap',
    "parameters": {"type": "object", "properties": {
        "query": {"type": "object", "description": "What to look for"},
        "limit": {"type": ["integer", "null"], "description": "Max results", "enum": [10, 20, 50]},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["new", "sale"]}},
        "page": {}},
        "required": ["query"], "additionalProperties": False}}}
NO_PARAMS = {"type": "function", "function": {"name": "get_time"}}
RICH = {"type": "function", "function": {
    "name": "say", "description": "Répète «ceci» — 日本語",
    "parameters": {"type": "object", "properties": {"text": {"type": "string", "description": 'a "quoted"\nline'}},
                   "required": ["text"]}}}
SYSTEM = {"role": "system", "content": "You are a weather bot."}

TOOL_CONVERSATIONS = {
    "one call": ([U, asst_calls(call())], [WEATHER]),
    "call, response, answer, system": ([SYSTEM, U, asst_calls(call()), tool("sunny, 22 C"), A], [WEATHER]),
    "several calls in one turn": (
        [U, asst_calls(call(), call(args={"city": "Rome"}), call("get_time", {})),
         tool("sunny"), tool("rain"), tool("12:00"), A], [WEATHER, NO_PARAMS]),
    "text and a call in one turn": ([U, asst_calls(call(), content="Let me check."), tool("sunny"), A], [WEATHER]),
    "nested objects": ([{"role": "user", "content": "Cheap new items?"}, asst_calls(call("search", NESTED_ARGS)),
                        tool('{"items": []}'), {"role": "assistant", "content": "None."}], [SEARCH]),
    "unicode": ([{"role": "user", "content": "Sag es auf Deutsch: Grüße"}, asst_calls(call("say", UNICODE_ARGS)),
                 tool("ok ✓"), {"role": "assistant", "content": "Erledigt ✓"}], [RICH]),
    "quotes, backslashes, html, newlines": (
        [U, asst_calls(call("say", QUOTE_ARGS)), tool('He said "ok"'), A], [RICH]),
    "numbers, booleans, null, empty containers": ([U, asst_calls(call("search", NUMBER_ARGS)), tool("[]"), A], [SEARCH]),
    "multi-step with a follow-up question": (
        [SYSTEM, U, asst_calls(call()), tool("sunny"), {"role": "assistant", "content": "Sunny."},
         {"role": "user", "content": "And the time there?"}, asst_calls(call("get_time", {})), tool("12:00"),
         asst_calls(call(args={"city": "Paris", "when": "tomorrow"})), tool("rain"),
         {"role": "assistant", "content": "12:00, rain tomorrow."}], [WEATHER, NO_PARAMS]),
    "three tools, no call": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
                             [WEATHER, SEARCH, RICH]),
}


def _as_ollama_request(messages: list[dict]) -> list[dict]:
    """The messages as an OpenAI client sends them and ollama decodes them: string arguments
    parsed into a map (ollama's openai layer), in whatever key order the client wrote."""
    out = []
    for m in messages:
        m = copy.deepcopy(m)
        m["content"] = m.get("content") or ""
        for c in m.get("tool_calls", []):
            if isinstance(c["function"]["arguments"], str):
                c["function"]["arguments"] = json.loads(c["function"]["arguments"])
        out.append(m)
    return out


@pytest.fixture(scope="module")
def tool_examples(tmp_path_factory):
    """Each conversation read through fastft.data.read, as training reads it: name -> Example."""
    path = tmp_path_factory.mktemp("tools") / "conv.jsonl"
    names = list(TOOL_CONVERSATIONS)
    path.write_text("".join(json.dumps({"messages": m, "tools": t}, ensure_ascii=False) + "\n"
                            for m, t in TOOL_CONVERSATIONS.values()), encoding="utf-8")
    ds = read_dataset(path)
    assert ds.issues == [] and len(ds.examples) == len(names)
    return dict(zip(names, ds.examples))


@pytest.mark.parametrize("variant", [INSTRUCT_2507, HYBRID])
def test_go_template_renders_the_training_prompts_of_tool_conversations(go_render, tool_examples, variant):
    """For every assistant turn and after the last one: the prompt ollama renders for the
    client's raw request == the HF template's prompt for fastft's canonical data."""
    jinja = template_text("qwen3_instruct_2507.jinja" if variant == INSTRUCT_2507 else "qwen3.jinja")
    template = template_from_modelfile(
        render_modelfile(name="m", gguf="m.gguf", variant=variant, num_ctx=512).text)
    requests, expected = [], []
    for name, ex in tool_examples.items():
        raw_messages, raw_tools = TOOL_CONVERSATIONS[name]
        cuts = [i for i, m in enumerate(ex.messages) if m.role == "assistant"] + [len(ex.messages)]
        for cut in cuts:
            requests.append((template, _as_ollama_request(raw_messages[:cut]), raw_tools, None))
            expected.append((name, cut, hf_render(jinja, ex.chat()[:cut], tools=ex.tools)))
    assert len(tool_examples) >= 8 and len(requests) >= 30
    for (name, cut, hf), out in zip(expected, go_render.many(requests)):
        assert out == hf, f"{name}, prompt before message {cut}"


def test_the_guard_accepts_every_tool_conversation(guard, tool_examples):
    """The guard's own check: the serving prompt before each assistant turn is a prefix of the
    training text, tools block included."""
    for name, ex in tool_examples.items():
        r = guard.render(ex)
        assert r is not None and guard.report.issues == [], name
        assert len(r.assistant_spans) == sum(m.role == "assistant" for m in ex.messages)


def test_without_the_canonical_form_training_and_ollama_differ(go_render):
    """Why the data is rewritten: raw arguments in the data's key order render differently."""
    jinja = template_text("qwen3_instruct_2507.jinja")
    raw = [U, asst_calls(call(args={"unit": "C", "city": "Paris"})), tool("sunny"), A]
    go = go_render(go_template(INSTRUCT_2507), _as_ollama_request(raw), tools=[WEATHER])
    assert go != hf_render(jinja, raw, tools=[WEATHER])
    assert '"arguments": {"city": "Paris", "unit": "C"}}' in go


def test_go_json_number_is_gos_float64_encoding(go_render):
    values = [0, 1, -1, 2.5, 0.1, 1e-6, 9.99e-7, 1e-7, 1.5e-7, 123456.789, 1e20, 1e21, 1.5e21, 2**53,
              2**60, -3e-10, 5e-324, 1.7976931348623157e308, 1e16, 12345678.9]
    template = ('{{ range .Messages }}{{ range .ToolCalls }}{{ json .Function.Arguments.x }}\n'
                '{{ end }}{{ end }}')
    messages = [{"role": "assistant", "content": "",
                 "tool_calls": [{"function": {"name": "f", "arguments": {"x": v}}} for v in values]}]
    assert go_render(template, messages).splitlines() == [go_json_number(float(v)) for v in values]


def test_ollama_finds_the_tool_call_tag_where_it_looks():
    """ollama's tool-call parser takes the tag from the first text inside the `if` on
    `.ToolCalls` (its tools/template.go): that text must start with <tool_call>."""
    t = go_template(INSTRUCT_2507)
    inside = t.split("{{- if .ToolCalls }}", 1)[1]
    first_text = inside.split("{{- if or $j $m.Content }}", 1)[1].split("{{", 1)[0]
    assert first_text.strip() == "<tool_call>"
    assert "{{- range $j, $c := .ToolCalls }}" in inside.split("<tool_call>")[0]


# -- end to end: the tiny model learns the weather call ---------------------------------------------

def test_the_example_file_reads_clean():
    ds = read_dataset(TOOL_DATA)
    assert ds.issues == [] and ds.warnings == [] and len(ds.examples) >= 30
    assert all(ex.tools and ex.messages[1 if ex.messages[0].role == "user" else 2].tool_calls
               for ex in ds.examples)


@pytest.mark.slow
def test_tiny_model_makes_the_exact_tool_call_in_transformers_and_the_gguf(tool_run, go_render):
    from fastft.serve.chat import Sampling, generate_text, load_run_for_inference
    from fastft.export.llamacpp import llama_generate

    run, _, gguf = tool_run
    raw_tools = [json.loads(line)["tools"] for line in TOOL_DATA.read_text().splitlines()][0]
    tools = read_dataset(TOOL_DATA).examples[0].tools
    messages = [{"role": "user", "content": "What's the weather in Paris?"}]

    model, tokenizer = load_run_for_inference(run)
    prompt = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
    assert generate_text(model, tokenizer, prompt, Sampling.deterministic(48)) == CALL_TEXT
    del model

    modelfile = (gguf.parent / "Modelfile").read_text()
    # The exported Modelfile whole, through ollama's parser, create request and /api/chat path.
    served = go_render.many([chat_case(None, messages, raw_tools, modelfile=modelfile)])[0]
    assert served == go_render(template_from_modelfile(modelfile), messages, tools=raw_tools)
    assert served == prompt
    assert llama_generate(gguf, served, n_tokens=48) == CALL_TEXT
