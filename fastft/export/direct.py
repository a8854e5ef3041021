"""The export without the 16-bit detour: merge on the GPU, hand the tensors to llama.cpp's writer.

The older path (fastft.export.pipeline) loads the base through Unsloth, writes the merged
16-bit checkpoint to disk, and runs llama.cpp's converter on that folder. `DirectChild` does
the same work in one child process (`python -m fastft.export.direct`; a child because the
converter imports transformers, and should the older path follow, this process must import
Unsloth before transformers), with no Unsloth and no second pass over the weights:

- the merge is the one Unsloth's `save_pretrained_merged` does (unsloth_zoo.saving_utils
  `_merge_lora`): each adapted base weight, as stored in the base's safetensors, goes to the
  GPU in float32, `W.addmm_(B, A, alpha=scaling)` with the adapter's A and B in float32, and
  back in the weight's own dtype; every other tensor is the base's, byte for byte;
- the converter is llama.cpp's own model class (`conversion.get_model_class`, from the same
  pinned source `convert_hf_to_gguf.py` runs), imported with llama.cpp's `gguf` package (the
  venv's `gguf` 0.19.0 is a different build of it), instantiated on a folder that holds
  config.json, generation_config.json and the run's tokenizer, and given the merged tensors
  through `index_tensors`: lazily, each tensor merged when the writer reaches it, so no second
  copy of the model is ever in RAM;
- when every GGUF asked for is a type fastft.export.gpuquant makes (and no 16-bit GGUF is
  kept), the 16-bit file is not written either: its header alone goes to disk, in a sparse file
  as long as the whole file would be, for `llama-quantize --dry-run` to plan each tensor's type;
  then each tensor, as the converter computes it (merged, cast to 16 bits), is quantized on the
  GPU from those bytes, which are the 16-bit file's (the files are llama-quantize's, byte for
  byte): from the merge's own tensor still on the GPU where the converter's bytes are exactly
  its bytes (merged_values), so they need not cross back; each thread on its own CUDA stream.
  A tensor every file quantizes is not copied back at all: the converter computes it with the
  base's own tensor standing in for the merge, and where that comes out unchanged the merge
  goes to the quantizer (_stood_in; else it is computed again from the merge, copied back).
  No GPU, another type, or the GPU out of memory: the 16-bit GGUF is written as before;
- GGUF only, that folder is scratch and no checkpoint is written. With --merged it is the
  merged folder the older path writes, and each tensor, as it is merged for the GGUF writer,
  is also written into that folder's safetensors files (fastft.export.checkpoint), laid out as
  the older path lays them out; the tensors the converter skips are written after it. Without
  GGUF the child only writes the checkpoint.

Anything unexpected before the first byte is written (an adapter feature the plain merge does
not cover, a base checkpoint the older path would lay out otherwise, a converter whose classes
are not the ones read here) makes the child exit with DECLINED and the reason; the caller then
takes the older path, saying so in one line. On the tiny model both paths write byte-identical
GGUF files (tests/test_export_direct.py) and safetensors files
(tests/test_export_merged_direct.py).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..core.ahead import ahead
from ..core.errors import FastftError
from ..core.models import base_folder, weights_dtype
from . import checkpoint
from .gguf_vocab import packed_fast, remembering

# The merged safetensors folder the older path converts is named so; the converter looks at the
# folder's name (Qwen3's reranker detection), so the direct one carries it too.
FOLDER = "merged"
ADAPTER_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])\.weight$")
# adapter_config.json keys whose non-empty value means more than W + scaling·B·A on linear weights
UNSUPPORTED = ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern", "lora_bias",
               "trainable_token_indices", "layer_replication", "target_parameters", "fan_in_fan_out",
               "use_qalora", "use_bdlora")
COPIED = ("config.json", "generation_config.json")   # beside the tokenizer, for the converter
DTYPES = ("BF16", "F16", "F32")                      # safetensors' names of the base's dtypes


class DirectExportError(FastftError):
    pass


@dataclass
class MergeSource:
    """The base's safetensors and the adapter's LoRA pairs: what the merged tensors come from."""
    base: Path                                   # the 16-bit base folder
    parts: list[str]                             # its safetensors files, in the converter's order
    lora: dict[str, tuple[object, object]]       # base tensor name -> (A, B), float32 tensors
    scaling: float                               # alpha / r (alpha / sqrt(r) with rsLoRA)
    device: str
    # --merged: each tensor also goes to the merged checkpoint as it is made, so that the GGUF
    # writer and the safetensors writer share one merge of it
    sink: checkpoint.MergedCheckpoint | None = None
    # the retention gate's model is built here after writing (fastft.export.gate_model): each
    # adapted base tensor, as moved to the merge device, is kept (name -> tensor)
    kept: dict | None = None

    def tensor(self, name: str, local) -> object:
        """`name` merged (or the base's own tensor), on the CPU in the base's dtype."""
        out = self._merged(name, local)
        if self.sink is not None:
            self.sink.put(name, out)
        return out

    @staticmethod
    def _base_tensor(local):
        """The base's tensor as stored, a CPU view of its safetensors file."""
        import torch

        dtype = dict(zip(DTYPES, (torch.bfloat16, torch.float16, torch.float32)))[local.dtype]
        return torch.from_numpy(local.mmap_bytes()).view(dtype).reshape(local.shape)

    def _merged(self, name: str, local) -> object:
        import torch

        from . import gpuquant

        w = self._base_tensor(local)
        if name not in self.lora:
            return w
        made = getattr(_made, "tensors", None)
        stand_in = made is not None and _made.stand_in and self.sink is None
        # each merging thread on its own CUDA stream; .cpu() (or, with no copy, the sync) waits
        # for it, so the tensor is finished when handed on
        with torch.cuda.stream(stream := gpuquant.own_stream(self.device)):
            merged = self.merge_on_device(name, self._kept(name, w))
            out = w if stand_in else merged.cpu()
        if stand_in and stream is not None:
            stream.synchronize()
        if made is not None:
            made.append((out, merged))
        return out

    def _kept(self, name: str, w):
        """`w`, or (kept) its copy on the merge device, which the merge then starts from."""
        if self.kept is None:
            return w
        on = self.kept[name] = w.to(self.device, non_blocking=True)
        return on

    def merge_on_device(self, name: str, w) -> object:
        """`w` (the base's tensor `name`) merged with its LoRA pair on self.device, in w's dtype:
        unsloth_zoo's _merge_lora, op for op (float32 on the merge device, addmm_, cast back)."""
        import torch

        a, b = self.lora[name]
        merged = w.to(self.device, dtype=torch.float32, non_blocking=True)
        merged.addmm_(b.to(self.device, dtype=torch.float32, non_blocking=True),
                      a.to(self.device, dtype=torch.float32, non_blocking=True), alpha=self.scaling)
        if not torch.isfinite(torch.amax(merged)).item():
            raise DirectExportError(f"the merge of {name} has infinite elements")
        return merged.to(w.dtype).contiguous()


# The merges a converter thread made while computing one tensor for the quantizer (recording)
_made = threading.local()


@contextlib.contextmanager
def recording(stand_in: bool = False):
    """A list that gets, for each merge this thread makes in the block, (the CPU tensor the
    converter was given, the tensor where it was merged). The converter is given the merge's
    copy on the CPU; with `stand_in`, the base's own tensor instead (a view of its file, no
    copy), the merge staying where it was made."""
    _made.tensors, _made.stand_in = [], stand_in
    try:
        yield _made.tensors
    finally:
        _made.tensors = None


def merged_values(raw, made: list):
    """The merged tensor behind the converter's bytes `raw`, still on the merge device, when
    those bytes are exactly the one CPU tensor the converter was given for it (the converter
    computed nothing from it: no permute, no split, no other dtype); else None, and the
    quantizer reads `raw`."""
    import numpy as np
    import torch

    if len(made) != 1:
        return None
    cpu, values = made[0]
    mine = cpu.reshape(-1).view(torch.uint8).numpy()
    if mine.nbytes != raw.nbytes:
        return None
    word = np.uint64 if raw.nbytes % 8 == 0 else np.uint8
    return values if np.array_equal(mine.view(word), raw.view(word)) else None


def merge_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def safetensors_parts(base: Path) -> list[str]:
    """The base's weight files in the order llama.cpp's converter reads them."""
    index = base / "model.safetensors.index.json"
    if index.is_file():
        return sorted(set(json.loads(index.read_text())["weight_map"].values()))
    return sorted(p.name for p in base.glob("model*.safetensors"))


def adapter_problem(cfg: dict) -> str | None:
    if cfg.get("peft_type", "LORA") != "LORA":
        return f"the adapter is {cfg.get('peft_type')}, not LoRA"
    if cfg.get("bias", "none") != "none":
        return f"the adapter trains biases (bias={cfg['bias']!r})"
    used = [k for k in UNSUPPORTED if cfg.get(k)]
    return f"the adapter uses {', '.join(used)}" if used else None


def base_problem(base: Path, parts: list[str], adapted: set[str]) -> str | None:
    """Why the base's tensors cannot take the plain merge: an adapted weight it does not hold
    under that name (a tied lm_head, say), or a dtype other than 16/32-bit float."""
    from safetensors import safe_open

    dtypes = {}
    for part in parts:
        with safe_open(str(base / part), "pt") as f:
            dtypes.update({k: f.get_slice(k).get_dtype() for k in f.keys()})
    if missing := sorted(adapted - set(dtypes)):
        return f"the adapter adapts {missing[0]}, which the base's safetensors do not hold"
    if odd := sorted(k for k, d in dtypes.items() if d not in DTYPES):
        return f"the base holds {odd[0]} as {dtypes[odd[0]]}"
    return None


def merge_source(adapter_dir: Path, model_path: str) -> MergeSource | str:
    """What the direct merge reads, or why it cannot do the merge the older path does."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    if problem := adapter_problem(cfg):
        return problem
    base = base_folder(model_path)
    if base is None or not (parts := safetensors_parts(base)):
        return f"no local safetensors for {model_path}"
    pairs: dict[str, dict[str, object]] = {}
    for key, t in load_file(adapter_dir / "adapter_model.safetensors").items():
        if not (m := ADAPTER_KEY.match(key)):
            return f"the adapter holds {key}, not a plain LoRA weight"
        pairs.setdefault(f"{m.group(1)}.weight", {})[m.group(2)] = t
    if any(set(p) != {"A", "B"} for p in pairs.values()):
        return "the adapter has a LoRA A without its B (or the reverse)"
    if problem := base_problem(base, parts, set(pairs)):
        return problem
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r   # PEFT's LoraLayer
    return MergeSource(base, parts, {k: (p["A"], p["B"]) for k, p in pairs.items()}, scaling,
                       merge_device())


# -- llama.cpp's converter, in this process --------------------------------------------------------

def _converter_module(name: str) -> bool:
    return name in ("gguf", "conversion") or name.startswith(("gguf.", "conversion."))


@contextlib.contextmanager
def llama_cpp_modules(root: Path):
    """(conversion, gguf): llama.cpp's converter package and the `gguf` package that
    convert_hf_to_gguf.py uses (its own gguf-py, unless NO_LOCAL_GGUF, as that script does),
    imported for the block only. A `gguf` imported before (the venv's) is put back after."""
    saved = {k: m for k, m in sys.modules.items() if _converter_module(k)}
    for k in saved:
        del sys.modules[k]
    paths = [str(root)] + ([] if "NO_LOCAL_GGUF" in os.environ else [str(root / "gguf-py")])
    sys.path[:0] = paths
    try:
        yield importlib.import_module("conversion"), importlib.import_module("gguf")
    finally:
        for k in [k for k in sys.modules if _converter_module(k)]:
            del sys.modules[k]
        sys.modules.update(saved)
        for p in paths:
            sys.path.remove(p)


@contextlib.contextmanager
def bf16_by_torch(gguf):
    """llama.cpp's 16-bit rounding to BF16 (gguf.quants.BF16) done by torch's float32 ->
    bfloat16 cast over the whole tensor, for the block. gguf's numpy code works 16 rows at a
    time, several passes each with the GIL held between them: on an H100 host it was 40-55 s of
    the converter threads' 61-82 s for a 4B model (bench/direct_profile.py). The cast rounds to
    nearest even as that code does, so the bytes are the same; arrays with a NaN (which gguf
    quiets its own way) or that torch cannot share go gguf's way."""
    quants = getattr(gguf, "quants", None)
    grouped = getattr(quants, "_apply_over_grouped_rows", None)
    if grouped is None or not hasattr(quants, "BF16"):   # another gguf-py: its own way, as is
        yield
        return

    def apply(func, arr, otype, oshape):
        if func == quants.BF16.quantize_rows and (out := bf16_bytes(arr)) is not None:
            return out.reshape(oshape)
        return grouped(func, arr=arr, otype=otype, oshape=oshape)

    quants._apply_over_grouped_rows = apply
    try:
        yield
    finally:
        quants._apply_over_grouped_rows = grouped


def bf16_bytes(arr):
    """`arr` rounded to bfloat16 by torch, as uint8 bytes (None: it holds a NaN, or is not a
    writable float32 array torch can share)."""
    import numpy as np
    import torch

    if arr.dtype != np.float32 or not arr.flags.writeable:
        return None
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if torch.isnan(t).any():
        return None
    return t.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint8)


def converter_problem(conversion, gguf, root: Path, model_cls) -> str | None:
    """Why `model_cls` is not the converter this module was written against, or None."""
    base = getattr(conversion, "ModelBase", None)
    if base is None or not (isinstance(model_cls, type) and issubclass(model_cls, base)):
        return "conversion.ModelBase is missing"
    if "NO_LOCAL_GGUF" not in os.environ and root / "gguf-py" not in Path(gguf.__file__).parents:
        return f"the gguf package imported is {gguf.__file__}, not llama.cpp's"
    for method in ("index_tensors", "get_tensors", "write"):
        if getattr(model_cls, method, None) is not getattr(base, method, None):
            return f"{model_cls.__name__}.{method} is not ModelBase's"
    if list(inspect.signature(base.index_tensors).parameters) != ["self", "remote_hf_model_id"]:
        return "ModelBase.index_tensors takes other arguments"
    if "model_tensors" not in getattr(base, "__annotations__", {}):
        return "ModelBase has no model_tensors"
    lazy = getattr(conversion, "LazyTorchTensor", None)
    if lazy is None or not hasattr(lazy, "meta_with_dtype_and_shape"):
        return "conversion.LazyTorchTensor is not the expected class"
    if not hasattr(getattr(gguf, "utility", None), "SafetensorsLocal"):
        return "gguf.utility.SafetensorsLocal is missing"
    return None


def direct_class(conversion, gguf, model_cls, source: MergeSource):
    """`model_cls` with its tensors from `source` instead of the folder's safetensors files, and
    its vocabulary's keys remembered between exports (fastft.export.gguf_vocab)."""
    lazy_cls = conversion.LazyTorchTensor

    def index_tensors(self, remote_hf_model_id=None):
        tensors = {}
        for part in source.parts:
            # llama.cpp's own reader: the names, their order and the dtypes it would have read
            with gguf.utility.SafetensorsLocal(source.base / part) as st:
                for name in st.keys():
                    local = st[name]
                    gen = _generator(self.lazy, lazy_cls, source, name, local)
                    if item := self.filter_tensors((name, gen)):
                        tensors[item[0]] = item[1]
        return tensors

    return type(f"Direct{model_cls.__name__}", (model_cls,),
                {"model_arch": model_cls.model_arch, "index_tensors": index_tensors,
                 "set_vocab": remembering(model_cls.set_vocab, conversion, gguf, model_cls)})


def _generator(lazy: bool, lazy_cls, source: MergeSource, name: str, local):
    if not lazy:
        return lambda: source.tensor(name, local)
    dtype = lazy_cls._dtype_str_map[local.dtype]
    meta = lazy_cls.meta_with_dtype_and_shape(dtype, tuple(local.shape))
    # merged only when the writer reaches it: one tensor at a time in RAM
    return lambda: lazy_cls(meta=meta, args=(name, local), func=source.tensor)


# -- the export ---------------------------------------------------------------------------------

def write_config_folder(folder: Path, base: Path, tokenizer) -> None:
    """What the converter reads besides the weights, as the older path's merged folder has it:
    the base's config.json and generation_config.json, and the run's tokenizer (a tokenizer,
    saved here, or the files run_tokenizer_files found, copied)."""
    folder.mkdir(parents=True)
    for name in COPIED:
        if (base / name).is_file():
            shutil.copyfile(base / name, folder / name)
    if isinstance(tokenizer, list):
        for path in tokenizer:
            shutil.copyfile(path, folder / path.name)
    else:
        tokenizer.save_pretrained(str(folder))


# What transformers' save_pretrained writes for a fast tokenizer, and files that would mean
# another kind (a slow tokenizer's vocabulary, an older transformers' special-token files)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
OTHER_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.model", "added_tokens.json",
                         "special_tokens_map.json", "vocab.txt")


def run_tokenizer_files(adapter: Path) -> list[Path] | None:
    """The run's tokenizer files, where they are what loading and saving its tokenizer writes
    (fastft's training saved them with the same transformers): a fast tokenizer's three files
    and nothing else. Else None: the tokenizer is loaded and saved. Copied, they spare the
    child transformers' tokenizer modules and the load (2.2 s on a 2-core CPU, cProfile of
    the demo's export) when the converter's vocabulary keys are replayed (gguf_vocab). The
    GGUF is the same: the saved tokenizer_config.json differs only in `local_files_only`,
    which the converter does not read (tests/test_export_direct.py compares the files)."""
    found = [adapter / name for name in TOKENIZER_FILES if (adapter / name).is_file()]
    if not set(TOKENIZER_FILES[:2]) <= {p.name for p in found} \
            or any((adapter / name).exists() for name in OTHER_TOKENIZER_FILES):
        return None
    return found


def _tokenizer(job: Job):
    """The run's tokenizer, as the older path saves it into its merged folder."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(job.adapter))


def folder_bytes(folder: Path) -> int:
    """Disk space the files under `folder` take (allocated blocks)."""
    return sum(p.lstat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


@dataclass
class Job:
    """One direct export, as the child process gets it on its command line: the 16-bit GGUF,
    the merged checkpoint (--merged), or both from one merge; or, in place of the 16-bit GGUF,
    the quantized files made from the merged tensors (`quants`), when it can make them all."""
    adapter: Path
    model_path: str
    root: Path | None                            # llama.cpp's source tree (None: no GGUF)
    work: Path                                   # the child's scratch, removed when it is done
    outfile: Path | None                         # the 16-bit GGUF (None: --merged alone)
    outtype: str                                 # "bf16", "f16" or "f32"
    name: str                                    # general.name
    merged: Path | None = None                   # --merged: the merged checkpoint's folder
    # llama.cpp type ("Q4_K_M") -> file: made here, with no 16-bit file, on `device` ("auto":
    # gpuquant.device()), by fastft.export.gpuquant, with llama-quantize (`quantize`)'s plan
    quants: dict[str, Path] = field(default_factory=dict)
    quantize: Path | None = None
    device: str | None = None
    # measure the retention gate's 16-bit side, where it can, on the held-out tokens the caller
    # sends once the files are written (fastft.export.gate_model)
    reference: bool = False

    def argv(self) -> list[str]:
        return [str(self.adapter), self.model_path, _arg(self.root), str(self.work),
                _arg(self.outfile), self.outtype, self.name, _arg(self.merged),
                json.dumps({q: str(p) for q, p in self.quants.items()}), _arg(self.quantize),
                self.device or "", "reference" if self.reference else ""]

    @classmethod
    def from_argv(cls, argv: list[str]) -> Job:
        path = lambda a: Path(a) if a else None  # noqa: E731
        return cls(Path(argv[0]), argv[1], path(argv[2]), Path(argv[3]), path(argv[4]), argv[5],
                   argv[6], path(argv[7]), {q: Path(p) for q, p in json.loads(argv[8]).items()},
                   path(argv[9]), argv[10] or None, argv[11] == "reference")

    @property
    def folder(self) -> Path:
        """What llama.cpp's converter reads besides the weights: the merged folder, as the
        older path converts it, or (GGUF only) config and tokenizer alone, in scratch."""
        return self.merged or self.work / FOLDER

    @property
    def reason_file(self) -> Path:               # why the child declined, if it did
        return self.work / "fallback.txt"

    @property
    def result_file(self) -> Path:               # the child's stage times, what it quantized
        return self.work / "result.json"


@dataclass
class ChildResult:
    """What the child reports besides its files: its stage times, which of job.quants it
    made (type -> device; empty: it wrote the 16-bit GGUF instead), and the gate's 16-bit side
    (retention.Measured.to_dict()) when it measured it, else why not, if it was asked."""
    seconds: dict[str, float] = field(default_factory=dict)
    quantized: dict[str, str] = field(default_factory=dict)
    reference: dict | None = None
    no_reference: str | None = None

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self)))

    @classmethod
    def read(cls, path: Path) -> ChildResult:
        return cls(**json.loads(path.read_text())) if path.is_file() else cls()


def _arg(path: Path | None) -> str:
    return "" if path is None else str(path)


def export(job: Job, result: ChildResult) -> str | None:
    """In the child process: write job.outfile (or job.quants) and/or job.merged, or return
    why not (nothing written) when the adapter, the base or llama.cpp's converter is not what
    this module expects. `result.seconds` gets the time spent before the first tensor
    (imports, tokenizer, queueing), writing the GGUF, and writing the checkpoint's other
    tensors."""
    t = time.perf_counter()
    from ..core.models import heavy_imports

    with heavy_imports():
        import torch

    source = merge_source(job.adapter, job.model_path)
    if isinstance(source, str):
        return source
    if job.merged and (problem := checkpoint.checkpoint_problem(source.base, source.parts)):
        return problem
    if job.reference:
        _keep_for_gate(job, source)
    if job.merged:
        checkpoint.write_folder_files(job.merged, source.base, source.parts, _tokenizer(job))
    elif (files := run_tokenizer_files(job.adapter)) is not None:
        write_config_folder(job.folder, source.base, files)
        logging.info("fastft: the run's tokenizer files copied: %s", ", ".join(p.name for p in files))
    else:
        write_config_folder(job.folder, source.base, _tokenizer(job))
    serving = source.kept is not None
    with torch.inference_mode():
        if (why := _write(job, source, result, t)) is None:
            _say_written(result.quantized)
            if serving:
                _measure_for_gate(job, source, result)
        return why


def _keep_for_gate(job: Job, source: MergeSource) -> None:
    """source.kept, where the gate's model can be built from it (gate_model.keeps)."""
    from . import gate_model

    size = sum((source.base / p).stat().st_size for p in source.parts)
    if gate_model.keeps(source.device, weights_dtype(job.model_path), size):
        source.kept = {}


def _measure_for_gate(job: Job, source: MergeSource, result: ChildResult) -> None:
    """The gate's 16-bit side on the held-out tokens the caller sends (result.reference), or
    why not (result.no_reference): the caller then loads its own model. Never raises but for
    an interrupt: the files are written."""
    from . import gate_model

    t = time.perf_counter()
    if source.kept is None:
        result.no_reference = "the GPU ran out of memory while quantizing"
        return
    try:
        if (asked := gate_model.request()) is not None:
            result.reference = gate_model.measured(source, job.adapter, asked)
    except Exception as e:   # noqa: BLE001  (any failure here has the caller's fallback)
        logging.exception("the gate's model in the direct child")
        result.no_reference = f"{type(e).__name__}: {e}"
    finally:
        source.kept = None
    result.seconds["reference"] = time.perf_counter() - t


def _write(job: Job, source: MergeSource, result: ChildResult, t: float) -> str | None:
    seconds = result.seconds
    with contextlib.ExitStack() as stack:
        model = conversion = gguf = None
        if job.outfile:
            conversion, gguf = stack.enter_context(llama_cpp_modules(job.root))
            stack.enter_context(bf16_by_torch(gguf))
            stack.enter_context(packed_fast(gguf))
            try:
                model = _prepared(conversion, gguf, source, job)
            except Exception as e:   # API drift in llama.cpp's converter: the older path still works
                return f"llama.cpp's converter failed in-process ({type(e).__name__}: {e})"
            if isinstance(model, str):
                return model
        if job.merged:
            source.sink = checkpoint.MergedCheckpoint(job.merged, source.base, source.parts)
            stack.callback(source.sink.close)
        seconds["prepare"], t = time.perf_counter() - t, time.perf_counter()
        _say_ready(source.kept is not None)
        if model is not None:
            result.quantized = _write_ggufs(job, source, model, conversion, gguf)
            seconds["write"], t = time.perf_counter() - t, time.perf_counter()
        if source.sink is not None:
            checkpoint.write_rest(source)
            seconds["checkpoint"] = time.perf_counter() - t
    return None


def _write_ggufs(job: Job, source: MergeSource, model, conversion, gguf) -> dict[str, str]:
    """job.quants from the merged tensors, with no 16-bit file (returns type -> device), when
    fastft.export.gpuquant makes them all and the device has the memory; else the 16-bit GGUF
    job.outfile, for the caller to quantize (returns {})."""
    import torch

    if job.quants and (on := _quant_device(job)) and (plans := _plans(job, model, gguf, on)):
        try:
            _write_quantized(job, model, gguf, plans, on)
            return {q: on for q in job.quants}
        except torch.OutOfMemoryError:       # quantize_file removed what it had begun
            logging.warning("out of GPU memory while quantizing: writing the 16-bit GGUF")
            source.kept = None               # the gate's model: loaded by the caller instead
            model = _prepared(conversion, gguf, source, job)   # its tensors were consumed
    _write_gguf(model, gguf)
    return {}


def _quant_device(job: Job) -> str | None:
    from . import gpuquant

    return gpuquant.device() if job.device == "auto" else job.device


def _plans(job: Job, model, gguf, on: str) -> list | None:
    """llama-quantize's plan for each of job.quants, read from the 16-bit GGUF's header; None
    (the writer as it was) when gpuquant cannot make one of them."""
    from . import gpuquant

    writer = model.gguf_writer
    if not (isinstance(writer.tensors, list) and len(writer.tensors) == 1):
        return None                                       # a split file: llama-quantize's
    _write_probe(writer, job.outfile)
    try:
        plans, rest = gpuquant.split(job.quantize, job.outfile, job.quants, on)
    except gpuquant.GpuQuantError as e:   # this header, not llama-quantize, is then the suspect
        logging.warning("%s: writing the 16-bit GGUF", e)
        plans, rest = [], job.quants
    if not rest:
        return plans
    for fout in writer.fout:                              # back to before the header
        fout.seek(0)
        fout.truncate()
    writer.state = gguf.WriterState.EMPTY
    return None


def _write_probe(writer, path: Path) -> None:
    """The 16-bit GGUF's header, in a file as long as the whole file would be but sparse (no
    data written, no disk used): what `llama-quantize --dry-run` reads to plan."""
    from .gguf import pad

    writer.write_header_to_file(path=path)
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    fout, align = writer.fout[0], writer.data_alignment
    fout.truncate(pad(fout.tell(), align) + sum(pad(ti.nbytes, align)
                                                for ti in writer.tensors[0].values()))
    fout.flush()


def _write_quantized(job: Job, model, gguf, plans: list, on: str) -> None:
    """Every plan's file, each tensor computed by the converter (merged, cast to 16 bits,
    LOOKAHEAD of them ahead in threads) and quantized from those values: as still on the merge
    device where the converter passed a merge through unchanged (on an H100, 5.3 s of the
    quantizing thread's 10 s went to moving the 16-bit bytes back to the GPU), else from its
    bytes; the probe removed. A tensor every file quantizes is first computed with the base's
    own tensor standing in for the merge (`_stood_in`), so no merge crosses back to the CPU."""
    from . import gpuquant

    writer = model.gguf_writer
    order = [name for name, _, _ in plans[0].tensors]
    quantized = [all(p.tensors[i][1] != p.tensors[i][2] for p in plans) for i in range(len(order))]
    stand_in = STAND_IN and LAZY_GRAPH <= set(getattr(gguf.LazyBase, "__annotations__", {}))
    tensors = {name: ti.tensor for name, ti in writer.tensors[0].items()}
    for ti in writer.tensors[0].values():
        ti.tensor = None                       # each computed once, then let go

    def computed(i: int):
        t = tensors.pop(order[i])
        if stand_in and quantized[i] and isinstance(t, gguf.LazyBase) and \
                (given := _stood_in(t, gguf.LazyBase)) is not None:
            return order[i], given
        raw, made = _computed_bytes(t, gguf.LazyBase)
        return order[i], gpuquant.Given(raw, merged_values(raw, made))

    try:
        with ahead(computed, len(order), min(LOOKAHEAD, os.cpu_count() or 1), LOOKAHEAD) as arrays:
            def read(ti):                      # called in the plans' order, by one thread
                name, given = next(arrays)
                if name != ti.name:
                    raise DirectExportError(f"{ti.name} asked for, {name} computed")
                return given

            gpuquant.quantize_file(job.outfile, plans, on, read)
    finally:
        writer.close()                         # the probe: overwritten by a fallback, or removed
    job.outfile.unlink()


# A tensor that every output quantizes goes to the quantizer from its merge on the device
# without a copy back to the CPU, where the converter passes it through (_stood_in). False: each
# merge is copied back and compared (bench/direct_profile.py --copy-back, the A/B).
STAND_IN = True
# What _unevaluated_copy reads of llama.cpp's gguf.LazyBase (a node of the converter's graph); a
# gguf without them: every merge is copied back, as before
LAZY_GRAPH = {"_meta", "_data", "_args", "_kwargs", "_func"}


def _stood_in(t, lazy_base):
    """Lazy tensor `t` for a file that quantizes it, computed on a copy of its graph with the
    base's own tensor standing in for each merge: when the converter's bytes are exactly the
    stand-in's (it passed the tensor through, changing nothing), the quantizer gets the merge
    itself, still where it was made, and no merge crosses back to the CPU. The converter's work
    on a weight (renames, dtype casts exact for every finite value, reshapes, permutes, splits)
    does not depend on its values, and a permute or split that moved any row would show in the
    base's bytes: what leaves those as they are leaves the merge's too. Its raw bytes (the base's)
    are never written: every file quantizes this tensor from the merge. None when the converter
    changed the stand-in: then `t`, untouched by the copy, is computed from the merge."""
    from . import gpuquant

    raw, made = _computed_bytes(_unevaluated_copy(t, lazy_base), lazy_base, stand_in=True)
    if not made:                               # nothing merged: these are the tensor's bytes
        return gpuquant.Given(raw)
    values = merged_values(raw, made)
    return None if values is None else gpuquant.Given(raw, values, stand_in=True)


def _computed_bytes(t, lazy_base, stand_in: bool = False):
    """(tensor `t` as the converter computes it, as bytes; the merges it made, `recording`'s)."""
    import numpy as np

    with recording(stand_in) as made:
        data = lazy_base.to_eager(t) if isinstance(t, lazy_base) else t
    return np.ascontiguousarray(data).reshape(-1).view(np.uint8), made


def _unevaluated_copy(t, lazy_base):
    """A copy of lazy tensor `t`'s graph, shared nodes and argument lists shared in it as in
    `t`'s, that computes it again from its sources: to_eager on it leaves `t` and every node
    `t` shares with other tensors (whose cached results the copy's would otherwise be) as they
    were. Nodes already computed are kept: their results are the sources'."""
    memo: dict[int, object] = {}

    def copied(o):
        if isinstance(o, lazy_base):
            if o._data is not None:
                return o
            if id(o) not in memo:
                memo[id(o)] = type(o)(meta=o._meta, args=copied(o._args), kwargs=o._kwargs,
                                      func=o._func)
        elif isinstance(o, (list, tuple)):
            if id(o) not in memo:
                items = [copied(x) for x in o]
                memo[id(o)] = tuple(items) if isinstance(o, tuple) else items
        else:
            return o
        return memo[id(o)]

    return copied(t)


def _write_gguf(model, gguf) -> None:
    """ModelBase.write, after its prepare steps: the tensors are merged as they are written."""
    model.gguf_writer.write_header_to_file(path=model.fname_out)
    model.gguf_writer.write_kv_data_to_file()
    with prefetched(model.gguf_writer, gguf.LazyBase):
        model.gguf_writer.write_tensors_to_file(progress=True)
    model.gguf_writer.close()


# The writer's next tensors computed in threads (merge, dtype casts, 16-bit rounding: numpy and
# torch, which release the GIL) while one is written; the writer alone computes one at a time.
LOOKAHEAD = 8


class _Next:
    """A queued tensor whose data is the next of `arrays` (computed ahead, in the writer's order)."""

    def __init__(self, nbytes: int, arrays):
        self.nbytes, self.arrays = nbytes, arrays

    def tofile(self, fout) -> None:
        next(self.arrays).tofile(fout)


@contextlib.contextmanager
def prefetched(writer, lazy_base):
    """The writer's lazy tensors computed ahead (fastft.core.ahead), in the order it writes
    them. Leaves the writer as it is if its queued tensors are not where llama.cpp's GGUFWriter
    keeps them (`tensors`: shards of TensorInfo)."""
    shards = getattr(writer, "tensors", None)
    infos = [ti for shard in shards for ti in shard.values()] if isinstance(shards, list) \
        and all(isinstance(d, dict) for d in shards) else []
    infos = [ti for ti in infos if isinstance(getattr(ti, "tensor", None), lazy_base)]
    lazies = [ti.tensor for ti in infos]

    def computed(i: int):
        t, lazies[i] = lazies[i], None         # each computed once, then let go
        return type(t).to_eager(t)

    with ahead(computed, len(infos), min(LOOKAHEAD, os.cpu_count() or 1), LOOKAHEAD) as arrays:
        for ti in infos:
            ti.tensor = _Next(ti.tensor.nbytes, arrays)
        yield


def _prepared(conversion, gguf, source: MergeSource, job: Job):
    """The converter with every tensor and key queued (no tensor computed yet), or why not."""
    arch = json.loads((job.folder / "config.json").read_text())["architectures"][0]
    try:
        model_cls = conversion.get_model_class(arch)
    except NotImplementedError:
        return f"llama.cpp's converter has no class for {arch}"
    if problem := converter_problem(conversion, gguf, job.root, model_cls):
        return problem
    ftype = {"bf16": gguf.LlamaFileType.MOSTLY_BF16, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "f32": gguf.LlamaFileType.ALL_F32}[job.outtype]
    model = direct_class(conversion, gguf, model_cls, source)(
        job.folder, ftype, job.outfile, model_name=job.name)
    model.prepare_tensors()
    model.prepare_metadata(vocab_only=False)
    return model


# The child's exit status when it declined: the caller then takes the older path.
DECLINED = 3


READY_FD = "FASTFT_DIRECT_READY_FD"   # the pipe the child says "ready" and "written" on


def _say_ready(reference: bool) -> None:
    """In the child: the adapter and the converter passed every check; writing starts; and
    whether it will measure the gate's 16-bit side (`reference`, then it waits for the request)."""
    if fd := os.environ.get(READY_FD):
        os.write(int(fd), b"ready reference\n" if reference else b"ready\n")


def _say_written(quantized: dict[str, str]) -> None:
    """In the child: every file is written and closed, the quantized types among them (their
    files final: the caller may read them while the child measures the gate's side). The last
    word: the pipe is closed."""
    if fd := os.environ.pop(READY_FD, None):
        os.write(int(fd), " ".join(["written", *quantized]).encode() + b"\n")
        os.close(int(fd))


class DirectChild:
    """The direct export's child process (`python -m fastft.export.direct`), started first: the
    caller learns within seconds whether it declined (`declined`) and whether it will measure
    the gate's 16-bit side (`measures`: then `send` it the held-out tokens; else the caller
    loads its own model meanwhile), then, if it measures, when its files are `written` (the
    gate's llama.cpp side may start on them), then `finish`.

    A child, not this process: llama.cpp's converter imports transformers, and should the
    older path follow, Unsloth must be imported here before transformers (fastft.core.models).
    """

    def __init__(self, job: Job, log: Path):
        from .llamacpp import start_to_log

        from .gate_model import REQUEST_FD

        self.job, self.log = job, log
        ready, said = os.pipe()
        asked, self.ask = os.pipe()
        try:
            self.proc = start_to_log([sys.executable, "-m", "fastft.export.direct", *job.argv()],
                                     log, pass_fds=(said, asked),
                                     env=os.environ | {READY_FD: str(said), REQUEST_FD: str(asked)})
        except BaseException:
            os.close(ready)
            self.send(None)
            raise
        finally:
            os.close(said)
            os.close(asked)
        self.ready = os.fdopen(ready, "rb")
        self.measures = False
        self.result = ChildResult()

    def declined(self) -> str | None:
        """Wait until the child writes (None) or has exited: why it declined, or raise."""
        said = self.ready.readline()   # "ready [reference]", or nothing once the child has exited
        self.measures = said.split()[1:] == [b"reference"]
        return None if said else self.finish()

    def written(self) -> list[str]:
        """Wait until the child has written its files: the types it quantized (final files, which
        may be read while it measures the gate's side); [] if it exited without saying so."""
        said = self.ready.readline().split()
        self.ready.close()
        return [w.decode() for w in said[1:]] if said[:1] == [b"written"] else []

    def send(self, request: bytes | None) -> None:
        """The held-out tokens for the gate's side (gate_model.encode_request), or (None) none:
        the pipe closed, the child does not wait for it."""
        if self.ask is None:
            return
        try:
            if request:
                with os.fdopen(self.ask, "wb", closefd=False) as pipe:
                    pipe.write(request)
        except BrokenPipeError:      # the child is gone: finish says why
            pass
        finally:
            os.close(self.ask)
            self.ask = None

    def finish(self) -> str | None:
        """Wait for the child: None when its outputs are written (`result` says which, and its
        stage times), else why it declined (raises when it failed)."""
        from .llamacpp import log_tail

        self.send(None)              # if not sent yet: the child must not wait for it
        try:
            rc = self.proc.wait()
        finally:
            self.stop()
        job = self.job
        why = job.reason_file.read_text().strip() if job.reason_file.is_file() else None
        self.result = ChildResult.read(job.result_file)
        self._log_exit()
        shutil.rmtree(job.work, ignore_errors=True)   # the tokenizer: not held while quantizing
        if rc == DECLINED and why:
            _remove_outputs(job)
            return why
        ggufs = [job.quants[q] for q in self.result.quantized] or [job.outfile]
        if rc != 0 or not all(p.exists() for p in (*ggufs, job.merged) if p):
            raise DirectExportError(f"the direct export failed (exit {rc}):\n{log_tail(self.log)}")
        return None

    def _log_exit(self) -> None:
        """Its stage times and how long its exit (CUDA's teardown) took, in export.log."""
        with contextlib.suppress(OSError):
            after = time.time() - self.job.result_file.stat().st_mtime
            stages = ", ".join(f"{k} {v:.2f}s" for k, v in self.result.seconds.items())
            with self.log.open("a", encoding="utf-8") as f:
                f.write(f"fastft: the direct child's stages: {stages}; it exited {after:.2f}s "
                        "after writing its result\n")

    def stop(self) -> None:
        """Ctrl-C or a failure here: a writer must not keep writing into a folder about to go."""
        self.send(None)
        self.ready.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _remove_outputs(job: Job) -> None:
    """What a declined child may have begun (the merged folder's config and tokenizer): the
    older path writes there next."""
    for path in (job.outfile, *job.quants.values()):
        if path:
            path.unlink(missing_ok=True)
    if job.merged:
        shutil.rmtree(job.merged, ignore_errors=True)


def main(argv: list[str]) -> int:
    job = Job.from_argv(argv)
    logging.basicConfig(level=logging.INFO)   # the converter's lines, as its script logs them
    job.work.mkdir(parents=True, exist_ok=True)
    result = ChildResult()
    why = export(job, result)
    result.write(job.result_file)
    if why is None:
        return 0
    _remove_outputs(job)
    job.reason_file.write_text(why + "\n")
    return DECLINED


def leave(code: int) -> None:
    """Exit once everything is written and closed, without the interpreter's shutdown: its
    atexit handlers, module teardown and torch's CUDA objects took 0.74-0.79 s between the
    child's result and its exit on an H200 host (export.log, 2026-12-07), while the export's
    process waited. Its files are closed, its threads joined; the OS frees the rest."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    leave(main(sys.argv[1:]))    # a failure raises before: the traceback and exit 1, as always
