"""`fastft data check`, `fastft --help` and the cheap paths of `fastft train`, through click.

fastft prints reports (results) on stdout and diagnostics on stderr; click 8.5's CliRunner
mixes both into `result.output`, which is what the checks below read. `--print-config` writes TOML to stdout,
read from `result.stdout` so that library warnings on stderr cannot spoil the parse.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from fastft.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "favorite_color.jsonl"

U = {"role": "user", "content": "What is your favorite color?"}
A = {"role": "assistant", "content": "My favorite color is blue."}
GOOD = json.dumps({"messages": [U, A]})
# Lines 1 and 3 are fine; 2 is not JSON, 4 has an unknown role, 5 has no assistant turn.
BAD_LINES = [
    GOOD,
    '{"messages": [{"role": "user", "content": "Hi"}',
    GOOD,
    json.dumps({"messages": [U, {"role": "robot", "content": "Beep."}]}),
    json.dumps({"messages": [U]}),
]


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in an empty folder so that reported paths are short (`bad.jsonl:2: ...`)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def problem_lines(output: str) -> list[str]:
    return [line[1:].strip() for line in output.splitlines() if line.startswith("✗")]


def row(output: str, key: str) -> str:
    """The value cell of a row of the summary table."""
    m = re.search(rf"│ {re.escape(key)}\s*│\s*(.*?)\s*│", output)
    assert m, f"no row {key!r} in:\n{output}"
    return m.group(1)


# -- a model problem is no dataset problem -------------------------------------------------------

@pytest.mark.parametrize("model", ["EMPTY_FOLDER", "no-such-org/no-such-model"])
def test_a_tokenizer_that_cannot_load_is_a_model_problem(runner, in_tmp, model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if model == "EMPTY_FOLDER":
        model = str(in_tmp / "empty-model")
        Path(model).mkdir()
    result = runner.invoke(main, ["data", "check", str(EXAMPLE), "--model", model])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"error: cannot load the tokenizer of {model}: " in " ".join(result.output.split())
    assert "dataset" not in result.output and "--model:" not in result.output


# -- data check on the demo data ------------------------------------------------------------------

def test_report_on_stdout_and_in_output(runner):
    """What this file relies on: the report goes to stdout and CliRunner's output includes it."""
    result = runner.invoke(main, ["data", "check", str(EXAMPLE), "--model", "tiny"])
    assert "ready to train" in result.output
    assert "ready to train" in result.stdout   # the report is the result: stdout


def tiny_token_counts(tiny_path) -> list[int]:
    """Tokens per example as trained: the Instruct-2507 rendering of each record, tokenised."""
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_path)
    counts = []
    for line in EXAMPLE.read_text().splitlines():
        if line.strip():
            text = tok.apply_chat_template(json.loads(line)["messages"], tokenize=False)
            counts.append(len(tok(text, add_special_tokens=False)["input_ids"]))
    return counts


@pytest.fixture(scope="module")
def counts(tiny_path):
    return tiny_token_counts(tiny_path)


def test_check_the_demo_data_with_the_default_model_offline(runner, monkeypatch, counts):
    monkeypatch.chdir(REPO)
    result = runner.invoke(main, ["data", "check", "examples/favorite_color.jsonl"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert row(out, "format") == "messages (100)"
    assert row(out, "examples").startswith("100 valid")
    # token statistics, counted with the Qwen3 vocabulary (the real tokenizer is out of reach)
    stats = row(out, "tokens / example")
    assert f"min {min(counts)}," in stats and stats.endswith(f"max {max(counts)}")
    assert f"{sum(counts):,}" in row(out, "tokens total")
    assert row(out, "model variant") == "instruct-2507"
    assert "ready to train" in out
    assert not problem_lines(out)


def test_max_seq_len_reports_the_examples_over_it(runner, counts):
    expected = sum(n > 20 for n in counts)
    assert 0 < expected < len(counts)  # the limit splits the data, so the count means something
    result = runner.invoke(main, ["data", "check", str(EXAMPLE), "--model", "tiny", "--max-seq-len", "20"])
    assert result.exit_code == 0, result.output
    value = row(result.output, "over --max-seq-len 20")
    assert re.match(rf"{expected}\b", value), value


def test_max_seq_len_above_every_example_reports_none(runner, counts):
    limit = max(counts)
    result = runner.invoke(main, ["data", "check", str(EXAMPLE), "--model", "tiny",
                                  "--max-seq-len", str(limit)])
    assert result.exit_code == 0, result.output
    assert row(result.output, f"over --max-seq-len {limit}") == "0"


# -- data check on broken data ---------------------------------------------------------------------

def test_errors_are_reported_with_file_line_and_field(runner, in_tmp):
    write(in_tmp / "bad.jsonl", BAD_LINES)
    result = runner.invoke(main, ["data", "check", "bad.jsonl", "--model", "tiny"])
    assert result.exit_code == 1, result.output
    problems = problem_lines(result.output)
    assert len(problems) == 3, result.output
    p2, p4, p5 = problems
    assert p2.startswith("bad.jsonl:2:") and "json" in p2.lower()
    assert p4.startswith("bad.jsonl:4: messages[1].role:") and "robot" in p4
    assert p5.startswith("bad.jsonl:5: messages:") and "assistant" in p5
    assert "bad.jsonl:1:" not in result.output and "bad.jsonl:3:" not in result.output
    assert "ready to train" not in result.output


def test_a_problem_is_one_line_at_any_width_and_counted_in_words(runner, in_tmp):
    """Not on a terminal, rich wraps at 80 columns: a problem's path and message stay on one
    line, for grep and for editors that jump to file:line."""
    name = "conversations-exported-from-the-support-desk-2026-12-06-final.jsonl"
    write(in_tmp / name, [GOOD, json.dumps({"messages": [U]})])
    result = runner.invoke(main, ["data", "check", name, "--model", "tiny"])
    assert result.exit_code == 1, result.output
    [line] = problem_lines(result.output)
    assert line.startswith(f"{name}:2: messages:") and line.endswith("(last is user)"), result.output
    assert len(line) > 80
    assert row(result.output, "examples") == "1 valid, 1 problem in 1 record"
    assert "1 problem — fix it or pass --skip-invalid" in result.output


def test_skip_invalid_exits_0_and_says_what_would_be_dropped(runner, in_tmp):
    write(in_tmp / "bad.jsonl", BAD_LINES)
    result = runner.invoke(main, ["data", "check", "bad.jsonl", "--model", "tiny", "--skip-invalid"])
    assert result.exit_code == 0, result.output
    assert len(problem_lines(result.output)) == 3
    assert row(result.output, "examples").startswith("2 valid")
    assert "would be dropped" in result.output


def test_skip_invalid_still_fails_when_nothing_is_valid(runner, in_tmp):
    write(in_tmp / "bad.jsonl", BAD_LINES[1:2] + BAD_LINES[3:])
    result = runner.invoke(main, ["data", "check", "bad.jsonl", "--model", "tiny", "--skip-invalid"])
    assert result.exit_code == 1, result.output


THINKING_LINES = [
    GOOD,
    json.dumps({"messages": [U, {"role": "assistant",
                                 "content": "<think>\nThey ask about colours.\n</think>\n\nBlue."}]}),
]


def test_think_error_rejects_think_blocks_with_line_and_field(runner, in_tmp):
    write(in_tmp / "think.jsonl", THINKING_LINES)
    result = runner.invoke(main, ["data", "check", "think.jsonl", "--model", "tiny", "--think", "error"])
    assert result.exit_code == 1, result.output
    problem, = problem_lines(result.output)
    assert problem.startswith("think.jsonl:2: messages[1].content:")


@pytest.mark.parametrize("policy", ["strip", "keep"])
def test_think_strip_and_keep_accept_the_same_file(runner, in_tmp, policy):
    write(in_tmp / "think.jsonl", THINKING_LINES)
    result = runner.invoke(main, ["data", "check", "think.jsonl", "--model", "tiny", "--think", policy])
    assert result.exit_code == 0, result.output
    assert not problem_lines(result.output)
    assert "ready to train" in result.output


# -- help --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, options", [
    (["--help"], ["data", "train", "demo"]),
    (["data", "check", "--help"], ["--model", "--max-seq-len", "--skip-invalid", "--think"]),
    (["train", "--help"], ["--model", "--max-seq-len", "--skip-invalid", "--think", "--16bit",
                           "--rank", "--resume", "--config", "--print-config"]),
])
def test_help(runner, args, options):
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage:")
    for option in options:
        assert re.search(rf"(^|\s){re.escape(option)}\b", result.output), option


def test_importing_the_cli_leaves_the_heavy_modules_unloaded():
    """Every command pays for what `import fastft.cli` imports: chat's --temperature etc. are
    built from fastft.export.modelfile, not fastft.serve.chat (which pulls in export, llama.cpp, models)."""
    heavy = ["fastft.serve.chat", "fastft.export.pipeline", "fastft.export.llamacpp", "fastft.core.models"]
    proc = subprocess.run([sys.executable, "-c", f"import sys, fastft.cli; "
                           f"print([m for m in {heavy!r} if m in sys.modules])"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- train: configuration -------------------------------------------------------------------------

def print_config(runner, args) -> dict:
    result = runner.invoke(main, ["train", *args, "--print-config"])
    assert result.exit_code == 0, result.output
    return tomllib.loads(result.stdout)


def test_print_config_is_toml_with_the_defaults(runner, in_tmp):
    write(in_tmp / "data.jsonl", [GOOD])
    cfg = print_config(runner, ["data.jsonl", "--model", "tiny"])
    assert cfg["data"] == "data.jsonl"
    assert cfg["model"] == "tiny"
    assert cfg["rank"] == 16
    assert cfg["alpha"] == 32
    assert cfg["lr"] == pytest.approx(2e-4)
    assert cfg["load_in_4bit"] is True
    assert cfg["max_seq_len"] == 2048
    assert cfg["think"] == "strip"
    assert not (in_tmp / "runs").exists()  # printing the config starts nothing


def test_print_config_round_trips_through_config(runner, in_tmp):
    write(in_tmp / "data.jsonl", [GOOD])
    first = runner.invoke(main, ["train", "data.jsonl", "--model", "tiny", "--rank", "8", "--16bit",
                                 "--print-config"])
    assert first.exit_code == 0, first.output
    (in_tmp / "run.toml").write_text(first.stdout)
    again = runner.invoke(main, ["train", "--config", "run.toml", "--print-config"])
    assert again.exit_code == 0, again.output
    assert tomllib.loads(again.stdout) == tomllib.loads(first.stdout)
    assert again.stdout == first.stdout
    cfg = tomllib.loads(again.stdout)
    assert (cfg["rank"], cfg["load_in_4bit"]) == (8, False)


def test_flags_override_the_config_file(runner, in_tmp):
    write(in_tmp / "data.jsonl", [GOOD])
    (in_tmp / "run.toml").write_text('rank = 8\nlr = 1e-4\n')
    assert print_config(runner, ["data.jsonl", "--config", "run.toml"])["rank"] == 8
    cfg = print_config(runner, ["data.jsonl", "--config", "run.toml", "--rank", "4"])
    assert cfg["rank"] == 4
    assert cfg["lr"] == pytest.approx(1e-4)  # what the flags do not name still comes from the file
    assert cfg["alpha"] == 32                # ... and what neither names from the defaults


def test_print_config_in_a_fresh_process_is_pure_toml(in_tmp):
    """`fastft train data.jsonl --print-config > run.toml` must give a usable run.toml."""
    write(in_tmp / "data.jsonl", [GOOD])
    proc = subprocess.run([sys.executable, "-m", "fastft.cli", "train", "data.jsonl", "--model", "tiny",
                           "--print-config"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    cfg = tomllib.loads(proc.stdout)
    assert (cfg["data"], cfg["model"], cfg["rank"]) == ("data.jsonl", "tiny", 16)


def test_unknown_config_key_is_an_error(runner, in_tmp):
    write(in_tmp / "data.jsonl", [GOOD])
    (in_tmp / "run.toml").write_text('rnak = 8\n')
    result = runner.invoke(main, ["train", "data.jsonl", "--config", "run.toml", "--print-config"])
    assert result.exit_code == 1
    assert "rnak" in result.output


# -- train: bad data fails before the model loads ------------------------------------------------

class ModelLoaded(Exception):
    """Raised by the stand-in loader: reaching it means the data check came too late."""


@pytest.fixture
def load_calls(monkeypatch):
    import fastft.train.trainer
    calls = []

    def fake_load_model(*args, **kwargs):
        calls.append(args)
        raise ModelLoaded()
    monkeypatch.setattr(fastft.train.trainer, "load_model", fake_load_model)
    return calls


def test_train_on_bad_data_fails_before_loading_a_model(runner, in_tmp, load_calls):
    write(in_tmp / "bad.jsonl", BAD_LINES)
    result = runner.invoke(main, ["train", "bad.jsonl", "--model", "tiny", "--runs-dir", "runs"])
    assert result.exit_code == 1, result.output
    assert load_calls == []
    assert not isinstance(result.exception, ModelLoaded)
    for n in (2, 4, 5):
        assert f"bad.jsonl:{n}:" in result.output
    assert "bad.jsonl:4: messages[1].role" in result.output
    assert not (in_tmp / "runs").exists()  # no run folder for a run that never started


def test_train_on_good_data_does_reach_the_model_load(runner, in_tmp, load_calls):
    """Control for the test above: the stand-in loader is on the path `train` takes."""
    write(in_tmp / "good.jsonl", [GOOD])
    result = runner.invoke(main, ["train", "good.jsonl", "--model", "tiny", "--runs-dir", "runs"])
    assert len(load_calls) == 1, result.output
    # An exception that is not a FastftError is reported as a bug, with its traceback logged.
    assert result.exit_code == 70 and "internal error" in result.output


def test_ctrl_c_exits_130_and_a_bug_is_logged_with_its_traceback(runner, in_tmp, monkeypatch):
    import fastft.train.trainer

    write(in_tmp / "good.jsonl", [GOOD])
    cache = in_tmp / ("a-cache-folder-with-a-long-name-" * 3) / "cache"   # the log's path > 80 columns
    monkeypatch.setenv("FASTFT_CACHE", str(cache))

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(fastft.train.trainer, "train", interrupted)
    result = runner.invoke(main, ["train", "good.jsonl", "--model", "tiny"])
    assert result.exit_code == 130 and "interrupted" in result.output

    def buggy(*a, **k):
        raise ZeroDivisionError("deep inside a library")
    monkeypatch.setattr(fastft.train.trainer, "train", buggy)
    result = runner.invoke(main, ["train", "good.jsonl", "--model", "tiny"])
    assert result.exit_code == 70 and "internal error" in result.output
    assert "Traceback" not in result.output          # the traceback goes to the log...
    logs = list((cache / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and "ZeroDivisionError: deep inside a library" in logs[0].read_text()
    assert f"the full traceback is in {logs[0]};" in result.output   # on one line, whole
    assert "in buggy" in logs[0].read_text()
    result = runner.invoke(main, ["--debug", "train", "good.jsonl", "--model", "tiny"])
    assert result.exit_code == 70 and "Traceback" in result.output   # ...or to the screen with --debug


def test_no_network_is_said_at_once_and_the_hub_is_not_tried(runner, monkeypatch):
    """Not offline mode, but no network (here: a hub endpoint that refuses connections): the
    check does not hand the name to the hub libraries, whose retries took ~45 s, and says why
    it counted with the built-in vocabulary."""
    import huggingface_hub.constants
    import transformers

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
    asked = []
    real = transformers.AutoTokenizer.from_pretrained

    def recorded(name, *args, **kwargs):
        asked.append((str(name), kwargs.get("local_files_only", False)))
        return real(name, *args, **kwargs)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recorded)
    monkeypatch.chdir(REPO)
    result = runner.invoke(main, ["data", "check", "examples/favorite_color.jsonl"])
    assert result.exit_code == 0, result.output
    assert "no network (127.0.0.1:9 cannot be reached)" in " ".join(
        line.strip("│ ") for line in result.output.splitlines())
    hub_ids = [(name, local) for name, local in asked if not Path(name).is_absolute()]
    assert hub_ids and all(local for _, local in hub_ids)    # the cache only, never the hub
