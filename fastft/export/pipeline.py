"""`fastft export`: a trained run -> an ollama-ready folder (GGUF files, Modelfile, README).

`export_run` reads as the table of contents; each step is a short function over one ExportPlan:

1. plan    Read the run and refuse early: unknown quant, no adapter, an existing output folder
           without `--force`. Render the Modelfile now, so a `--system` it cannot hold fails
           before any slow step.
2. tools   Find or build llama.cpp (`fastft.export.llamacpp.ensure_llama_cpp`), if GGUF is asked for.
3. write   Load the ORIGINAL 16-bit base with the adapter (`models.load_base_with_adapter`):
           merging into the 16-bit weights, not dequantised 4-bit ones, keeps the merge lossless.
           Merge ONCE with Unsloth's `save_pretrained_merged` (into `merged/` for `--merged`,
           else into the scratch folder). Convert that folder ONCE to a 16-bit GGUF with
           llama.cpp's converter, `general.name` = NAME from the start; then `llama-quantize`
           makes every other requested type from that one file, several at once.
4. check   Load every GGUF with llama.cpp and generate a few tokens (`--no-check` skips this).
5. docs    The Modelfile, README.md and fastft-export.json (SHA-256 of each file, stage times).
6. commit  Only then move the finished folder to its final name, in one rename.

Everything is written inside a hidden scratch folder next to the output (`.tmp-<name>-*`),
Unsloth's merge buffers included (given an absolute folder there: the process's working
directory is never changed). A crash or Ctrl-C leaves no file under a final name and an existing output folder
untouched; `--force` replaces the old folder only once the new one is complete.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import shutil
import subprocess
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..core.cache import sha256_file
from ..core.errors import FastftError
from .manifest import MANIFEST, ExportManifest, FileEntry, GGUFCheck, ManifestError, ServedModelfile
from .readme import readme_text
from .gguf import read_gguf_metadata  # noqa: F401  (also part of this module's API)
from .llamacpp import (
    NEEDS_IMATRIX,
    LlamaCpp,
    LlamaCppError,
    alias_of,
    convert_to_gguf,
    ensure_llama_cpp,
    find_llama_cpp,
    llama_generate,
    log_tail,
    quant_types,
    quantize_ggufs,
)
from .modelfile import NAME_RE, Modelfile, ModelfileError, render_modelfile, template_mismatch
from ..core.models import load_base_with_adapter
from ..core.quiet import captured, status
from ..core.preflight import (
    SIXTEEN_BIT,
    check_export_space,
    describe_removed,
    owned_scratch,
    remove_stale_scratch,
)
from ..core.procs import dying_with_parent
from ..core.run import Run, read_trained, run_name_stem

# --gguf takes llama-quantize's types, lower-cased (q4_k_m); files use llama.cpp's spelling (Q4_K_M).
DEFAULT_QUANTS = ("q4_k_m",)
CHECK_PROMPT = [{"role": "user", "content": "Hello! Who are you?"}]


class ExportError(FastftError):
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
    create: bool = False                     # then `ollama create NAME -f Modelfile`


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
    timings: dict[str, float] = field(default_factory=dict)   # "<stage>_s" -> seconds
    log: Path | None = None                  # the libraries' and tools' output
    ollama_model: str | None = None          # created in ollama (--create)

    def to_dict(self) -> dict:
        """The result as `fastft export --json` prints it: paths, sizes and the manifest."""
        path = lambda p: str(p) if p else None  # noqa: E731
        return {"name": self.name, "out_dir": str(self.out_dir), "run": str(self.run_dir),
                "ggufs": {q: {"path": str(p), "bytes": p.stat().st_size}
                          for q, p in self.ggufs.items()},
                "merged_dir": path(self.merged_dir), "modelfile": path(self.modelfile),
                "readme": str(self.readme), "manifest_path": str(self.manifest),
                "manifest": ExportManifest.read(self.out_dir).model_dump(mode="json", by_alias=True),
                "log": path(self.log), "ollama_model": self.ollama_model,
                "checks": [c.model_dump() for c in self.checks], "warnings": self.warnings,
                "timings": {k: round(v, 2) for k, v in self.timings.items()}}

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
        if self.ollama_model:
            lines += [f"created ollama model {self.ollama_model}", "next:",
                      f"  ollama run {self.ollama_model}"]
        elif self.modelfile:
            lines += ["next:", f"  cd {self.out_dir}",
                      f"  ollama create {self.name} -f Modelfile", f"  ollama run {self.name}"]
        if self.timings:   # "quantize_q4_k_m_s" -> "quantize q4_k_m"
            lines.append("  times: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ', 1)} "
                                                 f"{v:.1f}s" for k, v in self.timings.items()))
        lines += [f"warning: {w}" for w in self.warnings]
        return lines


# -- reading a run -------------------------------------------------------------------------------

def read_run(path: str | os.PathLike) -> Run:
    return read_trained(path, "export")


# -- the plan ------------------------------------------------------------------------------------

@dataclass
class ExportPlan:
    """One export: what was decided before any slow step, where it writes, and what each step
    added (timings, warnings, files, checks)."""
    opts: ExportOptions
    info: Run
    quants: tuple[str, ...]
    name: str
    final: Path                              # the output folder, absolute
    modelfile: Modelfile | None              # rendered; None without GGUF
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    scratch: Path | None = None              # .tmp-<name>-* beside `final`, while writing
    llama: LlamaCpp | None = None
    prompt: str = ""                         # the check's prompt, in the run's chat template
    gguf16: Path | None = None               # the one converted 16-bit GGUF every quant comes from
    ggufs: dict[str, Path] = field(default_factory=dict)
    checks: list[GGUFCheck] = field(default_factory=list)
    hashes: _Hashes | None = None            # SHA-256 of finished files, computed meanwhile

    @property
    def stage(self) -> Path:                 # becomes `final` at commit
        return self.scratch / "out"

    @property
    def work(self) -> Path:                  # Unsloth's working directory, the log, intermediates
        return self.scratch / "work"

    @property
    def log(self) -> Path:                   # the libraries' and tools' output (fastft.core.quiet)
        return self.info.folder.export_log

    @property
    def merged_dir(self) -> Path:
        return (self.stage if self.opts.merged else self.work) / "merged"

    @property
    def first_gguf(self) -> str | None:      # what the Modelfile's FROM serves
        return self.gguf_name(self.quants[0]) if self.quants else None

    def gguf_name(self, quant: str) -> str:  # llama.cpp's naming: NAME.Q4_K_M.gguf
        return f"{self.name}.{quant.upper()}.gguf"

    def gguf_path(self, quant: str) -> Path:
        return self.stage / self.gguf_name(quant)

    def result(self) -> ExportResult:
        """The outputs under their final names (after `commit`)."""
        final = self.final
        return ExportResult(
            out_dir=final, name=self.name, run_dir=self.info.run_dir,
            ggufs={q: final / p.name for q, p in self.ggufs.items()},
            merged_dir=final / "merged" if self.opts.merged else None,
            modelfile=final / "Modelfile" if self.modelfile else None,
            readme=final / "README.md", manifest=final / MANIFEST,
            checks=self.checks, warnings=self.warnings, timings=self.timings, log=self.log)


def default_name(run_dir: Path) -> str:
    """The run folder's name without its timestamp (favorite_color-20261126-223511 ->
    favorite_color), lower-cased and made into a valid ollama model name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", run_name_stem(run_dir.name).lower()).strip("-._")
    return name[:80].rstrip("-._") or "model"


def normalise_quants(quants, types: dict[str, str] | None = None) -> tuple[str, ...]:
    """--gguf values as lower-case llama.cpp types, aliases resolved (q4_k -> q4_k_m), each
    checked against what llama-quantize offers (`types`, default: asked of llama.cpp)."""
    out: list[str] = []
    for given in quants:
        types = quant_types() if types is None else types
        q = given.strip().upper()
        if q not in types:
            usable = [t.lower() for t in types if t not in NEEDS_IMATRIX]
            raise ExportError(f"unknown GGUF quant type {given!r}; llama.cpp's llama-quantize "
                              f"offers: {', '.join(usable)}")
        if q in NEEDS_IMATRIX:
            raise ExportError(f"--gguf {given}: llama.cpp makes {q} only from an importance matrix "
                              f"(imatrix), which fastft does not compute; try q3_k_m or q4_k_m")
        q = (alias_of(types[q]) or q).lower()
        if q not in out:
            out.append(q)
    return tuple(out)


def _final_folder(opts: ExportOptions, name: str, run: Run) -> Path:
    final = (Path(opts.out) if opts.out else Path(opts.exports_dir) / name).absolute()
    _refuse_protected(final, run)
    _check_parent(final)
    if final.exists() or final.is_symlink():
        if not opts.force:
            raise ExportError(f"{final} already exists; pass --force to replace it")
        _check_replaceable(final)
    return final


def _protected(run: Run) -> list[tuple[str, Path]]:
    """What an output folder must never be or contain: replacing it would delete it."""
    data = run.record.config.data
    return [("the run being exported", run.run_dir), ("the runs folder", run.run_dir.parent),
            ("the training data", Path(data)), ("the current directory", Path.cwd()),
            ("your home directory", Path.home()), ("the root directory", Path("/"))]


def _refuse_protected(final: Path, run: Run) -> None:
    real = final.resolve()
    for what, path in _protected(run):
        path = path.resolve()
        if real == path or real in path.parents:
            held = "is" if real == path else "holds"
            raise ExportError(f"--out {final} {held} {what} ({path}); an export needs a folder "
                              f"of its own, e.g. --out exports/{final.name or 'NAME'}")


def _check_parent(final: Path) -> None:
    """The nearest existing folder above `final` must be a writable folder (not /dev/null)."""
    parent = final.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ExportError(f"--out {final}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"--out {final}: cannot write in {parent} (permission denied); "
                          f"choose a folder you can write to")


def _check_replaceable(final: Path) -> None:
    """--force replaces a previous export and nothing else: a folder whose every file its
    manifest lists, unchanged (size, and SHA-256 for files small enough to hash at once)."""
    if not final.is_dir():
        raise ExportError(f"{final} exists and is not a folder; --force replaces only a "
                          f"previous export")
    files = [p for p in final.rglob("*") if not p.is_dir()]
    if not files:
        return                               # an empty folder: nothing to lose
    try:
        listed = ExportManifest.read(final).files
    except ManifestError:
        raise ExportError(f"--force replaces only a previous fastft export, and {final} is not "
                          f"one (no readable {MANIFEST}); choose another --out, or move its "
                          f"files away yourself") from None
    foreign = [str(p.relative_to(final)) for p in files if not _written_by_export(p, final, listed)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise ExportError(f"--force replaces only what fastft wrote, and {final} holds files "
                          f"that are not in its {MANIFEST} as exported (added or edited): "
                          f"{shown}; move them away, or choose another --out")


HASH_LIMIT = 4 * 2**20   # a Modelfile or README edited by hand keeps its size only by chance


def _written_by_export(path: Path, folder: Path, listed: dict[str, FileEntry]) -> bool:
    rel = str(path.relative_to(folder))
    if rel == MANIFEST:
        return True
    entry = listed.get(rel)
    if entry is None or path.is_symlink() or entry.bytes != path.stat().st_size:
        return False
    return path.stat().st_size > HASH_LIMIT or entry.sha256 == sha256_file(path)


def _render_modelfile(plan: ExportPlan) -> Modelfile | None:
    if not plan.quants:
        return None
    info = plan.info
    try:
        modelfile = render_modelfile(name=plan.name, gguf=plan.first_gguf, variant=info.variant,
                                     num_ctx=info.max_seq_len,
                                     system=plan.opts.system, run=info.run_dir.name)
    except ModelfileError as e:
        raise ExportError(str(e)) from e
    if modelfile.template is None:
        plan.warnings.append(f"no chat TEMPLATE for model variant {info.variant!r}: ollama will "
                             f"guess one from the GGUF; check its prompts before relying on it")
    if modelfile.system_mode == "TEMPLATE":
        plan.warnings.append("--system holds text ollama's SYSTEM line cannot carry (see "
                             "README.md); it was built into the TEMPLATE instead")
    return modelfile


def make_plan(opts: ExportOptions) -> ExportPlan:
    """Everything decidable before a slow step; raises ExportError on bad input."""
    info = read_run(opts.run)
    name = opts.name or default_name(info.run_dir)
    if not NAME_RE.match(name):
        raise ExportError(f"invalid --name {name!r}: use letters, digits, '.', '_', '-' "
                          f"(at most 80, starting with a letter or digit)")
    final = _final_folder(opts, name, info)
    quants = normalise_quants(opts.gguf)
    if not quants and not opts.merged:
        raise ExportError("nothing to export: give --gguf QUANT and/or --merged")
    if opts.create:
        _check_ollama(quants)
    plan = ExportPlan(opts, info, quants, name, final, modelfile=None)
    plan.modelfile = _render_modelfile(plan)
    check_export_space(info.model_path, quants, opts.merged, plan.final)
    return plan


# -- the export ----------------------------------------------------------------------------------

def export_run(opts: ExportOptions, console=None) -> ExportResult:
    """Export one run. Raises ExportError (bad input), LlamaCppError, ModelfileError."""
    from rich.console import Console

    console = console or Console(stderr=True, quiet=True)
    t0 = time.perf_counter()
    plan = make_plan(opts)
    find_tools(plan, console)
    with scratch_folder(plan, console):
        plan.log.write_bytes(b"")            # this export's log replaces the last one's
        with captured(plan.log, console, plan.opts.verbose, what="export"):
            write_models(plan, console)
            check_ggufs(plan, console)
        write_docs(plan)
        commit(plan)
    plan.timings["total_s"] = time.perf_counter() - t0
    result = plan.result()
    if opts.create:
        ollama_create(result, console)
    return result


def find_tools(plan: ExportPlan, console) -> None:
    """llama.cpp's converter, llama-quantize and (for the check) a runner, if GGUF is asked for."""
    if not plan.quants:
        return
    try:
        plan.llama = ensure_llama_cpp(console, need_runner=plan.opts.check)
    except LlamaCppError as e:
        hint = ("\n(--no-check skips the llama.cpp load test, which is what needs "
                "llama-simple)") if plan.opts.check and find_llama_cpp() is not None else ""
        raise LlamaCppError(f"{e}{hint}") from e


@contextlib.contextmanager
def scratch_folder(plan: ExportPlan, console):
    """Create plan.scratch (with plan.stage and plan.work) beside the output; always remove it.
    First remove the scratch folders of earlier exports that were killed (fastft.core.preflight)."""
    plan.final.parent.mkdir(parents=True, exist_ok=True)
    if removed := remove_stale_scratch(plan.final.parent):
        console.print(describe_removed(removed, "an export"), markup=False, highlight=False)
    with owned_scratch(plan.final.parent, plan.final.name) as plan.scratch:
        plan.hashes = _Hashes()
        try:
            plan.stage.mkdir()
            plan.work.mkdir()
            yield
        finally:
            plan.hashes.close()
            shutil.rmtree(plan.scratch, ignore_errors=True)


def write_models(plan: ExportPlan, console) -> None:
    """Merge once; then, for GGUF, convert once and quantize every other type from that file.
    Each finished output is hashed for the manifest in the background meanwhile."""
    _load_and_merge(plan, console)
    gc.collect()                             # the model is gone: free its memory for the tools
    if plan.opts.merged:
        plan.hashes.start(plan.merged_dir.rglob("*"))
    if plan.quants:
        _convert(plan, console)
        _quantize(plan, console)
        plan.hashes.start(plan.ggufs.values())


def check_ggufs(plan: ExportPlan, console) -> None:
    """Every GGUF loads in llama.cpp and generates a few tokens (unless --no-check)."""
    if not (plan.opts.check and plan.ggufs):
        return
    with _timed(plan, "check"):
        for path in plan.ggufs.values():
            with status(console, f"llama.cpp: loading {path.name} and generating"):
                t = time.perf_counter()
                out = llama_generate(path, plan.prompt, plan.opts.check_tokens, llama=plan.llama)
                plan.checks.append(GGUFCheck(file=path.name, prompt=plan.prompt, output=out,
                                             seconds=time.perf_counter() - t))


def write_docs(plan: ExportPlan) -> None:
    """Modelfile, README.md, then fastft-export.json with every file's SHA-256 and the timings."""
    with _timed(plan, "docs"):
        if plan.modelfile is not None:
            (plan.stage / "Modelfile").write_text(plan.modelfile.text, encoding="utf-8")
        (plan.stage / "README.md").write_text(readme_text(
            plan.name, plan.info, plan.ggufs, plan.opts.merged, plan.modelfile, MANIFEST),
            encoding="utf-8")
        files = plan.hashes.table(plan.stage)
    _manifest(plan, files).write(plan.stage)


def commit(plan: ExportPlan) -> None:
    """Put the finished folder in place. Each rename is atomic; with --force the old folder is
    first moved into the scratch folder (deleted afterwards), never deleted before."""
    # Some writers (safetensors, mkdtemp) create owner-only files; give everything the
    # permissions a plain file/folder gets here, so e.g. an ollama service user can read them.
    umask = os.umask(0)
    os.umask(umask)
    for p in [plan.stage, *plan.stage.rglob("*")]:
        p.chmod((0o777 if p.is_dir() else 0o666) & ~umask)
    if plan.final.exists():
        plan.final.rename(plan.scratch / "previous")
    plan.stage.rename(plan.final)


# -- ollama (--create) ------------------------------------------------------------------------------

OLLAMA_INSTALL = "install it from https://ollama.com/download (Linux: curl -fsSL https://ollama.com/install.sh | sh)"


def _check_ollama(quants: tuple[str, ...]) -> None:
    """--create can work: a GGUF (for the Modelfile) and `ollama` on PATH. Checked before any
    slow step."""
    if not quants:
        raise ExportError("--create needs a GGUF for the Modelfile: give --gguf TYPE")
    if shutil.which("ollama") is None:
        raise ExportError(f"--create: no `ollama` on PATH; {OLLAMA_INSTALL}, or leave out --create")


def ollama_create(result: ExportResult, console) -> None:
    """`ollama create NAME -f Modelfile` in the finished export folder."""
    cmd = [shutil.which("ollama") or "ollama", "create", result.name, "-f", "Modelfile"]
    with status(console, f"ollama create {result.name}"):
        p = subprocess.run(dying_with_parent(cmd), cwd=result.out_dir, capture_output=True, text=True, errors="replace")
    if p.returncode != 0:
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-10:])
        raise ExportError(f"`ollama create {result.name} -f Modelfile` failed (exit {p.returncode}) "
                          f"in {result.out_dir}, where the export is complete:\n{tail}")
    result.ollama_model = result.name


# -- write: the steps ----------------------------------------------------------------------------

def _load_and_merge(plan: ExportPlan, console) -> None:
    """The 16-bit base with the adapter, merged once into plan.merged_dir (safetensors + the
    run's tokenizer). The model is dropped when this returns."""
    info = plan.info
    with _unsloth_errors(plan, loading=True), _timed(plan, "load"), status(
            console, f"loading {info.model} (16-bit) with the run's adapter"):
        model, tokenizer = load_base_with_adapter(info.adapter_dir, info.model_path,
                                                  info.max_seq_len, plan.work)
    # The check's prompt, rendered with the run's own (guarded) chat template.
    plan.prompt = tokenizer.apply_chat_template(CHECK_PROMPT, tokenize=False,
                                                add_generation_prompt=True)
    if plan.quants and (why := template_mismatch(tokenizer, info.variant)):
        plan.warnings.append(f"the Modelfile TEMPLATE may not match training: {why}")
    with _unsloth_errors(plan, loading=False):
        with _timed(plan, "merge"), status(console, "merging the adapter into the 16-bit weights"):
            # safe_serialization=None pins safetensors: with True, Unsloth writes a pickle on
            # hosts with at most two CPUs. Its buffers default to a folder relative to the
            # working directory: an absolute one in scratch keeps them out of the user's.
            model.save_pretrained_merged(str(plan.merged_dir), tokenizer,
                                         save_method="merged_16bit", safe_serialization=None,
                                         temporary_location=str(plan.work / "unsloth-buffers"))


def convert_type(quants: tuple[str, ...], weights: str) -> str:
    """The 16-bit GGUF type to convert to: the weights' own (`weights`, "bf16" or "f16") unless
    only the other 16-bit type is asked for, which then is the converted file itself."""
    wanted = [q for q in quants if q in SIXTEEN_BIT]
    return weights if weights in wanted or not wanted else wanted[0]


def _weights_type(merged: Path) -> str:
    """"f16" if the merged checkpoint is float16, else "bf16" (its config.json says which)."""
    config = json.loads((merged / "config.json").read_text())
    dtype = config.get("dtype") or config.get("torch_dtype")
    return "f16" if str(dtype).removeprefix("torch.") == "float16" else "bf16"


def _convert(plan: ExportPlan, console) -> None:
    """The merged folder -> ONE 16-bit GGUF: an output if that type was asked for, else scratch."""
    outtype = convert_type(plan.quants, _weights_type(plan.merged_dir))
    plan.gguf16 = (plan.stage if outtype in plan.quants else plan.work) / plan.gguf_name(outtype)
    with _timed(plan, "convert"), status(console, f"converting to a {outtype.upper()} GGUF"):
        convert_to_gguf(plan.llama, plan.merged_dir, plan.gguf16, outtype, plan.name, plan.log)
    if not plan.opts.merged:                 # only the converter needed it: free the disk
        shutil.rmtree(plan.merged_dir)


def _quantize(plan: ExportPlan, console) -> None:
    """Every requested type other than the converted one, from plan.gguf16, in parallel."""
    todo = {q.upper(): plan.gguf_path(q) for q in plan.quants if plan.gguf_path(q) != plan.gguf16}
    if todo:
        with _timed(plan, "quantize"), status(console, f"quantizing to {', '.join(todo)}"):
            seconds = quantize_ggufs(plan.llama, plan.gguf16, todo, plan.work)
        plan.timings.update({f"quantize_{t.lower()}_s": s for t, s in seconds.items()})
    plan.ggufs = {q: plan.gguf_path(q) for q in plan.quants}
    for path in plan.ggufs.values():
        if (got := read_gguf_metadata(path).get("general.name")) != plan.name:
            raise ExportError(f"{path.name}: general.name is {got!r}, expected {plan.name!r}")


# -- docs: the manifest --------------------------------------------------------------------------

class _Hashes:
    """SHA-256 of finished files, several at once in background threads, so that hashing the
    merged weights overlaps the GGUF conversion and hashing the GGUFs overlaps the check."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1))
        self.futures: dict[Path, Future] = {}

    def start(self, paths) -> None:
        for p in paths:
            if p.is_file() and p not in self.futures:
                self.futures[p] = self.pool.submit(sha256_file, p)

    def table(self, folder: Path) -> dict[str, FileEntry]:
        """relative path -> its SHA-256 and size, for every file below `folder`."""
        paths = sorted(folder.rglob("*"))
        self.start(paths)
        return {str(p.relative_to(folder)): FileEntry(sha256=self.futures[p].result(),
                                                      bytes=p.stat().st_size)
                for p in paths if p in self.futures}

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def _manifest(plan: ExportPlan, files: dict[str, FileEntry]) -> ExportManifest:
    mf, info = plan.modelfile, plan.info
    served = ServedModelfile(from_=plan.first_gguf, template=mf.template is not None,
                             system=mf.system_mode, parameters=mf.parameters) if mf else None
    return ExportManifest(
        fastft_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        name=plan.name, source_run=os.path.relpath(info.run_dir, plan.final),
        base_model=info.model, variant=info.variant, quants=list(plan.quants),
        merged=plan.opts.merged,
        converted_from=plan.gguf16.name if plan.gguf16 else None,
        modelfile=served, checks=plan.checks,
        timings={k: round(v, 2) for k, v in plan.timings.items()}, files=files)


# -- small helpers -------------------------------------------------------------------------------

@contextlib.contextmanager
def _timed(plan: ExportPlan, stage: str):
    """Record the seconds the block took as plan.timings["<stage>_s"]."""
    t = time.perf_counter()
    yield
    plan.timings[f"{stage}_s"] = time.perf_counter() - t


# What a user can act on while Unsloth loads or merges: the disk, permissions and memory
# (OSError, MemoryError, CUDA out of memory) and, while loading, a model that cannot be read
# (transformers and huggingface_hub raise OSError for a missing or unreachable model, ValueError
# for a config they do not know, safetensors its own error for a damaged file). Anything else is
# a bug in fastft or a library: exit 70 with the traceback, not a message blaming the user.
MODEL_ERRORS = (ValueError,)
MODEL_ERROR_NAMES = ("SafetensorError", "HeaderTooLarge")


def is_users_error(e: BaseException, loading: bool) -> bool:
    if isinstance(e, (OSError, MemoryError)) or type(e).__name__ == "OutOfMemoryError":
        return True
    return loading and (isinstance(e, MODEL_ERRORS) or type(e).__name__ in MODEL_ERROR_NAMES)


@contextlib.contextmanager
def _unsloth_errors(plan: ExportPlan, loading: bool):
    """A user's or environment's error inside Unsloth becomes an ExportError carrying the end of
    its log; any other error stays what it is (an internal error), with that log tail attached
    as a note, so the crash log holds it too."""
    try:
        yield
    except (ExportError, KeyboardInterrupt):
        raise
    except Exception as e:
        tail = f"--- last lines of Unsloth's output ---\n{log_tail(plan.log)}"
        if not is_users_error(e, loading):
            e.add_note(tail)
            raise
        raise ExportError(f"export failed: {e}\n{tail}") from e
