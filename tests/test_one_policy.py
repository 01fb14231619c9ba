"""One policy for every price: the price-conditioned StopPolicy, its exact KL against
``q*_lambda`` at every price, ``l2s frontier --one-policy`` and ``l2s predict --one-policy``."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TOY_FRONTIER, write_config

from l2s_gym.policy import PRICE_CENTRES, PRICE_CODE_DIM, PRICE_WIDTH, StopPolicy, price_code
from l2s_gym.stopping import (
    cost_adjusted_losses,
    cumulative_costs,
    forward_kl,
    oracle_log_q,
    reverse_kl,
    stop_log_q,
)
from l2s_gym.trials import Trial


def _policy(price_input: bool, T: int = 4, seed: int = 0) -> StopPolicy:
    torch.manual_seed(seed)
    policy = StopPolicy((3,), T, hidden=8, depth=2, pos_dim=4, price_input=price_input)
    with torch.no_grad():  # a head that is not the constant initial one
        policy.head.weight.normal_()
    return policy


def _brute_force_kls(logits: torch.Tensor, losses: torch.Tensor, lam: float, beta: float):
    """Reverse and forward KL of one instance by enumerating the T stop times, in float64."""
    T = len(logits)
    logits = logits.detach()
    pi = [1 / (1 + math.exp(-float(s))) for s in logits]
    q = []
    for t in range(T):
        p = 1.0 if t == T - 1 else pi[t]
        for tau in range(t):
            p *= 1 - pi[tau]
        q.append(p)
    scores = [-(float(losses[t]) + lam * (t + 1)) / beta for t in range(T)]
    top = max(scores)
    z = sum(math.exp(v - top) for v in scores)
    star = [math.exp(v - top) / z for v in scores]
    rev = sum(a * math.log(a / b) for a, b in zip(q, star, strict=True) if a > 0)
    fwd = sum(b * math.log(b / a) for a, b in zip(q, star, strict=True) if b > 0)
    return rev, fwd


@pytest.mark.parametrize("seed", range(4))
def test_price_conditioned_kl_equals_brute_force_at_every_price(seed: int) -> None:
    """Per-instance prices in one batch (the training step) give, row by row, the exact
    KL of the policy at that price against q*_lambda, computed by enumeration."""
    T, B, beta, unit = 4, 6, 0.3, 0.7
    policy = _policy(True, T, seed).double()
    policy.set_price(0.0, unit)
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(B, T, 3, generator=gen, dtype=torch.float64)
    losses = torch.rand(B, T, generator=gen, dtype=torch.float64)
    grid = torch.tensor([0.0, 0.03, 0.3, 1.0, 3.0], dtype=torch.float64) * unit
    lam = grid[torch.randint(len(grid), (B,), generator=gen)]
    cum = cumulative_costs(T).double()
    log_q = stop_log_q(policy.trace_logits(features, lam))
    target = oracle_log_q(losses + lam.unsqueeze(1) * cum, beta)
    rev, fwd = reverse_kl(log_q, target).detach(), forward_kl(log_q, target).detach()
    for i in range(B):
        # The same row through the dial: the price is an input like any other.
        policy.set_price(float(lam[i]))
        alone = policy.trace_logits(features[i : i + 1])[0]
        assert torch.allclose(alone, policy.trace_logits(features, lam)[i], atol=1e-12)
        want_rev, want_fwd = _brute_force_kls(alone, losses[i], float(lam[i]), beta)
        assert float(rev[i]) == pytest.approx(want_rev, rel=1e-9, abs=1e-12)
        assert float(fwd[i]) == pytest.approx(want_fwd, rel=1e-9, abs=1e-12)
        per_price = oracle_log_q(cost_adjusted_losses(losses[i : i + 1], float(lam[i]), cum), beta)
        assert torch.allclose(target[i], per_price[0])


def test_the_price_changes_the_policy_and_every_fast_path_reads_the_dial() -> None:
    T, N = 5, 7
    policy = _policy(True, T).eval()
    policy.set_price(0.0, 0.5)
    with torch.no_grad():
        policy.body[0].weight[:, -PRICE_CODE_DIM:] = 3.0  # a policy that listens to the price
    feats = torch.randn(N, T, 3)
    low = policy.trace_logits(feats)
    policy.set_price(2.0)
    with torch.no_grad():
        high = policy.trace_logits(feats)
        assert not torch.allclose(low, high)
        assert torch.allclose(high, policy.trace_logits(feats, torch.full((N,), 2.0)))
        frozen = policy.frozen_layer_logits()
        for t in range(T):
            assert torch.allclose(policy.layer_logits(feats[:, t], t), high[:, t], atol=1e-5)
            assert torch.allclose(frozen(feats[:, t], t), high[:, t], atol=1e-5)
        assert torch.allclose(policy.chunk_logits(feats[:, 1:4], 1), high[:, 1:4], atol=1e-5)
        policy.set_price(0.0)  # the folded MLP is rebuilt for the new price
        assert torch.allclose(policy.layer_logits(feats[:, 2], 2), low[:, 2], atol=1e-5)


def test_the_price_code_is_the_log_and_one_bump_per_decade() -> None:
    """``price_code``: ``log(1 + lambda / unit)`` then the bumps of ``log10(lambda / unit +
    0.01)``, each price of the default grid nearest its own centre, smooth off the grid."""
    code = price_code(2.0, 0.5)
    assert code.shape == (PRICE_CODE_DIM,)
    assert float(code[0]) == pytest.approx(math.log(5.0))
    s = math.log10(4.0 + 0.01)
    for c, bump in zip(PRICE_CENTRES, code[1:].tolist(), strict=True):
        assert bump == pytest.approx(math.exp(-0.5 * ((s - c) / PRICE_WIDTH) ** 2), rel=1e-5)
    grid = torch.tensor([0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    codes = price_code(grid * 0.7, 0.7)
    assert codes.shape == (7, PRICE_CODE_DIM)
    assert codes[:, 1:].argmax(dim=1).tolist() == list(range(7))
    assert (codes[1:, 1:] - codes[:-1, 1:]).abs().max() < 1  # neighbours share their bumps
    fine = price_code(torch.cat([torch.zeros(1), torch.logspace(-4, 1.5, 2000)]), 1.0)
    assert torch.isfinite(fine).all() and (fine[1:] - fine[:-1]).abs().max() < 0.02


def test_a_policy_that_is_not_price_conditioned_is_unchanged() -> None:
    """The default policy has the inputs, parameters and draws it always had: its first
    layer takes features + position only, it holds no price buffer, and the same seed
    gives the same weights as a policy built before this option existed would."""
    plain = _policy(False)
    assert plain.body[0].in_features == 3 + 1 + 4
    assert "price_unit" not in plain.state_dict()
    priced = _policy(True)
    assert priced.body[0].in_features == 3 + 1 + 4 + PRICE_CODE_DIM
    assert "price_unit" in priced.state_dict()
    with pytest.raises(ValueError, match="not price-conditioned"):
        plain.set_price(1.0)
    with pytest.raises(ValueError, match="not price-conditioned"):
        plain.trace_logits(torch.randn(2, 4, 3), torch.ones(2))
    # A per-price trial's key and record are what they were.
    trial = Trial("stage2", 0, "reverse_kl", 0.3, "gain")
    assert trial.key == "seed-0/reverse_kl/cost-0.3"
    assert "one_policy" not in trial.to_dict()
    one = Trial("stage2", 0, "reverse_kl", 0.0, "gain", one_policy=True)
    assert one.key == "seed-0/reverse_kl/one-policy"
    assert Trial.from_dict(one.to_dict()) == one


def test_one_policy_frontier_end_to_end_and_predict_at_an_off_grid_price(tmp_path: Path) -> None:
    from l2s_gym.compare import run_experiment
    from l2s_gym.config import from_dict
    from l2s_gym.predict import predict_run
    from l2s_gym.runs import CheckpointError

    data = {**yaml.safe_load(TOY_FRONTIER), "frontier": {"costs": [0, 1], "one_policy": True}}
    cfg = from_dict(data)
    run_dir, run = run_experiment(cfg, tmp_path, "frontier", progress=False, log=lambda *_: None)
    res = json.loads((run_dir / "results.json").read_text())
    assert {"reverse_kl", "reverse_kl (one policy)"} <= set(res["frontier_summary"])
    # The read-out-swept price-0 policy is another thing, under another name.
    assert set(res["frontier_sweep_summary"]) == {"reverse_kl"}
    curve = res["frontiers"]["reverse KL, one price-conditioned policy for every price"]
    assert curve["kind"] == "learned" and curve["cost"] == [0, 1]
    assert res["costs"] == [0, 1]
    text = (run_dir / "results.md").read_text()
    assert "| reverse_kl (one policy) |" in text
    # Price by price, the one policy against the per-price policy, paired over instances.
    paired = res["one_policy_paired"]["reverse_kl"]
    per_price = res["frontiers"]["reverse KL"]
    assert set(paired) == {"0", "1"}
    for i, cost in enumerate(["0", "1"]):
        d = paired[cost]
        j = per_price["cost"].index(curve["cost"][i])
        assert d["difference"] == pytest.approx(curve["metric"][i] - per_price["metric"][j])
        assert d["objective_difference"] == pytest.approx(
            curve["objective"][i] - per_price["objective"][j], abs=1e-9
        )
        assert d["ci_over"] == "test instances (paired)" and d["ci95"][0] <= d["ci95"][1]
    assert "One policy against the per-price policies, price by price" in text
    assert (run_dir / "frontier.png").is_file()
    trial = json.loads((run_dir / "seed-0/reverse_kl/one-policy/result.json").read_text())
    assert trial["one_policy"] and trial["costs"] == [0, 1]
    assert len(trial["extra"]["prices"]) == 2
    # Resumed, the one-policy trial is reused like the others.
    _, again = run_experiment(
        cfg, tmp_path, "frontier", progress=False, log=lambda *_: None, resume=str(run_dir)
    )
    statuses = {t["key"]: t["status"] for t in again.trials}
    assert statuses["seed-0/reverse_kl/one-policy"] == "reused"
    assert (
        again.frontier_summary["reverse_kl (one policy)"]
        == run.frontier_summary["reverse_kl (one policy)"]
    )
    # Any price, on the grid or off it; the read-out chosen on validation at that price.
    summaries = {}
    for cost in (0.0, 0.5, 1.0, 4.0):
        out = predict_run(cfg, run_dir, "reverse_kl", cost=cost, one_policy=True, lookahead=1)
        assert out["one_policy"] and out["cost"] == cost and out["stop_agreement"] == 1.0
        summaries[cost] = out
    layers = [summaries[c]["avg_layers"] for c in (0.0, 0.5, 1.0, 4.0)]
    assert layers[-1] <= layers[0]
    # At a grid price it is the frontier's point.
    assert summaries[1.0]["avg_layers"] == pytest.approx(curve["avg_layers"][1])
    # Per-price runs keep today's behaviour, and an untrained price is one clear line.
    with pytest.raises(FileNotFoundError, match="add --one-policy"):
        predict_run(cfg, run_dir, "reverse_kl", cost=0.5, lookahead=1)
    # A one policy of an older format (its marker without a version: format 1) is one line.
    marker = run_dir / "seed-0/reverse_kl/one-policy/done"
    record = json.loads(marker.read_text())
    record["config"].pop("_one_policy_format")
    marker.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="format 1, this version reads formats 2-5"):
        predict_run(cfg, run_dir, "reverse_kl", cost=0.5, one_policy=True, lookahead=1)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "l2s_gym.cli", *args, "--import", "l2s_gym.testing"],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("command", "extra", "needle"),
    [
        ("frontier", ["--one-policy", "--set", "frontier.learners=[failing]"],
         "frontier.one_policy (--one-policy): none of the frontier's learners"),
        ("predict", ["--learner", "reverse_kl", "--one-policy"], "--cost C is needed"),
        ("frontier", ["--one-policy", "--set", "frontier.one_policy_steps=0"],
         "frontier.one_policy_steps: a whole number >= 1"),
    ],
)  # fmt: skip
def test_config_errors_are_one_line(tmp_path: Path, command: str, extra: list, needle: str) -> None:
    config = write_config(tmp_path, TOY_FRONTIER, "toy.yaml")
    run = tmp_path / "runs" / "toy_frontier" / "r"
    run.mkdir(parents=True)
    runs = ["--run", str(run)] if command == "predict" else ["--runs", str(tmp_path / "runs")]
    proc = _cli(command, str(config), *runs, "--threads", "1", *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def _price_draws(grid: list[float], balance: bool = False):  # noqa: ANN202
    """A PriceDraws' fields over ``grid``, without a learner context (one price per
    instance; unit annealing multiples; layer costs 1-4)."""
    from l2s_gym.agents.imitation import PriceDraws

    draws = PriceDraws.__new__(PriceDraws)
    draws.prices, draws.grid = grid, torch.tensor(grid)
    draws.multiples = torch.ones(len(grid), dtype=torch.float64)
    draws.cum, draws.gen = torch.arange(1.0, 5.0), torch.Generator().manual_seed(0)
    draws.per_instance, draws.balance = 1, balance
    draws.running = torch.zeros(len(grid), dtype=torch.float64)
    draws.seen = torch.zeros(len(grid), dtype=torch.bool)
    draws.last_idx = None
    return draws


def test_grid_draws_cover_the_grid() -> None:
    """Training draws a price per instance, uniform over the grid (checked on the draws)."""
    from l2s_gym.config import ImitationConfig

    draws = _price_draws([0.0, 0.1, 1.0])
    lam, temp = draws.draw(3000, ImitationConfig(), 0.5, 1)
    counts = [int((lam == g).sum()) for g in draws.grid]
    assert sum(counts) == 3000 and min(counts) > 900
    assert torch.allclose(temp, torch.full_like(temp, 0.5))
    adjusted = draws.adjusted(torch.zeros(3000, 4), lam)
    assert torch.allclose(adjusted[:, -1], 4 * lam)


def test_several_prices_per_instance_are_distinct_and_all_means_every_price() -> None:
    from l2s_gym.config import ImitationConfig

    draws = _price_draws([0.0, 0.1, 1.0, 3.0])
    draws.per_instance = 9  # more than the grid: every price once
    lam, _ = draws.draw(5 * 4, ImitationConfig(), 0.5, 1)
    assert torch.equal(lam.reshape(5, 4), draws.grid.expand(5, 4))
    draws.per_instance = 2
    lam, _ = draws.draw(50 * 2, ImitationConfig(), 0.5, 1)
    pairs = lam.reshape(50, 2)
    assert bool((pairs[:, 0] != pairs[:, 1]).all())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("power", [0.5, 1.0])
def test_balanced_kl_weighs_the_prices_alike(seed: int, power: float) -> None:
    """``PriceDraws.weights``: each price's running mean KL, brute force over the steps'
    rows; each row's factor is the grid mean of those over its price's, to the power
    ``BALANCE_POWER`` (clipped); at power 1, after the first step every price's weighted
    mean KL is the grid mean."""
    from l2s_gym.config import ImitationConfig

    gen = torch.Generator().manual_seed(seed)
    grid = [0.0, 0.1, 1.0, 10.0]
    draws, decay = _price_draws(grid, balance=True), 0.95
    draws.BALANCE_POWER = power
    scale = torch.tensor([0.3, 0.6, 1.0, 2.0])  # each price's KL size (within the clip)
    running: dict[int, float] = {}
    for step in range(1, 6):
        lam, _ = draws.draw(400, ImitationConfig(), 0.5, step)
        idx = (lam.unsqueeze(1) == draws.grid).int().argmax(1)  # each row's grid index
        kl = scale[idx] * torch.rand(400, generator=gen) * 2
        w = draws.weights(kl)
        for j in range(len(grid)):  # brute force: one price at a time
            rows = kl[idx == j]
            if len(rows):
                m = float(rows.double().mean())
                running[j] = m if j not in running else decay * running[j] + (1 - decay) * m
        grid_mean = sum(running.values()) / len(running)
        want = torch.tensor([(grid_mean / running[int(j)]) ** power for j in idx])
        want = want.clamp(0.1, 10.0)
        assert torch.allclose(w.double(), want.double(), rtol=1e-5)
        if step == 1 and power == 1:  # unclipped here: every price weighs the grid mean
            assert float(want.max()) < 10.0
            for j in range(len(grid)):
                weighted = float((kl * w)[idx == j].double().mean())
                assert weighted == pytest.approx(grid_mean, rel=1e-5)


def test_unbalanced_kl_is_the_plain_mean_and_a_tiny_kl_is_clipped() -> None:
    from l2s_gym.config import ImitationConfig

    draws = _price_draws([0.0, 1.0])
    lam, _ = draws.draw(10, ImitationConfig(), 0.5, 1)
    assert torch.equal(draws.weights(torch.rand(10)), torch.ones(10))
    draws = _price_draws([0.0, 1.0], balance=True)
    draws.BALANCE_POWER = 1.0
    lam, _ = draws.draw(200, ImitationConfig(), 0.5, 1)
    kl = torch.where(lam == 0, torch.tensor(1e-9), torch.tensor(1.0))
    w = draws.weights(kl)
    assert float(w[lam == 0].min()) == pytest.approx(10.0)  # clipped, not 5e8
    assert float(w[lam == 1].max()) == pytest.approx(0.5, rel=1e-6)


def test_the_env_shows_the_price_only_when_asked() -> None:
    """``observe_price``: ``[features, lambda, t]``, the same episodes and rewards as
    without it; off by default (``[features, t]``, as always)."""
    from gymnasium.utils.env_checker import check_env

    from l2s_gym.envs import BatchedStopEnv, StopEnv, split_obs
    from l2s_gym.envs.batched import obs_price
    from l2s_gym.testing import ToyCounter, ToyPredictorConfig, ToyTask, ToyTaskConfig

    task = ToyTask(ToyTaskConfig(num_layers=5, val_size=8, test_size=8))
    predictor = ToyCounter(ToyPredictorConfig(num_layers=5), task)
    plain = BatchedStopEnv(predictor, task, 4, beta=0.1, cost=0.2)
    shown = BatchedStopEnv(predictor, task, 4, beta=0.1, cost=0.2, observe_price=True)
    assert shown.obs_dim == plain.obs_dim + 1
    a, b = plain.reset(seed=3), shown.reset(seed=3)
    shape = plain.feature_shape
    assert obs_price(a, shape) is None
    assert torch.allclose(obs_price(b, shape), torch.full((4,), 0.2))
    for x, y in zip(split_obs(a, shape), split_obs(b, shape), strict=True):
        assert torch.equal(x, y)
    for step in range(6):
        action = torch.tensor([step % 2, 0, 1, step % 3 == 0]).long()
        (oa, ra, da, _), (ob, rb, db, _) = plain.step(action), shown.step(action)
        assert torch.equal(ra, rb) and torch.equal(da, db)
        assert torch.equal(torch.cat([ob[:, :-2], ob[:, -1:]], 1), oa)
    env = StopEnv(task=task, predictor=predictor, beta=0.1, cost=0.2, observe_price=True)
    check_env(env, skip_render_check=True)
    assert env.observation_space.shape == (shown.obs_dim,)
