"""What ollama's server does to the history of a Qwen3 chat before it renders the prompt: its
think-tag filter, ported, so that the guard trains earlier replies as ollama will send them.

ollama (server/routes.go, ChatHandler -> `filterThinkTags`, at commit
fb30760996871fa9460115c753afd2c60d4ab0f7, the commit tests/gotemplate vendors) runs, for every
model of family "qwen3" (every Qwen3 GGUF) and every assistant message *before the last user
message*, one `thinking.Parser{OpeningTag: "<think>", ClosingTag: "</think>"}.AddContent(content)`
(thinking/parser.go) and keeps the content it returns. The parser is a streaming one that is never
flushed here, so what it still buffers is lost: a reply that is only whitespace, or only a prefix
of "<think>" ("<", "<th"), comes back empty; a leading think block goes with the whitespace around
it; a reply with no leading "<think>" comes back untouched, think tags in its middle included.
User, system and tool messages, and the replies after the last user message, are sent as they are.
"""

from __future__ import annotations

OPEN, CLOSE = "<think>", "</think>"

# Go's unicode.IsSpace, which the parser trims with: Python's str.isspace also counts
# U+001C..U+001F (separators Go leaves alone).
GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008" \
           "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"


def filter_reply(content: str) -> str:
    """An earlier assistant reply as ollama's server sends it (thinking.Parser.AddContent, one
    call, unflushed: see the module's docstring)."""
    trimmed = content.lstrip(GO_SPACE)
    if trimmed.startswith(OPEN):
        after = trimmed[len(OPEN):].lstrip(GO_SPACE)
        if CLOSE not in after:
            return ""          # all of it is thinking (or a closing tag still being buffered)
        return after.split(CLOSE, 1)[1].lstrip(GO_SPACE)
    if OPEN.startswith(trimmed):
        return ""              # whitespace, or the start of an opening tag, held back
    return content


def last_user(messages: list[dict]) -> int:
    """The index of the last user message (-1 when there is none): filterThinkTags'
    finalUserIndex; the assistant replies before it are filtered."""
    return max((i for i, m in enumerate(messages) if m["role"] == "user"), default=-1)


def filtered(messages: list[dict]) -> list[int]:
    """The indexes of the replies ollama's filter runs over when `messages` is the request."""
    end = last_user(messages)
    return [i for i, m in enumerate(messages[:end]) if m["role"] == "assistant"]
