"""CEM model-predictive control over a batched simulator reached only through the gymnasium VectorEnv API.

The PETS recipe (Chua et al. 2018): at every real step, plan an action sequence (horizon x act_dim) with the
cross-entropy method and execute its first action.

Each CEM iteration samples ``population`` sequences from the current Gaussian (clipped to the bounds), repeats
each for ``particles`` sub-envs, resets the vector env (``num_envs = population * particles``) to the current
state with ``reset(options={"state": states})`` (states: num_envs x obs_dim), rolls ``horizon`` steps in one
batched rollout, sums rewards (a sub-env that terminated or truncated stops adding reward; terminations can cost
``termination_penalty``), averages over particles, and refits mean/std on the ``elites`` best with momentum
``alpha``. The next call warm-starts from the previous plan shifted by one step.

Any vector env that accepts ``options={"state": ...}`` works: simgan's learned ``SimVectorEnv`` (numpy or torch
mode; torch outputs are used on their own device without host copies) or a state-settable wrapper around
copies of a real env.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv

from agents.base import BasePolicy, obs_to_tensor


class MPCPolicy(BasePolicy):
    """A CEM planner; ``act(obs)`` plans from each observation (one at a time) and returns the first action.

    Args:
        vector_env: batched simulator with ``num_envs == population * particles`` supporting
            ``reset(options={"state": states})``.
        action_space: the (Box) action space of the real env the plan is for.
        horizon: planning horizon H (steps).
        population: candidate sequences per CEM iteration.
        particles: sub-envs per candidate (independent samples of a stochastic model), averaged.
        iterations: CEM iterations per planned action.
        elites: candidates kept to refit the Gaussian.
        seed: seeds the candidate sampling (``torch.Generator``).
        alpha: momentum: new mean/std = alpha * old + (1 - alpha) * elite statistics.
        init_std: initial std as a fraction of the action range (high - low).
        termination_penalty: subtracted from a candidate's return when its sub-env terminates.
        device: planning device; None uses the device of a torch-mode env's observations (else the CPU).
    """

    algo = "mpc"

    def __init__(
        self,
        vector_env: VectorEnv,
        action_space: gym.Space,
        horizon: int = 20,
        population: int = 100,
        particles: int = 1,
        iterations: int = 5,
        elites: int = 10,
        seed: int = 0,
        alpha: float = 0.1,
        init_std: float = 0.5,
        termination_penalty: float = 0.0,
        device: str | torch.device | None = None,
    ):
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"MPCPolicy: expected a 1-D Box action space, got {action_space}")
        if not isinstance(vector_env, VectorEnv):
            raise TypeError(
                f"MPCPolicy: expected a gymnasium.vector.VectorEnv, got {type(vector_env).__name__}"
            )
        if vector_env.num_envs != population * particles:
            raise ValueError(
                f"MPCPolicy: expected a vector env with population * particles = {population} * {particles} "
                f"= {population * particles} sub-envs, got {vector_env.num_envs}"
            )
        if not 1 <= elites <= population:
            raise ValueError(f"MPCPolicy: expected 1 <= elites <= population ({population}), got {elites}")
        for name, value in (("horizon", horizon), ("iterations", iterations), ("particles", particles)):
            if value < 1:
                raise ValueError(f"MPCPolicy: expected {name} >= 1, got {value}")
        super().__init__(vector_env.single_observation_space, action_space, device or "cpu")
        self.vector_env = vector_env
        self.horizon, self.population, self.particles = horizon, population, particles
        self.iterations, self.elites, self.alpha = iterations, elites, alpha
        self.termination_penalty = termination_penalty
        self.init_std_fraction = init_std
        self.seed = seed
        self._device_fixed = device is not None
        self._env_is_torch: bool | None = None
        self._set_device(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.reset()

    def _set_device(self, device: torch.device) -> None:
        self.device = torch.device(device)
        self.low = torch.as_tensor(self.action_space.low, dtype=torch.float32, device=self.device)
        self.high = torch.as_tensor(self.action_space.high, dtype=torch.float32, device=self.device)

    def reset(self) -> None:
        """Forget the warm start (call at the start of an episode)."""
        self._plan: torch.Tensor | None = None  # H x act_dim mean of the last plan

    def reseed(self, seed: int) -> None:
        """Restart candidate sampling from ``seed``, as if built with it (the warm start stays: see ``reset``)."""
        self.seed = int(seed)
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        """First action of the plan from ``obs`` (obs_dim,), or one plan per row of a batch B x obs_dim.

        Batches are planned row by row and share the warm start, so use a batch only for independent
        single-step queries; an episode should call ``act`` with one observation per step.
        """
        if self._env_is_torch is None:
            self._detect_env_mode(obs)
        obs_t, batched = obs_to_tensor(obs, self.observation_space, self.device)
        actions = np.stack([self.plan(row)[0].cpu().numpy() for row in obs_t])
        actions = np.clip(actions, self.action_space.low, self.action_space.high).astype(
            self.action_space.dtype
        )
        return actions if batched else actions[0]

    def _detect_env_mode(self, obs: Any) -> None:
        """One probe reset: does the env speak torch? If so (and no device was given) plan on its device."""
        first = np.asarray(obs.detach().cpu() if isinstance(obs, torch.Tensor) else obs, dtype=np.float32)
        first = first.reshape(-1, *self.observation_space.shape)[0]
        states = np.repeat(first[None], self.vector_env.num_envs, axis=0)
        env_obs, _ = self.vector_env.reset(options={"state": states})
        self._env_is_torch = isinstance(env_obs, torch.Tensor)
        if self._env_is_torch and not self._device_fixed and env_obs.device != self.device:
            self._set_device(env_obs.device)
            self.generator = torch.Generator(device=self.device).manual_seed(self.seed)

    def _init_std(self) -> torch.Tensor:
        return (self.high - self.low) * self.init_std_fraction

    def plan(self, obs: torch.Tensor) -> torch.Tensor:
        """Run CEM from one observation (obs_dim,). Returns the planned mean sequence H x act_dim."""
        act_dim = self.low.shape[0]
        if self._plan is None:
            mean = ((self.low + self.high) / 2).expand(self.horizon, act_dim).clone()
        else:
            # Warm start: shift the previous plan one step, repeat its last action at the end.
            mean = torch.cat([self._plan[1:], self._plan[-1:]], dim=0)
        std = self._init_std().expand(self.horizon, act_dim).clone()
        for _ in range(self.iterations):
            noise = torch.randn(
                self.population, self.horizon, act_dim, generator=self.generator, device=self.device
            )
            candidates = torch.max(torch.min(mean + std * noise, self.high), self.low)  # P x H x A
            values = self.evaluate_sequences(obs, candidates)  # P
            elite = candidates[torch.topk(values, self.elites).indices]  # E x H x A
            mean = self.alpha * mean + (1 - self.alpha) * elite.mean(0)
            std = self.alpha * std + (1 - self.alpha) * elite.std(0, unbiased=False)
        self._plan = mean
        return mean

    def evaluate_sequences(self, obs: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Mean return over particles of each candidate sequence from ``obs``.

        Args:
            obs: obs_dim start state.
            candidates: P x H x act_dim action sequences.

        Returns:
            P expected returns.
        """
        n = self.population * self.particles
        actions = candidates.repeat_interleave(self.particles, dim=0)  # (P * K) x H x A, particles adjacent
        states = obs.reshape(1, -1).expand(n, -1).contiguous()
        self.vector_env.reset(options={"state": self._to_env(states)})
        returns = torch.zeros(n, device=self.device)
        alive = torch.ones(n, dtype=torch.bool, device=self.device)
        for t in range(self.horizon):
            _, reward, terminated, truncated, _ = self.vector_env.step(self._to_env(actions[:, t]))
            reward = torch.as_tensor(reward, dtype=torch.float32, device=self.device)
            terminated = torch.as_tensor(terminated, device=self.device).bool()
            truncated = torch.as_tensor(truncated, device=self.device).bool()
            returns += torch.where(alive, reward, torch.zeros_like(reward))
            returns -= self.termination_penalty * (alive & terminated).float()
            alive &= ~(terminated | truncated)
        return returns.reshape(self.population, self.particles).mean(1)

    def _to_env(self, x: torch.Tensor) -> Any:
        """Tensors for torch-mode envs (on their device), numpy otherwise."""
        if self._env_is_torch:
            return x
        return x.detach().cpu().numpy()
