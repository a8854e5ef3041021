"""What a cold run compiled, and when: read from the files its compile caches hold.

    python bench/cold_compiles.py caches.txt [--cache longtail-fastft] [--json FILE]

caches.txt is gpu_check's listing of bench/ttfc.py's caches (`find CACHES -type f -printf
'%T@ %s %P\\n'`, in the ttfc step's fastft-runs.tgz): one line per file, its write time, bytes
and path under CACHES, whose first part is the (scenario, recipe) the files belong to. Triton
writes each kernel it compiles into a folder of its own, its files named after the kernel
(`_rms_layernorm_forward.cubin`); a kernel compiled again for another specialization (another
dtype, or an integer argument that is or is not a multiple of 16) gets another folder. Inductor
(torch.compile) keeps its graphs beside, and torch its CUDA kernel cache under xdg/torch/kernels.

Per cache: each part's files and bytes, and each Triton compile in write order: when its cubin
was written (seconds since the cache's first write), how long since its folder's first file (the
compile's own stages), and since the compile before (the compiles of a process run one after the
other on its main thread, so this bounds the compile and what ran between). A warm run adds only what
its cold run did not compile, so the listing after both shows the cold run's compiles first.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath


@dataclass(frozen=True)
class Compile:
    kernel: str
    folder: str       # Triton's cache key: one per (kernel, specialization)
    at_s: float       # its cubin written, since the cache's first write
    took_s: float     # from its folder's first file (the first IR stage) to its cubin
    after_s: float    # since the compile before it was written


def read_listing(text: str) -> dict[str, list[tuple[float, int, PurePosixPath]]]:
    """The listing's files by cache (the path's first part), in write order."""
    caches = defaultdict(list)
    for line in text.splitlines():
        if not line.strip():
            continue
        when, size, path = line.split(" ", 2)
        p = PurePosixPath(path)
        if len(p.parts) > 1:
            caches[p.parts[0]].append((float(when), int(size), PurePosixPath(*p.parts[1:])))
    return {name: sorted(files, key=lambda f: f[0]) for name, files in caches.items()}


def parts(files) -> dict[str, dict]:
    """Files and bytes per top folder of a cache (triton, inductor, xdg, fastft, ...)."""
    out = defaultdict(lambda: {"files": 0, "bytes": 0})
    for _, size, path in files:
        out[path.parts[0]]["files"] += 1
        out[path.parts[0]]["bytes"] += size
    return dict(out)


def triton_compiles(files) -> list[Compile]:
    """One Compile per Triton cache folder holding a .cubin (a compiled kernel), at the time its
    cubin was written. Triton writes each stage's IR (ttir, ttgir, llir, ptx) into the folder
    as it makes it, and the cubin last, after ptxas."""
    if not files:
        return []
    t0 = files[0][0]
    started = {}
    for when, _, path in files:
        if path.parts[0] == "triton":
            started.setdefault(path.parent, when)
    cubins = [(when, path) for when, _, path in files
              if path.parts[0] == "triton" and path.suffix == ".cubin"]
    out, before = [], t0
    for when, path in cubins:
        out.append(Compile(path.stem, path.parent.name, round(when - t0, 3),
                           round(when - started[path.parent], 3), round(when - before, 3)))
        before = when
    return out


def report(caches: dict, only: str | None = None) -> dict:
    return {name: {"parts": parts(files), "triton": [asdict(c) for c in triton_compiles(files)]}
            for name, files in caches.items() if only in (None, name)}


def show(rep: dict) -> None:
    for name, r in rep.items():
        print(f"{name}: " + ", ".join(f"{k} {v['files']} files {v['bytes'] / 2**20:.1f} MiB"
                                      for k, v in sorted(r["parts"].items())))
        kernels = {c["kernel"] for c in r["triton"]}
        print(f"  Triton: {len(r['triton'])} compiles of {len(kernels)} kernels")
        for c in r["triton"]:
            print(f"  {c['at_s']:8.2f} s  took {c['took_s']:5.2f} s  +{c['after_s']:6.2f} s  "
                  f"{c['kernel']}  ({c['folder'][:12]})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("listing", type=Path, help="gpu_check's caches.txt")
    ap.add_argument("--cache", help="one cache, e.g. longtail-fastft (default: all)")
    ap.add_argument("--json", type=Path, help="also write the report here")
    a = ap.parse_args(argv)
    rep = report(read_listing(a.listing.read_text()), a.cache)
    show(rep)
    if a.json:
        a.json.write_text(json.dumps(rep, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
