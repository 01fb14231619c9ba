"""Unit tests of ``l2s_gym.results`` on hand-built traces and rows: the t interval over
seeds, the paired bootstrap, the objective of a row, the fixed depth chosen on validation,
paired differences, aggregation over seeds and the learner health verdict. No training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from l2s_gym import results as rs
from l2s_gym.learner import health_verdict
from l2s_gym.predictor import Trace
from l2s_gym.result_types import PairedDifference, Row
from l2s_gym.stopping import cumulative_costs
from l2s_gym.testing import ToyTask, ToyTaskConfig
from l2s_gym.trials import Trial


def toy_task() -> ToyTask:
    return ToyTask(ToyTaskConfig(num_layers=4, val_size=8, test_size=8))


def trace(losses, metric_stats=None, groups=None) -> Trace:
    losses = torch.as_tensor(losses, dtype=torch.float64)
    stats = losses.clone() if metric_stats is None else torch.as_tensor(metric_stats).double()
    n, T = losses.shape
    g = torch.zeros(n, dtype=torch.long) if groups is None else torch.as_tensor(groups)
    return Trace(losses, stats, torch.zeros(n, T, 2), g)


def seed_ctx(task, test: Trace, lam: float, resamples: int = 200) -> rs._Seed:
    """A ``_Seed`` with only what scoring rows reads (no predictor, no files)."""
    T = test.num_layers
    return rs._Seed(
        seed=0, cfg=None, task=task, predictor=None, test=test, val=test, test_fixed=test,
        val_fixed=test, cum=cumulative_costs(T), unit=1.0, lam=lam,
        boot=rs.Bootstrap(task, len(test), 0, resamples=resamples), stage1={},
    )  # fmt: skip


def row(id_: str, metric: float, objective: float, kind: str = "learner", **kw) -> Row:
    return Row(id=id_, method=kw.pop("method", id_), kind=kind, metric=metric, avg_layers=2.0,
               objective=objective, ci95=[0.0, 1.0], objective_ci95=[0.0, 1.0], **kw)  # fmt: skip


# --- intervals --------------------------------------------------------------------------


@pytest.mark.parametrize("dof", [1, 2, 5, 30])
def test_t_quantile_is_scipys_97_5_percent_point(dof: int) -> None:
    assert rs.t_quantile(dof) == pytest.approx(scipy_stats.t.ppf(0.975, dof), rel=1e-12)
    assert math.isnan(rs.t_quantile(0))


def test_seed_interval_by_hand_and_its_edge_cases() -> None:
    # 1, 2, 3: mean 2, sample sd 1, half width t_{0.975, 2} / sqrt(3) = 4.302653 / 1.732051.
    lo, hi = rs.seed_interval([1.0, 2.0, 3.0])
    assert (lo + hi) / 2 == pytest.approx(2.0)
    assert (hi - lo) / 2 == pytest.approx(4.302652729911275 / math.sqrt(3), rel=1e-9)
    # None and NaN are dropped before counting; fewer than two values: no interval.
    assert rs.seed_interval([1.0, None, math.nan, 3.0]) == pytest.approx(rs.seed_interval([1.0, 3.0]))  # fmt: skip
    assert rs.seed_interval([1.0, None]) is None
    assert rs.seed_interval([]) is None


def test_over_seeds_needs_every_seed_for_an_interval() -> None:
    assert rs._over_seeds([1.0, None, 3.0], all_or_none=False) == (2.0, None)
    assert rs._over_seeds([1.0, None, 3.0], all_or_none=True) == (None, None)
    mean, ci = rs._over_seeds([1.0, 3.0], all_or_none=True)
    assert mean == 2.0 and ci == pytest.approx(rs.seed_interval([1.0, 3.0]))


def test_bootstrap_is_paired_and_brackets_the_mean() -> None:
    task = toy_task()
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(64, generator=gen, dtype=torch.float64)
    boot = rs.Bootstrap(task, 64, seed=3, resamples=300)
    # The same resamples for every row: a row against itself differs by exactly 0.
    assert boot.difference(a, a) == [0.0, 0.0]
    assert boot.mean_difference(a, a + 0.25) == pytest.approx([-0.25, -0.25])
    lo, hi = boot.interval(a)
    assert lo < float(a.mean()) < hi
    # Reproducible from the seed.
    assert rs.Bootstrap(task, 64, seed=3, resamples=300).interval(a) == [lo, hi]


# --- rows, the objective, the fixed depth ----------------------------------------------


def test_a_rows_objective_is_the_mean_loss_plus_price_times_layers() -> None:
    task = toy_task()
    losses = [[0.9, 0.5, 0.3, 0.2], [0.8, 0.1, 0.05, 0.0]]
    metric = [[9.0, 5.0, 3.0, 2.0], [8.0, 1.0, 0.5, 0.0]]
    test = trace(losses, metric, groups=[0, 1])
    s = seed_ctx(task, test, lam=0.1)
    stop = torch.tensor([2, 1])  # 0-based: layer 3 and layer 2
    r = s.add_row("x", "X", "learner", test, stop)
    # Objective: mean of (0.3 + 0.1 * 3) and (0.1 + 0.1 * 2); metric: mean of 3.0 and 1.0.
    assert r.objective == pytest.approx((0.6 + 0.3) / 2)
    assert r.metric == pytest.approx(2.0)
    assert r.avg_layers == pytest.approx(2.5)
    assert r.groups == pytest.approx({task.group_names[0]: 3.0, task.group_names[1]: 1.0})
    assert s.rows == [r] and torch.equal(s.stats["x"], torch.tensor([3.0, 1.0], dtype=torch.float64))  # fmt: skip


def test_best_fixed_depth_follows_the_metric_at_no_price_and_the_objective_with_one() -> None:
    task = toy_task()  # lower is better
    # Loss falls with depth; the metric is best at layer 2, not at the loss's best layer 4.
    val = trace([[0.5, 0.2, 0.1, 0.09]] * 3, [[5.0, 1.0, 2.0, 3.0]] * 3)
    cum = cumulative_costs(4)
    assert rs._pick_depth(task, val, 0.0, cum) == (2, -1.0)
    # At price 0.05 the objectives are 0.55, 0.30, 0.25, 0.29: layer 3, whatever the metric.
    k, score = rs._pick_depth(task, val, 0.05, cum)
    assert k == 3 and score == pytest.approx(-0.25)
    # At a high price the first layer wins.
    assert rs._pick_depth(task, val, 10.0, cum)[0] == 1


def test_paired_differences_against_the_primary_learner() -> None:
    task = toy_task()
    test = trace([[0.4, 0.2, 0.1, 0.0]] * 4 + [[0.3, 0.3, 0.1, 0.1]] * 4)
    s = seed_ctx(task, test, lam=0.05)
    ref = s.add_row("learner:reverse_kl", "RKL", "learner", test, torch.full((8,), 2))
    other = s.add_row("fixed_T", "full depth", "fixed", test, torch.full((8,), 3))
    s.add_row("classical:x", "classical", "classical", test, torch.full((8,), 0))
    out = rs.paired_differences(s)
    assert set(out) == {"fixed_T"}  # not the learner itself, not a classical method
    d = out["fixed_T"]
    assert d.difference == pytest.approx(other.metric - ref.metric)
    assert d.objective_difference == pytest.approx(other.objective - ref.objective)
    # Layer 4 versus layer 3: loss -0.1 / 0 per instance, price +0.05 per instance.
    assert d.objective_difference == pytest.approx(0.5 * (-0.1 + 0.05) + 0.5 * 0.05)
    assert d.ci95[0] <= d.difference <= d.ci95[1] and d.seed == 0
    assert rs.paired_differences(seed_ctx(task, test, 0.0)) == {}  # no primary learner row


# --- over seeds --------------------------------------------------------------------------


def test_rows_over_seeds_are_means_with_t_intervals_and_per_seed_values() -> None:
    def seed_result(seed: int, metric: float, objective: float, k: int):
        rows = [
            row("best_fixed", metric, objective, "fixed", method=f"Toy best fixed depth (k={k}, x)"),
            row("learner:reverse_kl", metric + 1, objective + 1),
        ]  # fmt: skip
        return type("R", (), {"seed": seed, "rows": rows})()

    per_seed = [seed_result(0, 1.0, 10.0, 2), seed_result(1, 3.0, 20.0, 3)]
    out = {r.id: r for r in rs._aggregate_rows(per_seed)}
    best = out["best_fixed"]
    assert best.metric == 2.0 and best.objective == 15.0 and best.ci_over == "2 seeds"
    assert best.ci95 == pytest.approx(rs.seed_interval([1.0, 3.0]))
    assert best.objective_ci95 == pytest.approx(rs.seed_interval([10.0, 20.0]))
    assert best.method == "Toy best fixed depth (chosen on validation, per seed)"
    # The first seed's row names the method; another seed's name is kept where it differs.
    assert [p.method for p in best.per_seed] == [None, "Toy best fixed depth (k=3, x)"]
    assert [p.metric for p in out["learner:reverse_kl"].per_seed] == [2.0, 4.0]
    # One seed: the row keeps its own (test-instance) interval.
    (single,) = [r for r in rs._aggregate_rows(per_seed[:1]) if r.id == "best_fixed"]
    assert single.ci95 == [0.0, 1.0] and single.ci_over == "test instances"


def test_paired_differences_over_seeds() -> None:
    def res(seed, diff):
        d = PairedDifference("m", diff, [diff - 1, diff + 1], 2 * diff, [0.0, 4 * diff], seed=seed)
        return type("R", (), {"seed": seed, "paired_differences": {"fixed_T": d}})()

    one = rs._aggregate_paired([res(0, 1.0)])["fixed_T"]
    assert one.ci95 == [0.0, 2.0] and one.ci_over == "test instances (paired)"
    many = rs._aggregate_paired([res(0, 1.0), res(1, 2.0), res(2, 4.0)])["fixed_T"]
    assert many.difference == pytest.approx(7 / 3) and many.objective_difference == pytest.approx(14 / 3)  # fmt: skip
    assert many.ci95 == pytest.approx(rs.seed_interval([1.0, 2.0, 4.0]))
    assert many.ci_over == "3 seeds" and len(many.per_seed) == 3


# --- health ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stayed", "layers", "oracle", "status"),
    [
        # T = 20: the gap is max(0.5, 20 / 20) = 1 layer.
        (True, 5.0, 6.01, "untrained"),
        (True, 5.0, 5.99, "ok"),  # stayed, but already where the oracle stops
        (False, 5.0, 12.0, "ok"),  # moved: never "untrained"
        (False, 20.0, 18.99, "never stops"),
        (False, 20.0, 19.01, "ok"),
        (False, 1.0, 2.01, "always stops"),
        (False, 1.0, 1.99, "ok"),
        (True, None, 10.0, "ok"),  # no validation curve to judge
    ],
)
def test_health_verdict_on_both_sides_of_its_threshold(stayed, layers, oracle, status) -> None:
    got, message = health_verdict(stayed, layers, oracle, 20)
    assert got == status
    if layers is not None:
        assert f"{oracle:.2f}" in message


def test_health_gap_is_half_a_layer_on_a_short_predictor() -> None:
    assert health_verdict(True, 2.0, 2.6, 6)[0] == "untrained"
    assert health_verdict(True, 2.0, 2.4, 6)[0] == "ok"


def test_a_saved_health_is_judged_again_by_todays_rule() -> None:
    trial = Trial("stage2", 1, "reverse_kl", 0.5)
    # Saved before ``stayed`` was recorded: flagged untrained then, so it stayed.
    saved = {"status": "untrained", "message": "old", "val_avg_layers": 3.0, "oracle_val_avg_layers": 3.2}  # fmt: skip
    h = rs._health_of(trial, {"health": saved}, num_layers=6)
    assert h.status == "ok" and h.key == trial.key and h.seed == 1 and h.cost == 0.5
    moved = {**saved, "stayed": True, "oracle_val_avg_layers": 5.0}
    assert rs._health_of(trial, {"health": moved}, 6).status == "untrained"
    assert rs._health_of(trial, {}, 6) is None


def test_budget_curve_keeps_the_best_of_points_at_one_depth_and_drops_nans() -> None:
    from l2s_gym import frontier as fr

    grid = np.array([1.0, 2.0, 3.0])
    f = fr.budget_curve([1.0, 2.0, 2.0, 3.0, 3.0], [0.0, 1.0, 5.0, math.nan, 2.0], grid, True)
    assert f.tolist() == [0.0, 5.0, 5.0]


def test_one_policy_paired_over_seeds_is_the_seed_mean_with_a_t_interval() -> None:
    """Over seeds, each price's difference is the seeds' mean with their t interval, each
    seed's own (with its interval over instances) kept; a price one seed lacks is dropped."""
    from types import SimpleNamespace

    from l2s_gym.results import _aggregate_one_policy_paired, seed_interval

    def seed(diffs: dict[str, float]) -> SimpleNamespace:
        rows = {
            c: PairedDifference("m", d, [d - 0.1, d + 0.1], 2 * d, [2 * d - 1, 2 * d + 1], seed=0)
            for c, d in diffs.items()
        }
        return SimpleNamespace(one_policy_paired={"reverse_kl": rows})

    out = _aggregate_one_policy_paired(
        [seed({"0": 0.1, "1": -0.2}), seed({"0": 0.3, "1": 0.0}), seed({"0": 0.2})]
    )
    assert set(out["reverse_kl"]) == {"0"}
    d = out["reverse_kl"]["0"]
    assert d.difference == pytest.approx(0.2) and d.objective_difference == pytest.approx(0.4)
    assert d.ci95 == seed_interval([0.1, 0.3, 0.2]) and d.ci_over == "3 seeds"
    kept = [x.ci95 for x in d.per_seed]
    assert kept == [[v - 0.1, v + 0.1] for v in (0.1, 0.3, 0.2)]
