"""A user's own problem on the library's defaults: nothing cut short without a word,
predictors with nothing to train, plugin errors as one line, the objective in every report,
learner health, progress that reads in a log file."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TOY_CONFIG, write_config

from l2s_gym import registry
from l2s_gym.compare import run_experiment
from l2s_gym.config import ConfigError, from_dict
from l2s_gym.learner import LearnerContext, LearnerResult, assess_health
from l2s_gym.progress import Bar, WorkMeter, collect_notes, metering, notify
from l2s_gym.results import time_to_target
from l2s_gym.trials import Trial


def toy(**sections) -> dict:
    data = yaml.safe_load(TOY_CONFIG)
    for key, value in sections.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return data


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "l2s_gym.cli", *args, "--import", "l2s_gym.testing"],
        capture_output=True,
        text=True,
        timeout=600,
    )


# --- no silent caps ------------------------------------------------------------------------


def test_a_budget_that_cannot_fund_the_steps_is_an_error_naming_both_keys(tmp_path) -> None:
    # 150 fresh batches of 128 through 6 layers need 115,200 layer evaluations.
    cfg = from_dict(toy(imitation={"buffer_size": 0}, compare={"layer_budget": 100_000}))
    with pytest.raises(ConfigError, match=r"imitation.steps: 150 .*compare.layer_budget 100,000"):
        run_experiment(cfg, tmp_path, "compare", progress=False, log=lambda *_: None)
    assert not any(tmp_path.iterdir())  # nothing written
    cfg = from_dict(toy(imitation={"buffer_size": 20_000}, compare={"layer_budget": 100_000}))
    with pytest.raises(ConfigError, match=r"imitation.buffer_size: .*compare.layer_budget"):
        run_experiment(cfg, tmp_path, "compare", progress=False, log=lambda *_: None)
    # The same from the command line: one line, exit 2.
    path = write_config(tmp_path, TOY_CONFIG)
    proc = run_cli("compare", str(path), "--runs", str(tmp_path / "runs"), "--no-progress",
                   "--set", "imitation.buffer_size=0", "--set", "compare.layer_budget=100000")  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "imitation.steps" in proc.stderr and "compare.layer_budget" in proc.stderr


def test_a_learner_called_directly_says_when_the_budget_cuts_it_and_records_it(tmp_path) -> None:
    from l2s_gym.testing import ToyCounter, ToyPredictorConfig, ToyTask, ToyTaskConfig

    cfg = from_dict(toy(imitation={"buffer_size": 0, "steps": 50, "batch_size": 64, "val_every": 10},
                        compare={"layer_budget": 64 * 6 * 20}))  # fmt: skip
    task = ToyTask(ToyTaskConfig(), seed=0)
    predictor = ToyCounter(ToyPredictorConfig()).requires_grad_(False)
    val = predictor.trace_eval(task.eval_set("val"), task)
    ctx = LearnerContext(cfg, task, predictor, val, tmp_path, progress=False)
    with collect_notes() as notes:
        result = registry.LEARNERS["reverse_kl"](ctx)
    assert any("funds 20 of imitation.steps 50" in n for n in notes)
    assert result.extra["steps"] == 20 and result.extra["steps_configured"] == 50
    assert result.extra["stopped_by"] == "compare.layer_budget"


def test_the_default_trace_buffer_is_sized_from_the_budget_and_recorded(tmp_path) -> None:
    cfg = from_dict(toy(imitation={"buffer_size": "auto"}, compare={"layer_budget": 6_000}))
    run_dir, _ = run_experiment(cfg, tmp_path, "compare", progress=False, log=lambda *_: None)
    result = json.loads((run_dir / "seed-0/reverse_kl/cost-0/result.json").read_text())
    extra = result["extra"]
    assert extra["buffer_instances"] == 1000  # 6,000 layer evaluations / 6 layers
    assert result["layer_evals"] == 6000
    assert extra["steps"] == extra["steps_configured"] == 150
    assert extra["stopped_by"] == "imitation.steps"


# --- predictors with nothing to train --------------------------------------------------------


@pytest.mark.parametrize("steps", [5, 0])
def test_a_parameter_free_predictor_runs_compare_frontier_and_predict(tmp_path, steps) -> None:
    data = toy(predictor={"learnable": False} if steps else {}, stage1={"steps": steps},
               imitation={"steps": 30, "val_every": 10}, frontier={"costs": [0, 1]})  # fmt: skip
    path = write_config(tmp_path, yaml.safe_dump(data))
    runs = tmp_path / "runs"
    for command in ("compare", "frontier"):
        proc = run_cli(command, str(path), "--runs", str(runs), "--no-progress")
        assert proc.returncode == 0, proc.stderr
        assert "used as built" in proc.stderr
        run_dir = Path(proc.stdout.strip().splitlines()[-1])
        stage1 = json.loads((run_dir / "seed-0/stage1/result.json").read_text())
        assert stage1["oracle"]["trained"] is False and stage1["oracle"]["layer_evals"] == 0
        assert any("used as built" in note for note in stage1["notes"])
        results = json.loads((run_dir / "results.json").read_text())
        assert {r["id"] for r in results["rows"]} >= {"fixed_T", "oracle", "learner:reverse_kl"}
    assert results["frontier_summary"]["reverse_kl"]["dominance"] is not None
    # One model, untrained: the curves say so (not "oracle-trained", no second model).
    assert "fixed depth (untrained model)" in results["frontiers"]
    assert not any("trained" in k and "untrained" not in k for k in results["frontiers"])
    curves = list(results["depth_curves"])
    assert len(curves) == 1 and curves[0].endswith(", untrained (truncated)")
    proc = run_cli("predict", str(path), "--run", str(run_dir), "--learner", "reverse_kl",
                   "--cost", "0", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr


# --- plugin errors -----------------------------------------------------------------------------


@dataclass
class PickyConfig:
    size: int = 4

    def validate(self, path: str) -> None:
        if self.size > 10:
            raise ValueError("size must be at most 10")  # not a ConfigError: a plain check


def test_a_plugins_own_valueerror_is_one_config_error_naming_the_section() -> None:
    from l2s_gym.testing import ToyTask

    registry.register_task("picky_toy", PickyConfig)(ToyTask)
    try:
        data = {**toy(), "task": {"name": "picky_toy", "size": 11}}
        with pytest.raises(ConfigError, match=r"^task: ValueError: size must be at most 10$"):
            from_dict(data)
    finally:
        registry.TASKS.pop("picky_toy")


# --- the objective in every report --------------------------------------------------------------


def test_every_row_carries_the_objective_and_best_fixed_depth_chooses_by_it(tmp_path) -> None:
    # A price per layer: the oracle and the objective both prefer stopping early.
    cfg = from_dict(toy(cost=0.02))
    run_dir, results = run_experiment(cfg, tmp_path, "compare", progress=False, log=lambda *_: None)
    data = json.loads((run_dir / "results.json").read_text())
    for row in data["rows"]:
        assert math.isfinite(row["objective"]) and len(row["objective_ci95"]) == 2
    # The objective at the row's stops: loss + lambda * layers, averaged.
    rows = {r.id: r for r in results.rows}
    full = rows["fixed_T"]
    assert full.objective == pytest.approx(full_loss(run_dir, "fixed", 6) + 0.02 * 6, rel=1e-6)
    # Best fixed depth: the depth of least validation objective, not of best metric.
    from l2s_gym.trials import load_traces

    val = load_traces(run_dir / "seed-0/stage1")["oracle"]["val"]
    objective = val.losses.double().mean(0) + 0.02 * torch.arange(1, 7, dtype=torch.float64)
    assert rows["best_fixed"].depth == int(objective.argmin()) + 1
    assert "objective" in (run_dir / "results.md").read_text()
    assert "label-using bound on the objective" in rows["oracle"].method


def full_loss(run_dir: Path, which: str, depth: int) -> float:
    from l2s_gym.trials import load_traces

    test = load_traces(run_dir / "seed-0/stage1")[which]["test"]
    return float(test.losses[:, depth - 1].double().mean())


def test_time_to_target_chooses_the_target_by_the_objective_when_layers_have_a_price() -> None:
    from l2s_gym.testing import ToyTask, ToyTaskConfig

    task = ToyTask(ToyTaskConfig())

    def result(points: list[tuple[float, float]], final: tuple[float, float]) -> dict:
        curve = [
            {"val_metric": m, "val_objective": o, "wall_time_s": float(i), "layer_evals": 10.0 * i}
            for i, (m, o) in enumerate(points)
        ]
        extra = {"best_val_metric": final[0], "best_val_objective": final[1]}
        return {"curve": curve, "extra": extra, "wall_time_s": 9.0, "layer_evals": 90}

    trials = [Trial("stage2", 0, "reinforce", 0.1), Trial("stage2", 0, "ppo", 0.1)]
    results = {
        # Never stops: the best metric from its first point on, a poor objective.
        trials[0].key: result([(0.1, 0.9), (0.1, 0.9)], (0.1, 0.9)),
        trials[1].key: result([(0.5, 0.8), (0.3, 0.4)], (0.3, 0.4)),
    }
    by_metric = time_to_target(task, results, trials, 0.1, lam=0.0)
    assert by_metric["ppo"].target_learner == "reinforce" and by_metric["ppo"].criterion == "metric"
    by_objective = time_to_target(task, results, trials, 0.1, lam=0.02)
    assert by_objective["ppo"].target_learner == "ppo"
    assert by_objective["ppo"].target == 0.4 and by_objective["ppo"].layer_evals == 10
    assert by_objective["reinforce"].wall_time_s is None  # never reached 0.4


# --- learner health -------------------------------------------------------------------------


def health_context(tmp_path: Path) -> LearnerContext:
    from l2s_gym.testing import ToyCounter, ToyPredictorConfig, ToyTask, ToyTaskConfig

    cfg = from_dict(toy())
    task = ToyTask(ToyTaskConfig(), seed=0)
    predictor = ToyCounter(ToyPredictorConfig()).requires_grad_(False)
    val = predictor.trace_eval(task.eval_set("val"), task)
    return LearnerContext(cfg, task, predictor, val, tmp_path, progress=False)


def fake_result(layers_at_best: float, best_step: int) -> LearnerResult:
    curve = [{"step": float(s), "val_avg_layers": 3.0} for s in (0, 10, 20)]
    curve[[0, 10, 20].index(best_step)]["val_avg_layers"] = layers_at_best
    return LearnerResult(None, 0.0, 0, curve, extra={"best_step": best_step})  # type: ignore[arg-type]


def test_health_flags_a_policy_that_never_moved_or_collapsed(tmp_path) -> None:
    ctx = health_context(tmp_path)  # the oracle stops at 3.5 layers of 6 on average
    assert assess_health(ctx, fake_result(3.2, 20))["status"] == "ok"
    assert assess_health(ctx, fake_result(5.5, 0))["status"] == "untrained"
    # An initial policy that already stops where the oracle does is not a problem.
    assert assess_health(ctx, fake_result(3.4, 0))["status"] == "ok"
    never = assess_health(ctx, fake_result(6.0, 20))
    assert never["status"] == "never stops" and "while the oracle stops at" in never["message"]
    assert assess_health(ctx, fake_result(1.0, 10))["status"] == "always stops"


def stuck_learner(ctx: LearnerContext) -> LearnerResult:
    """A learner that never trains: its policy stops every instance at layer 1."""
    from l2s_gym.build import make_policy
    from l2s_gym.learner import Validator

    policy = make_policy(ctx.cfg, ctx.predictor)
    with torch.no_grad():
        policy.head.bias.fill_(10.0)
    validator = Validator(ctx, policy, "stuck")
    validator(policy, 0, 0)
    return validator.finish(policy, 0)


def test_a_learner_that_never_moved_is_flagged_in_the_log_the_table_and_results(
    tmp_path, capsys
) -> None:
    registry.register_learner("stuck", "stuck")(stuck_learner)
    try:
        cfg = from_dict(toy(compare={"learners": ["reverse_kl", "stuck"]}))
        run_dir, results = run_experiment(cfg, tmp_path, "compare", progress=False, log=lambda *_: None)  # fmt: skip
    finally:
        for table in (registry.LEARNERS, registry.LEARNER_LABELS, registry.LEARNER_KINDS):
            table.pop("stuck")
    assert "seed-0/stuck/cost-0: kept its initial policy" in capsys.readouterr().err
    flagged = [h for h in results.health if h.status != "ok"]
    assert [(h.learner, h.status) for h in flagged] == [("stuck", "untrained")]
    data = json.loads((run_dir / "results.json").read_text())
    row = next(r for r in data["rows"] if r["id"] == "learner:stuck")
    assert row["health"] == "untrained"
    assert "[untrained]" in (run_dir / "results.md").read_text()


# --- progress ---------------------------------------------------------------------------------


def test_stage1_with_nothing_to_train_is_no_share_of_the_work() -> None:
    """A predictor stage 1 will not train (no parameter, or stage1.steps 0) is not sized as
    two trainings: the progress line would open at a share of work that never runs."""
    from l2s_gym.compare import preflight
    from l2s_gym.trials import trial_work

    cfg = from_dict(toy(stage1={"steps": 5, "batch_size": 8}))
    stage1 = Trial("stage1", 0)
    assert trial_work(stage1, cfg, 6) == ("stage1", 2 * 5 * 8 * 6)
    assert trial_work(stage1, cfg, 6, stage1_trains=False) == ("stage1", 6.0)
    plan = [stage1]
    assert preflight(cfg, torch.device("cpu"), plan) == (6, True)
    frozen = from_dict(toy(predictor={"learnable": False}, stage1={"steps": 5}))
    assert preflight(frozen, torch.device("cpu"), plan) == (6, False)
    assert preflight(from_dict(toy(stage1={"steps": 0})), torch.device("cpu"), plan)[1] is False


def test_the_run_says_what_it_will_train() -> None:
    from l2s_gym.compare import plan_line

    plan = [Trial("stage1", 0), Trial("stage1", 1)]
    plan += [
        Trial("stage2", s, l, c) for s in (0, 1) for l in ("reverse_kl", "ppo") for c in (0, 1, 3)
    ]
    plan += [Trial("stage2", 0, "reverse_kl", one_policy=True)]
    line = plan_line(plan)
    assert line.startswith("12 stage-2 trials (reverse_kl, ppo at 3 prices) and 1 one-policy trial")
    assert "over 2 seeds" in line and "compare.learners" in line
    assert plan_line([plan[0], plan[2]]).startswith(
        "1 stage-2 trial (reverse_kl at 1 price) over 1 seed"
    )


def test_work_meter_counts_work_and_prints_plain_lines_off_a_terminal() -> None:
    lines: list[str] = []
    meter = WorkMeter(
        {"seed-0/stage1": ("stage1", 300.0), "seed-0/ppo/cost-0": ("ppo", 700.0)},
        log=lines.append,
        every_s=0.0,
        terminal=False,
    )
    with metering(meter, "seed-0/stage1"):
        bar = Bar(10, "stage 1 (oracle)")
        bar.update(5)
        assert meter.done() == pytest.approx(150.0)  # half of stage 1's 300
        bar.update(5)
        bar.close()
    meter.finish("seed-0/stage1")
    assert meter.done() == pytest.approx(300.0)
    assert meter.seconds_left() is not None
    assert lines and all("\r" not in line and "\x1b" not in line for line in lines)
    assert "30% of the work (300 of 1,000 layer evaluations)" in lines[-1]
    assert "finished seed-0/stage1" in lines[-1]


def test_notify_prints_and_keeps_the_note(capsys) -> None:
    with collect_notes() as notes:
        notify("something to know")
    assert notes == ["something to know"]
    assert "[l2s] something to know" in capsys.readouterr().err
