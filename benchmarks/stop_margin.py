"""How sure is a stop policy's margin over the fixed-depth model? Read it from a finished run.

For a folder written by ``l2s compare`` this loads the two stage-1 predictors and one
learner's policy, re-traces the seeded test set, and prints:

- the policy's metric and average depth, and the fixed-depth model's at depth T;
- a paired bootstrap of the margin (the same test instances resampled for both rules);
- the "group-aware" rule: the best validation depth of the stop model per group (per
  SNR for sparse recovery), a rule that is told each instance's group, as a reference
  for what the label-free policy could get from knowing the group alone.

    python benchmarks/stop_margin.py runs/sparse_recovery_small --learner reverse_kl
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from l2s_gym.build import make_policy, make_predictor, make_task
from l2s_gym.config import load_config
from l2s_gym.evaluation import metric_at, stop_logits
from l2s_gym.rules import fixed_depth_stop
from l2s_gym.runs import load_checkpoint
from l2s_gym.stopping import deterministic_stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="an experiment folder written by l2s compare")
    parser.add_argument("--learner", default="reverse_kl")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cfg = load_config(args.run / "config.yaml")
    task = make_task(cfg.task, cfg.seed, "cpu")

    def predictor(kind: str):  # noqa: ANN202
        model = make_predictor(cfg.predictor, task)
        state = load_checkpoint(args.run / f"predictor-{kind}" / "best.pt", "predictor")
        model.load_state_dict(state["state_dict"])
        return model.eval().requires_grad_(False)

    stop_model, fixed_model = predictor("oracle"), predictor("fixed")
    policy = make_policy(cfg, stop_model)
    policy.load_state_dict(
        load_checkpoint(args.run / args.learner / "best.pt", "policy")["state_dict"]
    )
    policy.eval()

    test, val = task.eval_set("test"), task.eval_set("val")
    t_stop, v_stop = stop_model.trace_eval(test, task), stop_model.trace_eval(val, task)
    t_fixed = fixed_model.trace_eval(test, task)
    T = t_stop.num_layers
    with torch.no_grad():
        stop = deterministic_stop(stop_logits(policy, t_stop))

    a = t_stop.metric_stats.gather(1, stop.long().unsqueeze(1)).squeeze(1)
    b = t_fixed.metric_stats[:, T - 1]
    sign = 1.0 if task.higher_is_better else -1.0
    policy_metric, fixed_metric = task.aggregate(a), task.aggregate(b)
    print(f"{args.learner}: {policy_metric:.3f} at {float(stop.float().mean()) + 1:.2f} layers")
    print(f"fixed depth T={T}: {fixed_metric:.3f}")
    print(f"margin (positive: the policy is better): {sign * (policy_metric - fixed_metric):.3f}")

    gen = torch.Generator().manual_seed(args.seed)
    margins = torch.empty(args.resamples, dtype=torch.float64)
    for i in range(args.resamples):
        idx = torch.randint(len(a), (len(a),), generator=gen)
        margins[i] = sign * (task.aggregate(a[idx]) - task.aggregate(b[idx]))
    low, high = torch.quantile(margins, torch.tensor([0.025, 0.975], dtype=torch.float64))
    print(
        f"paired bootstrap ({args.resamples} resamples): 95% interval [{low:.3f}, {high:.3f}], "
        f"share of resamples with margin <= 0: {float((margins <= 0).double().mean()):.4f}"
    )

    rule = fixed_depth_stop(t_stop, T)
    for g, name in enumerate(task.group_names):
        curve = torch.tensor(
            [
                metric_at(task, v_stop, fixed_depth_stop(v_stop, k + 1), v_stop.groups == g)
                for k in range(T)
            ]
        )
        k = int(curve.argmax() if task.higher_is_better else curve.argmin())
        rule[t_stop.groups == g] = k
        mask = t_stop.groups == g
        at_k = metric_at(task, t_stop, fixed_depth_stop(t_stop, k + 1), mask)
        at_t = metric_at(task, t_stop, fixed_depth_stop(t_stop, T), mask)
        print(
            f"{name}: best validation depth of the stop model {k + 1} "
            f"(test: {at_k:.2f} there, {at_t:.2f} at depth {T})"
        )
    print(
        f"group-aware fixed depth: {metric_at(task, t_stop, rule):.3f} "
        f"at {float(rule.float().mean()) + 1:.2f} layers"
    )


if __name__ == "__main__":
    main()
