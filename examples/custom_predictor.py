"""Plug your own layered model into l2s-gym: gradient descent on least squares, as layers.

Run it:

    python examples/custom_predictor.py            # about a minute on a laptop CPU
    python examples/custom_predictor.py --tiny     # seconds (what the test runs)

or from the command line, which imports this file to register the task and the predictor:

    l2s compare examples/custom_predictor.yaml --import examples/custom_predictor.py

The problem: recover ``x*`` from ``b = A x* + noise``, ``A`` ill-conditioned. Each layer
is one gradient step ``x <- x - eta_t A^T (A x - b)`` with a learned step ``eta_t``. With
noise, the error first falls and then rises again as the steps start fitting the noise
(semi-convergence), and how soon depends on the instance's noise level: the best number of
layers differs per instance, which is what a stop policy is for. The policy sees only
label-free quantities: the residual, the size of the last update and the noise level the
solver is told (the discrepancy principle stops where the residual meets it).

Everything goes through the public API: a ``Task`` and a ``LayeredPredictor`` registered
by name, an experiment config (``custom_predictor.yaml`` next to this file),
``l2s_gym.compare.run_compare`` for stage 1 (train ``eta`` under the oracle), the imitation
learner and REINFORCE, and ``gymnasium.make`` on the registered env id. See
docs/custom_predictors.md for the walk-through.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium
import torch
import yaml
from torch import Tensor, nn

from l2s_gym import Batch, LayeredPredictor, Task
from l2s_gym.compare import run_compare
from l2s_gym.config import apply_overrides, from_dict, positive
from l2s_gym.envs import register_envs
from l2s_gym.registry import register_predictor, register_task

# --- 1. The task: data, the per-sample loss (drives the oracle and rewards), the metric ---


@dataclass
class LeastSquaresConfig:
    """Noisy least squares ``b = A x* + noise`` with a fixed ill-conditioned ``A``."""

    n: int = 32
    """Unknowns (columns of A)."""
    m: int = 48
    """Measurements (rows of A)."""
    condition_number: float = 100.0
    """Singular values of A run geometrically from 1 down to 1 / condition_number."""
    noise_levels: list[float] = field(default_factory=lambda: [0.05, 0.2, 0.5])
    """Relative noise ``||noise|| / ||A x*||`` of an instance, drawn from this list."""
    val_size: int = 512
    test_size: int = 1024

    def validate(self, path: str) -> None:
        positive(self, path, "n", "m", "condition_number", "val_size", "test_size")


@register_task("least_squares", LeastSquaresConfig)
class LeastSquaresTask(Task):
    """Recover ``x*``; loss and metric: relative squared error ``||x - x*||^2 / ||x*||^2``."""

    name = "least_squares"
    metric_name = "relative error (dB)"
    higher_is_better = False
    group_title = "noise"
    default_predictor = "gradient_descent"
    env_id = "l2s/LeastSquares-v1"

    def __init__(self, cfg: LeastSquaresConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.group_names = [f"{s:g}" for s in cfg.noise_levels]
        # Fixed data are drawn on the CPU and then moved: the same A on every device.
        gen = self.generator(0, device="cpu")
        u, _ = torch.linalg.qr(torch.randn(cfg.m, cfg.n, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(cfg.n, cfg.n, generator=gen))
        singular_values = torch.logspace(0, -math.log10(cfg.condition_number), cfg.n)
        self.A = (u @ torch.diag(singular_values) @ v.T).to(self.device)
        self.V = v.to(self.device)
        self.singular_values = singular_values.to(self.device)
        self._noise = torch.tensor(cfg.noise_levels, device=self.device)

    def _draw(self, groups: Tensor, gen: torch.Generator) -> Batch:
        b, dev = groups.shape[0], gen.device  # computed where the generator draws
        # A smooth x* (Picard condition): its weight on small singular directions is small.
        coeffs = torch.randn(b, self.cfg.n, generator=gen, device=dev)
        x = (coeffs * self.singular_values.to(dev)) @ self.V.to(dev).T
        clean = x @ self.A.to(dev).T
        noise = torch.randn(b, self.cfg.m, generator=gen, device=dev)
        scale = self._noise.to(dev)[groups] * clean.norm(dim=1) / noise.norm(dim=1)
        y = clean + scale.unsqueeze(1) * noise
        # The solver is told the noise energy (as the discrepancy principle assumes).
        noise_energy = (scale * noise.norm(dim=1)).pow(2)
        return Batch({"b": y, "noise_energy": noise_energy}, x, groups)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        n_groups = len(self.cfg.noise_levels)
        groups = torch.randint(
            n_groups, (batch_size,), generator=generator, device=generator.device
        )
        return self._draw(groups, generator)

    def make_eval_set(self, split: str) -> Batch:
        size = self.cfg.val_size if split == "val" else self.cfg.test_size
        gen = self.generator(1 if split == "val" else 2, device="cpu")
        groups = torch.arange(size) % len(self.cfg.noise_levels)
        return self._draw(groups, gen).to(self.device)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return (prediction - targets).pow(2).sum(1) / targets.pow(2).sum(1).clamp(min=1e-12)

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)

    def aggregate(self, stats: Tensor) -> float:
        return float(10 * torch.log10(stats.double().mean()))


# --- 2. The predictor: T layers, a read-out after each, label-free policy features ----------


@dataclass
class GradientDescentConfig:
    """Gradient descent with one learned step size per layer."""

    num_layers: int = 20

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers")


@register_predictor("gradient_descent", GradientDescentConfig, task="least_squares")
class GradientDescent(LayeredPredictor):
    """``x_{t+1} = x_t - eta_t A^T (A x_t - b)``, ``x_0 = 0``; ``eta_t`` learned (init 1 / L).

    State: ``{"x": x_t, "dx": x_t - x_{t-1}}``. Policy features (3 numbers): log relative
    residual ``||A x - b||^2 / ||b||^2``, log relative update ``||dx||^2 / ||x||^2``, and log
    relative noise energy ``||noise||^2 / ||b||^2`` (known to the solver, not a label).
    """

    display_name = "GD"
    feature_shape = (3,)

    def __init__(self, cfg: GradientDescentConfig, task: LeastSquaresTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.register_buffer("A", task.A.clone())
        lipschitz = float(torch.linalg.matrix_norm(task.A.cpu(), ord=2) ** 2)
        # log step sizes: positive steps, and a scale-free learning rate for Adam.
        self.log_eta = nn.Parameter(
            torch.full((cfg.num_layers,), -math.log(lipschitz), device=task.A.device)
        )

    def initial_state(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        zeros = inputs["b"].new_zeros(inputs["b"].shape[0], self.A.shape[1])
        return {"x": zeros, "dx": zeros}

    def layer(self, t: int, state: Any, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        x = state["x"]
        grad = (x @ self.A.T - inputs["b"]) @ self.A
        new = x - self.log_eta[t].exp() * grad
        return {"x": new, "dx": new - x}

    def readout(self, t: int, state: Any, inputs: dict[str, Tensor]) -> Tensor:
        return state["x"]

    def policy_features(
        self, t: int, state: Any, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        b, x, dx = inputs["b"], state["x"], state["dx"]
        b2 = b.pow(2).sum(1) + 1e-12
        resid = (x @ self.A.T - b).pow(2).sum(1) / b2
        update = dx.pow(2).sum(1) / (x.pow(2).sum(1) + 1e-12)
        noise = inputs["noise_energy"] / b2
        return torch.log10(torch.stack([resid, update, noise], dim=1) + 1e-10)

    def extras(
        self, t: int, state: Any, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        # "change" enables the built-in convergence-threshold heuristic in `l2s compare`.
        x, dx = state["x"], state["dx"]
        return {"change": dx.pow(2).sum(1) / (x.pow(2).sum(1) + 1e-12)}


# The task class sets env_id; registering makes gymnasium.make("l2s/LeastSquares-v1") work.
register_envs()


# --- 3. An experiment, run through the public API --------------------------------------------


CONFIG = Path(__file__).with_suffix(".yaml")
"""The experiment as a YAML file (``l2s compare examples/custom_predictor.yaml --import
examples/custom_predictor.py`` runs it from the command line)."""

TINY = [
    "experiment=custom_least_squares_tiny",
    "device=cpu",
    "task.n=12",
    "task.m=16",
    "task.val_size=192",
    "task.test_size=384",
    "predictor.num_layers=10",
    "stage1.steps=40",
    "stage1.batch_size=64",
    "stage1.val_every=20",
    "policy.hidden=16",
    "imitation.steps=80",
    "imitation.batch_size=128",
    "imitation.val_every=20",
    "imitation.buffer_size=2048",
    "rl.num_envs=64",
    "compare.layer_budget=40000",
    "rl.val_every=5",
    "rl.rollout_steps=16",
]
"""``--set`` overrides that shrink the run to seconds (what the tests run)."""


def experiment_config(
    tiny: bool = False, learners: tuple[str, ...] = ("reverse_kl", "reinforce")
) -> dict[str, Any]:
    """The experiment as a dict: ``CONFIG``, with ``TINY`` applied if ``tiny``."""
    data = apply_overrides(yaml.safe_load(CONFIG.read_text()), TINY if tiny else [])
    data["compare"]["learners"] = list(learners)
    return data


def run(
    tiny: bool = False,
    runs_root: str | Path = "runs",
    progress: bool = True,
    learners: tuple[str, ...] = ("reverse_kl", "reinforce"),
) -> dict[str, Any]:
    """Train and compare on the least-squares task; returns the comparison's results.json."""
    cfg = from_dict(experiment_config(tiny, learners))
    exp = run_compare(cfg, runs_root, progress=progress, log=lambda *_: None)
    results = json.loads((Path(exp) / "results.json").read_text())

    # The same trained predictor as a Gymnasium env: one episode with a "stop at layer 3" rule.
    env = gymnasium.make(
        "l2s/LeastSquares-v1",
        checkpoint=Path(exp) / "seed-0" / "stage1" / "predictor-oracle" / "best.pt",
        device="cpu",
    )
    obs, info = env.reset(seed=0)
    terminated, steps, reward = False, 0, 0.0
    while not terminated:
        obs, reward, terminated, _, info = env.step(1 if obs[-1] >= 2 else 0)
        steps += 1
    results["env_episode"] = {
        "decisions": steps,
        "reward": float(reward),
        "t": info["t"],
        "loss": info["loss"],
    }
    env.close()
    return results


def format_table(results: dict[str, Any]) -> str:
    """A compact table: method, metric, average layers, training time, layer evaluations."""
    lines = [
        f"| method | {results['metric']} | avg layers | train time (s) | layer evals |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        time_s = row.get("train_wall_time_s")
        evals = row.get("layer_evals")
        lines.append(
            f"| {row['method']} | {row['metric']:.2f} | {row['avg_layers']:.2f} | "
            f"{'-' if time_s is None else f'{time_s:.1f}'} | "
            f"{'-' if evals is None else f'{evals:,}'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a seconds-long run (tests)")
    parser.add_argument("--runs", default="runs", help="folder for the experiment's runs")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    results = run(args.tiny, args.runs, progress=not args.no_progress)
    print(format_table(results))
    ep = results["env_episode"]
    print(f"gymnasium.make episode: stopped after layer {ep['t']}, reward {ep['reward']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
