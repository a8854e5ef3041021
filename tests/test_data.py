import json
import pickle
from pathlib import Path

import pytest

from fastft.data.read import (
    FORMATS,
    DataError,
    DataIssue,
    Dataset,
    Example,
    RecordError,
    load_conversations,
    normalise_record,
    read_dataset,
)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"

U = {"role": "user", "content": "Hi"}
A = {"role": "assistant", "content": "Hello!"}
S = {"role": "system", "content": "Be nice."}


def write_jsonl(path, records):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def chat(messages):
    """Typed messages as the chat dicts they render as: what the assertions compare."""
    return [m.to_dict() for m in messages]


def issue_strs(ds_or_err):
    return [str(i) for i in ds_or_err.issues]


# --------------------------------------------------------------------------
# normalise_record: every format gives the exact expected messages
# --------------------------------------------------------------------------


def test_messages_format():
    fmt, msgs = normalise_record({"messages": [S, U, A], "id": 7})
    assert fmt == "messages"
    assert chat(msgs) == [S, U, A]


def test_messages_format_drops_extra_message_keys():
    fmt, msgs = normalise_record(
        {"messages": [{"role": "user", "content": "q", "name": "bob"}, {"role": "assistant", "content": "a", "weight": 1}]}
    )
    assert chat(msgs) == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]


def test_conversations_role_content_format():
    fmt, msgs = normalise_record({"conversations": [U, A, {"role": "user", "content": "More"}, {"role": "assistant", "content": "Sure"}]})
    assert fmt == "conversations"
    assert chat(msgs) == [U, A, {"role": "user", "content": "More"}, {"role": "assistant", "content": "Sure"}]


def test_sharegpt_format_maps_roles():
    fmt, msgs = normalise_record(
        {
            "conversations": [
                {"from": "system", "value": "sys"},
                {"from": "human", "value": "h1"},
                {"from": "gpt", "value": "g1"},
                {"from": "user", "value": "h2"},
                {"from": "model", "value": "g2"},
                {"from": "human", "value": "h3"},
                {"from": "assistant", "value": "g3"},
            ]
        }
    )
    assert fmt == "sharegpt"
    assert chat(msgs) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "h1"},
        {"role": "assistant", "content": "g1"},
        {"role": "user", "content": "h2"},
        {"role": "assistant", "content": "g2"},
        {"role": "user", "content": "h3"},
        {"role": "assistant", "content": "g3"},
    ]


def test_alpaca_with_input_and_system():
    fmt, msgs = normalise_record({"instruction": "Translate", "input": "chat", "output": "cat", "system": "You translate."})
    assert fmt == "alpaca"
    assert chat(msgs) == [
        {"role": "system", "content": "You translate."},
        {"role": "user", "content": "Translate\n\nchat"},
        {"role": "assistant", "content": "cat"},
    ]


@pytest.mark.parametrize("extra", [{}, {"input": ""}, {"input": "   "}, {"input": None}])
def test_alpaca_without_input(extra):
    fmt, msgs = normalise_record({"instruction": "Say hi", "output": "hi", **extra})
    assert fmt == "alpaca"
    assert chat(msgs) == [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"}]


def test_alpaca_wins_over_prerendered_text_column():
    # tatsu-lab/alpaca has instruction/input/output *and* a plain `text` column.
    fmt, msgs = normalise_record({"instruction": "I", "input": "", "output": "O", "text": "Below is an instruction..."})
    assert fmt == "alpaca"
    assert chat(msgs) == [{"role": "user", "content": "I"}, {"role": "assistant", "content": "O"}]


def test_prompt_completion_strings():
    fmt, msgs = normalise_record({"prompt": "2+2?", "completion": "4"})
    assert fmt == "prompt_completion"
    assert chat(msgs) == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]


def test_prompt_completion_conversational_lists():
    fmt, msgs = normalise_record({"prompt": [S, U], "completion": [A]})
    assert fmt == "prompt_completion"
    assert chat(msgs) == [S, U, A]


def test_text_chatml_parsed_back():
    text = (
        "<|im_start|>system\nBe nice.<|im_end|>\n"
        "<|im_start|>user\nHi\nthere<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
    )
    fmt, msgs = normalise_record({"text": text})
    assert fmt == "text"
    assert chat(msgs) == [S, {"role": "user", "content": "Hi\nthere"}, A]


def test_text_without_chatml_markers_is_an_issue():
    with pytest.raises(RecordError) as err:
        normalise_record({"text": "Once upon a time"})
    assert err.value.field == "text"
    assert "<|im_start|>" in err.value.message
    assert "messages" in err.value.message


def test_text_unclosed_chatml_is_an_issue():
    with pytest.raises(RecordError) as err:
        normalise_record({"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"})
    assert err.value.field == "text"
    assert "<|im_end|>" in err.value.message


def test_text_chatml_unknown_role_and_missing_assistant():
    with pytest.raises(RecordError) as err:
        normalise_record({"text": "<|im_start|>tool\nx<|im_end|>"})
    assert "unknown role 'tool'" in err.value.message
    with pytest.raises(RecordError) as err:
        normalise_record({"text": "<|im_start|>user\nHi<|im_end|>"})
    assert err.value.field == "text"
    assert "assistant" in err.value.message


def test_formats_constant():
    assert FORMATS == ("messages", "conversations", "sharegpt", "alpaca", "prompt_completion", "text")


@pytest.mark.parametrize(
    "record, field, words",
    [
        ({"messages": [{"role": "bot", "content": "x"}, A]}, "messages[0].role", ["unknown role 'bot'", "system, user, assistant"]),
        ({"messages": [U, {"role": "assistant", "content": ""}]}, "messages[1].content", ["empty"]),
        ({"messages": [U, {"role": "assistant", "content": "  \n"}]}, "messages[1].content", ["empty"]),
        ({"messages": [U, {"role": "assistant", "content": "\u2060\ufeff"}]}, "messages[1].content", ["empty", "invisible", "U+2060"]),
        ({"messages": [{"role": "user", "content": " \u200b"}, A]}, "messages[0].content", ["empty", "invisible", "U+200B"]),
        ({"messages": [U, A], "output": "O"}, "<record>", ["two formats", "'messages' and 'output'", "read only 'messages'"]),
        ({"conversations": [U, A], "prompt": "p", "completion": "c"}, "<record>", ["two formats", "'conversations' and 'completion'"]),
        ({"instruction": "I", "output": "O", "completion": "c"}, "<record>", ["'instruction'/'output' and 'completion'"]),
        ({"messages": [U, {"role": "assistant", "content": None}]}, "messages[1].content", ["got null"]),
        ({"messages": [U, {"role": "assistant", "content": 42}]}, "messages[1].content", ["got int"]),
        ({"messages": [U, {"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}, "messages[1].content", ["got list"]),
        ({"messages": [U, {"role": "assistant"}]}, "messages[1].content", ["missing"]),
        ({"messages": [{"content": "x"}, A]}, "messages[0].role", ["missing"]),
        ({"messages": [U, "hello"]}, "messages[1]", ["object"]),
        ({"messages": []}, "messages", ["empty"]),
        ({"messages": "hi"}, "messages", ["list", "got string"]),
        ({"messages": [A, U]}, "messages[0].role", ["start with a user", "got assistant"]),
        ({"messages": [U, U, A]}, "messages[1].role", ["expected assistant", "got user"]),
        ({"messages": [U, A, A]}, "messages[2].role", ["expected user", "got assistant"]),
        ({"messages": [U, S, A]}, "messages[1].role", ["system", "first"]),
        ({"messages": [S, U]}, "messages", ["must end with an assistant", "last is user"]),
        ({"messages": [U]}, "messages", ["must end with an assistant"]),
        ({"messages": [S]}, "messages", ["no user/assistant"]),
        ({"messages": [S, S, U, A]}, "messages[1].role", ["system", "first"]),
        ({"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]}, "conversations[1].from", ["unknown role 'bot'", "gpt"]),
        ({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": None}]}, "conversations[1].value", ["got null"]),
        ({"conversations": [{"from": "human", "value": "x"}, {"from": "human", "value": "y"}]}, "conversations[1].from", ["expected assistant"]),
        ({"conversations": [{"from": "human", "value": "x"}]}, "conversations", ["must end with an assistant"]),
        ({"conversations": [U, {"role": "assistant", "content": 1.5}]}, "conversations[1].content", ["got float"]),
        ({"instruction": "I"}, "output", ["missing"]),
        ({"instruction": "I", "output": ""}, "output", ["empty"]),
        ({"instruction": None, "output": "O"}, "instruction", ["got null"]),
        ({"instruction": "I", "input": 3, "output": "O"}, "input", ["got int"]),
        ({"prompt": "p"}, "completion", ["missing"]),
        ({"prompt": "p", "completion": 7}, "completion", ["got int"]),
        ({"prompt": [U], "completion": [{"role": "assistant", "content": ""}]}, "completion[0].content", ["empty"]),
        ({"prompt": [U, A], "completion": [A]}, "completion[0].role", ["expected user"]),
        ({"text": 5}, "text", ["got int"]),
        ({"foo": 1, "bar": 2}, "<record>", ["'foo'", "'bar'", "messages", "conversations", "instruction", "prompt", "text"]),
    ],
)
def test_normalise_record_errors(record, field, words):
    with pytest.raises(RecordError) as err:
        normalise_record(record)
    assert err.value.field == field
    for w in words:
        assert w in err.value.message, (w, err.value.message)


@pytest.mark.parametrize("record", [
    {"messages": [U, A], "prompt": "the first user turn"},    # UltraChat's layout: 'prompt' alone is a column
    {"messages": [U, A], "text": "<|im_start|>user\nx<|im_end|>"},  # a pre-rendered copy of the same
    {"messages": [U, {"role": "assistant", "content": "\u200bBlue"}]},   # visible text after an invisible one
])
def test_records_that_stay_valid(record):
    assert normalise_record(record)[0] == "messages"


def test_record_error_lists_independent_problems():
    with pytest.raises(RecordError) as err:
        normalise_record({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": 3}, {"role": "user", "content": "x"}]})
    fields = [f for f, _ in err.value.problems]
    assert fields == ["messages[0].content", "messages[1].content", "messages", ]


def test_role_order_reports_only_first_offending_message(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"messages": [A, A, U]}])
    ds = read_dataset(p)
    assert issue_strs(ds) == [f"{p}:1: messages[0].role: the conversation must start with a user message "
                              "(after an optional system message), got assistant"]


def test_non_object_record():
    with pytest.raises(RecordError) as err:
        normalise_record(["not", "a", "dict"])
    assert err.value.field == "<record>"
    assert "object" in err.value.message


# --------------------------------------------------------------------------
# read_dataset: JSONL
# --------------------------------------------------------------------------


def test_jsonl_loads_with_lines_and_ignores_blank_lines(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(
        "\n"
        + json.dumps({"messages": [U, A]}) + "\n"
        + "   \n\n"
        + json.dumps({"prompt": "a", "completion": "b"}) + "\r\n"
        + "\n",
        encoding="utf-8",
    )
    ds = read_dataset(p)
    assert isinstance(ds, Dataset)
    assert ds.issues == []
    assert ds.skipped == 0
    assert [(e.line, e.format) for e in ds.examples] == [(2, "messages"), (5, "prompt_completion")]
    assert chat(ds.examples[1].messages) == [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert ds.path == str(p)


def test_utf8_bom_is_stripped(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"messages": [U, A]}).encode() + b"\n")
    ds = read_dataset(p)
    assert ds.issues == []
    assert len(ds.examples) == 1 and ds.examples[0].line == 1


def test_bom_json_array(tmp_path):
    p = tmp_path / "bom.json"
    p.write_bytes(b"\xef\xbb\xbf[" + json.dumps({"messages": [U, A]}).encode() + b"]")
    ds = read_dataset(p)
    assert ds.issues == [] and len(ds.examples) == 1


def test_every_validation_error_with_line_and_field(tmp_path):
    p = write_jsonl(
        tmp_path / "bad.jsonl",
        [
            {"messages": [U, A]},  # 1 ok
            '{"messages": [',  # 2 invalid JSON
            "[1, 2]",  # 3 top level not object
            {"weird": 1},  # 4 unknown format
            {"messages": [{"role": "robot", "content": "x"}, A]},  # 5 unknown role
            {"messages": [U, {"role": "assistant", "content": ""}]},  # 6 empty content
            {"messages": [U, {"role": "assistant", "content": None}]},  # 7 null content
            {"messages": [U, {"role": "assistant", "content": 12}]},  # 8 int content
            {"messages": [U, A, A]},  # 9 role order
            {"messages": [S, U]},  # 10 missing assistant
            {"conversations": [{"from": "human", "value": "x"}, {"from": "gpt"}]},  # 11 sharegpt missing value
            {"instruction": "I", "output": 5},  # 12 alpaca output int
            {"text": "just prose"},  # 13 text without markers
            {"messages": [U, A]},  # 14 ok
        ],
    )
    ds = read_dataset(p)
    got = issue_strs(ds)
    expected_prefixes = [
        f"{p}:2: <json>: invalid JSON",
        f"{p}:3: <record>: expected a JSON object, got list",
        f"{p}:4: <record>: unrecognised record format",
        f"{p}:5: messages[0].role: unknown role 'robot'",
        f"{p}:6: messages[1].content: empty",
        f"{p}:7: messages[1].content: expected a non-empty string, got null",
        f"{p}:8: messages[1].content: expected a non-empty string, got int",
        f"{p}:9: messages[2].role: expected user after assistant, got assistant",
        f"{p}:10: messages: missing assistant turn",
        f"{p}:11: conversations[1].value: missing",
        f"{p}:12: output: expected a non-empty string, got int",
        f"{p}:13: text: no <|im_start|> chat markers",
    ]
    assert len(got) == len(expected_prefixes), got
    for s, prefix in zip(got, expected_prefixes):
        assert s.startswith(prefix), (s, prefix)
    assert [e.line for e in ds.examples] == [1, 14]
    assert ds.skipped == 12
    # unknown format names the keys found and the accepted formats
    assert "'weird'" in got[2] and "messages" in got[2] and "prompt" in got[2]
    # unknown role names the allowed roles
    assert "system, user, assistant" in got[3]
    # invalid JSON gives json's column
    assert "column" in got[0]


def test_multiple_issues_in_one_record_all_reported(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [{"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": []}]}],
    )
    ds = read_dataset(p)
    assert [i.field for i in ds.issues] == ["messages[0].content", "messages[1].content"]
    assert all(i.line == 1 for i in ds.issues)
    assert ds.skipped == 1


def test_undecodable_line_reported_while_neighbours_load(tmp_path):
    good = json.dumps({"messages": [U, A]}).encode()
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(good + b"\n" + b'{"messages": [{"role": "user", "content": "caf\xe9"}]}\n' + good + b"\n")
    ds = read_dataset(p)
    assert [e.line for e in ds.examples] == [1, 3]
    assert len(ds.issues) == 1
    issue = ds.issues[0]
    assert (issue.line, issue.field) == (2, "<line>")
    assert "UTF-8" in issue.message and "byte" in issue.message
    assert str(issue).startswith(f"{p}:2: <line>: ")
    assert ds.skipped == 1


# --------------------------------------------------------------------------
# read_dataset: JSON array
# --------------------------------------------------------------------------


def test_json_array_line_numbers(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(
        "[\n"  # 1
        '  {"messages": [\n'  # 2
        '     {"role": "user", "content": "Hi"},\n'  # 3
        '     {"role": "assistant", "content": "Hello!"}]},\n'  # 4
        '  {"prompt": "a", "completion": "b"},\n'  # 5
        "\n"  # 6
        '  {"messages": [{"role": "user", "content": ""},\n'  # 7
        '                {"role": "assistant", "content": "x"}]}, {"weird": true},\n'  # 8
        '  {"text": "<|im_start|>user\\nq<|im_end|><|im_start|>assistant\\na<|im_end|>"}\n'  # 9
        "]\n",
        encoding="utf-8",
    )
    ds = read_dataset(p)
    assert [(e.line, e.format) for e in ds.examples] == [(2, "messages"), (5, "prompt_completion"), (9, "text")]
    assert chat(ds.examples[0].messages) == [U, A]
    assert chat(ds.examples[2].messages) == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert [(i.line, i.field) for i in ds.issues] == [(7, "messages[0].content"), (8, "<record>")]
    assert ds.skipped == 2


def test_json_array_detected_by_first_char_without_json_suffix(tmp_path):
    p = tmp_path / "d.txt"
    p.write_text('  \n [{"prompt": "a", "completion": "b"}]', encoding="utf-8")
    ds = read_dataset(p)
    assert ds.issues == []
    assert [(e.line, e.format) for e in ds.examples] == [(2, "prompt_completion")]


def test_json_suffix_with_jsonl_content_is_read_as_jsonl(tmp_path):
    p = write_jsonl(tmp_path / "d.json", [{"messages": [U, A]}, {"messages": [U, A]}])
    ds = read_dataset(p)
    assert ds.issues == [] and [e.line for e in ds.examples] == [1, 2]


def test_empty_json_array(tmp_path):
    p = tmp_path / "d.json"
    p.write_text("[ ]\n", encoding="utf-8")
    ds = read_dataset(p)
    assert ds.examples == [] and ds.issues == []


def test_invalid_json_array_reports_one_issue_with_line_and_column(tmp_path):
    p = tmp_path / "d.json"
    p.write_text(
        "[\n"
        '  {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},\n'
        '  {"messages": [{"role": "user" "content": "Hi"}]}\n'
        "]\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError) as err:
        read_dataset(p)
    assert len(err.value.issues) == 1
    issue = err.value.issues[0]
    assert (issue.line, issue.field) == (3, "<json>")
    assert "line 3 column 33" in issue.message  # what json.loads itself reports
    assert "Expecting ','" in issue.message


def test_json_array_missing_comma_between_elements(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[{"prompt": "a", "completion": "b"}\n {"prompt": "a", "completion": "b"}]', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_dataset(p)
    assert [(i.line, i.field) for i in err.value.issues] == [(2, "<json>")]


def test_json_array_unterminated(tmp_path):
    p = tmp_path / "d.json"
    p.write_text('[{"prompt": "a", "completion": "b"},\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_dataset(p)
    assert err.value.issues[-1].field == "<json>"


def test_json_array_undecodable_element_reported_while_others_load(tmp_path):
    p = tmp_path / "d.json"
    p.write_bytes(
        b'[\n{"prompt": "a", "completion": "b"},\n{"prompt": "caf\xe9",\n "completion": "b"},\n{"prompt": "c", "completion": "d"}\n]'
    )
    ds = read_dataset(p)
    assert [e.line for e in ds.examples] == [2, 5]
    assert [(i.line, i.field) for i in ds.issues] == [(3, "<line>")]
    assert ds.skipped == 1


# --------------------------------------------------------------------------
# Mixed formats, formats counter
# --------------------------------------------------------------------------


def test_mixed_format_file(tmp_path):
    chatml = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    p = write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"messages": [U, A]},
            {"conversations": [U, A]},
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
            {"instruction": "Hi", "output": "Hello!"},
            {"prompt": "Hi", "completion": "Hello!"},
            {"text": chatml},
            {"messages": [U, A], "id": "x"},
        ],
    )
    ds = read_dataset(p)
    assert ds.issues == []
    assert [e.format for e in ds.examples] == [
        "messages", "conversations", "sharegpt", "alpaca", "prompt_completion", "text", "messages",
    ]
    for e in ds.examples:
        assert chat(e.messages) == [U, A], e
    assert ds.formats == {
        "messages": 2, "conversations": 1, "sharegpt": 1, "alpaca": 1, "prompt_completion": 1, "text": 1,
    }
    assert ds.formats.most_common(1) == [("messages", 2)]


def test_formats_counts_only_valid_examples(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"messages": [U, A]}, {"messages": [U]}, {"prompt": "a", "completion": "b"}])
    assert read_dataset(p).formats == {"messages": 1, "prompt_completion": 1}


# --------------------------------------------------------------------------
# load_conversations, DataError
# --------------------------------------------------------------------------


def test_load_conversations_raises_with_every_issue(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [{"messages": [U, A]}, "{oops", {"messages": [U, U]}, {"messages": [U, A]}, {"nope": 1}],
    )
    with pytest.raises(DataError) as err:
        load_conversations(p)
    e = err.value
    assert isinstance(e, ValueError)
    assert [(i.line, i.field) for i in e.issues] == [(2, "<json>"), (3, "messages[1].role"), (5, "<record>")]
    text = str(e)
    lines = text.splitlines()
    assert str(p) in lines[0] and "3 problems" in lines[0]
    for issue in e.issues:
        assert str(issue) in text
    # each issue on its own line
    assert sum(1 for line in lines[1:] if line.strip().startswith(f"{p}:")) == 3
    assert len(lines) == 4


def test_load_conversations_skip_invalid_drops_and_counts(tmp_path):
    p = write_jsonl(
        tmp_path / "d.jsonl",
        [{"messages": [U, A]}, "{oops", {"messages": [U, U]}, {"messages": [S, U, A]}, {"nope": 1}],
    )
    ds = load_conversations(p, skip_invalid=True)
    assert [e.line for e in ds.examples] == [1, 4]
    assert chat(ds.examples[1].messages) == [S, U, A]
    assert ds.skipped == 3
    assert len(ds.issues) == 3  # still available for a warning


def test_load_conversations_clean_file(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"messages": [U, A]}])
    ds = load_conversations(p)
    assert len(ds.examples) == 1 and ds.skipped == 0 and ds.issues == []


def test_load_conversations_no_valid_examples_raises_even_when_skipping(tmp_path):
    p = write_jsonl(tmp_path / "d.jsonl", [{"messages": [U]}])
    with pytest.raises(DataError) as err:
        load_conversations(p, skip_invalid=True)
    assert "no valid examples" in str(err.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(DataError, match="no examples"):
        load_conversations(empty)


def test_unreadable_file_is_a_data_error_naming_it(tmp_path):
    for path in (tmp_path / "nope.jsonl", tmp_path):
        with pytest.raises(DataError, match=f"{path}:0: <file>: cannot read"):
            read_dataset(path)
        with pytest.raises(DataError, match="cannot read"):
            load_conversations(path)


def test_data_error_caps_listed_issues(tmp_path):
    issues = [DataIssue("f.jsonl", n, "<json>", "invalid JSON") for n in range(1, 121)]
    text = str(DataError("f.jsonl", issues))
    assert "f.jsonl:50: <json>: invalid JSON" in text
    assert "f.jsonl:51: <json>" not in text
    assert "... and 70 more" in text
    assert "120 problems" in text


def test_data_issue_str():
    assert str(DataIssue("a.jsonl", 3, "messages[2].content", "empty")) == "a.jsonl:3: messages[2].content: empty"


def test_errors_pickle_roundtrip():
    e = DataError("f.jsonl", [DataIssue("f.jsonl", 1, "x", "y")])
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.issues == e.issues
    r = pickle.loads(pickle.dumps(RecordError("a", "b")))
    assert (r.field, r.message) == ("a", "b")


def test_example_dataclass():
    e = Example(messages=[U, A], line=1, format="messages")
    assert chat(e.messages) == [U, A] and e.line == 1 and e.format == "messages"


# --------------------------------------------------------------------------
# Shipped example
# --------------------------------------------------------------------------


def test_favorite_color_example_is_clean():
    path = EXAMPLES_DIR / "favorite_color.jsonl"
    raw = path.read_text(encoding="utf-8")
    assert len(raw.splitlines()) == 100
    ds = read_dataset(path)
    assert ds.issues == []
    assert len(ds.examples) == 100
    assert ds.formats == {"messages": 100}
    finals = {e.messages[-1].content for e in ds.examples}
    assert finals == {"My favorite color is blue."}
    assert len({e.messages[-2].content for e in ds.examples}) >= 30  # varied questions
    assert any(e.messages[0].role == "system" for e in ds.examples)
    assert any(sum(m.role == "user" for m in e.messages) > 1 for e in ds.examples)


# --------------------------------------------------------------------------
# One transform per format, in one table (fastft.data.formats)
# --------------------------------------------------------------------------


def transformed(record):
    """The typed messages a record's format transform makes, with no problem noted."""
    from fastft.data.formats import detect
    problems = []
    msgs = detect(record).transform(record, problems)
    assert problems == []
    return msgs


def test_openai_messages_transform_keeps_tool_calls_and_weights():
    from fastft.data.messages import Message
    calls = [{"type": "function", "function": {"name": "f", "arguments": {"a": 1}}, "id": "c1"}]
    msgs = transformed({"messages": [U, {"role": "assistant", "content": None, "tool_calls": calls,
                                         "weight": 0},
                                     {"role": "tool", "content": "ok", "name": "f", "tool_call_id": "c1"},
                                     A]})
    assert msgs == [Message("user", "Hi"), Message("assistant", "", tool_calls=calls, weight=0),
                    Message("tool", "ok", tool_call_id="c1", name="f"), Message("assistant", "Hello!")]
    assert msgs[1].where.role == "messages[1].role" and not msgs[1].trained and msgs[3].trained


def test_conversations_transform():
    from fastft.data.messages import Message
    assert transformed({"conversations": [S, U, A]}) == [
        Message("system", "Be nice."), Message("user", "Hi"), Message("assistant", "Hello!")]


def test_sharegpt_transform_maps_every_role_including_tool_roles():
    from fastft.data.messages import Message
    msgs = transformed({"conversations": [
        {"from": "human", "value": "weather?"},
        {"from": "function_call", "value": '{"name": "w", "arguments": {}}'},
        {"from": "observation", "value": "sunny"},
        {"from": "gpt", "value": "Sunny."}]})
    assert [m.role for m in msgs] == ["user", "assistant", "tool", "assistant"]
    assert msgs[1].tool_calls == [{"type": "function", "function": {"name": "w", "arguments": {}}}]
    assert msgs[0] == Message("user", "weather?") and msgs[0].where.content == "conversations[0].value"


def test_alpaca_transform_joins_instruction_and_input():
    from fastft.data.messages import Message
    assert transformed({"instruction": "Translate", "input": "chat", "output": "cat", "system": "s"}) == [
        Message("system", "s"), Message("user", "Translate\n\nchat"), Message("assistant", "cat")]


def test_prompt_completion_transform():
    from fastft.data.messages import Message
    assert transformed({"prompt": "2+2?", "completion": "4"}) == [
        Message("user", "2+2?"), Message("assistant", "4")]
    assert transformed({"prompt": [S, U], "completion": [A]}) == [
        Message("system", "Be nice."), Message("user", "Hi"), Message("assistant", "Hello!")]


def test_chatml_text_transform():
    from fastft.data.messages import Message
    text = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n"
    assert transformed({"text": text}) == [Message("user", "Hi"), Message("assistant", "Hello!")]


def test_the_format_table_covers_every_format_data_check_accepts(tmp_path):
    from fastft.data.formats import FORMAT_TABLE, detect
    assert tuple(f.name for f in FORMAT_TABLE) == FORMATS
    records = {"messages": {"messages": [U, A]}, "conversations": {"conversations": [U, A]},
               "sharegpt": {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hey"}]},
               "alpaca": {"instruction": "I", "output": "O"},
               "prompt_completion": {"prompt": "P", "completion": "C"},
               "text": {"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHey<|im_end|>\n"}}
    assert set(records) == set(FORMATS)
    assert {name: detect(r).name for name, r in records.items()} == {n: n for n in records}
    ds = read_dataset(write_jsonl(tmp_path / "all.jsonl", list(records.values())))
    assert not ds.issues and set(ds.formats) == set(FORMATS)


def test_example_no_loss_comes_from_the_message_weights():
    e = Example(messages=[U, {**A, "weight": 0}, U, A], line=1, format="messages")
    assert e.no_loss == (1,) and e.chat()[1] == A


# --------------------------------------------------------------------------
# render -> tokenise -> mask: one function, the same ids and labels as before
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["favorite_color.jsonl", "tool_calls.jsonl"])
def test_encode_all_gives_the_ids_and_labels_of_before(name, tiny_path):
    """tests/data/encode_baseline.json: (line, truncated, sha256 of [ids, labels]) of each
    example, saved from render_all + tokenize_rendered before encode_all existed (cut at 128)."""
    import hashlib
    from transformers import AutoTokenizer
    from fastft.data.template import ChatGuard, encode_all
    baseline = json.loads((Path(__file__).parent / "data" / "encode_baseline.json").read_text())[name]
    guard = ChatGuard(AutoTokenizer.from_pretrained(tiny_path), str(tiny_path), path=name)
    encoded = encode_all(guard, read_dataset(EXAMPLES_DIR / name).examples, 128, strict=True)
    got = [[e.tokens.line, e.truncated, hashlib.sha256(json.dumps(
        [e.tokens.input_ids, e.tokens.labels]).encode()).hexdigest()[:16]] for e in encoded]
    assert got == baseline
    assert all(e.trained == sum(label != -100 for label in e.tokens.labels) for e in encoded)


def test_guard_report_entries_are_typed_and_print_as_before():
    from fastft.data.template import GuardEntry, GuardReport
    r = GuardReport("instruct-2507", template_replaced=True, eos_set="<eos>", pad_set="<none>",
                    empty_think_removed=3, data_think_stripped=2, data_think_kept=0)
    entries = r.entries()
    assert entries[-2:] == [GuardEntry("template think blocks", "removed from 3 examples", 3),
                            GuardEntry("data think blocks", "stripped from 2 examples", 2)]
    assert r.lines() == [
        "model variant: instruct-2507",
        "chat template: replaced with Qwen3 Instruct-2507's (tokenizer shipped another)",
        "EOS: '<eos>' -> '<|im_end|>'",
        "pad: '<none>' -> '<|endoftext|>' (must differ from EOS)",
        "template think blocks: removed from 3 examples",
        "data think blocks: stripped from 2 examples"]
    assert [(e.what, e.count) for e in GuardReport("other", data_think_kept=4).entries()] == [
        ("model variant", None), ("data think blocks", 4)]
    assert GuardReport("other", data_think_kept=4).lines()[-1] == "data think blocks: kept in 4 examples (--think keep)"
