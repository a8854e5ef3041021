"""The retention gate: how much of the fine-tune each exported GGUF keeps.

Held-out loss on the trained (assistant) tokens, the training mask exactly, for the base model,
the tuned adapter and every GGUF written; retention = (base loss - GGUF loss) / (base loss -
adapter loss), the share of the fine-tune's gain a file keeps. A file below --min-retention
fails the export.

- Held-out data: --eval-data FILE if given, else the run's eval file or eval split, else a
  seeded sample of the training data (said so: the gain it measures is memorised, not general).
  The examples are rendered, tokenised and masked by training's own code (data.template.
  encode_all, under the run's chat guard) up to HELD_OUT_TOKENS tokens and TRAINED_TOKENS
  trained ones (the example that reaches the latter cut there), which keeps the gate cheap
  (each GGUF runs them all through llama.cpp on the CPU).
- Base and adapter: the 16-bit model the export merges, adapter on and off (peft's
  disable_adapter), as the export loaded it or as the direct child built it from the tensors it
  merges (fastft.export.gate_model, `measure` there): no second load. The adapter's next-token distribution is the KL reference:
  its TOP_K most likely tokens plus one bucket for the rest (a lower bound of the full KL, exact
  where the top tokens hold nearly all the mass).
- GGUFs: fastft-score (fastft.export.scorer_src), llama.cpp itself on the same token ids,
  returning per-position log-probabilities. It also tokenises each rendered text with the GGUF's
  own tokenizer, which must give the training ids, and the GGUF's embedded chat template (what
  llama.cpp serves with) must render each serving prompt as training did. The same process,
  with the file loaded once, makes the export's load check (`Check`: a few greedy tokens).
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..core.errors import FastftError
from ..core.procs import dying_with_parent
from ..data.read import load_conversations
from ..data.template import ChatGuard, Encoded, encode_all
from .gguf import read_gguf_metadata
from .manifest import GGUFCheck, GGUFRetention, ModelScore, Retention
from .scorer_src import MAGIC

# What the gate scores: examples until either budget is reached, the one that reaches the
# trained budget cut just after it (held_out). Tokens cost llama.cpp's (CPU) forward pass, ~8
# GFLOP each on a 4B model; trained tokens also cost the vocabulary projection, which dominates
# on a small model. bench/retention.py measures them.
HELD_OUT_TOKENS = 1024       # tokens of held-out examples, context included
TRAINED_TOKENS = 256         # of which trained (scored) tokens
TOP_K = 16                   # KL over the reference's top-k tokens plus one tail bucket
PROMPT_TURNS = 4             # serving prompts checked per conversation (its first answers)
IGNORE = -100
# What fastft.data.template.ChatGuard may change on the tokenizer it is given.
GUARDED_ATTRIBUTES = ("chat_template", "eos_token", "pad_token")
KL_METHOD = (f"KL(adapter || file) over the adapter's top {TOP_K} tokens plus one bucket for the "
             f"rest, at every trained position (a lower bound of the full KL)")


class RetentionError(FastftError):
    """An exported GGUF that lost the fine-tune (or is not the model trained): the export is
    written, its manifest records why, and the command fails."""


@dataclass
class HeldOut:
    source: str                          # in words, for the report
    encoded: list[Encoded]               # rendered, tokenised, masked as training does
    messages: list[tuple[list[dict], list | None]]   # each example's chat and tools
    guard: ChatGuard


@dataclass
class Reference:
    """What the 16-bit model gives on the held-out tokens, for scoring each GGUF against it."""
    held: HeldOut
    base: ModelScore
    adapter: ModelScore
    tokens: int
    positions: list[list[int]] = field(default_factory=list)   # per example: scored positions
    targets: list[list[int]] = field(default_factory=list)
    top_ids: list = field(default_factory=list)                 # per example: (n, TOP_K) int
    top_logp: list = field(default_factory=list)                # per example: (n, TOP_K) float
    seconds: float = 0.0


# -- held-out data -------------------------------------------------------------------------------

def _held_out_examples(run, eval_data: str | None):
    """(examples, where they came from in words, the path for messages)."""
    cfg = run.record.config
    if eval_data:
        return load_conversations(eval_data).examples, f"--eval-data {eval_data}", eval_data
    if cfg.eval_file:
        return (load_conversations(cfg.eval_file).examples, f"the run's eval file {cfg.eval_file}",
                cfg.eval_file)
    from ..train.inputs import split_eval

    examples = load_conversations(cfg.data, skip_invalid=cfg.skip_invalid).examples
    held = split_eval(cfg, examples)[1]
    if held:
        return held, f"the run's eval split ({len(held)} examples of {cfg.data})", cfg.data
    random.Random(cfg.seed).shuffle(examples := examples[:])
    return (examples, f"a sample of the training data {cfg.data} (not held out: the run has no "
            f"eval split or eval file; give --eval-data FILE for held-out data)", cfg.data)


def held_out(run, tokenizer, eval_data: str | None, budget: int | None = None,
             trained_budget: int | None = None) -> HeldOut:
    """Held-out examples as training renders and masks them, until `budget` tokens or
    `trained_budget` trained tokens (default: the module's, read now, so bench/retention.py can
    set them), at least one example; the example that would pass the trained budget is cut at
    it (`_cut`: one long answer no longer doubles the gate's cost). `tokenizer` is the run's:
    the guard fixes it in place, as training did."""
    budget = HELD_OUT_TOKENS if budget is None else budget
    trained_budget = TRAINED_TOKENS if trained_budget is None else trained_budget
    examples, source, path = _held_out_examples(run, eval_data)
    cfg = run.record.config
    guard = ChatGuard(tokenizer, run.model_path, think=cfg.think, path=path)
    chosen, used, trained = [], 0, 0
    for ex in examples:
        if used >= budget or trained >= trained_budget:
            break
        enc = encode_all(guard, [ex], cfg.max_seq_len, cfg.train_on_all)[0]
        if enc is not None and enc.trained:
            if trained + enc.trained > trained_budget:
                enc = _cut(enc, trained_budget - trained)
            chosen.append((ex, enc))
            used, trained = used + len(enc.tokens.input_ids), trained + enc.trained
    if not chosen:
        raise RetentionError(f"{path}: no example with a trained token to measure retention on")
    return HeldOut(f"{len(chosen)} examples ({used:,} tokens) from {source}",
                   [e for _, e in chosen], [(ex.chat(), ex.tools) for ex, _ in chosen], guard)


def _cut(enc: Encoded, trained: int) -> Encoded:
    """`enc` up to and with its `trained`-th trained token. A causal model's scores at the
    positions kept are the whole example's (each sees only the tokens before it), and the GGUF's
    tokenizer check compares a prefix of the text's ids, so the gate reads it as it reads any
    example, over fewer tokens."""
    seen = 0
    for end, label in enumerate(enc.tokens.labels, 1):
        seen += label != IGNORE
        if seen == trained:
            break
    t = enc.tokens
    tokens = replace(t, input_ids=t.input_ids[:end], labels=t.labels[:end],
                     offsets=None if t.offsets is None else t.offsets[:end])
    return replace(enc, tokens=tokens, trained=trained)


# -- the 16-bit model (torch) --------------------------------------------------------------------

def length_batches(examples, budget: int = 4096):
    """Examples (TokenizedExample) of similar length together, each batch at most `budget`
    padded tokens (an example longer than that alone): `fastft eval` batches so too."""
    batch: list = []
    for ex in sorted(examples, key=lambda e: len(e.input_ids)):
        if batch and len(ex.input_ids) * (len(batch) + 1) > budget:
            yield batch
            batch = []
        batch.append(ex)
    if batch:
        yield batch


def _trained_positions(ex) -> list[int]:
    """Positions whose logits predict a trained token (the label at position + 1)."""
    return [p for p in range(len(ex.labels) - 1) if ex.labels[p + 1] != IGNORE]


class _Scorer:
    """Log-probabilities of the model at the trained positions only: the vocabulary projection
    (151,936 x hidden per position) is most of a small model's cost, and only those rows count.
    One projection per batch: the head's weights are read from memory once, not per example."""

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id
        causal = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.body, self.head = causal.model, causal.lm_head.weight

    def logp(self, examples):
        """(example, log-softmax rows at its trained positions, those positions, targets)."""
        import torch

        device = self.head.device
        for batch in length_batches(examples):
            width = max(len(e.input_ids) for e in batch)
            ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for j, e in enumerate(batch):
                ids[j, :len(e.input_ids)], mask[j, :len(e.input_ids)] = torch.tensor(e.input_ids), 1
            positions = [_trained_positions(e) for e in batch]
            rows = torch.tensor([j for j, pos in enumerate(positions) for _ in pos], device=device)
            cols = torch.tensor([p for pos in positions for p in pos], device=device)
            with torch.inference_mode():
                hidden = self.body(input_ids=ids.to(device),
                                   attention_mask=mask.to(device)).last_hidden_state
                logp = (hidden[rows, cols].to(self.head.dtype) @ self.head.T).float().log_softmax(-1)
            at = 0
            for e, pos in zip(batch, positions):
                yield e, logp[at:at + len(pos)], pos, [e.labels[p + 1] for p in pos]
                at += len(pos)


@dataclass
class Measured:
    """The 16-bit model's side of the gate, in numbers: what `measure` computes, in this process
    or in the direct export's child (fastft.export.direct), which sends it back as JSON."""
    base: float                          # summed losses on the trained tokens
    adapter: float
    tokens: int                          # trained tokens scored
    positions: list[list[int]]
    targets: list[list[int]]
    top_ids: list                        # per example: (n, TOP_K) int64
    top_logp: list                       # per example: (n, TOP_K) float32
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {**self.__dict__, "top_ids": [a.tolist() for a in self.top_ids],
                "top_logp": [a.tolist() for a in self.top_logp]}

    @classmethod
    def from_dict(cls, d: dict) -> Measured:
        """Exact: a float32 written as JSON's float reads back as the same float32."""
        import numpy as np

        arrays = lambda rows, dtype: [np.asarray(r, dtype=dtype).reshape(-1, TOP_K) for r in rows]  # noqa: E731
        return cls(**{**d, "top_ids": arrays(d["top_ids"], np.int64),
                      "top_logp": arrays(d["top_logp"], np.float32)})


def _adapter_pass(scorer: _Scorer, tokens, m: Measured) -> float:
    """The adapter's summed loss; fills the positions and top-k."""
    total, index = 0.0, {id(t): i for i, t in enumerate(tokens)}
    for ex, logp, pos, targets in scorer.logp(tokens):
        i = index[id(ex)]
        total -= float(logp[range(len(pos)), targets].sum())
        top = logp.topk(TOP_K, dim=-1)
        m.positions[i], m.targets[i] = pos, targets
        m.top_ids[i], m.top_logp[i] = top.indices.cpu().numpy(), top.values.cpu().numpy()
    return total


def _base_pass(scorer: _Scorer, tokens) -> float:
    with scorer.model.disable_adapter():
        return -sum(float(logp[range(len(pos)), targets].sum())
                    for _, logp, pos, targets in scorer.logp(tokens))


def measure(model, pad_id: int, tokens) -> Measured:
    """Base and adapter loss on `tokens` (TokenizedExample-like: input_ids, labels), and the
    adapter's top-k at each trained position, from `model` (a PeftModel, adapter not merged)."""
    t = time.perf_counter()
    n = len(tokens)
    m = Measured(0.0, 0.0, 0, [[]] * n, [[]] * n, [None] * n, [None] * n)
    scorer = _Scorer(model, pad_id)
    with _cpu_threads(model):
        m.adapter = _adapter_pass(scorer, tokens, m)
        m.base = _base_pass(scorer, tokens)
    m.tokens = sum(len(p) for p in m.positions)   # a trained first token predicts nothing
    m.seconds = time.perf_counter() - t
    return m


def assembled(held: HeldOut, m: Measured, seconds: float) -> Reference:
    """The Reference of `held`'s examples from their measurement."""
    return Reference(held, _model_score(m.base / m.tokens), _model_score(m.adapter / m.tokens),
                     m.tokens, m.positions, m.targets, m.top_ids, m.top_logp, seconds)


@contextlib.contextmanager
def guard_undone(tokenizer):
    """The chat guard fixes a tokenizer in place (held_out); what it may change is put back
    afterwards, so a tokenizer saved or read later is the run's as saved (a copy.deepcopy of a
    Qwen tokenizer costs 1-3 s)."""
    saved = {k: getattr(tokenizer, k) for k in GUARDED_ATTRIBUTES}
    try:
        yield
    finally:
        for key, value in saved.items():
            setattr(tokenizer, key, value)


def reference(model, tokenizer, run, eval_data: str | None) -> Reference:
    """Base and adapter loss on the held-out tokens, and the adapter's top-k per position,
    from the model the export loaded (adapter attached, not merged in memory)."""
    t = time.perf_counter()
    with guard_undone(tokenizer):
        held = held_out(run, tokenizer, eval_data)
        m = measure(model, tokenizer.pad_token_id, [e.tokens for e in held.encoded])
    return assembled(held, m, time.perf_counter() - t)


@contextlib.contextmanager
def _cpu_threads(model):
    """On the CPU, torch threads as for llama.cpp (threads_for): on a busy 2-core machine the
    tiny model's reference took 0.9 s of CPU time with one thread, 3.5-6.4 s with two."""
    import torch

    before = torch.get_num_threads()
    if next(model.parameters()).device.type == "cpu":
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        torch.set_num_threads(threads_for(size))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _model_score(loss: float) -> ModelScore:
    return ModelScore(loss=round(loss, 6), ppl=round(math.exp(min(loss, 700)), 4))


# -- a GGUF (llama.cpp) --------------------------------------------------------------------------

@dataclass
class Check:
    """The export's load check, asked of fastft-score with the scoring: `tokens` generated from
    `prompt` (llama-simple's greedy continuation)."""
    prompt: str
    tokens: int


@dataclass
class Scored:
    """One GGUF through fastft-score: the gate's row, and the load check's when asked for."""
    row: GGUFRetention
    check: GGUFCheck | None = None


def _text_words(text: str) -> list:
    import numpy as np

    raw = text.encode("utf-8")
    return [np.array([len(raw)], dtype="<i4"), np.frombuffer(raw + b"\0" * (-len(raw) % 4), dtype="<i4")]


def _request(held: HeldOut, positions: list, targets: list, check: Check | None = None) -> bytes:
    """fastft-score's request, all but the reference's top-k ids (its protocol:
    fastft.export.scorer_src)."""
    import numpy as np

    words: list = [np.array([MAGIC, len(held.encoded)], dtype="<i4")]
    for enc in held.encoded:
        words += _text_words(enc.rendered.text)
    words += [np.array([check.tokens if check else 0], dtype="<i4"),
              *_text_words(check.prompt if check else "")]
    words.append(np.array([len(held.encoded)], dtype="<i4"))
    for enc, pos, target in zip(held.encoded, positions, targets):
        ids = enc.tokens.input_ids
        words.append(np.array([len(ids), *ids, len(pos), *(w for pt in zip(pos, target) for w in pt)],
                              dtype="<i4"))
    words.append(np.array([TOP_K], dtype="<i4"))
    return b"".join(w.tobytes() for w in words)


def _top_ids(ref: Reference) -> bytes:
    """The reference's top-k ids, as fastft-score reads them on stdin."""
    return b"".join(ids.astype("<i4").tobytes() for ids in ref.top_ids)


BYTES_PER_THREAD = 2**26


def threads_for(weight_bytes: int, busy: int = 0) -> int:
    """CPU threads for a model of `weight_bytes`: one per BYTES_PER_THREAD (64 MiB), at most one
    per usable core that `busy` other threads of this process leave free (a 4B model gets them
    all, the tiny one a single thread).
    A small model gains nothing from more, and idle threads spin (OpenMP, ggml): on a busy
    machine (a CI runner) llama.cpp scored the tiny model in 6.3 s of CPU time with two
    threads, 0.9 s with one. And ggml's threads meet at every op, so one that shares its core
    with a busy thread holds up all of them: beside a SHA-256 in a thread, on 2 cores, the tiny
    model's 8-token check took 0.10-0.15 s with 2 threads against 0.02 s with 1
    (bench/scorer_threads.py --hashing)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min((cores or 1) - busy, weight_bytes // BYTES_PER_THREAD))


def trained_targets(held: HeldOut) -> tuple[list, list]:
    """(positions, targets) per example: where the gate scores, as `measure` finds them."""
    positions = [_trained_positions(enc.tokens) for enc in held.encoded]
    return positions, [[enc.tokens.labels[p + 1] for p in pos]
                       for enc, pos in zip(held.encoded, positions)]


class Scoring:
    """fastft-score on one GGUF, started before the reference is known: it loads the file,
    tokenizes the texts, generates the `check` and decodes every held-out example, then waits
    for the reference's top-k ids (`result`). So the export can start it as soon as the direct
    child has written the GGUF, while the child still measures the 16-bit side
    (pipeline.SCORE_EARLY, off: no gain on an H100 host); else it is started and given the
    ids at once (run_scorer)."""

    def __init__(self, scorer: Path, gguf: Path, held: HeldOut, work: Path,
                 check: Check | None = None, busy: int = 0,
                 positions: tuple[list, list] | None = None):
        self.gguf, self.held = gguf, held
        self.positions, self.targets = positions or trained_targets(held)
        self.request, self.result_file = work / f"{gguf.name}.request", work / f"{gguf.name}.result"
        self.request.write_bytes(_request(held, self.positions, self.targets, check))
        self.check = check
        cmd = [str(scorer), str(gguf), str(self.request), str(self.result_file),
               str(threads_for(gguf.stat().st_size, busy))]
        self.proc = subprocess.Popen(dying_with_parent(cmd), stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def fits(self, ref: Reference) -> bool:
        """Whether `ref` scores what this process decodes (else it is of no use)."""
        return ref.held is self.held and ref.positions == self.positions \
            and ref.targets == self.targets

    def result(self, ref: Reference, timeout: float = 1800) -> tuple[list, list, GGUFCheck | None]:
        """(the GGUF's token ids for each rendered text, per example an (n, 1 + TOP_K) array of
        log-probabilities: the target's, then the reference's top-k, and the check's output)."""
        try:
            _, err = self.proc.communicate(_top_ids(ref), timeout=timeout)
        except subprocess.TimeoutExpired as e:
            raise RetentionError(f"{self.gguf.name}: llama.cpp's scoring timed out after "
                                 f"{timeout:.0f}s") from e
        finally:
            self.stop()
        if self.proc.returncode != 0:
            err = err.decode("utf-8", "replace").strip().splitlines()[-10:]
            raise RetentionError(f"{self.gguf.name}: llama.cpp could not score it (exit "
                                 f"{self.proc.returncode}):\n" + "\n".join(err))
        return self._parse()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def _parse(self):
        import numpy as np

        data = np.fromfile(self.result_file, dtype="<i4")
        at, texts = 0, []
        for _ in self.held.encoded:
            n = int(data[at])
            texts.append(data[at + 1:at + 1 + n].tolist())
            at += 1 + n
        n = int(data[at])                                     # the continuation's bytes
        padded = -(-n // 4)                                   # ... in 4-byte words
        output = data[at + 1:at + 1 + padded].tobytes()[:n].decode("utf-8", "replace")
        at += 1 + padded
        seconds = float(data[at:at + 1].view("<f4")[0])
        check = self.check
        done = None if check is None else GGUFCheck(file=self.gguf.name, prompt=check.prompt,
                                                    output=output, seconds=round(seconds, 3))
        floats, rows = data[at + 1:].view("<f4"), []
        for pos in self.positions:
            rows.append(floats[:len(pos) * (1 + TOP_K)].reshape(len(pos), 1 + TOP_K))
            floats = floats[len(pos) * (1 + TOP_K):]
        return texts, rows, done


def run_scorer(scorer: Path, gguf: Path, ref: Reference, work: Path, check: Check | None = None,
               timeout: float = 1800, busy: int = 0,
               started: Scoring | None = None) -> tuple[list, list, GGUFCheck | None]:
    """Scoring(...).result(ref): fastft-score on `gguf` against `ref`, on the cores that `busy`
    threads of this process leave it; or the `started` one, where it decodes what `ref` scores."""
    if started is None or not started.fits(ref):
        if started is not None:
            started.stop()
        started = Scoring(scorer, gguf, ref.held, work, check, busy, (ref.positions, ref.targets))
    return started.result(ref, timeout)


def tokenizer_problem(ref: Reference, texts: list) -> str | None:
    """Where the GGUF's tokenizer gives other ids than training for the same text, or None."""
    for enc, got in zip(ref.held.encoded, texts):
        want = enc.tokens.input_ids
        if got[:len(want)] != want:
            at = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            return (f"its tokenizer gives other token ids than training for the text of line "
                    f"{enc.rendered.line} (from token {at}: GGUF {got[at:at + 4]}, training "
                    f"{want[at:at + 4]}): it was not made with the run's tokenizer")
    return None


def template_problem(gguf: Path, ref: Reference) -> str | None:
    """Where the chat template embedded in the GGUF (what llama.cpp serves with) renders a
    serving prompt other than the training text's, or None."""
    from transformers.utils.chat_template_utils import render_jinja_template

    template = read_gguf_metadata(gguf).get("tokenizer.chat_template")
    if not template:
        return "it has no chat template, so llama.cpp would guess one"
    for line, messages, tools, want in served_prompts(ref):
        got = render_jinja_template(conversations=[messages], tools=tools or None,
                                    chat_template=template, add_generation_prompt=True)[0][0]
        if got != want:
            at = next((k for k, (a, b) in enumerate(zip(got, want)) if a != b),
                      min(len(got), len(want)))
            return (f"its chat template renders the prompt of line {line} otherwise than "
                    f"training at character {at} (served {got[at:at + 30]!r}, trained "
                    f"{want[at:at + 30]!r})")
    return None


def served_prompts(ref: Reference):
    """(line, messages before an answer, tools, the prompt training rendered before it) for the
    first PROMPT_TURNS answers of each held-out conversation: what a server must render. The
    tests render the Modelfile's TEMPLATE for the same ones with ollama's Go code."""
    for enc, (messages, tools) in zip(ref.held.encoded, ref.held.messages):
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"][:PROMPT_TURNS]
        for i in turns:
            yield enc.rendered.line, messages[:i], tools, ref.held.guard.prompt(messages[:i], tools)


def _kl(ref: Reference, rows: list) -> float:
    """Mean over positions of KL(adapter || file), on the top-k tokens plus a tail bucket."""
    import numpy as np

    total, n = 0.0, 0
    for top_logp, row in zip(ref.top_logp, rows):
        lp = top_logp.astype(np.float64)
        lq = row[:, 1:].astype(np.float64)
        p_tail = np.clip(1 - np.exp(lp).sum(1), 1e-12, 1)
        q_tail = np.clip(1 - np.exp(lq).sum(1), 1e-12, 1)
        kl = (np.exp(lp) * (lp - lq)).sum(1) + p_tail * (np.log(p_tail) - np.log(q_tail))
        total, n = total + float(np.clip(kl, 0, None).sum()), n + len(kl)
    return total / n if n else float("nan")


def retention_of(base: float, adapter: float, loss: float) -> float | None:
    """The share of the fine-tune's loss gain a file keeps; None when there is no gain to keep."""
    gain = base - adapter
    return (base - loss) / gain if gain > 0 else None


def score_file(scorer: Path, gguf: Path, quant: str, ref: Reference, work: Path,
               min_retention: float, check: Check | None = None, busy: int = 0,
               started: Scoring | None = None) -> Scored:
    """One GGUF against the reference: its loss, perplexity, KL and retention, and whether it
    passes (`problem` says why not); and the load `check`, from the same llama.cpp process
    (given the cores that `busy` threads of this process leave, or `started` before)."""
    texts, rows, checked = run_scorer(scorer, gguf, ref, work, check, busy=busy, started=started)
    failed, problem = "tokenizer", tokenizer_problem(ref, texts)
    if problem is None:
        failed, problem = "template", template_problem(gguf, ref)
    loss = -sum(float(r[:, 0].astype("float64").sum()) for r in rows) / ref.tokens
    kept = retention_of(ref.base.loss, ref.adapter.loss, loss)
    if problem is None and kept is not None and kept < min_retention:
        failed, problem = "retention", (f"it keeps {kept:.1%} of the fine-tune's gain (loss {loss:.4f}: base "
                   f"{ref.base.loss:.4f}, adapter {ref.adapter.loss:.4f}), below --min-retention "
                   f"{min_retention:g}")
    row = GGUFRetention(file=gguf.name, quant=quant, loss=round(loss, 6),
                        ppl=round(math.exp(min(loss, 700)), 4), kl=round(_kl(ref, rows), 6),
                        retention=None if kept is None else round(kept, 4),
                        passed=problem is None, failed=failed if problem else None,
                        problem=problem)
    return Scored(row, checked)


def report(ref: Reference, files: list[GGUFRetention], min_retention: float,
           seconds: float, tried: list[GGUFRetention]) -> Retention:
    return Retention(data=ref.held.source, tokens=ref.tokens, kl=KL_METHOD,
                     min_retention=min_retention, base=ref.base, adapter=ref.adapter,
                     files=files, tried=tried, seconds=round(seconds, 2),
                     passed=all(f.passed for f in files))


def failure(r: Retention) -> RetentionError | None:
    """The error for the files that failed (None if all passed), saying what to do."""
    bad = [f for f in r.files if not f.passed]
    if not bad:
        return None
    lines = [f"{f.file}: {f.problem}" for f in bad]
    if any(f.failed == "retention" for f in bad):
        lines.append("export a larger quant (q5_k_m, q6_k or q8_0; bf16 is lossless), or "
                     "--gguf auto for the smallest one that passes, or lower --min-retention")
    if any(f.failed != "retention" for f in bad):
        lines.append("a GGUF whose tokenizer or chat template is not the run's is not the model "
                     "trained: export it again from the run, with fastft")
    lines.append("the export folder was written; its fastft-export.json records the table:")
    return RetentionError("retention gate failed:\n  " + "\n  ".join(lines + table_lines(r)))


def table_lines(r: Retention) -> list[str]:
    """The retention table as the terminal shows it."""
    rows = [("base", r.base.loss, r.base.ppl, None, 0.0, ""),
            ("adapter (16-bit)", r.adapter.loss, r.adapter.ppl, None, 1.0, "")]
    rows += [(f.file, f.loss, f.ppl, f.kl, f.retention, "ok" if f.passed else "FAILED")
             for f in r.files]
    width = max(len(x[0]) for x in rows)
    lines = [f"retention on {r.data}, {r.tokens:,} trained tokens (min {r.min_retention:g}):",
             f"    {'model':<{width}}  {'loss':>8}  {'ppl':>10}  {'KL':>8}  {'kept':>7}"]
    for name, loss, ppl, kl, kept, verdict in rows:
        kl_s = "" if kl is None else f"{kl:.4f}"
        kept_s = "n/a" if kept is None else f"{kept:.1%}"
        lines.append(f"    {name:<{width}}  {loss:>8.4f}  {ppl:>10,.2f}  {kl_s:>8}  {kept_s:>7}  "
                     f"{verdict}".rstrip())
    return lines
