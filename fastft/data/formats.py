"""One transform per record format (a record -> typed messages), in one table that format
detection and normalisation both read, after torchtune's per-format message transforms
(OpenAIToMessages, ShareGPTToMessages, InputOutputToMessages in torchtune/data/_messages.py).

* ``messages``:          ``{"messages": [{"role", "content"}, ...]}`` (OpenAI, with tool calls)
* ``conversations``:     ``{"conversations": [{"role", "content"}, ...]}``
* ``sharegpt``:          ``{"conversations": [{"from", "value"}, ...]}``
* ``alpaca``:            ``instruction``, optional ``input``, ``output``, optional ``system``
* ``prompt_completion``: ``prompt`` and ``completion``; each a string or a list of role/content
                         messages (TRL conversational)
* ``text``:              a ChatML rendering (``<|im_start|>role\\n...<|im_end|>``)

A transform notes every problem it finds as ``(field, message)`` and returns the messages it
could read (a role None where the role was invalid), or None when nothing usable is there;
fastft.data.validate then checks the conversation whatever its format.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable

from ..core.errors import quote
from ..core.qwen3 import IM_END, IM_START
from . import tools as _tools
from .messages import ROLES, TOOL, Message, Where
from .validate import SPECIAL, Problems, blank, check_text, keys_of, type_name

# Each format's reading roles -> chat roles, the one place they are listed (the order is the
# order an "unknown role" message lists them in).
MESSAGE_ROLES = {"system": "system", "user": "user", "assistant": "assistant", TOOL: TOOL}
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    # LLaMA-Factory's tool roles: a call (read by fastft.data.tools) and the tool's answer.
    _tools.FUNCTION_CALL: _tools.FUNCTION_CALL,
    "observation": TOOL,
    TOOL: TOOL,
}


def _weight(item: dict, item_field: str, problems: Problems) -> int:
    """A message's optional loss weight (axolotl/ShareGPT style): 0 masks the turn, 1 trains it."""
    w = item.get("weight", 1)
    if type(w) in (int, float) and w in (0, 1):  # type(): True/False are not weights
        return int(w)
    shown = quote(w) if type(w) in (int, float) else type_name(w)
    problems.append((f"{item_field}.weight", f"weight must be 0 or 1, got {shown}"))
    return 1


def _role_content_list(
    value: Any,
    key: str,
    problems: Problems,
    *,
    role_key: str = "role",
    content_key: str = "content",
    role_map: dict[str, str] | None = None,
) -> list[Message] | None:
    """Validate a list of message objects under ``key``.

    Returns the messages (roles mapped to chat roles; a role is None when it
    was invalid) or None when ``value`` is not a usable list.
    """
    if not isinstance(value, list):
        problems.append((key, f"expected a list of messages, got {type_name(value)}"))
        return None
    if not value:
        problems.append((key, "empty list; expected at least a user and an assistant message"))
        return None
    msgs: list[Message] = []
    for i, item in enumerate(value):
        item_field = f"{key}[{i}]"
        role_field = f"{item_field}.{role_key}"
        content_field = f"{item_field}.{content_key}"
        if not isinstance(item, dict):
            problems.append(
                (item_field, f"expected an object with {role_key!r} and {content_key!r}, "
                             f"got {type_name(item)}")
            )
            msgs.append(Message(None, None, where=Where(role_field, content_field)))
            continue
        role = _role_of(item, role_key, role_map, role_field, problems)
        tool = _tools.tool_message(item, role, item_field, content_key, problems)
        if tool is not None:
            msgs.append(replace(tool, weight=_weight(item, item_field, problems),
                                where=Where(role_field, content_field)))
            continue
        if content_key not in item:
            problems.append((content_field, f"missing (keys found: {keys_of(item)})"))
            content = None
        else:
            content = item[content_key]
            # An empty (or blank) system message: training's template and ollama's both write
            # an empty system turn (tests/test_parity.py), so it is kept as given.
            problem = None if role == "system" and isinstance(content, str) else check_text(content)
            if problem:
                problems.append((content_field, problem))
        msgs.append(Message(role, content, weight=_weight(item, item_field, problems),
                            where=Where(role_field, content_field)))
    return msgs


def _role_of(item: dict, role_key: str, role_map: dict[str, str] | None, role_field: str,
             problems: Problems) -> str | None:
    """The chat role of a message object, or None (and a problem) when it has no valid one."""
    if role_key not in item:
        problems.append((role_field, f"missing (keys found: {keys_of(item)})"))
        return None
    raw = item[role_key]
    if not isinstance(raw, str):
        problems.append((role_field, f"expected a string, got {type_name(raw)}"))
        return None
    roles = role_map if role_map is not None else {r: r for r in ROLES}
    role = roles.get(raw)
    if role is None:
        problems.append((role_field, f"unknown role {quote(raw)}; allowed: {', '.join(roles)}"))
    return role


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


def _parse_chatml(text: str, problems: Problems) -> list[Message] | None:
    """Parse a ChatML rendering back into messages."""
    if IM_START not in text:
        problems.append(
            ("text", f"no {IM_START} chat markers: fastft trains chat models; "
                     f"give messages instead")
        )
        return None
    msgs: list[Message] = []
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
        if blank(content):
            problems.append((here, "empty content"))
        msgs.append(Message(role, content, where=Where(here, here)))
        block += 1
        pos = end + len(IM_END)
        if pos >= n:
            break
    return msgs


def _prompt_completion_part(
    record: dict, key: str, default_role: str, problems: Problems
) -> list[Message] | None:
    if key not in record:
        problems.append((key, "missing"))
        return None
    value = record[key]
    if isinstance(value, list):
        return _role_content_list(value, key, problems)
    problem = check_text(value, "string or list of messages")
    if problem:
        problems.append((key, problem))
        return None
    return [Message(default_role, value, where=Where(key, key))]


def _required_text(record: dict, key: str, problems: Problems) -> Any:
    """record[key] (None if absent), with a problem noted unless it is usable text."""
    if key not in record:
        problems.append((key, f"missing (keys found: {keys_of(record)})"))
        return None
    problem = check_text(record[key])
    if problem:
        problems.append((key, problem))
    return record[key]


def alpaca_messages(record: dict, problems: Problems) -> list[Message]:
    """An Alpaca record (instruction, optional input and system, output) as messages."""
    msgs: list[Message] = []
    system = record.get("system")
    if system is not None and not (isinstance(system, str) and blank(system)):
        problem = check_text(system)
        if problem:
            problems.append(("system", problem))
        else:
            msgs.append(Message("system", system, where=Where("system", "system")))
    instruction = _required_text(record, "instruction", problems)
    inp = record.get("input")
    if inp is not None and not isinstance(inp, str):
        problems.append(("input", f"expected a string, got {type_name(inp)}"))
        inp = None
    output = _required_text(record, "output", problems)
    if isinstance(instruction, str):
        user = instruction + ("\n\n" + inp if inp and inp.strip() else "")
        # The user turn joins instruction and input: name the one a content check would blame.
        in_input = bool(inp and SPECIAL.search(inp)) and not SPECIAL.search(instruction)
        where = "input" if in_input else "instruction"
        msgs.append(Message("user", user, where=Where("instruction", where)))
    if isinstance(output, str):
        msgs.append(Message("assistant", output, where=Where("output", "output")))
    return msgs


def unknown_format_message(record: dict) -> str:
    hint = ""
    if "chosen" in record or "rejected" in record:
        hint = " (this looks like a preference dataset; fastft does supervised fine-tuning)"
    return (
        f"unrecognised record format{hint}: keys found: {keys_of(record)}; expected one of: "
        "'messages' (role/content list), 'conversations' (role/content or ShareGPT from/value), "
        "'instruction'/'input'/'output' (alpaca), 'prompt'/'completion', "
        "'text' (ChatML rendering)"
    )


# -- the transforms: a record -> its messages ------------------------------------------------------

def _role_content(key: str) -> Callable[[dict, Problems], list[Message] | None]:
    """OpenAI's role/content list under `key` (with tool calls and tool responses)."""
    def transform(record: dict, problems: Problems) -> list[Message] | None:
        return _role_content_list(record[key], key, problems, role_map=MESSAGE_ROLES)
    return transform


def sharegpt_messages(record: dict, problems: Problems) -> list[Message] | None:
    """ShareGPT's from/value list under "conversations" (with LLaMA-Factory's tool roles)."""
    return _role_content_list(record["conversations"], "conversations", problems,
                              role_key="from", content_key="value", role_map=SHAREGPT_ROLES)


def prompt_completion_messages(record: dict, problems: Problems) -> list[Message] | None:
    """The prompt's messages then the completion's: strings are one user and one assistant turn."""
    prompt = _prompt_completion_part(record, "prompt", "user", problems)
    completion = _prompt_completion_part(record, "completion", "assistant", problems)
    return prompt + completion if prompt is not None and completion is not None else None


def chatml_messages(record: dict, problems: Problems) -> list[Message] | None:
    """The messages of a ChatML rendering under "text"."""
    text = record["text"]
    if not isinstance(text, str):
        problems.append(("text", f"expected a string, got {type_name(text)}"))
        return None
    return _parse_chatml(text, problems)


def _sharegpt_like(record: dict) -> bool:
    """Whether "conversations" holds a ShareGPT from/value message (one is enough to tell)."""
    convs = record["conversations"]
    return isinstance(convs, list) and any(isinstance(item, dict) and ("from" in item or "value" in item)
                                           for item in convs)


# -- the table ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Format:
    """A record format: how a record is told to be one, its transform, and what it allows."""
    name: str
    detect: Callable[[dict], bool]   # the first format in FORMAT_TABLE whose detect holds wins
    transform: Callable[[dict, Problems], list[Message] | None]
    end_field: str                   # the field a problem with the conversation's end names
    # Keys that mark the format, for telling a record that holds two (fastft would read one and
    # drop the other); none for text, often a pre-rendered copy read only when nothing else is.
    keys: tuple[str, ...] = ()
    tools: bool = False              # may carry tool calls and a `tools` list
    markers_parsed: bool = False     # its chat markers are its structure (ChatML text)
    # Roles come from the fields, not the data (alpaca): a broken record's order means nothing.
    fixed_order: bool = False


# In detection order. 'prompt' alone is no key of prompt_completion: it is a common extra column
# next to 'messages' (UltraChat), so 'completion' marks that format.
FORMAT_TABLE = (
    Format("messages", lambda r: "messages" in r, _role_content("messages"), "messages",
           keys=("messages",), tools=True),
    Format("conversations", lambda r: "conversations" in r and not _sharegpt_like(r),
           _role_content("conversations"), "conversations", keys=("conversations",), tools=True),
    Format("sharegpt", lambda r: "conversations" in r and _sharegpt_like(r), sharegpt_messages,
           "conversations", tools=True),   # its key is conversations', counted there
    Format("alpaca", lambda r: "instruction" in r or "output" in r, alpaca_messages, "output",
           keys=("instruction", "output"), fixed_order=True),
    Format("prompt_completion", lambda r: "prompt" in r or "completion" in r,
           prompt_completion_messages, "completion", keys=("completion",)),
    Format("text", lambda r: "text" in r, chatml_messages, "text", markers_parsed=True),
)
FORMATS = tuple(f.name for f in FORMAT_TABLE)


def detect(record: dict) -> Format | None:
    """The format of `record`, or None when it is in none."""
    return next((f for f in FORMAT_TABLE if f.detect(record)), None)


def two_formats(record: dict) -> str | None:
    """Why ``record`` holds more than one format (naming the keys of each), or None."""
    found = ["/".join(repr(k) for k in f.keys if k in record) for f in FORMAT_TABLE if f.keys]
    first, second, *_ = [*filter(None, found), None, None]
    if second is None:
        return None
    return (f"two formats in one record, {first} and {second}: fastft would read only {first} "
            f"and drop the other; keep one format per record")
