"""Auto micro-batching: the choice logic on CPU; the real probes run on the GPU host (test_gpu.py)."""

from fastft.autobatch import HEADROOM, candidates, pick


def test_candidates_keep_the_effective_batch_exact():
    assert candidates(8) == [8, 4, 2, 1]
    assert candidates(12) == [12, 6, 4, 3, 2, 1]
    assert all(12 % c == 0 for c in candidates(12))


def test_pick_backs_off_from_oom_and_from_too_little_headroom():
    peaks = {8: None, 4: 11.5, 2: 7.0, 1: 4.0}          # 8 runs out of memory; 4 leaves < 10% free
    choice = pick(8, 12.0, peaks.__getitem__)
    assert (choice.batch_size, choice.grad_accum) == (2, 4)
    assert choice.probes == [(8, None), (4, 11.5), (2, 7.0)]  # stops at the first that fits
    assert 7.0 <= 12.0 * (1 - HEADROOM) < 11.5


def test_pick_takes_the_largest_that_fits():
    choice = pick(8, 80.0, lambda mb: 3.0 + mb * 0.2)
    assert (choice.batch_size, choice.grad_accum) == (8, 1)
    assert "micro-batch 8 x 1" in choice.describe()


def test_pick_floors_at_one_when_nothing_fits():
    choice = pick(4, 8.0, lambda mb: None)
    assert (choice.batch_size, choice.grad_accum) == (1, 4)
    assert [p for _, p in choice.probes] == [None, None, None]


def test_padding_waste_is_zero_for_equal_lengths_and_counts_pads_otherwise():
    from fastft.autobatch import padding_waste
    assert padding_waste([100] * 16, 4) == 0.0
    # one batch of [10, 30]: 60 padded tokens hold 40 real ones
    assert abs(padding_waste([10, 30], 2) - (1 - 40 / 60)) < 1e-9
    assert padding_waste([10, 30], 1) == 0.0   # a micro-batch of one is never padded


def test_padding_choice_goes_padding_free_only_when_lengths_vary():
    from fastft.autobatch import MAX_PAD_WASTE, choose_padding_free
    free, waste = choose_padding_free([1024] * 64, 8)
    assert not free and waste == 0.0
    free, waste = choose_padding_free(list(range(128, 1024, 14)), 8)
    assert free and waste > MAX_PAD_WASTE
