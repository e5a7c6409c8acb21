"""ConditionalGAN as a WorldModel: shapes for Box and Discrete, noise determinism, realism calibration."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from simgan.dataset_format import TransitionBatch
from simgan.models import ConditionalGAN, ModelConfig, ModelShapeError
from simgan.world_model import ModelInfo, WorldModel

CONFIG = ModelConfig(noise_dim=3, mean_hidden=(16, 16), residual_hidden=(16,), disc_hidden=(16,))


def make_info(action_space: gym.Space, obs_dim: int = 3) -> ModelInfo:
    return ModelInfo(
        env_id="Test-v0",
        env_kwargs={},
        observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
        action_space=action_space,
        max_episode_steps=50,
        initial_states=np.zeros((2, obs_dim), np.float32),
        state_low=-np.ones(obs_dim, np.float32),
        state_high=np.ones(obs_dim, np.float32),
        dataset_sha256="0" * 64,
    )


def random_batch(info: ModelInfo, n: int, seed: int = 0) -> TransitionBatch:
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, info.obs_dim)).astype(np.float32)
    if info.is_discrete:
        action = rng.integers(0, info.action_space.n, size=n).astype(np.int64)
    else:
        action = rng.uniform(-2, 2, size=(n, info.action_space.shape[0])).astype(np.float32)
    return TransitionBatch(
        obs=obs,
        action=action,
        next_obs=(obs + 0.1 * rng.normal(size=obs.shape)).astype(np.float32),
        reward=rng.normal(size=n).astype(np.float32),
        terminated=rng.random(n) < 0.1,
        truncated=np.zeros(n, bool),
        episode=np.arange(n, dtype=np.int64),
        step=np.zeros(n, np.int64),
    )


SPACES = {
    "box": gym.spaces.Box(-2.0, 2.0, (2,), np.float32),
    "discrete": gym.spaces.Discrete(3),
}


@pytest.fixture(params=sorted(SPACES))
def model_and_batch(request) -> tuple[ConditionalGAN, TransitionBatch]:
    torch.manual_seed(0)
    info = make_info(SPACES[request.param])
    batch = random_batch(info, 64)
    model = ConditionalGAN(info, CONFIG)
    model.normalizer.fit(batch, info)
    return model, batch


def tensors(batch: TransitionBatch) -> tuple[torch.Tensor, ...]:
    return tuple(torch.as_tensor(a) for a in (batch.obs, batch.action, batch.next_obs, batch.reward))


def test_is_a_world_model_with_batched_shapes(model_and_batch) -> None:
    model, batch = model_and_batch
    assert isinstance(model, WorldModel)
    obs, action, _, _ = tensors(batch)
    next_obs, reward, terminated = model.sample(obs, action, generator=torch.Generator().manual_seed(0))
    assert next_obs.shape == (64, 3) and next_obs.dtype == torch.float32
    assert reward.shape == (64,) and reward.dtype == torch.float32
    assert terminated.shape == (64,) and terminated.dtype == torch.bool
    mean_obs, mean_reward, p_done = model.mean(obs, action)
    assert mean_obs.shape == (64, 3) and mean_reward.shape == (64,) and p_done.shape == (64,)
    assert bool(((p_done >= 0) & (p_done <= 1)).all())


def test_noise_fixes_the_sample(model_and_batch) -> None:
    model, batch = model_and_batch
    obs, action, _, _ = tensors(batch)
    noise = torch.randn(64, CONFIG.noise_dim, generator=torch.Generator().manual_seed(1))
    first = model.sample(obs, action, noise=noise)
    second = model.sample(obs, action, noise=noise.clone())
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    other = model.sample(obs, action, noise=torch.randn(64, CONFIG.noise_dim))
    assert not torch.equal(first[0], other[0])
    # A seeded generator gives the same sample as the noise it draws.
    drawn = torch.randn(64, CONFIG.noise_dim, generator=torch.Generator().manual_seed(5))
    from_generator = model.sample(obs, action, generator=torch.Generator().manual_seed(5))
    assert torch.equal(from_generator[0], model.sample(obs, action, noise=drawn)[0])


def test_realism_is_calibrated_to_unit_interval(model_and_batch) -> None:
    model, batch = model_and_batch
    model.calibrate_realism(batch)
    assert model.realism_reference.shape == (64,)
    obs, action, next_obs, reward = tensors(batch)
    realism = model.realism(obs, action, next_obs, reward)
    assert realism.shape == (64,)
    assert bool(((realism >= 0) & (realism <= 1)).all())
    # On the calibration transitions themselves the ranks are spread uniformly over [0, 1).
    assert sorted(realism.tolist()) == pytest.approx([i / 64 for i in range(64)])
    absurd = model.realism(obs, action, next_obs + 1e4, reward)
    assert bool(((absurd >= 0) & (absurd <= 1)).all())


def test_bad_shapes_say_what_was_expected(model_and_batch) -> None:
    model, batch = model_and_batch
    obs, action, next_obs, reward = tensors(batch)
    with pytest.raises(ModelShapeError, match=r"noise: expected shape \(64, 3\)"):
        model.sample(obs, action, noise=torch.zeros(64, 5))
    with pytest.raises(ModelShapeError, match="obs: expected shape B x 3"):
        model.sample(obs[:, :2], action)
    with pytest.raises(ModelShapeError, match="next_obs"):
        model.realism(obs, action, next_obs[:, :2], reward)


def test_discrete_actions_are_one_hot() -> None:
    info = make_info(gym.spaces.Discrete(3, start=1))
    model = ConditionalGAN(info, CONFIG)
    cond = model.condition(torch.zeros(2, 3), torch.tensor([1, 3]))
    assert cond[:, 3:].tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]


def test_normalizer_leaves_constant_columns_unscaled() -> None:
    info = make_info(SPACES["box"])
    batch = random_batch(info, 32)
    batch = TransitionBatch(**{**batch.arrays(), "reward": np.ones(32, np.float32)})  # CartPole-like reward
    model = ConditionalGAN(info, CONFIG)
    model.normalizer.fit(batch, info)
    assert float(model.normalizer.reward_std) == 1.0 and float(model.normalizer.reward_mean) == 1.0
    target = model.normalizer.target(*(torch.as_tensor(a) for a in (batch.obs, batch.next_obs, batch.reward)))
    assert torch.allclose(target[:, -1], torch.zeros(32))
    assert torch.allclose(target[:, :3].mean(0), torch.zeros(3), atol=1e-5)


def test_discrete_latent_is_uniform_and_a_function_of_the_noise() -> None:
    """noise_components = K: the residual net sees one_hot(floor(K * Phi(z_0))), K equally likely components."""
    k = 4
    torch.manual_seed(0)
    model = ConditionalGAN(
        make_info(SPACES["box"]), ModelConfig(**{**CONFIG.to_json(), "noise_components": k})
    )
    assert model.generator.residual_net[0].in_features == 3 + 2 + CONFIG.noise_dim + k
    seen: list[torch.Tensor] = []
    model.generator.residual_net.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    cond = torch.zeros(8000, 5)
    noise = torch.randn(8000, CONFIG.noise_dim, generator=torch.Generator().manual_seed(1))
    first = model.generator.residual(cond, noise)
    one_hot = seen[-1][:, -k:]
    assert torch.all(one_hot.sum(dim=1) == 1)
    shares = one_hot.mean(dim=0)
    assert torch.allclose(shares, torch.full((k,), 1 / k), atol=0.02), shares
    # the component is the quantile bin of z_0: z_0 < Phi^-1(1/4) ~ -0.674 is component 0, z_0 > 0.674 is 3
    assert torch.all(one_hot[noise[:, 0] < -0.68, 0] == 1) and torch.all(one_hot[noise[:, 0] > 0.68, 3] == 1)
    assert torch.equal(first, model.generator.residual(cond, noise.clone()))


def test_config_saved_before_the_discrete_latent_loads_without_it() -> None:
    saved = {k: v for k, v in CONFIG.to_json().items() if k != "noise_components"}
    assert ModelConfig.from_json(saved).noise_components == 0


def test_config_saved_before_the_activation_could_be_chosen_loads_as_silu() -> None:
    from simgan.config import ACTIVATION_NAMES
    from simgan.gan_networks import ACTIVATIONS
    from simgan.train_config import TrainConfig

    saved = {k: v for k, v in CONFIG.to_json().items() if k != "activation"}
    assert ModelConfig.from_json(saved).activation == "silu"
    assert TrainConfig.from_json({}).model_config().activation == "silu"
    assert tuple(ACTIVATIONS) == ACTIVATION_NAMES  # simgan.config names them without importing torch


def test_termination_is_decided_on_the_sampled_transition() -> None:
    """p(terminated | s, a, s'): with a head that fires when the normalised delta of dim 0 is positive, the same
    (s, a) ends or not depending on the sample the noise drew."""
    torch.manual_seed(0)
    info = make_info(SPACES["box"])
    model = ConditionalGAN(info, ModelConfig(noise_dim=3, mean_hidden=(16,), termination_hidden=(1,)))
    first, last = model.generator.termination_net[0], model.generator.termination_net[-1]
    cond_dim = info.obs_dim + info.action_input_dim
    with torch.no_grad():
        first.weight.zero_(), first.bias.zero_(), last.bias.zero_()
        first.weight[0, cond_dim] = 10.0  # the hidden unit reads the target's delta of obs dim 0 ...
        last.weight.fill_(10.0)  # ... and the logit is 10 * silu(10 * delta_0): > 0 iff delta_0 > 0
        model.generator.mean_net[-1].weight.zero_(), model.generator.mean_net[-1].bias.zero_()  # mu = 0
        model.generator.residual_net[-1].bias.zero_()  # the residual's sign is the noise's doing
    obs = torch.zeros(2000, info.obs_dim)
    action = torch.zeros(2000, 2)
    next_obs, _, terminated = model.sample(obs, action, generator=torch.Generator().manual_seed(1))
    assert 0.05 < terminated.float().mean() < 0.95  # one (s, a), both outcomes
    assert torch.equal(terminated, next_obs[:, 0] > obs[:, 0])  # identity normaliser: delta_0 = s'_0 - s_0


def test_config_saved_before_the_termination_head_loads_and_samples(model_and_batch) -> None:
    """Older model.json files have no termination_hidden: the logit is the mean head's extra last output."""
    _, batch = model_and_batch
    saved = {k: v for k, v in CONFIG.to_json().items() if k != "termination_hidden"}
    config = ModelConfig.from_json(saved)
    assert config.termination_hidden == ()
    info = make_info(SPACES["box"])
    model = ConditionalGAN(info, config)
    assert model.generator.termination_net is None
    assert model.generator.mean_net[-1].out_features == info.obs_dim + 2  # delta, reward, termination logit
    with torch.no_grad():
        model.generator.mean_net[-1].bias[-1] = 5.0  # the stored logit says "done"
    obs, action = torch.as_tensor(batch.obs), torch.as_tensor(np.zeros((len(batch), 2), np.float32))
    next_obs, reward, terminated = model.sample(obs, action, generator=torch.Generator().manual_seed(0))
    assert next_obs.shape == obs.shape and reward.shape == (len(batch),)
    assert model.generator.mean(model.condition(obs, action)).shape == (len(batch), info.obs_dim + 1)
    assert terminated.float().mean() > 0.9


def test_defaults_are_what_train_builds() -> None:
    from simgan.train_config import TrainConfig

    assert TrainConfig().model_config() == ModelConfig()


def test_sample_with_realism_is_the_realism_of_the_sample(model_and_batch) -> None:
    """The fused step judges the residual it generated: the same ranks as realism() of the sampled transitions."""
    model, batch = model_and_batch
    obs, action, _, _ = tensors(batch)
    noise = torch.randn(64, CONFIG.noise_dim, generator=torch.Generator().manual_seed(3))
    next_obs, reward, terminated = model.sample(obs, action, noise=noise)
    # calibrate on the samples themselves, so their realism ranks are spread over [0, 1) (not all 0 or all 1)
    sampled = TransitionBatch(**{**batch.arrays(), "next_obs": next_obs.numpy(), "reward": reward.numpy()})
    model.calibrate_realism(sampled)
    expected = model.realism(obs, action, next_obs, reward)
    fused = model.sample_with_realism(obs, action, noise=noise)
    for a, b in zip(fused[:3], (next_obs, reward, terminated)):
        assert torch.equal(a, b)
    # equal up to a float-rounding tie with a neighbouring reference score (one rank)
    assert torch.allclose(fused[3], expected, atol=1.0 / 64 + 1e-6), (fused[3], expected)
    assert float((fused[3] - expected).abs().mean()) < 0.05
    assert sorted(fused[3].tolist()) == pytest.approx([i / 64 for i in range(64)], abs=1.5 / 64)


def test_sample_repeated_is_the_sample_of_the_repeated_rows(model_and_batch) -> None:
    """N futures of one (state, action): the mean head runs on the distinct rows only, with the same result."""
    model, batch = model_and_batch
    obs, action, _, _ = tensors(batch)
    model.calibrate_realism(batch)
    repeats = torch.tensor([3, 1, 5, 2])
    rows = int(repeats.sum())
    obs, action = obs[:4], action[:4]
    noise = torch.randn(rows, CONFIG.noise_dim, generator=torch.Generator().manual_seed(4))
    calls: list[int] = []
    hook = model.generator.mean_net.register_forward_hook(lambda _m, args, _out: calls.append(len(args[0])))
    grouped = model.sample_repeated(obs, action, repeats, noise=noise, realism=True)
    hook.remove()
    assert calls == [4]  # the mean head saw the 4 distinct rows, not the 11 repeated ones
    whole = model.sample_with_realism(
        obs.repeat_interleave(repeats, 0), action.repeat_interleave(repeats, 0), noise=noise
    )
    for got, want in zip(grouped, whole):
        assert got.shape == want.shape
        assert torch.allclose(got.float(), want.float(), atol=1e-5)
    for bad in (torch.tensor([3, 1, 5]), torch.tensor([3.0, 1.0, 5.0, 2.0]), torch.tensor([3, -1, 5, 2])):
        with pytest.raises(ModelShapeError, match="repeats: expected 4 non-negative integer counts"):
            model.sample_repeated(obs, action, bad)
    # drawn from a generator: the same draws as sampling the repeated rows
    drawn = model.sample_repeated(obs, action, repeats, generator=torch.Generator().manual_seed(6))
    assert len(drawn) == 3
    assert torch.allclose(
        drawn[0],
        model.sample_repeated(
            obs,
            action,
            repeats,
            noise=torch.randn(rows, CONFIG.noise_dim, generator=torch.Generator().manual_seed(6)),
        )[0],
    )


def test_scoring_leaves_the_discriminator_in_its_mode_and_never_steps_spectral_norm() -> None:
    """score() judges in eval mode (no power iteration of spectral norm) whether the model is training or not,
    and hands the discriminator back in the mode it found it in."""
    from dataclasses import replace

    torch.manual_seed(0)
    info = make_info(SPACES["box"])
    batch = random_batch(info, 32)
    model = ConditionalGAN(info, replace(CONFIG, spectral_norm=True))
    model.normalizer.fit(batch, info)
    vectors = {name: b.clone() for name, b in model.discriminator.named_buffers() if name.endswith("_u")}
    assert vectors  # spectral norm's power-iteration vectors
    for training in (True, False):
        model.train(training)
        first = model.score(*tensors(batch))
        assert model.discriminator.training is training
        assert torch.equal(model.score(*tensors(batch)), first)  # eval mode: no power-iteration step between
    for name, b in model.discriminator.named_buffers():
        if name in vectors:
            assert torch.equal(b, vectors[name]), name
