"""Unit tests of ``l2s_gym.report`` on a hand-built ``RunResults``: the comparison table's
columns, row labels and notes, the paired and frontier tables, the health and failure
sections, and ``results.json``. No training, no plotting."""

from __future__ import annotations

import json

from l2s_gym import report
from l2s_gym.result_types import (
    Curve,
    FailedTrial,
    FrontierSummary,
    Health,
    LayersToMatch,
    PairedDifference,
    Point,
    Row,
    RunResults,
)

ORACLE_LABEL = "Toy-stop oracle (label-using bound on the objective)"


def results(**changes) -> RunResults:
    rows = [
        Row("fixed_T", "Toy (T=6)", "fixed", 0.5, 6.0, 0.812345, [0.4, 0.6], [0.8, 0.83],
            groups={"first": 0.4, "second": 0.6}, train_wall_time_s=12.34, layer_evals=12345.0),
        Row("oracle", ORACLE_LABEL, "oracle", 0.1, 3.0, 0.25, [0.05, 0.15], [0.2, 0.3]),
        Row("learner:reverse_kl", "reverse KL", "learner", 0.2, 3.5, 0.3, [0.15, 0.25],
            [0.28, 0.32], readout="quantile q=0.5", health="never stops",
            stochastic=Point(0.22, 3.7)),
    ]  # fmt: skip
    base = dict(
        experiment="toy_run", metric="toy loss", higher_is_better=False, rows=rows,
        task="toy", num_layers=6, test_size=256, group_names=["first", "second"], seeds=[0],
        compare_cost=0.5, compare_lambda=0.5,
    )  # fmt: skip
    base.update(changes)
    return RunResults(**base)


def cells(table: str, label: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {label}"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_number_formats() -> None:
    assert report._fmt(None) == "-" and report._fmt(float("nan")) == "-"
    assert report._fmt(12345.0) == "12,345" and report._fmt(0.123) == "0.12"
    assert report._fmt(7) == "7" and report._fmt(True) == "True"
    assert report._sig(0.000123456) == "0.0001235" and report._sig(float("inf")) == "-"
    assert report._count(1234.6) == "1,235" and report._count(None) == "-"
    assert report._interval(None) == "-" and report._interval([0.1, 0.25]) == "[0.100, 0.250]"


def test_comparison_table_columns_rows_and_flags() -> None:
    table = report.markdown_table(results())
    head = cells(table, "Method")
    assert head[:6] == [
        "Method", "toy loss", "95% interval (test instances)", "avg layers", "objective",
        "objective 95% interval",
    ]  # fmt: skip
    assert head[6:8] == ["first", "second"] and head[-2:] == ["train time (s)", "layer evals"]
    full = cells(table, "Toy (T=6)")
    assert full[1:6] == ["0.50", "[0.400, 0.600]", "6.00", "0.8123", "[0.8, 0.83]"]
    assert full[6:8] == ["0.40", "0.60"] and full[-2:] == ["12.3", "12,345"]
    assert full[8] == "-"  # no read-out for a fixed depth
    assert cells(table, ORACLE_LABEL)[1] == "0.10"
    learner = cells(table, "reverse KL [never stops]")  # a flagged learner is marked
    assert learner[8] == "quantile q=0.5" and learner[9:11] == ["0.22", "3.70"]
    assert all(len(cells(table, r.method)) == len(head) for r in results().rows[:2])


def test_table_note_names_the_direction_seeds_price_and_oracle_bound() -> None:
    note = report.markdown_table(results()).splitlines()[-1]
    assert "toy loss: lower is better" in note and "seed 0 (intervals: bootstrap" in note
    assert "layer price 0.5" in note and "it bounds the objective of every stop rule" in note
    gain = report.markdown_table(
        results(cost_scale="gain", compare_cost=2.0, compare_lambda=0.0123, seeds=[0, 1, 2],
                higher_is_better=True, eval_split="val")
    ).splitlines()[-1]  # fmt: skip
    assert "layer price 2 (in gain-per-layer units; lambda = 0.0123 in loss units)" in gain
    assert "mean over seeds 0, 1, 2 (intervals: t over seeds)" in gain
    assert "higher is better" in gain and gain.startswith("Validation set")
    free = report.markdown_table(results(compare_cost=0.0, compare_lambda=0.0, metric_follows_loss=True))  # fmt: skip
    assert "also its layer of best metric" in free


def test_paired_table_says_when_zero_is_inside() -> None:
    paired = {
        "fixed_T": PairedDifference("Toy (T=6)", 0.3, [0.1, 0.5], -0.2, [-0.3, 0.1]),
    }
    text = report.paired_table(results(paired_differences=paired))
    row = cells(text, "Toy (T=6)")
    assert row[1:4] == ["0.300", "[0.100, 0.500]", "no"]
    assert row[4:7] == ["-0.2", "[-0.3, 0.1]", "yes: a tie"]
    assert report.paired_table(results()) == ""


def test_frontier_tables_summary_reference_and_points() -> None:
    summary = {"reverse KL": FrontierSummary(0.75, 0.4, 3.25, strict_dominance=0.5,
                                              dominance_per_seed=[0.7, 0.8])}  # fmt: skip
    frontiers = {
        "reverse KL": Curve("learned", [0, 1], [4.0, 2.5], [0.2, 0.3], [None] * 2, [None] * 2,
                            objective=[0.2, 2.8]),
        "fixed": Curve("fixed", [1, 2], [1.0, 2.0], [0.9, 0.5], [None] * 2, [None] * 2),
    }  # fmt: skip
    reference = {"oracle": LayersToMatch(2.0, [1.5, 2.5], [1.8, 2.2]), "baselines": LayersToMatch(None)}  # fmt: skip
    text = report.frontier_tables(
        results(
            frontier_summary=summary,
            frontiers=frontiers,
            frontier_reference=reference,
            costs=[0.0, 1.0, 2.0],
        )  # fmt: skip
    )
    row = cells(text, "reverse KL")
    assert row[1] == "0.75" and row[3] == "0.50" and row[4] == "0.40" and row[6] == "3.25"
    assert row[7] == "0.70, 0.80"
    assert "label-using oracle (no stop policy can match full depth with fewer): 2.00 [1.50, 2.50] (per seed: 1.80, 2.20)" in text  # fmt: skip
    assert "best label-free baseline (every fixed depth and heuristic): never" in text
    assert cells(text, "price") == ["price", "reverse KL"]  # learned curves only
    assert cells(text, "1") == ["1", "0.30 @ 2.50 (2.8)"]
    assert cells(text, "2") == ["2", "-"]  # a price with no point
    assert report.frontier_tables(results()) == ""


def test_full_report_sections_and_results_json(tmp_path) -> None:
    health = [
        Health(
            "seed-0/reverse_kl/cost-0.5",
            "reverse_kl",
            0.5,
            "never stops",
            "never stops (6.00 of 6 layers)",
        ),  # fmt: skip
        Health("seed-0/forward_kl/cost-0.5", "forward_kl", 0.5, "ok", "fine"),
    ]
    failed = [FailedTrial("seed-0/rl/cost-0.5", "failed", "RuntimeError: boom")]
    res = results(health=health, failed=failed)
    text = report.write_results(tmp_path, res)
    assert text.startswith("# toy_run (compare)")
    assert "- seed-0/reverse_kl/cost-0.5: never stops (6.00 of 6 layers)" in text
    assert "forward_kl" not in text  # only flagged trials are listed
    assert "- seed-0/rl/cost-0.5: failed (RuntimeError: boom)" in text
    assert (tmp_path / "results.md").read_text() == text
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["id"] for r in data["rows"]] == ["fixed_T", "oracle", "learner:reverse_kl"]
    assert "readout" not in data["rows"][0]  # None fields are left out
    assert "per_seed" not in data["rows"][0]  # so are empty lists


def test_curve_json_names_and_skipped_stats() -> None:
    c = Curve("learned", [0.0], [2.0], [0.5], [None], [None], lambdas=[0.1])
    c.stats = [[1.0, 2.0]]
    data = results(frontiers={"x": c}).to_json()["frontiers"]["x"]
    assert data["lambda"] == [0.1] and "lambdas" not in data and "stats" not in data
    assert data["ci_low"] == [None]  # None inside a list is kept
