"""The library's defaults on problems that are not the shipped families.

Each problem in ``benchmarks/problems/`` is a task and a predictor written as a user would
write them (``docs/custom_predictors.md``) and a config that names only the problem: the
task, the predictor, ``beta``, the learners and a stage-1 length. Everything else is the
library's defaults. This script runs ``l2s frontier`` on each and prints, per learner, the
frontier summary (dominance, oracle gap closed, layers to match full depth) and the
learner-health flags, then writes them to ``<runs>/defaults_suite.json``.

    python benchmarks/defaults_suite.py                          # every problem, seed 0, test
    python benchmarks/defaults_suite.py --eval-split val --problems cg_deblur \\
        --set imitation.steps=2000                                # while choosing defaults
    python benchmarks/defaults_suite.py --seeds 0 1 2            # the published figures

``--eval-split val`` scores on the validation sets (use it while choosing settings);
``--set`` applies to every problem. docs/defaults.md says which problems chose the
defaults and which was held out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "problems"
PROBLEMS = {
    "cg_deblur": "tuned on",
    "early_stopped_regression": "tuned on",
    "diffusion_denoise": "held out",
    "power_iteration": "held out (written from the docs alone, 2026-12-07)",
}
"""Problem name (``problems/<name>.py`` and ``.yaml``) -> its role in choosing the defaults."""


SUMMARY_FIELDS = ("frontier_summary", "frontier_reference", "health", "rows")


def run_problem(name: str, args: argparse.Namespace) -> dict:
    from l2s_gym import registry
    from l2s_gym.build import apply_threads
    from l2s_gym.compare import run_experiment
    from l2s_gym.config import load_config

    registry.import_module_or_file(str(HERE / f"{name}.py"))
    overrides = list(args.set or [])
    if args.seeds:
        overrides.append(f"seeds=[{', '.join(map(str, args.seeds))}]")
    if args.threads:
        overrides.append(f"threads={args.threads}")
    cfg = load_config(HERE / f"{name}.yaml", overrides)
    apply_threads(cfg.threads)
    runner = None
    if args.ray:
        from l2s_gym.ray_backend import RayRunner

        runner = RayRunner(args.ray, progress=not args.no_progress)
    start = time.perf_counter()
    resume = None
    if args.reuse_stage1:
        resume = str(reuse_stage1(cfg, Path(args.reuse_stage1) / name, args.runs))
    run_dir, results = run_experiment(
        cfg,
        args.runs,
        "frontier",
        progress=not args.no_progress,
        resume=resume,
        runner=runner,
        log=lambda _: None,
        eval_split=args.eval_split,
    )
    return {
        "problem": name,
        "role": PROBLEMS[name],
        "run": str(run_dir),
        "eval_split": args.eval_split,
        "seeds": results.seeds,
        "overrides": overrides,
        "wall_time_s": time.perf_counter() - start,
        **{k: v for k, v in results.to_json().items() if k in SUMMARY_FIELDS},
    }


def reuse_stage1(cfg, experiment_dir: Path, runs: str) -> Path:  # noqa: ANN001
    """A new run folder holding copies of the stage-1 trials of ``experiment_dir/latest``
    (a tuning aid: stage-2 settings vary, the frozen predictors stay; a stage-1 trial is
    reused only if its own settings match, see ``l2s_gym.trials.STAGE1_KEYS``)."""
    import shutil

    from l2s_gym.runs import write_config_snapshot
    from l2s_gym.trials import new_run_dir

    source = (experiment_dir / "latest").resolve()
    folder = new_run_dir(runs, cfg.experiment)
    write_config_snapshot(folder, cfg.to_dict())
    for seed in cfg.run_seeds:
        stage1 = source / f"seed-{seed}" / "stage1"
        if stage1.is_dir():
            shutil.copytree(stage1, folder / f"seed-{seed}" / "stage1")
    return folder


def summary_lines(entry: dict) -> list[str]:
    def fmt(value: object) -> str:
        return "-" if value is None else f"{value:.2f}"

    def interval(ci: list | None) -> str:
        return "" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]"

    lines = [
        f"## {entry['problem']} ({entry['role']}; {entry['eval_split']} split, seeds "
        f"{entry['seeds']}, {entry['wall_time_s'] / 60:.1f} min; {entry['run']})",
        "",
        "| learner | dominance | oracle gap closed | layers to match full depth |",
        "|---|---|---|---|",
    ]
    for learner, e in entry.get("frontier_summary", {}).items():
        lines.append(
            f"| {learner} | {fmt(e['dominance'])}{interval(e.get('dominance_ci95'))} | "
            f"{fmt(e['oracle_gap_closed'])}{interval(e.get('oracle_gap_closed_ci95'))} | "
            f"{fmt(e['layers_to_match_full_depth'])} |"
        )
    flagged = [h for h in entry.get("health", []) if h.get("status") != "ok"]
    lines += ["", f"health: {len(flagged)} trial(s) flagged"]
    lines += [f"- {h['key']}: {h['message']}" for h in flagged]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", nargs="+", choices=list(PROBLEMS), default=list(PROBLEMS))
    parser.add_argument("--seeds", type=int, nargs="+", help="seeds (default: seed 0)")
    parser.add_argument("--eval-split", choices=["test", "val"], default="test")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="for every problem")
    parser.add_argument("--runs", default="runs/defaults_suite")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--ray", metavar="ADDRESS", help="run the trials on Ray ('auto')")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--reuse-stage1",
        metavar="RUNS",
        help="reuse the stage-1 trials of the latest run of each problem under RUNS (a "
        "runs folder of this script) when only stage-2 settings differ",
    )
    parser.add_argument("--out", help="JSON file for the summaries (default: <runs>/...json)")
    args = parser.parse_args(argv)
    entries = []
    for name in args.problems:
        entry = run_problem(name, args)
        entries.append(entry)
        print("\n".join(summary_lines(entry)) + "\n", flush=True)
    out = Path(args.out or Path(args.runs) / "defaults_suite.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(entries, indent=2))
    print(f"summaries: {out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    raise SystemExit(main())
