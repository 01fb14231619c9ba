"""Layered predictors for sparse recovery: LISTA (learned) and ISTA / FISTA (classical)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from l2s_gym.config import positive
from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.registry import register_baselines, register_predictor
from l2s_gym.tasks.sparse_recovery import SparseRecoveryTask


def soft_threshold(x: Tensor, theta: Tensor) -> Tensor:
    return torch.sign(x) * torch.relu(x.abs() - theta)


class _SparseFeatures(LayeredPredictor):
    """Shared state handling and label-free policy features for sparse-recovery predictors.

    The state is ``{"x": x_t, "x_prev": x_{t-1}, "r": y - A x_t, "r_prev": y - A x_{t-1},
    "y2": ||y||^2}``. The layer computes only what the next layer reads (``x`` and, for
    ISTA and LISTA-CP, the residual); ``x_prev`` and ``r_prev`` are references to the
    previous layer's tensors, and the features take ``dx = x_t - x_{t-1}`` themselves, so a
    full-depth pass without a policy pays nothing for them.
    The residual is computed once per layer, in the layer (``_advance``), and shared: the
    policy features need it after every layer, and the next ISTA or LISTA-CP layer starts
    from it (before, the features recomputed it with two more products by ``A``, which
    doubled the cost of a LISTA-CP layer whenever the policy ran).

    The policy sees five numbers: the log relative residual ``||y - A x_t||^2 / ||y||^2``
    (which tracks the noise level), the log relative update ``||dx||^2 / ||x_t||^2``
    (convergence), the fraction of non-zero entries, the log measurement energy, and the
    log ratio of the residual before and after the last layer (whether that layer still
    helped).
    """

    feature_shape = (5,)
    A: Tensor

    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        y = inputs["y"]
        zeros = y.new_zeros(y.shape[0], self.A.shape[1])
        # x_0 = 0, so its residual y - A x_0 is y itself (exactly: A 0 = 0). ``y2``,
        # ``||y||^2``, is the features' normaliser: computed once, carried (and compacted
        # by the runner) with the state rather than recomputed after every layer.
        return {"x": zeros, "x_prev": zeros, "r": y, "r_prev": y, "y2": y.pow(2).sum(1)}

    def _advance(self, state: State, new: Tensor, y: Tensor) -> State:
        """The state after a layer took ``state``'s ``x`` (residual ``r``) to ``new``."""
        x, r = state["x"], state["r"]  # type: ignore[index]
        return {"x": new, "x_prev": x, "r": y - new @ self.A.T, "r_prev": r, "y2": state["y2"]}  # type: ignore[index]

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        return state["x"]  # type: ignore[index]

    def carried_state(self, state: State) -> State:
        # x_prev and r_prev are for this layer's features; the next layer makes its own.
        return {k: v for k, v in state.items() if k not in ("x_prev", "r_prev")}  # type: ignore[union-attr]

    def extras(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        x = state["x"]  # type: ignore[index]
        dx = x - state["x_prev"]  # type: ignore[index]
        return {"change": dx.pow(2).sum(1) / (x.pow(2).sum(1) + 1e-12)}

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        s = state  # the layer's (B, n) and (B, m) tensors
        return _sparse_features(s["x"], s["x"] - s["x_prev"], s["r"], s["r_prev"], s["y2"])  # type: ignore[index,operator]

    def chunk_policy_features(
        self,
        t0: int,
        states: Sequence[State],
        inputs: dict[str, Tensor],
        predictions: Sequence[Tensor],
    ) -> Tensor:
        # One feature computation over the k states stacked as (B, k, n): the same
        # operations, row for row (tests: equal to the per-layer features).
        # r_prev of layer t0 + i is r of layer t0 + i - 1: one stack gives both.
        r = torch.stack([states[0]["r_prev"]] + [s["r"] for s in states], dim=1)  # type: ignore[index]
        y2 = states[0]["y2"].unsqueeze(1).expand(-1, len(states))  # type: ignore[index]
        # x_prev of layer t0 + i is x of layer t0 + i - 1, as for r.
        x = torch.stack([states[0]["x_prev"]] + [s["x"] for s in states], dim=1)  # type: ignore[index]
        return _sparse_features(x[:, 1:], x[:, 1:] - x[:, :-1], r[:, 1:], r[:, :-1], y2)


def _sparse_features(x: Tensor, dx: Tensor, r: Tensor, r_prev: Tensor, y2: Tensor) -> Tensor:
    """The five policy features of sparse recovery over the last dimension: ``(..., 5)``.

    ``x``, ``dx`` ``(..., n)``; ``r``, ``r_prev`` ``(..., m)``; ``y2`` ``(...)``. Written to
    launch few kernels (this runs after every layer of the runner; at batch 1 its cost is
    the launches): the three ratios are one division and one ``log10``.
    """
    ynorm = y2 + 1e-12
    num = torch.stack([r.pow(2).sum(-1), dx.pow(2).sum(-1), r_prev.pow(2).sum(-1)], dim=-1)
    den = torch.stack([ynorm, x.pow(2).sum(-1) + 1e-12, ynorm], dim=-1)
    # log10(resid), log10(update), log10(resid before the layer)
    logs = num.div_(den).add_(1e-8).log10_()
    # |sign(x)| summed: the count of non-zeros, as (x != 0).float().mean(1) but 5x faster.
    nonzero = x.sign().abs_().sum(-1) / x.shape[-1]
    energy = torch.log10(y2 / r.shape[-1] + 1e-8)
    return torch.stack(
        [logs[..., 0], logs[..., 1], nonzero * 10, energy, logs[..., 2] - logs[..., 0]], dim=-1
    )


@dataclass
class IterativeConfig:
    """ISTA / FISTA: classical iterations, nothing trained."""

    num_layers: int = 20
    lam: float = 0.05
    """The l1 weight lambda of the LASSO the iterations solve."""

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers", "lam")


@register_predictor("ista", IterativeConfig, task="sparse_recovery")
class ISTA(_SparseFeatures):
    """ISTA, ``x <- soft(x + A^T (y - A x) / L, lam / L)``, one iteration per layer."""

    display_name = "ISTA"

    def __init__(self, cfg: IterativeConfig, task: SparseRecoveryTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.lam = cfg.lam
        self.register_buffer("A", task.A.clone())
        self.L = float(torch.linalg.matrix_norm(task.A.cpu(), ord=2) ** 2)

    def _ista(self, x: Tensor, misfit: Tensor) -> Tensor:
        """One ISTA step from ``x`` whose misfit ``A x - y`` is given."""
        grad = misfit @ self.A
        return soft_threshold(x - grad / self.L, torch.tensor(self.lam / self.L))

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        x, r = state["x"], state["r"]  # type: ignore[index]
        # -r is A x - y exactly (IEEE subtraction is antisymmetric).
        return self._advance(state, self._ista(x, -r), inputs["y"])


@register_predictor("fista", IterativeConfig, task="sparse_recovery")
class FISTA(ISTA):
    """FISTA (Beck & Teboulle): ISTA with Nesterov momentum; the state carries z and s."""

    display_name = "FISTA"

    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        state = dict(super().initial_state(inputs))  # type: ignore[arg-type]
        state["z"] = state["x"]
        state["s"] = inputs["y"].new_ones(inputs["y"].shape[0])
        return state

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        x, z, s, y = state["x"], state["z"], state["s"], inputs["y"]  # type: ignore[index]
        new = self._ista(z, z @ self.A.T - y)
        s_next = (1 + torch.sqrt(1 + 4 * s * s)) / 2
        z_next = new + ((s - 1) / s_next).unsqueeze(1) * (new - x)
        return {**self._advance(state, new, y), "z": z_next, "s": s_next}  # type: ignore[index]


@dataclass
class ListaConfig:
    """LISTA: T untied layers initialised from ISTA, a learnable threshold per layer."""

    num_layers: int = 20
    lam: float = 0.05
    """ISTA's lambda, used only to initialise the thresholds."""
    weights: Literal["full", "coupled"] = "full"
    """``full``: ``soft(W1_t y + W2_t x, theta_t)`` (Gregor & LeCun);
    ``coupled``: ``soft(x + W_t^T (y - A x), theta_t)`` (LISTA-CP, fewer weights)."""

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers", "lam")


@register_predictor("lista", ListaConfig, task="sparse_recovery")
class LISTA(_SparseFeatures):
    """Learned ISTA with untied weights and one learnable threshold per layer."""

    display_name = "LISTA"

    def __init__(self, cfg: ListaConfig, task: SparseRecoveryTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.weights = cfg.weights
        a = task.A.clone()
        self.register_buffer("A", a)
        m, n = a.shape
        L = float(torch.linalg.matrix_norm(a.cpu(), ord=2) ** 2)
        T = cfg.num_layers
        if cfg.weights == "full":
            self.W1 = nn.Parameter((a.T / L).unsqueeze(0).repeat(T, 1, 1).contiguous())
            w2 = torch.eye(n, device=a.device) - a.T @ a / L
            self.W2 = nn.Parameter(w2.unsqueeze(0).repeat(T, 1, 1).contiguous())
        else:
            self.W = nn.Parameter((a / L).unsqueeze(0).repeat(T, 1, 1).contiguous())
        # Thresholds are untied: one per layer (the official code shares one across all).
        self.theta = nn.Parameter(torch.full((T,), cfg.lam / L, device=a.device))

    def predict_full_depth(self, inputs: dict[str, Tensor]) -> Tensor:
        if self.weights != "full":  # LISTA-CP's layer reads the residual it carries
            return super().predict_full_depth(inputs)
        # Full weights need no residual: ``layer`` computes it for the policy's features.
        y = inputs["y"]
        x = y.new_zeros(y.shape[0], self.A.shape[1])
        for t in range(self.num_layers):
            x = self._full_weight_layer(t, x, y)
        return x

    def _full_weight_layer(self, t: int, x: Tensor, y: Tensor) -> Tensor:
        """``soft(W1_t y + W2_t x, theta_t)`` (Gregor & LeCun)."""
        return soft_threshold(y @ self.W1[t].T + x @ self.W2[t].T, self.theta[t])

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        x, r, y = state["x"], state["r"], inputs["y"]  # type: ignore[index]
        if self.weights == "full":
            new = self._full_weight_layer(t, x, y)
        else:
            new = soft_threshold(x + r @ self.W[t], self.theta[t])
        return self._advance(state, new, y)


@register_baselines("sparse_recovery")
def ista_fista_baselines(
    task: SparseRecoveryTask, num_layers: int
) -> list[tuple[str, LayeredPredictor]]:
    """ISTA and FISTA at ``T`` and ``5 T`` iterations: the classical rows of the table."""
    rows: list[tuple[str, LayeredPredictor]] = []
    for cls in (ISTA, FISTA):
        for depth in (num_layers, 5 * num_layers):
            pred = cls(IterativeConfig(num_layers=depth), task)
            rows.append((f"{pred.display_name} (T={depth})", pred))
    return rows
