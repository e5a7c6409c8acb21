"""Hand-computable WorldModels for tests: real implementations of the protocol, not mocks.

``LinearModel`` (Box actions, obs_dim 3, act_dim 2, noise_dim 3)::

    next_obs  = obs + 0.1 * [a0, a1, 0] + 0.01 * noise
    reward    = -||next_obs||^2
    terminated = |next_obs_0| > 2
    realism   = exp(-mean(z^2) / 2) with z = (next_obs - obs - 0.1 * [a0, a1, 0]) / 0.01  (the implied noise)

``DiscreteLinearModel`` (Discrete(3) actions, obs_dim 2, noise_dim 2): next_obs_0 = obs_0 + 0.1 * (a - 1) +
0.01 * noise_0, next_obs_1 = obs_1 + 0.01 * noise_1; reward = -|next_obs_0|; terminated = |next_obs_0| > 2.

``SpreadLinearModel``: a LinearModel whose noise is ``width`` times narrower or wider (``0.01 * width * noise``), that
takes the ``spread`` of forecasts (``noise_spread``): ``0.01 * width * spread * noise``.

``PoisonedModel``: a LinearModel whose output turns NaN/inf for rows with obs_2 above ``poison_above``.

``rollout(env, actions, **reset_kwargs)``: a reset and the steps of a learned (or any) env, single or vector.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from simgan.world_model import ModelInfo

SCALE_ACTION = 0.1
SCALE_NOISE = 0.01


class _Realism:
    """``sample_with_realism`` as the protocol defines it: the sample, then the realism of what was sampled."""

    def sample_with_realism(self, obs, action, *, noise=None, generator=None):
        next_obs, reward, terminated = self.sample(obs, action, noise=noise, generator=generator)
        return next_obs, reward, terminated, self.realism(obs, action, next_obs, reward)


def linear_info(max_episode_steps: int | None = 20) -> ModelInfo:
    return ModelInfo(
        env_id="simgan-test/Linear-v0",
        env_kwargs={},
        observation_space=gym.spaces.Box(-10.0, 10.0, shape=(3,), dtype=np.float32),
        action_space=gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32),
        max_episode_steps=max_episode_steps,
        initial_states=np.array(
            [[0.1, 0.2, 0.0], [-0.3, 0.1, 0.2], [0.0, 0.0, 0.0], [0.4, -0.4, 0.1], [0.2, 0.3, -0.2]],
            dtype=np.float32,
        ),
        state_low=np.full(3, -2.0, dtype=np.float32),
        state_high=np.full(3, 2.0, dtype=np.float32),
        dataset_sha256="0" * 64,
    )


def discrete_info(max_episode_steps: int | None = 20) -> ModelInfo:
    return ModelInfo(
        env_id="simgan-test/DiscreteLinear-v0",
        env_kwargs={},
        observation_space=gym.spaces.Box(-10.0, 10.0, shape=(2,), dtype=np.float32),
        action_space=gym.spaces.Discrete(3),
        max_episode_steps=max_episode_steps,
        initial_states=np.array([[0.0, 0.0], [0.5, -0.5], [-0.5, 0.5]], dtype=np.float32),
        state_low=np.full(2, -2.0, dtype=np.float32),
        state_high=np.full(2, 2.0, dtype=np.float32),
        dataset_sha256="0" * 64,
    )


class LinearModel(_Realism):
    """next = obs + 0.1 * [action, 0] + 0.01 * noise; see the module docstring."""

    noise_dim = 3

    def __init__(self, info: ModelInfo | None = None, device: str | torch.device = "cpu") -> None:
        self.info = info or linear_info()
        self._device = torch.device(device)
        self.sample_calls = 0

    @property
    def device(self) -> torch.device:
        return self._device

    def to(self, device: torch.device | str) -> LinearModel:
        self._device = torch.device(device)
        return self

    def drift(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        pad = torch.zeros(obs.shape[0], 1, device=obs.device)
        return obs + SCALE_ACTION * torch.cat([action.to(torch.float32), pad], dim=1)

    def sample(self, obs, action, *, noise=None, generator=None):
        self.sample_calls += 1
        if noise is None:
            noise = torch.randn(obs.shape[0], self.noise_dim, generator=generator, device=obs.device)
        next_obs = self.drift(obs, action) + SCALE_NOISE * noise[:, : obs.shape[1]]
        reward = -(next_obs**2).sum(dim=1)
        return next_obs, reward, next_obs[:, 0].abs() > 2.0

    def realism(self, obs, action, next_obs, reward):
        z = (next_obs - self.drift(obs, action)) / SCALE_NOISE
        return torch.exp(-(z**2).mean(dim=1) / 2)


class SpreadLinearModel(LinearModel):
    """A LinearModel with noise ``width`` times the real system's, offering forecasts a ``spread``."""

    def __init__(self, width: float) -> None:
        super().__init__()
        self.width = width
        self.noise_correlation = 0.0
        self.noise_spread = 1.0

    def sample(self, obs, action, *, noise=None, generator=None, spread=1.0):
        if noise is None:
            noise = torch.randn(obs.shape[0], self.noise_dim, generator=generator, device=obs.device)
        return super().sample(obs, action, noise=noise * (self.width * spread))

    def sample_with_realism(self, obs, action, *, noise=None, generator=None, spread=1.0):
        next_obs, reward, terminated = self.sample(
            obs, action, noise=noise, generator=generator, spread=spread
        )
        return next_obs, reward, terminated, self.realism(obs, action, next_obs, reward)


class DiscreteLinearModel(_Realism):
    """Discrete(3) actions: action 0 pushes obs_0 down by 0.1, 1 leaves it, 2 pushes it up."""

    noise_dim = 2

    def __init__(self, info: ModelInfo | None = None) -> None:
        self.info = info or discrete_info()

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> DiscreteLinearModel:
        return self

    def drift(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        push = SCALE_ACTION * (action.to(torch.float32) - 1.0)
        return obs + torch.stack([push, torch.zeros_like(push)], dim=1)

    def sample(self, obs, action, *, noise=None, generator=None):
        if noise is None:
            noise = torch.randn(obs.shape[0], self.noise_dim, generator=generator, device=obs.device)
        next_obs = self.drift(obs, action) + SCALE_NOISE * noise
        return next_obs, -next_obs[:, 0].abs(), next_obs[:, 0].abs() > 2.0

    def realism(self, obs, action, next_obs, reward):
        z = (next_obs - self.drift(obs, action)) / SCALE_NOISE
        return torch.exp(-(z**2).mean(dim=1) / 2)


class PoisonedModel(LinearModel):
    """Emits non-finite values for rows whose obs_2 exceeds ``poison_above``.

    ``kind``: ``"nan_obs"``, ``"inf_obs"`` or ``"nan_reward"``.
    """

    def __init__(self, kind: str = "nan_obs", poison_above: float = 0.5) -> None:
        super().__init__()
        self.kind = kind
        self.poison_above = poison_above

    def sample(self, obs, action, *, noise=None, generator=None):
        next_obs, reward, terminated = super().sample(obs, action, noise=noise, generator=generator)
        poisoned = obs[:, 2] > self.poison_above
        if self.kind == "nan_reward":
            reward = torch.where(poisoned, torch.nan, reward)
        else:
            bad = torch.nan if self.kind == "nan_obs" else torch.inf
            next_obs = torch.where(poisoned[:, None], torch.full_like(next_obs, bad), next_obs)
        return next_obs, reward, terminated


def rollout(env: gym.Env | gym.vector.VectorEnv, actions: list, **reset_kwargs) -> list[tuple]:
    """``[(obs,), step_1, step_2, ...]``: the reset's observation, then each ``env.step(action)``'s 5-tuple."""
    obs, _ = env.reset(**reset_kwargs)
    out = [(obs,)]
    for action in actions:
        out.append(env.step(action))
    return out
