"""What the runner relies on: StopPolicy.layer_logits / chunk_logits and the predictors' fast paths and their checks."""

from __future__ import annotations

import pytest
import torch
from runner_cases import CASES, _meta, _randomise_batchnorm, _sparse, build_case
from torch import Tensor, nn

from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.predictors.dncnn import DnCNN, DnCNNConfig
from l2s_gym.predictors.lista import FISTA, ISTA, LISTA, IterativeConfig, ListaConfig
from l2s_gym.predictors.sdn import SDN, SDNConfig
from l2s_gym.task import Batch, Task
from l2s_gym.tasks.denoising import DenoisingConfig, DenoisingTask
from l2s_gym.tasks.recognition import RecognitionConfig, RecognitionTask
from l2s_gym.tasks.sparse_recovery import SparseRecoveryConfig, SparseRecoveryTask


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> tuple[Task, LayeredPredictor, Batch, StopPolicy]:
    return build_case(request.param)


# --- what the runner relies on: the cached policy path and the predictors' fast paths -----
@pytest.mark.parametrize("image", [False, True])
@pytest.mark.parametrize("depth", [0, 1, 3])
def test_layer_logits_are_forward(image: bool, depth: int) -> None:
    """The runner's folded MLP (per-layer bias, tanh as a sigmoid) is forward's function."""
    torch.manual_seed(0)
    T = 12
    if image:
        from l2s_gym.predictors.dncnn import ImageEncoder

        # DnCNN's encoder: a flat vector of a (3, 8, 8) image and 6 statistics.
        dim = 3 * 8 * 8 + 6
        encoder = ImageEncoder((3, 8, 8), 6, 4)
        policy = StopPolicy((dim,), T, hidden=16, depth=depth, encoder=encoder)
        features = torch.randn(37, dim)
    else:
        policy = StopPolicy((5,), T, hidden=32, depth=depth)
        features = 3 * torch.randn(37, 5)
    nn.init.normal_(policy.head.weight)
    policy.eval()
    with torch.inference_mode():
        for t in range(T):
            full = policy(features, torch.full((37,), t, dtype=torch.long))
            torch.testing.assert_close(policy.layer_logits(features, t), full, rtol=1e-5, atol=1e-5)


def test_layer_logits_follow_parameter_changes() -> None:
    """The folded weights are cached, and rebuilt after an optimiser step or a load."""
    torch.manual_seed(0)
    policy = StopPolicy((5,), 6, hidden=8)
    features = torch.randn(9, 5)
    t = torch.full((9,), 2, dtype=torch.long)
    optim = torch.optim.SGD(policy.parameters(), lr=0.5)
    for _ in range(2):
        with torch.inference_mode():
            torch.testing.assert_close(policy.layer_logits(features, 2), policy(features, t))
        optim.zero_grad()
        policy(features, t).pow(2).sum().backward()
        optim.step()
    other = StopPolicy((5,), 6, hidden=8)
    policy.load_state_dict(other.state_dict())
    with torch.inference_mode():
        torch.testing.assert_close(policy.layer_logits(features, 2), other(features, t))


def test_layer_logits_with_gradients_reach_the_weights() -> None:
    """Outside inference the exact, differentiable path runs (even after the fast one)."""
    torch.manual_seed(0)
    policy = StopPolicy((5,), 6, hidden=8)
    features = torch.randn(9, 5)
    with torch.inference_mode():
        fast = policy.layer_logits(features, 2)
    logits = policy.layer_logits(features, 2)
    torch.testing.assert_close(logits, fast)
    logits.sum().backward()
    assert policy.head.weight.grad is not None and policy.head.weight.grad.abs().sum() > 0
    with torch.no_grad():  # and the fast path's cache works outside inference mode too
        torch.testing.assert_close(policy.layer_logits(features, 2), fast)


def test_layer_logits_of_another_body_run_module_by_module() -> None:
    """A body that is not the Linear/Tanh stack (a subclass's) is not folded."""
    torch.manual_seed(0)
    policy = StopPolicy((5,), 6, hidden=8)
    policy.body[1] = nn.ReLU()
    features = torch.randn(9, 5)
    with torch.inference_mode():
        t = torch.full((9,), 4, dtype=torch.long)
        assert torch.equal(policy.layer_logits(features, 4), policy(features, t))
        chunk = policy.chunk_logits(features.unsqueeze(1).expand(9, 2, 5), 4)
        torch.testing.assert_close(chunk[:, 0], policy(features, t))


def _old_lista_cp_layer(model: LISTA, t: int, x: Tensor, y: Tensor) -> Tensor:
    """LISTA-CP's layer as it was before the residual was carried in the state."""
    from l2s_gym.predictors.lista import soft_threshold

    return soft_threshold(x + (y - x @ model.A.T) @ model.W[t], model.theta[t])


def _old_sparse_features(model: LayeredPredictor, x: Tensor, dx: Tensor, y: Tensor) -> Tensor:
    """The sparse-recovery policy features as they were (residuals recomputed from x)."""
    A = model.A  # type: ignore[attr-defined]
    y2 = y.pow(2).sum(1)
    r = y - x @ A.T
    resid = r.pow(2).sum(1) / (y2 + 1e-12)
    before = (r + dx @ A.T).pow(2).sum(1) / (y2 + 1e-12)
    update = dx.pow(2).sum(1) / (x.pow(2).sum(1) + 1e-12)
    nonzero = (x != 0).float().mean(1)
    energy = y2 / y.shape[1]
    return torch.stack(
        [
            torch.log10(resid + 1e-8),
            torch.log10(update + 1e-8),
            nonzero * 10,
            torch.log10(energy + 1e-8),
            torch.log10(before + 1e-8) - torch.log10(resid + 1e-8),
        ],
        dim=1,
    )


@pytest.mark.parametrize("kind", ["coupled", "full", "ista", "fista"])
def test_sparse_state_carries_the_residual_without_changing_the_numbers(kind: str) -> None:
    """Layers stay bit-identical; features equal to float rounding (``resid_before`` is
    now the residual the previous layer computed, not ``r_t + A dx_t`` recomputed)."""
    torch.manual_seed(0)
    task = SparseRecoveryTask(SparseRecoveryConfig(m=50, n=100, val_size=256))
    if kind in ("coupled", "full"):
        model: LayeredPredictor = LISTA(ListaConfig(num_layers=8, weights=kind), task)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 1e-3)
    else:
        model = (ISTA if kind == "ista" else FISTA)(IterativeConfig(num_layers=8), task)
    batch = task.eval_set("val")
    y = batch.inputs["y"]
    with torch.no_grad():
        state = model.initial_state(batch.inputs)
        x = state["x"]  # type: ignore[index]
        for t in range(model.num_layers):
            prev = state
            state = model.layer(t, state, batch.inputs)
            new = state["x"]  # type: ignore[index]
            if kind == "coupled":
                assert torch.equal(new, _old_lista_cp_layer(model, t, x, y))  # type: ignore[arg-type]
            assert torch.equal(state["r"], y - new @ model.A.T)  # type: ignore[index]
            assert state["r_prev"] is prev["r"]  # type: ignore[index]
            features = model.policy_features(t, state, batch.inputs, new)
            old = _old_sparse_features(model, new, new - x, y)
            assert torch.equal(features[:, :4], old[:, :4])
            torch.testing.assert_close(features, old, rtol=0, atol=2e-6)
            x = new


def test_sparse_layers_are_unchanged_for_ista() -> None:
    task = SparseRecoveryTask(SparseRecoveryConfig(m=30, n=60, val_size=64))
    model = ISTA(IterativeConfig(num_layers=5), task)
    y = task.eval_set("val").inputs["y"]
    state = model.initial_state({"y": y})
    x = state["x"]  # type: ignore[index]
    for t in range(5):
        state = model.layer(t, state, {"y": y})
        grad = (x @ model.A.T - y) @ model.A
        from l2s_gym.predictors.lista import soft_threshold

        old = soft_threshold(x - grad / model.L, torch.tensor(model.lam / model.L))
        assert torch.equal(state["x"], old)  # type: ignore[index]
        x = old


def test_sdn_readout_fast_path_is_the_exit_module_bit_for_bit() -> None:
    torch.manual_seed(0)
    task = RecognitionTask(RecognitionConfig(), seed=0)
    model = SDN(SDNConfig(num_layers=9, channels=8, pool_size=2), task).eval()
    _randomise_batchnorm(model)
    batch = task.eval_set("val").select(slice(0, 50))
    with torch.no_grad():
        state = model.initial_state(batch.inputs)
        for t in range(model.num_layers):
            state = model.layer(t, state, batch.inputs)
            module_out = model.exits[t](model._features(t, state["map"]))
            assert torch.equal(model.readout(t, state, batch.inputs), module_out)


def test_chunk_features_equal_the_per_layer_features(case) -> None:
    from l2s_gym.testing import check_chunk_features

    task, predictor, batch, _ = case
    check_chunk_features(predictor, batch.inputs)


def test_carried_state_is_what_the_next_layer_reads(case) -> None:
    from l2s_gym.testing import check_carried_state

    task, predictor, batch, _ = case
    check_carried_state(predictor, batch.inputs)


def test_full_depth_prediction_is_the_last_read_out(case) -> None:
    from l2s_gym.testing import check_full_depth

    task, predictor, batch, _ = case
    check_full_depth(predictor, batch.inputs)


def test_full_depth_of_full_weight_lista_and_cumulative_dncnn() -> None:
    from l2s_gym.testing import check_full_depth

    torch.manual_seed(0)
    task = SparseRecoveryTask(SparseRecoveryConfig(m=20, n=40, val_size=32, test_size_per_snr=16))
    check_full_depth(
        LISTA(ListaConfig(num_layers=6, weights="full"), task), task.eval_set("test").inputs
    )
    task = DenoisingTask(DenoisingConfig(patch_size=16, val_size=32, test_patches=8), seed=0)
    cfg = DnCNNConfig(
        num_layers=4, channels=8, feature_size=8, encoder_channels=4, heads="cumulative"
    )
    model = DnCNN(cfg, task)
    for head in model.heads:
        nn.init.normal_(head.weight, std=0.05)
    check_full_depth(model, task.eval_set("test").inputs)


def test_check_full_depth_catches_a_wrong_override() -> None:
    from l2s_gym.testing import check_full_depth

    task, predictor = _sparse()
    predictor.predict_full_depth = lambda inputs: torch.zeros(len(inputs["y"]), 40)  # type: ignore[method-assign]
    with torch.no_grad():
        nn.init.normal_(predictor.W, std=0.3)
    with pytest.raises(AssertionError, match="predict_full_depth"):
        check_full_depth(predictor, task.eval_set("test").inputs)


def test_check_carried_state_catches_a_dropped_entry() -> None:
    from l2s_gym.predictors.lista import LISTA
    from l2s_gym.testing import check_carried_state

    task, predictor = _sparse()
    batch = task.eval_set("test").select(slice(0, 8))
    assert isinstance(predictor, LISTA)
    predictor.carried_state = lambda state: {k: v for k, v in state.items() if k != "r"}  # type: ignore[method-assign]
    with pytest.raises((AssertionError, KeyError)):
        check_carried_state(predictor, batch.inputs)


def test_lazy_readout_check(case) -> None:
    from l2s_gym.testing import check_lazy_readout

    _, predictor, batch, _ = case
    check_lazy_readout(predictor, batch.inputs)  # a no-op where features read the prediction


def test_check_lazy_readout_catches_features_that_read_the_prediction() -> None:
    from l2s_gym.testing import check_lazy_readout

    task, predictor = _meta()  # full features: the query shift comes from the read-out's forward
    predictor.eval()
    batch = task.eval_set("test").select(slice(0, 8))
    check_lazy_readout(predictor, batch.inputs)  # says it reads its prediction: nothing to check
    features = predictor.policy_features

    def reads_it(t, state, inputs, prediction):  # noqa: ANN001, ANN202
        out = features(t, state, inputs, prediction)
        return out if prediction is None else out + prediction.mean(1, keepdim=True)

    predictor.policy_features = reads_it  # type: ignore[method-assign]
    predictor.features_use_prediction = False
    with pytest.raises(AssertionError, match="change with the prediction"):
        check_lazy_readout(predictor, batch.inputs)


def test_chunk_logits_are_layer_logits() -> None:
    torch.manual_seed(0)
    policy = StopPolicy((5,), 9, hidden=16, depth=2)
    nn.init.normal_(policy.head.weight)
    policy.eval()
    features = torch.randn(13, 4, 5)
    with torch.inference_mode():
        chunk = policy.chunk_logits(features, 3)
        each = torch.stack([policy.layer_logits(features[:, i], 3 + i) for i in range(4)], 1)
    torch.testing.assert_close(chunk, each, rtol=1e-6, atol=1e-6)
