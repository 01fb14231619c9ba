"""The batched stop environment: N instances walk a frozen predictor's layers on its device.

This is the one implementation of the environment's maths. ``StopEnv`` (one instance,
Gymnasium) and ``StopVectorEnv`` (numpy at the boundary) in ``stop_env.py`` wrap it; RL
agents that live on the device use it directly, torch tensors in and out.

An observation is the flat vector ``[policy features at layer t, t]`` with ``t`` the
0-based index of the last layer computed (``make_obs``); ``split_obs`` gives back what a
``StopPolicy`` takes, so ``policy(*split_obs(obs, env.feature_shape))`` acts on it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from l2s_gym.predictor import LayeredPredictor, State, map_state, select_rows, zip_state
from l2s_gym.stopping import cost_adjusted_losses, cumulative_costs, oracle_log_q
from l2s_gym.task import Batch, Task

REWARD_MODES = ("terminal_loss", "log_oracle", "improvement")
"""``terminal_loss``: -loss_t/beta on stopping; ``log_oracle``: log q*(t) on stopping;
``improvement``: (loss_t - loss_{t+1})/beta on each continue step."""

INSTANCE_BLOCK = 256
"""Instances are drawn from the task in blocks of this size (see ``BatchedStopEnv``)."""

PRICE_STREAM = 104_729
"""Offset of the price stream's seed from the instance stream's (``BatchedStopEnv``'s
``prices``): the two streams are apart, so drawing prices leaves the instances as they are."""


def make_obs(features: Tensor, t: Tensor, price: float | Tensor | None = None) -> Tensor:
    """Flatten ``(N, *feature_shape)`` features and append the 0-based layer index ``t`` ``(N,)``.

    Returns ``(N, prod(feature_shape) + 1)`` float32; with ``price`` (``lambda``, an env's
    ``observe_price``: one number, or one per row ``(N,)``), ``[features, lambda, t]``,
    ``(N, prod(feature_shape) + 2)``.
    """
    flat = features.reshape(features.shape[0], -1).to(torch.float32)
    parts = [flat, t.to(torch.float32).unsqueeze(1)]
    if isinstance(price, Tensor):
        parts.insert(1, price.to(device=flat.device, dtype=torch.float32).reshape(-1, 1))
    elif price is not None:
        parts.insert(1, torch.full_like(parts[1], float(price)))
    return torch.cat(parts, dim=1)


def split_obs(obs: Tensor, feature_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Inverse of ``make_obs``: obs ``(N, obs_dim)`` -> features ``(N, *feature_shape)``, ``t``.

    ``t`` is ``(N,)`` long, so ``policy(*split_obs(obs, shape))`` runs a ``StopPolicy``. An
    observation that also shows the price (``observe_price``) gives the same two; its
    ``lambda`` is ``obs_price``'s.
    """
    features = obs[:, : math.prod(feature_shape)].reshape(obs.shape[0], *feature_shape)
    t = obs[:, -1].round().long()
    return features, t


def obs_price(obs: Tensor, feature_shape: tuple[int, ...]) -> Tensor | None:
    """The price ``lambda`` ``(N,)`` an ``observe_price`` observation shows; ``None`` for an
    observation without one (``[features, t]``)."""
    n = math.prod(feature_shape)
    return obs[:, n] if obs.shape[1] == n + 2 else None


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    """``mask`` ``(N,)`` shaped to broadcast against ``like`` ``(N, ...)``."""
    return mask.view(-1, *([1] * (like.dim() - 1)))


def _where_rows(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(_rows(mask, a), a, b)


def _where_batch(mask: Tensor, a: Batch, b: Batch) -> Batch:
    """Row ``i`` of ``a`` where ``mask[i]``, else of ``b``."""
    return Batch(
        {k: _where_rows(mask, a.inputs[k], v) for k, v in b.inputs.items()},
        _where_rows(mask, a.targets, b.targets),
        torch.where(mask, a.groups, b.groups),
    )


def _cat_batches(batches: list[Batch]) -> Batch:
    return Batch(
        {k: torch.cat([b.inputs[k] for b in batches]) for k in batches[0].inputs},
        torch.cat([b.targets for b in batches]),
        torch.cat([b.groups for b in batches]),
    )


def _check_args(
    predictor: LayeredPredictor, num_envs: int, beta: float, reward: str, cost: float,
    instance_block: int, reward_scale: float, prices: Sequence[float] | None,
) -> list[float] | None:  # fmt: skip
    """``BatchedStopEnv``'s argument checks (one ``ValueError`` line each, ``TypeError``
    for a predictor that is not one); returns the price grid as floats (``None``: none)."""
    if not (math.isfinite(reward_scale) and reward_scale > 0):
        raise ValueError(f"reward_scale must be a finite number > 0, got {reward_scale!r}")
    if reward not in REWARD_MODES:
        raise ValueError(f"reward must be one of {', '.join(REWARD_MODES)}; got {reward!r}")
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    if not (math.isfinite(cost) and cost >= 0):
        raise ValueError(f"cost must be a finite number >= 0, got {cost!r}")
    if instance_block < 1:
        raise ValueError(f"instance_block must be >= 1, got {instance_block!r}")
    grid = None if prices is None else check_prices(prices, cost)
    if not isinstance(predictor, LayeredPredictor):
        raise TypeError(f"predictor must be a LayeredPredictor, got {type(predictor).__name__}")
    predictor.check_protocol()
    if predictor.num_layers < 2:
        raise ValueError(
            f"{type(predictor).__name__}.num_layers is {predictor.num_layers}: the stop "
            "environment needs num_layers >= 2 (with one layer every episode ends after "
            "layer 1 and the agent has no decision to take)"
        )
    return grid


def _check_price_weights(
    weights: Sequence[float] | None, grid: list[float] | None
) -> list[float] | None:
    """``price_weights`` as floats, one per grid price, each finite and ``> 0``; one
    ``ValueError`` line otherwise."""
    if weights is None:
        return None
    if grid is None:
        raise ValueError("price_weights needs prices (one factor per grid price)")
    try:
        out = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ValueError(f"price_weights must be numbers > 0, got {weights!r}") from None
    if len(out) != len(grid):
        raise ValueError(f"price_weights: {len(out)} factors for {len(grid)} prices")
    if not all(math.isfinite(w) and w > 0 for w in out):
        raise ValueError(f"price_weights must be finite numbers > 0, got {out}")
    return out


def balanced_price_weights(prices: Sequence[float], unit: float) -> list[float]:
    """``1 / (1 + lambda / unit)`` per grid price (loss units; ``unit``: the gain per layer,
    the price code's unit): an episode's rewards at price ``lambda`` span about ``1 +
    lambda / unit`` gains per layer, so these factors give every price about the same
    weight in a gradient over all of them (RL one-policy trials' default,
    ``frontier.one_policy_balance``)."""
    if not (math.isfinite(unit) and unit > 0):
        raise ValueError(f"unit must be a finite number > 0, got {unit!r}")
    return [1.0 / (1.0 + float(p) / unit) for p in prices]


def check_prices(prices: Sequence[float], cost: float) -> list[float]:
    """``prices`` as a list of floats, or one ``ValueError`` line saying what is wrong."""
    try:
        if isinstance(prices, (str, bytes)):
            raise TypeError
        grid = [float(p) for p in prices]
    except (TypeError, ValueError):
        raise ValueError(f"prices must be a sequence of numbers >= 0, got {prices!r}") from None
    if not grid:
        raise ValueError("prices must hold at least one price (loss units), got an empty list")
    bad = [p for p in grid if not (math.isfinite(p) and p >= 0)]
    if bad:
        raise ValueError(f"prices must be finite numbers >= 0, got {bad[0]!r} in {grid}")
    if cost:
        raise ValueError(
            f"cost={cost!r} and prices={grid}: give one of them (with prices each episode "
            "draws its own price; leave cost at 0)"
        )
    return grid


class BatchedStopEnv:
    """N instances of the stop problem advance together on ``predictor.device``.

    Episode: ``reset`` draws an instance per row and computes layer 1; the first
    observation is its features at ``t = 0``. Each ``step`` takes an action per row,
    ``0`` continue or ``1`` stop. Continue computes the next layer (and only then: the
    layers an agent never reaches are never computed); stop ends the episode at the
    current layer. Continuing into the last layer ``T`` ends the episode there, in the same
    step (layer ``T`` always stops, so no decision is asked there): decisions are taken at
    ``t = 0 .. T - 2`` only, an episode lasts at most ``T - 1`` steps and stop times are
    ``1..T``. Rows whose episode ended are reset in the same step (same-step autoreset):
    the returned observation is already layer 1 of a fresh instance, and
    ``info["terminal_obs"]`` holds the last observation of the one that ended (at layer
    ``T`` its ``t`` is ``T - 1``, the only observation with that index). A row computes one
    layer per step (the next layer, or layer 1 of its fresh instance), and a row arriving
    at layer ``T`` computes two (layer ``T``, then layer 1 of its fresh instance), all in
    one ``LayeredPredictor.forward_step`` call (one call per distinct layer inside).
    A predictor with ``num_layers = 1`` leaves no decision at all and is refused.

    Rewards (``beta`` is the oracle's temperature, ``l_t`` the task's per-sample loss after
    layer ``t``):

    - ``terminal_loss``: stopping at ``t`` earns ``-l_t / beta``; continuing earns 0.
      Only computed layers are needed.
    - ``log_oracle``: stopping at ``t`` earns ``log q*(t) = -l_t / beta - logsumexp_tau(-l_tau
      / beta)``, the same objective without the per-instance constant. The normaliser needs
      all ``T`` losses, so in this mode every fresh instance gets a full pass of all ``T``
      layers when it starts, and those ``T`` evaluations are counted in ``layer_evals``
      (the episode then reads its features from that pass and computes nothing more).
      This mode synchronises with the host once per step (it needs the number of fresh
      instances to run the pass on them only).
    - ``improvement`` (dense): each continue step from ``t`` to ``t + 1`` earns
      ``(l_t - l_{t+1}) / beta``; stopping earns 0. An episode's return is
      ``-l_stop / beta + l_1 / beta``: the terminal objective up to a per-instance constant.
    - ``cost`` ``lambda >= 0`` (in units of the loss; ``l2s_gym.stopping.cost_adjusted_losses``
      is the one definition): walking layer ``t`` is charged ``lambda c_t / beta`` when the
      layer is computed (layer 1 on the episode's first step), ``c_t`` the predictor's
      relative layer costs rescaled to mean 1 (``LayeredPredictor.layer_costs``; all 1 by
      default). Stopping at ``t`` therefore costs ``lambda C_t / beta`` in total, and an
      episode's return is ``-(l_t + lambda C_t) / beta`` up to a per-instance constant. In
      ``log_oracle`` mode the stop reward is ``log q*_lambda(t) + lambda C_t / beta`` (the
      oracle of the cost-adjusted losses, its cost part paid per layer instead), so the
      return is exactly ``log q*_lambda(t)``; the normaliser's full pass is not charged.
    - ``prices`` (a grid of ``lambda``, loss units; instead of ``cost``): each episode draws
      its own price, uniformly from the grid, when its row starts it (at ``reset`` and at
      every autoreset), and every reward above charges that row's price, ``log_oracle``'s
      oracle included (``q*_lambda`` at the row's ``lambda``). The observation shows it
      (``prices`` implies ``observe_price``); ``row_prices`` holds the ongoing episodes'
      prices, and a row's terminal observation shows the price of the episode that ended.
      The draws come from a ``torch.Generator`` of their own on the device, seeded from
      ``seed + PRICE_STREAM`` (restarted by ``reset(seed=s)`` from ``s + PRICE_STREAM``),
      one draw per row and step (kept only where a row starts an episode): reproducible
      for a given ``seed`` and ``num_envs``, and the instance stream is the one without
      ``prices``.
    - ``price_weights`` (with ``prices``, one factor ``> 0`` per grid price): every reward of
      an episode at price ``prices[i]`` is multiplied by ``price_weights[i]``. Each price's
      objective is scaled by a constant, so its best policy is the same; what changes is how
      much each price weighs in a gradient over episodes at all of them
      (``balanced_price_weights``: ``1 / (1 + lambda / g)``, so that a high price's large
      rewards do not drown a low price's small ones).

    Instances come from ``task.train_batch`` with a ``torch.Generator`` seeded from
    ``seed``, drawn in blocks of ``instance_block`` and handed to rows in row order as
    episodes start. The stream does not depend on ``num_envs``: with the same seed, row
    ``i``'s first episode is the ``i``-th instance, which is also the single env's ``i``-th
    episode. ``reset(seed=s)`` restarts the stream, so it gives identical episodes.

    ``info`` (all tensors ``(N,)`` on the device): ``terminal_obs`` ``(N, obs_dim)``;
    ``t``, the layers walked (1-based) by the episode that ended in this step, or by the
    ongoing one; ``loss`` and ``metric_stat`` at that layer; ``layers_computed``, the layer
    evaluations that episode cost (``T`` in ``log_oracle`` mode, ``t`` otherwise);
    ``best_layer``, the oracle's best stop layer ``argmin_t l_t + lambda C_t`` (1-based), known only in
    ``log_oracle`` mode (the lazy modes never see all losses) and ``-1`` otherwise.

    Host synchronisation: ``step`` checks action values unless they come as a bool tensor
    (pass bool to skip the check on a GPU); ``forward_step`` groups rows by layer on the
    host; the rows arriving at layer ``T`` are found with one sync (they grow that call's
    batch; ``log_oracle`` mode finds its fresh rows the same way); the instance pool is
    topped up with a sync only every few steps.

    Args:
        predictor: a frozen ``LayeredPredictor``; it is put in eval mode.
        task: the task the predictor solves (data, per-sample loss, metric).
        num_envs: ``N``, instances advanced together.
        beta: oracle temperature (> 0); rewards are losses divided by it.
        reward: one of ``REWARD_MODES``.
        cost: the price ``lambda`` of a layer, in units of the loss (>= 0).
        seed: seed of the instance stream used by the first ``reset()`` without a seed.
        instance_block: instances drawn from the task per call.
        reward_scale: every reward is multiplied by it (``> 0``; the optimum is unchanged).
            1 keeps the rewards in units of ``beta``, exact for the project's learners;
            ``l2s_gym.make_env`` sets it from a calibration batch for off-the-shelf agents.
        observe_price: show ``lambda`` in the observation, ``[features, lambda, t]``.
        prices: ``None`` (one price, ``cost``), or the grid (finite numbers ``>= 0``, loss
            units) each episode draws its price from; ``cost`` is then left at 0.
        price_weights: with ``prices``, a factor per grid price on its episodes' rewards
            (``None``: 1 for all).
    """

    def __init__(
        self,
        predictor: LayeredPredictor,
        task: Task,
        num_envs: int,
        *,
        beta: float,
        reward: str = "terminal_loss",
        cost: float = 0.0,
        seed: int = 0,
        instance_block: int = INSTANCE_BLOCK,
        reward_scale: float = 1.0,
        observe_price: bool = False,
        prices: Sequence[float] | None = None,
        price_weights: Sequence[float] | None = None,
    ) -> None:
        grid = _check_args(predictor, num_envs, beta, reward, cost, instance_block,
                           reward_scale, prices)  # fmt: skip
        weights = _check_price_weights(price_weights, grid)
        predictor.eval()
        self.predictor = predictor
        self.task = task
        self.num_envs = num_envs
        self.num_layers = int(predictor.num_layers)
        self.feature_shape = tuple(int(s) for s in predictor.feature_shape)
        self.observe_price = bool(observe_price) or grid is not None
        """Show ``lambda`` (``cost``, or the row's price, loss units) in the observation:
        ``[features, lambda, t]`` (``obs_price`` reads it). Off by default: ``[features, t]``."""
        self.obs_dim = math.prod(self.feature_shape) + 1 + int(self.observe_price)
        self.device = predictor.device
        self.beta = float(beta)
        self.reward_mode = reward
        self.cost = float(cost)
        self.reward_scale = float(reward_scale)
        self.cum_costs = cumulative_costs(
            self.num_layers, predictor.layer_costs(), device=self.device
        )
        """``C_t`` ``(T,)``: the compute of stopping after layer ``t`` (mean layer cost 1)."""
        self._layer_price = torch.diff(self.cum_costs, prepend=self.cum_costs.new_zeros(1))
        self.seed = int(seed)
        self.instance_block = int(instance_block)
        self.layer_evals = 0
        """Layer computations so far, every one of them (the full passes of ``log_oracle``)."""
        self.prices = (
            None if grid is None else torch.tensor(grid, dtype=torch.float32, device=self.device)
        )
        """The price grid ``(P,)`` float32 (loss units) episodes draw from; ``None``: ``cost``."""
        self._row_prices = torch.full(
            (num_envs,), self.cost, dtype=torch.float32, device=self.device
        )
        self.price_weights = (
            None if weights is None else torch.tensor(weights, dtype=torch.float32, device=self.device)
        )  # fmt: skip
        """``price_weights`` ``(P,)`` float32, each grid price's factor on its rewards; ``None``: 1."""
        self._row_weights = torch.ones(num_envs, dtype=torch.float32, device=self.device)
        self._price_generator: torch.Generator | None = None

        n = num_envs
        self._rows = torch.arange(n, device=self.device)
        self._generator: torch.Generator | None = None
        self._pool: Batch | None = None
        self._pool_pos = torch.zeros((), dtype=torch.long, device=self.device)
        self._pool_left_min = 0  # host-side lower bound on unused pool instances
        self._episodes_done = torch.zeros((), dtype=torch.long, device=self.device)
        self._checked_shapes = False
        # Per-row episode state, filled by reset().
        self._batch: Batch | None = None
        self._state: State | None = None
        self._t = torch.zeros(n, dtype=torch.long, device=self.device)
        self._loss = torch.zeros(n, device=self.device)
        self._stat = torch.zeros(n, device=self.device)
        self._features: Tensor | None = None
        self._first = torch.ones(n, dtype=torch.bool, device=self.device)
        self._obs: Tensor | None = None
        # log_oracle: the full pass of each row's instance.
        self._all_losses: Tensor | None = None
        self._all_stats: Tensor | None = None
        self._all_features: Tensor | None = None

    # --- public ---------------------------------------------------------------------------
    @property
    def episodes_done(self) -> int:
        """Episodes finished since construction (reading it synchronises with the device)."""
        return int(self._episodes_done)

    @property
    def row_prices(self) -> Tensor:
        """``lambda`` ``(N,)`` float32 (loss units) of each row's ongoing episode: drawn from
        ``prices`` when the episode started, else ``cost`` in every row."""
        return self._row_prices

    @property
    def instances(self) -> Batch:
        """The instances of the ongoing episodes, one per row (inputs, targets, groups)."""
        if self._batch is None:
            raise RuntimeError("BatchedStopEnv.instances read before reset()")
        return self._batch

    def current_info(self) -> dict[str, Tensor]:
        """Info tensors ``(N,)`` of the ongoing episodes (keys as in ``step``'s info).

        ``t``, ``loss``, ``metric_stat``, ``best_layer`` and ``layers_computed``.
        """
        if self._obs is None:
            raise RuntimeError("BatchedStopEnv.current_info called before reset()")
        walked = self._t + 1
        if self.reward_mode == "log_oracle":
            best = self._best_layer()
            computed = torch.full_like(walked, self.num_layers)
        else:
            best, computed = torch.full_like(walked, -1), walked
        return {
            "t": walked,
            "loss": self._loss,
            "metric_stat": self._stat,
            "best_layer": best,
            "layers_computed": computed,
        }

    def _make_obs(self, features: Tensor, t: Tensor, row_prices: Tensor | None = None) -> Tensor:
        """The observation; with ``prices`` it shows ``row_prices`` (default: the ongoing
        episodes')."""
        if not self.observe_price:
            return make_obs(features, t)
        if self.prices is None:
            return make_obs(features, t, self.cost)
        return make_obs(features, t, self._row_prices if row_prices is None else row_prices)

    @torch.no_grad()
    def reset(self, seed: int | None = None) -> Tensor:
        """Start a fresh instance in every row; returns obs ``(N, obs_dim)`` float32.

        With ``seed`` the instance stream restarts from it (same seed, same episodes);
        without, it continues (from the constructor's ``seed`` on the first call).
        """
        if seed is not None or self._generator is None:
            self._generator = torch.Generator(device=self.task.device)
            self._generator.manual_seed(self.seed if seed is None else int(seed))
            self._pool = None
            self._pool_left_min = 0
            self._pool_pos.zero_()
            if self.prices is not None:
                self._price_generator = torch.Generator(device=self.device)
                first = self.seed if seed is None else int(seed)
                self._price_generator.manual_seed(first + PRICE_STREAM)
        all_rows = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
        self._draw_prices(all_rows)
        fresh = self._take(all_rows)
        self._batch = fresh
        self._t = torch.zeros(self.num_envs, dtype=torch.long, device=self.device)
        self._first = all_rows.clone()
        if self.reward_mode == "log_oracle":
            self._all_losses, self._all_stats, self._all_features = self._full_pass(fresh)
            self.layer_evals += self.num_layers * self.num_envs
            self._read_full_pass()
        else:
            self._state, self._loss, self._stat, self._features = self._compute(
                self._t, self.predictor.initial_state(fresh.inputs), fresh
            )
            self.layer_evals += self.num_envs
        self._obs = self._make_obs(self._features, self._t)  # type: ignore[arg-type]
        return self._obs

    @torch.no_grad()
    def step(
        self, actions: Tensor, hold: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Apply one action per row (``0`` continue, ``1`` stop).

        Returns obs ``(N, obs_dim)``, reward ``(N,)`` float32, done ``(N,)`` bool and info
        (see the class docstring). Rows that are done already hold a fresh instance's
        first observation.

        ``hold`` (optional, ``(N,)`` bool): rows where it is set do not move this step:
        their action is ignored, no layer is computed, no instance is drawn, the reward is
        0 (the layer-1 cost of a fresh episode is still charged on its first real step),
        done is False and obs and info are those of their ongoing episode. Finding the rows
        that do move costs one host sync. (``StopVectorEnv``'s next-step autoreset.)
        """
        if self._obs is None:
            raise RuntimeError("BatchedStopEnv.step called before reset()")
        stop = self._check_actions(actions)
        held = self._check_hold(hold)
        last = self.num_layers - 1
        t_old, loss_old, stat_old, features_old = self._t, self._loss, self._stat, self._features
        if held is None:
            cont = ~stop
        else:
            stop = stop & ~held
            cont = ~stop & ~held
        # Continuing into the last layer ends the episode there: no decision is left.
        arrive = cont & (t_old + 1 == last)
        done = stop | arrive
        t_end = torch.where(stop, t_old, t_old + 1)  # 0-based end layer where done
        advanced = t_old + 1 if held is None else torch.where(held, t_old, t_old + 1)
        new_t = torch.where(done, torch.zeros_like(t_old), advanced)

        # Same-step autoreset: done rows take the next instances of the stream.
        fresh = self._take(done)
        old = self._batch
        assert old is not None
        self._batch = _where_batch(done, fresh, old)
        if self.reward_mode == "log_oracle":
            stop_reward, ended_best, ended_loss, ended_stat, ended_features = self._end_full_pass(
                done, t_end
            )
            self._t = new_t
            self._refill_full_pass(done)
        else:
            ended_best = torch.full_like(t_old, -1)
            reached_loss, reached_stat, reached_features = self._walk(
                stop, arrive, fresh, old, held
            )
            # A row that arrived at layer T ends there; a row that stopped, where it was.
            ended_loss = torch.where(arrive, reached_loss, loss_old)
            ended_stat = torch.where(arrive, reached_stat, stat_old)
            ended_features = _where_rows(arrive, reached_features, features_old)  # type: ignore[arg-type]
            self._t = new_t
            if self.reward_mode == "terminal_loss":
                stop_reward = -ended_loss / self.beta
            else:  # improvement: the reward comes on the continue steps
                stop_reward = torch.zeros_like(loss_old)

        reward = torch.where(done, stop_reward, torch.zeros_like(stop_reward))
        if self.reward_mode == "improvement":
            step_gain = (loss_old - reached_loss) / self.beta
            reward = reward + torch.where(cont, step_gain, torch.zeros_like(reward))
        first = self._first if held is None else self._first & ~held
        if self.cost or self.prices is not None:
            reward = reward - self._price_paid(cont, first, t_old)

        self._episodes_done += done.sum()
        self._first = done if held is None else done | (self._first & held)
        ended_prices, weights = self._row_prices, self._row_weights  # before the draw
        self._draw_prices(done)  # the fresh episodes' prices (with ``prices``)
        obs = self._make_obs(self._features, new_t)  # type: ignore[arg-type]
        self._obs = obs
        ended_obs = self._make_obs(ended_features, t_end, ended_prices)
        ended = (ended_obs, ended_loss, ended_stat, ended_best)
        info = self._step_info(done, t_end, new_t, obs, *ended)
        return obs, self._scaled(reward, weights), done, info

    # --- internals ------------------------------------------------------------------------
    def _scaled(self, reward: Tensor, weights: Tensor) -> Tensor:
        """The step's rewards times the episodes' ``price_weights`` (``weights``, per row)
        and ``reward_scale``, as float32."""
        if self.price_weights is not None:
            reward = reward * weights.to(reward.dtype)
        if self.reward_scale != 1.0:
            reward = reward * self.reward_scale
        return reward.to(torch.float32)

    def _price_paid(self, cont: Tensor, first: Tensor, t_old: Tensor) -> Tensor:
        """The layer price charged this step, in units of ``beta``: layer 1 was computed when
        the episode started (charged on its first step); continuing computes layer t + 2."""
        price = self._layer_price
        paid = cont.to(price.dtype) * price[t_old + 1] + first.to(price.dtype) * price[0]
        return self._price_scale() * paid / self.beta

    def _price_scale(self) -> float | Tensor:
        """``lambda``: ``cost``, or with ``prices`` each row's ``(N,)``."""
        return self.cost if self.prices is None else self._row_prices

    def _draw_prices(self, starting: Tensor) -> None:
        """With ``prices``: a fresh price for each row where ``starting`` is set (one draw
        per row from the price stream, kept where the row starts an episode)."""
        if self.prices is None:
            return
        assert self._price_generator is not None
        pick = torch.randint(
            len(self.prices), (self.num_envs,), generator=self._price_generator, device=self.device
        )
        self._row_prices = torch.where(starting, self.prices[pick], self._row_prices)
        if self.price_weights is not None:
            self._row_weights = torch.where(starting, self.price_weights[pick], self._row_weights)

    def _step_info(
        self, done: Tensor, t_end: Tensor, new_t: Tensor, obs: Tensor,
        ended_obs: Tensor, ended_loss: Tensor, ended_stat: Tensor, ended_best: Tensor,
    ) -> dict[str, Tensor]:  # fmt: skip
        """``step``'s info: the episode that ended where a row is done, the ongoing one
        elsewhere (see the class docstring)."""
        info: dict[str, Tensor] = {
            "terminal_obs": torch.where(done.unsqueeze(1), ended_obs, obs),
            "t": torch.where(done, t_end, new_t) + 1,
            "loss": torch.where(done, ended_loss, self._loss),
            "metric_stat": torch.where(done, ended_stat, self._stat),
        }
        if self.reward_mode == "log_oracle":
            info["best_layer"] = torch.where(done, ended_best, self._best_layer())
            info["layers_computed"] = torch.full_like(new_t, self.num_layers)
        else:
            info["best_layer"] = ended_best
            info["layers_computed"] = info["t"]
        return info

    def _end_full_pass(self, done: Tensor, t_end: Tensor) -> tuple[Tensor, ...]:
        """``log_oracle`` mode: the stop reward, best layer, loss, metric statistic and
        features where each row's episode ends (at ``t_end``), from its full pass."""
        all_losses = self._all_losses
        assert all_losses is not None and self._all_features is not None
        lam = self._price_scale()
        adjusted = cost_adjusted_losses(all_losses, lam, self.cum_costs)
        log_q = oracle_log_q(adjusted, self.beta)
        # The cost part of log q*_lambda is paid per layer in ``step``, as in the other modes.
        if isinstance(lam, Tensor):
            payoff = log_q + lam.unsqueeze(1) * self.cum_costs / self.beta
        else:
            payoff = log_q + lam * self.cum_costs / self.beta
        at_end = t_end.unsqueeze(1)
        stop_reward = payoff.gather(1, at_end).squeeze(1)
        ended_best = adjusted.argmin(dim=1) + 1
        ended_loss = all_losses.gather(1, at_end).squeeze(1)
        ended_stat = self._all_stats.gather(1, at_end).squeeze(1)  # type: ignore[union-attr]
        ended_features = self._all_features[self._rows, t_end]
        return stop_reward, ended_best, ended_loss, ended_stat, ended_features

    def _refill_full_pass(self, done: Tensor) -> None:
        """``log_oracle`` mode: the full pass of the fresh instances in the ``done`` rows."""
        idx = torch.nonzero(done).squeeze(1)  # host sync: run the full pass on these only
        k = int(idx.numel())
        if k:
            assert self._batch is not None and self._all_features is not None
            losses, stats, feats = self._full_pass(self._batch.select(idx))
            self._all_losses.index_copy_(0, idx, losses)  # type: ignore[union-attr]
            self._all_stats.index_copy_(0, idx, stats)  # type: ignore[union-attr]
            self._all_features.index_copy_(0, idx, feats)
            self.layer_evals += self.num_layers * k
        self._read_full_pass()

    def _check_actions(self, actions: Tensor) -> Tensor:
        """Validate the actions; returns the stop mask ``(N,)`` bool on the device."""
        if not isinstance(actions, Tensor):
            actions = torch.as_tensor(actions)
        if actions.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape ({self.num_envs},) (one per instance), "
                f"got {tuple(actions.shape)}"
            )
        if actions.dtype == torch.bool:
            return actions.to(self.device)
        if actions.is_floating_point() or actions.is_complex():
            raise ValueError(f"actions must be integers in {{0, 1}} or bool, got {actions.dtype}")
        bad = (actions != 0) & (actions != 1)
        if bool(bad.any()):
            raise ValueError(
                "actions must be 0 (continue) or 1 (stop); got "
                f"{actions[bad][:5].tolist()} at rows {torch.nonzero(bad).flatten()[:5].tolist()}"
            )
        return actions.to(self.device) == 1

    def _check_hold(self, hold: Tensor | None) -> Tensor | None:
        """``step``'s ``hold`` mask as ``(N,)`` bool on the device (``None`` stays ``None``)."""
        if hold is None:
            return None
        hold = torch.as_tensor(hold)
        if hold.shape != (self.num_envs,) or hold.dtype != torch.bool:
            raise ValueError(
                f"hold must be a bool tensor of shape ({self.num_envs},), got "
                f"{hold.dtype} {tuple(hold.shape)}"
            )
        return hold.to(self.device)

    def _draw_block(self) -> Batch:
        assert self._generator is not None
        batch = self.task.train_batch(self.instance_block, self._generator)
        return batch.to(self.device)

    def _take(self, mask: Tensor) -> Batch:
        """A batch of ``N`` rows: the next stream instances at the rows where ``mask`` is set.

        Rows where ``mask`` is off hold arbitrary instances (callers overwrite them).
        The pool position lives on the device; the host only tracks a lower bound of what
        is left and synchronises when that bound runs below ``N``.
        """
        n = self.num_envs
        if self._pool_left_min < n:
            size = 0 if self._pool is None else len(self._pool)
            pos = int(self._pool_pos)
            blocks = (
                [] if self._pool is None or pos >= size else [self._pool.select(slice(pos, None))]
            )
            left = size - pos if blocks else 0
            if left < n:
                # Keep about two steps' worth of worst-case demand to sync rarely.
                while left < 2 * n:
                    blocks.append(self._draw_block())
                    left += self.instance_block
                self._pool = _cat_batches(blocks)
                self._pool_pos.zero_()
            self._pool_left_min = left
        pool = self._pool
        assert pool is not None
        rank = torch.cumsum(mask.long(), 0) - 1
        src = (self._pool_pos + rank).clamp(0, len(pool) - 1)
        self._pool_pos += mask.sum()
        self._pool_left_min -= n
        return pool.select(src)

    def _compute(
        self, t: Tensor, state: State, batch: Batch
    ) -> tuple[State, Tensor, Tensor, Tensor]:
        """Layer ``t`` (0-based, per row) from ``state``: new state, loss, statistic, features."""
        state, pred, feats = self.predictor.forward_step(t, state, batch.inputs)
        loss = self.task.loss(pred, batch.targets)
        stat = self.task.metric_stat(pred, batch.targets)
        if not self._checked_shapes:
            self._check_shapes(feats, loss, stat)
        return state, loss, stat, feats

    def _walk(
        self, stop: Tensor, arrive: Tensor, fresh: Batch, old: Batch, held: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Compute this step's layers (lazy modes); return what the continuing rows reached.

        Each row computes one layer: the next layer of its instance if it continues, layer 1
        of its fresh instance if it stopped. A row arriving at layer ``T`` computes layer 1
        of its fresh instance as well, in the same ``forward_step`` call (the batch grows by
        one row per arrival). Returns loss, statistic and features ``(N, ...)`` of the layer
        each continuing row reached (for arrivals: layer ``T``, which ends their episode);
        the rows' state and data then describe their ongoing episodes. Rows in ``held``
        compute nothing and keep their state (their "reached" values are their current ones).
        """
        n = self.num_envs
        assert self._state is not None and self._features is not None
        computed = _where_batch(stop, fresh, old)
        state = zip_state(
            lambda a, b: _where_rows(stop, a, b),
            self.predictor.initial_state(computed.inputs),
            self._state,
        )
        t = torch.where(stop, torch.zeros_like(self._t), self._t + 1)
        live = None
        if held is not None:
            live = torch.nonzero(~held).squeeze(1)  # host sync: the rows that move
            computed = computed.select(live)
            state = select_rows(state, live)
            t = t[live]
        m = n if live is None else int(live.numel())
        if m == 0:  # every row held: nothing to compute
            return self._loss, self._stat, self._features
        arrived = torch.nonzero(arrive).squeeze(1)  # host sync: the rows that start anew too
        k = int(arrived.numel())
        if k:
            extra = fresh.select(arrived)
            computed = _cat_batches([computed, extra])
            state = zip_state(
                lambda a, b: torch.cat([a, b]), state, self.predictor.initial_state(extra.inputs)
            )
            t = torch.cat([t, torch.zeros_like(arrived)])
        out_state, out_loss, out_stat, out_feats = self._compute(t, state, computed)
        self.layer_evals += m + k
        state = map_state(lambda x: x[:m], out_state)
        loss, stat, feats = out_loss[:m], out_stat[:m], out_feats[:m]
        if live is not None:
            # Held rows keep what they had; the moving rows take what they computed.
            state = zip_state(lambda a, b: a.index_copy(0, live, b), self._state, state)
            loss = self._loss.index_copy(0, live, loss)
            stat = self._stat.index_copy(0, live, stat)
            feats = self._features.index_copy(0, live, feats)
        reached = (loss, stat, feats)
        if k:
            # The arrived rows continue with their fresh instance's layer 1.
            state = zip_state(
                lambda a, b: a.index_copy(0, arrived, b),
                state,
                map_state(lambda x: x[m:], out_state),
            )
            loss = loss.index_copy(0, arrived, out_loss[m:])
            stat = stat.index_copy(0, arrived, out_stat[m:])
            feats = feats.index_copy(0, arrived, out_feats[m:])
        self._state, self._loss, self._stat, self._features = state, loss, stat, feats
        return reached

    def _full_pass(self, batch: Batch) -> tuple[Tensor, Tensor, Tensor]:
        trace = self.predictor.trace(batch, self.task)
        if not self._checked_shapes:
            self._check_shapes(trace.features[:, 0], trace.losses[:, 0], trace.metric_stats[:, 0])
        return trace.losses.detach(), trace.metric_stats, trace.features

    def _best_layer(self) -> Tensor:
        """The oracle's 1-based stop layer of each row's instance (``log_oracle`` mode only)."""
        adjusted = cost_adjusted_losses(self._all_losses, self._price_scale(), self.cum_costs)  # type: ignore[arg-type]
        return adjusted.argmin(dim=1) + 1

    def _read_full_pass(self) -> None:
        t = self._t.unsqueeze(1)
        self._loss = self._all_losses.gather(1, t).squeeze(1)  # type: ignore[union-attr]
        self._stat = self._all_stats.gather(1, t).squeeze(1)  # type: ignore[union-attr]
        self._features = self._all_features[self._rows, self._t]  # type: ignore[index]

    def _check_shapes(self, feats: Tensor, loss: Tensor, stat: Tensor) -> None:
        name = type(self.predictor).__name__
        n = feats.shape[0]
        if tuple(feats.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"{name}.policy_features returned features of shape {tuple(feats.shape[1:])} "
                f"per instance, but {name}.feature_shape declares {self.feature_shape}"
            )
        for what, value in (("loss", loss), ("metric_stat", stat)):
            if tuple(value.shape) != (n,):
                raise ValueError(
                    f"{type(self.task).__name__}.{what} must return one value per instance, "
                    f"shape ({n},); got {tuple(value.shape)}"
                )
        self._checked_shapes = True


__all__ = ["REWARD_MODES", "BatchedStopEnv", "make_obs", "obs_price", "split_obs"]
