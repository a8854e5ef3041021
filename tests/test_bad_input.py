"""Every malformed input in tests/data/bad/ fails cleanly: `fastft data check` exits non-zero
naming the file (and the line, unless the whole file is wrong) with no traceback, and the
reader raises DataError and nothing else. Property tests feed random JSON and random bytes.

File name prefixes: `file-` a whole-file problem (no line to name); `guard-` a problem only the
chat-template guard sees, so `load_conversations` (which runs no guard) may accept the file.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings, strategies as st

from fastft.data import files as datafiles, validate as datavalidate
from fastft.data import check as datacheck
from fastft.cli import main
from fastft.data.read import DataError, load_conversations, read_dataset
from fastft.core.errors import FastftError

BAD = Path(__file__).resolve().parent / "data" / "bad"
FILES = sorted(p.name for p in BAD.iterdir())


@pytest.fixture(scope="module")
def cached_tokenizer():
    """One tokenizer load for the module: the guard's fixes to it are the same for every file."""
    return functools.lru_cache(maxsize=None)(datacheck.load_tokenizer)


@pytest.fixture
def in_bad(monkeypatch, cached_tokenizer):
    monkeypatch.chdir(BAD)   # short names in the report: rich wraps long paths
    monkeypatch.setattr(datacheck, "load_tokenizer", cached_tokenizer)


def test_there_are_enough_bad_inputs_and_none_is_large():
    assert len(FILES) >= 40
    assert all((BAD / name).stat().st_size <= 200_000 for name in FILES)


@pytest.mark.parametrize("name", FILES)
def test_data_check_fails_cleanly(name, in_bad):
    result = CliRunner().invoke(main, ["data", "check", name, "--model", "tiny"])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, (TypeError, RecursionError))
    assert name in result.output
    assert "ready to train" not in result.output
    if not name.startswith("file-"):
        assert re.search(rf"{re.escape(name)}:[1-9]\d*:", result.output), result.output


@pytest.mark.parametrize("name", FILES)
def test_reader_raises_only_data_error(name):
    try:
        load_conversations(BAD / name)
    except DataError as e:
        assert isinstance(e, FastftError) and e.issues
        assert str(BAD / name) in str(e)
    else:
        assert name.startswith("guard-"), "load_conversations accepted a bad file"


# -- the fixes, one by one, at the reader -------------------------------------------------------

def issues_of(name: str) -> list[str]:
    try:
        return [str(i) for i in read_dataset(BAD / name).issues]
    except DataError as e:
        return [str(i) for i in e.issues]


@pytest.mark.parametrize("name, expected", [
    ("enc-lone-surrogate-content.jsonl", ":2: messages[0].content: invalid unicode (lone surrogate)"),
    ("size-nested-100k-brackets.jsonl", ":2: <json>: invalid JSON: nested too deeply"),
    ("size-array-nested-100k-brackets.json", ":3: <json>: invalid JSON array: nested too deeply"),
    ("size-int-5000-digits.jsonl", ":2: <json>: invalid JSON: Exceeds the limit (4300 digits)"),
    ("json-duplicate-key-messages.jsonl", ":2: <json>: duplicate key 'messages'"),
    ("json-array-duplicate-key.json", ":3: <json>: duplicate key 'messages'"),
    ("tok-im-end-fake-turn-in-user.jsonl", ":2: messages[0].content: holds the chat-template token '<|im_end|>'"),
    ("tok-in-alpaca-input.jsonl", ":2: input: holds the chat-template token '<|im_end|>'"),
    ("tok-in-sharegpt-value.jsonl", ":2: conversations[0].value: holds the chat-template token '<|im_start|>'"),
    ("struct-weight-two.jsonl", ":2: messages[1].weight: weight must be 0 or 1"),
    ("struct-every-weight-zero.jsonl", ":2: messages: every assistant message has weight 0"),
    ("file-parquet-magic.parquet", ":0: <file>: a Parquet file; fastft reads JSONL"),
    ("file-gzip.jsonl.gz", ":0: <file>: a gzip-compressed file"),
    ("file-utf16-le-bom.jsonl", ":0: <file>: UTF-16LE encoded (byte order mark FF FE);"),
    ("file-utf16-no-bom.jsonl", ":0: <file>: UTF-16LE encoded (no byte order mark);"),
    ("file-utf32-le-bom.jsonl", ":0: <file>: UTF-32LE encoded (byte order mark FF FE 00 00);"),
    ("file-utf32-be-bom.jsonl", ":0: <file>: UTF-32BE encoded (byte order mark 00 00 FE FF);"),
    ("file-utf32-le-no-bom.jsonl", "iconv -f UTF-32LE -t UTF-8 "),
    ("file-utf32-be-no-bom.jsonl", "iconv -f UTF-32BE -t UTF-8 "),
    ("file-csv.csv", ":0: <file>: a CSV file"),
    ("json-pretty-printed.jsonl", ":1: <json>: JSONL is one JSON record per line; this file looks "
                                  "pretty-printed (the record at line 1 spans lines 1-12)"),
    ("struct-two-formats-messages-and-alpaca.jsonl",
     ":2: <record>: two formats in one record, 'messages' and 'instruction'/'output'"),
    ("struct-answer-only-invisible-chars.jsonl",
     ":2: messages[1].content: empty (only whitespace and invisible characters, e.g. U+200B)"),
    ("struct-answer-only-invisible-chars.jsonl", ":3: output: empty (only whitespace and invisible"),
    ("size-value-60k-chars.jsonl", f":2: messages[0].role: unknown role {'u' * 80!r}… (60,000 characters);"),
    ("size-value-60k-chars.jsonl", f"keys found: {'k' * 80!r}… (60,000 characters);"),
])
def test_issue_is_reported_with_its_location(name, expected):
    assert any(expected in issue for issue in issues_of(name)), issues_of(name)


GOOD_LINE = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'


@pytest.mark.parametrize("array", [False, True], ids=["jsonl", "array"])
@pytest.mark.parametrize("escape, field", [
    ("\\ud800", "messages[1].content"),
    ("\\uDFFF", "messages[1].content"),
    ("\\uDbFf", "messages[1].content"),
    ("\\\\uD800", None),          # an escaped backslash, then the text "uD800": no surrogate
    ("\\ud83d\\ude00", None),     # a surrogate pair: the emoji, valid
])
def test_lone_surrogate_escapes_are_found_in_both_layouts(tmp_path, array, escape, field):
    bad = GOOD_LINE.replace('"yo"', f'"yo {escape}"')
    p = tmp_path / ("d.json" if array else "d.jsonl")
    p.write_text(f"[{GOOD_LINE},\n{bad}]" if array else f"{GOOD_LINE}\n{bad}\n", encoding="utf-8")
    ds = read_dataset(p)
    if field is None:
        assert ds.issues == [] and len(ds.examples) == 2
    else:
        (issue,) = ds.issues
        assert (issue.line, issue.field) == (2, field) and "lone surrogate" in issue.message


@pytest.mark.skipif(shutil.which("iconv") is None, reason="no iconv here")
@pytest.mark.parametrize("name", [n for n in FILES if n.startswith(("file-utf16", "file-utf32"))])
def test_the_suggested_iconv_command_converts_the_file(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)    # the command names the file as given: its copy here
    shutil.copy(BAD / name, name)
    with pytest.raises(DataError) as err:
        read_dataset(name)
    command = err.value.issues[0].message.split("e.g. ", 1)[1]
    subprocess.run(command, shell=True, check=True)
    converted = read_dataset(shlex.split(command)[-1])
    assert len(converted.examples) >= 1 and not converted.issues


def test_a_long_value_is_quoted_as_a_short_preview(in_bad):
    result = CliRunner().invoke(main, ["data", "check", "size-value-60k-chars.jsonl", "--model", "tiny"])
    assert result.exit_code == 1 and "(60,000 characters)" in result.output
    assert len(result.output) < 3000


def test_the_rest_of_the_file_is_still_checked_after_a_huge_number():
    ds = read_dataset(BAD / "size-int-5000-digits.jsonl")
    assert [e.line for e in ds.examples] == [1, 3]
    assert [i.line for i in ds.issues] == [2, 4]


@pytest.mark.parametrize("name", ["file-empty.jsonl", "file-bom-only.jsonl", "file-blank-lines-only.jsonl"])
def test_empty_file_says_so_and_is_never_ready(name, in_bad):
    result = CliRunner().invoke(main, ["data", "check", name, "--model", "tiny"])
    assert result.exit_code == 1
    assert "no examples: the file is empty" in result.output
    assert "ready" not in result.output


# -- what is no regular file: a FIFO waits for a writer forever, /dev/zero never ends -------------

@pytest.fixture
def hang_guard():
    """A hang (the bug these tests pin) fails the test instead of stalling the suite."""
    def hung(*_):
        raise AssertionError("reading the data hung")
    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/null"])
def test_a_device_is_refused(device, hang_guard):
    result = CliRunner().invoke(main, ["data", "check", device, "--model", "tiny"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"{device}:0: <file>: cannot read: a device, not a regular file" in result.output


def test_a_fifo_with_no_writer_is_refused(tmp_path, hang_guard):
    fifo = tmp_path / "d.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(DataError, match="cannot read: a named pipe \\(FIFO\\), not a regular file"):
        read_dataset(fifo)


def test_a_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(datafiles, "MAX_DATA_BYTES", 100)
    p = tmp_path / "d.jsonl"
    p.write_text(GOOD_LINE * 2)
    with pytest.raises(DataError, match="d.jsonl:0: <file>: over the 100 bytes fastft reads"):
        read_dataset(p)


def test_a_file_name_with_a_newline_keeps_one_problem_per_line(tmp_path, monkeypatch, cached_tokenizer):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datacheck, "load_tokenizer", cached_tokenizer)
    Path("a\nb.jsonl").write_text(GOOD_LINE + "\n" + GOOD_LINE.replace('"user"', '"usr"') + "\n")
    result = CliRunner().invoke(main, ["data", "check", "a\nb.jsonl", "--model", "tiny"])
    assert result.exit_code == 1
    assert "✗ 'a\\nb.jsonl':2: messages[0].role: unknown role 'usr'" in result.output


def test_a_conversation_of_over_max_turns_is_a_warning(tmp_path):
    turns = [{"role": r, "content": "x"} for r in ("user", "assistant")] * (datavalidate.MAX_TURNS // 2 + 1)
    p = tmp_path / "d.jsonl"
    p.write_text(GOOD_LINE + "\n" + json.dumps({"messages": turns}) + "\n")
    ds = read_dataset(p)
    assert len(ds.examples) == 2 and not ds.issues
    (warning,) = ds.warnings
    assert str(warning).startswith(f"{p}:2: messages: {datavalidate.MAX_TURNS + 2:,} messages in one conversation")
    p.write_text(json.dumps({"messages": turns[:datavalidate.MAX_TURNS]}) + "\n")
    assert read_dataset(p).warnings == []


def test_a_binary_file_gets_one_message_not_one_per_line(tmp_path):
    p = tmp_path / "data.parquet"
    p.write_bytes(b"PAR1" + b"\n{x\n" * 500 + b"PAR1")
    with pytest.raises(DataError) as err:
        read_dataset(p)
    (issue,) = err.value.issues
    assert issue.line == 0 and "Parquet" in issue.message


# -- weight 0: a context-only assistant turn carries no loss ------------------------------------

def test_weight_zero_turn_carries_no_loss(tiny_path, tmp_path):
    from transformers import AutoTokenizer

    from fastft.data.template import ChatGuard, tokenize_rendered
    u, a = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}
    rec = {"messages": [u, {**a, "weight": 0}, {"role": "user", "content": "Colour?"},
                        {"role": "assistant", "content": "Blue.", "weight": 1}]}
    p = tmp_path / "w.jsonl"
    p.write_text(json.dumps(rec) + "\n" + json.dumps({"messages": [u, a]}) + "\n")
    weighted, plain = load_conversations(p).examples
    assert weighted.no_loss == (1,) and plain.no_loss == ()
    tok = AutoTokenizer.from_pretrained(tiny_path)
    guard = ChatGuard(tok, str(tiny_path))
    r = guard.render(weighted)
    assert [r.text[s:e] for s, e in r.assistant_spans] == ["Blue.<|im_end|>\n"]
    ex, _ = tokenize_rendered(r, tok, max_seq_len=512)
    trained = tok.decode([t for t in ex.labels if t != -100])
    assert "Blue." in trained and "Hello there." not in trained


# -- properties ----------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)
RECORDS = st.dictionaries(
    st.sampled_from(["messages", "conversations", "instruction", "output", "prompt", "completion",
                     "text", "input", "system"]) | st.text(max_size=8),
    JSON | st.lists(st.dictionaries(st.sampled_from(["role", "content", "from", "value", "weight"]),
                                    JSON | st.sampled_from(["user", "assistant", "system", "human", "gpt"]),
                                    max_size=4), max_size=4),
    max_size=3)
PROPERTY = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@PROPERTY
@given(values=st.lists(JSON | RECORDS, min_size=1, max_size=5))
def test_random_json_lines_raise_only_data_error(tmp_path_factory, values):
    p = tmp_path_factory.mktemp("prop") / "d.jsonl"
    p.write_text("\n".join(json.dumps(v) for v in values) + "\n", encoding="utf-8")
    if not isinstance(values[0], list):  # a leading '[' makes the file a JSON array: may be broken
        read_dataset(p)                  # decodable JSONL: problems are issues, never raised
    try:
        dataset = load_conversations(p)
    except DataError as e:               # names the file, and a line when it is one record's
        assert "d.jsonl" in str(e)
    else:                                # what passes is a conversation training can use
        assert dataset.examples and all(
            any(m.role == "assistant" for m in ex.messages) for ex in dataset.examples)


@PROPERTY
@given(data=st.binary(max_size=300) | st.text(max_size=200).map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_random_bytes_raise_only_data_error(tmp_path_factory, data):
    p = tmp_path_factory.mktemp("prop") / "d.jsonl"
    p.write_bytes(data)
    for read in (read_dataset, load_conversations):
        try:
            read(p)
        except DataError as e:
            assert "d.jsonl" in str(e)


# -- an unclosed <think> under --think strip -------------------------------------------------------

UNCLOSED = ["What is your favorite color?", "<think>They ask about colours, so blue. My favorite color is blue."]


def render_unclosed(policy: str, tiny_path):
    from transformers import AutoTokenizer

    from fastft.data.read import Example
    from fastft.data.template import ChatGuard
    u, a = UNCLOSED
    guard = ChatGuard(AutoTokenizer.from_pretrained(tiny_path), str(tiny_path), think=policy, path="d.jsonl")
    ex = Example([{"role": "user", "content": u}, {"role": "assistant", "content": a}], 3, "messages")
    return guard.render(ex), guard.report.issues


def test_unclosed_think_under_error_is_an_issue(tiny_path):
    r, (issue,) = render_unclosed("error", tiny_path)
    assert r is None and str(issue).startswith("d.jsonl:3: messages[1].content:") and "<think>" in str(issue)


def test_unclosed_think_under_strip_is_an_issue(tiny_path):
    r, issues = render_unclosed("strip", tiny_path)
    assert r is None
    (issue,) = issues
    assert str(issue).startswith("d.jsonl:3: messages[1].content:") and "unclosed <think>" in str(issue)


def test_unclosed_think_under_keep_is_kept(tiny_path):
    r, issues = render_unclosed("keep", tiny_path)
    assert r is not None and not issues and UNCLOSED[1] in r.text
