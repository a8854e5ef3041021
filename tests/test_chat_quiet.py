"""`fastft chat` and `fastft eval` load models quietly: Unsloth's banners and the libraries'
warnings stay off the terminal unless -v, while answers still go to stdout. Real processes, as
in tests/test_quiet.py: much of that output is written to the file descriptors directly."""

from __future__ import annotations

import pytest

from conftest import REPO
from test_quiet import fastft

UNSLOTH = ("Unsloth", "🦥")


def unsloth_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(word in line for word in UNSLOTH)]


@pytest.mark.slow
def test_chat_one_shot_hides_unsloth_unless_verbose(tool_run, tmp_path):
    args = ("chat", str(tool_run[0]), "-p", "What's the weather in Paris?", "--temperature", "0",
            "--max-new-tokens", "8")
    code, out, err = fastft(*args, cwd=tmp_path)
    assert code == 0, err
    assert unsloth_lines(err) == [] and unsloth_lines(out) == [], err
    code, loud_out, loud_err = fastft(*args, "-v", cwd=tmp_path)
    assert code == 0, loud_err
    assert unsloth_lines(loud_err), loud_err      # -v: the libraries' output, on stderr
    assert loud_out == out and out.strip()        # stdout: the answer alone, either way


@pytest.mark.slow
def test_eval_hides_unsloth(tool_run, tmp_path):
    data = tmp_path / "one.jsonl"
    data.write_text((REPO / "examples" / "tool_calls.jsonl").read_text().splitlines()[0] + "\n")
    code, out, err = fastft("eval", str(tool_run[0]), str(data), "--samples", "0", "--json",
                            cwd=tmp_path)
    assert code == 0, err
    assert unsloth_lines(err) == [] and unsloth_lines(out) == [], err
