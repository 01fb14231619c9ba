"""The denoising family: DenoisingTask (bundled images, data_dir) and the per-layer DnCNN."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from l2s_gym.build import make_policy
from l2s_gym.config import ConfigError, from_dict
from l2s_gym.predictors.dncnn import DnCNN, DnCNNConfig
from l2s_gym.tasks.denoising import DenoisingConfig, DenoisingTask
from l2s_gym.training import stage1_loss

TINY = dict(patch_size=16, val_size=32, test_patches=8)


@pytest.fixture(scope="module")
def task() -> DenoisingTask:
    return DenoisingTask(DenoisingConfig(**TINY), seed=0)


@pytest.fixture
def dncnn(task: DenoisingTask) -> DnCNN:
    torch.manual_seed(0)
    return DnCNN(DnCNNConfig(num_layers=3, channels=8, feature_size=8, encoder_channels=4), task)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array.astype(np.uint8)).save(path)


def test_eval_sets_hold_every_test_level_and_only_training_levels_in_validation(task) -> None:
    assert task.group_names == ["sigma 35", "sigma 45", "sigma 55", "sigma 65", "sigma 75"]
    test, val = task.eval_set("test"), task.eval_set("val")
    assert test.inputs["noisy"].shape == (5 * 8, 1, 16, 16)
    assert torch.bincount(test.groups).tolist() == [8] * 5
    assert set(val.groups.tolist()) <= {0, 1, 2}
    # The measured noise matches each group's sigma (blind, unclipped Gaussian noise).
    noise = (test.inputs["noisy"] - test.targets).flatten(1).std(1) * 255
    for g, sigma in enumerate([35, 45, 55, 65, 75]):
        assert abs(float(noise[test.groups == g].mean()) - sigma) < 0.1 * sigma
    again = DenoisingTask(DenoisingConfig(**TINY), seed=0).eval_set("test")
    assert torch.equal(again.inputs["noisy"], test.inputs["noisy"])


def test_psnr_and_loss(task) -> None:
    clean = task.eval_set("test").targets[:4]
    noisy = clean + 0.1
    assert torch.allclose(task.metric_stat(noisy, clean), torch.full((4,), 20.0), atol=1e-3)
    assert torch.allclose(task.loss(noisy, clean), torch.full((4,), 1000 * 0.01), atol=1e-3)
    assert (task.metric_stat(clean, clean) > 90).all()


def test_trace_shapes_features_and_extras(task, dncnn) -> None:
    batch = task.train_batch(6, task.generator(3))
    trace = dncnn.trace(batch, task)
    assert trace.losses.shape == (6, 3) and trace.metric_stats.shape == (6, 3)
    assert dncnn.feature_shape == (3, 8, 8)
    assert trace.features.shape == (6, 3, 3, 8, 8)
    assert trace.extras["change"].shape == (6, 3)
    # Zero-initialised heads: every read-out starts as the noisy input.
    noisy_loss = task.loss(batch.inputs["noisy"], batch.targets)
    assert torch.allclose(trace.losses, noisy_loss.unsqueeze(1).expand(6, 3))
    # The features are label-free: the same noisy input gives the same features
    # whatever the clean target is.
    other = type(batch)(batch.inputs, torch.zeros_like(batch.targets), batch.groups)
    dncnn.eval()
    assert torch.equal(dncnn.trace(batch, task).features, dncnn.trace(other, task).features)


def test_policy_encoder_takes_image_features(dncnn) -> None:
    from l2s_gym.config import ExperimentConfig, PolicyConfig

    cfg = ExperimentConfig(experiment="x", policy=PolicyConfig(hidden=8, depth=1))
    policy = make_policy(cfg, dncnn, seed=0)
    logits = policy.trace_logits(torch.randn(5, dncnn.num_layers, *dncnn.feature_shape))
    assert logits.shape == (5, dncnn.num_layers)


def test_oracle_stage1_loss_falls(task, dncnn) -> None:
    gen = task.generator(11)
    fixed = task.train_batch(32, task.generator(99))
    opt = torch.optim.Adam(dncnn.parameters(), lr=3e-3)

    def held_out() -> float:
        dncnn.eval()
        with torch.no_grad():
            value = float(stage1_loss(dncnn.trace(fixed, task).losses, "oracle", 1.0))
        dncnn.train()
        return value

    before = held_out()
    for _ in range(30):
        loss = stage1_loss(dncnn.trace(task.train_batch(16, gen), task).losses, "oracle", 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out() < 0.8 * before


def _cfg(**task: object) -> dict:
    return {
        "experiment": "x",
        "task": {"name": "denoising", **task},
        "predictor": {"name": "dncnn", "num_layers": 2},
    }


@pytest.mark.parametrize(
    "task_params, key",
    [
        ({"patch_size": 4}, "task.patch_size"),
        ({"train_sigmas": []}, "task.train_sigmas"),
        ({"test_sigmas": [35, 300]}, "task.test_sigmas"),
        ({"sigma": 25}, "task.sigma"),
        ({"loss_scale": 0}, "task.loss_scale"),
    ],
)
def test_config_errors_name_the_key(task_params, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(_cfg(**task_params))


def test_predictor_config_errors_name_the_key() -> None:
    cfg = _cfg()
    cfg["predictor"]["feature_size"] = 2
    with pytest.raises(ConfigError, match=r"predictor\.feature_size"):
        from_dict(cfg)


def test_data_dir_errors_are_one_line(tmp_path) -> None:
    def build(folder: Path, patch: int = 16) -> None:
        DenoisingTask(DenoisingConfig(data_dir=str(folder), patch_size=patch))

    with pytest.raises(ConfigError, match="no such folder") as missing:
        build(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ConfigError, match="no readable images") as empty:
        build(tmp_path)
    for i in range(3):
        _save_png(tmp_path / f"im{i}.png", np.full((20, 30), 50 * i))
    with pytest.raises(ConfigError, match="smaller than the patch size") as small:
        build(tmp_path, patch=24)
    for exc in (missing, empty, small):
        assert "\n" not in str(exc.value) and str(exc.value).startswith("task.")
    two = tmp_path / "two"
    two.mkdir()
    for i in range(2):
        _save_png(two / f"im{i}.png", np.zeros((20, 20)))
    with pytest.raises(ConfigError, match="at least 3"):
        build(two)


def test_data_dir_splits_by_image(tmp_path) -> None:
    # Ten constant images with distinct grey levels: a patch's value names its image.
    for i in range(10):
        _save_png(tmp_path / f"im{i}.png", np.full((32, 32), 20 * i + 10))
    task = DenoisingTask(DenoisingConfig(data_dir=str(tmp_path), patch_size=16), seed=1)
    levels = {s: set(torch.unique(p.flatten(1)[:, 0]).tolist()) for s, p in task.patches.items()}
    assert len(levels["test"]) == 2 and len(levels["val"]) == 2 and len(levels["train"]) == 6
    assert not (levels["train"] & levels["test"]) and not (levels["train"] & levels["val"])


DENOISING_TINY = """
experiment: denoising_tiny
seed: 0
device: cpu
beta: 1.0
task: {name: denoising, patch_size: 16, val_size: 32, test_patches: 8}
predictor: {name: dncnn, num_layers: 3, channels: 8, feature_size: 8, encoder_channels: 4}
stage1: {steps: 6, batch_size: 8, val_every: 3}
policy: {hidden: 8, depth: 1}
imitation: {steps: 4, batch_size: 8, val_every: 2}
compare: {learners: [reverse_kl]}
"""


def test_compare_end_to_end(tmp_path) -> None:
    from l2s_gym.compare import run_compare
    from l2s_gym.config import load_config

    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(DENOISING_TINY))
    exp = run_compare(load_config(path), tmp_path / "runs", progress=False, log=lambda *a: None)
    results = json.loads((exp / "results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert "DnCNN (T=3)" in methods and "DnCNN-stop (reverse KL)" in methods
    assert any(m.startswith("convergence threshold") for m in methods)
    assert set(results["rows"][0]["groups"]) == set(results["group_names"])
    assert (exp / "metric_vs_layers.png").is_file()


def test_env_id_passes_both_checkers() -> None:
    import gymnasium
    from gymnasium.utils.env_checker import check_env as gym_check
    from stable_baselines3.common.env_checker import check_env as sb3_check

    import l2s_gym.envs  # noqa: F401  (registers the ids)

    env = gymnasium.make(
        "l2s/Denoising-v1",
        task_config=TINY,
        predictor_config={"num_layers": 3, "channels": 8, "feature_size": 8},
        device="cpu",
    )
    gym_check(env.unwrapped)  # renders every mode the env lists, through gymnasium.make
    sb3_check(env.unwrapped, warn=True)


def test_rgb_array_shows_the_noisy_input_and_the_current_image() -> None:
    import gymnasium

    import l2s_gym.envs  # noqa: F401  (registers the ids)

    env = gymnasium.make(
        "l2s/Denoising-v1",
        task_config=TINY,
        predictor_config={"num_layers": 3, "channels": 8, "feature_size": 8},
        device="cpu",
        render_mode="rgb_array",
    )
    env.reset(seed=0)
    env.step(0)
    frame = env.render()
    p = TINY["patch_size"]
    assert frame.shape == (4 * p, 4 * (2 * p + 2), 3) and frame.dtype == np.uint8
    unwrapped = env.unwrapped
    instance = unwrapped.batched.instances
    trace = unwrapped.predictor.trace(instance, unwrapped.task, keep_predictions=True)
    current = trace.predictions[1][0, 0].clamp(0, 1).numpy()  # after layer 2
    right = frame[::4, 4 * (p + 2) :: 4, 0].astype(float) / 255
    np.testing.assert_allclose(right, current, atol=0.5 / 255 + 1e-6)
    noisy = instance.inputs["noisy"][0, 0].clamp(0, 1).numpy()
    np.testing.assert_allclose(frame[::4, : 4 * p : 4, 0] / 255, noisy, atol=0.5 / 255 + 1e-6)
