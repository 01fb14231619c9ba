"""Custom tasks and predictors from the command line: ``--import FILE`` and the
``l2s_gym.plugins`` entry points of installed packages (no flag)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from l2s_gym import plugins, registry
from l2s_gym.cli import main
from l2s_gym.config import load_config

REPO = Path(__file__).resolve().parent.parent

# A user's task and predictor: shrink a noisy vector a little more at each layer; noisier
# instances want more layers. ``{task}`` and ``{predictor}`` are the registered names.
PLUGIN = """
from dataclasses import dataclass

import torch
from torch import nn

from l2s_gym import Batch, LayeredPredictor, Task
from l2s_gym.registry import register_predictor, register_task


@dataclass
class ShrinkTaskConfig:
    dim: int = 4
    val_size: int = 64
    test_size: int = 64


@register_task("{task}", ShrinkTaskConfig)
class ShrinkTask(Task):
    name = "{task}"
    metric_name = "mse"
    group_names = ["all"]
    default_predictor = "{predictor}"

    def __init__(self, cfg, seed=0, device="cpu"):
        super().__init__(seed, device)
        self.cfg = cfg

    def _draw(self, n, gen):
        x = torch.randn(n, self.cfg.dim, generator=gen, device=self.device)
        noise = torch.rand(n, 1, generator=gen, device=self.device)
        y = x + noise * torch.randn(n, self.cfg.dim, generator=gen, device=self.device)
        return Batch({{"y": y}}, x, torch.zeros(n, dtype=torch.long, device=self.device))

    def train_batch(self, batch_size, generator):
        return self._draw(batch_size, generator)

    def make_eval_set(self, split):
        size = self.cfg.val_size if split == "val" else self.cfg.test_size
        return self._draw(size, self.generator(1 if split == "val" else 2))

    def loss(self, prediction, targets):
        return (prediction - targets).pow(2).mean(1)

    def metric_stat(self, prediction, targets):
        return self.loss(prediction, targets)


@dataclass
class ShrinkConfig:
    num_layers: int = 4


@register_predictor("{predictor}", ShrinkConfig, task="{task}")
class Shrink(LayeredPredictor):
    display_name = "Shrink"
    feature_shape = (2,)

    def __init__(self, cfg, task):
        super().__init__()
        self.num_layers = cfg.num_layers
        self.logit = nn.Parameter(torch.full((cfg.num_layers,), 2.0))

    def initial_state(self, inputs):
        return inputs["y"]

    def layer(self, t, state, inputs):
        return state * torch.sigmoid(self.logit[t])

    def readout(self, t, state, inputs):
        return state

    def policy_features(self, t, state, inputs, prediction):
        depth = torch.full_like(state[:, 0], (t + 1) / self.num_layers)
        return torch.stack([state.pow(2).mean(1).log(), depth], dim=1)
"""

TINY = """
experiment: {experiment}
device: cpu
beta: 0.05
task: {{name: {task}}}
stage1: {{steps: 5, batch_size: 32, val_every: 5}}
policy: {{hidden: 8, depth: 1}}
imitation: {{steps: 10, batch_size: 32, val_every: 5}}
compare: {{learners: [reverse_kl]}}
"""


@pytest.fixture
def clean_registry():
    """Leave the registry and ``sys.modules`` as they were (tests register their own names)."""
    tables = (registry.TASKS, registry.PREDICTORS)
    saved = [dict(t) for t in tables]
    modules = set(sys.modules)
    yield
    for table, before in zip(tables, saved, strict=True):
        table.clear()
        table.update(before)
    for name in set(sys.modules) - modules:
        if name.startswith("l2s_user_"):
            del sys.modules[name]


def write_plugin(path: Path, task: str, predictor: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(PLUGIN.format(task=task, predictor=predictor))
    return path


def test_a_users_file_runs_through_l2s_compare_with_import(tmp_path, capsys, clean_registry):
    plugin = write_plugin(tmp_path / "l2s_user_shrink.py", "user_shrink", "user_shrink_net")
    config = tmp_path / "cfg.yaml"
    config.write_text(TINY.format(experiment="user_run", task="user_shrink"))
    runs = tmp_path / "runs"
    argv = ["compare", str(config), "--import", str(plugin), "--runs", str(runs), "--no-progress"]
    assert main(argv) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    ids = {r["id"] for r in results["rows"]}
    assert {"fixed_T", "oracle", "learner:reverse_kl"} <= ids
    # predictor.name came from the task's default_predictor
    assert results["num_layers"] == 4


def test_a_missing_import_is_one_line(tmp_path, capsys, toy_config):
    missing = tmp_path / "nope.py"
    assert main(["compare", str(toy_config), "--import", str(missing)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"l2s: error: --import {missing}: no such file"]


def _fake_installed_package(site: Path, module: str, source: str) -> None:
    """What pip would leave on sys.path: the module and a dist-info with its entry point."""
    (site / f"{module}.py").write_text(source)
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir(parents=True)
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{plugins.PLUGIN_GROUP}]\n{module} = {module}\n")


def test_an_installed_packages_entry_point_registers_without_any_flag(
    tmp_path, capsys, monkeypatch, clean_registry
):
    site = tmp_path / "site"
    site.mkdir()
    source = PLUGIN.format(task="ep_shrink", predictor="ep_shrink_net")
    _fake_installed_package(site, "l2s_user_ep_pkg", source)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_plugins_loaded", False)
    assert "ep_shrink" not in registry.TASKS
    plugins.load_plugins()
    assert "ep_shrink" in registry.TASKS and "ep_shrink_net" in registry.PREDICTORS
    assert "reverse_kl" in registry.LEARNERS  # l2s-gym's own entry point still loads

    # The command line finds it the same way: no --import.
    del registry.TASKS["ep_shrink"]
    monkeypatch.setattr(plugins, "_plugins_loaded", False)
    sys.modules.pop("l2s_user_ep_pkg", None)
    config = tmp_path / "cfg.yaml"
    config.write_text(TINY.format(experiment="ep_run", task="ep_shrink"))
    argv = ["train-predictor", str(config), "--runs", str(tmp_path / "runs"), "--no-progress"]
    assert main(argv) == 0
    assert Path(capsys.readouterr().out.strip().splitlines()[-1]).is_file()


def test_a_broken_plugin_is_one_line(tmp_path, capsys, monkeypatch, toy_config, clean_registry):
    site = tmp_path / "site"
    site.mkdir()
    _fake_installed_package(site, "l2s_user_broken", "raise ImportError('needs foo')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_plugins_loaded", False)
    assert main(["compare", str(toy_config), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "plugin 'l2s_user_broken'" in err[0] and "needs foo" in err[0]
    assert not (tmp_path / "runs").exists()
    monkeypatch.setattr(plugins, "_plugins_loaded", True)


QUIET_EXTRA = """
from l2s_gym.registry import register_learner

ShrinkTask.env_id = "l2s/QuietShrink-v1"
register_learner("quiet_learner", "Quiet", kind="imitation")(lambda ctx: None)
"""


def test_reading_a_config_loads_plugins_but_registers_no_gymnasium_id(
    tmp_path, monkeypatch, clean_registry
):
    """Validation needs the learner names, so it loads the entry-point plugins (a plugin's
    learner is then known), but a Gymnasium id is registered only by ``load_plugins``
    (which every ``l2s`` command calls) or by importing ``l2s_gym``."""
    import gymnasium

    site = tmp_path / "site"
    site.mkdir()
    source = PLUGIN.format(task="quiet_shrink", predictor="quiet_shrink_net") + QUIET_EXTRA
    _fake_installed_package(site, "l2s_user_quiet_pkg", source)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_plugins_loaded", False)
    for table in ("LEARNERS", "LEARNER_LABELS", "LEARNER_KINDS"):
        monkeypatch.setattr(registry, table, dict(getattr(registry, table)))
    config = tmp_path / "cfg.yaml"
    config.write_text(
        TINY.format(experiment="quiet", task="toy").replace("[reverse_kl]", "[quiet_learner]")
    )
    env_id = "l2s/QuietShrink-v1"
    try:
        assert load_config(config).compare.learners == ["quiet_learner"]
        assert "quiet_shrink" in registry.TASKS  # the plugin was imported ...
        assert env_id not in gymnasium.registry  # ... and nothing registered with gymnasium
        plugins.load_plugins()
        assert env_id in gymnasium.registry
    finally:
        gymnasium.registry.pop(env_id, None)


def test_the_example_runs_from_the_command_line(tmp_path, capsys):
    """``l2s compare examples/custom_predictor.yaml --import examples/custom_predictor.py``,
    shrunk to seconds with the example's own TINY overrides (and one learner)."""
    example = REPO / "examples" / "custom_predictor.py"
    module = plugins.import_module_or_file(str(example))  # what --import does; reused there
    full = load_config(REPO / "examples" / "custom_predictor.yaml")
    assert full.task.name == "least_squares" and full.stage1.steps == 300  # the full budget
    sets = [arg for o in module.TINY for arg in ("--set", o)]
    argv = ["compare", str(REPO / "examples" / "custom_predictor.yaml"), "--import", str(example),
            "--runs", str(tmp_path / "runs"), "--no-progress", *sets,
            "--set", "compare.learners=[reverse_kl]"]  # fmt: skip
    assert main(argv) == 0
    run_dir = Path(capsys.readouterr().out.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    assert results["experiment"] == "custom_least_squares_tiny"
    assert any(r["id"] == "learner:reverse_kl" for r in results["rows"])
