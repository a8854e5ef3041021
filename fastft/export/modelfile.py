"""The ollama Modelfile of an export: its Go chat templates, sampling defaults and quoting.

Three facts about ollama decide what is written here:

* A Modelfile `TEMPLATE` is a Go `text/template`. When it mentions `.Messages`, ollama executes
  it once with `{System, Messages, Tools, Response: "", Think, IsThinkSet}`, where `Messages`
  has consecutive same-role messages merged by "\\n\\n" (system messages stay in the list).
  Each template below renders the same prompt, byte for byte, as the Hugging Face chat template
  the model was trained with, called with `add_generation_prompt=True`
  (`tests/test_modelfile.py` checks this with Go's own text/template).
* ollama's Modelfile parser has no escape sequences. A triple-quoted value is taken verbatim;
  it ends at the first line break where the text read so far, right-trimmed, ends in three
  double quotes; characters Go's `strconv.IsPrint` rejects (other than tab and line breaks)
  are silently dropped.
  `parse_modelfile` below re-implements that state machine, and every value we write is
  checked by parsing it back.
* When a system prompt cannot survive that parser (a line ending in three double quotes, a
  zero-width joiner, ...), it is not written as `SYSTEM` but built into the TEMPLATE as a Go string
  literal, which has escapes; it still applies only when a request brings no system message,
  exactly like `SYSTEM`.

The Modelfile's layout is `Modelfile.template` at the repo root (the canonical, reviewed copy).
The package carries an identical copy, `MODELFILE_TEMPLATE` below, so an installed fastft
needs no data files; tests/test_modelfile.py fails if the two ever differ.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

from ..core.qwen3 import EOS
from ..core.errors import FastftError
from ..core.qwen3 import HYBRID, INSTRUCT_2507, OTHER, THINKING, template_text
from ..data.tools import go_isprint


class ModelfileError(FastftError, ValueError):
    pass


# -- the Modelfile layout ------------------------------------------------------------------------

# Keep byte-identical to Modelfile.template at the repo root (tests/test_modelfile.py checks).
# `$name`-style fields are filled by `render_modelfile`; a line holding only a field whose value
# is empty is dropped.
MODELFILE_TEMPLATE = """\
# ollama Modelfile for ${name}, written by `fastft export` from run ${run}.
# Create and run the model from this folder:
#   ollama create ${name} -f Modelfile
#   ollama run ${name}
FROM ./${gguf}
${template}
${parameters}
${system}
"""



def modelfile_template() -> str:
    """The layout. Always the packaged copy, so a checkout and an install write the same file."""
    return MODELFILE_TEMPLATE


# -- Go chat templates ---------------------------------------------------------------------------
#
# One template family for Qwen3 (ChatML). Reading aid: `{{-` / `-}}` eat the whitespace next to
# them, every other newline is output. Tool messages open a `<|im_start|>user` block when the
# previous message was not a tool message and close it when the next one is not; Go templates
# cannot look ahead, so the close is emitted when the next non-tool message starts (or at the end).
#
# Tool schemas and call arguments are written as JSON by the template itself, in the one form
# training renders (fastft.data.tools): ollama's `json` is compact and escapes <, > and &, where the
# HF template's `tojson` writes ", " and ": ". Go's `range` visits map keys sorted; strings go
# through %q (JSON's escapes for the strings fastft.data.tools accepts), numbers, booleans and null
# through `json`. The assistant's calls sit under `if .ToolCalls` with `<tool_call>` as the
# first text inside: that is where ollama's tool-call parser reads the tag from (tools/template.go).

_JSON_WRITERS = """\
{{- define "fastft-value" }}
{{- $t := printf "%T" . }}
{{- if eq $t "string" }}{{ printf "%q" . }}
{{- else if eq $t "map[string]interface {}" }}{{ "{" }}
{{- $sep := "" }}
{{- range $k, $v := . }}{{ $sep }}{{ printf "%q" $k }}: {{ template "fastft-value" $v }}{{ $sep = ", " }}{{ end }}}
{{- else if eq $t "[]interface {}" }}[
{{- range $i, $v := . }}{{ if $i }}, {{ end }}{{ template "fastft-value" $v }}{{ end }}]
{{- else }}{{ json . }}
{{- end }}
{{- end }}
{{- define "fastft-property" }}{{ "{" }}
{{- $sep := "" }}
{{- if .Type }}"type": {{ if eq (len .Type) 1 }}{{ printf "%q" (index .Type 0) }}{{ else }}[
{{- range $i, $t := .Type }}{{ if $i }}, {{ end }}{{ printf "%q" $t }}{{ end }}]{{ end }}{{ $sep = ", " }}
{{- end }}
{{- if .Items }}{{ $sep }}"items": {{ template "fastft-value" .Items }}{{ $sep = ", " }}{{ end }}
{{- if .Description }}{{ $sep }}"description": {{ printf "%q" .Description }}{{ $sep = ", " }}{{ end }}
{{- if .Enum }}{{ $sep }}"enum": {{ template "fastft-value" .Enum }}{{ end }}}
{{- end }}
{{- define "fastft-tool" }}{"type": "function", "function": {"name": {{ printf "%q" .Function.Name }}
{{- if .Function.Description }}, "description": {{ printf "%q" .Function.Description }}{{ end -}}
, "parameters": {"type": "object", "properties": {{ "{" }}
{{- $sep := "" }}
{{- range $k, $p := .Function.Parameters.Properties }}{{ $sep }}{{ printf "%q" $k }}: {{ template "fastft-property" $p }}{{ $sep = ", " }}{{ end }}}
{{- with .Function.Parameters.Required }}, "required": [
{{- range $i, $r := . }}{{ if $i }}, {{ end }}{{ printf "%q" $r }}{{ end }}]{{ end }}}}}
{{- end }}
"""

_QWEN3_TOOLS = """\
{{- if .Tools }}<|im_start|>system
@SYSTEM_IN_TOOLS@# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{{ template "fastft-tool" . }}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{{ end }}"""

_SYSTEM_IN_TOOLS = ('{{ range $i, $m := .Messages }}{{ if and (eq $i 0) (eq $m.Role "system") }}'
                    '{{ $m.Content }}\n\n{{ end }}{{ end }}')
_SYSTEM_IN_TOOLS_DEFAULT = ('{{ range $i, $m := .Messages }}{{ if eq $i 0 }}{{ if eq $m.Role "system" }}'
                            '{{ $m.Content }}{{ else }}{{ @LITERAL@ }}{{ end }}\n\n{{ end }}{{ end }}')
# Without tools, a default system prompt opens the conversation when it has none of its own.
_DEFAULT_SYSTEM_TURN = """\
{{- if and (eq $i 0) (ne $m.Role "system") (not $.Tools) }}<|im_start|>system
{{ @LITERAL@ }}<|im_end|>
{{ end }}"""

_QWEN3_MESSAGES = """
@LAST_QUERY@{{- $prev := "" }}
{{- range $i, $m := .Messages }}
@DEFAULT_SYSTEM_TURN@
{{- if and (eq $prev "tool") (ne $m.Role "tool") }}<|im_end|>
{{ end }}
{{- if eq $m.Role "user" }}<|im_start|>user
{{ $m.Content }}<|im_end|>
{{ else if eq $m.Role "system" }}
{{- if or (ne $i 0) (not $.Tools) }}<|im_start|>system
{{ $m.Content }}<|im_end|>
{{ end }}
{{- else if eq $m.Role "assistant" }}<|im_start|>assistant
@ASSISTANT_THINKING@{{ $m.Content }}
{{- if .ToolCalls }}
{{- range $j, $c := .ToolCalls }}
{{- if or $j $m.Content }}
<tool_call>{{ else }}<tool_call>{{ end }}
{"name": "{{ $c.Function.Name }}", "arguments": {{ "{" }}
{{- $sep := "" }}
{{- range $k, $v := $c.Function.Arguments }}{{ $sep }}{{ printf "%q" $k }}: {{ template "fastft-value" $v }}{{ $sep = ", " }}{{ end }}}}
</tool_call>
{{- end }}
{{- end }}<|im_end|>
{{ else if eq $m.Role "tool" }}
{{- if ne $prev "tool" }}<|im_start|>user{{ end }}
<tool_response>
{{ $m.Content }}
</tool_response>
{{- end }}
{{- $prev = $m.Role }}
{{- end }}
{{- if eq $prev "tool" }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

# Hybrid and Thinking Qwen3 show reasoning only for assistant turns after the last user query
# (tool-calling loops), and always for a final assistant turn.
_ASSISTANT_THINKING = ('{{ if and (gt $i $lq) (or $m.Thinking (eq (len (slice $.Messages $i)) 1)) }}'
                       '<think>\n{{ $m.Thinking }}\n</think>\n\n{{ end }}')

_LAST_QUERY = ('{{- $lq := len .Messages }}\n'
               '{{- range $i, $m := .Messages }}{{ if eq $m.Role "user" }}{{ $lq = $i }}{{ end }}{{ end }}\n')

_GENERATION = {
    INSTRUCT_2507: "",
    # Hybrid Qwen3 thinks unless told not to: `think: false` is its `enable_thinking=False`.
    HYBRID: "{{ if and $.IsThinkSet (not $.Think) }}<think>\n\n</think>\n\n{{ end }}",
    # Thinking-2507's template opens the think block itself.
    THINKING: "<think>\n",
}


def go_literal(text: str) -> str:
    """`text` as a Go interpreted string literal (usable inside a template action).

    Everything the Modelfile parser would choke on or drop is escaped, so the literal holds
    nothing but printable ASCII-or-printable-Unicode characters and no line breaks.
    """
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif go_isprint(ch):
            out.append(ch)
        elif ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'


def go_template(variant: str, default_system: str | None = None) -> str | None:
    """The Go TEMPLATE for a model variant (None when fastft has none: let ollama pick).

    `default_system` builds a system prompt into the template (see the module docstring).
    """
    if variant not in _GENERATION:
        return None
    if default_system is None:
        tools = _QWEN3_TOOLS.replace("@SYSTEM_IN_TOOLS@", _SYSTEM_IN_TOOLS)
        turn = ""
    else:
        lit = go_literal(default_system)
        tools = _QWEN3_TOOLS.replace("@SYSTEM_IN_TOOLS@",
                                     _SYSTEM_IN_TOOLS_DEFAULT.replace("@LITERAL@", lit))
        turn = _DEFAULT_SYSTEM_TURN.replace("@LITERAL@", lit)
    thinks = variant != INSTRUCT_2507
    messages = (_QWEN3_MESSAGES
                .replace("@LAST_QUERY@", _LAST_QUERY if thinks else "")
                .replace("@DEFAULT_SYSTEM_TURN@\n", turn)
                .replace("@ASSISTANT_THINKING@", _ASSISTANT_THINKING if thinks else ""))
    return _JSON_WRITERS + tools + messages + _GENERATION[variant]


# -- per-family settings -------------------------------------------------------------------------

@dataclass
class Family:
    label: str
    reference_jinja: str | None          # fastft/core/templates file the Go template is verified against
    sampling: dict[str, float | int] = field(default_factory=dict)


# Qwen's published sampling advice for each model; repeat_penalty 1 because ollama's default
# (1.1) is a penalty Qwen does not recommend.
FAMILIES = {
    INSTRUCT_2507: Family("Qwen3 Instruct-2507", "qwen3_instruct_2507.jinja",
                          dict(temperature=0.7, top_p=0.8, top_k=20, min_p=0, repeat_penalty=1)),
    HYBRID: Family("Qwen3 (hybrid thinking)", "qwen3.jinja",
                   dict(temperature=0.6, top_p=0.95, top_k=20, min_p=0, repeat_penalty=1)),
    THINKING: Family("Qwen3 Thinking-2507", None,
                     dict(temperature=0.6, top_p=0.95, top_k=20, min_p=0, repeat_penalty=1)),
    OTHER: Family("unknown family", None, {}),
}

# `fastft chat`'s sampling flags. Here, beside the values their help quotes, so the CLI can build
# them without importing fastft.serve.chat (and through it export, llama.cpp, models) at every start.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty")
SAMPLING_HELP = {
    "temperature": "Sampling temperature; 0 is greedy (deterministic).",
    "top_p": "Nucleus sampling: keep the most likely tokens up to this probability mass.",
    "top_k": "Keep only the K most likely tokens (0: all).",
    "min_p": "Drop tokens less likely than this fraction of the most likely one.",
    "repeat_penalty": "Penalty for repeating recent tokens (1: none).",
}


def sampling_defaults(variant: str) -> dict:
    """The Modelfile's sampling PARAMETERs for a model variant (Qwen's advice); a family without
    advice gets Instruct-2507's rather than no sampling."""
    family = FAMILIES.get(variant)
    return dict((family and family.sampling) or FAMILIES[INSTRUCT_2507].sampling)


def sampling_help(key: str) -> str:
    """--help text of a sampling flag, its default quoted from FAMILIES."""
    default = FAMILIES[INSTRUCT_2507].sampling[key]
    return (f"{SAMPLING_HELP[key]} [default: the Modelfile's; {default} for "
            f"{FAMILIES[INSTRUCT_2507].label}]")


# -- ollama's Modelfile parser, re-implemented -----------------------------------------------------

COMMANDS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
            "parameter", "message", "requires")
_NIL, _NAME, _VALUE, _PARAMETER, _MESSAGE, _COMMENT = range(6)


def _unquote(s: str) -> tuple[str, bool]:
    if s[:3] == '"""':
        return (s[3:-3], True) if len(s) >= 6 and s[-3:] == '"""' else ("", False)
    if s[:1] == '"':
        return (s[1:-1], True) if len(s) >= 2 and s[-1:] == '"' else ("", False)
    return s, True


# The states that read one word (a command, a parameter's name, a message's role): which runes
# continue the word, and ollama's error for any rune that neither continues nor ends it.
_WORDS = {
    _NAME: (lambda ch: ch.isascii() and ch.isalpha(), "invalid command"),
    _PARAMETER: (lambda ch: ch.isascii() and (ch.isalnum() or ch == "_"), "unexpected end of parameter name"),
    _MESSAGE: (lambda ch: ch.isascii() and ch.isalpha(), "unexpected end of message role"),
}


def _transition(state: int, ch: str, fail) -> tuple[int, str]:
    """ollama's Modelfile state machine: the state this rune takes us to, and what of it is kept."""
    space, newline = " \t", "\r\n"
    keep = ch
    if state == _NIL:
        nxt, keep = (_COMMENT, "") if ch == "#" else (_NIL, "") if ch in space + newline else (_NAME, ch)
    elif state in _WORDS:
        continues, error = _WORDS[state]
        if continues(ch):
            nxt = state
        elif ch in space:
            nxt, keep = _VALUE, ""
        else:
            fail(error)
    elif state == _VALUE:
        nxt = _NIL if ch in newline + space else _VALUE
    else:  # comment
        nxt, keep = (_NIL, "") if ch in newline else (_COMMENT, "")
    return nxt, keep


def _finish(state: int, word: str, name: str, role: str, commands: list) -> list[tuple[str, str]]:
    """The end of the text: close the last value, and check the Modelfile is whole."""
    if state == _VALUE:
        value, ok = _unquote(word.strip(" \t\r\n"))
        if not ok:
            raise ModelfileError("Modelfile ends inside a quoted value")
        commands.append((name, f"{role}: {value}" if role else value))
    elif state not in (_NIL, _COMMENT):
        raise ModelfileError("Modelfile ends inside a command")
    if not any(c == "model" for c, _ in commands):
        raise ModelfileError("Modelfile has no FROM line")
    return commands


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs exactly as ollama's parser reads them; raises ModelfileError.

    Commands come back lower-cased ("model" for FROM); a PARAMETER comes back as its own name
    (e.g. ("stop", "<|im_end|>")); a MESSAGE as ("message", "role: content").
    """
    commands: list[tuple[str, str]] = []
    state, buf, name, role, line = _NIL, [], "", "", 1
    space, newline = " \t", "\r\n"
    text = text.removeprefix("\ufeff")

    def fail(msg):
        raise ModelfileError(f"Modelfile line {line}: {msg}")

    for ch in text:
        if ch in newline:
            line += 1
        nxt, keep = _transition(state, ch, fail)
        if nxt != state:
            word = "".join(buf)
            if state == _NAME:
                if word.lower() not in COMMANDS:
                    fail(f"invalid command {word!r}")
                low = word.lower()
                if low == "from":
                    name = "model"
                elif low == "parameter":
                    nxt = _PARAMETER
                elif low == "message":
                    nxt, name = _MESSAGE, "message"
                else:
                    name = low
            elif state == _PARAMETER:
                name = word
            elif state == _MESSAGE:
                if word not in ("system", "user", "assistant"):
                    fail("message role must be system, user or assistant")
                role = word
            elif state == _VALUE:
                value, ok = _unquote(word.strip(" \t\r\n"))
                if not ok or ch in space:
                    buf.append(ch)       # still inside a quoted value (or a space): keep going
                    continue
                if role:
                    value, role = f"{role}: {value}", ""
                commands.append((name, value))
            buf, state = [], nxt
        if keep and go_isprint(keep):
            buf.append(keep)

    return _finish(state, "".join(buf), name, role, commands)


def quote(value: str) -> str:
    """`value` as a triple-quoted Modelfile value that parses back to exactly `value`.

    Raises ModelfileError when ollama's parser cannot hold it (see `unrepresentable`).
    """
    problem = unrepresentable(value)
    if problem:
        raise ModelfileError(problem)
    return f'"""{value}"""'


def unrepresentable(value: str) -> str | None:
    """Why ollama's parser would not read `value` in triple quotes back as itself; None if it would."""
    bad = sorted({c for c in value if not (go_isprint(c) or c in "\t\r\n")})
    if bad:
        names = ", ".join(f"U+{ord(c):04X}" for c in bad[:5])
        return f"it holds characters ollama's Modelfile parser drops ({names})"
    for m in re.finditer(r"[\r\n]", value):
        # The parser tries to close the value at every line break.
        read = ('"""' + value[:m.start()]).rstrip(" \t\r\n")
        if len(read) >= 6 and read.endswith('"""'):
            line = value.count("\n", 0, m.start()) + 1
            return f'its line {line} ends in """, which would end the value early'
    try:   # belt and braces: the parser is the definition
        ok = parse_modelfile(f'FROM x\nSYSTEM """{value}"""\n')[-1] == ("system", value)
    except ModelfileError:
        ok = False
    return None if ok else "it does not survive ollama's Modelfile parser"


# -- rendering -----------------------------------------------------------------------------------

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")


@dataclass
class Modelfile:
    text: str
    template: str | None       # the Go TEMPLATE written (None: ollama picks from the GGUF)
    system_mode: str | None    # "SYSTEM", "TEMPLATE" (built into the template) or None
    parameters: dict[str, object]


def _format_number(v) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def render_modelfile(*, name: str, gguf: str, variant: str, num_ctx: int,
                     system: str | None = None, run: str = "", layout: str | None = None) -> Modelfile:
    """The Modelfile text for one export; checked by parsing it back before it is returned."""
    if not NAME_RE.match(name):
        raise ModelfileError(f"invalid model name {name!r}: use letters, digits, '.', '_', '-'")
    family = FAMILIES.get(variant, FAMILIES[OTHER])
    system_mode = None
    default_system = None
    if system is not None and system != "":
        if unrepresentable(system) is None:
            system_mode = "SYSTEM"
        elif go_template(variant) is not None:
            system_mode, default_system = "TEMPLATE", system
        else:
            raise ModelfileError(f"--system cannot be written to this Modelfile: {unrepresentable(system)}")
    template = go_template(variant, default_system)

    params: dict[str, object] = {"stop": EOS, **family.sampling, "num_ctx": int(num_ctx)}
    lines = []
    for key, val in params.items():
        lines.append(f'PARAMETER {key} "{val}"' if isinstance(val, str) else
                     f"PARAMETER {key} {_format_number(val)}")
    fields = {
        "name": name,
        "run": run.replace("\n", " ").replace("\r", " "),
        "gguf": gguf,
        "template": f"TEMPLATE {quote(template)}" if template is not None else "",
        "parameters": "\n".join(lines),
        "system": f"SYSTEM {quote(system)}" if system_mode == "SYSTEM" else "",
    }
    layout = layout if layout is not None else modelfile_template()
    def empty_field_line(line: str) -> bool:
        m = re.fullmatch(r"\s*\$\{?(\w+)\}?\s*", line)
        return m is not None and fields.get(m.group(1)) == ""

    kept = [ln for ln in layout.splitlines(keepends=True) if not empty_field_line(ln)]
    text = string.Template("".join(kept)).substitute(fields)

    # What ollama will read back must be what we meant.
    parsed = parse_modelfile(text)
    got = {k: v for k, v in parsed if k in ("model", "template", "system")}
    want = {"model": f"./{gguf}"}
    if template is not None:
        want["template"] = template
    if system_mode == "SYSTEM":
        want["system"] = system
    if got != want:
        raise ModelfileError(f"the rendered Modelfile does not parse back as written: {got!r}")
    return Modelfile(text, template, system_mode, params)


# Conversations the export renders with the run's own tokenizer and with the reference template
# the Go TEMPLATE was verified against (tests/test_modelfile.py): equal renderings mean the
# TEMPLATE reproduces this run's training prompts.
SAMPLE_CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "How are you?"}],
]


def template_mismatch(tokenizer, variant: str) -> str | None:
    """Why the Go TEMPLATE for `variant` may not reproduce this tokenizer's prompts, or None."""

    family = FAMILIES.get(variant, FAMILIES[OTHER])
    if family.reference_jinja is None:
        return None
    reference = template_text(family.reference_jinja)
    if tokenizer.chat_template == reference:
        return None
    from transformers.utils.chat_template_utils import render_jinja_template

    for conv in SAMPLE_CONVERSATIONS:
        ours = tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        ref, _ = render_jinja_template(conversations=[conv], chat_template=reference,
                                       add_generation_prompt=True)
        if ours != ref[0]:
            return (f"the run's chat template renders {ours[:60]!r}... where the {family.label} "
                    f"template the ollama TEMPLATE reproduces renders {ref[0][:60]!r}...")
    return None
