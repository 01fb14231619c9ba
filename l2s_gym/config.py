"""Experiment configuration: YAML files validated on load, with ``--set`` overrides.

An unknown or misspelled key, a wrong type or an impossible value raises ``ConfigError``
whose message names the key (``stage1.steps: expected an int, got 'ten'``). The command
line turns it into one line on stderr and exit code 2.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from l2s_gym import plugins, registry


class ConfigError(ValueError):
    """A configuration problem; the message names the offending key."""


# --- sections ---------------------------------------------------------------------------


@dataclass
class Stage1Config:
    """Stage 1, learning to predict (training the layered predictor)."""

    steps: int = 500
    """Optimiser steps for each predictor trained (stop model and fixed-depth baseline).
    0 skips training (the predictor is used as built); a predictor with no trainable
    parameters (plain conjugate gradient, fixed-step ISTA) is never trained."""
    batch_size: int = 256
    lr: float = 1e-3
    val_every: int = 50
    """Validate (and keep the best checkpoint) every this many steps."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this (0 disables)."""
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    """``cosine`` decays the learning rate to 1% of ``lr`` over ``steps``."""
    fixed_depth_loss: Literal["last", "mean"] = "last"
    """Loss of the fixed-depth baseline: last layer's loss, or the mean over layers."""
    cost_aware: bool = False
    """Train the stop model under the oracle of ``l_t + lambda C_t`` with the top-level
    ``cost`` (the paper trains at no cost; a frontier trains the predictor once)."""
    beta_anneal_from: float = 1.0
    """Continuation for the oracle stage: its temperature starts at this multiple of
    ``beta`` and falls geometrically to ``beta`` over the first ``anneal_fraction`` of the
    steps (1.0: off, the paper's one beta). A sharp oracle (small ``beta`` against the loss
    gaps between layers) puts nearly all the weight on one or two layers from the first
    step, and the layers that start behind are never trained; a high starting temperature
    weighs every layer nearly equally at first. Validation (and the best checkpoint) always
    uses ``beta``. The fixed-depth baseline is not affected."""
    anneal_fraction: float = 0.5
    last_layer_weight: float = 0.0
    """Oracle stage only: add this multiple of the last layer's loss to the soft-min (0:
    the paper's loss). The oracle gives a layer weight only where it stops, so a last
    layer it seldom picks is left behind (a weak "stop at T" and full-depth model); a
    small weight keeps it trained. The fixed-depth baseline is not affected."""

    def validate(self, path: str) -> None:
        _positive(self, path, "batch_size", "lr", "val_every")
        _non_negative(self, path, "steps", "grad_clip", "last_layer_weight")
        _check_anneal(self, path)


@dataclass
class PolicyConfig:
    """The StopPolicy network shared by every learner."""

    hidden: int = 64
    depth: int = 2
    pos_dim: int = 8

    def validate(self, path: str) -> None:
        _positive(self, path, "hidden", "depth", "pos_dim")


def _check_anneal(obj: Any, path: str) -> None:
    """Validate a ``beta_anneal_from`` / ``anneal_fraction`` pair (stage 1, imitation, RL)."""
    if obj.beta_anneal_from == "auto":
        pass
    elif obj.beta_anneal_from < 1:
        raise ConfigError(f"{path}.beta_anneal_from: must be >= 1, got {obj.beta_anneal_from!r}")
    if not 0 < obj.anneal_fraction <= 1:
        raise ConfigError(f"{path}.anneal_fraction: must be in (0, 1], got {obj.anneal_fraction!r}")


def annealed_beta(beta: float, start_multiple: float, fraction: float, progress: float) -> float:
    """The continuation's temperature: ``beta * start_multiple`` at ``progress = 0``, falling
    geometrically to ``beta`` at ``progress = fraction`` and staying there."""
    done = min(1.0, max(0.0, progress) / fraction)
    return beta * start_multiple ** (1.0 - done)


AUTO_BUFFER_MAX = 16384
"""The most instances ``imitation.buffer_size: auto`` traces."""


@dataclass
class ImitationConfig:
    """Stage 2, learning to stop by imitating the oracle with an exact KL over all T."""

    steps: int = 2000
    """Optimiser steps (each on a batch of ``batch_size`` traces over all ``T`` layers)."""
    batch_size: int = 256
    lr: float = 3e-3
    val_every: int = 50
    beta: float | None = None
    """The KL target's temperature in stage 2 (``q* ∝ exp(-loss / beta)``); ``None``: the
    experiment's ``beta``, as in the paper (one beta for both stages). With the reverse KL
    it weighs the expected loss against the entropy of ``q_phi``
    (``KL(q_phi || q*) = E_q[loss] / beta - H(q_phi) + const``): a lower stage-2 beta asks
    for a sharper policy. Stage 1 (the oracle the predictor trains under) keeps ``beta``."""
    beta_anneal_from: float | Literal["auto"] = "auto"
    """Continuation: the KL target's temperature starts at this multiple of beta and falls
    geometrically to beta over the first ``anneal_fraction`` of the steps (1.0: off;
    ``auto``: the multiple that starts it at the typical spread of the objective's losses
    across layers, ``l2s_gym.learner.auto_anneal_multiple``). The objective at the end is
    the exact KL at beta."""
    anneal_fraction: float = 0.5
    buffer_size: int | Literal["auto"] = "auto"
    """Stage 2 from cached traces: trace this many training instances once with the frozen
    predictor (features, losses, groups; ``buffer_size * T`` layer evaluations, counted
    against ``compare.layer_budget``) and draw every step's batch from that buffer.
    ``auto``: as many as the layer budget funds, up to ``AUTO_BUFFER_MAX`` instances. 0: a
    fresh batch (and a fresh trace, ``batch_size * T`` layer evaluations) every step."""

    def validate(self, path: str) -> None:
        _positive(self, path, "steps", "batch_size", "lr", "val_every")
        if self.buffer_size != "auto":
            _non_negative(self, path, "buffer_size")
        _check_anneal(self, path)
        if self.beta is not None and not self.beta > 0:
            raise ConfigError(
                f"{path}.beta: must be > 0 (or null: the experiment's beta), got {self.beta!r}"
            )


SB3_ALGORITHMS = {"ppo": "PPO", "a2c": "A2C", "dqn": "DQN"}
"""The stable-baselines3 learners: config block name -> SB3 class name."""

SB3_DEFAULTS: dict[str, dict[str, Any]] = {
    "ppo": {
        "learning_rate": 3e-3,
        "n_steps": 64,
        "batch_size": 4096,
        "n_epochs": 4,
        "gamma": 1.0,
        "ent_coef": 1.0,
        "normalize_advantage": False,
    },
    "a2c": {
        "learning_rate": 1e-3,
        "n_steps": 8,
        "gamma": 1.0,
        "ent_coef": 1.0,
        "normalize_advantage": False,
    },
    "dqn": {},
}
"""The library's defaults for PPO's and A2C's constructor arguments; SB3's own defaults for
the rest (DQN: SB3's own for every argument). ``gamma`` 1 is the paper's undiscounted objective (episodes last at most ``T``
steps); ``ent_coef`` 1 with unnormalised advantages weighs the entropy bonus against the
rewards (losses in units of ``beta``) as the max-entropy objective does."""

SB3_OWNED = {
    "policy": "the learner's MlpPolicy",
    "env": "the learner's StopVecEnv",
    "policy_kwargs": "the StopPolicy-shaped actor; size it with policy.hidden and policy.depth",
    "device": "the predictor's device",
    "seed": "derived from the run's seed",
    "verbose": "the learner's progress bar and TensorBoard",
    "tensorboard_log": "the learner's run folder",
    "_init_setup_model": "always true",
}
"""SB3 constructor arguments the learner sets; a config block may not."""

SB3_SCHEDULES = ("learning_rate", "clip_range", "clip_range_vf")
"""Arguments that take rl-zoo3's ``lin_<value>``: from ``value`` linearly down to 0 over the
layer budget."""

REINFORCE_KEYS = (
    "lr",
    "rollout_steps",
    "entropy_coef",
    "gamma",
    "reinforce_num_envs",
    "reinforce_scale_free",
)
"""The ``rl`` keys only REINFORCE reads: what ``hyperparams/reinforce.yml`` may set."""


@dataclass
class RLConfig:
    """Policy-gradient baselines trained on the environment (same objective, sampled).

    REINFORCE reads the flat keys; PPO and A2C read their own blocks ``ppo`` and ``a2c``,
    mappings of their stable-baselines3 constructor arguments as rl-zoo3's hyper-parameter
    files write them (``learning_rate: lin_3e-3``, ``n_steps``, ``gae_lambda``, ...).
    Per task, ``configs/hyperparams/<algorithm>.yml`` (``ppo``, ``a2c``, ``reinforce``)
    holds tuned values; a value comes from, lowest first: the library's defaults
    (``SB3_DEFAULTS``, the dataclass defaults), the file's entry for the task, the
    experiment config, ``--set``. ``l2s_gym.config.with_hyperparams`` merges them.
    """

    reward: Literal["terminal_loss", "log_oracle", "improvement"] = "log_oracle"
    num_envs: int = 256
    """Instances advanced together by the batched environment. (The layer budget is
    ``compare.layer_budget``, the same for every learner; the price of a layer is the
    top-level ``cost`` or a frontier's.)"""
    lr: float = 3e-3
    """REINFORCE's Adam learning rate."""
    val_every: int = 20
    """Validate every this many updates."""
    entropy_coef: float = 1.0
    """Coefficient ``c`` of REINFORCE's entropy bonus ``c * H(q)``; the rewards are in units of
    ``1 / beta``, so 1.0 is the paper's objective ``E_q[l_t] - beta H(q)``."""
    gamma: float = 1.0
    """REINFORCE's discount per layer (1.0: the paper's undiscounted objective)."""
    rollout_steps: int = 64
    """REINFORCE's window: episodes starting in its first this many env steps are used."""
    reinforce_num_envs: int = 0
    """REINFORCE's own number of environments (0: ``num_envs``). It takes one gradient step
    per window, so fewer environments give it more updates from the same layer budget."""
    reinforce_scale_free: bool = False
    """Divide each REINFORCE update's surrogate (policy-gradient and entropy terms alike) by
    the standard deviation of its advantages: the exact gradient's direction, at a size that
    does not depend on the scale of the returns (why: docs/method.md, "Why RL is the
    baseline")."""
    ppo: Any = field(default_factory=dict)
    """PPO's constructor arguments (``stable_baselines3.PPO``), a mapping: e.g.
    ``{learning_rate: lin_3e-3, n_steps: 64, batch_size: 4096, n_epochs: 4, gae_lambda:
    0.95, clip_range: 0.2}``. Keys are checked against PPO's signature; ``batch_size`` is
    capped at ``n_steps * num_envs``. Missing keys: ``SB3_DEFAULTS``, then SB3's."""
    a2c: Any = field(default_factory=dict)
    """A2C's constructor arguments (``stable_baselines3.A2C``), as ``ppo``."""
    dqn: Any = field(default_factory=dict)
    """DQN's constructor arguments (``stable_baselines3.DQN``), as ``ppo``; missing keys are
    SB3's own defaults. DQN's env has its own rewards and size (``l2s_gym.agents.sb3_dqn``)."""
    dqn_num_envs: int = 8
    """Instances DQN's env advances together (SB3 counts ``train_freq`` in steps of all of
    them: more environments, fewer gradient steps per transition)."""
    beta_anneal_from: float | Literal["auto"] = 1.0
    """Continuation, as ``imitation.beta_anneal_from``: the env's reward temperature starts
    at this multiple of beta and falls geometrically to beta over the first
    ``anneal_fraction`` of ``compare.layer_budget`` (1.0: off; ``auto`` as imitation's)."""
    anneal_fraction: float = 0.5

    def validate(self, path: str) -> None:
        _positive(self, path, "num_envs", "lr", "val_every", "rollout_steps", "dqn_num_envs")
        _non_negative(self, path, "reinforce_num_envs")
        _non_negative(self, path, "entropy_coef")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"{path}.gamma: must be in (0, 1], got {self.gamma!r}")
        _check_anneal(self, path)
        for algorithm in SB3_ALGORITHMS:
            block = check_sb3_arguments(algorithm, getattr(self, algorithm), f"{path}.{algorithm}")
            setattr(self, algorithm, sb3_arguments(algorithm, block))


def sb3_signature(algorithm: str) -> dict[str, Any]:
    """The constructor arguments of SB3's ``algorithm`` a config may set, with SB3's defaults."""
    import inspect

    import stable_baselines3

    cls = getattr(stable_baselines3, SB3_ALGORITHMS[algorithm])
    return {
        name: param.default
        for name, param in inspect.signature(cls.__init__).parameters.items()
        if name != "self" and name not in SB3_OWNED
    }


def sb3_arguments(algorithm: str, block: dict[str, Any]) -> dict[str, Any]:
    """``block`` over the library's defaults: the arguments the learner passes to SB3."""
    return {**SB3_DEFAULTS[algorithm], **block}


def _finite(value: Any, where: str) -> float:
    """A finite float from a number or a string ``float()`` reads (YAML leaves ``3e-4`` a string)."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or number != number or number in (float("inf"), float("-inf")):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return number


def _sb3_value(value: Any, default: Any, key: str, where: str) -> Any:
    if key in SB3_SCHEDULES and isinstance(value, str) and value.startswith("lin_"):
        _finite(value[len("lin_") :], where)
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value):
            raise ConfigError(f"{where}: expected an int, got {value!r}")
        return int(value)
    if isinstance(default, float) or key in ("clip_range_vf", "target_kl"):
        if value is None and default is None:
            return None
        return _finite(value, where)
    return value


def check_sb3_arguments(algorithm: str, block: Any, path: str) -> dict[str, Any]:
    """Validate a mapping of SB3 ``algorithm``'s constructor arguments; returns it normalised.

    Unknown names (with a did-you-mean), arguments the learner owns and values of the wrong
    type raise ``ConfigError`` naming ``path.<key>``.
    """
    name = SB3_ALGORITHMS[algorithm]
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: expected a mapping of {name}'s arguments, got {block!r}")
    if not block:
        return {}
    signature = sb3_signature(algorithm)
    out = {}
    for key, value in block.items():
        where = f"{path}.{key}"
        if key in SB3_OWNED:
            raise ConfigError(f"{where}: set by the learner ({SB3_OWNED[key]})")
        if key not in signature:
            raise ConfigError(
                f"{where}: not an argument of stable_baselines3.{name}"
                f"{_suggest(str(key), list(signature))}"
            )
        out[key] = _sb3_value(value, signature[key], key, where)
    return out


def hyperparams_path(algorithm: str) -> Path | None:
    """``configs/hyperparams/<algorithm>.yml`` (next to the bundled configs), if present."""
    here = Path(__file__).resolve().parent
    for folder in (here.parent / "configs", here / "configs"):
        path = folder / "hyperparams" / f"{algorithm}.yml"
        if path.is_file():
            return path
    return None


def hyperparams_entry(algorithm: str, task: str) -> dict[str, Any]:
    """The entry for ``task`` in ``hyperparams/<algorithm>.yml`` (empty if none), validated."""
    path = hyperparams_path(algorithm)
    if path is None:
        return {}
    where = f"hyperparams/{algorithm}.yml"
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of task names")
    entry = data.get(task) or {}
    if algorithm in SB3_ALGORITHMS:
        return check_sb3_arguments(algorithm, entry, f"{where}: {task}")
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {task}: expected a mapping, got {entry!r}")
    for key in entry:
        if key not in REINFORCE_KEYS:
            raise ConfigError(
                f"{where}: {task}.{key}: not a REINFORCE key (one of {', '.join(REINFORCE_KEYS)})"
                f"{_suggest(str(key), list(REINFORCE_KEYS))}"
            )
    return dict(entry)


def with_hyperparams(task: str, rl: Any) -> Any:
    """The raw ``rl`` mapping over the hyper-parameter files' entries for ``task``.

    REINFORCE's flat keys and each SB3 block take the file's value where the config sets
    none; the library's defaults fill the rest when the section is built.
    """
    if rl is None:
        rl = {}
    if not isinstance(rl, dict):
        return rl  # build_dataclass reports it
    merged = {**hyperparams_entry("reinforce", task), **rl}
    for algorithm in SB3_ALGORITHMS:
        block = rl.get(algorithm)
        if block is None or isinstance(block, dict):
            merged[algorithm] = {**hyperparams_entry(algorithm, task), **(block or {})}
    return merged


@dataclass
class CompareConfig:
    """Which learners ``l2s compare`` and ``l2s frontier`` train, on what budget."""

    learners: list[str] = field(
        default_factory=lambda: ["reverse_kl", "forward_kl", "reinforce", "ppo", "a2c"]
    )
    eval_batch_size: int = 1024
    layer_budget: int = 2_000_000
    """Layer evaluations (one instance through one layer) each stage-2 learner may spend,
    the same for every learner: the RL agents' episodes, and imitation's traces (fresh
    batches, or its trace buffer). Imitation also stops after ``imitation.steps``."""

    def validate(self, path: str) -> None:
        known = plugins.learner_names()
        if not self.learners:
            raise ConfigError(
                f"{path}.learners: must list at least one learner; known: {', '.join(known)}"
            )
        for name in self.learners:
            if name not in known:
                raise ConfigError(
                    f"{path}.learners: unknown learner {name!r}; known: {', '.join(known)}"
                )
        twice = sorted({n for n in self.learners if self.learners.count(n) > 1})
        if twice:
            raise ConfigError(f"{path}.learners: {twice[0]!r} is listed twice: {self.learners}")
        _positive(self, path, "eval_batch_size", "layer_budget")


@dataclass
class FrontierConfig:
    """``l2s frontier``: the grid of layer prices ``lambda`` each learner is trained at."""

    costs: list[float] = field(default_factory=lambda: [0.0, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0])
    """Prices of a layer, in units of ``cost_scale``. The default reaches from the paper's
    price 0 to 10 times the average gain per layer, where nearly every instance stops
    after a layer or two: a curve over all budgets in ``[1, T]`` (below a learner's fewest
    average layers its curve is undefined and counts against its dominance)."""
    learners: list[str] = field(default_factory=list)
    """Learners trained at every price (empty: ``compare.learners``)."""
    cost_scale: Literal["loss", "gain"] = "gain"
    """``loss``: ``costs`` are ``lambda`` in units of the task's loss. ``gain``: in units of
    the stop model's average gain per layer on the validation set (``(mean_i l_{i,1} -
    mean_i min_t l_{i,t}) / (T - 1)``), so that a grid means the same on any task or
    predictor: at 1, a layer costs what an average layer earns under the oracle."""
    one_policy: bool = False
    """``l2s frontier --one-policy``: after the per-price trials, train each learner of
    ``learners`` that can (``l2s_gym.registry.ONE_POLICY_LEARNERS``: the imitation learners,
    ``reinforce``, ``ppo``, ``a2c`` and ``dqn``) once more, as one price-conditioned policy
    for every price of ``costs`` (``StopPolicy(price_input=True)``; imitation: each instance
    of a batch at a price drawn from the grid; the RL learners: each episode at a price
    drawn from the grid, shown in its observation), and draw its curve next to the
    per-price ones. It only adds trials: a run may be resumed with or without it."""
    one_policy_steps: int | None = None
    """``imitation.steps`` of the price-conditioned trial (``None``: twice
    ``imitation.steps``, what each per-price trial runs; ``imitation.val_every`` is scaled
    by as much, so that it validates as often: ``l2s_gym.trials.one_policy_imitation``).
    With fresh batches the layer budget still caps it.
    An RL learner's one-policy trial runs on twice ``compare.layer_budget``
    (``l2s_gym.trials.one_policy_config``)."""
    one_policy_draws: int = 1
    """Prices per instance per step of the price-conditioned trial, drawn from the grid
    without replacement (1: one price per instance, a step costs a per-price step; the
    grid's size or more: every instance at every grid price, the exact mean over the grid,
    at that many times the policy's compute)."""
    one_policy_balance: bool = True
    """Every grid price weighs about alike in a one-policy trial's gradient; each price's
    objective is only scaled, so its best policy is unchanged. RL learners: each episode's
    rewards times ``1 / (1 + lambda / g)`` (``l2s_gym.envs.batched.balanced_price_weights``,
    ``g`` the gain per layer); without it a high price's large rewards drown a low price's
    small ones (sparse recovery, validation: PPO's one policy closed 0.06 of the oracle gap
    unweighted, 0.29 weighted). Imitation learners: each row's KL times the square root of
    the grid mean of the prices' running mean KLs over its own price's
    (``l2s_gym.agents.imitation.PriceDraws``); without it the low prices lost the most
    (sparse recovery, validation: 0.40 of the gap unscaled, 0.43 scaled, the per-price
    policies' 0.46; docs/deploy.md). ``false``: the rewards and KLs as at a single price."""

    def validate(self, path: str) -> None:
        if not self.costs:
            raise ConfigError(f"{path}.costs: must list at least one cost")
        if any(not (c >= 0) or c == float("inf") for c in self.costs):
            raise ConfigError(f"{path}.costs: costs must be finite and >= 0, got {self.costs}")
        if len(set(self.costs)) != len(self.costs):
            raise ConfigError(f"{path}.costs: a cost is listed twice: {self.costs}")
        if isinstance(self.one_policy_draws, bool) or not isinstance(self.one_policy_draws, int) or self.one_policy_draws < 1:  # fmt: skip
            raise ConfigError(f"{path}.one_policy_draws: a whole number >= 1, got {self.one_policy_draws!r}")  # fmt: skip
        steps = self.one_policy_steps
        if steps is not None and (
            isinstance(steps, bool) or not isinstance(steps, int) or steps < 1
        ):
            raise ConfigError(
                f"{path}.one_policy_steps: a whole number >= 1 or null, got {steps!r}"
            )
        known = plugins.learner_names()
        for name in self.learners:
            if name not in known:
                raise ConfigError(
                    f"{path}.learners: unknown learner {name!r}; known: {', '.join(known)}"
                )


def check_layer_budget(cfg: ExperimentConfig, num_layers: int, imitation: bool) -> None:
    """What ``compare.layer_budget`` must fund, given the predictor's ``T``: one instance's
    trace, and for an imitation learner (``imitation``) its trace buffer or, without one,
    ``imitation.steps`` fresh batches. A budget that cannot fund them is a ``ConfigError``
    naming both keys: nothing is ever cut short without a word."""
    budget, icfg, T = cfg.compare.layer_budget, cfg.imitation, num_layers
    if budget < T:
        raise ConfigError(
            f"compare.layer_budget: {budget:,} layer evaluations do not trace one instance "
            f"through the predictor's {T} layers"
        )
    if not imitation:
        return
    if icfg.buffer_size != "auto" and icfg.buffer_size * T > budget:
        raise ConfigError(
            f"imitation.buffer_size: tracing {icfg.buffer_size:,} instances through {T} layers "
            f"takes {icfg.buffer_size * T:,} layer evaluations, more than compare.layer_budget "
            f"{budget:,}; lower one, raise the other, or use buffer_size: auto"
        )
    need = icfg.steps * icfg.batch_size * T
    if icfg.buffer_size == 0 and need > budget:
        raise ConfigError(
            f"imitation.steps: {icfg.steps:,} fresh batches of imitation.batch_size "
            f"{icfg.batch_size} through {T} layers take {need:,} layer evaluations, more than "
            f"compare.layer_budget {budget:,} funds ({budget // (icfg.batch_size * T):,} "
            "steps); lower one, raise the other, or use a trace buffer (imitation.buffer_size)"
        )


@dataclass
class RayConfig:
    """Resources of each trial when a sweep runs on Ray (``--ray``)."""

    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    """GPUs Ray reserves per trial; with ``device: auto`` a trial uses CUDA when Ray gives
    it a GPU. 0 on a CPU-only machine."""

    def validate(self, path: str) -> None:
        _positive(self, path, "cpus_per_trial")
        _non_negative(self, path, "gpus_per_trial")


@dataclass
class ComponentSpec:
    """``task`` or ``predictor``: a registered name plus that component's own parameters."""

    name: str
    params: Any


@dataclass
class ExperimentConfig:
    experiment: str
    task: Any = None
    """A ``ComponentSpec`` (set by ``from_dict``)."""
    predictor: Any = None
    """A ``ComponentSpec`` (set by ``from_dict``)."""
    seed: int = 0
    """Seed of the task's data (its matrix, validation and test sets) and of every model's
    initialisation; >= 0."""
    seeds: list[int] = field(default_factory=list)
    """Seeds ``compare`` / ``frontier`` run (stage 1 and every learner, per seed) into one
    run folder; empty: ``[seed]``. ``--seeds`` on the command line sets it."""
    device: str = "auto"
    threads: int = 0
    """torch's intra-op threads for this run (0: torch's default). Results are exactly
    reproducible at a fixed thread count; on a busy machine 1 is often fastest.
    ``l2s --threads N`` sets it."""
    beta: float = 0.1
    """Weight of the stop-time entropy; temperature of the oracle q*."""
    cost: float = 0.0
    """``lambda``, the price of a layer in units of the loss, for ``compare``: the oracle
    becomes ``q*(t) ∝ exp(-(l_t + lambda C_t) / beta)`` (0: the paper's objective)."""
    stage1: Stage1Config = field(default_factory=Stage1Config)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    imitation: ImitationConfig = field(default_factory=ImitationConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)
    frontier: FrontierConfig = field(default_factory=FrontierConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    @property
    def run_seeds(self) -> list[int]:
        """The seeds a ``compare`` / ``frontier`` run covers."""
        return list(self.seeds) if self.seeds else [self.seed]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ComponentSpec):
                out[f.name] = {"name": value.name, **dataclasses.asdict(value.params)}
            elif dataclasses.is_dataclass(value):
                out[f.name] = dataclasses.asdict(value)  # type: ignore[arg-type]
            else:
                out[f.name] = value
        return out


# --- value checks used by sections -----------------------------------------------------------


def _positive(obj: Any, path: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) <= 0:
            raise ConfigError(f"{path}.{name}: must be > 0, got {getattr(obj, name)!r}")


def _non_negative(obj: Any, path: str, *names: str) -> None:
    for name in names:
        if getattr(obj, name) < 0:
            raise ConfigError(f"{path}.{name}: must be >= 0, got {getattr(obj, name)!r}")


def feature_groups(obj: Any, path: str, allowed: tuple[str, ...], name: str = "features") -> None:
    """``obj.<name>``: a non-empty list of the groups in ``allowed``, none twice (a
    predictor's policy feature groups)."""
    value = list(getattr(obj, name))
    if not value or any(g not in allowed for g in value):
        raise ConfigError(
            f"{path}.{name}: expected a non-empty list of {', '.join(allowed)}, got {value}"
        )
    if len(set(value)) != len(value):
        raise ConfigError(f"{path}.{name}: a feature group is listed twice: {value}")


positive = _positive
non_negative = _non_negative


# --- generic strict conversion ----------------------------------------------------------------


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(
                f"{path}: expected one of {', '.join(map(repr, allowed))}, got {value!r}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        return [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build_dataclass(tp, value, path)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            hint = ""
            number = _number(value) if isinstance(value, str) else None
            if number is not None and number.is_integer() and math.isfinite(number):
                hint = f" (write {int(number)})"
            raise ConfigError(f"{path}: expected an int, got {value!r}{hint}")
        return value
    if tp is float:
        # YAML 1.1 reads 3e-4 and 1.0e9 (no dot, or no exponent sign) as strings: accept
        # every spelling Python's float() does. Non-finite values are never meant.
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        number = _number(value) if isinstance(value, str | int | float) else None
        if number is None:
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {tp!r}")  # pragma: no cover


def _number(value: str | int | float) -> float | None:
    """``float(value)``, or ``None`` where Python's ``float()`` refuses it."""
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (ValueError, OverflowError):
        return None


def build_dataclass(cls: type, data: Any, path: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key{_suggest(str(key), list(fields))}")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{path}.{name}" if path else name)
    where = path or "config"
    missing = [n for n, f in fields.items() if n not in kwargs and _required(f)]
    if missing:
        raise ConfigError(f"{path + '.' if path else ''}{missing[0]}: required key missing")
    try:
        obj = cls(**kwargs)
        if hasattr(obj, "validate"):
            obj.validate(path)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        # A plugin's own check (its constructor or validate()) that raised a plain error:
        # still one line that names the section. Plugins should raise ConfigError.
        raise ConfigError(f"{where}: {type(exc).__name__}: {exc}") from exc
    return obj


def _required(f: dataclasses.Field) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _component(kind: str, data: Any) -> ComponentSpec:
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(f"{kind}.name: required key missing")
    name = data["name"]
    table = registry.TASKS if kind == "task" else registry.PREDICTORS
    if name not in table:
        raise ConfigError(
            f"{kind}.name: unknown {kind} {name!r}{_suggest(str(name), list(table))}; "
            f"known: {', '.join(sorted(table))}"
        )
    params = {k: v for k, v in data.items() if k != "name"}
    return ComponentSpec(name, build_dataclass(table[name].config_cls, params, kind))


_SAFE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
"""An experiment name: one folder name under the runs folder, nothing that could escape it."""


def _check_experiment(name: str) -> None:
    if not _SAFE_NAME.fullmatch(name):
        raise ConfigError(
            f"experiment: must be a single folder name of letters, digits, '.', '_' and '-' "
            f"(not starting with '.', at most 128 characters), got {name!r}"
        )


def _top_level(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"{type(data).__name__} {data!r}"
        raise ConfigError(
            f"config: expected a mapping (key: value lines) at the top level, got {kind}"
        )
    return data


def _with_default_predictor(task: ComponentSpec, data: Any) -> Any:
    """The ``predictor`` section, its ``name`` defaulting to the task's ``default_predictor``."""
    if data is None:
        data = {}
    if not isinstance(data, dict) or "name" in data:
        return data
    default = getattr(registry.TASKS[task.name].cls, "default_predictor", "")
    if not default:
        raise ConfigError(
            f"predictor.name: required key missing (task {task.name!r} names no default predictor)"
        )
    return {"name": default, **data}


def from_dict(data: Any) -> ExperimentConfig:
    """Validate a parsed YAML mapping into an ``ExperimentConfig``."""
    data = dict(_top_level(data))
    task = _component("task", data.pop("task", None))
    predictor = _component("predictor", _with_default_predictor(task, data.pop("predictor", None)))
    pred_entry = registry.PREDICTORS[predictor.name]
    if pred_entry.task is not None and pred_entry.task != task.name:
        raise ConfigError(
            f"predictor.name: {predictor.name!r} works on task {pred_entry.task!r}, "
            f"not {task.name!r}"
        )
    data["rl"] = with_hyperparams(task.name, data.get("rl"))
    cfg = build_dataclass(ExperimentConfig, data, "")
    cfg.task = task
    cfg.predictor = predictor
    _check_experiment(cfg.experiment)
    if cfg.seed < 0:
        raise ConfigError(f"seed: must be >= 0, got {cfg.seed!r}")
    for i, s in enumerate(cfg.seeds):
        if s < 0:
            raise ConfigError(f"seeds[{i}]: must be >= 0, got {s!r}")
    if cfg.beta <= 0:
        raise ConfigError(f"beta: must be > 0, got {cfg.beta!r}")
    if not cfg.cost >= 0:
        raise ConfigError(f"cost: must be >= 0, got {cfg.cost!r}")
    if cfg.threads < 0:
        raise ConfigError(f"threads: must be >= 0 (0: torch's default), got {cfg.threads!r}")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"seeds: a seed is listed twice: {cfg.seeds}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        raise ConfigError(f"device: expected auto, cpu or cuda, got {cfg.device!r}")
    return cfg


def through_schema(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config snapshot read through today's schema, so that a key added to the
    library since it was saved appears with its default rather than as missing; the raw
    dict where it no longer parses (a key since removed or renamed: comparing the raw
    dicts then names that key)."""
    try:
        return from_dict(copy.deepcopy(saved)).to_dict()
    except ConfigError:
        return saved


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What a YAML error says, on one line, without PyYAML's position excerpt."""
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = ", ".join(p for p in parts if p) or type(exc).__name__
    return " ".join(text.split())


def apply_overrides(data: Any, overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a raw config mapping."""
    data = copy.deepcopy(_top_level(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"--set {item}: expected key=value with a key like stage1.steps")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"--set {item}: the value is not valid YAML ({_yaml_problem(exc)})"
            ) from None
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:  # a section left empty in the file
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
        node[parts[-1]] = value
    return data


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate a YAML experiment file.

    A YAML syntax error names the file, line and column (``cfg.yaml:3:7``).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: no such file {str(path)!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: cannot read {path} ({type(exc).__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"config: {where}: invalid YAML: {_yaml_problem(exc)}") from None
    return from_dict(apply_overrides({} if data is None else data, overrides or []))


def find_config(name_or_path: str) -> Path:
    """A config path, or the name of a bundled config (``sparse_recovery_small``)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = Path(__file__).resolve().parent.parent / "configs" / f"{name_or_path}.yaml"
    if bundled.is_file():
        return bundled
    packaged = Path(__file__).resolve().parent / "configs" / f"{name_or_path}.yaml"
    if packaged.is_file():
        return packaged
    return path
