"""A problem of its own for checking the library's defaults: early stopping as a regulariser.

Every instance is a small regression data set of its own: ``n_i`` points (drawn per
instance from ``[n_min, n_max]``) in ``d`` dimensions with an anisotropic design
(covariance eigenvalues falling geometrically by ``condition``) and label noise of a level
drawn per instance, log-uniformly over ``[noise_min, noise_max]``. Each layer is one step
of gradient descent on that instance's least-squares fit from ``w_0 = 0``, with a learned
step size per layer (``eta_t / L_i``, ``L_i`` the instance's own Lipschitz constant).
Gradient descent fits the large directions of the design first and the noise last, so
the number of steps acts as the ridge parameter: few for noisy or small instances, many
for clean or large ones.

Loss and metric: the relative excess risk ``(w - w*)^T S (w - w*) / (w*^T S w*)`` (``S``
the design covariance): a linear loss whose scale varies from instance to instance.
Groups: the noise tercile. Policy features (label-free: the instance's own data only):
log training residual, log gradient norm, log update size, ``n_i / d``.

    l2s frontier benchmarks/problems/early_stopped_regression.yaml \
        --import benchmarks/problems/early_stopped_regression.py
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from l2s_gym import Batch, LayeredPredictor, Task
from l2s_gym.config import ConfigError, positive
from l2s_gym.registry import register_predictor, register_task


@dataclass
class RegressionConfig:
    d: int = 24
    """Dimension of every instance's regression."""
    n_min: int = 12
    n_max: int = 72
    """Each instance has ``n_i`` points, uniform over ``[n_min, n_max]``."""
    condition: float = 30.0
    """The design covariance's eigenvalues fall geometrically from 1 to ``1 / condition``."""
    noise_min: float = 0.1
    noise_max: float = 3.0
    """Label noise standard deviation (relative to the signal's), log-uniform over this range."""
    val_size: int = 1000
    test_size: int = 2000

    def validate(self, path: str) -> None:
        positive(self, path, "d", "n_min", "condition", "noise_min", "val_size", "test_size")
        if self.n_max < self.n_min:
            raise ConfigError(f"{path}.n_max: must be >= n_min ({self.n_min})")
        if not self.noise_max > self.noise_min:
            raise ConfigError(f"{path}.noise_max: must exceed noise_min ({self.noise_min})")


@register_task("early_stopped_regression", RegressionConfig)
class RegressionTask(Task):
    name = "early_stopped_regression"
    metric_name = "relative excess risk"
    higher_is_better = False
    group_title = "noise"
    default_predictor = "regression_gd"

    def __init__(self, cfg: RegressionConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.edges = torch.linspace(math.log(cfg.noise_min), math.log(cfg.noise_max), 4)
        self.group_names = ["low", "mid", "high"]
        self.scales = torch.logspace(0, -0.5 * math.log10(cfg.condition), cfg.d).to(self.device)

    def _draw(self, size: int, gen: torch.Generator) -> Batch:
        c, dev = self.cfg, gen.device
        scales = self.scales.to(dev)
        n = torch.randint(c.n_min, c.n_max + 1, (size,), generator=gen, device=dev)
        mask = (torch.arange(c.n_max, device=dev) < n.unsqueeze(1)).float()
        X = torch.randn(size, c.n_max, c.d, generator=gen, device=dev) * scales * mask[..., None]
        w = torch.randn(size, c.d, generator=gen, device=dev)
        signal = (w.pow(2) * scales.pow(2)).sum(1).sqrt()
        log_noise = self.edges[0] + (self.edges[-1] - self.edges[0]) * torch.rand(
            size, generator=gen, device=dev
        )
        sigma = log_noise.exp() * signal
        eps = torch.randn(size, c.n_max, generator=gen, device=dev) * mask
        y = torch.einsum("bnd,bd->bn", X, w) + sigma.unsqueeze(1) * eps
        lipschitz = torch.linalg.matrix_norm(X, ord=2).pow(2) / n
        groups = torch.bucketize(log_noise, self.edges[1:-1].to(dev))
        inputs = {"X": X, "y": y, "n": n.float(), "lipschitz": lipschitz}
        return Batch(inputs, w, groups)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._draw(batch_size, generator)

    def make_eval_set(self, split: str) -> Batch:
        size = self.cfg.val_size if split == "val" else self.cfg.test_size
        return self._draw(size, self.generator(1 if split == "val" else 2, "cpu")).to(self.device)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        s2 = self.scales.pow(2)
        return ((prediction - targets).pow(2) * s2).sum(1) / (targets.pow(2) * s2).sum(1)

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)


@dataclass
class RegressionGDConfig:
    num_layers: int = 20


@register_predictor("regression_gd", RegressionGDConfig, task="early_stopped_regression")
class RegressionGD(LayeredPredictor):
    """``w_{t+1} = w_t - (eta_t / L_i) grad``, ``grad = X^T (X w_t - y) / n_i``; ``eta_t`` learned."""

    display_name = "GD"
    feature_shape = (4,)

    def __init__(self, cfg: RegressionGDConfig, task: RegressionTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.d = task.cfg.d
        self.log_eta = nn.Parameter(torch.zeros(cfg.num_layers, device=task.device))

    def _grad(self, w: Tensor, inputs: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        X, y, n = inputs["X"], inputs["y"], inputs["n"]
        resid = torch.einsum("bnd,bd->bn", X, w) - y
        return torch.einsum("bnd,bn->bd", X, resid) / n.unsqueeze(1), resid

    def initial_state(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        w = inputs["X"].new_zeros(inputs["X"].shape[0], self.d)
        return {"w": w, "dw": w}

    def layer(self, t: int, state: dict[str, Tensor], inputs: dict[str, Tensor]) -> dict:
        grad, _ = self._grad(state["w"], inputs)
        dw = -(self.log_eta[t].exp() / inputs["lipschitz"]).unsqueeze(1) * grad
        return {"w": state["w"] + dw, "dw": dw}

    def readout(self, t: int, state: dict[str, Tensor], inputs: dict[str, Tensor]) -> Tensor:
        return state["w"]

    def policy_features(self, t: int, state: dict, inputs: dict, prediction: Tensor) -> Tensor:
        grad, resid = self._grad(state["w"], inputs)
        y2 = inputs["y"].pow(2).sum(1) + 1e-12
        w2 = state["w"].pow(2).sum(1) + 1e-12
        feats = torch.stack(
            [
                torch.log10(resid.pow(2).sum(1) / y2 + 1e-12),
                torch.log10(grad.pow(2).sum(1) / inputs["lipschitz"].pow(2) / w2 + 1e-12),
                torch.log10(state["dw"].pow(2).sum(1) / w2 + 1e-12),
                inputs["n"] / self.d,
            ],
            dim=1,
        )
        return feats

    def extras(self, t: int, state: dict, inputs: dict, prediction: Tensor) -> dict:
        return {"change": state["dw"].pow(2).sum(1) / (state["w"].pow(2).sum(1) + 1e-12)}
