"""Where `fastft train`'s start-up goes: the import of fastft's trainer (Unsloth, trl, transformers,
torch) profiled twice in fresh interpreters, as `python -X importtime` (per module, cumulative) and
as cProfile (per function: what the import machinery runs, e.g. Unsloth's trainer rewriting, CUDA
and triton start-up). The first run pays the disk cache, the second is what a warm host pays.

    python bench/import_profile.py [--out DIR] [--top 40]
    python bench/import_profile.py --gc [--runs 5]

--gc instead times, side by side in alternating fresh interpreters, `import unsloth` as a
notebook does it and fastft's `import_unsloth()` (the same import with the garbage collector
off, its objects frozen after: fastft.core.models.heavy_imports), and prints the medians and
their ratio.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET = "from fastft.core.models import import_unsloth; import_unsloth(); import fastft.train.trainer"

PROFILE = """
import cProfile, pstats, sys
prof = cProfile.Profile()
prof.enable()
{target}
prof.disable()
stats = pstats.Stats(prof, stream=sys.stdout)
for key in ("cumulative", "tottime"):
    print(f"== cProfile by {{key}}")
    stats.sort_stats(key).print_stats({top})
"""


def importtime_top(stderr: str, top: int) -> list[str]:
    """The `top` modules by cumulative import time, from `-X importtime`'s stderr."""
    rows = []
    for line in stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[0].strip().isdigit():
            rows.append((int(parts[1]), int(parts[0]), parts[2].rstrip()))
    rows.sort(reverse=True)
    return [f"{cum / 1e6:8.2f} s cum {own / 1e6:8.2f} s self  {name}" for cum, own, name in rows[:top]]


GC_TARGETS = {"import unsloth (a notebook)": "import unsloth",
              "fastft import_unsloth()": "from fastft.core.models import import_unsloth; import_unsloth()"}
TIMED = "import time; t = time.perf_counter(); {target}; print(time.perf_counter() - t)"


def compare_gc(runs: int) -> None:
    """Median seconds of each of GC_TARGETS over `runs` alternating fresh interpreters."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    seconds: dict[str, list[float]] = {name: [] for name in GC_TARGETS}
    for _ in range(runs):
        for name, target in GC_TARGETS.items():
            p = subprocess.run([sys.executable, "-c", TIMED.format(target=target)], env=env,
                               capture_output=True, text=True, check=True)
            seconds[name].append(float(p.stdout.split()[-1]))
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    for name, s in seconds.items():
        print(f"{name:28s} median {medians[name]:6.2f} s  runs {', '.join(f'{x:.2f}' for x in s)}")
    notebook, ours = medians.values()
    print(f"notebook / fastft: {notebook / ours:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--gc", action="store_true", help="time import unsloth against fastft's import_unsloth()")
    ap.add_argument("--runs", type=int, default=5, help="with --gc: interpreters per side")
    a = ap.parse_args()
    if a.gc:
        return compare_gc(a.runs)
    a.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for run in (1, 2):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-X", "importtime", "-c", TARGET], env=env,
                           capture_output=True, text=True)
        wall = time.perf_counter() - t0
        (a.out / f"importtime-{run}.txt").write_text(p.stderr)
        print(f"== run {run}: import wall {wall:.1f} s (rc {p.returncode})")
        print("\n".join(importtime_top(p.stderr, a.top)))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", PROFILE.format(target=TARGET, top=a.top)], env=env,
                       capture_output=True, text=True)
    print(f"== cProfile run: wall {time.perf_counter() - t0:.1f} s (rc {p.returncode})")
    (a.out / "import-cprofile.txt").write_text(p.stdout + p.stderr[-4000:])
    print(p.stdout[:20000])


if __name__ == "__main__":
    main()
