"""`fastft doctor`: can this machine train and export, and if not, what to do about it.

One row per fact (GPU, driver and CUDA, VRAM, bf16, the library versions, llama.cpp, ollama,
free disk, the Hugging Face cache, offline mode), each `ok`, `warn` or `fail` with a hint. A
`fail` means training cannot run: a required library missing, broken or outside fastft's pins.
No GPU is a warning: the built-in tiny model trains on CPU, real models need a CUDA GPU.

Versions come from the installed packages' metadata (importlib.metadata), not from importing
them: importing Unsloth alone takes seconds and prints banners. Only torch is imported, for the
GPU facts.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from .core.run import package_version  # the one reading of versions, also fastft.json's

# The libraries training needs, as their distributions are named; each must be installed and
# inside the version range fastft declares (pyproject.toml, read back from fastft's metadata).
PACKAGES = ("torch", "unsloth", "unsloth_zoo", "trl", "transformers", "peft", "bitsandbytes",
            "datasets")
IMPORTS = ("unsloth", "transformers", "trl", "peft", "datasets")   # torch is imported in-process
LOCK = Path(__file__).resolve().parent / "resources" / "constraints.txt"   # the repo's, shipped
MIN_VRAM_GIB = 6      # Qwen3-4B in 4-bit at micro-batch 2 needs about 4 GB, plus headroom
MIN_DISK_GIB = 20     # a 4B run's checkpoints plus an export (16-bit merge + GGUFs)
STATUSES = ("ok", "warn", "fail")


@dataclass
class Check:
    name: str
    status: str          # ok, warn or fail
    value: str
    hint: str = ""       # what to do (warn, fail), or a note


@dataclass
class Report:
    checks: list[Check]
    versions: dict[str, str | None]

    @property
    def ok(self) -> bool:
        """Training can run: nothing failed."""
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks],
                "versions": self.versions}


# -- probes (small functions, so tests can replace one) ---------------------------------------------

def pinned_ranges() -> dict[str, SpecifierSet]:
    """Distribution name -> the version range fastft declares for it."""
    ranges = {}
    for text in md.requires("fastft") or []:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            ranges[_norm(req.name)] = req.specifier
    return ranges


def locked_versions(lock: Path | None = None) -> dict[str, str]:
    """Distribution name -> the version constraints.txt pins exactly (`name==version`)."""
    from packaging.requirements import InvalidRequirement, Requirement

    lock = lock or LOCK
    if not lock.is_file():
        return {}
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        try:
            req = Requirement(line.split("#")[0].strip())
        except InvalidRequirement:   # blank lines, comments
            continue
        exact = [s.version for s in req.specifier if s.operator == "=="]
        if exact:
            pins[_norm(req.name)] = exact[0]
    return pins


# Imported in a separate process, in the order fastft imports them (Unsloth first): a broken
# install (say, a torchvision built for another torch) fails here, not in the middle of a run.
_IMPORT_PROBE = """
import json, sys
errors = {}
for name in sys.argv[1:]:
    try:
        __import__(name)
    except BaseException as e:
        errors[name] = (type(e).__name__ + ": " + str(e)).strip()[:300]
sys.stdout.write("\\n" + json.dumps(errors))
"""


def import_errors(modules: list[str]) -> dict[str, str]:
    """Module -> why `import module` fails, for those that fail (a few seconds: imports Unsloth)."""
    if not modules:
        return {}
    try:
        p = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, *modules], capture_output=True,
                           text=True, timeout=600, env=os.environ | {"PYTHONWARNINGS": "ignore"})
        return json.loads(p.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return {m: "the import check itself failed to run" for m in modules}


def find_ollama() -> str | None:
    return shutil.which("ollama")


def _norm(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


# -- the checks ------------------------------------------------------------------------------------

def diagnose() -> Report:
    versions = {name: package_version(name) for name in PACKAGES}
    broken = import_errors([m for m in IMPORTS if versions[m] is not None])
    checks = [_python()]
    checks += _torch_checks()
    checks += [_package(name, versions[name], broken.get(name)) for name in PACKAGES]
    checks += [_llama_cpp(), _ollama(), _disk(), _hf_cache(), _offline()]
    return Report([c for c in checks if c is not None], versions)


def _python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("python", "ok" if ok else "fail", f"{v.major}.{v.minor}.{v.micro}",
                 "" if ok else "fastft needs Python 3.10 or newer")


def _package(name: str, version: str | None, import_error: str | None = None) -> Check:
    if version is None:
        return Check(name, "fail", "not installed", "install fastft's dependencies: bash install.sh")
    if import_error:
        return Check(name, "fail", version, f"`import {name}` fails: {import_error}; reinstall "
                                            f"with bash install.sh")
    wanted = pinned_ranges().get(_norm(name))
    if wanted is not None and not wanted.contains(version, prereleases=True):
        return Check(name, "fail", version, f"fastft needs {name}{wanted}: bash install.sh "
                                            f"installs the tested set")
    locked = locked_versions().get(_norm(name))
    if locked and locked.split("+")[0] != version.split("+")[0]:
        return Check(name, "warn", version, f"tested with {locked} (constraints.txt); "
                                            f"bash install.sh installs it")
    return Check(name, "ok", version)


def _torch_checks() -> list[Check]:
    """GPU, driver and CUDA, VRAM, bf16: from torch.cuda (torch is imported here, nothing else)."""
    try:
        import torch
    except Exception as e:  # a broken install raises anything from OSError to AttributeError
        return [Check("gpu", "fail", "unknown", f"import torch failed: {type(e).__name__}: {e}; "
                                                f"reinstall with bash install.sh")]
    cuda = torch.version.cuda
    built = f"torch built for CUDA {cuda}" if cuda else "torch built for CPU only"
    if not torch.cuda.is_available():
        # nvidia-smi is asked once: it can take up to its 20 s timeout.
        driver = f"driver {_driver_version()}" if shutil.which("nvidia-smi") else None
        if driver:   # a GPU and a driver, that this torch cannot use
            gpu = Check("gpu", "warn", "NVIDIA GPU present, but torch cannot use it",
                        f"{built}, {driver}: install a torch build for this "
                        f"driver, e.g. FASTFT_TORCH=\"torch==X --index-url URL\" bash install.sh")
        else:
            gpu = Check("gpu", "warn", "none (CPU only)",
                        "real models need a CUDA GPU (8 GB or more); the built-in tiny model "
                        "trains on CPU (fastft demo)")
        return [gpu, Check("driver / CUDA", "ok", f"{driver or 'no NVIDIA driver'}; {built}")]
    props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    names = ", ".join(f"{p.name}" for p in props)
    vram = min(p.total_memory for p in props) / 2**30
    bf16 = torch.cuda.is_bf16_supported()
    return [Check("gpu", "ok", f"{len(props)} x {names}" if len(props) > 1 else names),
            Check("driver / CUDA", "ok", f"driver {_driver_version()}, CUDA {cuda}"),
            Check("VRAM", "ok" if vram >= MIN_VRAM_GIB else "warn", f"{vram:.1f} GiB",
                  "" if vram >= MIN_VRAM_GIB else "little memory: try --vram-budget and a short "
                                                  "--max-seq-len"),
            Check("bf16", "ok", "supported" if bf16 else "not supported (fp16 training)")]


def _driver_version() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "unknown"
    try:
        p = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return p.stdout.strip().splitlines()[0] if p.returncode == 0 and p.stdout.strip() else "unknown"


def _llama_cpp() -> Check:
    from .export.llamacpp import branding_note, find_llama_cpp, missing_build_tools

    found = find_llama_cpp()
    if found is not None and found.branded_by_unsloth:
        return Check("llama.cpp", "warn", f"{found.root} ({found.origin}), its converter patched by "
                     "Unsloth", branding_note(found, where=False))
    if found is not None:
        return Check("llama.cpp", "ok", f"{found.root} ({found.origin})")
    missing = missing_build_tools()
    if missing:
        return Check("llama.cpp", "warn", "not built, and cannot be built here",
                     f"GGUF export needs it; install {'; '.join(missing)}, or set "
                     f"UNSLOTH_LLAMA_CPP_PATH")
    return Check("llama.cpp", "ok", "not built yet",
                 "the first `fastft export` builds it, once: minutes (it took about 3 on a "
                 "2-core machine), shown as it goes")


def _ollama() -> Check:
    from .export.pipeline import OLLAMA_INSTALL

    path = find_ollama()
    if path is None:
        return Check("ollama", "warn", "not on PATH", f"to run exports: {OLLAMA_INSTALL}")
    return Check("ollama", "ok", path)


def _disk() -> Check:
    where = Path("runs") if Path("runs").is_dir() else Path.cwd()
    free = shutil.disk_usage(where).free / 2**30
    low = free < MIN_DISK_GIB
    return Check("free disk", "warn" if low else "ok", f"{free:,.1f} GiB in {where.absolute()}",
                 f"a 4B run and its export need about {MIN_DISK_GIB} GiB" if low else "")


def _hf_cache() -> Check:
    path = Path(os.environ.get("HF_HUB_CACHE") or Path(
        os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub")
    if not path.is_dir():
        return Check("HF cache", "ok", f"{path} (empty)", "models download here on first use")
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
    return Check("HF cache", "ok", f"{path} ({size / 2**30:,.1f} GiB)")


def _offline() -> Check:
    from .core.models import offline_vars
    on = offline_vars()
    if not on:
        return Check("offline mode", "ok", "off")
    return Check("offline mode", "ok", f"on ({', '.join(on)})",
                 "models must be in the HF cache already, or a local folder (--model PATH)")


# -- output ----------------------------------------------------------------------------------------

_STYLE = {"ok": "[green]✓ ok[/]", "warn": "[yellow]! warn[/]", "fail": "[bold red]✗ fail[/]"}


def print_report(report: Report, console) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="fastft doctor", title_justify="left")
    t.add_column("check", no_wrap=True)
    t.add_column("status", no_wrap=True)
    t.add_column("value", overflow="fold")    # paths are shown whole, folded if need be
    t.add_column("what to do", overflow="fold")
    for c in report.checks:
        t.add_row(c.name, _STYLE[c.status], escape(c.value), escape(c.hint))
    console.print(t)
    if report.ok:
        console.print("[bold green]✓ ready to train[/]")
    else:
        console.print("[bold red]✗ training cannot run here[/]: fix the rows marked fail")
