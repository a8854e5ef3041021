"""StepMetrics: one record per Trainer log, over the steps since the previous one, without
reading anything off the GPU between logs."""

import json
from types import SimpleNamespace

import pytest
from transformers import TrainerControl

from fastft.train import metrics
from fastft.train.metrics import StepMetrics, mean_loss


def drive(m: StepMetrics, steps: int, every: int, tokens_per_step: int, clock: list[float],
          max_steps: int | None = None):
    """Run `steps` optimizer steps through the callback, logging every `every` steps (and at
    the last step, if the callback asks for it), each step taking one second."""
    state = SimpleNamespace(global_step=0, num_input_tokens_seen=0, max_steps=max_steps or steps)
    for _ in range(steps):
        control = TrainerControl()
        m.on_step_begin(None, state, control)
        clock[0] += 1.0
        state.global_step += 1
        state.num_input_tokens_seen += tokens_per_step
        m.on_step_end(None, state, control)
        if state.global_step % every == 0 or control.should_log:
            m.on_log(None, state, control, logs={"loss": 10.0 - state.global_step,
                                                 "learning_rate": 1e-4, "grad_norm": 0.5})
    return state


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(metrics.time, "perf_counter", lambda: now[0])
    return now


def test_one_record_per_log_covers_the_steps_since_the_last(tmp_path, clock):
    m = StepMetrics(tmp_path / "metrics.jsonl")
    drive(m, 25, every=10, tokens_per_step=100, clock=clock)
    # 10, 20, and the last step (25), which the callback asks the Trainer to log
    assert [(r.step, r.steps, r.tokens) for r in m.records] == [(10, 10, 1000), (20, 10, 1000),
                                                                (25, 5, 500)]
    assert all(r.tokens_per_s == pytest.approx(100.0) for r in m.records)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["steps"] for x in lines] == [10, 10, 5]


def test_summary_leaves_out_every_interval_holding_a_warm_up_step(clock):
    m = StepMetrics()
    drive(m, 30, every=10, tokens_per_step=100, clock=clock)
    m.records[0].seconds = 50.0          # compilation in the first interval
    s = m.summary(skip=2)
    assert s.timed_steps == 20 and s.tokens_per_s == pytest.approx(100.0)
    assert s.steps == 30 and s.last_loss == pytest.approx(-20.0)


def test_summary_per_step_records_skip_exactly_the_first_steps(clock):
    m = StepMetrics()
    drive(m, 5, every=1, tokens_per_step=100, clock=clock)
    assert m.summary(skip=2).timed_steps == 3


def test_mean_loss_weights_each_record_by_its_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 10, "loss": 2.0, "steps": 10}) + "\n"
                    + json.dumps({"step": 12, "loss": 8.0, "steps": 2}) + "\n"
                    + json.dumps({"step": 13, "loss": 5.0}) + "\n")   # schema before intervals
    assert mean_loss(path) == pytest.approx((20 + 16 + 5) / 13)
