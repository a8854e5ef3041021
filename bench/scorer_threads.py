"""fastft-score's time by thread count, on one GGUF: the export's retention gate and load check,
which one llama.cpp process does (fastft.export.scorer_src).

    python bench/scorer_threads.py GGUF [--threads 4,8,16] [--tokens 609,295] [--runs 2] [--out FILE]
                                        [--examples 1] [--hashing] [--against OLD_FASTFT_SCORE]

The request is shaped like the gate's on bench/ttfc.py's long-tailed data (one example of
--tokens tokens, every position scored against 16 reference tokens) plus the check's 8 tokens
from a chat prompt; token ids are random, which costs llama.cpp what real ones cost. 609 tokens
is that data's first example whole, as the gate scored it before 2026-12-07's fourteenth session;
295 is the same example cut after its 256th trained token (retention.TRAINED_TOKENS), as the
gate scores it since. Each (tokens, threads) runs --runs times, alternating, after one warm-up
round (the GGUF into the page cache). The export gives llama.cpp one thread per logical CPU
(retention.threads_for); the host's cores and threads per core are printed beside the times,
for whether fewer would do.

--hashing also runs each count beside a SHA-256 of the GGUF in a thread of this process, over
and over until the scorer is done: the export hashes each finished GGUF for its manifest while
the gate scores it (pipeline._Hashes), and a thread pool that has every core (ggml's) waits at
each op for the one that shares its core.

--against EXE also runs another fastft-score (an older build, kept aside before its source
changed), alternating with this fastft's, on the same requests, and says whether its results are
the same (the GGUF's token ids, every scored row, the check's continuation). The older build
must speak the same protocol (fastft.export.scorer_src's MAGIC): since 2026-12-07's eighteenth
session the reference's top-k ids go to the program on stdin.

--memory also runs each measured one once more, untimed, for the program's peak resident memory
(its own process's, from wait4 in a small interpreter): since 2026-12-08 it copies no rows of the
last example.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROMPT = "<|im_start|>user\nHello! Who are you?<|im_end|>\n<|im_start|>assistant\n"


def request(n: int, examples: int = 1):
    """A retention.Reference of `examples` examples of `n` random token ids each, every position
    scored."""
    import numpy as np

    from fastft.export import retention

    rng = np.random.default_rng(0)
    ids = [rng.integers(1000, 20000, n).tolist() for _ in range(examples)]
    held = retention.HeldOut("bench", [SimpleNamespace(rendered=SimpleNamespace(text="x", line=1),
                                                       tokens=SimpleNamespace(input_ids=one))
                                       for one in ids], [], None)
    top = [rng.integers(1000, 20000, (n - 1, retention.TOP_K)) for _ in ids]
    return retention.Reference(held, None, None, examples * (n - 1), [list(range(n - 1))] * examples,
                               [one[1:] for one in ids], top, [np.zeros(t.shape) for t in top])


# Runs the program as a child of a small interpreter and writes its rusage's peak: wait4 on a
# process this one spawned would report at least this process's own peak, which Linux carries
# into a vfork'd child's maxrss at its exec (subprocess spawns with vfork).
PEAK_OF = ("import os, sys\n"
           "pid = os.fork()\n"
           "if pid == 0:\n"
           "    os.execv(sys.argv[2], sys.argv[2:])\n"
           "_, status, usage = os.wait4(pid, 0)\n"
           "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
           "sys.exit(os.waitstatus_to_exitcode(status))\n")


def peak_rss_mib(exe: Path, gguf: Path, ref, work: Path) -> float:
    """fastft-score's peak resident memory (MiB) on `ref`, started as the export starts it
    (retention.Scoring), through PEAK_OF."""
    import shlex

    from fastft.export import retention

    peak, wrapper = work / "peak-kib", work / "peak-of-scorer"
    wrapper.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c {shlex.quote(PEAK_OF)} "
                       f"{shlex.quote(str(peak))} {shlex.quote(str(exe))} \"$@\"\n")
    wrapper.chmod(0o755)
    retention.run_scorer(wrapper, gguf, ref, work, retention.Check(PROMPT, 8))
    return int(peak.read_text()) / 1024     # KiB on Linux


def label(tokens: int, threads: int, hashing: bool, against: bool = False) -> str:
    return (f"{tokens} tokens, threads {threads}" + (" beside a SHA-256" if hashing else "")
            + (" (--against)" if against else ""))


def same_results(a, b) -> bool:
    """Two run_scorer results alike but for the check's time."""
    import numpy as np

    (texts_a, rows_a, check_a), (texts_b, rows_b, check_b) = a, b
    return texts_a == texts_b and len(rows_a) == len(rows_b) \
        and all(np.array_equal(x, y) for x, y in zip(rows_a, rows_b)) \
        and (check_a.output if check_a else None) == (check_b.output if check_b else None)


@contextlib.contextmanager
def hashed(path: Path, on: bool):
    """While the block runs (if `on`), a thread hashes `path` as the export's manifest does, again
    and again; yields [how many hashes it finished]."""
    from fastft.core.cache import sha256_file

    done, stop = [0], threading.Event()

    def loop():
        while not stop.is_set():
            sha256_file(path)
            done[0] += 1

    thread = threading.Thread(target=loop, daemon=True)
    if on:
        thread.start()
    try:
        yield done
    finally:
        stop.set()
        if on:
            thread.join()


def cpu_shape() -> dict:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return {}
    keys = ("CPU(s)", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "Model name")
    return {k: v.strip() for line in out.splitlines() if ":" in line
            for k, v in [line.split(":", 1)] if k in keys}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("gguf", type=Path)
    p.add_argument("--threads", default="4,8,16")
    p.add_argument("--tokens", default="609,295", help="the request's length(s), comma-separated")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--examples", type=int, default=1,
                   help="examples of --tokens tokens each in the request (the gate's is one; with "
                        "several, fastft-score keeps a copy of each but the last one's rows)")
    p.add_argument("--out", type=Path)
    p.add_argument("--hashing", action="store_true",
                   help="each count also beside a SHA-256 of the GGUF, as the export's gate runs")
    p.add_argument("--memory", action="store_true",
                   help="also each run's peak resident memory (one more run of each, untimed)")
    p.add_argument("--against", type=Path, metavar="EXE",
                   help="another fastft-score, run alternately with this one, results compared")
    args = p.parse_args(argv)

    from fastft.export import retention
    from fastft.export.llamacpp import ensure_scorer

    lengths = [int(t) for t in args.tokens.split(",")]
    scorer, refs = ensure_scorer(), {n: request(n, args.examples) for n in lengths}
    counts = [int(t) for t in args.threads.split(",")]
    runs = [(k, n, h, ag) for k in lengths for n in counts
            for h in ((False, True) if args.hashing else (False,))
            for ag in ((False, True) if args.against else (False,))]
    real, seconds = retention.threads_for, {label(*run): [] for run in runs}
    memory = {label(*run): [] for run in runs} if args.memory else None
    results, same = {}, {}
    with tempfile.TemporaryDirectory() as work:
        try:
            for i in range(args.runs + 1):
                for tokens, n, hashing, against in runs:
                    # the export's signature (weight bytes, busy threads), the count fixed
                    retention.threads_for = lambda _bytes, _busy=0, n=n: n
                    with hashed(args.gguf, hashing) as hashes:
                        t = time.perf_counter()
                        got = retention.run_scorer(args.against if against else scorer, args.gguf,
                                                   refs[tokens], Path(work), retention.Check(PROMPT, 8))
                        took = time.perf_counter() - t
                    check = got[2]
                    if args.against:
                        key = (tokens, n, hashing)
                        if against:
                            same[label(*key)] = same.get(label(*key), True) and same_results(results[key], got)
                        else:
                            results[key] = got
                    if i:                      # the first round warms the page cache
                        seconds[label(tokens, n, hashing, against)].append(round(took, 3))
                        if memory is not None:
                            memory[label(tokens, n, hashing, against)].append(round(peak_rss_mib(
                                args.against if against else scorer, args.gguf, refs[tokens],
                                Path(work)), 1))
                        print(f"[bench] {label(tokens, n, hashing, against)}: {took:.2f} s (check "
                              f"{check.seconds:.2f} s{f', {hashes[0]} hashes' if hashing else ''})",
                              flush=True)
        finally:
            retention.threads_for = real
    result = {"gguf": str(args.gguf), "tokens": lengths, "examples": args.examples, "seconds": seconds,
              "export_gives": real(args.gguf.stat().st_size), "cpu": cpu_shape()}
    if args.against:
        result |= {"against": str(args.against), "same_results": same}
    if memory is not None:
        result["peak_rss_mib"] = memory
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
