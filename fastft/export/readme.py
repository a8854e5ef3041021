"""The README.md of an export folder: how to run it with ollama, and what each file is."""

from __future__ import annotations

from pathlib import Path

from .. import __version__
from .modelfile import FAMILIES


def _ollama_section(name: str, modelfile, first_gguf: str) -> list[str]:
    lines = ["## Run it with ollama", "", "From this folder:", "", "```sh",
             f"ollama create {name} -f Modelfile", f"ollama run {name}", "```", "",
             f"The Modelfile serves `{first_gguf}`; to serve another quantisation, "
             "change its `FROM` line.", ""]
    if modelfile.template is not None:
        lines += ["Its `TEMPLATE` renders exactly the prompt the model was trained on "
                  "(the run's chat template, with the generation prompt).", ""]
    if modelfile.system_mode == "TEMPLATE":
        lines += ["The system prompt given to `fastft export --system` cannot be written as "
                  "a `SYSTEM` line (ollama's Modelfile syntax has no escapes), so it is built "
                  "into the `TEMPLATE`: it applies whenever a request brings no system "
                  "message of its own, as `SYSTEM` would.", ""]
    return lines


def _retention_section(r) -> list[str]:
    """The retention gate's table (a fastft.export.manifest.Retention) as Markdown."""
    lines = ["## Retention", "",
             f"How much of the fine-tune each file keeps: loss on {r.data}, {r.tokens:,} trained "
             f"tokens, scored by llama.cpp on the training token ids. Retention = (base loss - "
             f"file loss) / (base loss - adapter loss); the gate asks for at least "
             f"{r.min_retention:g}. KL: {r.kl}.", "",
             "| model | loss | perplexity | KL | retention | gate |", "|---|---|---|---|---|---|",
             f"| base | {r.base.loss:.4f} | {r.base.ppl:,.2f} | | | |",
             f"| adapter (16-bit) | {r.adapter.loss:.4f} | {r.adapter.ppl:,.2f} | | 100% | |"]
    for f in r.tried + r.files:
        kept = "n/a" if f.retention is None else f"{f.retention:.1%}"
        verdict = "passed" if f.passed else f"failed: {f.problem}"
        if f in r.tried:
            verdict += " (--gguf auto: not kept)"
        lines.append(f"| `{f.file}` | {f.loss:.4f} | {f.ppl:,.2f} | {f.kl:.4f} | {kept} | {verdict} |")
    return lines + [""]


def readme_text(name: str, info, ggufs: dict[str, Path], merged: bool, modelfile,
                manifest: str, retention=None) -> str:
    """README.md for export `name` of run `info` (a fastft.core.run.Run): `ggufs` maps quant -> file,
    the first being the one the Modelfile serves; `modelfile` is the rendered Modelfile (None
    without GGUF), `manifest` the manifest's name, `retention` the gate's table (or None)."""
    first_gguf = next(iter(ggufs.values())).name if ggufs else None
    family = FAMILIES.get(info.variant, FAMILIES["other"])
    lines = [f"# {name}", "",
             f"Fine-tuned from `{info.model}` ({family.label}) by fastft "
             f"{__version__}, run `{info.run_dir.name}`.", ""]
    if modelfile is not None:
        lines += _ollama_section(name, modelfile, first_gguf)
    if ggufs:
        lines += ["## Files", "", "| file | quantisation |", "|---|---|"]
        lines += [f"| `{p.name}` | {q.upper()} |" for q, p in ggufs.items()]
        lines += ["", "Any llama.cpp tool loads them, e.g. "
                  f"`llama-cli -m {first_gguf}`.", ""]
    if retention is not None:
        lines += _retention_section(retention)
    if merged:
        lines += ["`merged/` holds the 16-bit merged model (safetensors) for transformers, "
                  "vLLM and other tools.", ""]
    lines += [f"`{manifest}` records the source run and the SHA-256 of every file.", ""]
    return "\n".join(lines)
