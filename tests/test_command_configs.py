"""`fastft export`, `chat` and `eval` are configured like train: their options are generated
from ExportConfig, ChatConfig and EvalConfig, `fastft init` writes a TOML section of each, and
`--config FILE` reads it, flags on top. A flag and a TOML value fail the same way."""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import pytest
from click.testing import CliRunner

from fastft.cli import SECTIONS, main
from fastft.core.config import ConfigError, annotated_toml, extra, resolve_section
from fastft.export.config import ExportConfig
from fastft.export.modelfile import SAMPLING_KEYS
from fastft.serve.config import ChatConfig, EvalConfig

CONFIGS = [("export", ExportConfig), ("chat", ChatConfig), ("eval", EvalConfig)]


def options(command: str) -> dict:
    """The click options of `fastft COMMAND`, by destination name."""
    return {p.name: p for p in main.commands[command].params}


@pytest.mark.parametrize("command, cls", CONFIGS)
def test_every_field_is_an_option_with_its_help_and_default(command, cls):
    params = options(command)
    text = " ".join(CliRunner().invoke(main, [command, "--help"], terminal_width=1000).output.split())
    for key, field in cls.model_fields.items():
        param = params[key]
        if "argument" in extra(key, cls):
            assert param.param_type_name == "argument", key
            continue
        assert param.help.startswith(field.description), key
        assert param.default is None        # absent: the config's default (or the TOML's) applies
        assert param.opts[-1] in text and field.description in text, key
        if field.default is not None and "[default:" not in field.description:
            default = (",".join(field.default) if isinstance(field.default, tuple) else
                       ("on" if field.default else "off") if isinstance(field.default, bool) else
                       str(field.default))
            assert f"[default: {default}" in param.help, key


def test_the_old_spellings_stay():
    """Every option name these commands had before they were generated."""
    spellings = {
        "export": ["--gguf", "--merged", "--out", "--name", "--system", "--force", "--no-check",
                   "--create", "-v", "--verbose", "--json"],
        "chat": ["-p", "--prompt", "--system", "--max-new-tokens", "--temperature", "--top-p",
                 "--top-k", "--min-p", "--repeat-penalty", "--seed", "--tools", "-v", "--verbose"],
        "eval": ["--samples", "--max-new-tokens", "--json", "-v", "--verbose"],
    }
    for command, names in spellings.items():
        given = {o for p in main.commands[command].params for o in [*p.opts, *p.secondary_opts]}
        assert set(names) <= given, command
    assert set(SAMPLING_KEYS) <= set(ChatConfig.model_fields)


def test_init_writes_a_section_per_command_at_its_defaults(tmp_path):
    path = tmp_path / "fastft.toml"
    assert CliRunner().invoke(main, ["init", str(path)]).exit_code == 0
    values = tomllib.loads(path.read_text())
    assert set(SECTIONS) <= set(values)
    assert resolve_section(ExportConfig, str(path), {}) == ExportConfig()
    assert resolve_section(ChatConfig, str(path), {}) == ChatConfig()
    with pytest.raises(ConfigError, match=r"give RUN and DATA \(or `run = \.\.\.` in the \[eval\]"):
        resolve_section(EvalConfig, str(path), {})
    assert values["export"]["gguf"] == ["q4_k_m"] and values["chat"]["max_new_tokens"] == 512
    lines = path.read_text().splitlines()
    assert "# --check/--no-check; default true" in lines
    assert "# or as RUN on the command line; default \"runs/latest\"" in lines
    assert "# required: here, or as DATA on the command line (fastft eval RUN DATA)" in lines
    assert annotated_toml(SECTIONS).endswith(path.read_text()[-200:])


@pytest.fixture
def exports(monkeypatch):
    """The ExportConfig each `fastft export` would export with (nothing is exported)."""
    import fastft.export.pipeline as pipeline

    seen = []
    monkeypatch.setattr(pipeline, "export_run", lambda cfg, console, verbose, timeline=None: seen.append(cfg) or stop())
    return seen


def stop():
    raise ConfigError("stopped by the test")


def test_export_reads_its_section_and_flags_override_it(tmp_path, exports):
    path = tmp_path / "f.toml"
    path.write_text('rank = 8\n\n[export]\ngguf = []\nmerged = true\nname = "m"\ncheck = false\n'
                    '[chat]\ntemperature = 0\n')
    result = CliRunner().invoke(main, ["export", "runs/r", "--config", str(path), "--name", "n"])
    assert "stopped by the test" in result.output
    assert exports == [ExportConfig(run="runs/r", gguf=(), merged=True, name="n", check=False)]
    CliRunner().invoke(main, ["export", "--gguf", "q8_0", "--gguf", "q4_k_m", "--no-check"])
    assert exports[1] == ExportConfig(gguf=("q8_0", "q4_k_m"), check=False)


@pytest.mark.parametrize("command, flag, toml, message", [
    ("chat", "--max-new-tokens 0", "max_new_tokens = 0",
     "max_new_tokens (--max-new-tokens): Input should be greater than or equal to 1, got 0"),
    ("chat", "--temperature -1", "temperature = -1", "temperature (--temperature): "),
    ("eval", "--samples -2", "samples = -2", "samples (--samples): "),
    ("export", "--merged --gguf q4_k_m", "merged = true\ngguf = 'q4_k_m'", None),
])
def test_a_flag_and_a_toml_section_fail_the_same_way(command, flag, toml, message, tmp_path,
                                                     exports):
    args = [command, *(["r", "d"] if command == "eval" else [])]
    by_flag = CliRunner().invoke(main, [*args, *flag.split()])
    (tmp_path / "f.toml").write_text(f"[{command}]\n{toml}\n")
    by_toml = CliRunner().invoke(main, [*args, "--config", str(tmp_path / "f.toml")])
    assert by_flag.exit_code == by_toml.exit_code == 1
    assert by_flag.output == by_toml.output
    assert (message or "stopped by the test") in by_flag.output


@pytest.mark.parametrize("command, toml, message", [
    ("export", 'merged = "yes"', 'merged: expected true or false, got a string ("yes")'),
    ("chat", "max_new_tokens = 1.5", "max_new_tokens: expected an integer, got a float (1.5)"),
    ("eval", 'samples = true', "samples: expected an integer, got a boolean (true)"),
    ("export", "gguf = [1]", "gguf: expected an array of strings, got an array ([1])"),
])
def test_a_section_value_of_the_wrong_type_names_its_section(command, toml, message, tmp_path):
    (tmp_path / "f.toml").write_text(f"[{command}]\n{toml}\n")
    result = CliRunner().invoke(main, [command, "r", "d"][:3 if command == "eval" else 2]
                                + ["--config", str(tmp_path / "f.toml")])
    assert result.exit_code == 1
    assert f"f.toml:2: [{command}] {message}" in " ".join(result.output.split())


def test_a_section_given_as_a_value_is_named_with_its_line(tmp_path):
    (tmp_path / "f.toml").write_text("rank = 8\nexport = true\n")
    result = CliRunner().invoke(main, ["export", "r", "--config", str(tmp_path / "f.toml")])
    assert result.exit_code == 1
    assert (f"{tmp_path / 'f.toml'}:2: export: expected a table ([export]) of export options"
            in " ".join(result.output.split()))


def test_an_unknown_key_in_a_section_is_named_with_its_line(tmp_path):
    (tmp_path / "f.toml").write_text("rank = 8\n[chat]\ntemprature = 0.5\n")
    result = CliRunner().invoke(main, ["chat", "--config", str(tmp_path / "f.toml")])
    assert result.exit_code == 1
    assert (f"{tmp_path / 'f.toml'}:3: [chat] temprature: unknown option (did you mean "
            f"temperature?)") in result.output


def test_train_ignores_the_other_commands_sections(tmp_path):
    (tmp_path / "f.toml").write_text("rank = 8\n[export]\nmerged = true\n[eval]\nsamples = 1\n")
    result = CliRunner().invoke(main, ["train", "d.jsonl", "--config", str(tmp_path / "f.toml"),
                                       "--print-config"])
    assert result.exit_code == 0, result.output
    assert "rank = 8" in result.output.splitlines()
