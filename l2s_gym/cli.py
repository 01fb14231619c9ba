"""The ``l2s`` command: ``compare``, ``train-predictor``, ``train-policy``, ``evaluate``.

Bad input (an unknown config key, a wrong type, an impossible value, a missing
checkpoint) is reported as one line on stderr with exit code 2, before any work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from l2s_gym.config import ConfigError, ExperimentConfig, find_config, load_config
from l2s_gym.plugins import PluginError
from l2s_gym.runs import CheckpointError, TrainingDiverged

LOSS_MODES = ("oracle", "last", "mean")
THREADS_HELP = (
    "torch's intra-op CPU threads (sets the config's threads; 0: torch's default). On a "
    "shared or small machine, 1 is often several times faster"
)


def plain_text(text: str) -> str:
    """Docstring markup made readable in ``--help``: ``name`` becomes name."""
    return text.replace("``", "")


def _config(args: argparse.Namespace) -> ExperimentConfig:
    from l2s_gym import plugins

    for spec in args.imports or []:
        plugins.import_module_or_file(spec)
    plugins.load_plugins()
    overrides = list(args.set or [])
    if args.device:
        overrides.append(f"device={args.device}")
    if getattr(args, "seeds", None):
        overrides.append(f"seeds=[{', '.join(map(str, args.seeds))}]")
    if getattr(args, "threads", None) is not None:
        overrides.append(f"threads={args.threads}")
    if getattr(args, "one_policy_run", False):
        overrides.append("frontier.one_policy=true")
    cfg = load_config(find_config(args.config), overrides)
    from l2s_gym.build import apply_threads

    apply_threads(cfg.threads)  # before any work
    return cfg


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="a YAML experiment file, or the name of one in configs/")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set stage1.steps=100 (repeatable)",
    )
    p.add_argument(
        "--device", choices=["auto", "cpu", "cuda"], help="overrides the config's device"
    )
    p.add_argument("--runs", default="runs", help="folder that holds experiment folders")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        default=argparse.SUPPRESS,  # the global option's value stands unless given here
        help=THREADS_HELP,
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        metavar="MODULE_OR_FILE",
        help="import a module (dotted name) or a .py file that registers tasks, predictors "
        "or learners, before the config is read (repeatable)",
    )


def _setup(cfg: ExperimentConfig):  # noqa: ANN202
    from l2s_gym.build import make_predictor, make_task, resolve_device

    device = resolve_device(cfg.device)
    task = make_task(cfg.task, cfg.seed, device)
    return task, make_predictor(cfg.predictor, task, seed=cfg.seed)


def _new_run(cfg: ExperimentConfig, runs: str) -> Path:
    """A run folder of its own for a ``train-*`` command (never overwrites; sets ``latest``)."""
    from l2s_gym.runs import new_run_dir

    return new_run_dir(runs, cfg.experiment)


def _load_predictor(predictor, path: str, cfg: ExperimentConfig, task) -> None:  # noqa: ANN001
    """Load a predictor checkpoint, refusing one of another config, data or size."""
    from l2s_gym.runs import load_predictor

    load_predictor(path, predictor, cfg, task)


def _run_experiment(args: argparse.Namespace, mode: str) -> int:
    from l2s_gym.compare import run_experiment

    cfg = _config(args)
    runner = None
    if args.ray:
        from l2s_gym.ray_backend import RayRunner

        runner = RayRunner(
            args.ray,
            cpus_per_trial=cfg.ray.cpus_per_trial,
            gpus_per_trial=cfg.ray.gpus_per_trial,
            progress=not args.no_progress,
        )
    run_dir, results = run_experiment(
        cfg,
        args.runs,
        mode,
        progress=not args.no_progress,
        resume=args.resume,  # type: ignore[arg-type]
        runner=runner,
        eval_split=args.eval_split,
    )
    failed = results.failed
    for f in failed:
        print(f"l2s: trial {f.key} {f.status}: {f.error}", file=sys.stderr)
    print(run_dir)
    return 1 if failed else 0


def cmd_compare(args: argparse.Namespace) -> int:
    return _run_experiment(args, "compare")


def cmd_frontier(args: argparse.Namespace) -> int:
    return _run_experiment(args, "frontier")


def cmd_train_predictor(args: argparse.Namespace) -> int:
    from l2s_gym.runs import write_config_snapshot
    from l2s_gym.training import train_predictor

    cfg = _config(args)
    task, predictor = _setup(cfg)
    folder = _new_run(cfg, args.runs) / f"predictor-{args.loss}"
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
    from l2s_gym import plugins, registry
    from l2s_gym.evaluation import evaluate_stop_model
    from l2s_gym.learner import LearnerContext
    from l2s_gym.runs import write_config_snapshot

    cfg = _config(args)
    if args.learner not in registry.LEARNERS:
        raise ConfigError(
            f"--learner: unknown learner {args.learner!r}; known: "
            f"{', '.join(plugins.learner_names())}"
        )
    task, predictor = _setup(cfg)
    _load_predictor(predictor, args.predictor, cfg, task)
    folder = _new_run(cfg, args.runs) / args.learner
    write_config_snapshot(folder, cfg.to_dict())
    val = predictor.trace_eval(task.eval_set("val"), task, cfg.compare.eval_batch_size)
    ctx = LearnerContext(
        cfg, task, predictor, val, folder, cfg.seed, not args.no_progress, cost=cfg.cost
    )
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
    from l2s_gym.evaluation import (
        depth_curve,
        evaluate_stop_logits,
        stop_logits,
        stop_objective,
        stop_summary,
    )
    from l2s_gym.report import markdown_table
    from l2s_gym.result_types import Point, Row, RunResults
    from l2s_gym.rules import ReadoutRule, fixed_depth_stop, oracle_stop
    from l2s_gym.runs import load_policy
    from l2s_gym.stopping import cumulative_costs

    cfg = _config(args)
    task, predictor = _setup(cfg)
    _load_predictor(predictor, args.predictor, cfg, task)
    test = predictor.trace_eval(task.eval_set("test"), task, cfg.compare.eval_batch_size)
    T, P = predictor.num_layers, predictor.display_name
    cum = cumulative_costs(T, predictor.layer_costs(), predictor.device)

    def row(method: str, kind: str, summary: dict, stop) -> Row:  # noqa: ANN001
        return Row(
            id=method, method=method, kind=kind, metric=summary["metric"],
            avg_layers=summary["avg_layers"], ci95=summary.get("ci95"),
            objective=stop_objective(test, stop, cfg.cost, cum), objective_ci95=None,
            groups=summary["groups"], readout=summary.get("readout"),
            stochastic=Point(**summary["stochastic"]) if "stochastic" in summary else None,
        )  # fmt: skip

    rows = []
    for method, kind, stop in (
        (f"{P} (T={T})", "fixed", fixed_depth_stop(test, T)),
        (f"{P} oracle stop (label-using bound on the objective)", "oracle",
         oracle_stop(test, cfg.cost, cum)),
    ):  # fmt: skip
        rows.append(row(method, kind, stop_summary(task, test, stop), stop))
    for path in args.policy or []:
        policy = make_policy(cfg, predictor)
        state = load_policy(path, policy, cfg, task)
        label = registry.LEARNER_LABELS.get(state.get("learner", ""), Path(path).parent.name)
        rule = ReadoutRule.from_dict(state.get("readout", {"kind": "threshold", "value": 0.5}))
        logits = stop_logits(policy, test)
        summary = evaluate_stop_logits(task, test, logits, cfg.seed, rule=rule)
        stop = rule.stop(logits)
        rows.append(row(f"{P}-stop ({label})", "learner", summary, stop))
    results = RunResults(
        experiment=cfg.experiment,
        metric=task.metric_name,
        higher_is_better=task.higher_is_better,
        group_names=list(task.group_names),
        test_size=len(test),
        seeds=[cfg.seed],
        compare_cost=cfg.cost,
        compare_lambda=cfg.cost,
        rows=rows,
    )
    print(markdown_table(results))
    print("metric by depth: " + ", ".join(f"{v:.2f}" for v in depth_curve(task, test)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from l2s_gym import __version__

    parser = argparse.ArgumentParser(prog="l2s", description=plain_text(__doc__.splitlines()[0]))
    parser.add_argument("--version", action="version", version=f"l2s {__version__}")
    parser.add_argument("--threads", type=int, metavar="N", default=None, help=THREADS_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn, text in (
        ("compare", cmd_compare, "train and compare every method at one layer price"),
        ("frontier", cmd_frontier, "accuracy against compute: every learner at every price "
         "of frontier.costs, against every fixed depth, heuristic and the oracle"),
    ):  # fmt: skip
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument(
            "--seeds",
            type=int,
            nargs="+",
            metavar="SEED",
            help="run stage 1 and every learner for each seed into one run folder "
            "(sets the config's seeds)",
        )
        p.add_argument(
            "--resume",
            metavar="RUN_FOLDER",
            help="continue an interrupted run: a run folder, or 'latest' (the newest run "
            "of the config's experiment); finished trials are reused",
        )
        p.add_argument(
            "--ray",
            metavar="ADDRESS",
            help="run the trials on Ray Tune: 'auto' starts a local Ray runtime sized to "
            "this machine, an address joins a running cluster (pip install -e '.[ray]')",
        )
        p.add_argument(
            "--eval-split",
            choices=["test", "val"],
            default="test",
            help="score the finished trials on the test set (default) or on the validation "
            "set: use 'val' while choosing settings, so that no test number is looked at",
        )
        if name == "frontier":
            p.add_argument(
                "--one-policy",
                dest="one_policy_run",
                action="store_true",
                help="also train each learner that can (the imitation learners, reinforce, "
                "ppo, a2c, dqn) once as one price-conditioned policy for every price of "
                "frontier.costs (sets frontier.one_policy); its curve is drawn next to the "
                "per-price ones, its summary is '<learner> (one policy)'",
            )
        p.set_defaults(fn=fn)
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


def _runs_folder_problem(runs: str) -> str | None:
    """Why ``--runs`` cannot hold run folders (a file where a folder must be), or None."""
    path = Path(runs)
    while not path.exists() and path != path.parent:
        path = path.parent
    if path.exists() and not path.is_dir():
        where = "is a file" if path == Path(runs) else f"lies under a file, {path}"
        return f"--runs {runs}: {where}, not a folder"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = _runs_folder_problem(args.runs) if getattr(args, "runs", None) else None
    if problem is not None:
        print(f"l2s: error: {problem}", file=sys.stderr)
        return 2
    try:
        return args.fn(args)
    except (ConfigError, CheckpointError, PluginError, OSError) as exc:
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
    p.add_argument(
        "--cost",
        type=float,
        help="which cost-<c> policy (default: the only one); with --one-policy, any price "
        "(in the run's frontier.cost_scale units)",
    )
    p.add_argument(
        "--one-policy",
        action="store_true",
        help="serve the learner's price-conditioned policy (l2s frontier --one-policy) at "
        "the price --cost, on the frontier grid or off it",
    )
    p.add_argument("--seed", type=int, help="which seed-<s> folder (default: the config's)")
    p.add_argument("--out", help="FILE.pt for predictions and stop layers (+ FILE.json)")
    p.add_argument("--batch-size", type=int, help="default: compare.eval_batch_size")
    p.add_argument(
        "--lookahead",
        default="auto",
        help="auto (default): tune the look-ahead for this device and batch size on the "
        "first batch (StopRunner.tune; stored in runner_tune.json next to the policy and "
        "reused); K: ask the policy once per K layers (same stop layers; K >= T: the plain "
        "model, the policy never asked)",
    )
    p.add_argument(
        "--retune",
        action="store_true",
        help="with --lookahead auto: tune again, ignoring runner_tune.json",
    )
    p.add_argument(
        "--input",
        help="a .pt dict of input tensors to run instead of the test set (any task: the "
        "keys and per-instance shapes of its test inputs)",
    )
    p.add_argument(
        "--risk",
        nargs="?",
        const="default",
        metavar="EPSILON",
        help="read the policy out by the risk-calibrated rule instead of the one chosen on "
        "validation: the earliest rule certified on the seed's validation trace by Learn "
        "then Test (risk against full depth <= EPSILON with probability >= 1 - --delta; "
        "without a value, the task's stated epsilon; docs/method.md)",
    )
    p.add_argument(
        "--delta", type=float, help="with --risk: 1 - the confidence (default: the task's)"
    )
    p.add_argument(
        "--risk-set",
        action="store_true",
        help="with --risk: promise the risk of the instances this command serves (their "
        "share made worse <= EPSILON, over the draw of the validation and of these "
        "instances) instead of the population risk; stricter, it stops later",
    )
    p.set_defaults(fn=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from l2s_gym.predict import format_summary, parse_risk, predict_run

    cfg = _config(args)
    summary = predict_run(
        cfg,
        args.run,
        args.learner,
        cost=args.cost,
        one_policy=args.one_policy,
        seed=args.seed,
        batch_size=args.batch_size,
        out=args.out,
        input_file=args.input,
        lookahead=args.lookahead,
        retune=args.retune,
        risk=parse_risk(args.risk),
        delta=args.delta,
        risk_set=args.risk_set,
    )
    print(format_summary(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
