"""GaussianEnsemble: shapes, noise determinism, elites, realism, reproducible training, checkpoints, learning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import simgan
from simgan.checkpoint import load_model
from simgan.ensemble import EnsembleConfig, EnsembleError, GaussianEnsemble
from simgan.ensemble_training import train_ensemble
from simgan.metrics import one_step_metrics
from simgan.world_model import WorldModel

TINY = {"members": 3, "elites": 2, "hidden": (32, 32), "steps": 150, "eval_every": 50, "progress": False}


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("data") / "pendulum"
    return simgan.collect("Pendulum-v1", steps=2000, workers=0, out=out, seed=0, progress=False)


@pytest.fixture(scope="module")
def trained(pendulum, tmp_path_factory: pytest.TempPathFactory) -> tuple[GaussianEnsemble, Path]:
    out = tmp_path_factory.mktemp("runs") / "ensemble"
    return train_ensemble(pendulum, out=out, config=EnsembleConfig(seed=3, **TINY)), out


def _inputs(dataset, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(dataset.validation.obs[:n]), torch.as_tensor(dataset.validation.action[:n])


def test_sample_shapes_and_protocol(trained, pendulum) -> None:
    model, _ = trained
    assert isinstance(model, WorldModel)
    assert model.noise_dim == pendulum.obs_dim + 2
    obs, action = _inputs(pendulum)
    next_obs, reward, terminated = model.sample(obs, action, generator=torch.Generator().manual_seed(0))
    assert next_obs.shape == (64, 3) and next_obs.dtype == torch.float32
    assert reward.shape == (64,) and terminated.shape == (64,) and terminated.dtype == torch.bool
    with pytest.raises(EnsembleError, match="noise: expected shape"):
        model.sample(obs, action, noise=torch.zeros(64, 3))
    with pytest.raises(EnsembleError, match="obs: expected shape"):
        model.sample(obs[:, :2], action)


def test_noise_carries_all_randomness(trained, pendulum) -> None:
    model, _ = trained
    obs, action = _inputs(pendulum)
    noise = torch.randn(64, model.noise_dim, generator=torch.Generator().manual_seed(1))
    first = model.sample(obs, action, noise=noise)
    again = model.sample(obs, action, noise=noise.clone())
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    other = model.sample(obs, action, noise=noise + 0.5)
    assert not torch.equal(first[0], other[0])
    same_gen = [model.sample(obs, action, generator=torch.Generator().manual_seed(7))[0] for _ in range(2)]
    assert torch.equal(*same_gen)


def test_member_choice_and_gaussian_draw_by_hand(trained, pendulum) -> None:
    """The last noise column picks the elite through the normal CDF; the rest scale that member's std."""
    model, _ = trained
    obs, action = _inputs(pendulum, 4)
    inputs = model.normalized_inputs(obs, action)
    mean, logvar, _ = model(inputs)
    elites = model.elite_index.tolist()
    low, high = (
        torch.as_tensor(b) for b in (pendulum.observation_space.low, pendulum.observation_space.high)
    )
    gaussian = torch.randn(4, model.noise_dim - 1, generator=torch.Generator().manual_seed(2))
    for column, member in ((-5.0, elites[0]), (5.0, elites[-1])):
        noise = torch.cat([gaussian, torch.full((4, 1), column)], 1)
        next_obs, reward, _ = model.sample(obs, action, noise=noise)
        target = mean[member] + torch.exp(0.5 * logvar[member]) * gaussian
        raw = target * model.target_std + model.target_mean
        torch.testing.assert_close(next_obs, (obs + raw[:, :3]).clamp(low, high))  # Pendulum's space
        torch.testing.assert_close(reward, raw[:, 3])
    # the elite average is what mean() reports
    expected = (mean[model.elite_index].mean(0) * model.target_std + model.target_mean)[:, :3] + obs
    torch.testing.assert_close(model.mean(obs, action)[0], expected.clamp(low, high))


def test_realism_is_calibrated_on_validation(trained, pendulum) -> None:
    model, _ = trained
    val = pendulum.validation
    args = [torch.as_tensor(getattr(val, k)) for k in ("obs", "action", "next_obs", "reward")]
    realism = model.realism(*args)
    assert realism.min() >= 0 and realism.max() <= 1
    assert float(realism.mean()) == pytest.approx(0.5, abs=0.05)  # the reference *is* these transitions
    absurd = model.realism(args[0], args[1], args[2] + 3.0, args[3])
    assert float(absurd.max()) < 0.01


def test_same_seed_same_weights(pendulum) -> None:
    config = EnsembleConfig(seed=11, **{**TINY, "steps": 60, "eval_every": 30})
    first = train_ensemble(pendulum, config=config).state_dict()
    second = train_ensemble(pendulum, config=config).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    other = train_ensemble(
        pendulum, config=EnsembleConfig(seed=12, **{**TINY, "steps": 60, "eval_every": 30})
    )
    assert not torch.equal(first["weights.0"], other.state_dict()["weights.0"])


def test_checkpoint_round_trip(trained, pendulum) -> None:
    model, out = trained
    meta = json.loads((out / "model.json").read_text())
    assert meta["kind"] == "ensemble" and meta["config"]["ensemble"]["members"] == 3
    assert meta["metrics"]["val_mse_elites"] > 0 and (out / "tb").is_dir()
    loaded = load_model(out, device="cpu")
    assert isinstance(loaded, GaussianEnsemble)
    assert torch.equal(loaded.elite_index, model.elite_index)
    obs, action = _inputs(pendulum)
    noise = torch.randn(64, model.noise_dim, generator=torch.Generator().manual_seed(4))
    for a, b in zip(model.sample(obs, action, noise=noise), loaded.sample(obs, action, noise=noise)):
        assert torch.equal(a, b)
    args = [torch.as_tensor(getattr(pendulum.validation, k)) for k in ("obs", "action", "next_obs", "reward")]
    assert torch.equal(model.realism(*args), loaded.realism(*args))


def test_discrete_actions(tmp_path: Path) -> None:
    data = simgan.collect(
        "CartPole-v1", steps=600, workers=0, out=tmp_path / "cartpole", seed=0, progress=False
    )
    model = train_ensemble(data, config=EnsembleConfig(**{**TINY, "steps": 40, "eval_every": 20}))
    obs = torch.as_tensor(data.validation.obs[:8])
    next_obs, reward, terminated = model.sample(obs, torch.as_tensor(data.validation.action[:8]))
    assert next_obs.shape == (8, 4) and reward.shape == (8,) and terminated.dtype == torch.bool
    assert torch.equal(
        model.normalized_inputs(obs, torch.zeros(8, dtype=torch.int64))[:, 4:], torch.tensor([[1.0, 0.0]] * 8)
    )


def test_config_errors() -> None:
    with pytest.raises(EnsembleError, match="elites"):
        EnsembleConfig(members=3, elites=4)
    with pytest.raises(EnsembleError, match="steps"):
        EnsembleConfig(steps=0)
    with pytest.raises(
        EnsembleError, match=r"hidden: expected positive layer widths \(at least one\), got \(200, 0\)"
    ):
        EnsembleConfig(hidden=(200, 0))


# ---------------------------------------------------------------------------------------------------------------
# Learning tests
# ---------------------------------------------------------------------------------------------------------------

# Small on purpose (2 shared CPU cores): a few hundred steps of a narrow ensemble already show both effects.
LEARN = {"members": 3, "elites": 2, "hidden": (64, 64), "steps": 800, "eval_every": 200, "progress": False}


@pytest.mark.slow
def test_fits_pendulum_far_better_than_copying(tmp_path: Path) -> None:
    data = simgan.collect("Pendulum-v1", steps=5000, workers=0, out=tmp_path / "p", seed=0, progress=False)
    model = train_ensemble(data, config=EnsembleConfig(**LEARN))
    metrics = one_step_metrics(model, data.validation)
    # "next = current" is ~0.11 on random-policy Pendulum data; a fitted model is 2+ orders of magnitude better.
    assert metrics["mean_error"] < metrics["copy_error"] / 100
    assert metrics["reward_error"] < 0.02 * float(data.validation.reward.var())


KICK_OBS = np.array([math.cos(0.5), math.sin(0.5), 0.0], np.float32)
KICK_ACTION = np.array([0.0], np.float32)


@pytest.fixture(scope="module")
def kicked_data(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("kicked") / "data"
    return simgan.collect("simgan/KickedPendulum-v0", steps=5000, workers=0, out=out, progress=False)


def _mode_shares(model) -> dict[str, float]:
    """Where a forecast's 2000 futures of the next angular velocity fall from one (s, a) (``simgan.forecast``,
    one step of a plan), relative to the two true modes.

    ``between``: share within half a half-gap of the midpoint (the true share is 0); ``plus`` / ``minus``: share
    within half a half-gap of each true mode (true: ~0.5 each); ``mean_offset``: |sample mean - midpoint| in
    half-gaps.
    """
    from envs.multimodal import KickedPendulum

    modes = KickedPendulum().modes(KICK_OBS, KICK_ACTION)[:, 2]  # thdot after the + and the - kick
    middle, half_gap = modes.mean(), abs(modes[0] - modes[1]) / 2
    futures = simgan.forecast(model, KICK_OBS, actions=KICK_ACTION[None], horizon=1, num_samples=2000, seed=0)
    fake = futures.observations[0, :, 0, 2]
    near = lambda centre: float(np.mean(np.abs(fake - centre) < 0.5 * half_gap))  # noqa: E731
    return {
        "between": near(middle),
        "plus": near(modes[0]),
        "minus": near(modes[1]),
        "mean_offset": float(abs(fake.mean() - middle) / half_gap),
    }


def test_true_kicked_pendulum_has_nothing_between_its_modes() -> None:
    from envs.multimodal import KickedPendulum

    env = KickedPendulum()
    modes = env.modes(KICK_OBS, KICK_ACTION)[:, 2]
    real = env.sample_next_states(KICK_OBS, KICK_ACTION, 2000, np.random.default_rng(0))[:, 2]
    assert np.mean(np.abs(real - modes.mean()) < 0.5 * abs(modes[0] - modes[1]) / 2) == 0.0


@pytest.mark.slow
def test_ensemble_mass_sits_between_the_kicked_pendulum_modes(kicked_data) -> None:
    """The Gaussian baseline's failure the GAN is meant to fix: it averages the +kick / -kick modes."""
    shares = _mode_shares(train_ensemble(kicked_data, config=EnsembleConfig(**LEARN)))
    assert shares["between"] > 0.25, shares  # a Gaussian at the midpoint with std ~ half-gap puts ~38 % here
    assert shares["mean_offset"] < 0.25, shares


@pytest.mark.slow
def test_gan_places_samples_in_both_kicked_pendulum_modes(kicked_data, tmp_path: Path) -> None:
    """The GAN half of the issue's learning test: both modes populated, little mass between them.

    Measured with the defaults (hinge loss, 16-way discrete latent, own termination head), one thread, share
    between the modes for training seeds 0 / 1 / 2: 0.169 / 0.157 / 0.000 after 1500 steps, 0.109 / 0.110 / 0.001
    after 3000 (the ensemble: > 0.25, a Gaussian at the midpoint ~0.38). What is left between the modes comes from
    the continuous noise: each discrete component still spans both modes on the bad seeds. With the InfoGAN term
    (``info_weight=1``, off by default): 0.000 / 0.241 / 0.000 after 1500 steps, 0.000 / 0.121 after 3000 (seeds
    0, 1): it separates the components on some seeds only.
    """
    from simgan.train_config import TrainConfig
    from simgan.training import train

    config = TrainConfig(steps=3000, eval_every=500, figures=False, device="cpu")
    model = train(kicked_data, tmp_path / "gan", config, progress=False)
    shares = _mode_shares(model)
    assert shares["plus"] > 0.2 and shares["minus"] > 0.2, shares
    assert shares["between"] < 0.15, shares  # the ensemble puts > 0.25 here (test above)

    # At the speed limit one kick lands on the bound and the other 0.59 inside it: the model clamps each sample
    # (mean_before_clip), so its inner mode sits near the env's. Measured at -8 and +8 (training seeds 0 / 1 / 2):
    # error 0.087 and 0.044 / 0.036 and 0.064 / 0.052 and 0.201, means 0.07 / 0.05 / 0.13. With the mean clamped
    # before the residual is added (models saved before mean_before_clip; seed 0) 0.31 and 0.41, mean 0.36: the
    # +-kick residual's full width from the clamped mean, which overshoots the inner mode.
    errors = []
    for sign in (-1.0, 1.0):
        share_on_bound, error = _inner_mode_at_the_speed_limit(model, sign)
        assert 0.3 < share_on_bound < 0.7, (sign, share_on_bound)  # true: 0.5
        errors.append(error)
    assert np.mean(errors) < 0.2, errors


def _inner_mode_at_the_speed_limit(model, sign: float) -> tuple[float, float]:
    """At thdot = 7.5 sign, torque 1.5 sign, angle 2 sign (gravity pulls the same way) one kick ends past the
    speed limit 8 and is clipped onto it; the other lands 0.59 inside. Returns the share of 1000 model samples on
    the bound and |median of the others - the true inner mode|."""
    from envs.multimodal import KickedPendulum

    obs = np.array([math.cos(2.0 * sign), math.sin(2.0 * sign), 7.5 * sign], np.float32)
    action = np.array([1.5 * sign], np.float32)
    modes = KickedPendulum().modes(obs, action)[:, 2]
    inner = modes[np.abs(modes) < 8.0]
    assert len(inner) == 1 and 7.3 < abs(inner[0]) < 7.5, modes  # the case this helper is for
    rows = (np.repeat(obs[None], 1000, axis=0), np.repeat(action[None], 1000, axis=0))
    fake = model.sample(*map(torch.as_tensor, rows), generator=torch.Generator().manual_seed(0))[0][:, 2]
    fake = fake.numpy()
    on_bound = np.abs(fake) >= 8.0 - 1e-4
    return float(on_bound.mean()), float(abs(np.median(fake[~on_bound]) - inner[0]))


def test_sample_with_realism_is_the_realism_of_the_sample(trained, pendulum) -> None:
    model, _ = trained
    obs, action = _inputs(pendulum, 200)
    noise = torch.randn(200, model.noise_dim, generator=torch.Generator().manual_seed(4))
    next_obs, reward, terminated = model.sample(obs, action, noise=noise)
    fused = model.sample_with_realism(obs, action, noise=noise)
    for a, b in zip(fused[:3], (next_obs, reward, terminated)):
        assert torch.equal(a, b)
    expected = model.realism(obs, action, next_obs, reward)
    assert 0.1 < float(expected.mean()) < 0.9  # the samples rank among the real validation transitions
    step = 1.0 / model.realism_reference.numel()
    assert torch.allclose(fused[3], expected, atol=step + 1e-6), (fused[3] - expected).abs().max()


def test_sample_repeated_is_the_sample_of_the_repeated_rows(trained, pendulum) -> None:
    """N futures of one (state, action): the members run on the distinct rows only, with the same result."""
    model, _ = trained
    obs, action = _inputs(pendulum, 3)
    repeats = torch.tensor([4, 1, 3])
    noise = torch.randn(8, model.noise_dim, generator=torch.Generator().manual_seed(2))
    grouped = model.sample_repeated(obs, action, repeats, noise=noise, realism=True)
    whole = model.sample_with_realism(
        obs.repeat_interleave(repeats, 0), action.repeat_interleave(repeats, 0), noise=noise
    )
    for got, want in zip(grouped, whole):
        assert got.shape == want.shape and torch.allclose(got.float(), want.float(), atol=1e-5)
    with pytest.raises(EnsembleError, match="repeats: expected 3 non-negative integer counts"):
        model.sample_repeated(obs, action, torch.tensor([4, 4]))
    plain = model.sample_repeated(obs, action, repeats, noise=noise)
    assert len(plain) == 3 and torch.equal(plain[0], grouped[0])
