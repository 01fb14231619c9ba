"""The runner's own cost when it runs the plain model: ``StopRunner`` at ``lookahead = T``
against the full-depth model, one instance at a time.

Where ``StopRunner.tune`` picks the plain model (``k = T``, the policy never asked) the
runner calls ``predictor.predict_full_depth`` and writes out the stops; what it adds to
the plain model is Python a call. This script measures that addition on a trained run
folder's predictor (``l2s compare`` / ``l2s frontier``), at batch 1 on one thread, three
ways, call by call (the three on the same instance back to back, in a new seeded order
each time; ``--calls`` of each):

- ``direct``: ``predictor.predict_full_depth`` under ``torch.inference_mode``;
- ``full``: ``l2s_gym.runner.run_full_depth`` (the early-exit benchmark's full-depth
  column);
- ``plain``: ``StopRunner(predictor, policy, rule, lookahead=T)`` (the tuned runner's
  plain path).

It prints the medians of a call (us), the runner's overhead over ``full`` and ``direct``
(the median of the per-call differences, us and percent) and the median per-call ratio
``full / plain``. Timed this way, next to one another, the overhead shows at the
microsecond; the early-exit benchmark's samples (passes over 32 instances, 50 ms or more)
drift with the load of a shared machine, and its plain-model rows at batch 1 spread by
several percent either side of 1 for what is the same computation.

Usage::

    python benchmarks/runner_overhead.py runs/recognition_small/latest
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch
from tqdm import tqdm


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder of l2s compare / l2s frontier")
    parser.add_argument("--learner", default="reverse_kl")
    parser.add_argument("--seed", type=int, help="seed-<s> (default the config's)")
    parser.add_argument("--instances", type=int, default=32, help="single instances a pass")
    parser.add_argument(
        "--calls", type=int, default=3000, help="timed calls of each (default 3000)"
    )
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--import", dest="imports", action="append", default=[], metavar="FILE_OR_MODULE"
    )
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.calls < 1 or args.instances < 1:
        parser.error("--calls and --instances must be at least 1")
    from l2s_gym import registry
    from l2s_gym.config import ConfigError

    for spec in args.imports:  # a module or a file, as every --import of the project
        registry.import_module_or_file(spec)
    registry.load_plugins()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import early_exit_speedup as bench

    from l2s_gym.runner import run_full_depth

    torch.set_num_threads(args.threads)
    opts = Namespace(device="cpu", set=[], seed=args.seed, learner=args.learner, run_costs=None)
    try:
        _, task, predictor, runners, _ = bench.prepare_run(args.run, opts, lambda m: None)
    except (ConfigError, FileNotFoundError) as exc:  # not a run folder: one line
        parser.error(f"{args.run}: {exc}")
    runner = next(iter(runners.values()))
    runner.lookahead = predictor.num_layers  # the plain path
    chunks = bench.batch_chunks(task, 1, args.instances)

    def full(c: dict[str, torch.Tensor]) -> None:
        run_full_depth(predictor, c)

    def plain(c: dict[str, torch.Tensor]) -> None:
        runner(c)

    def direct(c: dict[str, torch.Tensor]) -> None:
        with torch.inference_mode():
            predictor.predict_full_depth(c)

    fns = {"direct": direct, "full": full, "plain": plain}
    for c in chunks:  # warm-up
        for fn in fns.values():
            fn(c)
    # Call by call: the three on the same instance back to back, in a new seeded order
    # each time. Load on a shared machine drifts over tens of milliseconds; a sample
    # that long (a pass over the instances) moves two identical computations apart by
    # several percent, a single call's neighbour by far less.
    samples: dict[str, list[float]] = {k: [] for k in fns}
    clock = time.perf_counter
    for i in tqdm(range(args.calls), desc="calls", disable=not args.progress, mininterval=1):
        c = chunks[i % len(chunks)]
        order = list(fns)
        random.Random(i).shuffle(order)
        for key in order:
            start = clock()
            fns[key](c)
            samples[key].append(clock() - start)
    us = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    paired = statistics.median(
        f / p for f, p in zip(samples["full"], samples["plain"], strict=True)
    )

    def over(ref: str) -> float:  # the median difference of a call, us
        return (
            statistics.median(p - r for p, r in zip(samples["plain"], samples[ref], strict=True))
            * 1e6
        )

    figures = {
        "run": args.run,
        "instances": len(chunks),
        "calls": args.calls,
        "threads": args.threads,
        "us_per_instance": {k: round(v, 2) for k, v in us.items()},
        "plain_over_full_us": round(over("full"), 2),
        "plain_over_direct_us": round(over("direct"), 2),
        "paired_full_over_plain": round(paired, 4),
    }
    for k, v in us.items():
        print(f"{k:>6}: {v:8.1f} us an instance")
    for ref in ("full", "direct"):
        d = over(ref)
        print(f"plain - {ref}: {d:+.1f} us a call ({d / us[ref]:+.1%}; median of the differences)")
    print(f"paired full / plain (median of {args.calls} calls): {paired:.3f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
