"""Early exit: run a trained stop policy and compute only the layers it keeps.

Evaluation (``l2s_gym.evaluation``) runs all ``T`` layers and reads each instance's stop
layer out of the trace afterwards; its "average layers" is a count. ``StopRunner`` is the
deployed form: it runs a batch layer by layer, asks the policy after each layer, and
drops the instances that stopped, so layer ``t + 1`` runs only on the instances still
going. Its stop layers are the trace's (same predictor, same policy, same read-out rule:
``tests/test_runner.py`` checks it on every family; ``tests/test_fast_paths.py``, the
fast paths it relies on).

``run_full_depth`` is the baseline it is timed against. ``StopRunner.tune`` picks the
look-ahead (how many layers run between two questions to the policy, up to never asking:
the plain model) that runs fastest on the device at hand (``TuneResult``).
``l2s_gym.predict`` runs a run folder's stop model through the runner (``l2s predict``).
"""

from __future__ import annotations

import bisect
import math
import platform
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

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


def example_rows(inputs: dict[str, Tensor], n: int, seed: int = 0) -> dict[str, Tensor]:
    """``n`` rows of ``inputs`` in a fixed random order (``seed``), repeated if there are
    fewer: an example to tune or time on. Not the first ``n``: evaluation sets are often
    ordered by difficulty (by noise level, by chain length) and their head is no sample of
    the whole."""
    size = _batch_size(inputs)
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    index = order[torch.arange(n) % size]
    return {k: v[index.to(v.device)] for k, v in inputs.items()}


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
            from the generator in another order than with ``k = 1``. ``k >= T``: the policy
            is never asked, and the runner runs the plain model (``predict_full_depth``;
            every instance stops at the last layer). ``tune`` picks ``k`` for a device and
            batch size by timing.
    """

    def __init__(
        self,
        predictor: LayeredPredictor,
        policy: StopPolicy,
        rule: ReadoutRule = PAPER_RULE,
        generator: torch.Generator | None = None,
        lookahead: int = 1,
    ) -> None:
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
        self.tuned: TuneResult | None = None
        """What ``tune`` measured and chose (or ``adopt`` took from a stored run)."""
        value = rule.value if rule.kind == "threshold" else 0.5
        self._threshold_logit = math.log(value / (1.0 - value))
        # (quantile 1 is full depth: FULL_DEPTH_RULE never stops before the last layer)
        quantile = rule.kind == "quantile"
        self._log_quantile = (
            (math.log1p(-rule.value) if rule.value < 1.0 else -math.inf) if quantile else 0.0
        )

    @property
    def lookahead(self) -> int:
        """``k``: the layers run between two questions to the policy; ``num_layers`` (``T``):
        never ask, the plain model. Set it to change it (a value above ``T`` is ``T``)."""
        return self._lookahead

    @lookahead.setter
    def lookahead(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"lookahead must be a whole number >= 1, got {k!r}")
        T = self.num_layers
        self._lookahead = min(k, T)
        # The chunks of k layers (the last may be shorter): each one's first layer and layers.
        self._chunks = [(t0, range(t0, min(t0 + k, T))) for t0 in range(0, T, k)]

    @property
    def plain(self) -> bool:
        """Whether the runner runs the plain full-depth model (``lookahead == num_layers``:
        the policy is never asked)."""
        return self._lookahead >= self.num_layers

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
        if self.plain:
            return self._plain(batch, return_probabilities, lap, device)
        T, k = self.num_layers, self.lookahead
        inputs, out, active, log_survival, state = self._start(batch, return_probabilities)
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

    def tune(
        self,
        example_batch: Batch | dict[str, Tensor],
        batch_size: int | None = None,
        *,
        repeats: int = 7,
        verify: int = 2,
        margin: float = 0.05,
        sure_rounds: int = 5,
        max_instances: int = 32,
        budget_s: float = 10.0,
        min_sample_s: float = 0.05,
        timer: Timer | None = None,
    ) -> TuneResult:
        """Choose the look-ahead ``k`` in ``1 .. T`` (``T``: never ask, the plain model) that
        runs batches of ``batch_size`` fastest on this device, and use it from now on.

        A cost model proposes, a direct measurement decides:

        1. The stops: the example's instances (the first ``max_instances``, or
           ``batch_size`` if more; repeated when the example is smaller) run at ``k = 1``,
           in batches of ``batch_size`` (also the warm-up).
        2. The parts, each the runner's own code, timed at 1 row and at ``batch_size`` rows
           (medians of ``repeats`` after a warm-up): each layer (the predictor's forward
           step) and read-out, a policy call about ``j`` layers (features, MLP, rule and
           the host synchronisation; ``j`` = 1, 2 and ``T - 1`` at one row), writing out
           the rows that stop, compacting the others, the batch's setup.
        3. The model: for every ``k < T``, the expected time of a batch, the example's stops
           replayed through the runner's loop (the chunks each batch reaches, the layers
           computed including those an instance computes past its stop in its chunk, the
           policy calls, the compactions), each part at the rows still active
           (interpolated linearly in the row count).
        4. The measurement: ``k = 1``, the plain model (``T``) and the model's ``verify``
           best ``k`` in ``2 .. T - 1`` run the example's batches, interleaved (in a new
           order every round), ``repeats`` rounds after a warm-up round (fewer
           when a round takes more than ``budget_s`` over ``repeats``); a sample repeats
           the batches for at least ``min_sample_s``. Each candidate's time is divided by
           the plain model's of the same round, and the median of these ratios decides
           (load from other processes slows a round as a whole): the lowest wins among
           the look-aheads that pay, and the plain model where none does. A look-ahead
           pays where its median ratio is below ``1 - margin``, or where it beat the
           plain model in every one of at least ``sure_rounds`` rounds (a sign test: at
           5 rounds, 1 chance in 32 if the two were as fast; ``sure_rounds=0`` turns it
           off) with a median below 1. The margin keeps the plain model on a noisy near
           tie; the sign test keeps a small gain that every round shows (at a large
           batch, where rounds agree to a percent).

        Why both: timing every ``k`` directly costs ``T`` runs of the example per repeat
        (the paper-scale DnCNN at batch 1024 takes seconds a run); the model alone misses
        what the parts leave out (the loop's own Python, caches), which at batch 1 on a
        CPU is a few percent of a layer. The model narrows ``T`` candidates to a few; the
        measured times decide, so the choice never rests on a prediction alone, and the
        plain model is always one of the candidates.

        ``timer(part, fn)`` runs ``fn()`` once and returns its seconds (default: wall time,
        synchronised with the device); ``part`` names what is timed (``start``,
        ``layer``, ``readout``, ``ask``, ``finish``, ``compact``, ``run``). Tests inject a
        fake one. With the ``sample`` rule the runs draw from ``generator``.

        Sets ``self.lookahead`` and ``self.tuned`` and returns the ``TuneResult``.
        """
        with torch.inference_mode():
            result = _tune(
                self, example_batch, batch_size, repeats, verify, margin, sure_rounds,
                max_instances, budget_s, min_sample_s, timer or WallTimer(self.predictor.device),
            )  # fmt: skip
        self.adopt(result)
        return result

    def adopt(self, result: TuneResult) -> None:
        """Use a ``TuneResult`` (from ``tune``, or stored with a run): its look-ahead."""
        if result.num_layers != self.num_layers:
            raise ValueError(
                f"the tune result is for {result.num_layers} layers, "
                f"the runner has {self.num_layers}"
            )
        self.lookahead = result.lookahead
        self.tuned = result

    def describe(self) -> str:
        """One line: the look-ahead in use and, after ``tune``, why."""
        if self.tuned is not None and self.tuned.lookahead == self.lookahead:
            return self.tuned.describe()
        if self.plain:
            return f"look-ahead k=T={self.num_layers}: the plain model, the policy never asked"
        return f"look-ahead k={self.lookahead} of T={self.num_layers}"

    def _start(
        self, batch: Batch | dict[str, Tensor], return_probabilities: bool
    ) -> tuple[dict[str, Tensor], _Outputs, Tensor, Tensor, State]:
        """A batch's inputs on the device, its outputs to fill, the active rows, their log
        survival and the initial state (what ``__call__`` does before the first layer)."""
        device = self.predictor.device
        inputs = {k: v.to(device) for k, v in _inputs_of(batch).items()}
        n = _batch_size(inputs)
        out = _Outputs(n, self.num_layers, device, return_probabilities)
        active = torch.arange(n, device=device)
        log_survival = torch.zeros(n, device=device)
        return inputs, out, active, log_survival, self.predictor.initial_state(inputs)

    def _plain(
        self,
        batch: Batch | dict[str, Tensor],
        return_probabilities: bool,
        lap: Callable[[str], None],
        device: torch.device,
    ) -> RunnerOutput:
        """``lookahead == T``: the plain model (``predict_full_depth``), the policy never
        asked; every instance stops at the last layer. ``device``: the predictor's, as
        ``__call__`` read it (``LayeredPredictor.device`` walks the parameters: at batch 1
        on a CPU 2-4 us, a percent of a small model's call)."""
        predictor = self.predictor
        inputs = {k: v.to(device) for k, v in _inputs_of(batch).items()}
        n, T = _batch_size(inputs), self.num_layers
        predictions = predictor.predict_full_depth(inputs)
        stop = torch.full((n,), T - 1, dtype=torch.long, device=device)
        probs = None
        if return_probabilities:  # never asked: NaN, and 1 at the last layer
            probs = torch.full((n, T), math.nan, device=device)
            probs[:, -1] = 1.0
        lap("layer")
        return RunnerOutput(predictions, stop, probs)

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


# --- tune: the look-ahead that runs fastest on this device --------------------------------
Timer = Callable[[str, Callable[[], object]], float]
"""``StopRunner.tune``'s clock: ``timer(part, fn)`` runs ``fn()`` once and returns the
seconds it took; ``part`` says what it times."""


class WallTimer:
    """Wall time of a call, synchronised with the device before and after."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)

    def __call__(self, part: str, fn: Callable[[], object]) -> float:
        _sync(self.device)
        start = time.perf_counter()
        fn()
        _sync(self.device)
        return time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_label(device: torch.device | str) -> str:
    """What timings depend on: the device's kind and name, and on a CPU the torch threads
    (``runner_tune.json`` is reused only on the same label)."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name
            )
    except OSError:
        pass
    return f"{device.type} ({name}, {torch.get_num_threads()} threads)"


def _seconds(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.0f} us"
    return f"{s * 1e3:.2f} ms" if s < 1 else f"{s:.2f} s"


@dataclass(frozen=True)
class TuneResult:
    """What ``StopRunner.tune`` measured and chose. Times are seconds per batch of
    ``batch_size`` instances.

    Attributes:
        lookahead: the chosen ``k``; ``num_layers`` (``T``): the plain model.
        num_layers: ``T``.
        batch_size: the batch size it was tuned for.
        device: ``device_label`` of the device (and threads) it was timed on.
        instances: the example instances it ran.
        avg_layers: their mean stop layer (1-based) under the policy.
        layer_s: one layer (the predictor's forward step), mean over the ``T`` layers.
        policy_s: one policy call at ``k = 1`` (features, MLP, rule, synchronisation).
        predicted_s: the model's time for each ``k < T``.
        measured_s: the measured time of each candidate (always ``1`` and ``T``; medians).
        relative: each candidate's time over the plain model's, the median over rounds of
            the ratio within a round (what decides; ``T``: 1).
        wins: in how many of the ``rounds`` each candidate beat the plain model.
        rounds: the measurement's rounds.
    """

    lookahead: int
    num_layers: int
    batch_size: int
    device: str
    instances: int
    avg_layers: float
    layer_s: float
    policy_s: float
    predicted_s: dict[int, float]
    measured_s: dict[int, float]
    relative: dict[int, float]
    wins: dict[int, int] = field(default_factory=dict)
    rounds: int = 0

    @property
    def plain(self) -> bool:
        return self.lookahead >= self.num_layers

    @property
    def full_depth_s(self) -> float:
        """The plain model's measured time a batch."""
        return self.measured_s[self.num_layers]

    @property
    def chosen_s(self) -> float:
        return self.measured_s[self.lookahead]

    @property
    def speedup(self) -> float:
        """The plain model's time over the chosen look-ahead's, from the paired ratios
        (``1`` for the plain model)."""
        r = self.relative[self.lookahead]
        return 1 / r if r > 0 else math.nan

    def describe(self) -> str:
        T, b = self.num_layers, self.batch_size
        early = {k: s for k, s in self.measured_s.items() if k < T}
        tail = (
            f"a layer {_seconds(self.layer_s)}, a policy call {_seconds(self.policy_s)}, "
            f"{self.avg_layers:.2f} layers on average; {self.device}"
        )
        if self.plain:
            best = min(early, key=lambda k: (self.relative[k], k)) if early else None
            beaten = (
                f"; early exit's best, k={best}: {_seconds(early[best])} "
                f"({1 / self.relative[best]:.2f}x)"
                if best is not None
                else ""
            )
            return (
                f"look-ahead k=T={T}, the plain model (the policy never asked), at batch {b}: "
                f"{_seconds(self.full_depth_s)} a batch{beaten}; {tail}"
            )
        k1 = f"; k=1: {_seconds(early[1])}" if self.lookahead != 1 and 1 in early else ""
        return (
            f"look-ahead k={self.lookahead} of T={T} at batch {b}: {_seconds(self.chosen_s)} a "
            f"batch, {self.speedup:.2f}x the plain model ({_seconds(self.full_depth_s)}){k1}; "
            f"{tail}"
        )

    def __repr__(self) -> str:
        return f"TuneResult({self.describe()})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["predicted_s"] = {str(k): v for k, v in self.predicted_s.items()}
        d["measured_s"] = {str(k): v for k, v in self.measured_s.items()}
        d["relative"] = {str(k): v for k, v in self.relative.items()}
        d["wins"] = {str(k): v for k, v in self.wins.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TuneResult:
        fields = dict(d)
        fields["predicted_s"] = {int(k): float(v) for k, v in d["predicted_s"].items()}
        fields["measured_s"] = {int(k): float(v) for k, v in d["measured_s"].items()}
        fields["relative"] = {int(k): float(v) for k, v in d["relative"].items()}
        fields["wins"] = {int(k): int(v) for k, v in d.get("wins", {}).items()}
        return cls(**fields)


def _timed_call(timer: Timer, part: str, fn: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """``fn(*args)`` through ``timer``: its seconds and its value."""
    box: list[Any] = []
    seconds = timer(part, lambda: box.append(fn(*args)))
    if not box:
        raise RuntimeError(f"the timer did not call the function it was given ({part})")
    return seconds, box[0]


def _interp(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise linear through ``(xs, ys)`` (sorted ``xs``), extended linearly beyond."""
    if len(xs) == 1:
        return ys[0]
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)
    x0, x1, y0, y1 = xs[i], xs[i + 1], ys[i], ys[i + 1]
    return max(0.0, y0 + (y1 - y0) * (x - x0) / (x1 - x0))


class _Parts:
    """The runner's parts timed at one row count ``rows`` (medians)."""

    def __init__(self, rows: int, num_layers: int, samples: dict[Any, list[float]]) -> None:
        med = {key: statistics.median(v) for key, v in samples.items()}
        self.rows = rows
        self.start = med["start"]
        self.layer = [med[("layer", t)] for t in range(num_layers)]
        self.readout = [med[("readout", t)] for t in range(num_layers)]
        self.ask_j = sorted(key[1] for key in med if key[0] == "ask")
        self.ask = [med[("ask", j)] for j in self.ask_j]
        self.finish = {k: med[("finish", k)] for k in (1, 2) if ("finish", k) in med}
        self.compact = {k: med[("compact", k)] for k in (1, 2) if ("compact", k) in med}


def _ask_once(
    runner: StopRunner,
    ask1: Callable[..., tuple[Tensor, int, Tensor, Tensor]],
    j: int,
    states: list[State],
    preds: list[Tensor | None],
    rows: dict[str, Tensor],
    log_survival: Tensor,
) -> int:
    """One policy call about the layers of ``states[:j]`` and its synchronisation, as the
    runner makes it (``ask1``: its ``k = 1`` call, the policy's weights frozen)."""
    if j == 1:
        stop = ask1(0, states[:1], preds[:1], rows, log_survival, _NO_LAPS)[0]
    else:
        stop = runner._ask_chunk(0, states[:j], preds[:j], rows, log_survival, _NO_LAPS)[0]  # type: ignore[arg-type]
    return int(torch.count_nonzero(stop))


def _compact_once(
    predictor: LayeredPredictor,
    out: _Outputs,
    chunk: _Chunk,
    stop: Tensor,
    num_stop: int,
    first: int | Tensor,
    active: Tensor,
    log_survival: Tensor,
) -> None:
    """The runner's compaction: write out the rows that ``stop``, index the others."""
    keep = out.write_stopped(active, chunk, stop, num_stop, first)
    active.index_select(0, keep)
    log_survival.index_select(0, keep)
    select_rows(predictor.carried_state(chunk.states[-1]), keep)
    select_rows(chunk.inputs, keep)


def _measure_parts(
    runner: StopRunner,
    inputs: dict[str, Tensor],
    asks: list[int],
    repeats: int,
    timer: Timer,
) -> _Parts:
    """Each part of the runner's loop on the rows of ``inputs``: ``repeats`` rounds after
    a warm-up round (policy calls about ``j`` layers for ``j`` in ``asks``; the rows are
    doubled for the compaction of a one-row batch, which never compacts)."""
    samples: dict[Any, list[float]] = {}
    n = _batch_size(inputs)
    for round_ in range(repeats + 1):
        _parts_round(runner, inputs, asks, timer, samples if round_ > 0 else {})
    return _Parts(n, runner.num_layers, samples)


def _parts_round(
    runner: StopRunner,
    inputs: dict[str, Tensor],
    asks: list[int],
    timer: Timer,
    samples: dict[Any, list[float]],
) -> None:
    predictor, T = runner.predictor, runner.num_layers
    device = predictor.device
    lazy = not predictor.features_use_prediction

    def rec(key: Any, part: str, fn: Callable[..., Any], *args: Any) -> Any:
        seconds, value = _timed_call(timer, part, fn, *args)
        samples.setdefault(key, []).append(seconds)
        return value

    rows, out, active, log_survival, state = rec("start", "start", runner._start, inputs, False)
    n = int(active.shape[0])
    depth = max([*asks, 2])
    states: list[State] = []
    preds: list[Tensor] = []
    for t in range(T):
        state = rec(("layer", t), "layer", predictor.layer, t, state, rows)
        pred = rec(("readout", t), "readout", predictor.readout, t, state, rows)
        if t < depth:
            states.append(state)
            preds.append(pred)
    first_preds: list[Tensor | None] = [None if lazy else preds[0]]
    ask1 = partial(runner._ask, runner.policy.frozen_layer_logits())
    for j in asks:
        batch_preds = first_preds if j == 1 else list(preds)
        rec(("ask", j), "ask", _ask_once, runner, ask1, j, states, batch_preds, rows, log_survival)
    # Writing out every row: a chunk of k = 1 (lazy read-out where the runner reads out
    # only the rows that stop), and of k = 2 (a layer per row).
    one = _Chunk(predictor, 0, states[:1], first_preds, rows)
    rec(("finish", 1), "finish", out.write, active, one, 0, None)
    if len(states) > 1:
        two = _Chunk(predictor, 0, states[:2], list(preds[:2]), rows)
        at = torch.arange(n, device=device) % 2
        rec(("finish", 2), "finish", out.write, active, two, at, None)
    # Half the rows stop: write them out, index the others (two rows for a one-row batch).
    dup = torch.arange(max(n, 2), device=device) % n
    m = int(dup.shape[0])
    rows_m = select_rows(rows, dup)
    states_m = [select_rows(x, dup) for x in states[:2]]
    preds_m: list[Tensor | None] = [p.index_select(0, dup) for p in preds[:2]]
    out_m = _Outputs(m, T, device, False)
    stop = torch.arange(m, device=device) % 2 == 0
    num_stop = int(stop.sum())
    where = (torch.arange(m, device=device), torch.zeros(m, device=device))
    chunk = _Chunk(predictor, 0, states_m[:1], [None if lazy else preds_m[0]], rows_m)
    args = (predictor, out_m, chunk, stop, num_stop, 0, *where)
    rec(("compact", 1), "compact", _compact_once, *args)
    if len(states_m) > 1:
        chunk = _Chunk(predictor, 0, states_m[:2], preds_m[:2], rows_m)
        first = torch.zeros(m, dtype=torch.long, device=device)
        rec(("compact", 2), "compact", _compact_once, predictor, out_m, chunk, stop, num_stop,
            first, *where)  # fmt: skip


class _CostModel:
    """A batch's time at look-ahead ``k``, from the parts timed at 1 and ``b`` rows
    (linear in the row count in between) and the stops of its instances."""

    def __init__(self, lo: _Parts, hi: _Parts, num_layers: int, lazy: bool) -> None:
        self.lo, self.hi, self.T, self.lazy = lo, hi, num_layers, lazy

    def _at(self, n: int, lo: float, hi: float) -> float:
        span = self.hi.rows - self.lo.rows
        return lo if span <= 0 else max(0.0, lo + (hi - lo) * (n - self.lo.rows) / span)

    def layer(self, t: int, n: int, readout: bool) -> float:
        lo, hi = self.lo, self.hi
        cost = self._at(n, lo.layer[t], hi.layer[t])
        return cost + (self._at(n, lo.readout[t], hi.readout[t]) if readout else 0.0)

    def ask(self, n: int, j: int) -> float:
        lo, hi = self.lo, self.hi
        return self._at(n, _interp(lo.ask_j, lo.ask, j), _interp(hi.ask_j, hi.ask, j))

    def _part(self, name: str, n: int, k: int) -> float:
        lo, hi = getattr(self.lo, name), getattr(self.hi, name)
        key = 1 if k == 1 or 2 not in lo else 2
        return self._at(n, lo[key], hi[key])

    def batch(self, k: int, stops: list[int]) -> float:
        """The modelled time of one batch whose instances stop at ``stops`` (0-based)."""
        T = self.T
        n, total = len(stops), self._at(len(stops), self.lo.start, self.hi.start)
        ordered = sorted(stops)
        readout = not (k == 1 and self.lazy)
        for t0 in range(0, T, k):
            t1 = min(t0 + k, T)
            total += sum(self.layer(t, n, readout) for t in range(t0, t1))
            asked = (t1 - t0) - (1 if t1 == T else 0)
            if asked:
                total += self.ask(n, asked)
            stopped = n - (len(ordered) - bisect.bisect_left(ordered, t1))
            if t1 == T or stopped == n:
                total += self._part("finish", n, k)
                break
            if stopped:
                total += self._part("compact", n, k)
                n -= stopped
        return total


def _tune(  # noqa: PLR0913
    runner: StopRunner,
    example: Batch | dict[str, Tensor],
    batch_size: int | None,
    repeats: int,
    verify: int,
    margin: float,
    sure_rounds: int,
    max_instances: int,
    budget_s: float,
    min_sample_s: float,
    timer: Timer,
) -> TuneResult:
    predictor, T = runner.predictor, runner.num_layers
    device = predictor.device
    batches, b, count = _tune_batches(example, device, batch_size, repeats, max_instances)

    def run_all() -> list[RunnerOutput]:
        return [runner(x) for x in batches]

    # 1. The stops at k = 1 (and the warm-up).
    runner.lookahead = 1
    first_s, outs = _timed_call(timer, "run", run_all)
    stops = torch.cat([o.stop for o in outs]).tolist()
    avg_layers = sum(stops) / len(stops) + 1
    candidates = [1, T] if T > 1 else [T]
    predicted: dict[int, float] = {}
    layer_s = policy_s = 0.0
    # Fewer repeats where a round would take long (the paper-scale DnCNN at batch 1024).
    round_s = max(first_s, 1e-9) * (verify + 2)
    reps = max(1, min(repeats, int(budget_s / round_s)))
    if T > 1:
        # 2. The parts, at 1 row and at b rows.
        one_row = select_rows(batches[0], torch.zeros(1, dtype=torch.long, device=device))
        lo = _measure_parts(runner, one_row, sorted({1, min(2, T - 1), T - 1}), reps, timer)
        hi = (
            lo
            if b == 1
            else _measure_parts(runner, batches[0], sorted({1, min(2, T - 1)}), reps, timer)
        )
        layer_s = sum(hi.layer) / T
        policy_s = hi.ask[0]
        # 3. The model, for every k < T.
        model = _CostModel(lo, hi, T, not predictor.features_use_prediction)
        groups = [stops[i : i + b] for i in range(0, len(stops), b)]
        for k in range(1, T):
            predicted[k] = sum(model.batch(k, g) for g in groups) / len(groups)
        middle = sorted(range(2, T), key=lambda k: (predicted[k], k))[: max(0, verify)]
        candidates += middle
    samples = _measure_candidates(
        runner, candidates, run_all, len(batches), first_s, reps, min_sample_s, timer
    )
    measured = {k: statistics.median(v) for k, v in samples.items()}
    chosen, relative, wins = _choose(samples, T, margin, sure_rounds)
    rounds = len(samples[T])
    return TuneResult(
        lookahead=chosen,
        num_layers=T,
        batch_size=b,
        device=device_label(device),
        instances=count,
        avg_layers=avg_layers,
        layer_s=layer_s,
        policy_s=policy_s,
        predicted_s=predicted,
        measured_s={k: measured[k] for k in sorted(measured)},
        relative={k: relative[k] for k in sorted(relative)},
        wins={k: wins[k] for k in sorted(wins)},
        rounds=rounds,
    )


def _choose(
    samples: dict[int, list[float]], T: int, margin: float, sure_rounds: int
) -> tuple[int, dict[int, float], dict[int, int]]:
    """``tune``'s decision from the measured rounds (``samples[k]``: a time per round,
    ``T`` the plain model): the chosen ``k``, each candidate's median ratio to the plain
    model within a round, and the rounds it won. A ``k < T`` pays where its median is
    below ``1 - margin``, or where it won all of at least ``sure_rounds`` rounds with a
    median below 1; the fastest that pays is chosen, else ``T``."""
    relative = {
        k: statistics.median(
            [a / b if b > 0 else math.inf for a, b in zip(v, samples[T], strict=True)]
        )
        for k, v in samples.items()
    }
    wins = {k: sum(a < b for a, b in zip(v, samples[T], strict=True)) for k, v in samples.items()}
    rounds = len(samples[T])

    def pays(k: int) -> bool:
        sure = 0 < sure_rounds <= rounds and wins[k] == rounds and relative[k] < 1
        return relative[k] < 1 - margin or sure

    paying = [k for k in samples if k < T and pays(k)]
    chosen = min(paying, key=lambda k: (relative[k], k)) if paying else T
    return chosen, relative, wins


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


def _tune_batches(
    example: Batch | dict[str, Tensor],
    device: torch.device,
    batch_size: int | None,
    repeats: int,
    max_instances: int,
) -> tuple[list[dict[str, Tensor]], int, int]:
    """``tune``'s instances: whole batches of ``b`` (the batch size), at least one (the
    example repeated if smaller); returns them, ``b`` and their count."""
    inputs = {k: v.to(device) for k, v in _inputs_of(example).items()}
    N = _batch_size(inputs)
    if N == 0:
        raise ValueError("tune needs at least one example instance")
    b = int(batch_size or N)
    if b < 1 or repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {b} and {repeats}")
    count = b * max(1, min(N, max_instances) // b)
    rows = select_rows(inputs, torch.arange(count, device=device) % N)
    return [{k: v[i : i + b] for k, v in rows.items()} for i in range(0, count, b)], b, count


def _measure_candidates(  # noqa: PLR0913
    runner: StopRunner,
    candidates: list[int],
    run_all: Callable[[], object],
    batches: int,
    first_s: float,
    reps: int,
    min_sample_s: float,
    timer: Timer,
) -> dict[int, list[float]]:
    """``tune``'s step 4: each candidate look-ahead's time per batch, measured interleaved.

    Each sample runs the batches ``inner`` times (at least ``min_sample_s``: a busy
    machine's time slices average out), in a new order every round (seeded), so each is
    compared with the plain model of its own round (drift between rounds cancels)."""
    inner = max(1, math.ceil(min_sample_s / max(first_s, 1e-12)))

    def run_inner() -> None:
        for _ in range(inner):
            run_all()

    samples: dict[int, list[float]] = {k: [] for k in candidates}
    warm = first_s * inner * len(candidates) < 1.0  # a warm-up round unless a round is slow
    for round_ in range(-1 if warm else 0, reps):
        order = list(candidates)
        random.Random(round_).shuffle(order)  # no candidate always first, or after another
        for k in order:
            runner.lookahead = k
            seconds, _ = _timed_call(timer, "run", run_inner)
            if round_ >= 0:
                samples[k].append(seconds / (inner * batches))
    return samples


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

    The predictor is put in eval mode if it is in training mode (``StopRunner`` does it
    once, when it is built): ``Module.eval()`` visits every submodule, which at batch 1 on
    a CPU costs as much as a layer (SDN's 69 modules: about 0.1-0.4 ms a call) and would
    slow the baseline down.
    """
    if predictor.training:
        predictor.eval()
    inputs = {k: v.to(predictor.device) for k, v in _inputs_of(batch).items()}
    return predictor.predict_full_depth(inputs)
