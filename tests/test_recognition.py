"""The recognition family: RecognitionTask (corrupted digits, class folders) and the SDN."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import RECOGNITION_TINY

from l2s_gym.config import ConfigError, from_dict
from l2s_gym.predictors.sdn import SDN, SDNConfig
from l2s_gym.tasks.recognition import RecognitionConfig, RecognitionTask, corrupt
from l2s_gym.training import stage1_loss

SMALL = {"val_per_severity": 40, "test_per_severity": 60}


@pytest.fixture(scope="module")
def task() -> RecognitionTask:
    return RecognitionTask(RecognitionConfig(**SMALL), seed=0)


@pytest.fixture
def sdn(task: RecognitionTask) -> SDN:
    torch.manual_seed(0)
    return SDN(SDNConfig(num_layers=6, channels=8), task)


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array.astype(np.uint8)).save(path)


def test_base_split_is_fixed_disjoint_and_stratified(task) -> None:
    sizes = {s: len(task.data[s][1]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 1797 and sizes["train"] > sizes["test"] > sizes["val"] > 0
    for split in ("val", "test"):
        assert torch.bincount(task.data[split][1], minlength=10).min() > 0
    again = RecognitionTask(RecognitionConfig(**SMALL), seed=0)
    for split in ("val", "test"):
        assert torch.equal(
            again.eval_set(split).inputs["image"], task.eval_set(split).inputs["image"]
        )
        assert torch.equal(again.eval_set(split).targets, task.eval_set(split).targets)
    other = RecognitionTask(RecognitionConfig(**SMALL), seed=1)
    assert not torch.equal(other.data["test"][0], task.data["test"][0])
    # No test base image appears among the training base images.
    train = task.data["train"][0].flatten(1)
    test = task.data["test"][0].flatten(1)
    assert (_cdist(test, train).min(dim=1).values > 0).all()


def test_eval_sets_are_corrupted_test_bases_per_severity(task) -> None:
    levels = task.cfg.severities
    assert task.group_names == ["0", "0.25", "0.5", "0.75", "1"]
    for split, per in (("val", SMALL["val_per_severity"]), ("test", SMALL["test_per_severity"])):
        batch = task.eval_set(split)
        assert batch.inputs["image"].shape == (per * len(levels), 1, 8, 8)
        assert torch.equal(torch.bincount(batch.groups), torch.full((len(levels),), per))
        images = batch.inputs["image"]
        assert images.min() >= 0 and images.max() <= 1
        # Severity 0 leaves the image as it is: every such image is one of this split's bases.
        clean = images[batch.groups == 0].flatten(1)
        bases, labels = task.data[split][0].flatten(1), task.data[split][1]
        dist, nearest = _cdist(clean, bases).min(dim=1)
        assert dist.max() < 1e-4
        assert torch.equal(labels[nearest], batch.targets[batch.groups == 0])
        # Harder levels move further from the clean bases.
        change = [
            _cdist(images[batch.groups == g].flatten(1), bases).min(dim=1).values.mean()
            for g in range(len(levels))
        ]
        assert all(a < b for a, b in zip(change, change[1:], strict=False))


def test_corrupt_is_seeded_and_grows_with_severity(task) -> None:
    x = task.data["train"][0][:64]
    s = torch.linspace(0, 1, 64)
    a = corrupt(x, s, task.cfg, torch.Generator().manual_seed(5))
    b = corrupt(x, s, task.cfg, torch.Generator().manual_seed(5))
    c = corrupt(x, s, task.cfg, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.allclose(a[0], x[0], atol=1e-5)  # severity 0
    diff = (a - x).abs().flatten(1).mean(dim=1)
    assert diff[:16].mean() < diff[16:32].mean() < diff[32:48].mean() < diff[48:].mean()
    # Each corruption on its own changes the image, and only a zero strength leaves it.
    names = ("rotation", "shift", "zoom", "blur", "occlusion", "contrast", "noise")
    none = dataclasses.replace(task.cfg, **{n: 0.0 for n in names})
    full = torch.ones(64)
    assert torch.allclose(corrupt(x, full, none, torch.Generator().manual_seed(0)), x, atol=1e-5)
    for name in names:
        one = dataclasses.replace(none, **{name: getattr(task.cfg, name)})
        out = corrupt(x, full, one, torch.Generator().manual_seed(0))
        assert (out - x).abs().max() > 0.05, name


def test_training_stream_groups_and_plain_images(task) -> None:
    batch = task.train_batch(256, task.generator(3))
    assert batch.inputs["image"].shape == (256, 1, 8, 8)
    assert set(batch.groups.tolist()) == set(range(5))
    again = task.train_batch(256, task.generator(3))
    assert torch.equal(again.inputs["image"], batch.inputs["image"])
    plain = RecognitionTask(RecognitionConfig(severities=[]), seed=0)
    assert plain.group_names == ["all"]
    val = plain.eval_set("val")
    assert torch.equal(val.inputs["image"], plain.data["val"][0]) and (val.groups == 0).all()
    big = RecognitionTask(RecognitionConfig(severities=[0.5], image_size=16, **SMALL), seed=0)
    assert big.eval_set("test").inputs["image"].shape == (60, 1, 16, 16)


def test_accuracy_in_percent(task) -> None:
    targets = torch.tensor([0, 1, 2, 3])
    logits = torch.nn.functional.one_hot(torch.tensor([0, 1, 0, 0]), 10).float()
    assert task.aggregate(task.metric_stat(logits, targets)) == pytest.approx(50.0)
    assert task.loss(logits * 100, targets)[:2].max() < 1e-6
    assert task.metric_name == "accuracy (%)"


def test_trace_shapes_features_and_confidence(task, sdn) -> None:
    batch = task.train_batch(7, task.generator(3))
    trace = sdn.trace(batch, task, keep_predictions=True)
    assert trace.losses.shape == (7, 6) and trace.features.shape == (7, 6, 12 + 6 + 3)
    sorted_p = trace.features[..., :10]
    assert torch.allclose(sorted_p.sum(-1), torch.ones(7, 6), atol=1e-5)
    assert (sorted_p[..., :-1] >= sorted_p[..., 1:]).all()
    assert torch.allclose(trace.extras["confidence"], trace.features[..., 0])
    assert ((trace.extras["confidence"] > 0) & (trace.extras["confidence"] <= 1)).all()
    # Trajectory features against a brute-force computation from the per-exit predictions.
    probs = torch.stack([torch.softmax(p, dim=1) for p in trace.predictions], dim=1)
    classes = probs.argmax(dim=2)
    agree, run, peak = torch.zeros(7, 6), torch.zeros(7, 6), probs.amax(dim=2).cummax(dim=1)[0]
    for t in range(1, 6):
        agree[:, t] = (classes[:, t] == classes[:, t - 1]).float()
        run[:, t] = torch.where(agree[:, t] > 0, run[:, t - 1] + 1, 0)
    prev = torch.cat([torch.full((7, 1, 10), 0.1), probs[:, :-1]], dim=1)
    traj = trace.features[..., 12:18]
    assert torch.equal(traj[..., 0], agree)
    assert torch.allclose(traj[..., 1], run / 6)
    assert torch.allclose(traj[..., 2], probs.amax(2) - prev.amax(2), atol=1e-6)
    assert torch.allclose(traj[..., 4], 0.5 * (probs - prev).abs().sum(2), atol=1e-6)
    assert torch.allclose(traj[..., 5], peak, atol=1e-6)
    # Input statistics: the same at every exit, the image's mean and std first.
    image = batch.inputs["image"].flatten(1)
    stats = trace.features[..., 18:]
    assert torch.allclose(stats[:, 0], stats[:, -1])
    assert torch.allclose(stats[:, 0, 0], image.mean(1))
    assert torch.allclose(stats[:, 0, 1], image.std(1))


def test_feature_groups_select_the_policy_input(task) -> None:
    batch = task.train_batch(5, task.generator(4))
    full = SDN(SDNConfig(num_layers=4, channels=4), task).eval()
    exit_only = SDN(SDNConfig(num_layers=4, channels=4, features=["exit"]), task).eval()
    exit_only.load_state_dict(full.state_dict())
    f_full, f_exit = full.trace(batch, task).features, exit_only.trace(batch, task).features
    assert f_exit.shape == (5, 4, 12) and torch.equal(f_exit, f_full[..., :12])
    assert SDN(SDNConfig(num_layers=4, features=["input"]), task).feature_shape == (3,)


@pytest.mark.parametrize("widen", [False, True])
def test_instances_at_different_exits_share_a_batch(task, widen) -> None:
    """``forward_step`` with mixed layers equals the layer-by-layer pass (fixed state shape)."""
    torch.manual_seed(0)
    sdn = SDN(SDNConfig(num_layers=6, channels=8, widen=widen), task).eval()
    batch = task.eval_set("val").select(slice(0, 6))
    states, preds, feats = [sdn.initial_state(batch.inputs)], [], []
    for t in range(sdn.num_layers):
        states.append(sdn.layer(t, states[-1], batch.inputs))
        preds.append(sdn.readout(t, states[-1], batch.inputs))
        feats.append(sdn.policy_features(t, states[-1], batch.inputs, preds[-1]))
    t = torch.arange(6)
    mixed = {k: torch.stack([states[i][k][i] for i in range(6)]) for k in states[0]}
    _, pred, feat = sdn.forward_step(t, mixed, batch.inputs)
    for k in range(6):
        assert torch.allclose(pred[k], preds[k][k], atol=1e-5)
        assert torch.allclose(feat[k], feats[k][k], atol=1e-5)


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
        ({"severities": [0.0, 1.5]}, "task.severities"),
        ({"severities": [0.5, 0.5]}, "task.severities"),
        ({"occlusion": 1.5}, "task.occlusion"),
        ({"noise": -0.1}, "task.noise"),
        ({"test_per_severity": 0}, "task.test_per_severity"),
        ({"_predictor": {"features": ["exit", "labels"]}}, "predictor.features"),
        ({"_predictor": {"features": []}}, "predictor.features"),
        ({"_predictor": {"pool_after": [0, 3]}}, "predictor.pool_after"),
    ],
)
def test_config_errors_name_the_key(task_params, key) -> None:
    task_params = dict(task_params)
    cfg = {
        "experiment": "x",
        "predictor": {"name": "sdn", **task_params.pop("_predictor", {})},
        "task": {"name": "recognition", **task_params},
    }
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(cfg)


def test_data_dir_errors_are_one_line(tmp_path) -> None:
    def build(folder: Path) -> None:
        RecognitionTask(RecognitionConfig(data_dir=str(folder), image_size=8, **SMALL))

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
    cfg = RecognitionConfig(data_dir=str(tmp_path), image_size=6, severities=[], **SMALL)
    task = RecognitionTask(cfg, seed=0)
    assert task.class_names == ["dark", "light"] and task.num_classes == 2
    test = task.eval_set("test")
    assert test.inputs["image"].shape == (6, 1, 6, 6) and task.group_names == ["all"]
    model = SDN(SDNConfig(num_layers=6, channels=4), task)
    features = model.trace(task.train_batch(3, task.generator(0)), task).features
    assert features.shape == (3, 6, 4 + 6 + 3)
    # The corruptions apply to a user's images too: 60 test images per severity from the
    # 6 test bases, the clean level equal to the bases.
    corrupted = RecognitionTask(dataclasses.replace(cfg, severities=[0.0, 1.0]), seed=0)
    test = corrupted.eval_set("test")
    assert test.inputs["image"].shape == (120, 1, 6, 6)
    assert corrupted.group_names == ["0", "1"]
    clean = test.inputs["image"][test.groups == 0].flatten(1)
    assert _cdist(clean, corrupted.data["test"][0].flatten(1)).min(dim=1).values.max() < 1e-4


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


def test_widened_sdn_doubles_channels_after_pooling(task) -> None:
    model = SDN(SDNConfig(num_layers=6, channels=4, widen=True), task)
    assert model.sides == [8, 4, 4, 2, 2, 2] and model.widths == [4, 4, 8, 8, 16, 16]
    assert model.initial_state(task.eval_set("val").inputs)["map"].shape[1:] == (16, 8, 8)
    narrow = SDN(SDNConfig(num_layers=6, channels=4), task)
    assert narrow.widths == [4] * 6 and narrow.channels == 4
    early = SDN(SDNConfig(num_layers=6, channels=4, pool_after=[1, 2]), task)
    assert early.sides == [4, 2, 2, 2, 2, 2]
