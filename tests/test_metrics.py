"""Fidelity metrics against analytic values, scipy, and hand-computable world models."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import scipy.stats
import torch

from simgan.dataset_format import TransitionBatch
from simgan.metrics import (
    conditional_metrics,
    energy_distance,
    mean_squared_error,
    mmd2_rbf,
    one_step_metrics,
    rollout_errors,
    sliced_wasserstein,
    termination_scores,
    wasserstein_1d,
)
from simgan.world_model import ModelInfo


def _normal(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_identical_samples_give_zero_distances() -> None:
    x = _normal(300, 3, 0)
    # Unbiased: the cross term counts the x_i == y_i pairs, so identical sets give about -2 (1 - mean k) / n.
    assert abs(mmd2_rbf(x, x.clone())) < 0.01
    assert sliced_wasserstein(x, x.clone()) == pytest.approx(0.0, abs=1e-12)
    assert energy_distance(x, x.clone()) == pytest.approx(0.0, abs=1e-12)
    assert torch.allclose(wasserstein_1d(x, x.clone()), torch.zeros(3, dtype=torch.float64))


def test_w1_matches_scipy_and_the_analytic_shift() -> None:
    x = np.random.default_rng(0).normal(size=(500, 2))
    y = np.random.default_rng(1).normal(size=(700, 2)) + np.array([1.5, -0.5])
    ours = wasserstein_1d(x, y).numpy()
    ref = [scipy.stats.wasserstein_distance(x[:, d], y[:, d]) for d in range(2)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    # W1 between N(0, 1) and N(mu, 1) is |mu|; same-size samples sharing their noise shift exactly.
    z = _normal(1000, 1, 2)
    assert float(wasserstein_1d(z, z + 2.0)[0]) == pytest.approx(2.0, abs=1e-9)


def test_sliced_w1_of_a_shift_is_the_mean_projected_shift() -> None:
    """Shifting every sample by v moves each projection by <v, u> exactly, so SW1 = mean |<v, u>|."""
    x = _normal(400, 2, 3)
    shift = torch.tensor([3.0, 0.0], dtype=torch.float64)
    value = sliced_wasserstein(x, x + shift, n_projections=2000, seed=0)
    # E|<v, u>| for u uniform on the circle is 2|v| / pi.
    assert value == pytest.approx(2 * 3.0 / np.pi, rel=0.03)
    assert sliced_wasserstein(x, x + shift, seed=5) == sliced_wasserstein(x, x + shift, seed=5)


def test_energy_distance_matches_scipy_in_one_dimension() -> None:
    x = np.random.default_rng(0).normal(size=300)
    y = np.random.default_rng(1).normal(loc=0.7, size=200)
    assert energy_distance(x, y) == pytest.approx(scipy.stats.energy_distance(x, y) ** 2, rel=1e-9)


def test_mmd_grows_with_distance_and_matches_a_hand_computed_case() -> None:
    x = _normal(300, 2, 0)
    values = [mmd2_rbf(x, _normal(300, 2, 1, shift=s)) for s in (0.0, 0.5, 1.0, 2.0)]
    assert abs(values[0]) < 0.02
    assert values[0] < values[1] < values[2] < values[3]
    # Two points each, bandwidth 1: k_xx = k_yy = exp(-1/2) off-diagonal; every cross pair at distance^2 in {4, 9, 1}.
    a = torch.tensor([[0.0], [1.0]])
    b = torch.tensor([[2.0], [3.0]])
    cross = np.mean([np.exp(-d / 2) for d in (4.0, 9.0, 1.0, 4.0)])
    expected = 2 * np.exp(-0.5) - 2 * cross
    assert mmd2_rbf(a, b, bandwidth=1.0) == pytest.approx(expected, rel=1e-9)


def test_termination_scores_by_hand() -> None:
    predicted = [1, 1, 0, 0, 1, 0]
    actual = [1, 0, 0, 1, 1, 0]
    scores = termination_scores(np.array(predicted, dtype=bool), np.array(actual, dtype=bool))
    # tp = 2, fp = 1, fn = 1 -> F1 = 4 / 6; 4 of 6 agree.
    assert scores["f1"] == pytest.approx(2 / 3)
    assert scores["accuracy"] == pytest.approx(4 / 6)
    assert termination_scores(np.zeros(4, bool), np.zeros(4, bool)) == {"accuracy": 1.0, "f1": 1.0}


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="same number of columns"):
        mmd2_rbf(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="equal shapes"):
        mean_squared_error(np.zeros(3), np.zeros(4))


# ---------------------------------------------------------------------------------------------------------------
# Model-level metrics with a hand-computable world model: next = obs + action + bias, reward = obs[0]
# ---------------------------------------------------------------------------------------------------------------


class ShiftModel:
    """Deterministic dynamics ``next = obs + action + bias``, reward ``obs[:, 0]``, never terminates."""

    noise_dim = 1

    def __init__(self, bias: float) -> None:
        self.bias = bias
        box = gym.spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
        self.info = ModelInfo(
            env_id="none",
            env_kwargs={},
            observation_space=box,
            action_space=box,
            max_episode_steps=None,
            initial_states=np.zeros((1, 2), np.float32),
            state_low=np.full(2, -1.0, np.float32),
            state_high=np.full(2, 1.0, np.float32),
            dataset_sha256="0" * 64,
        )

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def sample(self, obs, action, *, noise=None, generator=None):
        return obs + action + self.bias, obs[:, 0].clone(), torch.zeros(len(obs), dtype=torch.bool)


def _linear_episodes(n_episodes: int = 6, length: int = 30) -> TransitionBatch:
    rng = np.random.default_rng(0)
    rows = []
    for ep in range(n_episodes):
        obs = rng.normal(size=2).astype(np.float32)
        for t in range(length):
            action = rng.normal(size=2).astype(np.float32)
            nxt = obs + action
            rows.append((obs, action, nxt, obs[0], ep, t))
            obs = nxt
    obs, action, nxt, reward, episode, step = zip(*rows)
    n = len(rows)
    return TransitionBatch(
        obs=np.stack(obs),
        action=np.stack(action),
        next_obs=np.stack(nxt),
        reward=np.array(reward, np.float32),
        terminated=np.zeros(n, bool),
        truncated=np.zeros(n, bool),
        episode=np.array(episode, np.int64),
        step=np.array(step, np.int64),
    )


def test_one_step_metrics_of_the_true_model_are_zero_and_of_a_biased_model_known() -> None:
    batch = _linear_episodes()
    exact = one_step_metrics(ShiftModel(0.0), batch)
    assert exact["mean_error"] == pytest.approx(0.0, abs=1e-10)
    assert exact["reward_error"] == pytest.approx(0.0, abs=1e-10)
    assert exact["sliced_w1"] == pytest.approx(0.0, abs=1e-10)
    assert exact["energy"] == pytest.approx(0.0, abs=1e-10)
    assert exact["termination_accuracy"] == 1.0 and exact["termination_f1"] == 1.0
    biased = one_step_metrics(ShiftModel(0.3), batch)
    assert biased["mean_error"] == pytest.approx(0.09, rel=1e-4)
    assert biased["w1/dim0"] == pytest.approx(0.3, rel=1e-4)
    assert one_step_metrics(ShiftModel(1.0), batch)["mmd2"] > exact["mmd2"] + 0.05
    assert biased["copy_error"] == exact["copy_error"] > 0


def test_a_constant_reward_column_is_not_blown_up_by_its_zero_std() -> None:
    """CartPole's reward is always 1: a model off by 1e-4 there must not look hundreds of stds away."""

    class ConstantRewardModel(ShiftModel):
        def sample(self, obs, action, *, noise=None, generator=None):
            next_obs, _, done = super().sample(obs, action)
            return next_obs, torch.full((len(obs),), 1.0 + self.bias), done

    batch = _linear_episodes()
    batch = dataclasses.replace(batch, reward=np.ones(len(batch), np.float32))
    exact = one_step_metrics(ConstantRewardModel(0.0), batch)
    nearly = one_step_metrics(ConstantRewardModel(1e-4), batch)
    assert exact["sliced_w1"] == pytest.approx(0.0, abs=1e-10)
    assert nearly["sliced_w1"] < 1e-3, nearly  # was ~20 when the column was divided by a 1e-6 floor
    assert nearly["reward_error"] == pytest.approx(1e-8, rel=1e-3)


def test_rollout_error_accumulates_the_bias_per_step() -> None:
    batch = _linear_episodes()
    errors = rollout_errors(ShiftModel(0.1), batch, horizons=(1, 5, 25))
    for k in (1, 5, 25):
        assert errors[f"rollout_mse/k{k}"] == pytest.approx((0.1 * k) ** 2, rel=1e-3)
    # 6 episodes of 30 steps: 30 - k + 1 windows each.
    assert errors["rollout_windows/k25"] == 6 * 6
    assert rollout_errors(ShiftModel(0.0), batch, horizons=(10,))["rollout_mse/k10"] == pytest.approx(
        0, abs=1e-8
    )


def test_conditional_metrics_against_a_settable_env() -> None:
    from envs.multimodal import ForkingPointMass

    class ForkModel(ShiftModel):
        """Samples the env's own transition: the conditional distances must be ~0."""

        def __init__(self, env: ForkingPointMass, collapse: bool) -> None:
            super().__init__(0.0)
            self.env, self.collapse = env, collapse

        def sample(self, obs, action, *, noise=None, generator=None):
            seed = int(torch.randint(0, 2**31, (1,), generator=generator))
            rng = np.random.default_rng(seed)
            nxt = self.env.sample_next_states(obs[0].numpy(), action[0].numpy(), len(obs), rng)
            if self.collapse:  # a "Gaussian" model: all mass at the mean of the branches
                nxt = np.repeat(nxt.mean(axis=0, keepdims=True), len(obs), axis=0)
            return torch.as_tensor(nxt), obs[:, 0], torch.zeros(len(obs), dtype=torch.bool)

    env = ForkingPointMass()
    points = np.array([[0.0, 0.0], [0.2, -0.3]], np.float32)
    actions = np.array([[0.5, 0.0], [-1.0, 1.0]], np.float32)
    good = conditional_metrics(ForkModel(env, False), env, points, actions, n_samples=400)
    bad = conditional_metrics(ForkModel(env, True), env, points, actions, n_samples=400)
    assert set(good) == {"cond_mmd2", "cond_sliced_w1", "cond_energy"}
    for name in good:
        assert good[name] < 0.2 * bad[name]
