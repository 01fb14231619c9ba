"""The runner's own cost when it runs the plain model: ``StopRunner`` at ``lookahead = T``
against the full-depth model, one instance at a time.

Where ``StopRunner.tune`` picks the plain model (``k = T``, the policy never asked) the
runner calls ``predictor.predict_full_depth`` and writes out the stops; what it adds to
the plain model is Python a call. This script measures that addition on a trained run
folder's predictor (``l2s compare`` / ``l2s frontier``), at batch 1 on one thread, three
ways, interleaved in a new seeded order every round, each sample repeating a pass over
the instances until it lasts ``--min-sample-ms`` (divided by the count):

- ``direct``: ``predictor.predict_full_depth`` under ``torch.inference_mode``;
- ``full``: ``l2s_gym.runner.run_full_depth`` (the early-exit benchmark's full-depth
  column);
- ``plain``: ``StopRunner(predictor, policy, rule, lookahead=T)`` (the tuned runner's
  plain path).

It prints the medians per instance (us), the runner's overhead over ``full`` and
``direct`` (us a call and percent: the median of the within-round differences, which load
that slows a round as a whole disturbs least), and the median paired ratio ``full / plain`` (what
``benchmarks/early_exit_speedup.py`` reports as the plain model's speed-up). The spread
of that benchmark's plain-model rows at batch 1 (0.90-1.04x on a busy 2-core machine) is
the machine's, not the runner's, where this overhead is a few percent.

Usage::

    python benchmarks/runner_overhead.py runs/recognition_small/latest --rounds 31
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder of l2s compare / l2s frontier")
    parser.add_argument("--learner", default="reverse_kl")
    parser.add_argument("--seed", type=int, help="seed-<s> (default the config's)")
    parser.add_argument("--instances", type=int, default=32, help="single instances a pass")
    parser.add_argument("--rounds", type=int, default=31, help="timed rounds (default 31)")
    parser.add_argument(
        "--min-sample-ms",
        type=float,
        default=50.0,
        help="a sample repeats a pass until it lasts this long (default 50)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--import", dest="imports", action="append", default=[])
    parser.add_argument("--out", help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.instances < 1:
        parser.error("--rounds and --instances must be at least 1")
    import importlib

    for module in args.imports:
        importlib.import_module(module)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import early_exit_speedup as bench

    from l2s_gym.runner import run_full_depth

    torch.set_num_threads(args.threads)
    opts = Namespace(device="cpu", set=[], seed=args.seed, learner=args.learner, run_costs=None)
    from l2s_gym.config import ConfigError

    try:
        _, task, predictor, runners, _ = bench.prepare_run(args.run, opts, lambda m: None)
    except (ConfigError, FileNotFoundError) as exc:  # not a run folder: one line
        parser.error(f"{args.run}: {exc}")
    runner = next(iter(runners.values()))
    runner.lookahead = predictor.num_layers  # the plain path
    chunks = bench.batch_chunks(task, 1, args.instances)

    def full() -> None:
        for c in chunks:
            run_full_depth(predictor, c)

    def plain() -> None:
        for c in chunks:
            runner(c)

    def direct() -> None:
        with torch.inference_mode():
            for c in chunks:
                predictor.predict_full_depth(c)

    fns = {"direct": direct, "full": full, "plain": plain}
    passes = {}
    for key, fn in fns.items():  # warm-up: how many passes make a sample of --min-sample-ms
        start = time.perf_counter()
        fn()
        passes[key] = max(1, math.ceil(args.min_sample_ms / 1e3 / (time.perf_counter() - start)))
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(args.rounds):
        order = list(fns)
        random.Random(r).shuffle(order)
        for key in order:
            start = time.perf_counter()
            for _ in range(passes[key]):
                fns[key]()
            samples[key].append((time.perf_counter() - start) / passes[key] / len(chunks))
    us = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    paired = statistics.median(
        f / p for f, p in zip(samples["full"], samples["plain"], strict=True)
    )

    def over(ref: str) -> float:  # the median within-round difference, us a call
        return (
            statistics.median(p - r for p, r in zip(samples["plain"], samples[ref], strict=True))
            * 1e6
        )

    figures = {
        "run": args.run,
        "instances": len(chunks),
        "rounds": args.rounds,
        "passes_a_sample": passes,
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
        print(f"plain - {ref}: {d:+.1f} us a call ({d / us[ref]:+.1%}; median within a round)")
    print(f"paired full / plain (median of {args.rounds} rounds): {paired:.3f}x")
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
