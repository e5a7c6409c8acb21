"""simgan.forecasting on hand-computable WorldModels (tests/worldmodels.py)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from simgan.forecast_inputs import chunk_rows
from simgan.forecast_report import fan_chart, summary_table
from simgan.forecasting import Forecast, ForecastError, forecast
from tests.test_models import CONFIG, make_info, random_batch
from tests.worldmodels import DiscreteLinearModel, LinearModel


def test_open_loop_plan_without_noise_matches_hand_computation():
    model = LinearModel()
    plan = np.tile(np.array([[1.0, -0.5]], np.float32), (4, 1))  # H=4 x act_dim
    result = forecast(model, [0.0, 0.0, 0.0], actions=plan, horizon=4, num_samples=3, noise=0.0)
    assert result.shape == (1, 3, 4)
    expected = np.array([[0.1 * t, -0.05 * t, 0.0] for t in range(1, 5)], np.float32)
    np.testing.assert_allclose(result.observations[0, 0], expected, atol=1e-6)
    np.testing.assert_allclose(result.rewards[0, 0], -(expected**2).sum(axis=1), atol=1e-6)
    # Without noise every branch is the same, so every quantile equals the trajectory.
    q = result.quantiles()
    np.testing.assert_allclose(q[:, 0], np.broadcast_to(expected, q[:, 0].shape), atol=1e-6)
    assert result.alive.all() and not result.terminated.any()


def test_terminated_branches_stop_contributing():
    model = LinearModel()
    # obs_0 starts at 1.95 and rises by 0.1 a step: |obs_0| > 2 after step 1, so every branch terminates there.
    plan = np.ones((5, 2), np.float32)
    result = forecast(model, [1.95, 0.0, 0.0], actions=plan, horizon=5, num_samples=8, noise=0.0)
    assert result.terminated[0, :, 0].all()
    assert not result.alive[0, :, 1:].any()
    assert (result.rewards[0, :, 1:] == 0).all()
    np.testing.assert_array_equal(result.observations[0, :, 4], result.observations[0, :, 0])  # frozen
    np.testing.assert_array_equal(result.live_counts()[0], [8, 0, 0, 0, 0])
    np.testing.assert_array_equal(result.termination_probability()[0], np.ones(5))
    assert np.isnan(result.quantiles()[:, 0, 1:]).all()  # no live branch -> no statistic


def test_same_seed_same_forecast_and_branches_differ():
    model = LinearModel()
    a = forecast(model, np.zeros((2, 3)), horizon=6, num_samples=16, seed=3)
    b = forecast(model, np.zeros((2, 3)), horizon=6, num_samples=16, seed=3)
    c = forecast(model, np.zeros((2, 3)), horizon=6, num_samples=16, seed=4)
    np.testing.assert_array_equal(a.observations, b.observations)
    np.testing.assert_array_equal(a.actions, b.actions)
    assert not np.array_equal(a.observations, c.observations)
    assert a.observations[0, :, -1].std(axis=0).min() > 0  # N futures, not one


def test_chunking_gives_the_same_result_with_fixed_noise():
    model = LinearModel()
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((3, 10, 5, model.noise_dim)).astype(np.float32)
    plan = rng.uniform(-1, 1, size=(3, 5, 2)).astype(np.float32)
    whole = forecast(model, rng.uniform(-1, 1, (3, 3)), actions=plan, horizon=5, num_samples=10, noise=noise)
    chunked = forecast(
        model, whole.start_states, actions=plan, horizon=5, num_samples=10, noise=noise, max_memory=20_000
    )
    np.testing.assert_allclose(whole.observations, chunked.observations)
    np.testing.assert_allclose(whole.realism, chunked.realism)
    assert model.sample_calls > 2 * 5  # the small budget really split the work into several chunks


def test_first_step_of_a_plan_runs_the_mean_head_once_per_start_state():
    """Under a plan the N branches of a start state share their first (state, action); the GAN's mean head runs
    on the B start states there, and the forecast equals the one with the same actions from a policy (which
    samples every row), also when chunks split a start state's branches."""
    model, states, plan, rng = _gan_states_and_plan()
    rows: list[int] = []
    hook = model.generator.mean_net.register_forward_hook(lambda _m, args, _out: rows.append(len(args[0])))
    planned = forecast(model, states, actions=plan, horizon=4, num_samples=10, seed=2)
    hook.remove()
    assert rows == [3, 30, 30, 30]
    steps = iter(range(4))
    replay = lambda obs: np.repeat(plan[:, next(steps)], 10, axis=0)  # noqa: E731  the plan, closed loop
    replayed = forecast(model, states, policy=replay, horizon=4, num_samples=10, seed=2)
    np.testing.assert_allclose(planned.observations, replayed.observations, atol=1e-5)
    np.testing.assert_allclose(planned.realism, replayed.realism, atol=1e-5)
    noise = rng.standard_normal((3, 10, 4, model.noise_dim)).astype(np.float32)
    whole = forecast(model, states, actions=plan, horizon=4, num_samples=10, noise=noise)
    assert chunk_rows(30_000, 4, 3, (2,), model.noise_dim) == 7  # chunks of 7 rows split the groups of 10
    chunked = forecast(model, states, actions=plan, horizon=4, num_samples=10, noise=noise, max_memory=30_000)
    np.testing.assert_allclose(whole.observations, chunked.observations, atol=1e-5)


def test_a_model_at_bfloat16_forecasts_close_to_float32():
    """simgan.at_precision(model, "bfloat16") forecasts through the same code (sample_repeated included), its
    outputs float32 and within bfloat16's rounding of the float32 forecast."""
    from simgan.world_model import at_precision

    model, states, plan, _ = _gan_states_and_plan()
    full = forecast(model, states, actions=plan, horizon=4, num_samples=10, seed=2)
    half = forecast(at_precision(model, "bfloat16"), states, actions=plan, horizon=4, num_samples=10, seed=2)
    assert half.observations.dtype == full.observations.dtype == np.float32
    assert not np.array_equal(half.observations, full.observations)
    np.testing.assert_allclose(half.observations, full.observations, rtol=0.05, atol=0.05)


def _gan_states_and_plan() -> tuple:
    """A small GAN (Box actions), 3 start states, a 4-step plan for each, and the generator that drew them."""
    torch.manual_seed(0)
    model = simgan_gan(make_info(gym.spaces.Box(-2.0, 2.0, (2,), np.float32)))
    rng = np.random.default_rng(1)
    states = rng.normal(size=(3, 3)).astype(np.float32)
    plan = rng.uniform(-2, 2, size=(3, 4, 2)).astype(np.float32)
    return model, states, plan, rng


def simgan_gan(info):
    from simgan.models import ConditionalGAN

    model = ConditionalGAN(info, CONFIG)
    batch = random_batch(info, 64)
    model.normalizer.fit(batch, info)
    model.calibrate_realism(batch)
    return model


def test_policy_closed_loop_and_discrete_actions():
    model = DiscreteLinearModel()
    always_up = lambda obs: np.full(len(obs), 2, dtype=np.int64)  # noqa: E731
    result = forecast(model, [0.0, 0.0], policy=always_up, horizon=5, num_samples=4, noise=0.0)
    np.testing.assert_allclose(result.observations[0, :, -1, 0], 0.5, atol=1e-6)
    assert result.actions.dtype == np.int64 and (result.actions == 2).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"states": [0.0, 0.0]}, "expected shape (3,) or (B, 3)"),
        ({"states": [np.nan, 0.0, 0.0]}, "finite"),
        ({"horizon": 0}, "horizon: expected a positive integer"),
        ({"num_samples": -1}, "num_samples: expected a positive integer"),
        ({"actions": np.zeros((3, 2))}, "actions: expected shape (5, 2)"),
        ({"actions": np.full((5, 2), 3.0)}, "within the action bounds"),
        ({"policy": lambda obs: np.zeros((len(obs), 5))}, "policy returned actions of shape"),
        ({"policy": lambda obs: np.full((len(obs), 2), np.nan)}, "finite"),
        ({"max_memory": 0}, "max_memory"),
    ],
)
def test_bad_input_raises_clear_errors(kwargs, message):
    args = {"states": [0.0, 0.0, 0.0], "horizon": 5, "num_samples": 2} | kwargs
    with pytest.raises(ForecastError, match=message.replace("(", r"\(").replace(")", r"\)")):
        forecast(LinearModel(), **args)


def test_save_load_fan_chart_and_summary(tmp_path):
    result = forecast(LinearModel(), np.zeros((2, 3)), horizon=8, num_samples=64, seed=0)
    result.save(tmp_path)
    loaded = Forecast.load(tmp_path)
    np.testing.assert_array_equal(loaded.observations, result.observations)
    fan_chart(result, tmp_path / "fan.png", state_index=1)
    assert (tmp_path / "fan.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = summary_table(result)
    assert len(table.splitlines()) == 3
    flags = result.realism_flags(threshold=1.1)  # every realism score is < 1.1
    assert flags.all()
