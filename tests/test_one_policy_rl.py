"""One policy for every price, learned from sampled episodes: ``BatchedStopEnv(prices=...)``
(each episode draws its price from the grid and shows it), price-conditioned REINFORCE,
and ``l2s frontier --one-policy`` with an RL learner."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TOY_FRONTIER

from l2s_gym.envs import BatchedStopEnv, StopEnv, split_obs
from l2s_gym.envs.batched import REWARD_MODES, obs_price
from l2s_gym.stopping import cumulative_costs
from l2s_gym.testing import ToyCounter, ToyPredictorConfig, ToyTask, ToyTaskConfig

GRID = [0.0, 0.05, 0.3]
T, N = 5, 6


def _parts() -> tuple[ToyTask, ToyCounter]:
    task = ToyTask(ToyTaskConfig(num_layers=T, val_size=8, test_size=8))
    return task, ToyCounter(ToyPredictorConfig(num_layers=T), task)


def _actions(steps: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(2, (N,), generator=gen) for _ in range(steps)]


def _episode_rewards(mode: str, losses: list[float], stop: int, lam: float, beta: float):
    """The rewards of one episode stopping at 1-based layer ``stop``, by hand from its
    per-layer losses (``losses[t-1] = l_t``; all ``T`` of them for ``log_oracle``)."""
    cum = [float(c) for c in cumulative_costs(T)]
    price = [cum[0]] + [cum[t] - cum[t - 1] for t in range(1, T)]
    steps = stop if stop < T else T - 1  # decisions taken (arriving at T ends it, no decision)
    out = []
    for k in range(steps):  # step k decides at layer k + 1
        charge = lam * ((price[0] if k == 0 else 0.0) + (price[k + 1] if k + 1 < stop else 0.0))
        r = -charge / beta
        last = k == steps - 1
        if mode == "improvement" and k + 1 < stop:
            r += (losses[k] - losses[k + 1]) / beta
        if last and mode == "terminal_loss":
            r += -losses[stop - 1] / beta
        if last and mode == "log_oracle":
            scores = [-(losses[t] + lam * cum[t]) / beta for t in range(T)]
            top = max(scores)
            log_z = top + math.log(sum(math.exp(v - top) for v in scores))
            r += scores[stop - 1] - log_z + lam * cum[stop - 1] / beta
        out.append(r)
    return out


def _toy_rl_context(tmp_path: Path):  # noqa: ANN202
    """A learner's context on the toy RL config: its task, frozen predictor, validation trace."""
    from conftest import TOY_RL

    from l2s_gym.build import make_predictor, make_task
    from l2s_gym.config import from_dict
    from l2s_gym.learner import LearnerContext

    cfg = from_dict(yaml.safe_load(TOY_RL))
    task = make_task(cfg.task, cfg.seed, "cpu")
    predictor = make_predictor(cfg.predictor, task, seed=0).requires_grad_(False)
    val = predictor.trace_eval(task.eval_set("val"), task)
    return LearnerContext(cfg, task, predictor, val, tmp_path, progress=False)


@pytest.mark.parametrize("mode", REWARD_MODES)
def test_each_row_draws_its_price_and_is_paid_like_a_fixed_price_env(mode: str) -> None:
    """Rows draw their prices from the grid; each row's rewards are, step by step, those of
    a fixed-``cost`` env at that row's price on the same instances and actions, and those a
    brute-force walk through the episode's losses gives."""
    task, predictor = _parts()
    beta = 0.1
    env = BatchedStopEnv(predictor, task, N, beta=beta, reward=mode, prices=GRID, seed=2)
    fixed = {p: BatchedStopEnv(predictor, task, N, beta=beta, reward=mode, cost=p, seed=2) for p in GRID}  # fmt: skip
    env.reset()
    for e in fixed.values():
        e.reset()
    seen: set[float] = set()
    episode_rewards: list[list[float]] = [[] for _ in range(N)]
    checked = 0
    for action in _actions(25, seed=1):
        lam = env.row_prices.clone()
        obs_before = env._obs
        assert torch.equal(obs_price(obs_before, env.feature_shape), lam)
        instances = env.instances
        obs, reward, done, info = env.step(action)
        for p, e in fixed.items():
            _, fixed_reward, fixed_done, _ = e.step(action)
            rows = lam == torch.tensor(p)
            assert torch.equal(done, fixed_done)
            assert torch.equal(reward[rows], fixed_reward[rows])
        for i in range(N):
            episode_rewards[i].append(float(reward[i]))
            if done[i]:
                # The brute force: this episode's losses at every layer, from a full trace.
                trace = predictor.trace(instances.select(torch.tensor([i])), task)
                losses = [float(v) for v in trace.losses[0].detach()]
                want = _episode_rewards(mode, losses, int(info["t"][i]), float(lam[i]), beta)
                assert episode_rewards[i] == pytest.approx(want, rel=1e-5, abs=1e-5)
                # The terminal observation shows the ended episode's price.
                assert float(obs_price(info["terminal_obs"], env.feature_shape)[i]) == float(lam[i])
                episode_rewards[i] = []
                seen.add(float(lam[i]))
                checked += 1
        assert torch.equal(obs_price(obs, env.feature_shape), env.row_prices)
        assert set(env.row_prices.tolist()) <= {float(torch.tensor(p)) for p in GRID}
    assert checked > 10 and len(seen) == len(GRID)


@pytest.mark.parametrize("mode", REWARD_MODES)
def test_price_weights_scale_each_episodes_rewards_by_its_prices_factor(mode: str) -> None:
    """With ``price_weights`` every reward of an episode is its unweighted reward times the
    factor of the episode's price (its stop reward included), on the same draws."""
    from l2s_gym.envs.batched import balanced_price_weights

    task, predictor = _parts()
    factors = [1.0, 0.5, 0.125]

    def make(**kw: object) -> BatchedStopEnv:
        return BatchedStopEnv(predictor, task, N, beta=0.1, reward=mode, prices=GRID, seed=5, **kw)  # type: ignore[arg-type]  # fmt: skip

    plain, weighted = make(), make(price_weights=factors)
    plain.reset(), weighted.reset()
    table = dict(zip([float(torch.tensor(p)) for p in GRID], factors, strict=True))
    ended = 0
    for action in _actions(20, seed=3):
        lam = plain.row_prices.clone()
        assert torch.equal(lam, weighted.row_prices)
        _, r, d, _ = plain.step(action)
        _, rw, dw, _ = weighted.step(action)
        assert torch.equal(d, dw)
        want = r * torch.tensor([table[float(x)] for x in lam])
        torch.testing.assert_close(rw, want, rtol=1e-6, atol=1e-7)
        ended += int(d.sum())
    assert ended > 10
    g = 0.05
    assert balanced_price_weights([0.0, 0.05, 0.5], g) == pytest.approx([1.0, 0.5, 1 / 11])
    for bad, needle in (([1.0, 2.0], "2 factors for 3 prices"), ([1.0, 0.0, 1.0], "> 0"),
                        (["a", 1, 1], "numbers > 0")):  # fmt: skip
        with pytest.raises(ValueError, match=needle):
            make(price_weights=bad)
    with pytest.raises(ValueError, match="needs prices"):
        BatchedStopEnv(predictor, task, N, beta=0.1, price_weights=[1.0])


def test_rl_one_policy_envs_balance_the_prices_unless_told_not_to(tmp_path: Path) -> None:
    from dataclasses import replace

    from conftest import TOY_RL

    from l2s_gym.agents.sb3_dqn import dqn_env
    from l2s_gym.config import from_dict
    from l2s_gym.envs.batched import balanced_price_weights
    from l2s_gym.learner import make_rl_env

    data = yaml.safe_load(TOY_RL)
    ctx = _toy_rl_context(tmp_path)
    assert make_rl_env(ctx, stream=1).price_weights is None  # one price: nothing to weigh
    priced = replace(ctx, prices=[0.0, 0.02, 0.2], price_unit=0.02)
    want = torch.tensor(balanced_price_weights(priced.prices, 0.02))
    for env in (make_rl_env(priced, stream=1), dqn_env(priced, stream=1)):
        assert torch.allclose(env.price_weights, want)
    off = from_dict({**data, "frontier": {"one_policy_balance": False}})
    assert make_rl_env(replace(priced, cfg=off), stream=1).price_weights is None


def test_price_draws_are_seeded_and_leave_the_instances_alone() -> None:
    task, predictor = _parts()
    make = lambda seed, **kw: BatchedStopEnv(predictor, task, N, beta=0.1, seed=seed, **kw)  # noqa: E731
    a, b, plain = make(3, prices=GRID), make(3, prices=GRID), make(3)
    other = make(4, prices=GRID)
    oa, ob, op = a.reset(), b.reset(), plain.reset()
    other.reset()
    assert torch.equal(oa, ob)
    assert a.obs_dim == plain.obs_dim + 1 and a.observe_price
    for x, y in zip(split_obs(oa, a.feature_shape), split_obs(op, a.feature_shape), strict=True):
        assert torch.equal(x, y)  # the instance stream is the one without prices
    prices_a, prices_other = [a.row_prices], [other.row_prices]
    for action in _actions(30, seed=0):
        (xa, ra, da, _), (xb, rb, db, _) = a.step(action), b.step(action)
        other.step(action)
        assert torch.equal(xa, xb) and torch.equal(ra, rb) and torch.equal(da, db)
        prices_a.append(a.row_prices)
        prices_other.append(other.row_prices)
    assert not torch.equal(torch.stack(prices_a), torch.stack(prices_other))
    # reset(seed=s) restarts both streams.
    again = a.reset(seed=3)
    assert torch.equal(again, oa) and torch.equal(a.row_prices, prices_a[0])
    # Uniform over the grid: every price about a third of many draws.
    many = BatchedStopEnv(predictor, task, 3000, beta=0.1, prices=GRID)
    many.reset()
    counts = [int((many.row_prices == torch.tensor(p)).sum()) for p in GRID]
    assert min(counts) > 900


def test_without_prices_row_prices_is_the_cost() -> None:
    task, predictor = _parts()
    env = BatchedStopEnv(predictor, task, N, beta=0.1, cost=0.2)
    env.reset()
    assert env.prices is None and not env.observe_price
    assert torch.equal(env.row_prices, torch.full((N,), 0.2))


@pytest.mark.parametrize(
    ("prices", "cost", "needle"),
    [
        ([], 0.0, "at least one price"),
        ([0.1, -0.5], 0.0, "finite numbers >= 0, got -0.5"),
        ([0.1, math.inf], 0.0, "finite numbers >= 0, got inf"),
        ([math.nan], 0.0, "finite numbers >= 0, got nan"),
        ("0.1", 0.0, "a sequence of numbers"),
        (0.1, 0.0, "a sequence of numbers"),
        ([0.1, 0.2], 0.3, "give one of them"),
    ],
)
def test_bad_prices_are_one_clear_line(prices, cost, needle) -> None:
    task, predictor = _parts()
    with pytest.raises(ValueError, match="prices") as err:
        BatchedStopEnv(predictor, task, N, beta=0.1, cost=cost, prices=prices)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_the_gymnasium_env_passes_prices_through() -> None:
    from gymnasium.utils.env_checker import check_env

    task, predictor = _parts()
    env = StopEnv(task=task, predictor=predictor, beta=0.1, prices=GRID, seed=1)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=5)
    assert env.observation_space.shape == (env.batched.obs_dim,)
    assert float(obs[-2]) in {float(torch.tensor(p)) for p in GRID}


def test_price_conditioned_reinforce_reads_each_rows_price() -> None:
    """The rollout acts at the price each observation shows and records it; the update's
    baseline groups decisions by layer and price."""
    from l2s_gym.agents.reinforce import collect_rollout, per_layer_baseline, policy_gradient_loss
    from l2s_gym.policy import StopPolicy

    task, predictor = _parts()
    env = BatchedStopEnv(predictor, task, N, beta=0.1, prices=GRID, seed=0)
    torch.manual_seed(0)
    policy = StopPolicy(predictor.feature_shape, T, hidden=8, depth=1, price_input=True)
    policy.set_price(0.0, 0.1)
    obs = env.reset()
    rollout, _ = collect_rollout(env, policy, obs, 6, torch.Generator().manual_seed(0))
    assert rollout.price is not None and rollout.price.shape == rollout.t.shape
    assert set(rollout.price.flatten().tolist()) <= {float(torch.tensor(p)) for p in GRID}
    K = rollout.t.shape[0]
    logits = policy(
        rollout.features.reshape(-1, *env.feature_shape), rollout.t.reshape(-1),
        rollout.price.reshape(-1),
    ).reshape(K, N)  # fmt: skip
    terms = policy_gradient_loss(logits, rollout, 1.0, 1.0, T)
    assert torch.isfinite(terms.loss)
    # The baseline of a decision is the mean over the others at its layer and price.
    returns = torch.randn(2, 3)
    t = torch.tensor([[0, 0, 0], [0, 0, 1]])
    group = torch.tensor([[0, 0, 1], [1, 0, 0]]) * T + t
    base = per_layer_baseline(returns, group, torch.ones(2, 3, dtype=torch.bool), 2 * T)
    assert float(base[0, 0]) == pytest.approx(float(returns[0, 1] + returns[1, 1]) / 2)
    assert float(base[0, 2]) == pytest.approx(float(returns[1, 0]))


def test_reinforce_one_policy_frontier_end_to_end(tmp_path: Path) -> None:
    from l2s_gym.compare import run_experiment
    from l2s_gym.config import from_dict

    data = yaml.safe_load(TOY_FRONTIER)
    data["frontier"] = {"costs": [0, 1], "one_policy": True, "learners": ["reverse_kl", "reinforce", "ppo", "a2c", "dqn"]}  # fmt: skip
    data["compare"] = {"learners": ["reverse_kl"], "layer_budget": 4000}
    data["rl"] = {"num_envs": 16, "val_every": 5, "rollout_steps": 4,
                  "ppo": {"n_steps": 8, "batch_size": 64, "n_epochs": 2}}  # fmt: skip
    cfg = from_dict(data)
    run_dir, _ = run_experiment(cfg, tmp_path, "frontier", progress=False, log=lambda *_: None)
    res = json.loads((run_dir / "results.json").read_text())
    names = {"reinforce (one policy)", "reverse_kl (one policy)", "ppo (one policy)", "a2c (one policy)", "dqn (one policy)"}  # fmt: skip
    assert names | {"reinforce", "ppo", "a2c", "dqn"} <= set(res["frontier_summary"])
    curve = res["frontiers"]["REINFORCE, one price-conditioned policy for every price"]
    assert curve["kind"] == "learned" and curve["cost"] == [0, 1]
    assert "| reinforce (one policy) |" in (run_dir / "results.md").read_text()
    for learner in ("reinforce", "ppo", "a2c", "dqn"):
        trial = json.loads((run_dir / f"seed-0/{learner}/one-policy/result.json").read_text())
        assert trial["one_policy"] and len(trial["extra"]["prices"]) == 2


def test_a_learner_that_cannot_is_refused_naming_those_that_can(tmp_path: Path) -> None:
    from l2s_gym import plugins, registry
    from l2s_gym.compare import experiment_plan
    from l2s_gym.config import ConfigError, from_dict
    from l2s_gym.trials import Trial, _run_stage2

    plugins.load_plugins()
    assert {"reverse_kl", "forward_kl", "reinforce", "ppo", "a2c", "dqn"} <= registry.ONE_POLICY_LEARNERS  # fmt: skip
    # A learner of one's own that says it can't (an RL learner without price input).
    registry.register_learner("fixed_only", "fixed only", one_policy=False)(lambda ctx: None)
    try:
        assert "fixed_only" not in registry.ONE_POLICY_LEARNERS
        data = {**yaml.safe_load(TOY_FRONTIER), "frontier": {"costs": [0, 1], "one_policy": True}}
        data["frontier"]["learners"] = ["fixed_only"]
        with pytest.raises(ConfigError, match="can train one price-conditioned policy") as err:
            experiment_plan(from_dict(data), "frontier")
        assert "reinforce" in str(err.value) and "reverse_kl" in str(err.value)
        data["frontier"]["learners"] = ["fixed_only", "reinforce"]
        plan, _ = experiment_plan(from_dict(data), "frontier")
        assert [t.learner for t in plan if t.one_policy] == ["reinforce"]
        trial = Trial("stage2", 0, "fixed_only", 0.0, "gain", one_policy=True)
        with pytest.raises(ConfigError, match="'fixed_only' cannot train one price-conditioned") as err:  # fmt: skip
            _run_stage2(trial, tmp_path, tmp_path, from_dict(data), False)
        assert "reinforce" in str(err.value) and "dqn" in str(err.value)
    finally:
        for table in (registry.LEARNERS, registry.LEARNER_LABELS, registry.LEARNER_KINDS):
            table.pop("fixed_only")
        registry.ONE_POLICY_LEARNERS.discard("fixed_only")


def test_make_env_takes_prices_in_the_cost_unit(tmp_path: Path) -> None:
    from conftest import TOY_CONFIG, write_config

    from l2s_gym import make_env

    config = write_config(tmp_path, TOY_CONFIG, "toy.yaml")
    env = make_env(config, prices=[0, 1, 3], num_envs=8, api="batched", verbose=False)
    gain = env.calibration.gain_per_layer
    assert torch.allclose(env.prices, torch.tensor([0.0, gain, 3 * gain]))
    obs = env.reset()
    assert torch.equal(obs_price(obs, env.feature_shape), env.row_prices)
    loss_unit = make_env(config, prices=[0.5], cost_unit="loss", api="batched", verbose=False)
    assert loss_unit.prices.tolist() == [0.5]
    with pytest.raises(ValueError, match="give one of them"):
        make_env(config, cost=0.1, prices=[0.5], api="batched", verbose=False)


def test_price_conditioned_ppo_actor_copies_into_a_price_conditioned_stop_policy(
    tmp_path: Path,
) -> None:
    """The features extractor appends the observation's price code as the StopPolicy does,
    so the copied policy has the SB3 actor's stop logits at every row's price."""
    from dataclasses import replace

    from l2s_gym.agents.sb3_agents import copy_actor_to_stop_policy, make_model
    from l2s_gym.build import make_policy
    from l2s_gym.envs.batched import make_obs
    from l2s_gym.envs.sb3_vec import StopVecEnv

    ctx = replace(_toy_rl_context(tmp_path), prices=[0.0, 0.02, 0.2], price_unit=0.02)
    cfg, task, predictor, val = ctx.cfg, ctx.task, ctx.predictor, ctx.val_trace
    env = BatchedStopEnv(predictor, task, 8, beta=cfg.beta, prices=ctx.prices)
    model = make_model("ppo", ctx, StopVecEnv(env), seed=0)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    policy = make_policy(cfg, predictor, price_input=True).set_price(0.0, ctx.price_unit)
    copy_actor_to_stop_policy(model.policy, policy)
    features, t = val.features[:60, 2], torch.full((60,), 2)
    lam = torch.tensor(ctx.prices).repeat(20)
    logits = model.policy.get_distribution(make_obs(features, t, lam)).distribution.logits
    got = policy(features, t, lam)
    torch.testing.assert_close(got, logits[:, 1] - logits[:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, policy(features, t, torch.zeros(60)))


def test_price_conditioned_dqn_q_net_copies_into_a_price_conditioned_stop_policy(
    tmp_path: Path,
) -> None:
    """DQN's Q-network sees the price code too: the copy's logit is Q(stop) - Q(continue)
    at every row's price."""
    from dataclasses import replace

    from l2s_gym.agents.sb3_dqn import copy_q_to_stop_policy, dqn_env, make_dqn
    from l2s_gym.build import make_policy
    from l2s_gym.envs.batched import make_obs
    from l2s_gym.envs.sb3_vec import StopVecEnv

    ctx = replace(_toy_rl_context(tmp_path), prices=[0.0, 0.02, 0.2], price_unit=0.02)
    cfg, predictor, val = ctx.cfg, ctx.predictor, ctx.val_trace
    env = dqn_env(ctx, stream=70_000)
    assert env.prices is not None and env.cost == 0.0
    model = make_dqn(ctx, StopVecEnv(env), seed=0)
    with torch.no_grad():
        for p in model.policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    policy = make_policy(cfg, predictor, price_input=True).set_price(0.0, ctx.price_unit)
    copy_q_to_stop_policy(model.policy.q_net, policy)
    features, t = val.features[:60, 2], torch.full((60,), 2)
    lam = torch.tensor(ctx.prices).repeat(20)
    with torch.no_grad():
        q = model.policy.q_net(make_obs(features, t, lam))
    got = policy(features, t, lam)
    torch.testing.assert_close(got, q[:, 1] - q[:, 0], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, policy(features, t, torch.zeros(60)))
