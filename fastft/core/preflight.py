"""Checks made before anything is written: enough free disk, and no stale scratch in the way.

Disk: `check_train_space` and `check_export_space` estimate, from the model's config.json alone
(nothing is loaded), how many bytes training or an export will write, and stop with one line
(`DiskSpaceError`) when the target folder's file system has less free space than that. A full
disk found hours into training, or halfway through writing an 8 GB merged model, costs the work
done so far and leaves partial files behind.

Scratch: an export writes into a hidden `.tmp-*` folder beside its output and holds a lock on
a file in it for as long as it runs. A SIGKILL or a power cut skips every `finally`, leaving the
folder (many GB for a real model); the kernel drops the lock with the process, so the next
export can tell a dead owner's folder from a running export's and remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .config import TrainConfig
from .errors import FastftError
from .locks import file_lock, try_lock

# Bits per weight of a GGUF type, rounded up from llama.cpp's own figures (Q4_K_M ~4.9, Q5_K_M
# ~5.7, Q8_0 8.5). The k-quant mixes keep the token embedding (which is also the output matrix
# when tied) near 8 bits, so embeddings are counted at Q8_0's 8.5 for every quantised type.
# Any other llama-quantize type is counted at Q8_0's 8.5, more than each of them takes, but F32.
GGUF_BITS = {"q4_k_m": 5.0, "q5_k_m": 5.8, "q8_0": 8.5, "f16": 16.0, "bf16": 16.0, "f32": 32.0}
EMBEDDING_BITS = 8.5
# What llama.cpp's converter writes: an export converts to ONE of these; every other requested
# type, a second 16-bit one included, llama-quantize makes from that file.
SIXTEEN_BIT = ("bf16", "f16")
# Tokenizer, chat template, configs and the like, per saved copy (Qwen's tokenizer.json is
# 11 MB as saved by transformers).
SMALL_FILES = 32 * 10**6
# A checkpoint stores the LoRA weights (at most fp32: 4 bytes each) and Adam's two moments (at
# most fp32 each: 8 bytes); the 8-bit optimizers and bf16 weights store less.
CHECKPOINT_BYTES_PER_LORA_PARAM = 12
ADAPTER_BYTES_PER_LORA_PARAM = 4
HEADROOM = 1.1     # logs, metrics, file-system overhead, and an estimate that is only an estimate
MLP = ("gate_proj", "up_proj", "down_proj")
SCRATCH_PREFIX = ".tmp-"
OWNER_FILE = ".owner"


class DiskSpaceError(FastftError):
    pass


# -- the model's shape, from config.json -------------------------------------------------------

@dataclass
class Shape:
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    experts: int = 1              # MoE: every expert's MLP is stored

    @classmethod
    def from_config(cls, c: dict) -> "Shape":
        c = c.get("text_config", c)   # multimodal wrappers nest the language model's config
        heads = c["num_attention_heads"]
        return cls(vocab=c["vocab_size"], hidden=c["hidden_size"],
                   intermediate=c.get("moe_intermediate_size") or c["intermediate_size"],
                   layers=c["num_hidden_layers"], heads=heads,
                   kv_heads=c.get("num_key_value_heads") or heads,
                   head_dim=c.get("head_dim") or c["hidden_size"] // heads,
                   tied=bool(c.get("tie_word_embeddings", False)),
                   experts=c.get("num_experts") or c.get("num_local_experts") or 1)

    def module_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear projection of one decoder layer."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def _copies(self, module: str) -> int:
        return self.experts if module in MLP else 1

    @property
    def layer_params(self) -> int:
        """Linear weights of the decoder layers (norms and biases are a rounding error)."""
        return self.layers * sum(a * b * self._copies(m) for m, (a, b) in self.module_dims().items())

    def lora_params(self, rank: int, targets: tuple[str, ...]) -> int:
        """LoRA's A (r x in) and B (out x r) for each targeted projection of each layer."""
        dims = self.module_dims()
        return self.layers * sum(rank * sum(dims[t]) * self._copies(t) for t in targets if t in dims)


def model_shape(path_or_id: str) -> Shape | None:
    """The shape from a local folder's config.json, or a hub model's cached one; None when
    neither is here (the model will be downloaded, or fail to load with its own message)."""
    folder = Path(path_or_id).expanduser()
    config = folder / "config.json" if folder.is_dir() else None
    if config is None:
        try:
            from huggingface_hub import try_to_load_from_cache
            found = try_to_load_from_cache(path_or_id, "config.json")
        except Exception:  # an id the hub library rejects has no cached config either
            found = None
        config = Path(found) if isinstance(found, str) else None
    if config is None or not config.is_file():
        return None
    try:
        return Shape.from_config(json.loads(config.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # an unusual config: the load reports real problems better than we can


# -- the estimates -----------------------------------------------------------------------------

def train_bytes(shape: Shape, cfg: TrainConfig) -> tuple[int, str]:
    """(bytes a run writes at its peak, what they are)."""
    lora = shape.lora_params(cfg.rank, cfg.target_modules)
    checkpoint = lora * CHECKPOINT_BYTES_PER_LORA_PARAM + SMALL_FILES
    adapter = lora * ADAPTER_BYTES_PER_LORA_PARAM + SMALL_FILES
    # The Trainer keeps save_total_limit checkpoints and writes the next before rotating one out.
    kept = cfg.save_total_limit + 1
    what = f"{kept} checkpoints and the adapter of a {lora / 1e6:,.1f}M-parameter LoRA"
    return kept * checkpoint + adapter, what


def export_bytes(shape: Shape, quants: tuple[str, ...], merged: bool, direct: bool = False
                 ) -> tuple[int, str]:
    """(bytes an export writes at its peak, what they are). Through Unsloth (`direct` False) the
    merged 16-bit model and the one 16-bit GGUF converted from it exist together; the merged
    model is deleted (unless --merged) before the quantised files are made from that GGUF. The
    direct path writes that GGUF from memory: the merged model is on disk only with --merged."""
    params = shape.embedding_params + shape.layer_params
    sixteen = 2 * params + SMALL_FILES

    def gguf(q: str) -> int:
        bits = GGUF_BITS.get(q, EMBEDDING_BITS)
        embedding_bits = bits if bits >= 16 else min(EMBEDDING_BITS, bits)  # unquantised: as is
        return int((shape.embedding_params * embedding_bits
                    + shape.layer_params * bits) / 8) + SMALL_FILES
    if not quants:
        return sixteen, f"the merged 16-bit model ({_size(sixteen)})"
    # The converted file is counted as the 16-bit GGUF; which of the two it is does not change
    # its size.
    converted = next((q for q in quants if q in SIXTEEN_BIT), None)
    extras = [q for q in quants if q != converted]
    others = sum(gguf(q) for q in extras)
    checkpoint = merged or not direct
    peak = max(2 * sixteen if checkpoint else 0, sixteen * merged + sixteen + others)
    parts = [f"merged 16-bit model {_size(sixteen)}"] * checkpoint + [f"16-bit GGUF {_size(sixteen)}"]
    parts += [f"{q} {_size(gguf(q))}" for q in extras]
    return peak, ", ".join(parts)


# -- the checks --------------------------------------------------------------------------------

def check_train_space(cfg: TrainConfig, folder: str | os.PathLike, model_path: str) -> None:
    shape = model_shape(model_path)
    if shape is not None:
        _check(Path(folder), *train_bytes(shape, cfg), "--runs-dir")


def check_export_space(model_path: str, quants: tuple[str, ...], merged: bool,
                       final: Path, direct: bool = False) -> None:
    shape = model_shape(model_path)
    if shape is not None:
        _check(final.parent, *export_bytes(shape, quants, merged, direct), "--out")


def _check(folder: Path, need: int, what: str, option: str) -> None:
    need = int(need * HEADROOM)
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    usage = shutil.disk_usage(existing)
    if usage.total == 0:   # /proc, /sys: root may "write" there, but nothing is stored
        raise DiskSpaceError(f"{folder} is on a filesystem that stores no files (such as /proc or "
                             f"/sys); choose another {option}")
    free = usage.free
    if free < need:
        raise DiskSpaceError(f"not enough disk space in {folder}: need ~{_size(need)}, have "
                             f"{_size(free)} free ({what}); free some space or choose another "
                             f"{option}")


def _size(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 10**8 else f"{n / 1e6:.0f} MB"


# -- scratch folders ---------------------------------------------------------------------------

@contextlib.contextmanager
def owned_scratch(parent: Path, prefix: str) -> Iterator[Path]:
    """A new `.tmp-<prefix>-*` folder in `parent`, locked as this process's while the block
    runs (the caller removes it). `remove_stale_scratch` skips it while the lock is held."""
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{prefix}-", dir=parent))
    owner = file_lock(scratch / f"{OWNER_FILE}.new")
    owner.acquire()
    try:
        # Only a locked owner file carries the name a cleaner looks for: no window in which
        # another process could take a live folder for a dead one. (The lock is on the file,
        # not its name: it holds across the rename.)
        os.rename(scratch / f"{OWNER_FILE}.new", scratch / OWNER_FILE)
        with open(scratch / OWNER_FILE, "a") as note:   # for a person looking at the folder
            note.write(f"{os.getpid()}\n")
        yield scratch
    finally:
        owner.release()


def remove_stale_scratch(parent: Path) -> list[tuple[str, int]]:
    """Remove the `.tmp-*` folders in `parent` whose owner process is gone (their lock is free);
    (name, bytes) of each. Folders without an owner file (being created, or not ours) stay."""
    removed = []
    for folder in sorted(parent.glob(f"{SCRATCH_PREFIX}*")):
        owner = folder / OWNER_FILE
        if folder.is_symlink() or not owner.is_file():
            continue
        try:
            lock = try_lock(owner)
            if lock is None:
                continue  # alive
            try:
                size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
                shutil.rmtree(folder)
            finally:
                lock.release()
        except FileNotFoundError:
            continue  # another process removed it first
        removed.append((folder.name, size))
    return removed


def describe_removed(removed: list[tuple[str, int]], what: str) -> str:
    names = ", ".join(name for name, _ in removed)
    return (f"removed stale {names} ({_size(sum(s for _, s in removed))}, left by {what} that "
            f"was killed)")
