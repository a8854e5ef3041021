"""Resolve a model name, and load models through Unsloth's `FastLanguageModel`: the one place
that calls `from_pretrained`, so its rules live once: Unsloth is imported before transformers,
peft and trl; weights are safetensors only; remote code is never trusted.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib.abc
import importlib.machinery
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from .cache import CacheError, cache_dir
from .errors import TrainError
from .tiny import is_tiny, tiny_model_path

LOADING_RULES = dict(trust_remote_code=False, use_safetensors=True)
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")   # either keeps the hub libraries offline


def offline_vars() -> list[str]:
    """The variables of OFFLINE_VARS that are set on, as huggingface_hub reads them."""
    return [v for v in OFFLINE_VARS if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]


HUB_CONNECT_TIMEOUT_S = 2.0   # the hub libraries retry for minutes before they give up
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable() -> str | None:
    """`host:port` of the hub (huggingface_hub's ENDPOINT, so HF_ENDPOINT counts) when a
    connection to it fails within a few seconds; None when it answers or a proxy stands between
    (where only the proxy can tell)."""
    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    if any(os.environ.get(v) for v in PROXY_VARS):
        return None
    try:
        socket.create_connection((host, port), timeout=HUB_CONNECT_TIMEOUT_S).close()
    except OSError:
        return f"{host}:{port}"
    return None


def hub_unavailable(name: str) -> tuple[str, str] | None:
    """(why, what to do) when hub model `name` cannot be downloaded now (offline mode, or no
    network), else None."""
    if offline := offline_vars():
        return f"{offline[0]}={os.environ[offline[0]]} is set (offline mode)", f"unset it to download {name}"
    if where := hub_unreachable():
        return f"no network ({where} cannot be reached)", f"connect to download {name} once"
    return None


def hub_problem(name: str) -> str | None:
    """Why hub model `name` cannot be downloaded now, and what to do, in one line; else None."""
    return ": ".join(why) if (why := hub_unavailable(name)) else None


def check_model(name: str) -> None:
    """Before a run folder exists: `name` is the built-in model, a folder holding a model, or a
    hub id that is cached or can be downloaded now, so a wrong --model fails in a second, not
    after minutes of retries or with a run folder left behind."""
    path = Path(name).expanduser()
    if is_tiny(name):
        return
    if path.is_dir():
        return _check_model_folder(name, path)
    # A hub id is `owner/name`, so one '/' alone does not make a path.
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1 or (
            os.sep != "/" and os.sep in name):
        raise TrainError(f"--model {name}: {'not a folder' if path.exists() else 'no such folder'}")
    if cached_snapshot(name) is None and (why := hub_problem(name)):
        raise TrainError(f"--model {name}: not in the local Hugging Face cache, and {why}; or give "
                         f"a local folder with --model")


def _check_model_folder(name: str, path: Path) -> None:
    missing = [what for what, found in (
        ("config.json", (path / "config.json").is_file() or (path / "adapter_config.json").is_file()),
        ("*.safetensors weights", any(path.glob("*.safetensors")))) if not found]
    if missing:
        raise TrainError(f"--model {name}: not a model folder (no {' and no '.join(missing)}); give "
                         f"a folder written by save_pretrained (safetensors) or a hub id owner/name")


def cached_snapshot(name: str) -> Path | None:
    """The folder of hub id `name` in the local Hugging Face cache (where its config.json is),
    or None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(name, "config.json")
    except ValueError:   # not a valid repo id: not cached, and the hub will say it is not found
        return None
    return Path(config).parent if isinstance(config, str) else None


@contextlib.contextmanager
def heavy_imports():
    """The block's imports (torch, transformers, peft, Unsloth) without the garbage collector,
    their objects frozen after (gc.freeze). They make about 600,000 objects that live as long as
    the process and next to no garbage, and at the default thresholds collection after
    collection rescans them while they import: `import unsloth` took 5.96 s, this 4.44 s
    (medians of 5 on 2 cores, bench/import_profile.py --gc). Frozen, the later collections (the
    training loop's, the exit's) skip them too. The cost: the little cyclic garbage the imports
    make is frozen with them (10 MB more resident after Unsloth's import, of 1 GB)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        with _distributions_once():
            yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


@contextlib.contextmanager
def _distributions_once():
    """importlib.metadata.packages_distributions() computed once in the block: transformers and
    TRL each call it when imported, and each call reads the metadata of every installed package
    (a torch environment holds hundreds). Each caller gets its own copy, as it would uncached."""
    import importlib.metadata as metadata

    original = metadata.packages_distributions
    once = functools.cache(original)
    metadata.packages_distributions = lambda: {k: list(v) for k, v in once().items()}
    try:
        yield
    finally:
        metadata.packages_distributions = original


def import_unsloth():
    """Import Unsloth, which must come before transformers, peft and trl: it patches them when
    imported, and imported after them its fast paths are silently skipped. Its banner goes to
    stderr, keeping stdout clean for piped output. Every module that trains or loads a model
    calls this at its top; tests/test_layout.py checks that importing them never breaks the order."""
    if "unsloth" not in sys.modules:
        late = [m for m in ("transformers", "peft", "trl") if m in sys.modules]
        if late:
            raise ImportError(f"fastft bug: {', '.join(late)} imported before unsloth")
        compile_caches()
        with contextlib.redirect_stdout(sys.stderr), heavy_imports(), _sft_trainer_only():
            import unsloth  # noqa: F401
    return sys.modules["unsloth"]


# The module of Unsloth that rewrites TRL's trainers when Unsloth is imported, and what it does.
UNSLOTH_RL = "unsloth.models.rl"
SFT_TRAINER = "sft_trainer"


class _SFTTrainerOnly(importlib.abc.MetaPathFinder):
    """Has Unsloth's import rewrite TRL's SFTTrainer alone. Unsloth generates, writes and compiles
    a faster copy of every TRL trainer (GRPO, DPO, KTO, PPO, ... and a dozen experimental ones)
    each time it is imported, whichever one will be used: a fresh import took 12.6 s on an H100,
    8.1 s rewriting SFTTrainer alone. fastft trains with SFTTrainer only, and its copy is
    generated as before (tests/test_gpu.py compares it byte for byte with a full import's).
    Unsloth's PatchFastRL looks its patch_trl_rl_trainers up when called, so replacing it as
    its module is loaded is enough."""

    def find_spec(self, name, path, target=None):
        if name != UNSLOTH_RL:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module              # this spec's own loader, made just now

        def exec_module(module):
            execute(module)
            one = getattr(module, "_patch_trl_rl_trainers", None)
            if callable(one) and callable(getattr(module, "patch_trl_rl_trainers", None)):
                module.patch_trl_rl_trainers = functools.partial(one, SFT_TRAINER)

        spec.loader.exec_module = exec_module
        return spec


@contextlib.contextmanager
def _sft_trainer_only():
    finder = _SFTTrainerOnly()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def compile_caches() -> None:
    """Where Unsloth and torch keep what they compile, unless the user chose: in fastft's cache,
    so a second process reuses the first one's work. Unsloth writes its patched modules' source
    to ./unsloth_compiled_cache (relative: each project folder paid for it again, and it
    littered the user's folder); torch.compile's own caches default to /tmp, which a reboot or a
    new container empties. Unsloth's persistent "mega-cache" of compiled artifacts already lives
    in ~/.cache/unsloth. Set before Unsloth is imported: it reads the variables once. The
    generated source is kept per unsloth_zoo version, which decides what it generates."""
    from importlib.metadata import PackageNotFoundError, version

    with contextlib.suppress(CacheError, OSError, PackageNotFoundError):   # else: their defaults
        root = cache_dir() / "compiled"
        for var, sub in (("UNSLOTH_COMPILE_LOCATION", f"unsloth-zoo-{version('unsloth_zoo')}"),
                         ("TORCHINDUCTOR_CACHE_DIR", "torchinductor")):
            if var not in os.environ:
                (root / sub).mkdir(parents=True, exist_ok=True)
                os.environ[var] = str(root / sub)


@dataclass
class ModelRef:
    name: str          # what the user asked for ("tiny", a hub id, a folder)
    path: str          # what from_pretrained gets: a local folder or a hub id

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def resolve_model(name: str) -> ModelRef:
    """`tiny`/`tiny-hybrid` -> the cached built-in model; a folder -> itself; else a hub id."""
    if is_tiny(name):
        return ModelRef(name, str(tiny_model_path(name)))
    path = Path(name).expanduser()
    if path.is_dir():
        return ModelRef(name, str(path.resolve()))
    return ModelRef(name, name)


def load_model(ref: ModelRef, max_seq_len: int, load_in_4bit: bool = True):
    """(model, tokenizer) through Unsloth. Safetensors only; remote code is never trusted."""
    return from_pretrained(ref.path, max_seq_len, load_in_4bit, local_files_only=ref.is_local)


def from_pretrained(path: str, max_seq_len: int, load_in_4bit: bool, local_files_only: bool,
                    dtype=None):
    """`FastLanguageModel.from_pretrained` under fastft's loading rules: (model, tokenizer).
    `dtype` None: Unsloth picks bf16 where the device supports it, else fp16/fp32."""
    unsloth = import_unsloth()  # heavy: kept off the CLI's start-up path
    return unsloth.FastLanguageModel.from_pretrained(
        model_name=path, max_seq_length=max_seq_len, load_in_4bit=load_in_4bit, dtype=dtype,
        local_files_only=local_files_only, **LOADING_RULES)


def base_folder(model_path: str) -> Path | None:
    """The base as a local folder: `model_path` itself, or its Hugging Face cache snapshot."""
    if Path(model_path).is_dir():
        return Path(model_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model_path, local_files_only=True))
    except Exception:   # not cached (the older path downloads it), or not a repo id
        return None


def weights_dtype(model_path: str) -> str | None:
    """The base's dtype as its config.json names it ("bfloat16", ...), None if not local."""
    import json

    base = base_folder(model_path)
    if base is None or not (base / "config.json").is_file():
        return None
    config = json.loads((base / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype")).removeprefix("torch.")


def plain_dtype():
    """The 16-bit dtype a model runs in here without Unsloth: bf16, or float16 on a GPU
    without bf16 (load_plain_with_adapter, and the gate's model in the direct child)."""
    import torch

    cuda = torch.cuda.is_available()
    return torch.float16 if cuda and not torch.cuda.is_bf16_supported() else torch.bfloat16


def stored_dtype(base_path: str):
    """The torch dtype a local base's weights are stored in, where it is 16-bit and this
    machine computes in it; else None (Unsloth's pick). For the export's merge: on a CPU
    without native bf16 Unsloth loads a bf16 base in float32 (tests/test_tiny.py), and the older
    path's BF16 GGUF then differed from the direct path's, the base's own bytes merged, in the
    last bit of 6% of the adapted weights and of the embeddings' smallest values (a 2-core AMD
    EPYC, 2026-12-07), as if rounded through float16 on the way."""
    import torch

    if not Path(base_path).is_dir():
        return None
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(weights_dtype(base_path))
    if dtype is torch.bfloat16 and plain_dtype() is not torch.bfloat16:
        return None   # a GPU without bf16 (T4, pre-Ampere): Unsloth's float16
    return dtype


def load_for_inference(adapter_dir: Path, max_seq_len: int, load_in_4bit: bool):
    """A trained run's base model with its adapter, in Unsloth's inference mode."""
    model, tokenizer = from_pretrained(str(adapter_dir), max_seq_len, load_in_4bit, True)
    import_unsloth().FastLanguageModel.for_inference(model)
    return model, tokenizer


def load_plain_with_adapter(adapter_dir: Path, base_path: str):
    """(model, tokenizer): the ORIGINAL 16-bit base `base_path` with the adapter attached (not
    merged), loaded by transformers and peft alone, without Unsloth: for the export's direct
    path, which only scores this model (the retention gate) while a child process merges.
    Importing and patching Unsloth cost about 30 s of the export's 41 s load on an H200
    (bench/ttfc.py, 2026-12-06); scoring takes 3 s. Same loading rules, same 16-bit dtype."""
    with heavy_imports():
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    model = AutoModelForCausalLM.from_pretrained(
        base_path, dtype=plain_dtype(),
        # "sequential", as Unsloth loads it: the GPU first, the rest in CPU memory, so an 8 GB
        # card still exports a 4B model (its 16-bit weights are 8 GB)
        device_map="sequential" if cuda else None, local_files_only=Path(base_path).is_dir(),
        **LOADING_RULES)
    model = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=False).eval()
    return model, run_tokenizer(adapter_dir)


def run_tokenizer(adapter_dir: Path):
    """The run's tokenizer as saved with its adapter (guarded chat template, EOS, pad)."""
    with heavy_imports():
        from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(adapter_dir))


def load_base_with_adapter(adapter_dir: Path, base_path: str, max_seq_len: int, work: Path):
    """(model, tokenizer): the ORIGINAL 16-bit base `base_path` with the adapter attached, via
    Unsloth's own adapter loading; for export, where merging into 16-bit weights (not dequantised
    4-bit ones) is what keeps the merge lossless: W = W_base + (alpha/r)·B·A.

    Unsloth reads the base from adapter_config.json, which after 4-bit training may name the
    pre-quantised 4-bit checkpoint; a copy of the adapter in `work` pointing at `base_path`
    makes it load the 16-bit original instead. The tokenizer is the run's own (guarded chat
    template, EOS, pad), as saved with the adapter.
    """
    import json
    import shutil

    adapter = work / "adapter"
    shutil.copytree(adapter_dir, adapter)
    cfg_file = adapter / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = base_path
    cfg_file.write_text(json.dumps(cfg, indent=2))
    import_unsloth()   # before torch (stored_dtype), as Unsloth asks
    model, _ = from_pretrained(str(adapter), max_seq_len, load_in_4bit=False,
                               local_files_only=Path(base_path).is_dir(),
                               dtype=stored_dtype(base_path))
    from transformers import AutoTokenizer  # after Unsloth (imported by from_pretrained)

    return model, AutoTokenizer.from_pretrained(str(adapter))
