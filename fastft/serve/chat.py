"""`fastft chat RUN|GGUF`: talk to a trained run or an exported GGUF, one question or many turns.

A run (its folder) answers through Unsloth's inference mode with its adapter; a GGUF (a file,
or an export folder holding one) through the llama.cpp fastft builds (`llama-completion`, which
samples like ollama). Either way the prompt is the text the model was trained on:

* a run renders the conversation with its adapter's tokenizer through the chat-template guard
  (`ChatGuard.prompt`, exactly what training used for the serving prefix);
* an export folder renders it with the chat template its Modelfile TEMPLATE reproduces (the
  variant recorded in fastft-export.json; tests/test_modelfile.py proves the two render the
  same text), and applies the Modelfile's SYSTEM when no --system is given, as ollama does;
* a lone GGUF uses the chat template embedded in it (the run's guarded one: the converter
  copies it from the tokenizer saved with the merged model).

With `--tools FILE` the tool schemas in FILE are offered in every prompt, rendered as training
renders a record's `tools` (read and made canonical by fastft.data.tools, the form the Modelfile
TEMPLATE writes too), and the model's raw answer is printed, `<tool_call>` blocks included: that
is what a script parses.

Loading a model is quiet unless verbose: what Unsloth and the libraries print then goes to a log
(fastft.core.quiet), while answers stream to the terminal as they are generated.

Sampling defaults are the Modelfile's PARAMETERs (`fastft.export.modelfile.FAMILIES`); temperature 0
is greedy. llama.cpp is started once per turn with the whole conversation: a GGUF is mmapped,
so a reload costs little next to generating.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TextIO

from ..core.errors import FastftError
from ..export.manifest import MANIFEST, ExportManifest, ManifestError
from ..export.gguf import read_gguf_metadata
from ..export.llamacpp import LlamaCppError, ensure_chat_runner, log_tail
from ..export.modelfile import FAMILIES, SAMPLING_KEYS, parse_modelfile, sampling_defaults
from ..core.models import load_for_inference
from ..core.procs import dying_with_parent
from ..core.quiet import captured
from ..core.run import read_trained
from ..core.qwen3 import template_text
from ..data.template import ChatGuard
from ..data.tools import record_tools
from .config import ChatConfig

Write = Callable[[str], None]

# A lone GGUF has no Modelfile num_ctx; the model's own context (262,144 tokens for Qwen3-4B-2507)
# would allocate tens of GiB of KV cache, so we cap it here.
GGUF_CTX_CAP = 4096
# What llama-completion prints after the answer: this after an end-of-generation token, or just
# the two newlines after --n-predict tokens.
LLAMA_TRAILER = " [end of text]\n\n\n"


class ChatError(FastftError):
    pass


# -- sampling -----------------------------------------------------------------------------------

@dataclass
class Sampling:
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    max_new_tokens: int = 512
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    @classmethod
    def deterministic(cls, max_new_tokens: int) -> "Sampling":
        """Greedy decoding, every filter off."""
        return cls(temperature=0, top_p=1, top_k=0, min_p=0, repeat_penalty=1,
                   max_new_tokens=max_new_tokens)


def resolve_sampling(defaults: dict, overrides: dict, max_new_tokens: int,
                     seed: int | None) -> Sampling:
    """`defaults` (from the model's Modelfile) with every flag the user gave on top."""
    values = {k: defaults[k] for k in SAMPLING_KEYS if k in defaults}
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["top_k"] = int(values["top_k"])
    return Sampling(**values, max_new_tokens=max_new_tokens, seed=seed)


# -- a run: adapter through Unsloth --------------------------------------------------------------

def load_run_for_inference(run: str | Path, load_in_4bit: bool | None = None):
    """(model, tokenizer) of a run's base model with its adapter, ready for generation."""
    trained = read_trained(run, "chat")
    cfg = trained.record.config
    return load_for_inference(trained.adapter_dir, cfg.max_seq_len,
                              cfg.load_in_4bit if load_in_4bit is None else load_in_4bit)


def _streamer(tokenizer, write: Write):
    from transformers import TextStreamer   # after Unsloth, which loading the model imported

    class Relay(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if text:
                write(text)
    return Relay(tokenizer, skip_prompt=True, skip_special_tokens=True)


def generate_text(model, tokenizer, prompt: str, sampling: Sampling, write: Write | None = None) -> str:
    """The model's continuation of `prompt` (special tokens parsed) up to EOS, streamed to
    `write` as it is decoded when given."""
    import torch

    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(model.device)
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    kw = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    if not sampling.greedy:
        kw = dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p,
                  top_k=sampling.top_k or None, min_p=sampling.min_p or None)
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                         max_new_tokens=sampling.max_new_tokens,
                         repetition_penalty=sampling.repeat_penalty,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         streamer=_streamer(tokenizer, write) if write else None, **kw)
    return tokenizer.decode(out[0][ids.shape[1]:], skip_special_tokens=True)


def generate(model, tokenizer, messages: list[dict], max_new_tokens: int = 64) -> str:
    """Greedy reply to `messages`. The adapter folder's tokenizer holds the guarded template."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return generate_text(model, tokenizer, prompt, Sampling.deterministic(max_new_tokens)).strip()


class AdapterChat:
    """A run folder: its base model with the adapter, in Unsloth's inference mode."""
    tools: list[dict] | None = None     # canonical schemas offered in every prompt (--tools)

    def __init__(self, run: str | Path):
        trained = read_trained(run, "chat")
        folder, record = trained.folder, trained.record
        self.label = f"run {folder.name} (LoRA adapter, Unsloth)"
        self.variant = record.variant
        self.default_system: str | None = None
        self.defaults: dict | None = None        # the variant's, as in the Modelfile an export writes
        # Unsloth and transformers print while loading: stdout is for answers only.
        with contextlib.redirect_stdout(sys.stderr):
            self.model, self.tokenizer = load_for_inference(folder.adapter, record.config.max_seq_len,
                                                            record.config.load_in_4bit)
        self.guard = ChatGuard(self.tokenizer, record.plan.model_path, think=record.config.think)

    def prompt(self, messages: list[dict]) -> str:
        return self.guard.prompt(messages, self.tools)

    def reply(self, messages: list[dict], sampling: Sampling, write: Write) -> str:
        return generate_text(self.model, self.tokenizer, self.prompt(messages), sampling, write)


# -- a GGUF: llama.cpp ---------------------------------------------------------------------------

def go_unquote(literal: str) -> str:
    """The text of a Go interpreted string literal as `modelfile.go_literal` writes one."""
    body = re.sub(r"\\\\|\\U([0-9a-fA-F]{8})",
                  lambda m: m.group(0) if m.group(1) is None else chr(int(m.group(1), 16)),
                  literal)
    return json.loads(body)


def modelfile_system(modelfile: str) -> str | None:
    """The default system prompt a Modelfile gives: its SYSTEM, or the one built into its
    TEMPLATE (for text ollama's SYSTEM cannot carry)."""
    parsed = dict(parse_modelfile(modelfile))
    if "system" in parsed:
        return parsed["system"]
    m = re.search(r'<\|im_start\|>system\n\{\{ ("(?:[^"\\]|\\.)*") \}\}<\|im_end\|>',
                  parsed.get("template", ""))
    return go_unquote(m.group(1)) if m else None


def find_gguf(target: Path) -> tuple[Path, Path | None, ExportManifest | None]:
    """(the GGUF to run, its export folder if it is in one, that folder's manifest)."""
    if not target.is_dir() and not target.is_file():
        raise ChatError(f"{target}: no such file")
    folder = target if target.is_dir() else target.parent
    manifest = read_manifest(folder) if (folder / MANIFEST).is_file() else None
    export = folder if manifest is not None else None
    if target.is_file():
        return target, export, manifest
    served = manifest.modelfile if manifest is not None else None
    if served and (target / served.from_).is_file():
        return target / served.from_, target, manifest
    ggufs = sorted(p for p in target.glob("*.gguf") if p.is_file())
    if not ggufs:
        raise ChatError(f"{target}: neither a run folder nor an export folder (no .gguf in it)")
    return ggufs[0], export, manifest


def read_manifest(folder: Path) -> ExportManifest:
    try:
        return ExportManifest.read(folder)
    except ManifestError as e:
        raise ChatError(str(e)) from None


class GGUFChat:
    """A GGUF through llama.cpp's llama-completion, one process per turn."""
    tools: list[dict] | None = None     # canonical schemas offered in every prompt (--tools)

    def __init__(self, target: str | Path, console=None):
        self.gguf, export, manifest = find_gguf(Path(target))
        meta = read_gguf_metadata(self.gguf)
        self.label = f"{self.gguf.name} (GGUF, llama.cpp)"
        self.default_system, params, self.template = None, {}, meta.get("tokenizer.chat_template")
        self.variant = "other"
        if export is not None:
            self.variant = manifest.variant
            served = manifest.modelfile
            params = served.parameters if served else {}
            family = FAMILIES.get(self.variant)
            if served and served.template and family and family.reference_jinja:
                # The template the Modelfile's TEMPLATE reproduces: what ollama will serve.
                self.template = template_text(family.reference_jinja)
            if (export / "Modelfile").is_file():
                self.default_system = modelfile_system((export / "Modelfile").read_text())
        if not self.template:
            raise ChatError(f"{self.gguf}: no chat template in the GGUF and no fastft export "
                            f"beside it; chat with the run folder instead")
        self.defaults = {k: params[k] for k in SAMPLING_KEYS if k in params} or None
        ctx = meta.get(f"{meta.get('general.architecture')}.context_length") or GGUF_CTX_CAP
        self.num_ctx = int(params.get("num_ctx") or min(ctx, GGUF_CTX_CAP))
        self.exe = ensure_chat_runner(console)
        # Imported here, while loading is quiet: importing torch can print warnings.
        from transformers.utils.chat_template_utils import render_jinja_template
        self._render = render_jinja_template

    def prompt(self, messages: list[dict]) -> str:
        rendered, _ = self._render(conversations=[messages], tools=self.tools,
                                   chat_template=self.template, add_generation_prompt=True)
        return rendered[0]

    def command(self, prompt_file: Path, sampling: Sampling) -> list[str]:
        """llama-completion's argv: the prompt as given (no escapes, no chat template of its
        own), only the answer on stdout."""
        cmd = [str(self.exe), "-m", str(self.gguf), "-f", str(prompt_file),
               "-n", str(sampling.max_new_tokens), "-c", str(self.num_ctx),
               "--temp", str(sampling.temperature), "--top-p", str(sampling.top_p),
               "--top-k", str(sampling.top_k), "--min-p", str(sampling.min_p),
               "--repeat-penalty", str(sampling.repeat_penalty),
               "-no-cnv", "--no-display-prompt", "--no-escape", "--no-warmup"]
        return cmd + (["--seed", str(sampling.seed)] if sampling.seed is not None else [])

    def reply(self, messages: list[dict], sampling: Sampling, write: Write) -> str:
        with tempfile.TemporaryDirectory(prefix="fastft-chat-") as tmp:
            prompt_file, log = Path(tmp) / "prompt.txt", Path(tmp) / "llama.log"
            # llama.cpp drops one final newline from a prompt file; the prompt ends in one.
            prompt_file.write_text(self.prompt(messages) + "\n", encoding="utf-8")
            with open(log, "wb") as err:
                proc = subprocess.Popen(dying_with_parent(self.command(prompt_file, sampling)), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=err)
            try:
                text = relay_llama_output(proc.stdout, write)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
            if proc.returncode == -signal.SIGINT:   # Ctrl-C reached llama.cpp before us
                raise KeyboardInterrupt
            if proc.returncode != 0:
                raise LlamaCppError(f"{self.exe.name} could not run {self.gguf} "
                                    f"(exit {proc.returncode}):\n{log_tail(log, 20)}")
        return text


def relay_llama_output(stream, write: Write) -> str:
    """Copy llama-completion's stdout to `write` as it arrives, decoded, less the trailer it
    prints after the answer (held back until the stream ends). Returns the answer."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    pending, answer, hold = "", [], len(LLAMA_TRAILER)
    while chunk := os.read(stream.fileno(), 4096):
        pending += decoder.decode(chunk)
        if len(pending) > hold:
            ready, pending = pending[:-hold], pending[-hold:]
            write(ready)
            answer.append(ready)
    pending += decoder.decode(b"", final=True)
    for trailer in (LLAMA_TRAILER, "\n\n"):
        if pending.endswith(trailer):
            pending = pending[:-len(trailer)]
            break
    if pending:
        write(pending)
        answer.append(pending)
    return "".join(answer)


# -- the conversation ----------------------------------------------------------------------------

def read_tools(path: str | Path) -> tuple[list[dict], list[str]]:
    """(the canonical tool schemas in the JSON file `path`, warnings): a list of OpenAI-style
    tools, or an object holding one under "tools" (a data record, a request body), checked as
    `data check` checks a record's `tools`. Raises ChatError naming the file."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ChatError(f"{path}: cannot read the tools file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ChatError(f"{path}: the tools file is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise ChatError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(value, dict) and "tools" in value:
        value = value["tools"]
    if not isinstance(value, list) or not value:
        raise ChatError(f"{path}: expected a non-empty JSON list of tool schemas (or an object "
                        f"with one under \"tools\")")
    problems: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    tools = record_tools({"tools": value}, problems, warnings)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ChatError(f"{path}: {problems[0][0]}: {problems[0][1]}{more}")
    return tools, [f"{path}: {where}: {message}" for where, message in warnings]


def open_chat(target: str | Path, console=None) -> AdapterChat | GGUFChat:
    """A run folder -> AdapterChat; a .gguf file or an export folder -> GGUFChat."""
    path = Path(target)
    if path.suffix.lower() == ".gguf" or (path.is_dir() and (
            (path / MANIFEST).is_file() or any(path.glob("*.gguf")))):
        return GGUFChat(path, console)
    return AdapterChat(path)


@dataclass
class Conversation:
    engine: AdapterChat | GGUFChat
    sampling: Sampling
    system: str | None = None
    history: list[dict] | None = None

    def __post_init__(self):
        self.history = self.history or []

    def messages(self, user: str) -> list[dict]:
        system = self.system if self.system is not None else self.engine.default_system
        head = [{"role": "system", "content": system}] if system else []
        return head + self.history + [{"role": "user", "content": user}]

    def ask(self, user: str, write: Write) -> str:
        """The model's answer to `user` after the turns so far; kept in the history only once
        it is complete (an interrupted turn leaves no trace)."""
        answer = self.engine.reply(self.messages(user), self.sampling, write)
        self.history += [{"role": "user", "content": user},
                         {"role": "assistant", "content": answer.strip()}]
        return answer

    def clear(self) -> None:
        self.history = []


def writer(out: TextIO) -> Write:
    def write(text: str) -> None:
        out.write(text)
        out.flush()
    return write


HELP = "/clear forgets the conversation, /bye or /exit (or Ctrl-D) quits, Ctrl-C stops an answer."


def interactive(conv: Conversation, read: Callable[[str], str] = input, out: TextIO | None = None,
                err: TextIO | None = None) -> None:
    """The read-answer loop until /bye or end of input (out, err: sys.stdout and sys.stderr as
    they are when called)."""
    out, err = out or sys.stdout, err or sys.stderr
    if read is input and sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
    err.write(f"chatting with {conv.engine.label}. {HELP}\n")
    write = writer(out)
    while True:
        try:
            line = read(">>> ")
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:
            err.write("\n(use /bye or Ctrl-D to quit)\n")
            continue
        text = line.strip()
        if text in ("/bye", "/exit", "/quit"):
            return
        if text == "/clear":
            conv.clear()
            err.write("(conversation cleared)\n")
            continue
        if text in ("/?", "/help") or (text.startswith("/") and " " not in text):
            err.write(HELP + "\n" if text in ("/?", "/help") else f"unknown command {text}; {HELP}\n")
            continue
        if not text:
            continue
        try:
            conv.ask(text, write)
            write("\n\n")
        except KeyboardInterrupt:
            err.write("\n(stopped; this turn is not kept)\n")


def chat(cfg: ChatConfig, out: TextIO | None = None, console=None, verbose: bool = False) -> None:
    """`fastft chat`: one answer to `cfg.prompt` on `out` (default: sys.stdout), alone, or an
    interactive session. `console` (stderr) shows a llama.cpp build, if one is needed, and
    warnings about the `cfg.tools` file. The libraries' output while loading goes to a log
    unless `verbose`; generation is never captured, so answers stream."""
    out = out or sys.stdout
    schemas, warnings = read_tools(cfg.tools) if cfg.tools is not None else (None, [])
    for line in warnings:
        print(f"warning: {line}", file=sys.stderr)
    with captured(None, console, verbose, what="chat"):
        engine = open_chat(cfg.target, console)
    if schemas:
        engine.tools = schemas
        engine.label += f", offered tools: {', '.join(t['function']['name'] for t in schemas)}"
    defaults = engine.defaults or sampling_defaults(engine.variant)
    overrides = {k: getattr(cfg, k) for k in SAMPLING_KEYS}
    conv = Conversation(engine, resolve_sampling(defaults, overrides, cfg.max_new_tokens, cfg.seed),
                        cfg.system)
    if cfg.prompt is not None:
        conv.ask(cfg.prompt, writer(out))
        out.write("\n")
        out.flush()
    else:
        interactive(conv, out=out)
