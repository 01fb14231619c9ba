"""Unit tests of the frontier steps of ``l2s_gym.results`` and their report, on hand-made
curves and traces: the task's mixture of two rules (against a straight line in the metric),
a curve's points, the frontier summaries against the label-free baselines, time to target,
the aggregation of summaries, times and curves over seeds, and the frontier-points and
time-to-target tables. No training."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from l2s_gym import frontier as fr
from l2s_gym import report
from l2s_gym import results as rs
from l2s_gym.predictor import Trace
from l2s_gym.result_types import Curve, FrontierSummary, RunResults, TimeToTarget
from l2s_gym.stopping import cumulative_costs
from l2s_gym.testing import ToyTask, ToyTaskConfig
from l2s_gym.trials import Trial


class DbTask(ToyTask):
    """The toy task with a metric in dB of the mean statistic (as sparse recovery's NMSE)."""

    def aggregate(self, stats: torch.Tensor) -> float:
        return float(10 * torch.log10(stats.double().mean()))


def toy_task() -> ToyTask:
    return ToyTask(ToyTaskConfig(num_layers=4, val_size=8, test_size=8))


def seed_ctx(task, test: Trace) -> rs._Seed:
    """A ``_Seed`` with only what the frontier steps read (no predictor, no files)."""
    return rs._Seed(
        seed=0, cfg=None, task=task, predictor=None, test=test, val=test, test_fixed=test,
        val_fixed=test, cum=cumulative_costs(test.num_layers), unit=1.0, lam=0.0,
        boot=rs.Bootstrap(task, len(test), 0, resamples=100), stage1={},
    )  # fmt: skip


def curve(kind: str, xs, ys, **kw) -> Curve:
    return Curve(kind, list(kw.pop("param", xs)), list(xs), list(ys), [None] * len(xs),
                 [None] * len(xs), **kw)  # fmt: skip


# --- one seed ----------------------------------------------------------------------------


def test_mixture_is_the_tasks_aggregate_of_mixed_stats_not_a_line_in_the_metric() -> None:
    sa = torch.ones(4, dtype=torch.float64)  # 0 dB
    sb = torch.full((4,), 0.01, dtype=torch.float64)  # -20 dB
    db = rs.mixture(DbTask(ToyTaskConfig()))
    assert db(sa, sb, 1.0) == pytest.approx(0.0) and db(sa, sb, 0.0) == pytest.approx(-20.0)
    # Half the instances on each rule: 10 log10(0.505), not the dB midpoint -10.
    assert db(sa, sb, 0.5) == pytest.approx(10 * math.log10(0.505))
    # On the frontier: the budget halfway between the two rules (lower is better).
    grid = np.array([2.0, 3.0, 4.0])
    pts = ([2.0, 4.0], [0.0, -20.0])
    mixed = fr.budget_curve(*pts, grid, False, stats=[sa, sb], mix=db)
    straight = fr.budget_curve(*pts, grid, False)
    assert -mixed[1] == pytest.approx(10 * math.log10(0.505)) and -straight[1] == pytest.approx(-10.0)  # fmt: skip
    # For a metric that is a mean, the mixture is the straight line.
    mean = rs.mixture(toy_task())
    assert mean(sa, sb, 0.3) == pytest.approx(0.3 * 1.0 + 0.7 * 0.01)


def test_points_score_each_stop_rule_on_the_trace() -> None:
    task = toy_task()
    stats = torch.tensor([[4.0, 2.0, 1.0], [6.0, 3.0, 0.0]], dtype=torch.float64)
    test = Trace(stats.clone(), stats, torch.zeros(2, 3, 2), torch.zeros(2, dtype=torch.long))
    s = seed_ctx(task, test)
    c = rs._points(s, test, [torch.tensor([0, 0]), torch.tensor([0, 2])], "fixed", [1, 2])
    assert c.avg_layers == [1.0, 2.0]
    assert c.metric == pytest.approx([5.0, 2.0])  # mean of 4, 6; mean of 4, 0
    assert torch.equal(c.stats[1], torch.tensor([4.0, 0.0], dtype=torch.float64))
    assert all(lo <= m <= hi for lo, m, hi in zip(c.ci_low, c.metric, c.ci_high, strict=True))


def test_frontier_summaries_measure_learners_and_sweeps_against_the_baselines_only() -> None:
    task = toy_task()  # lower is better
    test = Trace(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4, 2), torch.zeros(2).long())
    s = seed_ctx(task, test)
    fixed = curve("fixed", [1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0])
    oracle = curve("oracle", [1, 2, 4], [4.0, 1.0, 0.0])
    frontiers = {
        "fixed depth": fixed,
        rs.ORACLE_CURVE: oracle,
        # A learner on the oracle's curve, and a sweep that is the fixed depths again.
        "reverse KL": curve("learned", [1, 2, 4], [4.0, 1.0, 0.0], learner="reverse_kl"),
        "sweep": curve("sweep", [1, 2, 3, 4], [4.0, 3.0, 2.0, 1.0], learner="reverse_kl"),
    }
    learned, sweeps, reference = rs.frontier_summaries(s, frontiers, full_depth=1.0)
    rkl = learned["reverse_kl"]
    # The oracle and the learner are no baselines: the envelope is the fixed depths, which
    # the learner ties at one budget (b = 1) and beats at the 199 others of the grid.
    assert rkl.dominance == 1.0
    assert rkl.strict_dominance == pytest.approx(1 - 1 / fr.GRID_POINTS)
    # On the oracle's curve it closes the whole gap (area 1 on [1, 2] + 3 on [2, 4]).
    assert rkl.oracle_gap_closed == pytest.approx(1.0, abs=1e-9)
    assert rkl.layers_to_match_full_depth == pytest.approx(2.0)
    sweep = sweeps["reverse_kl"]
    assert (sweep.dominance, sweep.strict_dominance) == (1.0, 0.0)
    assert sweep.oracle_gap_closed == pytest.approx(0.0, abs=1e-12)
    assert reference == {"oracle": pytest.approx(2.0), "baselines": pytest.approx(4.0)}


def test_frontier_gap_closed_by_hand_on_a_half_way_learner() -> None:
    # Higher is better. Envelope: the fixed depths 0, 1, 2 at 1, 2, 3 layers; oracle: the
    # line from (1, 0) to (3, 4), gap area 2; a learner from (1, 0) to (3, 3), area 1.
    s = fr.summarize(([1, 3], [0.0, 3.0]), [([1, 2, 3], [0.0, 1.0, 2.0])], ([1, 3], [0.0, 4.0]), 3, True, 2.0)  # fmt: skip
    assert s["oracle_gap_closed"] == pytest.approx(0.5, abs=1e-9)
    assert s["layers_to_match_full_depth"] == pytest.approx(1 + 2 * 2.0 / 3.0)


def trial_result(final_metric, final_objective, curve_metrics, curve_objectives) -> dict:
    points = [
        {
            "val_metric": m,
            "val_objective": o,
            "wall_time_s": 10.0 * (i + 1),
            "layer_evals": 100 * (i + 1),
        }  # fmt: skip
        for i, (m, o) in enumerate(zip(curve_metrics, curve_objectives, strict=True))
    ]
    extra = {"best_val_metric": final_metric, "best_val_objective": final_objective}
    return {"extra": extra, "curve": points, "wall_time_s": 99.0, "layer_evals": 999}


def test_time_to_target_is_the_best_rl_learners_metric_or_objective() -> None:
    task = toy_task()  # lower is better
    trials = [Trial("stage2", 0, n, 0.5) for n in ("reinforce", "ppo", "reverse_kl")]
    trials.append(Trial("stage2", 0, "a2c", 1.0))  # at another cost: not counted
    res = {
        trials[0].key: trial_result(0.3, 1.0, [0.4, 0.3], [1.5, 1.0]),
        trials[1].key: trial_result(0.2, 2.0, [0.25, 0.2], [2.5, 2.0]),
        # An imitation learner better than both: scored, but not the target.
        trials[2].key: trial_result(0.1, 0.5, [0.5, 0.15], [0.9, 0.5]),
        trials[3].key: trial_result(0.01, 0.01, [0.01], [0.01]),
    }
    by_metric = rs.time_to_target(task, res, trials, 0.5, lam=0.0)
    assert set(by_metric) == {"reinforce", "ppo", "reverse_kl"}
    ppo = by_metric["ppo"]
    assert (ppo.target, ppo.target_learner, ppo.criterion) == (0.2, "ppo", "metric")
    assert (ppo.wall_time_s, ppo.layer_evals) == (20.0, 200)
    assert by_metric["reverse_kl"].wall_time_s == 20.0  # 0.15 is the first point <= 0.2
    assert by_metric["reinforce"].wall_time_s is None and by_metric["reinforce"].layer_evals is None  # fmt: skip
    assert by_metric["reinforce"].final_layer_evals == 999
    # With a price per layer the target is the best objective: REINFORCE's, not PPO's.
    by_objective = rs.time_to_target(task, res, trials, 0.5, lam=0.1)
    assert by_objective["ppo"].target_learner == "reinforce" and by_objective["ppo"].target == 1.0
    assert by_objective["ppo"].criterion == "objective"
    assert by_objective["ppo"].wall_time_s is None and by_objective["reverse_kl"].wall_time_s == 10.0  # fmt: skip
    # No RL learner at the cost: no target.
    assert rs.time_to_target(task, {trials[2].key: res[trials[2].key]}, trials[2:3], 0.5) == {}


# --- over seeds --------------------------------------------------------------------------


def test_time_to_target_over_seeds_needs_every_seed_to_have_reached_it() -> None:
    def ttt(wall):
        return TimeToTarget(0.2, "ppo", "metric", wall, None if wall is None else 200, 90.0, 900)

    per_seed = [
        SimpleNamespace(seed=0, time_to_target={"ppo": ttt(20.0), "reverse_kl": ttt(10.0)}),
        SimpleNamespace(seed=1, time_to_target={"ppo": ttt(None), "reverse_kl": ttt(30.0)}),
    ]
    out = rs._aggregate_time_to_target(per_seed)
    assert out["ppo"].reached == "1/2 seeds" and out["ppo"].wall_time_s is None
    assert out["reverse_kl"].reached == "2/2 seeds" and out["reverse_kl"].wall_time_s == 20.0
    assert out["reverse_kl"].final_layer_evals == 900
    assert [p.seed for p in out["ppo"].per_seed] == [0, 1]


def test_frontier_summary_over_seeds() -> None:
    def seed(dom, gap, layers):
        summary = {"reverse_kl": FrontierSummary(dom, gap, layers, strict_dominance=dom / 2)}
        return SimpleNamespace(frontier_summary=summary, frontier_sweep_summary={})

    out = rs._aggregate_summary([seed(0.5, 0.2, 3.0), seed(0.7, math.nan, None), seed(0.9, 0.4, 2.0)])  # fmt: skip
    e = out["reverse_kl"]
    assert e.dominance == pytest.approx(0.7) and e.strict_dominance == pytest.approx(0.35)
    assert e.dominance_ci95 == pytest.approx(rs.seed_interval([0.5, 0.7, 0.9]))
    assert e.dominance_per_seed == [0.5, 0.7, 0.9]
    # A NaN gap is left out of the mean and leaves no interval.
    assert e.oracle_gap_closed == pytest.approx(0.3) and e.oracle_gap_closed_ci95 is None
    # A seed that never matches full depth: "never" over seeds.
    assert e.layers_to_match_full_depth is None and e.layers_to_match_full_depth_per_seed == [3.0, None, 2.0]  # fmt: skip


def test_frontier_curves_over_seeds_are_point_by_point_means_with_seed_bands() -> None:
    def seed(metrics):
        c = curve("learned", [4.0, 2.0], metrics, param=[0.0, 1.0], learner="reverse_kl",
                  objective=[m + 1 for m in metrics])  # fmt: skip
        return SimpleNamespace(frontiers={"reverse KL": c})

    agg = rs._aggregate_frontiers([seed([0.1, 0.5]), seed([0.3, 0.7]), seed([0.2, 0.6])])["reverse KL"]  # fmt: skip
    assert agg.param == [0.0, 1.0] and agg.avg_layers == [4.0, 2.0]
    assert agg.metric == pytest.approx([0.2, 0.6]) and agg.objective == pytest.approx([1.2, 1.6])
    assert agg.band_over == "3 seeds"
    lo, hi = rs.seed_interval([0.1, 0.3, 0.2])
    assert (agg.ci_low[0], agg.ci_high[0]) == (pytest.approx(lo), pytest.approx(hi))


def test_frontier_curves_over_seeds_pair_points_by_price() -> None:
    both = curve("learned", [4.0, 2.0], [0.1, 0.5], param=[0.0, 1.0], cost=[0.0, 1.0], learner="r")  # fmt: skip
    # Seed 1's trial at price 0 failed: its curve holds the point at price 1 only.
    one = curve("learned", [2.0], [0.7], param=[1.0], cost=[1.0], learner="r")
    agg = rs._aggregate_frontiers([SimpleNamespace(frontiers={"r": c}) for c in (both, one)])["r"]
    at = dict(zip(agg.param, agg.metric, strict=True))
    # Price 0 is in one seed only: left out of the mean curve, never paired with price 1.
    assert 0.0 not in at and agg.cost == [1.0] and agg.avg_layers == [2.0]
    assert at.get(1.0) == pytest.approx(0.6)  # seed 0's 0.5 and seed 1's 0.7


def test_heuristic_curves_over_seeds_pair_points_by_quantile_level_not_threshold() -> None:
    # Each seed's confidence thresholds are quantiles of its own validation set, so their
    # values differ across seeds; the mean curve pairs them by level and keeps every point.
    task = toy_task()
    gen = torch.Generator().manual_seed(0)
    seeds = []
    for shift in (0.0, 0.05):
        stats = torch.rand(64, 4, generator=gen, dtype=torch.float64)
        conf = (torch.rand(64, 4, generator=gen) * 0.5 + shift).cumsum(dim=1).clamp(max=1.0)
        trace = Trace(stats.clone(), stats, torch.zeros(64, 4, 1), torch.zeros(64).long(),
                      extras={"confidence": conf})  # fmt: skip
        s = seed_ctx(task, trace)
        s.predictor = SimpleNamespace(display_name="Toy")
        curves = rs.frontier_curves(s, rs._Learned(), frontier_mode=True, compare_cost=0.0)
        seeds.append(SimpleNamespace(frontiers=curves))
    name = "confidence threshold (SDN)"
    per_seed = [seed.frontiers[name] for seed in seeds]
    levels = torch.linspace(0.02, 0.98, rs.HEURISTIC_POINTS, dtype=torch.float64).tolist()
    assert not set(per_seed[0].param) - {round(q, 6) for q in levels}
    agg = rs._aggregate_frontiers(seeds)[name]
    shared = set(per_seed[0].param) & set(per_seed[1].param)
    assert len(agg.avg_layers) == len(shared) >= 6
    first = dict(zip(per_seed[0].param, per_seed[0].avg_layers, strict=True))
    second = dict(zip(per_seed[1].param, per_seed[1].avg_layers, strict=True))
    assert agg.avg_layers == pytest.approx([(first[q] + second[q]) / 2 for q in agg.param])


# --- the report ----------------------------------------------------------------------------


def frontier_results(curve_: Curve, costs: list[float]) -> RunResults:
    summary = {"reverse KL": FrontierSummary(1.0, 0.5, 2.0)}
    return RunResults("toy", "toy loss", False, costs=costs, frontiers={"reverse KL": curve_},
                      frontier_summary=summary, num_layers=4)  # fmt: skip


def point_cells(text: str, price: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if ln.startswith(f"| {price} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_frontier_points_table_one_row_per_price() -> None:
    c = curve("learned", [4.0, 2.0], [0.1, 0.5], param=[0.0, 1.0], cost=[0.0, 1.0], objective=[0.1, 2.5])  # fmt: skip
    text = report.frontier_tables(frontier_results(c, [0.0, 1.0]))
    assert point_cells(text, "0") == ["0", "0.10 @ 4.00 (0.1)"]
    assert point_cells(text, "1") == ["1", "0.50 @ 2.00 (2.5)"]


@pytest.mark.parametrize(
    ("cost", "xs", "ys"),
    [([1.0, 0.0], [2.0, 4.0], [0.5, 0.1]), ([1.0], [2.0], [0.5])],
    ids=["costs-listed-decreasing", "trial-at-price-0-failed"],
)
def test_frontier_points_table_puts_each_point_at_its_own_price(cost, xs, ys) -> None:
    c = curve("learned", xs, ys, param=cost, cost=cost)
    text = report.frontier_tables(frontier_results(c, [0.0, 1.0]))
    assert point_cells(text, "1") == ["1", "0.50 @ 2.00"]
    assert point_cells(text, "0")[1] in ("0.10 @ 4.00", "-")


def test_time_to_target_table() -> None:
    ttt = {
        "PPO": TimeToTarget(
            0.2, "ppo", "objective", 20.0, 2000.0, 99.0, 9999.0, reached="2/2 seeds"
        ),  # fmt: skip
        "REINFORCE": TimeToTarget(
            0.2, "ppo", "objective", None, None, 50.0, 5000.0, reached="1/2 seeds"
        ),  # fmt: skip
    }
    text = report.time_to_target_table(RunResults("toy", "toy loss", False, seeds=[3, 4], time_to_target=ttt))  # fmt: skip
    assert "final validation objective (ppo in seed 3; with a price per layer, the objective)" in text  # fmt: skip
    assert point_cells(text, "PPO") == ["PPO", "0.2", "2/2 seeds", "20.0", "2,000", "99.0", "9,999"]
    assert point_cells(text, "REINFORCE")[2:5] == ["1/2 seeds", "-", "-"]
    assert report.time_to_target_table(RunResults("toy", "toy loss", False)) == ""
