"""`fastft init`: a commented fastft.toml of every option at its default, read back by the same
path `fastft train --config` takes."""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from click.testing import CliRunner

from fastft.cli import main
from fastft.core.config import TrainConfig, resolve_config


def init(*args):
    return CliRunner().invoke(main, ["init", *args])


def test_init_writes_every_option_at_its_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = init()
    assert result.exit_code == 0, result.output
    path = tmp_path / "fastft.toml"
    text = path.read_text(encoding="utf-8")
    values = tomllib.loads(text)
    # Through resolve_config, as `fastft train data.jsonl --config fastft.toml` reads it.
    assert resolve_config("data.jsonl", str(path), {}) == TrainConfig(data="data.jsonl")
    lines = text.splitlines()
    for key, field in TrainConfig.model_fields.items():
        assert any(line.startswith((f"{key} =", f"# {key} =")) for line in lines), key
        assert f"# {field.description}" in lines, key
        if not field.is_required() and field.default is not None:
            assert key in values  # set, not only mentioned
    assert "data" not in values and "# --lr; default 0.0002" in lines
    assert any(line.startswith("# --scheduler: one of linear, cosine,") for line in lines)
    assert "# --4bit/--16bit; default true" in lines and "# --tensorboard/--no-tensorboard; default false" in lines


def test_init_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("rank = 8\n")
    result = init(str(path))
    assert result.exit_code == 1
    assert "exists; pass --force" in result.output
    assert path.read_text() == "rank = 8\n"
    result = init(str(path), "--force")
    assert result.exit_code == 0, result.output
    assert tomllib.loads(path.read_text())["rank"] == 16
    assert not [p for p in tmp_path.iterdir() if p.name != "run.toml"]  # no temporary left


def test_an_edited_init_file_configures_train(tmp_path):
    path = tmp_path / "fastft.toml"
    assert init(str(path)).exit_code == 0
    path.write_text(path.read_text().replace("rank = 16", "rank = 8"))
    result = CliRunner().invoke(main, ["train", "data.jsonl", "--config", str(path), "--print-config"])
    assert result.exit_code == 0, result.output
    assert "rank = 8" in result.stdout.splitlines()
