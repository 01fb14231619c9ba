"""Gymnasium views of the stop environment: one instance (``StopEnv``) and its vector twin.

Both wrap ``BatchedStopEnv`` (``batched.py``), so the maths lives in one place; this file
only checks the keyword arguments, builds the task and predictor from them
(``l2s_gym.build.build_components``) and converts to numpy at the library boundary.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import logger, spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space
from torch import Tensor

from l2s_gym.build import DEFAULT_BETA, build_components
from l2s_gym.envs.batched import REWARD_MODES, BatchedStopEnv, _where_batch, split_obs
from l2s_gym.predictor import LayeredPredictor
from l2s_gym.task import Batch, Task

RENDER_FPS = 4
"""Frames per second a viewer should play the ``rgb_array`` frames at (one per layer)."""

StopLogits = Callable[[Tensor, Tensor], Tensor]
"""A stop policy for rendering: ``(features (N, *feature_shape), t (N,)) -> stop logits (N,)``
(a ``StopPolicy``, a learner's model, or any such function)."""


def _check_reward(reward: str) -> None:
    if reward not in REWARD_MODES:
        raise ValueError(f"reward must be one of {', '.join(REWARD_MODES)}; got {reward!r}")


AUTORESET_MODES = (AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP)
"""The autoreset modes ``StopVectorEnv`` offers (``autoreset_mode=``, enum or its string)."""


def _autoreset_mode(mode: str | AutoresetMode) -> AutoresetMode:
    """``autoreset_mode=``: an ``AutoresetMode`` of ``AUTORESET_MODES``, its value
    (``"NextStep"``) or its name in lower case (``"next_step"``)."""
    for allowed in AUTORESET_MODES:
        if mode is allowed or (
            isinstance(mode, str) and mode in (allowed.value, allowed.name.lower())
        ):
            return allowed
    names = ", ".join(
        f"AutoresetMode.{m.name} ({m.name.lower()!r} or {m.value!r})" for m in AUTORESET_MODES
    )
    raise ValueError(f"StopVectorEnv: autoreset_mode must be one of {names}; got {mode!r}")


def render_modes(task: Task) -> list[str]:
    """The render modes an env over ``task`` offers: ``ansi`` always, ``rgb_array`` when the
    task draws its read-outs (``Task.render``)."""
    return ["ansi", "rgb_array"] if task.can_render() else ["ansi"]


def _batched_env(
    owner: str,
    render_mode: str | None,
    num_envs: int,
    task: str | Task,
    predictor: LayeredPredictor | None,
    checkpoint: str | Path | None,
    task_config: dict[str, Any] | None,
    predictor_config: dict[str, Any] | None,
    reward: str,
    beta: float | None,
    cost: float,
    device: str,
    seed: int,
    task_seed: int,
    reward_scale: float = 1.0,
    observe_price: bool = False,
    prices: Sequence[float] | None = None,
) -> BatchedStopEnv:
    """Check the keyword arguments both env classes share and build their batched core."""
    _check_reward(reward)
    built_task, model, beta_value = build_components(
        task, predictor, checkpoint, task_config, predictor_config, device, beta, task_seed
    )
    modes = render_modes(built_task)
    if render_mode is not None and render_mode not in modes:
        if render_mode == "rgb_array":
            raise ValueError(
                f"{owner}: render_mode='rgb_array' needs a task that draws its read-outs "
                f"(Task.render); task {built_task.name!r} does not, so use 'ansi'"
            )
        raise ValueError(
            f"{owner}: render_mode must be None or one of {', '.join(modes)}; got {render_mode!r}"
        )
    return BatchedStopEnv(
        model,
        built_task,
        num_envs,
        beta=beta_value,
        reward=reward,
        cost=cost,
        seed=seed,
        reward_scale=reward_scale,
        observe_price=observe_price,
        prices=prices,
    )


def _obs_space(obs_dim: int, num_layers: int) -> spaces.Box:
    """Features unbounded (largest finite float32: the checkers warn on inf); t in 0..T-1."""
    big = np.finfo(np.float32).max
    low = np.full(obs_dim, -big, dtype=np.float32)
    high = np.full(obs_dim, big, dtype=np.float32)
    low[-1], high[-1] = 0.0, float(num_layers - 1)
    return spaces.Box(low, high, dtype=np.float32)


def _to_numpy(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _warn_no_render_mode(env: Any) -> None:
    """Gymnasium's convention for ``render()`` without a render mode: warn, return ``None``."""
    spec = getattr(env, "spec", None)
    env_id = spec.id if spec is not None else "l2s/SparseRecovery-v1"
    logger.warn(
        "You are calling render method without specifying any render mode. "
        "You can specify the render_mode at initialization, "
        f'e.g. gymnasium.make("{env_id}", render_mode="ansi")'
    )


def _features_text(features: np.ndarray, shown: int = 12) -> str:
    numbers = ", ".join(f"{x:.4g}" for x in features[:shown])
    if features.size <= shown:
        return f"features [{numbers}]"
    return f"features [{numbers}, ...] ({features.size} numbers)"


@torch.no_grad()
def render_lines(
    env: BatchedStopEnv, obs: np.ndarray, ended: Sequence[bool], policy: StopLogits | None
) -> list[str]:
    """One label-free text line per observation row: the layer, the stop probability when a
    ``policy`` is given (1 at layer ``T``, which always stops), the features."""
    T, t = env.num_layers, np.rint(obs[:, -1]).astype(int)
    stop_prob = None
    if policy is not None:
        features, layer = split_obs(torch.as_tensor(obs, device=env.device), env.feature_shape)
        stop_prob = _to_numpy(torch.sigmoid(policy(features, layer)).float())
    lines = []
    for i in range(obs.shape[0]):
        parts = [f"layer {t[i] + 1}/{T}"]
        if stop_prob is not None:
            parts.append(f"stop p={1.0 if t[i] == T - 1 else float(stop_prob[i]):.3f}")
        parts.append(_features_text(obs[i, : math.prod(env.feature_shape)]))
        if ended[i]:
            parts.append("(episode over)")
        lines.append("  ".join(parts))
    return lines


@torch.no_grad()
def render_frames(env: BatchedStopEnv, instances: Batch, t: np.ndarray) -> list[np.ndarray]:
    """Each instance's picture (``Task.render``) after its 0-based layer ``t``.

    The read-outs are recomputed from the inputs: rendering costs up to ``T`` layers per
    frame, not counted in ``layer_evals``.
    """
    predictor, inputs = env.predictor, instances.inputs
    frames: list[Any] = [None] * len(t)
    state = predictor.initial_state(inputs)
    for layer in range(int(t.max()) + 1):
        state = predictor.layer(layer, state, inputs)
        rows = np.flatnonzero(t == layer)
        if rows.size:
            prediction = predictor.readout(layer, state, inputs)
            for i in rows:
                frames[i] = env.task.render(prediction[i], {k: v[i] for k, v in inputs.items()})
    return frames


class StopEnv(gym.Env[np.ndarray, np.int64]):
    """Learning to stop, one instance at a time: walk a frozen predictor's layers, then stop.

    ## Description
    An episode draws one instance of a task (e.g. a sparse-recovery problem
    ``y = A x* + noise``) and walks the layers of a frozen ``LayeredPredictor`` (e.g. LISTA)
    on it. After each layer the agent sees the features a ``StopPolicy`` sees and decides
    to continue (compute the next layer) or stop (answer with the current read-out).
    Layer ``t + 1`` is computed only when the agent continues. This is the maximum-entropy
    RL view of "Learning to Stop While Learning to Predict" (Chen et al., ICML 2020).

    ## Action space
    ``Discrete(2)``: ``0`` continue, ``1`` stop. ``step`` takes a Python or numpy int or
    bool (``True``: stop), or an array of one of them of shape ``()`` or ``(1,)``; the
    vector views take ints or bools alike.

    ## Observation space
    ``Box((obs_dim,), float32)``: the predictor's policy features after the current layer,
    flattened (``prod(predictor.feature_shape)`` numbers, unbounded: the bounds are the
    largest finite float32, as infinite bounds make Gymnasium's checker warn), then the
    0-based index ``t`` of that layer, in ``[0, T - 1]`` (``T - 1`` only in the observation
    that ends an episode at layer ``T``). ``l2s_gym.envs.split_obs`` turns
    it back into what a ``StopPolicy`` takes. The predictor's docstring lists its features.
    With ``observe_price=True`` (off by default) the price ``lambda`` (``cost``, loss
    units) sits between the features and ``t``: ``[features, lambda, t]``, one more
    number (``l2s_gym.envs.batched.obs_price`` reads it; ``split_obs`` still gives the
    features and ``t``), for an agent meant to act at more than one price.
    With ``prices=[...]`` (a grid of ``lambda``, loss units, instead of ``cost``) each
    episode draws its own price uniformly from the grid when it starts, is charged that
    price, and shows it there (``prices`` implies ``observe_price``; ``BatchedStopEnv``
    documents the seeded price stream).

    ## Rewards (``reward=``), with ``l_t`` the task's loss after layer ``t`` (1-based)
    - ``"terminal_loss"`` (default): stopping at ``t`` earns ``-l_t / beta``, continuing 0.
    - ``"log_oracle"``: stopping at ``t`` earns ``log q*(t) = -l_t/beta - logsumexp(-l/beta)``,
      the same objective without its per-instance constant; the normaliser needs all ``T``
      losses, so each episode runs the full pass when it starts (``T`` layer evaluations).
    - ``"improvement"``: dense, ``(l_t - l_{t+1}) / beta`` on each continue step, 0 on stop;
      the return equals the terminal one plus ``l_1 / beta``.
    - ``cost=lambda``: the price of a layer in units of the loss; walking layer ``t`` earns
      ``-lambda c_t / beta`` (see ``BatchedStopEnv``), so the return is
      ``-(l_t + lambda C_t) / beta`` up to a per-instance constant.
    The rewards are losses in units of ``beta``, so the entropy bonus of max-entropy RL has
    coefficient 1 here: maximising ``E_q[return] + H(q)`` is minimising the paper's
    ``E_q[l_t] - beta H(q)`` (divided by ``beta``, up to a per-instance constant).

    ## Starting state
    Instances come from ``task.train_batch`` through a ``torch.Generator`` seeded by
    ``reset(seed=...)`` (or by ``seed=`` for the first reset). ``reset`` computes layer 1;
    the first observation has ``t = 0``. ``reset()`` without a seed moves to the next
    instance of the stream; the same seed gives the same sequence of episodes.

    ## Episode end
    Terminated when the agent stops, or when it continues into the last layer ``T``: that
    step computes layer ``T`` and ends the episode with the stop reward there (layer ``T``
    always stops, so no decision is asked at it). Stop times are ``1..T``; an episode takes
    at most ``T - 1`` decisions. Never truncated. Stepping after the end without
    ``reset()`` is an error. A predictor with one layer leaves no decision and is refused.

    ## Info
    ``t`` (layers walked, 1-based), ``loss`` and ``metric`` (the task's per-sample metric
    statistic) at that layer, ``best_layer`` (the oracle's ``argmin_t l_t``, 1-based; known
    only with ``reward="log_oracle"``, else ``-1``), ``layers_computed``.

    ## Rendering
    ``render_mode="ansi"``: ``render()`` returns one label-free text line for the current
    observation (after a step that ended the episode: its last one): the layer, the stop
    probability when a ``policy`` is attached (``policy=`` or the ``policy`` attribute: a
    function of ``(features, t)`` giving stop logits, e.g. a ``StopPolicy``), and the
    features. ``render_mode="rgb_array"``, offered when the task draws its read-outs
    (``Task.render``; sparse recovery: a stem plot of the estimate, denoising: the noisy
    input and the current image): an ``(H, W, 3)`` uint8 frame of the current read-out,
    recomputed from the instance's inputs (not counted in ``layer_evals``).
    ``metadata["render_modes"]`` lists the modes of this env's task. Without a render mode,
    ``render()`` warns and returns ``None``, as Gymnasium's own envs do.

    ## Arguments (all through ``gymnasium.make``)
    ``task`` (bound by the registered id; or a ``Task`` instance), ``predictor`` (a
    ``LayeredPredictor``) or ``checkpoint`` (a predictor ``best.pt`` written by ``l2s``),
    ``task_config`` and ``predictor_config`` (dicts of config parameters when the env builds
    them), ``reward``, ``beta`` (default: the checkpoint's, else 0.1), ``cost`` (or
    ``prices``), ``observe_price``, ``reward_scale``,
    ``device`` (``"auto"``: CUDA when present), ``seed``, ``task_seed``, ``render_mode``,
    ``policy`` (for ``ansi`` rendering only; it never acts).
    See ``l2s_gym.build.build_components`` for how they combine.

    ## Version history
    - v1: continuing into layer ``T`` ends the episode in that step (v0 asked one more
      decision at layer ``T`` and ignored it); ``cost=lambda``, a price per layer in units
      of the loss (with the predictor's relative layer costs), replaces ``layer_cost``;
      ``num_layers = 1`` is refused; ``render_mode`` ``"ansi"`` and ``"rgb_array"``; bool
      actions.
    - v0: first version.
    """

    metadata: dict[str, Any] = {"render_modes": ["ansi", "rgb_array"], "render_fps": RENDER_FPS}

    def __init__(
        self,
        task: str | Task = "sparse_recovery",
        predictor: LayeredPredictor | None = None,
        checkpoint: str | Path | None = None,
        task_config: dict[str, Any] | None = None,
        predictor_config: dict[str, Any] | None = None,
        reward: str = "terminal_loss",
        beta: float | None = None,
        cost: float = 0.0,
        device: str = "auto",
        seed: int = 0,
        task_seed: int = 0,
        render_mode: str | None = None,
        policy: StopLogits | None = None,
        reward_scale: float = 1.0,
        observe_price: bool = False,
        prices: Sequence[float] | None = None,
    ) -> None:
        self.batched = _batched_env(
            "StopEnv",
            render_mode,
            1,
            task,
            predictor,
            checkpoint,
            task_config,
            predictor_config,
            reward,
            beta,
            cost,
            device,
            seed,
            task_seed,
            reward_scale,
            observe_price,
            prices,
        )
        self.task, self.predictor, self.beta = (
            self.batched.task,
            self.batched.predictor,
            self.batched.beta,
        )
        self.metadata = {**type(self).metadata, "render_modes": render_modes(self.task)}
        self.render_mode = render_mode
        self.policy = policy
        """Stop logits of ``(features, t)`` shown by ``ansi`` rendering (never acts)."""
        self.observation_space = _obs_space(self.batched.obs_dim, self.batched.num_layers)
        self.action_space = spaces.Discrete(2)
        self._episode_over = True
        self._next_obs: np.ndarray | None = None  # the fresh instance after an autoreset
        self._next_info: dict[str, Any] = {}
        # What render() shows: the last observation returned, its instance, episode over.
        self._shown: tuple[np.ndarray, Batch, bool] | None = None

    @staticmethod
    def _info(info: dict[str, Tensor]) -> dict[str, Any]:
        return {
            "t": int(info["t"][0]),
            "loss": float(info["loss"][0]),
            "metric": float(info["metric_stat"][0]),
            "best_layer": int(info["best_layer"][0]),
            "layers_computed": int(info["layers_computed"][0]),
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None and self._episode_over and self._next_obs is not None:
            # The batched env already started the next instance when the last episode ended.
            obs, info = self._next_obs, self._next_info
        else:
            obs = _to_numpy(self.batched.reset(seed=seed)[0])
            info = self._info(self.batched.current_info())
        self._next_obs = None
        self._episode_over = False
        self._shown = (obs, self.batched.instances, False)
        return obs, info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._episode_over:
            raise RuntimeError(
                "StopEnv.step called after the episode ended (or before the first reset); "
                "call reset() first"
            )
        a = np.asarray(action)
        integral = np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_
        if a.shape not in ((), (1,)) or not integral or int(a.reshape(())) not in (0, 1):
            raise ValueError(
                "action must be 0 (continue) or 1 (stop): a Python or numpy int or bool "
                f"(True: stop), or an array of shape () or (1,) of one; got {action!r}"
            )
        actions = torch.tensor([bool(a.reshape(()))], device=self.batched.device)
        episode = self.batched.instances
        obs, reward, done, info = self.batched.step(actions)
        terminated = bool(done[0])
        out_info = self._info(info)
        if terminated:
            self._episode_over = True
            self._next_obs = _to_numpy(obs[0])
            self._next_info = self._info(self.batched.current_info())
            obs_out = _to_numpy(info["terminal_obs"][0])
            self._shown = (obs_out, episode, True)
        else:
            obs_out = _to_numpy(obs[0])
            self._shown = (obs_out, self.batched.instances, False)
        return obs_out, float(reward[0]), terminated, False, out_info

    def render(self) -> str | np.ndarray | None:
        """The current observation as text (``ansi``) or a picture (``rgb_array``); see the
        class docstring. Without a render mode: a warning and ``None``."""
        if self.render_mode is None:
            _warn_no_render_mode(self)
            return None
        if self._shown is None:
            raise RuntimeError("StopEnv.render called before the first reset()")
        obs, instance, ended = self._shown
        if self.render_mode == "ansi":
            return render_lines(self.batched, obs[None], [ended], self.policy)[0]
        return render_frames(self.batched, instance, np.rint(obs[None, -1]).astype(int))[0]

    @property
    def layer_evals(self) -> int:
        """Layer computations so far (see ``BatchedStopEnv.layer_evals``)."""
        return self.batched.layer_evals


class StopVectorEnv(VectorEnv):
    """``num_envs`` instances of ``StopEnv`` advanced together on the predictor's device.

    The native vector twin of ``StopEnv`` (as ``CartPoleVectorEnv`` is of ``CartPoleEnv``):
    one batched layer step per env step over a ``BatchedStopEnv``, numpy only at the
    boundary. Spaces, rewards and episode end are those of ``StopEnv``; actions are an
    int array ``(num_envs,)`` of 0/1 (``MultiDiscrete``), or bools (``True``: stop).

    Autoreset (``autoreset_mode=``, declared in ``metadata["autoreset_mode"]``), as
    Gymnasium's ``SyncVectorEnv`` does it. ``AutoresetMode.NEXT_STEP`` (default, what
    Gymnasium's vector wrappers need): a row that ends returns its episode's last
    observation, reward and ``terminated``; its next step ignores the action and returns
    the first observation of a fresh instance with reward 0, not terminated (the fresh
    instance's layer 1 is computed once, its cost charged on its first decision).
    ``AutoresetMode.SAME_STEP`` (``"same_step"``): a row that ends returns the first
    observation of its next episode; ``infos["final_obs"]`` (an object array, ``None``
    where not done, mask ``infos["_final_obs"]``) holds the last observation of the
    episode that ended and ``infos["final_info"]`` its info. In both modes the info arrays
    ``t``, ``loss``, ``metric``, ``best_layer`` and ``layers_computed`` describe the
    episode that ended where a row is done, the ongoing one elsewhere. Both modes give the
    same episodes for the same actions.

    Arguments: those of ``StopEnv`` plus ``num_envs`` and ``autoreset_mode``. ``reset(seed=s)`` restarts the
    instance stream: row ``i``'s first episode is then the single env's ``i``-th episode.
    ``render()`` gives ``StopEnv``'s text line (``ansi``) or picture (``rgb_array``) of each
    row's current observation, as a tuple (a row that just ended shows the observation
    returned: its next episode in ``SAME_STEP`` mode, the last one in ``NEXT_STEP`` mode).

    ## Version history
    - v1: as ``StopEnv``'s v1 (episodes end on arriving at layer ``T``; ``cost``;
      ``render_mode``); ``autoreset_mode``, default ``NEXT_STEP`` (before: ``SAME_STEP``
      only).
    - v0: first version.
    """

    metadata: dict[str, Any] = {
        "render_modes": ["ansi", "rgb_array"],
        "render_fps": RENDER_FPS,
        "autoreset_mode": AutoresetMode.NEXT_STEP,
    }

    def __init__(
        self,
        num_envs: int = 1,
        task: str | Task = "sparse_recovery",
        predictor: LayeredPredictor | None = None,
        checkpoint: str | Path | None = None,
        task_config: dict[str, Any] | None = None,
        predictor_config: dict[str, Any] | None = None,
        reward: str = "terminal_loss",
        beta: float | None = None,
        cost: float = 0.0,
        device: str = "auto",
        seed: int = 0,
        task_seed: int = 0,
        render_mode: str | None = None,
        policy: StopLogits | None = None,
        reward_scale: float = 1.0,
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        observe_price: bool = False,
        prices: Sequence[float] | None = None,
    ) -> None:
        self.autoreset_mode = _autoreset_mode(autoreset_mode)
        self.batched = _batched_env(
            "StopVectorEnv",
            render_mode,
            num_envs,
            task,
            predictor,
            checkpoint,
            task_config,
            predictor_config,
            reward,
            beta,
            cost,
            device,
            seed,
            task_seed,
            reward_scale,
            observe_price,
            prices,
        )
        self.task, self.predictor, self.beta = (
            self.batched.task,
            self.batched.predictor,
            self.batched.beta,
        )
        self.num_envs = num_envs
        self.metadata = {
            **type(self).metadata,
            "render_modes": render_modes(self.task),
            "autoreset_mode": self.autoreset_mode,
        }
        self.render_mode = render_mode
        self.policy = policy
        """Stop logits of ``(features, t)`` shown by ``ansi`` rendering (never acts)."""
        self._obs: np.ndarray | None = None
        # NEXT_STEP: the rows whose episode ended in the last step (reset in this one); what
        # render() shows for them: the instances of the episodes that ended.
        self._pending = np.zeros(num_envs, dtype=bool)
        self._ended_instances: Batch | None = None
        self.single_observation_space = _obs_space(self.batched.obs_dim, self.batched.num_layers)
        self.single_action_space = spaces.Discrete(2)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    @staticmethod
    def _infos(info: dict[str, Tensor]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, name in (
            ("t", "t"),
            ("loss", "loss"),
            ("metric_stat", "metric"),
            ("best_layer", "best_layer"),
            ("layers_computed", "layers_computed"),
        ):
            out[name] = _to_numpy(info[key])
            out[f"_{name}"] = np.ones(len(out[name]), dtype=bool)
        return out

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._obs = _to_numpy(self.batched.reset(seed=seed))
        self._pending[:] = False
        return self._obs, self._infos(self.batched.current_info())

    def step(
        self, actions: Any
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        a = np.asarray(actions)
        if not np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_:
            raise ValueError(f"actions must be integers 0 (continue) or 1 (stop), got {a.dtype}")
        actions_t = torch.from_numpy(a.astype(np.int64, copy=False))
        if self.autoreset_mode == AutoresetMode.NEXT_STEP:
            return self._step_next(actions_t)
        obs, reward, done, info = self.batched.step(actions_t)
        obs_np, done_np = _to_numpy(obs), _to_numpy(done)
        self._obs = obs_np
        infos = self._infos(info)
        if done_np.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            terminal = _to_numpy(info["terminal_obs"])
            for i in np.flatnonzero(done_np):
                final_obs[i] = terminal[i]
            infos["final_obs"] = final_obs
            infos["_final_obs"] = done_np.copy()
            final_info = {k: v for k, v in infos.items() if not k.startswith("_")}
            final_info.update({f"_{k}": done_np.copy() for k in list(final_info)})
            final_info.pop("final_obs")
            final_info.pop("_final_obs")
            infos["final_info"] = final_info
            infos["_final_info"] = done_np.copy()
        return (
            obs_np,
            _to_numpy(reward).astype(np.float64),
            done_np,
            np.zeros(self.num_envs, dtype=bool),
            infos,
        )

    def _step_next(
        self, actions: Tensor
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        """``NEXT_STEP`` autoreset: the batched env started the fresh instances of the rows
        that ended in the last step already; they are held back this step (action ignored,
        nothing computed, reward 0) and show their first observation."""
        pending = self._pending
        hold = torch.from_numpy(pending.copy()) if pending.any() else None
        episodes = self.batched.instances
        _, reward, done, info = self.batched.step(actions, hold=hold)
        done_np = _to_numpy(done)
        # Where a row ended: its last observation; elsewhere the ongoing episode's.
        self._obs = _to_numpy(info["terminal_obs"])
        self._pending = done_np.copy()
        self._ended_instances = episodes if done_np.any() else None
        return (
            self._obs,
            _to_numpy(reward).astype(np.float64),
            done_np,
            np.zeros(self.num_envs, dtype=bool),
            self._infos(info),
        )

    def render(self) -> tuple[Any, ...] | None:
        """Each row's current observation as text or picture (see ``StopEnv``), as a tuple."""
        if self.render_mode is None:
            _warn_no_render_mode(self)
            return None
        if self._obs is None:
            raise RuntimeError("StopVectorEnv.render called before the first reset()")
        ended = self._pending if self.autoreset_mode == AutoresetMode.NEXT_STEP else None
        if self.render_mode == "ansi":
            flags = [False] * self.num_envs if ended is None else ended.tolist()
            return tuple(render_lines(self.batched, self._obs, flags, self.policy))
        t = np.rint(self._obs[:, -1]).astype(int)
        instances = self.batched.instances
        if ended is not None and self._ended_instances is not None and ended.any():
            mask = torch.from_numpy(ended).to(self.batched.device)
            instances = _where_batch(mask, self._ended_instances, instances)
        return tuple(render_frames(self.batched, instances, t))

    @property
    def layer_evals(self) -> int:
        """Layer computations so far (see ``BatchedStopEnv.layer_evals``)."""
        return self.batched.layer_evals


__all__ = [
    "AUTORESET_MODES",
    "DEFAULT_BETA",
    "RENDER_FPS",
    "StopEnv",
    "StopLogits",
    "StopVectorEnv",
    "build_components",
    "render_frames",
    "render_lines",
    "render_modes",
]
