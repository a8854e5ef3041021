"""Length-grouped micro-batches: similar lengths share a micro-batch, so little of it is padding.

Chat SFT data is long-tailed (most conversations a few hundred tokens, a few near max_seq_len).
A random micro-batch is padded to its longest member, so one long example makes the whole
batch long: on 2,000 long-tailed lengths (bench/make_data.py's default), random micro-batches
of 8 are 60% padding, of 16 67%; grouped ones 10% and 11% (see GROUP_SIZE).

We do what HF transformers' `LengthGroupedSampler` does (`get_length_grouped_indices`):
shuffle, cut into megabatches of `group_size` micro-batches, sort each megabatch by length,
and cut it into micro-batches. Unlike HF we then shuffle the micro-batches themselves: HF
keeps each megabatch's long-to-short sawtooth and puts the longest batch first (to hit an
out-of-memory error early; our auto-batch probes the longest length already), so long batches
would come at fixed places of every epoch. Axolotl's multipack instead packs examples into
bins of a token budget; that varies the number of examples per micro-batch, and we keep it
fixed so micro_batch x grad_accum stays the effective batch in examples.
"""

from __future__ import annotations

import random

from torch.utils.data import Sampler

PAD_MULTIPLE = 64  # padded batches are padded to a multiple of this, so compiled blocks meet few shapes

# Megabatch size in micro-batches. Larger groups sort more examples together (less padding);
# smaller ones leave more megabatches, so an example's batch-mates change more from epoch to
# epoch (one group = a full sort = the same batches every epoch, only their order shuffled).
# Pad waste on 2,000 long-tailed lengths (bench/make_data.py target_lengths, seed 0), pad
# multiple 64, mean of 5 epochs, micro-batch 8 / 16:
#   random 59.5% / 66.6%;  group 4: 33.4% / 36.3%;  8: 21.3% / 22.3%;  16: 13.4% / 13.6%;
#   32: 9.6% / 9.7%;  50 (HF's): 8.0% / 8.8%;  100: 6.9% / 7.6%;  full sort: 5.8% / 6.5%.
# (The full sort's waste is nearly all the rounding up to PAD_MULTIPLE: 0.6% / 1.3% without.)
# Past 32 each doubling saves only ~1-2 points while halving the number of megabatches.
# Small data sets keep at least 4 megabatches (as HF does), for the same reason.
GROUP_SIZE = 32
MIN_GROUPS = 4


def _rng(seed: int, epoch: int) -> random.Random:
    # A string seed is hashed with SHA-512 by `random`: stable across runs and PYTHONHASHSEED.
    return random.Random(f"fastft-batches:{seed}:{epoch}")


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[i:i + size] for i in range(0, len(indices), size)]


def grouped_batches(lengths: list[int], micro_batch: int, seed: int, epoch: int = 0,
                    group_size: int | None = None, per_step: int = 1) -> list[list[int]]:
    """Micro-batches of example indices: similar lengths share a micro-batch; the order of the
    micro-batches is shuffled (seeded by seed and epoch); every index appears exactly once.
    The last micro-batch may be smaller when len(lengths) % micro_batch != 0.

    `per_step` micro-batches make one optimizer step (accumulation x GPUs). They are shuffled
    as runs of `per_step` neighbours in length, so a step's micro-batches are alike: with
    several GPUs, each GPU gets one of them (accelerate deals micro-batch i to GPU i % N), and
    a step waits for its slowest GPU. The same order on one GPU with the same accumulation
    gives the same steps."""
    n = len(lengths)
    if group_size is None:
        group_size = max(1, min(GROUP_SIZE, n // (micro_batch * MIN_GROUPS)))
    group_size = -(-group_size // per_step) * per_step   # whole steps in each megabatch
    rng = _rng(seed, epoch)
    order = list(range(n))
    rng.shuffle(order)
    batches = []
    for mega in _chunks(order, group_size * micro_batch):
        # sorted() is stable, so equal lengths keep their shuffled order.
        batches += _chunks(sorted(mega, key=lengths.__getitem__), micro_batch)
    # Only the last megabatch can end in a short micro-batch; it goes last, where a DataLoader
    # with batch_size=micro_batch puts its own short batch.
    short = [batches.pop()] if batches and len(batches[-1]) < micro_batch else []
    steps = _chunks(batches, per_step)
    rng.shuffle(steps)  # long batches anywhere in the epoch, not at fixed places
    return [b for step in steps for b in step] + short


def random_batches(lengths_count: int, micro_batch: int, seed: int, epoch: int = 0) -> list[list[int]]:
    """What a plain shuffled DataLoader does (for the before/after waste report)."""
    order = list(range(lengths_count))
    _rng(seed, epoch).shuffle(order)
    return _chunks(order, micro_batch)


def padded_tokens(batch_lengths: list[int], multiple: int = PAD_MULTIPLE) -> int:
    """Tokens a padded micro-batch computes on: len(batch) * (max length rounded up to `multiple`)."""
    if not batch_lengths:
        return 0
    return len(batch_lengths) * -(-max(batch_lengths) // multiple) * multiple


def pad_waste(lengths: list[int], batches: list[list[int]], multiple: int = PAD_MULTIPLE) -> float:
    """Share of computed tokens that are padding, over these batches."""
    real = sum(lengths[i] for b in batches for i in b)
    padded = sum(padded_tokens([lengths[i] for i in b], multiple) for b in batches)
    return 1 - real / padded if padded else 0.0


class LengthGroupedSampler(Sampler[int]):
    """Flat index order whose consecutive chunks of `micro_batch` are the grouped micro-batches,
    so a DataLoader with batch_size=micro_batch yields them. set_epoch(e) reshuffles (accelerate's
    DataLoaderShard calls set_epoch on the sampler each epoch); __len__ = number of examples."""

    def __init__(self, lengths, micro_batch, seed, per_step: int = 1):
        self.lengths, self.micro_batch, self.seed = list(lengths), micro_batch, seed
        self.per_step, self.epoch = per_step, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        for batch in grouped_batches(self.lengths, self.micro_batch, self.seed, self.epoch,
                                     per_step=self.per_step):
            yield from batch

    def __len__(self) -> int:
        return len(self.lengths)
