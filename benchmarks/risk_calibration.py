"""Does the risk-calibrated read-out keep its promise? Re-splits of the shipped runs' traces.

For each shipped family's trained run (``<runs>/<family>/latest``): the oracle-trained
predictor's saved traces (``seed-N/stage1/traces.pt``) and the reverse-KL policy trained at
no layer price (``seed-N/reverse_kl/cost-0/best.pt``), loaded by the library's own loaders
(``l2s_gym.predict.load_run_stop_model``, ``l2s_gym.trials.load_traces``). No training.

The policy's stop logits on every saved validation and test instance are computed once;
then, ``--splits`` times, the instances are shuffled into a calibration half and a test half,
``l2s_gym.risk.calibrate_risk`` certifies a read-out on the calibration half at the family's
stated risk (``l2s_gym.risk.DEFAULT_RISKS``: the quality loss, ``epsilon``, ``delta = 0.1``)
and the test half measures whether the promise was broken (its risk above ``epsilon``).

Two pools:

- ``val+test``: the saved validation and test instances together (what the brief asked).
  The policy's checkpoint and its read-out were chosen on the validation instances, so
  these are not quite fresh for it;
- ``test``: the saved test instances only (never used for training or for any choice).

Each row: the violation rate (test-half risk > epsilon) with its 95% Clopper-Pearson
interval over the splits; the rate by the pool's risk (the risk over all the pool's
instances of the setting chosen, the population the halves are drawn from); the mean
test-half risk; the layers saved against full depth (mean and sd over splits, on the test
half); the metric on the test half at the chosen read-out and at full depth; the chosen
settings (min / median / max of the grid value, and how often the fallback was taken);
and the hindsight setting: the earliest grid point whose pool risk is within epsilon.

Two promises (``--promises``):

- ``population`` (``calibrate_risk``'s default): the chosen rule's risk on the distribution
  is ``<= epsilon`` with probability ``>= 1 - delta``; the pool's risk is its stand-in, so
  "by pool risk" is the rate that promise is broken;
- ``set`` (``calibrate_risk(..., test_size=<the test half's size>)``): the test half's own
  risk is ``<= epsilon`` with probability ``>= 1 - delta``; "test half" is its rate.

Usage::

    python benchmarks/risk_calibration.py --out risk_calibration.json
    python benchmarks/risk_calibration.py --families recognition_small --splits 20

One thread; under two minutes of CPU for the four families.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from scipy import stats as scipy_stats

from l2s_gym.config import load_config
from l2s_gym.evaluation import stop_logits
from l2s_gym.predict import load_run_stop_model
from l2s_gym.predictor import Trace
from l2s_gym.risk import calibrate_risk, default_risk, risk_grid
from l2s_gym.trials import Trial, load_traces

FAMILIES = ("sparse_recovery_small", "denoising_small", "meta_learning_small", "recognition_small")
RUNS = Path("runs")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> list[float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion ``k / n``."""
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(scipy_stats.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(scipy_stats.beta.ppf(1 - a, k + 1, n - k))
    return [lo, hi]


def subset(trace: Trace, index: torch.Tensor) -> Trace:
    """The instances ``index`` of ``trace``, without features (the logits are computed)."""
    return Trace(
        losses=trace.losses[index],
        metric_stats=trace.metric_stats[index],
        features=trace.losses.new_zeros(0),
        groups=trace.groups[index],
    )


def load_family(run_dir: Path, seed: int) -> tuple[Any, dict[str, Trace], dict[str, torch.Tensor]]:
    """The task, the saved oracle traces (``val``, ``test``) and the policy's logits on them."""
    cfg = load_config(run_dir / "config.yaml")
    task, _, policy, _, _ = load_run_stop_model(
        cfg, run_dir, "reverse_kl", cost=0, seed=seed, device="cpu"
    )
    traces = load_traces(run_dir / Trial("stage1", seed).key)["oracle"]
    logits = {split: stop_logits(policy, traces[split]) for split in ("val", "test")}
    stripped = {split: subset(t, torch.arange(len(t))) for split, t in traces.items()}
    return task, stripped, logits


def grid_value(rule: dict[str, Any]) -> float:
    return float(rule["value"])


def hindsight_setting(
    task: Any, pool: Trace, logits: torch.Tensor, grid: str, loss: Any, eps: float
) -> dict[str, Any] | None:
    """The earliest grid point whose risk on the whole pool is ``<= eps`` (``None``: none)."""
    rules = risk_grid(grid)  # type: ignore[arg-type]
    pool_risks = [float(loss.losses(task, pool, r.stop(logits)).mean()) for r in rules]
    feasible = [j for j, r in enumerate(pool_risks) if r <= eps]
    if not feasible:
        return None
    j = max(feasible)
    stop = rules[j].stop(logits)
    return {
        "rule": rules[j].label,
        "pool_risk": pool_risks[j],
        "layers_saved": pool.num_layers - float((stop + 1).double().mean()),
    }


def run_pool(
    task: Any,
    pool: Trace,
    logits: torch.Tensor,
    grid: str,
    splits: int,
    seed: int,
    promise: str = "population",
) -> dict[str, Any]:
    """``splits`` calibration / test re-splits of ``pool``: the promise checked on each."""
    stated = default_risk(task)
    eps, delta, loss = stated.epsilon, stated.delta, stated.loss
    n, T = len(pool), pool.num_layers
    hindsight = hindsight_setting(task, pool, logits, grid, loss, eps)
    gen = torch.Generator().manual_seed(1234 + seed)
    full_stop = torch.full((n - n // 2,), T - 1, dtype=torch.long)
    records = []
    for _ in range(splits):
        perm = torch.randperm(n, generator=gen)
        cal_idx, test_idx = perm[: n // 2], perm[n // 2 :]
        cal = calibrate_risk(
            subset(pool, cal_idx), logits[cal_idx], task, eps, delta, grid=grid, loss=loss,
            test_size=len(test_idx) if promise == "set" else None,
        )  # fmt: skip
        test, test_logits = subset(pool, test_idx), logits[test_idx]
        stop = cal.rule.stop(test_logits)
        test_risk = float(loss.losses(task, test, stop).mean())
        pool_risk = float(loss.losses(task, pool, cal.rule.stop(logits)).mean())
        stats = test.metric_stats
        records.append(
            {
                "value": cal.rule.value,
                "fallback": cal.fallback,
                "val_risk": cal.val_risk,
                "p_value": cal.p_value,
                "test_risk": test_risk,
                "pool_risk": pool_risk,
                "layers_saved": T - float((stop + 1).double().mean()),
                "metric": task.aggregate(stats.gather(1, stop.unsqueeze(1)).squeeze(1)),
                "full_metric": task.aggregate(stats.gather(1, full_stop.unsqueeze(1)).squeeze(1)),
            }
        )
    broken = sum(r["test_risk"] > eps for r in records)
    broken_pool = sum(r["pool_risk"] > eps for r in records)
    values = [r["value"] for r in records]
    saved = [r["layers_saved"] for r in records]
    return {
        "grid": grid,
        "promise": promise,
        "level": cal.level,
        "n_calibration": n // 2,
        "n_test": n - n // 2,
        "num_layers": T,
        "epsilon": eps,
        "delta": delta,
        "risk": stated.definition or loss.describe(task.metric_name, task.higher_is_better),
        "loss": loss.to_dict(),
        "splits": splits,
        "violations": broken,
        "violation_rate": broken / splits,
        "violation_ci95": clopper_pearson(broken, splits),
        "violations_pool_risk": broken_pool,
        "violation_rate_pool_risk": broken_pool / splits,
        "test_risk_mean": statistics.fmean(r["test_risk"] for r in records),
        "test_risk_max": max(r["test_risk"] for r in records),
        "layers_saved_mean": statistics.fmean(saved),
        "layers_saved_sd": statistics.stdev(saved) if len(saved) > 1 else 0.0,
        "metric_mean": statistics.fmean(r["metric"] for r in records),
        "full_depth_metric_mean": statistics.fmean(r["full_metric"] for r in records),
        "chosen_min": min(values),
        "chosen_median": statistics.median(values),
        "chosen_max": max(values),
        "fallbacks": sum(r["fallback"] for r in records),
        "hindsight": hindsight,
        "records": records,
    }


def markdown(rows: list[dict[str, Any]], metric_names: dict[str, str]) -> str:
    head = [
        "family", "pool", "grid", "promise", "n cal / test", "epsilon", "violations (test half)",
        "95% interval", "by pool risk", "mean test risk", "layers saved (of T)",
        "metric: chosen / full depth", "chosen value min / median / max", "fallbacks",
        "hindsight earliest",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        h = r["hindsight"]
        lines.append(
            "| "
            + " | ".join(
                [
                    r["family"],
                    r["pool"],
                    r["grid"],
                    r["promise"] + ("" if r["level"] is None else f" (level {r['level']:.4f})"),
                    f"{r['n_calibration']} / {r['n_test']}",
                    f"{r['epsilon']:g}",
                    f"{r['violations']}/{r['splits']} = {r['violation_rate']:.2f}",
                    f"[{r['violation_ci95'][0]:.3f}, {r['violation_ci95'][1]:.3f}]",
                    f"{r['violation_rate_pool_risk']:.2f}",
                    f"{r['test_risk_mean']:.4f}",
                    f"{r['layers_saved_mean']:.2f} ± {r['layers_saved_sd']:.2f} "
                    f"(of {r['num_layers']})",
                    f"{r['metric_mean']:.3f} / {r['full_depth_metric_mean']:.3f} "
                    f"{metric_names[r['family']]}",
                    f"{r['chosen_min']:g} / {r['chosen_median']:g} / {r['chosen_max']:g}",
                    str(r["fallbacks"]),
                    "-" if h is None else f"{h['rule']}: saves {h['layers_saved']:.2f}",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, default=RUNS, help="folder of <family>/latest")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (its traces)")
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--grids", nargs="+", default=["quantile", "threshold"])
    parser.add_argument("--pools", nargs="+", default=["val+test", "test"])
    parser.add_argument("--promises", nargs="+", default=["population", "set"])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--keep-records", action="store_true", help="per-split records in JSON")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    metric_names: dict[str, str] = {}
    for family in args.families:
        task, traces, logits = load_family(args.runs / family / "latest", args.seed)
        metric_names[family] = task.metric_name
        pools = {
            "val+test": (
                Trace.cat([traces["val"], traces["test"]]),
                torch.cat([logits["val"], logits["test"]]),
            ),
            "test": (traces["test"], logits["test"]),
        }
        for pool_name in args.pools:
            pool, pool_logits = pools[pool_name]
            for grid, promise in itertools.product(args.grids, args.promises):
                row = run_pool(task, pool, pool_logits, grid, args.splits, args.seed, promise)
                row.update(family=family, pool=pool_name, seed=args.seed)
                if not args.keep_records:
                    row.pop("records")
                rows.append(row)
                print(
                    f"{family} {pool_name} {grid} {promise}: violations {row['violations']}/{args.splits} "
                    f"{row['violation_ci95']}, layers saved {row['layers_saved_mean']:.2f} "
                    f"of {row['num_layers']}, chosen {row['chosen_min']:g}..{row['chosen_max']:g}"
                    f" ({time.perf_counter() - start:.0f}s)",
                    flush=True,
                )
    print()
    print(markdown(rows, metric_names))
    elapsed = time.perf_counter() - start
    print(f"\n{elapsed:.0f} s")
    if args.out is not None:
        payload = {"rows": rows, "splits": args.splits, "seed": args.seed, "seconds": elapsed}
        args.out.write_text(json.dumps(payload, indent=1, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    raise TypeError(f"not JSON: {value!r}")


if __name__ == "__main__":
    main()
