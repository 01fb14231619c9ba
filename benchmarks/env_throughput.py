"""Layer transitions per second: the batched stop env against loops of single envs.

For each N it measures, on the same (untrained) LISTA of the default small sparse-recovery
config, under a random policy that continues with probability 0.9:

- ``batched_tps``: ``BatchedStopEnv`` with N instances (one transition = one instance
  computing one layer, counted by ``env.layer_evals``: every env step is N transitions,
  plus one for each row that continues into the last layer and starts its next instance);
- ``sync_vector_tps``: Gymnasium's ``SyncVectorEnv`` (same-step autoreset) of single
  ``StopEnv``s;
- ``dummy_vec_tps``: stable-baselines3's ``DummyVecEnv`` of single ``StopEnv``s;
- ``batched_step_s``: seconds per batched env step;
- ``raw_step_s``: seconds per ``predictor.forward_step`` on N rows with the same per-row
  layer indices the env used (the predictor's own cost, no env around it).

The single-env loops step their envs one after another in Python, so their throughput does
not depend on N; for large N they run ``min(N, --max-single-envs)`` envs and report
transitions per second (the output says when). Each measurement runs about ``--seconds``.

    python benchmarks/env_throughput.py --out env_throughput.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from l2s_gym.build import make_predictor, make_task
from l2s_gym.config import find_config, load_config
from l2s_gym.envs import BatchedStopEnv, StopEnv
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.task import Task

CONTINUE_PROB = 0.9
MIN_STEPS, MAX_STEPS, BLOCK = 20, 20_000, 10


def build(config: str, device: str) -> tuple[Task, LayeredPredictor, float]:
    cfg = load_config(find_config(config))
    task = make_task(cfg.task, cfg.seed, device)
    predictor = make_predictor(cfg.predictor, task, seed=cfg.seed)
    return task, predictor, cfg.beta


def bench_batched_and_raw(
    task: Task, predictor: LayeredPredictor, beta: float, n: int, seconds: float
) -> tuple[float, float, float]:
    """(transitions per second, seconds per env step, seconds per raw ``forward_step``).

    The raw step replays, on N rows of its own, the per-row layer indices the env just
    computed. Env and raw steps alternate in blocks of ``BLOCK`` steps so that both see the
    same load on a shared machine.
    """
    env = BatchedStopEnv(predictor, task, n, beta=beta, seed=0)
    gen = torch.Generator(device=env.device).manual_seed(1)
    env.reset(seed=0)
    for _ in range(2 * predictor.num_layers):  # lets the rows spread over the layers first
        env.step(torch.rand(n, generator=gen, device=env.device) > CONTINUE_PROB)
    raw_batch = task.train_batch(n, task.generator(99)).to(predictor.device)
    raw_state = predictor.initial_state(raw_batch.inputs)
    env_time = raw_time = 0.0
    steps, evals_before = 0, env.layer_evals
    with torch.no_grad():
        while steps < MAX_STEPS and (steps < MIN_STEPS or env_time + raw_time < 2 * seconds):
            actions = torch.rand(BLOCK, n, generator=gen, device=env.device) > CONTINUE_PROB
            layer_index = []
            start = time.perf_counter()
            for a in actions:
                obs, _, _, _ = env.step(a)
                layer_index.append(obs[:, -1])  # the 0-based layer each row just computed
            env_time += time.perf_counter() - start
            layer_index = [t.round().long() for t in layer_index]
            start = time.perf_counter()
            for t in layer_index:
                raw_state, _, _ = predictor.forward_step(t, raw_state, raw_batch.inputs)
            raw_time += time.perf_counter() - start
            steps += BLOCK
    return (env.layer_evals - evals_before) / env_time, env_time / steps, raw_time / steps


def single_envs(task: Task, predictor: LayeredPredictor, beta: float, k: int) -> list:
    return [
        (lambda i=i: StopEnv(task=task, predictor=predictor, beta=beta, seed=i)) for i in range(k)
    ]


def bench_sync_vector(
    task: Task, predictor: LayeredPredictor, beta: float, k: int, seconds: float
) -> float:
    import gymnasium

    envs = gymnasium.vector.SyncVectorEnv(
        single_envs(task, predictor, beta, k),
        autoreset_mode=gymnasium.vector.AutoresetMode.SAME_STEP,
    )
    return _loop(envs.reset, lambda a: envs.step(a), k, seconds)


def bench_dummy_vec(
    task: Task, predictor: LayeredPredictor, beta: float, k: int, seconds: float
) -> float:
    from stable_baselines3.common.vec_env import DummyVecEnv

    envs = DummyVecEnv(single_envs(task, predictor, beta, k))
    return _loop(lambda seed: (envs.seed(seed), envs.reset()), lambda a: envs.step(a), k, seconds)


def _loop(reset, step, k: int, seconds: float) -> float:  # noqa: ANN001
    rng = np.random.default_rng(1)
    actions = (rng.random((MAX_STEPS + 10, k)) > CONTINUE_PROB).astype(np.int64)
    reset(seed=0)
    for i in range(10):
        step(actions[i])
    steps, start = 0, time.perf_counter()
    while steps < MAX_STEPS and (steps < MIN_STEPS or time.perf_counter() - start < seconds):
        step(actions[10 + steps])
        steps += 1
    return k * steps / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="sparse_recovery_small")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (shared box)")
    parser.add_argument(
        "--seconds", type=float, default=2.5, help="time per measurement (at least 20 steps)"
    )
    parser.add_argument("--max-single-envs", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    task, predictor, beta = build(args.config, args.device)
    print(
        f"{args.config}: {type(predictor).__name__} T={predictor.num_layers}, "
        f"device={args.device}, torch threads={args.threads}, continue prob {CONTINUE_PROB}"
    )
    rows, notes = [], []
    for n in args.sizes:
        batched_tps, step_s, raw_s = bench_batched_and_raw(task, predictor, beta, n, args.seconds)
        k = min(n, args.max_single_envs)
        if k < n:
            notes.append(f"N={n}: single-env loops measured with {k} envs, per transition")
        sync_tps = bench_sync_vector(task, predictor, beta, k, args.seconds)
        dummy_tps = bench_dummy_vec(task, predictor, beta, k, args.seconds)
        rows.append(
            {
                "n": n,
                "batched_tps": batched_tps,
                "sync_vector_tps": sync_tps,
                "dummy_vec_tps": dummy_tps,
                "batched_step_s": step_s,
                "raw_step_s": raw_s,
            }
        )

    header = (
        "| N | batched (trans/s) | SyncVectorEnv (trans/s) | DummyVecEnv (trans/s) "
        "| batched / Sync | batched step (ms) | raw forward_step (ms) | step / raw |"
    )
    print(header)
    print("|" + "---|" * 8)
    for r in rows:
        print(
            f"| {r['n']} | {r['batched_tps']:,.0f} | {r['sync_vector_tps']:,.0f} "
            f"| {r['dummy_vec_tps']:,.0f} | {r['batched_tps'] / r['sync_vector_tps']:.1f}x "
            f"| {1e3 * r['batched_step_s']:.3f} | {1e3 * r['raw_step_s']:.3f} "
            f"| {r['batched_step_s'] / r['raw_step_s']:.2f}x |"
        )
    for note in notes:
        print(note)
    result = {"rows": rows}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
