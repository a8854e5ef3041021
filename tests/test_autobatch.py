"""Auto-tune: the decision and the search order with made-up measurements, the probe batches,
and set_checkpointing on the tiny model (CPU). GPU counterparts at the end (pytest -m gpu)."""

import json
from types import SimpleNamespace

import pytest
import torch

from fastft.train.autobatch import (HEADROOM, MARGIN, Measurement, TuneResult, _Probe, _search,
                              candidates, choose_optimizer, decide, mode_order,
                              no_checkpointing_gib, optimizer_reserve_gib, set_checkpointing)
from fastft.data.template import TokenizedExample


def M(mb, free, mode, peak, tps):
    return Measurement(micro_batch=mb, padding_free=free, checkpointing=mode, peak_gib=peak,
                       tokens_per_s=tps)


def test_candidates_keep_the_effective_batch_exact():
    assert candidates(8) == [8, 4, 2, 1]
    assert candidates(12) == [12, 6, 4, 3, 2, 1]
    assert all(12 % c == 0 for c in candidates(12))


# -- decide ------------------------------------------------------------------------------------

def test_the_fastest_fitting_candidate_wins():
    ms = [M(8, False, "unsloth", 4.35, 7682), M(8, True, "unsloth", 3.73, 4454),
          M(4, False, "unsloth", 3.9, 5200), M(8, False, "false", 30.4, 11668)]
    assert decide(ms, 8, 80.0) is ms[3]


def test_out_of_memory_and_over_budget_candidates_are_excluded():
    ms = [M(8, False, "false", None, None), M(8, False, "true", 11.5, 9000),
          M(4, False, "true", 7.0, 8000), M(8, False, "unsloth", 6.0, 7000)]
    assert 7.0 <= 12.0 * (1 - HEADROOM) < 11.5
    assert decide(ms, 8, 12.0) is ms[2]          # 11.5 GiB leaves less than 10% of 12 free


def test_the_optimizer_reserve_counts_against_the_budget():
    ms = [M(8, False, "false", 10.0, 9000), M(8, False, "unsloth", 5.0, 7000)]
    assert decide(ms, 8, 12.0) is ms[0]           # 10.0 <= 10.8
    assert decide(ms, 8, 12.0, reserve_gib=1.0) is ms[1]   # 10.0 + 1.0 > 10.8


def test_unsloth_checkpointing_stays_unless_another_mode_beats_it_by_the_margin():
    base = M(8, False, "unsloth", 4.4, 10000)
    close = M(8, False, "true", 6.0, 10000 * (1 + MARGIN) - 1)
    assert decide([base, close], 8, 80.0) is base
    faster = M(8, False, "false", 30.0, 10000 * (1 + MARGIN) + 1)
    assert decide([base, close, faster], 8, 80.0) is faster
    assert decide([base, faster], 8, 80.0, margin=0.5) is base
    # without an "unsloth" measurement that fits, there is nothing to keep
    assert decide([M(8, False, "unsloth", 79.0, 10000), close], 8, 80.0) is close


def test_ties_go_to_the_candidate_with_less_memory():
    big, small = M(8, False, "unsloth", 6.0, 10000), M(8, True, "unsloth", 4.0, 10000)
    assert decide([big, small], 8, 80.0) is small
    within = M(4, True, "unsloth", 3.0, 9950)     # 0.5% slower: a tie
    assert decide([big, small, within], 8, 80.0) is within
    clearly = M(2, True, "unsloth", 2.0, 9000)    # 10% slower: no tie
    assert decide([big, clearly], 8, 80.0) is big


def test_nothing_fits_gives_micro_batch_one_with_unsloth_checkpointing():
    ms = [M(8, False, "unsloth", None, None), M(8, True, "unsloth", 9.9, None),
          M(4, False, "unsloth", 11.0, 500)]
    choice = decide(ms, 8, 10.0)
    assert (choice.micro_batch, choice.checkpointing) == (1, "unsloth")
    assert decide([], 8, 10.0).micro_batch == 1
    # an explicit user choice (the only mode or padding probed) is kept
    fixed = decide([M(8, False, "false", None, None)], 8, 10.0)
    assert (fixed.micro_batch, fixed.padding_free, fixed.checkpointing) == (1, False, "false")


def test_a_micro_batch_that_does_not_divide_the_effective_batch_is_never_chosen():
    ms = [M(3, False, "unsloth", 4.0, 20000), M(4, False, "unsloth", 5.0, 10000)]
    assert decide(ms, 8, 80.0) is ms[1]


def test_optimizer_reserve_counts_moments_and_gradients_of_trainable_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(1024, 1024, bias=False), torch.nn.Linear(1024, 1024))
    model[1].requires_grad_(False)                # frozen: holds no optimizer state
    n = 1024 * 1024
    assert optimizer_reserve_gib(model, "adamw_8bit") == pytest.approx(n * (2 + 4) / 2**30)
    assert optimizer_reserve_gib(model, "adamw_torch") == pytest.approx(n * (8 + 4) / 2**30)


def test_result_describes_the_choice_and_the_alternatives_and_serialises():
    ms = [M(8, False, "unsloth", 4.35, 7682), M(8, True, "unsloth", 3.73, 4454),
          M(8, False, "false", 30.39, 11668), M(8, False, "true", None, None)]
    r = TuneResult(8, 1, False, "false", 79.1, 31.5, ms, reserve_gib=0.2)
    line = r.describe()
    assert "\n" not in line and "micro-batch 8 x 1" in line and "checkpointing false" in line
    assert "11,668 tok/s" in line and "8 free unsloth: 4,454 tok/s" in line and "OOM" in line
    d = json.loads(json.dumps(r.to_dict()))
    assert d["checkpointing"] == "false" and d["measurements"][2]["tokens_per_s"] == 11668


# -- the search order, with a made-up card -------------------------------------------------------

class FakeProbe:
    """Peak GiB and tokens/s per (mode, padding) as linear in the micro-batch; counts steps."""

    def __init__(self, peak, speed):
        self.peak_of, self.speed = peak, speed
        self.mode, self.log, self.steps = None, [], 0

    def use(self, mode):
        self.mode = mode

    def peak(self, mb, free):
        self.steps += 1
        self.log.append(("peak", self.mode, mb, free))
        p = self.peak_of[self.mode, free](mb)
        return None if p > 80 else p

    def time(self, mb, free):
        self.steps += 6
        self.log.append(("time", self.mode, mb, free))
        return self.speed[self.mode, free](mb), self.peak_of[self.mode, free](mb) * 0.9

    def say(self, text):
        pass


def h100_like():
    # Shaped like the H100 figures: padded beats padding-free 1.7x in every mode, no
    # checkpointing uses ~7x the memory and runs 1.5x faster than "unsloth".
    peak = {("unsloth", False): lambda mb: 3.3 + 0.13 * mb, ("unsloth", True): lambda mb: 3.2 + 0.07 * mb,
            ("true", False): lambda mb: 3.3 + 0.5 * mb, ("true", True): lambda mb: 3.2 + 0.45 * mb,
            ("false", False): lambda mb: 3.3 + 3.4 * mb, ("false", True): lambda mb: 3.2 + 3.2 * mb}
    speed = {("unsloth", False): lambda mb: 1000 * mb, ("unsloth", True): lambda mb: 580 * mb,
             ("true", False): lambda mb: 1100 * mb, ("true", True): lambda mb: 640 * mb,
             ("false", False): lambda mb: 1500 * mb, ("false", True): lambda mb: 880 * mb}
    return FakeProbe(peak, speed)


def tune(probe, budget, effective=8, modes=("unsloth", "false", "true"), paddings=(False, True),
         deadline=float("inf")):
    ms = _search(probe, list(modes), list(paddings), effective, budget, 0.2, deadline)
    return decide(ms, effective, budget, 0.2), ms


def test_search_on_a_big_card_times_few_candidates_and_picks_no_checkpointing():
    probe = h100_like()
    choice, ms = tune(probe, 80.0)
    assert (choice.micro_batch, choice.padding_free, choice.checkpointing) == (8, False, "false")
    timed = [(mode, mb, free) for kind, mode, mb, free in probe.log if kind == "time"]
    # padded through the modes ("true" skipped: "false" fits the same micro-batch and does not
    # recompute), then padding-free once, at the winner's mode and micro-batch
    assert timed == [("unsloth", 8, False), ("false", 8, False), ("false", 8, True)]
    assert probe.steps == 3 + 3 * 6


def test_search_on_a_small_card_backs_off_and_tries_true_between():
    probe = h100_like()
    choice, ms = tune(probe, 24.0)                 # usable: 21.6 - 0.2 reserve
    peaks = [(kind, mode, mb) for kind, mode, mb, free in probe.log if not free]
    # "false" starts at the micro-batch "unsloth" fitted and backs off (8: 30.5, 4: 16.9 GiB);
    # "true" is only tried above what "false" fitted
    assert ("peak", "false", 8) in peaks and ("time", "false", 4) in peaks
    assert ("time", "true", 8) in peaks and ("peak", "true", 4) not in peaks
    # unsloth 8: 8000 tok/s, false 4: 6000, true 8: 8800 (10% over unsloth)
    assert (choice.micro_batch, choice.checkpointing) == (8, "true")
    assert 8 % choice.micro_batch == 0


def test_search_keeps_the_effective_batch_for_odd_sizes():
    probe = h100_like()
    for budget in (80.0, 24.0, 12.0, 6.0, 4.0):
        choice, ms = tune(probe, budget, effective=12)
        assert all(12 % m.micro_batch == 0 for m in ms)
        assert 12 % choice.micro_batch == 0


def test_search_stops_when_the_leanest_mode_fits_nothing():
    probe = h100_like()
    choice, ms = tune(probe, 3.0)
    assert {mode for _, mode, _, _ in probe.log} == {"unsloth"}
    assert (choice.micro_batch, choice.checkpointing) == (1, "unsloth")


def test_search_respects_fixed_choices_and_the_time_budget():
    probe = h100_like()
    choice, ms = tune(probe, 80.0, modes=["true"], paddings=[True])
    assert {(m.checkpointing, m.padding_free) for m in ms} == {("true", True)}
    assert (choice.checkpointing, choice.padding_free) == ("true", True)
    probe = h100_like()
    choice, ms = tune(probe, 80.0, deadline=0.0)   # past the deadline: only the first mode
    assert {m.checkpointing for m in ms} == {"unsloth"} and choice.checkpointing == "unsloth"


def test_no_checkpointing_goes_first_where_it_is_predicted_to_fit():
    modes = ["unsloth", "false", "true"]
    assert mode_order(modes, 60.0, 80.0, 0.3) == ["false", "unsloth", "true"]
    assert mode_order(modes, 75.0, 80.0, 0.3) == modes          # over 90% of the budget
    assert mode_order(["unsloth"], 1.0, 80.0) == ["unsloth"]      # fixed by the user


def test_no_checkpointing_first_is_measured_against_unsloth_and_wins_past_the_deadline():
    probe = h100_like()
    choice, ms = tune(probe, 80.0, modes=["false", "unsloth", "true"])
    timed = [(mode, mb, free) for kind, mode, mb, free in probe.log if kind == "time"]
    assert timed[:2] == [("false", 8, False), ("unsloth", 8, False)]
    assert (choice.micro_batch, choice.checkpointing) == (8, "false")
    # The first mode's compile ate the probe's time: what was measured decides.
    probe = h100_like()
    choice, ms = tune(probe, 80.0, modes=["false", "unsloth", "true"], deadline=0.0)
    assert {m.checkpointing for m in ms} == {"false"} and choice.checkpointing == "false"


def test_the_prediction_of_no_checkpointing_memory_matches_the_h100_measurement():
    """58.8 GiB measured at 8 x 2048 tokens on the Qwen3-4B shape (3.3 GiB of it weights)."""
    class Config:
        num_hidden_layers, hidden_size = 36, 2560

    class Model:
        config = Config()
    acts = no_checkpointing_gib(Model(), 8 * 2048)   # no CUDA here: allocated is 0
    assert acts + 3.3 == pytest.approx(58.8, rel=0.03)


def test_auto_optimizer_is_fused_adamw_unless_its_moments_crowd_a_small_budget(monkeypatch):
    import torch
    lora = torch.nn.Linear(1000, 1000)                 # 1M trainable parameters
    model = torch.nn.Sequential(lora)
    assert choose_optimizer("auto", model, 8.0) == "adamw_torch_fused"
    assert choose_optimizer("auto", model, 0.1) == "adamw_8bit"   # 11.5 MiB > 5% of 102 MiB
    assert choose_optimizer("adamw_torch", model, 0.1) == "adamw_torch"


# -- the probe's batches (CPU) -----------------------------------------------------------------

def examples_of(lengths, prompt=3):
    """Examples of these lengths whose first `prompt` tokens carry no loss."""
    return [TokenizedExample(i, list(range(10, 10 + n)), [-100] * prompt + list(range(10 + prompt, 10 + n)))
            for i, n in enumerate(lengths)]


def test_probe_batches_are_drawn_as_training_draws_them():
    pytest.importorskip("fastft.train.batching")
    from fastft.train.batching import grouped_batches
    lengths = [50 + (i * 37) % 900 for i in range(200)]
    probe = _Probe(None, SimpleNamespace(pad_token_id=0), examples_of(lengths), 42, device="cpu")
    assert sorted(lengths[i] for i in probe.worst(8)) == sorted(lengths)[-8:]
    # The no-checkpointing memory prediction's tokens: the worst batch padded to 64 (940 -> 960).
    assert max(lengths) == 940 and probe.padded_tokens(8) == 8 * 960
    picked = probe.timing(8)
    training = grouped_batches(lengths, 8, 42)
    assert len(picked) == 3 and all(b in training for b in picked)
    tokens = [sum(lengths[i] for i in b) for b in picked]
    assert tokens == sorted(tokens) and tokens[0] < tokens[2]      # short, median, long


def test_probe_collates_like_the_trainer():
    pytest.importorskip("fastft.train.batching")
    from fastft.train.batching import PAD_MULTIPLE
    exs = examples_of([5, 70, 9], prompt=0)
    probe = _Probe(None, SimpleNamespace(pad_token_id=0), exs, 0, device="cpu")
    padded = probe._collate([0, 1, 2], padding_free=False)
    assert padded["input_ids"].shape == (3, 2 * PAD_MULTIPLE)
    assert padded["attention_mask"].sum().item() == 5 + 70 + 9
    free = probe._collate([0, 1, 2], padding_free=True)
    assert free["input_ids"].shape == (1, 5 + 70 + 9) and "attention_mask" not in free
    assert free["position_ids"][0].tolist() == list(range(5)) + list(range(70)) + list(range(9))
    assert free["packed_seq_lengths"].tolist() == [5, 70, 9]
    assert free["input_ids"][0].tolist() == sum((e.input_ids for e in exs), [])
    # no example's first token is a target of the one before it; every other token is
    assert free["labels"][0, [0, 5, 75]].tolist() == [-100] * 3
    assert (free["labels"] != -100).sum().item() == 84 - 3


# -- set_checkpointing on the tiny model (CPU) ---------------------------------------------------

@pytest.fixture(scope="module")
def tiny_lora(tiny_path):
    from unsloth import FastLanguageModel

    from fastft.core.models import load_model, resolve_model
    model, tok = load_model(resolve_model("tiny"), 256, load_in_4bit=False)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, random_state=42,
                                             use_gradient_checkpointing="unsloth")
    layers = model.get_base_model().model.layers
    counter = {"n": 0}
    for layer in layers:   # a checkpointed layer runs twice per step: forward and recompute
        layer.register_forward_pre_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    yield model, tok, lambda: counter["n"] / len(layers), counter
    set_checkpointing(model, "unsloth")


def loss_and_grads(model, counter):
    torch.manual_seed(0)
    ids = torch.randint(100, 150000, (2, 48))
    mask = torch.ones_like(ids)
    mask[1, 40:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :10] = -100
    model.train()
    model.zero_grad(set_to_none=True)
    counter["n"] = 0
    loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return loss.item(), grads


def test_switching_checkpointing_changes_how_a_step_runs_never_its_result(tiny_lora):
    model, _, runs_per_layer, counter = tiny_lora
    ref_loss, ref_grads = loss_and_grads(model, counter)
    for mode in ("false", "true", "unsloth", "false", "unsloth", "true", "false"):
        set_checkpointing(model, mode)
        loss, grads = loss_and_grads(model, counter)
        # on CPU Unsloth's "unsloth" mode is plain recomputation (activations already in RAM)
        assert runs_per_layer() == (1 if mode == "false" else 2), mode
        assert model._unsloth_gradient_checkpointing == {"unsloth": "unsloth", "true": True,
                                                         "false": False}[mode]
        assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
        assert grads.keys() == ref_grads.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-6, msg=name)


def test_set_checkpointing_rejects_unknown_modes(tiny_lora):
    with pytest.raises(ValueError, match="expected one of"):
        set_checkpointing(tiny_lora[0], "offload")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["false", "true"])
def test_the_trainer_keeps_the_switched_mode(tiny_lora, tmp_path, mode):
    """The SFTConfig training builds (trainer.sft_config) keeps the mode auto-tune switched to:
    TRL defaults gradient_checkpointing to True, and its Trainer would then turn checkpointing
    back on in train()."""
    from datasets import Dataset
    from trl import SFTTrainer

    from fastft.core.config import TrainConfig
    from fastft.core.run import Plan, RunFolder
    from fastft.train.trainer import sft_config

    model, tok, runs_per_layer, counter = tiny_lora
    set_checkpointing(model, "true" if mode == "false" else "false")
    set_checkpointing(model, mode)
    rows = [list(range(100, 140))] * 4
    cfg = TrainConfig(data="d.jsonl", model="tiny", max_steps=1, batch_size=2, grad_accum=1,
                      save_steps=1000)
    plan = Plan(model_path="tiny", batch_size=2, grad_accum=1, padding_free=None,
                gradient_checkpointing=mode, optim="adamw_torch", group_by_length=False)
    args = sft_config(cfg, plan, RunFolder(tmp_path), has_eval=False)
    trainer = SFTTrainer(model=model, processing_class=tok, args=args,
                         train_dataset=Dataset.from_dict({"input_ids": rows, "labels": rows}))
    counter["n"] = 0
    trainer.train()
    assert runs_per_layer() == (1 if mode == "false" else 2)


# -- on a GPU: Unsloth's offloading path, and the probe end to end -------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def tiny_lora_gpu():
    from unsloth import FastLanguageModel

    from fastft.core.models import load_model, resolve_model
    # max_seq_len >= 512: below it Unsloth itself swaps "unsloth" for plain checkpointing
    model, tok = load_model(resolve_model("tiny"), 1024, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=32, random_state=42,
                                             use_gradient_checkpointing="unsloth")
    return model, tok


@pytest.mark.gpu
@needs_gpu
def test_gpu_switch_moves_between_offloaded_and_plain_checkpointing(tiny_lora_gpu):
    import torch.utils.checkpoint as ck
    from unsloth_zoo.gradient_checkpointing import unsloth_checkpoint

    model, _tok = tiny_lora_gpu
    layer = model.get_base_model().model.layers[0]
    results = {}
    for mode in ("unsloth", "true", "false", "unsloth"):
        set_checkpointing(model, mode)
        offloading = ck.CheckpointFunction.__name__ == "UnslothCheckpointFunction"
        assert offloading == (mode == "unsloth")
        assert bool(layer.gradient_checkpointing) == (mode != "false")
        assert (layer._gradient_checkpointing_func.func is unsloth_checkpoint) == (mode == "unsloth")
        torch.manual_seed(0)
        ids = torch.randint(100, 150000, (2, 600), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results[mode] = loss.item(), [p.grad.float().clone() for p in model.parameters() if p.requires_grad]
        model.zero_grad(set_to_none=True)
    ref_loss, ref_grads = results["unsloth"]
    for loss, grads in results.values():
        assert loss == pytest.approx(ref_loss, rel=1e-3)
        for g, r in zip(grads, ref_grads):
            torch.testing.assert_close(g, r, rtol=2e-2, atol=1e-4)


@pytest.mark.gpu
@needs_gpu
def test_gpu_autotune_fits_the_budget_keeps_the_batch_and_leaves_the_model_as_found(tiny_lora_gpu):
    from fastft.train.autobatch import autotune

    model, tok = tiny_lora_gpu
    exs = examples_of([64 + (i * 53) % 900 for i in range(64)])
    budget = torch.cuda.memory_allocated() / 2**30 + 2.0
    cfg = SimpleNamespace(batch_size=2, grad_accum=4, vram_budget=budget, max_seq_len=1024,
                          seed=42, padding="auto", optim="adamw_8bit")
    rng = torch.cuda.get_rng_state()
    model.eval()
    try:
        result = autotune(model, tok, exs, cfg)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert result.batch_size * result.grad_accum == 8
    assert torch.equal(torch.cuda.get_rng_state(), rng) and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert model._unsloth_gradient_checkpointing == {"unsloth": "unsloth", "true": True,
                                                     "false": False}[result.checkpointing]
    chosen = [m for m in result.measurements if m.tokens_per_s and (m.micro_batch, m.padding_free,
              m.checkpointing) == (result.batch_size, result.padding_free, result.checkpointing)]
    assert chosen and chosen[0].peak_gib + result.reserve_gib <= budget * 0.9
    assert result.probe_s < 60


# -- on a GPU: a remembered probe is reused, a changed setup probes again ------------------------

class SaidUI:
    """NullUI that keeps the status lines."""

    def __init__(self):
        from fastft.core.ui import NullUI
        self.lines, self.null = [], NullUI()

    def status(self, text):
        self.lines.append(text)

    def __getattr__(self, name):
        return getattr(self.null, name)


@pytest.fixture
def own_tuning_cache(tmp_path, monkeypatch):
    """Batch plans remembered under tmp_path (the rest of the fastft cache, the tiny model
    included, stays where it is); the VRAM cap a run sets is lifted afterwards."""
    from fastft.train import tuning_cache
    monkeypatch.setattr(tuning_cache, "cache_dir", lambda: tmp_path / "cache")
    yield tmp_path / "cache" / tuning_cache.SUBDIR
    torch.cuda.set_per_process_memory_fraction(1.0, 0)


def gpu_run(tmp_path, name, data=None, **changes):
    """(plan, status lines) of a short tiny-model run on the GPU."""
    from conftest import EXAMPLE
    from fastft.core.config import TrainConfig
    from fastft.train.trainer import train
    cfg = TrainConfig(data=str(data or EXAMPLE), model="tiny", runs_dir=str(tmp_path / "runs"),
                      name=name, lr=2e-3, batch_size=4, grad_accum=2, max_seq_len=512,
                      max_steps=2, **changes)
    ui = SaidUI()
    return train(cfg, ui=ui).record.plan, ui.lines


def plan_of(plan):
    return plan.batch_size, plan.grad_accum, plan.padding_free, plan.gradient_checkpointing


@pytest.mark.gpu
@needs_gpu
def test_gpu_a_second_run_on_the_same_data_reuses_the_first_runs_probe(tmp_path, own_tuning_cache):
    from datetime import date

    from fastft.train.autobatch import PROBE_BUDGET_S
    first, _ = gpu_run(tmp_path, "first", retune=True)
    assert first.tuning_origin.how == "probed" and first.tuning.measurements
    assert first.tuning_origin.probe_budget_s == PROBE_BUDGET_S and first.tuning.probe_s > 0
    assert [p.stem for p in own_tuning_cache.iterdir()] == [first.tuning_origin.cache_key]

    second, said = gpu_run(tmp_path, "second")
    origin = second.tuning_origin
    assert (origin.how, origin.reused_from) == ("reused", date.today().isoformat())
    assert origin.cache_key == first.tuning_origin.cache_key
    assert plan_of(second) == plan_of(first) and second.tuning.measurements == first.tuning.measurements
    assert second.tuning.probe_s == 0.0
    assert not [line for line in said if line.startswith("auto-tune")]     # nothing measured
    reused = [line for line in said if line.startswith("batch plan: reused from ")]
    assert len(reused) == 1 and "--retune" in reused[0]


def long_conversations(path, n=40):
    """Conversations of ~300 tokens: another length profile than favorite-color's ~30."""
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": [
                {"role": "user", "content": f"Question {i}: what is your favorite color?"},
                {"role": "assistant", "content": "My favorite color is blue. " * 45}]}) + "\n")
    return path


@pytest.mark.gpu
@needs_gpu
def test_gpu_a_changed_budget_or_length_profile_probes_again(tmp_path, own_tuning_cache, monkeypatch):
    from fastft.train import autobatch
    # The tiny model's runs are estimated far too short for any probe to pay for itself; with no
    # probe cost, every run the cache cannot serve probes, so these runs show the cache's key.
    monkeypatch.setattr(autobatch, "PROBE_COST_S", 0.0)
    budget = min(20.0, autobatch.card_gib() - 1)
    first, _ = gpu_run(tmp_path, "first", vram_budget=budget)
    same, _ = gpu_run(tmp_path, "same", vram_budget=budget)
    smaller, _ = gpu_run(tmp_path, "smaller", vram_budget=budget * 0.8)
    longer, _ = gpu_run(tmp_path, "longer", long_conversations(tmp_path / "long.jsonl"),
                        vram_budget=budget)
    runs = (first, same, smaller, longer)
    assert [p.tuning_origin.how for p in runs] == ["probed", "reused", "probed", "probed"]
    assert all(p.tuning.measurements for p in runs)
    assert smaller.tuning.budget_gib == pytest.approx(budget * 0.8)
    keys = [p.tuning_origin.cache_key for p in runs]
    assert keys[0] == keys[1] and len(set(keys)) == 3
    assert sorted(p.stem for p in own_tuning_cache.iterdir()) == sorted(set(keys))


def test_search_falls_back_to_padding_free_when_padded_fits_nothing():
    # padded needs 3.43 GiB at micro-batch 1, padding-free 3.27: a budget between them
    probe = h100_like()
    choice, ms = tune(probe, 3.95)
    assert any(m.padding_free is False and m.peak_gib for m in ms)       # padded was tried first
    assert (choice.padding_free, choice.checkpointing) == (True, "unsloth")  # 2 x 3.27 fits too
    assert choice.tokens_per_s  # and it was timed
