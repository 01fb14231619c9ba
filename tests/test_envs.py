"""The stop environments: checkers, reproducibility, laziness, rewards, autoreset, errors."""

from __future__ import annotations

import warnings

import gymnasium
import numpy as np
import pytest
import torch

import l2s_gym
from l2s_gym import registry
from l2s_gym.envs import (
    BatchedStopEnv,
    StopEnv,
    StopVectorEnv,
    make_obs,
    register_envs,
    split_obs,
)
from l2s_gym.policy import StopPolicy
from l2s_gym.predictors.lista import LISTA, ListaConfig
from l2s_gym.stopping import oracle_log_q
from l2s_gym.tasks.sparse_recovery import SparseRecoveryConfig, SparseRecoveryTask

ENV_ID = "l2s/SparseRecovery-v1"
T = 5
BETA = 0.1


@pytest.fixture(scope="module")
def task() -> SparseRecoveryTask:
    return SparseRecoveryTask(SparseRecoveryConfig(m=20, n=40, val_size=8), seed=0)


@pytest.fixture(scope="module")
def predictor(task: SparseRecoveryTask) -> LISTA:
    return LISTA(ListaConfig(num_layers=T), task)


def stream(env: BatchedStopEnv, seed: int, count: int):  # noqa: ANN201
    """The first ``count`` instances of the env's instance stream for ``seed``."""
    gen = torch.Generator(device=env.task.device).manual_seed(seed)
    return env.task.train_batch(env.instance_block, gen).select(slice(0, count))


def rule(obs: np.ndarray) -> int:
    """A deterministic policy of the observation: stop once the residual is small, or at t=2."""
    return int(obs[0] < -1.2 or obs[-1] >= 2)


def run_single(env: StopEnv, episodes: int, seed: int, policy=rule) -> list[list[float]]:  # noqa: ANN001
    rewards = []
    obs, _ = env.reset(seed=seed)
    for _ in range(episodes):
        ep, done = [], False
        while not done:
            obs, r, done, _, _ = env.step(policy(obs))
            ep.append(r)
        rewards.append(ep)
        obs, _ = env.reset()
    return rewards


# --- checkers and registration -----------------------------------------------------------


@pytest.mark.parametrize("reward", ["terminal_loss", "log_oracle", "improvement"])
def test_both_checkers_pass_without_warnings(task, predictor, reward) -> None:
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    env = gymnasium.make(ENV_ID, task=task, predictor=predictor, reward=reward, cost=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gym_check(env.unwrapped)
        sb3_check(env.unwrapped)
    assert [str(w.message) for w in caught] == []


def test_make_with_no_kwargs_gives_a_working_env() -> None:
    env = gymnasium.make(ENV_ID)
    obs, info = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert isinstance(env.unwrapped.predictor, LISTA) and info["t"] == 1
    total, done = 0.0, False
    while not done:
        obs, r, done, truncated, info = env.step(0)
        total += r
    assert info["t"] == env.unwrapped.predictor.num_layers == 20
    assert total == pytest.approx(-info["loss"] / 0.1, rel=1e-6)


def test_every_task_with_an_env_id_is_registered() -> None:
    for name, entry in registry.TASKS.items():
        if entry.cls.env_id:
            spec = gymnasium.spec(entry.cls.env_id)
            assert spec.kwargs["task"] == name
            assert spec.vector_entry_point is not None


def test_register_envs_is_idempotent_and_picks_up_new_tasks() -> None:
    assert register_envs() == []
    cls = type("LateTask", (SparseRecoveryTask,), {"env_id": "l2s/LateTaskTest-v1"})
    registry.TASKS["late_task_test"] = registry.Entry("late_task_test", cls, SparseRecoveryConfig)
    try:
        assert register_envs() == ["l2s/LateTaskTest-v1"]
        assert register_envs() == []
    finally:
        del registry.TASKS["late_task_test"]
        gymnasium.registry.pop("l2s/LateTaskTest-v1", None)


def test_make_vec_uses_the_vector_entry_point(task, predictor) -> None:
    envs = gymnasium.make_vec(
        ENV_ID,
        num_envs=6,
        vectorization_mode="vector_entry_point",
        task=task,
        predictor=predictor,
        reward="log_oracle",
        autoreset_mode="same_step",
    )
    assert isinstance(envs.unwrapped, StopVectorEnv)
    assert envs.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.SAME_STEP
    obs, infos = envs.reset(seed=3)
    assert (
        obs.shape == (6, predictor.feature_shape[0] + 1)
        and obs.dtype == np.float32
        and envs.observation_space.contains(obs)
    )
    actions = np.array([1, 0, 1, 0, 0, 1])
    prev = obs
    obs, rew, term, trunc, infos = envs.step(actions)
    assert rew.shape == (6,) and term.dtype == bool and not trunc.any()
    assert list(term) == [True, False, True, False, False, True]
    assert list(infos["_final_obs"]) == list(term)
    for i in np.flatnonzero(term):
        np.testing.assert_array_equal(infos["final_obs"][i], prev[i])
        assert obs[i, -1] == 0  # the next episode's first observation
        assert infos["final_info"]["t"][i] == 1
    assert infos["final_obs"][1] is None
    # The vector env's rows are the single env's episodes, in order.
    single = gymnasium.make(ENV_ID, task=task, predictor=predictor, reward="log_oracle")
    single_rewards = run_single(single.unwrapped, 6, seed=3, policy=lambda o: 1)
    np.testing.assert_allclose(rew[[0, 2, 5]], [single_rewards[i][0] for i in (0, 2, 5)], rtol=1e-6)


def test_checkpoint_kwarg_rebuilds_task_and_predictor(tmp_path) -> None:
    from l2s_gym.build import make_predictor, make_task
    from l2s_gym.config import from_dict
    from l2s_gym.runs import save_checkpoint

    raw = {
        "experiment": "env_ckpt",
        "seed": 4,
        "beta": 0.05,
        "task": {"name": "sparse_recovery", "m": 20, "n": 40},
        "predictor": {"name": "lista", "num_layers": 3},
    }
    cfg = from_dict(raw)
    saved_task = make_task(cfg.task, cfg.seed, "cpu")
    model = make_predictor(cfg.predictor, saved_task)
    with torch.no_grad():
        model.theta.add_(0.01)
    path = tmp_path / "best.pt"
    save_checkpoint(path, {"kind": "predictor", "state_dict": model.state_dict(), "config": raw})
    env = gymnasium.make(ENV_ID, checkpoint=str(path), device="cpu").unwrapped
    assert env.beta == 0.05 and env.predictor.num_layers == 3
    torch.testing.assert_close(env.predictor.theta, model.theta)
    torch.testing.assert_close(env.task.A, saved_task.A)
    with pytest.raises(ValueError, match="either predictor= or checkpoint="):
        StopEnv(checkpoint=str(path), predictor=model)


# --- reproducibility, laziness, rewards -----------------------------------------------------


def test_reset_seed_gives_identical_episodes(task, predictor) -> None:
    env = StopEnv(task=task, predictor=predictor, beta=BETA)
    assert run_single(env, 4, seed=11) == run_single(env, 4, seed=11)
    assert run_single(env, 4, seed=11) != run_single(env, 4, seed=12)
    batched = BatchedStopEnv(predictor, task, 8, beta=BETA)
    gen = torch.Generator().manual_seed(0)
    actions = [(torch.rand(8, generator=gen) < 0.3).long() for _ in range(12)]
    runs = []
    for _ in range(2):
        obs = [batched.reset(seed=5)]
        obs += [batched.step(a)[0] for a in actions]
        runs.append(torch.stack(obs))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_layers_are_computed_only_when_the_agent_continues(task, predictor) -> None:
    env = BatchedStopEnv(predictor, task, 8, beta=BETA)
    env.reset(seed=0)
    for _ in range(10):
        env.step(torch.ones(8, dtype=torch.long))
    # One layer per finished episode, plus layer 1 of the 8 ongoing ones.
    assert env.episodes_done == 80
    assert env.layer_evals == 80 + 8
    single = StopEnv(task=task, predictor=predictor, beta=BETA)
    run_single(single, 5, seed=0, policy=lambda o: 1)
    assert single.layer_evals == 5 + 1
    single = StopEnv(task=task, predictor=predictor, beta=BETA)
    run_single(single, 2, seed=0, policy=lambda o: 0)
    assert single.layer_evals == 2 * T + 1


def test_always_continue_earns_the_terminal_reward_of_the_trace(task, predictor) -> None:
    env = StopEnv(task=task, predictor=predictor, beta=BETA)
    rewards = run_single(env, 4, seed=7, policy=lambda o: 0)
    trace = predictor.trace(stream(env.batched, 7, 4), task)
    for i, ep in enumerate(rewards):
        # T - 1 decisions (at layers 1..T-1); continuing into layer T ends the episode.
        assert len(ep) == T - 1 and ep[:-1] == [0.0] * (T - 2)
        assert ep[-1] == pytest.approx(float(-trace.losses[i, -1].detach() / BETA), rel=1e-5)


def test_reward_modes_against_the_trace(task, predictor) -> None:
    """Stopping at layer k: terminal, log-oracle and improvement returns, with a layer cost."""
    n, cost = 6, 0.03
    stop_at = torch.tensor([1, 2, 3, 4, 5, 5])  # 1-based stop layers, one per row
    returns, best = {}, torch.zeros(n, dtype=torch.long)
    for mode in ("terminal_loss", "log_oracle", "improvement"):
        env = BatchedStopEnv(predictor, task, n, beta=BETA, reward=mode, cost=cost)
        obs = env.reset(seed=2)
        total = torch.zeros(n)
        finished = torch.zeros(n, dtype=torch.bool)
        steps = arrivals = 0
        while not finished.all():
            _, t = split_obs(obs, env.feature_shape)
            obs, r, done, info = env.step((t + 1 >= stop_at).long())
            steps += 1
            arrivals += int((done & (info["t"] == T)).sum())
            ending = done & ~finished
            total += torch.where(finished, 0.0, r)
            assert torch.equal(info["t"][ending], stop_at[ending])
            best = torch.where(ending, info["best_layer"], best)
            finished |= done
        returns[mode] = total
        if mode == "log_oracle":
            # The full pass of every instance started is paid for: T layers each.
            assert env.layer_evals == T * (n + env.episodes_done)
            assert torch.equal(info["layers_computed"], torch.full((n,), T))
        else:
            # One layer per row per step, plus layer 1 at reset, plus layer 1 of the next
            # instance for each row that arrived at layer T: nothing beyond the stop.
            assert arrivals == 2
            assert env.layer_evals == n * (steps + 1) + arrivals
            assert (info["best_layer"] == -1).all()
        if mode == "log_oracle":
            oracle_best = best.clone()
    losses = predictor.trace(stream(env, 2, n), task).losses.detach()
    at_stop = losses.gather(1, (stop_at - 1).unsqueeze(1)).squeeze(1)
    # The price of the layers walked, in reward units: lambda * C_t / beta with C_t = t.
    walked = cost * stop_at.float() / BETA
    torch.testing.assert_close(returns["terminal_loss"], -at_stop / BETA - walked)
    # log_oracle: the return is exactly log q*_lambda(t), the oracle of l_t + lambda t.
    adjusted = losses + cost * torch.arange(1, T + 1).float()
    log_q = oracle_log_q(adjusted, BETA).gather(1, (stop_at - 1).unsqueeze(1)).squeeze(1)
    torch.testing.assert_close(returns["log_oracle"], log_q)
    torch.testing.assert_close(returns["improvement"], (losses[:, 0] - at_stop) / BETA - walked)
    assert torch.equal(oracle_best, adjusted.argmin(1) + 1)


def test_batched_rows_equal_single_env_episodes(task, predictor) -> None:
    for mode in ("terminal_loss", "improvement", "log_oracle"):
        single = StopEnv(task=task, predictor=predictor, beta=BETA, reward=mode, cost=0.02)
        expected = run_single(single, 5, seed=9)
        env = BatchedStopEnv(predictor, task, 5, beta=BETA, reward=mode, cost=0.02)
        obs = env.reset(seed=9)
        got: list[list[float]] = [[] for _ in range(5)]
        finished = torch.zeros(5, dtype=torch.bool)
        while not finished.all():
            actions = torch.tensor([rule(o) for o in obs.numpy()])
            obs, r, done, _ = env.step(actions)
            for i in range(5):
                if not finished[i]:
                    got[i].append(float(r[i]))
            finished |= done
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)


def test_same_step_autoreset_and_terminal_obs(task, predictor) -> None:
    env = BatchedStopEnv(predictor, task, 4, beta=BETA)
    obs = env.reset(seed=1)
    obs1, _, done, info = env.step(torch.tensor([1, 0, 1, 0]))
    assert done.tolist() == [True, False, True, False]
    torch.testing.assert_close(info["terminal_obs"][done], obs[done])
    torch.testing.assert_close(info["terminal_obs"][~done], obs1[~done])
    assert obs1[:, -1].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert info["t"].tolist() == [1, 2, 1, 2] and info["layers_computed"].tolist() == [1, 2, 1, 2]
    assert info["best_layer"].tolist() == [-1] * 4
    # The fresh rows hold the next instances of the stream (4 and 5).
    expected = predictor.trace(stream(env, 1, 6), task).features[[4, 5], 0]
    torch.testing.assert_close(split_obs(obs1, env.feature_shape)[0][done], expected)
    # Continuing into layer T ends the episode in that step: no decision at layer T.
    for _ in range(T - 3):
        obs1, _, done, info = env.step(torch.tensor([0, 0, 0, 0]))
    assert not done.any() and obs1[1, -1] == T - 2
    evals = env.layer_evals
    obs2, _, done, info = env.step(torch.tensor([0, 0, 0, 0]))
    assert done.tolist() == [False, True, False, True] and info["t"].tolist()[1::2] == [T, T]
    assert env.layer_evals == evals + 4 + 2  # rows 1 and 3 computed layer T and a layer 1
    # Their terminal observation is layer T of the instance that ended (t = T - 1) and
    # their new one is layer 1 of the next instances of the stream (6 and 7).
    trace = predictor.trace(stream(env, 1, 8), task)
    torch.testing.assert_close(info["terminal_obs"][1::2, -1], torch.full((2,), T - 1.0))
    terminal_features = split_obs(info["terminal_obs"], env.feature_shape)[0]
    torch.testing.assert_close(terminal_features[1::2], trace.features[[1, 3], T - 1])
    torch.testing.assert_close(info["loss"][1::2], trace.losses[[1, 3], T - 1].detach())
    torch.testing.assert_close(
        split_obs(obs2, env.feature_shape)[0][1::2], trace.features[[6, 7], 0]
    )
    assert obs2[1::2, -1].tolist() == [0.0, 0.0] and obs2[0::2, -1].tolist() == [T - 2.0] * 2
    # The fresh rows go on like any other: one more step continues them all.
    obs3, _, done, _ = env.step(torch.tensor([0, 0, 0, 0]))
    assert done.tolist() == [True, False, True, False] and obs3[1::2, -1].tolist() == [1.0, 1.0]


def test_one_layer_leaves_no_decision_and_is_refused(task) -> None:
    one = LISTA(ListaConfig(num_layers=1), task)
    with pytest.raises(ValueError, match="num_layers is 1.*num_layers >= 2"):
        BatchedStopEnv(one, task, 2, beta=BETA)
    with pytest.raises(ValueError, match="num_layers is 1"):
        StopEnv(task=task, predictor=one)


def test_two_layers_every_episode_is_one_decision(task) -> None:
    two = LISTA(ListaConfig(num_layers=2), task)
    env = StopEnv(task=task, predictor=two, beta=BETA)
    trace = two.trace(stream(env.batched, 0, 2), task)
    for i, action in enumerate((1, 0)):  # stop after layer 1; continue into layer 2
        obs, _ = env.reset(seed=0) if i == 0 else env.reset()
        assert obs[-1] == 0
        obs, reward, terminated, _, info = env.step(action)
        end = 1 - action  # 0-based layer where the episode ended
        assert terminated and info["t"] == end + 1 and obs[-1] == end
        expected = -float(trace.losses[i, end].detach()) / BETA
        assert reward == pytest.approx(expected, rel=1e-5)


def test_obs_round_trip_feeds_a_stop_policy(predictor) -> None:
    features, t = torch.randn(7, 4), torch.arange(7)
    obs = make_obs(features, t)
    assert obs.shape == (7, 5) and obs.dtype == torch.float32
    f2, t2 = split_obs(obs, (4,))
    assert torch.equal(f2, features) and torch.equal(t2, t)
    policy = StopPolicy((4,), T)
    assert policy(*split_obs(obs, (4,))).shape == (7,)


# --- actions and rendering ------------------------------------------------------------------


@pytest.mark.parametrize("stop", [1, True, np.int64(1), np.bool_(True), np.array([1]), np.array(1)])
def test_single_env_takes_ints_bools_and_one_element_arrays(task, predictor, stop) -> None:
    env = StopEnv(task=task, predictor=predictor, beta=BETA)
    env.reset(seed=0)
    _, _, terminated, _, info = env.step(stop)
    assert terminated and info["t"] == 1
    env.reset()
    _, _, terminated, _, info = env.step(np.array([False]))
    assert not terminated and info["t"] == 2
    vec = StopVectorEnv(2, task=task, predictor=predictor, beta=BETA)
    vec.reset(seed=0)
    assert vec.step(np.array([True, False]))[2].tolist() == [True, False]


def test_ansi_render_is_one_label_free_line_with_the_policy_stop_probability(
    task, predictor
) -> None:
    policy = StopPolicy(predictor.feature_shape, T)
    with torch.no_grad():
        policy.head.weight.normal_()
    env = gymnasium.make(ENV_ID, task=task, predictor=predictor, render_mode="ansi", policy=policy)
    obs, _ = env.reset(seed=0)
    line = env.render()
    features, t = split_obs(torch.as_tensor(obs[None]), predictor.feature_shape)
    with torch.no_grad():
        p = float(torch.sigmoid(policy(features, t))[0])
    assert line.startswith(f"layer 1/{T}  stop p={p:.3f}  features [")
    assert "\n" not in line and "loss" not in line
    assert f"{obs[0]:.4g}" in line
    done = False
    while not done:
        obs, _, done, _, _ = env.step(0)
    # The observation that ends the episode at layer T: it always stops there.
    last = env.render()
    assert last.startswith(f"layer {T}/{T}  stop p=1.000") and last.endswith("(episode over)")
    env.unwrapped.policy = None
    env.reset()
    assert env.render().startswith(f"layer 1/{T}  features [")


def test_rgb_array_render_draws_the_current_estimate(task, predictor) -> None:
    from l2s_gym.tasks.sparse_recovery import stem_image

    env = gymnasium.make(ENV_ID, task=task, predictor=predictor, render_mode="rgb_array")
    assert env.unwrapped.metadata["render_modes"] == ["ansi", "rgb_array"]
    env.reset(seed=4)
    trace = predictor.trace(stream(env.unwrapped.batched, 4, 1), task, keep_predictions=True)
    for layer in range(T - 1):
        frame = env.render()
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        np.testing.assert_array_equal(frame, stem_image(trace.predictions[layer][0].numpy()))
        _, _, done, _, _ = env.step(0)
    assert done  # the last frame is the estimate at layer T, where the episode ended
    np.testing.assert_array_equal(env.render(), stem_image(trace.predictions[T - 1][0].numpy()))
    frames = StopVectorEnv(3, task=task, predictor=predictor, render_mode="rgb_array")
    frames.reset(seed=4)
    assert [f.shape for f in frames.render()] == [frame.shape] * 3


def test_render_without_a_mode_warns_and_returns_none(task, predictor) -> None:
    env = gymnasium.make(ENV_ID, task=task, predictor=predictor)
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="without specifying any render mode"):
        assert env.unwrapped.render() is None
    vec = StopVectorEnv(2, task=task, predictor=predictor)
    vec.reset(seed=0)
    with pytest.warns(UserWarning, match="render mode"):
        assert vec.render() is None
    ansi = StopVectorEnv(2, task=task, predictor=predictor, render_mode="ansi")
    ansi.reset(seed=0)
    lines = ansi.render()
    assert len(lines) == 2 and all(line.startswith(f"layer 1/{T}  features") for line in lines)


def test_a_task_that_cannot_draw_offers_text_only() -> None:
    from l2s_gym.testing import ToyTask

    assert not ToyTask.can_render()
    env = StopEnv(task="toy", device="cpu", render_mode="ansi")
    assert env.metadata["render_modes"] == ["ansi"]
    env.reset(seed=0)
    assert env.render().startswith("layer 1/6  features [")
    with pytest.raises(ValueError, match="rgb_array.*task 'toy' does not"):
        StopEnv(task="toy", device="cpu", render_mode="rgb_array")
    with pytest.raises(ValueError, match="render_mode must be None or one of ansi; got 'human'"):
        StopEnv(task="toy", device="cpu", render_mode="human")


# --- bad input ---------------------------------------------------------------------------


def test_bad_actions_are_refused(task, predictor) -> None:
    env = BatchedStopEnv(predictor, task, 3, beta=BETA)
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(torch.zeros(3, dtype=torch.long))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"0 \(continue\) or 1 \(stop\); got \[2\]"):
        env.step(torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match=r"shape \(3,\).*got \(2,\)"):
        env.step(torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integers"):
        env.step(torch.tensor([0.0, 1.0, 0.5]))
    single = StopEnv(task=task, predictor=predictor)
    single.reset(seed=0)
    for bad in (2, -1, 0.5, np.array([0, 1]), np.array([2]), "1", None):
        with pytest.raises(ValueError, match="action must be 0"):
            single.step(bad)
    vec = StopVectorEnv(3, task=task, predictor=predictor)
    vec.reset(seed=0)
    with pytest.raises(ValueError, match="got \\[3\\]"):
        vec.step(np.array([0, 3, 1]))


def test_step_after_the_episode_ended_needs_a_reset(task, predictor) -> None:
    env = StopEnv(task=task, predictor=predictor)
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(0)
    env.reset(seed=0)
    env.step(1)
    with pytest.raises(RuntimeError, match="episode ended"):
        env.step(0)
    env.reset()
    env.step(0)


def test_unknown_reward_mode_and_bad_parameters(task, predictor) -> None:
    with pytest.raises(ValueError, match="reward must be one of .*got 'loss'"):
        BatchedStopEnv(predictor, task, 2, beta=BETA, reward="loss")
    with pytest.raises(ValueError, match="reward must be one of"):
        gymnasium.make(ENV_ID, task=task, predictor=predictor, reward="nope")
    with pytest.raises(ValueError, match="beta must be > 0"):
        BatchedStopEnv(predictor, task, 2, beta=0.0)
    with pytest.raises(ValueError, match="num_envs"):
        BatchedStopEnv(predictor, task, 0, beta=BETA)
    with pytest.raises(ValueError, match="cost must be a finite number >= 0"):
        BatchedStopEnv(predictor, task, 2, beta=BETA, cost=-1.0)
    with pytest.raises(l2s_gym.config.ConfigError, match="task_config.mm: unknown key"):
        StopEnv(task_config={"mm": 3})


class _WrongFeatures(LISTA):
    feature_shape = (LISTA.feature_shape[0] + 1,)


def test_predictor_breaking_the_protocol_is_named(task) -> None:
    broken = _WrongFeatures(ListaConfig(num_layers=3), task)
    env = BatchedStopEnv(broken, task, 2, beta=BETA)
    f = LISTA.feature_shape[0]
    with pytest.raises(ValueError, match=rf"shape \({f},\).*feature_shape declares \({f + 1},\)"):
        env.reset()
    with pytest.raises(ValueError, match=rf"shape \({f},\).*declares \({f + 1},\)"):
        BatchedStopEnv(broken, task, 2, beta=BETA, reward="log_oracle").reset()
    no_layers = LISTA(ListaConfig(num_layers=3), task)
    no_layers.num_layers = 0
    with pytest.raises(ValueError, match="num_layers must be an int >= 1, got 0"):
        StopEnv(task=task, predictor=no_layers)
