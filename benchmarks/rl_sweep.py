"""A hyper-parameter sweep of one stop-policy learner, scored on the validation set only.

Reuses the stage-1 predictor of a finished run (``l2s compare`` / ``l2s frontier``), trains
the learner once per combination of the grid on that frozen predictor, and prints a
table of what each reached on the **validation** set (the learner's own checkpoint
criterion: the validation objective ``mean l_stop + lambda C_stop`` under the read-out
chosen there; its metric and average layers; and the average layers of the untrained
policy, so that a learner that never moved is visible). No test number is computed.

    python benchmarks/rl_sweep.py configs/sparse_recovery_small.yaml \\
        --stage1 runs/sparse_recovery_small/latest --learner ppo \\
        --grid rl.ppo.learning_rate=1e-3,3e-3 --grid rl.ppo.n_steps=8,16 --out sweep.json

The winning values go into ``configs/hyperparams/<algorithm>.yml`` under the task's name.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from l2s_gym import registry
from l2s_gym.config import apply_overrides, find_config, from_dict
from l2s_gym.learner import LearnerContext
from l2s_gym.trials import Trial, gain_per_layer, load_stop_model, load_traces, trial_config

FROZEN = ("task.", "predictor.", "stage1.", "seed", "beta")
"""Keys a grid may not vary: they change the frozen stage-1 predictor or its data."""


def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items:
        key, _, values = item.partition("=")
        if not values:
            raise SystemExit(f"--grid {item}: expected key=v1,v2,...")
        grid.append((key.strip(), [v.strip() for v in values.split(",")]))
    return grid


def result_row(overrides: list[str], result: Any, wall: float) -> dict[str, Any]:
    """A setting's row: its best validation point, the untrained policy's, its cost."""
    curve = result.curve
    best = min(curve, key=lambda p: p["val_objective"])
    return {
        "overrides": overrides,
        "val_objective": best["val_objective"],
        "val_metric": best["val_metric"],
        "val_avg_layers": best["val_avg_layers"],
        "initial_avg_layers": curve[0]["val_avg_layers"],
        "initial_objective": curve[0]["val_objective"],
        "readout": best["val_readout"],
        "best_step": result.extra.get("best_step"),
        "layer_evals": result.layer_evals,
        "wall_time_s": wall,
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    """The rows as a markdown table (a diverged setting: its error)."""
    print(
        "| overrides | val objective | val metric | val layers | untrained layers | best step "
        "| layer evals | time (s) |"
    )
    print("|" + "---|" * 8)
    for r in rows:
        if "error" in r:
            print(
                f"| {' '.join(r['overrides'])} | {r['error']} | | | | | | {r['wall_time_s']:.0f} |"
            )
            continue
        print(
            f"| {' '.join(r['overrides']) or '(defaults)'} | {r['val_objective']:.5g} | "
            f"{r['val_metric']:.4f} | {r['val_avg_layers']:.2f} | {r['initial_avg_layers']:.2f} | "
            f"{r['best_step']} | {r['layer_evals']:,} | {r['wall_time_s']:.0f} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="the experiment config (YAML file or bundled name)")
    parser.add_argument("--stage1", type=Path, required=True, help="a finished run folder")
    parser.add_argument("--learner", required=True)
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cost", type=float, default=0.0, help="layer price (gain units)")
    parser.add_argument("--import", dest="imports", action="append", default=[])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    for spec in args.imports:
        registry.import_module_or_file(spec)
    registry.load_plugins()
    import yaml

    base = apply_overrides(yaml.safe_load(find_config(args.config).read_text()), args.set)
    stage1_dir = args.stage1.resolve()
    cfg0 = trial_config(from_dict(base).to_dict(), args.seed)
    task, predictor = load_stop_model(stage1_dir, cfg0, args.seed, torch.device("cpu"))
    grid = parse_grid(args.grid)
    for key, _ in grid:
        if key.startswith(FROZEN):
            raise SystemExit(
                f"rl_sweep: --grid {key}: the predictor and its data are the run's, loaded once; "
                f"set {key} with --set (every row) and sweep it in separate calls"
            )
    val = load_traces(stage1_dir / Trial("stage1", args.seed).key)["oracle"]["val"]
    if any(item.partition("=")[0].startswith("predictor.") for item in args.set):
        # The saved traces hold the policy features of the run's predictor settings.
        val = predictor.trace_eval(task.eval_set("val"), task)
    lam = args.cost * gain_per_layer(val)
    combos = list(itertools.product(*[values for _, values in grid])) or [()]
    rows = []
    for i, combo in enumerate(combos):
        overrides = [f"{key}={value}" for (key, _), value in zip(grid, combo, strict=True)]
        cfg = trial_config(from_dict(apply_overrides(base, overrides)).to_dict(), args.seed)
        with tempfile.TemporaryDirectory() as tmp:
            ctx = LearnerContext(cfg, task, predictor, val, Path(tmp), args.seed, False, cost=lam)
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            try:
                result = registry.LEARNERS[args.learner](ctx)
                error = ""
            except Exception as exc:  # noqa: BLE001 - a diverged setting is a row, not a crash
                result, error = None, f"{type(exc).__name__}: {exc}"[:120]
            wall = time.perf_counter() - start
        if result is None:
            rows.append({"overrides": overrides, "error": error, "wall_time_s": wall})
        else:
            rows.append(result_row(overrides, result, wall))
        print(f"[{i + 1}/{len(combos)}] {' '.join(overrides) or '(defaults)'}: "
              f"{rows[-1].get('val_objective', rows[-1].get('error'))}", file=sys.stderr)  # fmt: skip
    rows.sort(key=lambda r: r.get("val_objective", math.inf))
    print_table(rows)
    if args.out:
        args.out.write_text(json.dumps({"config": args.config, "learner": args.learner,
                                        "cost": args.cost, "lambda": lam, "rows": rows}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
