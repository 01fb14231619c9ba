"""Early exit, measured: wall-clock time of ``l2s_gym.StopRunner`` against the full-depth predictor.

For each family at the paper-scale predictor sizes (``configs/<family>.yaml``) the script
trains the predictor briefly (this is about time, not quality), picks a few layer prices
``lambda`` whose oracle depth on a validation trace spreads over the depth (a quarter,
half and three quarters of ``T``), trains a stop policy at each with the reverse-KL
imitation learner (briefly), and times on test instances, at batch sizes 1, 64 and 1024:

- the full-depth predictor: its ``layer`` calls and the last ``readout``, nothing else
  (``l2s_gym.runner.run_full_depth``);
- the runner at each cost: the same layers for the instances still going, the read-out
  and the policy after each layer, compaction of the stopped instances.

Both run under ``torch.inference_mode`` with the same threads on the same instances;
the repeats are interleaved (every variant once a round, in a new seeded order each
round) so that a busy machine slows both alike; the first round is a warm-up and is not
timed; times are medians.
Batch 1 runs ``--instances-b1`` instances one after the other (their own stop layers) and
reports the time per instance.

Each row: ``family``, ``batch``, ``cost``, ``avg_layers``, ``ideal_speedup``
(``T / avg_layers``), ``measured_speedup`` (full-depth time / runner time), and:
``ideal_speedup_layer_time`` (the speed-up if the runner cost exactly the layers it
computes, each weighed by its measured time in the full-depth pass: below ``T /
avg_layers`` where early layers are the expensive ones), ``full_ms`` / ``runner_ms``
(medians, per batch), ``measured_speedup_cpu_time`` (the same ratio in CPU time of the
process: with one thread, what other processes on a busy machine do not distort),
``repeats``, ``lookahead`` (``k``: the runner asked the policy once per ``k`` layers;
every policy is timed at ``k = 1``, and at batch sizes 1 and 64 also at ``k = 4`` (same
stop layers, checked) and ``k = T`` (never asked: the plain model, every instance at the
last layer, checked); ``"auto"``: the runner tuned for the batch size by
``StopRunner.tune`` on validation instances, at every batch size), ``k`` (the look-ahead
that ran: the chosen one for ``"auto"``, whose rows also carry the ``tune`` figures and
``tune_s``), ``measured_speedup_paired`` (the median over rounds of the full-depth time
over the runner's within a round: what load from other processes disturbs least),
``measured_speedup_rounds`` (the lowest and highest of those ratios: the spread of the
measurement itself),
``readout`` (the rule chosen on validation) and ``runner_parts_ms`` (where the runner's
time goes: ``layer``, ``readout``, ``features``, ``policy``, ``decide``, ``compact``; from
a separate profiled run).

``--runs RUN ...`` times trained ``l2s compare`` run folders instead of training the
configs (the oracle predictor, ``--learner``'s policies at three of the folder's prices,
``--run-costs`` to choose). ``--try-compile 1 1024`` also times ``torch.compile`` of the
policy MLP against eager (the report's ``compile``).

Usage::

    python benchmarks/early_exit_speedup.py --out early_exit.json            # CPU, 2 threads
    python benchmarks/early_exit_speedup.py --out early_exit_gpu.json --device cuda
    python benchmarks/early_exit_speedup.py --out q.json --quick             # smoke run

On CPU it uses 2 threads (``--threads``) and runs in under 10 minutes; the paper-scale
DnCNN (20 layers of 64 channels on 40x40 patches) at batch 1024 takes tens of seconds per
full pass on 2 cores, so it runs once (no repeat) there, as the output says.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from l2s_gym import build, registry
from l2s_gym.config import find_config, load_config
from l2s_gym.learner import LearnerContext
from l2s_gym.predictor import LayeredPredictor, Trace
from l2s_gym.rules import PAPER_RULE, ReadoutRule
from l2s_gym.runner import StopRunner, example_rows, run_full_depth
from l2s_gym.stopping import cost_adjusted_losses, cumulative_costs
from l2s_gym.task import Task
from l2s_gym.training import train_predictor


@dataclass
class Budget:
    """How much each family trains and how often each batch size is timed."""

    stage1_steps: int
    stage1_batch: int
    imitation_steps: int
    imitation_batch: int
    val_size: int | None
    """Validation instances (for stage 1's checks and the learner's validation trace)."""
    repeats: dict[int, int]
    """Timed repeats per batch size, after one untimed warm-up round (none where 1: the
    smaller batches ran the same code first)."""
    instances_b1: int = 32
    """Instances run one at a time for batch size 1."""
    stage1_task: tuple[str, ...] = ()
    """Overrides of the task for stage 1 only (e.g. smaller denoising patches)."""


# CPU seconds per step at these sizes (2 threads): sparse recovery ~0.3 (stage 1, batch
# 256), recognition ~0.5 (batch 32), meta learning ~3.5 (second-order, batch 64) and 0.6
# per imitation trace, denoising ~7 on 40x40 patches (hence stage 1 on 16x16 crops: the
# DnCNN is fully convolutional) and ~2.3 per imitation trace of 16 patches.
BUDGETS = {
    "sparse_recovery": Budget(30, 256, 40, 256, 1000, {1: 7, 64: 7, 1024: 9}),
    "denoising": Budget(
        60, 16, 12, 16, 64, {1: 3, 64: 3, 1024: 1}, instances_b1=16, stage1_task=("patch_size=16",)
    ),
    "recognition": Budget(40, 32, 60, 64, None, {1: 5, 64: 7, 1024: 5}),
    "meta_learning": Budget(0, 64, 40, 64, 512, {1: 5, 64: 7, 1024: 5}),
}
QUICK = Budget(3, 16, 4, 32, 64, {1: 1, 64: 1, 1024: 1}, instances_b1=4)
COST_TARGETS = (0.25, 0.5, 0.75)
"""Costs are chosen so that the oracle's average depth is these fractions of its depth at
price 0 (see ``choose_costs``)."""
NEVER = "never"
"""The reference row: a policy that never stops (logit -50), i.e. the runner's overhead at
full depth; not a frontier point and not one of the costs."""
AUTO = "auto"
"""The look-ahead of the tuned runner (``StopRunner.tune`` for the batch size, on
validation instances); its rows carry the chosen ``k``."""


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def oracle_depth(trace: Trace, cost: float, cum: torch.Tensor) -> float:
    stop = cost_adjusted_losses(trace.losses, cost, cum).argmin(dim=1)
    return float((stop + 1).double().mean())


def choose_costs(trace: Trace, cum: torch.Tensor, targets: tuple[float, ...]) -> list[float]:
    """For each target fraction, the price whose oracle depth on ``trace`` is nearest that
    fraction of the oracle's depth at price 0 (``T`` for a converged predictor; less for
    a briefly trained one whose deep layers are no better yet). Bisection in log price:
    the oracle's depth does not grow with the price."""
    deepest = oracle_depth(trace, 0.0, cum)
    spread = float((trace.losses.max(1).values - trace.losses.min(1).values).mean()) or 1.0
    costs = []
    for frac in targets:
        want = max(1.0, frac * deepest)
        lo, hi = math.log(spread * 1e-6), math.log(spread * 10)
        for _ in range(40):
            mid = (lo + hi) / 2
            if oracle_depth(trace, math.exp(mid), cum) > want:
                lo = mid
            else:
                hi = mid
        costs.append(float(f"{math.exp(hi):.3g}"))
    return sorted(set(costs), reverse=True)


def take(task: Task, n: int) -> dict[str, torch.Tensor]:
    """``n`` test instances in a fixed random order (``example_rows``)."""
    return example_rows(task.eval_set("test").inputs, n)


def layer_times(
    predictor: LayeredPredictor, chunks: list[dict[str, torch.Tensor]], repeats: int
) -> list[float]:
    """Wall time of each layer at full depth over ``chunks`` (the final read-out added to the
    last layer), the median of ``repeats`` passes after a warm-up pass."""
    device = predictor.device
    T = predictor.num_layers
    passes = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            times = [0.0] * T
            for inputs in chunks:
                sync(device)
                start = time.perf_counter()
                state = predictor.initial_state(inputs)
                for t in range(T):
                    state = predictor.layer(t, state, inputs)
                    if t == T - 1:
                        predictor.readout(t, state, inputs)
                    sync(device)
                    now = time.perf_counter()
                    times[t] += now - start
                    start = now
            passes.append(times)
    return [statistics.median(p[t] for p in passes[1:]) for t in range(T)]


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Wall time and CPU time (this process, all threads) of ``fn()``."""
    sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def train_family(
    name: str,
    cfg: Any,
    task: Task,
    predictor: LayeredPredictor,
    budget: Budget,
    overrides: list[str],
    runners: dict[float, StopRunner],
    log: Callable[[str], None],
) -> list[float]:
    """Short stage 1, the costs, a reverse-KL policy at each (into ``runners``)."""
    device = predictor.device
    T = predictor.num_layers
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        if budget.stage1_steps > 0:
            stage1_cfg = load_config(
                find_config(name), overrides + [f"task.{o}" for o in budget.stage1_task]
            )
            stage1_task = build.make_task(stage1_cfg.task, cfg.seed, device)
            train_predictor(
                predictor, stage1_task, cfg.stage1, "oracle", cfg.beta, Path(tmp) / "stage1",
                cfg.seed, None, progress=False,
            )  # fmt: skip
        predictor.eval().requires_grad_(False)
        val = predictor.trace_eval(task.eval_set("val"), task, 256)
        cum = cumulative_costs(T, predictor.layer_costs(), device)
        costs = choose_costs(val, cum, COST_TARGETS)
        log(
            f"{name}: T={T}, stage 1 {budget.stage1_steps} steps; costs {costs} "
            f"(oracle depth {[round(oracle_depth(val, c, cum), 1) for c in costs]}) "
            f"[{time.perf_counter() - started:.0f}s]"
        )
        learner = registry.LEARNERS["reverse_kl"]
        for cost in costs:
            run_dir = Path(tmp) / f"cost-{cost:g}"
            ctx = LearnerContext(
                cfg, task, predictor, val, run_dir, cfg.seed, progress=False, cost=cost
            )
            result = learner(ctx)
            runners[cost] = StopRunner(predictor, result.model, result.readout)  # type: ignore[arg-type]
    return costs


def prepare_family(
    name: str, args: argparse.Namespace, budget: Budget, log: Callable[[str], None]
) -> tuple[Any, Task, LayeredPredictor, dict[Any, StopRunner], list[float]]:
    """A config's predictor and policies: trained briefly here (or from ``--cache``)."""
    device = torch.device(args.device)
    overrides = [
        f"device={args.device}",
        f"imitation.steps={budget.imitation_steps}",
        f"imitation.batch_size={budget.imitation_batch}",
        f"imitation.val_every={max(1, budget.imitation_steps // 2)}",
        "imitation.lr=0.01",  # brief training: a larger step than the configs' 1e-3
        f"stage1.steps={max(1, budget.stage1_steps)}",
        f"stage1.batch_size={budget.stage1_batch}",
        f"stage1.val_every={max(1, budget.stage1_steps)}",
    ]
    if budget.val_size is not None:
        overrides.append(f"task.val_size={budget.val_size}")
    overrides += args.set
    cfg = load_config(find_config(name), overrides)
    task = build.make_task(cfg.task, cfg.seed, device)
    predictor = build.make_predictor(cfg.predictor, task, seed=cfg.seed)
    T = predictor.num_layers
    # --set changes what is trained: its own cache file.
    tag = "-" + hashlib.sha1("\n".join(args.set).encode()).hexdigest()[:8] if args.set else ""
    cache = Path(args.cache or ".") / f"{Path(name).stem}{'-quick' if args.quick else ''}{tag}.pt"
    runners: dict[Any, StopRunner] = {}
    if args.cache and cache.is_file():
        saved = torch.load(cache, map_location=device, weights_only=False)
        predictor.load_state_dict(saved["predictor"])
        predictor.eval().requires_grad_(False)
        costs = saved["costs"]
        for cost, (state, readout) in saved["policies"].items():
            policy = build.make_policy(cfg, predictor)
            policy.load_state_dict(state)
            runners[cost] = StopRunner(predictor, policy, ReadoutRule.from_dict(readout))
        log(f"{name}: T={T}, predictor and policies at costs {costs} from {cache}")
    else:
        costs = train_family(name, cfg, task, predictor, budget, overrides, runners, log)
        if args.cache:
            policies = {c: (r.policy.state_dict(), r.rule.to_dict()) for c, r in runners.items()}
            cache.parent.mkdir(parents=True, exist_ok=True)
            torch.save(
                {"predictor": predictor.state_dict(), "costs": costs, "policies": policies},
                cache,
            )
    return cfg, task, predictor, runners, costs


def prepare_run(
    run: str, args: argparse.Namespace, log: Callable[[str], None]
) -> tuple[Any, Task, LayeredPredictor, dict[Any, StopRunner], list[float]]:
    """A run folder's oracle-trained predictor and ``--learner``'s policies (``l2s
    predict``'s loader) at the prices of ``--run-costs``, or else at the folder's prices
    whose validation depth is nearest a quarter, half and three quarters of the deepest's
    (as ``choose_costs`` picks prices for a trained config)."""
    from l2s_gym.predict import _one_folder, load_run_policy, load_run_stop_model

    run_dir = Path(run)
    cfg = load_config(run_dir / "config.yaml", [f"device={args.device}", *args.set])
    seed = cfg.seed if args.seed is None else args.seed
    learner_dir = _one_folder(run_dir, "seed-", str(seed), "--seed") / args.learner
    found = {float(p.name.removeprefix("cost-")): p for p in learner_dir.glob("cost-*")}
    if not found:
        raise FileNotFoundError(f"no cost-* folders in {learner_dir}")
    first = min(found) if args.run_costs is None else args.run_costs[0]
    task, predictor, _, _, _ = load_run_stop_model(
        cfg, run_dir, args.learner, first, seed, args.device
    )
    predictor.eval().requires_grad_(False)
    policies = {
        c: load_run_policy(cfg, p / "best.pt", task, predictor, seed)[:2] for c, p in found.items()
    }
    if args.run_costs is not None:
        costs = sorted({float(c) for c in args.run_costs}, reverse=True)
    else:
        from l2s_gym.evaluation import stop_logits

        val = predictor.trace_eval(task.eval_set("val"), task, 256)
        depth = {
            c: float((rule.stop(stop_logits(pol, val)) + 1).double().mean())
            for c, (pol, rule) in policies.items()
        }
        deepest = max(depth.values())
        costs = sorted(
            {min(depth, key=lambda c: (abs(depth[c] - f * deepest), c)) for f in COST_TARGETS},
            reverse=True,
        )
        log(
            f"{run_dir}: validation depth per price "
            f"{ {c: round(d, 2) for c, d in sorted(depth.items())} }; timed at {costs}"
        )
    runners: dict[Any, StopRunner] = {}
    for c in costs:
        if c not in policies:
            raise FileNotFoundError(f"--run-costs {c:g}: no cost-{c:g} in {learner_dir}")
        runners[c] = StopRunner(predictor, policies[c][0], policies[c][1])
    return cfg, task, predictor, runners, costs


def take_val(task: Task, n: int) -> dict[str, torch.Tensor]:
    """``n`` validation instances in a fixed random order (``example_rows``): what the tuned
    runner is tuned on (not the test instances it is timed on)."""
    return example_rows(task.eval_set("val").inputs, n)


def batch_variants(
    name: str,
    args: argparse.Namespace,
    runners: dict[Any, StopRunner],
    task: Task,
    batch: int,
    tunes: dict[Any, Any],
    log: Callable[[str], None],
) -> dict[Any, StopRunner]:
    """Each policy at each look-ahead (the policy asked once per k layers; 1: every layer;
    T: never, the plain model), and tuned for this batch size ("auto"; its ``tune`` result
    and seconds into ``tunes``)."""
    T = next(iter(runners.values())).predictor.num_layers
    variants: dict[Any, StopRunner] = {}
    for cost, base in runners.items():
        for k in lookaheads(args, batch, T):
            variants[(cost, k)] = StopRunner(
                base.predictor, base.policy, base.rule, base.generator, lookahead=k
            )
        if not args.no_auto:
            auto = StopRunner(base.predictor, base.policy, base.rule, base.generator)
            tune_started = time.perf_counter()
            result = auto.tune(take_val(task, max(batch, 32)), batch_size=batch)
            tunes[(cost, batch)] = (result, time.perf_counter() - tune_started)
            log(f"  {name} batch {batch} cost {cost}: tuned in "
                f"{tunes[(cost, batch)][1]:.1f}s: {result.describe()}")  # fmt: skip
            variants[(cost, AUTO)] = auto
    return variants


def batch_chunks(task: Task, batch: int, instances_b1: int) -> list[dict[str, torch.Tensor]]:
    """The inputs timed at ``batch``: ``instances_b1`` single instances at batch 1, else one
    batch."""
    if batch != 1:
        return [take(task, batch)]
    first = take(task, instances_b1)
    return [{k: v[i : i + 1] for k, v in first.items()} for i in range(instances_b1)]


def timed_rounds(
    fns: dict[Any, Callable[[], Any]],
    repeats: int,
    warm_up: bool,
    device: torch.device,
    min_sample_s: float = 0.0,
) -> tuple[dict[Any, list[float]], dict[Any, list[float]]]:
    """Wall and CPU seconds of one call of every function in ``repeats`` rounds (after a
    warm-up round when asked), in a new seeded order every round: no variant always runs
    first, or after the same one (what ran before moves a run's time by a few percent on a
    CPU). With a warm-up, each sample runs a function as many times as its warm-up call
    needs to last ``min_sample_s`` (a pass over 32 single instances of a small model takes
    15 ms: on a busy CPU two identical computations timed that briefly differ by 10%), and
    is divided by that count."""
    samples: dict[Any, list[float]] = {k: [] for k in fns}
    cpu_samples: dict[Any, list[float]] = {k: [] for k in fns}
    passes = dict.fromkeys(fns, 1)
    for round_ in range(-1 if warm_up else 0, repeats):  # round -1: warm-up
        order = list(fns)
        random.Random(round_).shuffle(order)
        for key in order:
            n = passes[key]
            elapsed, cpu = timed(lambda f=fns[key], n=n: [f() for _ in range(n)], device)
            if round_ < 0:
                passes[key] = max(1, math.ceil(min_sample_s / max(elapsed, 1e-9)))
            else:
                samples[key].append(elapsed / n)
                cpu_samples[key].append(cpu / n)
    return samples, cpu_samples


def timing_fields(
    samples: dict[Any, list[float]], cpu_samples: dict[Any, list[float]], key: Any, per: int
) -> dict[str, float]:
    """A row's measured speed-ups against the full-depth model (``samples["full"]``) and its
    times per chunk."""
    full_s = statistics.median(samples["full"]) / per
    runner_s = statistics.median(samples[key]) / per
    full_cpu = statistics.median(cpu_samples["full"]) / per
    runner_cpu = statistics.median(cpu_samples[key]) / per
    ratios = [f / r for f, r in zip(samples["full"], samples[key], strict=True)]
    return {
        "measured_speedup": round(full_s / runner_s, 3),
        # The median over rounds of the ratio within a round: what load from other
        # processes, which slows a round as a whole, disturbs least.
        "measured_speedup_paired": round(statistics.median(ratios), 3),
        # The lowest and highest ratio of a round: how far two samples of the same pair
        # can differ here (at 7 rounds the median lies between them with probability
        # 1 - 2 / 2**7 = 98%, for any distribution of the rounds).
        "measured_speedup_rounds": [round(min(ratios), 3), round(max(ratios), 3)],
        "full_ms": round(full_s * 1e3, 3),
        "runner_ms": round(runner_s * 1e3, 3),
        "measured_speedup_cpu_time": round(full_cpu / runner_cpu, 3),
    }


def never_runner(cfg: Any, predictor: Any) -> StopRunner:
    """A runner whose policy never stops (a logit of -50 everywhere): every layer plus a
    policy call per layer, the runner's overhead at its worst."""
    never = build.make_policy(cfg, predictor)
    with torch.no_grad():
        never.head.weight.zero_()
        never.head.bias.fill_(-50.0)
    return StopRunner(predictor, never, PAPER_RULE)


def checked_stops(
    name: str, key: tuple[Any, Any], runner: StopRunner, outputs: dict[Any, list[Any]]
) -> torch.Tensor:
    """The stops of variant ``key = (cost, k)``, checked: the plain model (k = T) stops
    every instance at the last layer, and a look-ahead changes when the policy is asked,
    not where it stops (a deterministic rule's stops equal k = 1's)."""
    cost, k = key
    stop = torch.cat([o.stop for o in outputs[key]]).cpu()
    T = runner.predictor.num_layers
    if runner.plain:
        assert bool((stop == T - 1).all()), f"{name} cost {cost}: plain model stops"
    elif runner.lookahead > 1 and runner.rule.deterministic:
        same = torch.cat([o.stop for o in outputs[(cost, 1)]]).cpu()
        assert torch.equal(stop, same), f"{name} cost {cost}: lookahead {k} stops differ"
    return stop


def row_line(r: dict[str, Any]) -> str:
    """One timed row as a log line."""
    k, T = r["lookahead"], r["num_layers"]
    return (
        f"{r['family']} batch {r['batch']:>4} cost {r['cost']!s:<8} k {k!s:>4}"
        f"{'=' + str(r['k']) if k == AUTO else ''} layers {r['avg_layers']:5.2f}/{T} "
        f"ideal {r['ideal_speedup']:.2f}x (layer time {r['ideal_speedup_layer_time']:.2f}x) "
        f"measured {r['measured_speedup']:.2f}x  full {r['full_ms']:.2f} ms runner "
        f"{r['runner_ms']:.2f} ms"
    )


def timed_functions(
    predictor: Any,
    variants: dict[Any, StopRunner],
    chunks: list[dict[str, torch.Tensor]],
    outputs: dict[Any, list[Any]],
    profiles: dict[Any, dict[str, float]] | None,
) -> dict[Any, Callable[[], None]]:
    """What is timed: the full-depth model (``"full"``) and each variant over ``chunks``,
    each keeping its outputs in ``outputs`` (the runners' profiled within the timed run when
    ``profiles`` is given)."""

    def full() -> None:
        # Kept like the runners' outputs (freed on the next run, as theirs): holding one
        # side's results and not the other's moved the ratio by 5-10% at batch 1.
        outputs["full"] = [run_full_depth(predictor, c) for c in chunks]

    fns: dict[Any, Callable[[], None]] = {"full": full}
    for key, runner in variants.items():
        parts = profiles[key] if profiles is not None else None

        def run(key=key, r=runner, p=parts) -> None:  # noqa: ANN001
            outputs[key] = [r(c, profile=p) for c in chunks]

        fns[key] = run
    return fns


def bench_family(
    name: str, args: argparse.Namespace, budget: Budget, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    started = time.perf_counter()
    if args.runs:
        cfg, task, predictor, runners, costs = prepare_run(name, args, log)
        name = cfg.experiment
    else:
        cfg, task, predictor, runners, costs = prepare_family(name, args, budget, log)
    device = predictor.device
    T = predictor.num_layers
    runners[NEVER] = never_runner(cfg, predictor)  # type: ignore[index]
    log(f"{name}: ready [{time.perf_counter() - started:.0f}s]")
    rows = []
    tunes: dict[Any, Any] = {}
    for batch in args.batch_sizes:
        repeats = args.repeats or budget.repeats.get(batch, 3)
        variants = batch_variants(name, args, runners, task, batch, tunes, log)
        chunks = batch_chunks(task, batch, args.instances_b1 or budget.instances_b1)
        per = len(chunks)
        # One expensive repeat (the paper-scale DnCNN at batch 1024 on a CPU): no warm-up
        # round (the smaller batches ran the same code first), and the runner's parts are
        # timed within its one run (on a CPU the lap clock costs microseconds a layer).
        single = repeats == 1 and device.type == "cpu" and batch > 1
        profiles: dict[Any, dict[str, float]] = {c: {} for c in variants}
        outputs: dict[Any, list[Any]] = {}
        fns = timed_functions(predictor, variants, chunks, outputs, profiles if single else None)
        samples, cpu_samples = timed_rounds(
            fns, repeats, warm_up=not single, device=device, min_sample_s=args.min_sample_ms / 1e3
        )
        # Relative layer costs (batch 1: over the same instances; else on up to 256).
        probe = chunks if batch == 1 else [take(task, min(batch, 256))]
        per_layer = layer_times(predictor, probe, max(1, min(repeats, 3)))
        cum_time = torch.tensor(per_layer, dtype=torch.float64).cumsum(0)
        for (cost, k), runner in variants.items():
            parts = profiles[(cost, k)]
            if not single:  # a separate, profiled run: the timed ones were not disturbed
                for c in chunks:
                    runner(c, profile=parts)
            stop = checked_stops(name, (cost, k), runner, outputs)
            avg = float((stop + 1).double().mean())
            ideal_time = float(cum_time[-1] / cum_time[stop].mean())
            r = {"family": name, "batch": batch, "cost": cost, "lookahead": k,
                 "avg_layers": round(avg, 3), "ideal_speedup": round(T / avg, 3)}  # fmt: skip
            r |= timing_fields(samples, cpu_samples, (cost, k), per)
            r |= {
                "ideal_speedup_layer_time": round(ideal_time, 3),
                "num_layers": T,
                "repeats": repeats,
                "readout": runner.rule.label,
                "runner_parts_ms": {p: round(v / per * 1e3, 3) for p, v in parts.items()},
                "k": runner.lookahead,
            }
            rows.append(r)
            if k == AUTO:
                result, tune_s = tunes[(cost, batch)]
                r["tune"] = result.to_dict()
                r["tune_s"] = round(tune_s, 2)
            log(f"  {row_line(r)} [{time.perf_counter() - started:.0f}s]")
    info = {
        "family": name,
        "num_layers": T,
        "costs": costs,
        "run": name if args.runs else None,
        "stage1_steps": budget.stage1_steps,
        "imitation_steps": budget.imitation_steps,
        "layer_time_ms": [round(x * 1e3, 3) for x in per_layer] if rows else [],
        "seconds": round(time.perf_counter() - started, 1),
        # For --try-compile (taken out before the report is written): a trained policy.
        "_runner": next(r for c, r in runners.items() if c != NEVER),
        "_task": task,
    }
    return rows, info


def lookaheads(args: argparse.Namespace, batch: int, T: int) -> list[int]:
    """The look-aheads timed at ``batch``: 1 always; ``--lookahead`` values (``T``: the
    family's depth, the plain model) at the batch sizes of ``--lookahead-batches``."""
    ks = {1}
    if batch in args.lookahead_batches:
        ks |= {T if k == "T" else min(int(k), T) for k in args.lookahead}
    return sorted(ks)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = (
        "| family | batch | cost | look-ahead | avg layers | ideal T/avg | ideal (layer time) "
        "| measured | measured / ideal | full ms | runner ms |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['batch']} | {r['cost']} | {r['lookahead']} | {r['avg_layers']:.2f} / "
            f"{r['num_layers']} | {r['ideal_speedup']:.2f}x | {r['ideal_speedup_layer_time']:.2f}x "
            f"| {r['measured_speedup']:.2f}x | {r['measured_speedup'] / r['ideal_speedup']:.0%} "
            f"| {r['full_ms']:.2f} | {r['runner_ms']:.2f} |"
        )
    return "\n".join(lines)


def summary_table(rows: list[dict[str, Any]]) -> str:
    """One line per (family, batch, cost): the ``k = 1`` figures, the look-aheads beside them,
    and the parts of the runner's time (docs/deploy.md's table; ``--table FILE``)."""
    head = (
        "| family | batch | price | avg layers | ideal T/avg | ideal (layer time) | measured "
        "(k=1) | measured / ideal | look-ahead k: measured | features + policy + decide + "
        "compact, % of layers |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---:|"
    )
    lines = [head]
    base = [r for r in rows if r["lookahead"] == 1]
    for r in base:
        others = [
            o for o in rows
            if o["lookahead"] != 1 and (o["family"], o["batch"], o["cost"]) == (r["family"], r["batch"], r["cost"])
        ]  # fmt: skip
        ks = ", ".join(f"{_k_label(o)}: {o['measured_speedup']:.2f}x" for o in others) or "-"
        parts = r.get("runner_parts_ms") or {}
        layer = parts.get("layer", 0.0) + parts.get("readout", 0.0)
        over = sum(parts.get(k, 0.0) for k in ("features", "policy", "decide", "compact"))
        share = f"{over / layer:.0%}" if layer else "-"
        lines.append(
            f"| {r['family']} | {r['batch']} | {r['cost']} | {r['avg_layers']:.2f} / {r['num_layers']} "
            f"| {r['ideal_speedup']:.2f}x | {r['ideal_speedup_layer_time']:.2f}x "
            f"| {r['measured_speedup']:.2f}x | {r['measured_speedup'] / r['ideal_speedup']:.0%} "
            f"| {ks} | {share} |"
        )
    return "\n".join(lines)


def _k_label(row: dict[str, Any]) -> str:
    return f"auto (k={row['k']})" if row["lookahead"] == AUTO else str(row["lookahead"])


def _rounds(row: dict[str, Any]) -> str:
    """`` (lo-hi)``: the lowest and highest paired ratio of a round, where the row has
    more than one round (rows of earlier runs have none: nothing)."""
    lo, hi = row.get("measured_speedup_rounds") or (None, None)
    return "" if lo is None or row.get("repeats", 1) < 2 else f" ({lo:.2f}-{hi:.2f})"


def tuned_table(rows: list[dict[str, Any]]) -> str:
    """One line per (family, batch, price): the full-depth model, the runner at ``k = 1`` and
    tuned (``StopRunner.tune``): their times (medians), speed-ups (the paired ratios,
    ``measured_speedup_paired``, where the rows have them; in brackets the lowest and
    highest ratio of a round) and shares of ``T / avg_layers``."""
    head = (
        "| family | batch | price | avg layers (k=1) | ideal T/avg | full ms | k=1 ms | k=1 "
        "speed-up | k=1 / ideal | tuned k | tuned ms | tuned speed-up | tuned / ideal |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    lines = [head]
    for r in (r for r in rows if r["lookahead"] == 1):
        key = (r["family"], r["batch"], r["cost"])
        auto = [
            o
            for o in rows
            if o["lookahead"] == AUTO and (o["family"], o["batch"], o["cost"]) == key
        ]
        if not auto:
            continue
        a = auto[0]
        k = "T (plain)" if a["k"] >= a["num_layers"] else str(a["k"])
        one = r.get("measured_speedup_paired", r["measured_speedup"])
        tuned = a.get("measured_speedup_paired", a["measured_speedup"])
        lines.append(
            f"| {r['family']} | {r['batch']} | {r['cost']} | {r['avg_layers']:.2f} / "
            f"{r['num_layers']} | {r['ideal_speedup']:.2f}x | {r['full_ms']:.3f} | "
            f"{r['runner_ms']:.3f} | {one:.2f}x{_rounds(r)} | {one / r['ideal_speedup']:.0%} | "
            f"{k} | {a['runner_ms']:.3f} | {tuned:.2f}x{_rounds(a)} | "
            f"{tuned / r['ideal_speedup']:.0%} |"
        )
    return "\n".join(lines)


def compile_check(
    name: str, runner: StopRunner, task: Task, batches: list[int], log: Callable[[str], None]
) -> list[dict[str, Any]]:
    """``torch.compile`` of the policy MLP (``StopPolicy.layer_logits``'s folded MLP, at one
    layer) against eager, on validation features of layer 1, at each batch size: medians
    of interleaved rounds of many calls (after the compilation and a warm-up)."""
    predictor, policy = runner.predictor, runner.policy
    device = predictor.device
    val = task.eval_set("val")
    with torch.inference_mode():
        trace = predictor.trace_eval(val.select(slice(0, min(len(val), 1024))), task, 1024)
    feats = trace.features[:, 0]
    out = []
    for batch in batches:
        index = torch.arange(batch, device=device) % feats.shape[0]
        with torch.inference_mode():
            x = feats.to(device)[index].contiguous()
            z = x.flatten(1) if isinstance(policy.encoder, torch.nn.Flatten) else policy.encoder(x)
            folded = policy._folded(z)
            if folded is None:
                log(f"  {name}: the policy has no folded MLP; no compile check")
                return out

            def eager(z: torch.Tensor = z) -> torch.Tensor:
                return folded(z, 0)  # noqa: B023

            started = time.perf_counter()
            compiled = torch.compile(eager, dynamic=False)
            ref = eager()
            got = compiled()
            compile_s = time.perf_counter() - started
            calls = 2000 if batch == 1 else 200
            samples: dict[str, list[float]] = {"eager": [], "compiled": []}
            for round_ in range(-1, 7):
                for label, fn in (("eager", eager), ("compiled", compiled)):
                    sync(device)
                    start = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    sync(device)
                    if round_ >= 0:
                        samples[label].append((time.perf_counter() - start) / calls)
        e, c = (statistics.median(samples[k]) for k in ("eager", "compiled"))
        row = {
            "family": name,
            "batch": batch,
            "eager_us": round(e * 1e6, 2),
            "compiled_us": round(c * 1e6, 2),
            "compiled_over_eager": round(c / e, 3),
            "max_abs_diff": float((got - ref).abs().max()),
            "compile_s": round(compile_s, 1),
        }
        log(f"  {name} torch.compile policy MLP batch {batch}: eager {row['eager_us']} us, "
            f"compiled {row['compiled_us']} us ({row['compiled_over_eager']:.2f}x)")  # fmt: skip
        out.append(row)
    return out


def parser() -> argparse.ArgumentParser:
    """The command line (``main`` checks what argparse cannot)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON file for the rows (required unless --table)")
    parser.add_argument(
        "--table",
        nargs="+",
        metavar="JSON",
        help="print the summary table of earlier runs' JSON files and exit (nothing is timed; "
        "a family in several files is taken from the first)",
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="minimal training and repeats")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=list(BUDGETS),
        help="configs to run (default: the four paper-scale families)",
    )
    parser.add_argument(
        "--batch-sizes",
        type=int,
        nargs="*",
        default=[1, 64, 1024],
        help="default 1 64 1024 (none: train and --cache only)",
    )
    parser.add_argument(
        "--instances-b1", type=int, default=None, help="instances at batch 1 (default 32)"
    )
    parser.add_argument(
        "--lookahead",
        nargs="*",
        default=["4", "T"],
        help="look-aheads timed besides 1 (StopRunner(lookahead=k): the policy asked once "
        "per k layers); 'T' is the family's depth (default: 4 T)",
    )
    parser.add_argument(
        "--lookahead-batches",
        type=int,
        nargs="*",
        default=[1, 64],
        help="batch sizes at which the --lookahead values are timed (default 1 64)",
    )
    parser.add_argument(
        "--cache",
        help="folder for the trained predictors and policies: reused when there (to rerun "
        "the timing alone)",
    )
    add_run_options(parser)
    return parser


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``--runs`` (time trained run folders) and the rest of the command line."""
    parser.add_argument(
        "--runs",
        nargs="+",
        metavar="RUN",
        help="time trained run folders of l2s compare (e.g. /work/final/shipped/*/latest) "
        "instead of training --configs: the oracle predictor and --learner's policies",
    )
    parser.add_argument("--learner", default="reverse_kl", help="with --runs (default reverse_kl)")
    parser.add_argument("--seed", type=int, help="with --runs: seed-<s> (default the config's)")
    parser.add_argument(
        "--run-costs",
        type=float,
        nargs="+",
        help="with --runs: the prices to time (default: those whose validation depth is "
        "nearest 1/4, 1/2, 3/4 of the deepest policy's)",
    )
    parser.add_argument("--repeats", type=int, help="timed repeats at every batch size")
    parser.add_argument(
        "--min-sample-ms",
        type=float,
        default=50.0,
        help="each timed sample runs a variant's pass over its instances as often as its "
        "warm-up pass needs to last this long, and is divided by the count (default 50; "
        "0: one pass; no effect without a warm-up round: one repeat at a large batch)",
    )
    parser.add_argument(
        "--no-auto", action="store_true", help="leave out the tuned runner (lookahead auto)"
    )
    parser.add_argument(
        "--try-compile",
        type=int,
        nargs="*",
        metavar="BATCH",
        help="also time torch.compile of the policy MLP against eager at these batch sizes "
        "(default 1 1024 when given without values)",
    )
    parser.add_argument("--import", dest="imports", action="append", default=[])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a config override for every family run (repeatable), e.g. "
        "predictor.features=lean for meta learning",
    )


def print_tables(rows: list[dict[str, Any]]) -> None:
    """The summary table, and the tuned runner's when there is one."""
    print(summary_table(rows))
    if any(r["lookahead"] == AUTO for r in rows):
        print()
        print(tuned_table(rows))
    single = sorted({(r["family"], r["batch"]) for r in rows if r.get("repeats", 1) < 2})
    if single:
        print(f"\n{single_sample_note(single)}")


def single_sample_note(single: list[tuple[str, int]]) -> str:
    """What a reader must know of rows timed once: they carry no spread."""
    which = ", ".join(f"{f} at batch {b}" for f, b in single)
    return (
        f"one timed sample a variant ({which}): no range of rounds; two timings of one "
        "computation can differ by several percent, so compare such rows loosely or rerun "
        "with --repeats"
    )


def machine(device: str, load_at_start: list[float]) -> dict[str, Any]:
    """What the report says of the machine: the device, threads, load and torch version."""
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
        "threads": torch.get_num_threads(),
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
    }


def earlier_rows(files: list[str]) -> list[dict[str, Any]]:
    """The rows of earlier runs' JSON files; a family in several files: its rows from the
    first file that has it."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for f in files:
        mine = json.loads(Path(f).read_text())["rows"]
        rows += [r for r in mine if r["family"] not in seen]
        seen |= {r["family"] for r in mine}
    return rows


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.table:
        print_tables(earlier_rows(args.table))
        return 0
    if not args.out:
        cli.error("--out is required (or --table to print earlier results)")
    for k in args.lookahead:
        if k != "T" and not (k.isdigit() and int(k) >= 1):
            cli.error(f"--lookahead: {k!r} is neither a whole number >= 1 nor T")
    if args.device == "cuda" and not torch.cuda.is_available():
        cli.error("--device cuda: PyTorch sees no CUDA device")
    torch.set_num_threads(args.threads)
    for spec in args.imports:
        registry.import_module_or_file(spec)
    registry.load_plugins()
    started = time.perf_counter()
    # Other processes on the machine slow the timings (the repeats interleave the runner
    # and the baseline so that both are slowed alike); the load says how busy it was.
    load_at_start = [round(x, 2) for x in os.getloadavg()]

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(
        f"device {args.device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"load average {load_at_start}"
    )
    rows, families, compiled = [], {}, []
    names = args.runs or args.configs

    def write() -> dict:
        """The report so far: written after every family, so a crash keeps what ran."""
        result = {
            "command": "python benchmarks/early_exit_speedup.py " + " ".join(argv or sys.argv[1:]),
            **machine(args.device, load_at_start),
            "quick": args.quick,
            "min_sample_ms": args.min_sample_ms,
            "wall_s": round(time.perf_counter() - started, 1),
            "families": families,
            "rows": rows,
            "compile": compiled,
            "complete": len(families) == len(names),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return result

    result = write()
    for name in names:
        # A run folder: the budget (repeats) of its task's family.
        family = load_config(Path(name) / "config.yaml").task.name if args.runs else name
        budget = BUDGETS.get(family, QUICK)
        if args.quick:  # the quick budget, with the family's own task overrides
            keep = budget.val_size is not None or family not in BUDGETS
            budget = replace(QUICK, val_size=QUICK.val_size if keep else None,
                             stage1_task=budget.stage1_task)  # fmt: skip
        family_rows, info = bench_family(name, args, budget, log)
        families[info["family"]] = info
        rows += family_rows
        if args.try_compile is not None:
            runner = info.pop("_runner")
            compiled += compile_check(
                info["family"], runner, info.pop("_task"), args.try_compile or [1, 1024], log
            )
        info.pop("_runner", None), info.pop("_task", None)
        result = write()
    print(markdown(rows))
    print()
    print_tables(rows)
    for c in compiled:
        print(
            f"torch.compile, policy MLP, {c['family']} batch {c['batch']}: eager "
            f"{c['eager_us']} us, compiled {c['compiled_us']} us ({c['compiled_over_eager']:.2f}x)"
        )
    print(
        f"\n{args.device}, {result['threads']} threads, {result['wall_s']:.0f} s, load average "
        f"{load_at_start} at the start; rows in {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
