"""evaluate_policy on real envs: single env and vector env, Policies and plain callables, seeding."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents import EvalResult, RandomPolicy, combine_results, evaluate_policy


def test_single_env_random_policy_cartpole():
    env = gym.make("CartPole-v1")
    policy = RandomPolicy(env.observation_space, env.action_space, seed=0)
    result = evaluate_policy(policy, env, episodes=5, seed=3)
    assert isinstance(result, EvalResult) and len(result.returns) == 5
    assert result.returns == [float(n) for n in result.lengths]  # CartPole pays 1 per step
    assert result.mean_return == pytest.approx(np.mean(result.returns))
    assert result.std_return == pytest.approx(np.std(result.returns))
    assert 8 <= result.mean_return <= 100  # a random CartPole policy falls within ~10-50 steps
    assert result.endings == {"terminated": 5}
    again = evaluate_policy(
        RandomPolicy(env.observation_space, env.action_space, seed=0), env, episodes=5, seed=3
    )
    assert again.returns == result.returns  # same seeds, same episodes


def test_plain_callable_and_time_limit():
    env = gym.make("Pendulum-v1")
    result = evaluate_policy(lambda obs: np.zeros((len(obs), 1), np.float32), env, episodes=2, seed=0)
    assert result.lengths == [200, 200]  # the env's TimeLimit ends Pendulum episodes
    assert result.endings == {"truncated": 2} and str(result).endswith("; ended: 2 truncated)")
    assert all(r < 0 for r in result.returns)
    capped = evaluate_policy(lambda obs: np.zeros((len(obs), 1), np.float32), env, episodes=1, max_steps=10)
    assert capped.lengths == [10] and capped.endings == {}  # cut by max_steps: not the env's ending


def test_vector_env_runs_exactly_the_requested_episodes():
    envs = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
    policy = RandomPolicy(envs.single_observation_space, envs.single_action_space, seed=1)
    result = evaluate_policy(policy, envs, episodes=7, seed=0)
    assert len(result.returns) == 7 and result.returns == [float(n) for n in result.lengths]
    assert all(n >= 8 for n in result.lengths)
    assert result.endings == {"terminated": 7}


def test_reset_hook_is_called_once_per_episode():
    class Counting(RandomPolicy):
        resets = 0

        def reset(self):
            self.resets += 1

    env = gym.make("CartPole-v1")
    policy = Counting(env.observation_space, env.action_space)
    evaluate_policy(policy, env, episodes=4)
    assert policy.resets == 4


def test_bad_arguments():
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="episodes: expected >= 1, got 0"):
        evaluate_policy(lambda obs: np.zeros(len(obs), np.int64), env, episodes=0)
    with pytest.raises(TypeError, match="expected a Policy or a callable obs -> action, got int"):
        evaluate_policy(3, env)


class PoleFellFlag(gym.Wrapper):
    """CartPole that says in its info when the pole has fallen (|angle| past 12 degrees), as a learned env flags
    the episodes it cuts short."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return obs, reward, terminated, truncated, {**info, "pole_fell": bool(abs(obs[2]) > 0.2095)}


@pytest.mark.parametrize("mode", [gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP])
def test_endings_count_the_flags_of_each_episodes_last_step(mode):
    single = PoleFellFlag(gym.make("CartPole-v1"))
    policy = RandomPolicy(single.observation_space, single.action_space, seed=0)
    one = evaluate_policy(policy, single, episodes=4, seed=0)
    fell = one.endings.get("pole_fell", 0)
    assert one.endings["terminated"] == 4 and 0 < fell <= 4  # the rest left the track
    assert "4 truncated" not in str(one) and f"{fell} pole_fell" in str(one)
    envs = gym.vector.SyncVectorEnv(
        [lambda: PoleFellFlag(gym.make("CartPole-v1")) for _ in range(3)], autoreset_mode=mode
    )
    many = evaluate_policy(policy, envs, episodes=9, seed=0)
    assert many.endings["terminated"] == 9 and 0 < many.endings.get("pole_fell", 0) <= 9, many.endings


def test_combining_shards_keeps_their_episodes_in_order_and_sums_their_endings():
    env = PoleFellFlag(gym.make("CartPole-v1"))
    policy = RandomPolicy(env.observation_space, env.action_space, seed=0)
    parts = [evaluate_policy(policy, env, episodes=3, seed=s) for s in (0, 3)]
    combined = combine_results(parts)
    assert combined.returns == parts[0].returns + parts[1].returns
    assert combined.lengths == parts[0].lengths + parts[1].lengths
    assert combined.mean_return == pytest.approx(np.mean(combined.returns))
    assert combined.endings["terminated"] == 6
    assert combined.endings.get("pole_fell", 0) == sum(p.endings.get("pole_fell", 0) for p in parts)
