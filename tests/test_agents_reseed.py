"""SeededPolicy: every agent's action sampling restarts from a seed (same seed, same actions), and the
per-shard reseeding of ``--shards`` draws the streams it always drew."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_agents_mpc import ACT as POINT_MASS_ACT
from test_agents_mpc import PointMassVectorEnv

from agents import MPCPolicy, Policy, PPOAgent, PPOConfig, RandomPolicy, SACAgent, SACConfig, SeededPolicy
from simgan.cli.shards import reseed_for_shard

OBS = gym.spaces.Box(-5.0, 5.0, (3,), np.float32)
BOX = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 1.0], np.float32))
DISCRETE = gym.spaces.Discrete(4, start=-1)
BATCH = np.random.default_rng(0).uniform(-1, 1, (16, 3)).astype(np.float32)

AGENTS = {
    "sac": lambda: SACAgent(OBS, BOX, SACConfig(hidden_size=16, seed=3)),
    "ppo-box": lambda: PPOAgent(OBS, BOX, PPOConfig(hidden_size=16, seed=3)),
    "ppo-discrete": lambda: PPOAgent(OBS, DISCRETE, PPOConfig(hidden_size=16, seed=3)),
    "random-box": lambda: RandomPolicy(OBS, BOX, seed=3),
    "random-discrete": lambda: RandomPolicy(OBS, DISCRETE, seed=3),
}


@pytest.mark.parametrize("name", AGENTS)
def test_reseeding_twice_with_one_seed_gives_the_same_stochastic_actions(name: str) -> None:
    agent = AGENTS[name]()
    assert isinstance(agent, SeededPolicy) and agent.seed == 3
    first = agent.act(BATCH)  # the constructor's stream
    agent.reseed(11)
    assert agent.seed == 11
    eleven = agent.act(BATCH)
    agent.act(BATCH)  # draw more, so the next reseed has a stream to rewind
    agent.reseed(11)
    np.testing.assert_array_equal(agent.act(BATCH), eleven)
    assert not np.array_equal(eleven, first)  # another seed, other actions
    agent.reseed(3)  # the constructor's seed replays what it drew first
    np.testing.assert_array_equal(agent.act(BATCH), first)


def test_reseeding_the_planner_replays_its_candidates() -> None:
    def planner() -> MPCPolicy:
        envs = PointMassVectorEnv(8, noise=0.0)
        return MPCPolicy(envs, POINT_MASS_ACT, horizon=4, population=8, iterations=2, elites=2, seed=5)

    obs = np.array([0.2, -0.1])
    agent = planner()
    assert isinstance(agent, SeededPolicy) and agent.seed == 5
    first = agent.act(obs)
    agent.reseed(9)
    agent.reset()
    nine = agent.act(obs)
    agent.reseed(9)
    agent.reset()
    np.testing.assert_array_equal(agent.act(obs), nine)
    assert not np.array_equal(nine, first)
    agent.reseed(5)
    agent.reset()
    np.testing.assert_array_equal(agent.act(obs), first)


def test_a_policy_without_reseed_is_still_a_policy() -> None:
    class Zero:
        observation_space, action_space = OBS, BOX

        def act(self, obs, deterministic=False):
            return np.zeros((len(obs), 2), np.float32)

        def __call__(self, obs):
            return self.act(obs)

    assert isinstance(Zero(), Policy) and not isinstance(Zero(), SeededPolicy)
    reseed_for_shard(Zero(), 2)  # nothing to reseed: no error


@pytest.mark.parametrize("name", AGENTS)
def test_shard_k_draws_the_stream_of_the_saved_seed_plus_k(name: str) -> None:
    """Bit for bit what ``--shards`` drew before agents had ``reseed``: SAC/PPO's torch generator and
    RandomPolicy's numpy generator restarted from the agent's seed + k; shard 0 untouched."""
    for shard in (0, 1, 2):
        agent, expected = AGENTS[name](), AGENTS[name]()  # as loaded afresh in each shard
        reseed_for_shard(agent, shard)
        if shard > 0 and isinstance(expected, RandomPolicy):
            expected.rng = np.random.default_rng(expected.seed + shard)
        elif shard > 0:
            expected.generator = torch.Generator().manual_seed(3 + shard)
        np.testing.assert_array_equal(agent.act(BATCH), expected.act(BATCH), err_msg=f"shard {shard}")
        assert agent.seed == 3 + shard
