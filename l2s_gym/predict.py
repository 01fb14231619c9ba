"""A run folder's stop model with early exit on the test set or a user's batch (``l2s predict``).

``load_run_stop_model`` loads a run folder's oracle-trained predictor and one learner's
policy; ``predict_run`` runs the test set (or a ``.pt`` batch of inputs) through
``l2s_gym.runner.StopRunner``, times it against the full-depth predictor and, on the test
set, checks its predictions against the trace-based evaluation. Its look-ahead is ``auto``
by default: ``StopRunner.tune`` on the first instances, stored next to the policy
checkpoint (``runner_tune.json``) and reused on the same device and batch size.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from l2s_gym.config import ConfigError, ExperimentConfig
from l2s_gym.evaluation import stop_logits
from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.risk import RiskCalibration, calibrate_risk, default_risk
from l2s_gym.rules import PAPER_RULE, ReadoutRule
from l2s_gym.runner import (
    StopRunner,
    TuneResult,
    _batch_size,
    device_label,
    example_rows,
    run_full_depth,
)
from l2s_gym.task import Task
from l2s_gym.trials import ONE_POLICY_FOLDER, TRACES, load_traces


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
    one_policy: bool = False,
) -> tuple[Task, LayeredPredictor, StopPolicy, ReadoutRule, dict[str, Any]]:
    """A run folder's oracle-trained predictor and ``learner``'s policy at ``cost``.

    ``one_policy``: the learner's price-conditioned policy (``seed-<s>/<learner>/one-policy``,
    ``l2s frontier --one-policy``) with its dial set to ``cost`` (required; any price, in
    the run's ``frontier.cost_scale`` units), its read-out chosen on the validation trace
    at that price (``load_one_policy``).

    Reads ``seed-<s>/stage1/predictor-oracle/best.pt`` and
    ``seed-<s>/<learner>/cost-<c>/best.pt`` (``cost=None``: the only cost folder there);
    the read-out is the policy checkpoint's ``readout`` (the rule chosen on validation).
    Returns the task, predictor, policy, rule and ``{"seed", "cost", "predictor",
    "policy"}`` (the seed, the cost and the two checkpoint paths).
    """
    from l2s_gym.build import resolve_device
    from l2s_gym.trials import load_stop_model, trial_config

    if one_policy and cost is None:
        raise ConfigError("--one-policy: --cost C is needed (the price to serve)")
    if one_policy and not (cost >= 0 and math.isfinite(cost)):  # type: ignore[operator]
        raise ConfigError(f"--cost: a price must be finite and >= 0, got {cost!r}")
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
    if one_policy:
        cost_dir = learner_dir / ONE_POLICY_FOLDER
        if not (cost_dir / "best.pt").is_file():
            raise FileNotFoundError(
                f"no price-conditioned policy {cost_dir} (run l2s frontier --one-policy)"
            )
    else:
        cost_dir = _price_folder(learner_dir, cost)
    dev = resolve_device(cfg.device) if device is None else torch.device(device)
    # The trials' own loader: the predictor's checkpoint is checked against the config.
    seed_cfg = trial_config(cfg, seed)
    task, predictor = load_stop_model(run_dir, seed_cfg, seed, dev)
    predictor_path = seed_dir / "stage1" / "predictor-oracle" / "best.pt"
    if one_policy:
        policy, rule, info = load_one_policy(cfg, learner_dir, task, predictor, seed, float(cost))  # type: ignore[arg-type]
    else:
        policy, rule, info = load_run_policy(cfg, cost_dir / "best.pt", task, predictor, seed)
    return task, predictor, policy, rule, {**info, "predictor": str(predictor_path)}


def _price_folder(learner_dir: Path, cost: float | None) -> Path:
    """``learner_dir/cost-<cost>`` (the only one for ``None``); a price that was not trained
    is one line that lists those that were (and points at ``--one-policy`` where the run
    has a price-conditioned policy)."""
    try:
        return _one_folder(learner_dir, "cost-", None if cost is None else f"{cost:g}", "--cost")
    except FileNotFoundError as exc:
        if cost is None or not (learner_dir / ONE_POLICY_FOLDER / "best.pt").is_file():
            raise
        raise FileNotFoundError(
            f"{exc}; this learner also has a price-conditioned policy: add --one-policy to "
            f"serve it at price {cost:g}"
        ) from None


def load_one_policy(
    cfg: ExperimentConfig,
    learner_dir: Path,
    task: Task,
    predictor: LayeredPredictor,
    seed: int,
    cost: float,
) -> tuple[StopPolicy, ReadoutRule, dict[str, Any]]:
    """A run's price-conditioned policy at price ``cost`` (``frontier.cost_scale`` units:
    ``lambda = cost * gain per layer`` for ``gain``): the policy with its dial set, the
    read-out chosen on the seed's validation trace at that price (``choose_readout``, as for
    a per-price policy) and ``{"seed", "cost", "lambda", "one_policy", "policy"}``."""
    from l2s_gym.build import make_policy
    from l2s_gym.evaluation import choose_readout, stop_logits
    from l2s_gym.runs import load_policy
    from l2s_gym.stopping import cumulative_costs
    from l2s_gym.trials import PLAN_KEYS, RUNTIME_KEYS, load_traces, trial_config

    path = Path(learner_dir) / ONE_POLICY_FOLDER / "best.pt"
    seed_cfg = trial_config(cfg, seed)
    policy = make_policy(cfg, predictor, price_input=True)
    _check_one_policy_format(path)
    load_policy(path, policy, seed_cfg, task, ignore=PLAN_KEYS + RUNTIME_KEYS, warn=lambda _: None)
    unit = float(policy.price_unit)
    lam = cost * (unit if cfg.frontier.cost_scale == "gain" else 1.0)
    policy.set_price(lam)
    stage1 = Path(learner_dir).parent / "stage1"  # seed-<s>/stage1
    val = load_traces(stage1, predictor.device)["oracle"]["val"]
    cum = cumulative_costs(predictor.num_layers, predictor.layer_costs(), predictor.device)
    rule, _ = choose_readout(val, stop_logits(policy, val), lam, cum)
    info = {"seed": seed, "cost": cost, "lambda": lam, "one_policy": True, "policy": str(path)}
    return policy, rule, info


def _check_one_policy_format(path: Path) -> None:
    """A one-line error for a one-policy checkpoint of an older format (its ``done`` marker
    says which; ``l2s_gym.trials.ONE_POLICY_FORMAT``), which this version's policy can't load
    (version 1 had a one-number price code)."""
    from l2s_gym.runs import CheckpointError
    from l2s_gym.trials import DONE, ONE_POLICY_FORMAT, ONE_POLICY_LOADABLE, one_policy_format

    marker = path.parent / DONE
    found = one_policy_format(marker) if marker.exists() else ONE_POLICY_FORMAT
    if found is not None and found < ONE_POLICY_LOADABLE:
        raise CheckpointError(
            f"{path}: a one policy of format {found}, this version reads formats "
            f"{ONE_POLICY_LOADABLE}-{ONE_POLICY_FORMAT}; train it again: "
            "l2s frontier CONFIG --resume RUN --one-policy"
        )


def load_run_policy(
    cfg: ExperimentConfig, policy_path: Path, task: Task, predictor: LayeredPredictor, seed: int
) -> tuple[StopPolicy, ReadoutRule, dict[str, Any]]:
    """One policy checkpoint of a run folder (``seed-<s>/<learner>/cost-<c>/best.pt``) for
    ``predictor``: the policy, its read-out and ``{"seed", "cost", "policy"}``."""
    from l2s_gym.build import make_policy
    from l2s_gym.runs import load_policy
    from l2s_gym.trials import PLAN_KEYS, RUNTIME_KEYS, trial_config

    policy = make_policy(cfg, predictor)
    state = load_policy(
        policy_path,
        policy,
        trial_config(cfg, seed),
        task,
        ignore=PLAN_KEYS + RUNTIME_KEYS,
        warn=lambda _: None,
    )
    rule = ReadoutRule.from_dict(state.get("readout") or PAPER_RULE.to_dict())
    info = {
        "seed": seed,
        "cost": float(state.get("cost", float(policy_path.parent.name.removeprefix("cost-")))),
        "policy": str(policy_path),
    }
    return policy, rule, info


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


def _timed(runner: StopRunner, inputs: dict[str, Tensor], size: int):  # noqa: ANN202
    """``inputs`` in batches of ``size`` through ``runner`` and, for the timing, the
    full-depth predictor (the first batch once untimed first: allocations and kernel
    choices are not timed). Returns the predictions, the stops and the two wall times."""
    predictor = runner.predictor
    dev = predictor.device
    n = _batch_size(inputs)
    chunks = [{k: v[i : i + size] for k, v in inputs.items()} for i in range(0, n, size)]
    if chunks:
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
    stop = torch.cat(stops) if stops else torch.zeros(0, dtype=torch.long, device=dev)
    predictions = torch.cat(preds) if preds else torch.zeros(0, device=dev)
    return predictions, stop, runner_s, full_s


TUNE_FILE = "runner_tune.json"
"""Where ``l2s predict`` keeps its look-ahead choices: next to the policy checkpoint."""
TUNE_INSTANCES = 32
"""``auto`` tunes on the first batch of the input, or on this many instances if the batch is
smaller (one instance is no stop distribution)."""


def parse_lookahead(value: int | str) -> int | str:
    """``--lookahead``: ``auto`` or a whole number ``K >= 1`` (``K >= T``: the plain model)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        k = int(value)
    except (TypeError, ValueError):
        k = 0
    if isinstance(value, bool) or k < 1 or (isinstance(value, float) and value != k):
        raise ConfigError(f"--lookahead: 'auto' or a whole number >= 1, got {value!r}")
    return k


def _tune_key(runner: StopRunner, policy_path: Path, batch_size: int) -> dict[str, Any]:
    """What a stored choice must match: the device (and threads), the batch size, the policy
    checkpoint's bytes and the read-out rule."""
    return {
        "device": device_label(runner.predictor.device),
        "batch_size": batch_size,
        "policy_sha1": hashlib.sha1(policy_path.read_bytes()).hexdigest(),
        "readout": runner.rule.to_dict(),
    }


def load_tune(path: Path, key: dict[str, Any]) -> TuneResult | None:
    """The stored ``TuneResult`` for ``key`` in ``path`` (``runner_tune.json``), if any."""
    try:
        entries = json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for entry in entries:
        if all(entry.get(k) == v for k, v in key.items()):
            try:
                return TuneResult.from_dict(entry["result"])
            except (KeyError, TypeError, ValueError):
                return None
    return None


def store_tune(path: Path, key: dict[str, Any], result: TuneResult) -> None:
    """Add (or replace) ``key``'s entry in ``path``; other devices' and sizes' are kept."""
    from l2s_gym.runs import write_json

    try:
        entries = json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        entries = []
    entries = [e for e in entries if not all(e.get(k) == v for k, v in key.items())]
    entries.append({**key, "result": result.to_dict()})
    write_json(path, {"entries": entries})


def _auto_lookahead(
    runner: StopRunner,
    inputs: dict[str, Tensor],
    size: int,
    policy_path: Path,
    retune: bool,
    price: float | None = None,
) -> dict[str, Any]:
    """Tune ``runner`` for batches of ``size`` on instances of ``inputs`` in a fixed random
    order (``example_rows``; at least a batch, and ``TUNE_INSTANCES``), or
    adopt the choice stored for this device, batch size and policy; the summary's fields."""
    path = policy_path.parent / TUNE_FILE
    key = _tune_key(runner, policy_path, size)
    if price is not None:  # a price-conditioned policy stops differently at each price
        key["price"] = price
    stored = None if retune else load_tune(path, key)
    if stored is not None and stored.num_layers == runner.num_layers:
        runner.adopt(stored)
        source = "stored"
    else:
        runner.tune(example_rows(inputs, max(size, TUNE_INSTANCES)), batch_size=size)
        assert runner.tuned is not None
        source = "tuned"
        try:
            store_tune(path, key, runner.tuned)
        except OSError as exc:  # a read-only run folder: tuned, not stored
            warnings.warn(f"could not store the look-ahead in {path}: {exc}", stacklevel=2)
            source = "tuned (not stored)"
    assert runner.tuned is not None
    return {"tune": runner.tuned.to_dict(), "tune_source": source, "tune_file": str(path)}


def _check_on_test(  # noqa: PLR0913
    task: Task,
    predictor: LayeredPredictor,
    policy: StopPolicy,
    rule: ReadoutRule,
    test: Any,
    predictions: Tensor,
    stop: Tensor,
    size: int,
) -> dict[str, Any]:
    """The runner's test-set metric next to the trace-based evaluation's (full trace,
    then the rule on the policy's logits), and the share of instances whose stops agree."""
    from l2s_gym.evaluation import stop_logits, stop_summary

    trace = predictor.trace_eval(test, task, size)
    trace_stop = rule.stop(stop_logits(policy, trace))
    traced = stop_summary(task, trace, trace_stop)
    return {
        "metric_name": task.metric_name,
        "metric": task.aggregate(task.metric_stat(predictions, test.targets)),
        "trace_metric": traced["metric"],
        "trace_avg_layers": traced["avg_layers"],
        "stop_agreement": float((trace_stop == stop).double().mean()),
    }


def parse_risk(value: float | str | None) -> float | str | None:
    """``--risk``: ``None`` (not given), ``"default"`` (the task's stated epsilon) or an
    epsilon > 0; a one-line ``ConfigError`` otherwise."""
    if value is None or value == "default":
        return value
    try:
        epsilon = float(value)
    except (TypeError, ValueError):
        epsilon = math.nan
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise ConfigError(f"--risk: expected an epsilon > 0 (or no value), got {value!r}")
    return epsilon


def calibrated_rule(
    task: Task,
    predictor: LayeredPredictor,
    policy: StopPolicy,
    policy_path: Path,
    risk: float | str,
    delta: float | None = None,
    test_size: int | None = None,
) -> RiskCalibration:
    """The risk-calibrated read-out of ``policy`` (``l2s_gym.risk.calibrate_risk``),
    certified on the validation trace of the policy's seed (the one ``seed-<s>/stage1``
    saved, else traced now; ``policy_path`` is ``seed-<s>/<learner>/<folder>/best.pt``) at
    the task's stated risk, ``epsilon = risk`` unless ``"default"``; ``test_size``: the
    promise is about a set of that many instances (``calibrate_risk``'s)."""
    stated = default_risk(task)
    epsilon = stated.epsilon if risk == "default" else float(risk)
    delta = stated.delta if delta is None else float(delta)
    if not 0 < delta < 1:
        raise ConfigError(f"--delta: must be in (0, 1), got {delta!r}")
    stage1 = policy_path.parents[2] / "stage1"
    if (stage1 / TRACES).exists():  # the trace the run's tables were computed on
        val = load_traces(stage1, predictor.device)["oracle"]["val"]
    else:
        val = predictor.trace_eval(task.eval_set("val"), task)
    logits = stop_logits(policy, val)
    return calibrate_risk(val, logits, task, epsilon, delta, loss=stated.loss, test_size=test_size)


def _risk_readout(  # noqa: PLR0913
    task: Task,
    predictor: LayeredPredictor,
    policy: StopPolicy,
    rule: ReadoutRule,
    info: dict[str, Any],
    risk: float | str | None,
    delta: float | None,
    risk_set: bool,
    n: int,
) -> tuple[ReadoutRule, dict[str, Any]]:
    """``predict_run``'s read-out and info: the risk-calibrated rule and its certificate
    where ``risk`` is given (for a set of the ``n`` served instances with ``risk_set``),
    else ``rule`` and ``info`` as they are."""
    if risk is None:
        if risk_set:
            raise ConfigError("--risk-set: needs --risk (the promise it changes)")
        return rule, info
    calibration = calibrated_rule(
        task, predictor, policy, Path(info["policy"]), risk, delta,
        test_size=max(n, 1) if risk_set else None,
    )  # fmt: skip
    return calibration.rule, {**info, "risk": calibration.to_dict()}


def _run_figures(
    runner: StopRunner, stop: Tensor, size: int, runner_s: float, full_s: float
) -> dict[str, Any]:
    """The summary's figures of one timed run: the stops, the look-ahead, the times."""
    n, T = int(stop.numel()), runner.num_layers
    avg_layers = float((stop + 1).double().mean()) if n else math.nan
    return {
        "instances": n,
        "num_layers": T,
        "avg_layers": avg_layers,
        "histogram": torch.bincount(stop.cpu(), minlength=T).tolist(),
        "batch_size": size,
        "lookahead": runner.lookahead,
        "plain": runner.plain,
        "device": str(runner.predictor.device),
        "threads": torch.get_num_threads(),
        "runner_s": runner_s,
        "full_depth_s": full_s,
        "measured_speedup": full_s / runner_s if runner_s > 0 else math.nan,
        "ideal_speedup": T / avg_layers if n else math.nan,
    }


def predict_run(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    learner: str,
    *,
    cost: float | None = None,
    one_policy: bool = False,
    seed: int | None = None,
    batch_size: int | None = None,
    out: str | Path | None = None,
    input_file: str | Path | None = None,
    device: torch.device | str | None = None,
    lookahead: int | str = "auto",
    retune: bool = False,
    risk: float | str | None = None,
    delta: float | None = None,
    risk_set: bool = False,
) -> dict[str, Any]:
    """Run a run folder's stop model with early exit on the test set (or ``input_file``).

    Batches of ``batch_size`` (default ``cfg.compare.eval_batch_size``), timed against the
    full-depth predictor (``_timed``); on the test set, checked against the trace-based
    evaluation (``_check_on_test``), which they must equal (unless the plain model ran).

    ``lookahead``: ``"auto"`` (the default): ``StopRunner.tune`` on the first batch of the
    input (at least ``TUNE_INSTANCES`` instances) picks ``k`` for this device and batch
    size, stored in ``runner_tune.json`` next to the policy checkpoint and reused when the
    device, the threads, the batch size, the policy checkpoint and the read-out match
    (``retune``: tune again all the same). A number ``K``: ``StopRunner``'s ``lookahead``
    (``K >= T``: the plain model, the policy never asked).

    ``risk``: read the policy out by the risk-calibrated rule (``calibrated_rule``:
    ``epsilon = risk``, or the task's stated one for ``"default"``; ``delta``, or the
    task's) instead of the rule chosen on validation; the summary's ``risk`` says what it
    promises. ``risk_set``: the promise is about the instances this call serves (their
    empirical risk, ``calibrate_risk(..., test_size=<their number>)``), not the population.

    ``out`` (``FILE.pt``): the tensors ``predictions``, ``stop`` (0-based) and ``layers``
    (1-based), and the summary as ``FILE.json``. Returns the summary.
    """
    task, predictor, policy, rule, info = load_run_stop_model(
        cfg, run_dir, learner, cost, seed, device, one_policy=one_policy
    )
    if input_file is not None:
        inputs, test = load_input_file(input_file, task), None
    else:
        test = task.eval_set("test")
        inputs = test.inputs
    n = _batch_size(inputs)
    rule, info = _risk_readout(task, predictor, policy, rule, info, risk, delta, risk_set, n)
    size = int(batch_size or cfg.compare.eval_batch_size)
    if size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {size}")
    choice = parse_lookahead(lookahead)
    runner = StopRunner(predictor, policy, rule, lookahead=1 if choice == "auto" else choice)  # type: ignore[arg-type]
    tuned: dict[str, Any] = {}
    if choice == "auto" and n > 0:
        tuned = _auto_lookahead(
            runner, inputs, size, Path(info["policy"]), retune, info.get("lambda")
        )
    predictions, stop, runner_s, full_s = _timed(runner, inputs, size)
    summary: dict[str, Any] = {
        "experiment": cfg.experiment,
        "run": str(run_dir),
        "learner": learner,
        **info,
        "readout": rule.to_dict(),
        "readout_label": rule.label,
        "data": str(input_file) if input_file is not None else "test set",
        **_run_figures(runner, stop, size, runner_s, full_s),
        "lookahead_mode": "auto" if choice == "auto" else "fixed",
        **tuned,
    }
    if test is not None:
        summary.update(_check_on_test(task, predictor, policy, rule, test, predictions, stop, size))
    if out is not None:
        summary["files"] = _write_outputs(Path(out), predictions, stop, summary)
    return summary


def _write_outputs(out: Path, predictions: Tensor, stop: Tensor, summary: dict[str, Any]) -> list[str]:  # fmt: skip
    """``predict_run``'s ``out``: the tensors as ``FILE.pt``, the summary as ``FILE.json``."""
    from l2s_gym.runs import save_checkpoint, write_json

    pt = out if out.suffix == ".pt" else out.with_name(out.name + ".pt")
    layers = (stop + 1).cpu()
    save_checkpoint(pt, {"predictions": predictions.cpu(), "stop": stop.cpu(), "layers": layers})
    write_json(pt.with_suffix(".json"), summary)
    return [str(pt), str(pt.with_suffix(".json"))]


def _lookahead_words(summary: dict[str, Any]) -> str:
    """The look-ahead for the summary line: ``look-ahead auto: k=4``, ``look-ahead auto:
    k=T=20, the plain model``, ``look-ahead 3``, or nothing for a fixed ``k = 1``."""
    k, T = summary.get("lookahead", 1), summary["num_layers"]
    auto = summary.get("lookahead_mode") == "auto"
    if summary.get("plain"):
        return f"look-ahead {'auto: ' if auto else ''}k=T={T}, the plain model, "
    if auto:
        return f"look-ahead auto: k={k}, "
    return f"look-ahead {k}, " if k > 1 else ""


def format_summary(summary: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    lines = [
        f"{summary['learner']}{' (one policy)' if summary.get('one_policy') else ''} "
        f"(cost {summary['cost']:g}, seed {summary['seed']}, "
        f"read-out: {summary['readout_label']}) on {summary['data']}: "
        f"{summary['instances']} instances",
        f"average layers {summary['avg_layers']:.2f} of {summary['num_layers']} "
        f"(ideal speed-up {summary['ideal_speedup']:.2f}x)",
        f"wall time: runner {summary['runner_s'] * 1e3:.1f} ms, full depth "
        f"{summary['full_depth_s'] * 1e3:.1f} ms, measured speed-up "
        f"{summary['measured_speedup']:.2f}x (batch {summary['batch_size']}, "
        + _lookahead_words(summary)
        + f"{summary['device']}, {summary['threads']} threads)",
    ]
    if "risk" in summary:
        lines.append("guarantee: " + RiskCalibration.from_dict(summary["risk"]).promise)
    if "tune" in summary:
        tune = TuneResult.from_dict(summary["tune"])
        lines.append(f"{summary['tune_source']} ({summary['tune_file']}): {tune.describe()}")
    if "metric" in summary and summary.get("plain"):
        lines.append(
            f"{summary['metric_name']}: {summary['metric']:.4f} at full depth (the policy was "
            f"not asked; its trace-based stops: {summary['trace_avg_layers']:.2f} layers, "
            f"{summary['trace_metric']:.4f})"
        )
    elif "metric" in summary:
        lines.append(
            f"{summary['metric_name']}: {summary['metric']:.4f} (trace-based evaluation "
            f"{summary['trace_metric']:.4f}; stop layers agree on "
            f"{100 * summary['stop_agreement']:.1f}% of instances)"
        )
    lines += summary.get("files", [])
    return "\n".join(lines)
