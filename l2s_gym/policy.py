"""StopPolicy: one network, shared by every learner (imitation, REINFORCE, PPO, A2C)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def position_encoding(t: Tensor, num_layers: int, dim: int) -> Tensor:
    """Encode 0-based layer indices ``t`` as ``[t/(T-1), sin/cos of t at dim//2 scales]``."""
    frac = t.float() / max(num_layers - 1, 1)
    half = max(dim // 2, 1)
    scales = torch.exp(
        torch.arange(half, device=t.device, dtype=torch.float32) * (-math.log(num_layers) / half)
    )
    angles = t.float().unsqueeze(-1) * scales
    enc = torch.cat([frac.unsqueeze(-1), torch.sin(angles), torch.cos(angles)], dim=-1)
    return enc


PRICE_CENTRES = (-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0)
"""Where the price code's bumps sit, in ``s = log10(lambda / unit + 0.01)``: the default
grid's ``lambda / unit`` = 0, 0.03, 0.1, 0.3, 1, 3, 10 lands at ``s`` = -2, -1.4, -0.96,
-0.51, 0.00, 0.48, 1.00, about one bump each."""
PRICE_WIDTH = 0.5
"""The bumps' width (standard deviation) in ``s``: neighbouring grid prices share some."""
PRICE_CODE_DIM = 1 + len(PRICE_CENTRES)
"""The width of ``price_code``: the inputs a price-conditioned policy adds."""


def price_code(price: Tensor | float, unit: Tensor | float) -> Tensor:
    """A layer price ``lambda`` (loss units) as a price-conditioned policy sees it,
    ``(..., PRICE_CODE_DIM)``: ``log(1 + lambda / unit)`` (``unit`` the predictor's average
    gain per layer on validation, ``l2s_gym.stopping.gain_per_layer``: the default grid of
    0 to 10 gain units maps to 0 to 2.4) and Gaussian bumps ``exp(-(s - c)^2 / (2 w^2))``
    of ``s = log10(lambda / unit + 0.01)`` at the centres ``PRICE_CENTRES`` (width
    ``PRICE_WIDTH``). The bumps give each decade of price inputs of its own: with the
    logarithm alone, the low prices (0, 0.03, 0.1 gain units: codes 0 to 0.1) were hard to
    tell apart, and the one policy stopped at low prices as it did at high ones
    (docs/method.md). Any price, on the grid or off it, has a code, smooth in the price."""
    price = torch.as_tensor(price, dtype=torch.float32)
    ratio = price.clamp_min(0) / torch.as_tensor(unit, dtype=torch.float32, device=price.device)
    s = torch.log10(ratio + 0.01).unsqueeze(-1)
    centres = torch.tensor(PRICE_CENTRES, dtype=torch.float32, device=s.device)
    bumps = torch.exp(-0.5 * ((s - centres) / PRICE_WIDTH) ** 2)
    return torch.cat([torch.log1p(ratio).unsqueeze(-1), bumps], dim=-1)


class StopPolicy(nn.Module):
    """``pi_phi(x, x_t)``: maps the policy features at layer ``t`` and ``t`` to a stop logit.

    One MLP shared across layers, fed the encoded features and a position encoding of
    ``t``. Features that are not flat vectors (images) go through a pluggable
    ``encoder`` first, so every family and every learner uses this one class.

    Args:
        feature_shape: shape of one instance's features at one layer.
        num_layers: ``T``, for the position encoding.
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        encoder: optional module ``(N, *feature_shape) -> (N, D)``; ``None`` flattens.
        pos_dim: size of the position encoding's sin/cos part.
        price_input: a price-conditioned policy ``pi_phi(x, x_t, lambda)``: ``PRICE_CODE_DIM``
            more inputs, ``price_code(lambda, price_unit)`` (after the position encoding). Its price is
            a dial (``set_price``, loss units) that every path reads (``forward``,
            ``layer_logits``, ``chunk_logits``, the folded MLP), or a per-row tensor given
            to ``forward`` / ``trace_logits``. ``price_unit`` is a buffer, saved with the
            weights. ``False`` (the default): the policy of every per-price learner, with
            exactly the inputs, parameters and arithmetic it always had.
    """

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        num_layers: int,
        hidden: int = 64,
        depth: int = 2,
        encoder: nn.Module | None = None,
        pos_dim: int = 8,
        price_input: bool = False,
    ) -> None:
        super().__init__()
        self.price_input = bool(price_input)
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.num_layers = int(num_layers)
        self.pos_dim = int(pos_dim)
        self.encoder = encoder if encoder is not None else nn.Flatten(start_dim=1)
        with torch.no_grad():
            enc_dim = int(self.encoder(torch.zeros(2, *self.feature_shape)).shape[-1])
        in_dim = (
            enc_dim
            + 1
            + 2 * max(self.pos_dim // 2, 1)
            + (PRICE_CODE_DIM if self.price_input else 0)
        )
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(in_dim, hidden), nn.Tanh()]
            in_dim = hidden
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(in_dim, 1)
        # Start undecided-but-patient: a small negative bias means "continue" at first.
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, -1.0)
        # Position encodings per (device, dtype), for ``layer_logits`` (not saved).
        self._positions: dict[tuple[torch.device, torch.dtype], Tensor] = {}
        # The folded MLP of ``layer_logits`` per (device, dtype), with the parameter
        # versions it was built from (not saved).
        self._folds: dict[tuple[torch.device, torch.dtype], tuple[tuple, _FoldedMLP | None]] = {}
        self._price = 0.0
        if self.price_input:
            self.register_buffer("price_unit", torch.ones(()))

    @property
    def price(self) -> float:
        """The dial of a price-conditioned policy: ``lambda`` in loss units (default 0)."""
        return self._price

    def set_price(self, price: float, unit: float | None = None) -> StopPolicy:
        """Set the dial to ``price`` (``lambda``, loss units) and, if given, ``price_unit``
        (the gain per layer the code divides by); returns the policy. Refused by a policy
        that is not price-conditioned (it was trained at one price)."""
        if not self.price_input:
            raise ValueError(
                "set_price: this StopPolicy is not price-conditioned (price_input=False)"
            )
        price = float(price)
        if not (price >= 0 and math.isfinite(price)):
            raise ValueError(f"set_price: a price must be finite and >= 0, got {price!r}")
        if unit is not None:
            if not (unit > 0 and math.isfinite(unit)):
                raise ValueError(f"set_price: price_unit must be finite and > 0, got {unit!r}")
            self.price_unit.fill_(float(unit))
        self._price = price
        return self

    def _price_column(self, price: Tensor | float | None, n: int, like: Tensor) -> Tensor:
        """``(n, PRICE_CODE_DIM)`` codes of ``price`` (``None``: the dial) for rows like ``like``."""
        value = self._price if price is None else price
        code = price_code(
            torch.as_tensor(value, device=like.device), self.price_unit.to(like.device)
        )
        d = code.shape[-1]
        return code.to(like.dtype).reshape(-1, d).expand(n, d)

    def hidden_features(self, features: Tensor, t: Tensor, price: Tensor | None = None) -> Tensor:
        """The last hidden layer for ``features`` ``(N, *feature_shape)`` at layers ``t`` ``(N,)``
        (a price-conditioned policy: at prices ``price`` ``(N,)``, loss units, or its dial)."""
        z = self.encoder(features)
        pos = position_encoding(t, self.num_layers, self.pos_dim).to(z.dtype)
        if self.price_input:
            pos = torch.cat([pos, self._price_column(price, z.shape[0], z)], dim=-1)
        elif price is not None:
            raise ValueError("a price was given to a StopPolicy that is not price-conditioned")
        return self.body(torch.cat([z, pos], dim=-1))

    def forward(self, features: Tensor, t: Tensor, price: Tensor | None = None) -> Tensor:
        """Stop logits ``(N,)`` for features ``(N, *feature_shape)`` at layers ``t`` ``(N,)``
        (and, price-conditioned, prices ``price`` ``(N,)`` or the dial)."""
        return self.head(self.hidden_features(features, t, price)).squeeze(-1)

    def layer_logits(self, features: Tensor, t: int) -> Tensor:
        """``forward(features, t)`` for ``N`` instances all at the one layer ``t`` (an int).

        The inference path of ``l2s_gym.runner.StopRunner``, for a policy in eval mode
        without gradients. It computes the same function as ``forward`` with fewer and
        cheaper kernels (``_FoldedMLP``): the position encoding's share of the first layer
        is a per-layer bias computed once, and each ``tanh(u)`` is computed as
        ``2 sigmoid(2u) - 1`` with the factors folded into the weights (a float32 ``tanh``
        on a CPU costs about six ``sigmoid``s). The logits equal ``forward``'s up to float
        rounding (about 1e-6; the tests check it); a stop can differ from the trace's only
        for a logit that close to the rule's boundary. With gradients enabled, and for a
        body that is not the plain ``Linear``/``Tanh`` stack (a subclass's), it runs
        module by module, as ``forward`` (the folded weights are not differentiable).
        """
        return self._layer_logits(features, t, None)

    def frozen_layer_logits(self) -> Callable[[Tensor, int], Tensor]:
        """``layer_logits`` for a caller that holds the weights fixed while it uses the
        result (``StopRunner``, for one batch): the check that the cached folded MLP is
        still the weights' (a look at every parameter's version, which at batch 1 costs as
        much as the MLP itself) is done on the first call only."""
        folded: list[_FoldedMLP | None] = []
        return lambda features, t: self._layer_logits(features, t, folded)

    def _layer_logits(
        self, features: Tensor, t: int, frozen: list[_FoldedMLP | None] | None
    ) -> Tensor:
        z = features.flatten(1) if isinstance(self.encoder, nn.Flatten) else self.encoder(features)
        if torch.is_grad_enabled():
            folded = None  # the folded weights are detached: keep the path autograd sees
        elif frozen is None:
            folded = self._folded(z)
        else:
            if not frozen:
                frozen.append(self._folded(z))
            folded = frozen[0]
        if folded is None:
            table = self._position_table(z)
            return self._mlp(torch.cat([z, table[t].expand(z.shape[0], table.shape[1])], dim=-1))
        return folded(z, t)

    def chunk_logits(self, features: Tensor, t0: int) -> Tensor:
        """Stop logits ``(N, k)`` for features ``(N, k, *feature_shape)`` of the ``k``
        consecutive layers ``t0 .. t0 + k - 1``: ``layer_logits`` of ``k`` layers in one
        call (``StopRunner``'s look-ahead). Equal to ``forward`` up to float rounding (the
        matrix products run on ``N k`` rows at once, and BLAS may sum in another order).
        """
        n, k = features.shape[:2]
        flat = features.reshape(n * k, *features.shape[2:])
        z = flat.flatten(1) if isinstance(self.encoder, nn.Flatten) else self.encoder(flat)
        folded = None if torch.is_grad_enabled() else self._folded(z)
        if folded is not None:
            return folded.chunk(z.reshape(n, k, z.shape[-1]), t0)
        table = self._position_table(z)[t0 : t0 + k]
        pos = table.unsqueeze(0).expand(n, k, table.shape[1]).reshape(n * k, table.shape[1])
        return self._mlp(torch.cat([z, pos], dim=-1)).reshape(n, k)

    def _position_table(self, z: Tensor) -> Tensor:
        """``(T, P)`` position encodings of every layer; price-conditioned, with the dial's
        price code as one more column (the inputs after the features, at each layer)."""
        key = (z.device, z.dtype)
        table = self._positions.get(key)
        if table is None:
            layers = torch.arange(self.num_layers, device=z.device)
            table = position_encoding(layers, self.num_layers, self.pos_dim).to(z.dtype)
            self._positions[key] = table
        if self.price_input:
            table = torch.cat([table, self._price_column(None, table.shape[0], table)], dim=-1)
        return table

    def _folded(self, z: Tensor) -> _FoldedMLP | None:
        """The folded MLP for ``z``'s device and dtype and the current weights (cached;
        rebuilt when a parameter changes: an optimiser step or ``load_state_dict``)."""
        key = (z.device, z.dtype)
        version = tuple((p.data_ptr(), p._version) for p in self.parameters())
        if self.price_input:  # the dial's code is folded into the per-layer bias
            version += ((self._price, float(self.price_unit), self.price_unit._version),)
        cached = self._folds.get(key)
        if cached is not None and cached[0] == version:
            return cached[1]
        with torch.inference_mode(False):  # plain tensors, usable outside inference mode
            folded = _FoldedMLP.build(self, self._position_table(z))
        self._folds[key] = (version, folded)
        return folded

    def _mlp(self, h: Tensor) -> Tensor:
        for module in self.body:
            if isinstance(module, nn.Linear):
                h = F.linear(h, module.weight, module.bias)
            elif isinstance(module, nn.Tanh):
                h = h.tanh_()
            else:
                h = module(h)
        return F.linear(h, self.head.weight, self.head.bias).squeeze(-1)

    def trace_logits(self, features: Tensor, price: Tensor | None = None) -> Tensor:
        """Stop logits ``(B, T)`` for a trace's features ``(B, T, *feature_shape)`` (a
        price-conditioned policy: at prices ``price`` ``(B,)``, one per trace, or the dial)."""
        b, t = features.shape[:2]
        layer = torch.arange(t, device=features.device).expand(b, t).reshape(-1)
        if price is not None:
            price = torch.as_tensor(price, device=features.device).reshape(b, 1).expand(b, t)
            price = price.reshape(-1)
        flat = features.reshape(b * t, *features.shape[2:])
        return self.forward(flat, layer, price).reshape(b, t)


class _FoldedMLP:
    """``StopPolicy``'s MLP after its encoder, rewritten for inference at one layer ``t``.

    With ``W_z``, ``W_p`` the first layer's columns for the encoded features and for the
    position encoding ``p_t``, and ``tanh(u) = 2 sigmoid(2u) - 1``:

    - first layer: ``s_1 = sigmoid(2 W_z z + 2 (W_p p_t + b_1))``: one ``linear`` with a
      per-layer bias from a ``(T, H)`` table (no concatenation of ``p_t``);
    - hidden layer ``i > 1``: ``s_i = sigmoid(4 W_i s_{i-1} + 2 (b_i - W_i 1))``;
    - head: ``2 W_h s_d + (b_h - W_h 1)`` (with no hidden layer: ``W_z z + W_p p_t + b_h``).

    The same function as ``forward`` in exact arithmetic; built in float64, then cast.
    """

    def __init__(self, first: Tensor, bias: Tensor, hidden: list[tuple[Tensor, Tensor]]) -> None:
        self.first, self.bias, self.hidden = first, bias, hidden

    @staticmethod
    def build(policy: StopPolicy, positions: Tensor) -> _FoldedMLP | None:
        modules = list(policy.body)
        pairs = list(zip(modules[::2], modules[1::2], strict=False))
        if len(modules) % 2 or not all(
            isinstance(a, nn.Linear) and isinstance(b, nn.Tanh) for a, b in pairs
        ):
            return None
        dtype = positions.dtype
        with torch.no_grad():
            linears = [a for a, _ in pairs] + [policy.head]

            def wb(m: nn.Linear) -> tuple[Tensor, Tensor]:
                w = m.weight.detach().to(positions.device, torch.float64)
                b = m.bias.detach().to(positions.device, torch.float64)
                return w, b

            w, b = wb(linears[0])
            d = w.shape[1] - positions.shape[1]
            bias = positions.double() @ w[:, d:].T + b  # (T, out): W_p p_t + b_1
            scale = 2.0 if len(linears) > 1 else 1.0
            first, bias = scale * w[:, :d], scale * bias
            rest = []
            for i, m in enumerate(linears[1:], start=1):
                w, b = wb(m)
                last = i == len(linears) - 1
                # tanh(u) = 2 s - 1: W (2 s - 1) + b = 2 W s + (b - W 1); inside a sigmoid
                # of twice the pre-activation, one more factor 2.
                f = 1.0 if last else 2.0
                rest.append(((2 * f * w).to(dtype).contiguous(), (f * (b - w.sum(1))).to(dtype)))
            return _FoldedMLP(first.to(dtype).contiguous(), bias.to(dtype).contiguous(), rest)

    def __call__(self, z: Tensor, t: int) -> Tensor:
        h = F.linear(z, self.first, self.bias[t])
        for w, b in self.hidden:
            h = F.linear(h.sigmoid_(), w, b)
        return h.squeeze(-1)

    def chunk(self, z: Tensor, t0: int) -> Tensor:
        """Logits ``(N, k)`` for ``z`` ``(N, k, D)`` of the layers ``t0 .. t0 + k - 1``."""
        k = z.shape[1]
        h = F.linear(z, self.first).add_(self.bias[t0 : t0 + k])
        for w, b in self.hidden:
            h = F.linear(h.sigmoid_(), w, b)
        return h.squeeze(-1)
