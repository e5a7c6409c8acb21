"""Agents inside simgan's learned env (SimEnv / SimVectorEnv over the hand-computable LinearModel).

``agents`` never imports simgan; this test wires the two together the way ``simgan agent --sim`` does, and checks
that the planner, SAC, PPO and evaluation speak the learned env's VectorEnv interface (numpy and torch mode).
LinearModel: next_obs = obs + 0.1 * [a0, a1, 0] + 0.01 * noise, reward = -||next_obs||^2, 20-step episodes.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from worldmodels import DiscreteLinearModel, LinearModel

from agents import MPCPolicy, PPOConfig, RandomPolicy, SACConfig, evaluate_policy, train_ppo, train_sac
from simgan.sim_env import SimEnv
from simgan.sim_vector_env import SimVectorEnv


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("torch_mode", [False, True])
def test_mpc_plans_through_the_learned_vector_env(torch_mode):
    sim = SimVectorEnv(LinearModel(), num_envs=32 * 2, torch_mode=torch_mode, seed=0, compute_realism=False)
    mpc = MPCPolicy(
        sim, sim.single_action_space, horizon=8, population=32, particles=2, iterations=5, elites=6
    )
    start = np.array([0.8, -0.6, 0.1], np.float32)

    def episode(policy) -> tuple[float, list[np.ndarray]]:
        real = SimEnv(LinearModel(), seed=1)  # stands in for the real env: same dynamics, its own noise
        obs, _ = real.reset(options={"state": start})
        total, trajectory = 0.0, []
        for _ in range(15):
            obs, reward, *_ = real.step(policy(obs))
            total, trajectory = total + float(reward), [*trajectory, obs]
        return total, trajectory

    mpc_return, trajectory = episode(mpc.act)
    idle_return, _ = episode(lambda obs: np.zeros(2, np.float32))
    # 8 full-force steps reach the reward's optimum (obs_2 is not controllable); then CEM hovers near it.
    assert max(np.abs(obs[:2]).max() for obs in trajectory[9:]) < 0.15, trajectory
    assert mpc_return > idle_return + 8  # idle: about -1 per step; MPC: about -0.2
    assert mpc._env_is_torch is torch_mode


@pytest.mark.parametrize("torch_mode", [False, True])
def test_sac_trains_on_the_learned_vector_env(torch_mode):
    sim = SimVectorEnv(LinearModel(), num_envs=16, torch_mode=torch_mode, seed=0, compute_realism=False)
    config = SACConfig(
        total_steps=800, learning_starts=320, batch_size=64, hidden_size=32, updates_per_step=0.25
    )
    result = train_sac(sim, config, progress=False)
    buffer = result.replay_buffer
    assert buffer.size == 800 and torch.isfinite(buffer.next_obs[:800]).all()
    assert len(result.episode_returns) >= 16 and all(np.isfinite(result.episode_returns))
    evaluation = evaluate_policy(result.agent, sim, episodes=16, seed=0)
    assert evaluation.lengths == [20] * 16  # the learned env's time limit, whole episodes only


@pytest.mark.parametrize("torch_mode", [False, True])
def test_evaluation_counts_the_episodes_the_learned_env_cut_short(torch_mode):
    """Pushing obs_1 up by 0.1 a step leaves the data's range ([-2, 2], no margin) within 25 steps: every
    episode is truncated out of support, and the result says so; standing still runs to the time limit."""

    def push(obs):
        return np.tile(np.array([0.0, 1.0], np.float32), (len(obs), 1))

    def idle(obs):
        return np.zeros((len(obs), 2), np.float32)

    def sim():
        return SimVectorEnv(
            LinearModel(),
            num_envs=4,
            torch_mode=torch_mode,
            seed=0,
            compute_realism=False,
            support_margin=0.0,
            max_episode_steps=40,
        )

    pushed = evaluate_policy(push, sim(), episodes=8, seed=0)
    assert pushed.endings == {"out_of_support": 8, "truncated": 8}
    assert all(16 <= n <= 25 for n in pushed.lengths), pushed.lengths
    assert str(pushed).endswith("; ended: 8 truncated, 8 out_of_support)")
    still = evaluate_policy(idle, sim(), episodes=8, seed=0)
    assert still.endings == {"truncated": 8} and still.lengths == [40] * 8
    single = SimEnv(LinearModel(), seed=0, compute_realism=False, support_margin=0.0, max_episode_steps=40)
    assert evaluate_policy(push, single, episodes=3).endings == {"out_of_support": 3, "truncated": 3}


def test_ppo_and_evaluate_on_a_discrete_learned_env():
    sim = SimVectorEnv(DiscreteLinearModel(), num_envs=8, seed=0, compute_realism=False)
    result = train_ppo(sim, PPOConfig(total_steps=1024, num_steps=32, seed=0), progress=False)
    assert result.episode_returns and all(np.isfinite(result.episode_returns))
    single = SimEnv(DiscreteLinearModel(), seed=0)
    random_policy = RandomPolicy(single.observation_space, single.action_space, seed=0)
    assert len(evaluate_policy(random_policy, single, episodes=3).returns) == 3
    assert len(evaluate_policy(result.agent, single, episodes=3).returns) == 3
