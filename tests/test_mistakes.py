"""User and environment mistakes are one line and exit 1, never exit 70 ('a bug in fastft'),
and leave nothing created or half-written. Each test runs the real CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from rich.console import Console

import fastft.cli
from conftest import EXAMPLE
from fastft.cli import main


@pytest.fixture
def runner(monkeypatch):
    # The error line goes to a rich console on stderr: wide, so no line is wrapped.
    monkeypatch.setattr(fastft.cli, "console", Console(stderr=True, width=10_000))
    return CliRunner()


def train_args(tmp_path, *extra) -> list[str]:
    return ["train", str(EXAMPLE), "--model", "tiny", "--runs-dir", str(tmp_path / "runs"),
            "--max-seq-len", "256", "--lr", "2e-3", *extra]


def error_line(result) -> str:
    """The one error line of a run that must exit 1."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("scheduler", ["cosine_with_min_lr", "warmup_stable_decay"])
def test_every_listed_scheduler_trains(runner, tmp_path, scheduler):
    result = runner.invoke(main, train_args(tmp_path, "--scheduler", scheduler, "--max-steps", "2",
                                            "--name", "s", "--json"))
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "runs" / "s" / "fastft.json").read_text())
    assert record["status"] == "done" and record["config"]["scheduler"] == scheduler


@pytest.mark.parametrize("flag, value, message", [
    ("--seed", "-1", "seed (--seed): Input should be greater than or equal to 0, got -1"),
    ("--seed", str(2**32), "seed (--seed): Input should be less than or equal to 4294967295"),
    ("--max-steps", str(2**40), "max_steps (--max-steps): Input should be less than or equal to"),
])
def test_out_of_range_numbers_name_their_option(runner, tmp_path, flag, value, message):
    result = runner.invoke(main, train_args(tmp_path, flag, value))
    assert message in error_line(result)
    assert not (tmp_path / "runs").exists()
