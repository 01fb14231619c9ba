from __future__ import annotations

from pathlib import Path

import pytest
import torch

from l2s_gym.config import ConfigError, Stage1Config
from l2s_gym.predictor import map_state
from l2s_gym.predictors.lista import FISTA, ISTA, LISTA, IterativeConfig, ListaConfig
from l2s_gym.runs import TrainingDiverged
from l2s_gym.tasks.sparse_recovery import SparseRecoveryConfig, SparseRecoveryTask
from l2s_gym.training import train_predictor


@pytest.fixture
def task() -> SparseRecoveryTask:
    return SparseRecoveryTask(SparseRecoveryConfig(m=20, n=40, val_size=64, test_size_per_snr=50))


def test_matrix_and_data(task):
    torch.testing.assert_close(task.A.norm(dim=0), torch.ones(40))
    test = task.eval_set("test")
    assert len(test) == 150 and torch.bincount(test.groups).tolist() == [50, 50, 50]
    assert test.inputs["y"].shape == (150, 20) and test.targets.shape == (150, 40)
    big = task.train_batch(6000, task.generator(5))
    clean = big.targets @ task.A.T
    noise = big.inputs["y"] - clean
    for g, snr in enumerate(task.cfg.snr_db):
        m = (big.groups == g) & (clean.pow(2).sum(1) > 0)
        measured = 10 * torch.log10(clean[m].pow(2).sum(1) / noise[m].pow(2).sum(1))
        assert abs(float(measured.median()) - snr) < 0.5
    assert abs(float((big.targets != 0).float().mean()) - 0.1) < 0.01
    # Seeded: a second task with the same seed builds the same sets.
    again = SparseRecoveryTask(task.cfg)
    torch.testing.assert_close(again.eval_set("val").inputs["y"], task.eval_set("val").inputs["y"])


def test_per_instance_sparsity():
    """``p_max``: each instance draws its sparsity from [p, p_max]; the loss divides by the
    mean energy n (p + p_max) / 2; off (0) leaves the draws as they were."""
    cfg = SparseRecoveryConfig(m=20, n=400, p=0.02, p_max=0.2)
    mixed = SparseRecoveryTask(cfg)
    x = mixed.train_batch(4000, mixed.generator(5)).targets
    rate = (x != 0).float().mean(1)
    # Bernoulli(0.11) alone would give a per-instance spread of about 0.016.
    assert abs(float(rate.mean()) - 0.11) < 0.005 and float(rate.std()) > 0.045
    assert 0.0 < float(rate.min()) < 0.04 and 0.17 < float(rate.max()) < 0.24
    zeros = torch.zeros_like(x)
    assert float(mixed.loss(zeros, x).mean()) == pytest.approx(1.0, rel=0.02)
    plain = SparseRecoveryTask(SparseRecoveryConfig(m=20, n=400, p=0.02))
    again = SparseRecoveryTask(SparseRecoveryConfig(m=20, n=400, p=0.02, p_max=0.0))
    torch.testing.assert_close(
        plain.eval_set("val").targets, again.eval_set("val").targets, rtol=0, atol=0
    )
    for bad in (0.01, 1.5):
        with pytest.raises(ConfigError, match="task.p_max: must be 0 .off. or in"):
            SparseRecoveryConfig(p=0.02, p_max=bad).validate("task")


def test_condition_number_is_imposed():
    cfg = SparseRecoveryConfig(m=30, n=60, condition_number=5.0)
    t = SparseRecoveryTask(cfg)
    assert 3.0 < t.kappa < 8.0
    assert SparseRecoveryTask(SparseRecoveryConfig(m=30, n=60)).kappa != pytest.approx(t.kappa)


def test_lista_starts_as_ista_and_classics_converge(task):
    batch = task.eval_set("val")
    ista = ISTA(IterativeConfig(num_layers=6), task).trace_eval(batch, task)
    for weights in ("full", "coupled"):
        lista = LISTA(ListaConfig(num_layers=6, weights=weights), task).trace_eval(batch, task)
        torch.testing.assert_close(lista.losses, ista.losses, rtol=1e-4, atol=1e-6)
    long_ista = ISTA(IterativeConfig(num_layers=60), task).trace_eval(batch, task)
    fista = FISTA(IterativeConfig(num_layers=60), task).trace_eval(batch, task)
    assert long_ista.losses.mean(0)[-1] < long_ista.losses.mean(0)[5]
    assert fista.losses.mean(0)[-1] < long_ista.losses.mean(0)[-1]
    assert ista.features.shape == (64, 6, 5) and torch.isfinite(ista.features).all()
    assert "change" in ista.extras


def test_forward_step_with_mixed_layers_matches_layerwise(task):
    torch.manual_seed(0)
    lista = LISTA(ListaConfig(num_layers=5), task)
    with torch.no_grad():
        lista.theta.add_(torch.rand(5) * 0.01)
    batch = task.eval_set("val").select(slice(0, 12))
    t = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4, 2])
    # Reference: walk each instance to its layer t alone.
    state = lista.initial_state(batch.inputs)
    states = [state]
    for k in range(5):
        state = lista.layer(k, state, batch.inputs)
        states.append(state)
    mixed = {key: torch.stack([states[int(t[i])][key][i] for i in range(12)]) for key in state}
    new, pred, feats = lista.forward_step(t, mixed, batch.inputs)
    for i in range(12):
        expect = states[int(t[i]) + 1]
        torch.testing.assert_close(new["x"][i], expect["x"][i])
        torch.testing.assert_close(pred[i], expect["x"][i])
    assert feats.shape == (12, 5)
    assert map_state(lambda x: x, new).keys() == new.keys()


def test_stage1_oracle_training_lowers_loss_and_keeps_checkpoints(task, tmp_path: Path):
    torch.manual_seed(0)
    lista = LISTA(ListaConfig(num_layers=4, weights="coupled"), task)
    cfg = Stage1Config(steps=40, batch_size=64, lr=3e-3, val_every=20)
    result = train_predictor(lista, task, cfg, "oracle", 0.01, tmp_path, progress=False)
    first, last = result.history[0]["val_loss"], result.history[-1]["val_loss"]
    assert last < 0.9 * first
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_stage1_beta_anneal_schedule_and_validation_at_beta(task, tmp_path: Path, monkeypatch):
    """stage1.beta_anneal_from: training steps start at beta * from and fall geometrically to
    beta over anneal_fraction of the steps; validation (the checkpoint criterion) uses beta."""
    import l2s_gym.training as training

    seen: list[tuple[bool, float]] = []
    original = training.stage1_loss

    def recording(losses, mode, beta, *rest):
        seen.append((torch.is_grad_enabled(), beta))
        return original(losses, mode, beta, *rest)

    monkeypatch.setattr(training, "stage1_loss", recording)
    torch.manual_seed(0)
    lista = LISTA(ListaConfig(num_layers=3), task)
    cfg = Stage1Config(
        steps=10, batch_size=16, val_every=5, beta_anneal_from=100.0, anneal_fraction=0.5
    )
    train_predictor(lista, task, cfg, "oracle", 0.01, tmp_path, progress=False)
    train = [b for grad, b in seen if grad]
    val = [b for grad, b in seen if not grad]
    assert len(train) == 10 and len(val) == 3
    assert val == [0.01] * 3
    # step s (1-based) is at progress (s - 1) / 10: 0.01 * 100 ** (1 - progress / 0.5)
    expect = [0.01 * 100 ** (1 - min(1.0, (s - 1) / 10 / 0.5)) for s in range(1, 11)]
    assert train == pytest.approx(expect)
    assert train[0] == pytest.approx(1.0) and train[5:] == [0.01] * 5
    # Off by default: every step at beta.
    seen.clear()
    train_predictor(
        lista,
        task,
        Stage1Config(steps=4, batch_size=16, val_every=4),
        "oracle",
        0.01,
        tmp_path / "off",
        progress=False,
    )
    assert [b for _, b in seen] == [0.01] * 6


def test_stage1_last_layer_weight(task, tmp_path: Path, monkeypatch):
    """stage1.last_layer_weight adds w * mean l_T to the oracle's soft-min (training and
    validation), leaves the other losses alone, is off by default, and must be >= 0."""
    import l2s_gym.training as training
    from l2s_gym.stopping import oracle_stage_loss

    losses = torch.tensor([[3.0, 1.0, 2.0], [0.5, 2.5, 4.0]])
    soft_min = oracle_stage_loss(losses, 0.3).mean()
    got = training.stage1_loss(losses, "oracle", 0.3, 0.25)
    assert float(got) == pytest.approx(float(soft_min) + 0.25 * 3.0)
    assert float(training.stage1_loss(losses, "oracle", 0.3)) == pytest.approx(float(soft_min))
    assert float(training.stage1_loss(losses, "last", 0.3, 0.25)) == pytest.approx(3.0)
    assert float(training.stage1_loss(losses, "mean", 0.3, 0.25)) == pytest.approx(13.0 / 6)

    weights: list[float] = []
    original = training.stage1_loss

    def recording(losses, mode, beta, last_weight=0.0):
        weights.append(last_weight)
        return original(losses, mode, beta, last_weight)

    monkeypatch.setattr(training, "stage1_loss", recording)
    lista = LISTA(ListaConfig(num_layers=3), task)
    cfg = Stage1Config(steps=4, batch_size=16, val_every=2, last_layer_weight=0.5)
    train_predictor(lista, task, cfg, "oracle", 0.01, tmp_path, progress=False)
    assert weights == [0.5] * 7  # 4 training steps, 3 validations (start, 2, 4)
    with pytest.raises(ConfigError, match="stage1.last_layer_weight: must be >= 0"):
        Stage1Config(last_layer_weight=-1.0).validate("stage1")


def test_nan_loss_stops_with_message_and_keeps_last_good(task, tmp_path: Path):
    lista = LISTA(ListaConfig(num_layers=3), task)
    cfg = Stage1Config(steps=30, batch_size=32, lr=1e-3, val_every=5)
    calls = {"n": 0}
    original = task.loss

    def poisoned(pred, target):
        calls["n"] += 1
        out = original(pred, target)
        return out * float("nan") if calls["n"] > 60 else out

    task.loss = poisoned  # type: ignore[method-assign]
    with pytest.raises(TrainingDiverged, match="last good checkpoint kept at"):
        train_predictor(lista, task, cfg, "last", 0.01, tmp_path, progress=False)
    assert (tmp_path / "best.pt").is_file()
    state = torch.load(tmp_path / "best.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())
