"""The stop maths of "Learning to Stop While Learning to Predict", in one place.

Conventions: a batch of stop logits has shape ``(..., T)``; index ``i`` along the
last axis is layer ``t = i + 1``. Every distribution over stop times is handled in
log space so that ``T = 100`` with extreme logits neither underflows nor overflows.
The last layer always stops, whatever its logit says.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "stop_log_q",
    "stop_probabilities",
    "sample_stop",
    "deterministic_stop",
    "expected_depth",
    "entropy",
    "oracle_log_q",
    "oracle_stage_loss",
    "reverse_kl",
    "forward_kl",
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


def deterministic_stop(stop_logits: Tensor) -> Tensor:
    """First 0-based index whose stop probability exceeds 0.5; the last layer always stops."""
    wants_stop = stop_logits > 0
    wants_stop[..., -1] = True
    # argmax over a bool->int tensor returns the first maximal index.
    return wants_stop.to(torch.int8).argmax(dim=-1)


def expected_depth(log_q: Tensor) -> Tensor:
    """Expected number of layers computed, ``sum_t t q(t)`` with ``t = 1..T``."""
    layers = torch.arange(1, log_q.shape[-1] + 1, dtype=log_q.dtype, device=log_q.device)
    return (log_q.exp() * layers).sum(dim=-1)


def _plogp(log_p: Tensor) -> Tensor:
    # 0 * log 0 = 0, even where log_p is -inf.
    return torch.where(torch.isfinite(log_p), log_p.exp() * log_p, torch.zeros_like(log_p))


def entropy(log_q: Tensor) -> Tensor:
    """Entropy ``H(q) = -sum_t q(t) log q(t)`` of a stop-time distribution given in log space."""
    return -_plogp(log_q).sum(dim=-1)


def oracle_log_q(losses: Tensor, beta: float) -> Tensor:
    """The label-using oracle ``log q*(t) = log_softmax_t(-loss_t / beta)``."""
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
    # Where q_phi(t) = 0 the term is 0 even if q*(t) = 0 too.
    cross = torch.where(q > 0, q * target_log_q, torch.zeros_like(q))
    return _plogp(stop_log_q).sum(dim=-1) - cross.sum(dim=-1)


def forward_kl(stop_log_q: Tensor, target_log_q: Tensor) -> Tensor:
    """``KL(q* || q_phi) = sum_t q*(t) [log q*(t) - log q_phi(t)]``, exact over all T.

    This is the objective of the official l2stop run scripts (where it is sometimes
    labelled "reverse"); here it carries its true name.
    """
    p = target_log_q.exp()
    cross = torch.where(p > 0, p * stop_log_q, torch.zeros_like(p))
    return _plogp(target_log_q).sum(dim=-1) - cross.sum(dim=-1)
