"""Where a training step's time goes: a diagnostic for the speed work, not a benchmark.

1. forward+backward of padded 8 x L batches: wall time, the time the CPU takes to enqueue the
   work, and the GPU's kernel time, for a range of L. Where enqueue ~ wall and kernel time is
   well below it, the step is bound by the CPU (Python and kernel launches), not the GPU.
2. The optimizer step alone.
3. The real `fastft train` loop (8 x 1 padded, no checkpointing) on the given data, with a
   torch.profiler table of a few steady-state steps and a cProfile of ten more.
4. `--variant`: the same loop with one change to the per-step CPU work (see VARIANTS), timed
   from step 5 to the last step with one synchronisation at each end.

    python bench/profile_step.py --model DIR --data data.jsonl --out DIR
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def log(out: Path, text: str) -> None:
    print(text, flush=True)
    with open(out / "profile.txt", "a") as f:
        f.write(text + "\n")


def _kernel_ms(prof) -> float:
    return sum(e.self_device_time_total for e in prof.key_averages()) / 1000


def fwd_bwd(model, ids, amp):
    import torch
    with torch.autocast("cuda", dtype=amp):
        loss = model(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids)).loss
    loss.backward()


def shapes(model, out: Path, amp) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile
    for length in (128, 256, 512, 1024, 2048):
        ids = torch.randint(1000, 100000, (8, length), device="cuda")
        for _ in range(2):  # compiles this shape
            fwd_bwd(model, ids, amp)
            model.zero_grad(set_to_none=True)
        walls, enq = [], []
        for _ in range(5):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fwd_bwd(model, ids, amp)
            enq.append(time.perf_counter() - t0)
            torch.cuda.synchronize()
            walls.append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            fwd_bwd(model, ids, amp)
            torch.cuda.synchronize()
        model.zero_grad(set_to_none=True)
        wall = min(walls)
        log(out, f"8x{length}: wall {wall * 1000:.0f} ms, enqueue {min(enq) * 1000:.0f} ms, "
                 f"kernels {_kernel_ms(prof):.0f} ms, {8 * length / wall:,.0f} tok/s")
        if length in (256, 2048):
            log(out, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
            log(out, prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15))


def optimizer(model, out: Path) -> None:
    import bitsandbytes as bnb
    import torch
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.zeros_like(p)
    opt = bnb.optim.AdamW8bit(params, lr=1e-4)
    times = []
    for _ in range(6):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=False)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    log(out, f"optimizer: {len(params)} tensors, {sum(p.numel() for p in params) / 1e6:.1f} M params, "
             f"step+zero_grad {min(times[1:]) * 1000:.1f} ms")
    model.zero_grad(set_to_none=True)


VARIANTS = {
    "base": "fastft as it is",
    "fused": "optim adamw_torch_fused instead of bitsandbytes' 8-bit AdamW",
    "noop": "Unsloth's unsloth::addmm_ custom op off (plain addmm_ in compiled graphs)",
    "nosync": "no per-step host synchronisation (nan filter, token count, StepMetrics, logging)",
}


def apply_variant(names: set[str]) -> dict:
    """Monkeypatches for one measured variant; returns TrainConfig overrides."""
    over = {}
    if "fused" in names:
        over["optim"] = "adamw_torch_fused"
    if "noop" in names:
        import unsloth.kernels.utils as U
        U._HAS_ADDMM_OP = False
    if "nosync" in names:
        import fastft.train.metrics as M
        import fastft.train.trainer as T
        M.StepMetrics.on_step_begin = lambda self, *a, **k: None
        M.StepMetrics.on_step_end = lambda self, *a, **k: None
        sft = T.sft_config

        def no_sync_config(*a, **k):
            c = sft(*a, **k)
            c.logging_steps, c.logging_nan_inf_filter = 1000, False
            c.include_num_input_tokens_seen = "no"
            return c
        T.sft_config = no_sync_config
    return over


class Throughput:
    """Non-padding tokens of every collated training batch, and wall time from step 5 to the
    end with one synchronisation at each end: the same clock for every variant."""

    def __init__(self, out: Path, start: int = 5):
        self.out, self.start, self.tokens_all, self.t0, self.n0 = out, start, 0, None, 0

    def wrap(self, collator):
        def counted(rows):
            self.tokens_all += sum(len(r["input_ids"]) for r in rows)
            return collator(rows)
        return counted

    def callback(self):
        import torch
        from transformers import TrainerCallback
        outer = self

        class CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == outer.start:
                    torch.cuda.synchronize() if torch.cuda.is_available() else None
                    outer.t0, outer.n0 = time.perf_counter(), outer.tokens_all
                elif state.global_step == state.max_steps and outer.t0 is not None:
                    torch.cuda.synchronize() if torch.cuda.is_available() else None
                    dt = time.perf_counter() - outer.t0
                    n = outer.tokens_all - outer.n0
                    log(outer.out, f"THROUGHPUT steps {outer.start + 1}-{state.global_step}: "
                                   f"{n} tokens in {dt:.2f} s = {n / dt:,.0f} tok/s")
        return CB()


def trainer_loop(a, out: Path) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    import fastft.train.trainer as T
    from fastft.core.config import TrainConfig

    class Profiler(TrainerCallback):
        def __init__(self):
            self.torch_prof, self.cprof, self.t = None, None, {}

        def on_step_begin(self, args, state, control, **kw):
            s = state.global_step
            if s == 10:
                self.torch_prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
                torch.cuda.synchronize()
                self.t["torch"] = time.perf_counter()
                self.torch_prof.__enter__()
            if s == 16:
                torch.cuda.synchronize()
                self.t["cprof"] = time.perf_counter()
                self.cprof = cProfile.Profile()
                self.cprof.enable()

        def on_step_end(self, args, state, control, **kw):
            s = state.global_step
            if s == 13 and self.torch_prof is not None:
                torch.cuda.synchronize()
                wall = time.perf_counter() - self.t["torch"]
                self.torch_prof.__exit__(None, None, None)
                log(out, f"trainer steps 11-13: wall {wall * 1000:.0f} ms, "
                         f"kernels {_kernel_ms(self.torch_prof):.0f} ms")
                log(out, self.torch_prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))
            if s == 26 and self.cprof is not None:
                self.cprof.disable()
                torch.cuda.synchronize()
                log(out, f"trainer steps 17-26 under cProfile: {time.perf_counter() - self.t['cprof']:.2f} s")
                buf = io.StringIO()
                pstats.Stats(self.cprof, stream=buf).sort_stats("tottime").print_stats(40)
                pstats.Stats(self.cprof, stream=buf).sort_stats("cumulative").print_stats(60)
                log(out, buf.getvalue())

    variant = set(a.variant.split("+")) if a.variant else set()
    over = apply_variant(variant)
    make = T.make_trainer
    meter = Throughput(out)

    def with_profiler(*args, **kw):
        trainer, metrics = make(*args, **kw)
        if not variant:
            trainer.add_callback(Profiler())
        trainer.data_collator = meter.wrap(trainer.data_collator)
        trainer.add_callback(meter.callback())
        return trainer, metrics

    T.make_trainer = with_profiler
    cfg = TrainConfig(data=a.data, model=a.model, runs_dir=str(a.runs),
                      name="profile-" + (a.variant.replace("+", "-") or "loop"),
                      max_steps=a.steps, batch_size=8, grad_accum=1, auto_batch=False,
                      padding="padded", gradient_checkpointing="false", save_minutes=0,
                      **over)
    log(out, f"variant {a.variant or 'profile'}: {over}")
    run = T.train(cfg)
    if not variant:
        for line in open(run.folder.metrics_file):
            log(out, line.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--runs", type=Path, default=Path("/tmp/profile-runs"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--parts", default="shapes,optimizer,trainer")
    ap.add_argument("--variant", default="", help="+-joined: " + ", ".join(VARIANTS))
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    parts = a.parts.split(",")
    from fastft.core.models import import_unsloth
    import_unsloth()
    import torch
    if "shapes" in parts or "optimizer" in parts:
        from fastft.core.config import TrainConfig
        from fastft.core.models import load_model, resolve_model
        from fastft.train.trainer import attach_lora
        cfg = TrainConfig(data=a.data, model=a.model)
        model, _ = load_model(resolve_model(a.model), 2048, True)
        model = attach_lora(model, cfg, "false")
        if "shapes" in parts:
            shapes(model, a.out, torch.bfloat16)
        if "optimizer" in parts:
            optimizer(model, a.out)
        del model
        torch.cuda.empty_cache()
    if "trainer" in parts:
        trainer_loop(a, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
