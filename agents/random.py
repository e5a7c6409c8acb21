"""A uniformly random policy (seeded): the baseline every agent must beat, and the default data collector."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.base import BasePolicy, obs_to_tensor
from agents.serialization import AgentFiles, save_agent_files


class RandomPolicy(BasePolicy):
    """Uniform random actions over a Box (bounded) or Discrete action space.

    Args:
        observation_space: the env's observation space (used for batch-shape detection).
        action_space: Box with finite bounds, or Discrete.
        seed: seeds the policy's own ``np.random.Generator``: the same seed gives the same actions.
    """

    algo = "random"

    def __init__(
        self, observation_space: gym.Space, action_space: gym.Space, seed: int = 0, device: Any = "cpu"
    ):
        super().__init__(observation_space, action_space, device="cpu")
        if isinstance(action_space, gym.spaces.Box) and not (
            np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))
        ):
            raise ValueError(f"RandomPolicy: expected a bounded Box action space, got {action_space}")
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def reseed(self, seed: int) -> None:
        """Restart from ``seed``: the actions of ``RandomPolicy(..., seed=seed)`` follow (``save`` writes it)."""
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        """Uniform actions, one per observation (``deterministic`` is ignored: a random policy has no mode)."""
        _, batched = obs_to_tensor(obs, self.observation_space, torch.device("cpu"))
        batch = int(np.shape(obs)[0]) if batched else 1
        space = self.action_space
        if isinstance(space, gym.spaces.Discrete):
            actions = self.rng.integers(space.start, space.start + space.n, size=batch, dtype=np.int64)
        else:
            actions = self.rng.uniform(space.low, space.high, size=(batch, *space.shape)).astype(space.dtype)
        return actions if batched else actions[0]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``agent.json`` (and an empty weights file) so the policy can be reloaded with ``load_agent``."""
        return save_agent_files(
            directory,
            algo=self.algo,
            config={"seed": self.seed},
            observation_space=self.observation_space,
            action_space=self.action_space,
            tensors={},
        )

    @classmethod
    def from_files(cls, files: AgentFiles, device: Any = "cpu") -> RandomPolicy:
        return cls(files.observation_space, files.action_space, seed=int(files.config.get("seed", 0)))
