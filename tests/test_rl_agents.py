"""RL learners (REINFORCE, SB3 PPO / A2C) and the SB3 VecEnv over the batched env."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import TOY_RL

from l2s_gym import registry
from l2s_gym.agents.reinforce import (
    Rollout,
    per_layer_baseline,
    policy_gradient_loss,
    soft_returns,
)
from l2s_gym.agents.sb3_agents import SB3StopModel, copy_actor_to_stop_policy
from l2s_gym.build import make_policy, make_predictor, make_task
from l2s_gym.config import from_dict
from l2s_gym.envs.batched import BatchedStopEnv
from l2s_gym.evaluation import stop_logits
from l2s_gym.learner import LearnerContext
from l2s_gym.stopping import deterministic_stop, oracle_log_q, reverse_kl, stop_log_q


def toy_context(tmp_path: Path, layer_budget: int | None = None, **rl: object) -> LearnerContext:
    data = yaml.safe_load(TOY_RL)
    data["rl"].update(rl)
    if layer_budget is not None:
        data["compare"]["layer_budget"] = layer_budget
    cfg = from_dict(data)
    task = make_task(cfg.task, cfg.seed, "cpu")
    predictor = make_predictor(cfg.predictor, task, seed=0).requires_grad_(False)
    val = predictor.trace_eval(task.eval_set("val"), task)
    return LearnerContext(cfg, task, predictor, val, tmp_path, cfg.seed, progress=False)


def exact_stop_rate(ctx: LearnerContext, model: object) -> float:
    """Share of test instances whose deterministic stop is the known best layer."""
    test = ctx.predictor.trace_eval(ctx.task.eval_set("test"), ctx.task)
    stop = deterministic_stop(stop_logits(model, test))  # type: ignore[arg-type]
    return float((stop == test.losses.argmin(dim=1)).float().mean())


def untrained_rate(ctx: LearnerContext) -> float:
    # The StopPolicy starts patient (stop logit -1): it stops at T, right on about 1/6.
    return exact_stop_rate(ctx, make_policy(ctx.cfg, ctx.predictor))


def test_reinforce_learns_the_known_best_layer(tmp_path: Path) -> None:
    # The toy's loss is minimal exactly at a hidden layer b that its features reveal.
    ctx = toy_context(tmp_path, layer_budget=60_000)
    assert untrained_rate(ctx) < 0.3
    result = registry.LEARNERS["reinforce"](ctx)
    assert exact_stop_rate(ctx, result.model) >= 0.9
    assert result.layer_evals >= ctx.layer_budget
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    # TensorBoard's HParams tab: the trial's settings and its kept model's figures.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(events.PluginTagToContent("hparams"))  # fmt: skip
    (kept,) = events.Scalars("hparams/val_metric")
    assert kept.value == pytest.approx(result.extra["best_val_metric"])
    assert {"hparams/val_objective", "hparams/val_avg_layers"} <= set(events.Tags()["scalars"])


def test_reinforce_learns_with_log_oracle_rewards_and_pays_full_passes(tmp_path: Path) -> None:
    ctx = toy_context(tmp_path, reward="log_oracle", layer_budget=90_000)
    result = registry.LEARNERS["reinforce"](ctx)
    assert exact_stop_rate(ctx, result.model) >= 0.9
    # Every instance started (each finished episode, and the 64 in flight) cost a full
    # pass of T = 6 layers, and nothing else was computed.
    assert result.layer_evals == 6 * (result.extra["episodes"] + ctx.cfg.rl.num_envs)


@pytest.mark.parametrize(("name", "budget"), [("ppo", 8_000), ("a2c", 24_000)])
def test_sb3_learners_learn_the_known_best_layer(tmp_path: Path, name: str, budget: int) -> None:
    # As SB3's own identity-env tests: a short training must find the known answer.
    ctx = toy_context(tmp_path, layer_budget=budget)
    assert untrained_rate(ctx) < 0.3
    result = registry.LEARNERS[name](ctx)
    assert exact_stop_rate(ctx, result.model) >= 0.9
    # The budget binds on layers: training stops within one rollout past it.
    block = getattr(ctx.cfg.rl, name)
    rollout_layers = block["n_steps"] * ctx.cfg.rl.num_envs * 2  # arrivals compute two
    assert budget <= result.layer_evals < budget + rollout_layers
    # The checkpoint is the returned StopPolicy's (the best validated), like every learner's.
    state = torch.load(tmp_path / "best.pt", weights_only=False)
    assert state["learner"] == name
    policy = make_policy(ctx.cfg, ctx.predictor)
    policy.load_state_dict(state["state_dict"])
    features = ctx.val_trace.features
    torch.testing.assert_close(policy.trace_logits(features), result.model.trace_logits(features))


def test_dqn_on_sb3_defaults_learns_the_known_best_layer(tmp_path: Path) -> None:
    # SB3's own defaults (no rl.dqn entry for the toy), on rewards in units of the gain.
    ctx = toy_context(tmp_path, layer_budget=60_000)
    assert ctx.cfg.rl.dqn == {}
    result = registry.LEARNERS["dqn"](ctx)
    assert exact_stop_rate(ctx, result.model) >= 0.9
    assert 60_000 <= result.layer_evals < 60_000 + 8 * 4 * 2
    policy = make_policy(ctx.cfg, ctx.predictor)
    policy.load_state_dict(torch.load(tmp_path / "best.pt", weights_only=False)["state_dict"])
    features = ctx.val_trace.features
    torch.testing.assert_close(policy.trace_logits(features), result.model.trace_logits(features))


def test_stop_policy_copy_has_the_dqn_q_difference(tmp_path: Path) -> None:
    from l2s_gym.agents.sb3_dqn import copy_q_to_stop_policy, dqn_env, make_dqn
    from l2s_gym.envs.sb3_vec import StopVecEnv

    ctx = toy_context(tmp_path)
    model = make_dqn(ctx, StopVecEnv(dqn_env(ctx, stream=0)), seed=0)
    with torch.no_grad():
        for p in model.q_net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    policy = copy_q_to_stop_policy(model.q_net, make_policy(ctx.cfg, ctx.predictor))
    obs = torch.cat([ctx.val_trace.features[:50, 2], torch.full((50, 1), 2.0)], dim=1)
    q = model.q_net(obs)
    expected = q[:, 1] - q[:, 0]
    got = policy(ctx.val_trace.features[:50, 2], torch.full((50,), 2))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_stop_policy_copy_has_the_sb3_actor_logits(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    from l2s_gym.agents.sb3_agents import make_model
    from l2s_gym.envs.sb3_vec import StopVecEnv

    ctx = toy_context(tmp_path)
    venv = StopVecEnv(BatchedStopEnv(ctx.predictor, ctx.task, 8, beta=ctx.cfg.beta))
    model = make_model("ppo", ctx, venv, seed=0)
    assert isinstance(model, PPO)
    with torch.no_grad():  # move the weights away from their structured initialisation
        for p in model.policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    policy = copy_actor_to_stop_policy(model.policy, make_policy(ctx.cfg, ctx.predictor))
    features = ctx.val_trace.features[:50]
    expected = SB3StopModel(model.policy).trace_logits(features)
    torch.testing.assert_close(policy.trace_logits(features), expected, rtol=1e-5, atol=1e-5)


def test_sb3_model_takes_the_config_block(tmp_path: Path) -> None:
    from l2s_gym.agents.sb3_agents import make_model
    from l2s_gym.envs.sb3_vec import StopVecEnv

    block = {
        "n_steps": 4,
        "batch_size": 10_000,
        "n_epochs": 2,
        "gae_lambda": 0.9,
        "clip_range": "lin_0.2",
        "learning_rate": "lin_1e-3",
        "max_grad_norm": 0.7,
    }
    ctx = toy_context(tmp_path, ppo=block)
    venv = StopVecEnv(BatchedStopEnv(ctx.predictor, ctx.task, 8, beta=ctx.cfg.beta))
    model = make_model("ppo", ctx, venv, seed=0)
    assert (model.n_steps, model.n_epochs, model.gae_lambda, model.max_grad_norm) == (
        4,
        2,
        0.9,
        0.7,
    )
    assert model.batch_size == 4 * 8  # capped at one rollout
    assert (model.gamma, model.ent_coef, model.normalize_advantage) == (1.0, 1.0, False)
    # lin_ schedules fall with the layer budget spent, not with SB3's timesteps.
    assert model.clip_range(1.0) == pytest.approx(0.2)
    assert model.lr_schedule(1.0) == pytest.approx(1e-3)
    venv.env.layer_evals = ctx.layer_budget * 3 // 4
    assert model.clip_range(1.0) == pytest.approx(0.05)
    assert model.lr_schedule(1.0) == pytest.approx(2.5e-4)
    # The actor is the learner's StopPolicy-shaped network, whatever the block says.
    assert model.policy.net_arch == {"pi": [32, 32], "vf": [32, 32]}
    a2c = make_model("a2c", toy_context(tmp_path, a2c={"n_steps": 3, "vf_coef": 0.1}), venv, 0)
    assert (a2c.n_steps, a2c.vf_coef, a2c.gamma) == (3, 0.1, 1.0)


def test_stop_vec_env_protocol_and_terminal_observation(tmp_path: Path) -> None:
    from stable_baselines3 import PPO

    from l2s_gym.envs.sb3_vec import StopVecEnv

    ctx = toy_context(tmp_path)
    env = BatchedStopEnv(ctx.predictor, ctx.task, 4, beta=0.05, seed=3)
    venv = StopVecEnv(env)
    assert venv.observation_space.shape == (env.obs_dim,)
    venv.seed(7)
    obs = venv.reset()
    assert obs.shape == (4, env.obs_dim) and obs.dtype == np.float32
    assert np.all(obs[:, -1] == 0)
    venv.seed(7)
    np.testing.assert_array_equal(venv.reset(), obs)  # same seed, same episodes

    obs, reward, done, infos = venv.step(np.array([0, 1, 0, 1]))
    assert reward.dtype == np.float32 and done.dtype == np.bool_ and len(infos) == 4
    assert done.tolist() == [False, True, False, True]
    for i in (1, 3):
        terminal = infos[i]["terminal_observation"]
        assert terminal.shape == (env.obs_dim,) and terminal[-1] == 0  # stopped after layer 1
        assert infos[i]["t"] == 1 and infos[i]["episode"]["l"] == 1
        assert infos[i]["TimeLimit.truncated"] is False
        assert obs[i, -1] == 0  # already the next episode
    assert infos[0] == {} and obs[0, -1] == 1

    # SB3 bookkeeping calls.
    assert venv.get_attr("render_mode") == [None] * 4
    assert venv.get_attr("num_layers", indices=[0, 2]) == [6, 6]
    assert venv.env_is_wrapped(object) == [False] * 4  # type: ignore[arg-type]
    assert venv.env_method("current_info")[0]["t"].shape == (4,)
    with pytest.raises(ValueError, match="indices=None"):
        venv.set_attr("beta", 1.0, indices=[0])
    with pytest.raises(ValueError, match="shape"):
        venv.step(np.zeros(3, dtype=np.int64))
    with pytest.raises(AttributeError):
        venv.get_attr("no_such_attribute")

    # Device -> host: obs, rewards and dones once each, plus one packed block when rows ended.
    copies = []
    original_cpu = torch.Tensor.cpu

    def counting_cpu(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        copies.append(tuple(self.shape))
        return original_cpu(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.Tensor, "cpu", counting_cpu)
        venv.reset()
        copies.clear()
        before, _, done, infos = venv.step(np.array([0, 0, 0, 0]))
        assert not done.any() and len(copies) == 3
        copies.clear()
        _, reward, done, infos = venv.step(np.array([1, 0, 1, 0]))
    assert done.tolist() == [True, False, True, False]
    assert copies[3:] == [(2, env.obs_dim + 6)] and len(copies) == 4
    for i in (0, 2):
        assert infos[i]["t"] == 2 and infos[i]["episode"]["l"] == 2 and infos[i]["best_layer"] == -1
        assert infos[i]["episode"]["r"] == pytest.approx(-infos[i]["loss"] / 0.05, rel=1e-6)
        assert reward[i] == pytest.approx(infos[i]["episode"]["r"], rel=1e-6)
        np.testing.assert_array_equal(infos[i]["terminal_observation"], before[i])

    # PPO learns on it for a few hundred steps without error.
    from stable_baselines3.common.logger import configure

    model = PPO("MlpPolicy", venv, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu")
    # A logger in tmp_path: SB3's default would leave an empty SB3-<time> folder in /tmp.
    model.set_logger(configure(str(tmp_path / "sb3"), ["csv"]))
    model.learn(total_timesteps=256)
    assert model.num_timesteps >= 256
    assert len(model.ep_info_buffer) > 0  # the "episode" infos reach SB3's logger


def test_soft_returns_add_only_later_entropies() -> None:
    # One row, episode of 3 decisions (done at step 2): reward only on stopping.
    reward = torch.tensor([[0.0], [0.0], [-2.0], [5.0]])
    done = torch.tensor([[False], [False], [True], [True]])
    h = torch.tensor([[0.1], [0.2], [0.4], [0.8]])
    soft, plain = soft_returns(reward, done, h, gamma=1.0, entropy_coef=1.0)
    torch.testing.assert_close(plain[:, 0], torch.tensor([-2.0, -2.0, -2.0, 5.0]))
    # S_0 = -2 + h_1 + h_2, S_1 = -2 + h_2, S_2 = -2 (the next episode's entropy is not ours).
    torch.testing.assert_close(soft[:, 0], torch.tensor([-1.4, -1.6, -2.0, 5.0]))


@pytest.mark.parametrize("num_layers", [2, 5])
def test_reinforce_surrogate_has_the_exact_reverse_kl_gradient_in_expectation(
    num_layers: int,
) -> None:
    # Enumerate every episode of one instance: stop after layer s (decisions at layers
    # 1..s, the last one "stop") for s < T, or continue at layers 1..T-1 and arrive at T
    # (no decision there). Weighted by q_phi(s), the surrogate's gradient is exactly
    # -grad J = grad KL(q_phi || q*) for log-oracle rewards and entropy_coef 1.
    T = num_layers
    gen = torch.Generator().manual_seed(T)
    logits = torch.randn(T, generator=gen, dtype=torch.float64, requires_grad=True)
    log_qstar = oracle_log_q(torch.rand(T, generator=gen, dtype=torch.float64), 0.3)
    log_q = stop_log_q(logits)
    expected = torch.autograd.grad(reverse_kl(log_q, log_qstar), logits)[0]
    total = torch.zeros((), dtype=torch.float64)
    for s in range(1, T + 1):
        k = min(s, T - 1)  # decisions this episode takes
        stop = torch.zeros(k, 1, dtype=torch.bool)
        stop[-1] = s < T
        reward = torch.zeros(k, 1, dtype=torch.float64)
        reward[-1] = log_qstar[s - 1]
        done = torch.zeros(k, 1, dtype=torch.bool)
        done[-1] = True
        rollout = Rollout(
            features=torch.zeros(k, 1, 1),
            t=torch.arange(k).unsqueeze(1),
            stop=stop,
            reward=reward,
            done=done,
            counted=torch.ones(k, 1, dtype=torch.bool),
            layers=torch.full((k, 1), s),
        )
        terms = policy_gradient_loss(logits[:k].unsqueeze(1), rollout, 1.0, 1.0, T)
        total = total + log_q[s - 1].detach().exp() * terms.loss
    got = torch.autograd.grad(total, logits)[0]
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    # The last layer's logit never matters: the env asks no decision there.
    assert got[-1] == 0


def test_scale_free_surrogate_keeps_the_gradient_direction() -> None:
    # Four rows over three steps, episodes of 1 to 3 decisions; returns on a large scale.
    gen = torch.Generator().manual_seed(3)
    K, N, T = 3, 4, 4
    logits = torch.randn(K, N, generator=gen, dtype=torch.float64, requires_grad=True)
    done = torch.tensor([[True, False, False, False], [False, True, False, False]] + [[True] * 4])
    rollout = Rollout(
        features=torch.zeros(K, N, 1),
        t=torch.tensor([[0, 0, 0, 0], [0, 1, 1, 1], [1, 0, 2, 2]]),
        stop=done,
        reward=torch.where(done, -300.0 * torch.rand(K, N, generator=gen, dtype=torch.float64), 0),
        done=done,
        counted=torch.ones(K, N, dtype=torch.bool),
        layers=torch.ones(K, N, dtype=torch.long),
    )
    plain = policy_gradient_loss(logits, rollout, 1.0, 1.0, T)
    free = policy_gradient_loss(logits, rollout, 1.0, 1.0, T, scale_free=True)
    g_plain = torch.autograd.grad(plain.loss, logits)[0]
    g_free = torch.autograd.grad(free.loss, logits)[0]
    # Same direction, divided by the spread of the advantages (large here: returns ~ 100s).
    ratio = (g_plain.norm() / g_free.norm()).item()
    torch.testing.assert_close(g_free * ratio, g_plain)
    assert ratio > 10
    # The reported terms are the unscaled ones.
    torch.testing.assert_close(free.policy_gradient, plain.policy_gradient)
    torch.testing.assert_close(free.entropy, plain.entropy)
    # One decision: no spread to divide by, the surrogate is left as it is.
    one = Rollout(
        features=torch.zeros(1, 1, 1),
        t=torch.zeros(1, 1, dtype=torch.long),
        stop=torch.ones(1, 1, dtype=torch.bool),
        reward=torch.full((1, 1), -5.0, dtype=torch.float64),
        done=torch.ones(1, 1, dtype=torch.bool),
        counted=torch.ones(1, 1, dtype=torch.bool),
        layers=torch.ones(1, 1, dtype=torch.long),
    )
    lone = logits[:1, :1]
    torch.testing.assert_close(
        policy_gradient_loss(lone, one, 1.0, 1.0, T, scale_free=True).loss,
        policy_gradient_loss(lone, one, 1.0, 1.0, T).loss,
    )


def test_per_layer_baseline_is_leave_one_out() -> None:
    returns = torch.tensor([[1.0, 3.0, 10.0]])
    t = torch.tensor([[0, 0, 1]])
    mask = torch.tensor([[True, True, True]])
    baseline = per_layer_baseline(returns, t, mask, num_layers=2)
    # Each decision's baseline is the mean of the *other* decisions at its layer.
    torch.testing.assert_close(baseline, torch.tensor([[3.0, 1.0, 0.0]]))


def test_annealed_beta_falls_geometrically_then_holds() -> None:
    from l2s_gym.config import annealed_beta

    assert annealed_beta(0.01, 30.0, 0.5, 0.0) == pytest.approx(0.3)
    assert annealed_beta(0.01, 30.0, 0.5, 0.25) == pytest.approx(0.01 * 30**0.5)
    assert annealed_beta(0.01, 30.0, 0.5, 0.5) == pytest.approx(0.01)
    assert annealed_beta(0.01, 30.0, 0.5, 0.9) == pytest.approx(0.01)
    assert annealed_beta(0.01, 1.0, 0.5, 0.0) == pytest.approx(0.01)


@pytest.mark.parametrize("name", ["reinforce", "ppo"])
def test_rl_continuation_anneals_the_env_beta_to_beta(
    tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Record every temperature the learner gives its env: it must start near 10 x beta
    # (reset has already computed a first layer), fall monotonically, and end at beta
    # itself (the objective the table scores).
    import l2s_gym.learner as base

    seen: list[float] = []
    original = base.anneal_env_beta

    def spy(ctx: LearnerContext, env: BatchedStopEnv, multiple: float) -> float:
        seen.append(original(ctx, env, multiple))
        return seen[-1]

    module = "l2s_gym.agents.reinforce" if name == "reinforce" else "l2s_gym.agents.sb3_callbacks"
    monkeypatch.setattr(f"{module}.anneal_env_beta", spy)
    ctx = toy_context(tmp_path, layer_budget=8000, beta_anneal_from=10.0, anneal_fraction=0.5)
    registry.LEARNERS[name](ctx)
    beta = ctx.cfg.beta
    assert 9 * beta < seen[0] <= 10 * beta
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(seen))
    assert seen[-1] == pytest.approx(beta)


@pytest.mark.parametrize("name", ["ppo", "a2c"])
def test_sb3_learners_stop_on_divergence(tmp_path: Path, name: str) -> None:
    from l2s_gym.runs import TrainingDiverged

    ctx = toy_context(tmp_path, layer_budget=8_000, **{name: {"learning_rate": 1e9}})
    with pytest.raises(TrainingDiverged, match="diverged|loss became"):
        registry.LEARNERS[name](ctx)


def test_reinforce_samples_from_its_own_number_of_envs(tmp_path: Path) -> None:
    from l2s_gym.learner import make_rl_env

    assert make_rl_env(toy_context(tmp_path), stream=0).num_envs == 64
    ctx = toy_context(tmp_path, layer_budget=2000, reinforce_num_envs=8)
    assert make_rl_env(ctx, stream=0, num_envs=ctx.cfg.rl.reinforce_num_envs).num_envs == 8
    result = registry.LEARNERS["reinforce"](ctx)
    # 8 envs: an update every ~16-30 steps of 8 rows, so many updates from 2,000 layers.
    assert result.extra["updates"] >= 5
