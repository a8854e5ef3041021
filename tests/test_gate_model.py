"""The retention gate's 16-bit side measured in the direct export's child (fastft.export.
gate_model), on the tiny model (CPU): the same numbers as the model the export loaded itself
before, and the export's own load where the child cannot measure it."""

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fastft.export import direct, gate_model, pipeline, retention
from fastft.export.pipeline import ExportOptions, export_run


def _export(run_dir: Path, out: Path, monkeypatch, quants=("q8_0",)):
    """export_run, with the Reference it assembles from the child's numbers recorded."""
    from rich.console import Console

    made = []
    assembled = retention.assembled
    monkeypatch.setattr(retention, "assembled", lambda *a: made.append(assembled(*a)) or made[-1])
    console = Console(file=(printed := io.StringIO()), width=200)
    res = export_run(ExportOptions(run=str(run_dir), gguf=quants, out=str(out), name="tiny",
                                   check=False), console)
    return res, made, printed.getvalue()


def _loaded_here(color_run):
    """The gate's Reference as the export measured it before: from the model it loaded."""
    from fastft.core.models import load_plain_with_adapter

    run = pipeline.read_run(color_run.run_dir)
    model, tokenizer = load_plain_with_adapter(run.adapter_dir, run.model_path)
    return retention.reference(model, tokenizer, run, None)


def _same_as_loaded_here(color_run, tmp_path, monkeypatch, atol: float) -> None:
    expected = _loaded_here(color_run)
    loads = []
    monkeypatch.setattr(pipeline, "load_plain_with_adapter", lambda *a: loads.append(a))
    res, made, _ = _export(color_run.run_dir, tmp_path / "out", monkeypatch)
    assert not loads, "the export loaded the 16-bit model itself"
    [got] = made
    assert got.held.source == expected.held.source
    assert [e.tokens.input_ids for e in got.held.encoded] == \
        [e.tokens.input_ids for e in expected.held.encoded]
    assert got.positions == expected.positions and got.targets == expected.targets
    assert got.tokens == expected.tokens
    for a, b in zip(got.top_ids, expected.top_ids):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(got.top_logp, expected.top_logp):
        np.testing.assert_allclose(a, b, rtol=0, atol=atol)
    assert got.base.loss == pytest.approx(expected.base.loss, abs=atol)
    assert got.adapter.loss == pytest.approx(expected.adapter.loss, abs=atol)
    assert res.retention.base.loss == got.base.loss and res.retention.files[0].passed


@pytest.mark.slow
def test_the_direct_child_measures_the_gate_as_the_loaded_model_does(color_run, tmp_path,
                                                                       monkeypatch):
    _same_as_loaded_here(color_run, tmp_path, monkeypatch, atol=1e-5)


@pytest.mark.gpu
def test_on_the_gpu_the_direct_child_measures_the_gate_as_the_loaded_model_does(
        color_run, tmp_path, monkeypatch):
    """The child keeps the base it merges on the GPU and builds the model there; the export's
    own load is on the GPU too (device_map "sequential")."""
    import torch

    assert torch.cuda.is_available()
    _same_as_loaded_here(color_run, tmp_path, monkeypatch, atol=1e-3)


def _fake_child(result) -> SimpleNamespace:
    return SimpleNamespace(result=result)


def test_the_export_loads_the_gate_model_itself_where_the_child_did_not_measure(monkeypatch):
    """The child's failure to measure (here: it ran out of GPU memory) is said in one line and
    the export's process measures the gate's side from its own load, as before."""
    from rich.console import Console

    loaded = []
    monkeypatch.setattr(pipeline, "_load_and_merge",
                        lambda plan, console, merge=True: loaded.append(merge))
    plan = SimpleNamespace(reference=None)
    console = Console(file=(printed := io.StringIO()), width=200)
    result = direct.ChildResult(no_reference="the GPU ran out of memory while quantizing")
    pipeline._reference_from_child(plan, console, _fake_child(result), held=None)
    assert loaded == [False]
    assert "did not measure it (the GPU ran out of memory while quantizing)" in printed.getvalue()


def test_a_failure_to_measure_in_the_child_is_reported_not_raised(monkeypatch, tmp_path):
    """The files are written by then: a failure building the gate's model becomes the reason
    the caller reads, and the kept tensors are let go."""
    def broken(*a):
        raise ValueError("the base's checkpoint does not fill Qwen3ForCausalLM")

    monkeypatch.setattr(gate_model, "request", lambda: {"pad_id": 0, "examples": []})
    monkeypatch.setattr(gate_model, "build", broken)
    source = SimpleNamespace(kept={"w": object()}, device="cpu", base=tmp_path, parts=[])
    result = direct.ChildResult()
    direct._measure_for_gate(SimpleNamespace(adapter=tmp_path), source, result)
    assert result.reference is None and source.kept is None
    assert result.no_reference == "ValueError: the base's checkpoint does not fill Qwen3ForCausalLM"


def test_a_child_asked_for_no_measurement_does_not_wait_for_one(monkeypatch, tmp_path):
    """A child whose caller sent nothing (it closed the pipe) measures nothing, waits for
    nothing, and reports no failure."""
    import os

    read, write = os.pipe()
    os.close(write)
    monkeypatch.setenv(gate_model.REQUEST_FD, str(read))
    source = SimpleNamespace(kept={}, device="cpu", base=tmp_path, parts=[])
    result = direct.ChildResult()
    direct._measure_for_gate(SimpleNamespace(adapter=tmp_path), source, result)
    assert result.reference is None and result.no_reference is None


def test_measured_numbers_cross_the_process_boundary_exactly():
    rng = np.random.default_rng(0)
    m = retention.Measured(1.5, 0.25, 3, [[0, 1, 2]], [[5, 6, 7]],
                           [rng.integers(0, 1000, (3, retention.TOP_K))],
                           [rng.standard_normal((3, retention.TOP_K)).astype(np.float32)], 0.1)
    import json

    back = retention.Measured.from_dict(json.loads(json.dumps(m.to_dict())))
    assert back.top_ids[0].dtype == np.int64 and back.top_logp[0].dtype == np.float32
    np.testing.assert_array_equal(back.top_ids[0], m.top_ids[0])
    np.testing.assert_array_equal(back.top_logp[0], m.top_logp[0])
    assert (back.base, back.adapter, back.tokens, back.positions) == (1.5, 0.25, 3, [[0, 1, 2]])
