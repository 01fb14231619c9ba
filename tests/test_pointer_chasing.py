"""The pointer-chasing family: PointerChasingTask (chains of pointers) and the multi-exit
transformer (ExitTransformer)."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from runner_cases import random_policy

from l2s_gym.cli import main
from l2s_gym.config import ConfigError, from_dict
from l2s_gym.evaluation import threshold_sweep
from l2s_gym.predictors.exit_transformer import ExitTransformer, ExitTransformerConfig
from l2s_gym.rules import ReadoutRule, threshold_stop
from l2s_gym.runner import StopRunner
from l2s_gym.task import Batch
from l2s_gym.tasks.pointer_chasing import (
    IGNORE,
    PointerChasingConfig,
    PointerChasingTask,
    chase,
)
from l2s_gym.testing import check_carried_state, check_chunk_features, check_full_depth
from l2s_gym.training import stage1_loss

SMALL = {"min_nodes": 5, "max_nodes": 10, "max_hops": 7, "val_per_hops": 6, "test_per_hops": 8}

TINY = """
experiment: pointer_chasing_tiny
seed: 0
device: cpu
beta: 1.0
task: {name: pointer_chasing, min_nodes: 6, max_nodes: 8, max_hops: 3, val_per_hops: 20,
       test_per_hops: 20, group_width: 2}
predictor: {name: exit_transformer, num_layers: 4, d_model: 16, heads: 2}
stage1: {steps: 20, batch_size: 32, val_every: 10}
policy: {hidden: 8, depth: 1}
imitation: {steps: 10, batch_size: 32, val_every: 5}
compare: {learners: [reverse_kl]}
"""


@pytest.fixture(scope="module")
def task() -> PointerChasingTask:
    return PointerChasingTask(PointerChasingConfig(**SMALL), seed=0)


@pytest.fixture
def model(task: PointerChasingTask) -> ExitTransformer:
    torch.manual_seed(0)
    return ExitTransformer(ExitTransformerConfig(num_layers=5, d_model=16, heads=2), task).eval()


def test_eval_sets_are_fixed_per_seed_and_differ_across_seeds_and_splits(task) -> None:
    again = PointerChasingTask(PointerChasingConfig(**SMALL), seed=0)
    other = PointerChasingTask(PointerChasingConfig(**SMALL), seed=1)
    for split in ("val", "test"):
        a, b = task.eval_set(split), again.eval_set(split)
        for key in a.inputs:
            assert torch.equal(a.inputs[key], b.inputs[key])
        assert torch.equal(a.targets, b.targets) and torch.equal(a.groups, b.groups)
        assert not torch.equal(a.inputs["tokens"], other.eval_set(split).inputs["tokens"])
    assert task.fingerprint() == again.fingerprint() != other.fingerprint()
    val, test = task.eval_set("val"), task.eval_set("test")
    assert len(val) == 6 * 8 and len(test) == 8 * 8
    # The training stream is a function of its generator.
    x = task.train_batch(16, task.generator(3))
    y = task.train_batch(16, task.generator(3))
    z = task.train_batch(16, task.generator(4))
    assert torch.equal(x.inputs["tokens"], y.inputs["tokens"]) and torch.equal(x.targets, y.targets)
    assert not torch.equal(x.inputs["tokens"], z.inputs["tokens"])


def test_instances_are_chains_whose_depth_varies(task) -> None:
    batch = task.eval_set("test")
    tokens, mask = batch.inputs["tokens"], batch.inputs["mask"]
    n = task.max_nodes
    # Real nodes first, padding after; lengths as the mask says, in [min_nodes, max_nodes].
    assert torch.equal(batch.inputs["length"], mask.sum(1).float())
    assert torch.equal(mask, torch.arange(n) < mask.sum(1, keepdim=True))
    assert int(mask.sum(1).min()) >= 5 and int(mask.sum(1).max()) <= n
    assert ((tokens == task.pad_symbol) == ~mask).all()
    # Pointers point at real nodes; every real node is pointed to at most once (chains).
    pointers = torch.where(mask & (tokens < n), tokens, -1)
    assert (pointers < mask.sum(1, keepdim=True)).all()
    for row in pointers:
        real = row[row >= 0]
        assert len(real.unique()) == len(real)
    # The targets are what following the pointers gives; padding is ignored.
    depth, bit = chase(tokens, mask, n)
    assert torch.equal(bit, batch.targets) and ((batch.targets == IGNORE) == ~mask).all()
    # The difficulty: the longest chain's hops, every value 0..max_hops equally often.
    hops = task.hops_of(batch)
    assert torch.equal(hops, depth.amax(1))
    assert torch.equal(torch.bincount(hops), torch.full((8,), 8))
    assert torch.equal(batch.groups, hops // 4) and task.group_names == ["0-3", "4-7"]
    # No chain is longer than the first (the one of H hops): H is the deepest node.
    train = task.train_batch(64, task.generator(0))
    assert len(set(task.hops_of(train).tolist())) >= 6


def test_loss_and_metric_ignore_padding(task) -> None:
    targets = torch.tensor([[0, 1, 1, IGNORE], [1, 1, IGNORE, IGNORE]])
    right = torch.nn.functional.one_hot(targets.clamp(min=0), 2).float() * 20.0
    assert task.loss(right, targets).max() < 1e-6
    wrong = right.clone()
    wrong[0, 0] = wrong[0, 0].flip(0)
    wrong[:, -1] = torch.tensor([20.0, -20.0])  # padding: never counted
    assert task.metric_stat(wrong, targets).tolist() == pytest.approx([200 / 3, 100.0])
    loss = task.loss(wrong, targets)  # one node of three off by 20 nats; padding free
    assert loss[1] < 1e-6 and float(loss[0]) == pytest.approx(20 / 3, rel=1e-4)


def test_trace_features_and_extras(task, model) -> None:
    batch = task.eval_set("val").select(slice(0, 12))
    trace = model.trace(batch, task, keep_predictions=True)
    assert trace.losses.shape == (12, 5) and trace.features.shape == (12, 5, 6 + 6 + 2)
    assert torch.isfinite(trace.features).all()
    mask = batch.inputs["mask"]
    probs = torch.stack([torch.softmax(p, -1) for p in trace.predictions], dim=1)
    top = probs.amax(-1).masked_fill(~mask.unsqueeze(1), 1.0)
    assert torch.allclose(trace.extras["confidence"], top.amin(-1))
    assert torch.allclose(trace.features[..., 0], top.amin(-1))
    # PABEE's counter, brute force: consecutive earlier exits labelling every node alike.
    labels = probs.argmax(-1)
    run = torch.zeros(12, 5)
    for t in range(1, 5):
        same = ((labels[:, t] == labels[:, t - 1]) | ~mask).all(1)
        run[:, t] = torch.where(same, run[:, t - 1] + 1, 0)
    assert torch.equal(trace.extras["change"], 1 / (1 + run))
    assert torch.allclose(trace.features[..., 7], run.clamp(max=3) / 3)
    # Input features: the length over N, then (t + 1) / T.
    assert torch.allclose(trace.features[:, 0, 12], batch.inputs["length"] / 10)
    assert torch.allclose(trace.features[0, :, 13], torch.arange(1, 6) / 5)
    hidden = ExitTransformer(
        ExitTransformerConfig(num_layers=5, d_model=16, heads=2, features=["hidden"]), task
    )
    assert hidden.feature_shape == (16,)


def test_padding_is_masked(task, model) -> None:
    """What sits at padded positions changes nothing at the real ones."""
    batch = task.eval_set("val").select(slice(0, 16))
    mask = batch.inputs["mask"]
    assert (~mask).any()
    noisy = dict(batch.inputs)
    noise = torch.randint(
        0, task.vocab_size, mask.shape, generator=torch.Generator().manual_seed(0)
    )
    noisy["tokens"] = torch.where(mask, batch.inputs["tokens"], noise)
    a = model.trace(batch, task, keep_predictions=True)
    b = model.trace(Batch(noisy, batch.targets, batch.groups), task, keep_predictions=True)
    for pa, pb in zip(a.predictions, b.predictions, strict=True):
        torch.testing.assert_close(pa[mask], pb[mask], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.features, b.features, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.losses, b.losses, rtol=1e-5, atol=1e-5)


def test_protocol_checks(task, model) -> None:
    inputs = task.eval_set("test").select(slice(0, 9)).inputs
    check_full_depth(model, inputs)
    check_carried_state(model, inputs)
    check_chunk_features(model, inputs)
    shared = ExitTransformer(
        ExitTransformerConfig(num_layers=4, d_model=16, heads=2, shared_blocks=True,
                              shared_head=False, tied_pointers=False),
        task,
    )  # fmt: skip
    assert len(shared.blocks) == 1 and len(shared.exit_heads) == 4
    check_full_depth(shared, inputs)


def test_instances_at_different_layers_share_a_batch(task, model) -> None:
    batch = task.eval_set("val").select(slice(0, 5))
    states, preds, feats = [model.initial_state(batch.inputs)], [], []
    for t in range(model.num_layers):
        states.append(model.layer(t, states[-1], batch.inputs))
        preds.append(model.readout(t, states[-1], batch.inputs))
        feats.append(model.policy_features(t, states[-1], batch.inputs, preds[-1]))
    t = torch.arange(5)
    mixed = {k: torch.stack([states[i][k][i] for i in range(5)]) for k in states[0]}
    _, pred, feat = model.forward_step(t, mixed, batch.inputs)
    for k in range(5):
        torch.testing.assert_close(pred[k], preds[k][k], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(feat[k], feats[k][k], rtol=1e-5, atol=1e-5)


RULES = [ReadoutRule("threshold", 0.5), ReadoutRule("quantile", 0.5), ReadoutRule("quantile", 0.8)]


def test_runner_with_compaction_equals_the_trace(task, model) -> None:
    """StopRunner drops the rows that stop (hidden states, logits and the padding masks of
    instances of different lengths alike): its stops and predictions are the trace's."""
    batch = task.eval_set("test").select(slice(0, 48))
    assert len(set(batch.inputs["length"].tolist())) > 3
    with torch.no_grad():
        trace = model.trace(batch, task, keep_predictions=True)
    policy = random_policy(model, trace.features, seed=1)
    with torch.no_grad():
        logits = policy.trace_logits(trace.features)
    expected_all = torch.stack(trace.predictions, 1)
    seen: set[int] = set()
    for rule in RULES:
        stop = rule.stop(logits)
        assert len(set(stop.tolist())) >= 2, rule  # rows leave before the end: compaction
        seen |= set(stop.tolist())
        out = StopRunner(model, policy, rule)(batch)
        assert torch.equal(out.stop, stop), rule
        expected = expected_all[torch.arange(48), stop]
        torch.testing.assert_close(out.predictions, expected, rtol=1e-5, atol=1e-5)
        for k in (2, 3):
            assert torch.equal(StopRunner(model, policy, rule, lookahead=k)(batch).stop, stop)
    assert len(seen) >= 3


def test_baselines_are_chosen_on_validation(task, model) -> None:
    """The confidence threshold and PABEE's patience (the ``change`` extra) pick their
    threshold by the validation metric; patience k stops where k exits agreed."""
    val = model.trace_eval(task.eval_set("val"), task)
    test = model.trace_eval(task.eval_set("test"), task)
    for key in ("confidence", "change"):
        row, curve = threshold_sweep(task, val, test, key)
        scores = {tau: float(val.metric_stats.gather(1, threshold_stop(val, key, tau).unsqueeze(1)).mean()) for tau in curve["threshold"]}  # fmt: skip
        assert scores[row["threshold"]] == max(scores.values())
        assert "chosen on validation" in row["method"]
    run = (1 / test.extras["change"] - 1).round()
    for k in (1, 2, 3):
        ready = run >= k
        ready[:, -1] = True
        pabee = ready.to(torch.int8).argmax(1)
        assert torch.equal(threshold_stop(test, "change", 1 / (1 + k)), pabee)


def test_oracle_stage1_loss_falls(task) -> None:
    torch.manual_seed(0)
    model = ExitTransformer(ExitTransformerConfig(num_layers=3, d_model=16, heads=2), task)
    gen, val = task.generator(11), task.eval_set("val")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def held_out() -> float:
        return float(stage1_loss(model.trace_eval(val, task).losses, "oracle", 1.0))

    before = held_out()
    for _ in range(30):
        loss = stage1_loss(model.trace(task.train_batch(32, gen), task).losses, "oracle", 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert held_out() < before - 0.05


@pytest.mark.parametrize(
    "params, key",
    [
        ({"min_nodes": 1}, "task.min_nodes"),
        ({"min_nodes": 9, "max_nodes": 8}, "task.max_nodes"),
        ({"max_hops": 16}, "task.max_hops"),
        ({"group_width": 0}, "task.group_width"),
        ({"_predictor": {"d_model": 30, "heads": 4}}, "predictor.heads"),
        ({"_predictor": {"features": ["exit", "labels"]}}, "predictor.features"),
    ],
)
def test_config_errors_name_the_key(params, key) -> None:
    params = dict(params)
    cfg = {
        "experiment": "x",
        "predictor": {"name": "exit_transformer", **params.pop("_predictor", {})},
        "task": {"name": "pointer_chasing", **params},
    }
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        from_dict(cfg)


def test_compare_end_to_end(tmp_path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(textwrap.dedent(TINY))
    runs = tmp_path / "runs"
    assert main(["compare", str(path), "--runs", str(runs), "--no-progress", "--threads", "1"]) == 0
    (results,) = [p for p in runs.glob("pointer_chasing_tiny/*/results.json") if p.parent.name != "latest"]  # fmt: skip
    data = json.loads(results.read_text())
    methods = [r["method"] for r in data["rows"]]
    assert "Transformer (T=4)" in methods and "Transformer-stop (reverse KL)" in methods
    assert any(m.startswith("confidence threshold") for m in methods)
    assert any(m.startswith("convergence threshold") for m in methods)  # PABEE's patience
    assert all(0 <= r["metric"] <= 100 for r in data["rows"])
    assert np.isfinite([r["avg_layers"] for r in data["rows"]]).all()


def test_env_id_passes_the_checker() -> None:
    import gymnasium
    from gymnasium.utils.env_checker import check_env

    import l2s_gym.envs  # noqa: F401  (registers the ids)

    env = gymnasium.make(
        "l2s/PointerChasing-v1",
        predictor_config={"num_layers": 4, "d_model": 16, "heads": 2},
        device="cpu",
    )
    check_env(env.unwrapped)
