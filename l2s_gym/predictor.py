"""The LayeredPredictor protocol and the Trace of a full layer-by-layer pass."""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from l2s_gym.task import Batch, Task

State = Tensor | dict[str, Tensor]


def map_state(fn: Callable[[Tensor], Tensor], state: State) -> State:
    """Apply ``fn`` to every tensor of a state (a tensor or a dict of tensors)."""
    if isinstance(state, Tensor):
        return fn(state)
    return {k: fn(v) for k, v in state.items()}


def select_rows(state: State, index: Tensor) -> State:
    """Rows ``index`` of every tensor of a state (or of an inputs dict), in that order.

    ``index_select``, not ``x[index]``: the same rows, several times faster on a CPU."""
    return map_state(lambda x: x.index_select(0, index), state)


def zip_state(fn: Callable[[Tensor, Tensor], Tensor], a: State, b: State) -> State:
    """Combine two states of the same structure tensor by tensor."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor)
        return fn(a, b)
    assert isinstance(b, dict)
    return {k: fn(v, b[k]) for k, v in a.items()}


@dataclass
class Trace:
    """Everything one batched full pass yields, per sample and per layer.

    Attributes:
        losses: ``(B, T)`` per-sample loss after each layer (drives the oracle).
        metric_stats: ``(B, T)`` per-sample metric statistic after each layer.
        features: ``(B, T, *feature_shape)`` what the stop policy sees at each layer.
        groups: ``(B,)`` group id of each instance (see ``Task.group_names``).
        extras: further ``(B, T)`` per-layer quantities (e.g. ``"confidence"``).
        predictions: per-layer read-outs, kept only when asked for.
    """

    losses: Tensor
    metric_stats: Tensor
    features: Tensor
    groups: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    predictions: list[Tensor] | None = None

    @property
    def num_layers(self) -> int:
        return int(self.losses.shape[1])

    def __len__(self) -> int:
        return int(self.losses.shape[0])

    def to_dict(self, with_features: bool = True) -> dict[str, Tensor | dict[str, Tensor]]:
        """Tensors on the CPU, for ``torch.save`` (``weights_only`` loads it back);
        ``with_features=False`` stores an empty features tensor. The predictions are
        not kept."""
        return {
            "losses": self.losses.detach().cpu(),
            "metric_stats": self.metric_stats.cpu(),
            "features": self.features.cpu() if with_features else torch.zeros(0),
            "groups": self.groups.cpu(),
            "extras": {k: v.cpu() for k, v in self.extras.items()},
        }

    @staticmethod
    def from_dict(data: dict, device: torch.device | str = "cpu") -> Trace:
        """``to_dict``'s inverse, on ``device``."""
        return Trace(
            losses=data["losses"].to(device),
            metric_stats=data["metric_stats"].to(device),
            features=data["features"].to(device),
            groups=data["groups"].to(device),
            extras={k: v.to(device) for k, v in data["extras"].items()},
        )

    @staticmethod
    def cat(traces: list[Trace]) -> Trace:
        preds = None
        if all(t.predictions is not None for t in traces):
            preds = [
                torch.cat([t.predictions[i] for t in traces])  # type: ignore[index]
                for i in range(traces[0].num_layers)
            ]
        return Trace(
            losses=torch.cat([t.losses for t in traces]),
            metric_stats=torch.cat([t.metric_stats for t in traces]),
            features=torch.cat([t.features for t in traces]),
            groups=torch.cat([t.groups for t in traces]),
            extras={k: torch.cat([t.extras[k] for t in traces]) for k in traces[0].extras},
            predictions=preds,
        )


class LayeredPredictor(nn.Module, abc.ABC):
    """A predictive model with ``num_layers`` layers and a read-out after every layer.

    Layer indices are 0-based: ``layer(t, ...)`` computes layer ``t + 1`` of the paper,
    and the read-out and policy features at index ``t`` describe the state after it.
    A state is a tensor or a dict of tensors, each with the batch as leading dimension.

    Implement ``initial_state``, ``layer``, ``readout`` and ``policy_features``; set
    ``num_layers``, ``feature_shape`` and ``display_name``. Override ``policy_encoder``
    if the features are not a flat vector (e.g. images), ``extras`` to expose
    per-layer quantities heuristics can use (e.g. ``"confidence"``), and ``layer_costs``
    if layers differ in cost.
    """

    display_name: str = "Predictor"
    num_layers: int
    feature_shape: tuple[int, ...]
    features_use_prediction: bool = True
    """Whether ``policy_features`` reads its ``prediction`` argument. Set it to false when
    they do not (and ``readout`` does the read-out's work rather than ``layer``): then
    ``StopRunner`` passes ``None`` and reads out only the instances that stop, after the
    policy decided, instead of every active instance after every layer."""

    @abc.abstractmethod
    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        """``x_0``, built from the inputs."""

    @abc.abstractmethod
    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        """Layer ``t + 1``: ``x_{t+1} = f_{t+1}(x_t)``."""

    @abc.abstractmethod
    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        """The prediction after layer ``t + 1``."""

    @abc.abstractmethod
    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        """``(B, *feature_shape)`` features the stop policy sees after layer ``t + 1``.

        They must not use the targets: the policy runs at test time without labels.
        """

    def chunk_policy_features(
        self,
        t0: int,
        states: Sequence[State],
        inputs: dict[str, Tensor],
        predictions: Sequence[Tensor],
    ) -> Tensor:
        """``(B, k, *feature_shape)``: ``policy_features`` of ``k`` consecutive layers.

        ``states[i]`` and ``predictions[i]`` are those after layer ``t0 + i``. Used by
        ``StopRunner(..., lookahead=k)``, which asks the policy once per ``k`` layers. The
        default calls ``policy_features`` once per layer and stacks the results. Override
        it where one computation over the stacked states is cheaper: at small batches a
        feature computation costs its kernel launches, not its arithmetic. An override
        must return what the default returns (``l2s_gym.testing.check_chunk_features``).
        """
        return torch.stack(
            [
                self.policy_features(t0 + i, state, inputs, pred)
                for i, (state, pred) in enumerate(zip(states, predictions, strict=True))
            ],
            dim=1,
        )

    def predict_full_depth(self, inputs: dict[str, Tensor]) -> Tensor:
        """The prediction after all ``T`` layers, computed as a model without a stop policy
        would compute it: the baseline early exit is timed against
        (``l2s_gym.runner.run_full_depth``).

        The default runs ``initial_state``, the ``T`` layers and the last ``readout``.
        Override it where ``layer`` also computes what only the read-out or the policy
        features after every layer need (MAML's query predictions after each inner step,
        SDN's exit after each block, DnCNN's estimate after each layer): a deployed
        full-depth model skips that work, and a baseline that pays it makes early exit
        look faster than it is. An override must return ``readout`` of the last layer up
        to float rounding (``l2s_gym.testing.check_full_depth``).
        """
        state = self.initial_state(inputs)
        for t in range(self.num_layers):
            state = self.layer(t, state, inputs)
        return self.readout(self.num_layers - 1, state, inputs)

    def carried_state(self, state: State) -> State:
        """The part of the state after a layer that the next ``layer`` call reads.

        ``StopRunner`` compacts (indexes by the rows still going) only this part when
        instances stop; the rest is never read again. The default is the whole state.
        Override it where the state also holds what only the policy features or the
        read-out of *this* layer use and the next layer recomputes (sparse recovery's
        ``x_prev`` and ``r_prev``): at large batches compaction is a copy of the state.
        ``l2s_gym.testing.check_carried_state`` checks an override.
        """
        return state

    def policy_encoder(self) -> nn.Module | None:
        """A module mapping ``(N, *feature_shape)`` to ``(N, D)``; ``None`` flattens."""
        return None

    def extras(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        """Further per-sample quantities after layer ``t + 1`` (default: none)."""
        return {}

    def layer_costs(self) -> Tensor | None:
        """Relative compute of each layer and its read-out, ``(T,)`` positive (e.g. FLOPs).

        ``None`` (the default): every layer costs the same. Costs are rescaled to mean 1
        (``l2s_gym.stopping.cumulative_costs``), so a price ``lambda`` per layer keeps its
        meaning, "loss per average layer", whatever the units given here.
        """
        return None

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def check_protocol(self) -> None:
        """Raise ``ValueError`` naming what is wrong if the declared shape is unusable."""
        if not isinstance(getattr(self, "num_layers", None), int) or self.num_layers < 1:
            raise ValueError(
                f"{type(self).__name__}.num_layers must be an int >= 1, "
                f"got {getattr(self, 'num_layers', None)!r}"
            )
        shape = getattr(self, "feature_shape", None)
        if not isinstance(shape, tuple) or not shape or not all(int(s) > 0 for s in shape):
            raise ValueError(
                f"{type(self).__name__}.feature_shape must be a non-empty tuple of "
                f"positive ints, got {shape!r}"
            )

    def forward_step(
        self, t: Tensor, state: State, inputs: dict[str, Tensor]
    ) -> tuple[State, Tensor, Tensor]:
        """One batched step where each instance may be at a different layer.

        Args:
            t: ``(B,)`` long, the 0-based index of the layer each instance computes next.

        Returns:
            The new state, the prediction and the policy features after that layer.
            Instances are grouped by layer, so the cost is one call per distinct ``t``.
        """
        values = torch.unique(t)
        if values.numel() == 1:
            ti = int(values.item())
            new = self.layer(ti, state, inputs)
            pred = self.readout(ti, new, inputs)
            return new, pred, self.policy_features(ti, new, inputs, pred)
        new_state: State | None = None
        pred_out: Tensor | None = None
        feat_out: Tensor | None = None
        for value in values.tolist():
            idx = torch.nonzero(t == value).squeeze(1)
            sub_in = {k: v[idx] for k, v in inputs.items()}
            sub_state = map_state(lambda x, i=idx: x[i], state)
            s = self.layer(value, sub_state, sub_in)
            p = self.readout(value, s, sub_in)
            f = self.policy_features(value, s, sub_in, p)
            if new_state is None:
                new_state = map_state(lambda x: x.clone(), state)
                pred_out = p.new_empty((t.shape[0], *p.shape[1:]))
                feat_out = f.new_empty((t.shape[0], *f.shape[1:]))
            zip_state(lambda dst, src, i=idx: dst.index_copy_(0, i, src), new_state, s)
            pred_out.index_copy_(0, idx, p)  # type: ignore[union-attr]
            feat_out.index_copy_(0, idx, f)  # type: ignore[union-attr]
        return new_state, pred_out, feat_out  # type: ignore[return-value]

    def trace(
        self,
        batch: Batch,
        task: Task,
        keep_predictions: bool = False,
        with_features: bool = True,
    ) -> Trace:
        """Run all layers on ``batch`` and record losses, metric statistics and features.

        Gradients flow into ``losses`` (for stage-1 training); features, metric
        statistics and extras are detached. ``with_features=False`` skips the policy
        features and extras (stage 1 needs only the losses); ``features`` is then empty.
        """
        state = self.initial_state(batch.inputs)
        losses, stats, feats, preds = [], [], [], []
        extras: dict[str, list[Tensor]] = {}
        for t in range(self.num_layers):
            state = self.layer(t, state, batch.inputs)
            pred = self.readout(t, state, batch.inputs)
            losses.append(task.loss(pred, batch.targets))
            with torch.no_grad():
                stats.append(task.metric_stat(pred.detach(), batch.targets))
                if with_features:
                    feats.append(
                        self.policy_features(t, state, batch.inputs, pred.detach()).detach()
                    )
                    for k, v in self.extras(t, state, batch.inputs, pred.detach()).items():
                        extras.setdefault(k, []).append(v.detach())
            if keep_predictions:
                preds.append(pred.detach())
        return Trace(
            losses=torch.stack(losses, dim=1),
            metric_stats=torch.stack(stats, dim=1),
            features=torch.stack(feats, dim=1) if feats else losses[0].new_zeros(0),
            groups=batch.groups,
            extras={k: torch.stack(v, dim=1) for k, v in extras.items()},
            predictions=preds if keep_predictions else None,
        )

    @torch.no_grad()
    def trace_eval(self, batch: Batch, task: Task, chunk_size: int = 1024) -> Trace:
        """``trace`` without gradients, in chunks, for evaluation sets."""
        was_training = self.training
        self.eval()
        try:
            return Trace.cat([self.trace(b, task) for b in batch.chunks(chunk_size)])
        finally:
            self.train(was_training)
