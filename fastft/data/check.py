"""`fastft data check`: structure, chat-template guard and token statistics of a dataset."""

from __future__ import annotations

import statistics
import sys
from dataclasses import asdict, dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .messages import DataIssue, Dataset, shown_path
from .read import empty_message, read_dataset
from ..core.errors import FastftError
from .template import ChatGuard, GuardReport, encode_all


class TokenizerError(FastftError):
    """The --model's tokenizer cannot be loaded: a model problem, not the dataset's."""


@dataclass
class CheckResult:
    dataset: Dataset
    skip_invalid: bool
    tokenizer_note: str | None = None
    guard: GuardReport | None = None
    lengths: list[int] = field(default_factory=list)       # tokens per example, as trained
    trained: list[int] = field(default_factory=list)       # assistant (loss-carrying) tokens
    max_seq_len: int = 2048

    @property
    def issues(self) -> list[DataIssue]:
        return self.dataset.issues + (self.guard.issues if self.guard else [])

    @property
    def ok(self) -> bool:
        return bool(self.lengths) and (self.skip_invalid or not self.issues)

    @property
    def too_long(self) -> int:
        return sum(n > self.max_seq_len for n in self.lengths)

    def token_stats(self) -> dict | None:
        """Tokens per example (min, mean, median, p95, max) and in total, as trained."""
        if not self.lengths:
            return None
        ls = sorted(self.lengths)
        return {"min": ls[0], "mean": round(statistics.mean(ls), 1), "median": ls[len(ls) // 2],
                "p95": ls[min(len(ls) - 1, int(len(ls) * 0.95))], "max": ls[-1],
                "total": sum(ls), "trained": sum(self.trained)}

    def to_dict(self) -> dict:
        """The report as `fastft data check --json` prints it."""
        ds = self.dataset
        return {"file": str(ds.path), "ok": self.ok, "formats": dict(ds.formats.most_common()),
                "examples": len(ds.examples), "records_with_problems": ds.skipped,
                "problems": [asdict(i) for i in self.issues],
                "warnings": [asdict(i) for i in ds.warnings],
                "messages": sum(len(e.messages) for e in ds.examples),
                "tokens": self.token_stats(), "max_seq_len": self.max_seq_len,
                "over_max_seq_len": self.too_long, "skip_invalid": self.skip_invalid,
                "guard": self.guard.to_dict(notes=True) if self.guard else None,
                "note": self.tokenizer_note}


def load_tokenizer(model: str):
    """The model's tokenizer; for a Qwen3 model out of reach (offline), the built-in tiny one,
    which carries the real Qwen3 vocabulary, so the counts are still exact."""
    from transformers import AutoTokenizer

    from ..core.models import hub_unavailable, resolve_model
    from .template import OTHER, detect_variant
    ref = resolve_model(model)
    try:
        try:  # the local HF cache first: no network round-trips when the model was seen before
            tok = AutoTokenizer.from_pretrained(ref.path, local_files_only=True)
        except (OSError, ValueError):
            # offline, or no network: say so in seconds, not after the hub libraries' ~45 s
            # of retries
            if not ref.is_local and (why := hub_unavailable(ref.path)):
                raise _Unreachable(*why) from None
            tok = AutoTokenizer.from_pretrained(ref.path, trust_remote_code=False)
        return tok, ref.path, None
    except (OSError, ValueError) as e:
        if detect_variant(ref.path) == OTHER:
            raise TokenizerError(f"cannot load the tokenizer of {model}: {_why_not(ref, e)}") from None
        from ..core.tiny import tiny_model_path
        why = e.args[0] if isinstance(e, _Unreachable) else type(e).__name__
        note = (f"{model} is out of reach ({why}); counted with the Qwen3 "
                f"vocabulary of the built-in tiny model (same tokenizer)")
        return AutoTokenizer.from_pretrained(tiny_model_path("tiny")), ref.path, note


class _Unreachable(OSError):
    """The hub cannot be asked (offline mode, no network): its args are hub_unavailable's
    (why, what to do)."""


def _why_not(ref, e: Exception) -> str:
    """Why the tokenizer of ``ref`` did not load, and what to do, in one line."""
    if ref.is_local:
        return ("the folder holds no usable tokenizer (tokenizer.json, tokenizer_config.json); "
                "give a model's folder, or a hub id, with --model")
    from ..core.models import hub_problem
    text = str(e).strip()
    if isinstance(e, _Unreachable):    # the hub was asked already: not a second wait on it
        why = ": ".join(e.args)
    else:
        why = hub_problem(ref.path) or (text.splitlines()[0] if text else type(e).__name__)
    return f"{why}; check the name, or give a local folder with --model"


def check_dataset(path, model: str, max_seq_len: int = 2048, think: str = "strip",
                  skip_invalid: bool = False) -> CheckResult:
    ds = read_dataset(path)
    result = CheckResult(ds, skip_invalid, max_seq_len=max_seq_len)
    if not ds.examples:
        if not ds.issues:  # an empty file has no problem to list, yet nothing to train on
            ds.issues.append(DataIssue(ds.path, 0, "<file>", empty_message(ds)))
        return result
    tokenizer, model_path, result.tokenizer_note = load_tokenizer(model)
    guard = ChatGuard(tokenizer, model_path, think=think, path=str(path))
    # Uncut, as training would see it before --max-seq-len: the table reports what is cut.
    for e in filter(None, encode_all(guard, ds.examples, max_seq_len=sys.maxsize)):
        result.lengths.append(e.length)
        result.trained.append(e.trained)
    result.guard = guard.report
    return result


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def print_check(result: CheckResult, console: Console) -> None:
    ds = result.dataset
    for issue in result.issues[:200]:
        # soft_wrap: one problem a line at any width (a path split over two lines is no path)
        console.print(f"[red]✗[/] {escape(str(issue))}", highlight=False, soft_wrap=True)
    if len(result.issues) > 200:
        console.print(f"[red]… and {len(result.issues) - 200} more problems[/]")
    for warning in ds.warnings[:50]:    # the records are kept: worth a look, not a failure
        console.print(f"[yellow]![/] {escape(str(warning))}", highlight=False, soft_wrap=True)
    if len(ds.warnings) > 50:
        console.print(f"[yellow]… and {len(ds.warnings) - 50} more warnings[/]")
    t = Table(title=f"Dataset {escape(shown_path(ds.path))}", show_header=False, title_justify="left")
    t.add_row("format", ", ".join(f"{k} ({v})" for k, v in ds.formats.most_common()) or "-")
    t.add_row("examples", f"{len(ds.examples)} valid, {_count(len(ds.issues), 'problem')} in "
                          f"{_count(ds.skipped, 'record')}")
    turns = [len(e.messages) for e in ds.examples]
    if turns:
        t.add_row("turns", f"{sum(turns)} messages, {statistics.mean(turns):.1f} per example "
                           f"(max {max(turns)})")
    if (st := result.token_stats()) is not None:
        t.add_row("tokens / example", f"min {st['min']}, mean {st['mean']:.0f}, "
                                      f"median {st['median']}, p95 {st['p95']}, max {st['max']}")
        t.add_row("tokens total", f"{st['total']:,} ({st['trained']:,} in assistant turns, trained)")
        over = result.too_long
        t.add_row(f"over --max-seq-len {result.max_seq_len}",
                  f"[yellow]{over}[/] (cut when training)" if over else "0")
    if result.guard:
        for entry in result.guard.entries():
            t.add_row(entry.what, entry.detail)
    if result.tokenizer_note:
        t.add_row("note", result.tokenizer_note)
    console.print(t)
    if not result.lengths:  # never "ready" (nor "would be dropped") with nothing to train on
        console.print("[bold red]✗ nothing to train on[/]")
    elif result.issues and result.skip_invalid:
        console.print(f"[yellow]--skip-invalid: {_count(len(result.issues), 'problem')}; those "
                      f"records would be dropped[/]")
    elif result.issues:
        console.print(f"[bold red]{_count(len(result.issues), 'problem')}[/] — fix "
                      f"{'it' if len(result.issues) == 1 else 'them'} or pass --skip-invalid")
    else:
        console.print("[bold green]✓ ready to train[/]")
