"""Models keep their samples inside the observation space, as the real env does (``SpaceClamp``)."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_models import CONFIG, random_batch

from simgan.dataset_format import TransitionBatch
from simgan.ensemble import EnsembleConfig, GaussianEnsemble
from simgan.models import ConditionalGAN, ModelConfig
from simgan.train_config import TrainConfig
from simgan.world_model import ModelInfo, SpaceClamp

BOUNDED = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


def bounded_info() -> ModelInfo:
    return ModelInfo(
        env_id="Test-v0",
        env_kwargs={},
        observation_space=BOUNDED,
        action_space=gym.spaces.Box(-2.0, 2.0, (2,), np.float32),
        max_episode_steps=50,
        initial_states=np.zeros((2, 3), np.float32),
        state_low=-np.ones(3, np.float32),
        state_high=np.ones(3, np.float32),
        dataset_sha256="0" * 64,
    )


def inside(batch: TransitionBatch) -> TransitionBatch:
    """The batch with its states squashed into [-1, 1]^3, as a bounded env's data would be."""
    return TransitionBatch(
        **{**batch.arrays(), "obs": np.tanh(batch.obs), "next_obs": np.tanh(batch.next_obs)}
    )


def tensors(batch: TransitionBatch) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(batch.obs), torch.as_tensor(batch.action)


def test_finite_bounds_clamp_and_infinite_ones_leave_values_alone() -> None:
    space = gym.spaces.Box(
        np.array([-1.0, -np.inf], np.float32), np.array([1.0, np.inf], np.float32), dtype=np.float32
    )
    clamp = SpaceClamp(space)
    x = torch.tensor([[2.0, 1e30], [-3.0, -1e30], [0.5, 0.25]])
    assert torch.equal(clamp(x), torch.tensor([[1.0, 1e30], [-1.0, -1e30], [0.5, 0.25]]))
    unbounded = SpaceClamp(gym.spaces.Box(-np.inf, np.inf, (2,), np.float32))
    assert not unbounded.bounded and unbounded(x) is x  # bit for bit: the very same tensor


@pytest.fixture
def wild_gan() -> tuple[ConditionalGAN, TransitionBatch]:
    """A GAN whose residual is 50x too wide: most raw samples would leave [-1, 1]^3."""
    torch.manual_seed(0)
    info = bounded_info()
    batch = inside(random_batch(info, 64))
    model = ConditionalGAN(info, CONFIG)
    model.normalizer.fit(batch, info)
    model.generator.residual_scale.fill_(50.0)
    return model, batch


def test_gan_samples_stay_in_the_space_and_realism_judges_what_was_returned(wild_gan) -> None:
    model, batch = wild_gan
    obs, action = tensors(batch)
    noise = torch.randn(64, CONFIG.noise_dim, generator=torch.Generator().manual_seed(1))
    next_obs, reward, terminated = model.sample(obs, action, noise=noise)
    assert float(next_obs.abs().max()) == 1.0  # clamped into [-1, 1]^3 ...
    assert 0.05 < float((next_obs.abs() == 1.0).float().mean()) < 0.95  # ... some on a bound, not all
    # the fused step's realism is that of the clamped transition, not of the raw residual
    sampled = TransitionBatch(**{**batch.arrays(), "next_obs": next_obs.numpy(), "reward": reward.numpy()})
    model.calibrate_realism(sampled)
    fused = model.sample_with_realism(obs, action, noise=noise)
    assert torch.equal(fused[0], next_obs) and torch.equal(fused[2], terminated)
    expected = model.realism(obs, action, next_obs, reward)
    assert torch.allclose(fused[3], expected, atol=1.0 / 64 + 1e-6), (fused[3], expected)


def test_gan_mean_outside_the_space_is_clamped(wild_gan) -> None:
    model, batch = wild_gan
    model.normalizer.delta_mean.fill_(10.0)  # every predicted next state far above the upper bound
    next_obs, _, _ = model.mean(*tensors(batch))
    assert float(next_obs.max()) <= 1.0
    torch.testing.assert_close(next_obs, torch.ones_like(next_obs))  # on the bound, to float rounding


def test_bounded_residual_is_exact_where_nothing_is_clamped() -> None:
    """Generator.bounded: unclamped elements are the raw values bit for bit; clamped ones sit on the bound."""
    model = ConditionalGAN(bounded_info(), CONFIG)
    gen = model.generator
    gen.residual_scale.copy_(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    mean = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    residual = torch.tensor([[0.1, 3.0, -3.0, 100.0]])
    low = torch.tensor([[-1.0, -1.0, -1.0, -torch.inf]])
    high = torch.tensor([[1.0, 1.0, 1.0, torch.inf]])
    target, judged = gen.bounded(mean, residual, low, high)
    assert torch.equal(target, torch.tensor([[0.2, 1.0, -1.0, 100.0]]))
    assert torch.equal(judged[0, [0, 3]], residual[0, [0, 3]])
    assert torch.allclose(judged[0, 1:3], torch.tensor([0.5, -0.5]))  # the bound, in residual units


def test_ensemble_samples_stay_in_the_space_and_realism_judges_what_was_returned() -> None:
    torch.manual_seed(0)
    info = bounded_info()
    batch = inside(random_batch(info, 64))
    model = GaussianEnsemble(info, EnsembleConfig(members=3, elites=2, hidden=(8,), progress=False))
    model.target_std.fill_(5.0)  # wide Gaussians: raw draws leave the space often
    obs, action = tensors(batch)
    noise = torch.randn(64, model.noise_dim, generator=torch.Generator().manual_seed(1))
    next_obs, reward, _ = model.sample(obs, action, noise=noise)
    assert float(next_obs.abs().max()) == 1.0
    assert 0.05 < float((next_obs.abs() == 1.0).float().mean()) < 0.95
    model.realism_reference = torch.sort(model.log_density(obs, action, next_obs, reward)).values
    fused = model.sample_with_realism(obs, action, noise=noise)
    assert torch.equal(fused[0], next_obs)
    torch.testing.assert_close(fused[3], model.realism(obs, action, next_obs, reward))
    model.target_mean.fill_(10.0)
    assert torch.equal(model.mean(obs, action)[0], torch.ones_like(next_obs))


def test_mean_head_regression_lets_an_overshoot_past_a_bound_the_target_lies_on_go() -> None:
    """training_parts.bounded_mean: where the target is on a bound, an overshoot is clamped (no error, no gradient);
    where it is inside, the raw output keeps its error and gradient even outside the bounds."""
    from simgan.training_parts import bounded_mean

    low = torch.tensor([[-1.0, -torch.inf], [-1.0, -torch.inf], [-1.0, -torch.inf]])
    high = torch.tensor([[1.0, torch.inf], [1.0, torch.inf], [1.0, torch.inf]])
    target = torch.tensor([[1.0, 0.0], [0.5, 0.0], [1.0, 0.0]])  # rows 0 and 2 on the upper bound
    mean = torch.tensor([[1.5, 0.25], [1.5, 0.25], [0.5, 0.25]], requires_grad=True)
    regressed, used = bounded_mean(mean, target, (low, high), torch.arange(3))
    assert torch.equal(regressed.detach(), torch.tensor([[1.0, 0.25], [1.5, 0.25], [0.5, 0.25]]))
    assert torch.equal(used.detach(), torch.tensor([[1.0, 0.25], [1.0, 0.25], [0.5, 0.25]]))
    ((regressed - target) ** 2).sum().backward()
    # the overshoot on the bound passes nothing back; the overshoot of an inner target and the undershoot do
    assert torch.equal(mean.grad[:, 0], torch.tensor([0.0, 2.0, -1.0]))
    unbounded = bounded_mean(mean, target, None, torch.arange(3))
    assert unbounded[0] is mean and unbounded[1] is mean


def _kicked_at_the_bound(config: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    """Next states of a GAN whose mean head puts the next state at 1.3 (past the bound 1) and whose residual is
    +-0.5, like a kicked pendulum pushed past its speed limit: (from +0.5 draws, from -0.5 draws), dimension 0."""
    torch.manual_seed(0)
    info = bounded_info()
    batch = inside(random_batch(info, 8))
    model = ConditionalGAN(info, config)
    model.normalizer.fit(batch, info)
    model.normalizer.delta_mean.zero_()
    model.normalizer.delta_std.fill_(1.0)  # next_obs = obs + target
    model.generator.residual_scale.fill_(1.0)
    obs = torch.full((8, 3), 0.6)
    model.generator.mean = lambda cond: torch.full((cond.shape[0], 4), 0.7)
    model.generator.residual = lambda cond, noise: 0.5 * torch.sign(noise[:, :1]).expand(-1, 4)
    noise = torch.randn(8, config.noise_dim, generator=torch.Generator().manual_seed(0))
    noise[:4, 0], noise[4:, 0] = noise[:4, 0].abs(), -noise[4:, 0].abs()
    next_obs = model.sample(obs, torch.zeros(8, 2), noise=noise)[0][:, 0].numpy()
    mean = model.mean(obs, torch.zeros(8, 2))[0][:, 0].numpy()
    np.testing.assert_allclose(mean, 1.0)  # the mean is reported inside the space either way
    return next_obs[:4], next_obs[4:]


def test_mean_before_clip_clamps_each_sample_not_the_mean() -> None:
    """mean_before_clip: the pre-clip mean 1.3 +- 0.5 lands on 1.0 (clipped) and 0.8, as an env that clips its
    state would; clamping the mean first (models saved before it) gives 1.0 and 0.5, a mode the env never
    produces."""
    plus, minus = _kicked_at_the_bound(dataclasses.replace(CONFIG, mean_before_clip=True))
    np.testing.assert_allclose(plus, 1.0)
    np.testing.assert_allclose(minus, 0.8, rtol=1e-6)
    plus, minus = _kicked_at_the_bound(dataclasses.replace(CONFIG, mean_before_clip=False))
    np.testing.assert_allclose(plus, 1.0)
    np.testing.assert_allclose(minus, 0.5, rtol=1e-6)


def test_models_saved_before_mean_before_clip_load_with_the_mean_clamped() -> None:
    saved = {k: v for k, v in ModelConfig().to_json().items() if k != "mean_before_clip"}
    assert ModelConfig.from_json(saved).mean_before_clip is False
    assert ModelConfig().mean_before_clip is True
    # a run saved before it resumes so
    assert TrainConfig.from_json({}).model_config().mean_before_clip is False
    assert TrainConfig().model_config().mean_before_clip is True
    assert TrainConfig(clamp_mean=False).model_config().mean_before_clip is False


def test_clipped_sample_mean_is_the_clamped_samples_average_with_a_straight_through_gradient() -> None:
    """training_parts.clipped_sample_mean: plain mu where nothing clips; the clipped samples' average where some
    do, so the regression's fixed point puts mu past the bound by what the clip hides."""
    from simgan.training_parts import clipped_sample_mean

    low = torch.tensor([[-1.0, -torch.inf], [-1.0, -torch.inf], [-1.0, -torch.inf]])
    high = torch.tensor([[1.0, torch.inf], [1.0, torch.inf], [1.0, torch.inf]])
    mean = torch.tensor([[0.0, 0.25], [1.5, 0.25], [0.75, 0.25]], requires_grad=True)
    residual = torch.tensor([[0.5, 3.0], [-0.5, 3.0]]).expand(3, 2, 2)  # two samples per row: +-0.5 (scale 1)
    regressed = clipped_sample_mean(mean, residual, torch.ones(2), (low, high))
    # row 0: nothing clips; row 1: 2.0 and 1.0 both land on 1.0; row 2: 1.25 -> 1.0 and 0.25
    expected = torch.tensor([[0.0, 0.25], [1.0, 0.25], [0.625, 0.25]])
    torch.testing.assert_close(regressed.detach(), expected)
    target = torch.tensor([[0.5, 0.0], [1.0, 0.0], [0.625, 0.0]])
    ((regressed - target) ** 2).sum().backward()
    # row 1's overshoot with its target on the bound, and row 2 at its fixed point, pass no gradient back
    torch.testing.assert_close(mean.grad[:, 0], torch.tensor([-1.0, 0.0, 0.0]))
    torch.testing.assert_close(mean.grad[:, 1], torch.full((3,), 0.5))
