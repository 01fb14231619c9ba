"""Results as Markdown tables, a JSON file other tools can read, PNG plots and TensorBoard.

Everything here reads a ``l2s_gym.result_types.RunResults`` (``results.json`` is its
``to_json()``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from l2s_gym.result_types import FrontierSummary, RunResults
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


def _sig(value: Any, digits: int = 4) -> str:
    """A number in ``digits`` significant figures (objectives span many scales)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _interval(ci: list[float] | None, digits: int = 3) -> str:
    return f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]" if ci else "-"


def _sig_interval(ci: list[float] | None) -> str:
    return f"[{_sig(ci[0])}, {_sig(ci[1])}]" if ci else "-"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _price_text(results: RunResults) -> str:
    lam = results.compare_cost
    text = f"layer price {lam:g}"
    if results.cost_scale == "gain":
        text += f" (in gain-per-layer units; lambda = {results.compare_lambda:.4g} in loss units)"
    return text


def markdown_table(results: RunResults) -> str:
    """The comparison table: metric and objective with their intervals, layers, per group,
    the read-out, the stochastic read-out, the training cost; flagged learners marked."""
    rows = results.rows
    groups = list(results.group_names)
    metric = results.metric
    over = rows[0].ci_over if rows else "test instances"
    head = ["Method", metric, f"95% interval ({over})", "avg layers", "objective"]
    head += ["objective 95% interval", *groups, "read-out", "stochastic " + metric]
    head += ["stochastic layers", "train time (s)", "layer evals"]
    body = []
    for r in rows:
        method = r.method
        if r.health not in (None, "ok"):
            method += f" [{r.health}]"
        sto = r.stochastic
        body.append(
            [
                method,
                _fmt(r.metric),
                _interval(r.ci95),
                _fmt(r.avg_layers),
                _sig(r.objective),
                _sig_interval(r.objective_ci95),
                *[_fmt(r.groups.get(g)) for g in groups],
                r.readout or "-" if r.kind in ("learner", "calibrated") else "-",
                _fmt(sto.metric if sto else None),
                _fmt(sto.avg_layers if sto else None),
                _fmt(r.train_wall_time_s, 1),
                _count(r.layer_evals),
            ]
        )
    lines = _table(head, body)
    arrow = "higher" if results.higher_is_better else "lower"
    seeds = results.seeds
    seed_text = (
        f"mean over seeds {', '.join(map(str, seeds))} (intervals: t over seeds)"
        if len(seeds) > 1
        else f"seed {seeds[0] if seeds else '?'} (intervals: bootstrap over test instances)"
    )
    split = (
        "Validation set (for tuning; not a test result)"
        if results.eval_split == "val"
        else "Test set"
    )
    lines.append("")
    lines.append(
        f"{split}, {results.test_size or '?'} instances; {metric}: {arrow} is better; "
        f"{seed_text}; {_price_text(results)}. Objective: mean of loss + lambda x layers "
        "(layer costs) at the stops, lower is better; the learners, the oracle and every "
        "choice made on validation optimise it. "
        "Learned rules stop by the read-out chosen on the validation set (column 'read-out'); "
        "'stochastic' samples the stop layer from q_phi. Train time and layer evals count "
        "training only (stage 1 for predictors, stage 2 for stop rules)."
        + _oracle_note(results)
        + _risk_note(results)
    )
    return "\n".join(lines) + "\n"


def _risk_note(results: RunResults) -> str:
    if not any(r.kind == "calibrated" for r in results.rows):
        return ""
    from l2s_gym.risk import default_risk

    stated = default_risk(results.task)
    return (
        " The risk-calibrated read-out is the earliest quantile rule certified on the "
        f"validation set by Learn then Test: with probability >= {1 - stated.delta:g} over the "
        f"validation draw, its risk ({stated.definition}) on fresh instances is <= "
        f"{stated.epsilon:g} (docs/method.md, 'A read-out with a guarantee')."
    )


def _oracle_note(results: RunResults) -> str:
    if not any(r.kind == "oracle" for r in results.rows):
        return ""
    if results.metric_follows_loss and results.compare_lambda == 0:
        return (
            " The oracle stops each instance at its layer of least loss, which is also its "
            "layer of best metric here: no stop rule on this predictor beats it in either."
        )
    return (
        " The oracle stops each instance at its least loss + lambda x layers: it bounds the "
        "objective of every stop rule on this predictor, not the metric (where the loss is "
        "not the metric, or at a price per layer, a rule can have a better metric)."
    )


def paired_table(results: RunResults) -> str:
    """Every row against the primary learner (reverse KL): the paired differences."""
    paired = results.paired_differences
    if not paired:
        return ""
    metric = results.metric
    body = []
    for d in paired.values():
        inside = d.ci95 is not None and d.ci95[0] <= 0 <= d.ci95[1]
        obj_inside = d.objective_ci95 is not None and d.objective_ci95[0] <= 0 <= d.objective_ci95[1]  # fmt: skip
        body.append(
            [
                d.method,
                _fmt(d.difference, 3),
                _interval(d.ci95),
                "yes: a tie" if inside else "no",
                _sig(d.objective_difference),
                _sig_interval(d.objective_ci95),
                "yes: a tie" if obj_inside else "no",
                d.ci_over,
            ]
        )
    lines = [
        f"Difference against the reverse-KL learner (row minus reverse KL), in {metric} "
        "and in the objective (lower is better):",
        "",
    ]
    head = [
        "Method", "difference", "95% interval", "0 inside?", "objective difference",
        "95% interval", "0 inside?", "over",
    ]  # fmt: skip
    lines += _table(head, body)
    return "\n".join(lines) + "\n"


def one_policy_paired_table(results: RunResults) -> str:
    """Each one policy minus its learner's per-price policy, price by price, paired over
    the test instances (and over seeds when there are several)."""
    if not results.one_policy_paired:
        return ""
    from l2s_gym.registry import LEARNER_LABELS

    lines = [
        f"One policy against the per-price policies, price by price (one policy minus "
        f"per-price; {results.metric}, and the objective, lower is better), on the same test "
        "instances: the mean, its interval over seeds, and per seed the difference with its "
        "paired bootstrap interval over the test instances.",
    ]
    for learner, rows in results.one_policy_paired.items():
        body = []
        for cost, d in rows.items():
            seeds = d.per_seed or [d]
            body.append(
                [
                    cost,
                    _fmt(d.difference, 3),
                    _interval(d.ci95) if d.per_seed else "-",
                    "; ".join(f"{_fmt(x.difference, 3)} {_interval(x.ci95)}" for x in seeds),
                    _sig(d.objective_difference),
                    _sig_interval(d.objective_ci95) if d.per_seed else "-",
                    "; ".join(
                        f"{_sig(x.objective_difference)} {_sig_interval(x.objective_ci95)}"
                        for x in seeds
                    ),
                ]
            )
        head = [
            "price", "difference", "95% over seeds", "per seed [95% over instances]",
            "objective difference", "95% over seeds", "per seed [95% over instances]",
        ]  # fmt: skip
        lines += ["", f"{LEARNER_LABELS.get(learner, learner)}:", ""]
        lines += _table(head, body)
    return "\n".join(lines) + "\n"


def time_to_target_table(results: RunResults) -> str:
    ttt = results.time_to_target
    if not ttt:
        return ""
    first = next(iter(ttt.values()))
    figure = "objective" if first.criterion == "objective" else results.metric
    body = [
        [
            name,
            _sig(e.target),
            e.reached or "-",
            _fmt(e.wall_time_s, 1),
            _count(e.layer_evals),
            _fmt(e.final_wall_time_s, 1),
            _count(e.final_layer_evals),
        ]
        for name, e in ttt.items()
    ]
    seed = results.seeds[0] if results.seeds else "?"
    why = "; with a price per layer, the objective" if figure == "objective" else ""
    lines = [
        f"Time to target: when each learner first reached the best RL learner's final "
        f"validation {figure} ({first.target_learner} in seed {seed}{why}), means over seeds "
        "('-': not reached in every seed):",
        "",
    ]
    head = [
        "Learner", "target", "reached", "wall time (s)", "layer evals", "total time (s)",
        "total layer evals",
    ]  # fmt: skip
    lines += _table(head, body)
    return "\n".join(lines) + "\n"


REFERENCE_LABELS = {
    "oracle": "the label-using oracle (no stop policy can match full depth with fewer)",
    "baselines": "the best label-free baseline (every fixed depth and heuristic)",
}


def _reference_lines(results: RunResults) -> list[str]:
    """What the learners' layers to match full depth compare with (one line each)."""
    lines = []
    for key, label in REFERENCE_LABELS.items():
        e = results.frontier_reference.get(key)
        if e is None:
            continue
        value = e.layers_to_match_full_depth
        text = "never" if value is None else _fmt(value)
        if value is not None and e.layers_to_match_full_depth_ci95:
            text += f" {_interval(e.layers_to_match_full_depth_ci95, 2)}"
        per = e.layers_to_match_full_depth_per_seed
        if per and len(per) > 1:
            text += " (per seed: " + ", ".join("never" if v is None else _fmt(v) for v in per) + ")"
        lines.append(f"- layers to match full depth, {label}: {text}")
    return ["", *lines] if lines else []


def _summary_table(summary: dict[str, FrontierSummary]) -> list[str]:
    body = []
    for name, e in summary.items():
        body.append(
            [
                name,
                _fmt(e.dominance),
                _interval(e.dominance_ci95, 2),
                _fmt(e.strict_dominance),
                _fmt(e.oracle_gap_closed),
                _interval(e.oracle_gap_closed_ci95, 2),
                _fmt(e.layers_to_match_full_depth),
                ", ".join(_fmt(v) for v in e.dominance_per_seed or []),
                ", ".join(_fmt(v) for v in e.oracle_gap_closed_per_seed or []),
            ]
        )
    head = [
        "Learner", "dominance", "95% interval", "strict dominance", "oracle gap closed",
        "95% interval", "layers to match full depth", "dominance per seed",
        "gap closed per seed",
    ]  # fmt: skip
    return _table(head, body)


def frontier_tables(results: RunResults) -> str:
    summary = results.frontier_summary
    if not summary:
        return ""
    T = results.num_layers
    lines = [
        "Frontier summary over budgets [1, T] (see docs/method.md): dominance = share of "
        "budgets where the learner is at least as good as the best label-free baseline "
        "(strict: better, ties not counted); gap closed = area to that baseline over the "
        "oracle's; layers to match = fewest average layers reaching the full-depth "
        f"(T={T}) metric. Between two points a curve is what mixing the two rules per "
        "instance gives.",
        "",
    ]
    lines += _summary_table(summary)
    if any(name.endswith(" (one policy)") for name in summary):
        lines += [
            "",
            "'<learner> (one policy)': one price-conditioned policy per learner (l2s frontier "
            "--one-policy), trained once over every price of the grid and read at each price "
            "with its dial set there (read-out chosen on validation per price); the other "
            "learned rows train one policy per price.",
        ]
    lines += _reference_lines(results)
    lines += [
        "",
        f"Frontier points ({results.metric} at average layers; objective at that price), "
        "per layer price:",
        "",
    ]
    learned = {n: f for n, f in results.frontiers.items() if f.kind == "learned"}
    at_price = [{p: i for i, p in enumerate(f.cost if f.cost is not None else f.param)} for f in learned.values()]  # fmt: skip
    body = []
    for c in sorted(results.costs):
        cells = [f"{c:g}"]
        for f, index in zip(learned.values(), at_price, strict=True):
            i = index.get(c)
            if i is None:  # this learner's trial at this price failed or was not run
                cells.append("-")
                continue
            obj = f" ({_sig(f.objective[i])})" if f.objective else ""
            cells.append(f"{_fmt(f.metric[i])} @ {_fmt(f.avg_layers[i])}{obj}")
        body.append(cells)
    lines += _table(["price", *learned], body)
    sweep = results.frontier_sweep_summary
    if sweep:
        quantiles = next((f.param for f in results.frontiers.values() if f.kind == "sweep"), [])
        lines += [
            "",
            f"One policy per learner, the one trained at price {results.compare_cost:g}, its "
            "read-out swept instead of retraining at every price (the quantile rule at q = "
            + ", ".join(f"{q:g}" for q in quantiles)
            + "; the curves '..., one policy, read-out swept'), judged the same way:",
            "",
        ]
        lines += _summary_table(sweep)
    return "\n".join(lines) + "\n"


def health_text(results: RunResults) -> str:
    """The stage-2 trials whose policy never left its start or collapsed."""
    flagged = [h for h in results.health if h.status != "ok"]
    if not flagged:
        return ""
    lines = [
        "Learner health: trials whose policy never left its initial behaviour or collapsed "
        "(on the validation set):",
        "",
    ]
    lines += [f"- {h.key}: {h.message}" for h in flagged]
    return "\n".join(lines) + "\n"


def failed_text(results: RunResults) -> str:
    if not results.failed:
        return ""
    lines = ["Trials that did not finish:", ""]
    lines += [f"- {f.key}: {f.status} ({f.error})" for f in results.failed]
    return "\n".join(lines) + "\n"


def full_report(results: RunResults) -> str:
    parts = [f"# {results.experiment} ({results.mode})", ""]
    if results.rows:
        parts.append(markdown_table(results))
    for text in (
        health_text(results),
        paired_table(results),
        time_to_target_table(results),
        frontier_tables(results),
        one_policy_paired_table(results),
        failed_text(results),
    ):
        if text:
            parts += ["", text]
    return "\n".join(parts)


def write_results(folder: Path, results: RunResults) -> str:
    """Write ``results.json`` and ``results.md``; return the Markdown."""
    text = full_report(results)
    write_json(folder / "results.json", results.to_json())
    atomic_write_bytes(folder / "results.md", text.encode())
    return text


def _pyplot():  # noqa: ANN202
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_metric_vs_layers(folder: Path, results: RunResults) -> Path | None:
    """Fixed-depth curves as lines, stop rules as points: metric against layers computed."""
    if not results.rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for label, curve in results.depth_curves.items():
        ax.plot(range(1, len(curve) + 1), curve, label=label, lw=1.5)
    markers = iter("o^sDvP*Xh<>")
    for r in results.rows:
        if r.kind not in ("learner", "oracle", "heuristic"):
            continue
        m = next(markers, "o")
        ax.scatter([r.avg_layers], [r.metric], marker=m, s=60, zorder=3, label=r.method)
        sto = r.stochastic
        if sto and sto.metric is not None:
            ax.scatter(
                [sto.avg_layers],
                [sto.metric],
                marker=m,
                s=60,
                zorder=3,
                facecolors="none",
                edgecolors="k",
                label=f"{r.method} (stochastic)",
            )
    for curve in results.heuristic_curves.values():
        ax.plot(curve.avg_layers, curve.metric, ls="--", marker=".", label=curve.label)
    ax.set_xlabel("layers computed (average)")
    ax.set_ylabel(results.metric)
    longest = max((len(c) for c in results.depth_curves.values()), default=1)
    if longest > 40:
        ax.set_xscale("log")
    ax.set_title(
        f"{results.experiment}: metric vs layers ({_split_name(results)}, seed {results.seeds[0]})"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = folder / "metric_vs_layers.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def frontier_figure(results: RunResults):  # noqa: ANN201
    """The accuracy-compute frontier: one curve per rule, 95% bands, learned rules marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5.2))
    styles = {"fixed": "-", "heuristic": "--", "oracle": ":", "learned": "-", "sweep": (0, (4, 1))}
    for name, f in results.frontiers.items():
        pts = sorted(
            (x, y, lo, hi)
            for x, y, lo, hi in zip(f.avg_layers, f.metric, f.ci_low, f.ci_high, strict=True)
            if x is not None and y is not None
        )
        if not pts:
            continue
        xs, ys, los, his = zip(*pts, strict=True)
        kind = f.kind
        marker = "o" if kind == "learned" else ("." if kind != "oracle" else None)
        lw = 2.2 if kind == "learned" else 1.3
        ls = styles[kind]
        if kind == "learned" and (f.learner or "").endswith(" (one policy)"):
            marker, ls = "s", (0, (6, 2))  # the price-conditioned policy: one model
        (line,) = ax.plot(xs, ys, ls=ls, marker=marker, lw=lw, label=f"{name} ({kind})")
        if all(v is not None for v in los + his):
            ax.fill_between(xs, los, his, color=line.get_color(), alpha=0.15, lw=0)
    full = results.full_depth_metric
    if full is not None and results.frontier_summary:
        ax.axhline(
            full, color="0.4", ls="-.", lw=0.9, label="full depth T (layers-to-match target)"
        )
    ax.set_xlabel("layers computed (average)")
    ax.set_ylabel(results.metric)
    over = "seeds" if len(results.seeds) > 1 else f"{_split_name(results).split()[0]} instances"
    ax.set_title(
        f"{results.experiment}: accuracy vs compute ({_split_name(results)}; "
        f"bands: 95% over {over})"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def plot_frontier(folder: Path, results: RunResults) -> Path | None:
    if not results.frontier_summary:
        return None
    plt = _pyplot()
    fig = frontier_figure(results)
    path = folder / "frontier.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


JUMP_NOTE = (
    "Imitation's first point sits at its trace buffer's layer evaluations (counted at once, "
    "before any step); its steps then cost none, so its curve rises vertically."
)


def plot_learning_curves(folder: Path, results: RunResults) -> Path | None:
    """Validation metric (at no layer price; the objective with one) against wall time and
    against layer evaluations, every learner overlaid (the first seed solid, further seeds
    faint)."""
    per_seed = results.per_seed
    if not any(res.learning_curves for res in per_seed):
        return None
    plt = _pyplot()
    from l2s_gym.registry import LEARNER_KINDS, LEARNER_LABELS
    from l2s_gym.trials import format_cost

    by_objective = results.compare_lambda != 0
    key = "val_objective" if by_objective else "val_metric"
    suffix = "@" + format_cost(results.compare_cost)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    colors: dict[str, Any] = {}
    buffered = False
    for i, res in enumerate(per_seed):
        for name_at, points in res.learning_curves.items():
            if not name_at.endswith(suffix) or not points:
                continue
            name = name_at.split("@")[0]
            buffered |= LEARNER_KINDS.get(name) == "imitation" and points[0]["layer_evals"] > 0
            y = [p[key] for p in points]
            kw: dict[str, Any] = {"marker": "." if i == 0 else None, "alpha": 1.0 if i == 0 else 0.35}  # fmt: skip
            if name in colors:
                kw["color"] = colors[name]
            label = LEARNER_LABELS.get(name, name) if i == 0 else None
            (line,) = axes[0].plot([p["wall_time_s"] for p in points], y, label=label, **kw)
            colors[name] = kw["color"] = line.get_color()
            axes[1].plot([max(float(p["layer_evals"]), 1) for p in points], y, **kw)
    axes[0].set_xlabel("training wall time (s)")
    axes[1].set_xlabel("layer evaluations consumed")
    axes[1].set_xscale("log")
    ylabel = "validation objective (loss + lambda x layers)" if by_objective else "validation " + results.metric  # fmt: skip
    for ax in axes:
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results.experiment}: stop-policy learning curves")
    if buffered:
        fig.text(0.5, 0.01, JUMP_NOTE, ha="center", fontsize=7, wrap=True)
    fig.tight_layout(rect=(0, 0.05 if buffered else 0, 1, 1))
    path = folder / "learning_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_tensorboard_summary(folder: Path, results: RunResults) -> None:
    """The frontier as a figure and its summary as scalars, in ``<run>/tb/summary``."""
    from l2s_gym.runs import summary_writer

    with summary_writer(folder / "tb" / "summary") as w:
        for prefix, table in (
            ("frontier", results.frontier_summary),
            ("frontier_sweep", results.frontier_sweep_summary),
        ):
            for name, e in table.items():
                for key in (
                    "dominance", "strict_dominance", "oracle_gap_closed",
                    "layers_to_match_full_depth",
                ):  # fmt: skip
                    if getattr(e, key) is not None:
                        w.add_scalar(f"{prefix}/{key}/{name}", getattr(e, key), 0)
        for name, ref in results.frontier_reference.items():
            if ref.layers_to_match_full_depth is not None:
                tag = f"frontier/layers_to_match_full_depth/{name} (reference)"
                w.add_scalar(tag, ref.layers_to_match_full_depth, 0)
        for r in results.rows:
            if r.kind == "learner" and r.metric is not None:
                w.add_scalar(f"test/metric/{r.learner}", r.metric, 0)
                w.add_scalar(f"test/avg_layers/{r.learner}", r.avg_layers, 0)
                w.add_scalar(f"test/objective/{r.learner}", r.objective, 0)
        if results.frontier_summary:
            plt = _pyplot()
            fig = frontier_figure(results)
            w.add_figure("frontier", fig, 0)
            plt.close(fig)


def _split_name(results: RunResults) -> str:
    """``"test set"``, or ``"validation set"`` for a tuning run (``--eval-split val``)."""
    return "validation set" if results.eval_split == "val" else "test set"
