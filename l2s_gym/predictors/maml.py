"""MAML as a layered predictor: the layers are inner SGD steps on each task's support set.

The meta-learned initial weights of a small MLP are broadcast into a batch of *fast
weights* (one set per task); layer ``t`` takes one SGD step on the masked support MSE of
every task at once (``torch.func``: ``functional_call`` for the MLP, ``grad_and_value`` for
the step, ``vmap`` over tasks), and its read-out is the query prediction after ``t`` steps:

    theta_t = theta_{t-1} - alpha_t * clip(grad L_support(theta_{t-1}), inner_grad_clip)

The inner steps are differentiable (``torch.func.grad`` composes with autograd, which is
MAML's second-order ``create_graph`` semantics), so stage 1 meta-trains the initial
weights, and the per-step inner learning rates ``alpha_t``, through all ``T`` steps under
the oracle loss. The per-task gradient clip is a safeguard that plain MAML lacks: with
``K = 1`` a step size that suits 10-shot tasks can diverge (see ``MAML.layer``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from l2s_gym.config import ConfigError, non_negative, positive
from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.registry import register_predictor
from l2s_gym.tasks.meta_learning import MetaLearningTask

# State entries that are not fast weights: per-task (B,) statistics the features read.
_LOSS = "support_loss"
_LOSS_PREV = "support_loss_prev"
_LOSS_INIT = "support_loss_init"
_CHANGE = "change"
_QUERY = "query_prediction"
_QUERY_SHIFT = "query_shift"
_LOSS_BEFORE_PREV = "support_loss_before_prev"  # lean: the step-before's loss before it


@dataclass
class MamlConfig:
    """MAML on the sinusoid tasks (MAML's 1-40-40-1 ReLU MLP by default)."""

    num_layers: int = 10
    """``T``: inner SGD steps, one per layer."""
    hidden: list[int] = field(default_factory=lambda: [40, 40])
    """Widths of the MLP's hidden layers (input and output are 1-d)."""
    inner_lr: float = 0.01
    """Inner SGD learning rate (the initial value, when ``learn_inner_lr``)."""
    learn_inner_lr: bool = True
    """Meta-learn one inner learning rate per step and per weight tensor (MAML++'s
    LSLR; Meta-SGD would go further, one per weight). ``false``: plain MAML."""
    first_order: bool = False
    """Drop the second-order terms (FOMAML): cheaper, for large ``T``."""
    inner_grad_clip: float = 10.0
    """Clip each task's inner gradient to this norm (0: no clipping)."""
    features: str = "full"
    """The stop policy's input. ``full``: 12 features, two of which need a forward pass
    of their own after every step (the support loss after the step, and how far the step
    moved the query predictions). ``lean``: 11 features that need none (the support loss
    the step computes anyway, at the weights before it, stands in for the loss after it;
    no query shift), so that early exit computes the query predictions only where an
    instance stops (``features_use_prediction`` is false). On the small config's
    validation set a somewhat worse policy input (docs/deploy.md)."""

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers", "inner_lr")
        non_negative(self, path, "inner_grad_clip")
        if self.features not in ("full", "lean"):
            raise ConfigError(f"{path}.features: expected 'full' or 'lean', got {self.features!r}")
        if not self.hidden or any(h <= 0 for h in self.hidden):
            raise ConfigError(f"{path}.hidden: expected a non-empty list of positive widths")


def _update_size(params: dict[str, Tensor], new: dict[str, Tensor]) -> Tensor:
    """Each task's squared step over its squared weights, ``|new - params|^2 / |params|^2``."""
    with torch.no_grad():
        step2 = sum((new[n] - params[n]).pow(2).flatten(1).sum(1) for n in new)
        norm2 = sum(params[n].pow(2).flatten(1).sum(1) for n in new)
        return step2 / (norm2 + 1e-12)


def masked_mse(pred: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``(pred - y)^2`` over the points where ``mask`` is 1 (one task, ``(P, 1)``)."""
    err = (pred - y).squeeze(-1).pow(2) * mask
    return err.sum() / mask.sum().clamp_min(1.0)


@register_predictor("maml", MamlConfig, task="meta_learning")
class MAML(LayeredPredictor):
    """MAML with ``T`` inner steps as layers; the state is the batch of fast weights.

    State: a dict holding every MLP parameter with the task batch as leading dimension
    (``"0.weight": (B, 40, 1)``, ...) plus per-task support statistics.

    Policy features (12 per layer, no query labels): log10 support MSE after the step,
    log10 of its ratio to the previous step's and to the initial support MSE, ``K / k_max``,
    ``t / T``, mean and standard deviation of the support labels, log10 of the relative
    size of the last weight update, log10 of how far the last step moved the query
    predictions (mean squared change; it uses the query inputs, never their labels),
    ``log10 K``, the task's support-noise level ``noise_std`` (an input of the task), and
    log10 of the support MSE over the noise variance (below 0: the step fits the noise).
    ``extras["change"]`` (the update size) feeds the convergence-threshold heuristic.
    With ``features: lean``, 11: the same less the query shift, with the support MSE
    before each step (which the step computes) in place of the one after it, so that
    neither ``initial_state`` nor ``layer`` runs a forward pass of its own and the
    query predictions are computed in ``readout`` only.
    """

    display_name = "MAML"
    feature_shape = (12,)

    def __init__(self, cfg: MamlConfig, task: MetaLearningTask) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_layers = cfg.num_layers
        self.lean = cfg.features == "lean"
        if self.lean:
            self.feature_shape = (11,)
            self.features_use_prediction = False
        self.k_max = task.cfg.k_max
        widths = [1, *cfg.hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], 1))
        self.net = nn.Sequential(*layers)
        self.param_names = [name for name, _ in self.net.named_parameters()]
        self.base_lr = float(cfg.inner_lr)
        self.inner_grad_clip = float(cfg.inner_grad_clip)
        # The learned rates live in log space, lr = inner_lr * exp(log_lr_scale): they stay
        # positive, and an optimiser step changes them by a bounded factor rather than by
        # an absolute amount that can push the inner SGD into divergence.
        scale = torch.zeros(cfg.num_layers, len(self.param_names))
        if cfg.learn_inner_lr:
            self.log_lr_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_lr_scale", scale)
        # One task's support loss, and its batched (over tasks) forms.
        self._batched_loss = vmap(self._support_loss)
        self._batched_grad = vmap(grad_and_value(self._support_loss))
        self._batched_forward = vmap(self._forward)

    # --- one task, functional in the fast weights ------------------------------------------
    def _forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(self.net, params, (x,))

    def _support_loss(
        self, params: dict[str, Tensor], x: Tensor, y: Tensor, mask: Tensor
    ) -> Tensor:
        return masked_mse(self._forward(params, x), y, mask)

    def _params(self, state: State) -> dict[str, Tensor]:
        return {n: state[n] for n in self.param_names}  # type: ignore[index]

    def inner_lr(self, t: int) -> Tensor:
        """The inner learning rates of step ``t`` (0-based), one per weight tensor."""
        return self.base_lr * self.log_lr_scale[t].exp()

    def _initial_params(self, b: int) -> dict[str, Tensor]:
        # expand, not copy: every task starts from the meta-learned weights, and the
        # gradient of every task's loss flows back into them.
        return {n: p.unsqueeze(0).expand(b, *p.shape) for n, p in self.net.named_parameters()}

    # --- the protocol -------------------------------------------------------------------
    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        params = self._initial_params(inputs["support_x"].shape[0])
        if self.lean:  # the step's own loss gives every statistic the features need
            return params
        with torch.no_grad():
            loss = self._batched_loss(
                params, inputs["support_x"], inputs["support_y"], inputs["support_mask"]
            )
            query = self._batched_forward(params, inputs["query_x"]).squeeze(-1)
        zeros = torch.zeros_like(loss)
        return {
            **params,
            _QUERY: query,
            _QUERY_SHIFT: zeros,
            _LOSS: loss,
            _LOSS_PREV: loss,
            _LOSS_INIT: loss,
            _CHANGE: zeros,
        }

    def _step(
        self, t: int, params: dict[str, Tensor], inputs: dict[str, Tensor]
    ) -> tuple[dict[str, Tensor], Tensor]:
        """Inner step ``t`` of every task: the new fast weights, and the support loss before."""
        sx, sy, mask = inputs["support_x"], inputs["support_y"], inputs["support_mask"]
        grads, loss_before = self._batched_grad(params, sx, sy, mask)
        if self.inner_grad_clip > 0:
            # Per-task norm clipping: a 1-shot task's curvature can make a step that suits
            # 10-shot tasks blow up (the MLP's loss is a high-degree polynomial in its
            # weights), and one diverged task would turn the whole meta-batch into NaN.
            # The epsilon inside the root keeps its backward finite when a task fits its
            # support exactly (a 1-shot task does, within a few steps) and the gradient is 0.
            sq = sum(g.pow(2).flatten(1).sum(1) for g in grads.values())
            factor = (self.inner_grad_clip / torch.sqrt(sq + 1e-12)).clamp(max=1.0)
            grads = {n: g * factor.view(-1, *([1] * (g.dim() - 1))) for n, g in grads.items()}
        lr = self.inner_lr(t)
        new = {}
        for i, name in enumerate(self.param_names):
            g = grads[name].detach() if self.cfg.first_order else grads[name]
            new[name] = params[name] - lr[i] * g
        return new, loss_before

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        sx, sy, mask = inputs["support_x"], inputs["support_y"], inputs["support_mask"]
        params = self._params(state)
        new, loss_before = self._step(t, params, inputs)
        if self.lean:
            return self._lean_state(t, state, params, new, loss_before)
        # One forward over support and query points together: the query part is the
        # read-out, the support part gives the support loss after the step (a feature).
        p = sx.shape[1]
        out = self._batched_forward(new, torch.cat([sx, inputs["query_x"]], dim=1)).squeeze(-1)
        with torch.no_grad():
            err = (out[:, :p] - sy.squeeze(-1)).pow(2) * mask
            loss_after = err.sum(1) / mask.sum(1).clamp_min(1.0)
            shift = (out[:, p:] - state[_QUERY]).pow(2).mean(1)  # type: ignore[index]
        return {
            **new,
            _QUERY: out[:, p:],
            _QUERY_SHIFT: shift,
            _LOSS: loss_after,
            _LOSS_PREV: loss_before.detach(),
            _LOSS_INIT: state[_LOSS_INIT],  # type: ignore[index]
            _CHANGE: _update_size(params, new),
        }

    def _lean_state(
        self, t: int, state: State, params: dict[str, Tensor], new: dict[str, Tensor], loss: Tensor
    ) -> State:
        """``features: lean``: the new fast weights and what the step computed anyway."""
        loss = loss.detach()
        first = t == 0
        return {
            **new,
            _LOSS_PREV: loss,  # at the weights before this step
            _LOSS_BEFORE_PREV: loss if first else state[_LOSS_PREV],  # type: ignore[index]
            _LOSS_INIT: loss if first else state[_LOSS_INIT],  # type: ignore[index]
            _CHANGE: _update_size(params, new),
        }

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        if self.lean:  # the query points through the adapted network, here only
            return self._batched_forward(self._params(state), inputs["query_x"]).squeeze(-1)
        # Computed in ``layer`` together with the support loss (one forward, not two).
        return state[_QUERY]  # type: ignore[index]

    def predict_full_depth(self, inputs: dict[str, Tensor]) -> Tensor:
        # MAML without a stop policy: T inner steps, then the query points through the
        # adapted network once. ``layer`` also runs the support and query points through
        # the network after every step (the read-out and the policy's features, which
        # need it at every step), and ``initial_state`` once more at the initial weights
        # (the features' reference): at paper scale those forwards cost about twice the
        # steps themselves.
        params = self._initial_params(inputs["support_x"].shape[0])
        for t in range(self.num_layers):
            params, _ = self._step(t, params, inputs)
        return self._batched_forward(params, inputs["query_x"]).squeeze(-1)

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor | None
    ) -> Tensor:
        if self.lean:
            # The support loss before this step (after the previous one) stands in for the
            # loss after it, the loss before the previous step for the one before; no
            # query shift.
            loss, prev = state[_LOSS_PREV], state[_LOSS_BEFORE_PREV]  # type: ignore[index]
            shift = None
        else:
            loss, prev = state[_LOSS], state[_LOSS_PREV]  # type: ignore[index]
            shift = torch.log10(state[_QUERY_SHIFT] + 1e-12)  # type: ignore[index]
        init = state[_LOSS_INIT]  # type: ignore[index]
        mask = inputs["support_mask"]
        y = inputs["support_y"].squeeze(-1)
        k = mask.sum(1).clamp_min(1.0)
        mean = (y * mask).sum(1) / k
        std = (((y - mean.unsqueeze(1)) * mask).pow(2).sum(1) / k).sqrt()
        eps = 1e-6
        kk = inputs["k"].to(loss.dtype)
        noise = inputs["noise_std"].to(loss.dtype)
        columns = [
            torch.log10(loss + eps),
            torch.log10((loss + eps) / (prev + eps)),
            torch.log10((loss + eps) / (init + eps)),
            kk / self.k_max,
            torch.full_like(loss, (t + 1) / self.num_layers),
            mean,
            std,
            torch.log10(state[_CHANGE] + 1e-12),  # type: ignore[index]
            *([shift] if shift is not None else []),
            torch.log10(kk.clamp_min(1.0)),
            noise,
            torch.log10((loss + eps) / (noise.pow(2) + 0.01)),
        ]
        return torch.stack(columns, dim=1)

    def extras(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        return {"change": state[_CHANGE]}  # type: ignore[index]
