"""Property tests of the stop maths against brute-force enumeration of stop paths."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2s_gym.stopping import (
    deterministic_stop,
    entropy,
    expected_depth,
    forward_kl,
    oracle_log_q,
    oracle_stage_loss,
    reverse_kl,
    sample_stop,
    stop_log_q,
    stop_probabilities,
)

logit = st.floats(-8, 8, allow_nan=False)
loss_value = st.floats(0, 5, allow_nan=False)


def brute_force_q(logits: list[float]) -> list[float]:
    """Enumerate all 2^T coin-flip sequences; the first 'stop' (or the last layer) wins."""
    T = len(logits)
    pis = [1 / (1 + math.exp(-s)) for s in logits]
    q = [0.0] * T
    for actions in itertools.product([0, 1], repeat=T):
        prob = 1.0
        for a, pi in zip(actions, pis, strict=True):
            prob *= pi if a else 1 - pi
        stops = [i for i, a in enumerate(actions) if a] + [T - 1]
        q[stops[0]] += prob
    return q


def brute_force_oracle(losses: list[float], beta: float) -> list[float]:
    w = [math.exp(-l / beta) for l in losses]
    return [x / sum(w) for x in w]


@settings(max_examples=60, deadline=None)
@given(st.lists(logit, min_size=1, max_size=8))
def test_stop_distribution_matches_enumeration(logits):
    expected = brute_force_q(logits)
    got = stop_log_q(torch.tensor(logits, dtype=torch.float64)).exp().tolist()
    assert math.isclose(sum(got), 1.0, abs_tol=1e-12)
    for a, b in zip(got, expected, strict=True):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 7).flatmap(
        lambda T: st.tuples(
            st.lists(logit, min_size=T, max_size=T),
            st.lists(loss_value, min_size=T, max_size=T),
            st.floats(0.05, 3),
        )
    )
)
def test_kl_entropy_depth_match_enumeration(args):
    logits, losses, beta = args
    q = brute_force_q(logits)
    qstar = brute_force_oracle(losses, beta)
    T = len(logits)
    log_q = stop_log_q(torch.tensor(logits, dtype=torch.float64))
    log_qstar = oracle_log_q(torch.tensor(losses, dtype=torch.float64), beta)
    ent = -sum(p * math.log(p) for p in q if p > 0)
    rkl = sum(p * (math.log(p) - math.log(s)) for p, s in zip(q, qstar, strict=True) if p > 0)
    fkl = sum(s * (math.log(s) - math.log(p)) for p, s in zip(q, qstar, strict=True) if s > 0)
    depth = sum((t + 1) * p for t, p in enumerate(q))
    assert math.isclose(float(entropy(log_q)), ent, rel_tol=1e-7, abs_tol=1e-9)
    assert math.isclose(float(reverse_kl(log_q, log_qstar)), rkl, rel_tol=1e-6, abs_tol=1e-8)
    assert math.isclose(float(forward_kl(log_q, log_qstar)), fkl, rel_tol=1e-6, abs_tol=1e-8)
    assert math.isclose(float(expected_depth(log_q)), depth, rel_tol=1e-9)
    assert 1 <= float(expected_depth(log_q)) <= T
    # docs/method.md: KL(q || q*) = E_q[l]/beta - H(q) + log Z.
    log_z = math.log(sum(math.exp(-l / beta) for l in losses))
    e_loss = sum(p * l for p, l in zip(q, losses, strict=True))
    assert math.isclose(
        float(reverse_kl(log_q, log_qstar)), e_loss / beta - ent + log_z, rel_tol=1e-6, abs_tol=1e-7
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(loss_value, min_size=1, max_size=8), st.floats(0.05, 3))
def test_oracle_is_softmin_and_stage_loss_is_its_log_normaliser(losses, beta):
    l = torch.tensor(losses, dtype=torch.float64)
    expected = brute_force_oracle(losses, beta)
    for a, b in zip(oracle_log_q(l, beta).exp().tolist(), expected, strict=True):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    soft_min = -beta * math.log(sum(math.exp(-x / beta) for x in losses))
    assert math.isclose(float(oracle_stage_loss(l, beta)), soft_min, rel_tol=1e-9, abs_tol=1e-12)
    assert float(oracle_stage_loss(l, beta)) <= min(losses) + 1e-12


def test_stage_loss_gradient_is_oracle_weighted():
    losses = torch.tensor([0.9, 0.2, 0.5, 0.3], dtype=torch.float64, requires_grad=True)
    oracle_stage_loss(losses, 0.3).backward()
    torch.testing.assert_close(losses.grad, oracle_log_q(losses.detach(), 0.3).exp())


def test_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    losses = torch.rand(3, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    beta = 0.4

    def rkl(s, l):
        return reverse_kl(stop_log_q(s), oracle_log_q(l, beta))

    def fkl(s, l):
        return forward_kl(stop_log_q(s), oracle_log_q(l, beta))

    assert torch.autograd.gradcheck(rkl, (logits, losses))
    assert torch.autograd.gradcheck(fkl, (logits, losses))
    assert torch.autograd.gradcheck(lambda s: entropy(stop_log_q(s)), (logits,))
    assert torch.autograd.gradcheck(lambda l: oracle_stage_loss(l, beta), (losses,))


def test_long_horizon_extreme_logits_stay_finite():
    T = 100
    logits = torch.cat([torch.full((1, 50), -1e4), torch.full((1, 50), 1e4)], dim=1)
    logits = torch.cat(
        [logits, torch.full((1, T), -1e4), torch.full((1, T), 80.0), torch.randn(2, T) * 60], dim=0
    ).requires_grad_(True)
    losses = torch.cat([torch.rand(4, T) * 1e3, torch.zeros(1, T)])  # one row per logit row
    log_q = stop_log_q(logits)
    target = oracle_log_q(losses, 1e-3)
    values = [
        log_q,
        target,
        entropy(log_q),
        expected_depth(log_q),
        reverse_kl(log_q, target),
        forward_kl(log_q, target),
    ]
    for v in values:
        assert not torch.isnan(v).any()
    assert torch.isfinite(reverse_kl(log_q, target)).all()
    torch.testing.assert_close(log_q.exp().sum(1), torch.ones(5), atol=1e-5, rtol=0)
    reverse_kl(log_q, target).sum().backward()
    assert torch.isfinite(logits.grad).all()
    # All-continue logits put the whole mass on the last layer.
    assert float(log_q[1, -1].detach().exp()) > 0.999


@settings(max_examples=60, deadline=None)
@given(st.lists(logit.filter(lambda s: abs(s) > 1e-9), min_size=1, max_size=10))
def test_deterministic_stop_is_first_layer_above_half(logits):
    # (|s| > 1e-9: at s ~ 0 the float sigmoid rounds to exactly 0.5.)
    pis = [1 / (1 + math.exp(-s)) for s in logits]
    expected = next((i for i, p in enumerate(pis[:-1]) if p > 0.5), len(pis) - 1)
    got = int(deterministic_stop(torch.tensor([logits], dtype=torch.float64))[0])
    assert got == expected
    probs = stop_probabilities(torch.tensor(logits, dtype=torch.float64))
    assert float(probs[-1]) == 1.0


def test_sampling_follows_q():
    logits = torch.tensor([[-1.0, 0.5, -0.3, 2.0, 0.0]])
    log_q = stop_log_q(logits)
    gen = torch.Generator().manual_seed(1)
    draws = sample_stop(log_q.expand(40_000, -1), gen)
    freq = torch.bincount(draws, minlength=5).double() / draws.numel()
    torch.testing.assert_close(freq, log_q[0].exp().double(), atol=0.01, rtol=0)


@pytest.mark.parametrize("name", ["entropy", "reverse_kl", "forward_kl"])
def test_gradients_stay_finite_where_log_probabilities_are_minus_infinity(name):
    # q(t) = 0 at some layers (log q = -inf): 0 log 0 = 0 must hold for the gradient too.
    # A mask applied only after exp(log_q) * log_q back-propagates 0 * (-inf) = NaN.
    log_q = torch.tensor([[math.log(0.25), -math.inf, math.log(0.75)]], requires_grad=True)
    target = torch.tensor([[math.log(0.5), math.log(0.5), -math.inf]], requires_grad=True)
    full = torch.log(torch.tensor([[0.2, 0.3, 0.5]]))
    value, leaf = {
        "entropy": (lambda: entropy(log_q), log_q),
        "reverse_kl": (lambda: reverse_kl(log_q, full), log_q),
        "forward_kl": (lambda: forward_kl(full, target), target),
    }[name]
    out = value().sum()
    assert torch.isfinite(out)
    out.backward()
    assert torch.isfinite(leaf.grad).all(), leaf.grad


@pytest.mark.parametrize(
    ("logits", "dtype"),
    [([math.inf, 0.0, 0.0], torch.float64), ([200.0, 0.0, 0.0], torch.float32)],
)
def test_reverse_kl_gradient_is_finite_where_the_oracle_gives_zero_mass(logits, dtype) -> None:
    # q_phi puts all its mass on layer 1, where q* puts all of its: the KL is 0, and the
    # layers where both are 0 must not make the gradient NaN.
    s = torch.tensor([logits], dtype=dtype, requires_grad=True)
    target = torch.tensor([[0.0, -math.inf, -math.inf]], dtype=dtype)
    kl = reverse_kl(stop_log_q(s), target)
    kl.sum().backward()
    assert float(kl.detach()) == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(s.grad).all()


@settings(max_examples=40, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(1, 6),
    st.sampled_from([0.0, 0.3, 5.0]),
    st.integers(0, 10_000),
)
def test_candidate_stops_and_choose_readout_are_the_rule_by_rule_loop(T, B, cost, seed) -> None:
    """The read-out sweep's shared computation changes no stop and no choice: every
    candidate's stops equal ``rule.stop``'s, and ``choose_readout`` picks what a loop over
    ``rule.stop`` and ``stop_objective`` picks, with the same table."""
    from l2s_gym.evaluation import choose_readout, stop_objective
    from l2s_gym.predictor import Trace
    from l2s_gym.rules import (
        FULL_DEPTH_RULE,
        ReadoutRule,
        candidate_stops,
        readout_candidates,
    )

    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, generator=g) * 4
    logits[0, 0] = math.inf if T > 1 else logits[0, 0]  # a certain stop
    logits[-1, -1] = -40.0
    logits[-1, 0] = 0.0  # q(1) = 1/2 exactly: the median's ">=" decides
    rules = [*readout_candidates(), ReadoutRule("threshold", 0.2), FULL_DEPTH_RULE]
    for rule, stop in zip(rules, candidate_stops(logits, rules), strict=True):
        assert torch.equal(stop, rule.stop(logits)), rule
    losses = torch.rand(B, T, generator=g)
    trace = Trace(losses, losses, torch.zeros(B, T, 1), torch.zeros(B, dtype=torch.long))
    cum = torch.arange(1, T + 1, dtype=torch.float32)
    chosen, table = choose_readout(trace, logits, cost, cum, rules)
    best, expected = None, None
    for i, rule in enumerate(rules):
        stop = rule.stop(logits)
        objective = stop_objective(trace, stop, cost, cum)
        layers = float((stop + 1).double().mean())
        assert table[i]["objective"] == objective and table[i]["avg_layers"] == layers
        if best is None or (objective, layers, i) < best:
            best, expected = (objective, layers, i), rule
    assert chosen == expected
