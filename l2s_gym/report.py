"""Results as a Markdown table, a JSON file other tools can read, and PNG plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from l2s_gym.runs import atomic_write_bytes, write_json


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}f}"


def markdown_table(results: dict[str, Any]) -> str:
    """The comparison table: metric, layers, per group, stochastic, training cost."""
    rows = results["rows"]
    groups = list(results.get("group_names", []))
    metric = results["metric"]
    with_ci = any("ci95" in r for r in rows)
    head = ["Method", metric] + (["95% interval"] if with_ci else []) + ["avg layers"] + groups
    head += ["stochastic " + metric, "stochastic layers", "train time (s)", "layer evals"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        sto = r.get("stochastic") or {}
        ci = r.get("ci95")
        cells = [r["method"], _fmt(r["metric"])]
        if with_ci:
            cells.append(f"[{_fmt(ci[0], 3)}, {_fmt(ci[1], 3)}]" if ci else "-")
        cells.append(_fmt(r["avg_layers"]))
        cells += [_fmt(r["groups"].get(g)) for g in groups]
        cells += [
            _fmt(sto.get("metric")),
            _fmt(sto.get("avg_layers")),
            _fmt(r.get("train_wall_time_s"), 1),
            _fmt(r.get("layer_evals")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    arrow = "higher" if results["higher_is_better"] else "lower"
    lines.append("")
    lines.append(
        f"Test set, {results.get('test_size', '?')} instances; {metric}: {arrow} is better. "
        "Learned rules stop deterministically (first layer with stop probability > 0.5); "
        "'stochastic' samples the stop layer from q_phi. Train time and layer evals "
        "count training only (stage 1 for predictors, stage 2 for stop rules)."
    )
    return "\n".join(lines) + "\n"


def write_results(folder: Path, results: dict[str, Any]) -> str:
    """Write ``results.json`` and ``results.md``; return the Markdown table."""
    table = markdown_table(results)
    write_json(folder / "results.json", results)
    atomic_write_bytes(folder / "results.md", table.encode())
    return table


def plot_metric_vs_layers(folder: Path, results: dict[str, Any]) -> Path:
    """Fixed-depth curves as lines, stop rules as points: metric against layers computed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for label, curve in results.get("depth_curves", {}).items():
        ax.plot(range(1, len(curve) + 1), curve, label=label, lw=1.5)
    markers = iter("o^sDvP*Xh<>")
    for r in results["rows"]:
        if r.get("kind") not in ("learner", "oracle", "heuristic"):
            continue
        m = next(markers, "o")
        ax.scatter([r["avg_layers"]], [r["metric"]], marker=m, s=60, zorder=3, label=r["method"])
        sto = r.get("stochastic")
        if sto:
            ax.scatter(
                [sto["avg_layers"]],
                [sto["metric"]],
                marker=m,
                s=60,
                zorder=3,
                facecolors="none",
                edgecolors="k",
                label=f"{r['method']} (stochastic)",
            )
    for curve in results.get("heuristic_curves", {}).values():
        ax.plot(curve["avg_layers"], curve["metric"], ls="--", marker=".", label=curve["label"])
    ax.set_xlabel("layers computed (average)")
    ax.set_ylabel(results["metric"])
    longest = max((len(c) for c in results.get("depth_curves", {}).values()), default=1)
    if longest > 40:
        ax.set_xscale("log")
    ax.set_title(f"{results['experiment']}: metric vs layers (test set)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = folder / "metric_vs_layers.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(folder: Path, results: dict[str, Any]) -> Path | None:
    """Validation metric against wall time and against layer evaluations, one line per learner."""
    curves = results.get("learning_curves", {})
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, points in curves.items():
        if not points:
            continue
        y = [p["val_metric"] for p in points]
        axes[0].plot([p["wall_time_s"] for p in points], y, marker=".", label=label)
        axes[1].plot([max(p["layer_evals"], 1) for p in points], y, marker=".", label=label)
    axes[0].set_xlabel("training wall time (s)")
    axes[1].set_xlabel("layer evaluations consumed")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("validation " + results["metric"])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['experiment']}: stop-policy learning curves")
    fig.tight_layout()
    path = folder / "learning_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
