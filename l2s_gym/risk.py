"""A read-out with a guarantee: Learn-then-Test calibration of a stop policy's read-out.

``calibrate_risk`` picks, on a calibration (validation) set, the earliest-stopping read-out
of a fixed grid ordered from the latest stop to the earliest (by default the quantile rule
at ``q = 0.99, 0.98, ..., 0.01``) such that, with probability at least ``1 - delta`` over
the draw of the calibration set,

    R(rule) = E[ loss_i(rule) ] <= epsilon,

where ``loss_i`` is a per-instance quality loss against full depth, bounded in ``[0, 1]``
(``QualityLoss``; e.g. "wrong where full depth is right" for a classifier, "more than
1 dB worse than full depth" for a regression). The calibration and the test instances are
assumed exchangeable (drawn from one distribution), and the policy must not have been
fitted on the calibration instances.

How (Angelopoulos, Bates, Candes, Jordan, Lei 2021, "Learn then Test"): each grid point
``j`` gets a p-value for ``H0_j: R_j > epsilon`` (the exact binomial tail for a 0/1 loss,
Hoeffding-Bentkus for a loss in ``[0, 1]``), and fixed-sequence testing walks the grid from
the latest stop on, rejecting while ``p_j <= delta`` and stopping at the first
non-rejection. That controls the family-wise error at ``delta`` whatever the grid's true
risks are, so the last rejected (earliest-stopping) setting has risk ``<= epsilon`` with
probability ``>= 1 - delta``. Where not even the first grid point is rejected, the
read-out falls back to full depth (``FULL_DEPTH_RULE``: risk 0 by definition).

With ``test_size=m`` the promise is about a set of ``m`` fresh instances instead: with
probability at least ``1 - delta`` over the draw of the calibration instances *and* of the
``m`` test instances, the test set's own empirical risk (its share of instances made worse,
for a 0/1 loss) is at most ``epsilon``. Half of ``delta`` goes to the test set's sampling:
``fresh_set_level`` gives the largest population risk ``epsilon'`` at which a set of ``m``
exceeds ``epsilon`` with probability ``<= delta / 2`` (the exact binomial tail for a 0/1
loss, Hoeffding-Bentkus for a loss in ``[0, 1]``), and Learn then Test certifies
``R <= epsilon'`` at ``delta / 2``. A union bound gives the rest: the test set is
independent of the calibration set, so given the chosen rule its risk's tail is that of a
set of ``m`` at population risk ``R <= epsilon'``.

The result is an ordinary ``ReadoutRule`` (the runner, the checkpoints and the reports
already handle it) plus its certificate (``RiskCalibration``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from l2s_gym.predictor import Trace
from l2s_gym.rules import FULL_DEPTH_RULE, ReadoutRule
from l2s_gym.task import Task

LossKind = Literal["indicator", "clipped"]
GapKind = Literal["difference", "db"]
Method = Literal["auto", "binomial", "hoeffding_bentkus"]

#: The quantile grid's values, from the latest stop to the earliest.
RISK_QUANTILES: tuple[float, ...] = (
    0.99, 0.98, 0.97, 0.96,
    *(round(0.05 * i, 2) for i in range(19, 0, -1)),
    0.04, 0.03, 0.02, 0.01,
)  # fmt: skip


def risk_grid(kind: Literal["quantile", "threshold"] = "quantile") -> list[ReadoutRule]:
    """The default grid, ordered from the latest stop to the earliest.

    ``quantile``: the quantile rule at ``RISK_QUANTILES`` (first ``t`` whose cumulative
    stop probability reaches ``q``); ``threshold``: the first ``t`` with ``pi_t > v`` at
    the same values. Both are nested: on every instance a smaller value never stops later,
    so the order is fixed before any data is seen (fixed-sequence testing needs that).
    """
    if kind not in ("quantile", "threshold"):
        raise ValueError(f"risk grid kind must be quantile or threshold, got {kind!r}")
    return [ReadoutRule(kind, v) for v in RISK_QUANTILES]


# --- the per-instance quality loss ---------------------------------------------------------


@dataclass(frozen=True)
class QualityLoss:
    """A per-instance quality loss against full depth, in ``[0, 1]``.

    The *shortfall* of an instance stopped at layer ``s`` is how much worse its metric
    statistic is than at full depth ``T`` (positive: worse), per ``gap``:

    - ``difference``: ``stat_T - stat_s`` where higher is better, else ``stat_s - stat_T``
      (in the metric's units: dB of PSNR, accuracy points, ...);
    - ``db``: ``10 log10`` of the ratio of the two statistics (positive statistics such as
      a squared error: ``10 log10(stat_s / stat_T)`` where lower is better).

    The loss is, per ``kind``:

    - ``indicator``: ``1{shortfall > tolerance}`` (0/1: exact binomial p-values);
    - ``clipped``: ``min(1, max(0, (shortfall - tolerance) / scale))`` (Hoeffding-Bentkus).
    """

    kind: LossKind = "indicator"
    gap: GapKind = "difference"
    tolerance: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in ("indicator", "clipped"):
            raise ValueError(f"quality loss kind must be indicator or clipped, got {self.kind!r}")
        if self.gap not in ("difference", "db"):
            raise ValueError(f"quality loss gap must be difference or db, got {self.gap!r}")
        if not math.isfinite(self.tolerance) or self.tolerance < 0:
            raise ValueError(f"quality loss tolerance must be >= 0, got {self.tolerance!r}")
        if not math.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"quality loss scale must be > 0, got {self.scale!r}")

    @property
    def binary(self) -> bool:
        """Whether the loss takes only the values 0 and 1 (then the binomial p-value)."""
        return self.kind == "indicator"

    def shortfall(self, stats: Tensor, full: Tensor, higher_is_better: bool) -> Tensor:
        """Per-instance shortfall of statistics ``stats`` against full depth's ``full``."""
        stats, full = stats.double(), full.double()
        if self.gap == "difference":
            return full - stats if higher_is_better else stats - full
        tiny = torch.finfo(torch.float64).tiny
        ratio_db = 10.0 * (stats.clamp_min(tiny).log10() - full.clamp_min(tiny).log10())
        return -ratio_db if higher_is_better else ratio_db

    def values(self, shortfall: Tensor) -> Tensor:
        """The loss of each shortfall, in ``[0, 1]`` (float64)."""
        if self.kind == "indicator":
            return (shortfall > self.tolerance).double()
        return ((shortfall - self.tolerance) / self.scale).clamp(0.0, 1.0)

    def losses(self, task: Task, trace: Trace, stop: Tensor) -> Tensor:
        """``(B,)`` per-instance losses of stopping ``trace``'s instances at ``stop``."""
        stats = trace.metric_stats.gather(1, stop.long().unsqueeze(1)).squeeze(1)
        return self.values(self.shortfall(stats, trace.metric_stats[:, -1], task.higher_is_better))

    def describe(self, metric_name: str = "metric", higher_is_better: bool = False) -> str:
        """The risk in words, for the certificate and the reports."""
        if self.gap == "difference":
            unit = f"{metric_name} worse than at full depth by"
            amount = f"{self.tolerance:g}" if self.tolerance else "any amount"
        else:
            unit = f"per-instance {metric_name} statistic worse than at full depth by"
            amount = f"{self.tolerance:g} dB ({10 ** (self.tolerance / 10):.3g}x)"
        if self.kind == "indicator":
            more = "more than " if self.tolerance or self.gap == "db" else ""
            return f"share of instances with {unit} {more}{amount}"
        return (
            f"mean of min(1, max(0, (shortfall - {self.tolerance:g}) / {self.scale:g})), "
            f"shortfall: {unit} ({'dB' if self.gap == 'db' else metric_name})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "gap": self.gap,
            "tolerance": self.tolerance,
            "scale": self.scale,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> QualityLoss:
        return QualityLoss(
            str(data.get("kind", "indicator")),  # type: ignore[arg-type]
            str(data.get("gap", "difference")),  # type: ignore[arg-type]
            float(data.get("tolerance", 0.0)),
            float(data.get("scale", 1.0)),
        )


@dataclass(frozen=True)
class RiskDefault:
    """A task's stated risk: the quality loss, the level ``epsilon`` and ``delta``."""

    loss: QualityLoss
    epsilon: float
    delta: float = 0.1
    definition: str = ""
    """The risk in words (default: ``loss.describe``)."""


DEFAULT_RISKS: dict[str, RiskDefault] = {
    "recognition": RiskDefault(
        QualityLoss("indicator", "difference", 0.0),
        0.02,
        definition="share of instances wrong where full depth is right; it bounds the accuracy lost",
    ),
    "denoising": RiskDefault(
        QualityLoss("indicator", "difference", 1.0),
        0.1,
        definition="share of images whose PSNR is more than 1 dB below full depth's",
    ),
    "sparse_recovery": RiskDefault(
        QualityLoss("indicator", "db", 1.0),
        0.1,
        definition="share of instances whose squared error is over 1 dB (1.26x) above full depth's",
    ),
    "meta_learning": RiskDefault(
        QualityLoss("indicator", "db", 1.0),
        0.1,
        definition="share of tasks whose query MSE is more than 1 dB (1.26x) above full depth's",
    ),
}
"""Each shipped family's stated risk (``docs/method.md``, "A read-out with a guarantee")."""

GENERIC_RISK = RiskDefault(
    QualityLoss("indicator", "difference", 0.0),
    0.1,
    definition="share of instances whose metric statistic is worse than full depth's",
)
"""The risk of a task without a stated one: strict, so choose one for your task."""


def default_risk(task: Task | str) -> RiskDefault:
    """The stated risk of ``task`` (a task or its name); ``GENERIC_RISK`` if none."""
    name = task if isinstance(task, str) else task.name
    return DEFAULT_RISKS.get(name, GENERIC_RISK)


# --- p-values ------------------------------------------------------------------------------


def binomial_cdf(k: int, n: int, p: float) -> float:
    """``P(Bin(n, p) <= k)``, summed in log space (float64)."""
    if k < 0:
        return 0.0
    if k >= n:
        return 1.0
    if p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    i = torch.arange(k + 1, dtype=torch.float64)
    log_terms = (
        math.lgamma(n + 1)
        - torch.lgamma(i + 1)
        - torch.lgamma(n - i + 1)
        + i * math.log(p)
        + (n - i) * math.log1p(-p)
    )
    return min(1.0, float(torch.logsumexp(log_terms, dim=0).exp()))


def binomial_p_value(k: int, n: int, epsilon: float) -> float:
    """Exact p-value of ``H0: R >= epsilon`` from ``k`` losses among ``n`` 0/1 draws:
    ``P(Bin(n, epsilon) <= k)`` (the count is stochastically larger under ``H0``)."""
    return binomial_cdf(int(k), int(n), epsilon)


def _kl_bernoulli(a: float, b: float) -> float:
    """``h1(a, b) = a log(a/b) + (1 - a) log((1 - a)/(1 - b))`` (``0 log 0 = 0``)."""
    out = 0.0
    if a > 0:
        out += a * math.log(a / b)
    if a < 1:
        out += (1 - a) * math.log((1 - a) / (1 - b))
    return out


def hoeffding_p_value(risk: float, n: int, epsilon: float) -> float:
    """Hoeffding's p-value of ``H0: R >= epsilon`` (losses in ``[0, 1]``, mean ``risk``
    over ``n``): ``exp(-n h1(min(risk, epsilon), epsilon))``."""
    if n <= 0:
        return 1.0
    return math.exp(-n * _kl_bernoulli(min(risk, epsilon), epsilon))


def bentkus_p_value(risk: float, n: int, epsilon: float) -> float:
    """Bentkus's p-value of ``H0: R >= epsilon``: ``e P(Bin(n, epsilon) <= ceil(n risk))``."""
    if n <= 0:
        return 1.0
    return min(1.0, math.e * binomial_cdf(math.ceil(n * risk), n, epsilon))


def hoeffding_bentkus_p_value(risk: float, n: int, epsilon: float) -> float:
    """The Hoeffding-Bentkus p-value (the smaller of the two; Bates et al. 2021, as used by
    Learn then Test): valid for any loss in ``[0, 1]``."""
    return min(hoeffding_p_value(risk, n, epsilon), bentkus_p_value(risk, n, epsilon))


def fresh_set_tail(risk: float, m: int, epsilon: float, binary: bool) -> float:
    """A bound on ``P(mean of m fresh losses > epsilon)`` where each loss has mean ``risk``:
    exact for 0/1 losses (``P(Bin(m, risk) > floor(m epsilon))``), else Hoeffding-Bentkus
    for losses in ``[0, 1]`` (``min(exp(-m h1(epsilon, risk)), e P(Bin(m, risk) >=
    floor(m epsilon)))``, for ``risk < epsilon``)."""
    if m <= 0:
        raise ValueError(f"test_size must be a whole number >= 1, got {m!r}")
    k = math.floor(m * epsilon + 1e-9)
    if binary:
        return 1.0 - binomial_cdf(k, m, risk)
    if risk >= epsilon:
        return 1.0
    hoeffding = math.exp(-m * _kl_bernoulli(epsilon, risk)) if risk > 0 else 0.0
    return min(1.0, hoeffding, math.e * (1.0 - binomial_cdf(k - 1, m, risk)))


def fresh_set_level(epsilon: float, m: int, delta: float, binary: bool = True) -> float:
    """The largest population risk ``r <= epsilon`` at which a set of ``m`` fresh instances'
    empirical risk exceeds ``epsilon`` with probability at most ``delta``
    (``fresh_set_tail(r, m, epsilon, binary) <= delta``; bisection, rounded down to 1e-6)."""
    _check_levels(epsilon, delta)
    lo, hi = 0.0, epsilon
    if fresh_set_tail(lo, m, epsilon, binary) > delta:
        return 0.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if fresh_set_tail(mid, m, epsilon, binary) <= delta:
            lo = mid
        else:
            hi = mid
    return math.floor(lo * 1e6) / 1e6


def p_value(losses: Tensor, epsilon: float, method: Method = "hoeffding_bentkus") -> float:
    """A valid p-value of ``H0: E[loss] > epsilon`` from i.i.d. ``losses`` in ``[0, 1]``.

    ``binomial`` needs 0/1 losses (it raises otherwise); ``auto`` takes it for 0/1 losses
    and Hoeffding-Bentkus otherwise (decide by the loss's definition where you can:
    ``calibrate_risk`` does)."""
    n = int(losses.numel())
    if n == 0:
        return 1.0
    values = losses.double()
    if bool(((values < 0) | (values > 1)).any()):
        raise ValueError("losses must lie in [0, 1]")
    binary = bool(((values == 0) | (values == 1)).all())
    if method == "auto":
        method = "binomial" if binary else "hoeffding_bentkus"
    if method == "binomial":
        if not binary:
            raise ValueError("the binomial p-value needs 0/1 losses; use hoeffding_bentkus")
        return binomial_p_value(int(values.sum().round()), n, epsilon)
    if method == "hoeffding_bentkus":
        return hoeffding_bentkus_p_value(float(values.mean()), n, epsilon)
    raise ValueError(f"p-value method must be auto, binomial or hoeffding_bentkus, got {method!r}")


# --- fixed-sequence testing ----------------------------------------------------------------


def fixed_sequence_test(p_values: Sequence[float], delta: float) -> int:
    """How many hypotheses fixed-sequence testing rejects at level ``delta``: it walks
    ``p_values`` in order, rejecting while ``p <= delta``, and stops at the first
    non-rejection. The rejected ones are the first ``k`` (``0``: none); the family-wise
    error is at most ``delta``."""
    k = 0
    for p in p_values:
        if not p <= delta:
            break
        k += 1
    return k


@dataclass
class LTTResult:
    """Learn then Test on a loss matrix: the chosen column (``None``: none certified)."""

    index: int | None
    risks: list[float]
    p_values: list[float | None]
    """Each column's p-value; ``None`` past the first non-rejection (never tested)."""


def learn_then_test(
    losses: Tensor, epsilon: float, delta: float, method: Method = "hoeffding_bentkus"
) -> LTTResult:
    """Fixed-sequence Learn then Test on ``losses`` ``(n, m)``: column ``j`` holds each
    calibration instance's loss under grid point ``j`` (from the latest stop to the
    earliest). Returns the last rejected column: its risk is ``<= epsilon`` with
    probability ``>= 1 - delta`` over the i.i.d. draw of the ``n`` rows."""
    _check_levels(epsilon, delta)
    if losses.dim() != 2:
        raise ValueError(f"losses must be (n, m), got shape {tuple(losses.shape)}")
    risks = [float(c.mean()) if c.numel() else math.nan for c in losses.double().T]
    p_values: list[float | None] = []
    rejected = 0
    for j in range(losses.shape[1]):
        p = p_value(losses[:, j], epsilon, method)
        p_values.append(p)
        if not p <= delta:
            break
        rejected += 1
    p_values += [None] * (losses.shape[1] - len(p_values))
    return LTTResult(rejected - 1 if rejected else None, risks, p_values)


def _check_levels(epsilon: float, delta: float) -> None:
    if not 0.0 < epsilon < 1.0:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta!r}")


# --- the calibrated read-out ---------------------------------------------------------------


@dataclass
class RiskCalibration:
    """A risk-calibrated read-out: the rule and what it promises.

    With probability at least ``1 - delta`` over the draw of the ``n`` calibration
    instances, the expected ``loss`` (``risk_definition``) of ``rule`` on a fresh instance
    from the same distribution is at most ``epsilon``. ``fallback``: no grid point was
    certified, and ``rule`` is full depth (risk 0, no layers saved).
    """

    rule: ReadoutRule
    epsilon: float
    delta: float
    loss: QualityLoss
    risk_definition: str
    method: str
    n: int
    num_layers: int
    val_risk: float
    """The rule's empirical risk on the calibration set."""
    p_value: float | None
    """The rule's p-value for ``H0: risk > epsilon`` (``None`` for the fallback)."""
    val_avg_layers: float
    fallback: bool
    grid: list[dict[str, Any]] = field(default_factory=list)
    """Every grid point: ``rule``, ``label``, ``val_risk``, ``p_value`` (``None``: never
    tested), ``avg_layers``, ``certified``."""
    test_size: int | None = None
    """``None``: the promise is about the population risk. ``m``: about the empirical risk
    of a set of ``m`` fresh instances (``calibrate_risk(..., test_size=m)``)."""
    level: float | None = None
    """The population risk level Learn then Test certified, at ``delta / 2``, for a
    ``test_size`` promise (``fresh_set_level``); ``None`` otherwise (it is ``epsilon``)."""

    @property
    def label(self) -> str:
        return f"risk-calibrated read-out (epsilon={self.epsilon:g}, delta={self.delta:g})"

    @property
    def promise(self) -> str:
        """The guarantee in one sentence."""
        what = f"{self.rule.label}" + (" (fallback: nothing earlier certified)" if self.fallback else "")  # fmt: skip
        if self.test_size is None:
            claim = (
                f"over the draw of the {self.n} calibration instances, its risk "
                f"({self.risk_definition}) on fresh instances from the same distribution"
            )
        else:
            claim = (
                f"over the draw of the {self.n} calibration instances and of a set of "
                f"{self.test_size} fresh instances from the same distribution, that set's "
                f"risk ({self.risk_definition})"
            )
        level = (
            ""
            if self.level is None
            else f" (population risk <= {self.level:.4g} certified at delta/2)"
        )
        return (
            f"{what}: with probability >= {1 - self.delta:g} {claim} is <= "
            f"{self.epsilon:g}{level}; on calibration: risk "
            f"{self.val_risk:.4g}, p-value "
            f"{'-' if self.p_value is None else f'{self.p_value:.3g}'}, "
            f"{self.val_avg_layers:.3g} of {self.num_layers} layers on average"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule.to_dict(),
            "epsilon": self.epsilon,
            "delta": self.delta,
            "loss": self.loss.to_dict(),
            "risk_definition": self.risk_definition,
            "method": self.method,
            "n": self.n,
            "num_layers": self.num_layers,
            "val_risk": self.val_risk,
            "p_value": self.p_value,
            "val_avg_layers": self.val_avg_layers,
            "fallback": self.fallback,
            "grid": [dict(g) for g in self.grid],
            "test_size": self.test_size,
            "level": self.level,
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> RiskCalibration:
        p = data.get("p_value")
        return RiskCalibration(
            rule=ReadoutRule.from_dict(data["rule"]),
            epsilon=float(data["epsilon"]),
            delta=float(data["delta"]),
            loss=QualityLoss.from_dict(data["loss"]),
            risk_definition=str(data["risk_definition"]),
            method=str(data["method"]),
            n=int(data["n"]),
            num_layers=int(data["num_layers"]),
            val_risk=float(data["val_risk"]),
            p_value=None if p is None else float(p),
            val_avg_layers=float(data["val_avg_layers"]),
            fallback=bool(data["fallback"]),
            grid=[dict(g) for g in data.get("grid", [])],
            test_size=None if data.get("test_size") is None else int(data["test_size"]),
            level=None if data.get("level") is None else float(data["level"]),
        )


def risk_at(task: Task, trace: Trace, stop: Tensor, loss: QualityLoss) -> float:
    """The empirical risk (mean quality loss against full depth) of stopping at ``stop``."""
    return float(loss.losses(task, trace, stop).mean()) if len(trace) else math.nan


def calibrate_risk(
    val_trace: Trace,
    logits: Tensor,
    task: Task,
    epsilon: float,
    delta: float = 0.1,
    grid: Sequence[ReadoutRule] | Literal["quantile", "threshold"] = "quantile",
    loss: QualityLoss | None = None,
    method: Method = "auto",
    test_size: int | None = None,
) -> RiskCalibration:
    """The earliest-stopping read-out of ``grid`` certified by Learn then Test.

    Args:
        val_trace: the calibration trace (a validation set the policy was not fitted on).
        logits: the policy's stop logits on ``val_trace`` (``evaluation.stop_logits``).
        task: gives the metric's direction (and, with ``loss=None``, the stated risk).
        epsilon: the risk level: the promise is ``risk <= epsilon``.
        delta: the promise holds with probability ``>= 1 - delta`` over the calibration draw.
        grid: deterministic read-outs from the latest stop to the earliest (the order must
            not depend on the calibration data), or ``"quantile"`` / ``"threshold"`` for
            ``risk_grid``.
        loss: the per-instance quality loss against full depth; default the task's stated
            one (``default_risk``).
        method: the p-value: ``auto`` (binomial for an indicator loss, Hoeffding-Bentkus
            else), ``binomial`` or ``hoeffding_bentkus``.
        test_size: ``None``: the promise is about the population risk. ``m``: about the
            empirical risk of a set of ``m`` fresh instances (the set you will run):
            Learn then Test certifies the population level ``fresh_set_level(epsilon, m,
            delta / 2)`` at ``delta / 2``, and the set's sampling takes the other half.

    Returns:
        A ``RiskCalibration``; where no grid point is certified (or the calibration set is
        empty), its rule is full depth (``FULL_DEPTH_RULE``) and ``fallback`` is true.
    """
    _check_levels(epsilon, delta)
    rules = risk_grid(grid) if isinstance(grid, str) else list(grid)
    if any(not r.deterministic for r in rules):
        raise ValueError("a risk grid holds deterministic read-outs only (no sample rule)")
    loss, definition, method = _resolve_loss(task, loss, method)
    n, T = len(val_trace), val_trace.num_layers
    logits = logits.to(val_trace.metric_stats.device)
    stops = [r.stop(logits) for r in rules]
    columns = [loss.losses(task, val_trace, s) for s in stops]
    matrix = torch.stack(columns, dim=1) if columns else torch.zeros(n, 0, dtype=torch.float64)
    result, level = _certify(matrix, epsilon, delta, method, test_size, loss.binary)
    table = [
        {
            "rule": r.to_dict(),
            "label": r.label,
            "val_risk": result.risks[j],
            "p_value": result.p_values[j],
            "avg_layers": float((s + 1).double().mean()) if n else math.nan,
            "certified": result.index is not None and j <= result.index,
        }
        for j, (r, s) in enumerate(zip(rules, stops, strict=True))
    ]
    common = {
        "epsilon": epsilon, "delta": delta, "loss": loss, "method": method, "n": n,
        "num_layers": T, "grid": table,
        "risk_definition": definition, "test_size": test_size, "level": level,
    }  # fmt: skip
    j = result.index
    if j is None:
        chosen = {"rule": FULL_DEPTH_RULE, "val_risk": 0.0, "p_value": None,
                  "val_avg_layers": float(T), "fallback": True}  # fmt: skip
    else:
        chosen = {"rule": rules[j], "val_risk": result.risks[j], "p_value": result.p_values[j],
                  "val_avg_layers": table[j]["avg_layers"], "fallback": False}  # fmt: skip
    return RiskCalibration(**chosen, **common)  # type: ignore[arg-type]


def _certify(
    matrix: Tensor,
    epsilon: float,
    delta: float,
    method: Method,
    test_size: int | None,
    binary: bool,
) -> tuple[LTTResult, float | None]:
    """Learn then Test for the population promise (``test_size=None``: at ``epsilon``,
    ``delta``), or for a set of ``test_size`` (at ``fresh_set_level``, ``delta / 2``);
    the population level certified (``None`` for the first)."""
    if test_size is None:
        return learn_then_test(matrix, epsilon, delta, method), None
    if isinstance(test_size, bool) or not isinstance(test_size, int) or test_size < 1:
        raise ValueError(f"test_size must be a whole number >= 1, got {test_size!r}")
    level = fresh_set_level(epsilon, test_size, delta / 2, binary)
    if level <= 0:  # a set this small can't be promised anything but full depth
        risks = [float(c.mean()) if c.numel() else math.nan for c in matrix.double().T]
        return LTTResult(None, risks, [None] * matrix.shape[1]), level
    return learn_then_test(matrix, level, delta / 2, method), level


def _resolve_loss(
    task: Task, loss: QualityLoss | None, method: Method
) -> tuple[QualityLoss, str, Method]:
    """``calibrate_risk``'s loss (the task's stated one by default), its definition in words
    and the p-value method (``auto``: binomial for a 0/1 loss, Hoeffding-Bentkus else)."""
    definition = None
    if loss is None:
        stated = default_risk(task)
        loss, definition = stated.loss, stated.definition or None
    definition = definition or loss.describe(task.metric_name, task.higher_is_better)
    if method == "auto":
        method = "binomial" if loss.binary else "hoeffding_bentkus"
    if method == "binomial" and not loss.binary:
        raise ValueError(f"the binomial p-value needs a 0/1 loss; {loss.kind!r} is not")
    return loss, definition, method


__all__ = [
    "DEFAULT_RISKS",
    "GENERIC_RISK",
    "RISK_QUANTILES",
    "LTTResult",
    "QualityLoss",
    "RiskCalibration",
    "RiskDefault",
    "bentkus_p_value",
    "binomial_cdf",
    "binomial_p_value",
    "calibrate_risk",
    "default_risk",
    "fixed_sequence_test",
    "hoeffding_bentkus_p_value",
    "hoeffding_p_value",
    "learn_then_test",
    "p_value",
    "risk_at",
    "risk_grid",
    "fresh_set_level",
    "fresh_set_tail",
]
