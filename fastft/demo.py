"""`fastft demo`: the main job end to end on the built-in tiny model, on a CPU, without the
model hub (the first run downloads llama.cpp's source from PyPI, 76 MB, once).

train (examples/favorite_color.jsonl) -> export q4_k_m -> llama.cpp answers from the GGUF.
Earlier results are kept: the run is runs/demo and the export exports/fastft-demo when those
are free, else both get a timestamp suffix (`demo-<timestamp>`, `fastft-demo-<timestamp>`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from rich.console import Console

from .core.config import TrainConfig
from .core.run import default_run_name

# examples/favorite_color.jsonl, shipped inside the package too (fastft/resources) for a wheel install.
DEMO_DATA = Path(__file__).resolve().parent / "resources" / "favorite_color.jsonl"
QUESTION = "What is your favorite color?"


def demo_names(runs_dir: Path, exports_dir: Path, now: datetime | None = None) -> tuple[str, str]:
    """(run name, export name) that touch nothing already there: a user's earlier demo run or
    export is theirs to keep, so a taken name gets a timestamp rather than being deleted."""
    if not (runs_dir / "demo").exists() and not (exports_dir / "fastft-demo").exists():
        return "demo", "fastft-demo"
    run_name = default_run_name("demo", now)
    return run_name, f"fastft-{run_name}"


def demo_config(runs_dir: Path, name: str = "demo"):
    # The tiny model's weights are random, so it needs a 10x higher learning rate than a real
    # pretrained model to memorise the answer in three epochs.
    return TrainConfig(data=str(DEMO_DATA), model="tiny", name=name, runs_dir=str(runs_dir),
                       lr=2e-3, batch_size=4, grad_accum=2, max_seq_len=256)


def run_demo(runs_dir: Path, exports_dir: Path, console: Console) -> bool:
    from .train.trainer import train  # first: it imports Unsloth before transformers
    from .serve.chat import generate, load_run_for_inference
    from .export.pipeline import ExportOptions, export_run
    from .export.llamacpp import llama_generate
    from .core.ui import TrainUI, print_run_summary

    run_name, export_name = demo_names(runs_dir, exports_dir)
    console.print(f"run: {runs_dir / run_name}, export: {exports_dir / export_name}",
                  markup=False, highlight=False)
    console.rule("[bold]1/3 train the tiny model on examples/favorite_color.jsonl")
    result = train(demo_config(runs_dir, run_name), ui=TrainUI(console))
    print_run_summary(result.folder, result.record, console, next_step=None)   # it exports next

    messages = [{"role": "user", "content": QUESTION}]
    model, tokenizer = load_run_for_inference(result.run_dir)
    answer = generate(model, tokenizer, messages, max_new_tokens=16)
    console.print(f"[bold]user:[/] {QUESTION}\n[bold]model (transformers):[/] {answer}")
    # The export's Modelfile TEMPLATE renders exactly this prompt under ollama's engine
    # (tests/test_modelfile.py checks it with Go's text/template).
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    del model

    console.rule("[bold]2/3 export to GGUF q4_k_m + Modelfile")
    exported = export_run(ExportOptions(run=str(result.run_dir), gguf=("q4_k_m",), name=export_name,
                                        exports_dir=str(exports_dir)), console)
    for line in exported.summary_lines():
        console.print(line, markup=False, highlight=False)

    console.rule("[bold]3/3 ask the GGUF through llama.cpp")
    gguf_answer = llama_generate(exported.ggufs["q4_k_m"], prompt, n_tokens=16)
    console.print(f"[bold]user:[/] {QUESTION}\n[bold]model (llama.cpp, Q4_K_M):[/] {gguf_answer}")
    ok = "blue" in gguf_answer.lower()
    console.print("[bold green]✓ the exported model learned the answer[/]" if ok
                  else "[bold red]✗ wrong answer[/]")
    return ok
