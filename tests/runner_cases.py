"""Tiny configs of every family, a custom predictor and a random policy, shared by the
runner, fast-path and predict tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.predictors.dncnn import DnCNN, DnCNNConfig
from l2s_gym.predictors.lista import LISTA, ListaConfig
from l2s_gym.predictors.maml import MAML, MamlConfig
from l2s_gym.predictors.sdn import SDN, SDNConfig
from l2s_gym.task import Batch, Task
from l2s_gym.tasks.denoising import DenoisingConfig, DenoisingTask
from l2s_gym.tasks.meta_learning import MetaLearningConfig, MetaLearningTask
from l2s_gym.tasks.recognition import RecognitionConfig, RecognitionTask
from l2s_gym.tasks.sparse_recovery import SparseRecoveryConfig, SparseRecoveryTask
from l2s_gym.testing import ToyCounter, ToyPredictorConfig, ToyTask, ToyTaskConfig


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


def build_case(case: Case) -> tuple[Task, LayeredPredictor, Batch, StopPolicy]:
    """The ``case`` fixture's value: the family's task and predictor (eval mode, random
    BatchNorm statistics), 40 test instances and a random policy for them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        task, predictor = case.build()
        _randomise_batchnorm(predictor)
    predictor.eval()
    batch = task.eval_set("test").select(slice(0, 40))
    with torch.no_grad():
        trace = predictor.trace(batch, task)
    return task, predictor, batch, random_policy(predictor, trace.features, seed=1)


def count_policy_calls(predictor: LayeredPredictor, policy: StopPolicy) -> list[str]:
    """Wrap every way the runner reaches the policy (its features and its logits) with a
    counter; returns the list the calls are appended to (undo with ``uncount``)."""
    calls: list[str] = []
    names = {
        predictor: ["policy_features", "chunk_policy_features"],
        policy: ["forward", "layer_logits", "frozen_layer_logits", "chunk_logits", "_layer_logits"],
    }
    for obj, methods in names.items():
        for name in methods:
            method = getattr(obj, name)

            def counted(*args, _m=method, _n=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
                calls.append(_n)
                return _m(*args, **kwargs)

            setattr(obj, name, counted)
    return calls


def uncount(predictor: LayeredPredictor, policy: StopPolicy) -> None:
    for obj in (predictor, policy):
        for name in ("policy_features", "chunk_policy_features", "forward", "layer_logits",
                     "frozen_layer_logits", "chunk_logits", "_layer_logits"):  # fmt: skip
            obj.__dict__.pop(name, None)
