"""The multimodal benchmark envs: gymnasium compliance, seeding, set_state, and the designed distributions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs import make_env
from envs.multimodal import ForkingPointMass, KickedPendulum, MultimodalEnvError

ENV_IDS = ["simgan/KickedPendulum-v0", "simgan/ForkingPointMass-v0"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_passes_gymnasium_env_checker(env_id: str) -> None:
    env = make_env(env_id)
    check_env(env.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_same_seed_same_trajectory(env_id: str) -> None:
    def rollout(seed: int) -> np.ndarray:
        env = make_env(env_id)
        env.action_space.seed(seed)
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for _ in range(30):
            obs, _, terminated, truncated, _ = env.step(env.action_space.sample())
            out.append(obs)
            if terminated or truncated:
                break
        return np.stack(out)

    np.testing.assert_array_equal(rollout(3), rollout(3))
    assert not np.array_equal(rollout(3), rollout(4))


def test_kicked_pendulum_without_kick_matches_pendulum_v1() -> None:
    """Subtracting the reported kick from the next angular velocity recovers Pendulum-v1's dynamics exactly."""
    ours = KickedPendulum(kick=1.0)
    ref = gym.make("Pendulum-v1").unwrapped
    obs, _ = ours.reset(seed=0)
    ref.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(20):
        action = rng.uniform(-2, 2, size=1).astype(np.float32)
        th = np.arctan2(obs[1], obs[0])
        ref.state = np.array([th, obs[2]], dtype=np.float64)
        ref_obs, ref_reward, *_ = ref.step(action)
        obs, reward, _, _, info = ours.step(action)
        assert reward == pytest.approx(ref_reward, abs=1e-5)
        unkicked = np.clip(ref_obs[2] + info["kick"], -8, 8)
        if abs(ref_obs[2]) < 8 and abs(unkicked) < 8:  # away from the speed limit the kick adds exactly
            assert obs[2] == pytest.approx(unkicked, abs=1e-4)


def test_kicked_pendulum_two_modes_with_designed_frequency() -> None:
    env = KickedPendulum(kick=1.0, kick_probability=0.3)
    obs, action = np.array([np.cos(0.4), np.sin(0.4), 0.5]), np.array([0.7])
    samples = env.sample_next_states(obs, action, 4000, np.random.default_rng(0))
    assert samples.shape == (4000, 3) and samples.dtype == np.float32
    modes = env.modes(obs, action)
    assert abs(modes[0, 2] - modes[1, 2]) == pytest.approx(2.0, abs=1e-5)
    distance = np.linalg.norm(samples[:, None, :] - modes[None], axis=2)  # 4000 x 2
    assert distance.min(axis=1).max() < 1e-5  # every sample is exactly one of the two modes
    share_plus = np.mean(distance.argmin(axis=1) == 0)
    assert share_plus == pytest.approx(0.3, abs=0.03)


def test_forking_point_mass_branch_frequencies() -> None:
    env = ForkingPointMass(branch_probabilities=(0.5, 0.3, 0.2), jitter=0.01)
    obs, action = np.array([0.1, -0.2]), np.array([0.5, 0.5])
    samples = env.sample_next_states(obs, action, 6000, np.random.default_rng(1))
    modes = env.modes(obs, action)
    assert modes.shape == (3, 2)
    nearest = np.linalg.norm(samples[:, None, :] - modes[None], axis=2).argmin(axis=1)
    shares = np.bincount(nearest, minlength=3) / len(samples)
    np.testing.assert_allclose(shares, [0.5, 0.3, 0.2], atol=0.03)
    # Every sample lies within a few jitter widths of its branch, far from the mean of the branches.
    assert np.linalg.norm(samples - modes[nearest], axis=1).max() < 0.06
    middle = modes.T @ np.array([0.5, 0.3, 0.2])
    assert np.linalg.norm(samples - middle, axis=1).min() > 0.05


def test_step_agrees_with_set_state_and_sample_next_states() -> None:
    env = ForkingPointMass(jitter=0.0)
    env.reset(seed=0)
    env.set_state([0.3, 0.3])
    next_obs, _, _, _, info = env.step(np.array([0.0, 1.0], dtype=np.float32))
    np.testing.assert_allclose(next_obs, env.modes([0.3, 0.3], [0.0, 1.0])[info["branch"]], atol=1e-6)

    pendulum = KickedPendulum()
    pendulum.reset(seed=0)
    obs = np.array([np.cos(2.0), np.sin(2.0), -1.5], dtype=np.float32)
    pendulum.set_state(obs)
    next_obs, *_ = pendulum.step(np.array([0.2], dtype=np.float32))
    assert np.min(np.abs(pendulum.modes(obs, [0.2]) - next_obs).max(axis=1)) < 1e-6


def test_forking_point_mass_terminates_outside_the_square() -> None:
    env = ForkingPointMass(branch_probabilities=(1.0, 0.0), jitter=0.0)  # always forks upward
    env.reset(seed=0)
    env.set_state([0.0, 0.95])
    _, _, terminated, _, _ = env.step(np.zeros(2, dtype=np.float32))
    assert terminated


def test_bad_inputs_raise_typed_errors() -> None:
    with pytest.raises(MultimodalEnvError, match="expected 3 numbers"):
        KickedPendulum().set_state([1.0, 0.0])
    with pytest.raises(MultimodalEnvError, match="summing to 1"):
        ForkingPointMass(branch_probabilities=(0.5, 0.6))
    with pytest.raises(MultimodalEnvError, match="positive"):
        KickedPendulum(kick=0.0)
