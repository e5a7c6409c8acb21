"""Vector-env plumbing shared by the agents: gymnasium 1.x autoreset modes and torch-mode envs.

A hand-computable "counter" VectorEnv: obs = [t], each step adds 1 to t and pays reward 1; even sub-envs
terminate at t = 3, odd ones are truncated at t = 4. So every valid transition has next_obs = obs + 1, every
episode returns exactly 3 (even) or 4 (odd), and a reset-step transition (3 -> 0 or 4 -> 0) is easy to spot.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode

from agents import PPOConfig, RandomPolicy, SACConfig, evaluate_policy, train_ppo, train_sac


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class CounterVectorEnv(gym.vector.VectorEnv):
    def __init__(
        self,
        num_envs: int = 4,
        mode: AutoresetMode = AutoresetMode.NEXT_STEP,
        torch_mode=False,
        discrete=False,
    ):
        self.num_envs = num_envs
        self.metadata = {"autoreset_mode": mode}
        self.torch_mode = torch_mode
        self.single_observation_space = gym.spaces.Box(-1.0, 10.0, (1,), np.float32)
        self.single_action_space = (
            gym.spaces.Discrete(2) if discrete else gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
        )
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.limit = np.where(np.arange(num_envs) % 2 == 0, 3, 4)
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.autoreset = np.zeros(num_envs, dtype=bool)
        self.actions_seen: list[Any] = []

    def _out(self, x: np.ndarray) -> Any:
        return torch.as_tensor(x) if self.torch_mode else x

    def _obs(self) -> np.ndarray:
        return self.t.astype(np.float32).reshape(-1, 1)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self.t[:] = 0
        self.autoreset[:] = False
        return self._out(self._obs()), {}

    def step(self, actions):
        self.actions_seen.append(actions)
        mode = self.metadata["autoreset_mode"]
        reward = np.ones(self.num_envs, dtype=np.float32)
        if mode == AutoresetMode.NEXT_STEP:
            reward[self.autoreset] = 0.0
            self.t = np.where(self.autoreset, 0, self.t + 1)
        else:
            self.t = self.t + 1
        terminated = (self.t >= self.limit) & (self.limit == 3)
        truncated = (self.t >= self.limit) & (self.limit == 4)
        done = terminated | truncated
        infos: dict[str, Any] = {}
        if mode == AutoresetMode.SAME_STEP and done.any():
            final = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                final[i] = self._obs()[i].copy()
            infos = {"final_obs": final, "_final_obs": done.copy()}
            self.t = np.where(done, 0, self.t)
        self.autoreset = done
        out = (self._obs(), reward, terminated, truncated)
        return (*[self._out(x) for x in out], infos)


MODES = [
    (AutoresetMode.NEXT_STEP, False),
    (AutoresetMode.SAME_STEP, False),
    (AutoresetMode.NEXT_STEP, True),
    (AutoresetMode.SAME_STEP, True),
]


@pytest.mark.parametrize(("mode", "torch_mode"), MODES)
def test_sac_stores_only_real_transitions(mode, torch_mode):
    env = CounterVectorEnv(4, mode, torch_mode)
    config = SACConfig(
        total_steps=120, learning_starts=40, batch_size=16, hidden_size=16, log_every=1, seed=3
    )
    result = train_sac(env, config, progress=False)
    buffer = result.replay_buffer
    obs, next_obs = buffer.obs[: buffer.size, 0], buffer.next_obs[: buffer.size, 0]
    assert buffer.size >= 120
    assert torch.equal(next_obs - obs, torch.ones_like(obs))  # no reset-step (3 -> 0 or 4 -> 0) transitions
    terminated = buffer.terminated[: buffer.size].bool()
    assert torch.all(next_obs[terminated] == 3)  # termination stored ...
    assert torch.all(
        buffer.terminated[: buffer.size][next_obs == 4] == 0
    )  # ... truncation does not cut bootstrap
    assert set(result.episode_returns) == {3.0, 4.0}
    assert all(np.isfinite(v) for entry in result.losses for v in entry.values())
    # In torch mode the env received tensors; in numpy mode numpy arrays.
    assert isinstance(env.actions_seen[-1], torch.Tensor if torch_mode else np.ndarray)


@pytest.mark.parametrize(("mode", "torch_mode"), MODES)
def test_ppo_counts_episodes_exactly(mode, torch_mode):
    env = CounterVectorEnv(4, mode, torch_mode, discrete=True)
    result = train_ppo(env, PPOConfig(total_steps=256, num_steps=16, seed=0), progress=False)
    assert set(result.episode_returns) == {3.0, 4.0}
    even_env_episodes = result.episode_returns.count(3.0)
    assert even_env_episodes >= 2 * (64 // 4) - 2  # 2 even envs, a 3-step episode every 3 (or 4) steps
    assert isinstance(env.actions_seen[-1], torch.Tensor if torch_mode else np.ndarray)


@pytest.mark.parametrize(("mode", "torch_mode"), MODES)
def test_evaluate_on_vector_env_scores_whole_episodes(mode, torch_mode):
    env = CounterVectorEnv(4, mode, torch_mode)
    policy = RandomPolicy(env.single_observation_space, env.single_action_space, seed=0)
    result = evaluate_policy(policy, env, episodes=10)
    assert len(result.returns) == 10
    # Sub-env i contributes (10 + i) // 4 episodes: 2, 2, 3, 3 -> returns 3,3,4,4,3,3,3,4,4,4 in some order.
    assert sorted(result.returns) == [3.0] * 5 + [4.0] * 5
    assert result.lengths == [int(r) for r in result.returns]


def test_disabled_autoreset_is_refused():
    env = CounterVectorEnv(2, AutoresetMode.DISABLED)
    with pytest.raises(ValueError, match="expected NextStep or SameStep, got Disabled"):
        train_sac(env, SACConfig(total_steps=10), progress=False)
