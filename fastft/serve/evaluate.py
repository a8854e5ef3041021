"""`fastft eval RUN DATA`: held-out loss and perplexity of the base model and of the fine-tuned
one, side by side, and a few answers from each.

DATA is read, guarded, rendered and masked exactly as training does it (`train.prepare_data`
with the run's own config), so the loss covers the tokens training put loss on (assistant turns,
or everything under --train-on-all) and nothing else. The loss is the token-weighted mean over
all of them (one long answer counts for its tokens, as in training), and perplexity is its exp.
Both models are the same loaded model: the base is the fine-tuned one with its adapter disabled.
"""

from __future__ import annotations

from ..core.models import import_unsloth, load_for_inference

import_unsloth()  # before transformers and peft (see fastft.core.models)

import contextlib  # noqa: E402
import math  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

from .chat import Sampling, generate_text  # noqa: E402
from .config import EvalConfig  # noqa: E402
from ..core.qwen3 import EOS  # noqa: E402
from ..data.read import Example, load_conversations  # noqa: E402
from ..core.quiet import captured, status as quiet_status  # noqa: E402
from ..core.run import read_trained  # noqa: E402
from ..data.template import ChatGuard, TokenizedExample  # noqa: E402
from ..train.trainer import prepare_data  # noqa: E402
# The retention gate batches its held-out examples the same way.
from ..export.retention import length_batches  # noqa: E402

# Tokens per forward pass: the float32 logits of one pass take TOKENS x vocab x 4 bytes (2.5 GB
# for Qwen3's 151,936-token vocabulary), on top of the model.
TOKENS_PER_BATCH = 4096
IGNORE = -100


@dataclass
class Score:
    loss: float          # mean cross-entropy per trained token (nats)
    ppl: float           # exp(loss)
    tokens: int          # trained tokens scored
    examples: int


@dataclass
class Sample:
    line: int
    prompt: list[dict]   # the conversation up to its last assistant turn
    reference: str       # that assistant turn, from DATA
    base: str
    tuned: str


@dataclass
class EvalResult:
    run: str
    data: str
    base: Score
    tuned: Score
    truncated: int       # examples cut at the run's max_seq_len (scored up to it, as trained)
    dropped: int         # examples with no trained token left after the cut (not scored)
    samples: list[Sample] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate_run(opts: EvalConfig, console=None, verbose: bool = False) -> EvalResult:
    """Score `opts.data` with the run's base model and with its fine-tuned one; sample answers
    from both for the first `opts.samples` conversations. Raises DataError (file:line) on bad
    data. What the libraries print while the model loads goes to a log unless `verbose`
    (fastft.core.quiet)."""
    run, data = opts.run, opts.data
    trained = read_trained(run, "eval")
    folder, record = trained.folder, trained.record
    # The run's own rendering and masking options, on DATA, all of it scored (no split).
    cfg = record.config.model_copy(update=dict(data=str(data), eval_file=None, eval_split=0.0,
                                               skip_invalid=False))
    dataset = load_conversations(data)          # bad DATA fails here, before a model is loaded
    loading = f"loading {record.config.model} with the adapter of {folder.name}"
    with captured(None, console, verbose, what="eval"), spinner(console, loading, in_capture=True):
        model, tokenizer = load_for_inference(folder.adapter, cfg.max_seq_len, cfg.load_in_4bit)
    guard = ChatGuard(tokenizer, record.plan.model_path, think=cfg.think, path=str(data))
    prepared = prepare_data(cfg, guard, tokenizer, (dataset, []))
    with spinner(console, "scoring the fine-tuned model"):
        tuned = score(model, prepared.train, tokenizer.pad_token_id)
    with spinner(console, "scoring the base model (adapter disabled)"), model.disable_adapter():
        base = score(model, prepared.train, tokenizer.pad_token_id)
    shown = dataset.examples[:opts.samples]
    with spinner(console, f"sampling answers for {len(shown)} conversations"):
        answers = sample_answers(model, tokenizer, guard, shown, opts.max_new_tokens)
    return EvalResult(str(run), str(data), base, tuned, prepared.truncated, prepared.dropped, answers)


def spinner(console, text: str, in_capture: bool = False):
    """`text` beside a spinner on `console` (nothing without one). Inside a capture rich must
    leave sys.stdout and sys.stderr to it (quiet.status); outside, its redirect keeps a library's
    print off stdout, where the result goes."""
    if console is None:
        return contextlib.nullcontext()
    return quiet_status(console, text) if in_capture else console.status(text)


def score(model, examples: list[TokenizedExample], pad_id: int) -> Score:
    """Token-weighted mean cross-entropy over the labelled tokens of `examples`."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    device = next(model.parameters()).device
    for batch in length_batches(examples, TOKENS_PER_BATCH):
        width = max(len(e.input_ids) for e in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e.input_ids)
            ids[i, :n], labels[i, :n], mask[i, :n] = (torch.tensor(e.input_ids),
                                                      torch.tensor(e.labels), 1)
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            for i in range(len(batch)):   # one row at a time: float32 logits of one example
                target = labels[i, 1:].to(device)
                total += F.cross_entropy(logits[i, :-1].float(), target, ignore_index=IGNORE,
                                         reduction="sum").item()
                count += int((target != IGNORE).sum())
    loss = total / count if count else float("nan")
    return Score(loss, math.exp(loss) if count else float("nan"), count, len(examples))


def sample_answers(model, tokenizer, guard: ChatGuard, examples: list[Example],
                   max_new_tokens: int) -> list[Sample]:
    """Greedy answers of the fine-tuned and the base model to each conversation up to its last
    assistant turn, beside that turn."""
    greedy = Sampling.deterministic(max_new_tokens)
    out = []
    for ex in examples:
        messages = ex.chat()
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
        prompt = guard.prompt(messages[:last], ex.tools)
        tuned = generate_text(model, tokenizer, prompt, greedy).strip()
        with model.disable_adapter():
            base = generate_text(model, tokenizer, prompt, greedy).strip()
        out.append(Sample(ex.line, messages[:last], reference_answer(guard, ex, last), base, tuned))
    return out


def reference_answer(guard: ChatGuard, ex: Example, last: int) -> str:
    """The assistant turn `last` of `ex` as the model should write it: its content, or for a
    turn with tool calls the text training renders for it (the `<tool_call>` blocks, in the
    canonical JSON), which is what a fine-tuned model answers."""
    message, messages = ex.messages[last], ex.chat()
    if not message.tool_calls:
        return message.content
    prompt = guard.prompt(messages[:last], ex.tools)
    text = guard.unguarded_text(messages[:last + 1], ex.tools)
    if not text.startswith(prompt):   # the guard rejects such data before eval gets here
        return message.content
    return text[len(prompt):].split(EOS, 1)[0].strip()


def print_eval(result: EvalResult, console) -> None:
    """The side-by-side table, then each sample."""
    from rich.table import Table

    table = Table(title=f"{result.run} on {result.data}", title_justify="left")
    table.add_column("")
    for name in ("base", "fine-tuned"):
        table.add_column(name, justify="right")
    b, t = result.base, result.tuned
    table.add_row("loss", f"{b.loss:.4f}", f"{t.loss:.4f}")
    table.add_row("perplexity", f"{b.ppl:,.2f}", f"{t.ppl:,.2f}")
    table.add_row("trained tokens", f"{b.tokens:,}", f"{t.tokens:,}")
    table.add_row("examples", f"{b.examples:,}", f"{t.examples:,}")
    console.print(table)
    if result.truncated or result.dropped:
        console.print(f"{result.truncated} examples cut at max_seq_len, {result.dropped} left "
                      f"with no trained token (not scored)", highlight=False)
    for s in result.samples:
        console.rule(f"line {s.line}", style="dim")
        user = next((m["content"] for m in reversed(s.prompt) if m["role"] == "user"), "")
        for label, text in (("user", user), ("reference", s.reference), ("base", s.base),
                            ("fine-tuned", s.tuned)):
            console.print(f"[bold]{label}:[/] ", end="", highlight=False)
            console.print(text, markup=False, highlight=False)
