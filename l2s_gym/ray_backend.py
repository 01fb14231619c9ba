"""Run a plan of trials as Ray Tune trials, on this machine or on a Ray cluster.

``RayRunner`` is a drop-in for ``l2s_gym.trials.LocalRunner``: the same trials
(``l2s_gym.trials.run_trial``), writing into the same run folder, evaluated and reported
by the same code. The plan runs in two waves, because stage-2 trials need their seed's
stage-1 trial: every stage-1 trial first, then every stage-2 trial whose stage 1
finished. Each wave is one ``ray.tune.Tuner`` over a grid of trials, one Tune trial per
l2s trial, with ``cpus_per_trial`` / ``gpus_per_trial`` resources each
(``ray.cpus_per_trial`` / ``ray.gpus_per_trial`` in the config) and one retry
(``FailureConfig(max_failures=1)``); a trial that fails twice is reported as failed with
its error line, and the trials that need it are skipped.

On a cluster the run folder must be on storage every node sees (``--runs`` on a shared
file system), and every node needs l2s-gym (and any ``--import`` module, at the same path)
installed. Ray Tune's own bookkeeping goes to ``<run>/ray/``.

Ray is an optional dependency: ``pip install -e ".[ray]"``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from l2s_gym import plugins
from l2s_gym.config import ConfigError
from l2s_gym.trials import RESULT, Trial, TrialOutcome, error_line, is_done, write_trials_file


def _trainable(config: dict[str, Any]) -> None:
    """One l2s trial inside a Ray worker (a Tune function trainable)."""
    os.environ.update(config.get("env", {}))
    from ray import tune

    from l2s_gym import plugins as plug
    from l2s_gym.trials import Trial as T
    from l2s_gym.trials import run_trial

    for spec in config.get("imports", []):
        plug.import_module_or_file(spec)
    plug.load_plugins()
    trial = T.from_dict(config["trial"])
    run_trial(trial, config["run_dir"], config["cfg"], progress=False)
    tune.report({"finished": 1})


def start_ray(address: str, num_cpus: int | None = None) -> None:
    """``auto``/``local``: start a Ray runtime on this machine (all its cores unless
    ``num_cpus``); anything else: join the running cluster at that address."""
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            '--ray needs Ray: pip install -e ".[ray]" (or pip install "ray[tune]")'
        ) from exc
    if ray.is_initialized():
        return
    env = {k: v for k, v in os.environ.items() if k.startswith(("L2S_", "OMP_"))}
    runtime_env = {"env_vars": env} if env else None
    if address in ("auto", "local"):
        ray.init(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env=runtime_env,
        )
    else:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)


class RayRunner:
    """Runs a plan's trials as Ray Tune trials (see the module doc).

    Args:
        address: ``auto`` (a local Ray runtime sized to this machine) or a cluster address.
        cpus_per_trial: CPUs Ray reserves for each trial.
        gpus_per_trial: GPUs Ray reserves for each trial (0 on a CPU-only cluster).
        num_cpus: size of a local runtime (default: every core).
        progress: show Ray Tune's progress table.
        log: where one-line messages go.
    """

    retries = 1

    def __init__(
        self,
        address: str = "auto",
        cpus_per_trial: float = 1.0,
        gpus_per_trial: float = 0.0,
        num_cpus: int | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ) -> None:
        self.address = address
        self.resources = {"cpu": cpus_per_trial, "gpu": gpus_per_trial}
        self.num_cpus = num_cpus
        self.progress = progress
        self.log = log

    def _wave(
        self, name: str, trials: list[Trial], run_dir: Path, cfg_dict: dict[str, Any]
    ) -> dict[Trial, TrialOutcome]:
        from ray import tune

        if not trials:
            return {}
        env = {k: v for k, v in os.environ.items() if k.startswith("L2S_")}
        space = {
            "trial": tune.grid_search([t.to_dict() for t in trials]),
            "run_dir": str(run_dir.resolve()),
            "cfg": cfg_dict,
            "imports": list(plugins.IMPORTED),
            "env": env,
        }
        tuner = tune.Tuner(
            tune.with_resources(_trainable, self.resources),
            param_space=space,
            # One worker process per slot, reused from trial to trial: importing torch and
            # l2s-gym once per worker rather than once per trial.
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(
                name=name,
                storage_path=str((run_dir / "ray").resolve()),
                failure_config=tune.FailureConfig(max_failures=self.retries),
                verbose=1 if self.progress else 0,
            ),
        )
        grid = tuner.fit()
        out: dict[Trial, TrialOutcome] = {}
        for result in grid:
            trial = Trial.from_dict(result.config["trial"])
            if result.error is not None:
                # A RayTaskError wraps what the trial raised: report that.
                cause = getattr(result.error, "cause", None) or result.error
                outcome = TrialOutcome(
                    trial, "failed", attempts=self.retries + 1, error=error_line(cause)
                )
                self.log(f"[l2s] trial {trial.key} failed: {outcome.error}")
            else:
                outcome = TrialOutcome(trial, "done", attempts=1)
            out[trial] = outcome
        return out

    def run(self, plan: list[Trial], run_dir: Path, cfg_dict: dict[str, Any]) -> list[TrialOutcome]:
        import json

        start_ray(self.address, self.num_cpus)
        outcomes: dict[Trial, TrialOutcome] = {}
        for t in plan:
            if is_done(run_dir / t.key, cfg_dict, t.digest_kind):
                result = json.loads((run_dir / t.key / RESULT).read_text())
                outcomes[t] = TrialOutcome(t, "reused", result=result)
        stage1 = [t for t in plan if t.kind == "stage1" and t not in outcomes]
        outcomes.update(self._wave("stage1", stage1, run_dir, cfg_dict))
        stage2 = []
        for t in plan:
            if t.kind != "stage2" or t in outcomes:
                continue
            if any(outcomes[n].status not in ("done", "reused") for n in t.needs):
                outcomes[t] = TrialOutcome(t, "skipped", error="a trial it needs failed")
            else:
                stage2.append(t)
        outcomes.update(self._wave("stage2", stage2, run_dir, cfg_dict))
        ordered = [outcomes[t] for t in plan]
        write_trials_file(run_dir, ordered)
        return ordered


__all__ = ["RayRunner", "start_ray"]
