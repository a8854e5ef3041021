"""--compile: Unsloth's per-block compile is turned off where the estimated training cannot repay
it (fastft.train.compiling), through the variable Unsloth itself reads at every layer call."""

import pytest

from fastft.train import compiling
from fastft.train.compiling import COMPILE_COST_S, EAGER_SLOWDOWN, decide


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for var in (*compiling.USER_VARIABLES, "TORCHINDUCTOR_CACHE_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    return tmp_path / "inductor"


def break_even(cache: str) -> float:
    return COMPILE_COST_S[cache] / (EAGER_SLOWDOWN - 1)


def test_a_short_run_does_not_compile_and_says_how_to_force_it(clean_env):
    choice = decide("auto", on_gpu=True, padding_free=False, estimate_s=10.0, probed=False)
    assert choice.on is False
    assert "training should take about 10 s" in choice.why and "--compile on" in choice.why


def test_a_long_run_compiles(clean_env):
    choice = decide("auto", True, False, break_even("cold") * 1.1, probed=False)
    assert choice == compiling.CompileChoice(True, "")


def test_a_warm_inductor_cache_makes_compiling_pay_sooner(clean_env):
    between = (break_even("warm") + break_even("cold")) / 2
    assert decide("auto", True, False, between, False).on is False   # cold: empty cache folder
    clean_env.mkdir()
    (clean_env / "fxgraph").mkdir()
    assert decide("auto", True, False, between, False).on is True


def test_a_probe_has_compiled_already_and_the_user_setting_wins(clean_env):
    assert decide("auto", True, False, 1.0, probed=True).on is True
    assert decide("on", True, False, 1.0, probed=False).on is True
    assert decide("off", True, False, 10_000.0, probed=False).on is False


@pytest.mark.parametrize("on_gpu, padding_free", [(False, False), (True, True), (True, None)])
def test_nothing_to_decide_without_compiled_blocks(clean_env, on_gpu, padding_free):
    """No GPU, padding-free batches (never compiled) or packing (TRL's collation): left alone."""
    assert decide("off", on_gpu, padding_free, 10.0, False) == compiling.CompileChoice(None, "")


def test_the_users_own_variable_decides(clean_env, monkeypatch):
    monkeypatch.setenv("UNSLOTH_COMPILE_DISABLE", "1")
    choice = decide("auto", True, False, 10_000.0, False)
    assert choice.on is None and "UNSLOTH_COMPILE_DISABLE=1" in choice.why


def test_applied_switches_unsloths_own_check_while_training_only(clean_env):
    """The variable is the one Unsloth's compiled-block wrapper reads at every call; it is put
    back afterwards, so a later run in the process does not take it for the user's."""
    from unsloth.models import _block_compile
    with compiling.applied(False):
        assert not _block_compile._enabled()
    assert "UNSLOTH_BLOCK_COMPILE" not in compiling.os.environ
    assert decide("auto", True, False, 10_000.0, False).on is True   # not "as ... says"
    with compiling.applied(None):   # left to Unsloth: unchanged
        assert _block_compile._enabled()
        assert "UNSLOTH_BLOCK_COMPILE" not in compiling.os.environ


def test_applied_puts_the_users_value_back(clean_env, monkeypatch):
    from unsloth.models import _block_compile
    monkeypatch.setenv("UNSLOTH_BLOCK_COMPILE", "0")
    with compiling.applied(True):
        assert _block_compile._enabled()
    assert compiling.os.environ["UNSLOTH_BLOCK_COMPILE"] == "0"
