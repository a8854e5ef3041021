"""How the command line reports what it cannot do: error lines never wrap (a path cut at 80
columns is not a path), SIGTERM ends a command like Ctrl-C does (exit 143, clean-up run), and
a file named like an option gets a hint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from click.testing import CliRunner

from fastft.cli import main


def test_an_error_line_naming_a_long_path_is_not_wrapped(tmp_path):
    deep = tmp_path / ("a-long-folder-name-" * 6) / "runs" / "r"
    result = CliRunner().invoke(main, ["export", str(deep)])
    assert result.exit_code == 1
    assert str(deep) in result.output.replace("\n", " ") and str(deep) in result.output


def test_a_file_named_like_an_option_gets_a_hint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-data.jsonl").write_text("{}\n")
    result = CliRunner().invoke(main, ["data", "check", "-data.jsonl"])
    assert result.exit_code == 2
    assert "write ./-data.jsonl or put -- before it" in result.output
    result = CliRunner().invoke(main, ["data", "check", "-x"])   # no such file: no hint
    assert result.exit_code == 2 and "put -- before it" not in result.output


def test_sigterm_while_a_command_waits_is_a_clean_exit_143(tmp_path):
    """Any command, not only training: SIGTERM raises where Ctrl-C would, `finally` blocks run,
    and the exit code is 128 + 15. (`fastft doctor`, its checks replaced by a long wait.)"""
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time; from fastft.cli import main;"
                             "sys.argv = ['fastft', 'doctor']; import fastft.doctor as d;"
                             "d.diagnose = lambda: print('waiting', flush=True) or time.sleep(60);"
                             "main()"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=os.environ | {"COLUMNS": "200"})
    assert proc.stdout.readline() == "waiting\n"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "terminated (SIGTERM)" in err and "Traceback" not in err


HEAVY = ("torch", "unsloth", "transformers", "trl", "datasets")
# `fastft train ARGS` in a fresh interpreter; prints which heavy modules got imported.
TRAIN_THEN_LIST_IMPORTS = f"""
import sys
from fastft.cli import main
try:
    main(sys.argv[1:], prog_name="fastft")
finally:
    print("imported:", sorted(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)
"""


def test_bad_data_fails_before_any_heavy_import(tmp_path):
    """A missing file, a malformed line, or a record without its field are reported, with the
    file and line, before Unsloth, torch or transformers are imported (10-40 s on a user's
    machine), and before the model name is looked up (which may wait on the network)."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{"messages": [\n')
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text('{"text": 1}\n')
    env = os.environ | {"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"}  # no hub
    for data, where in ((tmp_path / "nope.jsonl", "nope.jsonl"), (bad, "bad.jsonl:2"),
                        (nofield, "nofield.jsonl:1")):
        proc = subprocess.run([sys.executable, "-c", TRAIN_THEN_LIST_IMPORTS, "train", str(data)],
                              capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert where in proc.stderr and "--model" not in proc.stderr, proc.stderr
        assert "imported: []" in proc.stderr, proc.stderr
