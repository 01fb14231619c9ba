"""Adapters: an iterative solver, a multi-exit network or a Hugging Face encoder as a
``LayeredPredictor`` in a few lines.

- ``Iterative(num_layers, init, step, readout)``: three plain functions, one step per
  layer; parameters optional (pass the ``nn.Module`` that holds them as ``module=``).
- ``MultiExit(blocks, heads)``: a sequence of ``nn.Module`` blocks with one exit head per
  block, or one head shared by all.
- ``HFEncoder(model)``: a ``transformers`` BERT-like sequence classifier, one layer per
  encoder block, its own pooler and classifier as the exit after every block.

Each computes the read-out after every layer inside ``layer`` (``readout`` returns it) and
keeps in its state what the **generic policy features** need, so that a stop policy can be
learned without writing any feature code (``features=`` replaces them):

- ``kind="classifier"`` (the read-out is ``(B, C)`` logits), 5 features: the top softmax
  probability, the entropy of the softmax divided by ``log C``, the margin between the two
  largest probabilities, the patience ``min(r, k) / k`` (``r``: how many consecutive exits
  before this one predicted the same class, PABEE's counter; ``k``: ``patience``) and the
  fraction of layers computed, ``(t + 1) / T``. Extras: ``"confidence"`` (the top
  probability: the SDN threshold rule).
- ``kind="regressor"`` (any read-out shape), 2 features: ``log10`` of the relative change
  of the read-out since the previous layer, ``||y_t - y_{t-1}|| / ||y_t||`` (``y_{-1} = 0``,
  so 1 after the first layer), and ``(t + 1) / T``. Extras: ``"change"`` (the relative
  change: the convergence-threshold rule).

``register_adapter(name, factory, task=...)`` makes a factory ``factory(task, **config)``
a registered predictor: its keyword arguments become the keys of a config's ``predictor:``
section (typed from their annotations or defaults, checked on load).

The state of an adapter is a flat dict: the wrapped state (a tensor under ``"state"``, or a
dict's entries under ``"state.<key>"``) and the adapter's own entries under ``"_l2s.*"``;
``StopRunner`` compacts all of it, the inputs (an attention mask among them) too. The
batched environment of the RL learners mixes fresh and running instances in one batch,
so there the wrapped state must have one shape at every layer (``MultiExit`` blocks that
keep the shape, an encoder's hidden states); the imitation learners and ``StopRunner`` have
no such need.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.registry import register_predictor

Kind = Literal["classifier", "regressor"]
KINDS = ("classifier", "regressor")
CLASSIFIER_FEATURES = ("top_probability", "entropy", "margin", "patience", "depth")
"""The generic features of a classifier, in order (``feature_shape == (5,)``)."""
REGRESSOR_FEATURES = ("log_change", "depth")
"""The generic features of a regressor, in order (``feature_shape == (2,)``)."""

FeatureFn = Callable[[int, Any, dict[str, Tensor], Tensor], Tensor]
"""``features(t, state, inputs, prediction) -> (B, *feature_shape)``, ``state`` the wrapped
model's (what ``init`` / ``step`` return, a block's output, the hidden states)."""

_PRED = "_l2s.pred"
_COUNT = "_l2s.count"
_CHANGE = "_l2s.change"
_STATE = "state"
_PREFIX = "state."


def _wrap(state: State) -> dict[str, Tensor]:
    if isinstance(state, Tensor):
        return {_STATE: state}
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise TypeError(
            f"an adapter's state must be a tensor or a flat dict of tensors, got {type(state).__name__}"
        )
    return {_PREFIX + k: v for k, v in state.items()}


def _unwrap(state: dict[str, Tensor]) -> State:
    if _STATE in state:
        return state[_STATE]
    n = len(_PREFIX)
    return {k[n:]: v for k, v in state.items() if k.startswith(_PREFIX)}


def _first(state: dict[str, Tensor]) -> Tensor:
    for k, v in state.items():
        if not k.startswith("_l2s."):
            return v
    raise ValueError("an adapter's initial state holds no tensor")


def classifier_features(
    logits: Tensor, count: Tensor, t: int, num_layers: int, patience: int
) -> Tensor:
    """The generic features of a classifier's exit (``CLASSIFIER_FEATURES``), ``(B, 5)``."""
    if logits.dim() != 2:
        raise ValueError(
            f"kind='classifier' needs (B, C) logits as the read-out, got shape {tuple(logits.shape)}"
        )
    log_p = torch.log_softmax(logits.float(), dim=1)
    p = log_p.exp()
    c = p.shape[1]
    top2 = p.topk(min(2, c), dim=1).values
    top = top2[:, 0]
    margin = top2[:, 0] - top2[:, 1] if c > 1 else top
    entropy = -(p * log_p).sum(1) / (math.log(c) if c > 1 else 1.0)
    agree = count.to(p.dtype).clamp(max=patience) / patience
    depth = torch.full_like(top, (t + 1) / num_layers)
    return torch.stack([top, entropy, margin, agree, depth], dim=1)


def relative_change(prediction: Tensor, previous: Tensor | None) -> Tensor:
    """``||y_t - y_{t-1}|| / ||y_t||`` per row (``previous=None``: ``y_{t-1} = 0``)."""
    y = prediction.detach().flatten(1).float()
    diff = y if previous is None else y - previous.detach().flatten(1).float()
    return diff.norm(dim=1) / y.norm(dim=1).clamp_min(1e-12)


class Adapter(LayeredPredictor):
    """What the three adapters share: the state layout, the read-out computed with the
    layer, the generic features and extras, the full-depth pass. A subclass implements
    ``init_state``, ``step`` and ``read`` (on the wrapped model's state)."""

    def __init__(
        self,
        num_layers: int,
        *,
        kind: Kind,
        features: FeatureFn | None,
        feature_shape: int | Sequence[int] | None,
        patience: int,
        display_name: str,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be 'classifier' or 'regressor', got {kind!r}")
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an int >= 1, got {patience!r}")
        self.num_layers = num_layers
        self.kind = kind
        self.patience = patience
        self.display_name = display_name
        self.features_fn = features
        if features is None:
            if feature_shape is not None:
                raise ValueError(
                    "feature_shape goes with features= (the generic features' is fixed)"
                )
            self.feature_shape = (
                (len(CLASSIFIER_FEATURES),) if kind == "classifier" else (len(REGRESSOR_FEATURES),)
            )
        else:
            if feature_shape is None:
                raise ValueError(
                    "features= needs feature_shape=, the shape of one instance's features"
                )
            self.feature_shape = (
                (int(feature_shape),)
                if isinstance(feature_shape, int)
                else tuple(int(s) for s in feature_shape)
            )
        self._pred_like: tuple[torch.Size, torch.dtype] | None = None
        """The read-out's shape (after the batch) and dtype, once a layer has run: the
        initial state then holds a zero read-out of that shape, so that it has the same
        entries as the states after layers (the batched environment mixes them)."""
        # Where the adapter lives when it has no parameter (a solver with nothing to train):
        # ``.to(device)`` moves it, ``device`` reads it. Not in the state dict.
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)

    # --- the wrapped model: implemented by the adapters ---------------------------------
    def init_state(self, inputs: dict[str, Tensor]) -> State:
        raise NotImplementedError

    def step(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        raise NotImplementedError

    def read(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    # --- the protocol -------------------------------------------------------------------
    def initial_state(self, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        state = _wrap(self.init_state(inputs))
        like = _first(state)
        b = like.shape[0]
        if self._pred_like is not None:
            shape, dtype = self._pred_like
            state[_PRED] = like.new_zeros((b, *shape), dtype=dtype)
        history = _COUNT if self.kind == "classifier" else _CHANGE
        state[history] = like.new_zeros((b,), dtype=torch.float32)
        return state

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        assert isinstance(state, dict)
        inner = self.step(t, _unwrap(state), inputs)
        pred = self.read(t, inner, inputs)
        if not isinstance(pred, Tensor):
            raise TypeError(
                f"{type(self).__name__}: the read-out must be a tensor, got {type(pred).__name__}"
            )
        self._pred_like = (pred.shape[1:], pred.dtype)
        new = _wrap(inner)
        new[_PRED] = pred
        with torch.no_grad():
            previous = state.get(_PRED) if t > 0 else None
            if t > 0 and previous is None:
                raise RuntimeError(
                    f"{type(self).__name__}.layer({t}) got a state without the previous read-out"
                )
            if self.kind == "classifier":
                if pred.dim() != 2:
                    raise ValueError(
                        "kind='classifier' needs (B, C) logits as the read-out, got shape "
                        f"{tuple(pred.shape)} (pass kind='regressor' for other read-outs)"
                    )
                if previous is None:
                    count = pred.new_zeros(pred.shape[0], dtype=torch.float32)
                else:
                    same = pred.argmax(1) == previous.argmax(1)
                    count = torch.where(same, state[_COUNT] + 1, torch.zeros_like(state[_COUNT]))
                new[_COUNT] = count
            else:
                new[_CHANGE] = relative_change(pred, previous)
        return new

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        assert isinstance(state, dict)
        return state[_PRED]

    def carried_state(self, state: State) -> State:
        # The relative change is recomputed by the next layer from the read-out.
        assert isinstance(state, dict)
        return {k: v for k, v in state.items() if k != _CHANGE}

    def predict_full_depth(self, inputs: dict[str, Tensor]) -> Tensor:
        # The wrapped model alone: its steps, then one read-out.
        state = self.init_state(inputs)
        for t in range(self.num_layers):
            state = self.step(t, state, inputs)
        return self.read(self.num_layers - 1, state, inputs)

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        assert isinstance(state, dict)
        if self.features_fn is not None:
            return self.features_fn(t, _unwrap(state), inputs, prediction)
        if self.kind == "classifier":
            return classifier_features(prediction, state[_COUNT], t, self.num_layers, self.patience)
        change = state[_CHANGE]
        depth = torch.full_like(change, (t + 1) / self.num_layers)
        return torch.stack([torch.log10(change.clamp_min(1e-12)), depth], dim=1)

    def extras(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        assert isinstance(state, dict)
        if self.kind == "classifier":
            return {"confidence": torch.softmax(prediction.float(), dim=1).amax(1)}
        return {"change": state[_CHANGE]}

    def unwrap_state(self, state: State) -> State:
        """The wrapped model's state inside an adapter's state."""
        assert isinstance(state, dict)
        return _unwrap(state)


class Iterative(Adapter):
    """A solver given as three functions, one ``step`` per layer.

    ``init(inputs) -> state``, ``step(t, state, inputs) -> state`` (``t`` 0-based) and
    ``readout(t, state, inputs) -> prediction``; a state is a tensor or a flat dict of
    tensors, batch first. With no ``module`` (and no parameter) the solver has nothing to
    train: stage 1 is skipped. ``module``: an ``nn.Module`` whose parameters the functions
    use (learned step sizes, a learned prior); it is registered as a submodule, so stage 1
    trains it and checkpoints hold it. Tensors the functions close over must already be on
    the task's device (a factory gets the task: build them from it).

    ``features(t, state, inputs, prediction)`` with ``feature_shape`` replaces the generic
    features; ``kind`` says which generic features apply (default ``"regressor"``).
    """

    def __init__(
        self,
        num_layers: int,
        init: Callable[[dict[str, Tensor]], State],
        step: Callable[[int, State, dict[str, Tensor]], State],
        readout: Callable[[int, State, dict[str, Tensor]], Tensor],
        features: FeatureFn | None = None,
        module: nn.Module | None = None,
        *,
        kind: Kind = "regressor",
        feature_shape: int | Sequence[int] | None = None,
        patience: int = 3,
        display_name: str = "Iterative",
    ) -> None:
        super().__init__(
            num_layers,
            kind=kind,
            features=features,
            feature_shape=feature_shape,
            patience=patience,
            display_name=display_name,
        )
        if module is not None and not isinstance(module, nn.Module):
            raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
        self.init_fn, self.step_fn, self.readout_fn = init, step, readout
        self.module = module

    def init_state(self, inputs: dict[str, Tensor]) -> State:
        return self.init_fn(inputs)

    def step(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        return self.step_fn(t, state, inputs)

    def read(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        return self.readout_fn(t, state, inputs)


def _exit_heads(heads: nn.Module | Sequence[nn.Module], count: int, what: str) -> nn.ModuleList:
    """One head per block (a list, a tuple or an ``nn.ModuleList`` of ``count``) or one shared
    head (any other module, an ``nn.Sequential`` included): an ``nn.ModuleList`` of 1 or
    ``count``."""
    if isinstance(heads, nn.Module) and not isinstance(heads, nn.ModuleList):
        return nn.ModuleList([heads])
    heads = list(heads)
    if len(heads) != count or not all(isinstance(h, nn.Module) for h in heads):
        raise ValueError(
            f"{what}: one nn.Module per layer ({count}) or a single shared one, got "
            f"{len(heads)} item(s)"
        )
    return nn.ModuleList(heads)


class MultiExit(Adapter):
    """A network of ``blocks`` with an exit head after each: layer ``t`` runs ``blocks[t]``
    on the previous block's output (for the first: ``inputs[input_key]``, through ``stem``
    if given) and its read-out is ``heads[t]`` of it (or the one shared head's).

    ``heads``: a list, tuple or ``nn.ModuleList`` with one head per block, or a single
    module (an ``nn.Sequential`` too) shared by every exit. ``stem``: a module run on the
    input before the first block (not a layer: an embedding, a first convolution that
    gives the input the blocks' shape; the RL learners' batched environment needs a state
    of one shape at every layer). ``kind`` (default ``"classifier"``) picks the generic
    features; ``features`` / ``feature_shape`` replace them
    (``features(t, hidden, inputs, prediction)``).
    """

    def __init__(
        self,
        blocks: Sequence[nn.Module],
        heads: nn.Module | Sequence[nn.Module],
        input_key: str = "x",
        *,
        stem: nn.Module | None = None,
        kind: Kind = "classifier",
        features: FeatureFn | None = None,
        feature_shape: int | Sequence[int] | None = None,
        patience: int = 3,
        display_name: str = "MultiExit",
    ) -> None:
        blocks = list(blocks)
        if not blocks or not all(isinstance(b, nn.Module) for b in blocks):
            raise ValueError("MultiExit: blocks must be a non-empty sequence of nn.Module")
        super().__init__(
            len(blocks),
            kind=kind,
            features=features,
            feature_shape=feature_shape,
            patience=patience,
            display_name=display_name,
        )
        self.blocks = nn.ModuleList(blocks)
        self.heads = _exit_heads(heads, len(blocks), "MultiExit heads")
        if stem is not None and not isinstance(stem, nn.Module):
            raise TypeError(f"stem must be an nn.Module, got {type(stem).__name__}")
        self.stem = stem
        self.input_key = input_key

    def init_state(self, inputs: dict[str, Tensor]) -> State:
        if self.input_key not in inputs:
            raise KeyError(
                f"MultiExit reads inputs[{self.input_key!r}]; the inputs hold {sorted(inputs)} "
                "(pass input_key=)"
            )
        x = inputs[self.input_key]
        return x if self.stem is None else self.stem(x)

    def step(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        return self.blocks[t](state)

    def read(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        return self.heads[t if len(self.heads) > 1 else 0](state)


POOLINGS = ("cls", "mean")


class HFEncoder(Adapter):
    """A Hugging Face ``transformers`` BERT-like sequence classifier, one layer per encoder
    block (``model.base_model.encoder.layer``).

    Inputs: ``input_ids`` ``(B, L)``, ``attention_mask`` ``(B, L)`` (optional: every token
    attends) and ``token_type_ids`` (optional). The initial state is the embeddings; layer
    ``t`` runs block ``t`` with the attention mask built from ``inputs["attention_mask"]``
    as the model builds it (``StopRunner`` compacts the hidden states and the inputs, the
    mask among them, together). The exit after each block:

    - ``head=None``: the model's own classifier on each layer's pooled hidden state, shared
      by all exits. BERT (a linear ``classifier`` over the pooler's output):
      ``classifier(dropout(pool(h)))``; a model whose classifier reads the hidden states
      itself (RoBERTa, ELECTRA: their classification heads take the first token) gets
      them, with ``pooling="cls"`` only. At the last layer this is the model's own logits.
    - ``head``: a list of one module per layer, or one shared module, each mapping the
      pooled ``(B, H)`` hidden state to the read-out.

    ``pooling``: ``"cls"``, the model's pooler where it has one (BERT: the first token
    through a dense layer and tanh), else the first token's hidden state; ``"mean"``, the
    mean of the hidden states over the tokens the mask keeps.
    """

    def __init__(
        self,
        model: nn.Module,
        head: nn.Module | Sequence[nn.Module] | None = None,
        pooling: str = "cls",
        *,
        kind: Kind = "classifier",
        features: FeatureFn | None = None,
        feature_shape: int | Sequence[int] | None = None,
        patience: int = 3,
        display_name: str | None = None,
    ) -> None:
        try:
            from transformers.masking_utils import create_bidirectional_mask
        except ImportError as exc:
            raise ImportError(
                "HFEncoder needs transformers 5.x (pip install 'l2s-gym[hf]')"
            ) from exc
        base = getattr(model, "base_model", model)
        layers = getattr(getattr(base, "encoder", None), "layer", None)
        if getattr(base, "embeddings", None) is None or not isinstance(layers, nn.ModuleList):
            raise ValueError(
                f"HFEncoder needs a BERT-like model (base_model.embeddings and "
                f"base_model.encoder.layer), got {type(model).__name__}"
            )
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        config = getattr(model, "config", None)
        name = display_name or str(getattr(config, "model_type", "encoder")).upper()
        super().__init__(
            len(layers),
            kind=kind,
            features=features,
            feature_shape=feature_shape,
            patience=patience,
            display_name=name,
        )
        self._mask_fn = create_bidirectional_mask
        self.model = model
        self.pooling = pooling
        self._sequence_head = False
        if head is None:
            classifier = getattr(model, "classifier", None)
            if not isinstance(classifier, nn.Module):
                raise ValueError(
                    f"{type(model).__name__} has no classifier module: pass head= "
                    "(one module per layer, or one shared)"
                )
            if not isinstance(classifier, nn.Linear):
                if pooling != "cls":
                    raise ValueError(
                        f"{type(model).__name__}'s classifier reads the hidden states itself "
                        "(its first token): pooling must be 'cls', or pass head="
                    )
                self._sequence_head = True
            self.heads = None
        else:
            self.heads = _exit_heads(head, len(layers), "HFEncoder head")

    def _base(self) -> nn.Module:
        return getattr(self.model, "base_model", self.model)

    def init_state(self, inputs: dict[str, Tensor]) -> State:
        kwargs = {"input_ids": inputs["input_ids"]}
        if "token_type_ids" in inputs:
            kwargs["token_type_ids"] = inputs["token_type_ids"]
        return self._base().embeddings(**kwargs)

    def step(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        assert isinstance(state, Tensor)
        # Positional: the embeddings' keyword changed name within transformers 5.x.
        mask = self._mask_fn(self.model.config, state, inputs.get("attention_mask"))
        out = self._base().encoder.layer[t](state, mask)
        return out[0] if isinstance(out, tuple) else out

    def pool(self, hidden: Tensor, inputs: dict[str, Tensor]) -> Tensor:
        """The ``(B, H)`` pooled hidden state the exits read (see ``pooling``)."""
        if self.pooling == "mean":
            mask = inputs.get("attention_mask")
            if mask is None:
                return hidden.mean(1)
            weight = mask.to(hidden.dtype).unsqueeze(-1)
            return (hidden * weight).sum(1) / weight.sum(1).clamp_min(1.0)
        pooler = getattr(self._base(), "pooler", None)
        return pooler(hidden) if pooler is not None else hidden[:, 0]

    def read(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        assert isinstance(state, Tensor)
        if self.heads is not None:
            return self.heads[t if len(self.heads) > 1 else 0](self.pool(state, inputs))
        if self._sequence_head:
            return self.model.classifier(state)
        dropout = getattr(self.model, "dropout", None)
        pooled = self.pool(state, inputs)
        return self.model.classifier(dropout(pooled) if dropout is not None else pooled)


# --- registration -------------------------------------------------------------------------
_SIMPLE = (bool, int, float, str)


def _supported(tp: Any) -> bool:
    """Whether ``l2s_gym.config`` can read a value of type ``tp`` from YAML."""
    if tp is Any or tp in _SIMPLE:
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return True
    if origin in (typing.Union, types.UnionType):
        return all(a is type(None) or _supported(a) for a in typing.get_args(tp))
    if origin is list:
        return all(_supported(a) for a in typing.get_args(tp))
    return dataclasses.is_dataclass(tp)


def _config_class(name: str, factory: Callable[..., Any]) -> type:
    """A dataclass of ``factory``'s keyword arguments after the task (the config keys)."""
    try:
        sig = inspect.signature(factory, eval_str=True)
    except (NameError, TypeError):  # an annotation that does not resolve: read it as Any
        sig = inspect.signature(factory)
    params = list(sig.parameters.values())
    if not params or params[0].kind not in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        raise TypeError(
            f"an adapter factory takes the task first: factory(task, **config), got {sig}"
        )
    fields: list[tuple[str, Any, Any]] = []
    for p in params[1:]:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        if p.kind is inspect.Parameter.POSITIONAL_ONLY:
            raise TypeError(f"adapter factory parameter {p.name!r}: config keys are passed by name")
        tp = p.annotation
        if tp is inspect.Parameter.empty or isinstance(tp, str):  # typed by the default
            default = p.default
            if type(default) in _SIMPLE:
                tp = type(default)
            elif default is None or default is inspect.Parameter.empty:
                tp = Any
            elif isinstance(default, list):
                tp = list[Any]
            else:
                tp = type(default)  # refused below, naming the parameter
        if not _supported(tp):
            raise TypeError(
                f"adapter factory parameter {p.name!r}: a config key cannot be of type {tp!r} "
                "(use bool, int, float, str, a Literal, a list or an optional of them)"
            )
        if p.default is inspect.Parameter.empty:
            fields.append((p.name, tp, dataclasses.field()))
        elif isinstance(p.default, list | dict):
            value = p.default
            fields.append(
                (p.name, tp, dataclasses.field(default_factory=lambda v=value: copy.deepcopy(v)))
            )
        else:
            fields.append((p.name, tp, dataclasses.field(default=p.default)))
    cls_name = "".join(part.capitalize() for part in re.split(r"[^0-9A-Za-z]+", name)) or "Adapter"
    cls = dataclasses.make_dataclass(f"{cls_name}Config", fields)
    cls.__module__ = factory.__module__
    cls.__qualname__ = f"{getattr(factory, '__qualname__', cls_name)}.config"
    return cls


def register_adapter(
    name: str,
    factory: Callable[..., LayeredPredictor] | None = None,
    *,
    task: str | None = None,
) -> Any:
    """Register ``factory(task, **config) -> LayeredPredictor`` as predictor ``name``.

    ``task``: the registered task it solves (``None``: any). The factory's keyword
    arguments after the task become the keys of the ``predictor:`` section of a config
    (``predictor: {name: NAME, num_layers: 12}``), typed by their annotations (or their
    defaults' types), an argument without a default a required key; an unknown key or a
    wrong type is a one-line config error. A ``ValueError`` the factory raises is reported
    as one line naming the section. Returns ``factory`` (so it also works as a decorator:
    ``@register_adapter("name", task="my_task")``). Registering the same factory again (its
    module imported again) is a no-op; another one under a taken name is a
    ``DuplicateNameError``.
    """
    if factory is None:
        return lambda f: register_adapter(name, f, task=task)
    config_cls = _config_class(name, factory)
    names = [f.name for f in dataclasses.fields(config_cls)]

    def build(cfg: Any, task_obj: Any) -> LayeredPredictor:
        predictor = factory(task_obj, **{n: getattr(cfg, n) for n in names})
        if not isinstance(predictor, LayeredPredictor):
            raise TypeError(
                f"adapter {name!r}: the factory returned {type(predictor).__name__}, "
                "not a LayeredPredictor"
            )
        return predictor

    build.__module__ = factory.__module__
    build.__qualname__ = getattr(factory, "__qualname__", name)
    build.__name__ = getattr(factory, "__name__", name)
    build.__doc__ = factory.__doc__
    register_predictor(name, config_cls, task=task)(build)  # type: ignore[arg-type]
    return factory
