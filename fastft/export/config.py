"""`fastft export`'s options: `ExportConfig`, their one owner, as `TrainConfig` is training's.

The CLI's options are generated from its fields (fastft.cli.config_options), `fastft init`
writes them as the `[export]` section of fastft.toml, `--config FILE` reads that section, and
`export_run` takes the validated object. Cheap to import.
"""

from __future__ import annotations

from typing import Optional

from pydantic import field_validator

from ..core.config import Config, arg, opt, split_commas

# --gguf takes llama-quantize's types, lower-cased (q4_k_m); files use llama.cpp's spelling (Q4_K_M).
DEFAULT_QUANTS = ("q4_k_m",)
# `--gguf auto` tries these smallest first and keeps the first the retention gate passes: the
# k-quants llama.cpp recommends, then q8_0. q2_k and the i-quants are left out (the i-quants need
# an importance matrix; q2_k rarely keeps a fine-tune's gain on a 4B model).
AUTO_QUANTS = ("q3_k_m", "q4_k_m", "q5_k_m", "q6_k", "q8_0")


class ExportConfig(Config):
    """One export of a trained run."""
    command = "export"

    run: str = arg("The run to export (its folder).", "RUN", default="runs/latest")
    gguf: tuple[str, ...] = opt(
        DEFAULT_QUANTS, "GGUF type: any of llama.cpp's llama-quantize types (q4_k_m, q5_k_m, "
        "q6_k, q8_0, q3_k_m, q2_k, q4_0, iq4_xs, ..., f16, bf16, f32; a wrong one lists them "
        "all); repeat for several. The Modelfile uses the first. `auto`: the smallest of "
        f"{', '.join(AUTO_QUANTS)} (tried in that order) whose retention passes "
        "--min-retention. (In TOML, a list; [] for none.)",
        multiple=True)
    merged: bool = opt(False, "Also write the 16-bit merged model (safetensors) to OUT/merged/.")
    out: Optional[str] = opt(None, "Output folder. [default: EXPORTS_DIR/NAME]", metavar="DIRECTORY")
    exports_dir: str = opt("exports", "Folder that holds the exports (without --out).",
                           metavar="DIRECTORY")
    name: Optional[str] = opt(None, "Model name for ollama and the GGUF files. [default: the "
                                    "run's name without its timestamp, lower-cased]")
    system: Optional[str] = opt(None, "Default system prompt for the Modelfile (any text; "
                                      "escaped for ollama).")
    force: bool = opt(False, "Replace a previous export in the output folder, once the new one is "
                             "complete (only what fastft wrote: nothing else is ever deleted).")
    check: bool = opt(True, "Load each GGUF with llama.cpp and generate a few tokens "
                            "(--no-check skips it).")
    min_retention: float = opt(
        0.9, "Retention gate: each GGUF must keep this share of the fine-tune's loss gain on "
        "held-out trained tokens, (base loss - GGUF loss) / (base loss - adapter loss), measured "
        "by llama.cpp; a file below it fails the export (0: measure, never fail).", ge=0, le=1)
    eval_data: Optional[str] = opt(
        None, "Held-out data for the retention gate (any format training reads). [default: the "
        "run's eval file or eval split, else a sample of its training data]", metavar="FILE")
    direct: bool = opt(True, "Merge on the GPU without loading the model through Unsloth, and "
                             "write the 16-bit GGUF from memory (no merged checkpoint on disk "
                             "unless --merged, which is written from the same merge); "
                             "--no-direct exports through Unsloth's merged checkpoint (the older "
                             "path).")
    gpu_quantize: bool = opt(True, "Make Q4_K_M, Q6_K and Q8_0 on the GPU, byte for byte the "
                                   "file llama-quantize makes, in a fraction of the time; "
                                   "--no-gpu-quantize (or no GPU, or another type) runs "
                                   "llama-quantize on the CPU.")
    create: bool = opt(False, "Then run `ollama create NAME -f Modelfile` in the export folder "
                              "(needs ollama on PATH).")

    @field_validator("gguf", mode="before")
    @classmethod
    def _split_quants(cls, v):
        return split_commas(v)
