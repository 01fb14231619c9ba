"""Is l2s-gym ready for this GPU? One script, a few minutes, one JSON of timings and results.

    python benchmarks/gpu_check.py --out gpu_check.json          # a CUDA machine, < 8 min
    python benchmarks/gpu_check.py --out cpu_check.json --cpu    # the same on the CPU, < 5 min

Three parts, each timed; a part that fails is recorded (its error, its output's tail) and
the others still run. The exit code is 0 only if every part passed.

1. ``tests``: the test suite's CUDA-marked tests (``pytest -m cuda``; ``tests/test_cuda.py``):
   the batched env on the device, every learner in one compare run, the stages chained
   through checkpoints. With ``--cpu`` they run on the CPU (``L2S_CUDA_TESTS_DEVICE=cpu``).
2. ``env_throughput``: the batched stop env's layer transitions per second against the
   predictor's own ``forward_step`` (``benchmarks/env_throughput.py``'s measurement) for N
   up to 65,536 instances, on the paper-scale sparse-recovery LISTA (``--cpu``: the small
   config, N up to 4,096). On CUDA it also counts host-device synchronisations per env step
   (``torch.cuda.set_sync_debug_mode``) and the peak GPU memory.
3. ``pipeline``: ``l2s compare configs/sparse_recovery.yaml`` (the paper's m=250, n=500,
   T=20) with a fixed small budget: a few hundred stage-1 steps, a short imitation, and
   small RL budgets (``--cpu``: tens of steps at small batches), run as a subprocess through
   the command line; the rows of its ``results.json`` and its wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The fixed budgets. CUDA: the paper's sizes, a few hundred stage-1 steps; CPU: tens.
PIPELINE = {
    "cuda": [
        "stage1.steps=300", "stage1.val_every=100",
        "imitation.steps=100", "imitation.val_every=50",
        "compare.learners=[reverse_kl, forward_kl, reinforce, ppo, a2c]",
        "compare.layer_budget=400000", "rl.num_envs=1024", "rl.val_every=5",
    ],
    "cpu": [
        "stage1.steps=10", "stage1.batch_size=32", "stage1.val_every=5",
        "task.val_size=256", "task.test_size_per_snr=128",
        "imitation.steps=10", "imitation.batch_size=32", "imitation.val_every=5",
        "compare.learners=[reverse_kl, reinforce, ppo]", "compare.eval_batch_size=256",
        "compare.layer_budget=6000", "rl.num_envs=64", "rl.val_every=2", "rl.rollout_steps=8",
        "rl.ppo.n_steps=8", "rl.ppo.batch_size=256",
    ],
}  # fmt: skip
ENV_SIZES = {"cuda": [1024, 4096, 16384, 65536], "cpu": [64, 1024, 4096]}
ENV_CONFIG = {"cuda": "sparse_recovery", "cpu": "sparse_recovery_small"}
TIMEOUT_S = {"cuda": {"tests": 240, "pipeline": 300}, "cpu": {"tests": 150, "pipeline": 150}}


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _rl_budget_overrides(overrides: list[str]) -> list[str]:
    """RL learners spend ``rl.layer_budget`` where that key still exists: keep it equal to
    ``compare.layer_budget`` (the lead's one budget for every learner)."""
    from l2s_gym.config import RLConfig

    budget = [o.split("=", 1)[1] for o in overrides if o.startswith("compare.layer_budget=")]
    if budget and "layer_budget" in {f.name for f in dataclasses.fields(RLConfig)}:
        return [*overrides, f"rl.layer_budget={budget[0]}"]
    return overrides


def part_tests(mode: str, threads: int) -> dict[str, Any]:
    env = dict(os.environ)
    if mode == "cpu":
        env["L2S_CUDA_TESTS_DEVICE"] = "cpu"
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-rs",
           str(REPO / "tests")]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S[mode]["tests"]
    )
    pattern = r"(\d+) (passed|failed|skipped|errors?|deselected)"
    totals = [line for line in proc.stdout.splitlines() if re.search(pattern, line)]
    summary = totals[-1].strip("= ") if totals else ""
    counts = {k: int(n) for n, k in re.findall(pattern, summary)}
    return {
        "ok": proc.returncode == 0 and counts.get("passed", 0) > 0,
        "command": " ".join(cmd),
        "returncode": proc.returncode,
        "summary": summary,
        "counts": counts,
        "output_tail": _tail(proc.stdout + proc.stderr),
    }


def _syncs_per_step(env: Any, n: int, steps: int = 10) -> float | None:
    """Host-device synchronisations per batched env step (CUDA only): a hot loop should
    have none (no ``.item()``, ``.cpu()`` or numpy round trip per step)."""
    if env.device.type != "cuda":
        return None
    gen = torch.Generator(device=env.device).manual_seed(2)
    actions = [torch.rand(n, generator=gen, device=env.device) > 0.9 for _ in range(steps)]
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for a in actions:
                env.step(a)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    return len(syncs) / steps


def part_env_throughput(mode: str, device: str, seconds: float) -> dict[str, Any]:
    from env_throughput import bench_batched_and_raw, build

    from l2s_gym.envs import BatchedStopEnv

    config = ENV_CONFIG[mode]
    task, predictor, beta = build(config, device)
    predictor.requires_grad_(False)
    rows = []
    for n in ENV_SIZES[mode]:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        tps, step_s, raw_s = bench_batched_and_raw(task, predictor, beta, n, seconds)
        env = BatchedStopEnv(predictor, task, n, beta=beta, seed=0)
        env.reset(seed=0)
        row = {
            "n": n,
            "batched_tps": tps,
            "batched_step_s": step_s,
            "raw_step_s": raw_s,
            "step_over_raw": step_s / raw_s if raw_s > 0 else None,
            "syncs_per_step": _syncs_per_step(env, n),
            "wall_s": time.perf_counter() - start,
        }
        if device.startswith("cuda"):
            row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        rows.append(row)
        print(f"  env N={n}: {tps:,.0f} transitions/s, step {1e3 * step_s:.3f} ms", flush=True)
    return {
        "ok": True,
        "config": config,
        "predictor": f"{type(predictor).__name__} T={predictor.num_layers}",
        "rows": rows,
    }


def part_pipeline(mode: str, device: str, threads: int, overrides: list[str]) -> dict[str, Any]:
    overrides = _rl_budget_overrides(overrides)
    with tempfile.TemporaryDirectory(prefix="l2s-gpu-check-") as runs:
        cmd = [sys.executable, "-m", "l2s_gym.cli", "compare",
               str(REPO / "configs" / "sparse_recovery.yaml"), "--no-progress", "--runs", runs,
               "--device", device.split(":")[0]]  # fmt: skip
        if threads:
            cmd += ["--threads", str(threads)]
        for o in overrides:
            cmd += ["--set", o]
        proc = subprocess.run(
            cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S[mode]["pipeline"]
        )
        out: dict[str, Any] = {
            "ok": proc.returncode == 0,
            "command": " ".join(cmd),
            "returncode": proc.returncode,
        }
        lines = proc.stdout.strip().splitlines()
        run_dir = Path(lines[-1]) if lines else None
        results_file = run_dir / "results.json" if run_dir else None
        if results_file is None or not results_file.is_file():
            out.update(ok=False, output_tail=_tail(proc.stdout + proc.stderr))
            return out
        results = json.loads(results_file.read_text())
        keep = ("id", "method", "metric", "avg_layers", "train_wall_time_s", "layer_evals")
        out["metric"] = results.get("metric")
        out["rows"] = [{k: r.get(k) for k in keep if k in r} for r in results.get("rows", [])]
        out["failed_trials"] = results.get("failed") or []
        out["ok"] = out["ok"] and not out["failed_trials"]
        if not out["ok"]:
            out["output_tail"] = _tail(proc.stdout + proc.stderr)
        return out


def run_part(name: str, fn: Any, *args: Any) -> dict[str, Any]:
    print(f"[gpu_check] {name} ...", flush=True)
    start = time.perf_counter()
    try:
        result = fn(*args)
    except subprocess.TimeoutExpired as exc:
        result = {"ok": False, "error": f"timed out after {exc.timeout} s"}
    except Exception as exc:  # noqa: BLE001 - recorded; the other parts still run
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc()}  # fmt: skip
    result["wall_s"] = time.perf_counter() - start
    status = "ok" if result["ok"] else f"FAILED ({result.get('error', 'see output_tail')})"
    print(f"[gpu_check] {name}: {status} in {result['wall_s']:.1f} s", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the JSON report to write")
    parser.add_argument(
        "--cpu", action="store_true", help="run the same checks on the CPU at smaller sizes"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="time per env-throughput measurement"
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["tests", "env_throughput", "pipeline"]
    )
    args = parser.parse_args(argv)

    mode = "cpu" if args.cpu else "cuda"
    if mode == "cuda" and not torch.cuda.is_available():
        print("gpu_check: PyTorch sees no CUDA device; use --cpu for the CPU smoke run")
        return 2
    device = "cuda" if mode == "cuda" else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "mode": mode,
        "device": torch.cuda.get_device_name(0) if mode == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "parts": {},
    }
    start = time.perf_counter()
    parts = {
        "tests": (part_tests, mode, args.threads),
        "env_throughput": (part_env_throughput, mode, device, args.seconds),
        "pipeline": (part_pipeline, mode, device, args.threads, PIPELINE[mode]),
    }
    for name, (fn, *fn_args) in parts.items():
        if name not in args.skip:
            report["parts"][name] = run_part(name, fn, *fn_args)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive
    report["total_wall_s"] = time.perf_counter() - start
    report["ok"] = all(p["ok"] for p in report["parts"].values())
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"[gpu_check] {'all ok' if report['ok'] else 'FAILED'} in "
          f"{report['total_wall_s']:.0f} s; wrote {args.out}")  # fmt: skip
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
