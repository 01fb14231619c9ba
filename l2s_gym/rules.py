"""Stop rules: anything that turns a trace (or a learned policy's stop logits) into a stop layer.

Every row of every table goes through one of these and then through the one evaluation
path (``l2s_gym.evaluation``). Indices are 0-based (``0`` stops after layer 1).

- ``fixed_depth_stop``: every instance stops after ``k`` layers;
- ``oracle_stop``: the label-using oracle, ``argmin_t l_t + lambda C_t`` per instance (an
  upper bound no label-free rule can reach in general);
- ``threshold_stop``: a heuristic on a per-layer quantity the predictor exposes in
  ``Trace.extras``. With ``"confidence"`` (max softmax probability, larger is surer) it is
  the Shallow-Deep Network rule; with ``"change"`` (relative update size, smaller is more
  converged) a convergence test;
- ``ReadoutRule``: how a deterministic (or sampled) stop is read out of a learned
  ``q_phi``: the paper's "first ``pi_t > 1/2``" (``threshold``), the quantile rule (first
  ``t`` whose cumulative stop probability reaches ``q``; ``q = 1/2`` is the median), or a
  sample. Every one is causal, so ``l2s_gym.runner`` can apply it layer by layer.
  ``FULL_DEPTH_RULE`` (the quantile rule at ``q = 1``) never stops before the last layer:
  the fallback of a risk-calibrated read-out (``l2s_gym.risk``) that certifies no earlier one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from l2s_gym.predictor import Trace
from l2s_gym.stopping import (
    cost_adjusted_losses,
    deterministic_stop,
    quantile_stop,
    sample_stop,
    stop_log_q,
)

#: extras key -> (label, whether larger values mean "ready to stop")
THRESHOLD_RULES: dict[str, tuple[str, bool]] = {
    "confidence": ("confidence threshold (SDN)", True),
    "change": ("convergence threshold", False),
}


def fixed_depth_stop(trace: Trace, depth: int) -> Tensor:
    """Stop every instance after ``depth`` layers (1-based)."""
    return torch.full((len(trace),), depth - 1, dtype=torch.long, device=trace.losses.device)


def oracle_stop(trace: Trace, cost: float = 0.0, cum_costs: Tensor | None = None) -> Tensor:
    """The label-using oracle's choice: the layer of least ``l_t + lambda C_t`` (the mode of q*)."""
    return cost_adjusted_losses(trace.losses, cost, cum_costs).argmin(dim=1)


def threshold_stop(trace: Trace, key: str, threshold: float) -> Tensor:
    """First 0-based layer whose ``trace.extras[key]`` passes ``threshold``; else the last."""
    if key not in trace.extras:
        raise KeyError(f"the predictor exposes no {key!r} in its trace extras")
    values = trace.extras[key]
    ready = values >= threshold if THRESHOLD_RULES[key][1] else values <= threshold
    ready = ready.clone()
    ready[:, -1] = True
    return ready.to(torch.int8).argmax(dim=1)


def default_thresholds(trace: Trace, key: str, num: int = 12) -> list[float]:
    """Thresholds at quantiles of the observed values, so a sweep spans all depths."""
    return [tau for _, tau in quantile_thresholds(trace, key, num)]


def quantile_thresholds(trace: Trace, key: str, num: int = 12) -> list[tuple[float, float]]:
    """``(level, threshold)`` pairs: the thresholds of ``default_thresholds`` with the
    quantile level each was read at (for a repeated value, its lowest level), in the order
    of the thresholds. The levels are the same in every trace, so curves over seeds pair
    their points by level (a threshold's value depends on the seed's validation set)."""
    values = trace.extras[key].flatten().double()
    qs = torch.linspace(0.02, 0.98, num, dtype=torch.float64)
    first: dict[float, float] = {}
    for q, v in zip(qs.tolist(), torch.quantile(values.cpu(), qs).tolist(), strict=True):
        first.setdefault(float(v), round(q, 6))
    return sorted(((q, tau) for tau, q in first.items()), key=lambda p: p[1])


ReadoutKind = Literal["threshold", "quantile", "sample"]


@dataclass(frozen=True)
class ReadoutRule:
    """How a stop layer is read out of a policy's stop logits ``s_t`` (``pi_t = sigmoid(s_t)``).

    - ``threshold``: the first ``t`` with ``pi_t > value`` (``value = 0.5``: the paper's rule);
    - ``quantile``: the first ``t`` with ``sum_{tau <= t} q_phi(tau) >= value``, i.e. with
      ``prod_{tau <= t} (1 - pi_tau) <= 1 - value`` (``0.5``: the median of ``q_phi``);
      ``value = 1`` stops only where the survival is exactly 0, i.e. at the last layer for
      finite logits: full depth (``FULL_DEPTH_RULE``);
    - ``sample``: ``t ~ q_phi`` (stop at each layer with probability ``pi_t``); ``value``
      is unused.

    All three are causal: the decision after layer ``t`` needs only ``pi_1..pi_t``.
    """

    kind: ReadoutKind = "threshold"
    value: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("threshold", "quantile", "sample"):
            raise ValueError(
                f"readout kind must be threshold, quantile or sample, got {self.kind!r}"
            )
        if self.kind == "threshold" and not 0.0 < self.value < 1.0:
            raise ValueError(f"threshold readout needs a value in (0, 1), got {self.value!r}")
        if self.kind == "quantile" and not 0.0 < self.value <= 1.0:
            raise ValueError(f"quantile readout needs a value in (0, 1], got {self.value!r}")

    @property
    def deterministic(self) -> bool:
        return self.kind != "sample"

    @property
    def label(self) -> str:
        if self.kind == "threshold":
            return f"first pi > {self.value:g}"
        if self.kind == "quantile":
            if self.value == 1.0:
                return "full depth (q_phi quantile 1)"
            return "median of q_phi" if self.value == 0.5 else f"q_phi quantile {self.value:g}"
        return "sampled from q_phi"

    def stop(self, stop_logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """0-based stop layers ``(B,)`` for stop logits ``(B, T)``."""
        if self.kind == "threshold":
            return deterministic_stop(stop_logits, self.value)
        if self.kind == "quantile" and self.value == 1.0:
            # stop_now's test, all layers at once: the survival is exactly 0 (or the last).
            log_survival = torch.nn.functional.logsigmoid(-stop_logits).cumsum(dim=-1)
            reached = log_survival == -math.inf
            reached[..., -1] = True
            return reached.to(torch.int8).argmax(dim=-1)
        if self.kind == "quantile":
            return quantile_stop(stop_log_q(stop_logits), self.value)
        return sample_stop(stop_log_q(stop_logits), generator)

    def stop_now(self, stop_logit: Tensor, log_survival: Tensor) -> tuple[Tensor, Tensor]:
        """The causal form: after one layer, which instances stop, and the new survival.

        Args:
            stop_logit: ``(B,)`` the policy's logit after this layer.
            log_survival: ``(B,)`` ``log prod_{tau < t}(1 - pi_tau)`` before this layer
                (0 before the first layer).

        Returns:
            ``(stop, log_survival)``: a ``(B,)`` bool mask, and the survival including this
            layer. ``sample`` is not handled here (it needs a generator): use ``stop``.
        """
        log_survival = log_survival + torch.nn.functional.logsigmoid(-stop_logit)
        if self.kind == "threshold":
            stop = stop_logit > math.log(self.value / (1.0 - self.value))
        elif self.kind == "quantile":
            bound = math.log1p(-self.value) if self.value < 1.0 else -math.inf
            stop = log_survival <= bound
        else:
            raise ValueError("ReadoutRule.stop_now cannot sample; use ReadoutRule.stop")
        return stop, log_survival

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "value": self.value}

    @staticmethod
    def from_dict(data: dict[str, object]) -> ReadoutRule:
        return ReadoutRule(str(data["kind"]), float(data["value"]))  # type: ignore[arg-type]


PAPER_RULE = ReadoutRule("threshold", 0.5)
"""The paper's deterministic rule: stop at the first layer with ``pi_t > 1/2``."""

FULL_DEPTH_RULE = ReadoutRule("quantile", 1.0)
"""Never stop before the last layer (the quantile rule at ``q = 1``): what a risk-calibrated
read-out falls back to where no earlier setting is certified (``l2s_gym.risk``)."""


def candidate_stops(stop_logits: Tensor, rules: list[ReadoutRule]) -> list[Tensor]:
    """``[rule.stop(stop_logits) for rule in rules]`` for deterministic rules, the same
    tensors, with what the quantile rules share computed once: ``q_phi``'s cumulative
    distribution (a sweep of 19 quantiles recomputed it 19 times; validation at every
    checkpoint chooses among them)."""
    log_cdf: Tensor | None = None
    out = []
    for rule in rules:
        if rule.kind == "quantile" and rule.value < 1.0:
            if log_cdf is None:
                log_cdf = torch.logcumsumexp(stop_log_q(stop_logits), dim=-1)
            reached = log_cdf >= math.log(rule.value)
            reached[..., -1] = True
            out.append(reached.to(torch.int8).argmax(dim=-1))
        else:
            out.append(rule.stop(stop_logits))
    return out


def readout_candidates(quantiles: list[float] | None = None) -> list[ReadoutRule]:
    """The deterministic read-outs a validation set chooses among: the paper's threshold
    rule and the quantile rule at ``quantiles`` (default ``0.05, 0.10, ..., 0.95``)."""
    qs = quantiles if quantiles is not None else [round(0.05 * i, 2) for i in range(1, 20)]
    return [PAPER_RULE, *(ReadoutRule("quantile", q) for q in qs)]


__all__ = [
    "FULL_DEPTH_RULE",
    "PAPER_RULE",
    "THRESHOLD_RULES",
    "ReadoutRule",
    "candidate_stops",
    "default_thresholds",
    "fixed_depth_stop",
    "oracle_stop",
    "readout_candidates",
    "threshold_stop",
]
