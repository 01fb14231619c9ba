"""The frontier maths against hand-made curves, and the quantile read-out against brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import TOY_FRONTIER
from hypothesis import given, settings
from hypothesis import strategies as st

from l2s_gym import frontier as fr
from l2s_gym.rules import ReadoutRule
from l2s_gym.stopping import quantile_stop, stop_log_q


def test_budget_curve_interpolates_and_keeps_the_best_point_below_each_budget() -> None:
    grid = np.array([1.0, 1.5, 2.0, 3.0, 4.0, 5.0])
    # Higher is better: points at 2 (score 10) and 4 (score 8): at 3 the interpolation
    # says 9, but the point at 2 is affordable with a budget of 3, so f(3) = 10.
    f = fr.budget_curve([4.0, 2.0], [8.0, 10.0], grid, higher_is_better=True)
    assert np.isnan(f[0]) and np.isnan(f[1])  # below the fewest layers: undefined
    assert f[2:].tolist() == [10.0, 10.0, 10.0, 10.0]
    # Lower is better: the same points as losses, rising then falling.
    g = fr.budget_curve([2.0, 4.0], [10.0, 6.0], grid, higher_is_better=False)
    assert g[2:].tolist() == [-10.0, -8.0, -6.0, -6.0]


def test_envelope_dominance_and_gap_on_hand_made_curves() -> None:
    T = 5
    grid = fr.budget_grid(T, points=401)
    fixed = ([1, 2, 3, 4, 5], [0.0, 1.0, 2.0, 3.0, 4.0])  # one point of score per layer
    oracle = ([1, 5], [0.0, 8.0])  # a straight line from (1, 0) to (5, 8)
    env = fr.envelope([fr.budget_curve(*fixed, grid, True)])
    orc = fr.budget_curve(*oracle, grid, True)
    # The oracle's gain over the envelope is the triangle between the lines: area 8.
    # A learner halfway between them closes half of it and dominates everywhere.
    half = ([1, 5], [0.0, 6.0])
    lrn = fr.budget_curve(*half, grid, True)
    assert fr.dominance(lrn, env) == 1.0
    assert fr.oracle_gap_closed(lrn, env, orc, grid) == pytest.approx(0.5, abs=1e-3)
    # The envelope itself: dominance 1 (ties count), gap 0.
    assert fr.dominance(env, env) == 1.0
    assert fr.oracle_gap_closed(env, env, orc, grid) == pytest.approx(0.0, abs=1e-12)
    # A learner below the envelope on [3, 5] (constant score 2 from layer 3 on).
    low = fr.budget_curve([1, 3], [0.0, 2.0], grid, True)
    dom = fr.dominance(low, env)
    assert dom == pytest.approx(np.mean(grid <= 3.0), abs=1e-9)
    # Its gap: 0 on [1, 3], then -(the envelope's rise above 2) on [3, 5]: area -2, over 8.
    assert fr.oracle_gap_closed(low, env, orc, grid) == pytest.approx(-2.0 / 8.0, abs=1e-3)
    # A learner that starts at 3 layers: undefined below 3 (counts against dominance, zero
    # area there), matches the oracle from 3 on.
    late = fr.budget_curve([3, 5], [4.0, 8.0], grid, True)
    assert fr.dominance(late, env) == pytest.approx(np.mean(grid >= 3.0), abs=1e-9)
    # Its gap on [3, 5], where it equals the oracle: oracle - env = (2t - 2) - (t - 1) = t - 1,
    # whose integral over [3, 5] is (4^2 - 2^2) / 2 = 6, out of the oracle's 8.
    expected = (((5 - 1) ** 2 - (3 - 1) ** 2) / 2) / 8.0
    # (The step at 3 layers costs half a grid cell of area in the trapezoid rule.)
    assert fr.oracle_gap_closed(late, env, orc, grid) == pytest.approx(expected, abs=3e-3)


def db_of_mean(stats) -> float:
    return float(10 * torch.log10(torch.as_tensor(stats, dtype=torch.float64).mean()))


def db_mix(sa, sb, a: float) -> float:
    return db_of_mean(a * torch.as_tensor(sa) + (1 - a) * torch.as_tensor(sb))


def test_a_segment_is_what_mixing_the_two_rules_gives_not_a_straight_line_in_db() -> None:
    # Two rules on four instances (per-instance squared errors; the metric is dB of the
    # mean, lower is better): A at 2 layers, B at 4.
    sa, sb = [1.0, 1.0, 1.0, 1.0], [0.01, 0.01, 0.01, 0.01]
    xs, ms = [2.0, 4.0], [db_of_mean(sa), db_of_mean(sb)]  # 0 dB and -20 dB
    grid = np.array([2.0, 3.0, 4.0])
    straight = fr.budget_curve(xs, ms, grid, False)
    mixed = fr.budget_curve(xs, ms, grid, False, stats=[sa, sb], mix=db_mix)
    assert straight[1] == pytest.approx(10.0)  # -(-10 dB): the dB midpoint
    # Half the instances on each rule: 10 log10(0.505) = -2.97 dB, far from -10.
    assert mixed[1] == pytest.approx(-10 * math.log10(0.505))
    assert mixed[0] == pytest.approx(straight[0]) and mixed[2] == pytest.approx(straight[2])
    # Reaching -10 dB takes B on (1 - 0.1) / 0.99 of the instances, not half of them.
    layers = fr.layers_to_match(xs, ms, -10.0, False, stats=[sa, sb], mix=db_mix)
    assert layers == pytest.approx(2 + 2 * (0.9 / 0.99), abs=1e-6)
    assert fr.layers_to_match(xs, ms, -10.0, False) == pytest.approx(3.0)


def test_strict_dominance_does_not_count_ties() -> None:
    # The fixed depths themselves, scored as if they were a learner: at least as good as
    # the envelope everywhere, strictly better nowhere.
    fixed = ([1, 2, 3, 4], [0.0, 1.0, 2.0, 2.5])
    s = fr.summarize(fixed, [fixed], ([1, 4], [0.0, 4.0]), 4, True, 2.5)
    assert s["dominance"] == 1.0 and s["strict_dominance"] == 0.0
    better = ([1, 2, 3, 4], [0.5, 1.5, 2.5, 3.0])
    s = fr.summarize(better, [fixed], ([1, 4], [1.0, 4.0]), 4, True, 2.5)
    assert s["dominance"] == 1.0 and s["strict_dominance"] == 1.0


def test_gap_is_nan_without_an_oracle_gain() -> None:
    grid = fr.budget_grid(4)
    env = fr.budget_curve([1, 4], [0.0, 3.0], grid, True)
    assert math.isnan(fr.oracle_gap_closed(env, env, env, grid))


def test_layers_to_match() -> None:
    # Lower is better: 10 -> 6 between 2 and 4 layers; the target 8 is reached at 3.
    assert fr.layers_to_match([2, 4], [10.0, 6.0], 8.0, False) == pytest.approx(3.0)
    assert fr.layers_to_match([2, 4], [10.0, 6.0], 10.0, False) == pytest.approx(2.0)
    assert fr.layers_to_match([2, 4], [10.0, 6.0], 5.0, False) is None
    # Higher is better, unsorted input, a point that already reaches the target.
    assert fr.layers_to_match([5, 1, 3], [0.9, 0.5, 0.95], 0.9, True) == pytest.approx(
        1 + 0.4 / 0.45 * 2
    )


def test_summarize_keys_and_ranges() -> None:
    s = fr.summarize(
        ([1.5, 3.0, 5.0], [0.5, 2.5, 4.2]),
        [([1, 2, 3, 4, 5], [0.0, 1.0, 2.0, 3.0, 4.0])],
        ([1, 5], [0.0, 8.0]),
        5,
        True,
        4.0,
    )
    assert set(s) == {
        "dominance",
        "strict_dominance",
        "oracle_gap_closed",
        "layers_to_match_full_depth",
    }
    assert 0.0 <= s["dominance"] <= 1.0
    assert s["layers_to_match_full_depth"] == pytest.approx(3.0 + (4.0 - 2.5) / (4.2 - 2.5) * 2)


def test_reference_layers_to_match() -> None:
    # Lower is better. Two baselines: one reaches the target 4.0 at 3.5 layers, one at 3.0;
    # a third never does. The oracle reaches it at 2.5.
    baselines = [([1, 2, 4], [10.0, 8.0, 3.0]), ([1, 3, 5], [9.0, 4.0, 3.5]), ([1, 5], [9.0, 5.0])]
    ref = fr.reference_layers_to_match(baselines, ([1, 2, 3], [9.0, 5.0, 3.0]), False, 4.0)
    assert ref["oracle"] == pytest.approx(2.5)
    assert ref["baselines"] == pytest.approx(3.0)
    # A stricter target: only the first baseline's last point reaches it; then none does.
    ref = fr.reference_layers_to_match(baselines, ([1, 2, 3], [9.0, 5.0, 3.0]), False, 3.0)
    assert ref["baselines"] == pytest.approx(4.0) and ref["oracle"] == pytest.approx(3.0)
    ref = fr.reference_layers_to_match(baselines, ([1, 2, 3], [9.0, 5.0, 3.0]), False, 2.0)
    assert ref == {"oracle": None, "baselines": None}
    # Higher is better: the same curves, negated, give the same answers.
    neg = [(x, [-v for v in y]) for x, y in baselines]
    ref = fr.reference_layers_to_match(neg, ([1, 2, 3], [-9.0, -5.0, -3.0]), True, -4.0)
    assert (ref["oracle"], ref["baselines"]) == (pytest.approx(2.5), pytest.approx(3.0))


def test_reference_is_aggregated_over_seeds_and_reported() -> None:
    from types import SimpleNamespace

    from l2s_gym.report import _reference_lines
    from l2s_gym.result_types import RunResults
    from l2s_gym.results import _aggregate_reference

    per_seed = [
        SimpleNamespace(frontier_reference={"oracle": 3.0, "baselines": 6.0}),
        SimpleNamespace(frontier_reference={"oracle": 5.0, "baselines": None}),
    ]
    agg = _aggregate_reference(per_seed)
    assert agg["oracle"].layers_to_match_full_depth == pytest.approx(4.0)
    assert agg["oracle"].layers_to_match_full_depth_ci95 is not None
    # A seed that never matches makes the mean "never", as for a learner.
    assert agg["baselines"].layers_to_match_full_depth is None
    assert agg["baselines"].layers_to_match_full_depth_per_seed == [6.0, None]
    results = RunResults("x", "metric", False, frontier_reference=agg)
    lines = "\n".join(_reference_lines(results))
    assert "label-using oracle" in lines and "4.00" in lines and "(per seed: 3.00, 5.00)" in lines
    assert "label-free baseline" in lines and "never (per seed: 6.00, never)" in lines
    assert _reference_lines(RunResults("x", "metric", False)) == []


def brute_force_quantile(probs: list[float], q: float) -> int:
    """First t whose cumulative stop probability reaches q, by plain summation."""
    total = 0.0
    for t, p in enumerate(probs):
        total += p
        if total >= q - 1e-9:
            return t
    return len(probs) - 1


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=2, max_value=7),
    st.floats(min_value=0.05, max_value=0.95),
    st.integers(min_value=0, max_value=10_000),
)
def test_quantile_rule_against_enumerated_stop_paths(T: int, q: float, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, T, generator=gen, dtype=torch.float64) * 3
    pi = torch.sigmoid(logits)[0].tolist()
    # q_phi by enumerating all 2^(T-1) continue/stop sequences (every decision drawn, as
    # if the walk went on): a sequence's stop time is its first "stop", else the last layer.
    probs = [0.0] * T
    for path in itertools.product([0, 1], repeat=T - 1):
        p = math.prod(pi[t] if a else 1 - pi[t] for t, a in enumerate(path))
        probs[path.index(1) if 1 in path else T - 1] += p
    expected = brute_force_quantile(probs, q)
    # Skip knife-edge cases where float rounding decides.
    cum = np.cumsum(probs)
    if np.any(np.abs(cum - q) < 1e-6):
        return
    got = int(quantile_stop(stop_log_q(logits), q)[0])
    assert got == expected
    # The causal form gives the same layer.
    rule = ReadoutRule("quantile", q)
    log_survival = torch.zeros(1, dtype=torch.float64)
    causal = T - 1
    for t in range(T):
        stop, log_survival = rule.stop_now(logits[:, t], log_survival)
        if bool(stop[0]) or t == T - 1:
            causal = t
            break
    assert causal == expected


def test_threshold_rule_causal_form_matches() -> None:
    logits = torch.tensor([[-2.0, -0.1, 0.3, -5.0, 1.0]])
    rule = ReadoutRule("threshold", 0.5)
    assert int(rule.stop(logits)[0]) == 2
    log_survival = torch.zeros(1)
    for t in range(5):
        stop, log_survival = rule.stop_now(logits[:, t], log_survival)
        if bool(stop[0]):
            break
    assert t == 2


def test_quantile_rule_stops_earlier_than_the_threshold_rule_on_a_spread_q() -> None:
    # q_phi uniform over layers 4..8 (of 8): pi = 0, 0, 0, 1/5, 1/4, 1/3, 1/2, (1).
    pi = torch.tensor([1e-9, 1e-9, 1e-9, 1 / 5, 1 / 4, 1 / 3, 1 / 2, 0.5], dtype=torch.float64)
    logits = torch.log(pi / (1 - pi)).unsqueeze(0)
    assert int(ReadoutRule("threshold", 0.5).stop(logits)[0]) == 7  # layer 8
    assert int(ReadoutRule("quantile", 0.5).stop(logits)[0]) == 5  # layer 6: the median


def test_frontier_figure_marks_the_full_depth_target() -> None:
    from l2s_gym.report import frontier_figure
    from l2s_gym.result_types import Curve, FrontierSummary, RunResults

    curve = Curve("learned", [0, 1], [1.0, 2.0], [0.5, 0.9], [None] * 2, [None] * 2)
    results = RunResults(
        "toy",
        "accuracy",
        True,
        seeds=[0],
        frontiers={"reverse KL": curve},
        frontier_summary={"reverse_kl": FrontierSummary(1.0, 0.5, None)},
        full_depth_metric=0.8,
    )
    fig = frontier_figure(results)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    target = next(v for k, v in lines.items() if k.startswith("full depth T"))
    assert list(target.get_ydata()) == [0.8, 0.8]
    results.full_depth_metric = None
    labels = [line.get_label() for line in frontier_figure(results).axes[0].get_lines()]
    assert not any(label.startswith("full depth T") for label in labels)


def test_one_policy_read_out_sweep(tmp_path) -> None:
    """The frontier also sweeps the read-out of the policy trained at the compare price:
    its quantile grid, stops that never come earlier as q grows, summarised over seeds
    by the same maths as the learners' price curves, and reported."""
    import yaml

    from l2s_gym.compare import run_experiment
    from l2s_gym.config import from_dict
    from l2s_gym.report import full_report
    from l2s_gym.results import SWEEP_QUANTILES

    cfg = from_dict({**yaml.safe_load(TOY_FRONTIER), "seeds": [0, 1]})
    _, run = run_experiment(cfg, tmp_path, "frontier", progress=False, log=lambda *_: None)
    res = run.to_json()
    name = "reverse KL, one policy, read-out swept"
    for per in res["per_seed"]:
        sweep = per["frontiers"][name]
        assert sweep["kind"] == "sweep" and sweep["param"] == list(SWEEP_QUANTILES)
        layers = sweep["avg_layers"]
        assert all(b >= a for a, b in zip(layers, layers[1:], strict=False))
        assert layers[0] < layers[-1]  # the sweep spans budgets, not one point
        curves = per["frontiers"].values()
        baselines = [
            (f["avg_layers"], f["metric"]) for f in curves if f["kind"] in ("fixed", "heuristic")
        ]
        oracle = per["frontiers"]["oracle (label-using)"]
        expected = fr.summarize(
            (sweep["avg_layers"], sweep["metric"]),
            baselines,
            (oracle["avg_layers"], oracle["metric"]),
            6,
            False,
            per["full_depth_metric"],
        )
        got = per["frontier_sweep_summary"]["reverse_kl"]
        # The toy's metric is a mean, so mixing two rules is the straight line.
        assert {k: got.get(k) for k in expected} == pytest.approx(expected, abs=1e-9)
    agg = res["frontier_sweep_summary"]["reverse_kl"]
    assert len(agg["dominance_per_seed"]) == 2
    assert agg["dominance"] == pytest.approx(np.mean(agg["dominance_per_seed"]))
    text = full_report(run)
    assert "One policy per learner, the one trained at price 0" in text
    assert "0.01, 0.02, 0.05" in text
