"""benchmarks/gpu_check.py: its CPU smoke run (slow: deselected by default) and its helpers."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_budgets_are_valid_overrides_of_the_paper_config():
    from l2s_gym.config import load_config

    script = load_script()
    config = Path(script.REPO) / "configs" / "sparse_recovery.yaml"
    for mode in ("cuda", "cpu"):
        cfg = load_config(config, script._rl_budget_overrides(script.PIPELINE[mode]))
        assert (cfg.task.params.m, cfg.task.params.n) == (250, 500)
        assert cfg.compare.learners
    assert max(script.ENV_SIZES["cuda"]) == 65_536


def test_without_cuda_the_gpu_mode_says_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine")
    assert load_script().main(["--out", "/dev/null"]) == 2
    assert "--cpu" in capsys.readouterr().out


@pytest.mark.slow
def test_cpu_smoke_run(tmp_path):
    out = tmp_path / "cpu_check.json"
    assert load_script().main(["--out", str(out), "--cpu", "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["ok"] and set(report["parts"]) == {"tests", "env_throughput", "pipeline"}
    assert report["parts"]["tests"]["counts"]["passed"] >= 3
    assert any(r["id"] == "learner:reverse_kl" for r in report["parts"]["pipeline"]["rows"])
