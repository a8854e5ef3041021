"""Whether Unsloth compiles each decoder block: worth it for a long run, not for a short one.

Unsloth 2026.10 compiles every decoder layer of a padded batch as one torch.compile region
(unsloth/models/_block_compile.py). The compile happens during the first steps and makes every
later step faster; with a cold or even a warm inductor cache the first steps pay for tracing
(COMPILE_COST_S). A 100-conversation fine-tune trains for about 20 s, and then compiling is most
of its training time. So fastft estimates the training time (fastft.train.autobatch's throughput
model, the same estimate that decides the probe) and turns the compile off where the steps it
would speed up cannot repay it. Unsloth reads UNSLOTH_BLOCK_COMPILE at every layer call, so
setting it after the model is patched is enough. Padding-free batches are never compiled; where a
probe ran, it has compiled the blocks already (and probes run only ahead of long runs); a user's own
UNSLOTH_BLOCK_COMPILE or UNSLOTH_COMPILE_DISABLE is left to decide.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

# Measured on an H100 with the 4B shape (bench/compile_choice.py; bench/results/
# 2026-12-06-h100-80gb-hbm3-compile-{favorite,longtail}.json), fastft's defaults otherwise:
#   favorite-color, 39 steps of 8 x 64 tokens: training 37.8 s compiled with cold caches, 21.7 s
#   compiled with warm ones, 17.5 s eager; steps 0.265 s compiled, 0.349 s eager (1.32x);
#   500 long-tailed conversations, 63 steps: 36.3 s compiled (warm), 34.5 s eager (1.25x a step).
# So compiling costs ~8.5 s over the eager steps it replaces with a warm Inductor cache (a second
# run on the machine) and ~24 s with a cold one, and makes a step ~1.3x faster.
COMPILE_COST_S = {"cold": 24.0, "warm": 8.5}
EAGER_SLOWDOWN = 1.3       # an eager step's time over a compiled one's
USER_VARIABLES = ("UNSLOTH_BLOCK_COMPILE", "UNSLOTH_COMPILE_DISABLE")


@dataclass(frozen=True)
class CompileChoice:
    on: bool | None    # None: left to Unsloth (no GPU, padding-free or packed batches, the user's variable)
    why: str           # one line for the user; "" when there is nothing to say


def decide(setting: str, on_gpu: bool, padding_free: bool | None, estimate_s: float | None,
           probed: bool) -> CompileChoice:
    """`setting` is --compile (auto, on, off); `estimate_s` the estimated training time at the
    plan (at compiled speed); `probed`: a probe in this process already compiled the blocks."""
    if not on_gpu or padding_free is not False:
        return CompileChoice(None, "")
    if user := [f"{v}={os.environ[v]}" for v in USER_VARIABLES if v in os.environ]:
        return CompileChoice(None, f"compile: as {', '.join(user)} says")
    if setting != "auto":
        return CompileChoice(setting == "on", "")
    if probed or estimate_s is None:
        return CompileChoice(True, "")
    cost = COMPILE_COST_S["warm" if warm_cache() else "cold"]
    saving = estimate_s * (EAGER_SLOWDOWN - 1)
    if saving >= cost:
        return CompileChoice(True, "")
    return CompileChoice(False, f"compile: off: training should take about {estimate_s:.0f} s, and "
                                f"compiling (~{cost:.0f} s here) would save only ~{saving:.0f} s "
                                f"of it; --compile on compiles anyway")


def warm_cache() -> bool:
    """Whether torch's Inductor cache (fastft.core.models.compile_caches) already holds anything."""
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not folder:
        return False
    try:
        with os.scandir(folder) as entries:
            return any(entries)
    except OSError:
        return False


@contextlib.contextmanager
def applied(on: bool | None):
    """Unsloth's compiled blocks (which read UNSLOTH_BLOCK_COMPILE at every call) compile or
    not while training runs; the variable is put back afterwards, so that a later run in the
    same process (the GPU tests, `fastft demo`) decides afresh instead of reading ours as the
    user's."""
    if on is None:
        yield
        return
    before = os.environ.get("UNSLOTH_BLOCK_COMPILE")
    os.environ["UNSLOTH_BLOCK_COMPILE"] = "1" if on else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("UNSLOTH_BLOCK_COMPILE", None)
        else:
            os.environ["UNSLOTH_BLOCK_COMPILE"] = before
