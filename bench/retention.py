"""What the export's retention gate costs, on a trained run (any shape, CPU or GPU).

    python bench/retention.py RUN [--gguf q4_k_m --gguf q8_0] [--out DIR]

Exports RUN (a `fastft train` run folder, e.g. one bench/ttfc.py left in its --work folder) to
the given quants in a scratch folder and prints the gate's table and its cost: `reference_s`
(base and adapter in torch, from the model the export loads anyway) and `retention_s`
(llama.cpp scoring each GGUF), beside the export's other stage times. With --out, writes
<date>-retention.json there. The gate's budgets are fastft.export.retention.HELD_OUT_TOKENS
and TRAINED_TOKENS; --tokens / --trained override them for one run, to find what fits a target.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--gguf", action="append", default=None)
    p.add_argument("--out", type=Path)
    p.add_argument("--tokens", type=int, help="held-out tokens scored (context included)")
    p.add_argument("--trained", type=int, help="held-out trained tokens scored")
    args = p.parse_args(argv)

    from fastft.core.models import import_unsloth

    import_unsloth()
    from rich.console import Console

    from fastft.export import retention
    from fastft.export.pipeline import ExportOptions, export_run

    if args.tokens:
        retention.HELD_OUT_TOKENS = args.tokens
    if args.trained:
        retention.TRAINED_TOKENS = args.trained
    quants = tuple(args.gguf or ("q4_k_m", "q8_0"))
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        try:
            result = export_run(ExportOptions(run=args.run, gguf=quants, out=f"{tmp}/export"),
                                Console(stderr=True))
            table, timings = result.retention, result.timings
        except retention.RetentionError as e:   # a failing file is still a measurement
            print(e, file=sys.stderr)
            manifest = json.loads(Path(f"{tmp}/export/fastft-export.json").read_text())
            table = retention.Retention.model_validate(manifest["retention"])
            timings = manifest["timings"]
        wall = time.perf_counter() - t
    print("\n".join(retention.table_lines(table)))
    gate = timings.get("reference_s", 0) + timings.get("retention_s", 0)
    print(f"gate: {gate:.1f}s (reference {timings.get('reference_s', 0):.1f}s, llama.cpp "
          f"{timings.get('retention_s', 0):.1f}s for {len(quants)} files); export {wall:.1f}s")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        path = args.out / f"{datetime.now():%Y%m%d-%H%M%S}-retention.json"
        path.write_text(json.dumps({"run": args.run, "quants": quants, "gate_s": gate,
                                    "export_s": wall, "timings": timings,
                                    "retention": table.model_dump(mode="json")}, indent=2))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
