"""REINFORCE on the stop environment, CleanRL style: one file, Gymnasium's vector API only.

    python examples/cleanrl_reinforce.py              # cg_deblur (a CG solver), price 0.1
    python examples/cleanrl_reinforce.py --cost 0.3   # a dearer layer: stop sooner
    tensorboard --logdir runs

Each iteration resets the vector env and runs every episode that starts in its first
``--num-steps`` steps to its end, so each counted episode is complete and REINFORCE needs no
bootstrap. NEXT_STEP autoreset: the step after a row's episode ends ignores the action and
pays 0, so those "reset steps" are masked out of the loss, as are episodes started later.
Loss: policy gradient with a learned value baseline (normalised advantages), an entropy
bonus, a value regression; one Adam step per iteration. Observations are standardised by
``gymnasium.wrappers.vector.NormalizeObservation`` (frozen for the evaluation).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from gymnasium.wrappers.vector import NormalizeObservation
from torch import nn
from torch.distributions import Categorical
from torch.utils.tensorboard import SummaryWriter

import l2s_gym
from l2s_gym import plugins

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--source", default=str(ROOT / "benchmarks/problems/cg_deblur.yaml"),
                   help="a config (.yaml), a run folder or a predictor best.pt (make_env)")  # fmt: skip
    p.add_argument("--import", dest="imports", nargs="*", help="plugin modules or .py files",
                   default=[str(ROOT / "benchmarks/problems/cg_deblur.py")])  # fmt: skip
    p.add_argument("--exp-name", default=Path(__file__).stem)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cost", type=float, default=0.1, help="price of a layer (gain units)")
    p.add_argument("--num-envs", type=int, default=128)
    p.add_argument("--num-steps", type=int, default=32, help="steps in which episodes start")
    p.add_argument("--num-iterations", type=int, default=60)
    p.add_argument("--learning-rate", type=float, default=3e-3)
    p.add_argument("--gamma", type=float, default=1.0)
    p.add_argument("--ent-coef", type=float, default=0.01)
    p.add_argument("--vf-coef", type=float, default=0.5)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--eval-rounds", type=int, default=16, help="rounds of num_envs episodes")
    p.add_argument("--runs-dir", default="runs")
    return p.parse_args(argv)


def layer_init(layer: nn.Linear, std: float = np.sqrt(2)) -> nn.Linear:
    torch.nn.init.orthogonal_(layer.weight, std)
    torch.nn.init.constant_(layer.bias, 0.0)
    return layer


def mlp(n_in: int, hidden: int, n_out: int, std: float) -> nn.Sequential:
    return nn.Sequential(layer_init(nn.Linear(n_in, hidden)), nn.Tanh(),
                         layer_init(nn.Linear(hidden, hidden)), nn.Tanh(),
                         layer_init(nn.Linear(hidden, n_out), std))  # fmt: skip


def rollout(envs, act, num_steps: int, seed: int | None = None) -> dict:  # noqa: ANN001
    """Reset ``envs`` and step it under ``act(obs) -> actions`` until each episode started in
    the first ``num_steps`` steps has ended. ``valid``: the step's action counts (not a
    NEXT_STEP reset step, not in an episode started later)."""
    obs, _ = envs.reset(seed=seed)
    n = envs.num_envs
    counting, pending, running = np.ones(n, bool), np.zeros(n, bool), np.zeros(n)
    keys = ("obs", "actions", "rewards", "dones", "valid")
    out: dict = {k: [] for k in keys} | {"returns": [], "layers": [], "steps": 0}
    while counting.any():
        actions = act(obs)
        next_obs, reward, terminated, truncated, info = envs.step(actions)
        done = terminated | truncated
        for k, v in zip(keys, (obs, actions, reward, done, counting & ~pending), strict=True):
            out[k].append(v)
        running += reward
        finished = done & counting
        out["returns"] += running[finished].tolist()
        out["layers"] += info["t"][finished].tolist()
        running[done] = 0.0
        counting[done] = out["steps"] + 1 < num_steps
        pending, obs, out["steps"] = done, next_obs, out["steps"] + 1
    return {k: np.stack(v) if k in keys else v for k, v in out.items()}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    for spec in args.imports:
        plugins.import_module_or_file(spec)
    run_name = f"{args.exp_name}__{args.seed}__{int(time.time())}"
    writer = SummaryWriter(f"{args.runs_dir}/{run_name}")
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n"
                    + "\n".join(f"|{k}|{v}|" for k, v in vars(args).items()))  # fmt: skip
    envs = l2s_gym.make_env(args.source, num_envs=args.num_envs, cost=args.cost,
                            api="gymnasium", env_seed=args.seed)  # fmt: skip
    envs = NormalizeObservation(envs)
    obs_dim = envs.single_observation_space.shape[0]
    actor, critic = mlp(obs_dim, args.hidden, 2, 0.01), mlp(obs_dim, args.hidden, 1, 1.0)
    params = [*actor.parameters(), *critic.parameters()]
    optimizer = torch.optim.Adam(params, lr=args.learning_rate, eps=1e-5)

    @torch.no_grad()
    def sample(obs: np.ndarray) -> np.ndarray:
        return Categorical(logits=actor(torch.as_tensor(obs))).sample().numpy()

    global_step, start = 0, time.time()
    for iteration in range(1, args.num_iterations + 1):
        data = rollout(envs, sample, args.num_steps, args.seed if iteration == 1 else None)
        global_step += data["steps"] * args.num_envs
        returns, g = np.zeros_like(data["rewards"]), np.zeros(args.num_envs)
        for s in reversed(range(data["steps"])):  # reward to go, within each episode
            g = data["rewards"][s] + args.gamma * g * (1.0 - data["dones"][s])
            returns[s] = g
        valid = data["valid"]
        b_obs = torch.as_tensor(data["obs"][valid])
        b_actions = torch.as_tensor(data["actions"][valid])
        b_returns = torch.as_tensor(returns[valid], dtype=torch.float32)

        dist = Categorical(logits=actor(b_obs))
        values = critic(b_obs).squeeze(-1)
        advantages = b_returns - values.detach()
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        pg_loss = -(dist.log_prob(b_actions) * advantages).mean()
        entropy = dist.entropy().mean()
        v_loss = 0.5 * (values - b_returns).pow(2).mean()
        loss = pg_loss - args.ent_coef * entropy + args.vf_coef * v_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

        episode_return, episode_layers = np.mean(data["returns"]), np.mean(data["layers"])
        writer.add_scalar("charts/episode_return", episode_return, global_step)
        writer.add_scalar("charts/episode_layers", episode_layers, global_step)
        writer.add_scalar("charts/layer_evals", envs.unwrapped.layer_evals, global_step)
        writer.add_scalar("losses/policy_gradient", pg_loss.item(), global_step)
        writer.add_scalar("losses/entropy", entropy.item(), global_step)
        writer.add_scalar("losses/value_loss", v_loss.item(), global_step)
        writer.add_scalar("charts/SPS", int(global_step / (time.time() - start)), global_step)
        if iteration % 10 == 0 or iteration == args.num_iterations:
            print(f"iteration {iteration}: global_step={global_step}, episode_return="
                  f"{episode_return:.3f}, episode_layers={episode_layers:.2f}")  # fmt: skip

    # Evaluation on fresh episodes: the same instances (env seeds) for every policy.
    envs.update_running_mean = False

    @torch.no_grad()
    def greedy(obs: np.ndarray) -> np.ndarray:
        return actor(torch.as_tensor(obs)).argmax(-1).numpy()

    policies = {"learned (greedy)": greedy,
                "never stop": lambda o: np.zeros(len(o), dtype=np.int64),
                "stop at once": lambda o: np.ones(len(o), dtype=np.int64)}  # fmt: skip
    results = {}
    for name, act in policies.items():
        rets = [r for k in range(args.eval_rounds)
                for r in rollout(envs, act, 1, seed=10_000 + 100 * args.seed + k)["returns"]]  # fmt: skip
        results[name] = float(np.mean(rets))
        writer.add_scalar(f"eval/{name.split(' (')[0].replace(' ', '_')}", results[name], 0)
        print(f"{name:>16}: mean return {results[name]:8.3f} over {len(rets)} episodes")
    envs.close()
    writer.close()
    return {**results, "run_dir": f"{args.runs_dir}/{run_name}", "wall_s": time.time() - start}


if __name__ == "__main__":
    main()
