"""``make_env``: one public way to make the stop environment, for any RL library.

    from l2s_gym import make_env
    env = make_env("configs/sparse_recovery_small.yaml", cost=0.3)             # gymnasium.Env
    envs = make_env("runs/sparse_recovery_small/latest", num_envs=64, api="sb3")  # SB3 VecEnv

What it takes (``source``):

- a config (a YAML path or an ``ExperimentConfig``): the task and the predictor it names,
  the predictor as built (untrained, unless it has no parameters to train);
- a run folder written by ``l2s compare`` / ``l2s frontier`` (or its ``config.yaml``'s
  folder): the config, and seed ``seed``'s oracle-trained stage-1 predictor;
- a predictor checkpoint (``.../stage1/predictor-oracle/best.pt``).

Rewards and prices default to units an off-the-shelf agent learns from, measured on a
calibration batch of ``calibration_size`` training instances (label-using, as the rewards
themselves; no validation or test data):

- ``cost_unit="gain"``: ``cost`` is the price of a layer in units of the oracle's average
  gain per layer (``l2s_gym.stopping.gain_per_layer``), as ``frontier.costs`` are;
  ``"loss"``: in units of the task's loss, as ``BatchedStopEnv``'s ``cost``.
- ``reward_scale="auto"``: rewards in the same unit (a reward of 1 is one average layer's
  gain), that is ``reward_scale = beta / gain``; a number multiplies the env's native
  rewards (1: units of ``beta``, what the project's own learners use).

Neither changes the optimum: both are one positive factor on every reward of every
episode. ``env.calibration`` (also ``envs.calibration`` on every API) holds the figures.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from l2s_gym.build import make_predictor, make_task, resolve_device
from l2s_gym.config import ExperimentConfig, load_config
from l2s_gym.envs.batched import BatchedStopEnv, check_prices
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.stopping import cost_adjusted_losses, cumulative_costs, gain_per_layer
from l2s_gym.task import Task

APIS = ("gymnasium", "sb3", "torchrl", "batched")
CALIBRATION_OFFSET = 7919
"""The calibration batch's stream offset (``Task.generator``): apart from training's."""


@dataclass(frozen=True)
class Calibration:
    """What ``make_env`` measured on its calibration batch, and the units it chose."""

    instances: int
    gain_per_layer: float
    """The oracle's average gain per layer, in units of the loss (at price 0)."""
    cost: float
    """``lambda``, the price of a layer in units of the loss (what the env charges)."""
    reward_scale: float
    """The factor on the env's native rewards (those in units of ``beta``)."""
    oracle_layers: float
    """The oracle's average stop layer at this price, ``argmin_t l_t + lambda C_t``."""
    num_layers: int

    def line(self) -> str:
        return (
            f"make_env: calibrated on {self.instances} training instances: gain per layer "
            f"{self.gain_per_layer:.4g} (loss units); price lambda = {self.cost:.4g}; reward "
            f"scale {self.reward_scale:.4g}; the oracle stops at {self.oracle_layers:.2f} of "
            f"{self.num_layers} layers on average"
        )


def _load(
    source: str | Path | ExperimentConfig, seed: int, device: str
) -> tuple[ExperimentConfig, Task, LayeredPredictor]:
    """The config, the task and the predictor ``source`` names (see the module docstring)."""
    from l2s_gym.trials import load_stop_model

    if isinstance(source, ExperimentConfig):
        cfg, run_dir, checkpoint = source, None, None
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"make_env: {path} does not exist")
        if path.is_dir():
            if not (path / "config.yaml").is_file():
                raise ValueError(
                    f"make_env: {path} is a folder without config.yaml; pass a run folder "
                    "written by l2s compare / l2s frontier, a config file or a best.pt"
                )
            cfg, run_dir, checkpoint = load_config(path / "config.yaml"), path, None
        elif path.suffix == ".pt":
            cfg, run_dir, checkpoint = None, None, path
        elif path.suffix in (".yaml", ".yml"):
            cfg, run_dir, checkpoint = load_config(path), None, None
        else:
            raise ValueError(
                f"make_env: {path} is neither a config (.yaml), a checkpoint (.pt) nor a run folder"
            )
    dev = resolve_device(device if device != "config" else (cfg.device if cfg else "auto"))
    if checkpoint is not None:
        from l2s_gym.build import build_components
        from l2s_gym.config import from_dict
        from l2s_gym.runs import load_checkpoint

        snapshot = load_checkpoint(checkpoint, "predictor").get("config")
        if not snapshot:
            raise ValueError(f"make_env: {checkpoint} holds no config snapshot (not from l2s)")
        cfg = from_dict(snapshot)
        task, predictor, _ = build_components(cfg.task.name, checkpoint=checkpoint, device=str(dev))
        return cfg, task, predictor
    assert cfg is not None
    if run_dir is not None:
        if not (run_dir / f"seed-{seed}").is_dir():
            raise ValueError(f"make_env: {run_dir} has no trained predictor for seed {seed}")
        task, predictor = load_stop_model(run_dir, cfg, seed, dev)
        return cfg, task, predictor
    task = make_task(cfg.task, seed, dev)
    return cfg, task, make_predictor(cfg.predictor, task, seed=seed).requires_grad_(False)


def calibrate(
    predictor: LayeredPredictor,
    task: Task,
    *,
    beta: float,
    cost: float,
    cost_unit: str,
    reward_scale: float | str,
    instances: int = 1024,
) -> Calibration:
    """Measure the gain per layer on a batch of training instances and resolve ``cost`` and
    ``reward_scale`` to the env's native units (see the module docstring)."""
    if cost_unit not in ("gain", "loss"):
        raise ValueError(f"cost_unit must be 'gain' or 'loss', got {cost_unit!r}")
    if isinstance(reward_scale, str) and reward_scale != "auto":
        raise ValueError(f"reward_scale must be 'auto' or a number > 0, got {reward_scale!r}")
    batch = task.train_batch(instances, task.generator(CALIBRATION_OFFSET))
    with torch.no_grad():
        trace = predictor.trace_eval(batch, task)
    gain = gain_per_layer(trace)
    lam = float(cost) * (gain if cost_unit == "gain" else 1.0)
    cum = cumulative_costs(trace.num_layers, predictor.layer_costs(), device=trace.losses.device)
    best = cost_adjusted_losses(trace.losses, lam, cum).argmin(dim=1)
    scale = beta / gain if reward_scale == "auto" else float(reward_scale)
    return Calibration(
        instances, gain, lam, scale, float(best.double().mean()) + 1, trace.num_layers
    )


def make_env(
    source: str | Path | ExperimentConfig,
    *,
    cost: float = 0.0,
    prices: Sequence[float] | None = None,
    num_envs: int | None = None,
    api: str = "gymnasium",
    device: str = "config",
    seed: int = 0,
    env_seed: int | None = None,
    reward: str = "improvement",
    reward_scale: float | str = "auto",
    cost_unit: str = "gain",
    beta: float | None = None,
    calibration_size: int = 1024,
    verbose: bool = True,
    **kwargs: Any,
) -> Any:
    """The stop environment over the predictor ``source`` names, for ``api``:

    - ``"gymnasium"``: a ``gymnasium.Env`` (``StopEnv``) when ``num_envs`` is ``None``, else a
      ``gymnasium.vector.VectorEnv`` (``StopVectorEnv``, Gymnasium's NEXT_STEP autoreset
      unless ``autoreset_mode=`` says otherwise);
    - ``"sb3"``: a Stable-Baselines3 ``VecEnv`` (``StopVecEnv``; ``num_envs`` default 64);
    - ``"torchrl"``: a TorchRL ``EnvBase`` with batch size ``[num_envs]`` (extra ``[torchrl]``);
    - ``"batched"``: the ``BatchedStopEnv`` itself (torch in and out, on the device).

    ``reward``: a ``BatchedStopEnv`` reward mode; the default ``improvement`` (dense: each
    layer's gain, minus its price) suits agents that discount. ``seed`` picks the run's
    seed (its stage-1 predictor) and seeds the instance stream. ``device="config"``: the
    config's device (``auto`` picks CUDA when present). Other ``kwargs`` go to the
    Gymnasium env class (``render_mode``, ``policy``, ``autoreset_mode``).
    ``verbose``: print the calibration line to stderr. ``prices``: instead of ``cost``, a
    grid of prices in the same unit (``cost_unit``); each episode draws its own from it and
    the observation shows it in loss units (``BatchedStopEnv``'s ``prices``).
    """
    if api not in APIS:
        raise ValueError(f"make_env: api must be one of {', '.join(APIS)}; got {api!r}")
    if num_envs is not None and (not isinstance(num_envs, int) or num_envs < 1):
        raise ValueError(f"make_env: num_envs must be an int >= 1, got {num_envs!r}")
    cfg, task, predictor = _load(source, seed, device)
    beta_value = float(cfg.beta if beta is None else beta)
    cal = calibrate(predictor, task, beta=beta_value, cost=cost, cost_unit=cost_unit,
                    reward_scale=reward_scale, instances=calibration_size)  # fmt: skip
    if verbose:
        print(cal.line(), file=sys.stderr)
    stream = seed if env_seed is None else int(env_seed)
    common: dict[str, Any] = {"beta": beta_value, "reward": reward, "cost": cal.cost, "seed": stream}  # fmt: skip
    if prices is not None:
        unit = cal.gain_per_layer if cost_unit == "gain" else 1.0
        common["prices"] = [p * unit for p in check_prices(prices, cost)]
    if api == "gymnasium":
        from l2s_gym.envs.stop_env import StopEnv, StopVectorEnv

        if num_envs is None:
            env = StopEnv(task, predictor, reward_scale=cal.reward_scale, **common, **kwargs)
        else:
            env = StopVectorEnv(num_envs, task, predictor, reward_scale=cal.reward_scale, **common, **kwargs)  # fmt: skip
        env.calibration = cal
        return env
    if kwargs:
        raise TypeError(f"make_env: {', '.join(kwargs)} apply only to api='gymnasium'")
    batched = BatchedStopEnv(predictor, task, num_envs or 64, reward_scale=cal.reward_scale, **common)  # fmt: skip
    batched.calibration = cal
    if api == "batched":
        return batched
    if api == "sb3":
        from l2s_gym.envs.sb3_vec import StopVecEnv

        env = StopVecEnv(batched)
    else:
        from l2s_gym.envs.torchrl_env import torchrl_env

        env = torchrl_env(batched)
    env.calibration = cal
    return env


__all__ = ["APIS", "Calibration", "calibrate", "make_env"]
