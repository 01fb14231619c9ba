"""The recognition family: RecognitionTask (digits, class folders) and the multi-exit SDN."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from l2s_gym.config import ConfigError, from_dict
from l2s_gym.predictors.sdn import SDN, SDNConfig
from l2s_gym.tasks.recognition import RecognitionConfig, RecognitionTask
from l2s_gym.training import stage1_loss


@pytest.fixture(scope="module")
def task() -> RecognitionTask:
    return RecognitionTask(RecognitionConfig(), seed=0)


@pytest.fixture
def sdn(task: RecognitionTask) -> SDN:
    torch.manual_seed(0)
    return SDN(SDNConfig(num_layers=6, channels=8), task)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array.astype(np.uint8)).save(path)


def test_digits_split_is_fixed_disjoint_and_stratified(task) -> None:
    sizes = {s: len(task.data[s][1]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797 and sizes["test"] > sizes["val"] > 0
    assert task.eval_set("val").inputs["image"].shape[1:] == (1, 8, 8)
    for split in ("val", "test"):
        assert torch.bincount(task.data[split][1], minlength=10).min() > 0
    again = RecognitionTask(RecognitionConfig(), seed=0)
    assert torch.equal(again.eval_set("test").targets, task.eval_set("test").targets)
    other = RecognitionTask(RecognitionConfig(), seed=1)
    assert not torch.equal(other.eval_set("test").inputs["image"], task.data["test"][0])
    # No test image appears among the training images.
    train = task.data["train"][0].flatten(1)
    test = task.data["test"][0].flatten(1)
    assert not (torch.cdist(test, train).min(dim=1).values == 0).all()


def test_accuracy_in_percent(task) -> None:
    targets = torch.tensor([0, 1, 2, 3])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 0]), 10).float()
    assert task.aggregate(task.metric_stat(logits, targets)) == pytest.approx(50.0)
    assert task.loss(logits * 100, targets)[:2].max() < 1e-6
    assert task.metric_name == "accuracy (%)"


def test_trace_shapes_features_and_confidence(task, sdn) -> None:
    batch = task.train_batch(7, task.generator(3))
    trace = sdn.trace(batch, task)
    assert trace.losses.shape == (7, 6) and trace.features.shape == (7, 6, 12)
    sorted_p = trace.features[..., :10]
    assert torch.allclose(sorted_p.sum(-1), torch.ones(7, 6), atol=1e-5)
    assert (sorted_p[..., :-1] >= sorted_p[..., 1:]).all()
    assert torch.allclose(trace.extras["confidence"], trace.features[..., 0])
    assert ((trace.extras["confidence"] > 0) & (trace.extras["confidence"] <= 1)).all()


def test_instances_at_different_exits_share_a_batch(task, sdn) -> None:
    """``forward_step`` with mixed layers equals the layer-by-layer pass (fixed state shape)."""
    sdn.eval()
    batch = task.eval_set("val").select(slice(0, 6))
    states, preds = [sdn.initial_state(batch.inputs)], []
    for t in range(sdn.num_layers):
        states.append(sdn.layer(t, states[-1], batch.inputs))
        preds.append(sdn.readout(t, states[-1], batch.inputs))
    t = torch.arange(6)
    mixed = torch.stack([states[k][k] for k in range(6)])
    _, pred, feats = sdn.forward_step(t, mixed, batch.inputs)
    for k in range(6):
        assert torch.allclose(pred[k], preds[k][k], atol=1e-5)


def test_oracle_stage1_loss_falls(task, sdn) -> None:
    gen = task.generator(11)
    val = task.eval_set("val")
    opt = torch.optim.Adam(sdn.parameters(), lr=3e-3)

    def held_out() -> float:
        with torch.no_grad():
            return float(stage1_loss(sdn.trace_eval(val, task).losses, "oracle", 1.0))

    before = held_out()
    for _ in range(40):
        loss = stage1_loss(sdn.trace(task.train_batch(32, gen), task).losses, "oracle", 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out() < 0.7 * before


@pytest.mark.parametrize(
    "task_params, key",
    [
        ({"val_fraction": 0.5, "test_fraction": 0.45}, "task.test_fraction"),
        ({"image_size": 2}, "task.image_size"),
        ({"train_noise": -1.0}, "task.train_noise"),
        ({"classes": 3}, "task.classes"),
    ],
)
def test_config_errors_name_the_key(task_params, key) -> None:
    cfg = {
        "experiment": "x",
        "task": {"name": "recognition", **task_params},
        "predictor": {"name": "sdn"},
    }
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(cfg)


def test_data_dir_errors_are_one_line(tmp_path) -> None:
    def build(folder: Path) -> None:
        RecognitionTask(RecognitionConfig(data_dir=str(folder), image_size=8))

    with pytest.raises(ConfigError, match="no such folder") as missing:
        build(tmp_path / "nope")
    (tmp_path / "cats").mkdir()
    for i in range(4):
        _save_png(tmp_path / "cats" / f"{i}.png", np.full((10, 10), 40 * i))
    with pytest.raises(ConfigError, match="at least two classes") as one_class:
        build(tmp_path)
    (tmp_path / "dogs").mkdir()
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ConfigError, match="'dogs' holds no readable images") as unreadable:
        build(tmp_path)
    for exc in (missing, one_class, unreadable):
        assert "\n" not in str(exc.value) and str(exc.value).startswith("task.data_dir")


def test_data_dir_class_folders(tmp_path) -> None:
    rng = np.random.default_rng(0)
    for name, level in (("dark", 30), ("light", 220)):
        (tmp_path / name).mkdir()
        for i in range(10):
            _save_png(tmp_path / name / f"{i}.png", level + rng.integers(0, 20, (12, 16)))
    task = RecognitionTask(RecognitionConfig(data_dir=str(tmp_path), image_size=6), seed=0)
    assert task.class_names == ["dark", "light"] and task.num_classes == 2
    assert task.eval_set("test").inputs["image"].shape[1:] == (1, 6, 6)
    model = SDN(SDNConfig(num_layers=6, channels=4), task)
    assert model.trace(task.train_batch(3, task.generator(0)), task).features.shape == (3, 6, 4)


RECOGNITION_TINY = """
experiment: recognition_tiny
seed: 0
device: cpu
beta: 1.0
task: {name: recognition}
predictor: {name: sdn, num_layers: 6, channels: 8}
stage1: {steps: 20, batch_size: 32, val_every: 10}
policy: {hidden: 8, depth: 1}
imitation: {steps: 10, batch_size: 32, val_every: 5}
compare: {learners: [reverse_kl]}
"""


def test_compare_end_to_end(tmp_path) -> None:
    from l2s_gym.compare import run_compare
    from l2s_gym.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(RECOGNITION_TINY))
    exp = run_compare(load_config(path), tmp_path / "runs", progress=False, log=lambda *a: None)
    results = json.loads((exp / "results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert "SDN (T=6)" in methods and "SDN-stop (reverse KL)" in methods
    assert any(m.startswith("confidence threshold (SDN)") for m in methods)
    assert "confidence" in results["heuristic_curves"]
    assert all(0 <= r["metric"] <= 100 for r in results["rows"])


def test_env_id_passes_both_checkers() -> None:
    import gymnasium
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    import l2s_gym.envs  # noqa: F401  (registers the ids)

    env = gymnasium.make(
        "l2s/Recognition-v1", predictor_config={"num_layers": 6, "channels": 8}, device="cpu"
    )
    gym_check(env.unwrapped)
    sb3_check(env.unwrapped, warn=True)
    # Recognition draws nothing: text only.
    assert env.unwrapped.metadata["render_modes"] == ["ansi"]
