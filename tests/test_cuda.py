"""Everything that must work on a GPU: the ``cuda``-marked tests (skipped without CUDA).

``benchmarks/gpu_check.py`` runs them (``pytest -m cuda``) on a CUDA machine; with
``--cpu`` it sets ``L2S_CUDA_TESTS_DEVICE=cpu`` so that CI smokes the same tests on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch
from conftest import SPARSE_TINY, write_config

from l2s_gym.build import make_predictor, make_task
from l2s_gym.cli import main
from l2s_gym.config import load_config
from l2s_gym.envs import BatchedStopEnv

DEVICE = os.environ.get("L2S_CUDA_TESTS_DEVICE", "cuda")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        DEVICE.startswith("cuda") and not torch.cuda.is_available(),
        reason="needs CUDA (benchmarks/gpu_check.py runs these; --cpu runs them on the CPU)",
    ),
]

# Small RL budgets: every learner runs, in seconds.
RL_TINY = ["rl.num_envs=32", "compare.layer_budget=4000", "rl.val_every=2", "rl.rollout_steps=8",
           "rl.ppo.n_steps=8", "rl.ppo.batch_size=64", "rl.a2c.n_steps=4"]  # fmt: skip


def sets(*overrides: str) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def quiet_main(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


@pytest.fixture
def sparse_config(tmp_path: Path) -> Path:
    return write_config(tmp_path, SPARSE_TINY, "sparse_tiny.yaml")


def test_batched_env_keeps_everything_on_the_device(sparse_config):
    cfg = load_config(sparse_config)
    task = make_task(cfg.task, 0, DEVICE)
    predictor = make_predictor(cfg.predictor, task, seed=0).requires_grad_(False)
    env = BatchedStopEnv(predictor, task, 64, beta=cfg.beta, seed=0)
    obs = env.reset(seed=0)
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    for _ in range(3 * predictor.num_layers):
        actions = torch.rand(64, generator=gen, device=DEVICE) > 0.8
        obs, reward, done, _ = env.step(actions)
    for tensor in (obs, reward, done):
        assert tensor.device.type == torch.device(DEVICE).type
    assert torch.isfinite(obs).all() and torch.isfinite(reward).all()
    assert env.layer_evals > 0


def test_compare_with_every_learner_on_the_device(sparse_config, tmp_path):
    runs = tmp_path / "runs"
    argv = ["compare", str(sparse_config), "--runs", str(runs), "--no-progress",
            "--device", DEVICE.split(":")[0],
            *sets("compare.learners=[reverse_kl, forward_kl, reinforce, ppo, a2c]", *RL_TINY)]  # fmt: skip
    code, out = quiet_main(argv)
    assert code == 0
    run_dir = Path(out.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    learned = [r for r in results["rows"] if r["id"].startswith("learner:")]
    assert len(learned) == 5
    assert all(r["metric"] == r["metric"] for r in results["rows"])  # no NaN anywhere
    assert torch.device(results["device"]).type == torch.device(DEVICE).type


def test_stages_chain_on_the_device(sparse_config, tmp_path):
    runs = str(tmp_path / "runs")
    dev = ["--device", DEVICE.split(":")[0], "--runs", runs, "--no-progress"]
    code, out = quiet_main(["train-predictor", str(sparse_config), *dev])
    assert code == 0
    predictor = Path(out.strip().splitlines()[-1]).resolve()
    code, out = quiet_main(["train-policy", str(sparse_config), "--predictor", str(predictor),
                            "--learner", "reinforce", *dev, *sets(*RL_TINY)])  # fmt: skip
    assert code == 0
    policy = Path(out.strip().splitlines()[-1]).resolve()
    code, out = quiet_main(["evaluate", str(sparse_config), "--predictor", str(predictor),
                            "--policy", str(policy), *dev])  # fmt: skip
    assert code == 0 and "LISTA-stop (REINFORCE)" in out


@pytest.mark.skipif(not DEVICE.startswith("cuda"), reason="compares a CUDA run with the CPU")
def test_a_cuda_checkpoint_is_refused_on_cpu_data(sparse_config, tmp_path, capsys):
    """Tasks draw their data with the device's generator: the sensing matrix and the
    evaluation sets of a CUDA run differ from the CPU's, and the fingerprint says so."""
    runs = str(tmp_path / "runs")
    code, out = quiet_main(["train-predictor", str(sparse_config), "--device", "cuda",
                            "--runs", runs, "--no-progress"])  # fmt: skip
    assert code == 0
    predictor = out.strip().splitlines()[-1]
    capsys.readouterr()
    assert main(["evaluate", str(sparse_config), "--predictor", predictor, "--device", "cpu"]) == 2
    assert "trained on other data" in capsys.readouterr().err
