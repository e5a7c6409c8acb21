"""CEM-MPC through the VectorEnv interface: an analytic point mass, hand-computed returns, and real Pendulum."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from agents import MPCPolicy, evaluate_policy

DT, GOAL = 0.1, 1.0
OBS = gym.spaces.Box(-np.inf, np.inf, (2,), np.float64)
ACT = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def point_mass_step(state: np.ndarray, force: np.ndarray) -> np.ndarray:
    """(x, v) -> (x', v'): unit mass pushed by force in [-1, 1] for DT seconds (semi-implicit Euler)."""
    v = state[..., 1] + np.clip(force, -1.0, 1.0) * DT
    return np.stack([state[..., 0] + v * DT, v], axis=-1)


class PointMassVectorEnv(gym.vector.VectorEnv):
    """Batched 1-D point mass; reward -|x' - GOAL|; optional Gaussian velocity noise; optional termination
    when x' >= terminate_at. Supports ``reset(options={"state": num_envs x 2})`` and a torch mode."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(self, num_envs, noise=0.0, terminate_at=None, reward="distance", torch_mode=False, seed=0):
        self.num_envs = num_envs
        self.single_observation_space, self.single_action_space = OBS, ACT
        self.observation_space = batch_space(OBS, num_envs)
        self.action_space = batch_space(ACT, num_envs)
        self.noise, self.terminate_at, self.reward_kind, self.torch_mode = (
            noise,
            terminate_at,
            reward,
            torch_mode,
        )
        self.rng = np.random.default_rng(seed)
        self.state = np.zeros((num_envs, 2))
        self.resets = 0

    def _out(self, x):
        return torch.as_tensor(x) if self.torch_mode else x

    def reset(self, *, seed=None, options=None):
        self.resets += 1
        states = (options or {}).get("state")
        if states is None:
            self.state = np.zeros((self.num_envs, 2))
        else:
            states = states.cpu().numpy() if isinstance(states, torch.Tensor) else np.asarray(states)
            self.state = np.broadcast_to(states, (self.num_envs, 2)).astype(np.float64).copy()
        return self._out(self.state.copy()), {}

    def step(self, actions):
        actions = actions.cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
        self.state = point_mass_step(self.state, actions[:, 0].astype(np.float64))
        self.state[:, 1] += self.noise * self.rng.standard_normal(self.num_envs)
        x = self.state[:, 0]
        reward = -np.abs(x - GOAL) if self.reward_kind == "distance" else x.copy()
        terminated = (
            x >= self.terminate_at - 1e-9 if self.terminate_at is not None else np.zeros(self.num_envs, bool)
        )
        truncated = np.zeros(self.num_envs, dtype=bool)
        return (*(self._out(v) for v in (self.state.copy(), reward, terminated, truncated)), {})


class PointMassEnv(gym.Env):
    """The real env the planner acts in: same dynamics, one instance, 60-step episodes."""

    observation_space, action_space = OBS, ACT

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.state, self.t = np.zeros(2), 0
        return self.state.copy(), {}

    def step(self, action):
        self.state = point_mass_step(self.state, float(np.asarray(action).reshape(-1)[0]))
        self.t += 1
        return self.state.copy(), -abs(self.state[0] - GOAL), False, self.t >= 60, {}


def test_returns_stop_at_termination_and_pay_the_penalty():
    # Start at x = 0 moving at v = 1; zero force: x = 0.1, 0.2, 0.3 (terminates) -> return 0.6, not 0.1 + ... + 0.6.
    env = PointMassVectorEnv(2, terminate_at=0.3, reward="position")
    mpc = MPCPolicy(env, ACT, horizon=6, population=2, particles=1, iterations=1, elites=1)
    candidates = torch.zeros(2, 6, 1)
    candidates[1, 0, 0] = 1.0  # v = 1 + 1 * DT = 1.1: x = 0.11, 0.22, 0.33 (terminates) -> 0.66
    returns = mpc.evaluate_sequences(torch.tensor([0.0, 1.0]), candidates)
    torch.testing.assert_close(returns, torch.tensor([0.6, 0.66]), atol=1e-5, rtol=0)
    mpc.termination_penalty = 10.0
    torch.testing.assert_close(
        mpc.evaluate_sequences(torch.tensor([0.0, 1.0]), candidates), torch.tensor([-9.4, -9.34])
    )


def test_particles_average_a_stochastic_simulator():
    env = PointMassVectorEnv(3 * 50, noise=0.5, reward="position", seed=1)
    mpc = MPCPolicy(env, ACT, horizon=1, population=3, particles=50, iterations=1, elites=1)
    returns = mpc.evaluate_sequences(torch.tensor([0.0, 0.0]), torch.tensor([[[-1.0]], [[0.0]], [[1.0]]]))
    # E[x'] = (v + u * DT) * DT; noise is added to v after x' is computed, so the means are exact.
    torch.testing.assert_close(returns, torch.tensor([-0.01, 0.0, 0.01]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("torch_mode", [False, True])
def test_cem_reaches_the_goal(torch_mode):
    sim = PointMassVectorEnv(64, torch_mode=torch_mode)
    mpc = MPCPolicy(sim, ACT, horizon=15, population=64, particles=1, iterations=4, elites=8, seed=0)
    env = PointMassEnv()
    obs, _ = env.reset(seed=0)
    for _ in range(60):
        obs, *_ = env.step(mpc.act(obs))
    assert abs(obs[0] - GOAL) < 0.1 and abs(obs[1]) < 0.3, obs
    assert mpc._env_is_torch is torch_mode


def test_cem_with_a_noisy_model_and_particles_still_reaches_the_goal():
    sim = PointMassVectorEnv(32 * 4, noise=0.05, seed=3)
    mpc = MPCPolicy(sim, ACT, horizon=15, population=32, particles=4, iterations=3, elites=6, seed=1)
    result = evaluate_policy(mpc, PointMassEnv(), episodes=1)
    random_like = evaluate_policy(lambda obs: np.zeros((len(obs), 1), np.float32), PointMassEnv(), episodes=1)
    assert (
        result.mean_return > random_like.mean_return + 30
    )  # standing still costs 60; MPC arrives in ~20 steps


def test_same_seed_same_plan():
    def first_actions(seed):
        mpc = MPCPolicy(
            PointMassVectorEnv(16), ACT, horizon=5, population=16, iterations=2, elites=4, seed=seed
        )
        return [mpc.act(np.array([0.0, 0.0])) for _ in range(3)]

    np.testing.assert_array_equal(first_actions(4), first_actions(4))
    assert not np.array_equal(first_actions(4), first_actions(5))


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match=r"population \* particles = 8 \* 2 = 16 sub-envs, got 10"):
        MPCPolicy(PointMassVectorEnv(10), ACT, population=8, particles=2)
    with pytest.raises(ValueError, match="expected a 1-D Box action space, got Discrete"):
        MPCPolicy(PointMassVectorEnv(8), gym.spaces.Discrete(2), population=8)
    with pytest.raises(ValueError, match=r"expected 1 <= elites <= population \(8\), got 9"):
        MPCPolicy(PointMassVectorEnv(8), ACT, population=8, elites=9)


# ---- planning on a real env: copies of Pendulum-v1 whose state can be set ------------------------------------------


class SettablePendulumVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` real Pendulum-v1 envs; ``reset(options={"state": obs})`` sets each to the state that
    produced the observation (cos theta, sin theta, theta_dot)."""

    metadata: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}  # noqa: RUF012

    def __init__(self, num_envs: int):
        self.envs = [gym.make("Pendulum-v1").unwrapped for _ in range(num_envs)]
        self.num_envs = num_envs
        self.single_observation_space = self.envs[0].observation_space
        self.single_action_space = self.envs[0].action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed=None, options=None):
        states = np.broadcast_to(np.asarray(options["state"], dtype=np.float64), (self.num_envs, 3))
        for env, (cos, sin, theta_dot) in zip(self.envs, states):
            env.reset(seed=seed)
            env.state = np.array([np.arctan2(sin, cos), theta_dot])
        return np.stack([env._get_obs() for env in self.envs]), {}

    def step(self, actions):
        results = [env.step(a) for env, a in zip(self.envs, np.asarray(actions))]
        obs, reward = np.stack([r[0] for r in results]), np.array([r[1] for r in results], dtype=np.float64)
        return obs, reward, np.zeros(self.num_envs, bool), np.zeros(self.num_envs, bool), {}


def test_cem_balances_the_real_pendulum():
    def run(policy) -> tuple[float, float]:
        env = gym.make("Pendulum-v1").unwrapped
        env.reset(seed=0)
        env.state = np.array([0.6, 0.0])  # 34 degrees off upright, at rest
        obs, total = env._get_obs(), 0.0
        for _ in range(40):
            obs, reward, *_ = env.step(policy(obs))
            total += reward
        return total, abs(float(np.arctan2(obs[1], obs[0])))

    space = gym.make("Pendulum-v1").action_space
    mpc = MPCPolicy(
        SettablePendulumVectorEnv(48), space, horizon=12, population=48, iterations=3, elites=6, seed=0
    )
    mpc_return, mpc_angle = run(mpc.act)
    idle_return, idle_angle = run(lambda obs: np.zeros(1, np.float32))
    assert mpc_angle < 0.15 and idle_angle > 1.0  # MPC holds it up; doing nothing lets it fall
    assert mpc_return > idle_return + 25
