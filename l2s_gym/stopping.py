"""The stop maths of "Learning to Stop While Learning to Predict", in one place.

Conventions: a batch of stop logits has shape ``(..., T)``; index ``i`` along the
last axis is layer ``t = i + 1``. Every distribution over stop times is handled in
log space so that ``T = 100`` with extreme logits neither underflows nor overflows.
The last layer always stops, whatever its logit says.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from l2s_gym.predictor import Trace

__all__ = [
    "stop_log_q",
    "stop_probabilities",
    "sample_stop",
    "deterministic_stop",
    "quantile_stop",
    "expected_depth",
    "entropy",
    "cumulative_costs",
    "cost_adjusted_losses",
    "oracle_log_q",
    "oracle_stage_loss",
    "reverse_kl",
    "forward_kl",
    "gain_per_layer",
]


def stop_log_q(stop_logits: Tensor) -> Tensor:
    """Log of the stop-time distribution ``q_phi(t)`` induced by per-layer stop logits.

    ``q(t) = pi_t * prod_{tau<t} (1 - pi_tau)`` for ``t < T`` and
    ``q(T) = prod_{tau<T} (1 - pi_tau)``, with ``pi = sigmoid(logit)``.

    Args:
        stop_logits: ``(..., T)`` logits ``s_t`` of the probability of stopping at each layer.

    Returns:
        ``(..., T)`` log-probabilities that sum (in probability) to one along the last axis.
    """
    log_stop = F.logsigmoid(stop_logits)
    log_continue = F.logsigmoid(-stop_logits)
    # log prod_{tau < t} (1 - pi_tau): an exclusive cumulative sum.
    survive = torch.cumsum(log_continue, dim=-1)
    log_survive = torch.cat([torch.zeros_like(survive[..., :1]), survive[..., :-1]], dim=-1)
    # The last layer stops with probability one, so its term is the survival alone.
    return torch.cat([log_survive[..., :-1] + log_stop[..., :-1], log_survive[..., -1:]], dim=-1)


def stop_probabilities(stop_logits: Tensor) -> Tensor:
    """``pi_t``, the probability of stopping at each layer having reached it (last is 1)."""
    pi = torch.sigmoid(stop_logits)
    return torch.cat([pi[..., :-1], torch.ones_like(pi[..., -1:])], dim=-1)


def sample_stop(log_q: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Sample a stop index (0-based) per row of ``log_q`` (``(B, T)`` -> ``(B,)``)."""
    flat = log_q.reshape(-1, log_q.shape[-1])
    # Subtracting the row max keeps exp() finite and the distribution unchanged.
    probs = torch.exp(flat - flat.max(dim=-1, keepdim=True).values)
    idx = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return idx.reshape(log_q.shape[:-1])


def deterministic_stop(stop_logits: Tensor, threshold: float = 0.5) -> Tensor:
    """First 0-based index whose stop probability ``pi_t`` exceeds ``threshold`` (default
    0.5, the paper's rule); the last layer always stops."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    wants_stop = stop_logits > math.log(threshold / (1.0 - threshold))
    wants_stop[..., -1] = True
    # argmax over a bool->int tensor returns the first maximal index.
    return wants_stop.to(torch.int8).argmax(dim=-1)


def quantile_stop(log_q: Tensor, quantile: float) -> Tensor:
    """First 0-based index ``t`` with ``sum_{tau <= t} q(tau) >= quantile``; ``0.5``: the median.

    Causal: ``1 - sum_{tau <= t} q(tau) = prod_{tau <= t} (1 - pi_tau)`` needs only the
    stop probabilities seen so far. The last layer always stops (its cumulative sum is 1,
    whatever rounding says).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile!r}")
    reached = torch.logcumsumexp(log_q, dim=-1) >= math.log(quantile)
    reached[..., -1] = True
    return reached.to(torch.int8).argmax(dim=-1)


def expected_depth(log_q: Tensor) -> Tensor:
    """Expected number of layers computed, ``sum_t t q(t)`` with ``t = 1..T``."""
    layers = torch.arange(1, log_q.shape[-1] + 1, dtype=log_q.dtype, device=log_q.device)
    return (log_q.exp() * layers).sum(dim=-1)


def _plogp(log_p: Tensor) -> Tensor:
    # 0 * log 0 = 0, even where log_p is -inf. The -inf entries are replaced *before* the
    # product: where() alone would still back-propagate 0 * (exp(-inf) * -inf) = NaN.
    finite = torch.isfinite(log_p)
    safe = torch.where(finite, log_p, torch.zeros_like(log_p))
    return torch.where(finite, safe.exp() * safe, torch.zeros_like(log_p))


def entropy(log_q: Tensor) -> Tensor:
    """Entropy ``H(q) = -sum_t q(t) log q(t)`` of a stop-time distribution given in log space."""
    return -_plogp(log_q).sum(dim=-1)


def cumulative_costs(
    num_layers: int, layer_costs: Tensor | None = None, device: torch.device | str | None = None
) -> Tensor:
    """``C_t``, the compute spent when stopping after layer ``t`` (``(T,)``, t = 1..T).

    ``layer_costs`` ``(T,)`` are a predictor's relative costs of its layers (e.g. FLOPs per
    layer and exit); they are rescaled to mean 1, so ``C_T = T`` and a cost ``lambda`` is
    always "loss per average layer". ``None``: every layer costs 1 (``C_t = t``).
    """
    if layer_costs is None:
        return torch.arange(1, num_layers + 1, dtype=torch.float32, device=device)
    c = torch.as_tensor(layer_costs, dtype=torch.float32, device=device).flatten()
    if c.numel() != num_layers or not bool(torch.isfinite(c).all()) or bool((c <= 0).any()):
        raise ValueError(
            f"layer_costs must be {num_layers} positive finite numbers, got {c.tolist()}"
        )
    return torch.cumsum(c / c.mean(), dim=0)


def cost_adjusted_losses(
    losses: Tensor, cost: float | Tensor, cum_costs: Tensor | None = None
) -> Tensor:
    """``l_t + lambda * C_t``: the per-layer loss once computing layers has a price.

    The one definition behind the cost-aware oracle, stage 1 (if asked), the imitation
    target, the environment's rewards and the evaluation objective. ``cost = 0`` gives
    ``losses`` back unchanged. ``cost`` may also be a tensor of one price per row,
    ``(B,)`` for ``losses`` ``(B, T)`` (an env whose episodes draw their own price).
    """
    if not isinstance(cost, Tensor) and not cost:
        return losses
    if cum_costs is None:
        cum_costs = cumulative_costs(losses.shape[-1], device=losses.device)
    cum = cum_costs.to(device=losses.device, dtype=losses.dtype)
    if isinstance(cost, Tensor):
        return losses + cost.to(losses.dtype).unsqueeze(-1) * cum
    return losses + cost * cum


def oracle_log_q(losses: Tensor, beta: float) -> Tensor:
    """The label-using oracle ``log q*(t) = log_softmax_t(-loss_t / beta)``.

    With a price on layers pass ``cost_adjusted_losses(losses, cost, C)``: the oracle is then
    ``q*_lambda(t) ∝ exp(-(l_t + lambda C_t) / beta)``.
    """
    return torch.log_softmax(-losses / beta, dim=-1)


def oracle_stage_loss(losses: Tensor, beta: float) -> Tensor:
    """Stage-1 ("mle") loss per instance: the soft-min ``-beta * logsumexp_t(-loss_t / beta)``.

    Its gradient in the predictor's parameters is ``sum_t q*(t) grad loss_t``: the
    oracle-weighted maximum likelihood of the paper's stage 1.
    """
    return -beta * torch.logsumexp(-losses / beta, dim=-1)


def reverse_kl(stop_log_q: Tensor, target_log_q: Tensor) -> Tensor:
    """``KL(q_phi || q*) = sum_t q_phi(t) [log q_phi(t) - log q*(t)]``, exact over all T."""
    q = stop_log_q.exp()
    # Where q_phi(t) = 0 the term is 0 even if q*(t) = 0 too. The -inf of log q* is replaced
    # *before* the product: where() alone would back-propagate 0 * -inf = NaN there.
    safe_target = torch.where(q > 0, target_log_q, torch.zeros_like(target_log_q))
    return _plogp(stop_log_q).sum(dim=-1) - (q * safe_target).sum(dim=-1)


def forward_kl(stop_log_q: Tensor, target_log_q: Tensor) -> Tensor:
    """``KL(q* || q_phi) = sum_t q*(t) [log q*(t) - log q_phi(t)]``, exact over all T.

    This is the objective of the official l2stop run scripts (where it is sometimes
    labelled "reverse"); here it carries its true name.
    """
    p = target_log_q.exp()
    cross = torch.where(p > 0, p * stop_log_q, torch.zeros_like(p))
    return _plogp(target_log_q).sum(dim=-1) - cross.sum(dim=-1)


def gain_per_layer(val_trace: Trace) -> float:
    """The oracle's average gain per layer on validation: the ``gain`` cost unit.

    ``(mean_i l_{i,1} - mean_i min_t l_{i,t}) / (T - 1)``; 1.0 when that is not positive
    (a predictor whose first layer is already best everywhere) or ``T = 1``.
    """
    losses = val_trace.losses.double()
    T = losses.shape[1]
    if T < 2:
        return 1.0
    gain = float(losses[:, 0].mean() - losses.min(dim=1).values.mean()) / (T - 1)
    return gain if gain > 0 and math.isfinite(gain) else 1.0
