"""Does reading the weights ahead during the import shorten `fastft train`'s load on a cold
page cache? (fastft.core.prefetch.)

Before each run the model's files are dropped from the page cache (bench/ttfc.py's
drop_page_cache); then `fastft train DATA --model MODEL --max-steps 2` runs with the read-ahead
as shipped ("on") and with it replaced by a no-op ("off"), alternately, --runs times each,
after one run not counted (a warm-up: the compile caches are then warm for both modes).
Reported: each run's imports_s and load_s from its fastft.json, and the medians. Before that,
the raw effect: seconds to read the files after a drop, and after a drop plus the read-ahead
and a pause as long as an import.

    python bench/read_ahead.py --model /tmp/ttfc/models/Qwen3-4B-shape-Instruct-2507 \
        --data /tmp/ttfc/data/longtail-2048-n500-s0.jsonl --work /tmp/read-ahead --runs 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO, log, write_json  # noqa: E402
from bench.ttfc import drop_page_cache  # noqa: E402

OFF = ("import sys, fastft.core.prefetch as p; p.read_ahead = lambda files: None; "
       "from fastft.cli import main; sys.argv[0] = 'fastft'; main()")
ON = "import sys; from fastft.cli import main; sys.argv[0] = 'fastft'; main()"


def read_all(folder: Path) -> float:
    t = time.perf_counter()
    for p in sorted(folder.glob("*.safetensors")):
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass
    return time.perf_counter() - t


def raw(model: Path, pause: float) -> dict:
    from fastft.core import prefetch

    drop_page_cache(model)
    cold = read_all(model)
    drop_page_cache(model)
    t = time.perf_counter()
    prefetch.read_ahead(prefetch.weight_files(str(model), True)).join()
    ahead = time.perf_counter() - t
    time.sleep(max(0.0, pause - ahead))
    return {"read_cold_s": cold, "read_ahead_s": ahead, "pause_s": pause,
            "read_after_read_ahead_s": read_all(model)}


def train(mode: str, i: int, a) -> dict:
    drop_page_cache(a.model)
    runs = a.work / f"{mode}-{i}"
    cmd = [sys.executable, "-c", OFF if mode == "off" else ON, "train", str(a.data), "--model",
           str(a.model), "--max-steps", "2", "--name", "r", "--runs-dir", str(runs)]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    timings = json.loads((runs / "r" / "fastft.json").read_text())["timings"]
    row = {"mode": mode, "wall_s": time.perf_counter() - t, **timings}
    log(f"{mode} {i}: imports {timings['imports_s']:.1f} s, load {timings['load_s']:.1f} s, "
        f"wall {row['wall_s']:.1f} s")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/read-ahead"))
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("read-ahead.json"))
    a = ap.parse_args()
    result = {"raw": raw(a.model, pause=10.0)}
    log("raw:", {k: round(v, 2) for k, v in result["raw"].items()})
    train("warm-up", 0, a)   # fills the compile caches, so that neither mode pays for them
    rows = [train(mode, i, a) for i in range(a.runs) for mode in ("off", "on")]
    result["runs"] = rows
    result["median_load_s"] = {m: statistics.median(r["load_s"] for r in rows if r["mode"] == m)
                               for m in ("off", "on")}
    log("median load_s:", result["median_load_s"])
    write_json(a.out, result)


if __name__ == "__main__":
    main()
