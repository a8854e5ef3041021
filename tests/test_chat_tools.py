"""`fastft chat --tools FILE`: the tool schemas offered in the prompt as training renders them,
the raw `<tool_call>` answer on stdout (from the adapter and from the GGUF), the tools file
checked like a record's `tools`; and `fastft eval`'s reference for a tool-call turn.

The slow tests share the tiny model trained once on examples/tool_calls.jsonl (conftest's
`tool_run`, also used by tests/test_tools.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fastft.serve.chat import ChatError, GGUFChat, read_tools
from fastft.cli import main

REPO = Path(__file__).resolve().parent.parent
TOOL_DATA = REPO / "examples" / "tool_calls.jsonl"
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
QUESTION = "What's the weather in Paris?"
RAW_TOOLS = json.loads(TOOL_DATA.read_text().splitlines()[0])["tools"]   # as users write them


def chat_cli(*args, input=None):
    return CliRunner().invoke(main, ["chat", *map(str, args)], input=input, catch_exceptions=False)


@pytest.fixture
def tools_file(tmp_path) -> Path:
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(RAW_TOOLS, indent=2))
    return path


# -- the tools file ----------------------------------------------------------------------------------

def test_a_list_or_an_object_holding_one_reads_as_the_canonical_schemas(tmp_path, tools_file):
    from fastft.data.read import read_dataset

    canonical = read_dataset(TOOL_DATA).examples[0].tools    # what training renders
    assert read_tools(tools_file) == (canonical, [])
    record = tmp_path / "record.json"                         # a data record, or a request body
    record.write_text(TOOL_DATA.read_text().splitlines()[0])
    assert read_tools(record) == (canonical, [])


@pytest.mark.parametrize("text, words", [
    ('[{"type": "function",\n "function": {"name": }}]', ":2: not valid JSON"),
    ('{"model": "x"}', "expected a non-empty JSON list of tool schemas"),
    ("[]", "expected a non-empty JSON list of tool schemas"),
    ('[{"type": "function", "function": {"name": "get weather"}}]',
     "tools[0].function.name: a function name must be"),
    ('[{"type": "function", "function": {"name": "f", "parameters": {"type": "array"}}}]',
     "tools[0].function.parameters.type: parameters must be a JSON schema of type 'object'"),
    ('[{"type": "retrieval"}]', "tools[0].type: only function tools are supported"),
])
def test_a_bad_tools_file_is_one_line_naming_the_file(tmp_path, text, words):
    path = tmp_path / "tools.json"
    path.write_text(text)
    with pytest.raises(ChatError) as e:
        read_tools(path)
    message = str(e.value)
    assert message.startswith(str(path)) and words in message and "\n" not in message
    # Through the CLI: checked before any model is looked for, exit 1 with that line.
    result = chat_cli(tmp_path / "no-such-run", "--tools", path, "-p", "hi")
    assert result.exit_code == 1 and words in " ".join(result.output.split())


def test_a_missing_tools_file(tmp_path):
    with pytest.raises(ChatError, match="cannot read the tools file"):
        read_tools(tmp_path / "nope.json")


def test_fields_the_model_is_not_shown_are_a_warning(tmp_path):
    tools = json.loads(json.dumps(RAW_TOOLS))
    tools[0]["function"]["parameters"]["additionalProperties"] = False
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(tools))
    schemas, warnings = read_tools(path)
    assert "additionalProperties" not in json.dumps(schemas)
    assert len(warnings) == 1 and warnings[0].startswith(f"{path}: tools[0]: ")
    assert "parameters.additionalProperties" in warnings[0]


# -- the tiny tool-calling model answers with the exact call --------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("target", ["run", "export"])
def test_one_shot_prints_the_raw_tool_call(tool_run, tools_file, target):
    run, export, _ = tool_run
    result = chat_cli(run if target == "run" else export, "--tools", tools_file, "-p", QUESTION,
                      "--temperature", "0", "--max-new-tokens", "48")
    assert result.exit_code == 0, result.output
    assert result.stdout == CALL_TEXT + "\n"


@pytest.mark.slow
def test_prompts_with_tools_are_the_training_prompts(tool_run, tools_file):
    """The export's prompt (the template its Modelfile TEMPLATE reproduces) and the lone GGUF's
    (the template embedded in it) offer the tools exactly as the run's guard renders them."""
    from transformers import AutoTokenizer

    from fastft.core.run import RunFolder
    from fastft.data.template import ChatGuard

    run, export, gguf = tool_run
    folder = RunFolder.open(run)
    guard = ChatGuard(AutoTokenizer.from_pretrained(str(folder.adapter)), folder.read().plan.model_path)
    tools, _ = read_tools(tools_file)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    expected = guard.prompt(messages, tools)
    assert "<tools>\n" + json.dumps(tools[0]) + "\n</tools>" in expected
    for chat in (GGUFChat(export), GGUFChat(gguf)):
        chat.tools = tools
        assert chat.prompt(messages) == expected, chat.gguf


@pytest.mark.slow
def test_interactive_prints_the_tool_call(tool_run, tools_file):
    result = chat_cli(tool_run[1], "--tools", tools_file, "--temperature", "0",
                      "--max-new-tokens", "48", input=f"{QUESTION}\n/bye\n")
    assert result.exit_code == 0, result.output
    assert f">>> {CALL_TEXT}\n\n>>> " in result.stdout
    assert "offered tools: get_weather" in result.stderr


# -- eval: a tool-call turn's reference is the call as trained -------------------------------------------

@pytest.fixture(scope="module")
def guard(tiny_path):
    from transformers import AutoTokenizer

    from fastft.data.template import ChatGuard
    return ChatGuard(AutoTokenizer.from_pretrained(tiny_path), str(tiny_path))


def test_eval_reference_of_a_tool_call_turn_is_the_rendered_call(tmp_path, guard):
    from fastft.data.read import read_dataset
    from fastft.serve.evaluate import reference_answer

    second = {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    lines = TOOL_DATA.read_text().splitlines()
    record = json.loads(lines[0])
    record["messages"][1]["content"] = "Checking both."
    record["messages"][1]["tool_calls"].append(second)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record) + "\n" + lines[2] + "\n")
    with_calls, answered = read_dataset(path).examples
    assert reference_answer(guard, with_calls, 1) == (
        "Checking both.\n" + CALL_TEXT + '\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city": "Rome"}}\n</tool_call>')
    assert reference_answer(guard, answered, 1) == CALL_TEXT
    assert reference_answer(guard, answered, 3) == "It's sunny in Paris, 22 °C."   # plain turn


@pytest.mark.slow
def test_eval_samples_the_tool_call(tool_run, tmp_path):
    data = tmp_path / "one.jsonl"       # the first record: a tool-call turn
    data.write_text(TOOL_DATA.read_text().splitlines()[0] + "\n")
    result = CliRunner().invoke(main, ["eval", str(tool_run[0]), str(data), "--samples", "1",
                                       "--max-new-tokens", "48", "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    sample, = json.loads(result.stdout)["samples"]
    assert sample["reference"] == sample["tuned"] == CALL_TEXT
