"""README.md's captured outputs, from real runs of the walkthrough's commands.

Every captured block of README.md sits between `<!-- output: NAME -->` and `<!-- /output -->`:
`$ COMMAND` lines, each followed by what the command printed (trimmed as BLOCKS says: table
borders dropped, rows picked, `...` where lines were left out). The commands run in-process in a
fresh folder (`examples/` linked into it), with the settings the README states: the built-in
tiny model, CPU, `HF_HUB_OFFLINE=1`, no colour, 100 columns, the trainer's fixed seed.

    python scripts/readme_outputs.py           # run every command, rewrite README.md's blocks
    python scripts/readme_outputs.py --check   # exit 1, with a diff, where README.md differs

tests/test_readme.py runs the same commands (train and export through tests/conftest.py's
session run) and fails when README.md differs from what they print now. What legitimately
varies between runs is compared through `normalize`, the one declared mask: durations, clock
times, speeds, timestamps in names, the working folder, the stage times (`time`), and the padding
of table cells (which follows the width of those fields). Measured numbers are compared to about
three digits (`same`), because CPUs with and without native bf16 train the walkthrough in
different dtypes.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
WIDTH = 100
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
       "NO_COLOR": "1", "COLUMNS": str(WIDTH)}
SHOWN_ROOT = "/tmp/walk"   # the working folder, as the README shows it
# The working folder is a new temporary one with this prefix, in the test as here: its path has
# the same length both times, so tables wrap the same way.
ROOT_PREFIX = "fastft-walk-"

TRAIN = ("fastft train examples/favorite_color.jsonl --model tiny --lr 2e-3 --batch-size 4 "
         "--grad-accum 2 --max-seq-len 256 --16bit")
EXPORT = "fastft export --gguf q4_k_m"
TOOLS_TRAIN = ("fastft train examples/tool_calls.jsonl --model tiny --lr 3e-3 --batch-size 2 "
               "--grad-accum 1 --max-seq-len 384 --name tools")
TOOLS_EXPORT = "fastft export runs/tools --gguf q4_k_m"
QUESTION = "What is your favorite color?"
WEATHER = "What's the weather in Paris?"


@dataclass(frozen=True)
class Step:
    """One `$ command` of a block. `show`: regexes of the output lines (with their table
    continuation lines) to keep, `...` marking each gap; None keeps all; "" shows `...` for a
    command run beforehand (run_all and the test fixtures run train and export), and
    `prepared` none (a shell command, done by `prepare_tools`)."""
    shown: str
    show: tuple[str, ...] | None | str = None
    where: str = "walk"     # "walk" or "tools": the folder it runs in
    prepared: bool = False


ROW = r"^[│┃] {} +[│┃]"
BLOCKS: dict[str, tuple[Step, ...]] = {
    "doctor": (Step("fastft doctor", tuple(ROW.format(n) for n in ("gpu", "torch", "unsloth", "ollama"))
                    + ("ready to train",)),),
    "data-check": (Step("fastft data check examples/favorite_color.jsonl"),),
    "data-preview": (Step("fastft data preview examples/favorite_color.jsonl --n 1",
                          ("^trained ", "^example 0", r"^<\|im_start\|>", "^You are", "^What color",
                           "^My favorite", r" 20–24 ", r" 25–29 ", ROW.format("trained tokens"),
                           ROW.format("masked tokens"))),),
    "train": (Step(TRAIN, ("^• loading", "^• batches", "^training ", "^Run ", "^[│┃] ")),),
    "eval": (Step("fastft eval runs/latest examples/favorite_color.jsonl --samples 1 "
                  "--max-new-tokens 16", tuple(ROW.format(n) for n in ("loss", "perplexity",
                  "trained tokens")) + ("^user: What color", "^reference: My", "^base:",
                                        "^fine-tuned: My")),),
    "chat": (Step(f'fastft chat -p "{QUESTION}"'),),
    "export": (Step(EXPORT), Step(f'fastft chat exports/favorite_color -p "{QUESTION}"')),
    "create": (Step("fastft export --gguf q4_k_m --force --create"),),
    "tools": (Step(TOOLS_TRAIN, ""),
              Step("head -1 examples/tool_calls.jsonl > weather.json", prepared=True),
              Step(f'fastft chat runs/tools --tools weather.json -p "{WEATHER}" --temperature 0',
                   where="tools"),
              Step(TOOLS_EXPORT, ""),
              Step(f'fastft chat exports/tools --tools weather.json -p "{WEATHER}" --temperature 0',
                   where="tools")),
}


# -- running commands --------------------------------------------------------------------------

@dataclass
class Walk:
    """The folders the commands run in ("walk": the walkthrough, "tools": the tool-call run),
    and what each command printed, stdout and stderr as a terminal interleaves them."""
    roots: dict[str, Path]
    printed: dict[str, str] = field(default_factory=dict)

    @classmethod
    def make(cls, walk: Path, tools: Path | None = None) -> "Walk":
        prepare_caches()
        for root in {walk, tools or walk}:
            root.mkdir(parents=True, exist_ok=True)
            if not (root / "examples").exists():
                (root / "examples").symlink_to(REPO / "examples")
        return cls({"walk": walk, "tools": tools or walk})

    def run(self, command: str, where: str = "walk", check: bool = False) -> str:
        """`fastft ARGS` run in-process in the folder `where`, once: what it printed. `check`:
        raise unless it exits 0 (doctor and `--create` exit 1 here, as the README shows)."""
        if command not in self.printed:
            code, text = run_fastft(command, self.roots[where])
            if check and code not in (0, None):
                raise RuntimeError(f"{command} exited {code}:\n{text}")
            self.printed[command] = text
        return self.printed[command]


def prepare_caches() -> None:
    """What the README's machine had before the walkthrough: the tiny model and llama.cpp's
    tools (export's, chat's runner, the retention scorer) in fastft's cache. On a fresh machine
    the first command would otherwise print their one-time build among its lines."""
    from fastft.core.tiny import tiny_model_path
    from fastft.export.llamacpp import ensure_chat_runner, ensure_llama_cpp, ensure_scorer

    tiny_model_path("tiny")
    ensure_chat_runner()    # first: it builds export's tools with it, in one cmake build
    ensure_llama_cpp()
    ensure_scorer()


def run_fastft(command: str, cwd: Path) -> tuple[int, str]:
    """(exit code, output) of `fastft ...` run through click in this process, in `cwd`."""
    import shlex

    from click.testing import CliRunner

    from fastft import cli

    args = shlex.split(command)[1:]
    with _inside(cwd), _width(cli.console, cli.out), _without_ollama():
        result = CliRunner().invoke(cli.main, args, env=ENV, catch_exceptions=False)
    return result.exit_code, result.output


@contextlib.contextmanager
def _inside(cwd: Path):
    old = Path.cwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old)


@contextlib.contextmanager
def _width(*consoles):
    """The CLI's consoles were made at import, with the terminal's width then: 100 columns."""
    saved = [c._width for c in consoles]
    for c in consoles:
        c.width = WIDTH
    try:
        yield
    finally:
        for c, w in zip(consoles, saved):
            c._width = w


@contextlib.contextmanager
def _without_ollama():
    """PATH without ollama: the README shows the machine it was captured on, which had none."""
    path = os.environ.get("PATH", "")
    os.environ["PATH"] = os.pathsep.join(d for d in path.split(os.pathsep)
                                         if not (Path(d) / "ollama").exists())
    try:
        yield
    finally:
        os.environ["PATH"] = path


def prepare_tools(root: Path) -> None:
    """`head -1 examples/tool_calls.jsonl > weather.json`."""
    first = (REPO / "examples" / "tool_calls.jsonl").read_text(encoding="utf-8").splitlines()[0]
    (root / "weather.json").write_text(first + "\n", encoding="utf-8")


# -- blocks ------------------------------------------------------------------------------------

BORDER = re.compile(r"^[\s┏┓┗┛┡┩└┘┌┐├┤━─┳┻╇┼┬┴═]+$")


def trim(output: str, show) -> list[str]:
    """The lines of `output` the README shows: table borders dropped; with `show`, the lines that
    match one of its regexes plus the table lines continuing them, `...` for each gap."""
    lines = [line.rstrip() for line in output.splitlines()
             if line.strip() and not BORDER.match(line)]
    if show is None:
        return lines
    kept, keeping, gap = [], False, False
    for line in lines:
        continuation = keeping and re.match(r"^[│┃]\s+[│┃]", line)
        keeping = bool(continuation) or any(re.search(p, line) for p in show)
        if keeping:
            kept += ["..."] * gap + [line]
            gap = False
        else:
            gap = True
    return kept + ["..."] * gap


def _shown_paths(text: str, root: str) -> str:
    """`root` written as SHOWN_ROOT; in a table cell, padded so that the cell keeps its width."""
    pad = " " * max(0, len(root) - len(SHOWN_ROOT))
    text = re.sub(re.escape(root) + r"(\S*)( *)(?= [│┃])",
                  lambda m: SHOWN_ROOT + m.group(1) + m.group(2) + pad, text)
    return text.replace(root, SHOWN_ROOT)


def render_block(name: str, walk: Walk) -> str:
    """The block `name` as the README holds it (4-space indented), from the commands' output."""
    lines = []
    for step in BLOCKS[name]:
        lines.append(f"$ {step.shown}")
        if step.show == "":
            lines.append("...")
        elif not step.prepared:
            lines += trim(walk.run(step.shown, step.where), step.show)
    text = "\n".join(lines)
    for root in {str(walk.roots["walk"]), str(walk.roots["tools"])}:
        text = _shown_paths(text, root)
    return "\n".join(f"    {line}" if line else "" for line in text.splitlines())


def run_all(walk: Walk) -> dict[str, str]:
    """Every block, its commands run in order (train and export before the commands that read
    their results; the tool-call run before its chats)."""
    for command in (TRAIN, EXPORT):
        walk.run(command, check=True)
    walk.run(TOOLS_TRAIN, "tools", check=True)
    walk.run(TOOLS_EXPORT, "tools", check=True)
    prepare_tools(walk.roots["tools"])
    return {name: render_block(name, walk) for name in BLOCKS}


# -- README ------------------------------------------------------------------------------------

MARKED = re.compile(r"(<!-- output: ([\w-]+) -->\n\n)(.*?)(\n\n<!-- /output -->)", re.S)


def readme_blocks(text: str) -> dict[str, str]:
    return {m.group(2): m.group(3) for m in MARKED.finditer(text)}


def rewrite(text: str, blocks: dict[str, str]) -> str:
    return MARKED.sub(lambda m: m.group(1) + blocks.get(m.group(2), m.group(3)) + m.group(4), text)


MASKS = (
    (re.compile(r"^(\s*)time: .*$", re.M), r"\1time: <masked>"),   # export's stage line
    # train's table row of stages, with the rows it wraps onto (where depends on the numbers)
    (re.compile(r"^(\s*[│┃] time\s+[│┃]).*$(\n^\s*[│┃]\s+[│┃].*$)*", re.M), r"\1 <masked>"),
    (re.compile(r"\d{8}-\d{6}"), "<timestamp>"),
    (re.compile(r"\b\d+:\d\d:\d\d\b"), "<clock>"),
    (re.compile(r"[\d,]+(\.\d+)? tok/s"), "<speed>"),
    (re.compile(r"(tokens/s\s+[│┃]\s+)[\d,]+"), r"\1<speed>"),
    (re.compile(r"\b\d+(\.\d+)? ?(s|ms)\b"), "<duration>"),
    (re.compile(r"━+"), "━"),   # a progress bar fills what its varying fields leave of the line
    (re.compile(r"[ \t]+"), " "),   # table padding follows the widths of the fields above
)


def normalize(block: str) -> str:
    """The declared mask: what may differ between two runs of the same commands."""
    for pattern, replacement in MASKS:
        block = pattern.sub(replacement, block)
    return "\n".join(line.strip() for line in block.splitlines())


# Measured numbers (those with a decimal point: losses, perplexities, KL, percentages) agree to
# about three digits, not to the last one shown, between CPUs: Unsloth's CPU backend trains in
# bf16 where the CPU has it natively and in float32 where it does not, and the same walkthrough
# then gave 0.6731 against 0.6723, 18,538,534.19 against 18,572,342.09, 0.0002 against 0.0001
# (the largest gap 0.18%; 2026-12-07). Counts (integers) and all text stay exact.
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")
NUMBER_RTOL = 5e-3
NUMBER_UNITS = 2   # units of the last digit shown, for numbers shown with few digits


def _close(a: str, b: str) -> bool:
    if "." not in a or "." not in b:
        return a == b
    x, y = float(a.replace(",", "")), float(b.replace(",", ""))
    unit = 10.0 ** -min(len(a.split(".")[1]), len(b.split(".")[1]))
    return abs(x - y) <= max(NUMBER_RTOL * max(abs(x), abs(y)), NUMBER_UNITS * unit) + 1e-12


def same(old: str, new: str) -> bool:
    """Two normalized blocks alike: the same text and counts, and measured numbers within
    NUMBER_RTOL or NUMBER_UNITS units of their last digit."""
    if NUMBER.split(old) != NUMBER.split(new):
        return False
    return all(_close(a, b) for a, b in zip(NUMBER.findall(old), NUMBER.findall(new)))


def differences(readme_text: str, blocks: dict[str, str]) -> list[str]:
    """A unified diff per block where README differs from `blocks` beyond the mask and the
    numbers' tolerance (`same`); a line per block missing on either side."""
    have = readme_blocks(readme_text)
    out = [f"README.md has no block `<!-- output: {n} -->`" for n in blocks if n not in have]
    out += [f"README.md's block {n} is made by no command (BLOCKS)" for n in have if n not in blocks]
    for name in blocks.keys() & have.keys():
        old, new = normalize(have[name]), normalize(blocks[name])
        if not same(old, new):
            out.append("\n".join(difflib.unified_diff(old.splitlines(), new.splitlines(),
                                                      f"README.md ({name})", "now", lineterm="")))
    return out


def main(argv: list[str]) -> int:
    check = "--check" in argv
    sys.path.insert(0, str(REPO))
    # Before huggingface_hub is imported: it reads the offline switches once, at import.
    os.environ.update({k: v for k, v in ENV.items() if k.endswith("OFFLINE")})
    with contextlib.redirect_stdout(sys.stderr):
        import unsloth  # noqa: F401  (first, as in `fastft train`)
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    try:
        blocks = run_all(Walk.make(root / "walk", root / "tools"))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = README.read_text(encoding="utf-8")
    if check:
        diffs = differences(text, blocks)
        print("\n\n".join(diffs) or "README.md matches what the commands print")
        return 1 if diffs else 0
    tmp = README.with_name(".README.md.tmp")
    tmp.write_text(rewrite(text, blocks), encoding="utf-8")
    os.replace(tmp, README)
    print(f"rewrote {len(blocks)} blocks of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
