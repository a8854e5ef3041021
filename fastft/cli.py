"""The `fastft` command line: a thin layer of click over functions the tests call directly.

`fastft train`'s options are generated from `fastft.core.config.TrainConfig` (names, help, defaults,
choices), so the config type is their one owner; `fastft export`'s from ExportConfig, `chat`'s
and `eval`'s from ChatConfig and EvalConfig, the same way (`config_options`). Errors: a `FastftError` is printed as one
line (exit 1); anything else is a bug, logged with its traceback (exit 70).
"""

from __future__ import annotations

import codecs
import errno
import gc
import json
import os
import sys
import traceback
import typing
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape

from . import __version__
from .core.config import (Config, TrainConfig, extra, flag_names, literal_choices, resolve_config,
                          resolve_section, switch_names, to_toml)
from .core import signals
from .train.distributed import rank_failed, world
from .core.errors import EXIT_INTERNAL_ERROR, EXIT_USER_ERROR, FastftError, is_disk_full
from .core.signals import terminate_as_interrupt
from .export.config import ExportConfig
from .serve.config import ChatConfig, EvalConfig

# The commands configured by a section of a TOML file (`fastft init` writes them all).
SECTIONS = {cls.command: cls for cls in (ExportConfig, ChatConfig, EvalConfig)}

console = Console(stderr=True)   # diagnostics: progress, status, warnings, errors
out = Console()                  # results: summaries and reports (NO_COLOR is honoured by both)


class FastftGroup(click.Group):
    """Turns fastft's own errors into one line and exit 1, and any other error into a short
    'this is a bug' message with the traceback in a log file, and exit 70."""

    argv: list[str] = []

    def make_context(self, info_name, args, parent=None, **extra):
        self.argv = list(args)   # as given: parsing consumes them before a usage error is raised
        return super().make_context(info_name, args, parent, **extra)

    def __call__(self, *args, **kwargs):
        """The process's own command (the console script, `python -m fastft.cli`; CliRunner
        calls `main`): at its exit, nothing more is collected. The collection at interpreter
        shutdown would walk every object the imports made (Unsloth, torch, transformers: about
        600,000), 0.8-1.7 s of each exit on 2 cores; frozen, it skips them."""
        try:
            return super().__call__(*args, **kwargs)
        finally:
            gc.freeze()

    def main(self, *args, **kwargs):
        ascii_fallback()
        try:
            try:
                return super().main(*args, **kwargs)
            finally:
                sys.stdout.flush()   # now: at exit a failure would be a warning and exit 120
        except OSError as e:   # outside a command, only stdout is written (--help, the flush)
            if e.errno not in (errno.ENOSPC, errno.EPIPE):
                raise
            if e.errno == errno.ENOSPC:   # a closed pipe (`| head`) ends quietly, as in click
                no_space()
            sys.exit(EXIT_USER_ERROR)

    def invoke(self, ctx):
        try:
            # A rank of a --gpus run keeps SIGTERM's default: torchrun sends it to stop a rank
            # when another failed; the launcher passes a user's SIGTERM on as SIGINT.
            with terminate_as_interrupt(enabled=world().size == 1):
                return super().invoke(ctx)
        except FastftError as e:
            if not rank_failed(e, EXIT_USER_ERROR):   # one of N training processes: the launcher says it
                console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt as e:
            if not rank_failed(e, signals.exit_code(e)):
                console.print(f"[bold red]{signals.describe(signals.signal_of(e))}[/]",
                              highlight=False)
            ctx.exit(signals.exit_code(e))
        except click.UsageError as e:
            e.message += _dash_file_hint(self.argv)
            raise
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as e:
            if isinstance(e, OSError) and e.errno == errno.EPIPE:
                raise   # stdout closed (`| head`): click ends quietly
            if is_disk_full(e):   # a file or stdout: no bug, and no room for a crash log
                no_space()
                ctx.exit(EXIT_USER_ERROR)
            if not rank_failed(e, EXIT_INTERNAL_ERROR):
                report_bug(e, debug=ctx.params.get("debug", False))
            ctx.exit(EXIT_INTERNAL_ERROR)


def _dash_file_hint(args: list[str]) -> str:
    """A file whose name starts with '-' reads as an option: say how to name it instead."""
    files = [a for a in args if a.startswith("-") and os.path.exists(a)]
    return (f"\n(to name the file {files[0]!r}, write ./{files[0]} or put -- before it)"
            if files else "")


def no_space() -> None:
    """The line for a full device, which may be stdout's (`> /dev/full`) or a file's: the
    OSError does not say which."""
    console.print("[bold red]error:[/] no space left on device while writing the output or a "
                  "file; free space (or send the output elsewhere) and run again", highlight=False,
                  soft_wrap=True)


# What an ASCII-only stream gets instead of the marks fastft prints (others become "?").
ASCII_MARKS = {"✓": "+", "✗": "x", "…": "...", "—": "-", "–": "-", "•": "*", "◀": "<", "█": "#"}
codecs.register_error("fastft-ascii", lambda err: (
    "".join(ASCII_MARKS.get(c, "?") for c in err.object[err.start:err.end]), err.end))


def ascii_fallback() -> None:
    """Once, at start: stdout and stderr that cannot encode the marks (an ASCII locale,
    PYTHONIOENCODING=ascii) write ASCII stand-ins instead of failing on the first mark."""
    for stream in (sys.stdout, sys.stderr):
        try:
            "".join(ASCII_MARKS).encode(getattr(stream, "encoding", None) or "utf-8")
        except UnicodeEncodeError:
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="fastft-ascii")
        except LookupError:   # a codec Python does not know: leave the stream as it is
            pass


def report_bug(e: BaseException, debug: bool) -> Path | None:
    from .core.cache import cache_dir
    text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    try:
        log = cache_dir() / "logs" / f"crash-{datetime.now():%Y%m%d-%H%M%S}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(f"fastft {__version__}\n{' '.join(sys.argv)}\n\n{text}", encoding="utf-8")
    except (OSError, FastftError):   # no usable cache folder: the message alone
        log = None
    if debug:
        console.print(text, markup=False, highlight=False)
    console.print(f"[bold red]internal error[/] (a bug in fastft or a library it uses): "
                  f"{escape(type(e).__name__)}: {escape(str(e))}", highlight=False, soft_wrap=True)
    if log:
        console.print(f"the full traceback is in {log}; --debug prints it", highlight=False,
                      soft_wrap=True)
    return log


@click.group(cls=FastftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastft")
@click.option("--debug", is_flag=True, help="Print the traceback of an internal error.")
def main(debug):
    """Fine-tune Qwen3 on your conversations with Unsloth, then run it in ollama.

    \b
      fastft data check data.jsonl     validate a dataset before training
      fastft data preview data.jsonl   the examples as trained: loss mask, guard, lengths
      fastft init                      fastft.toml with every option and default
      fastft train data.jsonl          QLoRA SFT of Qwen3-4B-Instruct-2507 into runs/<name>/
      fastft export --gguf q4_k_m      GGUF + Modelfile folder for `ollama create`
      fastft chat [RUN|GGUF]           talk to a run or an export (-p "question": one answer)
      fastft eval RUN DATA             loss/perplexity of base vs fine-tuned, sample answers
      fastft demo                      the whole pipeline on a built-in tiny model (CPU, no model hub)
      fastft doctor                    can this machine train and export? what to do if not

    Exit codes: 0 ok, 1 bad input/config/state (the message says which), 2 bad usage,
    70 internal error (a bug: the traceback goes to a log file), 130 interrupted (Ctrl-C),
    143 terminated (SIGTERM; training saves a checkpoint first, as for Ctrl-C).
    """


# -- options generated from a config (TrainConfig, ExportConfig, ChatConfig, EvalConfig) -------

def config_options(cls: type[Config] = TrainConfig, *names: str):
    """click options for these fields of config `cls` (all but its arguments when none are named).

    Every value is passed as given (None when absent), and the config validates flags and TOML
    values alike; the help shows the field's description, choices, default and range."""
    fields = cls.model_fields
    names = names or tuple(n for n in fields if "argument" not in extra(n, cls))

    def decorate(f):
        for name in reversed(names):
            f = _option(cls, name, fields[name])(f)
        return f
    return decorate


def _option(cls: type[Config], name: str, field):
    flags, about = flag_names(name, cls), extra(name, cls)
    help_text = field.description
    if "[default:" not in help_text and field.default is not None:
        help_text += f" [default: {_shown_default(field.default, flags)}{_range(field)}]"
    elif _range(field):
        help_text += f" [{_range(field)[2:]}]"
    short = [about["short"]] if "short" in about else []
    if field.annotation is bool:
        return click.option("/".join(switch_names(name, cls)), name, default=None, help=help_text)
    choices = literal_choices(field.annotation)
    metavar = about.get("metavar") or ("[" + "|".join(choices) + "]" if choices else
                                       _metavar(field.annotation))
    return click.option(*short, flags[0], name, default=None, metavar=metavar, help=help_text,
                        multiple=about.get("multiple", False))


def _shown_default(default, flags: list[str]) -> str:
    if isinstance(default, tuple):
        return ",".join(default)
    if isinstance(default, bool):
        return flags[0 if default else 1] if len(flags) == 2 else ("on" if default else "off")
    return str(default)


def _range(field) -> str:
    """`; x>=1`: a number's lower bound when it has no upper one, as click shows an IntRange.
    An upper bound is a sanity cap (train's options all have one), not worth the noise."""
    bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt")
              if hasattr(m, k)}
    if bounds.keys() & {"le", "lt"} or not bounds:
        return ""
    return f"; x>={bounds['ge']}" if "ge" in bounds else f"; x>{bounds['gt']}"


def given_flag(key: str, value) -> str:
    """The spelling of option `key` that gives `value` (--16bit for load_in_4bit=False)."""
    return switch_names(key)[1] if value is False else flag_names(key)[0]


def _metavar(annotation) -> str:
    base = {int: "INT", float: "FLOAT"}
    words = [w for t in typing.get_args(annotation) for w in literal_choices(t)]   # int or "auto": INT|auto
    for t in (annotation, *typing.get_args(annotation)):
        if t in base:
            return "|".join([base[t], *words])
    return "TEXT"


# -- data ---------------------------------------------------------------------------------------

@main.group()
def data():
    """Inspect and validate datasets."""


@data.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@config_options(TrainConfig, "model", "max_seq_len", "think", "skip_invalid")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def data_check(file, as_json, **flags):
    """Validate FILE (JSONL or JSON array) and summarise it.

    Accepts `messages`, `conversations` (role/content or ShareGPT from/value), Alpaca
    instruction/input/output, prompt/completion and ChatML `text`. Every problem is reported
    with file:line and field; the exit code is non-zero if any is found.
    """
    from .data.check import check_dataset, print_check

    cfg = resolve_config(file, None, flags)
    result = check_dataset(file, model=cfg.model, max_seq_len=cfg.max_seq_len, think=cfg.think,
                           skip_invalid=cfg.skip_invalid)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_check(result, out)   # the report is the command's result: stdout
    sys.exit(0 if result.ok else 1)


@data.command("preview")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@config_options(TrainConfig, "model", "max_seq_len", "think", "train_on_all", "skip_invalid")
@click.option("--n", "n", default=3, show_default=True, type=click.IntRange(min=0),
              help="How many examples to show, from the first.")
@click.option("--index", type=click.IntRange(min=0), help="Show only this example (0-based).")
@click.option("--json", "as_json", is_flag=True, help="Print the preview as JSON on stdout.")
def data_preview(file, n, index, as_json, **flags):
    """Show FILE's examples as training sees them: the guarded chat template with trained tokens
    highlighted and masked ones dimmed, what the guard removed or keeps, and a token-length
    histogram against --max-seq-len."""
    from .data.preview import build_preview, print_preview

    cfg = resolve_config(file, None, flags)
    p = build_preview(file, cfg.model, cfg.max_seq_len, cfg.think, cfg.train_on_all,
                      cfg.skip_invalid, n=n, index=index)
    if as_json:
        click.echo(json.dumps(p.to_dict(), ensure_ascii=False, indent=2))
    else:
        print_preview(p, out)  # a result: stdout


# -- train --------------------------------------------------------------------------------------

@main.command()
@click.argument("data", required=False, type=click.Path(dir_okay=False))
@config_options()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML file of options (same names, underscores); flags override it.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as TOML and exit.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False),
              help="Continue RUN from its last complete checkpoint, with the config it saved.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show the libraries' own output (banners, warnings, progress bars) instead of "
                   "logging it to the run's train.log.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the run's summary as JSON on stdout (progress still goes to stderr).")
def train(data, config_file, print_config, resume, verbose, as_json, **flags):
    """QLoRA-fine-tune a model on DATA (a JSONL/JSON file of conversations).

    Writes runs/<name>/ (adapter, checkpoints, metrics.jsonl, fastft.json) and points
    runs/latest at it. Every option can also come from a TOML file (--config).
    """
    if resume:
        cfg = None   # --gpus may come along: a resume needs the GPU count it was trained with
        given = [given_flag(k, v) for k, v in flags.items() if v is not None and k != "gpus"]
        if data or config_file or given:
            raise click.UsageError(f"--resume continues with the run's saved config; drop "
                                   f"{', '.join(given + ['DATA'] * bool(data) + ['--config'] * bool(config_file))}")
        if print_config:
            from .core.run import RunFolder
            click.echo(to_toml(RunFolder.open(resume).read().config), nl=False)
            return
    else:
        cfg = resolve_config(data, config_file, flags)
        if print_config:
            click.echo(to_toml(cfg), nl=False)
            return
    from .core.timeline import Timeline
    from .train.inputs import check_inputs, load_data
    from .train.launch import dispatch

    timeline = Timeline(from_process_start=True)
    # Bad data fails here, in a second, before the 10-40 s import of Unsloth and torch (and
    # before --gpus starts N processes that would each find it); so does a wrong model name
    # where this process trains (under --gpus, each rank checks it where the model loads).
    inputs = None
    with timeline.stage("checks"):
        if cfg is not None and cfg.gpus == 1:
            inputs = check_inputs(cfg)
        elif cfg is not None:
            load_data(cfg)
        if cfg is not None:   # the disk reads the weights while the CPU imports (fastft.core.prefetch)
            from .core.prefetch import read_ahead, weight_files
            read_ahead(weight_files(cfg.model, cfg.load_in_4bit))
    # Several GPUs: this command again in N processes through torchrun (fastft.train.launch).
    code = dispatch(cfg, resume, flags.get("gpus"),
                    train_argv(data, config_file, resume, verbose, as_json, flags), console, verbose)
    if code is not None:
        sys.exit(code)
    from .core.quiet import captured

    # From Unsloth's import on, the libraries' output goes to the run's train.log (-v: stderr).
    with captured(None, console, verbose, what="train"):
        with timeline.stage("imports"):
            from .train import trainer as training  # heavy: imports Unsloth, torch, transformers
        from .core.ui import TrainUI

        ui = TrainUI(console)
        try:
            result = (training.resume(resume, ui, timeline) if resume
                      else training.train(cfg, ui, inputs, timeline))
        except training.TrainInterrupted as stop:
            result = stop   # reported once the libraries' output is off the terminal again
    report_train(result, as_json)


def report_train(result, as_json: bool) -> None:
    """A finished run's table (or JSON); a stopped one's resume command and exit 128+signal."""
    from .core.ui import print_run_summary, run_summary
    from .train.trainer import TrainInterrupted

    if isinstance(e := result, TrainInterrupted):
        saved = f"checkpoint {e.checkpoint.name} saved" if e.checkpoint else "no checkpoint saved"
        console.print(f"[bold yellow]{signals.describe(e.signum)}[/] at step {e.step}, "
                      f"{escape(saved)}; continue with:\n  fastft train --resume "
                      f"{escape(str(e.folder.path))}", highlight=False, soft_wrap=True)
        sys.exit(128 + e.signum)
    if result.record.final is None:   # a rank other than 0 (--gpus N): rank 0 reports the run
        return
    if as_json:
        click.echo(json.dumps(run_summary(result.folder, result.record), indent=2))
    else:
        print_run_summary(result.folder, result.record, out)


def train_argv(data, config_file, resume, verbose, as_json, flags: dict) -> list[str]:
    """This `fastft train` command's arguments as given, for the processes torchrun starts."""
    debug = click.get_current_context().find_root().params.get("debug")
    args = ["--debug"] * bool(debug) + ["train"] + [data] * bool(data)
    args += ["--config", config_file] * bool(config_file) + ["--resume", resume] * bool(resume)
    for key, value in flags.items():
        if value is not None:
            args += [given_flag(key, value)] + ([] if isinstance(value, bool) else [str(value)])
    return args + ["-v"] * verbose + ["--json"] * as_json


# -- export -------------------------------------------------------------------------------------

def config_file_option(command: str):
    return click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
                        help=f"TOML file whose [{command}] section holds these options (same "
                             f"names, underscores; `fastft init` writes one); flags override it.")


@main.command()
@click.argument("run", required=False, type=click.Path(file_okay=False))
@config_options(ExportConfig)
@config_file_option("export")
@click.option("-v", "--verbose", is_flag=True,
              help="Show the libraries' own output instead of logging it to the run's export.log.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the result (paths, sizes, manifest) as JSON on stdout.")
def export(run, config_file, verbose, as_json, **flags):
    """Export RUN (default: runs/latest) to an ollama-ready folder.

    Merges the LoRA adapter into the original 16-bit base weights once, converts it to one
    16-bit GGUF and quantises each <name>.<QUANT>.gguf from it with llama.cpp (built from
    PyPI's llama-cpp-python sdist if none is found; UNSLOTH_LLAMA_CPP_PATH points at your own),
    and writes a Modelfile whose TEMPLATE renders exactly the training chat template, a README
    and fastft-export.json.
    """
    from .core.timeline import Timeline

    timeline = Timeline(from_process_start=True)
    with timeline.stage("imports"):
        from .export.pipeline import export_run

    cfg = resolve_section(ExportConfig, config_file, dict(flags, run=run))
    res = export_run(cfg, console, verbose=verbose, timeline=timeline)
    if as_json:
        click.echo(json.dumps(res.to_dict(), indent=2, ensure_ascii=False))
        return
    for line in res.summary_lines():   # unwrapped: paths and the stage line stay whole
        (console if line.startswith("warning:") else out).print(line, markup=False, highlight=False,
                                                                soft_wrap=True)


# -- doctor -------------------------------------------------------------------------------------

@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON on stdout.")
def doctor(as_json):
    """Check that this machine can train and export: GPU, driver and CUDA, VRAM, bf16, library
    versions, llama.cpp, ollama, free disk, the Hugging Face cache and offline mode.

    Each row says ok, warn or fail and what to do; exits 1 when training cannot run.
    """
    from .doctor import diagnose, print_report

    with console.status("checking the GPU, the libraries (importing them), llama.cpp, ollama"):
        report = diagnose()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        print_report(report, out)
    sys.exit(0 if report.ok else EXIT_USER_ERROR)


# -- init ---------------------------------------------------------------------------------------

@main.command()
@click.argument("path", default="fastft.toml", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite PATH if it exists.")
def init(path, force):
    """Write PATH (default: fastft.toml), a commented TOML of every option at its default:
    training's for `fastft train --config PATH`, then [export], [chat] and [eval] sections for
    those commands' --config."""
    from .core.cache import folder_problem
    from .core.config import annotated_toml
    from .core.errors import ConfigError
    from .core.run import write_text_atomic

    target = Path(path)
    if target.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to overwrite it")
    if not target.parent.is_dir():
        raise ConfigError(f"{path}: no folder {target.parent}")
    if problem := folder_problem(target.parent):
        raise ConfigError(f"cannot write {path}: {problem}; give a PATH in a folder you can write to")
    write_text_atomic(target, annotated_toml(SECTIONS))
    click.echo(f"wrote {path}: edit it, then run  fastft train --config {path}")


# -- chat and eval ------------------------------------------------------------------------------

@main.command()
@click.argument("target", required=False, metavar="[RUN|GGUF]")
@config_options(ChatConfig)
@config_file_option("chat")
@click.option("-v", "--verbose", is_flag=True,
              help="Show the libraries' own output while the model loads (hidden by default).")
def chat(target, config_file, verbose, **flags):
    """Talk to a run (default: runs/latest) or a GGUF (a .gguf file or an export folder).

    A run answers through Unsloth with its LoRA adapter, a GGUF through llama.cpp (built once,
    like for export). Prompts are rendered with the chat template the model was trained on;
    sampling defaults are the Modelfile's, and --temperature 0 is greedy.

    \b
    Without -p, an interactive chat that keeps the conversation:
      /clear forgets it, /bye, /exit or Ctrl-D quits, Ctrl-C stops an answer.
    """
    from .serve.chat import chat as run_chat

    cfg = resolve_section(ChatConfig, config_file, dict(flags, target=target))
    run_chat(cfg, out=sys.stdout, console=console, verbose=verbose)


@main.command("eval")
@click.argument("run", required=False, metavar="RUN", type=click.Path(file_okay=False))
@click.argument("data", required=False, metavar="DATA", type=click.Path(dir_okay=False))
@config_options(EvalConfig)
@config_file_option("eval")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.")
@click.option("-v", "--verbose", is_flag=True,
              help="Show the libraries' own output while the model loads (hidden by default).")
def evaluate(run, data, config_file, as_json, verbose, **flags):
    """Loss and perplexity on DATA of RUN's base model and of the fine-tuned one, side by side.

    DATA (any format `data check` accepts) is rendered and masked exactly as in training: the
    loss covers the trained (assistant) tokens only, weighted by token. The base model is the
    run's, with its adapter disabled.
    """
    from .core.quiet import captured

    cfg = resolve_section(EvalConfig, config_file, dict(flags, run=run, data=data))
    with captured(None, console, verbose, what="eval"):
        from .serve.evaluate import evaluate_run, print_eval   # imports Unsloth (its banner)
    result = evaluate_run(cfg, console=console, verbose=verbose)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_eval(result, out)   # results: stdout


# -- demo ---------------------------------------------------------------------------------------

@main.command()
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--exports-dir", default="exports", show_default=True, type=click.Path(file_okay=False))
@click.option("-v", "--verbose", is_flag=True,
              help="Show the libraries' own output instead of logging it to the run's train.log.")
def demo(runs_dir, exports_dir, verbose):
    """The whole pipeline on the built-in tiny model: no GPU, no model hub, a few minutes.

    Trains on examples/favorite_color.jsonl, exports a q4_k_m GGUF with its Modelfile, and asks
    the GGUF "What is your favorite color?" through llama.cpp (built once from PyPI's sdist).
    """
    from .core.quiet import captured

    with captured(None, console, verbose, what="demo"):   # then the demo run's train.log
        from .demo import run_demo
        ok = run_demo(Path(runs_dir), Path(exports_dir), console)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
