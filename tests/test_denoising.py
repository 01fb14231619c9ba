"""The denoising family: DenoisingTask (bundled images, data_dir) and the per-layer DnCNN."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DENOISING_TINY

from l2s_gym.build import make_policy
from l2s_gym.config import ConfigError, from_dict
from l2s_gym.predictors.dncnn import (
    NUM_STATS,
    DnCNN,
    DnCNNConfig,
    haar_noise_sigma,
    noise_statistics,
)
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
    # loss: psnr is minus the metric itself, in dB.
    in_db = DenoisingTask(DenoisingConfig(**TINY, loss="psnr"), seed=0)
    assert torch.allclose(in_db.loss(noisy, clean), -in_db.metric_stat(noisy, clean))


def test_trace_shapes_features_and_extras(task, dncnn) -> None:
    batch = task.train_batch(6, task.generator(3))
    trace = dncnn.trace(batch, task)
    assert trace.losses.shape == (6, 3) and trace.metric_stats.shape == (6, 3)
    assert dncnn.feature_shape == (3 * 8 * 8 + NUM_STATS,)
    assert trace.features.shape == (6, 3, 3 * 8 * 8 + NUM_STATS)
    assert trace.extras["change"].shape == (6, 3)
    # Zero-initialised heads: every read-out starts as the noisy input.
    noisy_loss = task.loss(batch.inputs["noisy"], batch.targets)
    assert torch.allclose(trace.losses, noisy_loss.unsqueeze(1).expand(6, 3))
    # The features are label-free: the same noisy input gives the same features
    # whatever the clean target is.
    other = type(batch)(batch.inputs, torch.zeros_like(batch.targets), batch.groups)
    dncnn.eval()
    assert torch.equal(dncnn.trace(batch, task).features, dncnn.trace(other, task).features)


@pytest.mark.parametrize("features", ["image", "stats", "image+stats"])
def test_policy_encoder_takes_each_feature_choice(task, features) -> None:
    from l2s_gym.config import ExperimentConfig, PolicyConfig

    torch.manual_seed(0)
    model = DnCNN(DnCNNConfig(num_layers=3, channels=8, feature_size=8, features=features), task)
    size = {"image": 3 * 64, "stats": NUM_STATS, "image+stats": 3 * 64 + NUM_STATS}[features]
    assert model.feature_shape == (size,)
    trace = model.trace(task.train_batch(4, task.generator(5)), task)
    assert trace.features.shape == (4, 3, size) and torch.isfinite(trace.features).all()
    cfg = ExperimentConfig(experiment="x", policy=PolicyConfig(hidden=8, depth=1))
    policy = make_policy(cfg, model, seed=0)
    assert policy.trace_logits(trace.features).shape == (4, 3)


def test_haar_noise_sigma_estimates_the_noise_level() -> None:
    gen = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(8, 1, 64, 64)
    for sigma in (0.05, 0.2):
        noisy = ramp + sigma * torch.randn(8, 1, 64, 64, generator=gen)
        estimate = haar_noise_sigma(noisy)
        assert estimate.shape == (8,)
        assert torch.allclose(estimate, torch.full((8,), sigma), rtol=0.15)
    # A smooth image has no noise; odd sizes are cropped to even ones.
    assert haar_noise_sigma(ramp[..., :31, :31]).max() < 1e-6


def test_noise_statistics_see_the_noise_level_and_what_is_left() -> None:
    gen = torch.Generator().manual_seed(1)
    clean = torch.rand(4, 1, 1, 1, generator=gen).expand(4, 1, 24, 24)
    noise = torch.randn(4, 1, 24, 24, generator=gen)
    low, high = clean + 0.05 * noise, clean + 0.2 * noise
    # Estimates that removed everything: the predicted noise spreads as the input's noise.
    s_low = noise_statistics(low, clean, clean - low)
    s_high = noise_statistics(high, clean, clean - high)
    assert s_low.shape == (4, NUM_STATS)
    assert (s_high[:, 0] > s_low[:, 0] + 1).all()  # the input's noise level
    assert torch.allclose(s_low[:, 2], s_low[:, 0], atol=0.2)  # removed = input's level
    assert (s_low[:, 1] < s_low[:, 0] - 1).all()  # nothing left in the estimate
    # An estimate that removed nothing: the noise is all left, nothing predicted.
    kept = noise_statistics(high, high, torch.zeros_like(high))
    assert torch.allclose(kept[:, 1], kept[:, 0]) and (kept[:, 2] < kept[:, 0] - 2).all()


def test_cumulative_heads_correct_the_previous_estimate(task) -> None:
    torch.manual_seed(0)
    cfg = DnCNNConfig(num_layers=3, channels=8, feature_size=8, heads="cumulative")
    model = DnCNN(cfg, task)
    batch = task.train_batch(4, task.generator(6))
    with torch.no_grad():
        model.heads[0].bias.fill_(0.1)  # only the first head predicts any noise
        trace = model.trace(batch, task, keep_predictions=True)
    preds = trace.predictions
    assert torch.allclose(preds[0], batch.inputs["noisy"] - 0.1)
    assert torch.allclose(preds[2], preds[0]) and torch.allclose(preds[1], preds[0])


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
        ({"loss": "l1"}, "task.loss"),
    ],
)
def test_config_errors_name_the_key(task_params, key) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(_cfg(**task_params))


def test_predictor_config_errors_name_the_key() -> None:
    for key, value in (("feature_size", 2), ("features", "pixels"), ("heads", "shared")):
        cfg = _cfg()
        cfg["predictor"][key] = value
        with pytest.raises(ConfigError, match=rf"predictor\.{key}"):
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
