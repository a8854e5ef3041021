"""Read conversation datasets, normalise every record to chat messages, and
report every problem in the file in one pass.

Accepted file forms
-------------------
* JSONL: one JSON object per line (blank lines are ignored).
* A JSON array of objects (any file whose first non-space character is ``[``,
  typically ``.json``).  A ``.json`` file that does not start with ``[`` is
  read as JSONL.

Accepted record formats (detected per record, mixing is allowed)
----------------------------------------------------------------
* ``messages``:          ``{"messages": [{"role", "content"}, ...]}``
* ``conversations``:     ``{"conversations": [{"role", "content"}, ...]}``
* ``sharegpt``:          ``{"conversations": [{"from", "value"}, ...]}``
* ``alpaca``:            ``instruction``, optional ``input``, ``output``,
                         optional ``system``
* ``prompt_completion``: ``prompt`` and ``completion``; each a string or a
                         list of role/content messages (TRL conversational)
* ``text``:              a ChatML rendering
                         (``<|im_start|>role\\n...<|im_end|>``)

Every record becomes a list of ``{"role", "content"}`` dicts where an optional
system message comes first, then user/assistant strictly alternate starting
with user, and the last message is from the assistant.

Only the standard library is used here.
"""

from __future__ import annotations

import bisect
import collections
import json
import os
import re
from dataclasses import dataclass, field as dc_field
from typing import Any

from .errors import FastftError

__all__ = [
    "FORMATS",
    "ROLES",
    "DataError",
    "DataIssue",
    "Dataset",
    "Example",
    "RecordError",
    "load_conversations",
    "normalise_record",
    "read_dataset",
]

FORMATS = ("messages", "conversations", "sharegpt", "alpaca", "prompt_completion", "text")

ROLES = ("system", "user", "assistant")

# ShareGPT "from" values -> chat roles.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
}

IM_START = "<|im_start|>"
IM_END = EOS = "<|im_end|>"   # ChatML's turn end: the EOS a Qwen3 chat model must learn to stop on

# How many issues DataError's message lists before summarising the rest.
MAX_LISTED_ISSUES = 50

_BOM = b"\xef\xbb\xbf"


# --------------------------------------------------------------------------
# Public data classes
# --------------------------------------------------------------------------


@dataclass
class Example:
    messages: list[dict[str, str]]  # each {"role": ..., "content": str}
    line: int  # 1-based line where this record starts
    format: str  # one of FORMATS


@dataclass
class DataIssue:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.field}: {self.message}"


@dataclass
class Dataset:
    path: str
    examples: list[Example] = dc_field(default_factory=list)
    issues: list[DataIssue] = dc_field(default_factory=list)  # in file order
    skipped: int = 0  # records dropped because they had issues

    @property
    def formats(self) -> collections.Counter:
        """Format name -> number of valid examples in that format."""
        return collections.Counter(e.format for e in self.examples)


class DataError(FastftError, ValueError):
    """The dataset has problems; ``issues`` lists every one of them."""

    def __init__(self, path: str | os.PathLike, issues: list[DataIssue]):
        self.path = os.fspath(path)
        self.issues = list(issues)
        super().__init__(self._render())

    def _render(self) -> str:
        n = len(self.issues)
        head = f"{self.path}: {n} problem{'s' if n != 1 else ''} in dataset:"
        lines = [head]
        lines.extend(f"  {issue}" for issue in self.issues[:MAX_LISTED_ISSUES])
        if n > MAX_LISTED_ISSUES:
            lines.append(f"  ... and {n - MAX_LISTED_ISSUES} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self._render()

    def __reduce__(self):
        return (type(self), (self.path, self.issues))


class RecordError(ValueError):
    """A record is invalid.  ``field``/``message`` describe the first problem;
    ``problems`` holds every ``(field, message)`` found in the record."""

    def __init__(self, field: str, message: str, problems: list[tuple[str, str]] | None = None):
        self.field = field
        self.message = message
        self.problems = list(problems) if problems else [(field, message)]
        super().__init__(f"{field}: {message}")

    def __reduce__(self):
        return (type(self), (self.field, self.message, self.problems))


# --------------------------------------------------------------------------
# Record normalisation
# --------------------------------------------------------------------------


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _check_text(value: Any, what: str = "string") -> str | None:
    """Problem with a content-like value, or None when it is a non-empty string."""
    if isinstance(value, str):
        if not value.strip():
            return "empty" if not value else "empty (only whitespace)"
        return None
    hint = ""
    if isinstance(value, list):
        hint = " (content parts / multimodal content are not supported; use a string)"
    return f"expected a non-empty {what}, got {_type_name(value)}{hint}"


class _Msg:
    """A message being built, with the field paths used to report problems."""

    __slots__ = ("role", "content", "role_field", "content_field")

    def __init__(self, role: str | None, content: Any, role_field: str, content_field: str):
        self.role = role
        self.content = content
        self.role_field = role_field
        self.content_field = content_field


def _role_content_list(
    value: Any,
    key: str,
    problems: list[tuple[str, str]],
    *,
    role_key: str = "role",
    content_key: str = "content",
    role_map: dict[str, str] | None = None,
) -> list[_Msg] | None:
    """Validate a list of message objects under ``key``.

    Returns the messages (roles mapped to chat roles; a role is None when it
    was invalid) or None when ``value`` is not a usable list.
    """
    if not isinstance(value, list):
        problems.append((key, f"expected a list of messages, got {_type_name(value)}"))
        return None
    if not value:
        problems.append((key, "empty list; expected at least a user and an assistant message"))
        return None
    allowed = list(role_map) if role_map is not None else list(ROLES)
    msgs: list[_Msg] = []
    for i, item in enumerate(value):
        item_field = f"{key}[{i}]"
        role_field = f"{item_field}.{role_key}"
        content_field = f"{item_field}.{content_key}"
        if not isinstance(item, dict):
            problems.append(
                (item_field, f"expected an object with {role_key!r} and {content_key!r}, "
                             f"got {_type_name(item)}")
            )
            msgs.append(_Msg(None, None, role_field, content_field))
            continue
        role: str | None = None
        if role_key not in item:
            problems.append((role_field, f"missing (keys found: {_keys(item)})"))
        else:
            raw = item[role_key]
            if not isinstance(raw, str):
                problems.append((role_field, f"expected a string, got {_type_name(raw)}"))
            elif role_map is not None:
                role = role_map.get(raw)
                if role is None:
                    problems.append(
                        (role_field, f"unknown role {raw!r}; allowed: {', '.join(allowed)}")
                    )
            elif raw in ROLES:
                role = raw
            else:
                problems.append((role_field, f"unknown role {raw!r}; allowed: {', '.join(allowed)}"))
        if content_key not in item:
            problems.append((content_field, f"missing (keys found: {_keys(item)})"))
            content = None
        else:
            content = item[content_key]
            problem = _check_text(content)
            if problem:
                problems.append((content_field, problem))
        msgs.append(_Msg(role, content, role_field, content_field))
    return msgs


def _keys(record: dict) -> str:
    return ", ".join(repr(k) for k in record) if record else "none"


def _check_order(msgs: list[_Msg], end_field: str, problems: list[tuple[str, str]]) -> None:
    """Optional system first, then user/assistant alternating from user, ending
    with assistant.  Reports only the first offending message."""
    if not msgs or any(m.role is None for m in msgs):
        return  # role problems were already reported; order is meaningless
    expected = "user"
    seen_turn = False
    for i, m in enumerate(msgs):
        if m.role == "system":
            if i != 0:
                problems.append(
                    (m.role_field, f"system message is only allowed as the first message "
                                   f"(found at position {i})")
                )
                return
            continue
        if m.role != expected:
            if not seen_turn:
                what = "the conversation must start with a user message (after an optional system message)"
            else:
                what = f"expected {expected} after {'assistant' if expected == 'user' else 'user'}"
            problems.append((m.role_field, f"{what}, got {m.role}"))
            return
        seen_turn = True
        expected = "assistant" if expected == "user" else "user"
    last = msgs[-1].role
    if not seen_turn:
        problems.append((end_field, "no user/assistant messages, only a system message"))
    elif last != "assistant":
        problems.append(
            (end_field, f"missing assistant turn: the conversation must end with an "
                        f"assistant message (last is {last})")
        )


def _chatml_block_error(text: str, start: int, head: int, newline: int, end: int,
                        block: int) -> str | None:
    """Why the ChatML block at `start` cannot be parsed, or None."""
    if end < 0:
        return f"message {block} at character {start} has no closing {IM_END}"
    if newline < 0 or newline > end:
        return (f"message {block} at character {start}: expected "
                f"'{IM_START}role\\n' followed by the content")
    nested = text.find(IM_START, head, end)
    if nested >= 0:
        return (f"message {block} at character {start} has no closing {IM_END} "
                f"before the next {IM_START} (character {nested})")
    return None


def _parse_chatml(text: str, problems: list[tuple[str, str]]) -> list[_Msg] | None:
    """Parse a ChatML rendering back into messages."""
    if IM_START not in text:
        problems.append(
            ("text", f"no {IM_START} chat markers: fastft trains chat models; "
                     f"give messages instead")
        )
        return None
    msgs: list[_Msg] = []
    pos = 0
    block = 0
    n = len(text)
    while True:
        start = text.find(IM_START, pos)
        stray = text[pos:] if start < 0 else text[pos:start]
        if stray.strip():
            snippet = stray.strip()
            if len(snippet) > 40:
                snippet = snippet[:37] + "..."
            problems.append(
                ("text", f"text outside {IM_START}...{IM_END} blocks at character "
                         f"{pos + (len(stray) - len(stray.lstrip()))}: {snippet!r}")
            )
            return None
        if start < 0:
            break
        head = start + len(IM_START)
        newline = text.find("\n", head)
        end = text.find(IM_END, head)
        broken = _chatml_block_error(text, start, head, newline, end, block)
        if broken:
            problems.append(("text", broken))
            return None
        raw_role = text[head:newline].strip()
        content = text[newline + 1:end]
        here = f"text (message {block})"
        role: str | None = raw_role if raw_role in ROLES else None
        if role is None:
            problems.append(
                (here, f"unknown role {raw_role!r}; allowed: {', '.join(ROLES)}")
            )
        if not content.strip():
            problems.append((here, "empty content"))
        msgs.append(_Msg(role, content, here, here))
        block += 1
        pos = end + len(IM_END)
        if pos >= n:
            break
    return msgs


def _classify(record: dict) -> str | None:
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        convs = record["conversations"]
        if isinstance(convs, list):
            for item in convs:
                if isinstance(item, dict) and ("from" in item or "value" in item):
                    return "sharegpt"
        return "conversations"
    if "instruction" in record or "output" in record:
        return "alpaca"
    if "prompt" in record or "completion" in record:
        return "prompt_completion"
    if "text" in record:
        return "text"
    return None


def _unknown_format_message(record: dict) -> str:
    hint = ""
    if "chosen" in record or "rejected" in record:
        hint = " (this looks like a preference dataset; fastft does supervised fine-tuning)"
    return (
        f"unrecognised record format{hint}: keys found: {_keys(record)}; expected one of: "
        "'messages' (role/content list), 'conversations' (role/content or ShareGPT from/value), "
        "'instruction'/'input'/'output' (alpaca), 'prompt'/'completion', "
        "'text' (ChatML rendering)"
    )


def _prompt_completion_part(
    record: dict, key: str, default_role: str, problems: list[tuple[str, str]]
) -> list[_Msg] | None:
    if key not in record:
        problems.append((key, "missing"))
        return None
    value = record[key]
    if isinstance(value, list):
        return _role_content_list(value, key, problems)
    problem = _check_text(value, "string or list of messages")
    if problem:
        problems.append((key, problem))
        return None
    return [_Msg(default_role, value, key, key)]


def _alpaca_messages(record: dict, problems: list[tuple[str, str]]) -> list[_Msg]:
    """An Alpaca record (instruction, optional input and system, output) as messages."""
    msgs: list[_Msg] = []
    system = record.get("system")
    if system is not None and not (isinstance(system, str) and not system.strip()):
        problem = _check_text(system)
        if problem:
            problems.append(("system", problem))
        else:
            msgs.append(_Msg("system", system, "system", "system"))
    instruction = record.get("instruction", None)
    if "instruction" not in record:
        problems.append(("instruction", f"missing (keys found: {_keys(record)})"))
    else:
        problem = _check_text(instruction)
        if problem:
            problems.append(("instruction", problem))
    inp = record.get("input")
    if inp is not None and not isinstance(inp, str):
        problems.append(("input", f"expected a string, got {_type_name(inp)}"))
        inp = None
    output = record.get("output")
    if "output" not in record:
        problems.append(("output", f"missing (keys found: {_keys(record)})"))
    else:
        problem = _check_text(output)
        if problem:
            problems.append(("output", problem))
    if isinstance(instruction, str):
        user = instruction + ("\n\n" + inp if inp and inp.strip() else "")
        msgs.append(_Msg("user", user, "instruction", "instruction"))
    if isinstance(output, str):
        msgs.append(_Msg("assistant", output, "output", "output"))
    return msgs


def _analyse(record: Any) -> tuple[str | None, list[dict[str, str]], list[tuple[str, str]]]:
    """Return (format, messages, problems) for a decoded record."""
    problems: list[tuple[str, str]] = []
    if not isinstance(record, dict):
        problems.append(("<record>", f"expected a JSON object, got {_type_name(record)}"))
        return None, [], problems
    fmt = _classify(record)
    msgs: list[_Msg] | None = None
    end_field = ""
    if fmt is None:
        problems.append(("<record>", _unknown_format_message(record)))
    elif fmt in ("messages", "conversations"):
        msgs = _role_content_list(record[fmt], fmt, problems)
        end_field = fmt
    elif fmt == "sharegpt":
        msgs = _role_content_list(
            record["conversations"], "conversations", problems,
            role_key="from", content_key="value", role_map=SHAREGPT_ROLES,
        )
        end_field = "conversations"
    elif fmt == "alpaca":
        msgs = _alpaca_messages(record, problems)
        end_field = "output"
    elif fmt == "prompt_completion":
        prompt = _prompt_completion_part(record, "prompt", "user", problems)
        completion = _prompt_completion_part(record, "completion", "assistant", problems)
        if prompt is not None and completion is not None:
            msgs = prompt + completion
        end_field = "completion"
    elif fmt == "text":
        text = record["text"]
        if not isinstance(text, str):
            problems.append(("text", f"expected a string, got {_type_name(text)}"))
        else:
            msgs = _parse_chatml(text, problems)
        end_field = "text"

    if problems or not msgs:
        if not problems:  # defensive: no messages but no reason given
            problems.append(("<record>", "no messages"))
        # Order problems are independent of content problems; still report the first.
        if msgs and fmt != "alpaca":
            _check_order(msgs, end_field, problems)
        return fmt, [], problems
    _check_order(msgs, end_field, problems)
    if problems:
        return fmt, [], problems
    return fmt, [{"role": m.role, "content": m.content} for m in msgs], problems


def normalise_record(record: dict) -> tuple[str, list[dict]]:
    """Detect ``record``'s format and return ``(format, messages)``.

    Raises RecordError for an invalid record; its ``field``/``message`` is the
    first problem and ``problems`` lists all of them.
    """
    fmt, messages, problems = _analyse(record)
    if problems:
        f, m = problems[0]
        raise RecordError(f, m, problems)
    assert fmt is not None
    return fmt, messages


# --------------------------------------------------------------------------
# File reading
# --------------------------------------------------------------------------


def _decode_lines(raw: bytes) -> tuple[list[str], list[tuple[int, str]]]:
    """Split ``raw`` on newlines and decode each line as UTF-8.

    Returns the decoded lines (undecodable bytes replaced by U+FFFD) and, for
    each undecodable line, ``(line_number, message)``.
    """
    lines: list[str] = []
    bad: list[tuple[int, str]] = []
    offset = 0
    for number, chunk in enumerate(raw.split(b"\n"), start=1):
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError as e:
            bad_bytes = chunk[e.start:e.end]
            bad.append(
                (number, f"invalid UTF-8 at byte {e.start} of the line (byte offset "
                         f"{offset + e.start} in the file): {e.reason} "
                         f"({bad_bytes.hex(' ')!s}); is the file UTF-8 encoded?")
            )
            lines.append(chunk.decode("utf-8", errors="replace"))
        offset += len(chunk) + 1
    return lines, bad


def _json_error_message(e: json.JSONDecodeError, with_line: bool = False) -> str:
    where = f"line {e.lineno} column {e.colno}" if with_line else f"column {e.colno}"
    return f"invalid JSON: {e.msg} ({where})"


class _Collector:
    def __init__(self, path: str):
        self.dataset = Dataset(path=path)

    def issue(self, line: int, field: str, message: str) -> None:
        self.dataset.issues.append(DataIssue(self.dataset.path, line, field, message))

    def record(self, record: Any, line: int) -> None:
        fmt, messages, problems = _analyse(record)
        if problems:
            for f, m in problems:
                self.issue(line, f, m)
            self.dataset.skipped += 1
            return
        self.dataset.examples.append(Example(messages=messages, line=line, format=fmt))

    def bad_record(self, line: int, field: str, message: str) -> None:
        self.issue(line, field, message)
        self.dataset.skipped += 1


def _read_jsonl(lines: list[str], bad: dict[int, str], out: _Collector) -> None:
    for number, line in enumerate(lines, start=1):
        if number in bad:
            out.bad_record(number, "<line>", bad[number])
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            out.bad_record(number, "<json>", _json_error_message(e))
            continue
        out.record(record, number)


_WS = re.compile(r"[ \t\n\r]*")


def _read_json_array(text: str, lines: list[str], bad: dict[int, str], out: _Collector) -> None:
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)

    def line_of(pos: int) -> int:
        return bisect.bisect_right(starts, pos)

    def fail(pos: int, msg: str) -> None:
        """The array itself is broken: nothing after ``pos`` can be read."""
        line = line_of(pos)
        col = pos - starts[line - 1] + 1
        for number in sorted(bad):
            if number not in reported:
                out.issue(number, "<line>", bad[number])
        out.issue(line, "<json>", f"invalid JSON array: {msg} (line {line} column {col})")
        out.dataset.issues.sort(key=lambda i: i.line)
        raise DataError(out.dataset.path, out.dataset.issues)

    reported: set[int] = set()
    decoder = json.JSONDecoder()
    pos = _WS.match(text, 0).end()
    assert text[pos] == "["
    pos = _WS.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            if pos >= len(text):
                fail(pos, "expected a value, found end of file")
            try:
                record, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                fail(e.pos, e.msg)
            first, last = line_of(pos), line_of(max(end - 1, pos))
            bad_here = [n for n in range(first, last + 1) if n in bad]
            if bad_here:
                for n in bad_here:
                    out.issue(n, "<line>", bad[n])
                    reported.add(n)
                out.dataset.skipped += 1
            else:
                out.record(record, first)
            pos = _WS.match(text, end).end()
            if pos < len(text) and text[pos] == ",":
                pos = _WS.match(text, pos + 1).end()
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            fail(pos, "expected ',' or ']' after an array element")
    pos = _WS.match(text, pos).end()
    if pos < len(text):
        fail(pos, "extra data after the closing ']'")


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read every record of ``path`` and collect all problems.

    Bad records become ``issues`` (and count in ``skipped``); this raises
    DataError only when the file cannot be read or, as a whole, parsed (a broken JSON array).
    """
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            raw = f.read()
    except OSError as e:  # missing, a folder, unreadable: the user's to fix, not a traceback
        raise DataError(spath, [DataIssue(spath, 0, "<file>", f"cannot read: {e.strerror}")]) from None
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    lines, bad_list = _decode_lines(raw)
    bad = dict(bad_list)
    out = _Collector(spath)
    text = "\n".join(lines)
    first = _WS.match(text, 0).end()
    if text[first:first + 1] == "[":
        _read_json_array(text, lines, bad, out)
    else:
        _read_jsonl(lines, bad, out)
    out.dataset.issues.sort(key=lambda i: i.line)  # stable: keeps per-record order
    return out.dataset


def load_conversations(path: str | os.PathLike, skip_invalid: bool = False) -> Dataset:
    """Read ``path``; raise DataError listing every problem unless ``skip_invalid``,
    in which case bad records are dropped (counted in ``skipped``).  Raises
    DataError as well when no valid example is left."""
    dataset = read_dataset(path)
    if dataset.issues and not skip_invalid:
        raise DataError(dataset.path, dataset.issues)
    if not dataset.examples:
        issues = list(dataset.issues)
        issues.append(
            DataIssue(dataset.path, 1, "<file>",
                      "no valid examples" if dataset.issues else "no examples (the file is empty)")
        )
        raise DataError(dataset.path, issues)
    return dataset
