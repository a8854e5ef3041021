"""The retention gate's 16-bit side, measured in the direct export's child.

The gate scores each GGUF against the 16-bit base with the adapter attached (fastft.export.
retention). On the direct path that model was loaded by the export's own process, from the
base's files, while the child (fastft.export.direct) read the same files again to merge them:
two 8 GB reads of a 4B model at once, each slowing the other (on an H100 the gate's load took
12 s beside the child, and the child ~7 s longer than alone, bench/ttfc.py 2026-12-07).

Here the child keeps each adapted base tensor it moves to the GPU to merge (MergeSource.kept:
the weight as stored, not the merge), reads the few others once (embeddings, norms), and
after writing builds the same model from them: transformers' model of the base's config,
those tensors assigned in place, the adapter attached by peft, unmerged, as
models.load_plain_with_adapter attaches it. Then it measures what the export's process asks
for (`measure`, on the held-out tokens it sends, retention.measure) and sends back the numbers.

The child keeps tensors only where the gate would run on the same device in the same dtype
(`keeps`) with room to spare on the GPU; anything that goes wrong in building or measuring
is reported, not raised: the export's process then loads its own model, as before.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

from ..core.models import plain_dtype

log = logging.getLogger(__name__)

# Room on the GPU for the kept base beside the child's own working set (the merge's float32
# copies and the quantizer's blocks, LOOKAHEAD tensors ahead): the export's process loaded the
# same base onto the same GPU at the same time before, so this asks for no more than it did.
HEADROOM_BYTES = 3 * 2**30
REQUEST_FD = "FASTFT_DIRECT_REQUEST_FD"   # the pipe the export's process sends the held-out on


def keeps(device: str, weights: str | None, base_bytes: int) -> bool:
    """Whether the child keeps the base for the gate: its weights are stored in the gate's dtype
    (no copy to cast) and, on a GPU, they fit beside the child's work. On the CPU the kept
    tensors are views of the base's files, which cost nothing."""
    import torch

    if weights != str(plain_dtype()).removeprefix("torch."):
        return False
    if not device.startswith("cuda"):
        return True
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return free >= base_bytes * 1.2 + HEADROOM_BYTES


def build(base: Path, parts: list[str], adapter: Path, kept: dict, device: str):
    """The base with the adapter attached (a PeftModel, eval), from `kept` (name -> tensor on
    `device`) and the base's other tensors; raises ValueError where the checkpoint does not
    fill the model exactly."""
    t = time.perf_counter()
    from accelerate import init_empty_weights
    from peft import PeftModel
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForCausalLM

    from ..core.models import LOADING_RULES

    log.info("fastft: the gate's model's imports took %.2fs", time.perf_counter() - t)

    dtype = plain_dtype()
    rules = {"trust_remote_code": LOADING_RULES["trust_remote_code"]}
    config = AutoConfig.from_pretrained(str(base), local_files_only=True, **rules)
    with init_empty_weights():                    # parameters on meta; buffers (RoPE) real
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **rules)
    model.requires_grad_(False)
    state = {}
    for part in parts:
        with safe_open(str(base / part), framework="pt", device=device) as f:
            for key in f.keys():
                state[key] = kept[key] if key in kept else f.get_tensor(key).to(dtype)
    loaded = model.load_state_dict(state, strict=False, assign=True)
    model.tie_weights()
    empty = [n for n, p in model.named_parameters() if p.is_meta]
    if loaded.unexpected_keys or empty:
        raise ValueError(f"the base's checkpoint does not fill {type(model).__name__}: "
                         f"unused {loaded.unexpected_keys[:3]}, missing {empty[:3]}")
    model.to(device)                              # the buffers; the parameters are there
    return PeftModel.from_pretrained(model, str(adapter), is_trainable=False).eval()


def request() -> dict | None:
    """In the child: the held-out tokens the export's process sends ({"pad_id", "examples":
    [{"input_ids", "labels"}]}), once it has them; None when it sent none (it closed the pipe:
    it loads its own model, or it is gone)."""
    if not (fd := os.environ.get(REQUEST_FD)):
        return None
    with os.fdopen(int(fd), "rb") as pipe:
        said = pipe.read()
    return json.loads(said) if said else None


def encode_request(pad_id: int, encoded: list) -> bytes:
    """The request for retention.HeldOut.encoded."""
    return json.dumps({"pad_id": pad_id, "examples": [
        {"input_ids": e.tokens.input_ids, "labels": e.tokens.labels} for e in encoded]}).encode()


def measured(source, adapter: Path, asked: dict) -> dict:
    """retention.measure on the model built from `source` (a MergeSource with kept tensors), as
    JSON's dict (retention.Measured.to_dict)."""
    import torch

    from .retention import measure

    if source.device.startswith("cuda"):
        torch.cuda.synchronize()                  # each kept tensor was copied on its thread's stream
    t = time.perf_counter()
    model = build(source.base, source.parts, adapter, source.kept, source.device)
    built = time.perf_counter()
    tokens = [SimpleNamespace(**e) for e in asked["examples"]]
    measured = measure(model, asked["pad_id"], tokens).to_dict()
    # in export.log: where the child's reference time goes (imports and peft's set-up, or the
    # forward passes), for bench/ttfc.py's runs to tell
    log.info("fastft: the gate's model built in %.2fs, measured in %.2fs",
             built - t, time.perf_counter() - built)
    return measured
