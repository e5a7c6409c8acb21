"""The batched engine behind SimEnv and SimVectorEnv: B sub-env states, noise streams and checks on one device.

Per step, on the model's device (B sub-envs, D = obs_dim)::

    noise (B x noise_dim) -> model.sample_with_realism(obs, action, noise)   (model.sample when realism is off)
                          -> next_obs, reward, terminated, realism (the model judges its own transition)
    reward_fn / termination_fn replace the learned ones when given ("known": the source env's, envs.known)
    reward_values: the learned reward rounded to the nearest of a few values ("data": those of the training data)
    realism below realism_threshold         -> info["unrealistic"], truncated (terminated with halt_unknown)
    next_obs outside the data range +margin -> info["out_of_support"], truncated (terminated with halt_unknown)
    non-finite model output                 -> info["non_finite"], truncated, last finite obs kept
    step count reaches max_episode_steps    -> truncated

Observations are clipped to the observation space (a real env never leaves it). Nothing in
:meth:`BatchSimulator.step` copies to the host, so the vector env's torch mode never synchronises per step.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from simgan.world_model import SpaceClamp, WorldModel, at_precision

# reward_fn(obs B x D, action, next_obs B x D) -> B floats; termination_fn(...) -> B bools. torch in, torch out.
TransitionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# "known": the source env's own function (envs.known), looked up by the model's env id
TransitionFnArg = TransitionFn | str | None
InitialStates = str | np.ndarray | Callable[[np.random.Generator], np.ndarray]
STAT_NAMES = ("steps", "unrealistic", "out_of_support", "non_finite")
# the per-row flags of a step's output (info keys of the vector env), beside terminated / truncated
FLAG_KEYS = ("unrealistic", "out_of_support", "non_finite")
RESET_OPTIONS = ("state", "noise", "reset_mask")


def resolve_transition_fn(name: str, fn: TransitionFnArg, info: Any) -> TransitionFn | None:
    """``None`` (the model's own), a callable, or ``"known"``: the source env's function from
    :mod:`envs.known` (``UnknownFunctionsError`` when the model's env id or env kwargs have none)."""
    if fn is None or callable(fn):
        return fn
    if not (isinstance(fn, str) and fn == "known"):
        raise ValueError(f"{name}: expected None, a callable or 'known', got {fn!r}")
    from envs.known import known_functions

    functions = known_functions(info.env_id, info.env_kwargs)
    return functions.reward if name == "reward_fn" else functions.termination


def resolve_reward_values(reward_values: Any, reward_fn: Any, info: Any) -> np.ndarray | None:
    """The ascending float32 values that the learned reward is rounded to, or None (no rounding).

    ``None``; ``"data"``: the values the training data's reward took (``model.info.reward_values``, recorded when
    there are only a few: CartPole's 1, InvertedPendulum's 0 and 1); or a 1-D array of finite values. Rounding
    applies to the learned reward, so a ``reward_fn`` beside it is refused.
    """
    if reward_values is None:
        return None
    if reward_fn is not None:
        raise ValueError(
            f"reward_values: rounds the learned reward, so expected reward_fn=None beside it, got {reward_fn!r}"
        )
    if isinstance(reward_values, str):
        if reward_values != "data":
            raise ValueError(
                f"reward_values: expected None, 'data' or an array of values, got {reward_values!r}"
            )
        if info.reward_values is None:
            why = (
                "its training data's reward is continuous"
                if info.reward_values_recorded
                else "it was saved before simgan recorded them; pass the values as an array"
            )
            raise ValueError(
                "reward_values='data': expected a model whose training data's reward takes a few distinct values "
                f"(model.info.reward_values), got none for this {info.env_id} model: {why}"
            )
        reward_values = info.reward_values
    values = np.asarray(reward_values, dtype=np.float64)
    if values.ndim != 1 or len(values) == 0 or not np.all(np.isfinite(values)):
        raise ValueError(
            f"reward_values: expected a non-empty 1-D array of finite values, got {reward_values!r}"
        )
    return np.unique(values).astype(np.float32)


# the string settings of a learned env that a loop, a CLI flag or a saved planner can ask for
LEARNED_ENV_SETTINGS = {"reward_fn": "known", "termination_fn": "known", "reward_values": "data"}


def learned_env_kwargs(
    known_reward: bool, known_termination: bool, round_reward: bool = False
) -> dict[str, str]:
    """The keyword arguments of a learned env whose source env's own reward and/or termination replace the
    learned ones (``reward_fn`` / ``termination_fn``: "known"), or whose learned reward is rounded to its training
    data's values (``reward_values``: "data"). Rounding applies to the learned reward: with ``known_reward`` too,
    ``ValueError``."""
    if known_reward and round_reward:
        raise ValueError(
            "round_reward: rounds the learned reward, so expected known_reward=False beside it, got True"
        )
    chosen = {"reward_fn": known_reward, "termination_fn": known_termination, "reward_values": round_reward}
    return {name: LEARNED_ENV_SETTINGS[name] for name, on in chosen.items() if on}


def resolve_model(model: WorldModel | str | os.PathLike, device: str | torch.device) -> WorldModel:
    """A model object (moved to ``device`` unless ``device="auto"``) or a model directory loaded onto it."""
    from simgan.device import resolve_device

    if isinstance(model, (str, os.PathLike)):
        from simgan.checkpoint import load_model

        return load_model(model, resolve_device(device))
    if not isinstance(model, WorldModel):
        raise TypeError(f"model: expected a WorldModel or a model directory path, got {type(model).__name__}")
    # "auto" keeps a model object where the caller put it; an explicit device moves it.
    return model if device == "auto" else model.to(resolve_device(device))


def validate_numpy_action(action: Any, space: gym.Space, batch_shape: tuple[int, ...]) -> np.ndarray:
    """Check an action (batch) on the host and return it as an array of shape ``batch_shape + space.shape``.

    Raises ``ValueError`` (never ``assert``: this must hold under ``python -O``) for a wrong shape or dtype,
    NaN/inf, or values outside the action space, naming the expected bounds and the offending values.
    """
    arr = np.asarray(action)
    expected_shape = batch_shape + tuple(space.shape)
    if arr.shape != expected_shape:
        raise ValueError(f"action: expected shape {expected_shape}, got {arr.shape}")
    if isinstance(space, gym.spaces.Discrete):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"action: expected an integer dtype for {space}, got {arr.dtype}")
        low, high = int(space.start), int(space.start + space.n - 1)
        bad = (arr < low) | (arr > high)
        if bad.any():
            raise ValueError(
                f"action out of bounds: expected integers in [{low}, {high}], got {arr[bad][:5].tolist()} "
                f"at index {np.argwhere(bad)[:5].tolist()}"
            )
        return arr.astype(np.int64)
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"action: expected a float (or integer) dtype for {space}, got {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        bad = ~np.isfinite(arr)
        raise ValueError(
            f"action: expected finite values, got {arr[bad][:5].tolist()} at {np.argwhere(bad)[:5].tolist()}"
        )
    bad = (arr < space.low) | (arr > space.high)
    if bad.any():
        where = np.argwhere(bad)[:5]
        raise ValueError(
            f"action out of bounds: expected values in [low, high] with low={space.low.tolist()}, "
            f"high={space.high.tolist()}, got {arr[bad][:5].tolist()} at index {where.tolist()}"
        )
    return arr.astype(np.float32)


class BatchSimulator:
    """The engine behind SimEnv and SimVectorEnv: B sub-env states, noise streams and checks on one device.

    Everything here is torch on ``model.device``; nothing in :meth:`step` copies to the host, so the vector
    env's torch mode can run a GPU training loop without synchronising per step.
    """

    def __init__(
        self,
        model: WorldModel,
        num_envs: int,
        *,
        initial_states: InitialStates,
        max_episode_steps: int | None,
        reward_fn: TransitionFnArg,
        termination_fn: TransitionFnArg,
        realism_threshold: float | None,
        support_margin: float,
        compute_realism: bool,
        precision: str = "float32",
        halt_unknown: bool = False,
        compile: bool = False,
        reward_values: np.ndarray | str | None = None,
    ) -> None:
        info = model.info
        if not isinstance(num_envs, (int, np.integer)) or isinstance(num_envs, bool) or num_envs < 1:
            raise ValueError(f"num_envs: expected a positive int, got {num_envs!r}")
        if max_episode_steps is not None and (
            not isinstance(max_episode_steps, (int, np.integer)) or max_episode_steps < 1
        ):
            raise ValueError(f"max_episode_steps: expected a positive int or None, got {max_episode_steps!r}")
        if realism_threshold is not None and not 0.0 <= float(realism_threshold) <= 1.0:
            raise ValueError(
                f"realism_threshold: expected a float in [0, 1] or None, got {realism_threshold!r}"
            )
        if realism_threshold is not None and not compute_realism:
            raise ValueError(
                "realism_threshold: expected compute_realism=True when a threshold is set, got False"
            )
        if not float(support_margin) >= 0.0:
            raise ValueError(f"support_margin: expected a float >= 0, got {support_margin!r}")
        if not isinstance(halt_unknown, (bool, np.bool_)):
            raise ValueError(f"halt_unknown: expected a bool, got {halt_unknown!r}")
        if not isinstance(compile, (bool, np.bool_)):
            raise ValueError(f"compile: expected a bool, got {compile!r}")
        self.device = model.device
        self.num_envs = int(num_envs)
        self.obs_dim = info.obs_dim
        self.noise_dim = int(model.noise_dim)
        self.action_space = info.action_space
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.reward_fn = resolve_transition_fn("reward_fn", reward_fn, info)
        self.termination_fn = resolve_transition_fn("termination_fn", termination_fn, info)
        values = resolve_reward_values(reward_values, reward_fn, info)
        self.reward_values = None if values is None else torch.as_tensor(values, device=self.device)
        # a reward between two values goes to the nearer one: bucketize by the midpoints
        self.reward_midpoints = (
            None if values is None else (self.reward_values[1:] + self.reward_values[:-1]) / 2
        )
        self.realism_threshold = None if realism_threshold is None else float(realism_threshold)
        self.compute_realism = compute_realism
        self.halt_unknown = bool(halt_unknown)
        # bfloat16: the model's matmuls run under torch.autocast (approximate, much faster on CPUs with
        # AVX512-BF16/AMX and on GPUs); the env's own arithmetic and all outputs stay float32.
        self.model = at_precision(model, precision)

        def as_tensor(x: np.ndarray) -> torch.Tensor:
            return torch.as_tensor(np.asarray(x, dtype=np.float32), device=self.device)

        low, high = info.state_low.astype(np.float64), info.state_high.astype(np.float64)
        margin = float(support_margin) * (high - low)
        self.support_low, self.support_high = as_tensor(low - margin), as_tensor(high + margin)
        self.obs_clamp = SpaceClamp(info.observation_space)
        if isinstance(self.action_space, gym.spaces.Box):
            self.act_low, self.act_high = as_tensor(self.action_space.low), as_tensor(self.action_space.high)
        self.initial_fn: Callable[[np.random.Generator], np.ndarray] | None = None
        self.initial_table: torch.Tensor | None = None
        if callable(initial_states):
            self.initial_fn = initial_states
        else:
            table = (
                info.initial_states
                if isinstance(initial_states, str) and initial_states == "dataset"
                else initial_states
            )
            if isinstance(table, str):
                raise ValueError(f"initial_states: expected 'dataset', an array or a callable, got {table!r}")
            table = np.asarray(table, dtype=np.float32)
            table = table[None] if table.ndim == 1 else table
            if isinstance(initial_states, str) and len(table) == 0:
                raise ValueError(
                    "initial_states='dataset': expected start states in model.info.initial_states, got none; "
                    "pass initial_states=<array N x obs_dim> or a callable"
                )
            if table.ndim != 2 or table.shape[1] != self.obs_dim or len(table) == 0:
                raise ValueError(
                    f"initial_states: expected an array of shape (N, {self.obs_dim}) with N >= 1, got {table.shape}"
                )
            self.initial_table = self.check_states(table, "initial_states")

        self.generator = torch.Generator(device=self.device)
        self.obs = torch.zeros(self.num_envs, self.obs_dim, device=self.device)
        self.steps = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self.counts = torch.zeros(len(STAT_NAMES), dtype=torch.int64, device=self.device)
        self.fixed_noise = torch.zeros(self.num_envs, self.noise_dim, device=self.device)
        self.fixed_mask = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.any_fixed = False
        self.row_generators: dict[int, torch.Generator] = {}  # row -> its own noise stream (seeded resets)
        self.generator_rows = torch.zeros(0, dtype=torch.long, device=self.device)  # the keys, on the device
        # compile: everything of a step after the noise draw as one torch.compile graph (a torch.Generator
        # splits a graph, so the draw stays outside). Each configuration compiles once per process. The model's
        # weights are frozen into it (inductor's freezing: folded as constants, and on the CPU packed for
        # oneDNN with each layer's activation fused), so a weight changed in place after the first step would
        # go unseen: every step checks that each weight is the same tensor at the same version counter, and
        # refuses a changed model.
        self.compiled = bool(compile)
        self._advance = torch.compile(self.advance, dynamic=False) if self.compiled else self.advance
        self.frozen_weights = weight_slots(model) if self.compiled else []

    # ---- start states -------------------------------------------------------------------------------------
    def check_states(self, states: Any, what: str = "state") -> torch.Tensor:
        """n x D float32 tensor of finite states inside the observation space, else ``ValueError``."""
        arr = states.detach().to("cpu").numpy() if isinstance(states, torch.Tensor) else np.asarray(states)
        arr = arr.astype(np.float32)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what}: expected finite values, got {arr[~np.isfinite(arr)][:5].tolist()}")
        space = self.model.info.observation_space
        if np.any(arr < space.low) or np.any(arr > space.high):
            raise ValueError(
                f"{what}: expected values inside the observation space {space}, got {arr.tolist()[:3]}..."
            )
        return torch.as_tensor(arr, device=self.device)

    def draw_initial(self, n: int, np_rng: np.random.Generator) -> torch.Tensor:
        """n x D start states: rows of the initial-state table (drawn with the torch generator) or callable draws."""
        if self.initial_fn is not None:
            drawn = []
            for _ in range(n):
                state = np.asarray(self.initial_fn(np_rng), dtype=np.float32)
                if state.shape != (self.obs_dim,):
                    raise ValueError(
                        f"initial_states callable: expected state of shape ({self.obs_dim},), got {state.shape}"
                    )
                drawn.append(state)
            return self.check_states(np.stack(drawn), "initial_states callable")
        assert self.initial_table is not None
        index = torch.randint(len(self.initial_table), (n,), generator=self.generator, device=self.device)
        return self.initial_table.index_select(0, index)  # the same rows as table[index], in half the time

    # ---- noise --------------------------------------------------------------------------------------------
    def set_noise(self, rows: torch.Tensor, option: Any) -> None:
        """Noise mode for ``rows`` (1-D long tensor of sub-env indices) until their next explicit reset.

        ``None``: fresh noise every step from the env's generator. ``int`` (or one int per row): a
        per-sub-env ``torch.Generator`` with that seed (a single int ``s`` gives row k the seed ``s + k``).
        ``"fixed"``: one draw now, reused every step. Array/tensor (noise_dim,) or (len(rows), noise_dim):
        that noise, every step. (A list or tuple of Python ints means seeds; pass noise values as an array.)
        """
        row_list = rows.tolist()
        for row in row_list:
            self.row_generators.pop(row, None)
        self.fixed_mask[rows] = False
        if option is None:
            pass
        elif isinstance(option, str):
            if option != "fixed":
                raise ValueError(
                    f"options['noise']: expected None, 'fixed', an int seed or an array, got {option!r}"
                )
            self.fixed_noise[rows] = torch.randn(
                len(row_list), self.noise_dim, generator=self.generator, device=self.device
            )
            self.fixed_mask[rows] = True
        elif _is_int(option) or (
            isinstance(option, Sequence) and len(option) > 0 and all(_is_int(s) for s in option)
        ):
            seeds = (
                [int(option) + k for k in range(len(row_list))]
                if _is_int(option)
                else [int(s) for s in option]
            )
            if len(seeds) != len(row_list):
                raise ValueError(
                    f"options['noise']: expected {len(row_list)} seeds (one per reset sub-env), got {len(seeds)}"
                )
            for row, seed in zip(row_list, seeds):
                self.row_generators[row] = torch.Generator(device=self.device).manual_seed(seed)
        else:
            noise = torch.as_tensor(option, dtype=torch.float32).to(self.device)
            if noise.shape == (self.noise_dim,):
                noise = noise.expand(len(row_list), self.noise_dim)
            if noise.shape != (len(row_list), self.noise_dim):
                raise ValueError(
                    f"options['noise']: expected shape ({self.noise_dim},) or ({len(row_list)}, {self.noise_dim}), "
                    f"got {tuple(noise.shape)}"
                )
            if not bool(torch.isfinite(noise).all()):
                raise ValueError("options['noise']: expected finite values, got NaN or inf")
            self.fixed_noise[rows] = noise
            self.fixed_mask[rows] = True
        self.any_fixed = bool(self.fixed_mask.any())
        self.generator_rows = torch.as_tensor(list(self.row_generators), dtype=torch.long, device=self.device)

    def draw_noise(self) -> torch.Tensor:
        """B x noise_dim: the shared stream, then per-row generators and fixed noise where they apply."""
        noise = torch.randn(self.num_envs, self.noise_dim, generator=self.generator, device=self.device)
        if self.row_generators:
            draws = [
                torch.randn(self.noise_dim, generator=g, device=self.device)
                for g in self.row_generators.values()
            ]
            noise[self.generator_rows] = torch.stack(draws)
        if self.any_fixed:
            noise = torch.where(self.fixed_mask[:, None], self.fixed_noise, noise)
        return noise

    # ---- reset / step -------------------------------------------------------------------------------------
    def reset_rows(self, rows: torch.Tensor, states: torch.Tensor, noise: Any) -> None:
        """Start ``rows`` at ``states`` (len(rows) x D) with the given noise mode."""
        # Out of place: tensors handed out earlier (torch mode) must not change under the caller.
        self.obs = self.obs.index_copy(0, rows, states)
        self.steps = self.steps.index_fill(0, rows, 0)
        self.set_noise(rows, noise)

    def step(
        self,
        action: torch.Tensor,
        active: torch.Tensor | None = None,
        draw_fresh: Callable[[], torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Advance every sub-env one step. ``action``: B x act_dim float (Box) or B long (Discrete).

        ``active`` (B bool, optional) marks the sub-envs whose transition counts in :attr:`counts`. With
        ``draw_fresh`` (returns B x D start states; called after this step's noise draw, so the generator's
        draws keep their order) the sub-envs that are not active start a new episode at their row of it instead
        (the vector env's next-step autoreset): step count 0, reward 0, realism 1, no flags. Returns device
        tensors: ``obs`` B x D, ``reward`` B, ``terminated`` / ``truncated`` / ``unrealistic`` /
        ``out_of_support`` / ``non_finite`` B bool, ``realism`` B float (ones when ``compute_realism`` is off).
        """
        if draw_fresh is not None and active is None:
            raise ValueError(
                "draw_fresh: expected `active` (the rows that do not restart) beside it, got None"
            )
        noise = self.draw_noise()
        fresh = None if draw_fresh is None else draw_fresh()
        if not self.compiled:
            return self.advance(action, active, noise, fresh)
        if not all(slots.get(name) is t and t._version == v for slots, name, t, v in self.frozen_weights):
            raise RuntimeError(
                "compile=True: expected the model's weights as they were when this env was built (the compiled "
                "step holds them as constants), got weights changed since; build a new env on the changed model"
            )
        with FREEZING, torch.no_grad():  # freezing applies to graphs traced without grad
            return self._advance(action, active, noise, fresh)

    def advance(
        self,
        action: torch.Tensor,
        active: torch.Tensor | None,
        noise: torch.Tensor,
        fresh: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """:meth:`step` with this step's noise (B x noise_dim) given: what ``compile=True`` compiles."""
        obs = self.obs
        if isinstance(self.action_space, gym.spaces.Box):
            action_ok = rows_finite(action)
            action = torch.where(action_ok[:, None], action, 0.0).clamp(self.act_low, self.act_high)
        else:
            action_ok = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
            action = action.clamp(
                int(self.action_space.start), int(self.action_space.start + self.action_space.n - 1)
            )
        if self.compute_realism:  # the model judges its own transition (its reward, not a reward_fn's)
            next_obs, reward, terminated, realism = self.model.sample_with_realism(obs, action, noise=noise)
        else:
            next_obs, reward, terminated = self.model.sample(obs, action, noise=noise)
            realism = torch.ones(self.num_envs, device=self.device)
        # float32 out: a no-op for simgan's models, but any WorldModel may return float64
        next_obs = next_obs.to(torch.float32)
        model_reward = reward = reward.reshape(self.num_envs).to(torch.float32)
        if self.reward_fn is not None:
            reward = self.reward_fn(obs, action, next_obs).reshape(self.num_envs).to(torch.float32)
        if self.reward_values is not None:
            reward = self.reward_values[torch.bucketize(reward.contiguous(), self.reward_midpoints)]
        if self.termination_fn is not None:
            terminated = self.termination_fn(obs, action, next_obs)
        terminated = terminated.reshape(self.num_envs).to(torch.bool)

        # A non-finite output truncates the step and keeps the last finite observation.
        finite = rows_finite(next_obs) & torch.isfinite(model_reward) & action_ok
        if self.reward_fn is not None:
            finite = finite & torch.isfinite(reward)
        next_obs = torch.where(finite[:, None], next_obs, obs)
        reward = torch.where(finite, reward, 0.0)
        out_of_support = rows_outside(next_obs, self.support_low, self.support_high) & finite
        realism = realism.reshape(self.num_envs).to(torch.float32)
        realism = torch.where(finite, torch.nan_to_num(realism, nan=0.0).clamp(0.0, 1.0), 0.0)
        if self.realism_threshold is not None:
            unrealistic = (realism < self.realism_threshold) & finite
        else:
            unrealistic = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.steps = self.steps + 1
        unknown = unrealistic | out_of_support
        if self.halt_unknown:  # MOReL's HALT: no future beyond a transition the model does not know
            terminated = terminated | unknown
            truncated = ~finite
        else:  # bootstrapped from by agents that tell truncation from termination
            truncated = ~finite | unknown
        if self.max_episode_steps is not None:
            truncated = truncated | (self.steps >= self.max_episode_steps)
        self.obs = self.obs_clamp(next_obs)

        counted = torch.ones_like(finite) if active is None else active
        flags = torch.stack([counted, unrealistic & counted, out_of_support & counted, ~finite & counted])
        self.counts += flags.sum(dim=1)
        out = {
            "obs": self.obs,
            "reward": reward,
            "terminated": terminated & finite,
            "truncated": truncated,
            "realism": realism,
            "unrealistic": unrealistic,
            "out_of_support": out_of_support,
            "non_finite": ~finite,
        }
        if fresh is not None:  # the rows that are not active start again at `fresh` (step checked `active`)
            restarting = ~active
            self.obs = out["obs"] = torch.where(restarting[:, None], fresh, self.obs)
            self.steps = torch.where(restarting, 0, self.steps)
            out["reward"] = torch.where(restarting, 0.0, reward)
            out["realism"] = torch.where(restarting, 1.0, realism)
            for key in ("terminated", "truncated", *FLAG_KEYS):
                out[key] = out[key] & active
        return out

    def stats(self) -> dict[str, int]:
        """Totals since construction (one host copy): transitions and how many were flagged."""
        return dict(zip(STAT_NAMES, self.counts.tolist()))


class InductorFreezing:
    """``with FREEZING:`` sets ``torch._inductor.config.freezing`` for the calls inside and puts the user's value
    back when the last one leaves (a count under a lock: compiled envs may step in several threads). Dynamo reads
    the setting while it traces, before a ``torch.compile(options=...)`` entry would apply, so it is set around
    every compiled call (one of them may compile); ~5 us."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.inside = 0
        self.saved = False

    def __enter__(self) -> None:
        from torch._inductor import config  # imported on first use: importing inductor takes ~2 s

        with self.lock:
            if self.inside == 0:
                self.saved, config.freezing = config.freezing, True
            self.inside += 1

    def __exit__(self, *exc: object) -> None:
        from torch._inductor import config

        with self.lock:
            self.inside -= 1
            if self.inside == 0:
                config.freezing = self.saved


FREEZING = InductorFreezing()


def weight_slots(model: Any) -> list[tuple[dict[str, Any], str, torch.Tensor, int]]:
    """(the module's parameter or buffer dict, name, tensor, version counter) of every weight of ``model`` (none
    for a model that is not a ``torch.nn.Module``): what a compiled step checks before each call, in a few
    microseconds (walking the modules each time would take ~70)."""
    if not isinstance(model, torch.nn.Module):
        return []
    return [
        (slots, name, t, t._version)
        for module in model.modules()
        for slots in (module._parameters, module._buffers)
        for name, t in slots.items()
        if t is not None
    ]


# The step's row checks as float reductions: torch's bool reductions along a short row (``isfinite(x).all(dim=1)``
# on 4096 x 17) are slow on the CPU, 160 us against 26 us for the float sum (2 threads); at 1024 x 3 they cost
# the same. Both give exactly the bool reduction's answer (tested on NaN, +-inf and float32's largest values).
def rows_finite(x: torch.Tensor) -> torch.Tensor:
    """B bool: the rows of ``x`` (B x D) whose values are all finite. ``0 * v`` is 0 for every finite v and NaN
    for NaN and +-inf, and a sum of zeros is exactly 0, so ``(x * 0).sum(1) == 0`` is ``isfinite(x).all(1)``."""
    return (x * 0).sum(dim=1) == 0


def rows_outside(x: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """B bool: the rows of ``x`` (B x D) with a value below ``low`` or above ``high`` (D each, finite): a value
    outside moves under the clamp, and a sum of non-negative distances is positive when one of them is (NaN
    counts as inside, as ``NaN < low`` and ``NaN > high`` are False: ``nansum`` skips it)."""
    return torch.nansum((x.clamp(low, high) - x).abs(), dim=1) > 0


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_options(options: dict[str, Any] | None, allowed: Sequence[str]) -> dict[str, Any]:
    options = dict(options or {})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"reset options: expected keys among {list(allowed)}, got unknown {unknown}")
    return options
