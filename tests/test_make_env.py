"""``l2s_gym.make_env``: one way to make the stop environment from a config, a run folder or
a checkpoint, for Gymnasium, SB3, TorchRL or torch; rewards and prices in units of the
oracle's gain per layer, which rescale the native rewards and leave the optimum alone."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from conftest import TOY_CONFIG, TOY_FRONTIER, write_config

from l2s_gym import make_env
from l2s_gym.cli import main
from l2s_gym.envs import BatchedStopEnv, StopEnv, StopVectorEnv
from l2s_gym.envs.make import calibrate
from l2s_gym.stopping import gain_per_layer


def rollout(env: BatchedStopEnv, steps: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards and done flags under a fixed policy: stop when the layer index is 2."""
    obs = env.reset(seed=3)
    rewards, dones = [], []
    for _ in range(steps):
        obs, r, d, _ = env.step(obs[:, -1] == 2)
        rewards.append(r)
        dones.append(d)
    return torch.stack(rewards), torch.stack(dones)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, TOY_CONFIG, "toy.yaml")


def test_every_api_from_a_config(config: Path) -> None:
    single = make_env(config, cost=0.1, verbose=False)
    assert isinstance(single, StopEnv)
    obs, _ = single.reset(seed=0)
    assert single.observation_space.contains(obs)
    vec = make_env(config, num_envs=4, verbose=False)
    assert isinstance(vec, StopVectorEnv) and vec.num_envs == 4
    assert vec.metadata["autoreset_mode"] == gymnasium.vector.AutoresetMode.NEXT_STEP
    batched = make_env(config, num_envs=8, api="batched", verbose=False)
    assert isinstance(batched, BatchedStopEnv) and batched.num_envs == 8
    sb3 = make_env(config, num_envs=8, api="sb3", verbose=False)
    assert sb3.num_envs == 8 and sb3.reset().shape == (8, batched.obs_dim)
    for env in (single, vec, batched, sb3):
        assert env.calibration.num_layers == 6


def test_auto_units_rescale_the_native_rewards_and_keep_the_optimum(config: Path) -> None:
    native = make_env(config, api="batched", num_envs=16, reward_scale=1.0, cost_unit="loss",
                      cost=0.02, verbose=False)  # fmt: skip
    cal = calibrate(native.predictor, native.task, beta=native.beta, cost=0.0, cost_unit="gain",
                    reward_scale="auto")  # fmt: skip
    price = 0.02 / cal.gain_per_layer  # the same lambda, in units of the gain per layer
    auto = make_env(config, api="batched", num_envs=16, cost=price, verbose=False)
    assert auto.cost == pytest.approx(0.02)
    assert auto.reward_scale == pytest.approx(native.beta / cal.gain_per_layer)
    r_native, d_native = rollout(native)
    r_auto, d_auto = rollout(auto)
    assert torch.equal(d_native, d_auto)
    torch.testing.assert_close(r_auto, r_native * auto.reward_scale)


def test_calibration_reports_the_gain_and_the_oracles_stop(config: Path) -> None:
    env = make_env(config, api="batched", num_envs=2, verbose=False)
    cal = env.calibration
    batch = env.task.train_batch(cal.instances, env.task.generator(7919))
    trace = env.predictor.trace_eval(batch, env.task)
    assert cal.gain_per_layer == pytest.approx(gain_per_layer(trace))
    best = trace.losses.argmin(dim=1).double().mean() + 1
    assert cal.oracle_layers == pytest.approx(float(best))
    assert "gain per layer" in cal.line() and "of 6 layers" in cal.line()


def test_a_checkpoint_and_a_run_folder(tmp_path: Path) -> None:
    config = write_config(tmp_path, TOY_FRONTIER, "toy.yaml")
    runs = tmp_path / "runs"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        assert main(["compare", str(config), "--runs", str(runs), "--no-progress"]) == 0
    run = (runs / "toy_frontier" / "latest").resolve()
    best = run / "seed-0" / "stage1" / "predictor-oracle" / "best.pt"
    from_run = make_env(run, api="batched", num_envs=4, verbose=False)
    from_pt = make_env(best, api="batched", num_envs=4, verbose=False)
    for a, b in zip(from_run.predictor.state_dict().values(), from_pt.predictor.state_dict().values(), strict=True):  # fmt: skip
        assert torch.equal(a, b)
    assert from_run.calibration == from_pt.calibration
    with pytest.raises(ValueError, match="no trained predictor for seed 5"):
        make_env(run, seed=5, verbose=False)


def test_bad_arguments_are_one_line_errors(config: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="api must be one of gymnasium, sb3, torchrl, batched"):
        make_env(config, api="rllib", verbose=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_env(tmp_path / "nope.yaml", verbose=False)
    with pytest.raises(ValueError, match="cost_unit must be 'gain' or 'loss'"):
        make_env(config, cost_unit="dB", verbose=False)
    with pytest.raises(TypeError, match="apply only to api='gymnasium'"):
        make_env(config, api="batched", render_mode="ansi", verbose=False)


def test_sb3_dqn_with_library_defaults_runs_on_it(config: Path) -> None:
    dqn = pytest.importorskip("stable_baselines3").DQN
    env = make_env(config, num_envs=1, api="sb3", verbose=False)
    model = dqn("MlpPolicy", env, seed=0, device="cpu", learning_starts=10)
    model.learn(total_timesteps=64)
    actions, _ = model.predict(env.reset(), deterministic=True)
    assert actions.shape == (1,) and set(np.unique(actions)) <= {0, 1}


def test_torchrl_api(config: Path) -> None:
    pytest.importorskip("torchrl", reason="the [torchrl] extra is not installed")
    from torchrl.envs.utils import check_env_specs

    env = make_env(config, num_envs=4, api="torchrl", verbose=False)
    check_env_specs(env)
    assert tuple(env.batch_size) == (4,) and env.calibration.num_layers == 6
