"""A multi-exit transformer encoder: one pre-LN encoder block per layer, an exit after each.

Built for token labelling with padding (``pointer_chasing``): the inputs are ``"tokens"``
``(B, N)``, ``"mask"`` ``(B, N)`` (true at real tokens) and ``"length"`` ``(B,)``; every
exit gives per-token class logits ``(B, N, K)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from l2s_gym.config import ConfigError, feature_groups, positive
from l2s_gym.predictor import LayeredPredictor, State
from l2s_gym.registry import register_predictor
from l2s_gym.tasks.pointer_chasing import PointerChasingTask

FEATURE_SETS = ("exit", "trajectory", "input", "hidden")
"""The policy feature groups ``ExitTransformerConfig.features`` may list."""

EXIT_FEATURES = 6
TRAJECTORY_FEATURES = 6
INPUT_FEATURES = 2
UNSURE = 0.9
"""A token whose top probability is below this counts as unsure (``exit`` features)."""


@dataclass
class ExitTransformerConfig:
    """Multi-exit transformer encoder: ``num_layers`` blocks, an exit after each."""

    num_layers: int = 4
    """Encoder blocks (= exits)."""
    d_model: int = 32
    heads: int = 4
    ff_mult: int = 2
    """Width of each block's feed-forward layer, in multiples of ``d_model``."""
    shared_blocks: bool = False
    """One encoder block applied at every layer (a universal transformer, ALBERT's
    sharing); false: ``num_layers`` blocks of their own."""
    shared_head: bool = True
    """One exit (layer norm + linear) shared by every block; false: one per block."""
    tied_pointers: bool = True
    """Embed a pointer to position ``j`` as a learned linear map of position ``j``'s
    embedding (false: a free embedding per pointer symbol). Tying makes "attend to the
    node I point to" one linear map to learn, whatever the node."""
    patience: int = 3
    """``k`` of the patience feature ``min(r, k) / k`` (PABEE's counter ``r``, clipped)."""
    features: list[str] = field(default_factory=lambda: ["exit", "trajectory", "input"])
    """What the stop policy sees (no labels), any of ``exit``, ``trajectory``, ``input``
    and ``hidden`` (see ``ExitTransformer``)."""

    def validate(self, path: str) -> None:
        positive(self, path, "num_layers", "d_model", "heads", "ff_mult", "patience")
        if self.d_model % self.heads:
            raise ConfigError(
                f"{path}.heads: must divide d_model ({self.d_model}), got {self.heads!r}"
            )
        feature_groups(self, path, FEATURE_SETS)


class Block(nn.Module):
    """A pre-LN transformer encoder block; padded keys are masked out of the attention."""

    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))

    def forward(self, h: Tensor, bias: Tensor) -> Tensor:
        """``h`` ``(B, N, d)``; ``bias`` ``(B, 1, 1, N)``: 0 at real keys, -inf at padding."""
        b, n, d = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        h = h + self.out(att.transpose(1, 2).reshape(b, n, d))
        return h + self.ff(self.norm2(h))


def _masked_mean(x: Tensor, mask: Tensor, count: Tensor) -> Tensor:
    """Mean of ``x`` ``(B, N)`` over the real tokens: ``(B, 1)``."""
    return (x * mask).sum(dim=1, keepdim=True) / count


@register_predictor("exit_transformer", ExitTransformerConfig, task="pointer_chasing")
class ExitTransformer(LayeredPredictor):
    """Token + learned position embeddings, then one encoder block per layer.

    Exit ``t`` applies a layer norm and a linear layer to every token's hidden state after
    block ``t`` (one exit shared by every block, or one per block): per-token class logits.
    Padded positions are masked out of every attention as keys (their own hidden states
    are computed, never read, and their logits are ignored by the loss and the features).

    The state is a dict of tensors of one shape at every layer (instances at different
    layers share a batch): ``"h"`` ``(B, N, d)`` the hidden states; ``"logits"``
    ``(B, N, K)`` this exit's logits (computed with the block); ``"prev"`` ``(B, N, K)``
    the previous exit's (zeros before the first); ``"run"`` ``(B,)`` PABEE's patience
    counter, how many consecutive earlier exits labelled every real token as this one
    does; ``"delta"`` ``(B,)`` the relative change of the hidden states made by the block,
    ``||h_t - h_{t-1}|| / ||h_t||`` over the real tokens; ``"peak"`` ``(B,)`` the highest
    ``min``-over-tokens top probability of the exits so far.

    Policy features (no labels; every statistic over the instance's real tokens), the
    groups in ``features`` in this order:

    - ``exit`` (6): the least top softmax probability of any token (the least sure
      token), the mean top probability, the least margin between a token's two largest
      probabilities, the mean and the largest entropy over ``log K``, and the share of
      tokens whose top probability is below 0.9;
    - ``trajectory`` (6): the share of tokens whose class changed since the previous exit
      (1 at the first), the patience ``min(run, k) / k``, the change of the mean top
      probability since the previous exit, the mean total-variation distance between the
      two exits' per-token softmax (the previous one uniform before the first exit),
      ``log10`` of ``delta``, and ``peak``;
    - ``input`` (2): the number of real tokens over ``N``, and ``(t + 1) / T``;
    - ``hidden`` (``d``): the mean over the real tokens of the exit's layer-normed hidden
      state.

    Extras: ``"confidence"``, the least top probability of any token (the confidence
    threshold: stop once every token is sure; with two classes a token's entropy is a
    decreasing function of its top probability, so this is also the DeeBERT entropy
    threshold on the least sure token); ``"change"``, ``1 / (1 + run)``: a threshold
    ``tau`` on it stops at the first exit whose labelling the ``k = 1 / tau - 1`` exits
    before it agreed on (PABEE's patience rule, read by the library's
    convergence-threshold heuristic).
    """

    display_name = "Transformer"

    def __init__(self, cfg: ExitTransformerConfig, task: PointerChasingTask) -> None:
        super().__init__()
        self.num_layers = cfg.num_layers
        self.feature_groups = list(cfg.features)
        self.patience = cfg.patience
        d, k = cfg.d_model, task.num_classes
        self.num_classes = k
        self.max_len = task.max_nodes
        self.embed = nn.Embedding(task.vocab_size, d)
        self.position = nn.Parameter(torch.randn(task.max_nodes, d) * 0.5)
        self.pointer_map = nn.Linear(d, d, bias=False) if cfg.tied_pointers else None
        n_blocks = 1 if cfg.shared_blocks else cfg.num_layers
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.ff_mult * d) for _ in range(n_blocks))
        n_exits = 1 if cfg.shared_head else cfg.num_layers
        self.exit_norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(n_exits))
        self.exit_heads = nn.ModuleList(nn.Linear(d, k) for _ in range(n_exits))
        size = {
            "exit": EXIT_FEATURES,
            "trajectory": TRAJECTORY_FEATURES,
            "input": INPUT_FEATURES,
            "hidden": d,
        }
        self.feature_shape = (sum(size[g] for g in self.feature_groups),)

    # --- pieces ---------------------------------------------------------------------------
    def _block(self, t: int) -> Block:
        return self.blocks[0 if len(self.blocks) == 1 else t]

    def _exit_index(self, t: int) -> int:
        return 0 if len(self.exit_heads) == 1 else t

    def _exit(self, t: int, h: Tensor) -> Tensor:
        i = self._exit_index(t)
        return self.exit_heads[i](self.exit_norms[i](h))

    @staticmethod
    def _bias(inputs: dict[str, Tensor], dtype: torch.dtype) -> Tensor:
        mask = inputs["mask"]
        zero = torch.zeros((), dtype=dtype, device=mask.device)
        neg = torch.full((), -math.inf, dtype=dtype, device=mask.device)
        return torch.where(mask, zero, neg)[:, None, None, :]

    def embed_inputs(self, inputs: dict[str, Tensor]) -> Tensor:
        """The hidden states before the first block, ``(B, N, d)``."""
        tokens = inputs["tokens"]
        position = self.position[: tokens.shape[1]]
        h = self.embed(tokens) + position
        if self.pointer_map is not None:
            # A pointer to j: the map of j's position embedding (its free embedding unused).
            is_pointer = (tokens < self.max_len).unsqueeze(-1)
            target = self.pointer_map(self.position)[tokens.clamp(max=self.max_len - 1)]
            h = torch.where(is_pointer, target + position, h)
        return h

    # --- the protocol ---------------------------------------------------------------------
    def initial_state(self, inputs: dict[str, Tensor]) -> State:
        h = self.embed_inputs(inputs)
        b, n, _ = h.shape
        logits = h.new_zeros((b, n, self.num_classes))
        return {
            "h": h,
            "logits": logits,
            "prev": logits,
            "run": h.new_zeros((b,)),
            "delta": h.new_ones((b,)),
            "peak": h.new_zeros((b,)),
        }

    def layer(self, t: int, state: State, inputs: dict[str, Tensor]) -> State:
        assert isinstance(state, dict)
        h = self._block(t)(state["h"], self._bias(inputs, state["h"].dtype))
        logits = self._exit(t, h)
        with torch.no_grad():
            mask = inputs["mask"]
            if t == 0:
                same = torch.zeros_like(state["run"], dtype=torch.bool)
            else:
                agree = (logits.argmax(dim=-1) == state["logits"].argmax(dim=-1)) | ~mask
                same = agree.all(dim=1)
            run = torch.where(same, state["run"] + 1, torch.zeros_like(state["run"]))
            top = torch.softmax(logits, dim=-1).amax(dim=-1).masked_fill(~mask, 1.0)
            peak = torch.maximum(state["peak"], top.amin(dim=1))
            real = mask.unsqueeze(-1).to(h.dtype)
            step = ((h - state["h"]) * real).flatten(1).norm(dim=1)
            delta = step / (h * real).flatten(1).norm(dim=1).clamp(min=1e-12)
        return {
            "h": h,
            "logits": logits,
            "prev": state["logits"].detach(),
            "run": run,
            "delta": delta,
            "peak": peak,
        }

    def carried_state(self, state: State) -> State:
        # "prev" and "delta" are read only by this layer's features; the next layer
        # recomputes them.
        assert isinstance(state, dict)
        return {k: v for k, v in state.items() if k not in ("prev", "delta")}

    def readout(self, t: int, state: State, inputs: dict[str, Tensor]) -> Tensor:
        assert isinstance(state, dict)
        return state["logits"]

    def predict_full_depth(self, inputs: dict[str, Tensor]) -> Tensor:
        h = self.embed_inputs(inputs)
        bias = self._bias(inputs, h.dtype)
        for t in range(self.num_layers):
            h = self._block(t)(h, bias)
        return self._exit(self.num_layers - 1, h)

    def policy_features(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> Tensor:
        assert isinstance(state, dict)
        mask = inputs["mask"]
        real = mask.to(prediction.dtype)
        count = real.sum(dim=1, keepdim=True).clamp(min=1.0)
        log_p = torch.log_softmax(prediction, dim=-1)
        p = log_p.exp()
        top2 = p.topk(2, dim=-1).values
        top = top2[..., 0]
        parts = []
        if "exit" in self.feature_groups:
            entropy = -(p * log_p).sum(dim=-1) / math.log(self.num_classes)
            margin = top - top2[..., 1]
            parts += [
                top.masked_fill(~mask, 1.0).amin(dim=1, keepdim=True),
                _masked_mean(top, real, count),
                margin.masked_fill(~mask, 1.0).amin(dim=1, keepdim=True),
                _masked_mean(entropy, real, count),
                (entropy * real).amax(dim=1, keepdim=True),
                _masked_mean((top < UNSURE).to(p.dtype), real, count),
            ]
        if "trajectory" in self.feature_groups:
            if t == 0:
                prev = torch.full_like(p, 1.0 / self.num_classes)
                changed = torch.ones_like(count)
            else:
                prev = torch.softmax(state["prev"], dim=-1)
                moved = (p.argmax(dim=-1) != prev.argmax(dim=-1)).to(p.dtype)
                changed = _masked_mean(moved, real, count)
            run = state["run"].unsqueeze(1).to(p.dtype)
            parts += [
                changed,
                run.clamp(max=self.patience) / self.patience,
                _masked_mean(top - prev.amax(dim=-1), real, count),
                _masked_mean(0.5 * (p - prev).abs().sum(dim=-1), real, count),
                torch.log10(state["delta"].unsqueeze(1).to(p.dtype).clamp(min=1e-6)),
                state["peak"].unsqueeze(1).to(p.dtype),
            ]
        if "input" in self.feature_groups:
            length = inputs["length"].unsqueeze(1).to(p.dtype) / self.max_len
            parts += [length, torch.full_like(length, (t + 1) / self.num_layers)]
        if "hidden" in self.feature_groups:
            i = self._exit_index(t)
            normed = self.exit_norms[i](state["h"]).to(p.dtype)
            parts.append((normed * real.unsqueeze(-1)).sum(dim=1) / count)
        return torch.cat(parts, dim=1)

    def extras(
        self, t: int, state: State, inputs: dict[str, Tensor], prediction: Tensor
    ) -> dict[str, Tensor]:
        assert isinstance(state, dict)
        top = torch.softmax(prediction, dim=-1).amax(dim=-1).masked_fill(~inputs["mask"], 1.0)
        change = 1.0 / (1.0 + state["run"].to(top.dtype))
        return {"confidence": top.amin(dim=1), "change": change}
