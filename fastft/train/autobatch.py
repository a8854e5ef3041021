"""Auto-tune: measure micro-batch, padding and gradient checkpointing on the user's own data.

Rules chose the slow path: on an H100 (Qwen3-4B shape, QLoRA, lengths 128-1024, effective
batch 8) the pad-waste rule picked padding-free at 4,454 tokens/s while padded batches ran
7,682 and padded without checkpointing 11,668 (at 30 GiB instead of 4.4). Which one wins
depends on the card, the model and the lengths, so we time the real candidates on a few real
micro-batches, drawn as training will draw them, and keep the fastest that fits the VRAM budget.

Candidates: micro-batches that divide the effective batch exactly; padded (length-grouped,
padded to PAD_MULTIPLE) or padding-free batches; checkpointing "unsloth" (activations
offloaded to CPU RAM), "true" (kept on the GPU, recomputed) or "false" (no recompute).
The probe runs forward+backward, so `set_checkpointing` switches an already-LoRA-wrapped model
between the three modes at run time.

A probe costs 23-50 s on a 4B model, so `tune` first looks for a remembered one
(fastft.train.tuning_cache) and estimates the training time: where a probe cannot save more than
it costs, it takes the estimated plan instead, and it shortens the probe of a short run.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from ..core.run import Measurement, Tuning, TuningOrigin, Versions

HEADROOM = 0.10        # share of the budget left free for allocator fragmentation
MARGIN = 0.05          # another checkpointing mode must beat "unsloth" by this much to replace it
TIE = 0.01             # tokens/s within this share of the fastest count as a tie: less memory wins
PROBE_BUDGET_S = 45.0  # no new mode or padding is started after this; the first mode always completes
DEFAULT_MODE = "unsloth"
# Least memory first. "false" is tried before "true": at the same micro-batch it is faster
# (no recompute), so "true" is only worth timing where it fits a larger micro-batch than "false".
# Where "false" is expected to fit the whole effective batch, it goes first (see mode_order).
MODES = ("unsloth", "false", "true")
# Activation bytes kept for the backward pass without checkpointing, per token, per layer, per
# unit of hidden size: 58.8 GiB peak at 8 x 2048 tokens on the Qwen3-4B shape (36 layers,
# hidden 2560, 4-bit, LoRA r16 on all projections; H100, 2026-11-27) gives 39.5.
ACTIVATION_BYTES = 40
UNSLOTH_GC = {"unsloth": "unsloth", "true": True, "false": False}  # Unsloth's spelling of each mode
_RANK = {"unsloth": 0, "true": 1, "false": 2}  # activation memory each mode keeps on the GPU


# What auto-tune returns is what the run record keeps (Plan.tuning): one definition, in core.
TuneResult = Tuning


def candidates(effective_batch: int) -> list[int]:
    """Micro-batches that keep the effective batch exact, largest first."""
    return [d for d in range(effective_batch, 0, -1) if effective_batch % d == 0]


def card_gib() -> float:
    """GPU 0's total memory in GiB."""
    import torch
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def apply_vram_budget(budget_gib: float | None) -> float:
    """Cap this process's share of GPU 0 at `budget_gib` (as a smaller card would) and return
    the budget in GiB: the cap, or the card's total memory."""
    import torch
    total = card_gib()
    if budget_gib is None or budget_gib >= total:
        return total
    torch.cuda.set_per_process_memory_fraction(budget_gib / total, 0)
    return budget_gib


def optimizer_reserve_gib(model, optim: str = "adamw_8bit") -> float:
    """GiB the optimizer will hold that a forward+backward probe never allocates: its moments
    (2 per trainable parameter; 1 byte each for 8-bit AdamW, 4 for 32-bit), plus the gradients
    again (the probe frees them; counting them twice is cheap for LoRA, a few hundred MiB)."""
    params = [p for p in model.parameters() if p.requires_grad]
    per_param = 0 if "sgd" in optim or "adafactor" in optim else 1 if "lion" in optim else 2
    moment_bytes = 1 if "8bit" in optim else 4
    total = sum(p.numel() * (per_param * moment_bytes + p.element_size()) for p in params)
    return total / 2**30


def choose_optimizer(requested: str, model, vram_budget: float | None) -> str:
    """`auto`: fused 32-bit AdamW, whose step is a few kernels for all tensors, where
    bitsandbytes' 8-bit AdamW launches several per tensor (LoRA on all projections of a
    36-layer model has 504 tensors, and short steps are bound by the CPU; 25 ms of CPU a step
    on an H100). 8-bit AdamW where the 32-bit moments (8 bytes per trainable parameter
    instead of 2) would take over 5% of the VRAM budget."""
    if requested != "auto":
        return requested
    budget = vram_budget or card_gib()
    fused = "adamw_torch_fused"
    return fused if optimizer_reserve_gib(model, fused) <= 0.05 * budget else "adamw_8bit"


# bitsandbytes' optimizers: CUDA kernels only.
CUDA_OPTIMIZERS = ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "paged_lion_8bit")


def cpu_optimizer(requested: str, ui) -> str:
    """On CPU: the optimizer asked for, or adamw_torch for `auto` and for one that needs CUDA
    (said on `ui`, so that a run never trains with another optimizer in silence)."""
    if requested == "auto":
        return "adamw_torch"
    if requested in CUDA_OPTIMIZERS:
        ui.status(f"--optim {requested} needs a CUDA GPU (bitsandbytes): training on CPU with adamw_torch")
        return "adamw_torch"
    return requested


def no_checkpointing_gib(model, padded_tokens: int) -> float:
    """Predicted peak GiB of a forward+backward without checkpointing: the weights already
    on the GPU plus ACTIVATION_BYTES per token, layer and hidden unit."""
    import torch
    c = model.config
    acts = padded_tokens * c.num_hidden_layers * c.hidden_size * ACTIVATION_BYTES
    weights = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    return (weights + acts) / 2**30


def mode_order(modes: list[str], predicted_false_gib: float, budget_gib: float,
               reserve_gib: float = 0.0) -> list[str]:
    """The order to probe the modes in. The first mode pays for compiling the model's blocks
    (30-50 s on a 4B model), so a second may miss the probe's deadline. Where no checkpointing
    is predicted to fit the whole effective batch, it is the likely winner (no recompute, no
    offload) and is measured first; otherwise the leanest mode goes first. Either way the
    choice is made on measurements (`decide`)."""
    if "false" not in modes or not _within(predicted_false_gib, budget_gib, reserve_gib):
        return modes
    return ["false"] + [m for m in modes if m != "false"]


def fits(m: Measurement, budget_gib: float, reserve_gib: float = 0.0) -> bool:
    return m.peak_gib is not None and _within(m.peak_gib, budget_gib, reserve_gib)


def _within(peak_gib: float, budget_gib: float, reserve_gib: float) -> bool:
    """A peak, plus the optimizer's reserve, leaves HEADROOM of the budget free."""
    return peak_gib + reserve_gib <= budget_gib * (1 - HEADROOM)


def _fastest(ms: list[Measurement]) -> Measurement | None:
    """The fastest; among those within TIE of it, the one with the least memory."""
    if not ms:
        return None
    top = max(m.tokens_per_s for m in ms)
    close = [m for m in ms if m.tokens_per_s >= top * (1 - TIE)]
    return min(close, key=lambda m: (m.peak_gib, -m.tokens_per_s))


def decide(measurements: list[Measurement], effective_batch: int, budget_gib: float,
           reserve_gib: float = 0.0, margin: float = MARGIN) -> Measurement:
    """The fastest timed candidate that fits the budget with headroom and reserve. Another
    checkpointing mode only counts if it beats the fastest fitting "unsloth" one by `margin`;
    ties (within TIE) go to less memory. Nothing fits: micro-batch 1."""
    ok = [m for m in measurements if m.tokens_per_s and effective_batch % m.micro_batch == 0
          and fits(m, budget_gib, reserve_gib)]
    base = _fastest([m for m in ok if m.checkpointing == DEFAULT_MODE])
    if base is not None:
        ok = [m for m in ok if m.checkpointing == DEFAULT_MODE
              or m.tokens_per_s >= base.tokens_per_s * (1 + margin)]
    best = _fastest(ok)
    if best is not None:
        return best
    # The modes and paddings probed at all are those the user allowed; of several, the ones
    # needing the least memory.
    modes = {m.checkpointing for m in measurements}
    frees = {m.padding_free for m in measurements}
    return Measurement(1, frees.pop() if len(frees) == 1 else True,
                       modes.pop() if len(modes) == 1 else DEFAULT_MODE, None, None)


# -- whether a probe pays for itself ---------------------------------------------------------
# A probe costs 23-50 s on the 4B model (H100, bench/results/2026-12-05-...-ttfc.json: 49.6 s with
# cold compile caches, 22.9 s warm), and a short run trains for less (100 conversations x 3
# epochs: 20-25 s). So before probing we estimate the training time at the plan we would take
# without measuring (`estimated_plan`), with a deliberately simple model of the Qwen3-4B shape on
# an H100 (QLoRA r16 on all projections; README "Speed and memory", bench/results):
#   each micro-batch's forward+backward costs STEP_S_PER_LAYER per layer of CPU time launching
#   kernels (short steps are CPU-bound: 240 ms of CPU for 96 ms of GPU work at 8 x 256 tokens,
#   bench/profile_step.py), plus its padded tokens at REF_TOKENS_PER_S, scaled by the weights a
#   token passes through (ModelShape.weights); checkpointing costs CHECKPOINTING_COST x that.
# Against the H100 measurements it over-estimates: favorite-color (39 steps of 8 x 64 padded
# tokens, no checkpointing) 10.3 s for 7.0 s (1,354 tok/s); fixed 1,024-token data at 8 x 1
# 0.46 s a step for 0.35 (23,326 tok/s); long-tailed data 0.38 s for 0.32 (13,587 tok/s). A card
# other than the H100 or H200 is taken to be OTHER_CARD times slower (an A100 has a third of an
# H100's bf16 throughput, consumer cards less). Over-estimating errs towards probing: a needless
# probe costs its 25-45 s once, a wrong skip could cost a share of a long run.
PROBE_COST_S = 25.0        # the least a probe costs (H100, 4B model, warm caches: 22.9 s)
SAVE_SHARE = 0.8           # the most of the training time a probe saves: its choice trained 5.2x faster
#                            than the configured 2 x 4 on fixed 1,024-token data (23,326 vs 4,472 tok/s)
STEP_S_PER_LAYER = 0.007   # ~0.25 s per micro-batch for the 36 layers of the 4B shape
REF_TOKENS_PER_S = 40_000  # padded tokens/s of the 4B shape's GPU work (~75-80k measured net of the step cost)
CHECKPOINTING_COST = 1.7   # 1,354 vs 817 tok/s without and with offloading (favorite-color), 14.8k vs 10.2k (long-tailed)
OTHER_CARD = 3.0
REFERENCE_CARDS = ("H100", "H200")   # the cards the figures above come from


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    vocab: int

    @classmethod
    def of(cls, config) -> "ModelShape":
        c = getattr(config, "text_config", None) or config   # multimodal configs nest it
        return cls(c.num_hidden_layers, c.hidden_size,
                   getattr(c, "intermediate_size", None) or 4 * c.hidden_size, c.vocab_size)

    def weights(self) -> int:
        """Weights each token passes through: attention (at most 4 h^2 with grouped KV heads),
        the MLP (3 h i) and the LM head (h v). The 4B shape: 4.0e9."""
        h = self.hidden
        return self.layers * (4 * h * h + 3 * h * self.intermediate) + h * self.vocab


REF_SHAPE = ModelShape(36, 2560, 9728, 151936)   # Qwen3-4B, which the figures above were measured on


def estimate_train_s(lengths: list[int], micro_batch: int, grad_accum: int, padding_free: bool,
                     checkpointing: str, epochs: float, max_steps: int, shape: ModelShape,
                     reference_card: bool, world_size: int = 1, seed: int = 0) -> float:
    """Seconds of training steps (not loading or saving) at this plan, by the model above: the
    micro-batches and padded tokens of length-grouped batches, as training draws them."""
    from .batching import grouped_batches, padded_tokens
    batches = grouped_batches(lengths, micro_batch, seed)
    per_epoch = sum(sum(lengths[i] for i in b) if padding_free else padded_tokens([lengths[i] for i in b])
                    for b in batches)
    if max_steps > 0:   # each GPU's micro-batches, of the epoch's mean size
        n = max_steps * grad_accum
        tokens = per_epoch / max(1, len(batches)) * n
    else:               # with N GPUs each computes 1/N of every epoch
        n, tokens = epochs * len(batches) / world_size, epochs * per_epoch / world_size
    rate = REF_TOKENS_PER_S * REF_SHAPE.weights() / shape.weights()
    seconds = n * STEP_S_PER_LAYER * shape.layers + tokens / rate
    seconds *= 1.0 if checkpointing == "false" else CHECKPOINTING_COST
    return seconds * (1.0 if reference_card else OTHER_CARD)


def estimated_plan(effective: int, configured: int, fixed_checkpointing: str | None, padding: str,
                   predicted_false_gib: float, budget_gib: float,
                   reserve_gib: float = 0.0) -> tuple[int, bool, str]:
    """(micro-batch, padding-free, checkpointing) without a probe: the whole effective batch in
    one micro-batch without checkpointing, where the memory model says it fits (what every H100
    probe chose where it fitted, bench/results); else the configured micro-batch with the leanest
    mode, or the mode the user fixed (what --no-auto-batch trains with)."""
    fixed = None if fixed_checkpointing in (None, "auto") else fixed_checkpointing
    free = padding == "free"
    if fixed in (None, "false") and _within(predicted_false_gib, budget_gib, reserve_gib):
        return effective, free, "false"
    return configured, free, fixed or DEFAULT_MODE


@dataclass(frozen=True)
class ProbeChoice:
    how: str            # "probe", "reuse" (a remembered probe) or "estimate" (no probe)
    budget_s: float     # probe: no new candidate is started after this
    saving_s: float     # the most a probe could save


def should_probe(estimate_s: float, remembered_budget_s: float | None, retune: bool) -> ProbeChoice:
    """A probe could save at most SAVE_SHARE of the estimated training time; it is run where that
    is more than it costs (PROBE_COST_S), for up to that saving (PROBE_BUDGET_S at the most). A
    remembered probe is reused, unless it was cut shorter than this run's probe would be;
    --retune always probes, for the full budget."""
    saving = SAVE_SHARE * estimate_s
    budget = min(PROBE_BUDGET_S, saving)
    if retune:
        return ProbeChoice("probe", PROBE_BUDGET_S, saving)
    pays = saving >= PROBE_COST_S
    if remembered_budget_s is not None and (not pays or remembered_budget_s >= budget):
        return ProbeChoice("reuse", 0.0, saving)
    return ProbeChoice("probe", budget, saving) if pays else ProbeChoice("estimate", 0.0, saving)


def tune(model, tokenizer, examples, cfg, model_path: str, ui, fixed_checkpointing: str | None = None,
         optim: str = "adamw_8bit", world_size: int = 1) -> tuple[Tuning, TuningOrigin]:
    """The batch plan on a GPU: a remembered probe's, an estimated one where a probe cannot pay
    for itself, or a new probe's (then remembered). One line on `ui` says which."""
    from . import tuning_cache as tc
    budget = apply_vram_budget(cfg.vram_budget)   # training keeps to it, however the plan came
    reserve = optimizer_reserve_gib(model, optim)
    effective = cfg.batch_size * cfg.grad_accum
    lengths = [len(e.input_ids) for e in examples]
    predicted = no_checkpointing_gib(model, worst_padded_tokens(lengths, effective))
    mb, free, mode = estimated_plan(effective, cfg.batch_size, fixed_checkpointing, cfg.padding,
                                    predicted, budget, reserve)
    estimate = estimate_train_s(lengths, mb, effective // mb, free, mode, cfg.epochs, cfg.max_steps,
                                ModelShape.of(model.config), on_reference_card(), world_size, cfg.seed)
    key = tc.TuningKey.of(cfg, model_path, gpu_description(), budget, optim, lengths,
                          Versions.installed())
    folder = tc.cache_folder(ui.status)
    entry = None if cfg.retune else tc.lookup(key, folder, ui.status)
    choice = should_probe(estimate, entry.probe_budget_s if entry else None, cfg.retune)
    origin = dict(estimate_s=round(estimate, 1), cache_key=key.digest())
    if choice.how == "reuse":
        tuning = dataclasses.replace(entry.tuning, probe_s=0.0)
        ui.status(f"batch plan: reused from {entry.date}, {tuning.plan_words()}"
                  f"{_measured(tuning)}; --retune probes again")
        return tuning, TuningOrigin(how="reused", reused_from=entry.date, **origin)
    if choice.how == "estimate":
        tuning = Tuning(mb, effective // mb, free, mode, budget, 0.0, [], reserve)
        ui.status(f"batch plan: estimated, {tuning.plan_words()}: training should take about "
                  f"{estimate:.0f} s, too little for a probe (~{PROBE_COST_S:.0f} s) to pay for "
                  f"itself; --retune probes anyway")
        return tuning, TuningOrigin(how="estimated", **origin)
    if choice.budget_s < PROBE_BUDGET_S:
        ui.status(f"auto-tune: probing for up to {choice.budget_s:.0f} s, as training should take "
                  f"about {estimate:.0f} s")
    tuning = autotune(model, tokenizer, examples, cfg, ui=ui, fixed_checkpointing=fixed_checkpointing,
                      optim=optim, budget_s=choice.budget_s)
    ui.status(tuning.describe())
    if tuning.chosen() is not None:   # a plan that fitted nothing is not worth remembering
        tc.store(key, tuning, choice.budget_s, folder, ui.status)
    return tuning, TuningOrigin(how="probed", probe_budget_s=choice.budget_s, **origin)


def _measured(tuning: Tuning) -> str:
    """' (1,354 tok/s, 4.8 GiB)': what the probe measured of the plan it chose."""
    chosen = tuning.chosen()
    return f" ({chosen.label().split(': ', 1)[1]})" if chosen else ""


def worst_padded_tokens(lengths: list[int], micro_batch: int) -> int:
    """Tokens of the worst-case micro-batch (the longest examples), padded as training pads it."""
    from .batching import padded_tokens
    return padded_tokens(sorted(lengths, reverse=True)[:micro_batch])


def on_reference_card() -> bool:
    import torch
    return any(name in torch.cuda.get_device_name(0) for name in REFERENCE_CARDS)


def gpu_description() -> str:
    """GPU 0 as the tuning cache keys it: name, memory, CUDA."""
    import torch
    return f"{torch.cuda.get_device_name(0)}, {card_gib():.1f} GiB, CUDA {torch.version.cuda}"


# -- switching gradient checkpointing at run time ---------------------------------------------

def set_checkpointing(model, mode: str) -> None:
    """Switch a LoRA-wrapped Unsloth model to checkpointing `mode` ("unsloth", "true", "false").

    Three things decide what a decoder layer (transformers' GradientCheckpointingLayer) does:
    its `gradient_checkpointing` flag, its `_gradient_checkpointing_func`, and, for "unsloth",
    Unsloth's process-wide patch of torch.utils.checkpoint (CheckpointFunction ->
    UnslothCheckpointFunction, which offloads to CPU RAM). We set all three, then record the
    mode where Unsloth's trainer reads it back (`_unsloth_gradient_checkpointing`: its train()
    re-applies it through for_training, and its config turns TRL's default
    gradient_checkpointing=True off when it is False), so the choice survives into training.
    """
    import functools

    import torch
    import torch.utils.checkpoint as ck
    from unsloth_zoo import gradient_checkpointing as ugc

    if mode not in UNSLOTH_GC:
        raise ValueError(f"checkpointing mode {mode!r}: expected one of {', '.join(UNSLOTH_GC)}")
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    on_gpu = torch.cuda.is_available()
    if mode == "unsloth" and on_gpu:
        ugc.patch_unsloth_smart_gradient_checkpointing(dtype=base.get_input_embeddings().weight.dtype)
        func = ugc.unsloth_checkpoint
    else:
        # Unsloth's own recipe for leaving "unsloth" (unsloth_zoo prepare_model_for_training);
        # a no-op when nothing is patched. On CPU Unsloth's "unsloth" is plain recomputation.
        ugc.unpatch_unsloth_gradient_checkpointing()
        ugc.unpatch_unsloth_smart_gradient_checkpointing()
        func = getattr(ck, "_unsloth_pristine_checkpoint", None) or ck.checkpoint
    # Reentrant on the GPU, as Unsloth's SFTConfig pins it (its offloading needs it); its CPU
    # backend uses non-reentrant. Either way the trainer's own gradient_checkpointing_enable()
    # later installs the same function, so the probe times what training runs.
    func = functools.partial(func, use_reentrant=on_gpu)
    # What gradient_checkpointing_enable() does, minus the input-grad hook it adds on every call.
    base._set_gradient_checkpointing(enable=mode != "false", gradient_checkpointing_func=func)
    if mode != "false" and on_gpu and not _has_input_grad_hook(base):
        base.enable_input_require_grads()  # reentrant checkpointing needs inputs that require grad
    model._unsloth_gradient_checkpointing = UNSLOTH_GC[mode]


def _has_input_grad_hook(base) -> bool:
    hooks = base.get_input_embeddings()._forward_hooks.values()
    return any(getattr(h, "__name__", "").startswith("make_inputs_require_grad") for h in hooks)


def checkpointing_mode(model) -> str:
    """The mode set by get_peft_model or the last set_checkpointing ("unsloth" if unrecorded)."""
    value = model.__dict__.get("_unsloth_gradient_checkpointing", "unsloth")
    return next((k for k, v in UNSLOTH_GC.items() if v is value or v == value), DEFAULT_MODE)


# -- the probe ---------------------------------------------------------------------------------

def autotune(model, tokenizer, examples, cfg, ui=None, fixed_checkpointing: str | None = None,
             optim: str = "adamw_8bit", budget_s: float = PROBE_BUDGET_S) -> TuneResult:
    """Measure the candidates on `examples` (TokenizedExample) and leave the model in the
    chosen checkpointing mode; RNG state, train/eval mode and gradients are as before. No new
    mode or padding is started after `budget_s`."""
    import torch

    t0 = time.perf_counter()
    budget = apply_vram_budget(cfg.vram_budget)
    reserve = optimizer_reserve_gib(model, optim)
    effective = cfg.batch_size * cfg.grad_accum
    modes = list(MODES) if fixed_checkpointing in (None, "auto") else [fixed_checkpointing]
    paddings = {"padded": [False], "free": [True]}.get(cfg.padding, [False, True])
    rng = torch.get_rng_state(), torch.cuda.get_rng_state_all()
    was_training, before = model.training, checkpointing_mode(model)
    chosen = before
    model.train()
    try:
        probe = _Probe(model, tokenizer, examples, cfg.seed, ui)
        modes = mode_order(modes, no_checkpointing_gib(model, probe.padded_tokens(effective)),
                           budget, reserve)
        measurements = _search(probe, modes, paddings, effective, budget, reserve,
                               deadline=t0 + budget_s)
        choice = decide(measurements, effective, budget, reserve)
        chosen = choice.checkpointing
    finally:
        set_checkpointing(model, chosen)
        model.zero_grad(set_to_none=True)
        model.train(was_training)
        torch.set_rng_state(rng[0])
        torch.cuda.set_rng_state_all(rng[1])
        torch.cuda.empty_cache()
    return TuneResult(choice.micro_batch, effective // choice.micro_batch, choice.padding_free,
                      choice.checkpointing, budget, time.perf_counter() - t0, measurements,
                      reserve)


def _search(probe, modes, paddings, effective, budget, reserve, deadline) -> list[Measurement]:
    """The first padding (padded, unless the user fixed it) through the checkpointing modes,
    then the other padding at the best mode and micro-batch found, if time is left (each new
    collation compiles: ~25-30 s on a 4B model). If the first padding fits nothing, the modes
    are searched again with the other (padding-free needs less memory)."""
    ms = _search_modes(probe, modes, paddings[:1], effective, budget, reserve, deadline)
    rest = paddings[1:]
    if not rest:
        return ms
    if not any(fits(m, budget, reserve) and m.tokens_per_s for m in ms):
        return ms + _search_modes(probe, modes, rest, effective, budget, reserve, deadline)
    if time.perf_counter() > deadline:
        return ms
    best = decide(ms, effective, budget, reserve)
    probe.use(best.checkpointing)
    for m in _largest_fit(probe, best.checkpointing, [best.micro_batch], rest[:1], budget, reserve, ms):
        _time(probe, m)
    return ms


def _search_modes(probe, modes, paddings, effective, budget, reserve, deadline) -> list[Measurement]:
    """For each mode the largest micro-batch that fits, by one step on the worst-case batch,
    then 2 passes over the timing batches (the first compiles and warms up). Memory grows
    unsloth < true < false, so a mode never tries a larger micro-batch than a leaner mode
    fitted, and "true" only tries micro-batches larger than "false" fitted (at the same one,
    "false" is faster: no recompute)."""
    ms: list[Measurement] = []
    fitted: dict[str, int] = {}
    failed: list[str] = []
    for i, mode in enumerate(modes):
        if i and time.perf_counter() > deadline:
            break
        if any(_RANK[f] <= _RANK[mode] for f in failed):
            continue   # a mode needing no more memory fitted nothing
        top = min([mb for m, mb in fitted.items() if _RANK[m] < _RANK[mode]], default=effective)
        floor = fitted.get("false", 0) if mode == "true" else 0
        sizes = [c for c in candidates(effective) if floor < c <= top]
        if not sizes:
            continue
        probe.use(mode)
        fitting = _largest_fit(probe, mode, sizes, paddings, budget, reserve, ms)
        if not fitting:
            failed += [mode] if floor == 0 else []
            continue
        fitted[mode] = fitting[0].micro_batch
        for m in fitting:
            _time(probe, m)
    return ms


def _time(probe, m: Measurement) -> None:
    """Time a candidate that fits, keep the higher of its two peaks, and report it."""
    m.tokens_per_s, peak = probe.time(m.micro_batch, m.padding_free)
    m.peak_gib = None if m.tokens_per_s is None else max(m.peak_gib, peak)
    probe.say(m.label())


def _largest_fit(probe, mode, sizes, paddings, budget, reserve, ms) -> list[Measurement]:
    """Measurements (untimed) of the largest size in `sizes` at which some padding fits."""
    for mb in sizes:
        tried = [Measurement(mb, free, mode, probe.peak(mb, free), None) for free in paddings]
        ms.extend(tried)
        for m in tried:
            if not fits(m, budget, reserve):
                probe.say(m.label() + ("" if m.peak_gib is None else " (over budget)"))
        ok = [m for m in tried if fits(m, budget, reserve)]
        if ok:
            return ok
    return []


class _Probe:
    """Real micro-batches of the user's data, collated as the trainer will, and one timed
    forward+backward on them under the trainer's autocast."""

    def __init__(self, model, tokenizer, examples, seed, ui=None, device="cuda"):
        import torch
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        from .batching import PAD_MULTIPLE
        self.model, self.examples, self.seed, self.ui = model, examples, seed, ui
        self.t0 = time.perf_counter()
        self.device = device
        self.lengths = [len(e.input_ids) for e in examples]
        pad = tokenizer.pad_token_id
        # The collators SFTTrainer builds: padded to PAD_MULTIPLE (train.py's SFTConfig), or
        # padding-free: one row, position_ids restarting per example (see _collate).
        self.collators = {False: DataCollatorForLanguageModeling(pad, pad_to_multiple_of=PAD_MULTIPLE),
                          True: DataCollatorForLanguageModeling(pad, padding_free=True,
                                                                return_position_ids=True)}
        self.amp = torch.bfloat16 if device == "cpu" or torch.cuda.is_bf16_supported() else torch.float16

    def use(self, mode: str) -> None:
        set_checkpointing(self.model, mode)

    def say(self, text: str) -> None:
        if self.ui is not None:
            self.ui.status(f"auto-tune: {text} [{time.perf_counter() - self.t0:.0f} s]")

    def padded_tokens(self, micro_batch: int) -> int:
        """Tokens of the worst-case micro-batch, padded as training pads it."""
        return worst_padded_tokens(self.lengths, micro_batch)

    def worst(self, micro_batch: int) -> list[int]:
        """The longest examples: the most tokens, padded or not, any micro-batch can hold."""
        order = sorted(range(len(self.lengths)), key=self.lengths.__getitem__, reverse=True)
        return order[:micro_batch]

    def timing(self, micro_batch: int) -> list[list[int]]:
        """A short, a median and a long micro-batch, as training draws them (length-grouped,
        epoch 0): the 1/6, 3/6 and 5/6 points by tokens, one for each third of the epoch."""
        from .batching import grouped_batches
        batches = grouped_batches(self.lengths, micro_batch, self.seed)
        full = [b for b in batches if len(b) == micro_batch] or batches
        full.sort(key=lambda b: sum(self.lengths[i] for i in b))
        picks = sorted({min(len(full) - 1, len(full) * k // 6) for k in (1, 3, 5)})
        return [full[i] for i in picks]

    def peak(self, micro_batch: int, padding_free: bool) -> float | None:
        return self.step(self._collate(self.worst(micro_batch), padding_free))[0]

    def time(self, micro_batch: int, padding_free: bool) -> tuple[float | None, float]:
        """(non-padding tokens/s over the timing batches, peak GiB); None on out-of-memory."""
        chosen = self.timing(micro_batch)
        batches = [self._collate(b, padding_free) for b in chosen]
        peaks = [self.step(b)[0] for b in batches]          # compiles new shapes, warms up
        runs = [self.step(b) for b in batches]
        if None in peaks or any(p is None for p, _ in runs):
            return None, 0.0
        tokens = sum(self.lengths[i] for b in chosen for i in b)
        return tokens / sum(s for _, s in runs), max(peaks + [p for p, _ in runs])

    def _collate(self, indices: list[int], padding_free: bool) -> dict:
        import torch
        rows = [{"input_ids": self.examples[i].input_ids, "labels": self.examples[i].labels}
                for i in indices]
        if padding_free:
            # What Unsloth's enable_padding_free_metadata wraps around TRL's collator: each
            # example's length, and packed_seq_lengths, which the model's varlen attention
            # reads to keep examples apart. (Its boundary-label mask is a no-op on TRL's output.)
            rows = [r | {"seq_lengths": [len(r["input_ids"])]} for r in rows]
        batch = self.collators[padding_free](rows)
        if padding_free:
            batch["packed_seq_lengths"] = torch.tensor([len(r["input_ids"]) for r in rows],
                                                       dtype=torch.int32)
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def step(self, batch: dict) -> tuple[float | None, float]:
        """(peak GiB allocated, seconds) of one forward+backward; (None, 0) on out-of-memory."""
        import gc

        import torch
        model = self.model
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            with torch.autocast("cuda", dtype=self.amp):
                loss = model(**batch).loss
            loss.backward()
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**30, time.perf_counter() - start
        except torch.OutOfMemoryError:
            pass
        finally:
            loss = None
            model.zero_grad(set_to_none=True)
        # Outside the except block, so the traceback's frames (and their tensors) are gone.
        _after_oom()
        gc.collect()
        torch.cuda.empty_cache()
        return None, 0.0


def _after_oom() -> None:
    """An OOM mid-backward can leave Unsloth's offloading bookkeeping mid-pass: reset it."""
    from unsloth_zoo.gradient_checkpointing import reset_unsloth_gradient_checkpointing_buffers
    reset_unsloth_gradient_checkpointing_buffers()  # returns at once when nothing was offloaded
