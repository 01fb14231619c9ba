"""Early exit: run a trained stop policy and compute only the layers it keeps.

Evaluation (``l2s_gym.evaluation``) runs all ``T`` layers and reads each instance's stop
layer out of the trace afterwards; its "average layers" is a count. ``StopRunner`` is the
deployed form: it runs a batch layer by layer, asks the policy after each layer, and
drops the instances that stopped, so layer ``t + 1`` runs only on the instances still
going. Its stop layers are the trace's (same predictor, same policy, same read-out rule:
``tests/test_runner.py`` checks it on every family; ``tests/test_fast_paths.py``, the
fast paths it relies on).

``run_full_depth`` is the baseline it is timed against. ``l2s_gym.predict`` runs a run
folder's stop model through the runner (``l2s predict``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor, State, select_rows
from l2s_gym.rules import PAPER_RULE, ReadoutRule
from l2s_gym.task import Batch


@dataclass
class RunnerOutput:
    """What ``StopRunner`` returns for a batch of ``B`` instances.

    Attributes:
        predictions: ``(B, *prediction_shape)``, each instance's read-out at its stop layer.
        stop: ``(B,)`` long, the **0-based** stop index, as everywhere in the library
            (``l2s_gym.rules``, ``l2s_gym.evaluation``): ``0`` stops after layer 1, so the
            instance computed ``stop + 1`` layers (``layers``).
        stop_probabilities: ``(B, T)`` when asked for: ``pi_t``, the policy's probability of
            stopping at each layer the instance reached (``1`` at the last layer, which
            always stops), ``NaN`` at the layers it never reached; else ``None``.
    """

    predictions: Tensor
    stop: Tensor
    stop_probabilities: Tensor | None = None

    @property
    def layers(self) -> Tensor:
        """``(B,)`` layers computed per instance (``stop + 1``, 1-based)."""
        return self.stop + 1

    @property
    def avg_layers(self) -> float:
        """Mean layers computed per instance (reading it synchronises with the device)."""
        return float(self.layers.double().mean()) if self.stop.numel() else math.nan


def _inputs_of(batch: Batch | dict[str, Tensor]) -> dict[str, Tensor]:
    return batch.inputs if isinstance(batch, Batch) else dict(batch)


def _where_stopped(stop: Tensor, first: int | Tensor, otherwise: int) -> int | Tensor:
    """The layer in a chunk where each row stops: ``first`` where ``stop``, else
    ``otherwise`` (an int ``first``: the chunk's one layer, for every row)."""
    if isinstance(first, int):
        return first
    return torch.where(stop, first, torch.full_like(first, otherwise))


def _batch_size(inputs: dict[str, Tensor]) -> int:
    sizes = {int(v.shape[0]) for v in inputs.values()}
    if len(sizes) != 1:
        raise ValueError(f"inputs disagree on the batch size: {sorted(sizes)}")
    return sizes.pop()


class _Laps:
    """Wall time per part of the runner's loop, for ``StopRunner(..., profile=dict)``."""

    def __init__(self, parts: dict[str, float], device: torch.device) -> None:
        self.parts, self.device = parts, device
        self.last = self._now()

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def __call__(self, part: str) -> None:
        now = self._now()
        self.parts[part] = self.parts.get(part, 0.0) + now - self.last
        self.last = now


class _NoLaps:
    """``_Laps`` doing nothing: the runner's loop when no profile is asked for."""

    def __call__(self, part: str) -> None:
        pass


_NO_LAPS = _NoLaps()


class StopRunner:
    """Run a frozen predictor with early exit: each instance stops where its policy says.

    After layer ``t`` the runner computes the policy features of the instances still
    active (``predictor.policy_features``), their stop logits (``policy.layer_logits``:
    ``policy.forward``'s function with fewer kernels, equal to float rounding; its weights
    read once per batch) and applies ``rule``
    causally (``ReadoutRule.stop_now``; for ``sample``, a Bernoulli draw with ``pi_t``
    from ``generator``). Instances that stop keep the read-out of layer ``t``; the others
    are compacted (state and inputs indexed by the rows still going) and only they run
    layer ``t + 1``. The last layer always stops, without asking the policy.

    No labels, no trace. Host synchronisation: one per layer (the number of instances
    that stopped, needed to size the compaction), none per instance. Everything runs
    under ``torch.inference_mode``; both modules are put in eval mode (BatchNorm uses its
    running statistics, so an instance's computation does not depend on its batch).

    Args:
        predictor: the trained ``LayeredPredictor``.
        policy: its trained ``StopPolicy``.
        rule: the read-out chosen on validation (a policy checkpoint's ``readout``:
            ``ReadoutRule.from_dict(ckpt["readout"])``); default the paper's rule.
        generator: random stream of the ``sample`` rule (on the predictor's device).
        lookahead: ``k``, the layers run between two questions to the policy. ``1`` (the
            default) asks after every layer. With ``k > 1`` the active instances run ``k``
            layers, then the policy sees the ``k`` states at once
            (``predictor.chunk_policy_features`` and ``policy.chunk_logits``: one feature
            computation, one MLP call, one host synchronisation per ``k`` layers) and each
            instance stops at the first of them where the rule says stop. The stop layers
            are the same as with ``k = 1`` (the rule is applied layer by layer, causally);
            an instance that stops early in a chunk has computed up to ``k - 1`` layers
            it does not use. At small batches, where a layer and a policy call both cost
            their kernel launches, this trades those wasted layers for fewer calls; at
            large batches ``k = 1`` is the fast choice. The ``sample`` rule's draws come
            from the generator in another order than with ``k = 1``.
    """

    def __init__(
        self,
        predictor: LayeredPredictor,
        policy: StopPolicy,
        rule: ReadoutRule = PAPER_RULE,
        generator: torch.Generator | None = None,
        lookahead: int = 1,
    ) -> None:
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 1:
            raise ValueError(f"lookahead must be a whole number >= 1, got {lookahead!r}")
        if policy.num_layers != predictor.num_layers:
            raise ValueError(
                f"the policy was built for {policy.num_layers} layers, "
                f"the predictor has {predictor.num_layers}"
            )
        self.predictor = predictor.eval()
        self.policy = policy.eval()
        self.rule = rule
        self.generator = generator
        self.num_layers = int(predictor.num_layers)
        self.lookahead = lookahead
        # The chunks of k layers (the last may be shorter): each one's first layer and layers.
        T = self.num_layers
        self._chunks = [(t0, range(t0, min(t0 + lookahead, T))) for t0 in range(0, T, lookahead)]
        value = rule.value if rule.kind == "threshold" else 0.5
        self._threshold_logit = math.log(value / (1.0 - value))
        self._log_quantile = math.log1p(-rule.value) if rule.kind == "quantile" else 0.0

    def _decide(self, logit: Tensor, log_survival: Tensor) -> tuple[Tensor, Tensor]:
        """``ReadoutRule.stop_now`` after one layer, its bounds computed once (this runs
        after every layer; at batch 1 its Python costs as much as a kernel launch)."""
        kind = self.rule.kind
        if kind == "threshold":
            # Needs no survival (stop_now's comparison, without its logsigmoid and sum).
            return logit > self._threshold_logit, log_survival
        if kind == "sample":
            draw = torch.rand(
                logit.shape, generator=self.generator, device=logit.device, dtype=logit.dtype
            )
            return draw < torch.sigmoid(logit), log_survival
        # quantile: stop_now's sum and comparison.
        log_survival = log_survival + torch.nn.functional.logsigmoid(-logit)
        return log_survival <= self._log_quantile, log_survival

    @torch.inference_mode()
    def __call__(
        self,
        batch: Batch | dict[str, Tensor],
        return_probabilities: bool = False,
        profile: dict[str, float] | None = None,
    ) -> RunnerOutput:
        """Run ``batch`` (a ``Batch`` or its inputs dict) with early exit.

        ``profile``: a dict to which the wall time (seconds) of each part of the loop is
        added: ``layer``, ``readout`` (what the full-depth predictor computes too, though it
        reads out only once), ``features``, ``policy``, ``decide`` (the rule and the
        layer's host synchronisation) and ``compact`` (writing out the stopped instances,
        indexing the others; with a predictor whose ``features_use_prediction`` is false,
        also reading out the stopped instances). On a GPU it synchronises after each part,
        which costs time of its own: profile separately from timing.
        """
        predictor = self.predictor
        device = predictor.device
        # The bound method: a no-op's call costs a third of an instance's (at batch 1 a
        # layer is a few kernel launches, and the loop calls it five times a layer).
        lap = (_Laps(profile, device) if profile is not None else _NO_LAPS).__call__
        inputs = {k: v.to(device) for k, v in _inputs_of(batch).items()}
        n = _batch_size(inputs)
        T, k = self.num_layers, self.lookahead
        out = _Outputs(n, T, device, return_probabilities)
        active = torch.arange(n, device=device)
        log_survival = torch.zeros(n, device=device)
        state: State = predictor.initial_state(inputs)
        ask = self._ask_chunk if k > 1 else partial(self._ask, self.policy.frozen_layer_logits())
        # k = 1, features without the read-out: read out only the rows that stop, once they do.
        lazy = k == 1 and not predictor.features_use_prediction
        layer, readout = predictor.layer, predictor.readout
        lap("layer")
        # Chunks of k layers (the last may be shorter); the policy is asked after each
        # layer of a chunk but the last layer, T - 1, where every instance still going stops.
        for t0, layers in self._chunks:
            states: list[State] = []
            preds: list[Tensor | None] = []
            for t in layers:
                state = layer(t, state, inputs)
                lap("layer")
                preds.append(None if lazy else readout(t, state, inputs))
                states.append(state)
                lap("readout")
            if t == T - 1:
                # Where the rule said in this chunk, else at layer T - 1.
                at: int | Tensor = len(states) - 1
                logits = None
                if at:  # k > 1: the rule's stops in the layers before, per row
                    stop, first, logits, _ = ask(
                        t0, states[:-1], preds[:-1], inputs, log_survival, lap
                    )
                    at = _where_stopped(stop, first, at)
                out.write(active, _Chunk(predictor, t0, states, preds, inputs), at, None)
                if out.probs is not None:
                    out.write_probabilities(active, t0, logits, at, last=True)
                lap("compact")
                break
            stop, first, logits, log_survival = ask(t0, states, preds, inputs, log_survival, lap)
            if out.probs is not None:  # each row's pi_t up to its stop, else the chunk's end
                local = _where_stopped(stop, first, len(states) - 1)
                out.write_probabilities(active, t0, logits, local, last=False)
            # The one synchronisation of the chunk: how many rows stopped in it.
            num_stop = int(torch.count_nonzero(stop))
            lap("decide")
            if num_stop == 0:
                continue
            chunk = _Chunk(predictor, t0, states, preds, inputs)
            if num_stop == stop.shape[0]:
                out.write(active, chunk, first, None)
                lap("compact")
                break
            keep = out.write_stopped(active, chunk, stop, num_stop, first)
            del chunk  # (the rows' state before the compaction)
            # index_select, not x[keep]: the same rows, several times faster on a CPU.
            active, log_survival = active.index_select(0, keep), log_survival.index_select(0, keep)
            state = select_rows(predictor.carried_state(state), keep)
            inputs = select_rows(inputs, keep)  # type: ignore[assignment]
            lap("compact")
        return out.result()

    def _ask(
        self,
        layer_logits: Callable[[Tensor, int], Tensor],
        t0: int,
        states: list[State],
        preds: list[Tensor | None],
        inputs: dict[str, Tensor],
        log_survival: Tensor,
        lap: Callable[[str], None],
    ) -> tuple[Tensor, int, Tensor, Tensor]:
        """The policy after the one layer ``t0`` of a chunk (``k = 1``; ``layer_logits``:
        the policy's, frozen for the batch): the ``(b,)`` stop mask, the layer in the chunk
        where the rows that stop do (``0``), the ``(b,)`` logits and the log survival after
        the layer."""
        features = self.predictor.policy_features(t0, states[0], inputs, preds[0])  # type: ignore[arg-type]
        lap("features")
        logit = layer_logits(features, t0)
        lap("policy")
        stop, log_survival = self._decide(logit, log_survival)
        return stop, 0, logit, log_survival

    def _ask_chunk(
        self,
        t0: int,
        states: list[State],
        preds: list[Tensor | None],
        inputs: dict[str, Tensor],
        log_survival: Tensor,
        lap: Callable[[str], None],
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The policy after the layers ``t0 ..`` of ``states``, at once: the ``(b,)`` mask
        of the rows that stop in them, the layer in the chunk where each does (``0`` where
        none does), the ``(b, len(states))`` logits and each row's log survival after them."""
        features = self.predictor.chunk_policy_features(t0, states, inputs, preds)  # type: ignore[arg-type]
        lap("features")
        logits = self.policy.chunk_logits(features, t0)
        lap("policy")
        stops, log_survivals = self._decide_chunk(logits, log_survival)
        # The first layer of the chunk where each row stops (0 where none does).
        return stops.any(1), stops.to(torch.uint8).argmax(1), logits, log_survivals[:, -1]

    def _decide_chunk(self, logits: Tensor, log_survival: Tensor) -> tuple[Tensor, Tensor]:
        """``(b, k)`` stop masks for a chunk's logits, and each row's log survival after
        each of its layers: ``stop_now`` applied column by column, in one go (the threshold
        rule needs no survival: the one before the chunk, carried)."""
        if self.rule.kind == "threshold":
            return logits > self._threshold_logit, log_survival.unsqueeze(1).expand_as(logits)
        # A cumulative sum from the survival before the chunk adds in the order stop_now does.
        steps = torch.nn.functional.logsigmoid(-logits)
        log_survivals = torch.cat([log_survival.unsqueeze(1), steps], dim=1).cumsum(1)[:, 1:]
        if self.rule.kind == "sample":
            draw = torch.rand(
                logits.shape, generator=self.generator, device=logits.device, dtype=logits.dtype
            )
            return draw < torch.sigmoid(logits), log_survivals
        if self.rule.kind == "quantile":
            return log_survivals <= self._log_quantile, log_survivals
        raise ValueError(f"unknown read-out rule {self.rule.kind!r}")


@dataclass(slots=True)
class _Chunk:
    """The layers ``t0 ..`` that the active rows ran since the policy was last asked:
    ``states[i]`` and ``preds[i]`` are those after layer ``t0 + i`` (``preds[i]`` is
    ``None`` where the read-out is left to the rows that stop, ``features_use_prediction``
    false); ``inputs`` are the active rows'."""

    predictor: LayeredPredictor
    t0: int
    states: list[State]
    preds: list[Tensor | None]
    inputs: dict[str, Tensor]

    def pick(self, at: int | Tensor, rows: Tensor | None) -> Tensor:
        """The read-outs of rows ``rows`` (``None``: all) at layer ``t0 + at`` (an int: the
        same layer for every row; a tensor: one per row)."""
        if isinstance(at, Tensor):
            preds = self.preds if rows is None else [p.index_select(0, rows) for p in self.preds]  # type: ignore[union-attr]
            stacked = torch.stack(preds, dim=1)  # type: ignore[arg-type]
            return stacked[torch.arange(stacked.shape[0], device=stacked.device), at]
        pred = self.preds[at]
        if pred is not None:
            return pred if rows is None else pred.index_select(0, rows)
        # Read out the rows that stop, and only those.
        state, t = self.states[at], self.t0 + at
        if rows is None:
            return self.predictor.readout(t, state, self.inputs)
        return self.predictor.readout(t, select_rows(state, rows), select_rows(self.inputs, rows))


class _Outputs:
    """``StopRunner``'s outputs for ``n`` instances, filled as they stop."""

    def __init__(self, n: int, T: int, device: torch.device, probabilities: bool) -> None:
        self.n, self.T = n, T
        # An instance that the rule never stops stops at the last layer, T - 1.
        self.stop = torch.full((n,), T - 1, dtype=torch.long, device=device)
        self.probs = torch.full((n, T), math.nan, device=device) if probabilities else None
        self.pred: Tensor | None = None

    def write(self, where: Tensor, chunk: _Chunk, at: int | Tensor, rows: Tensor | None) -> None:
        """Instances ``where`` (rows ``rows`` of the chunk) stop at its layer ``at``."""
        pred = chunk.pick(at, rows)
        if self.pred is None:  # made on first use, shaped like the read-out
            self.pred = pred.new_empty((self.n, *pred.shape[1:]))
        self.pred.index_copy_(0, where, pred)
        if isinstance(at, Tensor):
            self.stop.index_copy_(0, where, chunk.t0 + at)
        elif chunk.t0 + at != self.T - 1:
            self.stop.index_fill_(0, where, chunk.t0 + at)

    def write_stopped(
        self, active: Tensor, chunk: _Chunk, stop: Tensor, num_stop: int, first: int | Tensor
    ) -> Tensor:
        """Write out the ``num_stop`` rows of ``chunk`` that ``stop`` (at its layers
        ``first``; instances ``active``) and return the indices of the others, in order."""
        rows = stop.shape[0]
        # Rows that continue first, then rows that stop, each in their original order.
        order = torch.argsort(stop.to(torch.uint8), stable=True)
        keep, done = order[: rows - num_stop], order[rows - num_stop :]
        at = first if isinstance(first, int) else first.index_select(0, done)
        self.write(active.index_select(0, done), chunk, at, done)
        return keep

    def write_probabilities(
        self, where: Tensor, t0: int, logits: Tensor | None, local: int | Tensor, last: bool
    ) -> None:
        """Write a chunk's ``pi_t`` into ``probs`` for the layers each instance reached (up
        to its stop ``t0 + local``; ``1`` at layer ``T - 1`` when ``last``), NaN beyond."""
        probs = self.probs
        assert probs is not None
        if logits is not None and logits.dim() == 1:
            logits = logits.unsqueeze(1)
        width = self.T - t0 if last else int(logits.shape[1])  # type: ignore[union-attr]
        block = torch.full((where.shape[0], width), math.nan, device=probs.device)
        if logits is not None:
            block[:, : logits.shape[1]] = torch.sigmoid(logits).to(probs.dtype)
        if last:
            block[:, -1] = 1.0
        cols = torch.arange(width, device=probs.device).unsqueeze(0)
        bound = local if isinstance(local, int) else local.unsqueeze(1)
        block = torch.where(cols <= bound, block, math.nan)
        probs[:, t0 : t0 + width] = probs[:, t0 : t0 + width].index_copy(0, where, block)

    def result(self) -> RunnerOutput:
        assert self.pred is not None
        return RunnerOutput(self.pred, self.stop, self.probs)


@torch.inference_mode()
def run_full_depth(predictor: LayeredPredictor, batch: Batch | dict[str, Tensor]) -> Tensor:
    """The baseline early exit is measured against: all ``T`` layers, then the last read-out.

    ``predictor.predict_full_depth``: the layers as a model without a stop policy computes
    them (no read-out after every layer where the predictor can skip it, no policy, no
    features), under the same ``torch.inference_mode`` as ``StopRunner``.
    """
    predictor.eval()
    inputs = {k: v.to(predictor.device) for k, v in _inputs_of(batch).items()}
    return predictor.predict_full_depth(inputs)
