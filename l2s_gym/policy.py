"""StopPolicy: one network, shared by every learner (imitation, REINFORCE, PPO, A2C)."""

from __future__ import annotations

import math

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
    """

    def __init__(
        self,
        feature_shape: tuple[int, ...],
        num_layers: int,
        hidden: int = 64,
        depth: int = 2,
        encoder: nn.Module | None = None,
        pos_dim: int = 8,
    ) -> None:
        super().__init__()
        self.feature_shape = tuple(int(s) for s in feature_shape)
        self.num_layers = int(num_layers)
        self.pos_dim = int(pos_dim)
        self.encoder = encoder if encoder is not None else nn.Flatten(start_dim=1)
        with torch.no_grad():
            enc_dim = int(self.encoder(torch.zeros(2, *self.feature_shape)).shape[-1])
        in_dim = enc_dim + 1 + 2 * max(self.pos_dim // 2, 1)
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

    def hidden_features(self, features: Tensor, t: Tensor) -> Tensor:
        """The last hidden layer for ``features`` ``(N, *feature_shape)`` at layers ``t`` ``(N,)``."""
        z = self.encoder(features)
        pos = position_encoding(t, self.num_layers, self.pos_dim).to(z.dtype)
        return self.body(torch.cat([z, pos], dim=-1))

    def forward(self, features: Tensor, t: Tensor) -> Tensor:
        """Stop logits ``(N,)`` for features ``(N, *feature_shape)`` at layers ``t`` ``(N,)``."""
        return self.head(self.hidden_features(features, t)).squeeze(-1)

    def layer_logits(self, features: Tensor, t: int) -> Tensor:
        """``forward(features, t)`` for ``N`` instances all at the one layer ``t`` (an int).

        The inference path of ``l2s_gym.runner.StopRunner``, for a policy in eval mode
        without gradients: the position encodings of the ``T`` layers are computed once per
        device and dtype, the same way ``forward`` computes them, and the MLP runs as its
        plain ``linear``/``tanh`` calls (no module dispatch, activations in place), so the
        logits are ``forward``'s bit for bit (the tests check it) at a fraction of the
        per-call overhead that dominates at small batches.
        """
        if isinstance(self.encoder, nn.Flatten):
            z = features.flatten(1)
        else:
            z = self.encoder(features)
        table = self._position_table(z)
        return self._mlp(torch.cat([z, table[t].expand(z.shape[0], table.shape[1])], dim=-1))

    def chunk_logits(self, features: Tensor, t0: int) -> Tensor:
        """Stop logits ``(N, k)`` for features ``(N, k, *feature_shape)`` of the ``k``
        consecutive layers ``t0 .. t0 + k - 1``: ``layer_logits`` of ``k`` layers in one
        call (``StopRunner``'s look-ahead). Equal to ``forward`` up to float rounding (the
        matrix products run on ``N k`` rows at once, and BLAS may sum in another order).
        """
        n, k = features.shape[:2]
        flat = features.reshape(n * k, *features.shape[2:])
        z = flat.flatten(1) if isinstance(self.encoder, nn.Flatten) else self.encoder(flat)
        table = self._position_table(z)[t0 : t0 + k]
        pos = table.unsqueeze(0).expand(n, k, table.shape[1]).reshape(n * k, table.shape[1])
        return self._mlp(torch.cat([z, pos], dim=-1)).reshape(n, k)

    def _position_table(self, z: Tensor) -> Tensor:
        key = (z.device, z.dtype)
        table = self._positions.get(key)
        if table is None:
            layers = torch.arange(self.num_layers, device=z.device)
            table = position_encoding(layers, self.num_layers, self.pos_dim).to(z.dtype)
            self._positions[key] = table
        return table

    def _mlp(self, h: Tensor) -> Tensor:
        for module in self.body:
            if isinstance(module, nn.Linear):
                h = F.linear(h, module.weight, module.bias)
            elif isinstance(module, nn.Tanh):
                h = h.tanh_()
            else:
                h = module(h)
        return F.linear(h, self.head.weight, self.head.bias).squeeze(-1)

    def trace_logits(self, features: Tensor) -> Tensor:
        """Stop logits ``(B, T)`` for a trace's features ``(B, T, *feature_shape)``."""
        b, t = features.shape[:2]
        layer = torch.arange(t, device=features.device).expand(b, t).reshape(-1)
        return self.forward(features.reshape(b * t, *features.shape[2:]), layer).reshape(b, t)
