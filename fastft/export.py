"""`fastft export`: a trained run -> an ollama-ready folder (GGUF files, Modelfile, README).

What it does, in order:

1. Reads the run (`fastft.json`, `adapter/`) and refuses early: unknown quant, no adapter, an
   existing output folder without `--force`.
2. Finds or builds llama.cpp (`fastft.llamacpp.ensure_llama_cpp`) and points Unsloth at it.
3. Loads the ORIGINAL 16-bit base (`config.model_path`, load_in_4bit=False) with the adapter
   attached through Unsloth's own adapter loading. Merging into the 16-bit weights, not into
   dequantised 4-bit ones, is what keeps the merge lossless: W = W_base + (alpha/r)·B·A.
4. `save_pretrained_merged(save_method="merged_16bit")` for `--merged`, and
   `save_pretrained_gguf` for the GGUF quants.
5. Renames each GGUF to llama.cpp's `<name>.<QUANT>.gguf` and sets its `general.name` to NAME
   (Unsloth writes `<base>.Q4_K_M.gguf` named after the merge folder).
6. Loads every GGUF with llama.cpp and generates a few tokens (`--no-check` skips this).
7. Writes the Modelfile (`fastft.modelfile`), README.md and fastft-export.json (hashes).
8. Only then moves the finished folder to its final name, in one rename.

Everything is written inside a hidden scratch folder next to the output (`.tmp-<name>-*`), and
Unsloth runs with that scratch folder as its working directory (its converter and merge buffers
write relative paths). A crash or Ctrl-C leaves no file under a final name and an existing
output folder untouched; `--force` replaces the old folder only once the new one is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .cache import sha256_file  # noqa: F401  (also part of this module's API)
from .llamacpp import LlamaCpp, LlamaCppError, ensure_llama_cpp, find_llama_cpp, llama_generate
from .modelfile import FAMILIES, NAME_RE, ModelfileError, render_modelfile, template_mismatch
from .template import detect_variant

# Quant name (what --gguf takes) -> llama.cpp's file-name spelling.
QUANTS = {"q4_k_m": "Q4_K_M", "q5_k_m": "Q5_K_M", "q8_0": "Q8_0", "f16": "F16", "bf16": "BF16"}
DEFAULT_QUANTS = ("q4_k_m",)
MANIFEST = "fastft-export.json"
CHECK_PROMPT = [{"role": "user", "content": "Hello! Who are you?"}]


class ExportError(RuntimeError):
    pass


@dataclass
class ExportOptions:
    run: str = "runs/latest"
    gguf: tuple[str, ...] = DEFAULT_QUANTS   # empty: no GGUF (then no Modelfile either)
    merged: bool = False
    out: str | None = None                   # default: <exports_dir>/<name>
    name: str | None = None                  # default: the run folder's name
    system: str | None = None
    force: bool = False
    check: bool = True                       # load each GGUF with llama.cpp, generate a few tokens
    check_tokens: int = 8
    exports_dir: str = "exports"
    verbose: bool = False                    # show Unsloth's own output instead of logging it


@dataclass
class GGUFCheck:
    file: str
    prompt: str
    output: str
    seconds: float


@dataclass
class ExportResult:
    out_dir: Path
    name: str
    run_dir: Path
    ggufs: dict[str, Path]                   # quant -> file
    merged_dir: Path | None
    modelfile: Path | None
    readme: Path
    manifest: Path
    checks: list[GGUFCheck] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def summary_lines(self) -> list[str]:
        """What the CLI prints when the export is done."""
        lines = [f"exported {self.run_dir.name} -> {self.out_dir}"]
        for q, p in self.ggufs.items():
            lines.append(f"  {p.name}  ({p.stat().st_size / 2**20:,.1f} MiB)")
        if self.merged_dir:
            lines.append(f"  {self.merged_dir.name}/  (16-bit merged safetensors)")
        for c in self.checks:
            text = c.output if len(c.output) <= 60 else c.output[:57] + "..."
            lines.append(f"  llama.cpp loaded {c.file} and generated {text!r} ({c.seconds:.1f}s)")
        if self.modelfile:
            lines += ["next:", f"  cd {self.out_dir}",
                      f"  ollama create {self.name} -f Modelfile", f"  ollama run {self.name}"]
        if self.timings:
            lines.append("  times: " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.1f}s"
                                                 for k, v in self.timings.items()))
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


# -- reading a run -------------------------------------------------------------------------------

@dataclass
class RunInfo:
    run_dir: Path
    adapter_dir: Path
    config: dict
    variant: str
    meta: dict


def read_run(path: str | os.PathLike) -> RunInfo:
    """The run folder `path` (symlinks such as runs/latest resolved) and what export needs from it."""
    given = Path(path)
    run = given.resolve()
    meta_file = run / "fastft.json"
    if not meta_file.is_file():
        hint = " (train one first: fastft train DATA)" if given.name == "latest" else ""
        raise ExportError(f"{given}: not a fastft run folder, no fastft.json{hint}")
    meta = json.loads(meta_file.read_text())
    config = meta.get("config") or {}
    for key in ("model_path", "max_seq_len"):
        if key not in config:
            raise ExportError(f"{meta_file}: config.{key} is missing")
    adapter = run / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        status = meta.get("status")
        why = f" (its status is {status!r})" if status and status != "done" else ""
        raise ExportError(f"{run}: no trained adapter in {adapter}{why}; "
                          f"export runs after `fastft train` finishes")
    variant = meta.get("variant") or detect_variant(str(config.get("model_path", "")))
    return RunInfo(run, adapter, config, variant, meta)


def default_name(run_dir: Path) -> str:
    """The run folder's name, made into a valid ollama model name."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", run_dir.name).strip("-._") or "model"
    return name[:80]


def normalise_quants(quants) -> tuple[str, ...]:
    out = []
    for q in quants:
        q = q.lower().strip()
        if q not in QUANTS:
            raise ExportError(f"unknown GGUF quant {q!r}; choose from {', '.join(QUANTS)}")
        if q not in out:
            out.append(q)
    return tuple(out)


# -- small helpers -------------------------------------------------------------------------------

@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class _StageClock:
    """Passes Unsloth's prints through and notes when each stage of `save_pretrained_gguf`
    begins, from its own messages: it merges, then "[1] Converting" (HF -> 16-bit GGUF), then
    "[2] Converting" (llama-quantize). One call does all three, so this is how we time them."""

    # With the "Unsloth: " prefix: its opening banner lists the same "[1]"/"[2]" steps as a plan.
    MARKS = (("Unsloth: [1] Converting", "convert"), ("Unsloth: [2] Converting", "quantize"))

    def __init__(self, out):
        self.out, self.started = out, {}

    def write(self, text: str) -> int:
        for mark, stage in self.MARKS:
            if mark in text:
                self.started.setdefault(stage, time.perf_counter())
        return self.out.write(text)

    def flush(self) -> None:
        self.out.flush()


@contextlib.contextmanager
def _quiet(log: Path, verbose: bool, clock: _StageClock | None = None):
    """Send Unsloth's prints (banners, progress text) to a log file unless verbose."""
    with contextlib.ExitStack() as stack:
        out = sys.stdout if verbose else stack.enter_context(open(log, "a", encoding="utf-8"))
        if clock is not None:
            clock.out, out = out, clock
        if out is not sys.stdout:
            stack.enter_context(contextlib.redirect_stdout(out))
        yield


def _log_tail(log: Path, n: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def point_unsloth_at(llama: LlamaCpp) -> None:
    """Make Unsloth use this llama.cpp and never fetch one (or its converter) from GitHub.

    Unsloth reads UNSLOTH_LLAMA_CPP_PATH when `unsloth_zoo.llama_cpp` is first imported, so if
    that already happened (a training run earlier in this process) the folder is also set on the
    imported modules. UNSLOTH_LLAMA_CPP_SCRIPTS_DIR pins the converter script, read per call.
    """
    root = str(llama.root)
    os.environ["UNSLOTH_LLAMA_CPP_PATH"] = root
    os.environ["UNSLOTH_LLAMA_CPP_SCRIPTS_DIR"] = root
    zoo = sys.modules.get("unsloth_zoo.llama_cpp")
    if zoo is not None and getattr(zoo, "LLAMA_CPP_DEFAULT_DIR", root) != root:
        zoo.LLAMA_CPP_DEFAULT_DIR = root
        zoo.check_llama_cpp.__defaults__ = (root,)
        save = sys.modules.get("unsloth.save")
        if save is not None:
            save.LLAMA_CPP_DEFAULT_DIR = root


# -- the export ----------------------------------------------------------------------------------

def export_run(opts: ExportOptions, console=None) -> ExportResult:
    """Export one run. Raises ExportError (bad input), LlamaCppError, ModelfileError."""
    from rich.console import Console

    console = console or Console(stderr=True, quiet=True)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    warnings: list[str] = []

    info = read_run(opts.run)
    quants = normalise_quants(opts.gguf)
    if not quants and not opts.merged:
        raise ExportError("nothing to export: give --gguf QUANT and/or --merged")
    name = opts.name or default_name(info.run_dir)
    if not NAME_RE.match(name):
        raise ExportError(f"invalid --name {name!r}: use letters, digits, '.', '_', '-' "
                          f"(at most 80, starting with a letter or digit)")
    final = Path(opts.out) if opts.out else Path(opts.exports_dir) / name
    final = final.absolute()
    if final.exists() and not opts.force:
        raise ExportError(f"{final} already exists; pass --force to replace it")
    if final.exists() and not final.is_dir():
        raise ExportError(f"{final} exists and is not a folder")

    # The Modelfile is rendered now, before any slow step, so a --system it cannot hold fails fast.
    first_gguf = f"{name}.{QUANTS[quants[0]]}.gguf" if quants else None
    modelfile = None
    if first_gguf:
        try:
            modelfile = render_modelfile(name=name, gguf=first_gguf, variant=info.variant,
                                         num_ctx=int(info.config["max_seq_len"]),
                                         system=opts.system, run=info.run_dir.name)
        except ModelfileError as e:
            raise ExportError(str(e)) from e
        if modelfile.template is None:
            warnings.append(f"no chat TEMPLATE for model variant {info.variant!r}: ollama will "
                            f"guess one from the GGUF; check its prompts before relying on it")
        if modelfile.system_mode == "TEMPLATE":
            warnings.append("--system holds text ollama's SYSTEM line cannot carry (see "
                            "README.md); it was built into the TEMPLATE instead")

    llama = None
    if quants:
        try:
            llama = ensure_llama_cpp(console, need_runner=opts.check)
        except LlamaCppError as e:
            hint = ("\n(--no-check skips the llama.cpp load test, which is what needs "
                    "llama-simple)") if opts.check and find_llama_cpp() is not None else ""
            raise LlamaCppError(f"{e}{hint}") from e
        point_unsloth_at(llama)

    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        stage, work = scratch / "out", scratch / "work"
        stage.mkdir()
        work.mkdir()
        log = work / "unsloth.log"
        try:
            with _cwd(work):
                ggufs, merged, prompt = _write_models(info, quants, opts, name, stage, work,
                                                      log, console, timings, warnings)
        except (ExportError, KeyboardInterrupt):
            raise
        except Exception as e:
            raise ExportError(f"export failed: {e}\n--- last lines of Unsloth's output ---\n"
                              f"{_log_tail(log)}") from e

        checks = []
        if opts.check and ggufs:
            t = time.perf_counter()
            for quant, path in ggufs.items():
                with console.status(f"llama.cpp: loading {path.name} and generating"):
                    s = time.perf_counter()
                    out = llama_generate(path, prompt, opts.check_tokens, llama=llama)
                    checks.append(GGUFCheck(path.name, prompt, out, time.perf_counter() - s))
            timings["check_s"] = time.perf_counter() - t

        mf_path = None
        if modelfile is not None:
            mf_path = stage / "Modelfile"
            mf_path.write_text(modelfile.text, encoding="utf-8")
        readme = stage / "README.md"
        readme.write_text(_readme(name, info, ggufs, merged, modelfile, first_gguf), encoding="utf-8")
        manifest = stage / MANIFEST
        files = {}
        for p in sorted(stage.rglob("*")):
            if p.is_file():
                files[str(p.relative_to(stage))] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
        manifest.write_text(json.dumps({
            "fastft_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "name": name,
            "source_run": str(info.run_dir),
            "base_model": info.config.get("model"),
            "variant": info.variant,
            "quants": list(quants),
            "merged": merged is not None,
            "modelfile": {"from": first_gguf, "template": modelfile.template is not None,
                          "system": modelfile.system_mode,
                          "parameters": modelfile.parameters} if modelfile else None,
            "checks": [asdict(c) for c in checks],
            "timings": {k: round(v, 2) for k, v in timings.items()},
            "files": files,
        }, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

        _commit(stage, final, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    timings["total_s"] = time.perf_counter() - t0
    rel = lambda p: final / p.relative_to(stage)   # noqa: E731  (paths after the rename)
    return ExportResult(
        out_dir=final, name=name, run_dir=info.run_dir,
        ggufs={q: rel(p) for q, p in ggufs.items()},
        merged_dir=final / "merged" if merged else None,
        modelfile=final / "Modelfile" if modelfile else None,
        readme=final / "README.md", manifest=final / MANIFEST,
        checks=checks, warnings=warnings, timings=timings)


def _commit(stage: Path, final: Path, scratch: Path) -> None:
    """Put the finished folder in place. Each rename is atomic; with --force the old folder is
    first moved into the scratch folder (deleted afterwards), never deleted before."""
    # Some writers (safetensors, mkdtemp) create owner-only files; give everything the
    # permissions a plain file/folder gets here, so e.g. an ollama service user can read them.
    umask = os.umask(0)
    os.umask(umask)
    for p in [stage, *stage.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
    if final.exists():
        final.rename(scratch / "previous")
    stage.rename(final)


def _load_for_export(info: RunInfo, work: Path):
    """(model with adapter, tokenizer): the ORIGINAL 16-bit base plus the adapter, via Unsloth.

    Unsloth's own adapter loading reads the base from adapter_config.json, which after 4-bit
    training may name the pre-quantised 4-bit checkpoint; a copy of the adapter pointing at
    `config.model_path` makes it load the 16-bit original instead.
    """
    from unsloth import FastLanguageModel  # first: it patches transformers when imported
    from transformers import AutoTokenizer

    adapter = work / "adapter"
    shutil.copytree(info.adapter_dir, adapter)
    cfg_file = adapter / "adapter_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["base_model_name_or_path"] = info.config["model_path"]
    cfg_file.write_text(json.dumps(cfg, indent=2))

    local = Path(info.config["model_path"]).is_dir()
    model, _ = FastLanguageModel.from_pretrained(
        model_name=str(adapter), max_seq_length=int(info.config["max_seq_len"]),
        load_in_4bit=False, dtype=None, trust_remote_code=False, use_safetensors=True,
        local_files_only=local)
    # The run's tokenizer is the one trained with (guarded chat template, EOS, pad).
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    return model, tokenizer


def _write_models(info, quants, opts, name, stage, work, log, console, timings, warnings):
    t = time.perf_counter()
    with console.status(f"loading {info.config.get('model')} (16-bit) with the run's adapter"), \
            _quiet(log, opts.verbose):
        model, tokenizer = _load_for_export(info, work)
    timings["load_s"] = time.perf_counter() - t
    # The prompt for the llama.cpp check, rendered with the run's own (guarded) chat template.
    prompt = tokenizer.apply_chat_template(CHECK_PROMPT, tokenize=False, add_generation_prompt=True)
    if quants and (why := template_mismatch(tokenizer, info.variant)):
        warnings.append(f"the Modelfile TEMPLATE may not match training: {why}")

    merged = None
    if opts.merged:
        t = time.perf_counter()
        merged = stage / "merged"
        with console.status("merging the adapter into the 16-bit weights"), _quiet(log, opts.verbose):
            # safe_serialization=None pins safetensors: with True, Unsloth writes a pickle on
            # hosts with at most two CPUs.
            model.save_pretrained_merged(str(merged), tokenizer, save_method="merged_16bit",
                                         safe_serialization=None)
        timings["merge_s"] = time.perf_counter() - t

    ggufs: dict[str, Path] = {}
    if quants:
        t = time.perf_counter()
        clock = _StageClock(None)
        with console.status(f"converting to GGUF ({', '.join(quants)})"), \
                _quiet(log, opts.verbose, clock):
            res = model.save_pretrained_gguf(str(work / "gguf-merge"), tokenizer,
                                             quantization_method=list(quants),
                                             safe_serialization=None)
        end = time.perf_counter()
        timings["gguf_s"] = end - t
        marks = [t, clock.started.get("convert"), clock.started.get("quantize"), end]
        for key, a, b in zip(("gguf_merge_s", "gguf_convert_s", "gguf_quantize_s"), marks, marks[1:]):
            if a is not None and b is not None:
                timings[key] = b - a
        # Unsloth's GPU save returns a dict, its CPU backend a plain list of paths.
        files = res.get("gguf_files", []) if isinstance(res, dict) else (res or [])
        produced = [Path(p) for p in files]
        t = time.perf_counter()
        for quant in quants:
            suffix = f".{QUANTS[quant]}.gguf"
            src = next((p for p in produced if p.name.upper().endswith(suffix.upper())), None)
            if src is None or not src.is_file():
                raise ExportError(f"Unsloth produced no {QUANTS[quant]} GGUF "
                                  f"(got: {', '.join(p.name for p in produced) or 'nothing'})")
            dst = stage / f"{name}{suffix}"
            with console.status(f"writing {dst.name}"):
                rewrite_gguf_name(src, dst, name)
            src.unlink()
            ggufs[quant] = dst
        timings["rename_s"] = time.perf_counter() - t
    del model
    return ggufs, merged, prompt


# -- GGUF metadata -------------------------------------------------------------------------------
#
# Setting `general.name` means rewriting the header: the string changes length. gguf-py's
# reader/writer round trip would do it but spends seconds per file decoding the 150k-entry
# vocabulary; walking the header with `struct` and streaming the tensor data across is plain I/O.

_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # scalar types
_GGUF_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q",
                 11: "q", 12: "d"}
_GGUF_STRING, _GGUF_ARRAY = 8, 9


@dataclass
class _GGUFHeader:
    n_kv: int
    values: dict                        # scalar and string metadata (arrays are skipped)
    name_span: tuple[int, int] | None   # bytes of general.name's value (length + text)
    header_end: int                     # end of the tensor infos
    data_offset: int                    # where tensor data starts (header_end, aligned)
    n_tensors: int


def _read_gguf_header(buf) -> _GGUFHeader:
    import struct

    if bytes(buf[:4]) != b"GGUF":
        raise ExportError("not a GGUF file")
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version > 0xFFFF:
        raise ExportError("big-endian GGUF files are not supported")

    def string(pos):
        (n,) = struct.unpack_from("<Q", buf, pos)
        return bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", "replace"), pos + 8 + n

    def skip(pos, vtype):
        if vtype == _GGUF_STRING:
            return pos + 8 + struct.unpack_from("<Q", buf, pos)[0]
        if vtype == _GGUF_ARRAY:
            sub, count = struct.unpack_from("<IQ", buf, pos)
            pos += 12
            if sub in _GGUF_SIZES:
                return pos + count * _GGUF_SIZES[sub]
            for _ in range(count):
                pos = skip(pos, sub)
            return pos
        return pos + _GGUF_SIZES[vtype]

    pos, values, name_span = 24, {}, None
    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        end = skip(pos, vtype)
        if vtype == _GGUF_STRING:
            values[key] = string(pos)[0]
            if key == "general.name":
                name_span = (pos, end)
        elif vtype in _GGUF_FORMATS:
            values[key] = struct.unpack_from("<" + _GGUF_FORMATS[vtype], buf, pos)[0]
        pos = end
    for _ in range(n_tensors):          # name, n_dims, dims, type, offset
        _, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", buf, pos)
        pos += 4 + 8 * n_dims + 4 + 8
    align = int(values.get("general.alignment", 32))
    data_offset = (pos + align - 1) // align * align
    return _GGUFHeader(n_kv, values, name_span, pos, data_offset, n_tensors)


def read_gguf_metadata(path: str | os.PathLike) -> dict:
    """The scalar and string metadata of a GGUF file (arrays such as the vocabulary left out)."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        return _read_gguf_header(m).values


def rewrite_gguf_name(src: Path, dst: Path, name: str) -> None:
    """Copy a GGUF with `general.name` set to `name`; every other key and all tensors unchanged.

    Tensor offsets are relative to the data section, so only the header changes: the new name,
    then padding up to the alignment, then the tensor data byte for byte.
    """
    import mmap
    import struct

    new = struct.pack("<Q", len(name.encode())) + name.encode()
    with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        h = _read_gguf_header(m)
        align = int(h.values.get("general.alignment", 32))
        if h.name_span is not None:
            head = m[:h.name_span[0]] + new + m[h.name_span[1]:h.header_end]
        else:   # no general.name yet: add it as the first key
            kv = struct.pack("<Q", 12) + b"general.name" + struct.pack("<I", _GGUF_STRING) + new
            head = m[:16] + struct.pack("<Q", h.n_kv + 1) + kv + m[24:h.header_end]
        head += b"\0" * (-len(head) % align)
        with open(dst, "wb") as out:
            out.write(head)
            for start in range(h.data_offset, len(m), 1 << 24):
                out.write(m[start:start + (1 << 24)])
        data_bytes = len(m) - h.data_offset
    with open(dst, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        check = _read_gguf_header(m)
        if (check.values.get("general.name") != name or check.n_tensors != h.n_tensors
                or len(m) - check.data_offset != data_bytes):
            raise ExportError(f"rewriting general.name of {src.name} produced a bad file")


def _readme(name, info: RunInfo, ggufs, merged, modelfile, first_gguf) -> str:
    family = FAMILIES.get(info.variant, FAMILIES["other"])
    lines = [f"# {name}", "",
             f"Fine-tuned from `{info.config.get('model')}` ({family.label}) by fastft "
             f"{__version__}, run `{info.run_dir.name}`.", ""]
    if modelfile is not None:
        lines += ["## Run it with ollama", "", "From this folder:", "", "```sh",
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
    if ggufs:
        lines += ["## Files", "", "| file | quantisation |", "|---|---|"]
        lines += [f"| `{p.name}` | {QUANTS[q]} |" for q, p in ggufs.items()]
        lines += ["", "Any llama.cpp tool loads them, e.g. "
                  f"`llama-cli -m {next(iter(ggufs.values())).name}`.", ""]
    if merged is not None:
        lines += ["`merged/` holds the 16-bit merged model (safetensors) for transformers, "
                  "vLLM and other tools.", ""]
    lines += [f"`{MANIFEST}` records the source run and the SHA-256 of every file.", ""]
    return "\n".join(lines)
