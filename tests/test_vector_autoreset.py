"""StopVectorEnv's two autoreset modes: NEXT_STEP (default, Gymnasium's) and SAME_STEP."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import vector as wrappers

import l2s_gym.testing  # noqa: F401  (registers the toy task)
from l2s_gym.envs import StopVectorEnv

N = 5
T = 6  # the toy task's default number of layers
TOY = {"task": "toy", "device": "cpu", "task_config": {"feature_noise": 0.1}}

Episode = tuple[list[np.ndarray], list[float], int]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def policy(obs: np.ndarray) -> np.ndarray:
    """Stop (1) or continue (0), a pseudo-random function of each observation row only."""
    x = obs.astype(np.float64) @ np.array([12.9898, 78.233, 37.719])
    u = np.modf(np.abs(np.sin(x)) * 43758.5453)[0]
    return (u < 0.35).astype(np.int64)


def toy_env(mode: AutoresetMode | str, **kwargs) -> StopVectorEnv:  # noqa: ANN003
    return StopVectorEnv(N, **TOY, autoreset_mode=mode, **kwargs)


def same_step_episodes(env: StopVectorEnv, steps: int, seed: int) -> dict[int, Episode]:
    """The completed episodes (observations, rewards, final t) by their instance's place in
    the instance stream: rows take the stream's instances in row order as episodes start."""
    obs, _ = env.reset(seed=seed)
    current = [([obs[i]], []) for i in range(N)]
    place, drawn = list(range(N)), N
    done_eps: dict[int, Episode] = {}
    for _ in range(steps):
        obs, rew, term, trunc, infos = env.step(policy(obs))
        assert not trunc.any()
        for i in range(N):
            seen, rewards = current[i]
            rewards.append(float(rew[i]))
            if term[i]:
                seen.append(infos["final_obs"][i])
                done_eps[place[i]] = (seen, rewards, int(infos["t"][i]))
                current[i] = ([obs[i]], [])
                place[i], drawn = drawn, drawn + 1
            else:
                seen.append(obs[i])
    return done_eps


def next_step_episodes(env: StopVectorEnv, steps: int, seed: int) -> dict[int, Episode]:
    """As ``same_step_episodes``, checking NEXT_STEP's reset steps on the way."""
    obs, _ = env.reset(seed=seed)
    current = [([obs[i]], []) for i in range(N)]
    place, drawn = list(range(N)), N
    done_eps: dict[int, Episode] = {}
    pending = np.zeros(N, dtype=bool)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        # The actions of the rows being reset are ignored: give them random ones.
        actions = np.where(pending, rng.integers(0, 2, N), policy(obs))
        obs, rew, term, trunc, infos = env.step(actions)
        assert not trunc.any() and "final_obs" not in infos
        for i in range(N):
            if pending[i]:  # the reset step: a fresh instance's first observation
                assert rew[i] == 0.0 and not term[i] and obs[i, -1] == 0 and infos["t"][i] == 1
                current[i] = ([obs[i]], [])
                place[i], drawn = drawn, drawn + 1
                continue
            seen, rewards = current[i]
            seen.append(obs[i])
            rewards.append(float(rew[i]))
            if term[i]:
                done_eps[place[i]] = (seen, rewards, int(infos["t"][i]))
        pending = term | trunc
    return done_eps


def assert_same_episodes(got: dict[int, Episode], want: dict[int, Episode]) -> list[int]:
    """The episodes both finished are equal; returns their places in the stream."""
    common = sorted(got.keys() & want.keys())
    assert len(common) >= 0.8 * len(got) and len(common) >= 30
    for k in common:
        (obs_g, rew_g, t_g), (obs_w, rew_w, t_w) = got[k], want[k]
        assert t_g == t_w == len(rew_g) + bool(obs_g[-1][-1] == T - 1)
        np.testing.assert_array_equal(np.stack(obs_g), np.stack(obs_w))
        np.testing.assert_allclose(rew_g, rew_w, rtol=1e-6, atol=1e-7)
    return common


@pytest.mark.parametrize(
    ("reward", "cost"),
    [("terminal_loss", 0.0), ("terminal_loss", 0.3), ("log_oracle", 0.3), ("improvement", 0.3)],
)
def test_next_step_gives_the_same_step_episodes(reward: str, cost: float) -> None:
    same = same_step_episodes(toy_env("same_step", reward=reward, cost=cost), 120, seed=7)
    nxt = next_step_episodes(toy_env("next_step", reward=reward, cost=cost), 120, seed=7)
    # NEXT_STEP spends a step per reset, so it finishes fewer episodes in 120 steps.
    assert len(nxt) < len(same)
    assert_same_episodes(nxt, same)


def test_reset_rows_compute_nothing_and_pay_layer_one_on_their_first_decision() -> None:
    env = toy_env(AutoresetMode.NEXT_STEP, cost=0.5)
    env.reset(seed=0)
    evals = env.layer_evals
    stop = np.ones(N, dtype=np.int64)
    obs, rew, term, _, infos = env.step(stop)  # every row stops at layer 1
    assert term.all() and (obs[:, -1] == 0).all() and (infos["t"] == 1).all()
    assert env.layer_evals == evals + N  # the fresh instances' layer 1
    fresh, rew0, term0, _, _ = env.step(stop)  # the reset step: actions ignored
    assert env.layer_evals == evals + N and not term0.any() and (rew0 == 0).all()
    assert (fresh[:, -1] == 0).all() and not np.array_equal(fresh, obs)
    _, rew1, term1, _, _ = env.step(stop)
    # Same-step mode: the same first decision of the second episodes, same reward.
    same = toy_env(AutoresetMode.SAME_STEP, cost=0.5)
    same.reset(seed=0)
    same_fresh, same_rew, *_ = same.step(stop)
    np.testing.assert_array_equal(same_fresh, fresh)
    np.testing.assert_allclose(same_rew, rew, rtol=1e-6)
    np.testing.assert_allclose(same.step(stop)[1], rew1, rtol=1e-6)
    assert term1.all()


def test_gymnasium_vector_wrappers_accept_next_step() -> None:
    steps = 300
    same = same_step_episodes(toy_env("same_step"), steps, seed=3)
    env = toy_env("next_step")
    raw: list[np.ndarray] = []

    def keep(obs: np.ndarray) -> np.ndarray:
        raw.append(obs)
        return obs * 2.0

    stack = wrappers.TransformObservation(env, keep)
    stack = wrappers.RecordEpisodeStatistics(stack)
    record = stack
    stack = wrappers.NormalizeObservation(stack)
    stack = wrappers.NormalizeReward(stack)
    stack = wrappers.ClipReward(stack, -1.0, 1.0)
    returns: dict[int, tuple[float, int]] = {}  # by place in the instance stream
    place, drawn = list(range(N)), N
    pending = np.zeros(N, dtype=bool)
    obs, _ = stack.reset(seed=3)
    for _ in range(steps):
        obs, rew, term, trunc, infos = stack.step(policy(raw[-1]))
        assert np.isfinite(obs).all() and (np.abs(rew) <= 1.0).all()
        for i in np.flatnonzero(pending):
            place[i], drawn = drawn, drawn + 1
        if "episode" in infos:
            assert (infos["_episode"] == term).all()
            for i in np.flatnonzero(infos["_episode"]):
                returns[place[i]] = (infos["episode"]["r"][i], infos["episode"]["l"][i])
        pending = term | trunc
    assert record.episode_count == len(returns) >= 100
    common = sorted(returns.keys() & same.keys())
    assert len(common) >= 0.8 * len(returns)
    np.testing.assert_allclose(
        [returns[k][0] for k in common], [sum(same[k][1]) for k in common], rtol=1e-5
    )
    assert [returns[k][1] for k in common] == [len(same[k][1]) for k in common]


def test_make_vec_passes_the_mode_and_defaults_to_next_step() -> None:
    kwargs = {"num_envs": 3, "vectorization_mode": "vector_entry_point"}
    kwargs.update(TOY)
    default = gymnasium.make_vec("l2s/SparseRecovery-v1", **kwargs)
    assert isinstance(default.unwrapped, StopVectorEnv)
    assert default.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    for mode in (AutoresetMode.SAME_STEP, "same_step", "SameStep"):
        envs = gymnasium.make_vec("l2s/SparseRecovery-v1", autoreset_mode=mode, **kwargs)
        assert envs.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert toy_env("NextStep").metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    # The class default stays the class's, an instance's mode is its own.
    assert StopVectorEnv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP


@pytest.mark.parametrize("bad", [AutoresetMode.DISABLED, "disabled", "next", 1, None])
def test_a_bad_mode_is_a_one_line_error_naming_the_allowed_ones(bad: object) -> None:
    with pytest.raises(ValueError, match="autoreset_mode must be one of") as caught:
        toy_env(bad)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message and "'next_step'" in message and "'same_step'" in message


def test_ansi_render_shows_the_last_observation_of_an_ended_row() -> None:
    env = toy_env("next_step", render_mode="ansi")
    env.reset(seed=0)
    env.step(np.array([1, 0, 0, 0, 0]))
    lines = env.render()
    assert lines[0].startswith(f"layer 1/{T}") and lines[0].endswith("(episode over)")
    assert lines[1].startswith(f"layer 2/{T}") and not lines[1].endswith("(episode over)")
    env.step(np.zeros(N, dtype=np.int64))
    lines = env.render()
    assert lines[0].startswith(f"layer 1/{T}") and not lines[0].endswith("(episode over)")


def test_same_step_is_what_gymnasiums_observation_wrappers_refuse() -> None:
    with pytest.raises(ValueError, match="NEXT_STEP"):
        wrappers.NormalizeObservation(toy_env("same_step"))
    wrappers.NormalizeObservation(toy_env("next_step"))


def test_rgb_array_render_shows_the_ended_instance_then_the_fresh_one() -> None:
    from l2s_gym.predictors.lista import LISTA, ListaConfig
    from l2s_gym.tasks.sparse_recovery import SparseRecoveryConfig, SparseRecoveryTask

    task = SparseRecoveryTask(SparseRecoveryConfig(m=20, n=40, val_size=8), seed=0)
    predictor = LISTA(ListaConfig(num_layers=4), task)
    kwargs = {"task": task, "predictor": predictor, "render_mode": "rgb_array"}
    nxt = StopVectorEnv(2, autoreset_mode="next_step", **kwargs)
    same = StopVectorEnv(2, autoreset_mode="same_step", **kwargs)
    nxt.reset(seed=4)
    same.reset(seed=4)
    first = nxt.render()
    nxt.step(np.array([1, 0]))  # row 0 ends at layer 1: its picture does not change
    np.testing.assert_array_equal(nxt.render()[0], first[0])
    nxt.step(np.array([0, 0]))  # row 0's reset step: the fresh instance's layer 1
    same.step(np.array([1, 0]))  # same step: row 0 already shows the fresh instance
    np.testing.assert_array_equal(nxt.render()[0], same.render()[0])
    assert not np.array_equal(nxt.render()[0], first[0])
