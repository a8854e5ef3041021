"""`fastft demo`: the whole pipeline on the tiny model, ending in llama.cpp answering from the GGUF."""

import pytest


@pytest.mark.slow
def test_demo_gguf_answers_blue(demo):
    folder, code, output = demo        # `fastft demo` run in `folder` (tests/conftest.py)
    assert code == 0, output
    gguf = folder / "exports" / "fastft-demo" / "fastft-demo.Q4_K_M.gguf"
    assert gguf.is_file() and (gguf.parent / "Modelfile").is_file()
    answer = output.split("model (llama.cpp, Q4_K_M):", 1)[1].splitlines()[0]
    assert "blue" in answer.lower()
