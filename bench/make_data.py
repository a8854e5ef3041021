"""Synthetic chat data for the benchmark: JSONL `messages` records of exact token lengths.

Each record is one user question and one long assistant answer made of pseudo-random English
words (deterministic from --seed). Lengths are counted the way `fastft train` counts them: the
whole conversation rendered with the Qwen3 Instruct-2507 chat template, tokenised without
special tokens added; each example has target-3..target tokens. Length distributions (--dist):

longtail (default): real chat SFT data. Total tokens per conversation are log-normal with
    median 400 and sigma 0.8, clipped to --min-tokens..--tokens (64..2048). Published sets look
    like this: right-skewed, mean well above median, a long tail cut by max_seq_len.
    E.g. Llama-Nemotron-Post-Training-Dataset-v1 in ShareGPT form reports median 393 / mean 528
    tokens (mean/median 1.34, a log-normal sigma of ~0.77); OpenHermes-2.5- and Alpaca-style
    single-turn sets sit lower, multi-turn ShareGPT/UltraChat higher with more over 2048. With
    these parameters ~4-5% of examples are over 1536 tokens and ~2% are clipped to 2048 (as
    over-long conversations are when truncated to max_seq_len); ~1% clipped up to 64.
fixed: every example --tokens tokens (default 1024): the compute-bound, no-padding case.
uniform (alias --vary): targets uniform over --min-tokens..--tokens (128..1024).

    python bench/make_data.py bench/work/data-longtail.jsonl --n 256
    python bench/make_data.py bench/work/data-1024.jsonl --n 256 --dist fixed --tokens 1024
    python bench/make_data.py bench/work/data-vary.jsonl --n 256 --dist uniform --min-tokens 128
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import log, tiny_model_dir  # noqa: E402

TOLERANCE = 3  # an example of target T has T-3..T tokens

WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but
have an they you were her she there been one all we their has would when if so no will what can
more about out up them some could into other time than then only its two may first any like now
over such our man me even most made after also did many before must through back years where
much your way well down should because each just those people how too little state good very
make world still own see men work long get here between both life being under never day same
another know while last might us great old year off come since against go came right used take
three states himself few house use during without again place around however home small found
thought went say part once general high upon school every don does got united left number course
war until always away something fact though water less public put think almost hand enough far
took head yet government system better set told nothing night end why called didn find look
asked later knew point next program city business give group toward young days let room
president side social given present several order national possible rather second face per
among form important often things looked early white case john become large big need four
within felt along children saw best church ever least power development light thing seemed
family interest want members others mind country area done turned although open god service
certain kind problem began different door thus help sense means whole matter perhaps itself york
times law human line above name example action company hands local show whether five history
gave today either act feet across taken past quite anything seen having death week experience
river garden engine signal window mountain market winter theory pattern bridge kernel vector
memory buffer thread packet matrix tensor gradient compiler network planet ocean forest method
""".split()


def _sentence(rng: random.Random) -> list[str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(6, 18))]
    words[0] = words[0].capitalize()
    if rng.random() < 0.25:
        k = rng.randrange(1, len(words) - 1)
        words[k] += ","
    words[-1] += rng.choice(".....!?")
    return words


def _word_stream(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        out.extend(_sentence(rng))
    return out


def render(question: str, answer: str) -> str:
    """The Instruct-2507 rendering of a one-turn conversation (checked against the template)."""
    return (f"<|im_start|>user\n{question}<|im_end|>\n"
            f"<|im_start|>assistant\n{answer}<|im_end|>\n")


class Maker:
    def __init__(self, tokenizer):
        self.tok = tokenizer

    def count(self, question: str, answer: str) -> int:
        return len(self.tok(render(question, answer), add_special_tokens=False)["input_ids"])

    def example(self, rng: random.Random, index: int, target: int) -> tuple[dict, int]:
        """One conversation whose rendering has target-TOLERANCE..target tokens."""
        qwords = _word_stream(rng, rng.randint(8, 24))[:24]
        question = f"Question {index}: " + " ".join(qwords).rstrip(".!?,") + "?"
        base = self.count(question, "")
        if base + 1 > target:
            raise ValueError(f"target {target} tokens is shorter than the question ({base})")
        stream = _word_stream(rng, target - base + 16)  # every word is at least one token
        lo, hi = 1, len(stream)                         # largest k with count(k words) <= target
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.count(question, " ".join(stream[:mid])) <= target:
                lo = mid
            else:
                hi = mid - 1
        words = stream[:lo]
        n = self.count(question, " ".join(words))
        # Top up with short words when the next word of the stream would overshoot.
        for _ in range(32):
            if n >= target - 1:
                break
            w = rng.choice(WORDS[:60])
            m = self.count(question, " ".join(words + [w]))
            if m <= target:
                words, n = words + [w], m
        if not target - TOLERANCE <= n <= target:
            raise RuntimeError(f"example {index}: got {n} tokens for target {target}")
        answer = " ".join(words)
        return {"messages": [{"role": "user", "content": question},
                             {"role": "assistant", "content": answer}]}, n


DISTS = ("longtail", "fixed", "uniform")
DEFAULT_TOKENS = {"longtail": 2048, "fixed": 1024, "uniform": 1024}  # --tokens: the maximum
DEFAULT_MIN_TOKENS = {"longtail": 64, "fixed": 0, "uniform": 128}
LONGTAIL_MEDIAN, LONGTAIL_SIGMA = 400, 0.8  # log-normal of total tokens (see the docstring)


def target_lengths(n: int, dist: str = "longtail", tokens: int | None = None,
                   min_tokens: int | None = None, seed: int = 0) -> list[int]:
    """The token length each of `n` examples is made to (within TOLERANCE below), seeded."""
    if dist not in DISTS:
        raise ValueError(f"unknown length distribution {dist!r} (one of {', '.join(DISTS)})")
    tokens = DEFAULT_TOKENS[dist] if tokens is None else tokens
    low = DEFAULT_MIN_TOKENS[dist] if min_tokens is None else min_tokens
    if dist == "fixed":
        return [tokens] * n
    if low > tokens:
        raise ValueError(f"--min-tokens {low} is above --tokens {tokens}")
    # Its own stream, so the text of example i does not depend on the length distribution.
    rng = random.Random(f"lengths:{seed}")
    if dist == "uniform":
        return [rng.randint(low, tokens) for _ in range(n)]
    mu = math.log(LONGTAIL_MEDIAN)
    return [min(tokens, max(low, round(rng.lognormvariate(mu, LONGTAIL_SIGMA)))) for _ in range(n)]


def load_tokenizer(path: str | None):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path or tiny_model_dir()))


def make_data(out: Path, n: int = 256, tokens: int | None = None, seed: int = 0, vary: bool = False,
              min_tokens: int | None = None, tokenizer=None, dist: str = "longtail") -> list[int]:
    """Write `n` examples to `out` (atomically); returns their token lengths.
    `vary=True` is the old spelling of dist="uniform"."""
    targets = target_lengths(n, "uniform" if vary else dist, tokens, min_tokens, seed)
    tok = tokenizer if tokenizer is not None else load_tokenizer(None)
    maker = Maker(tok)
    rng = random.Random(seed)
    tmpl = (Path(__file__).resolve().parents[1] / "fastft" / "core" / "templates" /
            "qwen3_instruct_2507.jinja").read_text()
    lengths, rows = [], []
    for i, target in enumerate(targets):
        row, length = maker.example(rng, i, target)
        if i == 0:  # the hand-written rendering must be the template's, byte for byte
            text = tok.apply_chat_template(row["messages"], tokenize=False, chat_template=tmpl)
            if text != render(row["messages"][0]["content"], row["messages"][1]["content"]):
                raise RuntimeError("render() no longer matches the Instruct-2507 template")
        rows.append(row)
        lengths.append(length)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return lengths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="JSONL file to write")
    ap.add_argument("--n", type=int, default=256, help="number of examples (default 256)")
    ap.add_argument("--dist", choices=DISTS, default="longtail",
                    help="length distribution (default longtail; see above)")
    ap.add_argument("--tokens", type=int,
                    help="maximum tokens per example (every example's with fixed); "
                         "default 2048 for longtail, 1024 otherwise")
    ap.add_argument("--min-tokens", type=int, help="minimum tokens (default 64 longtail, 128 uniform)")
    ap.add_argument("--vary", action="store_const", const="uniform", dest="dist",
                    help="same as --dist uniform (kept for old command lines)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tokenizer", help="tokenizer folder (default: fastft's tiny model, real Qwen vocab)")
    a = ap.parse_args(argv)
    log(f"making {a.n} {a.dist} examples -> {a.out}")
    lengths = make_data(a.out, a.n, a.tokens, a.seed, min_tokens=a.min_tokens,
                        tokenizer=load_tokenizer(a.tokenizer), dist=a.dist)
    log(f"wrote {a.out}: {len(lengths)} examples, tokens min {min(lengths)} / median "
        f"{statistics.median(lengths):.0f} / mean {statistics.mean(lengths):.1f} / max {max(lengths)}, "
        f"total {sum(lengths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
