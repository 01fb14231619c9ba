"""Pointer chasing: label every node with the bit at the end of its chain of pointers.

Every instance is a sequence of ``n`` nodes (``n`` drawn per instance in ``[min_nodes,
max_nodes]``, padded to ``max_nodes``). Node ``i`` holds one symbol: a *pointer* to another
node (a position ``j`` of the sequence, symbol ``j``) or a *terminal* carrying a bit
(symbols ``max_nodes`` and ``max_nodes + 1``). The pointers form disjoint chains, each
ending in a terminal with a random bit, laid out at random positions (a random
permutation), so nothing but following the pointers tells a node's bit. The target of
every node is the bit of the terminal its chain ends in; padding is ``-100``.

The *difficulty* of an instance is the number of hops ``H`` of its longest chain (its
deepest node is ``H`` pointers from its terminal). A transformer encoder block moves a
node's information a bounded number of hops (one by reading the node it points to, or
twice as far as the block before by pointer doubling), so an instance with a longer
chain needs more blocks until every node is labelled: the oracle's stop layer grows with
``H``. The first chain of every instance has ``H`` hops, drawn uniformly in ``[0,
max_hops]`` (``max_hops <= max_nodes - 1``; ``n`` is raised to ``H + 1`` where needed);
the other nodes form chains of random lengths of 1 to ``H + 1`` nodes. The validation and
test sets are generated once from the task seed with ``val_per_hops`` and
``test_per_hops`` instances at each ``H``. The groups are ``H`` in bins of ``group_width``
(``"0-1"``, ``"2-3"``, ...; ``"3"`` for a bin of one).

Inputs: ``"tokens"`` ``(B, max_nodes)`` long (padding: symbol ``max_nodes + 2``),
``"mask"`` ``(B, max_nodes)`` bool (true at real nodes) and ``"length"`` ``(B,)`` float
(``n``: what the mask says, as a number the stop policy may read). Predictions are
per-node 2-class logits ``(B, max_nodes, 2)``. Loss: the mean cross-entropy over the
instance's real nodes; metric: the share of its nodes labelled right, in percent
(averaged over instances).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from l2s_gym.config import ConfigError, positive
from l2s_gym.registry import register_task
from l2s_gym.task import Batch, Task

IGNORE = -100
"""Target of a padded position (``F.cross_entropy``'s ``ignore_index``)."""


@dataclass
class PointerChasingConfig:
    """Parameters of the pointer-chasing task."""

    min_nodes: int = 8
    """Fewest nodes of an instance (raised per instance to ``H + 1`` where needed)."""
    max_nodes: int = 16
    """Most nodes of an instance: the padded sequence length."""
    max_hops: int = 15
    """Hops ``H`` of an instance's longest chain are drawn in ``[0, max_hops]``
    (at most ``max_nodes - 1``)."""
    val_per_hops: int = 100
    """Validation instances at each ``H`` in ``0..max_hops``."""
    test_per_hops: int = 200
    """Test instances at each ``H`` in ``0..max_hops``."""
    group_width: int = 4
    """Values of ``H`` per group of the tables (``"0-3"``, ``"4-7"``, ... with 4)."""

    def validate(self, path: str) -> None:
        positive(self, path, "min_nodes", "max_nodes", "val_per_hops", "test_per_hops")
        positive(self, path, "group_width")
        if self.min_nodes < 2:
            raise ConfigError(f"{path}.min_nodes: must be >= 2, got {self.min_nodes!r}")
        if self.max_nodes < self.min_nodes:
            raise ConfigError(
                f"{path}.max_nodes: must be >= min_nodes ({self.min_nodes}), got {self.max_nodes!r}"
            )
        if not 0 <= self.max_hops < self.max_nodes:
            raise ConfigError(
                f"{path}.max_hops: must be in [0, max_nodes - 1] = [0, {self.max_nodes - 1}], "
                f"got {self.max_hops!r}"
            )


def draw_instances(
    hops: np.ndarray, cfg: PointerChasingConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Instances whose longest chains have ``hops`` ``(B,)`` hops, drawn with ``rng``.

    Returns numpy arrays ``tokens`` ``(B, N)``, ``mask`` ``(B, N)``, ``length`` ``(B,)``,
    ``target`` ``(B, N)`` (``IGNORE`` at padding), ``depth`` ``(B, N)`` (each node's hops
    to its terminal; -1 at padding) and ``hops`` ``(B,)`` (``N = max_nodes``).
    """
    big = cfg.max_nodes
    term, pad = big, big + 2
    b = len(hops)
    tokens = np.full((b, big), pad, dtype=np.int64)
    target = np.full((b, big), IGNORE, dtype=np.int64)
    depth = np.full((b, big), -1, dtype=np.int64)
    mask = np.zeros((b, big), dtype=bool)
    length = np.zeros(b, dtype=np.int64)
    for i, h in enumerate(np.asarray(hops).tolist()):
        n = int(rng.integers(max(cfg.min_nodes, h + 1), big + 1))
        order = rng.permutation(n)  # nodes in chain order: positions order[start:start+size]
        sizes = [h + 1]
        rest = n - (h + 1)
        while rest > 0:
            size = int(rng.integers(1, min(h + 1, rest) + 1))
            sizes.append(size)
            rest -= size
        bits = rng.integers(0, 2, size=len(sizes))
        start = 0
        for size, bit in zip(sizes, bits.tolist(), strict=True):
            chain = order[start : start + size]
            tokens[i, chain[:-1]] = chain[1:]
            tokens[i, chain[-1]] = term + bit
            target[i, chain] = bit
            depth[i, chain] = np.arange(size - 1, -1, -1)
            start += size
        mask[i, :n] = True
        length[i] = n
    return {
        "tokens": tokens,
        "mask": mask,
        "length": length,
        "target": target,
        "depth": depth,
        "hops": np.asarray(hops, dtype=np.int64),
    }


def chase(tokens: Tensor, mask: Tensor, max_nodes: int) -> tuple[Tensor, Tensor]:
    """Follow every node's pointers (a reference solver): per node ``(depth, bit)``
    ``(B, N)``, each -1 / ``IGNORE`` at padding."""
    b, n = tokens.shape
    node = torch.arange(n).expand(b, n).clone()
    depth = torch.zeros((b, n), dtype=torch.long)
    for _ in range(n):
        sym = tokens.gather(1, node)
        going = sym < max_nodes
        depth = depth + going.long()
        node = torch.where(going, sym, node)
    bit = tokens.gather(1, node) - max_nodes
    return torch.where(mask, depth, -1), torch.where(mask, bit, IGNORE)


@register_task("pointer_chasing", PointerChasingConfig)
class PointerChasingTask(Task):
    """Label every node with its chain's terminal bit; loss mean cross-entropy over the
    nodes; metric the share of nodes right (%).

    See the module doc for the data. Groups: bins of the longest chain's hops ``H``.
    """

    name = "pointer_chasing"
    metric_name = "node accuracy (%)"
    higher_is_better = True
    group_title = "hops"
    default_predictor = "exit_transformer"
    env_id = "l2s/PointerChasing-v1"

    def __init__(self, cfg: PointerChasingConfig, seed: int = 0, device: str = "cpu") -> None:
        super().__init__(seed, device)
        self.cfg = cfg
        self.max_nodes = cfg.max_nodes
        self.vocab_size = cfg.max_nodes + 3
        """Pointer symbols ``0..N-1``, the two terminals ``N``, ``N + 1``, padding ``N + 2``."""
        self.pad_symbol = cfg.max_nodes + 2
        self.num_classes = 2
        w = cfg.group_width
        self.group_names = []
        for lo in range(0, cfg.max_hops + 1, w):
            hi = min(lo + w - 1, cfg.max_hops)
            self.group_names.append(f"{lo}" if lo == hi else f"{lo}-{hi}")

    def group_of(self, hops: Tensor) -> Tensor:
        """The group (bin) of each longest-chain hop count."""
        return torch.div(hops, self.cfg.group_width, rounding_mode="floor")

    def _batch(self, data: dict[str, np.ndarray], device: torch.device) -> Batch:
        inputs = {
            "tokens": torch.from_numpy(data["tokens"]).to(device),
            "mask": torch.from_numpy(data["mask"]).to(device),
            "length": torch.from_numpy(data["length"]).float().to(device),
        }
        hops = torch.from_numpy(data["hops"]).to(device)
        return Batch(inputs, torch.from_numpy(data["target"]).to(device), self.group_of(hops))

    def train_batch(self, batch_size: int, generator: torch.Generator) -> Batch:
        # One draw from the torch generator seeds this batch's numpy generator.
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=generator.device)
        rng = np.random.default_rng(int(seed.item()))
        hops = rng.integers(0, self.cfg.max_hops + 1, size=batch_size)
        return self._batch(draw_instances(hops, self.cfg, rng), self.device)

    def make_eval_set(self, split: str) -> Batch:
        per = self.cfg.val_per_hops if split == "val" else self.cfg.test_per_hops
        rng = np.random.default_rng(self.stream_seed(1 if split == "val" else 2))
        hops = np.repeat(np.arange(self.cfg.max_hops + 1), per)
        return self._batch(draw_instances(hops, self.cfg, rng), self.device)

    def hops_of(self, batch: Batch) -> Tensor:
        """Each instance's longest-chain hops ``H``, recomputed from its inputs (``chase``)."""
        depth, _ = chase(batch.inputs["tokens"].cpu(), batch.inputs["mask"].cpu(), self.max_nodes)
        return depth.amax(dim=1)

    def loss(self, prediction: Tensor, targets: Tensor) -> Tensor:
        per_node = F.cross_entropy(
            prediction.transpose(1, 2), targets, reduction="none", ignore_index=IGNORE
        )
        count = (targets != IGNORE).sum(dim=1).clamp(min=1)
        return per_node.sum(dim=1) / count.to(per_node.dtype)

    def metric_stat(self, prediction: Tensor, targets: Tensor) -> Tensor:
        real = targets != IGNORE
        right = (prediction.argmax(dim=-1) == targets) & real
        return right.sum(dim=1).float() * 100.0 / real.sum(dim=1).clamp(min=1).float()
