"""Early exit: run a trained stop policy and compute only the layers it keeps.

Evaluation (``l2s_gym.evaluation``) runs all ``T`` layers and reads each instance's stop
layer out of the trace afterwards; its "average layers" is a count. ``StopRunner`` is the
deployed form: it runs a batch layer by layer, asks the policy after each layer, and
drops the instances that stopped, so layer ``t + 1`` runs only on the instances still
going. Its stop layers are the trace's (same predictor, same policy, same read-out rule:
``tests/test_runner.py`` checks it on every family).

``predict_run`` loads a run folder's predictor and policy and runs the test set (or a
user's batch) through the runner, timing it against the full-depth predictor.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2s_gym.config import ConfigError, ExperimentConfig
from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor, State, select_rows
from l2s_gym.rules import PAPER_RULE, ReadoutRule
from l2s_gym.task import Batch, Task


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


def _write(out: Tensor | None, n: int, rows: Tensor, pred: Tensor) -> Tensor:
    """Copy ``pred`` into rows ``rows`` of the ``(n, ...)`` output (made on first use)."""
    if out is None:
        out = pred.new_empty((n, *pred.shape[1:]))
    return out.index_copy_(0, rows, pred)


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
        value = rule.value if rule.kind == "threshold" else 0.5
        self._threshold_logit = math.log(value / (1.0 - value))

    def _decide(self, logit: Tensor, log_survival: Tensor) -> tuple[Tensor, Tensor]:
        if self.rule.kind == "threshold":
            # Needs no survival (stop_now's comparison, without its logsigmoid and sum).
            return logit > self._threshold_logit, log_survival
        if self.rule.kind == "sample":
            draw = torch.rand(
                logit.shape, generator=self.generator, device=logit.device, dtype=logit.dtype
            )
            return draw < torch.sigmoid(logit), log_survival
        return self.rule.stop_now(logit, log_survival)

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
        device = self.predictor.device
        lap = _Laps(profile, device) if profile is not None else None
        inputs = {k: v.to(device) for k, v in _inputs_of(batch).items()}
        n = _batch_size(inputs)
        if self.lookahead > 1:
            return self._run_chunks(inputs, n, return_probabilities, lap)
        T = self.num_layers
        stop_out = torch.full((n,), T - 1, dtype=torch.long, device=device)
        probs = torch.full((n, T), math.nan, device=device) if return_probabilities else None
        pred_out: Tensor | None = None
        active = torch.arange(n, device=device)
        log_survival = torch.zeros(n, device=device)
        state: State = self.predictor.initial_state(inputs)
        layer_logits = self.policy.frozen_layer_logits()
        # Read out every active instance after every layer, or (when the features do not
        # need it) only the instances that stop, once they have.
        lazy = not self.predictor.features_use_prediction
        if lap:
            lap("layer")
        for t in range(T):
            state = self.predictor.layer(t, state, inputs)
            if lap:
                lap("layer")
            pred = None if lazy else self.predictor.readout(t, state, inputs)
            if lap:
                lap("readout")
            if t == T - 1:
                pred = self.predictor.readout(t, state, inputs) if pred is None else pred
                pred_out = _write(pred_out, n, active, pred)
                if probs is not None:
                    probs[:, t].index_fill_(0, active, 1.0)
                if lap:
                    lap("compact")
                break
            features = self.predictor.policy_features(t, state, inputs, pred)  # type: ignore[arg-type]
            if lap:
                lap("features")
            logit = layer_logits(features, t)
            if probs is not None:
                probs[:, t].index_copy_(0, active, torch.sigmoid(logit).to(probs.dtype))
            if lap:
                lap("policy")
            stop, log_survival = self._decide(logit, log_survival)
            # The one synchronisation of the layer: how many instances stopped.
            num_stop = int(torch.count_nonzero(stop))
            if lap:
                lap("decide")
            if num_stop == 0:
                continue
            if num_stop == stop.shape[0]:
                pred = self.predictor.readout(t, state, inputs) if pred is None else pred
                pred_out = _write(pred_out, n, active, pred)
                stop_out.index_fill_(0, active, t)
                if lap:
                    lap("compact")
                break
            # Rows that continue first, then rows that stop, each in their original order.
            order = torch.argsort(stop.to(torch.uint8), stable=True)
            keep, done = order[: stop.shape[0] - num_stop], order[stop.shape[0] - num_stop :]
            stopped = active.index_select(0, done)
            if pred is None:  # read out the rows that stop, and only those
                pred_done = self.predictor.readout(
                    t, select_rows(state, done), select_rows(inputs, done)
                )
            else:
                pred_done = pred.index_select(0, done)
            pred_out = _write(pred_out, n, stopped, pred_done)
            stop_out.index_fill_(0, stopped, t)
            # index_select, not x[keep]: the same rows, several times faster on a CPU.
            active = active.index_select(0, keep)
            log_survival = log_survival.index_select(0, keep)
            state = select_rows(self.predictor.carried_state(state), keep)
            inputs = select_rows(inputs, keep)  # type: ignore[assignment]
            if lap:
                lap("compact")
        assert pred_out is not None
        return RunnerOutput(pred_out, stop_out, probs)

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
            return log_survivals <= math.log1p(-self.rule.value), log_survivals
        raise ValueError(f"unknown read-out rule {self.rule.kind!r}")

    def _run_chunks(
        self, inputs: dict[str, Tensor], n: int, return_probabilities: bool, lap: _Laps | None
    ) -> RunnerOutput:
        """``__call__`` with ``lookahead > 1``: ask the policy once per ``k`` layers."""
        device = self.predictor.device
        T, k = self.num_layers, self.lookahead
        stop_out = torch.full((n,), T - 1, dtype=torch.long, device=device)
        probs = torch.full((n, T), math.nan, device=device) if return_probabilities else None
        pred_out: Tensor | None = None
        active = torch.arange(n, device=device)
        log_survival = torch.zeros(n, device=device)
        state: State = self.predictor.initial_state(inputs)
        if lap:
            lap("layer")
        t0 = 0
        while True:
            end = min(t0 + k, T)
            states: list[State] = []
            preds: list[Tensor] = []
            for t in range(t0, end):
                state = self.predictor.layer(t, state, inputs)
                if lap:
                    lap("layer")
                preds.append(self.predictor.readout(t, state, inputs))
                states.append(state)
                if lap:
                    lap("readout")
            if pred_out is None:
                pred_out = preds[0].new_empty((n, *preds[0].shape[1:]))
            # The policy is asked at every layer of the chunk but the last layer T - 1.
            asked = len(states) - (end == T)
            rows = active.shape[0]
            if asked:
                features = self.predictor.chunk_policy_features(
                    t0, states[:asked], inputs, preds[:asked]
                )
                if lap:
                    lap("features")
                logits = self.policy.chunk_logits(features, t0)
                if lap:
                    lap("policy")
                stops, log_survivals = self._decide_chunk(logits, log_survival)
                hit = stops.any(1)
                # The first layer of the chunk where each row stops (0 where none does).
                first = stops.to(torch.uint8).argmax(1)
            else:
                hit = torch.zeros(rows, dtype=torch.bool, device=device)
                first = torch.zeros(rows, dtype=torch.long, device=device)
            if end == T:
                # Every row stops in this chunk: where the rule said, else at layer T - 1.
                local = torch.where(hit, first, torch.full_like(first, len(states) - 1))
                stacked = torch.stack(preds, dim=1)
                pred_out.index_copy_(0, active, stacked[torch.arange(rows, device=device), local])
                stop_out.index_copy_(0, active, t0 + local)
                if probs is not None:
                    self._write_probabilities(
                        probs, active, t0, logits if asked else None, local, True
                    )
                if lap:
                    lap("compact")
                break
            # The one synchronisation of the chunk: how many rows stopped in it.
            num_stop = int(hit.sum())
            if lap:
                lap("decide")
            if probs is not None:
                local = torch.where(hit, first, torch.full_like(first, asked - 1))
                self._write_probabilities(probs, active, t0, logits, local, False)
            if num_stop == rows:
                stacked = torch.stack(preds, dim=1)
                pred_out.index_copy_(0, active, stacked[torch.arange(rows, device=device), first])
                stop_out.index_copy_(0, active, t0 + first)
                if lap:
                    lap("compact")
                break
            if num_stop:
                order = torch.argsort(hit.to(torch.uint8), stable=True)
                keep, done = order[: rows - num_stop], order[rows - num_stop :]
                stopped = active.index_select(0, done)
                at = first.index_select(0, done)
                stacked = torch.stack([p.index_select(0, done) for p in preds], dim=1)
                pred_out.index_copy_(0, stopped, stacked[torch.arange(num_stop, device=device), at])
                stop_out.index_copy_(0, stopped, t0 + at)
                active = active.index_select(0, keep)
                log_survival = log_survivals[:, -1].index_select(0, keep)
                state = select_rows(self.predictor.carried_state(state), keep)
                inputs = select_rows(inputs, keep)  # type: ignore[assignment]
            else:
                log_survival = log_survivals[:, -1]
            if lap:
                lap("compact")
            t0 = end
        assert pred_out is not None
        return RunnerOutput(pred_out, stop_out, probs)

    @staticmethod
    def _write_probabilities(
        probs: Tensor, active: Tensor, t0: int, logits: Tensor | None, local: Tensor, last: bool
    ) -> None:
        """Write a chunk's ``pi_t`` into ``probs`` for the layers each row reached (up to
        its stop ``t0 + local``; ``1`` at layer ``T - 1`` when ``last``), NaN beyond."""
        T = probs.shape[1]
        width = T - t0 if last else int(logits.shape[1])  # type: ignore[union-attr]
        block = torch.full((active.shape[0], width), math.nan, device=probs.device)
        if logits is not None:
            block[:, : logits.shape[1]] = torch.sigmoid(logits).to(probs.dtype)
        if last:
            block[:, -1] = 1.0
        cols = torch.arange(width, device=probs.device).unsqueeze(0)
        block = torch.where(cols <= local.unsqueeze(1), block, math.nan)
        probs[:, t0 : t0 + width] = probs[:, t0 : t0 + width].index_copy(0, active, block)


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


# --- a run folder's stop model on the test set (``l2s predict``) -----------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_folder(parent: Path, prefix: str, wanted: str | None, flag: str) -> Path:
    """``parent/<prefix><wanted>``, or the only ``<prefix>*`` folder when ``wanted`` is None."""
    if wanted is not None:
        folder = parent / f"{prefix}{wanted}"
        if folder.is_dir():
            return folder
    found = sorted(p.name for p in parent.glob(f"{prefix}*") if p.is_dir())
    if wanted is None and len(found) == 1:
        return parent / found[0]
    what = f"no {parent / f'{prefix}{wanted}'}" if wanted is not None else f"{flag} is needed"
    raise FileNotFoundError(f"{what}; {parent} holds: {', '.join(found) or 'nothing'}")


def load_run_stop_model(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    learner: str,
    cost: float | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[Task, LayeredPredictor, StopPolicy, ReadoutRule, dict[str, Any]]:
    """A run folder's oracle-trained predictor and ``learner``'s policy at ``cost``.

    Reads ``seed-<s>/stage1/predictor-oracle/best.pt`` and
    ``seed-<s>/<learner>/cost-<c>/best.pt`` (``cost=None``: the only cost folder there);
    the read-out is the policy checkpoint's ``readout`` (the rule chosen on validation).
    Returns the task, predictor, policy, rule and ``{"seed", "cost", "predictor",
    "policy"}`` (the seed, the cost and the two checkpoint paths).
    """
    from l2s_gym.build import make_policy, resolve_device
    from l2s_gym.runs import load_checkpoint, load_state
    from l2s_gym.trials import PLAN_KEYS, RUNTIME_KEYS, load_stop_model, trial_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    seed = cfg.seed if seed is None else int(seed)
    seed_dir = _one_folder(run_dir, "seed-", str(seed), "--seed")
    learner_dir = seed_dir / learner
    if not learner_dir.is_dir():
        known = sorted(p.name for p in seed_dir.iterdir() if p.is_dir() and p.name != "stage1")
        raise FileNotFoundError(
            f"no learner folder {learner_dir}; {seed_dir} holds: {', '.join(known) or 'nothing'}"
        )
    cost_dir = _one_folder(learner_dir, "cost-", None if cost is None else f"{cost:g}", "--cost")
    dev = resolve_device(cfg.device) if device is None else torch.device(device)
    # The trials' own loader: the predictor's checkpoint is checked against the config.
    seed_cfg = trial_config(cfg.to_dict(), seed)
    task, predictor = load_stop_model(run_dir, seed_cfg, seed, dev)
    predictor_path = seed_dir / "stage1" / "predictor-oracle" / "best.pt"
    policy_path = cost_dir / "best.pt"
    state = load_checkpoint(
        policy_path,
        "policy",
        seed_cfg.to_dict(),
        task,
        ignore=PLAN_KEYS + RUNTIME_KEYS,
        warn=lambda _: None,
    )
    policy = make_policy(cfg, predictor)
    load_state(policy, state["state_dict"], policy_path)
    policy.eval().requires_grad_(False)
    rule = ReadoutRule.from_dict(state.get("readout") or PAPER_RULE.to_dict())
    info = {
        "seed": seed,
        "cost": float(state.get("cost", float(cost_dir.name.removeprefix("cost-")))),
        "predictor": str(predictor_path),
        "policy": str(policy_path),
    }
    return task, predictor, policy, rule, info


def load_input_file(path: str | Path, task: Task) -> dict[str, Tensor]:
    """A user's batch: a ``.pt`` dict of input tensors shaped like the task's test inputs.

    Every task takes one (the runner needs only inputs): the keys must be those of the
    task's test inputs and each tensor's per-instance shape (all but the first dimension)
    theirs, e.g. ``{"y": (N, m)}`` for sparse recovery, ``{"noisy": (N, 1, P, P)}`` for
    denoising, ``{"image": (N, 1, S, S)}`` for recognition, and the five support/query
    tensors of the meta-learning tasks.
    """
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    like = task.eval_set("test").inputs
    if not isinstance(data, dict) or set(data) != set(like):
        got = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ConfigError(
            f"--input {path}: expected a dict of tensors with keys {sorted(like)}, got {got}"
        )
    for key, ref in like.items():
        value = data[key]
        if not isinstance(value, Tensor) or value.shape[1:] != ref.shape[1:]:
            shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ConfigError(
                f"--input {path}: {key!r} must be (N, {', '.join(map(str, ref.shape[1:]))}), "
                f"got {shape}"
            )
    _batch_size(data)
    return {k: v.to(device=task.device, dtype=like[k].dtype) for k, v in data.items()}


def predict_run(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    learner: str,
    *,
    cost: float | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    out: str | Path | None = None,
    input_file: str | Path | None = None,
    device: torch.device | str | None = None,
    lookahead: int = 1,
) -> dict[str, Any]:
    """Run a run folder's stop model with early exit on the test set (or ``input_file``).

    Batches of ``batch_size`` (default ``cfg.compare.eval_batch_size``) go through the
    ``StopRunner`` and, for the timing, through the full-depth predictor
    (``run_full_depth``); the first batch runs once untimed first (warm-up). On the test
    set the runner's predictions are scored with the task's metric next to the
    trace-based evaluation's (``evaluate_stop_model``'s way: full trace, then the rule on
    the policy's logits), which they must equal.

    ``lookahead``: ask the policy once per this many layers (``StopRunner``'s
    ``lookahead``: the same stops, fewer policy calls, up to ``lookahead - 1`` wasted
    layers per instance; pays at small batches).

    ``out`` (``FILE.pt``): the tensors ``predictions``, ``stop`` (0-based) and ``layers``
    (1-based), and the summary as ``FILE.json``. Returns the summary.
    """
    from l2s_gym.evaluation import stop_logits, stop_summary

    task, predictor, policy, rule, info = load_run_stop_model(
        cfg, run_dir, learner, cost, seed, device
    )
    if input_file is not None:
        inputs, test = load_input_file(input_file, task), None
    else:
        test = task.eval_set("test")
        inputs = test.inputs
    n = _batch_size(inputs)
    size = int(batch_size or cfg.compare.eval_batch_size)
    if size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {size}")
    if lookahead < 1:
        raise ConfigError(f"--lookahead: must be >= 1, got {lookahead}")
    runner = StopRunner(predictor, policy, rule, lookahead=lookahead)
    dev = predictor.device
    chunks = [{k: v[i : i + size] for k, v in inputs.items()} for i in range(0, n, size)]
    if chunks:  # warm-up: first-call allocations and kernel choices are not timed
        runner(chunks[0])
        run_full_depth(predictor, chunks[0])
    preds, stops = [], []
    runner_s = full_s = 0.0
    for chunk in chunks:
        _sync(dev)
        start = time.perf_counter()
        result = runner(chunk)
        _sync(dev)
        runner_s += time.perf_counter() - start
        start = time.perf_counter()
        run_full_depth(predictor, chunk)
        _sync(dev)
        full_s += time.perf_counter() - start
        preds.append(result.predictions)
        stops.append(result.stop)
    T = predictor.num_layers
    stop = torch.cat(stops) if stops else torch.zeros(0, dtype=torch.long, device=dev)
    predictions = torch.cat(preds) if preds else torch.zeros(0, device=dev)
    avg_layers = float((stop + 1).double().mean()) if n else math.nan
    summary: dict[str, Any] = {
        "experiment": cfg.experiment,
        "run": str(run_dir),
        "learner": learner,
        **info,
        "readout": rule.to_dict(),
        "readout_label": rule.label,
        "data": str(input_file) if input_file is not None else "test set",
        "instances": n,
        "num_layers": T,
        "avg_layers": avg_layers,
        "histogram": torch.bincount(stop.cpu(), minlength=T).tolist(),
        "batch_size": size,
        "lookahead": lookahead,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "runner_s": runner_s,
        "full_depth_s": full_s,
        "measured_speedup": full_s / runner_s if runner_s > 0 else math.nan,
        "ideal_speedup": T / avg_layers if n else math.nan,
    }
    if test is not None:
        stats = task.metric_stat(predictions, test.targets)
        trace = predictor.trace_eval(test, task, size)
        trace_stop = rule.stop(stop_logits(policy, trace))
        traced = stop_summary(task, trace, trace_stop)
        summary.update(
            {
                "metric_name": task.metric_name,
                "metric": task.aggregate(stats),
                "trace_metric": traced["metric"],
                "trace_avg_layers": traced["avg_layers"],
                "stop_agreement": float((trace_stop == stop).double().mean()),
            }
        )
    if out is not None:
        from l2s_gym.runs import save_checkpoint, write_json

        out = Path(out)
        pt = out if out.suffix == ".pt" else out.with_name(out.name + ".pt")
        save_checkpoint(
            pt,
            {"predictions": predictions.cpu(), "stop": stop.cpu(), "layers": (stop + 1).cpu()},
        )
        write_json(pt.with_suffix(".json"), summary)
        summary["files"] = [str(pt), str(pt.with_suffix(".json"))]
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [
        f"{summary['learner']} (cost {summary['cost']:g}, seed {summary['seed']}, "
        f"read-out: {summary['readout_label']}) on {summary['data']}: "
        f"{summary['instances']} instances",
        f"average layers {summary['avg_layers']:.2f} of {summary['num_layers']} "
        f"(ideal speed-up {summary['ideal_speedup']:.2f}x)",
        f"wall time: runner {summary['runner_s'] * 1e3:.1f} ms, full depth "
        f"{summary['full_depth_s'] * 1e3:.1f} ms, measured speed-up "
        f"{summary['measured_speedup']:.2f}x (batch {summary['batch_size']}, "
        + (f"look-ahead {summary['lookahead']}, " if summary.get("lookahead", 1) > 1 else "")
        + f"{summary['device']}, {summary['threads']} threads)",
    ]
    if "metric" in summary:
        lines.append(
            f"{summary['metric_name']}: {summary['metric']:.4f} (trace-based evaluation "
            f"{summary['trace_metric']:.4f}; stop layers agree on "
            f"{100 * summary['stop_agreement']:.1f}% of instances)"
        )
    lines += summary.get("files", [])
    return "\n".join(lines)
