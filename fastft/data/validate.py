"""What makes a conversation trainable, checked on typed messages whatever format they came
from: text that shows something, roles in order (optional system, then user/assistant from
user, ending with the assistant), no chat-template token inside content, something left to
train, strings UTF-8 can encode. Each problem is a ``(field, message)`` pair naming the record
field it came from (``Message.where``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

from ..core.errors import quote
from . import tools as _tools
from .messages import Message

Problems = list[tuple[str, str]]

# Messages in one conversation above which it is reported (a warning, kept): real dialogues
# are far shorter: such a record is usually many conversations joined into one.
MAX_TURNS = 1000


# Qwen3's control tokens. The tokenizer turns each into its special id wherever it appears, so
# one inside message content would start or end a turn the data never had (a fake turn).
SPECIAL_TOKENS = (
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
)
SPECIAL = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


# A "\ud800" escape decodes to a lone surrogate: valid JSON, but no UTF-8 encoder (the
# tokenizer's included) can handle it, so it fails far from the file and line.
_SURROGATE = re.compile("[\ud800-\udfff]")
# Records are decoded from strict UTF-8, which holds no surrogate: only a JSON escape makes one.
SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


# The JSON names of the types json.loads makes, bool before int (True is an int too).
_TYPE_NAMES = ((type(None), "null"), (bool, "bool"), (int, "int"), (float, "float"),
               (str, "string"), (list, "list"), (dict, "object"))


def type_name(value: Any) -> str:
    """What a message calls ``value``'s type: its JSON name."""
    return next((name for t, name in _TYPE_NAMES if isinstance(value, t)), type(value).__name__)


def blank(text: str) -> bool:
    """Whether ``text`` shows nothing: only whitespace and invisible format characters
    (Unicode category Cf: U+200B zero width space, U+2060 word joiner, U+FEFF, ...)."""
    return all(c.isspace() or unicodedata.category(c) == "Cf" for c in text)  # stops at a visible one


def check_text(value: Any, what: str = "string") -> str | None:
    """Problem with a content-like value, or None when it is a non-empty string."""
    if isinstance(value, str):
        if not value:
            return "empty"
        if blank(value):
            return ("empty (only whitespace)" if not value.strip() else
                    f"empty (only whitespace and invisible characters, e.g. U+{ord(value.strip()[0]):04X})")
        return None
    hint = ""
    if isinstance(value, list):
        hint = " (content parts / multimodal content are not supported; use a string)"
    return f"expected a non-empty {what}, got {type_name(value)}{hint}"


def keys_of(record: dict, listed: int = 10) -> str:
    """The record's keys, quoted; the first ``listed`` of them when there are more."""
    keys = ", ".join(quote(k) for k in list(record)[:listed]) if record else "none"
    return keys if len(record) <= listed else f"{keys}, … ({len(record):,} keys)"


def check_order(msgs: list[Message], end_field: str, problems: Problems) -> None:
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
                    (m.where.role, f"system message is only allowed as the first message "
                                   f"(found at position {i})")
                )
                return
            continue
        if m.role != expected:
            if not seen_turn:
                what = "the conversation must start with a user message (after an optional system message)"
            else:
                what = f"expected {expected} after {'assistant' if expected == 'user' else 'user'}"
            problems.append((m.where.role, f"{what}, got {m.role}"))
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


def check_special(text: Any, where: str, problems: Problems) -> None:
    hit = SPECIAL.search(text) if isinstance(text, str) else None
    if hit:
        problems.append((where, f"holds the chat-template token {hit.group()!r}: the tokenizer "
                                f"reads it as turn structure (a fake turn); remove it"))


def check_content(msgs: list[Message], markers_parsed: bool, end_field: str,
                  problems: Problems) -> None:
    """Special tokens inside content, and weights that leave nothing to train. With
    ``markers_parsed`` (ChatML text) the markers were the structure, parsed as such."""
    if not markers_parsed:
        for m in msgs:
            check_special(m.content, m.where.content, problems)
            if m.tool_calls:
                check_special(_tools.render_canonical(m.tool_calls), _tools.calls_field(m), problems)
    turns = [m for m in msgs if m.role == "assistant"]
    if turns and all(m.weight == 0 for m in turns):
        problems.append((end_field, "every assistant message has weight 0: nothing to train on"))


def check_turns(msgs: list[Message], end_field: str, problems: Problems) -> None:
    """Where tool messages stand (fastft.data.tools), then the user/assistant order of the rest."""
    turns = _tools.conversation_turns(msgs, end_field, problems)
    if turns is not None:
        check_order(turns, end_field, problems)


def _safe(text: str) -> str:
    """``text`` printable as UTF-8 (lone surrogates written as \\udXXX escapes)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def surrogates(value: Any) -> list[str]:
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

