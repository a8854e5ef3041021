"""Read a conversation dataset, normalise every record to typed messages, and report every
problem in the file in one pass: fastft.data.files reads the bytes and JSON,
fastft.data.formats turns each record into messages, fastft.data.validate checks them, and
what passes becomes an `Example` (fastft.data.messages).

Accepted file forms
-------------------
* JSONL: one JSON object per line (blank lines are ignored).
* A JSON array of objects (any file whose first non-space character is ``[``,
  typically ``.json``).  A ``.json`` file that does not start with ``[`` is
  read as JSONL.

Record formats are detected per record (mixing is allowed); fastft.data.formats lists them.
Every record becomes a list of messages where an optional system message comes first, then
user/assistant strictly alternate starting with user, and the last message is from the assistant.

Only the standard library is used here.
"""

from __future__ import annotations

import bisect
import os
from typing import Any, NamedTuple, Sequence

from ..core.errors import quote
from . import tools as _tools
from . import validate
from .files import WS, command, decode_json, read_lines
from .formats import FORMATS, Format, detect, two_formats, unknown_format_message
from .messages import (ROLES, DataError, DataIssue, Dataset, Example, Message, RecordError,
                       shown_path)
from .validate import Problems, type_name

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
    "shown_path",
]


def _record_tools(record: dict, fmt: Format | None, problems: Problems,
                  warnings: Problems) -> list[dict] | None:
    """The record's tool schemas (canonical), for the formats that carry tool calls."""
    if fmt is not None and fmt.tools:
        tools = _tools.record_tools(record, problems, warnings)
        if tools:
            validate.check_special(_tools.render_canonical(tools), "tools", problems)
        return tools
    if fmt is not None and record.get("tools"):
        problems.append(("tools", "tools are read with messages, conversations or ShareGPT "
                                  "records only"))
    return None


class _Analysis(NamedTuple):
    """What _analyse makes of a decoded record: messages only when ``problems`` is empty."""
    format: str | None
    problems: Problems
    messages: Sequence[Message] = ()
    tools: list[dict] | None = None
    warnings: Sequence[tuple[str, str]] = ()


def _transform(record: dict, fmt: Format | None, problems: Problems) -> list[Message] | None:
    """The messages of ``record`` by its format's transform; a problem when it has no format."""
    if fmt is None:
        problems.append(("<record>", unknown_format_message(record)))
        return None
    return fmt.transform(record, problems)


def _analyse(record: Any) -> _Analysis:
    if not isinstance(record, dict):
        return _Analysis(None, [("<record>", f"expected a JSON object, got {type_name(record)}")])
    two = two_formats(record)
    if two:
        return _Analysis(None, [("<record>", two)])
    fmt = detect(record)
    name, end_field = (fmt.name, fmt.end_field) if fmt else (None, "")
    problems: Problems = []
    msgs = _transform(record, fmt, problems)
    warnings: Problems = []
    tools = _record_tools(record, fmt, problems, warnings)
    if msgs:
        validate.check_content(msgs, fmt.markers_parsed, end_field, problems)
    if problems or not msgs:
        if not problems:  # defensive: no messages but no reason given
            problems.append(("<record>", "no messages"))
        # Order problems are independent of content problems; still report the first.
        if msgs and not fmt.fixed_order:
            validate.check_turns(msgs, end_field, problems)
        return _Analysis(name, problems)
    validate.check_turns(msgs, end_field, problems)
    if problems:
        return _Analysis(name, problems)
    _tools.check_calls(msgs, tools, warnings)
    if len(msgs) > validate.MAX_TURNS:
        warnings.append((end_field, f"{len(msgs):,} messages in one conversation (over "
                                    f"{validate.MAX_TURNS:,}): many conversations joined into "
                                    f"one? It is slow to check and to train; split it into "
                                    f"conversations"))
    return _Analysis(name, problems, msgs, tools, warnings)


def normalise_record(record: dict) -> tuple[str, list[Message]]:
    """Detect ``record``'s format and return ``(format, messages)``.

    Raises RecordError for an invalid record; its ``field``/``message`` is the
    first problem and ``problems`` lists all of them.
    """
    a = _analyse(record)
    if a.problems:
        f, m = a.problems[0]
        raise RecordError(f, m, a.problems)
    assert a.format is not None
    return a.format, list(a.messages)


class _Collector:
    def __init__(self, path: str, sha256: str):
        self.dataset = Dataset(path=path, sha256=sha256)

    def issue(self, line: int, field: str, message: str) -> None:
        self.dataset.issues.append(DataIssue(self.dataset.path, line, field, message))

    def record(self, record: Any, line: int, dups: list[str], text: str) -> None:
        """Add the decoded ``record`` read from ``text`` (its JSON) at ``line``."""
        problems = [("<json>", f"duplicate key {quote(k)}") for k in dups]
        if validate.SURROGATE_ESCAPE.search(text):  # walking every string is a third of the reading time
            problems += [(f, "invalid unicode (lone surrogate): not encodable as UTF-8")
                         for f in validate.surrogates(record)]
        if not problems:
            a = _analyse(record)
            problems = a.problems
        if problems:
            for f, m in problems:
                self.issue(line, f, m)
            self.dataset.skipped += 1
            return
        self.dataset.warnings += [DataIssue(self.dataset.path, line, f, m) for f, m in a.warnings]
        self.dataset.examples.append(Example(list(a.messages), line, a.format, a.tools))

    def bad_record(self, line: int, field: str, message: str) -> None:
        self.issue(line, field, message)
        self.dataset.skipped += 1


def _read_jsonl(lines: list[str], bad: dict[int, str], out: _Collector) -> None:
    looked = False  # for a pretty-printed file, at the first line that is no JSON
    for number, line in enumerate(lines, start=1):
        if number in bad:
            out.bad_record(number, "<line>", bad[number])
            continue
        if not line.strip():
            continue
        record, _, dups, error = decode_json(line)
        if error:
            if not looked:
                looked = True
                _refuse_pretty_printed(lines, number, out)
            out.bad_record(number, "<json>", error)
            continue
        out.record(record, number, dups, line)


def _refuse_pretty_printed(lines: list[str], number: int, out: _Collector) -> None:
    """Raise one DataError, instead of an "invalid JSON" per line, when the record that fails at
    line ``number`` is whole JSON spread over several lines (a pretty-printed file)."""
    if not lines[number - 1].lstrip().startswith("{"):
        return
    rest = "\n".join(lines[number - 1:])
    _, end, _, error = decode_json(rest, WS.match(rest).end())
    if error:
        return
    last = number + rest.count("\n", 0, end)
    if last == number:  # whole JSON on its line, then more: not a record over several lines
        return
    out.issue(number, "<json>", f"JSONL is one JSON record per line; this file looks pretty-printed "
                                f"(the record at line {number} spans lines {number}-{last}): write "
                                f"one record per line, e.g. {command('jq -c .', out.dataset.path, 'oneline')}")
    raise DataError(out.dataset.path, out.dataset.issues)


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
    pos = WS.match(text, 0).end()
    assert text[pos] == "["
    pos = WS.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            if pos >= len(text):
                fail(pos, "expected a value, found end of file")
            record, end, dups, error = decode_json(text, pos)
            if error:
                fail(end, error.removeprefix("invalid JSON: "))
            first, last = line_of(pos), line_of(max(end - 1, pos))
            bad_here = [n for n in range(first, last + 1) if n in bad]
            if bad_here:
                for n in bad_here:
                    out.issue(n, "<line>", bad[n])
                    reported.add(n)
                out.dataset.skipped += 1
            else:
                out.record(record, first, dups, text[pos:end])
            pos = WS.match(text, end).end()
            if pos < len(text) and text[pos] == ",":
                pos = WS.match(text, pos + 1).end()
                continue
            if pos < len(text) and text[pos] == "]":
                pos += 1
                break
            fail(pos, "expected ',' or ']' after an array element")
    pos = WS.match(text, pos).end()
    if pos < len(text):
        fail(pos, "extra data after the closing ']'")


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read every record of ``path`` and collect all problems.

    Bad records become ``issues`` (and count in ``skipped``); this raises
    DataError only when the file cannot be read or, as a whole, parsed (a broken JSON array).
    """
    spath = os.fspath(path)
    sha256, lines, bad = read_lines(spath)
    out = _Collector(spath, sha256)
    text = "\n".join(lines)
    first = WS.match(text, 0).end()
    if text[first:first + 1] == "[":
        _read_json_array(text, lines, bad, out)
    else:
        _read_jsonl(lines, bad, out)
    out.dataset.issues.sort(key=lambda i: i.line)  # stable: keeps per-record order
    return out.dataset


def empty_message(dataset: Dataset) -> str:
    """Why a dataset has no examples: every record was skipped for its issues, or it has none."""
    return "no examples: the file is empty" if not dataset.skipped else "no valid examples"


def load_conversations(path: str | os.PathLike, skip_invalid: bool = False) -> Dataset:
    """Read ``path``; raise DataError listing every problem unless ``skip_invalid``,
    in which case bad records are dropped (counted in ``skipped``).  Raises
    DataError as well when no valid example is left."""
    dataset = read_dataset(path)
    if dataset.issues and not skip_invalid:
        raise DataError(dataset.path, dataset.issues)
    if not dataset.examples:
        raise DataError(dataset.path,
                        [*dataset.issues, DataIssue(dataset.path, 1, "<file>", empty_message(dataset))])
    return dataset

