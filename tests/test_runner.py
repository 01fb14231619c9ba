"""Early exit (l2s_gym.runner): the runner stops where the trace-based evaluation stops."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.predictors.dncnn import DnCNN, DnCNNConfig
from l2s_gym.predictors.lista import FISTA, ISTA, LISTA, IterativeConfig, ListaConfig
from l2s_gym.predictors.maml import MAML, MamlConfig
from l2s_gym.predictors.sdn import SDN, SDNConfig
from l2s_gym.rules import ReadoutRule
from l2s_gym.runner import StopRunner, run_full_depth
from l2s_gym.task import Batch, Task
from l2s_gym.tasks.denoising import DenoisingConfig, DenoisingTask
from l2s_gym.tasks.meta_learning import MetaLearningConfig, MetaLearningTask
from l2s_gym.tasks.recognition import RecognitionConfig, RecognitionTask
from l2s_gym.tasks.sparse_recovery import SparseRecoveryConfig, SparseRecoveryTask
from l2s_gym.testing import ToyCounter, ToyPredictorConfig, ToyTask, ToyTaskConfig

RULES = [
    ReadoutRule("threshold", 0.5),
    ReadoutRule("threshold", 0.3),
    ReadoutRule("quantile", 0.5),
    ReadoutRule("quantile", 0.8),
]


# --- a custom predictor: dict state, a layer that reads two inputs, BatchNorm ------------
class MixerTask(Task):
    """Regression of a fixed random function of ``u``; the scale input varies per instance."""

    name = "mixer"
    group_names = ["all"]

    def __init__(self, dim: int = 6) -> None:
        super().__init__(0, "cpu")
        self.dim = dim

    def _draw(self, n: int, gen: torch.Generator) -> Batch:
        u = torch.randn(n, self.dim, generator=gen)
        scale = torch.rand(n, 1, generator=gen) * 2
        return Batch({"u": u, "scale": scale}, (u * scale).sum(1), torch.zeros(n, dtype=torch.long))

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._draw(batch_size, generator)

    def make_eval_set(self, split: str) -> Batch:
        return self._draw(64, self.generator(1 if split == "val" else 2))

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return (prediction - targets) ** 2

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)


class Mixer(LayeredPredictor):
    """``h_t = relu(BN_t(W_t h_{t-1}) + scale * u)``; a dict state carrying a step counter;
    the read-out is linear; the features use the inputs as well as the state."""

    display_name = "Mixer"

    def __init__(self, dim: int = 6, num_layers: int = 7) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.feature_shape = (dim + 2,)
        self.mix = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.BatchNorm1d(dim) for _ in range(num_layers))
        self.out = nn.Linear(dim, 1)
        self.calls: list[int] = []
        """Rows each ``layer`` call computed (to check the compaction)."""

    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        u = inputs["u"]
        return {"h": u.clone(), "steps": u.new_zeros(u.shape[0])}

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        self.calls.append(int(state["h"].shape[0]))  # type: ignore[index]
        h = self.norms[t](self.mix[t](state["h"]))  # type: ignore[index]
        h = torch.relu(h + inputs["scale"] * inputs["u"])
        return {"h": h, "steps": state["steps"] + 1}  # type: ignore[index]

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        return self.out(state["h"]).squeeze(-1)  # type: ignore[index]

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        h = state["h"]  # type: ignore[index]
        return torch.cat([h, inputs["scale"], prediction.unsqueeze(1)], dim=1)


# --- the tiny configs of every family -----------------------------------------------------
@dataclass
class Case:
    name: str
    build: Callable[[], tuple[Task, LayeredPredictor]]


def _randomise_batchnorm(module: nn.Module) -> None:
    """Non-trivial running statistics: eval-mode BatchNorm must be per-instance."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)


def _sparse() -> tuple[Task, LayeredPredictor]:
    task = SparseRecoveryTask(SparseRecoveryConfig(m=20, n=40, val_size=32, test_size_per_snr=16))
    return task, LISTA(ListaConfig(num_layers=6, weights="coupled"), task)


def _denoising() -> tuple[Task, LayeredPredictor]:
    task = DenoisingTask(DenoisingConfig(patch_size=16, val_size=32, test_patches=8), seed=0)
    cfg = DnCNNConfig(num_layers=5, channels=8, feature_size=8, encoder_channels=4)
    model = DnCNN(cfg, task)
    for head in model.heads:  # zero heads would make every layer's read-out the input
        nn.init.normal_(head.weight, std=0.05)
    return task, model


def _recognition() -> tuple[Task, LayeredPredictor]:
    task = RecognitionTask(RecognitionConfig(), seed=0)
    return task, SDN(SDNConfig(num_layers=6, channels=8), task)


def _meta() -> tuple[Task, LayeredPredictor]:
    cfg = MetaLearningConfig(val_size=32, test_tasks_per_k=4, query_size=8)
    task = MetaLearningTask(cfg, seed=0)
    return task, MAML(MamlConfig(num_layers=5, hidden=[16, 16], inner_lr=0.05), task)


def _meta_lean() -> tuple[Task, LayeredPredictor]:
    cfg = MetaLearningConfig(val_size=32, test_tasks_per_k=4, query_size=8)
    task = MetaLearningTask(cfg, seed=0)
    maml = MamlConfig(num_layers=5, hidden=[16, 16], inner_lr=0.05, features="lean")
    return task, MAML(maml, task)


def _toy() -> tuple[Task, LayeredPredictor]:
    task = ToyTask(ToyTaskConfig(num_layers=6, feature_noise=0.1), seed=0)
    return task, ToyCounter(ToyPredictorConfig(num_layers=6), task)


def _custom() -> tuple[Task, LayeredPredictor]:
    return MixerTask(), Mixer()


CASES = [
    Case("sparse_recovery/LISTA", _sparse),
    Case("denoising/DnCNN", _denoising),
    Case("recognition/SDN", _recognition),
    Case("meta_learning/MAML", _meta),
    Case("meta_learning/MAML, lean features (read-out only where it stops)", _meta_lean),
    Case("toy", _toy),
    Case("custom (dict state, BatchNorm)", _custom),
]


def random_policy(
    predictor: LayeredPredictor, features: Tensor, seed: int, policy: StopPolicy | None = None
) -> StopPolicy:
    """A StopPolicy (``policy``, or a small fresh one) with a random head, its bias set so
    that stops spread over the layers.

    ``features`` ``(B, T, ...)`` are a trace's; the bias puts the logit's 75th percentile
    at 0, so a quarter of (instance, layer) pairs want to stop.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if policy is None:
            policy = StopPolicy(
                predictor.feature_shape,
                predictor.num_layers,
                hidden=16,
                depth=2,
                encoder=predictor.policy_encoder(),
            )
        nn.init.normal_(policy.head.weight, std=3.0)
    with torch.no_grad():
        nn.init.zeros_(policy.head.bias)
        logits = policy.trace_logits(features)
        policy.head.bias.fill_(-float(torch.quantile(logits[:, :-1].flatten(), 0.75)))
    return policy.eval()


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> tuple[Task, LayeredPredictor, Batch, StopPolicy]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        task, predictor = request.param.build()
        _randomise_batchnorm(predictor)
    predictor.eval()
    batch = task.eval_set("test").select(slice(0, 40))
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    return task, predictor, batch, random_policy(predictor, trace.features, seed=1)


def reference(
    task: Task, predictor: LayeredPredictor, policy: StopPolicy, batch: Batch, rule: ReadoutRule
) -> tuple[Tensor, Tensor, Tensor]:
    """Stop layers, predictions and stop logits read from a full trace (evaluation's way)."""
    with torch.no_grad():
        trace = predictor.trace(batch, task, keep_predictions=True)
        logits = policy.trace_logits(trace.features)
    stop = rule.stop(logits)
    preds = torch.stack(trace.predictions, dim=1)  # type: ignore[arg-type]
    return stop, preds[torch.arange(len(batch)), stop], logits


@pytest.mark.parametrize("size", [1, 40])
def test_runner_stops_where_the_trace_says(case, size: int) -> None:
    task, predictor, batch, policy = case
    batch = batch.select(slice(0, size))
    seen_layers: set[int] = set()
    for rule in RULES:
        stop, expected, logits = reference(task, predictor, policy, batch, rule)
        out = StopRunner(predictor, policy, rule)(batch, return_probabilities=True)
        assert out.stop.dtype == torch.long and torch.equal(out.stop, stop), rule
        if size == 1:
            # No compaction at batch 1: the same calls on the same rows, bit for bit.
            assert torch.equal(out.predictions, expected)
        else:
            # Layers after a compaction run on fewer rows, and BLAS may pick another kernel
            # for another row count (a different summation order): equal up to rounding.
            torch.testing.assert_close(out.predictions, expected, rtol=1e-5, atol=1e-5)
        assert out.avg_layers == pytest.approx(float((stop + 1).double().mean()))
        # pi_t at every layer an instance reached, 1 at the last, NaN beyond its stop.
        probs = out.stop_probabilities
        T = predictor.num_layers
        reached = torch.arange(T).unsqueeze(0) <= stop.unsqueeze(1)
        assert torch.equal(torch.isnan(probs), ~reached)
        pi = torch.sigmoid(logits)
        pi[:, -1] = 1.0
        torch.testing.assert_close(probs[reached], pi[reached], rtol=1e-5, atol=1e-6)
        seen_layers |= set(stop.tolist())
    if size > 1:
        assert len(seen_layers) >= 3, f"stops not spread out: {sorted(seen_layers)}"


def test_runner_computes_only_the_layers_it_keeps() -> None:
    task, predictor = _custom()
    predictor.eval()
    batch = task.eval_set("test")
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    policy = random_policy(predictor, trace.features, seed=3)
    predictor.calls.clear()
    out = StopRunner(predictor, policy)(batch)
    # Layer t ran on exactly the instances that had not stopped before it.
    T = predictor.num_layers
    expected = [int((out.stop >= t).sum()) for t in range(T)]
    expected = [n for n in expected if n > 0]
    assert predictor.calls == expected
    assert expected[0] == len(batch) and sum(expected) == int(out.layers.sum())
    assert sum(expected) < T * len(batch)


def test_runner_reads_out_only_the_instances_that_stop() -> None:
    task, predictor = _meta_lean()
    predictor.eval()
    assert not predictor.features_use_prediction
    batch = task.eval_set("test")
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    policy = random_policy(predictor, trace.features, seed=2)
    rows: list[int] = []
    readout = predictor.readout

    def counting(t, state, inputs):  # noqa: ANN001, ANN202
        out = readout(t, state, inputs)
        rows.append(out.shape[0])
        return out

    predictor.readout = counting  # type: ignore[method-assign]
    try:
        out = StopRunner(predictor, policy)(batch)
    finally:
        del predictor.readout
    # One read-out per instance in all: the rows that stopped at each layer, when they did.
    assert sum(rows) == len(batch)
    assert len(rows) == len(set(out.stop.tolist()))


def test_full_depth_baseline_is_the_last_read_out(case) -> None:
    task, predictor, batch, _ = case
    with torch.no_grad():
        trace = predictor.trace(batch, task, keep_predictions=True)
    assert torch.equal(run_full_depth(predictor, batch), trace.predictions[-1])  # type: ignore[index]


def test_sample_rule_draws_from_q_phi() -> None:
    task, predictor = _toy()
    batch = task.eval_set("test")
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    policy = random_policy(predictor, trace.features, seed=5)

    def run(seed: int) -> Tensor:
        gen = torch.Generator().manual_seed(seed)
        return StopRunner(predictor, policy, ReadoutRule("sample"), gen)(batch).stop

    assert torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    # The mean stop layer over many draws matches the expected depth of q_phi.
    from l2s_gym.stopping import expected_depth, stop_log_q

    with torch.no_grad():
        want = float(expected_depth(stop_log_q(policy.trace_logits(trace.features))).mean())
    got = torch.stack([run(s) for s in range(40)]).double().add(1).mean()
    assert float(got) == pytest.approx(want, abs=0.1)


def test_runner_accepts_an_inputs_dict_and_an_empty_batch() -> None:
    task, predictor = _toy()
    batch = task.eval_set("test").select(slice(0, 16))
    with torch.no_grad():
        policy = random_policy(predictor, predictor.trace(batch, task).features, seed=2)
    runner = StopRunner(predictor, policy)
    assert torch.equal(runner(batch.inputs).stop, runner(batch).stop)
    empty = runner(batch.select(slice(0, 0)))
    assert empty.stop.shape == (0,) and math.isnan(empty.avg_layers)


def test_runner_rejects_a_policy_of_another_depth() -> None:
    task, predictor = _toy()
    with pytest.raises(ValueError, match="layers"):
        StopRunner(predictor, StopPolicy((2,), num_layers=9))


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


# --- l2s predict: a run folder in the layout of l2s compare -------------------------------
def write_run_folder(root, cfg_path, learner: str = "reverse_kl", cost: float = 0.5):  # noqa: ANN001, ANN201
    """A run folder as ``l2s compare`` writes it: the oracle predictor of seed 0 and one
    policy checkpoint with its read-out, both from the builders, saved as the trainers do."""
    from l2s_gym import build
    from l2s_gym.config import load_config
    from l2s_gym.runs import save_checkpoint

    cfg = load_config(cfg_path)
    task = build.make_task(cfg.task, cfg.seed, "cpu")
    predictor = build.make_predictor(cfg.predictor, task, seed=cfg.seed)
    run = root / "toy_run" / "20260101-000000"
    seed_dir = run / "seed-0"
    save_checkpoint(
        seed_dir / "stage1" / "predictor-oracle" / "best.pt",
        {"kind": "predictor", "state_dict": predictor.state_dict(), "config": cfg.to_dict()},
    )
    with torch.no_grad():
        trace = predictor.trace(task.eval_set("val"), task)
    policy = random_policy(predictor, trace.features, 4, build.make_policy(cfg, predictor))
    save_checkpoint(
        seed_dir / learner / f"cost-{cost:g}" / "best.pt",
        {
            "kind": "policy",
            "learner": learner,
            "state_dict": policy.state_dict(),
            "readout": ReadoutRule("quantile", 0.5).to_dict(),
            "cost": cost,
            "config": cfg.to_dict(),
        },
    )
    return cfg, run, predictor, policy


@pytest.fixture
def toy_run(tmp_path, toy_config):  # noqa: ANN001, ANN201
    return write_run_folder(tmp_path, toy_config)


def test_predict_run_matches_the_trace_based_evaluation(toy_run, tmp_path) -> None:  # noqa: ANN001
    from l2s_gym.predict import format_summary, predict_run

    cfg, run, predictor, policy = toy_run
    out = tmp_path / "out" / "pred.pt"
    summary = predict_run(cfg, run, "reverse_kl", batch_size=100, out=out)
    assert summary["cost"] == 0.5 and summary["readout"] == {"kind": "quantile", "value": 0.5}
    assert summary["instances"] == 256 and summary["stop_agreement"] == 1.0
    assert summary["metric"] == pytest.approx(summary["trace_metric"], rel=1e-6)
    assert summary["avg_layers"] == pytest.approx(summary["trace_avg_layers"])
    assert summary["runner_s"] > 0 and summary["full_depth_s"] > 0
    assert summary["ideal_speedup"] == pytest.approx(6 / summary["avg_layers"])
    saved = torch.load(out)
    test = predictor.trace_eval(predictor_task(cfg).eval_set("test"), predictor_task(cfg))
    stop = ReadoutRule("quantile", 0.5).stop(policy.trace_logits(test.features))
    assert torch.equal(saved["stop"], stop) and torch.equal(saved["layers"], stop + 1)
    assert saved["predictions"].shape == (256,)
    import json

    assert json.loads(out.with_suffix(".json").read_text())["avg_layers"] == summary["avg_layers"]
    assert "stop layers agree on 100.0%" in format_summary(summary)


def predictor_task(cfg):  # noqa: ANN001, ANN201
    from l2s_gym import build

    return build.make_task(cfg.task, cfg.seed, "cpu")


def test_predict_command(toy_run, toy_config, tmp_path, capsys) -> None:  # noqa: ANN001
    from l2s_gym.cli import main

    _, run, _, _ = toy_run
    base = ["predict", str(toy_config), "--import", "l2s_gym.testing", "--run", str(run)]
    out = tmp_path / "p.pt"
    assert main([*base, "--learner", "reverse_kl", "--out", str(out), "--batch-size", "64"]) == 0
    printed = capsys.readouterr().out
    assert "measured speed-up" in printed and out.is_file() and out.with_suffix(".json").is_file()
    # A look-ahead: the same stops (the summary's agreement with the trace), said in the output.
    assert main([*base, "--learner", "reverse_kl", "--lookahead", "3"]) == 0
    printed = capsys.readouterr().out
    assert "look-ahead 3" in printed and "agree on 100.0%" in printed
    assert main([*base, "--learner", "reverse_kl", "--lookahead", "0"]) == 2
    assert "--lookahead" in capsys.readouterr().err
    # A user's batch: only inputs, no metric.
    inputs = tmp_path / "batch.pt"
    torch.save({"hint": torch.rand(10, 1)}, inputs)
    assert main([*base, "--learner", "reverse_kl", "--input", str(inputs)]) == 0
    assert "10 instances" in capsys.readouterr().out
    # Wrong learner, cost or input: one line, exit 2, naming what exists.
    assert main([*base, "--learner", "ppo"]) == 2
    assert "reverse_kl" in capsys.readouterr().err
    assert main([*base, "--learner", "reverse_kl", "--cost", "3"]) == 2
    assert "cost-0.5" in capsys.readouterr().err
    torch.save({"y": torch.rand(10, 1)}, inputs)
    assert main([*base, "--learner", "reverse_kl", "--input", str(inputs)]) == 2
    assert "hint" in capsys.readouterr().err


def test_predict_on_a_real_family(tmp_path, sparse_tiny_config) -> None:  # noqa: ANN001
    """LISTA through the same path (a run folder of the sparse tiny config)."""
    from l2s_gym.predict import predict_run

    cfg, run, _, _ = write_run_folder(tmp_path, sparse_tiny_config)
    summary = predict_run(cfg, run, "reverse_kl", batch_size=50)
    assert summary["stop_agreement"] == 1.0
    assert summary["metric"] == pytest.approx(summary["trace_metric"], abs=1e-4)
    assert 1 <= summary["avg_layers"] < summary["num_layers"]


def test_speedup_benchmark_runs_and_writes_its_rows(tmp_path, toy_config) -> None:  # noqa: ANN001
    """benchmarks/early_exit_speedup.py end to end, on the toy config (seconds)."""
    import importlib.util
    import json
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "early_exit_speedup.py"
    spec = importlib.util.spec_from_file_location("early_exit_speedup", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look their module up by name
    spec.loader.exec_module(bench)
    out = tmp_path / "speed.json"
    argv = ["--out", str(out), "--quick", "--threads", "1", "--configs", str(toy_config)]
    argv += ["--batch-sizes", "1", "16", "--instances-b1", "3", "--import", "l2s_gym.testing"]
    argv += ["--lookahead-batches", "1", "16"]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["threads"] == 1 and result["device"] == "cpu"
    rows = result["rows"]
    assert {r["batch"] for r in rows} == {1, 16}
    for row in rows:
        for key in ("family", "batch", "cost", "avg_layers", "ideal_speedup", "measured_speedup"):
            assert key in row
        assert 1 <= row["avg_layers"] <= 6
        assert row["ideal_speedup"] == pytest.approx(6 / row["avg_layers"], rel=1e-3)
        assert row["measured_speedup"] > 0 and row["runner_parts_ms"]["layer"] > 0
    # Look-aheads 1, 4 and T=6 at both batch sizes (the same stops: the script checks).
    assert {(r["batch"], r["lookahead"]) for r in rows} == {
        (b, k) for b in (1, 16) for k in (1, 4, 6)
    }
    # Costs spread the depth: the highest price stops earliest.
    assert result["complete"] is True
    costs = result["families"][str(toy_config)]["costs"]
    assert costs == sorted(costs, reverse=True) and len(costs) >= 2
    # --set reaches every family's config: a 4-layer toy.
    argv = ["--out", str(out), "--quick", "--threads", "1", "--configs", str(toy_config)]
    argv += ["--batch-sizes", "16", "--lookahead", "--import", "l2s_gym.testing"]
    argv += ["--set", "task.num_layers=4", "--set", "predictor.num_layers=4"]
    assert bench.main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows and all(r["num_layers"] == 4 and r["avg_layers"] <= 4 for r in rows)


# --- look-ahead: the policy asked once per k layers ----------------------------------------
@pytest.mark.parametrize("lookahead", [2, 3, 100])
@pytest.mark.parametrize("size", [1, 40])
def test_lookahead_stops_where_the_trace_says(case, size: int, lookahead: int) -> None:
    task, predictor, batch, policy = case
    batch = batch.select(slice(0, size))
    for rule in RULES:
        stop, expected, logits = reference(task, predictor, policy, batch, rule)
        runner = StopRunner(predictor, policy, rule, lookahead=lookahead)
        out = runner(batch, return_probabilities=True)
        assert out.stop.dtype == torch.long and torch.equal(out.stop, stop), rule
        if size == 1:
            assert torch.equal(out.predictions, expected)
        else:
            torch.testing.assert_close(out.predictions, expected, rtol=1e-5, atol=1e-5)
        probs = out.stop_probabilities
        T = predictor.num_layers
        reached = torch.arange(T).unsqueeze(0) <= stop.unsqueeze(1)
        assert torch.equal(torch.isnan(probs), ~reached)
        pi = torch.sigmoid(logits)
        pi[:, -1] = 1.0
        torch.testing.assert_close(probs[reached], pi[reached], rtol=1e-5, atol=1e-6)
        parts: dict[str, float] = {}
        again = runner(batch, profile=parts)
        assert torch.equal(again.stop, stop) and set(parts) >= {"layer", "features", "policy"}


def test_lookahead_computes_whole_chunks() -> None:
    task, predictor = _custom()
    predictor.eval()
    batch = task.eval_set("test")
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    policy = random_policy(predictor, trace.features, seed=3)
    T, k = predictor.num_layers, 3
    stop = StopRunner(predictor, policy).__call__(batch).stop
    predictor.calls.clear()
    out = StopRunner(predictor, policy, lookahead=k)(batch)
    assert torch.equal(out.stop, stop)
    # Layer t runs on the rows that had not stopped before its chunk began.
    expected = [int((stop >= (t // k) * k).sum()) for t in range(T)]
    assert predictor.calls == [c for c in expected if c > 0]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_lookahead_must_be_a_positive_whole_number(bad) -> None:
    task, predictor = _toy()
    policy = StopPolicy(predictor.feature_shape, predictor.num_layers)
    with pytest.raises(ValueError, match="lookahead"):
        StopRunner(predictor, policy, lookahead=bad)


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
