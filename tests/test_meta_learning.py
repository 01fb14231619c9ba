"""Task-imbalanced meta learning: the sinusoid task, MAML as a layered predictor, MAML-stop."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from l2s_gym.compare import run_compare
from l2s_gym.config import ConfigError, from_dict
from l2s_gym.predictors.maml import MAML, MamlConfig, masked_mse
from l2s_gym.tasks.meta_learning import MetaLearningConfig, MetaLearningTask, k_buckets
from l2s_gym.training import stage1_loss

TINY_TASK = {"val_size": 64, "test_tasks_per_k": 8, "query_size": 8}


def tiny(**task_kw: object) -> tuple[MetaLearningTask, MAML]:
    torch.manual_seed(0)
    task = MetaLearningTask(MetaLearningConfig(**{**TINY_TASK, **task_kw}), seed=0)
    return task, MAML(MamlConfig(num_layers=4, hidden=[16, 16]), task)


def test_batch_and_trace_shapes() -> None:
    task, model = tiny(k_min=2, k_max=6, pool_size=8)
    batch = task.train_batch(5, task.generator(3))
    inp = batch.inputs
    assert inp["support_x"].shape == (5, 8, 1) and inp["support_y"].shape == (5, 8, 1)
    assert inp["support_mask"].shape == (5, 8) and inp["query_x"].shape == (5, 8, 1)
    assert batch.targets.shape == (5, 8)
    # The mask holds exactly K ones, at the front, and the padding carries no data.
    assert torch.equal(inp["support_mask"].sum(1).long(), inp["k"])
    assert bool((inp["k"] >= 2).all() and (inp["k"] <= 6).all())
    pad = inp["support_mask"] == 0
    assert bool((inp["support_y"].squeeze(-1)[pad] == 0).all())
    trace = model.trace(batch, task)
    assert trace.losses.shape == (5, 4) and trace.metric_stats.shape == (5, 4)
    assert trace.features.shape == (5, 4, *model.feature_shape)
    assert trace.extras["change"].shape == (5, 4)
    assert bool(torch.isfinite(trace.features).all())
    assert trace.losses.requires_grad  # stage 1 differentiates through the inner steps


def test_lean_features_are_the_full_ones_a_step_behind() -> None:
    task = MetaLearningTask(MetaLearningConfig(**TINY_TASK), seed=0)
    torch.manual_seed(0)
    full = MAML(MamlConfig(num_layers=4, hidden=[16, 16]), task)
    lean = MAML(MamlConfig(num_layers=4, hidden=[16, 16], features="lean"), task)
    lean.load_state_dict(full.state_dict())
    batch = task.eval_set("test")
    with torch.no_grad():
        tf, tl = full.trace(batch, task), lean.trace(batch, task)
    # The same model: the same losses and metric at every step.
    torch.testing.assert_close(tl.losses, tf.losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tl.metric_stats, tf.metric_stats, rtol=1e-5, atol=1e-6)
    assert lean.feature_shape == (11,) and tl.features.shape[-1] == 11
    # Lean's support loss at step t is the full set's after step t - 1 (the same weights),
    # and the initial loss at step 0; its query-free columns are the full set's.
    f, g = tf.features, tl.features
    torch.testing.assert_close(g[:, 1:, 0], f[:, :-1, 0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g[:, 1:, 2], f[:, :-1, 2], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(g[:, 0, 2], torch.zeros_like(g[:, 0, 2]), rtol=0, atol=1e-6)
    # K/k_max, t/T, mean, std, update size, log K, noise (lean has no query shift, column 8)
    assert torch.equal(g[..., [3, 4, 5, 6, 7, 8, 9]], f[..., [3, 4, 5, 6, 7, 9, 10]])
    with pytest.raises(ConfigError, match="predictor.features: expected 'full' or 'lean'"):
        from_dict(
            {"task": {"name": "meta_learning"}, "predictor": {"name": "maml", "features": "x"}}
        )


def test_groups_are_k_buckets_and_test_set_is_balanced() -> None:
    assert k_buckets(1, 10) == [(1, 3), (4, 6), (7, 10)]
    assert k_buckets(5, 5) == [(5, 5)]
    task, _ = tiny()
    assert task.group_names == ["K=1-3", "K=4-6", "K=7-10"]
    test = task.eval_set("test")
    assert torch.equal(torch.bincount(test.inputs["k"])[1:], torch.full((10,), 8))
    k, g = test.inputs["k"], test.groups
    assert bool(((k <= 3) == (g == 0)).all() and ((k >= 7) == (g == 2)).all())
    # Seeded: a second task object builds the same evaluation sets.
    again, _ = tiny()
    assert torch.equal(again.eval_set("val").targets, task.eval_set("val").targets)
    assert not torch.equal(task.eval_set("val").targets[:8], test.targets[:8])


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 10), lr=st.floats(1e-3, 0.1))
def test_inner_step_is_one_sgd_step_on_the_masked_support_loss(
    seed: int, k: int, lr: float
) -> None:
    """Layer 1 equals a hand-computed SGD step (torch.autograd on an nn.Module) per task."""
    torch.manual_seed(seed)
    task = MetaLearningTask(MetaLearningConfig(**TINY_TASK), seed=seed)
    cfg = MamlConfig(num_layers=2, hidden=[8, 8], inner_lr=lr, inner_grad_clip=0.0)
    model = MAML(cfg, task)
    batch = task.train_batch(3, task.generator(1))
    batch.inputs["k"][:] = k
    batch.inputs["support_mask"] = (torch.arange(10) < k).float().expand(3, 10).clone()
    state = model.layer(0, model.initial_state(batch.inputs), batch.inputs)
    for i in range(3):
        net = model.net
        x, y = batch.inputs["support_x"][i, :k], batch.inputs["support_y"][i, :k]
        loss = (net(x) - y).pow(2).mean()
        grads = torch.autograd.grad(loss, list(net.parameters()))
        for (name, p), g in zip(net.named_parameters(), grads, strict=True):
            torch.testing.assert_close(state[name][i], p - lr * g, rtol=1e-4, atol=1e-6)
        # The read-out is the adapted network's query prediction.
        stepped = {n: p - lr * g for (n, p), g in zip(net.named_parameters(), grads, strict=True)}
        query = torch.func.functional_call(net, stepped, (batch.inputs["query_x"][i],))
        torch.testing.assert_close(
            model.readout(0, state, batch.inputs)[i], query.squeeze(-1), rtol=1e-4, atol=1e-5
        )


def test_inner_steps_are_second_order() -> None:
    """The meta-gradient includes the Hessian term (create_graph semantics), unless FOMAML."""
    task, _ = tiny()
    batch = task.train_batch(4, task.generator(2))
    grads = {}
    for first_order in (False, True):
        torch.manual_seed(0)
        cfg = MamlConfig(num_layers=2, hidden=[8], first_order=first_order, inner_lr=0.1)
        model = MAML(cfg, task)
        model.trace(batch, task).losses[:, -1].sum().backward()
        grads[first_order] = model.net[0].weight.grad.clone()
    # Reference second-order gradient by plain autograd with create_graph=True.
    torch.manual_seed(0)
    ref = MAML(MamlConfig(num_layers=2, hidden=[8], inner_lr=0.1), task)
    w0 = list(ref.net.parameters())
    total = 0.0
    for i in range(4):
        w = w0
        m = batch.inputs["support_mask"][i]
        for _ in range(2):
            params = dict(zip([n for n, _ in ref.net.named_parameters()], w, strict=True))
            pred = torch.func.functional_call(ref.net, params, (batch.inputs["support_x"][i],))
            loss = masked_mse(pred, batch.inputs["support_y"][i], m)
            g = torch.autograd.grad(loss, w, create_graph=True)
            w = [p - 0.1 * gi for p, gi in zip(w, g, strict=True)]
        params = dict(zip([n for n, _ in ref.net.named_parameters()], w, strict=True))
        q = torch.func.functional_call(ref.net, params, (batch.inputs["query_x"][i],))
        total = total + (q.squeeze(-1) - batch.targets[i]).pow(2).mean()
    (ref_grad,) = torch.autograd.grad(total, [ref.net[0].weight])
    torch.testing.assert_close(grads[False], ref_grad, rtol=1e-3, atol=1e-5)
    assert not torch.allclose(grads[True], ref_grad, rtol=1e-3, atol=1e-5)


def test_oracle_stage1_loss_falls() -> None:
    task, model = tiny()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = task.generator(7)
    fixed = task.train_batch(64, task.generator(99))
    with torch.no_grad():
        before = float(stage1_loss(model.trace(fixed, task).losses, "oracle", 0.05))
    for _ in range(40):
        loss = stage1_loss(model.trace(task.train_batch(32, gen), task).losses, "oracle", 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(stage1_loss(model.trace(fixed, task).losses, "oracle", 0.05))
    assert after < 0.8 * before, (before, after)


def test_metric_interval_brackets_the_mean() -> None:
    task, _ = tiny()
    stats = torch.tensor([1.0, 2.0, 3.0, 4.0])
    lo, hi = task.metric_interval(stats)
    assert lo < 2.5 < hi
    assert hi - 2.5 == pytest.approx(1.96 * stats.std().item() / 2)


def _config(**task_kw: object) -> dict:
    return {
        "experiment": "meta_tiny",
        "device": "cpu",
        "beta": 0.05,
        "task": {"name": "meta_learning", **TINY_TASK, **task_kw},
        "predictor": {"name": "maml", "num_layers": 3, "hidden": [8, 8]},
        "stage1": {"steps": 4, "batch_size": 16, "val_every": 2},
        "imitation": {"steps": 4, "batch_size": 16, "val_every": 2},
        "compare": {"learners": ["reverse_kl"]},
    }


@pytest.mark.parametrize(
    ("task_kw", "key"),
    [
        ({"k_min": 6, "k_max": 5}, "task.k_min"),
        ({"k_max": 12, "pool_size": 10}, "task.k_max"),
        ({"k_min": 0}, "task.k_min"),
        ({"amplitude": [5.0, 0.1]}, "task.amplitude"),
    ],
)
def test_bad_k_range_is_one_line_naming_the_key(task_kw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        from_dict(_config(**task_kw))
    msg = str(err.value)
    assert msg.startswith(key + ":") and "\n" not in msg


def test_compare_runs_end_to_end(tmp_path) -> None:  # noqa: ANN001
    exp = run_compare(from_dict(_config()), tmp_path, progress=False, log=lambda *a: None)
    results = json.loads((exp / "results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert any(m.startswith("MAML-stop (reverse KL)") for m in methods)
    assert any("best fixed depth" in m for m in methods)
    assert results["group_names"] == ["K=1-3", "K=4-6", "K=7-10"]
    for row in results["rows"]:
        if "ci95" in row:
            lo, hi = row["ci95"]
            assert lo <= row["metric"] <= hi
    assert sum("ci95" in r for r in results["rows"]) >= 4
    assert (exp / "metric_vs_layers.png").is_file()


@pytest.mark.slow
def test_compare_runs_every_learner(tmp_path) -> None:  # noqa: ANN001
    """All five learners, RL included, on the tiny config (deselected by default)."""
    cfg = _config()
    cfg["compare"]["learners"] = ["reverse_kl", "forward_kl", "reinforce", "ppo", "a2c"]
    cfg["compare"]["layer_budget"] = 4000
    cfg["rl"] = {
        "num_envs": 32,
        "rollout_steps": 8,
        "ppo": {"n_steps": 8},
        "val_every": 2,
    }
    exp = run_compare(from_dict(cfg), tmp_path, progress=False, log=lambda *a: None)
    rows = json.loads((exp / "results.json").read_text())["rows"]
    learners = {r.get("learner") for r in rows if r["kind"] == "learner"}
    assert learners == {"reverse_kl", "forward_kl", "reinforce", "ppo", "a2c"}
