"""An installed plugin as Gymnasium users expect it: ``import l2s_gym`` registers the
Gymnasium ids of the tasks of installed ``l2s_gym.tasks`` entry points, loading the same
plugin again (``--import`` of its file or module, ``load_plugins`` twice) is a no-op, a
different class under a taken name is one line naming both, and a broken plugin is one
warning, not a failed import.

Each case runs in a subprocess (``PYTHONPATH`` holds the fake site folder), so that the
test process's registries and ``sys.modules`` stay as they were.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from l2s_gym import plugins

# A user's task and predictor, written as docs/custom_predictors.md says: a dataclass
# config each, ``@register_task`` / ``@register_predictor``, the task sets ``env_id``.
PLUGIN = """
from dataclasses import dataclass

import torch
from torch import nn

from l2s_gym import Batch, LayeredPredictor, Task
from l2s_gym.registry import register_predictor, register_task


@dataclass
class ShrinkTaskConfig:
    dim: int = 4
    val_size: int = 16
    test_size: int = 16


@register_task("{task}", ShrinkTaskConfig)
class ShrinkTask(Task):
    name = "{task}"
    metric_name = "mse"
    higher_is_better = False
    group_names = ["all"]
    default_predictor = "{task}_net"
    env_id = "{env_id}"

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
        return self._draw(size, self.generator(1 if split == "val" else 2, device="cpu"))

    def loss(self, prediction, targets):
        return (prediction - targets).pow(2).mean(1)

    def metric_stat(self, prediction, targets):
        return self.loss(prediction, targets)


@dataclass
class ShrinkConfig:
    num_layers: int = 4


@register_predictor("{task}_net", ShrinkConfig, task="{task}")
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


def install(site: Path, module: str, source: str, group: str = plugins.TASK_PLUGIN_GROUP) -> Path:
    """What pip leaves on ``sys.path``: the module and a dist-info naming its entry point."""
    site.mkdir(parents=True, exist_ok=True)
    path = site / f"{module}.py"
    path.write_text(source)
    dist = site / f"{module}-0.1.dist-info"
    dist.mkdir()
    name = module.replace("_", "-")
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{group}]\n{module} = {module}\n")
    return path


def run_python(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    path = [str(site), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        cwd=site,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_import_registers_an_installed_plugins_env_id_and_loading_it_again_is_a_no_op(tmp_path):
    site = tmp_path / "site"
    path = install(
        site, "l2s_ptest_shrink", PLUGIN.format(task="ptest_shrink", env_id="l2s/PtestShrink-v0")
    )
    # The same task name from another file: another origin.
    clash = tmp_path / "elsewhere" / "l2s_ptest_clash.py"
    clash.parent.mkdir()
    clash.write_text(PLUGIN.format(task="ptest_shrink", env_id="l2s/PtestClash-v0"))
    proc = run_python(
        site,
        f"""
        import sys, warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import gymnasium
            import l2s_gym
            from l2s_gym import plugins, registry

            env = gymnasium.make("l2s/PtestShrink-v0")
            obs, info = env.reset(seed=0)
            obs, reward, terminated, truncated, info = env.step(0)
            env.close()
        assert not [w for w in caught if w.category.__name__ == "PluginWarning"], caught
        # import stays cheap: no learner, no stable-baselines3
        assert "l2s_gym.agents" not in sys.modules and "stable_baselines3" not in sys.modules

        module = sys.modules["l2s_ptest_shrink"]
        task, net = registry.TASKS["ptest_shrink"].cls, registry.PREDICTORS["ptest_shrink_net"].cls
        spec = gymnasium.spec("l2s/PtestShrink-v0")
        assert plugins.import_module_or_file({str(path)!r}) is module  # --import of its file
        assert plugins.import_module_or_file("l2s_ptest_shrink") is module  # ... of its module
        plugins.load_plugins()
        plugins.load_plugins()
        assert registry.TASKS["ptest_shrink"].cls is task
        assert registry.PREDICTORS["ptest_shrink_net"].cls is net
        assert gymnasium.spec("l2s/PtestShrink-v0") is spec
        assert "l2s_gym.agents" in sys.modules  # load_plugins brought the learners

        try:
            plugins.import_module_or_file({str(clash)!r})
        except plugins.PluginError as exc:
            print("CLASH:", exc)
        else:
            raise AssertionError("a different class under a taken name registered")
        assert registry.TASKS["ptest_shrink"].cls is task
        assert "l2s/PtestClash-v0" not in gymnasium.registry
        """,
    )
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("CLASH:")]
    assert "task 'ptest_shrink' is already registered by l2s_ptest_shrink.ShrinkTask" in line
    assert str(path.resolve()) in line and str(clash.resolve()) in line


def test_a_broken_plugin_is_one_warning_and_import_l2s_gym_still_works(tmp_path):
    site = tmp_path / "site"
    install(site, "l2s_ptest_broken", "raise ImportError('needs foo')\n")
    install(site, "l2s_ptest_fine", PLUGIN.format(task="ptest_fine", env_id="l2s/PtestFine-v0"))
    proc = run_python(
        site,
        """
        import gymnasium
        import l2s_gym
        from l2s_gym import plugins, registry

        assert "ptest_fine" in registry.TASKS  # the next plugin still loaded
        gymnasium.make("l2s/PtestFine-v0").close()
        plugins.load_plugins()  # warned already: neither an error nor a second warning
        print("OK")
        """,
    )
    assert proc.stdout.split() == ["OK"]
    lines = [x for x in proc.stderr.splitlines() if "PluginWarning" in x]
    assert len(lines) == 1, proc.stderr
    assert "plugin 'l2s_ptest_broken'" in lines[0] and "needs foo" in lines[0]
    assert "ImportError" in lines[0]
