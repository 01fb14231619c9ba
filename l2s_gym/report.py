"""Results as Markdown tables, a JSON file other tools can read, PNG plots and TensorBoard."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from l2s_gym.runs import atomic_write_bytes, write_json


def _count(value: Any) -> str:
    """A count (layer evaluations), or a mean of counts over seeds: a whole number."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{round(value):,}"


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _interval(ci: list[float] | None, digits: int = 3) -> str:
    return f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]" if ci else "-"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def markdown_table(results: dict[str, Any]) -> str:
    """The comparison table: metric with its interval, layers, per group, stochastic, cost."""
    rows = results["rows"]
    groups = list(results.get("group_names", []))
    metric = results["metric"]
    over = rows[0].get("ci_over", "test instances") if rows else "test instances"
    head = ["Method", metric, f"95% interval ({over})", "avg layers", *groups]
    head += [
        "read-out",
        "stochastic " + metric,
        "stochastic layers",
        "train time (s)",
        "layer evals",
    ]
    body = []
    for r in rows:
        sto = r.get("stochastic") or {}
        body.append(
            [
                r["method"],
                _fmt(r["metric"]),
                _interval(r.get("ci95")),
                _fmt(r["avg_layers"]),
                *[_fmt(r.get("groups", {}).get(g)) for g in groups],
                r.get("readout", "-") if r.get("kind") == "learner" else "-",
                _fmt(sto.get("metric")),
                _fmt(sto.get("avg_layers")),
                _fmt(r.get("train_wall_time_s"), 1),
                _count(r.get("layer_evals")),
            ]
        )
    lines = _table(head, body)
    arrow = "higher" if results["higher_is_better"] else "lower"
    seeds = results.get("seeds", [])
    lines.append("")
    seed_text = (
        f"mean over seeds {', '.join(map(str, seeds))} (intervals: t over seeds)"
        if len(seeds) > 1
        else f"seed {seeds[0] if seeds else '?'} (intervals: bootstrap over test instances)"
    )
    lam = results.get("compare_cost", 0.0)
    split = (
        "Validation set (for tuning; not a test result)"
        if results.get("eval_split") == "val"
        else "Test set"
    )
    lines.append(
        f"{split}, {results.get('test_size', '?')} instances; {metric}: {arrow} is better; "
        f"{seed_text}; layer price {lam:g}"
        f"{' (in gain-per-layer units)' if results.get('cost_scale') == 'gain' else ''}. "
        "Learned rules stop by the read-out chosen on the validation set (column 'read-out'); "
        "'stochastic' samples the stop layer from q_phi. Train time and layer evals count "
        "training only (stage 1 for predictors, stage 2 for stop rules)."
    )
    return "\n".join(lines) + "\n"


def paired_table(results: dict[str, Any]) -> str:
    """Every row against the primary learner (reverse KL): the paired difference."""
    paired = results.get("paired_differences") or {}
    if not paired:
        return ""
    metric = results["metric"]
    body = []
    for d in paired.values():
        ci = d.get("ci95")
        inside = ci is not None and ci[0] <= 0 <= ci[1]
        body.append(
            [
                d["method"],
                _fmt(d["difference"], 3),
                _interval(ci),
                d.get("ci_over", ""),
                "yes: a tie" if inside else "no",
            ]
        )
    lines = [f"Difference in {metric} against the reverse-KL learner (row minus reverse KL):", ""]
    lines += _table(["Method", "difference", "95% interval", "over", "0 inside?"], body)
    return "\n".join(lines) + "\n"


def time_to_target_table(results: dict[str, Any]) -> str:
    ttt = results.get("time_to_target") or {}
    if not ttt:
        return ""
    any_entry = next(iter(ttt.values()))
    target_learner = any_entry["per_seed"][0].get("target_learner", "best RL learner")
    body = [
        [
            name,
            _fmt(e["target"], 4),
            e["reached"],
            _fmt(e["wall_time_s"], 1),
            _count(e["layer_evals"]),
            _fmt(e["final_wall_time_s"], 1),
            _count(e["final_layer_evals"]),
        ]
        for name, e in ttt.items()
    ]
    lines = [
        f"Time to target: when each learner first reached the best RL learner's final "
        f"validation {results['metric']} ({target_learner} in seed {results['seeds'][0]}), "
        "means over seeds ('-': not reached in every seed):",
        "",
    ]
    lines += _table(
        [
            "Learner",
            "target",
            "reached",
            "wall time (s)",
            "layer evals",
            "total time (s)",
            "total layer evals",
        ],  # fmt: skip
        body,
    )
    return "\n".join(lines) + "\n"


REFERENCE_LABELS = {
    "oracle": "the label-using oracle (no stop policy can match full depth with fewer)",
    "baselines": "the best label-free baseline (every fixed depth and heuristic)",
}


def _reference_lines(results: dict[str, Any]) -> list[str]:
    """What the learners' layers to match full depth compare with (one line each)."""
    ref = results.get("frontier_reference") or {}
    lines = []
    for key, label in REFERENCE_LABELS.items():
        e = ref.get(key)
        if e is None:
            continue
        value = e["layers_to_match_full_depth"]
        text = "never" if value is None else _fmt(value)
        iv = e.get("layers_to_match_full_depth_ci95")
        if value is not None and iv:
            text += f" {_interval(iv, 2)}"
        per = e.get("layers_to_match_full_depth_per_seed")
        if per and len(per) > 1:
            text += " (per seed: " + ", ".join("never" if v is None else _fmt(v) for v in per) + ")"
        lines.append(f"- layers to match full depth, {label}: {text}")
    return ["", *lines] if lines else []


def _summary_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    body = []
    for name, e in summary.items():
        body.append(
            [
                name,
                _fmt(e["dominance"]),
                _interval(e.get("dominance_ci95"), 2),
                _fmt(e["oracle_gap_closed"]),
                _interval(e.get("oracle_gap_closed_ci95"), 2),
                _fmt(e["layers_to_match_full_depth"]),
                ", ".join(_fmt(v) for v in e.get("dominance_per_seed", [])),
                ", ".join(_fmt(v) for v in e.get("oracle_gap_closed_per_seed", [])),
            ]
        )
    return _table(
        [
            "Learner",
            "dominance",
            "95% interval",
            "oracle gap closed",
            "95% interval",
            "layers to match full depth",
            "dominance per seed",
            "gap closed per seed",
        ],  # fmt: skip
        body,
    )


def frontier_tables(results: dict[str, Any]) -> str:
    summary = results.get("frontier_summary") or {}
    if not summary:
        return ""
    T = results["num_layers"]
    lines = [
        "Frontier summary over budgets [1, T] (see docs/method.md): dominance = share of "
        "budgets where the learner is at least as good as the best label-free baseline; "
        "gap closed = area to that baseline over the oracle's; layers to match = fewest "
        f"average layers reaching the full-depth (T={T}) metric.",
        "",
    ]
    lines += _summary_table(summary)
    lines += _reference_lines(results)
    lines += ["", f"Frontier points ({results['metric']} at average layers), per layer price:", ""]
    learned = {n: f for n, f in results["frontiers"].items() if f["kind"] == "learned"}
    costs = results.get("costs", [])
    body = []
    for i, c in enumerate(costs):
        cells = [f"{c:g}"]
        for f in learned.values():
            if i < len(f["metric"]):
                cells.append(f"{_fmt(f['metric'][i])} @ {_fmt(f['avg_layers'][i])}")
            else:
                cells.append("-")
        body.append(cells)
    lines += _table(["price", *learned], body)
    sweep = results.get("frontier_sweep_summary") or {}
    if sweep:
        price = results.get("compare_cost", 0.0)
        lines += [
            "",
            f"One policy per learner, the one trained at price {price:g}, its read-out "
            "swept instead of retraining at every price (the quantile rule at q = "
            + ", ".join(f"{q:g}" for q in _sweep_quantiles(results))
            + "; the curves '..., one policy, read-out swept'), judged the same way:",
            "",
        ]
        lines += _summary_table(sweep)
    return "\n".join(lines) + "\n"


def _sweep_quantiles(results: dict[str, Any]) -> list[float]:
    for f in results.get("frontiers", {}).values():
        if f["kind"] == "sweep":
            return list(f["param"])
    return []


def failed_text(results: dict[str, Any]) -> str:
    failed = results.get("failed") or []
    if not failed:
        return ""
    lines = ["Trials that did not finish:", ""]
    lines += [f"- {f['key']}: {f['status']} ({f['error']})" for f in failed]
    return "\n".join(lines) + "\n"


def full_report(results: dict[str, Any]) -> str:
    parts = [f"# {results['experiment']} ({results.get('mode', 'compare')})", ""]
    if results.get("rows"):
        parts.append(markdown_table(results))
    for text in (
        paired_table(results),
        time_to_target_table(results),
        frontier_tables(results),
        failed_text(results),
    ):
        if text:
            parts += ["", text]
    return "\n".join(parts)


def write_results(folder: Path, results: dict[str, Any]) -> str:
    """Write ``results.json`` and ``results.md``; return the Markdown."""
    text = full_report(results)
    write_json(folder / "results.json", results)
    atomic_write_bytes(folder / "results.md", text.encode())
    return text


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_layers(folder: Path, results: dict[str, Any]) -> Path | None:
    """Fixed-depth curves as lines, stop rules as points: metric against layers computed."""
    if not results.get("rows"):
        return None
    plt = _pyplot()
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
        if sto and sto.get("metric") is not None:
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
    ax.set_title(
        f"{results['experiment']}: metric vs layers ({_split_name(results)}, "
        f"seed {results['seeds'][0]})"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = folder / "metric_vs_layers.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def frontier_figure(results: dict[str, Any]):  # noqa: ANN201
    """The accuracy-compute frontier: one curve per rule, 95% bands, learned rules marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.2))
    styles = {"fixed": "-", "heuristic": "--", "oracle": ":", "learned": "-", "sweep": (0, (4, 1))}
    for name, f in results.get("frontiers", {}).items():
        pts = sorted(
            (x, y, lo, hi)
            for x, y, lo, hi in zip(
                f["avg_layers"], f["metric"], f["ci_low"], f["ci_high"], strict=True
            )
            if x is not None and y is not None
        )
        if not pts:
            continue
        xs, ys, los, his = zip(*pts, strict=True)
        kind = f["kind"]
        marker = "o" if kind == "learned" else ("." if kind != "oracle" else None)
        lw = 2.2 if kind == "learned" else 1.3
        (line,) = ax.plot(xs, ys, ls=styles[kind], marker=marker, lw=lw, label=f"{name} ({kind})")
        if all(v is not None for v in los + his):
            ax.fill_between(xs, los, his, color=line.get_color(), alpha=0.15, lw=0)
    full = results.get("full_depth_metric")
    if full is not None and results.get("frontier_summary"):
        ax.axhline(
            full, color="0.4", ls="-.", lw=0.9, label="full depth T (layers-to-match target)"
        )
    ax.set_xlabel("layers computed (average)")
    ax.set_ylabel(results["metric"])
    seeds = results.get("seeds", [])
    over = "seeds" if len(seeds) > 1 else f"{_split_name(results).split()[0]} instances"
    ax.set_title(
        f"{results['experiment']}: accuracy vs compute ({_split_name(results)}; "
        f"bands: 95% over {over})"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_frontier(folder: Path, results: dict[str, Any]) -> Path | None:
    if not results.get("frontier_summary"):
        return None
    plt = _pyplot()
    fig = frontier_figure(results)
    path = folder / "frontier.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(folder: Path, results: dict[str, Any]) -> Path | None:
    """Validation metric against wall time and against layer evaluations, every learner
    overlaid (the first seed solid, further seeds faint)."""
    per_seed = results.get("per_seed") or []
    if not any(res.get("learning_curves") for res in per_seed):
        return None
    plt = _pyplot()
    from l2s_gym.registry import LEARNER_LABELS
    from l2s_gym.trials import format_cost

    suffix = "@" + format_cost(results.get("compare_cost", 0.0))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    colors: dict[str, Any] = {}
    for i, res in enumerate(per_seed):
        for key, points in res.get("learning_curves", {}).items():
            if not key.endswith(suffix) or not points:
                continue
            name = key.split("@")[0]
            label = LEARNER_LABELS.get(name, name)
            y = [p["val_metric"] for p in points]
            kw: dict[str, Any] = {
                "marker": "." if i == 0 else None,
                "alpha": 1.0 if i == 0 else 0.35,
            }
            if name in colors:
                kw["color"] = colors[name]
            (line,) = axes[0].plot(
                [p["wall_time_s"] for p in points], y, label=label if i == 0 else None, **kw
            )
            colors[name] = line.get_color()
            kw["color"] = colors[name]
            axes[1].plot([max(p["layer_evals"], 1) for p in points], y, **kw)
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


def write_tensorboard_summary(folder: Path, results: dict[str, Any]) -> None:
    """The frontier as a figure and its summary as scalars, in ``<run>/tb/summary``."""
    from l2s_gym.runs import summary_writer

    with summary_writer(folder / "tb" / "summary") as w:
        for name, e in (results.get("frontier_summary") or {}).items():
            for key in ("dominance", "oracle_gap_closed", "layers_to_match_full_depth"):
                if e.get(key) is not None:
                    w.add_scalar(f"frontier/{key}/{name}", e[key], 0)
        for name, e in (results.get("frontier_sweep_summary") or {}).items():
            for key in ("dominance", "oracle_gap_closed", "layers_to_match_full_depth"):
                if e.get(key) is not None:
                    w.add_scalar(f"frontier_sweep/{key}/{name}", e[key], 0)
        for name, e in (results.get("frontier_reference") or {}).items():
            if e["layers_to_match_full_depth"] is not None:
                tag = f"frontier/layers_to_match_full_depth/{name} (reference)"
                w.add_scalar(tag, e["layers_to_match_full_depth"], 0)
        for r in results.get("rows", []):
            if r.get("kind") == "learner" and r.get("metric") is not None:
                w.add_scalar(f"test/metric/{r['learner']}", r["metric"], 0)
                w.add_scalar(f"test/avg_layers/{r['learner']}", r["avg_layers"], 0)
        if results.get("frontier_summary"):
            plt = _pyplot()
            fig = frontier_figure(results)
            w.add_figure("frontier", fig, 0)
            plt.close(fig)


def _split_name(results: dict) -> str:
    """``"test set"``, or ``"validation set"`` for a tuning run (``--eval-split val``)."""
    return "validation set" if results.get("eval_split") == "val" else "test set"
