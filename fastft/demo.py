"""`fastft demo`: the main job end to end on the built-in tiny model, offline, on a CPU."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

DEMO_DATA = Path(__file__).resolve().parent.parent / "examples" / "favorite_color.jsonl"
QUESTION = "What is your favorite color?"


def demo_config(runs_dir: Path):
    from .config import TrainConfig
    # The tiny model's weights are random, so it needs a 10x higher learning rate than a real
    # pretrained model to memorise the answer in three epochs.
    return TrainConfig(data=str(DEMO_DATA), model="tiny", name="demo", runs_dir=str(runs_dir),
                       lr=2e-3, batch_size=4, grad_accum=2, max_seq_len=256)


def run_demo(runs_dir: Path, console: Console) -> bool:
    import shutil

    from .train import train  # first: imports unsloth before transformers
    from .chat import generate, load_run_for_inference
    from .cli import print_train_summary
    from .ui import TrainUI

    if not DEMO_DATA.exists():
        raise FileNotFoundError(f"{DEMO_DATA}: the demo runs from a fastft checkout")
    shutil.rmtree(runs_dir / "demo", ignore_errors=True)
    console.rule("[bold]1/2 train the tiny model on examples/favorite_color.jsonl")
    result = train(demo_config(runs_dir), ui=TrainUI(console))
    print_train_summary(result, console)

    console.rule("[bold]2/2 ask it")
    model, tokenizer = load_run_for_inference(result.run_dir)
    answer = generate(model, tokenizer, [{"role": "user", "content": QUESTION}], max_new_tokens=16)
    console.print(f"[bold]user:[/] {QUESTION}\n[bold]model:[/] {answer}")
    ok = "blue" in answer.lower()
    console.print("[bold green]✓ it learned the answer[/]" if ok else "[bold red]✗ wrong answer[/]")
    return ok
