"""AR(1) forecast noise (noise_correlation) and its calibration on held-out episodes (simgan.forecast_calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_configs import TINY_GAN

import simgan
from simgan.checkpoint import load_model
from simgan.dataset_format import TransitionBatch
from simgan.forecast_calibration import CANDIDATES, band_coverage, calibrate_noise_correlation
from simgan.forecasting import Forecast, ForecastError, forecast
from simgan.training import train
from tests.worldmodels import SCALE_NOISE, LinearModel

ZERO_PLAN = np.zeros((12, 2), np.float32)


def increments(rho: float | None, samples: int = 2000) -> np.ndarray:
    """N x H x 3 per-step changes in units of the model's noise scale (zero actions: pure noise)."""
    result = forecast(
        LinearModel(),
        [0.0, 0.0, 0.0],
        actions=ZERO_PLAN,
        horizon=12,
        num_samples=samples,
        seed=3,
        noise_correlation=rho,
        compute_realism=False,
    )
    path = np.concatenate([np.zeros((samples, 1, 3), np.float32), result.observations[0]], axis=1)
    return np.diff(path, axis=1) / SCALE_NOISE


def test_rho_one_is_one_draw_per_branch_and_zero_is_independent() -> None:
    fixed = increments(1.0)
    np.testing.assert_allclose(fixed, np.broadcast_to(fixed[:, :1], fixed.shape), atol=1e-3)
    independent = increments(0.0)
    lag1 = np.corrcoef(independent[:, :-1].ravel(), independent[:, 1:].ravel())[0, 1]
    assert abs(lag1) < 0.05, lag1
    # rho = 0 is exactly the model drawing its own noise from the same generator (the default for such a model)
    np.testing.assert_array_equal(independent, increments(None))


def test_intermediate_rho_keeps_unit_marginals_with_that_lag_one_correlation() -> None:
    z = increments(0.5)
    assert np.allclose(z.std(axis=(0, 2)), 1.0, atol=0.06), z.std(axis=(0, 2))  # every step stays N(0, 1)
    lag1 = np.corrcoef(z[:, :-1].ravel(), z[:, 1:].ravel())[0, 1]
    assert lag1 == pytest.approx(0.5, abs=0.04)


def test_the_models_calibrated_value_is_the_default() -> None:
    model = LinearModel()
    model.noise_correlation = 1.0
    by_default = forecast(model, [0.0, 0.0, 0.0], actions=ZERO_PLAN, horizon=12, num_samples=50, seed=1)
    explicit = forecast(
        LinearModel(),
        [0.0, 0.0, 0.0],
        actions=ZERO_PLAN,
        horizon=12,
        num_samples=50,
        seed=1,
        noise_correlation=1.0,
    )
    np.testing.assert_array_equal(by_default.observations, explicit.observations)


def test_the_forecast_records_the_correlation_it_used_in_its_files(tmp_path) -> None:
    model = LinearModel()
    model.noise_correlation = 0.9
    calibrated = forecast(model, [0.0, 0.0, 0.0], actions=ZERO_PLAN, horizon=12, num_samples=4, seed=1)
    override = forecast(
        model, [0.0, 0.0, 0.0], actions=ZERO_PLAN, horizon=12, num_samples=4, seed=1, noise_correlation=0.5
    )
    fixed = forecast(model, [0.0, 0.0, 0.0], actions=ZERO_PLAN, horizon=12, num_samples=4, noise=0.0)
    assert (calibrated.noise_correlation, override.noise_correlation, fixed.noise_correlation) == (
        0.9,
        0.5,
        0.0,
    )
    override.save(tmp_path)
    assert Forecast.load(tmp_path).noise_correlation == 0.5
    assert json.loads((tmp_path / "forecast.json").read_text())["noise_correlation"] == 0.5
    with pytest.raises(ForecastError, match="same noise correlation"):
        Forecast.concatenate([calibrated, override])


def test_a_forecast_file_from_before_the_correlation_was_recorded_loads_as_independent(tmp_path) -> None:
    result = forecast(LinearModel(), [0.0, 0.0, 0.0], actions=ZERO_PLAN[:3], horizon=3, num_samples=2, seed=0)
    np.savez(tmp_path / "forecast.npz", **{k: getattr(result, k) for k in Forecast.ARRAYS})  # the old layout
    loaded = Forecast.load(tmp_path)
    assert loaded.noise_correlation == 0.0
    np.testing.assert_array_equal(loaded.observations, result.observations)


@pytest.mark.parametrize("rho", [-0.1, 1.5, True, "0.5", float("nan")])
def test_bad_noise_correlation_is_refused(rho) -> None:
    with pytest.raises(ForecastError, match=r"noise_correlation: expected a number in \[0, 1\]"):
        forecast(
            LinearModel(),
            [0.0, 0.0, 0.0],
            actions=ZERO_PLAN,
            horizon=12,
            num_samples=2,
            noise_correlation=rho,
        )


def test_fixed_noise_and_a_correlation_together_are_refused() -> None:
    with pytest.raises(ForecastError, match="noise / noise_correlation"):
        forecast(
            LinearModel(),
            [0.0, 0.0, 0.0],
            actions=ZERO_PLAN,
            horizon=12,
            num_samples=2,
            noise=0.0,
            noise_correlation=0.5,
        )


def episodes(drift: float, *, count: int = 40, length: int = 20, seed: int = 0) -> TransitionBatch:
    """Real episodes of a LinearModel-like system with zero actions: next = obs + 0.01 * (drift + noise)."""
    rng = np.random.default_rng(seed)
    noise_scale = 0.0 if drift else 1.0
    rows = []
    for e in range(count):
        obs = rng.uniform(-0.5, 0.5, 3).astype(np.float32)
        for t in range(length):
            nxt = (obs + SCALE_NOISE * (drift + noise_scale * rng.standard_normal(3))).astype(np.float32)
            rows.append((obs, nxt, e, t))
            obs = nxt
    obs, nxt, ep, step = (np.array(c) for c in zip(*rows))
    n = len(obs)
    return TransitionBatch(
        obs=obs,
        action=np.zeros((n, 2), np.float32),
        next_obs=nxt,
        reward=np.zeros(n, np.float32),
        terminated=np.zeros(n, bool),
        truncated=step == length - 1,
        episode=ep.astype(np.int64),
        step=step.astype(np.int64),
    )


def test_calibration_keeps_independent_noise_when_the_env_is_that_noisy() -> None:
    rho, table = calibrate_noise_correlation(LinearModel(), episodes(drift=0.0), samples=100)
    assert rho == 0.0, table
    assert table["0.0"] == pytest.approx(0.8, abs=0.07)
    assert table["1.0"] > table["0.0"] + 0.05  # one draw per branch spreads like t, reality like sqrt(t)


def test_calibration_correlates_the_noise_when_the_models_error_is_systematic() -> None:
    """Deterministic truth with a constant bias of one noise scale per step: independent noise (bands ~ sqrt(t))
    misses it after a couple of steps; correlated noise (bands ~ t) covers it."""
    rho, table = calibrate_noise_correlation(LinearModel(), episodes(drift=1.0), samples=100)
    assert table["0.0"] < 0.5, table
    assert rho >= 0.9, table
    assert set(table) == {str(float(c)) for c in CANDIDATES}


def test_no_window_long_enough_means_independent_noise() -> None:
    short = episodes(drift=0.0, length=5)
    assert band_coverage(LinearModel(), short, 0.0, horizon=15) is None
    assert calibrate_noise_correlation(LinearModel(), short) == (0.0, {})


def test_training_stores_the_calibrated_correlation(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    data = simgan.collect("Pendulum-v1", steps=1000, workers=0, out=tmp_path / "data", seed=0, progress=False)
    model = train(data, tmp_path / "gan", TINY_GAN, progress=False)
    stored = json.loads((tmp_path / "gan" / "model.json").read_text())
    assert stored["config"]["noise_correlation"] == model.noise_correlation
    assert model.noise_correlation in CANDIDATES
    assert set(stored["metrics"]["forecast_band_coverage"]) == {str(float(c)) for c in CANDIDATES}
    assert load_model(tmp_path / "gan").noise_correlation == model.noise_correlation

    # the CLI uses the stored value by default and takes --noise-correlation to override it
    from simgan.cli import main
    from simgan.forecasting import Forecast

    flags = ["forecast", "--model", str(tmp_path / "gan"), "--state", "[1, 0, 0]", "--horizon", "5"]
    flags += ["--samples", "20", "--no-realism", "--device", "cpu"]
    other = 0.0 if model.noise_correlation == 1.0 else 1.0
    for rho, out in ((None, "stored"), (other, "override")):
        extra = [] if rho is None else ["--noise-correlation", str(rho)]
        assert main([*flags, *extra, "--out", str(tmp_path / out)]) == 0
        shown = model.noise_correlation if rho is None else rho
        assert f"noise correlation over steps: {shown:g}" in capsys.readouterr().out
        expected = forecast(
            model, [1.0, 0.0, 0.0], horizon=5, num_samples=20, noise_correlation=rho, compute_realism=False
        )
        np.testing.assert_array_equal(Forecast.load(tmp_path / out).observations, expected.observations)
    assert main([*flags, "--noise-correlation", "2"]) == 2
    assert "noise_correlation: expected a number in [0, 1], got 2.0" in capsys.readouterr().err


@pytest.mark.parametrize("stored", ["0.5", 1.5, None, True])
def test_a_bad_stored_noise_correlation_names_model_json(tmp_path, stored) -> None:
    """A hand-edited model.json with a bad value gets a CheckpointError naming the field, never a bare
    ValueError, and the model directory is left as it was."""
    from simgan.checkpoint import CheckpointError

    torch.set_num_threads(1)
    data = simgan.collect("Pendulum-v1", steps=300, workers=0, out=tmp_path / "data", seed=0, progress=False)
    train(data, tmp_path / "gan", TINY_GAN, progress=False)
    path = tmp_path / "gan" / "model.json"
    meta = json.loads(path.read_text())
    meta["config"]["noise_correlation"] = stored
    path.write_text(json.dumps(meta))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=r"config.noise_correlation: expected a number in \[0, 1\]"):
        load_model(tmp_path / "gan")
    assert path.read_bytes() == before
