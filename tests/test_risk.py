"""The risk-calibrated read-out (l2s_gym.risk): p-values, fixed-sequence testing, the promise
kept on synthetic problems of known risk, and the fallback to full depth."""

from __future__ import annotations

import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from scipy import stats as scipy_stats

from l2s_gym.predictor import Trace
from l2s_gym.risk import (
    QualityLoss,
    RiskCalibration,
    bentkus_p_value,
    binomial_cdf,
    binomial_p_value,
    calibrate_risk,
    default_risk,
    fixed_sequence_test,
    fresh_set_level,
    fresh_set_tail,
    hoeffding_bentkus_p_value,
    hoeffding_p_value,
    learn_then_test,
    p_value,
    risk_at,
    risk_grid,
)
from l2s_gym.rules import FULL_DEPTH_RULE, ReadoutRule


def stub_task(higher_is_better: bool = True, name: str = "stub") -> SimpleNamespace:
    """What calibrate_risk reads of a task: its name, metric name and direction."""
    return SimpleNamespace(name=name, metric_name="score", higher_is_better=higher_is_better)


def trace_of(stats: torch.Tensor) -> Trace:
    return Trace(
        losses=-stats.float(),
        metric_stats=stats.float(),
        features=torch.zeros(0),
        groups=torch.zeros(stats.shape[0], dtype=torch.long),
    )


# --- p-values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "p"),
    [(0, 1, 0.3), (3, 10, 0.1), (7, 10, 0.5), (12, 200, 0.1), (150, 2000, 0.1), (40, 4000, 0.02)],
)
def test_binomial_cdf_matches_scipy(k: int, n: int, p: float) -> None:
    assert binomial_cdf(k, n, p) == pytest.approx(float(scipy_stats.binom.cdf(k, n, p)), rel=1e-9)


def test_binomial_cdf_edges() -> None:
    assert binomial_cdf(-1, 10, 0.2) == 0.0
    assert binomial_cdf(10, 10, 0.2) == 1.0
    assert binomial_cdf(3, 10, 0.0) == 1.0
    assert binomial_cdf(3, 10, 1.0) == 0.0


def exact_cdf(k: int, n: int, p: Fraction) -> Fraction:
    return sum((math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1)), Fraction(0))


def test_hoeffding_p_value_known_values() -> None:
    n, risk, eps = 100, 0.05, 0.1
    h1 = risk * math.log(risk / eps) + (1 - risk) * math.log((1 - risk) / (1 - eps))
    assert hoeffding_p_value(risk, n, eps) == pytest.approx(math.exp(-n * h1), rel=1e-12)
    assert hoeffding_p_value(risk, n, eps) == pytest.approx(0.18812, abs=1e-5)
    # No loss at all: exp(n log(1 - eps)) = (1 - eps)^n.
    assert hoeffding_p_value(0.0, 50, 0.1) == pytest.approx(0.9**50, rel=1e-12)
    # At or above epsilon the evidence is none: p = 1.
    assert hoeffding_p_value(0.1, 100, 0.1) == 1.0
    assert hoeffding_p_value(0.3, 100, 0.1) == 1.0
    assert hoeffding_p_value(0.0, 0, 0.1) == 1.0


@pytest.mark.parametrize(("risk", "n", "eps"), [(0.0, 8, 0.2), (0.05, 20, 0.1), (0.13, 15, 0.25), (0.31, 12, 0.2)])  # fmt: skip
def test_bentkus_p_value_brute_force(risk: float, n: int, eps: float) -> None:
    k = math.ceil(n * risk)
    expected = min(1.0, math.e * float(exact_cdf(k, n, Fraction(eps))))
    assert bentkus_p_value(risk, n, eps) == pytest.approx(expected, rel=1e-10)
    hb = hoeffding_bentkus_p_value(risk, n, eps)
    assert hb == min(hoeffding_p_value(risk, n, eps), bentkus_p_value(risk, n, eps))


@pytest.mark.parametrize(("n", "eps"), [(10, 0.1), (37, 0.2), (120, 0.05)])
def test_p_values_are_valid_exactly_at_the_boundary(n: int, eps: float) -> None:
    """At true risk epsilon (H0's boundary, its worst case for 0/1 losses),
    P(p <= delta) <= delta for every delta: summed exactly over the binomial count."""
    pmf = [float(math.comb(n, k) * Fraction(eps) ** k * (1 - Fraction(eps)) ** (n - k)) for k in range(n + 1)]  # fmt: skip
    for delta in (0.01, 0.05, 0.1, 0.2, 0.5):
        for p_of in (
            lambda k: binomial_p_value(k, n, eps),
            lambda k: hoeffding_bentkus_p_value(k / n, n, eps),
            lambda k: hoeffding_p_value(k / n, n, eps),
        ):
            size = sum(pmf[k] for k in range(n + 1) if p_of(k) <= delta)
            assert size <= delta + 1e-12


def test_p_value_dispatch() -> None:
    zero_one = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0] * 20)
    assert p_value(zero_one, 0.3, "auto") == binomial_p_value(20, 200, 0.3)
    assert p_value(zero_one, 0.3, "hoeffding_bentkus") == hoeffding_bentkus_p_value(0.1, 200, 0.3)
    # The exact binomial tail is tighter than Hoeffding-Bentkus on 0/1 losses.
    assert p_value(zero_one, 0.3, "binomial") < p_value(zero_one, 0.3, "hoeffding_bentkus")
    graded = torch.full((100,), 0.05, dtype=torch.float64)
    assert p_value(graded, 0.1, "auto") == hoeffding_bentkus_p_value(0.05, 100, 0.1)
    with pytest.raises(ValueError, match="0/1"):
        p_value(graded, 0.1, "binomial")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        p_value(torch.tensor([1.5]), 0.1)
    assert p_value(torch.zeros(0), 0.1) == 1.0


# --- fixed-sequence testing ----------------------------------------------------------------


def test_fixed_sequence_stops_at_the_first_non_rejection() -> None:
    assert fixed_sequence_test([0.01, 0.02, 0.5, 0.001], 0.05) == 2  # the last p is never used
    assert fixed_sequence_test([0.2, 0.001], 0.05) == 0
    assert fixed_sequence_test([0.05, 0.05], 0.05) == 2  # p <= delta rejects
    assert fixed_sequence_test([], 0.05) == 0
    assert fixed_sequence_test([math.nan, 0.0], 0.05) == 0


def test_learn_then_test_takes_the_last_rejection_before_the_first_failure() -> None:
    n = 400
    good, bad = torch.zeros(n), torch.ones(n)
    # Columns: certified, certified, not certified, "certified" (never tested).
    losses = torch.stack([good, good, bad, good], dim=1)
    out = learn_then_test(losses, 0.1, 0.1, "binomial")
    assert out.index == 1
    assert out.p_values[2] == 1.0 and out.p_values[3] is None
    assert out.risks == [0.0, 0.0, 1.0, 0.0]
    assert learn_then_test(torch.stack([bad, good], 1), 0.1, 0.1, "binomial").index is None
    with pytest.raises(ValueError, match="epsilon"):
        learn_then_test(losses, 0.0, 0.1)
    with pytest.raises(ValueError, match="delta"):
        learn_then_test(losses, 0.1, 1.0)


# --- the promise on synthetic problems of known risk ---------------------------------------


def simulated_violation_rate(losses_of, true_risks: list[float], eps: float, delta: float, method: str, draws: int, n: int) -> float:  # fmt: skip  # noqa: ANN001
    gen = torch.Generator().manual_seed(0)
    broken = 0
    for _ in range(draws):
        out = learn_then_test(losses_of(n, gen), eps, delta, method)  # type: ignore[arg-type]
        chosen_risk = 0.0 if out.index is None else true_risks[out.index]
        broken += chosen_risk > eps
    return broken / draws


def test_violation_rate_at_most_delta_for_a_0_1_risk() -> None:
    """A grid from the latest stop to the earliest whose true risks rise through epsilon,
    with a point just above it (the hardest case); nested losses, as nested read-outs give."""
    eps, delta, draws = 0.1, 0.1, 1000
    risks = [0.0, 0.01, 0.03, 0.05, 0.07, 0.085, 0.095, 0.105, 0.12, 0.15, 0.2, 0.3]

    def losses_of(n: int, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, 1, generator=gen, dtype=torch.float64)
        return (u < torch.tensor(risks, dtype=torch.float64)).double()

    rate = simulated_violation_rate(losses_of, risks, eps, delta, "binomial", draws, n=400)
    slack = 3 * math.sqrt(delta * (1 - delta) / draws)
    assert rate <= delta + slack
    assert rate > 0.02  # the exact test is not vacuously conservative here


def test_violation_rate_at_most_delta_for_a_bounded_risk() -> None:
    """Losses in [0, 1], min(1, c U) with U uniform (mean c / 2): Hoeffding-Bentkus."""
    eps, delta, draws = 0.1, 0.1, 600
    risks = [0.0, 0.02, 0.05, 0.08, 0.095, 0.102, 0.11, 0.14, 0.2, 0.3]

    def losses_of(n: int, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, 1, generator=gen, dtype=torch.float64)
        return (u * 2 * torch.tensor(risks, dtype=torch.float64)).clamp(max=1.0)

    rate = simulated_violation_rate(losses_of, risks, eps, delta, "hoeffding_bentkus", draws, n=500)
    assert rate <= delta + 3 * math.sqrt(delta * (1 - delta) / draws)


# --- the promise about a set of m fresh instances ------------------------------------------


@pytest.mark.parametrize(("m", "eps", "risk"), [(7, 0.3, 0.1), (20, 0.1, 0.05), (40, 0.25, 0.2)])
def test_fresh_set_tail_brute_force(m: int, eps: float, risk: float) -> None:
    """The 0/1 tail is P(more than eps m of m Bernoulli(risk) fail), summed exactly; the
    bounded-loss tail (Hoeffding-Bentkus) is a valid bound on it (0/1 losses lie in [0, 1])."""
    r = Fraction(risk)
    exact = sum(
        math.comb(m, k) * r**k * (1 - r) ** (m - k)
        for k in range(m + 1)
        if Fraction(k, m) > Fraction(eps)  # fmt: skip
    )
    assert fresh_set_tail(risk, m, eps, binary=True) == pytest.approx(
        float(exact), rel=1e-9, abs=1e-15
    )
    assert fresh_set_tail(risk, m, eps, binary=False) >= float(exact) - 1e-12


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize(
    ("m", "eps", "delta"), [(50, 0.1, 0.05), (600, 0.1, 0.05), (2500, 0.02, 0.05)]
)
def test_fresh_set_level_is_the_largest_level_that_keeps_the_tail(m: int, eps: float, delta: float, binary: bool) -> None:  # fmt: skip
    level = fresh_set_level(eps, m, delta, binary)
    assert 0 < level < eps
    assert fresh_set_tail(level, m, eps, binary) <= delta
    assert fresh_set_tail(level + 2e-6, m, eps, binary) > delta
    # More instances, less room for the set's own scatter: the level rises toward epsilon.
    assert fresh_set_level(eps, 4 * m, delta, binary) > level
    # A set of 3: one loss is already over 0.1, so the level is P(Bin(3, r) >= 1) = 0.05.
    assert fresh_set_level(0.1, 3, 0.05) == pytest.approx(1 - 0.95 ** (1 / 3), abs=2e-6)
    with pytest.raises(ValueError, match="test_size"):
        fresh_set_tail(0.05, 0, 0.1, True)


def test_test_set_promise_is_kept_on_fresh_sets() -> None:
    """The set promise, simulated: calibration and test sets drawn i.i.d. from a grid of
    known risks (the hardest case, points just under and over epsilon), the chosen rule's
    risk on each test set of m against epsilon; the population promise, the same draws,
    breaks the set promise far more often."""
    eps, delta, draws, n, m = 0.1, 0.1, 1000, 400, 300
    risks = torch.tensor([0.0, 0.03, 0.06, 0.08, 0.09, 0.095, 0.1, 0.105, 0.12, 0.2], dtype=torch.float64)  # fmt: skip
    gen = torch.Generator().manual_seed(11)
    broken = {"set": 0, "population": 0}
    for _ in range(draws):
        cal = (torch.rand(n, 1, generator=gen, dtype=torch.float64) < risks).double()
        test = (torch.rand(m, 1, generator=gen, dtype=torch.float64) < risks).double()
        level = fresh_set_level(eps, m, delta / 2)
        for name, out in (
            ("set", learn_then_test(cal, level, delta / 2, "binomial")),
            ("population", learn_then_test(cal, eps, delta, "binomial")),
        ):
            test_risk = 0.0 if out.index is None else float(test[:, out.index].mean())
            broken[name] += test_risk > eps
    slack = 3 * math.sqrt(delta * (1 - delta) / draws)
    assert broken["set"] / draws <= delta + slack
    assert broken["population"] > broken["set"]


def test_calibrate_risk_with_a_test_size() -> None:
    gen = torch.Generator().manual_seed(12)
    task = stub_task()
    val, logits = synthetic_problem(3000, gen)
    loss = QualityLoss("indicator", "difference", 0.0)
    pop = calibrate_risk(val, logits, task, 0.05, 0.1, loss=loss)  # type: ignore[arg-type]
    cal = calibrate_risk(val, logits, task, 0.05, 0.1, loss=loss, test_size=1000)  # type: ignore[arg-type]
    level = fresh_set_level(0.05, 1000, 0.05)
    assert cal.test_size == 1000 and cal.level == level and pop.level is None
    rules = risk_grid("quantile")
    matrix = torch.stack([loss.losses(task, val, r.stop(logits)) for r in rules], dim=1)  # type: ignore[arg-type]
    j = learn_then_test(matrix, level, 0.05, "binomial").index
    assert j is not None and cal.rule == rules[j]
    assert cal.val_avg_layers >= pop.val_avg_layers  # a stricter promise stops no earlier
    assert "set of 1000 fresh instances" in cal.promise and "delta/2" in cal.promise
    assert RiskCalibration.from_dict(cal.to_dict()) == cal
    tiny = calibrate_risk(val, logits, task, 0.05, 0.1, loss=loss, test_size=5)  # type: ignore[arg-type]
    assert tiny.level == pytest.approx(1 - 0.95 ** (1 / 5), abs=2e-6)
    assert tiny.val_avg_layers >= cal.val_avg_layers
    with pytest.raises(ValueError, match="test_size"):
        calibrate_risk(val, logits, task, 0.05, 0.1, loss=loss, test_size=0)  # type: ignore[arg-type]


# --- calibrate_risk end to end -------------------------------------------------------------


def synthetic_problem(n: int, gen: torch.Generator, T: int = 6) -> tuple[Trace, torch.Tensor]:
    """Stop logits rising with the layer; each instance "gets it right" (stat 100) from a
    layer of its own on, and its logits cross zero near there: a policy that is mostly right."""
    ready = torch.randint(0, T, (n,), generator=gen)
    layers = torch.arange(T)
    stats = (layers.unsqueeze(0) >= ready.unsqueeze(1)).float() * 100.0
    noise = 1.5 * torch.randn(n, 1, generator=gen)
    logits = 2.0 * (layers.unsqueeze(0) - ready.unsqueeze(1)).float() + noise
    return trace_of(stats), logits


def test_calibrate_risk_end_to_end_and_its_certificate() -> None:
    gen = torch.Generator().manual_seed(3)
    task = stub_task(higher_is_better=True)
    val, logits = synthetic_problem(3000, gen)
    eps, delta = 0.05, 0.1
    loss = QualityLoss("indicator", "difference", 0.0)
    cal = calibrate_risk(val, logits, task, eps, delta, loss=loss)  # type: ignore[arg-type]
    assert not cal.fallback and cal.method == "binomial" and cal.n == 3000
    rules = risk_grid("quantile")
    # It is Learn then Test on the loss matrix of the grid.
    matrix = torch.stack([loss.losses(task, val, r.stop(logits)) for r in rules], dim=1)  # type: ignore[arg-type]
    j = learn_then_test(matrix, eps, delta, "binomial").index
    assert j is not None and cal.rule == rules[j]
    assert cal.val_risk == pytest.approx(float(matrix[:, j].mean()))
    assert cal.p_value == pytest.approx(binomial_p_value(int(matrix[:, j].sum()), 3000, eps))
    assert cal.p_value <= delta < cal.grid[j + 1]["p_value"]
    assert all(g["certified"] == (i <= j) for i, g in enumerate(cal.grid))
    assert cal.val_avg_layers == pytest.approx(float((cal.rule.stop(logits) + 1).double().mean()))
    assert cal.val_avg_layers < val.num_layers - 1  # it saves layers
    # The promise on fresh instances from the same distribution.
    fresh, fresh_logits = synthetic_problem(50_000, gen)
    assert risk_at(task, fresh, cal.rule.stop(fresh_logits), loss) <= eps  # type: ignore[arg-type]
    # The certificate travels as plain data.
    back = RiskCalibration.from_dict(cal.to_dict())
    assert back == cal and back.rule == cal.rule
    assert ReadoutRule.from_dict(cal.rule.to_dict()) == cal.rule
    assert "epsilon=0.05, delta=0.1" in cal.label and "probability >= 0.9" in cal.promise


def test_threshold_grid_and_explicit_grids() -> None:
    gen = torch.Generator().manual_seed(4)
    val, logits = synthetic_problem(2000, gen)
    task = stub_task()
    cal = calibrate_risk(val, logits, task, 0.05, 0.1, grid="threshold")  # type: ignore[arg-type]
    assert cal.rule.kind == "threshold" and not cal.fallback
    grid = [ReadoutRule("quantile", 0.9), ReadoutRule("quantile", 0.5)]
    mine = calibrate_risk(val, logits, task, 0.05, 0.1, grid=grid)  # type: ignore[arg-type]
    assert mine.rule in grid and len(mine.grid) == 2
    with pytest.raises(ValueError, match="deterministic"):
        calibrate_risk(val, logits, task, 0.05, 0.1, grid=[ReadoutRule("sample")])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0/1"):
        calibrate_risk(val, logits, task, 0.05, 0.1, loss=QualityLoss("clipped"), method="binomial")  # type: ignore[arg-type]


def test_default_grids_are_nested_from_late_to_early() -> None:
    logits = 3 * torch.randn(500, 9, generator=torch.Generator().manual_seed(5))
    for kind in ("quantile", "threshold"):
        stops = torch.stack([r.stop(logits) for r in risk_grid(kind)], dim=1)  # type: ignore[arg-type]
        assert bool((stops[:, 1:] <= stops[:, :-1]).all()), kind
    with pytest.raises(ValueError, match="grid kind"):
        risk_grid("sample")  # type: ignore[arg-type]


# --- degenerate cases: full depth -----------------------------------------------------------


def test_no_setting_passes_falls_back_to_full_depth() -> None:
    """Every early stop is wrong where full depth is right: nothing is certified, and the
    rule is full depth (risk 0 by definition), stated in the certificate."""
    n, T = 500, 5
    stats = torch.zeros(n, T)
    stats[:, -1] = 100.0
    logits = torch.full((n, T), 5.0)  # a policy that always wants to stop at once
    cal = calibrate_risk(trace_of(stats), logits, stub_task(), 0.1, 0.1)  # type: ignore[arg-type]
    assert cal.fallback and cal.rule == FULL_DEPTH_RULE
    assert cal.p_value is None and cal.val_risk == 0.0 and cal.val_avg_layers == T
    assert cal.grid[0]["p_value"] == 1.0 and all(g["p_value"] is None for g in cal.grid[1:])
    assert "fallback" in cal.promise
    assert bool((cal.rule.stop(logits) == T - 1).all())
    # Too few calibration instances to certify anything: the fallback too.
    few = calibrate_risk(trace_of(torch.full((10, T), 100.0)), logits[:10], stub_task(), 0.1, 0.1)  # type: ignore[arg-type]
    assert few.fallback  # even at zero observed risk, 0.9^10 = 0.35 > delta
    empty = calibrate_risk(trace_of(torch.zeros(0, T)), torch.zeros(0, T), stub_task(), 0.1, 0.1)  # type: ignore[arg-type]
    assert empty.fallback and empty.n == 0
    none = calibrate_risk(trace_of(stats), logits, stub_task(), 0.1, 0.1, grid=[])  # type: ignore[arg-type]
    assert none.fallback


def test_full_depth_rule_never_stops_early() -> None:
    rule = FULL_DEPTH_RULE
    assert rule == ReadoutRule.from_dict(rule.to_dict()) and rule.label.startswith("full depth")
    logits = torch.tensor([[50.0, 80.0, 1e4, -3.0], [-9.0, 0.0, 9.0, 90.0]])
    assert rule.stop(logits).tolist() == [3, 3]
    survival = torch.zeros(2)
    for t in range(logits.shape[1] - 1):
        stop, survival = rule.stop_now(logits[:, t], survival)
        assert not bool(stop.any())
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ReadoutRule("quantile", 1.5)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ReadoutRule("threshold", 1.0)


# --- the quality loss ----------------------------------------------------------------------


def test_quality_loss_shortfalls_and_values() -> None:
    stats = torch.tensor([[0.0, 100.0], [100.0, 100.0], [100.0, 0.0], [0.0, 0.0]])
    trace = trace_of(stats)
    at_first = torch.zeros(4, dtype=torch.long)
    wrong_where_right = QualityLoss("indicator", "difference", 0.0)
    # Higher is better (accuracy): only instance 0 is wrong early and right at full depth.
    assert wrong_where_right.losses(stub_task(True), trace, at_first).tolist() == [1, 0, 0, 0]  # type: ignore[arg-type]
    # A squared error, lower is better: 10 log10 ratio against full depth.
    err = trace_of(torch.tensor([[2.0, 1.0], [1.0, 1.0], [0.5, 1.0], [1.2, 1.0]]))
    db = QualityLoss("indicator", "db", 1.0)
    assert db.losses(stub_task(False), err, at_first).tolist() == [1, 0, 0, 0]  # type: ignore[arg-type]
    clipped = QualityLoss("clipped", "db", 0.0, scale=6.0)
    values = clipped.losses(stub_task(False), err, at_first)  # type: ignore[arg-type]
    assert values.tolist() == pytest.approx(
        [10 * math.log10(2) / 6, 0, 0, 10 * math.log10(1.2) / 6]
    )
    assert QualityLoss.from_dict(clipped.to_dict()) == clipped
    assert "more than 1 dB" in db.describe("squared error", False)
    with pytest.raises(ValueError, match="tolerance"):
        QualityLoss(tolerance=-1.0)
    with pytest.raises(ValueError, match="scale"):
        QualityLoss("clipped", scale=0.0)


def test_every_shipped_family_states_its_risk() -> None:
    for name in ("recognition", "denoising", "sparse_recovery", "meta_learning"):
        stated = default_risk(name)
        assert stated.loss.binary and 0 < stated.epsilon < 1 and stated.delta == 0.1
        assert stated.definition
    assert default_risk("something else").loss == QualityLoss("indicator", "difference", 0.0)


# --- the report's row -----------------------------------------------------------------------


def test_report_shows_the_calibrated_row_its_rule_and_its_promise() -> None:
    from l2s_gym import report
    from l2s_gym.result_types import Row, RunResults

    label = "Toy-stop, reverse-KL policy, risk-calibrated read-out (epsilon=0.1, delta=0.1)"
    rows = [
        Row("learner:reverse_kl", "Toy-stop (reverse KL)", "learner", 0.2, 3.5, 0.3, None, None,
            readout="median of q_phi"),
        Row("risk:reverse_kl", label, "calibrated", 0.21, 4.0, 0.31, None, None,
            readout="q_phi quantile 0.8", learner="reverse_kl"),
    ]  # fmt: skip
    results = RunResults(
        experiment="toy", metric="toy loss", higher_is_better=False, rows=rows, task="toy"
    )
    table = report.markdown_table(results)
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {label}"))
    assert "| q_phi quantile 0.8 |" in line
    assert "Learn then Test" in table and "<= 0.1" in table
    assert default_risk("toy").definition in table
    no_row = RunResults(experiment="toy", metric="m", higher_is_better=False, rows=rows[:1])
    assert "Learn then Test" not in report.markdown_table(no_row)
