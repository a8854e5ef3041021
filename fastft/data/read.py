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
import codecs
import collections
import hashlib
import json
import os
import re
import shlex
import stat
import unicodedata
from dataclasses import dataclass, field as dc_field
from typing import Any, NamedTuple, Sequence

from ..core.errors import FastftError, quote
from ..core.qwen3 import IM_END, IM_START
from . import tools as _tools

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


# How many issues DataError's message lists before summarising the rest.
MAX_LISTED_ISSUES = 50

# The file is read whole, and its bytes, their decoded text and the parsed records are all held
# at once (several times its size in memory): past 4 GiB that exhausts an ordinary machine
# before any report, so a larger file is refused up front, with this limit named.
MAX_DATA_BYTES = 4 * 1024**3

# Messages in one conversation above which it is reported (a warning, kept): real dialogues
# are far shorter: such a record is usually many conversations joined into one.
MAX_TURNS = 1000


_BOM = b"\xef\xbb\xbf"

# Qwen3's control tokens. The tokenizer turns each into its special id wherever it appears, so
# one inside message content would start or end a turn the data never had (a fake turn).
SPECIAL_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
_SPECIAL = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
# A "\ud800" escape decodes to a lone surrogate: valid JSON, but no UTF-8 encoder (the
# tokenizer's included) can handle it, so it fails far from the file and line.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Records are decoded from strict UTF-8, which holds no surrogate: only a JSON escape makes one.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


# --------------------------------------------------------------------------
# Public data classes
# --------------------------------------------------------------------------


@dataclass
class Example:
    messages: list[dict[str, str]]  # each {"role": ..., "content": str}
    line: int  # 1-based line where this record starts
    format: str  # one of FORMATS
    # Indexes of assistant messages given "weight": 0: rendered as context, carrying no loss.
    no_loss: tuple[int, ...] = ()
    tools: list[dict] | None = None  # the record's tool schemas, canonical (fastft.data.tools)


@dataclass
class DataIssue:
    path: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{shown_path(self.path)}:{self.line}: {self.field}: {self.message}"


@dataclass
class Dataset:
    path: str
    examples: list[Example] = dc_field(default_factory=list)
    issues: list[DataIssue] = dc_field(default_factory=list)  # in file order
    warnings: list[DataIssue] = dc_field(default_factory=list)  # worth a look; the record is kept
    skipped: int = 0  # records dropped because they had issues
    sha256: str = ""  # of the bytes read: what a run records, and what its resume compares

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
        head = f"{shown_path(self.path)}: {n} problem{'s' if n != 1 else ''} in dataset:"
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


def shown_path(path: str) -> str:
    """``path`` as a message shows it: quoted (Python string escapes) when it holds a newline or
    another unprintable character, which would break the one-line ``file:line:`` format."""
    return path if path.isprintable() else repr(path)


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


def _blank(text: str) -> bool:
    """Whether ``text`` shows nothing: only whitespace and invisible format characters
    (Unicode category Cf: U+200B zero width space, U+2060 word joiner, U+FEFF, ...)."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)  # stops at a visible one


def _check_text(value: Any, what: str = "string") -> str | None:
    """Problem with a content-like value, or None when it is a non-empty string."""
    if isinstance(value, str):
        if not value:
            return "empty"
        if _blank(value):
            return ("empty (only whitespace)" if not value.strip() else
                    f"empty (only whitespace and invisible characters, e.g. U+{ord(value.strip()[0]):04X})")
        return None
    hint = ""
    if isinstance(value, list):
        hint = " (content parts / multimodal content are not supported; use a string)"
    return f"expected a non-empty {what}, got {_type_name(value)}{hint}"


class _Msg:
    """A message being built, with the field paths used to report problems."""

    __slots__ = ("role", "content", "role_field", "content_field", "weight", "extra")

    def __init__(self, role: str | None, content: Any, role_field: str, content_field: str,
                 weight: int = 1, extra: dict | None = None):
        self.role = role
        self.content = content
        self.role_field = role_field
        self.content_field = content_field
        self.weight = weight
        self.extra = extra or {}  # tool_calls, or a tool response's name/tool_call_id


def _weight(item: dict, item_field: str, problems: list[tuple[str, str]]) -> int:
    """A message's optional loss weight (axolotl/ShareGPT style): 0 masks the turn, 1 trains it."""
    w = item.get("weight", 1)
    if type(w) in (int, float) and w in (0, 1):  # type(): True/False are not weights
        return int(w)
    shown = quote(w) if type(w) in (int, float) else _type_name(w)
    problems.append((f"{item_field}.weight", f"weight must be 0 or 1, got {shown}"))
    return 1


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
        role = _role_of(item, role_key, role_map, role_field, problems)
        tool = _tools.tool_message(item, role, item_field, content_key, problems)
        if tool is not None:
            msgs.append(_Msg(tool.role, tool.content, role_field, content_field,
                             _weight(item, item_field, problems), tool.extra))
            continue
        if content_key not in item:
            problems.append((content_field, f"missing (keys found: {_keys(item)})"))
            content = None
        else:
            content = item[content_key]
            problem = _check_text(content)
            if problem:
                problems.append((content_field, problem))
        msgs.append(_Msg(role, content, role_field, content_field,
                         _weight(item, item_field, problems)))
    return msgs


def _role_of(item: dict, role_key: str, role_map: dict[str, str] | None, role_field: str,
             problems: list[tuple[str, str]]) -> str | None:
    """The chat role of a message object, or None (and a problem) when it has no valid one."""
    if role_key not in item:
        problems.append((role_field, f"missing (keys found: {_keys(item)})"))
        return None
    raw = item[role_key]
    if not isinstance(raw, str):
        problems.append((role_field, f"expected a string, got {_type_name(raw)}"))
        return None
    roles = role_map if role_map is not None else {r: r for r in ROLES}
    role = roles.get(raw)
    if role is None:
        problems.append((role_field, f"unknown role {quote(raw)}; allowed: {', '.join(roles)}"))
    return role


def _keys(record: dict, listed: int = 10) -> str:
    """The record's keys, quoted; the first ``listed`` of them when there are more."""
    keys = ", ".join(quote(k) for k in list(record)[:listed]) if record else "none"
    return keys if len(record) <= listed else f"{keys}, … ({len(record):,} keys)"


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
            problems.append(
                ("text", f"text outside {IM_START}...{IM_END} blocks at character "
                         f"{pos + (len(stray) - len(stray.lstrip()))}: {quote(stray.strip())}")
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
                (here, f"unknown role {quote(raw_role)}; allowed: {', '.join(ROLES)}")
            )
        if _blank(content):
            problems.append((here, "empty content"))
        msgs.append(_Msg(role, content, here, here))
        block += 1
        pos = end + len(IM_END)
        if pos >= n:
            break
    return msgs


# The keys that make a record one format, for telling a record that holds two (one would be read,
# the other silently dropped). 'prompt' alone is left out: it is a common extra column next to
# 'messages' (UltraChat), so 'completion' marks that format; 'text' is often a pre-rendered copy
# of the same conversation, read only when no other format is there.
_FORMAT_KEYS = {"messages": ("messages",), "conversations": ("conversations",),
                "alpaca": ("instruction", "output"), "prompt_completion": ("completion",)}


def _two_formats(record: dict) -> str | None:
    """Why ``record`` holds more than one format (naming the keys of each), or None."""
    found = ["/".join(repr(k) for k in keys if k in record) for keys in _FORMAT_KEYS.values()]
    first, second, *_ = [*filter(None, found), None, None]
    if second is None:
        return None
    return (f"two formats in one record, {first} and {second}: fastft would read only {first} "
            f"and drop the other; keep one format per record")


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


def _required_text(record: dict, key: str, problems: list[tuple[str, str]]) -> Any:
    """record[key] (None if absent), with a problem noted unless it is usable text."""
    if key not in record:
        problems.append((key, f"missing (keys found: {_keys(record)})"))
        return None
    problem = _check_text(record[key])
    if problem:
        problems.append((key, problem))
    return record[key]


def _alpaca_messages(record: dict, problems: list[tuple[str, str]]) -> list[_Msg]:
    """An Alpaca record (instruction, optional input and system, output) as messages."""
    msgs: list[_Msg] = []
    system = record.get("system")
    if system is not None and not (isinstance(system, str) and _blank(system)):
        problem = _check_text(system)
        if problem:
            problems.append(("system", problem))
        else:
            msgs.append(_Msg("system", system, "system", "system"))
    instruction = _required_text(record, "instruction", problems)
    inp = record.get("input")
    if inp is not None and not isinstance(inp, str):
        problems.append(("input", f"expected a string, got {_type_name(inp)}"))
        inp = None
    output = _required_text(record, "output", problems)
    if isinstance(instruction, str):
        user = instruction + ("\n\n" + inp if inp and inp.strip() else "")
        # The user turn joins instruction and input: name the one a content check would blame.
        in_input = bool(inp and _SPECIAL.search(inp)) and not _SPECIAL.search(instruction)
        where = "input" if in_input else "instruction"
        msgs.append(_Msg("user", user, "instruction", where))
    if isinstance(output, str):
        msgs.append(_Msg("assistant", output, "output", "output"))
    return msgs


def _messages_of(record: dict, fmt: str | None, problems: list[tuple[str, str]]
                 ) -> tuple[list[_Msg] | None, str]:
    """The messages of a record of format ``fmt`` and the field that names its end."""
    if fmt is None:
        problems.append(("<record>", _unknown_format_message(record)))
        return None, ""
    if fmt in ("messages", "conversations"):
        return _role_content_list(record[fmt], fmt, problems, role_map=_tools.MESSAGE_ROLES), fmt
    if fmt == "sharegpt":
        return _role_content_list(
            record["conversations"], "conversations", problems,
            role_key="from", content_key="value",
            role_map={**SHAREGPT_ROLES, **_tools.SHAREGPT_ROLES},
        ), "conversations"
    if fmt == "alpaca":
        return _alpaca_messages(record, problems), "output"
    if fmt == "prompt_completion":
        prompt = _prompt_completion_part(record, "prompt", "user", problems)
        completion = _prompt_completion_part(record, "completion", "assistant", problems)
        if prompt is not None and completion is not None:
            return prompt + completion, "completion"
        return None, "completion"
    text = record["text"]
    if not isinstance(text, str):
        problems.append(("text", f"expected a string, got {_type_name(text)}"))
        return None, "text"
    return _parse_chatml(text, problems), "text"


def _check_special(text: Any, where: str, problems: list[tuple[str, str]]) -> None:
    hit = _SPECIAL.search(text) if isinstance(text, str) else None
    if hit:
        problems.append((where, f"holds the chat-template token {hit.group()!r}: the tokenizer "
                                f"reads it as turn structure (a fake turn); remove it"))


def _check_content(msgs: list[_Msg], fmt: str, end_field: str,
                   problems: list[tuple[str, str]]) -> None:
    """Special tokens inside content, and weights that leave nothing to train."""
    if fmt != "text":  # in ChatML text the markers are the structure, parsed as such
        for m in msgs:
            _check_special(m.content, m.content_field, problems)
            if m.extra.get("tool_calls"):
                _check_special(_tools.render_canonical(m.extra["tool_calls"]),
                               _tools.calls_field(m), problems)
    turns = [m for m in msgs if m.role == "assistant"]
    if turns and all(m.weight == 0 for m in turns):
        problems.append((end_field, "every assistant message has weight 0: nothing to train on"))


def _check_turns(msgs: list[_Msg], end_field: str, problems: list[tuple[str, str]]) -> None:
    """Where tool messages stand (fastft.data.tools), then the user/assistant order of the rest."""
    turns = _tools.conversation_turns(msgs, end_field, problems)
    if turns is not None:
        _check_order(turns, end_field, problems)


def _record_tools(record: dict, fmt: str | None, problems: list[tuple[str, str]],
                  warnings: list[tuple[str, str]]) -> list[dict] | None:
    """The record's tool schemas (canonical), for the formats that carry tool calls."""
    if fmt in ("messages", "conversations", "sharegpt"):
        tools = _tools.record_tools(record, problems, warnings)
        if tools:
            _check_special(_tools.render_canonical(tools), "tools", problems)
        return tools
    if fmt is not None and record.get("tools"):
        problems.append(("tools", "tools are read with messages, conversations or ShareGPT "
                                  "records only"))
    return None


class _Analysis(NamedTuple):
    """What _analyse makes of a decoded record: messages only when ``problems`` is empty."""
    format: str | None
    problems: list[tuple[str, str]]
    messages: Sequence[dict] = ()
    no_loss: tuple[int, ...] = ()  # indexes of the weight-0 assistant messages
    tools: list[dict] | None = None
    warnings: Sequence[tuple[str, str]] = ()


def _analyse(record: Any) -> _Analysis:
    problems: list[tuple[str, str]] = []
    if not isinstance(record, dict):
        problems.append(("<record>", f"expected a JSON object, got {_type_name(record)}"))
        return _Analysis(None, problems)
    two = _two_formats(record)
    if two:
        return _Analysis(None, [("<record>", two)])
    fmt = _classify(record)
    msgs, end_field = _messages_of(record, fmt, problems)
    warnings: list[tuple[str, str]] = []
    tools = _record_tools(record, fmt, problems, warnings)
    if msgs:
        _check_content(msgs, fmt, end_field, problems)
    if problems or not msgs:
        if not problems:  # defensive: no messages but no reason given
            problems.append(("<record>", "no messages"))
        # Order problems are independent of content problems; still report the first.
        if msgs and fmt != "alpaca":
            _check_turns(msgs, end_field, problems)
        return _Analysis(fmt, problems)
    _check_turns(msgs, end_field, problems)
    if problems:
        return _Analysis(fmt, problems)
    _tools.check_calls(msgs, tools, warnings)
    if len(msgs) > MAX_TURNS:
        warnings.append((end_field, f"{len(msgs):,} messages in one conversation (over {MAX_TURNS:,}): "
                                    f"many conversations joined into one? It is slow to check and "
                                    f"to train; split it into conversations"))
    no_loss = tuple(i for i, m in enumerate(msgs) if m.weight == 0 and m.role == "assistant")
    return _Analysis(fmt, problems, [{"role": m.role, "content": m.content, **m.extra} for m in msgs],
                     no_loss, tools, warnings)


def normalise_record(record: dict) -> tuple[str, list[dict]]:
    """Detect ``record``'s format and return ``(format, messages)``.

    Raises RecordError for an invalid record; its ``field``/``message`` is the
    first problem and ``problems`` lists all of them.
    """
    a = _analyse(record)
    if a.problems:
        f, m = a.problems[0]
        raise RecordError(f, m, a.problems)
    assert a.format is not None
    return a.format, a.messages


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


class _DuplicateKeys:
    """object_pairs_hook that notes repeated keys, which json.loads resolves silently (the last
    one wins), so that a record holding two "messages" is reported instead of half-read."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict:
        record = dict(pairs)
        if len(record) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen and key not in self.found:
                    self.found.append(key)
                seen.add(key)
        return record


def _decode(text: str, pos: int | None = None) -> tuple[Any, int, list[str], str | None]:
    """(value, end, duplicate keys, error): the JSON value of a whole line (``pos`` None) or the
    one starting at ``pos``; ``error`` says why there is none."""
    dups = _DuplicateKeys()
    decoder = json.JSONDecoder(object_pairs_hook=dups)
    try:
        if pos is None:
            return decoder.decode(text), len(text), dups.found, None
        value, end = decoder.raw_decode(text, pos)
        return value, end, dups.found, None
    except json.JSONDecodeError as e:
        return None, e.pos, [], _json_error_message(e) if pos is None else e.msg
    except RecursionError:  # json recurses once per level: 100,000 '[' exhaust the stack
        return None, pos or 0, [], "invalid JSON: nested too deeply"
    except ValueError as e:  # int('1' * 5000) is refused (sys.int_info.str_digits_check_threshold)
        return None, pos or 0, [], f"invalid JSON: {str(e).split(';')[0]}"  # not its sys.* advice


def _safe(text: str) -> str:
    """``text`` printable as UTF-8 (lone surrogates written as \\udXXX escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _surrogates(value: Any) -> list[str]:
    """Field paths of the strings (values or keys) in ``value`` that hold a lone surrogate.
    Walked with a stack, not recursion: the value may be nested nearly as deep as json allows."""
    found: list[str] = []
    stack: list[tuple[str, Any]] = [("<record>", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                found.append(path)
        elif isinstance(v, dict):
            for k in reversed(list(v)):
                sub = _safe(k) if path == "<record>" else f"{path}.{_safe(k)}"
                if _SURROGATE.search(k):
                    found.append(f"{sub} (key)")
                stack.append((sub, v[k]))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", v[i]) for i in reversed(range(len(v))))
    return found


class _Collector:
    def __init__(self, path: str, sha256: str):
        self.dataset = Dataset(path=path, sha256=sha256)

    def issue(self, line: int, field: str, message: str) -> None:
        self.dataset.issues.append(DataIssue(self.dataset.path, line, field, message))

    def record(self, record: Any, line: int, dups: list[str], text: str) -> None:
        """Add the decoded ``record`` read from ``text`` (its JSON) at ``line``."""
        problems = [("<json>", f"duplicate key {quote(k)}") for k in dups]
        if _SURROGATE_ESCAPE.search(text):  # walking every string is a third of the reading time
            problems += [(f, "invalid unicode (lone surrogate): not encodable as UTF-8")
                         for f in _surrogates(record)]
        if not problems:
            a = _analyse(record)
            problems = a.problems
        if problems:
            for f, m in problems:
                self.issue(line, f, m)
            self.dataset.skipped += 1
            return
        self.dataset.warnings += [DataIssue(self.dataset.path, line, f, m) for f, m in a.warnings]
        self.dataset.examples.append(Example(a.messages, line, a.format, a.no_loss, a.tools))

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
        record, _, dups, error = _decode(line)
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
    _, end, _, error = _decode(rest, _WS.match(rest).end())
    if error:
        return
    last = number + rest.count("\n", 0, end)
    if last == number:  # whole JSON on its line, then more: not a record over several lines
        return
    out.issue(number, "<json>", f"JSONL is one JSON record per line; this file looks pretty-printed "
                                f"(the record at line {number} spans lines {number}-{last}): write "
                                f"one record per line, e.g. {_command('jq -c .', out.dataset.path, 'oneline')}")
    raise DataError(out.dataset.path, out.dataset.issues)


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
    pos = _WS.match(text, 0).end()
    assert text[pos] == "["
    pos = _WS.match(text, pos + 1).end()
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            if pos >= len(text):
                fail(pos, "expected a value, found end of file")
            record, end, dups, error = _decode(text, pos)
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


def _command(tool: str, path: str, tag: str) -> str:
    """A suggested shell command that writes a converted copy of ``path``: ``tool path >
    path.TAG.ext``, quoted for the shell (a name a message cannot show whole becomes FILE)."""
    path = path if path.isprintable() else "FILE"
    root, ext = os.path.splitext(path)
    return f"{tool} {shlex.quote(path)} > {shlex.quote(f'{root}.{tag}{ext}')}"


# UTF-32 first: the UTF-32LE byte order mark (FF FE 00 00) begins with UTF-16LE's (FF FE).
_WIDE_ENCODINGS = (("UTF-32LE", codecs.BOM_UTF32_LE), ("UTF-32BE", codecs.BOM_UTF32_BE),
                   ("UTF-16LE", codecs.BOM_UTF16_LE), ("UTF-16BE", codecs.BOM_UTF16_BE))


def _wide_encoding(raw: bytes) -> tuple[str, str] | None:
    """(encoding, how it was told) of UTF-16/UTF-32 text, by its byte order mark, else by its
    first character: JSON starts with '{', '[' or a space, which read in the wrong width (or
    from UTF-8 bytes) decodes to another character or to none."""
    for name, bom in _WIDE_ENCODINGS:
        if raw.startswith(bom):
            return name, f"byte order mark {bom.hex(' ').upper()}"
    for name, _ in _WIDE_ENCODINGS:
        try:
            first = raw[:4].decode(name)[:1]
        except UnicodeDecodeError:
            continue
        if first and first in "{[ \t\r\n":
            return name, "no byte order mark"
    return None


def _encoding_problem(path: str, raw: bytes) -> str | None:
    """Why the file is no UTF-8 but UTF-16/UTF-32 text, with the iconv command that converts it."""
    wide = _wide_encoding(raw)
    if wide is None:
        return None
    name, how = wide
    return (f"{name} encoded ({how}); fastft reads UTF-8: convert it, e.g. "
            f"{_command(f'iconv -f {name} -t UTF-8', path, 'utf8')}")


# Files that are not text at all, by their first bytes: one message for the file, rather than
# one "invalid UTF-8"/"invalid JSON" per line of compressed or columnar bytes.
_MAGIC = (
    (b"\x1f\x8b", "a gzip-compressed file; fastft reads uncompressed JSONL or a JSON array: "
                  "decompress it first (gunzip)"),
    (b"PAR1", "a Parquet file; fastft reads JSONL or a JSON array: convert it, e.g. "
              "pandas.read_parquet(path).to_json(out, orient='records', lines=True)"),
    (b"PK\x03\x04", "a zip archive (or .xlsx); fastft reads JSONL or a JSON array: extract "
                    "or export it first"),
)
_TABULAR = {".csv": "a CSV file", ".tsv": "a TSV file", ".parquet": "a Parquet file",
            ".arrow": "an Arrow file", ".xlsx": "an Excel file", ".gz": "a gzip-compressed file"}


def _whole_file_problem(path: str, raw: bytes) -> str | None:
    """Why the file as a whole is no JSONL or JSON array (binary, compressed, tabular), or None."""
    for magic, message in _MAGIC:
        if raw.startswith(magic):
            return message
    encoding = _encoding_problem(path, raw)
    if encoding:
        return encoding
    if b"\x00" in raw[:65536]:  # text never holds NUL; UTF-16/32 without a BOM and binaries do
        return ("a binary file (it holds NUL bytes), or UTF-16/UTF-32 text; fastft reads "
                "UTF-8 JSONL or a JSON array")
    ext = os.path.splitext(path)[1].lower()
    if ext in _TABULAR:
        return (f"{_TABULAR[ext]} (by its name); fastft reads JSONL or a JSON array: "
                f"convert it, e.g. with pandas to_json(orient='records', lines=True)")
    return None


# What a path is when it is no regular file: reading a FIFO with no writer waits forever, and a
# device such as /dev/zero never ends.
_NOT_A_FILE = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
               (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def _size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n:,} bytes"


def _read_bytes(path: str) -> bytes:
    """The bytes of ``path``; DataError when it is no regular file or is over MAX_DATA_BYTES.
    The kind is told by os.stat before opening: opening a FIFO waits for a writer."""
    def refuse(message: str):
        raise DataError(path, [DataIssue(path, 0, "<file>", message)]) from None

    try:
        st = os.stat(path)
        kind = next((what for test, what in _NOT_A_FILE if test(st.st_mode)), None)
        if kind:
            refuse(f"cannot read: {kind}, not a regular file; give a JSONL or JSON file "
                   f"(data from a pipe: save it to a file first)")
        raw = b""
        if st.st_size <= MAX_DATA_BYTES:
            with open(path, "rb") as f:
                raw = f.read(MAX_DATA_BYTES + 1)  # bounded still: the file may grow meanwhile
    except OSError as e:  # missing, unreadable: the user's to fix, not a traceback
        refuse(f"cannot read: {e.strerror}")
    if max(st.st_size, len(raw)) > MAX_DATA_BYTES:
        refuse(f"over the {_size(MAX_DATA_BYTES)} fastft reads (it holds the file in memory): "
               f"train on a part of it")
    return raw


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read every record of ``path`` and collect all problems.

    Bad records become ``issues`` (and count in ``skipped``); this raises
    DataError only when the file cannot be read or, as a whole, parsed (a broken JSON array).
    """
    spath = os.fspath(path)
    raw = _read_bytes(spath)
    problem = _whole_file_problem(spath, raw)
    if problem:
        raise DataError(spath, [DataIssue(spath, 0, "<file>", problem)])
    sha256 = hashlib.sha256(raw).hexdigest()
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    lines, bad_list = _decode_lines(raw)
    bad = dict(bad_list)
    out = _Collector(spath, sha256)
    text = "\n".join(lines)
    first = _WS.match(text, 0).end()
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
