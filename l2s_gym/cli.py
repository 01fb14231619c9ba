"""The ``l2s`` command: ``compare``, ``train-predictor``, ``train-policy``, ``evaluate``.

Bad input (an unknown config key, a wrong type, an impossible value, a missing
checkpoint) is reported as one line on stderr with exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from l2s_gym.config import ConfigError, ExperimentConfig, find_config, load_config
from l2s_gym.registry import PluginError
from l2s_gym.runs import TrainingDiverged

LOSS_MODES = ("oracle", "last", "mean")


def _config(args: argparse.Namespace) -> ExperimentConfig:
    from l2s_gym import registry

    for spec in args.imports or []:
        registry.import_module_or_file(spec)
    registry.load_plugins()
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    return load_config(find_config(args.config), overrides)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a YAML experiment file, or the name of one in configs/")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stage1.steps=100 (repeatable)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides `device`")
    p.add_argument("--runs", default="runs", help="folder that holds experiment folders")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE_OR_FILE",
        help="import a module (dotted name) or a .py file that registers tasks, predictors "
        "or learners, before the config is read (repeatable)",
    )


def _setup(cfg: ExperimentConfig, runs: str):  # noqa: ANN202
    import torch

    from l2s_gym.build import make_predictor, make_task, resolve_device

    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    task = make_task(cfg.task, cfg.seed, device)
    exp = Path(runs) / cfg.experiment
    return task, make_predictor(cfg.predictor, task, seed=cfg.seed), exp


def _load_predictor(predictor, path: str) -> None:  # noqa: ANN001
    from l2s_gym.runs import load_checkpoint

    state = load_checkpoint(path, "predictor")
    predictor.load_state_dict(state["state_dict"])
    predictor.eval().requires_grad_(False)


def cmd_compare(args: argparse.Namespace) -> int:
    from l2s_gym.compare import run_compare

    cfg = _config(args)
    exp = run_compare(cfg, args.runs, progress=not args.no_progress)
    print(exp)
    return 0


def cmd_train_predictor(args: argparse.Namespace) -> int:
    from l2s_gym.runs import write_config_snapshot
    from l2s_gym.training import train_predictor

    cfg = _config(args)
    task, predictor, exp = _setup(cfg, args.runs)
    folder = exp / f"predictor-{args.loss}"
    write_config_snapshot(folder, cfg.to_dict())
    result = train_predictor(
        predictor,
        task,
        cfg.stage1,
        args.loss,
        cfg.beta,
        folder,
        cfg.seed,
        cfg.to_dict(),
        not args.no_progress,
    )
    print(f"best validation loss {result.best_val:.5g} at step {result.best_step}")
    print(result.checkpoint)
    return 0


def cmd_train_policy(args: argparse.Namespace) -> int:
    from l2s_gym import registry
    from l2s_gym.evaluation import evaluate_stop_model
    from l2s_gym.learner import LearnerContext
    from l2s_gym.runs import write_config_snapshot

    cfg = _config(args)
    if args.learner not in registry.LEARNERS:
        raise ConfigError(
            f"--learner: unknown learner {args.learner!r}; known: "
            f"{', '.join(registry.learner_names())}"
        )
    task, predictor, exp = _setup(cfg, args.runs)
    _load_predictor(predictor, args.predictor)
    folder = exp / args.learner
    write_config_snapshot(folder, cfg.to_dict())
    val = predictor.trace_eval(task.eval_set("val"), task, cfg.compare.eval_batch_size)
    ctx = LearnerContext(cfg, task, predictor, val, folder, cfg.seed, not args.no_progress)
    result = registry.LEARNERS[args.learner](ctx)
    summary = evaluate_stop_model(task, val, result.model, cfg.seed, rule=result.readout)
    print(
        f"validation {task.metric_name}: {summary['metric']:.3f} "
        f"at {summary['avg_layers']:.2f} layers on average"
    )
    print(result.checkpoint)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from l2s_gym import registry
    from l2s_gym.build import make_policy
    from l2s_gym.evaluation import depth_curve, evaluate_stop_model, stop_summary
    from l2s_gym.report import markdown_table
    from l2s_gym.rules import ReadoutRule, fixed_depth_stop, oracle_stop
    from l2s_gym.runs import load_checkpoint

    cfg = _config(args)
    task, predictor, _ = _setup(cfg, args.runs)
    _load_predictor(predictor, args.predictor)
    test = predictor.trace_eval(task.eval_set("test"), task, cfg.compare.eval_batch_size)
    T, P = predictor.num_layers, predictor.display_name
    rows = [
        {"method": f"{P} (T={T})", **stop_summary(task, test, fixed_depth_stop(test, T))},
        {
            "method": f"{P} oracle stop (label-using bound)",
            **stop_summary(task, test, oracle_stop(test)),
        },
    ]
    for path in args.policy or []:
        state = load_checkpoint(path, "policy")
        policy = make_policy(cfg, predictor)
        policy.load_state_dict(state["state_dict"])
        policy.eval()
        label = registry.LEARNER_LABELS.get(state.get("learner", ""), Path(path).parent.name)
        rule = ReadoutRule.from_dict(state.get("readout", {"kind": "threshold", "value": 0.5}))
        rows.append(
            {
                "method": f"{P}-stop ({label})",
                **evaluate_stop_model(task, test, policy, cfg.seed, rule=rule),
            }
        )
    results = {
        "experiment": cfg.experiment,
        "metric": task.metric_name,
        "higher_is_better": task.higher_is_better,
        "group_names": task.group_names,
        "test_size": len(test),
        "rows": rows,
    }
    print(markdown_table(results))
    print("metric by depth: " + ", ".join(f"{v:.2f}" for v in depth_curve(task, test)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="l2s", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="train and compare every method on one experiment")
    _common(p)
    p.set_defaults(fn=cmd_compare)
    p = sub.add_parser("train-predictor", help="stage 1 only: train the layered predictor")
    _common(p)
    p.add_argument(
        "--loss",
        choices=LOSS_MODES,
        default="oracle",
        help="oracle (the stop model), last or mean (fixed-depth baselines)",
    )
    p.set_defaults(fn=cmd_train_predictor)
    p = sub.add_parser(
        "train-policy", help="stage 2 only: train a stop policy on a frozen predictor"
    )
    _common(p)
    p.add_argument("--predictor", required=True, help="predictor checkpoint (best.pt)")
    p.add_argument(
        "--learner", default="reverse_kl", help="reverse_kl, forward_kl, reinforce, ppo, a2c"
    )
    p.set_defaults(fn=cmd_train_policy)
    p = sub.add_parser("evaluate", help="score a predictor and stop policies on the test set")
    _common(p)
    p.add_argument("--predictor", required=True, help="predictor checkpoint (best.pt)")
    p.add_argument("--policy", action="append", help="policy checkpoint(s) (best.pt), repeatable")
    p.set_defaults(fn=cmd_evaluate)
    add_predict_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, PluginError) as exc:
        print(f"l2s: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"l2s: training diverged: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        if "CUDA" in str(exc):
            print(f"l2s: error: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("l2s: interrupted; checkpoints written so far are kept", file=sys.stderr)
        return 130


def add_predict_parser(sub) -> None:  # noqa: ANN001 - argparse's private subparsers type
    p = sub.add_parser(
        "predict", help="early exit: run a run folder's predictor and stop policy, timed"
    )
    _common(p)
    p.add_argument("--run", required=True, help="a run folder (runs/<experiment>/<run-id>)")
    p.add_argument("--learner", required=True, help="the learner whose policy to run")
    p.add_argument("--cost", type=float, help="which cost-<c> policy (default: the only one)")
    p.add_argument("--seed", type=int, help="which seed-<s> folder (default: the config's)")
    p.add_argument("--out", help="FILE.pt for predictions and stop layers (+ FILE.json)")
    p.add_argument("--batch-size", type=int, help="default: compare.eval_batch_size")
    p.add_argument(
        "--input",
        help="a .pt dict of input tensors to run instead of the test set (any task: the "
        "keys and per-instance shapes of its test inputs)",
    )
    p.set_defaults(fn=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from l2s_gym.runner import format_summary, predict_run

    cfg = _config(args)
    summary = predict_run(
        cfg,
        args.run,
        args.learner,
        cost=args.cost,
        seed=args.seed,
        batch_size=args.batch_size,
        out=args.out,
        input_file=args.input,
    )
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
