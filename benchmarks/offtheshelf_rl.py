"""Off-the-shelf RL agents on ``l2s_gym.make_env``: SB3's PPO and DQN with their library
default hyper-parameters (only the number of timesteps set), against "never stop", "stop at
once" and the label-using oracle, in mean episode return on fresh instances.

    python benchmarks/offtheshelf_rl.py benchmarks/problems/cg_deblur.yaml \\
        --import benchmarks/problems/cg_deblur.py          # a parameter-free solver
    python benchmarks/offtheshelf_rl.py runs/sparse_recovery_small/latest  # a trained run

The price (``--cost``, in units of the oracle's gain per layer) defaults to the grid price
where the oracle's average stop is nearest ``T / 2``. The env is ``make_env``'s default:
dense ``improvement`` rewards in units of the average gain per layer. Each agent trains on
its own instance stream (seed ``s``) and is scored deterministically on ``--episodes``
episodes of another (seed ``10_000 + s``); the baselines on the same evaluation stream.
Prints a table (mean return, 95% interval over episodes per seed, t interval over seeds)
and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

GRID = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
DEFAULT_ENVS = {"ppo": 8, "dqn": 1}


def returns_of(env, act, episodes: int) -> np.ndarray:  # noqa: ANN001
    """Returns of the first ``episodes`` episodes ``env`` (an SB3 VecEnv) finishes under
    ``act(obs) -> actions``."""
    obs = env.reset()
    running = np.zeros(env.num_envs)
    out: list[float] = []
    while len(out) < episodes:
        obs, reward, done, _ = env.step(act(obs))
        running += reward
        out += running[done].tolist()
        running[done] = 0.0
    return np.asarray(out[:episodes])


def oracle_return(batched, instances: int = 4096) -> float:  # noqa: ANN001
    """The oracle's mean return on a trace of fresh training instances:
    ``scale / beta * max_t (l_1 - l_t - lambda C_t)`` under ``improvement`` rewards, without
    the ``l_1`` under ``terminal_loss`` (``nan`` for ``log_oracle``)."""
    if batched.reward_mode == "log_oracle":
        return math.nan
    from l2s_gym.stopping import cost_adjusted_losses

    task, predictor = batched.task, batched.predictor
    batch = task.train_batch(instances, task.generator(31337))
    trace = predictor.trace_eval(batch, task)
    adjusted = cost_adjusted_losses(trace.losses, batched.cost, batched.cum_costs)
    gain = (trace.losses[:, :1] if batched.reward_mode == "improvement" else 0.0) - adjusted
    return float(gain.max(dim=1).values.double().mean() * batched.reward_scale / batched.beta)


def interval(x: np.ndarray) -> tuple[float, float]:
    from scipy import stats

    if len(x) < 2:
        return (math.nan, math.nan)
    half = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return (float(x.mean() - half), float(x.mean() + half))


def pick_cost(args: argparse.Namespace) -> float:
    from l2s_gym.envs.make import make_env

    best = None
    for c in GRID:
        b = make_env(args.source, cost=c, api="batched", num_envs=1, verbose=False)
        T, stop = b.num_layers, b.calibration.oracle_layers
        if T / 4 <= stop <= 3 * T / 4 and (best is None or abs(stop - T / 2) < best[1]):
            best = (c, abs(stop - T / 2))
    if best is None:
        raise SystemExit("no grid price puts the oracle's average stop in [T/4, 3T/4]; pass --cost")
    return best[0]


def train_agent(algo: str, args: argparse.Namespace, cost: float, seed: int):  # noqa: ANN201
    from stable_baselines3 import DQN, PPO

    from l2s_gym.envs.make import make_env

    env = make_env(args.source, cost=cost, api="sb3", num_envs=args.envs.get(algo, DEFAULT_ENVS[algo]),
                   env_seed=seed, verbose=False, **args.env_kw)  # fmt: skip
    cls = {"ppo": PPO, "dqn": DQN}[algo]
    model = cls("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
    start = time.perf_counter()
    model.learn(total_timesteps=args.timesteps[algo])
    return model, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a config (.yaml), a run folder or a predictor best.pt")
    p.add_argument(
        "--import", dest="imports", action="append", default=[], help="a plugin module or file"
    )
    p.add_argument(
        "--cost", type=float, default=None, help="price per layer, units of the gain per layer"
    )
    p.add_argument("--algos", nargs="+", default=["ppo", "dqn"], choices=["ppo", "dqn"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--ppo-steps", type=int, default=200_000)
    p.add_argument("--dqn-steps", type=int, default=100_000)
    p.add_argument("--episodes", type=int, default=2000)
    p.add_argument("--reward", default="improvement", help="make_env's reward mode")
    p.add_argument(
        "--reward-scale", default="auto", help="make_env's reward_scale: auto or a number"
    )
    p.add_argument("--out", default="offtheshelf_rl.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from l2s_gym import plugins

    for spec in args.imports:
        plugins.import_module_or_file(spec)
    args.timesteps = {"ppo": args.ppo_steps, "dqn": args.dqn_steps}
    scale = args.reward_scale if args.reward_scale == "auto" else float(args.reward_scale)
    args.env_kw = {"reward": args.reward, "reward_scale": scale}
    args.envs = {}
    from l2s_gym.envs.make import make_env

    cost = pick_cost(args) if args.cost is None else args.cost
    probe = make_env(args.source, cost=cost, api="batched", num_envs=1, **args.env_kw)
    T = probe.num_layers
    rows: dict[str, dict] = {}

    def score(name: str, seed: int, act, extra: dict | None = None) -> None:  # noqa: ANN001
        env = make_env(args.source, cost=cost, api="sb3", num_envs=64, env_seed=10_000 + seed, verbose=False, **args.env_kw)  # fmt: skip
        r = returns_of(env, act, args.episodes)
        row = rows.setdefault(name, {"per_seed": []})
        row["per_seed"].append(
            {"seed": seed, "mean": float(r.mean()), "ci95": interval(r), **(extra or {})}
        )
        print(f"{name:>12} seed {seed}: {r.mean():9.3f}  [{interval(r)[0]:.3f}, {interval(r)[1]:.3f}]"
              + (f"  ({extra['train_s']:.0f} s)" if extra else ""), flush=True)  # fmt: skip

    for seed in args.seeds:
        score("never stop", seed, lambda o: np.zeros(len(o), dtype=np.int64))
        score("stop at once", seed, lambda o: np.ones(len(o), dtype=np.int64))
        for algo in args.algos:
            model, secs = train_agent(algo, args, cost, seed)
            score(f"SB3 {algo.upper()}", seed, lambda o, m=model: m.predict(o, deterministic=True)[0],
                  {"train_s": secs, "timesteps": args.timesteps[algo]})  # fmt: skip
    oracle = oracle_return(probe)
    print(f"\nprice {cost:g} x gain per layer; T = {T}; oracle's average stop "
          f"{probe.calibration.oracle_layers:.2f}; oracle's mean return {oracle:.3f}")  # fmt: skip
    print(
        "| method | mean return (over seeds) | 95% interval (seeds) | per seed |\n|---|---|---|---|"
    )
    for name, row in rows.items():
        means = np.array([s["mean"] for s in row["per_seed"]])
        row["mean"], row["ci95"] = float(means.mean()), interval(means)
        cells = ", ".join(f"{m:.3f}" for m in means)
        print(
            f"| {name} | {row['mean']:.3f} | [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] | {cells} |"
        )
    out = {"source": str(args.source), "cost_gain_units": cost, "num_layers": T,
           "oracle_layers": probe.calibration.oracle_layers, "oracle_return": oracle,
           "reward": args.reward, "reward_scale": probe.reward_scale, "timesteps": args.timesteps, "episodes": args.episodes, "rows": rows}  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
