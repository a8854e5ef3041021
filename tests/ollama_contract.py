"""Ollama's side of the Modelfile contract, for tests: what its parser extracts from a
Modelfile, and the data its template engine executes a TEMPLATE with (ollama's
template/template.go). fastft itself only writes Modelfiles; the tests read them back as ollama does."""

from __future__ import annotations

import json

from fastft.modelfile import parse_modelfile


def template_from_modelfile(text: str) -> str | None:
    """The TEMPLATE value exactly as ollama's parser extracts it."""
    values = [v for k, v in parse_modelfile(text) if k == "template"]
    return values[-1] if values else None


def system_from_modelfile(text: str) -> str | None:
    values = [v for k, v in parse_modelfile(text) if k == "system"]
    return values[-1] if values else None


def ollama_data(messages: list[dict], tools: list | None = None, think: bool | None = None) -> dict:
    """The data ollama executes a `.Messages` template with (template.go): System is every
    system message joined by blank lines; consecutive same-role messages are merged with a
    blank line, except tool messages (each keeps its own tool-call metadata)."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    merged: list[dict] = []
    for m in messages:
        if merged and merged[-1]["role"] == m["role"] and m["role"] != "tool":
            merged[-1] = {**merged[-1], "content": merged[-1]["content"] + "\n\n" + m["content"]}
        else:
            merged.append(dict(m))
    return {"System": system, "Messages": merged, "Tools": tools or [], "Response": "",
            "Think": bool(think), "IsThinkSet": think is not None}


def dumps_ollama_request(template: str, messages: list[dict], tools=None, think=None) -> str:
    """JSON for the Go renderer: the template and the data ollama would execute it with."""
    return json.dumps({"template": template, "data": ollama_data(messages, tools, think)})
