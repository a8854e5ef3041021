"""`fastft-export.json`, the export folder's manifest: one typed owner for its keys.

The export writes it (`fastft.export.pipeline.write_docs`), `--force` reads it to know which
files an earlier export wrote (`pipeline._check_replaceable`), and `fastft chat` reads it to
serve a GGUF as the Modelfile does (`fastft.serve.chat.find_gguf`). All of them go through
`ExportManifest`, so a key renamed here is renamed for every reader and writer at once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MANIFEST = "fastft-export.json"


class _Keeps(BaseModel):
    # A key this version does not know is kept on reading (a newer fastft's manifest still
    # works) and written back as read.
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class FileEntry(_Keeps):
    sha256: str
    bytes: int


class ServedModelfile(_Keeps):
    """What the Modelfile serves: its FROM, whether it has a TEMPLATE, where its SYSTEM went."""
    from_: str = Field(alias="from")   # `from` is a Python keyword
    template: bool
    system: Optional[str]              # "SYSTEM", "TEMPLATE" (built into it) or None
    parameters: dict[str, object]


class GGUFCheck(_Keeps):
    """One GGUF loaded by llama.cpp, and the text it generated from `prompt`."""
    file: str
    prompt: str
    output: str
    seconds: float


class ModelScore(_Keeps):
    loss: float                        # mean cross-entropy per trained token (nats)
    ppl: float


class GGUFRetention(_Keeps):
    """One GGUF scored by llama.cpp on the held-out trained tokens (fastft.export.retention)."""
    file: str
    quant: str
    loss: float
    ppl: float
    kl: float                          # from the adapter's next-token distribution (Retention.kl)
    retention: Optional[float]         # (base - file) / (base - adapter); None: no gain to keep
    passed: bool
    failed: Optional[str] = None       # "retention", "tokenizer" or "template"
    problem: Optional[str] = None      # why it failed, in words


class Retention(_Keeps):
    """The retention gate's table: what each GGUF keeps of the fine-tune's gain."""
    data: str                          # the held-out examples, and where they came from
    tokens: int                        # trained tokens scored
    kl: str                            # how KL was computed
    min_retention: float
    base: ModelScore
    adapter: ModelScore
    files: list[GGUFRetention]
    tried: list[GGUFRetention] = []    # --gguf auto: smaller quants scored and not kept
    seconds: float                     # what the gate cost, torch and llama.cpp together
    passed: bool


class ExportManifest(_Keeps):
    fastft_version: str
    created: str                       # ISO 8601, UTC, seconds
    name: str
    # Relative to the export folder: no user's absolute paths in a folder meant to be shared,
    # and still right when runs/ and exports/ move together.
    source_run: str
    base_model: str
    variant: str
    quants: list[str]
    merged: bool
    # the 16-bit GGUF every quant was made from (never on disk when the direct child quantized:
    # its bytes went from the converter to the quantizer in memory, see quantized_by)
    converted_from: Optional[str]
    modelfile: Optional[ServedModelfile]
    checks: list[GGUFCheck]
    timings: dict[str, float]          # "<stage>_s" -> seconds, rounded
    files: dict[str, FileEntry]        # relative path -> its SHA-256 and size
    retention: Optional[Retention] = None   # None: no GGUF (or an export before the gate)
    path: Optional[str] = None          # "direct" (fastft.export.direct's one merge) or "detour"
    peak_disk_bytes: Optional[int] = None   # the most the scratch folder held at once
    # GGUF file -> what quantized it: the torch device of fastft.export.gpuquant ("cuda":
    # llama-quantize's bytes, made on the GPU) or "llama-quantize"; a converted file is not listed
    quantized_by: dict[str, str] = {}

    def to_json(self) -> str:
        return json.dumps(self.model_dump(mode="json", by_alias=True), indent=2,
                          ensure_ascii=False) + "\n"

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST
        path.write_text(self.to_json(), encoding="utf-8")
        return path

    @classmethod
    def read(cls, folder: Path) -> "ExportManifest":
        """The manifest in export folder `folder`; raises ManifestError when it is missing or
        is not one (unreadable, not JSON, a key missing or of the wrong type)."""
        path = folder / MANIFEST
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as e:
            raise ManifestError(f"{path}: cannot read ({e.strerror or e})") from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "the file"
            raise ManifestError(f"{path}: not a fastft export manifest ({where}: "
                                f"{first['msg']})") from None


class ManifestError(ValueError):
    """A manifest that cannot be read; each reader says what that means for its command."""
