"""Whether auto-tune probes, reuses a remembered probe or estimates the plan (CPU): the length
profile and the cache key, the cache file's life (written whole, a bad one ignored with one
line), the throughput estimate against the H100 figures it is built on, and the decision.
The runs on a GPU are in tests/test_autobatch.py (pytest -m gpu)."""

import json
import subprocess
import sys
import textwrap
from datetime import datetime

import pytest

from conftest import EXAMPLE, REPO
from fastft.core.config import TrainConfig
from fastft.core.run import (Measurement, Plan, PadWaste, Tuning, TuningOrigin, Versions)
from fastft.train import tuning_cache as tc
from fastft.train.autobatch import (CHECKPOINTING_COST, OTHER_CARD, PROBE_BUDGET_S, PROBE_COST_S,
                                    REF_SHAPE, SAVE_SHARE, ModelShape, estimate_train_s,
                                    estimated_plan, should_probe, worst_padded_tokens)
from fastft.train.batching import grouped_batches

# -- the length profile ------------------------------------------------------------------------


def test_buckets_grow_by_sqrt_2_from_the_pad_multiple_and_hold_their_edges():
    assert [tc.bucket(n) for n in (1, 26, 64, 65, 90, 91, 128, 129, 400, 2048, 2049)] == [
        64, 64, 64, 90, 90, 128, 128, 181, 512, 2048, 2896]
    steps = sorted({tc.bucket(n) for n in range(1, 5000)})
    assert steps[:8] == [64, 90, 128, 181, 256, 362, 512, 724]
    assert all(1.39 < b / a < 1.43 for a, b in zip(steps, steps[1:]))
    assert all(tc.bucket(n) >= n for n in range(1, 5000))


def long_tailed(n=2000, seed=0):
    from bench.make_data import target_lengths   # the benchmark's chat-like lengths
    return target_lengths(n, seed=seed)


def test_the_same_data_or_data_of_the_same_shape_has_the_same_profile():
    lengths = long_tailed()
    profile = tc.LengthProfile.of(lengths, 8)
    assert profile == tc.LengthProfile(p50=512, p90=1448, max=2048, effective_batch=8)
    assert tc.LengthProfile.of(lengths[::-1], 8) == profile               # another order
    assert tc.LengthProfile.of(lengths[:500], 8) == profile               # less of it
    assert all(tc.LengthProfile.of(long_tailed(seed=s), 8) == profile for s in (1, 2, 3))  # new draws


def test_a_clearly_different_profile_differs():
    lengths = long_tailed()
    profile = tc.LengthProfile.of(lengths, 8)
    assert tc.LengthProfile.of([2 * n for n in lengths], 8) != profile       # twice as long
    assert tc.LengthProfile.of([min(n, 512) for n in lengths], 8).max == 512  # --max-seq-len 512
    assert tc.LengthProfile.of(lengths, 16) != profile                     # another effective batch
    short = tc.LengthProfile.of([19, 26, 32, 58], 8)                        # favorite-color's sizes
    assert (short.p50, short.max) == (64, 64) and short != profile


# -- the key -----------------------------------------------------------------------------------

CFG = TrainConfig(data="d.jsonl", batch_size=8, grad_accum=1)
VERSIONS = Versions(fastft="0.1.0", torch="2.11.0", unsloth="2026.10.9", transformers="5.17.0")
GPU = "NVIDIA H100 80GB HBM3, 79.2 GiB, CUDA 13.0"


def key(cfg=CFG, model="unsloth/Qwen3-4B-Instruct-2507", gpu=GPU, budget=79.2, optim="adamw_torch_fused",
        lengths=(26, 32, 40, 58), versions=VERSIONS):
    return tc.TuningKey.of(cfg, model, gpu, budget, optim, list(lengths), versions)


def test_the_key_is_stable_and_changes_with_everything_that_decides_the_probe():
    assert key().digest() == key().digest() and key(lengths=(58, 40, 32, 26)) == key()
    changed = [key(gpu="NVIDIA RTX 4090, 23.5 GiB, CUDA 13.0"), key(model="Qwen/Qwen3-8B"),
               key(budget=8.0), key(optim="adamw_8bit"), key(lengths=(300, 400, 500, 1500)),
               key(versions=VERSIONS.model_copy(update={"unsloth": "2026.11.1"})),
               key(versions=VERSIONS.model_copy(update={"fastft": "0.2.0"}))]
    changed += [key(cfg=CFG.model_copy(update={field: value})) for field, value in (
        ("load_in_4bit", False), ("rank", 64), ("target_modules", ("q_proj", "v_proj")),
        ("dora", True), ("dropout", 0.1), ("gradient_checkpointing", "true"), ("padding", "free"),
        ("batch_size", 4))]
    digests = {k.digest() for k in changed}
    assert len(digests) == len(changed) and key().digest() not in digests
    # what does not decide the probe does not split the cache
    same = CFG.model_copy(update={"lr": 1e-4, "epochs": 1.0, "alpha": 64, "seed": 1, "name": "x",
                                  "retune": True, "target_modules": CFG.target_modules[::-1]})
    assert key(cfg=same) == key() and key(budget=79.24) == key()


# -- the cache file ------------------------------------------------------------------------------

def tuning(mb=8, mode="false", tps=1354.0):
    return Tuning(mb, 8 // mb, False, mode, 79.2, 23.0,
                  [Measurement(mb, False, mode, 4.8, tps), Measurement(8, False, "unsloth", 2.9, 817.0)],
                  0.37)


class Notes(list):
    def __call__(self, text):
        assert "\n" not in text
        self.append(text)


def test_a_stored_plan_is_found_again_with_its_date(tmp_path):
    notes, folder = Notes(), tmp_path / "tuning"
    path = tc.store(key(), tuning(), 45.0, folder, notes, now=datetime(2026, 12, 5, 19, 3, 39))
    assert path == folder / f"{key().digest()}.json" and notes == []
    entry = tc.lookup(key(), folder, notes)
    assert entry.tuning == tuning() and entry.probe_budget_s == 45.0 and entry.date == "2026-12-05"
    assert tc.lookup(key(budget=8.0), folder, notes) is None and notes == []   # another key: a miss
    assert [p.name for p in folder.iterdir()] == [path.name]                   # no temporary left


@pytest.mark.parametrize("text, says", [
    ('{"version": 1, "created": "2026-12-05T19:03', "not JSON"),          # cut short
    ("", "not JSON"),
    ('{"results": [1, 2, 3]}', "not a batch plan"),                      # someone else's JSON
    ('[1, 2]', "not a batch plan"),
])
def test_a_corrupt_or_foreign_file_is_ignored_with_one_line(tmp_path, text, says):
    notes, folder = Notes(), tmp_path / "tuning"
    folder.mkdir()
    path = folder / f"{key().digest()}.json"
    path.write_text(text)
    assert tc.lookup(key(), folder, notes) is None
    assert len(notes) == 1 and str(path) in notes[0] and says in notes[0]
    # the next probe's result replaces it
    tc.store(key(), tuning(), 45.0, folder, notes)
    assert tc.lookup(key(), folder, notes).tuning == tuning() and len(notes) == 1


def test_an_entry_of_another_key_under_this_name_is_ignored(tmp_path):
    notes, folder = Notes(), tmp_path / "tuning"
    other = tc.store(key(budget=8.0), tuning(), 45.0, folder, notes)
    other.rename(folder / f"{key().digest()}.json")
    assert tc.lookup(key(), folder, notes) is None
    assert len(notes) == 1 and "another setup" in notes[0]


def test_an_unreadable_or_unwritable_cache_costs_a_line_not_the_run(tmp_path, monkeypatch):
    notes = Notes()
    (tmp_path / "tuning").mkdir()
    (tmp_path / "tuning" / f"{key().digest()}.json").mkdir()      # a folder where the file goes
    assert tc.lookup(key(), tmp_path / "tuning", notes) is None and "cannot read" in notes[-1]
    blocked = tmp_path / "file"
    blocked.write_text("")                                          # a file where the folder goes
    assert tc.store(key(), tuning(), 45.0, blocked / "tuning", notes) is None
    assert "not remembered" in notes[-1] and str(blocked) in notes[-1]
    monkeypatch.setenv("FASTFT_CACHE", str(blocked))                # the whole cache folder
    assert tc.cache_folder(notes) is None and "FASTFT_CACHE" in notes[-1]
    assert tc.lookup(key(), None, notes) is None and tc.store(key(), tuning(), 45.0, None, notes) is None
    assert len(notes) == 3


def test_the_cache_lives_in_the_fastft_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTFT_CACHE", str(tmp_path / "c"))
    assert tc.cache_folder(Notes()) == tmp_path / "c" / "tuning"


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from fastft.core.run import Measurement, Tuning
    from fastft.train import tuning_cache as tc
    folder, mb, key = Path(sys.argv[1]), int(sys.argv[2]), tc.TuningKey.model_validate_json(sys.argv[3])
    for i in range(60):
        t = Tuning(mb, 8 // mb, False, "false", 79.2, 23.0, [Measurement(mb, False, "false", 4.8, 1000.0 + i)])
        assert tc.store(key, t, 45.0, folder, print)
""")


def test_runs_writing_the_same_entry_at_once_never_leave_a_broken_file(tmp_path):
    """Two processes replace the entry 60 times each while this one reads it: every read finds
    a whole entry, of one writer or the other."""
    folder = tmp_path / "tuning"
    tc.store(key(), tuning(), 45.0, folder, Notes())
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(folder), str(mb), key().model_dump_json()],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
               for mb in (8, 4)]
    notes, seen = Notes(), set()
    while any(w.poll() is None for w in writers):
        entry = tc.lookup(key(), folder, notes)
        assert entry is not None and entry.key == key(), notes
        seen.add(entry.tuning.batch_size)
    assert [w.wait() for w in writers] == [0, 0], [w.stderr.read()[-2000:] for w in writers]
    assert notes == [] and seen <= {8, 4} and tc.lookup(key(), folder, notes).tuning.batch_size in (8, 4)
    assert [p.name for p in folder.iterdir()] == [f"{key().digest()}.json"]


# -- the estimate, against the H100 figures it is built on ---------------------------------------

@pytest.fixture(scope="module")
def favorite_lengths(tiny_path):
    """examples/favorite_color.jsonl as training tokenises it (the Qwen3 vocabulary)."""
    from transformers import AutoTokenizer

    from fastft.data.read import read_dataset
    from fastft.data.template import ChatGuard, encode_all
    guard = ChatGuard(AutoTokenizer.from_pretrained(tiny_path), str(tiny_path), path="f")
    encoded = encode_all(guard, read_dataset(EXAMPLE).examples, 2048, strict=True)
    return [len(e.tokens.input_ids) for e in encoded]


def estimate(lengths, mb=8, ga=1, free=False, mode="false", epochs=3.0, max_steps=-1,
             shape=REF_SHAPE, reference=True, world=1):
    return estimate_train_s(lengths, mb, ga, free, mode, epochs, max_steps, shape, reference, world, 42)


def test_the_favorite_color_run_is_estimated_too_short_for_a_probe(favorite_lengths):
    """H100, Qwen3-4B shape, 100 conversations x 3 epochs, 8 x 1 padded without checkpointing:
    the probe measured 1,354 tok/s (7.0 s for its 9,483 tokens) and cost 23-50 s."""
    assert sum(favorite_lengths) == 3161 and max(favorite_lengths) == 58
    seconds = estimate(favorite_lengths)
    assert 3 * 3161 / 1354 <= seconds <= 15                  # over the measurement, not far over
    assert SAVE_SHARE * seconds < PROBE_COST_S
    assert should_probe(seconds, None, retune=False).how == "estimate"


def test_the_estimate_is_at_least_what_the_h100_measured():
    """README "Speed and memory": fixed 1,024-token data, 8 x 1 padded, no checkpointing:
    23,326 tok/s; long-tailed data, the same plan: 13,587 tok/s (non-padding tokens)."""
    assert estimate([1024] * 240, epochs=1.0) >= 30 * 8192 / 23326
    lengths = long_tailed()
    batches = grouped_batches(lengths, 8, 42)
    real = sum(lengths) / len(batches)                      # non-padding tokens of a step
    assert estimate(lengths, max_steps=30) >= 30 * real / 13587


def test_the_estimate_grows_with_the_work_and_shrinks_with_the_gpus(favorite_lengths):
    base = estimate(favorite_lengths)
    assert estimate(favorite_lengths, mode="unsloth") == pytest.approx(CHECKPOINTING_COST * base)
    assert estimate(favorite_lengths, reference=False) == pytest.approx(OTHER_CARD * base)
    assert estimate(favorite_lengths, epochs=6.0) == pytest.approx(2 * base)
    assert estimate(favorite_lengths, world=2) == pytest.approx(base / 2)
    assert estimate(favorite_lengths, mb=2, ga=4) > 3 * base         # 4x the micro-batches
    # --max-steps counts optimizer steps: 13 steps of 8 are about one epoch of 100
    assert estimate(favorite_lengths, max_steps=13) == pytest.approx(base / 3, rel=0.01)
    tiny = ModelShape(4, 256, 768, 151936)                           # the built-in tiny model
    assert estimate(favorite_lengths, shape=tiny) < base / 5
    # Qwen3-8B: as many layers (the same CPU time a step), twice the weights per token
    eight_b, four_b = estimate(long_tailed(), shape=ModelShape(36, 4096, 12288, 151936)), estimate(long_tailed())
    assert four_b * 1.2 < eight_b < four_b * 2


def test_the_4b_shape_passes_4_billion_weights_per_token():
    assert REF_SHAPE.weights() == pytest.approx(4.0e9, rel=0.01)

    class Config:
        num_hidden_layers, hidden_size, intermediate_size, vocab_size = 36, 2560, 9728, 151936
    assert ModelShape.of(Config()) == REF_SHAPE


# -- the decision ----------------------------------------------------------------------------------

def test_a_probe_runs_only_where_it_can_save_more_than_it_costs():
    too_short = PROBE_COST_S / SAVE_SHARE - 1
    assert should_probe(too_short, None, False).how == "estimate"
    long = 10 * PROBE_BUDGET_S
    assert (should_probe(long, None, False).how, should_probe(long, None, False).budget_s) == (
        "probe", PROBE_BUDGET_S)


def test_a_run_a_little_longer_gets_a_shorter_probe():
    seconds = (PROBE_COST_S + 10) / SAVE_SHARE             # a probe could save 35 s
    choice = should_probe(seconds, None, False)
    assert choice.how == "probe" and choice.budget_s == pytest.approx(35.0) and 35 < PROBE_BUDGET_S
    longer = should_probe(2 * seconds, None, False)
    assert longer.budget_s == PROBE_BUDGET_S                # capped at the full probe's


def test_a_remembered_probe_is_reused_unless_it_was_cut_shorter_than_this_run_needs():
    long = 10 * PROBE_BUDGET_S
    assert should_probe(long, PROBE_BUDGET_S, False).how == "reuse"
    assert should_probe(1.0, 30.0, False).how == "reuse"     # even where no probe would pay
    assert should_probe(long, 30.0, False).how == "probe"    # a shortened probe, a long run
    same = (PROBE_COST_S + 10) / SAVE_SHARE                 # the run that shortened it, again
    assert should_probe(same, should_probe(same, None, False).budget_s, False).how == "reuse"


def test_retune_always_probes_for_the_full_budget():
    for remembered in (None, PROBE_BUDGET_S):
        for seconds in (1.0, 1000.0):
            choice = should_probe(seconds, remembered, retune=True)
            assert (choice.how, choice.budget_s) == ("probe", PROBE_BUDGET_S)


def test_without_a_probe_the_plan_is_the_probes_usual_choice_where_it_is_predicted_to_fit():
    # favorite-color on an 80 GB card: 8 x 64 tokens, ~5 GiB without checkpointing
    assert estimated_plan(8, 2, "auto", "auto", 5.1, 79.2, 0.37) == (8, False, "false")
    # 8 x 2048 tokens (58.8 GiB) under --vram-budget 8: the configured 2 x 4, offloaded
    assert estimated_plan(8, 2, "auto", "auto", 58.8, 8.0, 0.1) == (2, False, "unsloth")
    # the user's own choices stay
    assert estimated_plan(8, 2, "true", "auto", 5.1, 79.2) == (2, False, "true")
    assert estimated_plan(8, 2, "false", "auto", 58.8, 8.0) == (2, False, "false")
    assert estimated_plan(8, 2, None, "free", 5.1, 79.2) == (8, True, "false")


def test_the_memory_prediction_uses_the_longest_examples_padded():
    assert worst_padded_tokens([19, 58, 26, 130, 32], 2) == 2 * 192
    assert worst_padded_tokens([40], 8) == 64


# -- what the run record keeps ---------------------------------------------------------------------

def test_the_plan_records_how_its_tuning_came_and_reads_back():
    t = tuning()
    origin = TuningOrigin(how="reused", reused_from="2026-12-05", estimate_s=10.3, cache_key="ab12")
    plan = Plan(model_path="m", batch_size=8, grad_accum=1, padding_free=False,
                gradient_checkpointing="false", optim="adamw_torch_fused", group_by_length=True,
                pad_waste=PadWaste(random=0.5, grouped=0.5), tuning=t, tuning_origin=origin)
    again = Plan.model_validate(json.loads(plan.model_dump_json()))
    assert again.tuning_origin == origin and again.tuning == t
    assert t.plan_words() == "8 x 1 padded, no checkpointing"
    assert tuning(4, "unsloth").plan_words() == "4 x 2 padded, checkpointing unsloth"
    with pytest.raises(ValueError):
        TuningOrigin(how="guessed")
