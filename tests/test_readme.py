"""README.md's captured outputs are what the walkthrough's commands print now.

scripts/readme_outputs.py runs each command of the walkthrough and renders its block; here the
train and export commands are the session's (tests/conftest.py: `color_run`, `color`,
`tool_run`, with the same settings), and every other command runs once."""

from __future__ import annotations

import re

import pytest

from readme_outputs import (BLOCKS, README, Walk, differences, prepare_tools, readme_blocks, render_block,
                             rewrite, same)


@pytest.fixture(scope="module")
def rendered(walkthrough, color, tool_run) -> dict[str, str]:
    tools_root = tool_run[0].parent.parent   # holds runs/tools and exports/tools
    prepare_tools(tools_root)
    walk = Walk({"walk": walkthrough.roots["walk"], "tools": tools_root}, walkthrough.printed)
    return {name: render_block(name, walk) for name in BLOCKS}


@pytest.mark.slow
def test_the_readme_shows_what_the_commands_print(rendered, tmp_path_factory):
    text = README.read_text(encoding="utf-8")
    diffs = differences(text, rendered)
    if diffs:   # the README these outputs make, for a look or a copy (the script retrains)
        now = tmp_path_factory.mktemp("readme") / "README.md"
        now.write_text(rewrite(text, rendered), encoding="utf-8")
    assert not diffs, "\n\n".join(diffs) + (f"\n(README.md with today's outputs: {now}; or run "
                                          f"python scripts/readme_outputs.py)")


@pytest.mark.slow
def test_a_hand_edited_output_fails_and_a_masked_field_does_not(rendered):
    text = README.read_text(encoding="utf-8")
    chat = readme_blocks(text)["chat"]
    assert "My favorite color is blue." in chat
    edited = text.replace(chat, chat.replace("blue", "red"))
    diffs = differences(edited, rendered)
    assert len(diffs) == 1 and "-My favorite color is red." in diffs[0], diffs
    assert differences(rewrite(edited, rendered), rendered) == []   # the script's rewrite fixes it

    train = readme_blocks(text)["train"]
    time_row = next(line for line in train.splitlines() if "│ time " in line)
    retimed = text.replace(time_row, re.sub(r"\d+ s\b", "12345 s", time_row))
    assert retimed != text and differences(retimed, rendered) == []   # a duration is masked


# The walkthrough's rows as a CPU with native bf16 and one without printed them (2026-12-07).
BF16_ROWS = ("base 16.7354 18,538,534.19 0.0%\nadapter (16-bit) 0.6731 1.96 100.0%\n"
             "favorite_color.Q4_K_M.gguf 0.6744 1.96 0.0002 100.0% ok\nloss 0.0053")
FLOAT32_ROWS = ("base 16.7372 18,572,342.09 0.0%\nadapter (16-bit) 0.6723 1.96 100.0%\n"
                "favorite_color.Q4_K_M.gguf 0.6742 1.96 0.0001 100.0% ok\nloss 0.0054")


def test_measured_numbers_are_compared_to_three_digits_and_counts_and_text_exactly():
    assert same(BF16_ROWS, FLOAT32_ROWS)
    assert not same(BF16_ROWS, BF16_ROWS.replace("0.6731", "0.6831"))     # a loss 1.5% off
    assert not same(BF16_ROWS, BF16_ROWS.replace("0.0002", "0.0005"))     # 3 units of the last digit
    assert not same("trained tokens 1,003", "trained tokens 1,004")      # a count
    assert not same("28 examples (854 tokens)", "28 examples (855 tokens)")
    assert not same(BF16_ROWS, BF16_ROWS.replace("ok", "low"))           # the text around them
    assert not same("loss 0.6731", "loss 0.6731 0.1")                     # a number more
