"""l2s_gym.adapters: Iterative, MultiExit and HFEncoder pass the protocol's checks, trace,
stop in StopRunner where their trace says, read out the wrapped model's own output at the
last layer, and register as config-loadable predictors (register_adapter)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import write_config
from torch import Tensor, nn

from l2s_gym import registry, testing
from l2s_gym.adapters import (
    CLASSIFIER_FEATURES,
    REGRESSOR_FEATURES,
    HFEncoder,
    Iterative,
    MultiExit,
    register_adapter,
)
from l2s_gym.cli import main
from l2s_gym.config import ConfigError, from_dict
from l2s_gym.policy import StopPolicy
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.registry import DuplicateNameError, register_task
from l2s_gym.rules import ReadoutRule
from l2s_gym.runner import StopRunner
from l2s_gym.task import Batch, Task
from l2s_gym.training import trainable


# --- tiny tasks ---------------------------------------------------------------------------
@dataclass
class SizesConfig:
    val_size: int = 64
    test_size: int = 64


class _Tiny(Task):
    group_title = "half"
    group_names = ["first", "second"]

    def __init__(self, cfg: SizesConfig | None = None, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg or SizesConfig()

    def draw(self, n: int, gen: torch.Generator) -> Batch:
        raise NotImplementedError

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self.draw(batch_size, generator)

    def make_eval_set(self, split: str) -> Batch:
        size = self.cfg.val_size if split == "val" else self.cfg.test_size
        return self.draw(size, self.generator(1 if split == "val" else 2, "cpu")).to(self.device)


@register_task("adapters_lstsq", SizesConfig)
class LeastSquares(_Tiny):
    """``b = A x* + noise`` (noise level per instance), relative squared error."""

    name = "adapters_lstsq"
    metric_name = "relative error"

    def __init__(self, cfg: SizesConfig | None = None, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(cfg, seed, device)
        gen = self.generator(0, "cpu")
        u, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen))
        v, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen))
        self.A = (u[:, :8] * torch.logspace(0, -1.5, 8)) @ v.T

    def draw(self, n: int, gen: torch.Generator) -> Batch:
        dev = gen.device
        x = torch.randn(n, 8, generator=gen, device=dev)
        level = torch.rand(n, 1, generator=gen, device=dev)
        b = x @ self.A.to(dev).T + 0.3 * level * torch.randn(n, 12, generator=gen, device=dev)
        return Batch({"b": b}, x, (level[:, 0] > 0.5).long())

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return (prediction - targets).pow(2).sum(1) / targets.pow(2).sum(1)

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return self.loss(prediction, targets)


class _Classification(_Tiny):
    metric_name = "error"
    num_classes = 3

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return nn.functional.cross_entropy(prediction, targets, reduction="none")

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        return (prediction.argmax(1) != targets).float()


@register_task("adapters_blobs", SizesConfig)
class Blobs(_Classification):
    """``x`` in R^6, the class of a fixed linear teacher, noisy."""

    name = "adapters_blobs"

    def draw(self, n: int, gen: torch.Generator) -> Batch:
        dev = gen.device
        teacher = torch.randn(6, 3, generator=self.generator(0, "cpu")).to(dev)
        x = torch.randn(n, 6, generator=gen, device=dev)
        scores = x @ teacher + 0.5 * torch.randn(n, 3, generator=gen, device=dev)
        y = scores.argmax(1)
        return Batch({"x": x}, y, (x[:, 0] > 0).long())


VOCAB, LENGTH = 20, 8


@register_task("adapters_tokens", SizesConfig)
class Tokens(_Classification):
    """Random token sequences of random length (padded with 0, masked), the class of the
    first token."""

    name = "adapters_tokens"

    def draw(self, n: int, gen: torch.Generator) -> Batch:
        dev = gen.device
        ids = torch.randint(1, VOCAB, (n, LENGTH), generator=gen, device=dev)
        lengths = torch.randint(2, LENGTH + 1, (n,), generator=gen, device=dev)
        mask = (torch.arange(LENGTH, device=dev) < lengths.unsqueeze(1)).long()
        return Batch(
            {"input_ids": ids * mask, "attention_mask": mask},
            ids[:, 0] % 3,
            (lengths > LENGTH // 2).long(),
        )


# --- adapters ------------------------------------------------------------------------------
def gradient_descent(task: LeastSquares, num_layers: int = 6, eta: float = 0.9) -> Iterative:
    """A solver with nothing to train: gradient descent on ||A x - b||^2 from 0."""
    A = task.A.to(task.device)
    return Iterative(
        num_layers,
        init=lambda inputs: inputs["b"].new_zeros(inputs["b"].shape[0], A.shape[1]),
        step=lambda t, x, inputs: x - eta * (x @ A.T - inputs["b"]) @ A,
        readout=lambda t, x, inputs: x,
    )


class Steps(nn.Module):
    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.log_eta = nn.Parameter(torch.zeros(num_layers))


def learned_gd(task: LeastSquares, num_layers: int = 5) -> Iterative:
    """A dict state and a learned step size per layer (``module=``)."""
    A, steps = task.A.to(task.device), Steps(num_layers)

    def step(t: int, s: dict, inputs: dict) -> dict:
        grad = (s["x"] @ A.T - inputs["b"]) @ A
        return {"x": s["x"] - steps.log_eta[t].exp() * grad, "r": s["x"] @ A.T - inputs["b"]}

    return Iterative(
        num_layers,
        init=lambda inputs: {"x": inputs["b"].new_zeros(len(inputs["b"]), 8), "r": -inputs["b"]},
        step=step,
        readout=lambda t, s, inputs: s["x"],
        module=steps,
    )


def mlp_blocks(num_layers: int, width: int = 6) -> list[nn.Module]:
    return [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(num_layers)]


def multi_exit(task: Blobs, num_layers: int = 5, shared: bool = False) -> MultiExit:
    heads = nn.Linear(6, 3) if shared else [nn.Linear(6, 3) for _ in range(num_layers)]
    return MultiExit(mlp_blocks(num_layers), heads)


def bert(num_layers: int = 2, num_labels: int = 3) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=16,
        num_labels=num_labels,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.BertForSequenceClassification(config).eval()


def hf_encoder(task: Tokens, num_layers: int = 2, pooling: str = "cls") -> HFEncoder:
    return HFEncoder(bert(num_layers), pooling=pooling)


register_adapter("adapters_gd", gradient_descent, task="adapters_lstsq")
register_adapter("adapters_mlp", multi_exit, task="adapters_blobs")


@register_adapter("adapters_bert", task="adapters_tokens")
def bert_factory(task: Tokens, num_layers: int = 2, pooling: str = "cls") -> HFEncoder:
    return hf_encoder(task, num_layers, pooling)


def _build(name: str) -> tuple[Task, LayeredPredictor]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if name == "iterative":
            task = LeastSquares()
            return task, gradient_descent(task)
        if name == "iterative_learned":
            task = LeastSquares()
            return task, learned_gd(task)
        if name in ("multi_exit", "multi_exit_shared"):
            task = Blobs()
            predictor = multi_exit(task, shared=name == "multi_exit_shared")
            heads = predictor.heads
        else:
            task = Tokens()
            predictor = hf_encoder(task, num_layers=3, pooling="cls" if name == "hf" else "mean")
            heads = [predictor.model.classifier]
        # Sure and unsure exits, so that a random policy's stops spread over the layers.
        for head in heads:
            nn.init.normal_(head.weight, std=1.5 / head.weight.shape[1] ** 0.5)
        return task, predictor


CASES = ["iterative", "iterative_learned", "multi_exit", "multi_exit_shared", "hf", "hf_mean"]


@pytest.fixture(scope="module", params=CASES)
def case(request: pytest.FixtureRequest) -> tuple[Task, LayeredPredictor]:
    return _build(request.param)


# --- the protocol -----------------------------------------------------------------------------
def test_adapters_pass_the_protocol_and_testing_checks(case) -> None:
    task, predictor = case
    predictor.check_protocol()
    inputs = task.eval_set("val").select(slice(0, 16)).inputs
    testing.check_full_depth(predictor, inputs)
    testing.check_carried_state(predictor, inputs)
    testing.check_chunk_features(predictor, inputs)
    testing.check_lazy_readout(predictor, inputs)


def test_trace_eval_gives_finite_features_and_the_generic_extras(case) -> None:
    task, predictor = case
    batch = task.eval_set("test")
    trace = predictor.trace_eval(batch, task, chunk_size=24)
    T = predictor.num_layers
    assert trace.losses.shape == (len(batch), T)
    assert trace.features.shape == (len(batch), T, *predictor.feature_shape)
    assert torch.isfinite(trace.features).all() and torch.isfinite(trace.losses).all()
    classifier = predictor.kind == "classifier"
    names = CLASSIFIER_FEATURES if classifier else REGRESSOR_FEATURES
    assert predictor.feature_shape == (len(names),)
    # The last generic feature is the fraction of layers computed.
    torch.testing.assert_close(trace.features[0, :, -1], torch.arange(1, T + 1) / T)
    assert set(trace.extras) == {"confidence" if classifier else "change"}


RULES = [ReadoutRule("threshold", 0.5), ReadoutRule("quantile", 0.6)]


def spread_policy(predictor: LayeredPredictor, features: Tensor) -> StopPolicy:
    """A random StopPolicy that sees the instance's features only (not the layer: not the
    last generic feature, ``(t + 1) / T``, nor the position encoding), its bias set so that
    a quarter of the (instance, layer) pairs of ``features`` want to stop: stops spread
    over the layers."""
    width = predictor.feature_shape[0] - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        policy = StopPolicy(predictor.feature_shape, predictor.num_layers, hidden=16, depth=1)
        with torch.no_grad():
            policy.body[0].weight[:, width:] = 0.0
            nn.init.normal_(policy.head.weight, std=3.0)
            policy.head.bias.zero_()
            logits = policy.trace_logits(features)
            policy.head.bias.fill_(-float(torch.quantile(logits[:, :-1].flatten(), 0.75)))
    return policy.eval()


@pytest.mark.parametrize("size", [1, 40])
def test_runner_stops_where_the_trace_says(case, size: int) -> None:
    task, predictor = case
    predictor.eval()
    batch = task.eval_set("test").select(slice(0, size))
    with torch.no_grad():
        trace = predictor.trace(batch, task, keep_predictions=True)
    policy = spread_policy(predictor, predictor.trace_eval(task.eval_set("val"), task).features)
    preds = torch.stack(trace.predictions, dim=1)  # type: ignore[arg-type]
    stops = set()
    for rule in RULES:
        stop = rule.stop(policy.trace_logits(trace.features))
        out = StopRunner(predictor, policy, rule)(batch)
        assert torch.equal(out.stop, stop), rule
        torch.testing.assert_close(
            out.predictions, preds[torch.arange(size), stop], rtol=1e-5, atol=1e-5
        )
        # Lookahead chunks: the same stops.
        assert torch.equal(StopRunner(predictor, policy, rule, lookahead=2)(batch).stop, stop)
        stops |= set(stop.tolist())
    if size > 1:
        assert len(stops) >= 2, f"stops not spread out: {sorted(stops)}"


def test_forward_step_at_mixed_layers_matches_the_trace(case) -> None:
    """The batched environment's path: rows at different layers in one call, fresh
    instances' initial states next to states after layers."""
    task, predictor = case
    predictor.eval()
    batch = task.eval_set("test").select(slice(0, 6))
    with torch.no_grad():
        trace = predictor.trace(batch, task, keep_predictions=True)
        state = predictor.initial_state(batch.inputs)
        state = predictor.layer(0, state, batch.inputs)
        fresh = predictor.initial_state(batch.inputs)
        assert sorted(fresh) == sorted(state)
        # Rows 0..2 continue to layer 1, rows 3..5 start again (layer 0).
        first = torch.arange(6) < 3
        mixed = {
            k: torch.where(first.view(-1, *[1] * (v.dim() - 1)), v, fresh[k])
            for k, v in state.items()
        }
        t = torch.where(first, 1, 0)
        _, pred, feats = predictor.forward_step(t, mixed, batch.inputs)
    torch.testing.assert_close(pred[:3], trace.predictions[1][:3])
    torch.testing.assert_close(pred[3:], trace.predictions[0][3:])
    torch.testing.assert_close(feats[:3], trace.features[:3, 1])
    torch.testing.assert_close(feats[3:], trace.features[3:, 0])


# --- the wrapped model's own output -----------------------------------------------------------
def test_iterative_is_parameter_free_and_reads_out_its_functions() -> None:
    task = LeastSquares()
    predictor = gradient_descent(task)
    assert list(predictor.parameters()) == [] and not trainable(predictor)
    assert predictor.device == torch.device("cpu") and predictor.state_dict() == {}
    inputs = task.eval_set("val").inputs
    x = torch.zeros(len(inputs["b"]), 8)
    for _ in range(predictor.num_layers):
        x = x - 0.9 * (x @ task.A.T - inputs["b"]) @ task.A
    with torch.no_grad():
        torch.testing.assert_close(LayeredPredictor.predict_full_depth(predictor, inputs), x)


def test_iterative_with_a_module_registers_its_parameters() -> None:
    task, predictor = _build("iterative_learned")
    assert trainable(predictor)
    assert set(predictor.state_dict()) == {"module.log_eta"}
    trace = predictor.trace(task.eval_set("val"), task)
    trace.losses.mean().backward()
    assert predictor.module.log_eta.grad is not None  # type: ignore[union-attr]


def test_regressor_features_are_the_relative_change() -> None:
    task = LeastSquares()
    predictor = gradient_descent(task, num_layers=3)
    batch = task.eval_set("val").select(slice(0, 5))
    trace = predictor.trace(batch, task, keep_predictions=True)
    y = [torch.zeros(5, 8), *trace.predictions]  # type: ignore[misc]
    change = torch.stack(
        [(y[t + 1] - y[t]).norm(dim=1) / y[t + 1].norm(dim=1) for t in range(3)], dim=1
    )
    torch.testing.assert_close(trace.extras["change"], change)
    torch.testing.assert_close(trace.features[..., 0], torch.log10(change))
    torch.testing.assert_close(trace.features[:, 0, 0], torch.zeros(5))  # the first step: 1


class Fixed(nn.Module):
    """A 'block' that outputs the same logits for every row."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: Tensor) -> Tensor:
        return self.logits.expand(x.shape[0], -1)


def test_classifier_features_top_entropy_margin_patience_depth() -> None:
    exits = [[2.0, 0, 0], [3.0, 0, 0], [0, 1.0, 0], [0, 2.0, 0], [0, 3.0, 1], [0, 4.0, 0]]
    predictor = MultiExit([Fixed(z) for z in exits], nn.Identity(), patience=2)
    batch = Batch({"x": torch.zeros(2, 3)}, torch.zeros(2, dtype=torch.long), torch.zeros(2))
    trace = predictor.trace(batch, Blobs())
    feats = trace.features[0]
    p = torch.softmax(torch.tensor(exits), dim=1)
    top2 = p.topk(2, dim=1).values
    entropy = -(p * p.log()).sum(1) / math.log(3)
    runs = torch.tensor([0.0, 1, 0, 1, 2, 3])  # consecutive earlier exits of the same class
    want = torch.stack([top2[:, 0], entropy, top2[:, 0] - top2[:, 1], runs.clamp(max=2) / 2,
                        torch.arange(1, 7) / 6], dim=1)  # fmt: skip
    torch.testing.assert_close(feats, want)
    torch.testing.assert_close(trace.extras["confidence"][0], top2[:, 0])


def test_multi_exit_reads_out_the_network_and_its_heads() -> None:
    torch.manual_seed(0)
    blocks, heads = mlp_blocks(4), [nn.Linear(6, 3) for _ in range(4)]
    predictor = MultiExit(blocks, heads).eval()
    x = torch.randn(10, 6)
    with torch.no_grad():
        trace = predictor.trace(
            Batch({"x": x}, torch.zeros(10, dtype=torch.long), x[:, 0]),
            Blobs(),
            keep_predictions=True,
        )
        h = x
        for t, (block, head) in enumerate(zip(blocks, heads, strict=True)):
            h = block(h)
            torch.testing.assert_close(trace.predictions[t], head(h))  # type: ignore[index]
    shared = MultiExit(mlp_blocks(3), nn.Sequential(nn.Linear(6, 3)))
    assert len(shared.heads) == 1  # an nn.Sequential is one shared head
    with pytest.raises(ValueError, match="one nn.Module per layer"):
        MultiExit(mlp_blocks(3), [nn.Linear(6, 3)] * 2)
    with pytest.raises(KeyError, match="input_key"):
        predictor.initial_state({"image": x})


def test_bad_arguments_are_named() -> None:
    task = LeastSquares()
    fns = dict(init=lambda i: i["b"][:, :8], step=lambda t, s, i: s, readout=lambda t, s, i: s)
    with pytest.raises(ValueError, match="kind"):
        Iterative(3, **fns, kind="ranker")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="feature_shape"):
        Iterative(3, **fns, features=lambda t, s, i, p: s)
    with pytest.raises(ValueError, match="num_layers"):
        Iterative(0, **fns).check_protocol()
    custom = Iterative(3, **fns, features=lambda t, s, i, p: s[:, :2], feature_shape=2)
    assert custom.trace(task.eval_set("val"), task).features.shape == (64, 3, 2)
    with pytest.raises(ValueError, match="classifier"):
        Iterative(3, **fns, kind="classifier").trace(
            Batch({"b": torch.zeros(2, 2, 2)}, torch.zeros(2), torch.zeros(2)), task
        )


# --- Hugging Face ----------------------------------------------------------------------------
def _token_batch(n: int = 12) -> dict[str, Tensor]:
    return Tokens().eval_set("test").select(slice(0, n)).inputs


def test_hf_last_readout_is_the_models_own_logits() -> None:
    model = bert(num_layers=3)
    predictor = HFEncoder(model).eval()
    inputs = _token_batch()
    assert inputs["attention_mask"].float().mean() < 0.9  # some padding
    with torch.no_grad():
        want = model(**inputs).logits
        trace = predictor.trace(Batch(inputs, torch.zeros(12, dtype=torch.long), torch.zeros(12)),
                                Tokens(), keep_predictions=True)  # fmt: skip
        # Each exit: the model's pooler and classifier on that layer's hidden states.
        hidden = model(**inputs, output_hidden_states=True).hidden_states
    torch.testing.assert_close(trace.predictions[-1], want, rtol=1e-5, atol=1e-6)  # type: ignore[index]
    for t in range(3):
        own = model.classifier(model.bert.pooler(hidden[t + 1]))
        torch.testing.assert_close(trace.predictions[t], own, rtol=1e-5, atol=1e-5)  # type: ignore[index]
    assert predictor.num_layers == 3 and predictor.display_name == "BERT"


def test_hf_padding_is_masked_and_heads_can_be_given() -> None:
    model = bert()
    inputs = _token_batch()
    # Other tokens where the mask is 0 change nothing.
    noisy = dict(
        inputs, input_ids=torch.where(inputs["attention_mask"] > 0, inputs["input_ids"], 7)
    )
    for predictor in (HFEncoder(model), HFEncoder(model, pooling="mean"),
                      HFEncoder(model, head=[nn.Linear(32, 5), nn.Linear(32, 5)])):  # fmt: skip
        predictor.eval()
        with torch.no_grad():
            a, b = predictor.predict_full_depth(inputs), predictor.predict_full_depth(noisy)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert a.shape == (12, 5)
    with pytest.raises(ValueError, match="one nn.Module per layer"):
        HFEncoder(model, head=[nn.Linear(32, 5)] * 3)
    with pytest.raises(ValueError, match="pooling"):
        HFEncoder(model, pooling="max")


def test_hf_roberta_style_head_reads_the_hidden_states() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.RobertaConfig(
        vocab_size=VOCAB + 2, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=LENGTH + 4, num_labels=3, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.RobertaForSequenceClassification(config).eval()
    predictor = HFEncoder(model).eval()
    inputs = _token_batch()
    with torch.no_grad():
        torch.testing.assert_close(
            LayeredPredictor.predict_full_depth(predictor, inputs), model(**inputs).logits
        )
    with pytest.raises(ValueError, match="pooling must be 'cls'"):
        HFEncoder(model, pooling="mean")


# --- registration and the pipeline ---------------------------------------------------------
def _config(predictor: dict, task: str) -> dict:
    return {"experiment": "adapters", "task": {"name": task}, "predictor": predictor}


def test_register_adapter_makes_config_keys_of_the_factory_arguments() -> None:
    from l2s_gym.build import make_predictor

    cfg = from_dict(_config({"name": "adapters_gd", "num_layers": 4, "eta": 0.5}, "adapters_lstsq"))
    assert cfg.predictor.params.num_layers == 4 and cfg.predictor.params.eta == 0.5
    predictor = make_predictor(cfg.predictor, LeastSquares())
    assert isinstance(predictor, Iterative) and predictor.num_layers == 4
    default = from_dict(_config({"name": "adapters_mlp"}, "adapters_blobs"))
    assert default.predictor.params.num_layers == 5 and default.predictor.params.shared is False
    for bad, needle in (
        ({"num_layer": 4}, "predictor.num_layer: unknown key"),
        ({"num_layers": "four"}, "predictor.num_layers: expected an int"),
        ({"shared": 1}, "predictor.shared: expected true or false"),
    ):
        with pytest.raises(ConfigError, match=needle):
            from_dict(_config({"name": "adapters_mlp", **bad}, "adapters_blobs"))
    with pytest.raises(ConfigError, match="works on task 'adapters_lstsq'"):
        from_dict(_config({"name": "adapters_gd"}, "adapters_blobs"))


def test_register_adapter_twice_and_bad_factories() -> None:
    register_adapter("adapters_gd", gradient_descent, task="adapters_lstsq")  # again: no-op
    with pytest.raises(DuplicateNameError, match="learned_gd"):
        register_adapter("adapters_gd", learned_gd, task="adapters_lstsq")
    with pytest.raises(TypeError, match="size"):
        register_adapter("adapters_bad", lambda task, size=(1, 2): None)

    def not_a_predictor(task: Task, width: int = 3) -> LayeredPredictor:
        return nn.Linear(width, width)  # type: ignore[return-value]

    register_adapter("adapters_not_a_predictor", not_a_predictor)
    entry = registry.PREDICTORS["adapters_not_a_predictor"]
    with pytest.raises(TypeError, match="not a LayeredPredictor"):
        entry.cls(entry.config_cls(), LeastSquares())
    del registry.PREDICTORS["adapters_not_a_predictor"]


COMPARE = """
experiment: {name}
seed: 0
device: cpu
threads: 1
beta: 0.1
task: {{name: {task}, val_size: 64, test_size: 64}}
predictor: {{name: {predictor}}}
stage1: {{steps: 4, batch_size: 32, val_every: 2}}
policy: {{hidden: 16, depth: 1}}
imitation: {{steps: 20, batch_size: 64, val_every: 10}}
rl: {{num_envs: 16, rollout_steps: 8, val_every: 2}}
compare: {{learners: [{learners}], layer_budget: 20000}}
"""


@pytest.mark.parametrize(
    "task, predictor, learners",
    [
        ("adapters_lstsq", "adapters_gd", "reverse_kl"),
        ("adapters_blobs", "adapters_mlp", "reverse_kl, reinforce"),
        ("adapters_tokens", "adapters_bert", "reverse_kl"),
    ],
)
def test_compare_runs_on_an_adapter(tmp_path: Path, capsys, task, predictor, learners) -> None:
    if predictor == "adapters_bert":
        pytest.importorskip("transformers")
    text = COMPARE.format(name=predictor, task=task, predictor=predictor, learners=learners)
    config = write_config(tmp_path, text)
    assert main(["compare", str(config), "--runs", str(tmp_path / "runs"), "--no-progress"]) == 0
    out = capsys.readouterr()
    run_dir = Path(out.out.strip().splitlines()[-1])
    results = json.loads((run_dir / "results.json").read_text())
    methods = [r["method"] for r in results["rows"]]
    assert any("reverse KL" in m for m in methods), methods
    if "reinforce" in learners:
        assert any("REINFORCE" in m for m in methods), methods
    if predictor == "adapters_gd":  # nothing to train: stage 1 skipped
        assert "no trainable parameters" in out.err + out.out


# --- the examples ----------------------------------------------------------------------------
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load_example(name: str) -> None:
    spec = importlib.util.spec_from_file_location(f"l2s_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)  # registers its adapter (again: a no-op)


@pytest.mark.parametrize(
    "example, task, predictor",
    [
        (
            "adapter_iterative",
            {"name": "least_squares", "n": 12, "m": 16, "val_size": 32, "test_size": 32},
            {"name": "gd_adapter", "num_layers": 5},
        ),
        (
            "adapter_multiexit",
            {
                "name": "recognition",
                "severities": [0.0, 0.5],
                "val_per_severity": 16,
                "test_per_severity": 8,
            },
            {"name": "cnn", "num_layers": 3, "channels": 4},
        ),  # fmt: skip
    ],
)
def test_examples_build_from_a_config(example: str, task: dict, predictor: dict) -> None:
    from l2s_gym import plugins
    from l2s_gym.build import make_predictor, make_task

    plugins.import_module_or_file(str(EXAMPLES / "custom_predictor.py"))  # the least_squares task
    _load_example(example)
    cfg = from_dict({"experiment": "example", "task": task, "predictor": predictor})
    built_task = make_task(cfg.task, 0, "cpu")
    model = make_predictor(cfg.predictor, built_task, seed=0)
    assert trainable(model) == (example == "adapter_multiexit")
    batch = built_task.eval_set("val")
    trace = model.trace_eval(batch, built_task)
    assert trace.features.shape == (len(batch), predictor["num_layers"], *model.feature_shape)
    assert torch.isfinite(trace.features).all()
    testing.check_full_depth(model, batch.inputs)
    testing.check_carried_state(model, batch.inputs)


def test_hf_example_runs(capsys) -> None:
    pytest.importorskip("transformers")
    runpy.run_path(str(EXAMPLES / "adapter_hf.py"), run_name="__main__")
    assert "layers:" in capsys.readouterr().out


# --- on a GPU ----------------------------------------------------------------------------------
DEVICE = os.environ.get("L2S_CUDA_TESTS_DEVICE", "cuda")


@pytest.mark.cuda
@pytest.mark.skipif(
    DEVICE.startswith("cuda") and not torch.cuda.is_available(),
    reason="needs CUDA (benchmarks/gpu_check.py runs the cuda tests)",
)
@pytest.mark.parametrize(
    "task, predictor",
    [
        ("adapters_lstsq", "adapters_gd"),
        ("adapters_blobs", "adapters_mlp"),
        ("adapters_tokens", "adapters_bert"),
    ],
)
def test_adapters_on_the_device(task: str, predictor: str) -> None:
    from l2s_gym.build import make_predictor, make_task

    if predictor == "adapters_bert":
        pytest.importorskip("transformers")
    cfg = from_dict(_config({"name": predictor}, task))
    built_task = make_task(cfg.task, 0, DEVICE)
    model = make_predictor(cfg.predictor, built_task, seed=0).eval()
    assert model.device.type == torch.device(DEVICE).type  # a solver without parameters too
    batch = built_task.eval_set("test")
    with torch.no_grad():
        trace = model.trace(batch, built_task, keep_predictions=True)
        model.trace(built_task.train_batch(8, built_task.generator(5)), built_task)
    policy = spread_policy(model, trace.features.cpu()).to(model.device)
    for rule in RULES:
        out = StopRunner(model, policy, rule)(batch)
        assert torch.equal(out.stop, rule.stop(policy.trace_logits(trace.features)))
