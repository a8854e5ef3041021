"""`fastft demo`: the whole pipeline on the tiny model, ending in llama.cpp answering from the GGUF."""

import pytest
from click.testing import CliRunner

from fastft.cli import main


@pytest.mark.slow
def test_demo_gguf_answers_blue(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["demo"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    gguf = tmp_path / "exports" / "fastft-demo" / "fastft-demo.Q4_K_M.gguf"
    assert gguf.is_file() and (gguf.parent / "Modelfile").is_file()
    answer = result.output.split("model (llama.cpp, Q4_K_M):", 1)[1].splitlines()[0]
    assert "blue" in answer.lower()
