"""Experiments as trials: small, pure units of work, each with its own folder.

A ``compare`` or ``frontier`` run is a plan of trials (``make_plan``):

    stage1 (seed)                      -> both predictors, their val/test traces
    stage2 (seed, learner, cost)       -> a policy checkpoint, its curve; needs its seed's stage1
    stage2 (seed, learner, one policy) -> one price-conditioned policy for every price of
                                          frontier.costs (``l2s frontier --one-policy``)

A trial reads its inputs from disk (its config, the stage-1 trial's files) and writes
only inside its own folder, ``<run>/<trial.key>``; it writes ``done`` last. So trials can
run in any order that respects ``needs``, in this process (``LocalRunner``) or on a
cluster (``l2s_gym.ray_backend``), and a resumed run skips the trials whose ``done``
marker exists and whose config matches. Each trial seeds torch, numpy and ``random``
from its key before it starts, so its result does not depend on what ran before it.

Trials take the typed config (``ExperimentConfig``); it is serialised only where it
leaves the process: the run's ``config.yaml``, the ``done`` markers, and Ray (which hands
``run_trial`` a dict). Run folders themselves are ``l2s_gym.runs``'s (``new_run_dir``).
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from l2s_gym import plugins, registry
from l2s_gym.build import make_predictor, make_task, resolve_device
from l2s_gym.config import (
    ConfigError,
    ExperimentConfig,
    ImitationConfig,
    from_dict,
    through_schema,
)
from l2s_gym.predictor import Trace
from l2s_gym.progress import WorkMeter, collect_notes, metering, notify
from l2s_gym.runs import (
    config_differences,
    flatten_config,
    is_under,
    load_predictor,
    new_run_dir,
    resolve_run_dir,
    write_config_snapshot,
    write_json,
)
from l2s_gym.stopping import gain_per_layer

TrialKind = Literal["stage1", "stage2"]
DigestKind = Literal["stage1", "stage2", "one_policy"]
"""Which config keys a trial's ``done`` marker records (``Trial.digest_kind``)."""
CostScale = Literal["loss", "gain"]

DONE = "done"
RESULT = "result.json"
TRACES = "traces.pt"
PLAN_KEYS = (
    "seeds",
    "frontier.costs",
    "frontier.learners",
    "frontier.one_policy",
    "compare.learners",
)
"""Config keys that only select which trials a run holds: a resumed run may differ in them."""
RUNTIME_KEYS = ("device", "threads", "compare.eval_batch_size", "ray")
"""Config keys that change how a trial runs, not what it computes."""
ONE_POLICY_KEYS = (
    "frontier.one_policy_steps",
    "frontier.one_policy_draws",
    "frontier.one_policy_balance",
)
"""Config keys only a price-conditioned (one-policy) trial reads: a per-price trial's
``done`` marker leaves them out, so changing them retrains the one policy only."""
ONE_POLICY_FORMAT = 5
"""The version of a one-policy trial, in its ``done`` marker: a trial of another version is
trained again (1: the one-number price code; 2: ``PRICE_CODE_DIM`` inputs, twice the steps
by default; 3: RL learners' rewards balanced over the prices, ``frontier.one_policy_balance``;
4: the imitation learners' KLs balanced likewise; 5: an imitation trial on fresh batches
funded for all its steps, ``one_policy_config``). A format-4 trial that format 5 does not
change (an RL learner's, or one with a trace buffer) is still current."""
ONE_POLICY_LOADABLE = 2
"""The oldest one-policy format whose checkpoints this version's policy loads (2 to 5 share
the network; 1 had a one-number price code)."""
_FORMAT_KEY = "_one_policy_format"
ONE_POLICY_GRID = "frontier.costs"
"""A plan key that a one-policy trial depends on (it trains over the grid): its marker
records it, so a run resumed with another grid retrains the one policy."""


def format_cost(cost: float) -> str:
    """A cost as it appears in folder names and tables (``0``, ``0.3``, ``1e-05``)."""
    return f"{cost:g}"


@dataclass(frozen=True)
class Trial:
    """One unit of work. ``cost`` is in units of ``scale`` (see ``FrontierConfig``).

    ``one_policy``: the learner's price-conditioned policy, trained over every price of
    ``frontier.costs`` at once (its ``cost`` is 0 and means nothing)."""

    kind: TrialKind
    seed: int
    learner: str = ""
    cost: float = 0.0
    scale: CostScale = "loss"
    one_policy: bool = False

    @property
    def key(self) -> str:
        """The trial's folder, relative to the run folder."""
        if self.kind == "stage1":
            return f"seed-{self.seed}/stage1"
        if self.one_policy:
            return f"seed-{self.seed}/{self.learner}/{ONE_POLICY_FOLDER}"
        return f"seed-{self.seed}/{self.learner}/cost-{format_cost(self.cost)}"

    @property
    def digest_kind(self) -> DigestKind:
        """What its ``done`` marker records: ``stage1`` (the stage-1 keys), ``stage2`` (all
        but the plan's, the runtime's and ``ONE_POLICY_KEYS``), ``one_policy`` (all but the
        plan's and the runtime's, plus the grid ``frontier.costs``)."""
        if self.kind == "stage1":
            return "stage1"
        return "one_policy" if self.one_policy else "stage2"

    @property
    def needs(self) -> tuple[Trial, ...]:
        return () if self.kind == "stage1" else (Trial("stage1", self.seed),)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if not self.one_policy:  # a per-price trial's record is what it always was
            del out["one_policy"]
        return out

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Trial:
        return Trial(**data)


ONE_POLICY_FOLDER = "one-policy"
"""A learner's price-conditioned trial: ``seed-<s>/<learner>/one-policy``."""


def make_plan(
    seeds: list[int],
    learners: list[str],
    costs: list[float],
    scale: CostScale = "loss",
    one_policy: Sequence[str] = (),
) -> list[Trial]:
    """Stage 1 for every seed, then every learner at every cost for every seed, then (for
    ``l2s frontier --one-policy``) each learner of ``one_policy``'s price-conditioned trial
    for every seed."""
    plan = [Trial("stage1", s) for s in seeds]
    plan += [Trial("stage2", s, name, c, scale) for s in seeds for name in learners for c in costs]
    plan += [Trial("stage2", s, name, 0.0, scale, one_policy=True) for s in seeds for name in one_policy]  # fmt: skip
    return plan


def check_resume_config(saved: dict[str, Any], current: dict[str, Any], folder: Path) -> None:
    """Refuse to resume ``folder`` under a config that computes something else.

    The saved config is read through today's schema first, so a key added to the library
    since the run began compares as its default rather than as missing."""
    saved = through_schema(saved)
    differences = sorted(config_differences(saved, current, ignore=PLAN_KEYS + RUNTIME_KEYS))
    if differences:
        key = differences[0]
        fs, fc = flatten_config(saved), flatten_config(current)
        raise ConfigError(
            f"--resume {folder}: the config differs from the run's at {key} "
            f"(run: {fs.get(key, '<missing>')!r}, now: {fc.get(key, '<missing>')!r})"
        )


# --- the trials themselves ---------------------------------------------------------------


def trial_config(cfg: ExperimentConfig | dict[str, Any], seed: int) -> ExperimentConfig:
    """The experiment config as one seed's trials see it (``seed`` set, ``seeds`` cleared).

    A typed config is copied (deeply: no trial shares a mutable part of it with another);
    a dict (a config snapshot, what Ray hands a worker) is validated into one."""
    if isinstance(cfg, ExperimentConfig):
        return replace(copy.deepcopy(cfg), seed=seed, seeds=[])
    data = json.loads(json.dumps(cfg))
    data["seed"] = seed
    data["seeds"] = []
    return from_dict(data)


def _seed_everything(trial: Trial) -> None:
    seed = zlib.crc32(trial.key.encode())
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


STAGE1_KEYS = ("task", "predictor", "stage1", "seed", "beta", "cost")
"""The config keys a stage-1 trial depends on: a run that differs only in stage-2 settings
(``imitation``, ``rl``, ``policy``, ...) can reuse its seed's stage-1 trial."""


def _digest_keys(flat: dict[str, Any], kind: DigestKind) -> dict[str, Any]:
    skip = PLAN_KEYS + RUNTIME_KEYS + (ONE_POLICY_KEYS if kind == "stage2" else ())
    out = {
        k: v
        for k, v in flat.items()
        if not is_under(k, skip) and (kind != "stage1" or is_under(k, STAGE1_KEYS))
    }
    if kind == "one_policy" and ONE_POLICY_GRID in flat:
        out[ONE_POLICY_GRID] = flat[ONE_POLICY_GRID]
    return out


def _trial_digest(cfg_dict: dict[str, Any], kind: DigestKind = "stage2") -> dict[str, Any]:
    """What a finished trial's ``done`` marker records of the config it ran under: every key
    but the plan's and the runtime's, and for a stage-1 trial only ``STAGE1_KEYS`` (see
    ``Trial.digest_kind``)."""
    return _digest_keys(flatten_config(cfg_dict), kind)


def _unflatten(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"dotted.key": value}`` back to a nested dict (``flatten_config``'s inverse)."""
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        *parents, last = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def is_done(folder: Path, cfg_dict: dict[str, Any], kind: DigestKind = "stage2") -> bool:
    """Whether the ``kind`` trial in ``folder`` finished under this config (its ``done``
    marker).

    The marker's digest is read through today's schema, as the run's config snapshot is
    on ``--resume``: a trial finished before a config key was added to the library (with
    a default that keeps the old behaviour) is reused, not trained again."""
    saved = _marker_config(folder / DONE)
    if saved is None:
        return False
    if kind == "one_policy" and not _format_current(saved.pop(_FORMAT_KEY, None), saved, folder):
        return False
    current = _trial_digest(cfg_dict, kind)
    if _digest_keys(saved, kind) == current:
        return True
    # A stage-1 marker holds only its own keys: the rest, which it does not depend on,
    # come from today's config so that the snapshot parses.
    flat = flatten_config(cfg_dict)
    filler = (
        {k: v for k, v in flat.items() if not is_under(k, STAGE1_KEYS)} if kind == "stage1" else {}
    )
    return _trial_digest(through_schema(_unflatten({**filler, **saved})), kind) == current


def _format_current(fmt: object, saved: dict[str, Any], folder: Path) -> bool:
    """Whether a one-policy trial of format ``fmt`` (its marker's digest ``saved``, in
    ``folder``: ``seed-<s>/<learner>/one-policy``) computes what this version would."""
    if fmt == ONE_POLICY_FORMAT:
        return True
    if fmt != 4:
        return False
    fresh = saved.get("imitation.buffer_size") == 0
    return registry.LEARNER_KINDS.get(Path(folder).parent.name) != "imitation" or not fresh


def _mark_done(folder: Path, cfg_dict: dict[str, Any], kind: DigestKind) -> None:
    record = {"config": _trial_digest(cfg_dict, kind), "finished": time.time()}
    if kind == "one_policy":
        record["config"][_FORMAT_KEY] = ONE_POLICY_FORMAT
    write_json(folder / DONE, record)


def _marker_config(marker: Path) -> dict[str, Any] | None:
    """The config digest a ``done`` marker records (``None``: no marker, or not readable)."""
    try:
        record = json.loads(Path(marker).read_text())
    except (OSError, ValueError):
        return None
    saved = record.get("config") if isinstance(record, dict) else None
    return saved if isinstance(saved, dict) else None


def one_policy_format(marker: Path) -> int | None:
    """The format version a one-policy trial's ``done`` marker records (``1`` for markers
    written before versions were recorded; ``None`` if the marker can't be read)."""
    saved = _marker_config(marker)
    return None if saved is None else int(saved.get(_FORMAT_KEY, 1))


def load_traces(
    stage1_dir: Path, device: torch.device | str = "cpu"
) -> dict[str, dict[str, Trace]]:
    """``{"oracle"|"fixed": {"val"|"test": Trace}}`` saved by a stage-1 trial."""
    data = torch.load(stage1_dir / TRACES, map_location="cpu", weights_only=True)
    return {m: {s: Trace.from_dict(t, device) for s, t in d.items()} for m, d in data.items()}


def load_stop_model(run_dir: Path, cfg: ExperimentConfig, seed: int, device: torch.device):  # noqa: ANN201
    """The task and the oracle-trained predictor of ``seed``'s stage-1 trial, frozen."""
    task = make_task(cfg.task, seed, device)
    predictor = make_predictor(cfg.predictor, task)
    path = run_dir / Trial("stage1", seed).key / "predictor-oracle" / "best.pt"
    load_predictor(path, predictor, cfg, task, ignore=PLAN_KEYS + RUNTIME_KEYS, warn=_quiet)
    return task, predictor


def _quiet(_: str) -> None:
    """Drops a warning: a run's own checkpoints differ from its config in nothing that
    matters (what would is refused, not warned about)."""


def _run_stage1(
    trial: Trial, folder: Path, cfg: ExperimentConfig, progress: bool
) -> dict[str, Any]:
    from l2s_gym.training import train_predictor

    device = resolve_device(cfg.device)
    task = make_task(cfg.task, trial.seed, device)
    snapshot = cfg.to_dict()
    s1 = cfg.stage1
    out: dict[str, Any] = {}
    traces: dict[str, dict[str, Any]] = {}
    for name, mode in (("oracle", "oracle"), ("fixed", s1.fixed_depth_loss)):
        model = make_predictor(cfg.predictor, task, seed=trial.seed)
        result = train_predictor(
            model,
            task,
            s1,
            mode,
            cfg.beta,
            folder / f"predictor-{name}",
            trial.seed,
            snapshot,
            progress,
            cost=cfg.cost if (name == "oracle" and s1.cost_aware) else 0.0,
        )
        model.requires_grad_(False)
        bs = cfg.compare.eval_batch_size
        traces[name] = {
            split: model.trace_eval(task.eval_set(split), task, bs).to_dict(
                with_features=name == "oracle"
            )
            for split in ("val", "test")
        }
        out[name] = {
            "wall_time_s": result.wall_time_s,
            "layer_evals": s1.steps * s1.batch_size * model.num_layers if result.trained else 0,
            "best_step": result.best_step,
            "best_val_loss": result.best_val,
            "loss": mode,
            "trained": result.trained,
        }
        if not result.trained and name == "oracle":
            why = "stage1.steps is 0" if s1.steps == 0 else "it has no trainable parameters"
            notify(f"stage 1 (seed {trial.seed}): {model.display_name} used as built ({why})")
    torch.save(traces, folder / TRACES)
    val = Trace.from_dict(traces["oracle"]["val"])
    out["gain_per_layer"] = gain_per_layer(val)
    out["num_layers"] = val.num_layers
    return out


ONE_POLICY_STEPS = 2
"""A one-policy trial's default ``imitation.steps``: this many times a per-price trial's."""


def one_policy_imitation(cfg: ExperimentConfig) -> ImitationConfig:
    """The ``imitation`` section of a price-conditioned (one-policy) trial: ``steps`` =
    ``frontier.one_policy_steps`` (``None``: ``ONE_POLICY_STEPS`` x ``imitation.steps``),
    and ``val_every`` scaled by as much, so that it validates as often as a per-price trial
    (each of its validations scores every price of the grid)."""
    icfg = cfg.imitation
    steps = cfg.frontier.one_policy_steps or ONE_POLICY_STEPS * icfg.steps
    every = max(1, round(icfg.val_every * steps / max(1, icfg.steps)))
    return replace(icfg, steps=steps, val_every=every)


def one_policy_config(cfg: ExperimentConfig, learner: str) -> ExperimentConfig:
    """The config a one-policy trial of ``learner`` runs under: ``imitation`` as
    ``one_policy_imitation`` says, and the layer budget its steps need:

    - an RL learner: ``ONE_POLICY_STEPS`` x ``compare.layer_budget`` (its episodes spread
      over the grid's prices; on sparse recovery's validation set REINFORCE's one policy
      closed -0.19 / -0.21 of the gap on one budget, -0.02 / 0.07 on two, seeds 0 / 1);
    - an imitation learner on fresh batches (``imitation.buffer_size: 0``): the budget
      scaled as its steps are, so that its steps are funded as a per-price trial's are
      (until one-policy format 5 the per-price budget cut it to a per-price trial's steps);
      with a trace buffer the budget pays for the buffer only, and stays.
    """
    kind = registry.LEARNER_KINDS.get(learner)
    icfg = cfg.imitation
    cfg = replace(cfg, imitation=one_policy_imitation(cfg))
    budget = cfg.compare.layer_budget
    if kind == "rl":
        budget = ONE_POLICY_STEPS * budget
    elif kind == "imitation" and icfg.buffer_size == 0:
        budget = max(budget, -(-budget * cfg.imitation.steps // max(1, icfg.steps)))
    return replace(cfg, compare=replace(cfg.compare, layer_budget=budget))


def _run_stage2(
    trial: Trial, run_dir: Path, folder: Path, cfg: ExperimentConfig, progress: bool
) -> dict[str, Any]:
    from l2s_gym.learner import LearnerContext, assess_health

    plugins.load_plugins()
    if trial.learner not in registry.LEARNERS:
        raise ConfigError(f"unknown learner {trial.learner!r}")
    if trial.one_policy and trial.learner not in registry.ONE_POLICY_LEARNERS:
        raise ConfigError(
            f"--one-policy: {trial.learner!r} cannot train one price-conditioned policy; "
            f"the learners that can: {', '.join(sorted(registry.ONE_POLICY_LEARNERS))}"
        )
    device = resolve_device(cfg.device)
    task, predictor = load_stop_model(run_dir, cfg, trial.seed, device)
    stage1 = run_dir / Trial("stage1", trial.seed).key
    val = load_traces(stage1, predictor.device)["oracle"]["val"]
    gain = gain_per_layer(val)
    unit = gain if trial.scale == "gain" else 1.0
    lam = trial.cost * unit
    prices = None
    if trial.one_policy:
        prices = [c * unit for c in cfg.frontier.costs]
        lam = min(prices)
        cfg = one_policy_config(cfg, trial.learner)
    ctx = LearnerContext(cfg, task, predictor, val, folder, trial.seed, progress, cost=lam,
                         prices=prices, price_unit=gain)  # fmt: skip
    result = registry.LEARNERS[trial.learner](ctx)
    health = assess_health(ctx, result)
    if health["status"] != "ok":
        notify(f"{trial.key}: {health['message']}")
    return {
        "learner": trial.learner,
        "label": registry.LEARNER_LABELS[trial.learner],
        "cost": trial.cost,
        "cost_scale": trial.scale,
        "lambda": lam,
        **(
            {}
            if prices is None
            else {"one_policy": True, "costs": list(cfg.frontier.costs), "lambdas": prices}
        ),  # fmt: skip
        "wall_time_s": result.wall_time_s,
        "layer_evals": result.layer_evals,
        "readout": result.readout.to_dict(),
        "readout_label": result.readout.label,
        "curve": result.curve,
        "extra": result.extra,
        "health": health,
    }


def run_trial(
    trial: Trial,
    run_dir: str | Path,
    cfg: ExperimentConfig | dict[str, Any],
    progress: bool = False,
) -> dict[str, Any]:
    """Run one trial into ``run_dir/trial.key`` (from scratch) and return its result.

    ``cfg``: the run's config (all its seeds), typed, or as a dict (what Ray hands a
    worker). A finished trial (``done`` under the same config) is not run again: its saved
    result is returned. An unfinished one is cleared and restarted.
    """
    cfg_dict = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg
    run_dir = Path(run_dir)
    folder = run_dir / trial.key
    if is_done(folder, cfg_dict, trial.digest_kind):
        return json.loads((folder / RESULT).read_text())
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    seed_cfg = trial_config(cfg, trial.seed)
    threads = int(getattr(seed_cfg, "threads", 0) or 0)
    if threads > 0:
        # The same thread count in every backend: torch's reductions depend on it.
        torch.set_num_threads(threads)
    _seed_everything(trial)
    with collect_notes() as notes:
        if trial.kind == "stage1":
            result = _run_stage1(trial, folder, seed_cfg, progress)
        else:
            result = _run_stage2(trial, run_dir, folder, seed_cfg, progress)
    result = {"trial": trial.to_dict(), "key": trial.key, **result, "notes": notes}
    write_json(folder / RESULT, result)
    _mark_done(folder, cfg_dict, trial.digest_kind)
    return result


# --- running a plan -----------------------------------------------------------------------


@dataclass
class TrialOutcome:
    """What happened to one trial of a plan."""

    trial: Trial
    status: Literal["done", "reused", "failed", "skipped"]
    attempts: int = 0
    error: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {"key": self.trial.key, "trial": self.trial.to_dict(), "status": self.status}
        out.update({"attempts": self.attempts, "error": self.error})
        return out


def error_line(exc: BaseException) -> str:
    """One line that says what went wrong (the last line of a traceback, shortened)."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def write_trials_file(run_dir: Path, outcomes: list[TrialOutcome]) -> None:
    write_json(run_dir / "trials.json", {"trials": [o.to_dict() for o in outcomes]})


def trial_work(
    trial: Trial, cfg: ExperimentConfig, num_layers: int, stage1_trains: bool = True
) -> tuple[str, float]:
    """A trial's kind of work (``stage1`` or its learner) and its size in layer evaluations:
    stage 1 trains two predictors of ``steps * batch_size * T`` each (nothing where it
    trains nothing: ``stage1_trains`` false; counted as ``T``, its traces); a learner may
    spend ``compare.layer_budget``. What ``l2s_gym.progress.WorkMeter`` counts."""
    if trial.kind == "stage1":
        s1 = cfg.stage1
        if not stage1_trains:
            return "stage1", float(max(1, num_layers))
        return "stage1", float(max(1, 2 * s1.steps * s1.batch_size * num_layers))
    return trial.learner, float(cfg.compare.layer_budget)


class LocalRunner:
    """Runs a plan in this process, one trial after another, in plan order.

    A trial that fails is retried once; if it fails again it is reported (status
    ``failed`` with its error line) and the trials that need it are ``skipped``; the
    rest of the plan goes on. ``KeyboardInterrupt`` stops at once (finished trials keep
    their ``done`` markers, so ``--resume`` continues from there).

    Progress (``progress``) is counted in work, not trials (``trial_work``; ``num_layers``,
    the predictor's ``T``, sizes stage 1, and ``stage1_trains`` false counts it as
    nothing to train): a bar on a terminal, plain lines otherwise.
    """

    retries = 1

    def __init__(
        self,
        progress: bool = True,
        log: Callable[[str], None] = print,
        num_layers: int = 1,
        stage1_trains: bool = True,
    ) -> None:
        self.progress = progress
        self.log = log
        self.num_layers = num_layers
        self.stage1_trains = stage1_trains

    def run(self, plan: list[Trial], run_dir: Path, cfg_dict: dict[str, Any]) -> list[TrialOutcome]:
        cfg = from_dict(json.loads(json.dumps(cfg_dict)))  # once: the trials take it typed
        work = {t.key: trial_work(t, cfg, self.num_layers, self.stage1_trains) for t in plan}
        meter = WorkMeter(work, enabled=self.progress)
        outcomes: dict[Trial, TrialOutcome] = {}
        try:
            for trial in plan:
                outcomes[trial] = self._one(trial, outcomes, run_dir, cfg, cfg_dict, meter)
                meter.finish(trial.key, reused=outcomes[trial].status != "done")
                write_trials_file(run_dir, [outcomes[t] for t in plan if t in outcomes])
        finally:
            meter.close()
        write_trials_file(run_dir, [outcomes[t] for t in plan])
        return [outcomes[t] for t in plan]

    def _one(
        self,
        trial: Trial,
        outcomes: dict[Trial, TrialOutcome],
        run_dir: Path,
        cfg: ExperimentConfig,
        cfg_dict: dict[str, Any],
        meter: WorkMeter,
    ) -> TrialOutcome:
        if any(outcomes[n].status in ("failed", "skipped") for n in trial.needs):
            return TrialOutcome(trial, "skipped", error="a trial it needs failed")
        folder = run_dir / trial.key
        if is_done(folder, cfg_dict, trial.digest_kind):
            return TrialOutcome(trial, "reused", result=json.loads((folder / RESULT).read_text()))
        outcome = TrialOutcome(trial, "failed")
        for attempt in range(1, self.retries + 2):
            outcome.attempts = attempt
            try:
                with metering(meter, trial.key):
                    outcome.result = run_trial(trial, run_dir, cfg, self.progress)
                outcome.status, outcome.error = "done", ""
                break
            except KeyboardInterrupt:
                raise
            except (ConfigError, plugins.PluginError):
                raise
            except Exception as exc:  # noqa: BLE001 - reported, the sweep goes on
                outcome.error = error_line(exc)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "error.txt").write_text("".join(traceback.format_exception(exc)))
                notify(f"trial {trial.key} failed (attempt {attempt}): {outcome.error}")
        return outcome


def prepare_run(
    cfg: ExperimentConfig, runs_root: str | Path, resume: str | None
) -> tuple[Path, ExperimentConfig, dict[str, Any]]:
    """The run folder (new, or the one to resume, checked), the config it runs and that
    config as a dict. A resumed run keeps its own seeds unless ``cfg.seeds`` names some
    (a run started with ``--seeds 0 1 2`` and resumed without ``--seeds`` keeps all three)."""
    if resume:
        run_dir = resolve_run_dir(runs_root, cfg.experiment, resume)
        import yaml

        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        seeds = saved.get("seeds") if isinstance(saved, dict) else None
        if seeds and not cfg.seeds:
            cfg = replace(cfg, seeds=[int(s) for s in seeds])
        cfg_dict = cfg.to_dict()
        check_resume_config(saved, cfg_dict, run_dir)
    else:
        run_dir = new_run_dir(runs_root, cfg.experiment)
        cfg_dict = cfg.to_dict()
    write_config_snapshot(run_dir, cfg_dict)
    return run_dir, cfg, cfg_dict


__all__ = [
    "LocalRunner",
    "Trial",
    "TrialOutcome",
    "is_done",
    "load_stop_model",
    "load_traces",
    "make_plan",
    "prepare_run",
    "run_trial",
    "trial_config",
]
