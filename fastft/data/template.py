"""The chat-template guard: the text a model trains on is exactly the text it is served with.

Shared by training, chat and export. For Qwen3 Instruct-2507 (a non-thinking model) it
- installs the Instruct-2507 template even when the tokenizer ships the hybrid Qwen3 one
  (the hybrid template writes an empty `<think>\\n\\n</think>\\n\\n` into every trained answer,
  teaching the model to emit think tags it will never be prompted with);
- removes empty think blocks a template put there, and applies the `--think` policy to think
  blocks in the answers after the last user message: strip (default), keep, or error;
- renders the earlier replies as ollama's server sends them (its think-tag filter, in
  fastft.data.history), for every Qwen3 model, and never edits user, system or tool content;
- sets EOS to `<|im_end|>` (the turn end the server stops on) and a pad token distinct from EOS
  (padding with EOS masks EOS out of the labels, and the model never learns to stop);
- checks train/serve parity for the assistant turns: the conversation before one, rendered with
  `add_generation_prompt=True` (what a server sends), must be an exact prefix of the training
  text (every answer of a conversation of up to EXACT_TURNS + 1; of a longer one, the first
  EXACT_TURNS and the last exactly, and those between must start with the same header).
Thinking and hybrid models keep their own template and their think blocks (in the answers;
earlier replies go through ollama's filter as for every Qwen3 model).
"""

from __future__ import annotations

import bisect
import re
from dataclasses import asdict, dataclass, field
from typing import Container, Iterable, Sequence

from ..core.errors import FastftError, quote
from ..core.qwen3 import (EOS, INSTRUCT_2507, OTHER, PAD, THINK_BLOCK, THINK_TAG, detect_variant,
                          template_text)
from . import history
from .messages import DataIssue, Example
from .tools import render_canonical

THINK_POLICIES = ("strip", "keep", "error")

# An empty think block where a template opens an answer (the hybrid Qwen3 template writes one
# into every answer): only there, so that no message's own text is edited.
TEMPLATE_THINK = re.compile(r"(?<=<\|im_start\|>assistant\n)<think>\s*</think>\s*")
# A think block, else a lone tag: what --think strip keeps out of the loss.
THINK_ANY = re.compile(f"{THINK_BLOCK.pattern}|{THINK_TAG.pattern}", re.DOTALL)

# Parity is checked by rendering the serving prompt before each answer, which costs a render of
# the conversation so far: quadratic in its length. The first EXACT_TURNS answers and the last
# are checked so (what a template does differently happens at the ends: the system turn, the
# first answers, the last answer's think block); the answers between are found by their header
# in the training text, so a 10,000-turn conversation costs ~35 renders, not 5,000.
EXACT_TURNS = 32


def tangled_think(content: str) -> tuple[str, str] | None:
    """(why, what to do) when the think tags of `content` cannot be stripped safely, else None:
    a <think> with no </think> after it (where the reasoning ends is unknown), a <think> inside
    a think block, or a </think> that closes nothing with text on both sides ("reasoning</think>
    answer", as Qwen3 thinking models write it, their <think> being in the prompt). Either way
    part of the reasoning would be trained as the answer."""
    tags = list(re.finditer(r"<(/?)think>", content))
    if tags and not tags[-1].group(1):  # checked first: it names the tag to close
        return "unclosed <think> (no </think> after it)", "close it"
    inside = False
    for m in tags:
        if not m.group(1) and inside:
            return "a <think> inside another think block", "fix the tags"
        if m.group(1) and not inside and content[:m.start()].strip() and content[m.end():].strip():
            return "a </think> with no <think> before it, between text", "fix the tags"
        inside = not m.group(1)
    return None


def _untold(tangled: tuple[str, str]) -> str:
    why, fix = tangled
    return f"{why}: the reasoning cannot be told from the answer; {fix}, or pass --think keep"


class GuardError(FastftError, ValueError):
    pass


@dataclass
class Served:
    """One message as the guard renders it: its content; what was removed from the data's
    content, as (position in `content`, text), which data preview shows; and the spans of
    `content` rendered but kept out of the loss (think tags ollama keeps in an earlier reply)."""
    content: str
    removed: list[tuple[int, str]] = field(default_factory=list)
    unlearned: list[tuple[int, int]] = field(default_factory=list)


def strip_think(content: str) -> tuple[str, list[tuple[int, str]]]:
    """`--think strip` on one message: its think blocks removed, then any stray think tag; and
    what was removed, as (position in the stripped text, text), which data preview shows."""
    middle, blocks = _cut(THINK_BLOCK, content)
    stripped, tags = _cut(THINK_TAG, middle)

    def place(q: int) -> int:  # a position in `middle` -> in `stripped`
        inside = [r for s, r, t in tags if s < q < s + len(t)]
        return inside[0] if inside else q - sum(len(t) for s, _, t in tags if s + len(t) <= q)

    # Sorted as in the content: a block at q comes after a tag ending at q, before one starting there.
    order = sorted([(place(r), r, 0, t) for _, r, t in blocks] + [(r, s, 1, t) for s, r, t in tags])
    return stripped, [(at, text) for at, _, _, text in order]


def _cut(pattern: re.Pattern, text: str) -> tuple[str, list[tuple[int, int, str]]]:
    """`pattern` removed from `text`, and each removal as (start in text, start in the result, text)."""
    removed: list[tuple[int, int, str]] = []
    gone = [0]   # characters removed so far

    def cut(m: re.Match) -> str:
        removed.append((m.start(), m.start() - gone[0], m.group()))
        gone[0] += len(m.group())
        return ""
    return pattern.sub(cut, text), removed


def _holed(start: int, end: int, served: Served, text: str) -> list[tuple[int, int]]:
    """The span [start, end) of a turn that writes `served.content` at `start`, less its
    unlearned parts (a template that writes the content otherwise keeps the span whole, and
    the think tags in it are then reported)."""
    if not served.unlearned or not text.startswith(served.content, start):
        return [(start, end)]
    cuts = [start] + [start + k for hole in served.unlearned for k in hole] + [end]
    return [(a, b) for a, b in zip(cuts[::2], cuts[1::2]) if a < b]


@dataclass
class Rendered:
    """One example as it will be trained: the text and the character spans that carry loss."""
    line: int
    text: str
    assistant_spans: list[tuple[int, int]]


@dataclass
class TokenizedExample:
    line: int
    input_ids: list[int]
    labels: list[int]           # -100 where a token carries no loss
    # Each token's character span in the rendered text: only on request (data preview shows
    # the mask on the text); a training set has no use for them.
    offsets: list[tuple[int, int]] | None = None


def tokenize_rendered(r: Rendered, tokenizer, max_seq_len: int, train_on_all: bool = False,
                      offsets: bool = False) -> tuple[TokenizedExample, bool]:
    """(ids and labels cut at max_seq_len, whether it was cut); a token carries loss only if it
    lies inside an assistant span (or everywhere with `train_on_all`)."""
    e = _encode(r, tokenizer, max_seq_len, train_on_all, offsets)
    return e.tokens, e.truncated


@dataclass
class Encoded:
    """One example rendered, tokenised and masked: what training, data check, data preview and
    eval count from, so that they all count the same tokens."""
    rendered: Rendered
    tokens: TokenizedExample     # ids and labels as trained: cut at max_seq_len
    length: int                  # tokens before the cut
    trained: int                 # loss-carrying tokens after the cut (0: training drops it)

    @property
    def truncated(self) -> bool:
        return self.length > len(self.tokens.input_ids)

    @property
    def masked(self) -> int:
        """Tokens after the cut that carry no loss."""
        return len(self.tokens.labels) - self.trained


def _encode(r: Rendered, tokenizer, max_seq_len: int, train_on_all: bool, offsets: bool) -> Encoded:
    enc = tokenizer(r.text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = []
    starts = [s for s, _ in r.assistant_spans]   # sorted, disjoint: only the last one starting
                                                 # at or before a token can hold it
    for tid, (a, b) in zip(ids, enc["offset_mapping"]):
        k = bisect.bisect_right(starts, a) - 1
        inside = k >= 0 and b <= r.assistant_spans[k][1]
        labels.append(tid if (train_on_all or inside) else -100)
    labels = labels[:max_seq_len]
    spans = [tuple(o) for o in enc["offset_mapping"][:max_seq_len]] if offsets else None
    return Encoded(r, TokenizedExample(r.line, ids[:max_seq_len], labels, spans), len(ids),
                   sum(label != -100 for label in labels))


def encode_all(guard: ChatGuard, examples: Sequence[Example], max_seq_len: int,
               train_on_all: bool = False, strict: bool = False,
               offsets: Container[int] = ()) -> list[Encoded | None]:
    """render -> tokenise -> mask, for each example: None where the guard refused it (the issue
    is in `guard.report.issues`). `strict` raises GuardError with the new issues before any
    tokenising (training's default); `offsets`: the indexes of the examples whose token spans are
    kept (data preview shows a few; a training set has no use for them)."""
    before = len(guard.report.issues)
    rendered = [guard.render(e) for e in examples]
    if strict and len(guard.report.issues) > before:
        raise GuardError("\n".join(str(i) for i in guard.report.issues[before:]))
    return [None if r is None else _encode(r, guard.tokenizer, max_seq_len, train_on_all, i in offsets)
            for i, r in enumerate(rendered)]


@dataclass(frozen=True)
class GuardEntry:
    """One fact of the guard's summary: a table shows `what` beside `detail`; `count` is the
    number of examples it concerns, for the facts that count examples."""
    what: str
    detail: str
    count: int | None = None

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


@dataclass
class GuardReport:
    variant: str
    template_replaced: bool = False
    eos_set: str | None = None           # the EOS we replaced, if any
    pad_set: str | None = None           # the pad token we replaced, if any
    empty_think_removed: int = 0         # examples where a template put an empty think block
    data_think_stripped: int = 0         # examples whose data held think blocks, stripped
    data_think_kept: int = 0             # ... kept (policy "keep")
    issues: list[DataIssue] = field(default_factory=list)   # think errors and parity failures
    # Not in a run's record (core.run.GuardRecord), only in data check's: see to_dict.
    history_filtered: int = 0    # examples with an earlier reply ollama's think-tag filter changes
    content_think: int = 0       # examples with think tags in user, system or tool content (kept)

    def to_dict(self, notes: bool = False) -> dict:
        """The report as a run records it; with `notes`, the two counts it does not record too."""
        out = asdict(self) | {"issues": [str(i) for i in self.issues]}
        if not notes:
            del out["history_filtered"], out["content_think"]
        return out

    def entries(self) -> list[GuardEntry]:
        """The summary, one fact per entry (the facts that did not happen left out)."""
        out = [GuardEntry("model variant", self.variant)]
        if self.template_replaced:
            out.append(GuardEntry("chat template", "replaced with Qwen3 Instruct-2507's "
                                                   "(tokenizer shipped another)"))
        if self.eos_set:
            out.append(GuardEntry("EOS", f"{self.eos_set!r} -> {EOS!r}"))
        if self.pad_set:
            out.append(GuardEntry("pad", f"{self.pad_set!r} -> {PAD!r} (must differ from EOS)"))
        counted = (("template think blocks", "removed from {} examples", self.empty_think_removed),
                   ("data think blocks", "stripped from {} examples", self.data_think_stripped),
                   ("data think blocks", "kept in {} examples (--think keep)", self.data_think_kept))
        counted += (("earlier replies", "rendered as ollama's server sends them (its think-tag "
                                        "filter) in {} examples", self.history_filtered),
                    ("note", "{} examples hold a think tag in user, system or tool content: "
                             "trained as written, as ollama sends it", self.content_think))
        out += [GuardEntry(what, detail.format(n), n) for what, detail, n in counted if n]
        return out

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        return [str(e) for e in self.entries()]


class ChatGuard:
    """Fixes a tokenizer's template and special tokens in place, then renders examples through it."""

    def __init__(self, tokenizer, model: str, think: str = "strip", path: str = "<data>"):
        if think not in THINK_POLICIES:
            raise GuardError(f"--think must be one of {', '.join(THINK_POLICIES)}, not {think!r}")
        self.tokenizer = tokenizer
        self.think = think
        self.path = path
        self.variant = detect_variant(model)
        self.report = GuardReport(variant=self.variant)
        self._fix_tokenizer()

    @property
    def non_thinking(self) -> bool:
        return self.variant == INSTRUCT_2507

    def _fix_tokenizer(self) -> None:
        tok = self.tokenizer
        if self.non_thinking:
            wanted = template_text("qwen3_instruct_2507.jinja")
            if tok.chat_template != wanted:
                tok.chat_template = wanted
                self.report.template_replaced = True
        elif not tok.chat_template:
            raise GuardError("the tokenizer has no chat template; fastft trains chat models only")
        if self.variant != OTHER:
            if tok.eos_token != EOS:
                self.report.eos_set = tok.eos_token
                tok.eos_token = EOS
            if tok.pad_token is None or tok.pad_token == tok.eos_token:
                self.report.pad_set = tok.pad_token or "<none>"
                tok.pad_token = PAD
        elif tok.pad_token is None or tok.pad_token == tok.eos_token:
            raise GuardError(f"pad token {tok.pad_token!r} must exist and differ from EOS "
                             f"{tok.eos_token!r}: set one in the tokenizer")

    # -- rendering -----------------------------------------------------------------------------

    def _template_input(self, messages: list[dict]) -> list[dict]:
        """`messages` as the chat template reads them: a Qwen3 template writes a call's
        arguments given as a string as they are, so they are given as the canonical text
        (Go's numbers: -0, 1e-7, which `tojson` would write otherwise)."""
        if self.variant == OTHER or not any(m.get("tool_calls") for m in messages):
            return messages
        def call(c: dict) -> dict:
            fn = c.get("function", {})
            if not isinstance(fn.get("arguments"), dict):
                return c
            return {**c, "function": {**fn, "arguments": render_canonical(fn["arguments"])}}
        return [{**m, "tool_calls": [call(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m
                for m in messages]

    def _render(self, messages: list[dict], generation_prompt: bool,
                tools: list[dict] | None = None) -> tuple[str, int]:
        text = self.tokenizer.apply_chat_template(
            self._template_input(messages), tools=tools or None, tokenize=False,
            add_generation_prompt=generation_prompt)
        removed = 0
        if self.non_thinking and self.think != "keep":  # under keep, empty blocks may be data
            text, removed = TEMPLATE_THINK.subn("", text)
        return text, removed

    def prompt(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """The text a server sends to generate the next assistant turn for the request
        `messages` (`tools`: the schemas offered, canonical as fastft.data.tools writes them):
        the earlier replies as ollama's think-tag filter sends them (a Qwen3 model)."""
        if self.variant != OTHER:
            earlier = set(history.filtered(messages))
            messages = [{**m, "content": history.filter_reply(m["content"])} if i in earlier else m
                        for i, m in enumerate(messages)]
        return self._prompt(messages, tools)

    def _prompt(self, messages: list[dict], tools: list[dict] | None) -> str:
        return self._render(messages, generation_prompt=True, tools=tools)[0]

    def serve(self, example: Example) -> list[Served] | DataIssue:
        """Each message as the guard renders it, or the issue that refuses the example. Nothing
        here is reported or counted (render does that), so data preview can ask again.

        User, system and tool content is rendered as written: ollama sends it so. An earlier
        reply (before the last user message) is rendered as ollama's server sends it to every
        later turn (fastft.data.history), for every Qwen3 model. The replies after the last
        user message are the answers the model learns to write: the --think policy applies to
        them (the non-thinking model), as the model's own answer comes back in later requests."""
        messages = example.chat()
        if self.variant == OTHER:
            return [Served(m["content"]) for m in messages]
        earlier = set(history.filtered(messages))
        out: list[Served] = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                out.append(Served(m["content"]))
                continue
            got = self._reply(m, i in earlier)
            if isinstance(got, Served) and i in earlier:
                got = self._two_ways(messages, i, got)
            if not isinstance(got, Served):
                return DataIssue(self.path, example.line, f"messages[{i}].content", got)
            out.append(got)
        return out

    def _reply(self, m: dict, earlier: bool) -> Served | str:
        """An assistant message as rendered, or why it cannot be."""
        content = m["content"]
        if self.non_thinking and self.think == "error" and THINK_TAG.search(content):
            return ("holds a <think> tag; Qwen3 Instruct-2507 is a non-thinking model "
                    "(use --think strip or --think keep)")
        if not earlier:
            return self._answer(content, bool(m.get("tool_calls")))
        sent = history.filter_reply(content)
        removed = [(0, content[:len(content) - len(sent)])] if sent != content else []
        if not sent and not m.get("tool_calls"):
            return (f"ollama's server sends this reply empty to the turns after the next user "
                    f"message (its think-tag filter drops {quote(content)} from earlier replies), "
                    f"so it would be trained as an empty answer; complete it or remove the turn")
        if not (self.strips_think and THINK_TAG.search(sent)):
            return Served(sent, removed)
        if tangled := tangled_think(sent):
            return _untold(tangled)
        # ollama keeps think tags past a reply's start: rendered as sent, left out of the loss.
        return Served(sent, removed, [t.span() for t in THINK_ANY.finditer(sent)])

    def _answer(self, content: str, calls: bool) -> Served | str:
        """An answer after the last user message, under the --think policy."""
        if not (self.strips_think and THINK_TAG.search(content)):
            return Served(content)
        if tangled := tangled_think(content):
            return _untold(tangled)
        stripped, removed = strip_think(content)
        if not stripped.strip() and not calls:
            return "is empty once its think block is stripped"
        return Served(stripped, removed)

    def _two_ways(self, messages: list[dict], i: int, got: Served) -> Served | str:
        """`got` (earlier reply i as ollama's filter sends it), or why no training text can
        match ollama: an assistant turn before the next user message (a tool call's answer)
        is served the reply unfiltered, since ollama filters only replies before the last
        user message of the request."""
        nxt = next((k for k in range(i + 1, len(messages)) if messages[k]["role"] == "user"),
                   len(messages))
        later = next((k for k in range(i + 1, nxt) if messages[k]["role"] == "assistant"), None)
        if later is None:
            return got
        answer = self._reply(messages[i], earlier=False)
        if isinstance(answer, Served) and answer.content == got.content:
            return got
        shown = answer.content if isinstance(answer, Served) else messages[i]["content"]
        fix = 'write its content as ""' if not got.content else "remove its think block"
        return (f"ollama's server sends this reply as {quote(got.content)} to the turns after "
                f"the next user message but as {quote(shown)} to messages[{later}] (its "
                f"think-tag filter rewrites only replies before the last user message), so no "
                f"one training text matches both prompts; {fix}")

    def _count(self, example: Example, served: list[Served]) -> None:
        """The report's counts for one rendered example."""
        raw = example.chat()
        replies = [m["content"] for m in raw if m["role"] == "assistant"]
        if self.non_thinking and any(THINK_TAG.search(c) for c in replies):
            if self.think == "strip":
                self.report.data_think_stripped += 1
            else:
                self.report.data_think_kept += 1
        if self.non_thinking and any(THINK_TAG.search(m["content"]) for m in raw
                                     if m["role"] != "assistant"):
            self.report.content_think += 1
        if any(served[i].content != raw[i]["content"] for i in history.filtered(raw)):
            self.report.history_filtered += 1

    @property
    def strips_think(self) -> bool:
        """Whether think blocks in the data are removed (strip_think) before rendering."""
        return self.non_thinking and self.think == "strip"

    def unguarded_text(self, messages: list[dict], tools: list[dict] | None = None) -> str:
        """`messages` as the chat template alone renders them, without the guard's think
        handling: `fastft data preview` locates what the guard removed with it."""
        return self.tokenizer.apply_chat_template(self._template_input(messages), tools=tools or None,
                                                  tokenize=False, add_generation_prompt=False)

    def render(self, example: Example) -> Rendered | None:
        """The training text of one example and its assistant spans; None (and an issue) if it fails."""
        served = self.serve(example)
        if isinstance(served, DataIssue):
            self.report.issues.append(served)
            return None
        messages = [{**m, "content": s.content} for m, s in zip(example.chat(), served)]
        text, removed = self._render(messages, generation_prompt=False, tools=example.tools)
        spans = self._spans(example, messages, served, text)
        if spans is None:
            return None
        if self.non_thinking and self.think != "keep" and any(
                THINK_TAG.search(text, s, e) for s, e in spans):
            self.report.issues.append(DataIssue(
                self.path, example.line, "<template>", "the trained text still holds a think tag"))
            return None
        self.report.empty_think_removed += bool(removed)
        self._count(example, served)
        return Rendered(example.line, text, spans)

    def _spans(self, example: Example, messages: list[dict], served: list[Served],
               text: str) -> list[tuple[int, int]] | None:
        """The trained spans of `text`, each turn's checked against its serving prompt; None
        (and an issue) on a mismatch. `messages` are as served: for the request before each
        turn, ollama's filter would change none of them (serve refused the examples where it
        would)."""
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        exact = set(turns[:EXACT_TURNS] + turns[-1:])
        spans, header, last = [], None, 0
        for i in turns:
            if i in exact:
                prefix = self._prompt(messages[:i], example.tools)
                if not text.startswith(prefix):
                    self._mismatch(example, i, prefix, text)
                    return None
                start = max(len(prefix), last)
                header = header or self._header(messages[:i], prefix, example.tools)
            else:   # between the exact ends of a long conversation: the turn's header, found
                found = text.find(header, last) if header else -1
                if found < 0:
                    self._mismatch(example, i, text[:last] + (header or ""), text)
                    return None
                start = found + len(header)
            end = text.find(EOS, start)
            end = len(text) if end < 0 else end + len(EOS)
            if text.startswith("\n", end):
                end += 1
            last = end
            if i not in example.no_loss:  # a "weight": 0 turn is context only: no span, no loss
                spans += _holed(start, end, served[i], text)
        return spans

    def _header(self, before: list[dict], prompt: str, tools) -> str | None:
        """What the generation prompt adds before an answer ("<|im_start|>assistant\\n")."""
        context = self._render(before, generation_prompt=False, tools=tools)[0] if before else ""
        return prompt[len(context):] or None if prompt.startswith(context) else None

    def _mismatch(self, example: Example, i: int, prefix: str, text: str) -> None:
        at = next((k for k, (a, b) in enumerate(zip(prefix, text)) if a != b), len(text))
        self.report.issues.append(DataIssue(
            self.path, example.line, f"messages[{i}]",
            f"train/serve mismatch: the serving prompt differs from the training text at "
            f"character {at} (served {prefix[at:at + 30]!r}, trained {text[at:at + 30]!r})"))

    def render_all(self, examples: Iterable[Example]) -> list[Rendered]:
        """Render every example; problems are collected in `self.report.issues`, not raised."""
        return [r for r in (self.render(e) for e in examples) if r is not None]
