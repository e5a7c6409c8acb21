"""Forecast noise: its step-to-step correlation (AR(1), noise_correlation), its spread (noise_spread), and their
calibration on held-out episodes (simgan.forecast_calibration)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_configs import TINY_GAN

import simgan
from simgan.checkpoint import load_model
from simgan.dataset_format import TransitionBatch
from simgan.forecast_calibration import (
    CANDIDATES,
    SPREADS,
    TARGET_COVERAGE,
    band_coverage,
    calibrate_forecast_noise,
    calibrate_saved_model,
    is_forecast_calibrated,
)
from simgan.forecasting import Forecast, ForecastError, forecast
from simgan.training import train
from tests.worldmodels import SCALE_NOISE, LinearModel, SpreadLinearModel

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
    rho, spread, table = calibrate_forecast_noise(LinearModel(), episodes(drift=0.0), samples=100)
    assert (rho, spread) == (0.0, 1.0), table
    assert table["0.0"] == pytest.approx(0.8, abs=0.07)
    assert table["1.0"] > table["0.0"] + 0.05  # one draw per branch spreads like t, reality like sqrt(t)


def test_calibration_correlates_the_noise_when_the_models_error_is_systematic() -> None:
    """Deterministic truth with a constant bias of one noise scale per step: independent noise (bands ~ sqrt(t))
    misses it after a couple of steps; correlated noise (bands ~ t) covers it."""
    rho, spread, table = calibrate_forecast_noise(LinearModel(), episodes(drift=1.0), samples=100)
    assert table["0.0"] < 0.5, table
    assert rho >= 0.9, table
    assert set(table) == {str(float(c)) for c in CANDIDATES}
    assert spread == 1.0  # a model without noise_spread keeps its one-step spread


def test_no_window_long_enough_means_independent_noise() -> None:
    short = episodes(drift=0.0, length=5)
    assert band_coverage(LinearModel(), short, 0.0, horizon=15) is None
    assert calibrate_forecast_noise(LinearModel(), short) == (0.0, 1.0, {})


def test_training_stores_the_calibrated_correlation(tmp_path, capsys) -> None:
    torch.set_num_threads(1)
    data = simgan.collect("Pendulum-v1", steps=1000, workers=0, out=tmp_path / "data", seed=0, progress=False)
    model = train(data, tmp_path / "gan", TINY_GAN, progress=False)
    stored = json.loads((tmp_path / "gan" / "model.json").read_text())
    assert stored["config"]["noise_correlation"] == model.noise_correlation
    assert stored["config"]["noise_spread"] == model.noise_spread
    assert model.noise_correlation in CANDIDATES and model.noise_spread in SPREADS
    table = stored["metrics"]["forecast_band_coverage"]
    assert {k for k in table if "spread" not in k} == {str(float(c)) for c in CANDIDATES}
    # the returned model's calibration is the full one, made after training (checkpoints along it get 32
    # windows): recomputing it on the validation episodes gives the stored values
    dataset = simgan.load_dataset(tmp_path / "data")
    rho, spread, again = calibrate_forecast_noise(load_model(tmp_path / "gan"), dataset.validation, seed=0)
    assert (rho, spread, again) == (model.noise_correlation, model.noise_spread, table)
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
    # --noise-spread overrides the stored spread, and is shown and recorded
    assert main([*flags, "--noise-spread", "1.5", "--out", str(tmp_path / "wide")]) == 0
    assert "noise spread: 1.5 (--noise-spread)" in capsys.readouterr().out
    wide = Forecast.load(tmp_path / "wide")
    assert wide.noise_spread == 1.5
    expected = forecast(
        model, [1.0, 0.0, 0.0], horizon=5, num_samples=20, noise_spread=1.5, compute_realism=False
    )
    np.testing.assert_array_equal(wide.observations, expected.observations)
    assert main([*flags, "--noise-spread", "0"]) == 2
    assert "noise_spread: expected a number in (0, 10], got 0.0" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["gan", "ensemble"])
def test_skipping_the_calibration_changes_nothing_else_and_it_can_be_done_later(tmp_path, kind) -> None:
    """forecast_calibration=False (the loop's iterations) saves the calibration's time: same weights, same realism,
    and calibrate_saved_model afterwards records what training would have."""
    from dataclasses import replace

    from simgan.checkpoint import load_model_files
    from simgan.ensemble import EnsembleConfig
    from simgan.ensemble_training import train_ensemble

    torch.set_num_threads(1)
    data = simgan.collect("Pendulum-v1", steps=1000, workers=0, out=tmp_path / "data", seed=0, progress=False)
    models = {}
    for calibrated in (True, False):
        out = tmp_path / f"{kind}-{calibrated}"
        if kind == "gan":
            models[calibrated] = train(
                data, out, replace(TINY_GAN, forecast_calibration=calibrated), progress=False
            )
        else:
            config = EnsembleConfig(
                members=3, elites=2, hidden=(32, 32), steps=60, eval_every=30, progress=False, device="cpu",
                seed=0, forecast_calibration=calibrated,
            )  # fmt: skip
            models[calibrated] = train_ensemble(data, out=out, config=config)
    full, skipped = (load_model_files(tmp_path / f"{kind}-{c}") for c in (True, False))
    assert full.tensors.keys() == skipped.tensors.keys()
    for name in full.tensors:
        assert torch.equal(full.tensors[name], skipped.tensors[name]), name
    assert is_forecast_calibrated(tmp_path / f"{kind}-True") and not is_forecast_calibrated(
        tmp_path / f"{kind}-False"
    )
    assert (skipped.config["noise_correlation"], skipped.config["noise_spread"]) == (0.0, 1.0)
    assert any("realism" in name for name in full.tensors)  # the realism calibration is kept (compared above)

    later = calibrate_saved_model(tmp_path / f"{kind}-False", data.validation, seed=0, device="cpu")
    after = load_model_files(tmp_path / f"{kind}-False")
    assert (later.noise_correlation, later.noise_spread) == (
        models[True].noise_correlation,
        models[True].noise_spread,
    )
    assert (after.config["noise_correlation"], after.config["noise_spread"]) == (
        full.config["noise_correlation"],
        full.config["noise_spread"],
    )
    assert after.metrics["forecast_band_coverage"] == full.metrics["forecast_band_coverage"]
    assert is_forecast_calibrated(tmp_path / f"{kind}-False")


@pytest.mark.parametrize(
    ("field", "stored", "expected"),
    [
        ("noise_correlation", "0.5", r"\[0, 1\]"),
        ("noise_correlation", 1.5, r"\[0, 1\]"),
        ("noise_correlation", None, r"\[0, 1\]"),
        ("noise_correlation", True, r"\[0, 1\]"),
        ("noise_spread", 0.0, r"\(0, 10\]"),
        ("noise_spread", 11.0, r"\(0, 10\]"),
        ("noise_spread", "2", r"\(0, 10\]"),
        ("noise_spread", False, r"\(0, 10\]"),
    ],
)
def test_a_bad_stored_forecast_noise_names_model_json(tmp_path, field, stored, expected) -> None:
    """A hand-edited model.json with a bad value gets a CheckpointError naming the field, never a bare
    ValueError, and the model directory is left as it was."""
    from simgan.checkpoint import CheckpointError

    torch.set_num_threads(1)
    data = simgan.collect("Pendulum-v1", steps=300, workers=0, out=tmp_path / "data", seed=0, progress=False)
    train(data, tmp_path / "gan", TINY_GAN, progress=False)
    path = tmp_path / "gan" / "model.json"
    meta = json.loads(path.read_text())
    meta["config"][field] = stored
    path.write_text(json.dumps(meta))
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match=rf"config.{field}: expected a number in {expected}"):
        load_model(tmp_path / "gan")
    assert path.read_bytes() == before


# ---- the spread -------------------------------------------------------------------------------------------------


def steps_of(model, samples: int = 400, **kwargs) -> np.ndarray:
    """N x H x 3 per-step changes of a forecast under the zero plan (pure model noise)."""
    result = forecast(
        model, [0.0, 0.0, 0.0], actions=ZERO_PLAN, horizon=12, num_samples=samples, seed=3, **kwargs
    )
    path = np.concatenate([np.zeros((samples, 1, 3), np.float32), result.observations[0]], axis=1)
    return np.diff(path, axis=1)


def test_the_spread_scales_each_steps_noise_and_the_models_value_is_the_default() -> None:
    model = SpreadLinearModel(width=1.0)
    one, two = steps_of(model, noise_spread=1.0), steps_of(model, noise_spread=2.0)
    np.testing.assert_allclose(two, 2.0 * one, rtol=1e-4, atol=1e-7)  # the same draws, twice as far
    model.noise_spread = 1.5
    np.testing.assert_array_equal(steps_of(model), steps_of(model, noise_spread=1.5))
    # a fixed noise array is the caller's draw: the model's stored spread does not apply unless asked for
    fixed = forecast(model, [0.0, 0.0, 0.0], actions=ZERO_PLAN, horizon=12, num_samples=2, noise=1.0)
    assert fixed.noise_spread == 1.0
    np.testing.assert_allclose(np.diff(fixed.observations[0, 0, :, 2]), SCALE_NOISE, rtol=1e-3)


def test_the_forecast_records_the_spread_it_used_in_its_files(tmp_path) -> None:
    model = SpreadLinearModel(width=1.0)
    model.noise_spread = 1.25
    calibrated = forecast(model, [0.0, 0.0, 0.0], actions=ZERO_PLAN, horizon=12, num_samples=4, seed=1)
    other = forecast(
        model, [0.0, 0.0, 0.0], actions=ZERO_PLAN, horizon=12, num_samples=4, seed=1, noise_spread=2
    )
    assert (calibrated.noise_spread, other.noise_spread) == (1.25, 2.0)
    calibrated.save(tmp_path)
    assert Forecast.load(tmp_path).noise_spread == 1.25
    assert json.loads((tmp_path / "forecast.json").read_text())["noise_spread"] == 1.25
    with pytest.raises(ForecastError, match="same noise spread"):
        Forecast.concatenate([calibrated, other])
    # files written before the spread was recorded load with the model's one-step spread
    np.savez(tmp_path / "forecast.npz", **{k: getattr(calibrated, k) for k in Forecast.ARRAYS})
    assert Forecast.load(tmp_path).noise_spread == 1.0


@pytest.mark.parametrize("spread", [0.0, -1.0, 10.5, True, "2", float("nan"), float("inf")])
def test_bad_noise_spread_is_refused(spread) -> None:
    with pytest.raises(ForecastError, match=r"noise_spread: expected a number in \(0, 10\]"):
        forecast(SpreadLinearModel(1.0), [0.0, 0.0, 0.0], horizon=3, num_samples=2, noise_spread=spread)


def test_a_model_without_a_spread_forecasts_only_at_its_own() -> None:
    with pytest.raises(
        ForecastError, match="noise_spread: expected 1 for a LinearModel, which takes no spread"
    ):
        forecast(LinearModel(), [0.0, 0.0, 0.0], horizon=3, num_samples=2, noise_spread=1.5)
    same = forecast(LinearModel(), [0.0, 0.0, 0.0], horizon=3, num_samples=2, seed=4, noise_spread=1.0)
    default = forecast(LinearModel(), [0.0, 0.0, 0.0], horizon=3, num_samples=2, seed=4)
    np.testing.assert_array_equal(same.observations, default.observations)


@pytest.mark.parametrize(("width", "wider"), [(0.6, True), (2.0, False)])
def test_calibration_moves_the_spread_of_a_model_whose_noise_is_off(width, wider) -> None:
    """Noisy truth (a random walk, so independent noise is right): a model with 0.6x (2x) the real noise covers
    too little (too much) at spread 1 with any rho; the calibration widens (narrows) its spread towards 1 / width
    and lands closer to 80 %."""
    batch = episodes(drift=0.0)
    rho, spread, table = calibrate_forecast_noise(
        SpreadLinearModel(width), batch, candidates=(0.0,), samples=100
    )
    assert rho == 0.0
    assert (spread > 1.0) if wider else (spread < 1.0), table
    assert abs(table[f"0.0 spread {spread:g}"] - TARGET_COVERAGE) < abs(table["0.0"] - TARGET_COVERAGE) - 0.1
    assert abs(table[f"0.0 spread {spread:g}"] - TARGET_COVERAGE) < 0.07, table
    # the search goes one way, nearest-to-1 first, and stops at the first spread past the target
    tried = sorted(float(k.split()[-1]) for k in table if "spread" in k)
    nearest_first = sorted(
        (s for s in SPREADS if (s > 1.0) == wider and s != 1.0), key=lambda s: abs(s - 1.0)
    )
    assert tried == sorted(nearest_first[: len(tried)])
    # and a model of the right width keeps spread 1 when independent noise already covers about 80 %
    assert calibrate_forecast_noise(SpreadLinearModel(1.0), batch, candidates=(0.0,), samples=200)[1] == 1.0


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A tiny GAN and a tiny ensemble trained on real Pendulum-v1 data."""
    from simgan.ensemble import EnsembleConfig
    from simgan.ensemble_training import train_ensemble

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("spread")
    data = simgan.collect("Pendulum-v1", steps=1000, workers=0, out=root / "data", seed=0, progress=False)
    gan = train(data, root / "gan", TINY_GAN, progress=False)
    config = EnsembleConfig(members=3, elites=2, hidden=(32,), steps=60, eval_every=30, progress=False)
    ensemble = train_ensemble(data, out=root / "ensemble", config=config)
    return data, {"gan": gan, "ensemble": ensemble}, root


@pytest.mark.parametrize("kind", ["gan", "ensemble"])
def test_the_models_spread_moves_a_sample_linearly_away_from_its_mean(tiny_models, kind) -> None:
    """GAN (its residual) and ensemble (its standard deviation): with the same noise, spread s puts the next state
    at mean + s * deviation, so equal steps in s give equal steps in the state; repeated rows and the realism
    pass agree, and the realism judges the transition the spread made."""
    data, models, _ = tiny_models
    model = models[kind]
    rows = np.flatnonzero(np.abs(data.validation.obs[:, 2]) < 4.0)[:48]  # away from the speed limit
    obs = torch.as_tensor(data.validation.obs[rows])
    action = torch.as_tensor(data.validation.action[rows])
    noise = torch.randn(len(rows), model.noise_dim, generator=torch.Generator().manual_seed(0))
    if kind == "ensemble":
        noise[:, -1] = 0.0  # the same elite for every spread (it is picked by the last column)
    out = {s: model.sample(obs, action, noise=noise, spread=s) for s in (1.0, 1.5, 2.0)}
    low, high = model.info.observation_space.low, model.info.observation_space.high
    inside = np.ones(len(rows), bool)
    for next_obs, _, _ in out.values():  # rows the space's clamp did not touch at any spread
        inside &= ((next_obs.numpy() > low + 1e-6) & (next_obs.numpy() < high - 1e-6)).all(axis=1)
    assert inside.sum() >= len(rows) // 2
    step1 = (out[1.5][0] - out[1.0][0]).numpy()[inside]
    step2 = (out[2.0][0] - out[1.5][0]).numpy()[inside]
    np.testing.assert_allclose(step2, step1, atol=2e-5)
    assert np.abs(step1).max() > 1e-4  # the spread moved the samples
    np.testing.assert_allclose(out[1.5][1] - out[1.0][1], out[2.0][1] - out[1.5][1], atol=2e-4)  # reward too
    # sample_repeated and sample_with_realism take the same spread
    repeats = torch.ones(len(rows), dtype=torch.int64)
    repeated = model.sample_repeated(obs, action, repeats, noise=noise, spread=1.5)
    np.testing.assert_allclose(repeated[0].numpy(), out[1.5][0].numpy(), atol=1e-5)
    next_obs, reward, _, realism = model.sample_with_realism(obs, action, noise=noise, spread=2.0)
    np.testing.assert_allclose(next_obs.numpy(), out[2.0][0].numpy(), atol=1e-6)
    judged = model.realism(obs, action, next_obs, reward).numpy()
    assert np.mean(np.abs(realism.numpy() - judged) <= 0.02) >= 0.9


@pytest.mark.parametrize("kind", ["gan", "ensemble"])
def test_training_stores_the_calibrated_spread_and_the_model_reloads_with_it(tiny_models, kind) -> None:
    root, models = tiny_models[2], tiny_models[1]
    model = models[kind]
    stored = json.loads((root / kind / "model.json").read_text())
    assert stored["config"]["noise_spread"] == model.noise_spread in SPREADS
    assert stored["config"]["noise_correlation"] == model.noise_correlation in CANDIDATES
    reloaded = load_model(root / kind)
    assert (reloaded.noise_correlation, reloaded.noise_spread) == (
        model.noise_correlation,
        model.noise_spread,
    )
