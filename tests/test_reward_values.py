"""Rounding a learned reward to the few values the data's reward took (``reward_values``): what is recorded,
what the learned env pays, and the bad input it refuses."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from worldmodels import LinearModel, linear_info

import simgan
from simgan.sim_env import SimEnv
from simgan.sim_vector_env import SimVectorEnv
from simgan.world_model import MAX_DISCRETE_REWARDS, discrete_values

VALUES = np.array([-0.5, -0.2, 0.0], dtype=np.float32)


def test_discrete_values_finds_the_few_values_of_a_discrete_reward():
    assert discrete_values(np.ones(500)).tolist() == [1.0]  # CartPole
    alive = np.r_[np.ones(990), np.zeros(10)]  # InvertedPendulum-v5: 1 a step alive, 0 on the fall
    assert discrete_values(alive).tolist() == [0.0, 1.0]
    assert discrete_values(np.r_[-np.ones(400), np.zeros(3)]).tolist() == [-1.0, 0.0]  # Acrobot
    rng = np.random.default_rng(0)
    assert discrete_values(rng.normal(size=10_000)) is None  # Pendulum: continuous
    many = np.repeat(np.arange(MAX_DISCRETE_REWARDS + 1), 100)
    assert discrete_values(many) is None  # more values than a discrete reward has
    assert discrete_values(np.array([0.0, 1.0, 0.5, 0.25])) is None  # too few entries to tell
    assert discrete_values(np.r_[np.ones(100), np.nan]) is None
    assert discrete_values(np.array([])) is None


def rollout_rewards(env: SimVectorEnv, steps: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """(observations, rewards) of ``steps`` steps with a fixed action schedule, from reset(seed=3)."""
    env.reset(seed=3)
    actions = np.linspace(-1.0, 1.0, steps * env.num_envs * 2, dtype=np.float32).reshape(
        steps, env.num_envs, 2
    )
    observations, rewards = [], []
    for action in actions:
        obs, reward, *_ = env.step(action)
        observations.append(obs)
        rewards.append(reward)
    return np.stack(observations), np.stack(rewards)


def test_the_learned_reward_is_rounded_to_the_nearest_value_on_the_same_trajectory():
    plain_obs, plain = rollout_rewards(SimVectorEnv(LinearModel(), num_envs=5))
    rounded_obs, rounded = rollout_rewards(SimVectorEnv(LinearModel(), num_envs=5, reward_values=VALUES))
    np.testing.assert_array_equal(rounded_obs, plain_obs)  # the reward does not steer the dynamics
    nearest = VALUES[np.abs(plain[..., None] - VALUES).argmin(axis=-1)]
    np.testing.assert_array_equal(rounded, nearest)
    assert len(np.unique(plain)) > len(VALUES) and set(np.unique(rounded)) <= set(VALUES.tolist())


def test_data_takes_the_values_recorded_in_the_model_and_the_single_env_pays_them_too():
    info = dataclasses.replace(linear_info(), reward_values=VALUES)
    env = SimEnv(LinearModel(info), reward_values="data", seed=0)
    env.reset(seed=1)
    rewards = [env.step(np.array([0.5, -0.5], dtype=np.float32))[1] for _ in range(5)]
    assert all(reward in VALUES.tolist() for reward in rewards)


def test_compiled_step_rounds_as_the_eager_one():
    eager_obs, eager = rollout_rewards(SimVectorEnv(LinearModel(), num_envs=4, reward_values=VALUES))
    compiled_obs, compiled = rollout_rewards(
        SimVectorEnv(LinearModel(), num_envs=4, reward_values=VALUES, compile=True)
    )
    np.testing.assert_allclose(compiled_obs, eager_obs, atol=1e-6)
    np.testing.assert_array_equal(compiled, eager)


def test_bad_reward_values_are_refused_with_what_was_expected():
    with pytest.raises(
        ValueError, match=r"reward_values='data': expected a model whose training data's reward"
    ):
        SimEnv(LinearModel(), reward_values="data")  # linear_info records no values: a continuous reward
    with pytest.raises(ValueError, match=r"expected None, 'data' or an array of values, got 'dataset'"):
        SimEnv(LinearModel(), reward_values="dataset")
    for bad in ([], [[0.0, 1.0]], [0.0, np.nan]):
        with pytest.raises(ValueError, match="expected a non-empty 1-D array of finite values"):
            SimVectorEnv(LinearModel(), num_envs=2, reward_values=bad)
    with pytest.raises(ValueError, match="rounds the learned reward, so expected reward_fn=None"):
        SimEnv(LinearModel(), reward_values=VALUES, reward_fn=lambda o, a, n: torch.zeros(len(o)))


def test_a_cartpole_model_records_its_reward_of_one_and_a_pendulum_model_none(tmp_path, capsys):
    """Recorded from the training data when the model is trained and saved, and read back by load_model:
    CartPole pays 1 every step (its learned reward, rounded, is exactly 1); Pendulum's reward is continuous.
    `simgan simulate --round-reward` takes them, and says so."""
    from simgan.checkpoint import load_model, summarize_model
    from simgan.ensemble_training import EnsembleConfig, train_ensemble

    config = EnsembleConfig(members=2, elites=1, hidden=(16, 16), steps=20, seed=0, progress=False)
    values = {}
    for env_id in ("CartPole-v1", "Pendulum-v1"):
        data = simgan.collect(env_id, steps=600, workers=0, out=tmp_path / env_id, seed=0, progress=False)
        train_ensemble(data, out=tmp_path / f"model-{env_id}", config=config)
        values[env_id] = load_model(tmp_path / f"model-{env_id}").info.reward_values
    assert values["CartPole-v1"].tolist() == [1.0] and values["Pendulum-v1"] is None
    assert "1 distinct value in the training data: 1 " in summarize_model(tmp_path / "model-CartPole-v1")
    assert "continuous in the training data" in summarize_model(tmp_path / "model-Pendulum-v1")

    env = SimVectorEnv(tmp_path / "model-CartPole-v1", num_envs=8, reward_values="data", seed=0)
    env.reset(seed=0)
    for _ in range(5):
        _, reward, *_ = env.step(np.zeros(8, dtype=np.int64))
        assert np.all((reward == 1.0) | (reward == 0.0))  # 0: a sub-env's autoreset step

    from simgan.cli import main

    model = str(tmp_path / "model-CartPole-v1")
    simulate = ["simulate", "--model", model, "--num-envs", "4", "--steps", "40"]
    assert main([*simulate, "--round-reward"]) == 0
    assert "(rounded reward)" in capsys.readouterr().out.splitlines()[0]
    assert main([*simulate, "--round-reward", "--known-reward"]) == 2
    assert "expected known_reward=False beside it" in capsys.readouterr().err
    pendulum = ["simulate", "--model", str(tmp_path / "model-Pendulum-v1"), "--steps", "2", "--round-reward"]
    assert main(pendulum) == 2
    err = capsys.readouterr().err
    assert "reward_values='data': expected a model whose training data's reward takes a few" in err
    assert "got none for this Pendulum-v1 model: its training data's reward is continuous" in err

    # a model saved before simgan recorded the values: its model.json has no "reward_values"
    meta_path = tmp_path / "model-CartPole-v1" / "model.json"
    meta = json.loads(meta_path.read_text())
    assert meta["info"]["reward_values"] == [1.0]
    del meta["info"]["reward_values"]
    meta_path.write_text(json.dumps(meta))
    assert "values not recorded (saved before simgan recorded them)" in summarize_model(meta_path.parent)
    with pytest.raises(ValueError, match="saved before simgan recorded them; pass the values as an array"):
        SimEnv(meta_path.parent, reward_values="data")
    assert SimEnv(meta_path.parent, reward_values=[1.0]).sim.reward_values.tolist() == [1.0]
