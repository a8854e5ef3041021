"""Tool-calling data: read, check and bring to one canonical form what training renders and what
ollama's engine renders from the Modelfile TEMPLATE.

Accepted (fastft.data.formats calls in here for every message list):

* OpenAI-style `messages`: an assistant message with `tool_calls`
  (`[{"type": "function", "function": {"name", "arguments"}}]`, arguments an object or a JSON
  string), `tool` messages (`content`, optional `name` / `tool_call_id`), and a per-record `tools`
  list of function schemas (`{"type": "function", "function": {...}}`, or the bare function).
* ShareGPT with LLaMA-Factory's roles: `function_call` (its value the JSON of one call or a list
  of calls) and `observation` (the tool's output), and `tools` (a list, or a JSON string of one).

Why a canonical form. Training renders tool calls and schemas with the Hugging Face template's
`tojson` (`", "` and `": "` separators, keys in insertion order, non-ASCII kept). ollama hands a
TEMPLATE the arguments as a Go map and the schemas as Go structs; its `json` function writes them
compact, escapes `<`, `>` and `&`, and prints numbers as 64-bit floats. So fastft's TEMPLATE
writes JSON itself (fastft.export.modelfile): keys in Go's `range` order (sorted), HF's separators,
strings through `printf "%q"`, numbers through `json`. Here every call and schema is rewritten
to exactly what that TEMPLATE writes: object keys sorted, integral floats as integers, a schema
reduced to the fields ollama passes on and the TEMPLATE shows, in the TEMPLATE's order. What
cannot be written identically on both sides (a string with a control character Go quotes
differently, a number a float64 cannot print back) is a problem reported by field; schema fields
ollama does not show the model are dropped with a warning.
"""

from __future__ import annotations

import decimal
import json
import math
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any

from . import goprint

from ..core.errors import quote
from .messages import TOOL, Message

# ShareGPT's reading role for a call (fastft.data.formats maps LLaMA-Factory's roles): the
# message becomes an assistant message with tool_calls.
FUNCTION_CALL = "function_call"

# The TEMPLATE writes a call's name between quotes as it is; OpenAI's rule for names (plus '.').
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
SCHEMA_TYPES = ("string", "number", "integer", "boolean", "array", "object", "null")
# The fields of a schema the TEMPLATE shows, in its order (ollama passes on these and a few more).
FUNCTION_KEYS = ("name", "description", "parameters")
PARAMETER_KEYS = ("type", "properties", "required")
PROPERTY_KEYS = ("type", "items", "description", "enum")
MAX_DEPTH = 64

Problems = list[tuple[str, str]]


# What Go's %q writes otherwise than JSON: the characters it escapes (goprint), other than
# \b \f \n \r \t, which both escape alike. Only these can be such a character (ASCII printables
# are written as they are by both), so the usual all-ASCII string costs one regex scan.
_MAYBE_ESCAPED = re.compile(r"[^\x20-\x7e\x08\x0c\n\r\t]")
# How a message names a character Go escapes, by its Unicode category (Python's tables).
_UNPRINTABLE = {"Cc": "a control character", "Cf": "an invisible format character",
                "Zs": "a space other than U+0020", "Zl": "a line separator",
                "Zp": "a paragraph separator", "Co": "a private-use character", "Cs": "a surrogate",
                "Cn": f"unassigned in the Unicode tables of Go ({goprint.GO_VERSION})"}


def go_isprint(ch: str) -> bool:
    """Go's strconv.IsPrint: what `printf "%q"` writes as it is."""
    return goprint.is_print(ord(ch))


def go_json_number(x: float) -> str:
    """How Go's encoding/json writes the float64 `x` (ollama decodes every JSON number to one)."""
    if x == 0:
        return "-0" if math.copysign(1, x) < 0 else "0"
    d = decimal.Decimal(repr(x))       # repr: the shortest digits that read back as x, like Go's
    if 1e-6 <= abs(x) < 1e21:
        s = format(d, "f")
        return s.rstrip("0").rstrip(".") if "." in s else s
    sign, digits, exp = d.normalize().as_tuple()
    mant = "".join(map(str, digits))
    e = exp + len(mant) - 1
    mant = mant[0] + ("." + mant[1:] if len(mant) > 1 else "")
    return ("-" if sign else "") + mant + (f"e-{-e}" if e < 0 else f"e+{e:02d}")


# -- canonical JSON values -------------------------------------------------------------------------

def _string_problem(s: str) -> str | None:
    bad = next((m.group() for m in _MAYBE_ESCAPED.finditer(s) if not go_isprint(m.group())), None)
    if bad is None:
        return None
    name = unicodedata.name(bad, "")
    kind = _UNPRINTABLE.get(unicodedata.category(bad), "not printable to Go")
    return (f"holds U+{ord(bad):04X} ({kind}{', ' + name if name else ''}), "
            f"which ollama's template would write escaped differently from training's JSON; remove it")


def _number(x: int | float, tojson: bool) -> tuple[Any, str | None]:
    """(x as the canonical value holds it, or a problem). ollama reads every number as a
    float64 and writes it back with Go's encoding/json. Call arguments reach the chat template
    as render_canonical's text, which writes any spelling of the same float64 ("1E2", "1.0",
    "-0", "1e-7") as Go does; schemas go through the template's `tojson` (`tojson`), so there a
    number must be one whose json.dumps is Go's text."""
    if isinstance(x, float) and not math.isfinite(x):
        return x, f"{json.dumps(x)} is not valid JSON"
    try:
        f = float(x)
    except OverflowError:
        return x, "is too large for a 64-bit float, which ollama reads numbers as"
    go = go_json_number(f)
    negative_zero = f == 0 and math.copysign(1, f) < 0
    # Whole values Go writes without an exponent are held as ints (json.dumps writes them so too).
    held = int(f) if f.is_integer() and abs(f) < 1e21 and not negative_zero else f
    # An integer Go writes as another number (2**60 + 1 -> 1152921504606847000) reaches the
    # model changed; "1e+23" for 10**23 is the same number, spelt otherwise.
    if (isinstance(x, int) and decimal.Decimal(go) != x) or (tojson and json.dumps(held) != go):
        return x, (f"{json.dumps(x)} would be written {go} by ollama, which reads numbers as "
                   f"64-bit floats; write it as a string")
    return held, None


def _json_int(text: str) -> int | float:
    """json.loads' parse_int: "-0" is -0.0, as Go reads it (Python's int has no negative zero)."""
    return -0.0 if text == "-0" else int(text)


def canonical_value(value: Any, where: str, problems: Problems, depth: int = 0,
                    tojson: bool = True) -> Any:
    """`value` with object keys sorted and numbers as Go prints them; problems noted by field.
    `tojson`: the value reaches the chat template as itself, not as render_canonical's text."""
    if depth > MAX_DEPTH:
        problems.append((where, f"nested more than {MAX_DEPTH} levels deep"))
        return value
    if isinstance(value, dict):
        out = {}
        for k in sorted(value):
            if (p := _string_problem(k)) is not None:
                problems.append((f"{where}.{k}", f"key {p}"))
            out[k] = canonical_value(value[k], f"{where}.{k}", problems, depth + 1, tojson)
        return out
    if isinstance(value, list):
        return [canonical_value(v, f"{where}[{i}]", problems, depth + 1, tojson)
                for i, v in enumerate(value)]
    if isinstance(value, str):
        if (p := _string_problem(value)) is not None:
            problems.append((where, p))
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        value, p = _number(value, tojson)
        if p is not None:
            problems.append((where, p))
    return value


def render_canonical(value: Any) -> str:
    """The canonical text of a canonical value: what both templates write for it (fastft's
    TEMPLATE: sorted keys, `", "`/`": "`, strings as JSON escapes them, numbers through Go's
    encoding/json). The guard hands it to the chat template as the arguments' string, which
    Qwen3's templates write as it is: `tojson` would write -0 as "-0.0", 1e-7 as "1e-07"."""
    try:
        return _write(value)
    except RecursionError:   # a value nested past MAX_DEPTH (already a problem): for searching only
        return json.dumps(value, ensure_ascii=False)


def _write(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_write(v)}"
                               for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_write(v) for v in value) + "]"
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        try:
            if float(value) == value:
                return go_json_number(float(value))
        except OverflowError:
            pass
    return json.dumps(value, ensure_ascii=False)


# -- messages --------------------------------------------------------------------------------------

def _parse_json(text: str, what: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text, parse_int=_json_int), None
    except (ValueError, RecursionError) as e:
        return None, f"{what} is not valid JSON ({str(e).split(':')[0]})"


def _arguments(args: Any, where: str, problems: Problems) -> dict:
    if isinstance(args, str):
        args, error = _parse_json(args, "the arguments string")
        if error:
            problems.append((where, error))
            return {}
    if not isinstance(args, dict):
        problems.append((where, f"arguments must be a JSON object, got {_kind(args)}"))
        return {}
    return canonical_value(args, where, problems, tojson=False)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            type(None): "null"}.get(type(value), "a number")


def _name(name: Any, where: str, problems: Problems) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        shown = repr(name)[:40] if isinstance(name, str) else _kind(name)
        problems.append((where, f"a function name must be 1-64 letters, digits, '_', '.' or '-', "
                                f"got {shown}"))
        return ""
    return name


def _call(call: Any, where: str, problems: Problems) -> dict:
    """One tool call, OpenAI's `{"type": "function", "function": {...}}` or a bare
    `{"name", "arguments"}`, as `{"type": "function", "function": {"name", "arguments"}}`."""
    if not isinstance(call, dict):
        problems.append((where, f"expected a tool call object, got {_kind(call)}"))
        return {}
    if call.get("type", "function") != "function":
        problems.append((f"{where}.type", f"only function calls are supported, got {quote(call['type'])}"))
    fn, fn_where = call, where
    if "function" in call:
        fn, fn_where = call["function"], f"{where}.function"
        if not isinstance(fn, dict):
            problems.append((fn_where, f"expected an object, got {_kind(fn)}"))
            return {}
    out = {"type": "function", "function": {"name": _name(fn.get("name"), f"{fn_where}.name", problems)}}
    if "arguments" in fn:
        out["function"]["arguments"] = _arguments(fn["arguments"], f"{fn_where}.arguments", problems)
    else:
        problems.append((f"{fn_where}.arguments", "missing"))
    if "id" in call:
        if isinstance(call["id"], str):
            out["id"] = call["id"]
        else:
            problems.append((f"{where}.id", f"expected a string, got {_kind(call['id'])}"))
    return out


def _calls(calls: Any, where: str, problems: Problems) -> list[dict]:
    if isinstance(calls, dict):    # LLaMA-Factory writes a single call without a list around it
        calls = [calls]
    if not isinstance(calls, list) or not calls:
        problems.append((where, "expected a non-empty list of tool calls"))
        return []
    return [_call(c, f"{where}[{j}]", problems) for j, c in enumerate(calls)]


def _tool_response(item: dict, item_field: str, content_key: str, problems: Problems) -> Message:
    content = item.get(content_key)
    if not isinstance(content, str):
        problems.append((f"{item_field}.{content_key}",
                         "missing" if content_key not in item else
                         f"a tool response must be a string, got {_kind(content)}"))
        content = ""
    extra = {}
    for key in ("name", "tool_call_id"):
        if key in item:
            if isinstance(item[key], str):
                extra[key] = item[key]
            else:
                problems.append((f"{item_field}.{key}", f"expected a string, got {_kind(item[key])}"))
    return Message(TOOL, content, **extra)


def tool_message(item: dict, role: str | None, item_field: str, content_key: str,
                 problems: Problems) -> Message | None:
    """The message `item` if tools are involved (a tool response, an assistant message with
    tool_calls, a ShareGPT function_call), else None: formats.py reads it as a plain message."""
    if role == TOOL:
        return _tool_response(item, item_field, content_key, problems)
    if role == FUNCTION_CALL:
        value = item.get(content_key)
        where = f"{item_field}.{content_key}"
        if isinstance(value, str):
            value, error = _parse_json(value, "a function_call value")
            if error:
                problems.append((where, error))
                return Message("assistant", "", tool_calls=[])
        return Message("assistant", "", tool_calls=_calls(value, where, problems))
    if role != "assistant" or item.get("tool_calls") in (None, []):
        return None
    content = item.get(content_key)
    if content is None:
        content = ""    # OpenAI writes null content next to tool calls
    elif not isinstance(content, str):
        problems.append((f"{item_field}.{content_key}", f"expected a string, got {_kind(content)}"))
        content = ""
    calls = _calls(item["tool_calls"], f"{item_field}.tool_calls", problems)
    return Message("assistant", content, tool_calls=calls)


# -- conversation order ----------------------------------------------------------------------------

def _has_calls(m: Message | None) -> bool:
    return bool(m is not None and m.role == "assistant" and m.tool_calls)


def _ids_problem(m: Message, before: list[Message]) -> str | None:
    """Why a tool response's tool_call_id answers no call of the assistant turn it follows."""
    call_id = m.tool_call_id
    turn = next((p for p in reversed(before) if _has_calls(p)), None)
    ids = [c.get("id") for c in turn.tool_calls if c.get("id")] if turn else []
    if call_id is None or not ids or call_id in ids:
        return None
    return f"tool_call_id {quote(call_id)} matches no call of the assistant turn before it ({', '.join(ids)})"


def _tool_turn_problem(msgs: list[Message], i: int) -> tuple[str, str] | None:
    """The first order problem a tool exchange has at message i, or None."""
    m = msgs[i]
    prev = msgs[i - 1] if i else None
    nxt = msgs[i + 1] if i + 1 < len(msgs) else None
    if m.role == TOOL:
        if not (_has_calls(prev) or (prev is not None and prev.role == TOOL)):
            return m.where.role, ("a tool response must follow an assistant message with "
                                  "tool_calls (or another tool response)")
        if nxt is not None and nxt.role not in (TOOL, "assistant"):
            return nxt.where.role, f"expected an assistant message after tool responses, got {nxt.role}"
        problem = _ids_problem(m, msgs[:i])
        return (m.where.role.rpartition(".")[0] + ".tool_call_id", problem) if problem else None
    if _has_calls(m) and nxt is not None and nxt.role != TOOL:
        return nxt.where.role, f"expected tool responses after an assistant message with tool_calls, got {nxt.role}"
    return None


def conversation_turns(msgs: list[Message], end_field: str, problems: Problems) -> list[Message] | None:
    """Check where tool messages stand; return the messages left for the plain user/assistant
    order check (each assistant tool call answered by tool responses folds into the assistant
    message after it), or None when a problem was found."""
    if not any(m.role == TOOL or _has_calls(m) for m in msgs) or any(m.role is None for m in msgs):
        return msgs
    for i in range(len(msgs)):
        problem = _tool_turn_problem(msgs, i)
        if problem:
            problems.append(problem)
            return None
    if msgs[-1].role == TOOL:
        problems.append((end_field, "missing assistant turn: the conversation must end with an "
                                    "assistant message (last is a tool response)"))
        return None
    return [m for i, m in enumerate(msgs)
            if m.role != TOOL and not (_has_calls(m) and i + 1 < len(msgs))]


# -- tool schemas ----------------------------------------------------------------------------------

@dataclass
class _Schema:
    """Reading one tool schema: problems (errors) and the fields not shown (a warning)."""
    problems: Problems
    dropped: list[str] = field(default_factory=list)

    def keep(self, obj: dict, keys: tuple[str, ...], where: str) -> None:
        self.dropped += [f"{where}.{k}" if where else k for k in obj if k not in keys]

    def string(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            self.problems.append((where, f"expected a string, got {_kind(value)}"))
            return ""
        if (p := _string_problem(value)) is not None:
            self.problems.append((where, p))
        return value

    def obj(self, value: Any, where: str) -> dict | None:
        if not isinstance(value, dict):
            self.problems.append((where, f"expected an object, got {_kind(value)}"))
            return None
        return value


def _property_type(value: Any, where: str, s: _Schema) -> str | list | None:
    types = [value] if isinstance(value, str) else value
    if not (isinstance(types, list) and types and all(t in SCHEMA_TYPES for t in types)):
        s.problems.append((where, f"a JSON schema type ({', '.join(SCHEMA_TYPES)}) or a list of "
                                  f"them, got {json.dumps(value)[:60]}"))
        return None
    return types[0] if len(types) == 1 else types


def _property(prop: Any, where: str, s: _Schema, rel: str) -> dict:
    """A parameter's schema as the TEMPLATE writes it: type, items, description, enum."""
    if s.obj(prop, where) is None:
        return {}
    s.keep(prop, PROPERTY_KEYS, rel)
    out: dict[str, Any] = {}
    if "type" in prop and (t := _property_type(prop["type"], f"{where}.type", s)) is not None:
        out["type"] = t
    if prop.get("items"):    # the TEMPLATE, like ollama's omitempty, writes no empty items
        if s.obj(prop["items"], f"{where}.items") is not None:
            out["items"] = canonical_value(prop["items"], f"{where}.items", s.problems)
    if prop.get("description") is not None and (d := s.string(prop["description"], f"{where}.description")):
        out["description"] = d
    if "enum" in prop:
        if not isinstance(prop["enum"], list):
            s.problems.append((f"{where}.enum", f"expected a list, got {_kind(prop['enum'])}"))
        elif prop["enum"]:
            out["enum"] = canonical_value(prop["enum"], f"{where}.enum", s.problems)
    return out


def _required(value: Any, names: dict, where: str, s: _Schema) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        s.problems.append((where, "expected a list of parameter names"))
        return []
    for r in value:
        if r not in names:
            s.problems.append((where, f"{quote(r)} is not among the parameters' properties"))
    return value


def _parameters(params: Any, where: str, s: _Schema) -> dict:
    out: dict[str, Any] = {"type": "object", "properties": {}}
    if params is None or s.obj(params, where) is None:
        return out
    s.keep(params, PARAMETER_KEYS, "parameters")
    if params.get("type", "object") != "object":
        s.problems.append((f"{where}.type", f"parameters must be a JSON schema of type 'object', "
                                            f"got {json.dumps(params['type'])[:40]}"))
    props = s.obj(params.get("properties", {}), f"{where}.properties") or {}
    for name in sorted(props):
        if (p := _string_problem(name)) is not None:
            s.problems.append((f"{where}.properties.{name}", f"name {p}"))
        out["properties"][name] = _property(props[name], f"{where}.properties.{name}", s,
                                            f"parameters.properties.{name}")
    if params.get("required"):
        out["required"] = _required(params["required"], props, f"{where}.required", s)
    return out


def _tool(tool: Any, where: str, s: _Schema) -> dict | None:
    """One tool schema as `{"type": "function", "function": {name, description, parameters}}`."""
    if s.obj(tool, where) is None:
        return None
    fn, fn_where = tool, where
    if "function" in tool or "type" in tool:   # OpenAI's wrapper; else LLaMA-Factory's bare function
        if tool.get("type") != "function":
            s.problems.append((f"{where}.type", f"only function tools are supported, got "
                                                f"{json.dumps(tool.get('type'))[:40]}"))
        s.keep(tool, ("type", "function"), "")
        fn_where = f"{where}.function"
        if (fn := s.obj(tool.get("function"), fn_where)) is None:
            return None
    s.keep(fn, FUNCTION_KEYS, "function")
    out: dict[str, Any] = {"name": _name(fn.get("name"), f"{fn_where}.name", s.problems)}
    if fn.get("description") is not None and (d := s.string(fn["description"], f"{fn_where}.description")):
        out["description"] = d
    out["parameters"] = _parameters(fn.get("parameters"), f"{fn_where}.parameters", s)
    return {"type": "function", "function": out}


def record_tools(record: dict, problems: Problems, warnings: Problems) -> list[dict] | None:
    """The record's `tools`, canonical; None when it has none."""
    value = record.get("tools")
    if value is None or value == [] or value == "":
        return None
    if isinstance(value, str):     # LLaMA-Factory stores the list as a JSON string
        value, error = _parse_json(value, "the tools string")
        if error:
            problems.append(("tools", error))
            return None
    if not isinstance(value, list):
        problems.append(("tools", f"expected a list of tool schemas, got {_kind(value)}"))
        return None
    tools, names = [], set()
    for i, tool in enumerate(value):
        s = _Schema(problems)
        out = _tool(tool, f"tools[{i}]", s)
        if out is None:
            continue
        name = out["function"]["name"]
        if name and name in names:
            problems.append((f"tools[{i}].function.name", f"a second tool named {quote(name)}"))
        names.add(name)
        tools.append(out)
        if s.dropped:
            warnings.append((f"tools[{i}]", f"not shown to the model, in training as by ollama "
                                            f"(the template shows a function's name, description, "
                                            f"parameters and required ones, and each parameter's "
                                            f"type, items, description and enum): "
                                            f"{', '.join(s.dropped)}"))
    return tools


def calls_field(m: Message) -> str:
    """The field holding a message's tool calls: `tool_calls`, or a ShareGPT function_call's value."""
    return m.where.content if m.where.content.endswith(".value") else \
        m.where.role.rpartition(".")[0] + ".tool_calls"


def check_calls(msgs: list[Message], tools: list[dict] | None, warnings: Problems) -> None:
    """Warn about each call to a function the record's tools do not offer."""
    offered = {t["function"]["name"] for t in tools or []}
    for m in msgs:
        for j, call in enumerate(m.tool_calls or []):
            name = call.get("function", {}).get("name")
            if name and name not in offered:
                warnings.append((f"{calls_field(m)}[{j}].function.name",
                                 f"calls {quote(name)}, which the record's tools do not offer"
                                 + ("" if tools else " (it has no tools)")))
