"""Early exit (l2s_gym.runner): the runner stops where the trace-based evaluation stops."""

from __future__ import annotations

import math

import pytest
import torch
from runner_cases import (
    CASES,
    _custom,
    _meta_lean,
    _toy,
    build_case,
    count_policy_calls,
    random_policy,
    uncount,
)
from torch import Tensor

from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.rules import ReadoutRule
from l2s_gym.runner import StopRunner, run_full_depth
from l2s_gym.task import Batch, Task

RULES = [
    ReadoutRule("threshold", 0.5),
    ReadoutRule("threshold", 0.3),
    ReadoutRule("quantile", 0.5),
    ReadoutRule("quantile", 0.8),
]


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> tuple[Task, LayeredPredictor, Batch, StopPolicy]:
    return build_case(request.param)


def reference(
    task: Task, predictor: LayeredPredictor, policy: StopPolicy, batch: Batch, rule: ReadoutRule
) -> tuple[Tensor, Tensor, Tensor]:
    """Stop layers, predictions and stop logits read from a full trace (evaluation's way)."""
    with torch.no_grad():
        trace = predictor.trace(batch, task, keep_predictions=True)
        logits = policy.trace_logits(trace.features)
    stop = rule.stop(logits)
    preds = torch.stack(trace.predictions, dim=1)  # type: ignore[arg-type]
    return stop, preds[torch.arange(len(batch)), stop], logits


@pytest.mark.parametrize("size", [1, 40])
def test_runner_stops_where_the_trace_says(case, size: int) -> None:
    task, predictor, batch, policy = case
    batch = batch.select(slice(0, size))
    seen_layers: set[int] = set()
    for rule in RULES:
        stop, expected, logits = reference(task, predictor, policy, batch, rule)
        out = StopRunner(predictor, policy, rule)(batch, return_probabilities=True)
        assert out.stop.dtype == torch.long and torch.equal(out.stop, stop), rule
        if size == 1:
            # No compaction at batch 1: the same calls on the same rows, bit for bit.
            assert torch.equal(out.predictions, expected)
        else:
            # Layers after a compaction run on fewer rows, and BLAS may pick another kernel
            # for another row count (a different summation order): equal up to rounding.
            torch.testing.assert_close(out.predictions, expected, rtol=1e-5, atol=1e-5)
        assert out.avg_layers == pytest.approx(float((stop + 1).double().mean()))
        # pi_t at every layer an instance reached, 1 at the last, NaN beyond its stop.
        probs = out.stop_probabilities
        T = predictor.num_layers
        reached = torch.arange(T).unsqueeze(0) <= stop.unsqueeze(1)
        assert torch.equal(torch.isnan(probs), ~reached)
        pi = torch.sigmoid(logits)
        pi[:, -1] = 1.0
        torch.testing.assert_close(probs[reached], pi[reached], rtol=1e-5, atol=1e-6)
        seen_layers |= set(stop.tolist())
    if size > 1:
        assert len(seen_layers) >= 3, f"stops not spread out: {sorted(seen_layers)}"


def test_runner_computes_only_the_layers_it_keeps() -> None:
    task, predictor = _custom()
    predictor.eval()
    batch = task.eval_set("test")
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    policy = random_policy(predictor, trace.features, seed=3)
    predictor.calls.clear()
    out = StopRunner(predictor, policy)(batch)
    # Layer t ran on exactly the instances that had not stopped before it.
    T = predictor.num_layers
    expected = [int((out.stop >= t).sum()) for t in range(T)]
    expected = [n for n in expected if n > 0]
    assert predictor.calls == expected
    assert expected[0] == len(batch) and sum(expected) == int(out.layers.sum())
    assert sum(expected) < T * len(batch)


def test_runner_reads_out_only_the_instances_that_stop() -> None:
    task, predictor = _meta_lean()
    predictor.eval()
    assert not predictor.features_use_prediction
    batch = task.eval_set("test")
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    policy = random_policy(predictor, trace.features, seed=2)
    rows: list[int] = []
    readout = predictor.readout

    def counting(t, state, inputs):  # noqa: ANN001, ANN202
        out = readout(t, state, inputs)
        rows.append(out.shape[0])
        return out

    predictor.readout = counting  # type: ignore[method-assign]
    try:
        out = StopRunner(predictor, policy)(batch)
    finally:
        del predictor.readout
    # One read-out per instance in all: the rows that stopped at each layer, when they did.
    assert sum(rows) == len(batch)
    assert len(rows) == len(set(out.stop.tolist()))


def test_full_depth_baseline_is_the_last_read_out(case) -> None:
    task, predictor, batch, _ = case
    with torch.no_grad():
        trace = predictor.trace(batch, task, keep_predictions=True)
    assert torch.equal(run_full_depth(predictor, batch), trace.predictions[-1])  # type: ignore[index]


def test_sample_rule_draws_from_q_phi() -> None:
    task, predictor = _toy()
    batch = task.eval_set("test")
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    policy = random_policy(predictor, trace.features, seed=5)

    def run(seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return StopRunner(predictor, policy, ReadoutRule("sample"), gen)(batch).stop

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    # The mean stop layer over many draws matches the expected depth of q_phi.
    from l2s_gym.stopping import expected_depth, stop_log_q

    with torch.no_grad():
        want = float(expected_depth(stop_log_q(policy.trace_logits(trace.features))).mean())
    got = torch.stack([run(s) for s in range(40)]).double().add(1).mean()
    assert float(got) == pytest.approx(want, abs=0.1)


def test_runner_accepts_an_inputs_dict_and_an_empty_batch() -> None:
    task, predictor = _toy()
    batch = task.eval_set("test").select(slice(0, 16))
    with torch.no_grad():
        policy = random_policy(predictor, predictor.trace(batch, task).features, seed=2)
    runner = StopRunner(predictor, policy)
    assert torch.equal(runner(batch.inputs).stop, runner(batch).stop)
    empty = runner(batch.select(slice(0, 0)))
    assert empty.stop.shape == (0,) and math.isnan(empty.avg_layers)


def test_runner_rejects_a_policy_of_another_depth() -> None:
    task, predictor = _toy()
    with pytest.raises(ValueError, match="layers"):
        StopRunner(predictor, StopPolicy((2,), num_layers=9))


# --- look-ahead: the policy asked once per k layers ----------------------------------------
@pytest.mark.parametrize("lookahead", [2, 3, -1], ids=["2", "3", "T-1"])
@pytest.mark.parametrize("size", [1, 40])
def test_lookahead_stops_where_the_trace_says(case, size: int, lookahead: int) -> None:
    task, predictor, batch, policy = case
    batch = batch.select(slice(0, size))
    if lookahead < 0:  # T - 1: one policy call about the first T - 1 layers
        lookahead += predictor.num_layers
    for rule in RULES:
        stop, expected, logits = reference(task, predictor, policy, batch, rule)
        runner = StopRunner(predictor, policy, rule, lookahead=lookahead)
        out = runner(batch, return_probabilities=True)
        assert out.stop.dtype == torch.long and torch.equal(out.stop, stop), rule
        if size == 1:
            assert torch.equal(out.predictions, expected)
        else:
            torch.testing.assert_close(out.predictions, expected, rtol=1e-5, atol=1e-5)
        probs = out.stop_probabilities
        T = predictor.num_layers
        reached = torch.arange(T).unsqueeze(0) <= stop.unsqueeze(1)
        assert torch.equal(torch.isnan(probs), ~reached)
        pi = torch.sigmoid(logits)
        pi[:, -1] = 1.0
        torch.testing.assert_close(probs[reached], pi[reached], rtol=1e-5, atol=1e-6)
        parts: dict[str, float] = {}
        again = runner(batch, profile=parts)
        assert torch.equal(again.stop, stop) and set(parts) >= {"layer", "features", "policy"}


def test_lookahead_computes_whole_chunks() -> None:
    task, predictor = _custom()
    predictor.eval()
    batch = task.eval_set("test")
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    policy = random_policy(predictor, trace.features, seed=3)
    T, k = predictor.num_layers, 3
    stop = StopRunner(predictor, policy).__call__(batch).stop
    predictor.calls.clear()
    out = StopRunner(predictor, policy, lookahead=k)(batch)
    assert torch.equal(out.stop, stop)
    # Layer t runs on the rows that had not stopped before its chunk began.
    expected = [int((stop >= (t // k) * k).sum()) for t in range(T)]
    assert predictor.calls == [c for c in expected if c > 0]


@pytest.mark.parametrize("beyond", [0, 1, 50])
def test_lookahead_of_T_or_more_is_the_plain_model(case, beyond: int) -> None:
    """k >= T: the policy is never asked; the full-depth model's predictions, every
    instance stopping at the last layer."""
    task, predictor, batch, policy = case
    T = predictor.num_layers
    runner = StopRunner(predictor, policy, lookahead=T + beyond)
    assert runner.lookahead == T and runner.plain
    calls = count_policy_calls(predictor, policy)
    try:
        out = runner(batch, return_probabilities=True)
        parts: dict[str, float] = {}
        runner(batch, profile=parts)
    finally:
        uncount(predictor, policy)
    assert calls == []
    assert torch.equal(out.stop, torch.full((len(batch),), T - 1))
    assert torch.equal(out.predictions, run_full_depth(predictor, batch))
    probs = out.stop_probabilities
    assert torch.isnan(probs[:, :-1]).all() and (probs[:, -1] == 1).all()
    assert set(parts) == {"layer"}
    # Set back below T: the early-exit loop again, and the counter sees its policy calls.
    runner.lookahead = 1
    calls = count_policy_calls(predictor, policy)
    try:
        again = runner(batch)
    finally:
        uncount(predictor, policy)
    assert not runner.plain and calls
    assert torch.equal(again.stop, StopRunner(predictor, policy)(batch).stop)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_lookahead_must_be_a_positive_whole_number(bad) -> None:
    task, predictor = _toy()
    policy = StopPolicy(predictor.feature_shape, predictor.num_layers)
    with pytest.raises(ValueError, match="lookahead"):
        StopRunner(predictor, policy, lookahead=bad)
