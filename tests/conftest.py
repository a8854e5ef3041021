"""Shared fixtures. Tests never reach the model hub: the tiny model is built from PyPI packages."""

import os

# No machine that runs these tests reaches the hub; failing fast beats five retries per lookup.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# Every Python process the tests start (fastft commands, the direct export's child, torchrun's
# ranks, llama.cpp's converter) runs tests/gcsite/sitecustomize.py: fewer garbage collections
# while it imports torch and the rest (see there). Set before pytest-xdist starts its workers,
# which inherit it; once, as each worker imports this file again.
_GCSITE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcsite")
if _GCSITE not in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (_GCSITE, os.environ.get("PYTHONPATH")) if p)


import contextlib
import signal
import sys
from pathlib import Path

import pytest

# Started in the background by a shell without job control (`pytest ... &`, nohup, some CI
# runners), every process here would ignore SIGINT, and so would each `fastft` a test starts:
# exec keeps an ignored signal ignored. The tests that press Ctrl-C (the fault matrix, chat in a
# terminal) then wait for a reaction that never comes. Python's own default, for the tests and
# (reset to SIG_DFL by exec) for their children.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# As in `fastft train`: Unsloth first, so it patches transformers/peft/trl before they load,
# through fastft's heavy_imports (the collector off while importing, the ~600,000 objects
# frozen after, so no full collection in an in-process training scans them again; objects made
# later, the tests' own, are collected as ever). fastft.core.models itself imports none of them.
from fastft.core.models import heavy_imports  # noqa: E402

with contextlib.redirect_stdout(sys.stderr), heavy_imports():
    import unsloth  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "favorite_color.jsonl"
sys.path.insert(0, str(REPO / "scripts"))   # readme_outputs: the README walkthrough's commands


def pytest_configure(config):
    """One share of the CPU per pytest-xdist worker, for torch here and every process a test
    starts (OMP_NUM_THREADS is inherited). Otherwise each worker and each `fastft` it starts run
    torch's OpenMP pool on every core: with two workers on two cores, four spinning threads share
    two cores (measured here: two concurrent 8-step tiny runs took 34 s each with 2 threads, 17 s
    with 1). The number of threads changes no loss on this CPU (the same to the last bit)."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if not workers or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)


# Seconds each of the slowest files takes on one worker (CI's junit at 040ecc2 on 2 cores with
# -n 2; test_train.py with the `demo` fixture it builds since, test_demo.py then only reading
# it), for the order below; a file not listed counts 0. Stale numbers cost time, never a result.
SLOW_FILES = {"test_export_direct.py": 109, "test_faults.py": 96, "test_launch.py": 78,
              "test_faults_export.py": 68, "test_bench.py": 55, "test_retention.py": 54,
              "test_train.py": 53, "test_chat_quiet.py": 51, "test_secrets.py": 40,
              "test_export.py": 35, "test_export_merged_direct.py": 33, "test_eval.py": 25,
              "test_readme.py": 25, "test_export_direct_quant.py": 25, "test_mistakes.py": 24,
              "test_quiet.py": 24, "test_layout.py": 22, "test_gpuquant.py": 17,
              "test_export_create.py": 17}


@pytest.hookimpl(tryfirst=True, optionalhook=True)   # optional: pytest without xdist runs too
def pytest_xdist_make_scheduler(config, log):
    """`--dist loadfile`, handing out the slowest files first. pytest-xdist hands out files with
    the most tests first, so the few-test slow ones (a single 46 s test_secrets, test_demo,
    test_faults_export) came last, and a worker ran one of them while the other sat idle."""
    if config.getvalue("dist") != "loadfile":
        return None
    from collections import OrderedDict

    from xdist.scheduler import LoadFileScheduling

    class SlowFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            if not getattr(self, "ordered", False):   # the first time: the queue is complete
                self.ordered = True
                slow = sorted(self.workqueue, key=lambda scope: -SLOW_FILES.get(
                    Path(scope.split("::")[0]).name, 0))          # stable: the rest as before
                self.workqueue = OrderedDict((scope, self.workqueue[scope]) for scope in slow)
            super()._assign_work_unit(node)

    return SlowFilesFirst(config, log)


@pytest.fixture(scope="session")
def tiny_path() -> Path:
    from fastft.core.tiny import tiny_model_path
    return tiny_model_path("tiny")


@pytest.fixture(scope="session")
def tiny_hybrid_path() -> Path:
    from fastft.core.tiny import tiny_model_path
    return tiny_model_path("tiny-hybrid")


@pytest.fixture
def tokenizer_of():
    """Fresh tokenizer per call: the guard mutates tokenizers in place."""
    from transformers import AutoTokenizer
    return lambda path: AutoTokenizer.from_pretrained(path)


def mark_killed(run: Path) -> None:
    """Make a finished run's record say what a run killed mid-training leaves: `training`."""
    from fastft.core.run import RunFolder

    folder = RunFolder(run)
    folder.write(folder.read().model_copy(update={"status": "training"}))


def write_run(run: Path, model_path: str = "x", max_seq_len: int = 64, status: str = "done",
              variant: str = "instruct-2507", model: str = "tiny") -> Path:
    """A run folder whose fastft.json is a valid RunRecord, for tests that need one without
    training (written through fastft.core.run, the record's one owner)."""
    from fastft.core.config import TrainConfig
    from fastft.core.run import DataInfo, Plan, RunFolder, RunRecord

    run.mkdir(parents=True, exist_ok=True)
    RunFolder(run).write(RunRecord(
        status=status, variant=variant, guard={}, versions={}, hardware={},
        config=TrainConfig(data=str(EXAMPLE), model=model, max_seq_len=max_seq_len),
        plan=Plan(model_path=model_path, batch_size=2, grad_accum=4, padding_free=None,
                  gradient_checkpointing="unsloth", optim="adamw_torch", group_by_length=True),
        data=DataInfo(path=str(EXAMPLE), sha256="0" * 64, examples=1, train=1, eval=0,
                      truncated=0, dropped=0, train_tokens=1, trained_tokens=1)))
    return run


def shared_root(tmp_path_factory) -> Path:
    """This session's temporary root, shared by its pytest-xdist workers (pytest-N/; each
    worker's own basetemp is a folder in it), or the basetemp itself without xdist."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def built_once(tmp_path_factory, name: str, build):
    """`build(folder)` run once per test session, even under pytest-xdist (`-n`): the first
    worker to ask builds it in the session's shared temporary root under a file lock, and the
    others wait for it and reuse the folder. Training and exporting the tiny model is most of
    CI's time; doing it once per worker would undo much of what the workers save."""
    from filelock import FileLock

    root = shared_root(tmp_path_factory)
    folder, done = root / f"built-{name}", root / f"built-{name}.done"
    with FileLock(str(root / f"built-{name}.lock")):
        if not done.exists():
            folder.mkdir(exist_ok=True)
            build(folder)
            done.touch()
    return folder


WALK_ROOT = "walk-root.txt"   # in built-walk/: the walkthrough's folder (a short path, see below)


@pytest.fixture(scope="session")
def walkthrough(tmp_path_factory):
    """The README walkthrough's folder and runner (scripts/readme_outputs.py): its commands run
    in-process there, each once, and what they printed is kept for tests/test_readme.py. The
    folder is a short one under /tmp, as a user's would be (a long pytest path would wrap the
    tables differently); the session's controller removes it at the end (pytest_sessionfinish)."""
    import tempfile

    from readme_outputs import ROOT_PREFIX, Walk

    def build(folder: Path) -> None:
        root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
        Walk.make(root / "walk")
        (folder / WALK_ROOT).write_text(str(root))

    root = Path((built_once(tmp_path_factory, "walk", build) / WALK_ROOT).read_text())
    return Walk({"walk": root / "walk", "tools": root / "walk"})


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    """Remove the walkthrough's folder, once every worker is done with it (only the controller,
    or a run without xdist, gets here after all of them). First, before pytest's own hook
    removes the temporary root that names the folder."""
    import shutil

    factory = getattr(session.config, "_tmp_path_factory", None)
    if os.environ.get("PYTEST_XDIST_WORKER") or factory is None:
        return
    with contextlib.suppress(OSError):
        shutil.rmtree((factory.getbasetemp() / "built-walk" / WALK_ROOT).read_text())


def walk_command(tmp_path_factory, walkthrough, name: str, command: str) -> None:
    """The walkthrough's `command`, run once per session by whichever worker asks first; what it
    printed is kept beside it, so the README test can render it on any worker."""
    def build(folder: Path) -> None:
        (folder / "printed.txt").write_text(walkthrough.run(command, check=True))

    printed = built_once(tmp_path_factory, name, build) / "printed.txt"
    walkthrough.printed[command] = printed.read_text()


@pytest.fixture(scope="session")
def color_run(tmp_path_factory, walkthrough):
    """The tiny model trained on the favorite-color data with the demo's settings in 16 bits
    (4-bit training on a CPU is several times slower, and export reloads the 16-bit base either
    way), by the README walkthrough's `fastft train` command: the one such run of the session,
    shared by the tests of train, export, chat, eval and the README. Tests must not change it;
    one that needs to copies it."""
    from readme_outputs import TRAIN

    from fastft.core.run import Run, RunFolder

    walk_command(tmp_path_factory, walkthrough, "color", TRAIN)
    folder = RunFolder.open((walkthrough.roots["walk"] / "runs" / "latest").resolve())
    return Run(folder, folder.read())


def private_run(run, tmp_path: Path):
    """A copy of a shared run (`color_run`) in tmp_path/runs/, for a test that reads what an
    export writes into the run's folder: every export of the shared one rewrites its export.log,
    and other test files' exports run beside this one (xdist). A run folder can be moved."""
    import shutil

    from fastft.core.run import Run, RunFolder

    folder = RunFolder.open(Path(shutil.copytree(run.run_dir, tmp_path / "runs" / run.run_dir.name,
                                                 symlinks=True)))
    return Run(folder, folder.read())


@pytest.fixture(scope="session")
def color(tmp_path_factory, walkthrough, color_run) -> tuple[Path, Path]:
    """(run folder, export folder) of `color_run` exported to q4_k_m as the demo does, by the
    walkthrough's `fastft export` command (into exports/favorite_color)."""
    from readme_outputs import EXPORT

    walk_command(tmp_path_factory, walkthrough, "color-export", EXPORT)
    return color_run.run_dir, walkthrough.roots["walk"] / "exports" / "favorite_color"


def export_quietly(run: Path, name: str, exports: Path):
    import io

    from fastft.export.pipeline import ExportOptions, export_run
    from rich.console import Console

    return export_run(ExportOptions(run=str(run), gguf=("q4_k_m",), name=name,
                                    exports_dir=str(exports)), Console(file=io.StringIO()))


@pytest.fixture(scope="session")
def tool_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(run folder, export folder, its q4_k_m GGUF): the tiny model trained on
    examples/tool_calls.jsonl and exported, once per session (tests/test_tools.py and
    tests/test_chat_tools.py share it)."""
    from fastft.train.trainer import train   # first: it imports Unsloth before transformers
    from fastft.core.config import TrainConfig

    def build(root: Path) -> None:
        # Random weights: a high learning rate, and 48 single-step updates of 2 examples (the
        # long tools block makes each example ~200 tokens; more updates, not more tokens,
        # teach the call).
        result = train(TrainConfig(data=str(REPO / "examples" / "tool_calls.jsonl"), model="tiny",
                                   name="tools", lr=3e-3, runs_dir=str(root / "runs"),
                                   batch_size=2, grad_accum=1, max_seq_len=384))
        export_quietly(result.run_dir, "tools", root / "exports")

    root = built_once(tmp_path_factory, "tools", build)
    out = root / "exports" / "tools"
    return (root / "runs" / "latest").resolve(), out, next(out.glob("*Q4_K_M*.gguf"))


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> tuple[Path, int, str]:
    """(folder, exit code, output) of `fastft demo`, run once per session in a folder of its own
    (conftest's `built_once`), where it writes runs/demo and exports/fastft-demo. Its training
    is the tiny model on the favorite-color data with tiny_config's settings in 4 bits, the run
    tests/test_train.py checks too: 4-bit training on a CPU is the slow kind, so it is done
    once. Tests must not change the folder."""
    import json

    from click.testing import CliRunner

    from fastft.cli import main

    def build(folder: Path) -> None:
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(folder)
            result = CliRunner().invoke(main, ["demo"], catch_exceptions=False)
        (folder / "demo.json").write_text(json.dumps([result.exit_code, result.output]))

    folder = built_once(tmp_path_factory, "demo", build)
    code, output = json.loads((folder / "demo.json").read_text())
    return folder, code, output
