"""The `fastft` command line: a thin layer of click over functions the tests call directly."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .models import DEFAULT_MODEL

console = Console(stderr=True)


class FastftGroup(click.Group):
    """Turns fastft's expected errors (bad data, bad config) into a message and exit code 1."""

    def invoke(self, ctx):
        from .data import DataError
        from .template import GuardError
        from .config import TrainError
        try:
            return super().invoke(ctx)
        except (DataError, GuardError, TrainError, FileNotFoundError, ValueError) as e:
            console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            ctx.exit(1)


@click.group(cls=FastftGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fastft")
def main():
    """Fine-tune Qwen3 on your conversations with Unsloth, then run it in ollama.

    \b
      fastft data check data.jsonl     validate a dataset before training
      fastft train data.jsonl          QLoRA SFT of Qwen3-4B-Instruct-2507 into runs/<name>/
      fastft export --gguf q4_k_m      GGUF + Modelfile folder for `ollama create`
      fastft demo                      the whole pipeline on a built-in tiny model (CPU, offline)
    """


# -- data ---------------------------------------------------------------------------------------

@main.group()
def data():
    """Inspect and validate datasets."""


@data.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", default=DEFAULT_MODEL, show_default=True,
              help="Model whose tokenizer and chat template count the tokens (`tiny` for the built-in one).")
@click.option("--max-seq-len", default=2048, show_default=True, help="Report examples longer than this.")
@click.option("--think", type=click.Choice(["strip", "keep", "error"]), default="strip", show_default=True,
              help="Think blocks in assistant data of a non-thinking model: strip, keep or reject them.")
@click.option("--skip-invalid", is_flag=True, help="Drop bad records (and say how many) instead of failing.")
def data_check(file, model, max_seq_len, think, skip_invalid):
    """Validate FILE (JSONL or JSON array) and summarise it.

    Accepts `messages`, `conversations` (role/content or ShareGPT from/value), Alpaca
    instruction/input/output, prompt/completion and ChatML `text`. Every problem is reported
    with file:line and field; the exit code is non-zero if any is found.
    """
    from .datacheck import check_dataset, print_check

    result = check_dataset(file, model=model, max_seq_len=max_seq_len, think=think,
                           skip_invalid=skip_invalid)
    print_check(result, console)
    sys.exit(0 if result.ok else 1)


# -- train --------------------------------------------------------------------------------------

def _train_options(f):
    opts = [
        click.option("--model", help=f"Hub id, local folder, or `tiny`. [default: {DEFAULT_MODEL}]"),
        click.option("--16bit", "sixteen_bit", is_flag=True, default=None,
                     help="Load the base in 16-bit (LoRA) instead of 4-bit (QLoRA)."),
        click.option("--name", help="Run name: runs/<name>/. [default: <data>-<timestamp>]"),
        click.option("--runs-dir", type=click.Path(file_okay=False), help="Where runs go. [default: runs]"),
        click.option("--max-seq-len", type=int, help="Tokens per example; longer ones are cut. [default: 2048]"),
        click.option("--rank", type=int, help="LoRA rank r. [default: 16]"),
        click.option("--alpha", type=int, help="LoRA alpha (scale alpha/r). [default: 32]"),
        click.option("--dropout", type=float, help="LoRA dropout. [default: 0]"),
        click.option("--target-modules", help="Comma-separated projections to adapt. [default: all seven]"),
        click.option("--rslora", is_flag=True, default=None, help="Rank-stabilised LoRA (scale alpha/sqrt(r))."),
        click.option("--dora", is_flag=True, default=None, help="Weight-decomposed LoRA (slower)."),
        click.option("--lr", type=float, help="Peak learning rate. [default: 2e-4]"),
        click.option("--scheduler", help="LR schedule. [default: cosine]"),
        click.option("--warmup-ratio", type=float, help="Warm-up share of steps. [default: 0.03]"),
        click.option("--epochs", type=float, help="Passes over the data. [default: 3]"),
        click.option("--max-steps", type=int, help="Stop after this many optimizer steps (overrides --epochs)."),
        click.option("--batch-size", type=int, help="Micro-batch per step. [default: 2]"),
        click.option("--grad-accum", type=int, help="Micro-batches per optimizer step. [default: 4]"),
        click.option("--auto-batch/--no-auto-batch", default=None,
                     help="On a GPU, raise the micro-batch while it fits, keeping batch-size x grad-accum. [default: on]"),
        click.option("--vram-budget", type=float, help="GiB of GPU memory auto-batch may use."),
        click.option("--gradient-checkpointing", type=click.Choice(["unsloth", "true", "false"]),
                     help="unsloth: offload activations to CPU (least VRAM); true: keep on GPU; "
                          "false: no checkpointing (fastest). [default: unsloth]"),
        click.option("--optim", help="Optimizer. [default: adamw_8bit on GPU]"),
        click.option("--seed", type=int, help="Random seed. [default: 42]"),
        click.option("--train-on-all", is_flag=True, default=None, help="Loss on prompts too, not only assistant turns."),
        click.option("--think", type=click.Choice(["strip", "keep", "error"]),
                     help="Think blocks in the data of a non-thinking model. [default: strip]"),
        click.option("--packing", is_flag=True, default=None, help="Pack several examples per sequence."),
        click.option("--padding", type=click.Choice(["auto", "padded", "free"]),
                     help="Batches padded (compiled, fastest when lengths match) or padding-free "
                          "(no compute on pads). [default: auto, by the data's pad waste]"),
        click.option("--eval-split", type=float, help="Hold out this share for eval loss each epoch."),
        click.option("--eval-file", type=click.Path(exists=True, dir_okay=False), help="Eval data file."),
        click.option("--save-steps", type=int, help="Checkpoint every N steps. [default: each epoch]"),
        click.option("--skip-invalid", is_flag=True, default=None, help="Drop bad records instead of failing."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def build_config(data_path: str | None, config_file: str | None, flags: dict):
    """Defaults, overridden by the TOML file, overridden by flags given on the command line."""
    from .config import TrainConfig

    values: dict = {}
    if config_file:
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        with open(config_file, "rb") as f:
            values.update(tomllib.load(f))
    for key, value in flags.items():
        if value is None:
            continue
        if key == "sixteen_bit":
            values["load_in_4bit"] = not value
        elif key == "target_modules":
            values[key] = [m.strip() for m in value.split(",") if m.strip()]
        else:
            values[key] = value
    if data_path:
        values["data"] = data_path
    if "data" not in values:
        raise click.UsageError("give DATA (or `data = ...` in --config)")
    return TrainConfig.from_dict(values)


@main.command()
@click.argument("data", required=False, type=click.Path(dir_okay=False))
@_train_options
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML file of options (same names, underscores); flags override it.")
@click.option("--print-config", is_flag=True, help="Print the resolved config as TOML and exit.")
@click.option("--resume", type=click.Path(exists=True, file_okay=False),
              help="Continue RUN from its last checkpoint (its saved config is used).")
def train(data, config_file, print_config, resume, **flags):
    """QLoRA-fine-tune a model on DATA (a JSONL/JSON file of conversations).

    Defaults: unsloth/Qwen3-4B-Instruct-2507 in 4-bit, LoRA r=16 alpha=32 on all seven
    projections, lr 2e-4 cosine with 3% warm-up, 3 epochs, effective batch 8, loss on assistant
    tokens only. Writes runs/<name>/ (adapter, checkpoints, metrics.jsonl, fastft.json) and
    points runs/latest at it.
    """
    cfg = None if resume else build_config(data, config_file, flags)
    if print_config and cfg:
        click.echo(to_toml(asdict(cfg)), nl=False)
        return
    from .train import train as run_train  # first: imports unsloth before transformers
    from .ui import TrainUI

    result = run_train(cfg, resume=resume, ui=TrainUI(console))
    print_train_summary(result, console)


def to_toml(d: dict) -> str:
    lines = []
    for k, v in d.items():
        if v is None:
            lines.append(f"# {k} =")
        else:
            lines.append(f"{k} = {json.dumps(list(v) if isinstance(v, tuple) else v)}")
    return "\n".join(lines) + "\n"


def print_train_summary(result, console: Console) -> None:
    meta = result.summary
    final, cfg = meta.get("final", {}), meta["config"]
    t = Table(title=f"Run {result.run_dir.name}", show_header=False, title_justify="left")
    t.add_row("run folder", str(result.run_dir))
    t.add_row("model", f"{cfg['model']} ({'4-bit' if cfg['load_in_4bit'] else '16-bit'})")
    t.add_row("batch", f"{cfg['batch_size']} x {cfg['grad_accum']} accumulation")
    t.add_row("steps", str(final.get("global_step")))
    if final.get("last_loss") is not None:
        t.add_row("loss (last step)", f"{final['last_loss']:.4f}")
    if final.get("eval_loss") is not None:
        t.add_row("eval loss (last / best)", f"{final['eval_loss']:.4f} / {final['best_eval_loss']:.4f}")
    if final.get("tokens_per_s"):
        t.add_row("tokens/s", f"{final['tokens_per_s']:,.0f}")
    if final.get("peak_mem_alloc_gib") is not None:
        t.add_row("peak GPU memory", f"{final['peak_mem_alloc_gib']:.2f} GiB allocated, "
                                     f"{final['peak_mem_reserved_gib']:.2f} GiB reserved")
    t.add_row("time", f"{meta['timings']['total_s']:.0f} s")
    t.add_row("next", "fastft export --gguf q4_k_m")
    console.print(t)


# -- export -------------------------------------------------------------------------------------

@main.command()
@click.argument("run", default="runs/latest", type=click.Path(file_okay=False))
@click.option("--gguf", "gguf", multiple=True,
              type=click.Choice(["q4_k_m", "q5_k_m", "q8_0", "f16", "bf16"], case_sensitive=False),
              help="GGUF quantisation; repeat for several. The Modelfile uses the first. [default: q4_k_m]")
@click.option("--merged", is_flag=True, help="Also write the 16-bit merged model (safetensors) to OUT/merged/.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder. [default: exports/NAME]")
@click.option("--name", help="Model name for ollama and the GGUF files. [default: the run's name]")
@click.option("--system", help="Default system prompt for the Modelfile (any text; escaped for ollama).")
@click.option("--force", is_flag=True, help="Replace an existing output folder, once the new export is complete.")
@click.option("--no-check", is_flag=True, help="Skip loading each GGUF with llama.cpp and generating a few tokens.")
@click.option("--verbose", is_flag=True, help="Show Unsloth's own output instead of logging it.")
def export(run, gguf, merged, out, name, system, force, no_check, verbose):
    """Export RUN (default: runs/latest) to an ollama-ready folder.

    Merges the LoRA adapter into the original 16-bit base weights, writes
    <name>.<QUANT>.gguf files through llama.cpp (built from PyPI's llama-cpp-python sdist if
    none is found; UNSLOTH_LLAMA_CPP_PATH points at your own), a Modelfile whose TEMPLATE
    renders exactly the training chat template, a README and fastft-export.json.
    """
    from .export import DEFAULT_QUANTS, ExportError, ExportOptions, export_run
    from .llamacpp import LlamaCppError

    try:
        res = export_run(ExportOptions(run=run, gguf=tuple(q.lower() for q in gguf) or DEFAULT_QUANTS,
                                       merged=merged, out=out, name=name, system=system,
                                       force=force, check=not no_check, verbose=verbose), console)
    except (ExportError, LlamaCppError) as e:
        raise click.ClickException(str(e))
    for line in res.summary_lines():
        console.print(line, markup=False, highlight=False)


# -- demo ---------------------------------------------------------------------------------------

@main.command()
@click.option("--runs-dir", default="runs", show_default=True, type=click.Path(file_okay=False))
@click.option("--exports-dir", default="exports", show_default=True, type=click.Path(file_okay=False))
def demo(runs_dir, exports_dir):
    """The whole pipeline on the built-in tiny model: no GPU, no network, a few minutes.

    Trains on examples/favorite_color.jsonl, exports a q4_k_m GGUF with its Modelfile, and asks
    the GGUF "What is your favorite color?" through llama.cpp (built once from PyPI's sdist).
    """
    from .demo import run_demo
    ok = run_demo(Path(runs_dir), Path(exports_dir), console)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
