"""StopRunner.tune: the look-ahead chosen from timed parts and measured candidates.

Every test runs on a fake clock (``PriceClock``): a call's "seconds" are what its work
costs at fixed prices (a layer per row, a policy call), so the choices are deterministic
and nothing asserts on real timings.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from runner_cases import CASES, _sparse, _toy, build_case, count_policy_calls, random_policy
from runner_cases import uncount as uncount_calls

from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.rules import ReadoutRule
from l2s_gym.runner import StopRunner, TuneResult, WallTimer, run_full_depth


class PriceClock:
    """``tune``'s timer on fixed prices: each ``layer`` call costs ``layer_s`` per row it
    computes (the plain model: ``T`` of them per row), each policy call (the features of
    one or of a chunk of layers) ``call_s``; everything else is free.

    Only the outermost call counts (a chunk's default features call the per-layer ones,
    the plain model calls ``layer``)."""

    def __init__(
        self, predictor: LayeredPredictor, layer_s: float, call_s: float, per_row: bool = True
    ) -> None:
        self.predictor, self.layer_s, self.call_s = predictor, layer_s, call_s
        self.spent, self.depth, self.parts = 0.0, 0, []
        T = predictor.num_layers

        def rows(inputs: dict[str, torch.Tensor]) -> int:
            return next(iter(inputs.values())).shape[0] if per_row else 1

        prices: dict[str, Callable[..., float]] = {
            "layer": lambda t, state, inputs: layer_s * rows(inputs),
            "policy_features": lambda *a: call_s,
            "chunk_policy_features": lambda *a: call_s,
            "predict_full_depth": lambda inputs: T * layer_s * rows(inputs),
        }
        for name, price in prices.items():
            method = getattr(predictor, name)

            def priced(*args, _m=method, _p=price):  # noqa: ANN002, ANN202
                if self.depth == 0:
                    self.spent += _p(*args)
                self.depth += 1
                try:
                    return _m(*args)
                finally:
                    self.depth -= 1

            setattr(predictor, name, priced)

    def __call__(self, part: str, fn: Callable[[], object]) -> float:
        self.parts.append(part)
        self.spent = 0.0  # a sum from zero: the same work, the same float, whatever ran before
        fn()
        return self.spent

    def remove(self) -> None:
        for name in ("layer", "policy_features", "chunk_policy_features", "predict_full_depth"):
            self.predictor.__dict__.pop(name, None)


@pytest.fixture(params=[_toy, _sparse], ids=["toy", "sparse_recovery/LISTA"])
def small(request: pytest.FixtureRequest):  # noqa: ANN201
    """A small family with a random policy whose stops spread over the layers."""
    task, predictor = request.param()
    predictor.eval()
    batch = task.eval_set("test").select(slice(0, 24))
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    return predictor, random_policy(predictor, trace.features, seed=1), batch


def tuned(predictor, policy, batch, layer_s, call_s, size, **kw):  # noqa: ANN001, ANN003, ANN201
    runner = StopRunner(predictor, policy, ReadoutRule("quantile", 0.5))
    clock = PriceClock(predictor, layer_s, call_s)
    try:
        result = runner.tune(batch, batch_size=size, repeats=1, min_sample_s=0.0, timer=clock, **kw)
    finally:
        clock.remove()
    return runner, result, clock


@pytest.mark.parametrize("size", [1, 8])
def test_a_dear_policy_call_picks_the_plain_model(small, size: int) -> None:
    predictor, policy, batch = small
    T = predictor.num_layers
    runner, result, _ = tuned(predictor, policy, batch, layer_s=1e-4, call_s=1.0, size=size)
    assert result.lookahead == T and result.plain and runner.plain and runner.lookahead == T
    assert result.measured_s[T] < min(s for k, s in result.measured_s.items() if k < T)
    # The plain path: the full-depth model, not one policy call.
    calls = count_policy_calls(predictor, policy)
    try:
        out = runner(batch)
    finally:
        uncount_calls(predictor, policy)
    assert calls == []
    assert torch.equal(out.stop, torch.full((len(batch),), T - 1))
    assert torch.equal(out.predictions, run_full_depth(predictor, batch))
    assert "plain model" in result.describe() and "plain model" in runner.describe()


@pytest.mark.parametrize("size", [1, 8])
def test_a_free_policy_that_stops_early_picks_k1(small, size: int) -> None:
    predictor, policy, batch = small
    runner, result, _ = tuned(predictor, policy, batch, layer_s=1e-3, call_s=0.0, size=size)
    assert result.avg_layers < predictor.num_layers - 1
    # No overshoot at k = 1: the fewest layers, and the calls are free.
    assert result.lookahead == 1 and runner.lookahead == 1 and not result.plain
    assert result.measured_s[1] == min(result.measured_s.values())
    assert "k=1 of T=" in result.describe()


def test_the_model_replays_the_runner_exactly_under_linear_prices(small) -> None:
    """Prices linear in the rows: the model's time of a batch is the clock's, at every
    measured look-ahead (the chunks, the layers past a stop, the calls, the rows left)."""
    predictor, policy, batch = small
    for size in (1, 8):
        _, result, _ = tuned(predictor, policy, batch, 1e-3, 2.5e-3, size, verify=10)
        measured = {k: s for k, s in result.measured_s.items() if k < predictor.num_layers}
        assert len(measured) >= 3
        for k, seconds in measured.items():
            assert result.predicted_s[k] == pytest.approx(seconds, rel=1e-9), k


@pytest.mark.parametrize(
    ("call_s", "want"), [(0.0, "1"), (2.5e-3, "middle"), (1.0, "T")], ids=["free", "mid", "dear"]
)
def test_the_tuned_runner_stops_as_its_lookahead_says(case_any, call_s: float, want: str) -> None:
    """Whatever ``k`` tune picks, the runner's stops are its documented ones: the trace's
    (the rule applied layer by layer) for ``k < T``, the last layer for the plain model."""
    task, predictor, batch, policy = case_any
    rule = ReadoutRule("quantile", 0.5)
    T = predictor.num_layers
    runner = StopRunner(predictor, policy, rule)
    clock = PriceClock(predictor, 1e-3, call_s)
    try:
        result = runner.tune(
            batch, batch_size=1, repeats=1, min_sample_s=0.0, timer=clock, max_instances=12
        )
    finally:
        clock.remove()
    k = result.lookahead
    assert {"1": k == 1, "middle": 1 < k < T, "T": k == T}[want], result
    out = runner(batch)
    if k < T:
        with torch.no_grad():
            stop = rule.stop(policy.trace_logits(predictor.trace(batch, task).features))
        assert torch.equal(out.stop, stop)
    else:
        assert torch.equal(out.stop, torch.full((len(batch),), T - 1))


@pytest.fixture(
    scope="module",
    params=[c for c in CASES if c.name.startswith(("sparse", "toy", "custom"))],
    ids=lambda c: c.name,
)
def case_any(request: pytest.FixtureRequest):  # noqa: ANN201
    return build_case(request.param)


def test_the_clock_times_every_part_and_the_result_round_trips(small) -> None:
    predictor, policy, batch = small
    runner, result, clock = tuned(predictor, policy, batch, 1e-3, 2.5e-3, 4)
    assert set(clock.parts) == {"run", "start", "layer", "readout", "ask", "finish", "compact"}
    again = TuneResult.from_dict(result.to_dict())
    assert again == result and repr(again).startswith("TuneResult(look-ahead k=")
    fresh = StopRunner(predictor, policy, ReadoutRule("quantile", 0.5))
    fresh.adopt(again)
    assert fresh.lookahead == result.lookahead and fresh.describe() == result.describe()
    with pytest.raises(ValueError, match="layers"):
        StopRunner(*_toy_of_depth(predictor.num_layers + 1)).adopt(result)


def _toy_of_depth(T: int) -> tuple[LayeredPredictor, StopPolicy]:
    from l2s_gym.testing import ToyCounter, ToyPredictorConfig

    predictor = ToyCounter(ToyPredictorConfig(num_layers=T))
    return predictor, StopPolicy(predictor.feature_shape, T)


def test_margin_keeps_the_plain_model_on_a_near_tie(small) -> None:
    """Early exit must beat the plain model by more than ``margin`` to be chosen."""
    predictor, policy, batch = small
    _, free, _ = tuned(predictor, policy, batch, 1e-3, 0.0, 1)
    gain = 1 - free.relative[1]
    assert free.relative[1] == pytest.approx(free.measured_s[1] / free.measured_s[free.num_layers])
    _, kept, _ = tuned(predictor, policy, batch, 1e-3, 0.0, 1, margin=gain + 0.01)
    assert 0 < gain < 1 and kept.plain


def test_a_small_gain_won_in_every_round_is_kept() -> None:
    """``_choose``: a look-ahead under the margin pays where it beat the plain model in all
    of at least ``sure_rounds`` rounds (a sign test), not where one round went the other
    way, nor with too few rounds; with ``sure_rounds=0`` only the margin decides."""
    from l2s_gym.runner import _choose

    T = 8
    plain = [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0]
    steady = [0.97 * x for x in plain]  # 3% faster in every round
    once_slower = [*steady[:-1], 1.01 * plain[-1]]  # same median, one round lost
    fast = [0.8 * x for x in plain]
    chosen, relative, wins = _choose({1: steady, 3: once_slower, T: plain}, T, 0.05, 5)
    assert chosen == 1 and wins == {1: 7, 3: 6, T: 0}
    assert relative[1] == pytest.approx(0.97) and relative[T] == 1.0
    assert _choose({3: once_slower, T: plain}, T, 0.05, 5)[0] == T
    assert _choose({1: steady, T: plain}, T, 0.05, 0)[0] == T  # the margin alone
    assert _choose({1: steady[:4], T: plain[:4]}, T, 0.05, 5)[0] == T  # 4 rounds: not sure
    assert _choose({1: steady, 2: fast, T: plain}, T, 0.05, 5)[0] == 2  # the fastest that pays
    assert _choose({1: [1.0] * 7, T: [1.0] * 7}, T, 0.05, 5)[0] == T  # ties win nothing


def test_tune_on_the_wall_clock_runs_and_chooses_a_valid_k() -> None:
    """The default timer, once (no assertion on the times themselves)."""
    task, predictor = _toy()
    batch = task.eval_set("test").select(slice(0, 8))
    with torch.no_grad():
        policy = random_policy(predictor, predictor.trace(batch, task).features, seed=2)
    runner = StopRunner(predictor, policy)
    result = runner.tune(batch, batch_size=4, repeats=1, min_sample_s=1e-3, timer=WallTimer("cpu"))
    assert 1 <= result.lookahead <= predictor.num_layers and result.batch_size == 4
    assert result.instances == 8 and set(result.measured_s) >= {1, predictor.num_layers}
    assert result.layer_s > 0 and result.policy_s > 0 and "cpu" in result.device


def test_the_full_depth_rule_runs_every_layer() -> None:
    # The risk calibration's fallback (quantile 1): no instance stops before layer T.
    from l2s_gym.rules import FULL_DEPTH_RULE

    task, predictor, batch, policy = build_case(CASES[0])
    out = StopRunner(predictor, policy, FULL_DEPTH_RULE)(batch.inputs)
    assert torch.equal(out.stop, torch.full_like(out.stop, predictor.num_layers - 1))
