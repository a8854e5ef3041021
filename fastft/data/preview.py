"""`fastft data preview`: examples as training sees them, with the loss mask on the text.

Each example goes through the same step as `fastft train`'s data preparation, `encode_all`: the
chat-template guard renders it (`ChatGuard.render`) and every token gets its label. The
preview then maps the labels back onto the text (trained tokens highlighted, masked ones dimmed),
puts back what the guard stripped (think blocks, shown struck through), marks the EOS that ends
each trained turn (the stop token the guard sets and keeps in the loss), and draws a histogram
of token lengths over the whole file against --max-seq-len.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..core.qwen3 import EOS
from .messages import DataIssue, Example
from .read import load_conversations
from .check import load_tokenizer
from ..core.errors import FastftError
from .template import ChatGuard, GuardEntry, Rendered, encode_all

REMOVED = "removed"   # text the guard stripped: never trained on
ADDED = "added"       # the EOS the guard sets and keeps in the loss, so the model learns to stop
HISTOGRAM_ROWS = 12
BAR_WIDTH = 40

STYLE_TRAINED = "bold green"
STYLE_MASKED = "dim"
STYLE_REMOVED = "strike red"
STYLE_ADDED = "bold green underline"
STYLE_CUT = "dim strike"


@dataclass
class Segment:
    text: str
    trained: bool                # its tokens carry loss
    guard: str | None = None     # REMOVED, ADDED or None
    cut: bool = False            # beyond --max-seq-len: cut off when training


@dataclass
class PreviewExample:
    index: int                   # 0-based, among the file's valid examples
    line: int
    tokens: int                  # before the cut at --max-seq-len
    trained_tokens: int          # after it, as trained
    truncated: bool
    segments: list[Segment]


@dataclass
class Bucket:
    min: int                     # token lengths min..max (inclusive)
    max: int
    count: int
    cut: int                     # how many of them exceed --max-seq-len


@dataclass
class Preview:
    path: str
    max_seq_len: int
    examples: int                # rendered (those that pass the guard)
    trained_tokens: int
    masked_tokens: int
    truncated: int
    dropped: int                 # no trained token left after the cut: training drops them
    shown: list[PreviewExample] = field(default_factory=list)
    histogram: list[Bucket] = field(default_factory=list)
    guard: list[GuardEntry] = field(default_factory=list)   # the guard's summary
    skipped: list[str] = field(default_factory=list)    # records dropped (--skip-invalid)
    note: str | None = None

    def to_dict(self) -> dict:
        # The guard's summary as the lines it prints: the JSON has always held them so.
        return asdict(self) | {"guard": [str(e) for e in self.guard]}


# -- building -----------------------------------------------------------------------------------

def build_preview(path: str, model: str, max_seq_len: int, think: str = "strip",
                  train_on_all: bool = False, skip_invalid: bool = False, n: int = 3,
                  index: int | None = None) -> Preview:
    """The preview of `path`; raises DataError/GuardError (file:line) as training would."""
    ds = load_conversations(path, skip_invalid=skip_invalid)
    if index is not None and not 0 <= index < len(ds.examples):
        raise FastftError(f"--index {index}: {path} has {len(ds.examples)} examples (0 to "
                          f"{len(ds.examples) - 1})")
    tokenizer, model_path, note = load_tokenizer(model)
    guard = ChatGuard(tokenizer, model_path, think=think, path=str(path))
    chosen = [index] if index is not None else range(min(n, len(ds.examples)))
    encoded = encode_all(guard, ds.examples, max_seq_len, train_on_all, strict=not skip_invalid,
                         offsets=chosen)
    done = [e for e in encoded if e is not None]
    lengths = [e.length for e in done]   # uncut, for the histogram
    shown = [PreviewExample(i, e.rendered.line, e.length, e.trained, e.truncated,
                            segments(e.rendered, guard_removals(guard, ds.examples[i], e.rendered.text),
                                     e.tokens.offsets, e.tokens.labels, max_seq_len))
             for i, e in enumerate(encoded) if i in chosen and e is not None]
    return Preview(str(path), max_seq_len, len(done), sum(e.trained for e in done),
                   sum(e.masked for e in done), sum(e.truncated for e in done),
                   sum(not e.trained for e in done), shown, histogram(lengths, max_seq_len),
                   guard.report.entries(),
                   [str(i) for i in ds.issues + guard.report.issues], note)


def segments(r: Rendered, removed: list[tuple[int, str]], offsets: list[tuple[int, int]],
             labels: list[int], max_seq_len: int) -> list[Segment]:
    """The rendered text cut into runs of equal (trained, guard, cut), with the text the guard
    removed put back where it was, as untrained REMOVED segments."""
    marks = _char_marks(r, offsets, labels, max_seq_len)
    removals: dict[int, str] = {}
    for at, text in removed:
        removals[at] = removals.get(at, "") + text
    out: list[Segment] = []
    for pos, (trained, guard, cut) in enumerate(marks):
        if pos in removals:
            out.append(Segment(removals.pop(pos), False, REMOVED))
        last = out[-1] if out else None
        if last and (last.trained, last.guard, last.cut) == (trained, guard, cut):
            last.text += r.text[pos]
        else:
            out.append(Segment(r.text[pos], trained, guard, cut))
    out.extend(Segment(text, False, REMOVED) for text in removals.values())  # at the very end
    return out


def _char_marks(r: Rendered, offsets: list[tuple[int, int]], labels: list[int],
                max_seq_len: int) -> list[tuple[bool, str | None, bool]]:
    """(trained, guard, cut) of every character of the rendered text. A token owns the text
    from the end of the token before it to its own end, so no character is left without one."""
    marks: list[tuple[bool, str | None, bool]] = []
    for k, ((_, end), label) in enumerate(zip(offsets, labels)):
        marks.extend([(label != -100 and k < max_seq_len, None, k >= max_seq_len)] * (end - len(marks)))
    marks.extend([(False, None, True)] * (len(r.text) - len(marks)))
    for start, end in r.assistant_spans:
        at = r.text.rfind(EOS, start, end)
        if at >= 0 and marks[at][0]:
            marks[at:at + len(EOS)] = [(True, ADDED, False)] * len(EOS)
    return marks


def guard_removals(guard: ChatGuard, example: Example, text: str) -> list[tuple[int, str]]:
    """(position in the training text `text`, removed text) for each think block or tag the
    guard stripped from `example`'s messages, and what ollama's think-tag filter drops from an
    earlier reply."""
    messages = example.chat()
    served = guard.serve(example)
    if isinstance(served, DataIssue) or not any(s.removed for s in served):
        return []
    parts = [(s.content, s.removed) for s in served]
    # Where the template writes each message: render markers in place of the contents.
    marks = [f"\x00{k}\x00" for k in range(len(parts))]
    shape = guard.unguarded_text([{**m, "content": mark} for m, mark in zip(messages, marks)],
                                 example.tools)
    rebuilt, cursor, out = "", 0, []
    for (stripped, removed), mark in zip(parts, marks):
        at = shape.find(mark, cursor)
        if at < 0:
            break
        rebuilt += shape[cursor:at]
        out += [(len(rebuilt) + p, t) for p, t in removed]
        rebuilt += stripped
        cursor = at + len(mark)
    if rebuilt + shape[cursor:] == text:
        return out
    # A template that does not write contents as they are: compare the texts instead.
    return _removals(guard.unguarded_text(messages, example.tools), text)


def _removals(before: str, after: str, max_cells: int = 10**7) -> list[tuple[int, str]]:
    """(position in `after`, text) of what was deleted from `before` to make `after`: lines are
    matched first, and changed lines character by character where that stays cheap."""
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    starts = [0]
    for line in b:
        starts.append(starts[-1] + len(line))
    out = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        gone, kept = "".join(a[i1:i2]), "".join(b[j1:j2])
        if tag == "delete" or (tag == "replace" and len(gone) * len(kept) > max_cells):
            out.append((starts[j1], gone))
        elif tag == "replace":
            ops = difflib.SequenceMatcher(None, gone, kept, autojunk=False).get_opcodes()
            out += [(starts[j1] + y, gone[x1:x2]) for t, x1, x2, y, _ in ops if t in ("delete", "replace")]
    return out


def histogram(lengths: list[int], max_seq_len: int, rows: int = HISTOGRAM_ROWS) -> list[Bucket]:
    """Equal-width buckets of round width from the shortest to the longest example."""
    if not lengths:
        return []
    lo, hi = min(lengths), max(lengths)
    width = _round_up((hi - lo + 1) / rows)
    first = lo // width
    buckets = [Bucket(k * width, (k + 1) * width - 1, 0, 0) for k in range(first, hi // width + 1)]
    for n in lengths:
        b = buckets[n // width - first]
        b.count += 1
        b.cut += n > max_seq_len
    return buckets


def _round_up(x: float) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is >= x."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= x:
                return m * step
        step *= 10


# -- printing -----------------------------------------------------------------------------------

def print_preview(p: Preview, console: Console) -> None:
    legend = Text.assemble(("trained", STYLE_TRAINED), "  ", ("masked (no loss)", STYLE_MASKED), "  ",
                           ("removed by the guard", STYLE_REMOVED), "  ",
                           ("EOS added to the loss by the guard", STYLE_ADDED), "  ",
                           ("cut (--max-seq-len)", STYLE_CUT))
    console.print(legend, soft_wrap=True)
    for ex in p.shown:
        cut = f", cut to {p.max_seq_len}" if ex.truncated else ""
        console.rule(f"example {ex.index} (line {ex.line}): {ex.tokens} tokens, "
                     f"{ex.trained_tokens} trained{cut}", align="left")
        console.print(example_text(ex), soft_wrap=True)
    console.rule(align="left")
    console.print(histogram_table(p))
    console.print(summary_table(p))


def example_text(ex: PreviewExample) -> Text:
    text = Text()
    for s in ex.segments:
        if s.guard == REMOVED:
            style = STYLE_REMOVED
        elif s.cut:
            style = STYLE_CUT
        elif s.guard == ADDED:
            style = STYLE_ADDED
        else:
            style = STYLE_TRAINED if s.trained else STYLE_MASKED
        text.append(s.text, style=style)
    return text


def histogram_table(p: Preview) -> Table:
    t = Table(title=f"Tokens per example ({p.examples} examples, --max-seq-len {p.max_seq_len})",
              title_justify="left", show_header=False, box=None, padding=(0, 1))
    most = max((b.count for b in p.histogram), default=1) or 1
    for b in p.histogram:
        bar = "█" * max(round(b.count / most * BAR_WIDTH), 1 if b.count else 0)
        marker = ""
        if b.min <= p.max_seq_len <= b.max:
            marker = f"◀ max-seq-len {p.max_seq_len}" + (f" ({b.cut} cut)" if b.cut else "")
        elif b.min > p.max_seq_len and b.count:
            marker = "cut"
        style = "red" if b.min > p.max_seq_len else "cyan"
        t.add_row(f"{b.min:>6}–{b.max:<6}", Text(bar, style=style), str(b.count), marker)
    if p.histogram and p.histogram[-1].max < p.max_seq_len:
        t.add_row("", Text(f"(--max-seq-len {p.max_seq_len}: no example reaches it)", style="dim"))
    return t


def summary_table(p: Preview) -> Table:
    t = Table(show_header=False, title_justify="left")
    t.add_row("examples", str(p.examples))
    t.add_row("trained tokens", f"{p.trained_tokens:,}")
    t.add_row("masked tokens", f"{p.masked_tokens:,}")
    t.add_row("truncated", f"[yellow]{p.truncated}[/]" if p.truncated else "0")
    if p.dropped:
        t.add_row("dropped", f"[yellow]{p.dropped}[/] (no trained token left after the cut)")
    for entry in p.guard:
        t.add_row(entry.what, Text(entry.detail))
    if p.skipped:
        t.add_row("skipped", f"[yellow]{len(p.skipped)}[/] (--skip-invalid)")
    if p.note:
        t.add_row("note", Text(p.note))
    return t
