"""A toy task and predictor whose best stop layer is known exactly, for tests and examples.

Each instance carries a hidden best layer ``b`` in ``1..T``. The predictor's read-out after
layer ``t`` is ``t`` itself, and the loss is ``((t - b) / T)^2 * scale``: minimal exactly at
``b``. The policy features reveal ``b`` (noisily, if ``feature_noise > 0``), so a good stop
policy stops at ``b`` and the oracle bound is a loss of zero. Stage 1 has nothing to
learn except one dummy scale parameter, which makes end-to-end runs take seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from l2s_gym.config import positive
from l2s_gym.predictor import LayeredPredictor, State, select_rows
from l2s_gym.registry import register_learner, register_predictor, register_task
from l2s_gym.task import Batch, Task


@dataclass
class ToyTaskConfig:
    num_layers: int = 6
    """Range of the hidden best layer (1..num_layers); match the predictor's num_layers."""
    feature_noise: float = 0.0
    val_size: int = 256
    test_size: int = 256

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers", "val_size", "test_size")


@register_task("toy", ToyTaskConfig)
class ToyTask(Task):
    """Instances with a known best stop layer; metric: mean squared layer error (lower better)."""

    name = "toy"
    metric_name = "toy loss"
    higher_is_better = False
    group_title = "half"
    group_names = ["best layer in first half", "best layer in second half"]
    default_predictor = "toy_counter"

    def __init__(self, cfg: ToyTaskConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg

    def _draw(self, n: int, gen: torch.Generator) -> Batch:
        T = self.cfg.num_layers
        best = torch.randint(1, T + 1, (n,), generator=gen, device=gen.device)
        noise = torch.randn(n, generator=gen, device=gen.device) * self.cfg.feature_noise
        hint = best.float() / T + noise
        groups = (best > (T + 1) // 2).long()
        return Batch({"hint": hint.unsqueeze(1)}, best.float(), groups)

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._draw(batch_size, generator)

    def make_eval_set(self, split: str) -> Batch:
        size = self.cfg.val_size if split == "val" else self.cfg.test_size
        gen = self.generator(1 if split == "val" else 2, device="cpu")
        return self._draw(size, gen).to(self.device)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return ((prediction - targets) / self.cfg.num_layers) ** 2

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)


@dataclass
class ToyPredictorConfig:
    num_layers: int = 6
    learnable: bool = True
    """False: the scale is a fixed buffer and the predictor has no parameters at all (a
    solver with nothing to train: stage 1 is skipped)."""

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers")


@register_predictor("toy_counter", ToyPredictorConfig, task="toy")
class ToyCounter(LayeredPredictor):
    """Counts layers; its read-out after layer ``t`` is ``t`` (times a learnable 1.0)."""

    display_name = "Toy"
    feature_shape = (2,)

    def __init__(self, cfg: ToyPredictorConfig, task: Task | None = None) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        if cfg.learnable:
            self.scale = nn.Parameter(torch.ones(()))
        else:
            self.register_buffer("scale", torch.ones(()))

    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        return inputs["hint"].new_zeros(inputs["hint"].shape[0])

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        return state + self.scale  # type: ignore[operator]

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        return state  # type: ignore[return-value]

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        hint = inputs["hint"][:, 0]
        return torch.stack([hint, prediction / self.num_layers - hint], dim=1)


FAILING_LOG = "failing_attempts.log"


@register_learner("failing", "always fails")
def failing_learner(ctx):  # noqa: ANN001, ANN201
    """A learner that always raises, for tests of how the runners retry a failed trial and
    report it. Each attempt appends its trial folder to ``<run>/failing_attempts.log``."""
    run_root = ctx.run_dir.parents[2]  # <run>/seed-S/failing/cost-C
    with open(run_root / FAILING_LOG, "a") as log:
        log.write(ctx.run_dir.relative_to(run_root).as_posix() + "\n")
    raise RuntimeError("the failing learner failed, as it always does")


def _close(got: Tensor, want: Tensor, rtol: float, atol: float) -> bool:
    """The same shape and equal to float rounding."""
    return got.shape == want.shape and torch.allclose(got, want, rtol=rtol, atol=atol)


@contextmanager
def _in_eval_mode(predictor: LayeredPredictor) -> Iterator[None]:
    """The predictor in eval mode for the block, then back in the mode it was in."""
    was_training = predictor.training
    predictor.eval()
    try:
        yield
    finally:
        predictor.train(was_training)


@torch.no_grad()
def check_chunk_features(
    predictor: LayeredPredictor,
    inputs: dict[str, Tensor],
    chunks: tuple[int, ...] = (2, 3),
    rtol: float = 1e-5,
    atol: float = 1e-6,
) -> None:
    """Check a predictor's ``chunk_policy_features`` against its per-layer features.

    Runs ``inputs`` through all layers and, for each chunk size ``k`` in ``chunks``, compares
    ``chunk_policy_features`` on every run of ``k`` consecutive layers with the stacked
    ``policy_features`` of those layers (what ``StopRunner(..., lookahead=k)`` relies on).
    Raises ``AssertionError`` naming the first layer where they differ. Use it in the tests
    of a predictor that overrides ``chunk_policy_features``.
    """
    with _in_eval_mode(predictor):
        state = predictor.initial_state(inputs)
        states: list[State] = []
        preds: list[Tensor] = []
        for t in range(predictor.num_layers):
            state = predictor.layer(t, state, inputs)
            states.append(state)
            preds.append(predictor.readout(t, state, inputs))
        each = [
            predictor.policy_features(t, s, inputs, p)
            for t, (s, p) in enumerate(zip(states, preds, strict=True))
        ]
        for k in chunks:
            for t0 in range(0, predictor.num_layers, k):
                got = predictor.chunk_policy_features(
                    t0, states[t0 : t0 + k], inputs, preds[t0 : t0 + k]
                )
                want = torch.stack(each[t0 : t0 + k], dim=1)
                if not _close(got, want, rtol, atol):
                    raise AssertionError(
                        f"{type(predictor).__name__}.chunk_policy_features differs from "
                        f"policy_features at layers {t0}..{t0 + len(want[0]) - 1} "
                        f"(chunk size {k}): shape {tuple(got.shape)} vs {tuple(want.shape)}"
                    )


@torch.no_grad()
def check_carried_state(predictor: LayeredPredictor, inputs: dict[str, Tensor]) -> None:
    """Check a predictor's ``carried_state``: the next layer must not need what it drops.

    Runs ``inputs`` through all layers twice, once passing each layer the full state and
    once only ``carried_state`` of it, and requires equal read-outs and policy features
    after every layer (what ``StopRunner`` relies on when it compacts only the carried
    part). Raises ``AssertionError`` naming the first layer where they differ.
    """
    with _in_eval_mode(predictor):
        full = predictor.initial_state(inputs)
        carried = full
        for t in range(predictor.num_layers):
            full = predictor.layer(t, full, inputs)
            carried = predictor.layer(t, predictor.carried_state(carried), inputs)
            want = predictor.readout(t, full, inputs)
            got = predictor.readout(t, carried, inputs)
            for what, a, b in (
                ("read-out", want, got),
                (
                    "policy features",
                    predictor.policy_features(t, full, inputs, want),
                    predictor.policy_features(t, carried, inputs, got),
                ),
            ):
                if not torch.equal(a, b):
                    raise AssertionError(
                        f"{type(predictor).__name__}.carried_state drops what layer {t} needs: "
                        f"its {what} after that layer differ"
                    )


@torch.no_grad()
def check_full_depth(
    predictor: LayeredPredictor, inputs: dict[str, Tensor], rtol: float = 1e-5, atol: float = 1e-5
) -> None:
    """Check ``predict_full_depth`` against the read-out of the last layer of a full pass.

    Raises ``AssertionError`` when they differ by more than float rounding. Use it in the
    tests of a predictor that overrides ``predict_full_depth``.
    """
    with _in_eval_mode(predictor):
        # The protocol's own full pass (the base class's method): T layers, last read-out.
        want = LayeredPredictor.predict_full_depth(predictor, inputs)
        got = predictor.predict_full_depth(inputs)
        if not _close(got, want, rtol, atol):
            raise AssertionError(
                f"{type(predictor).__name__}.predict_full_depth differs from the last read-out "
                f"of its layers: shape {tuple(got.shape)} vs {tuple(want.shape)}, largest "
                f"difference {float((got - want).abs().max()) if got.shape == want.shape else 'n/a'}"
            )


@torch.no_grad()
def check_lazy_readout(
    predictor: LayeredPredictor, inputs: dict[str, Tensor], rtol: float = 1e-5, atol: float = 1e-6
) -> None:
    """Check a predictor that sets ``features_use_prediction = False``: after every layer
    its policy features must be the same with ``prediction=None`` as with the read-out,
    and the read-out of a subset of the instances (what ``StopRunner`` computes for those
    that stop) must equal those rows of the read-out of all (to float rounding: another
    row count may round differently). Does nothing for a predictor that reads its
    prediction. Raises ``AssertionError`` naming the first layer where a check fails.
    """
    if predictor.features_use_prediction:
        return
    name = type(predictor).__name__
    with _in_eval_mode(predictor):
        state = predictor.initial_state(inputs)
        first = next(iter(inputs.values()))
        rows = torch.arange(0, first.shape[0], 2, device=first.device)
        for t in range(predictor.num_layers):
            state = predictor.layer(t, state, inputs)
            pred = predictor.readout(t, state, inputs)
            if not torch.equal(
                predictor.policy_features(t, state, inputs, pred),
                predictor.policy_features(t, state, inputs, None),  # type: ignore[arg-type]
            ):
                raise AssertionError(
                    f"{name}.features_use_prediction is False, but its policy features after "
                    f"layer {t} change with the prediction"
                )
            part = predictor.readout(t, select_rows(state, rows), select_rows(inputs, rows))  # type: ignore[arg-type]
            if not _close(part, pred[rows], rtol, atol):
                raise AssertionError(
                    f"{name}.readout of some instances after layer {t} differs from those "
                    "rows of the read-out of all: with features_use_prediction False the "
                    "runner reads out only the instances that stop"
                )
