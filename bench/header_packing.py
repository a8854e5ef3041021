"""Seconds to pack a GGUF header's keys (the converter's vocabulary: Qwen's 151,936 tokens,
their types and 151,387 merges) by gguf's writer item by item, and by fastft's
gguf_vocab.packed_fast, alternately; medians of --runs, and whether the bytes are the same.

    python bench/header_packing.py [--runs 5] [--out FILE.json]

The keys come from a vocabulary file in fastft's cache (gguf-vocab/, written by any direct
export of a Qwen run, the demo's included), and gguf-py from fastft's llama.cpp source.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def header(gguf, items: list) -> bytes:
    """The key-value bytes of a GGUF holding `items`, as GGUFWriter.write_kv_data_to_file
    packs them."""
    w = gguf.GGUFWriter(None, "qwen3")
    for name, value, vtype, sub in items:
        w.add_key_value(name, value, gguf.GGUFValueType(vtype),
                        None if sub is None else gguf.GGUFValueType(sub))
    string = gguf.GGUFValueType.STRING
    return b"".join(w._pack_val(k, string, add_vtype=False)
                    + w._pack_val(v.value, v.type, add_vtype=True, sub_type=v.sub_type)
                    for k, v in w.kv_data[0].items())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)

    from fastft.core.cache import cache_dir
    from fastft.core.sources import llama_cpp_source
    from fastft.export import direct, gguf_vocab

    files = sorted((cache_dir() / gguf_vocab.FOLDER).glob("*.json"), key=lambda f: f.stat().st_mtime)
    if not files:
        raise SystemExit("no vocabulary in fastft's cache: run `fastft demo` (or any export) first")
    items = json.loads(files[-1].read_text(encoding="utf-8"))
    seconds: dict[str, list[float]] = {"gguf": [], "packed_fast": []}
    with direct.llama_cpp_modules(llama_cpp_source()) as (_, gguf):
        for _ in range(args.runs):
            t = time.perf_counter()
            own = header(gguf, items)
            seconds["gguf"].append(time.perf_counter() - t)
            with gguf_vocab.packed_fast(gguf):
                t = time.perf_counter()
                fast = header(gguf, items)
                seconds["packed_fast"].append(time.perf_counter() - t)
            if fast != own:
                raise SystemExit("packed_fast wrote other bytes than gguf's writer")
    medians = {k: round(statistics.median(v), 4) for k, v in seconds.items()}
    result = {"vocabulary": files[-1].name, "items": sum(len(i[1]) if isinstance(i[1], list)
                                                         else 1 for i in items),
              "bytes": len(own), "same_bytes": True, "seconds": seconds, "median_s": medians,
              "ratio": round(medians["gguf"] / medians["packed_fast"], 2)}
    print(json.dumps({k: result[k] for k in ("items", "bytes", "same_bytes", "median_s", "ratio")}))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
