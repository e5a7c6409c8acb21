"""How a model's noise should carry over from step to step in forecasts, calibrated on held-out episodes.

A model's one-step noise is fitted to its one-step distribution, but a forecast's bands depend on how errors
compound. On near-deterministic dynamics the spread of one-step samples *is* the model's own error, and that error
is systematic: it repeats along a trajectory. Independent noise at every step adds up like sqrt(t), so the bands
come out too narrow (a GAN on Pendulum-v1: 37 % of real futures inside its 10-90 % band over 15 steps). On
stochastic dynamics (a random kick every step) the noise is the env's own and must be independent. Forecasts
therefore draw each branch's noise as an AR(1) process::

    z_0 ~ N(0, I),    z_t = rho * z_{t-1} + sqrt(1 - rho^2) * eps_t,    eps_t ~ N(0, I)

which keeps every step's noise standard normal (the one-step distribution is untouched) and spans independent
steps (rho = 0) to one draw per branch (rho = 1: PETS's TS-infinity, for the ensemble a member per particle).

Correlation alone cannot widen bands past one draw per branch. A model whose one-step spread is narrower than its
held-out error (a mean head fitted tightly to the training data: the residual scale is measured on training
batches) stays under 80 % at every rho. Forecasts therefore also take a *spread*, a factor on each step's sampled
deviation from the mean (the GAN's residual, the ensemble's standard deviation), 1 meaning the trained one-step
distribution.

:func:`calibrate_forecast_noise` picks both from grids: for each candidate it forecasts open-loop along held-out
episode windows (the episodes' own actions) and measures how often the real states fall inside the 10-90 % band.
It picks the correlation at spread 1 closest to 80 %, and keeps spread 1 when that is within ``TOLERANCE``; only
otherwise does it step the spread away from 1, in the direction that moves coverage towards 80 %. Training runs it
on the validation episodes and stores both with the model (``model.noise_correlation``, ``model.noise_spread``),
so ``simgan.forecast`` uses them by default. GAN checkpoints along training get a quick correlation-only pass
(32 windows); the model training returns gets the full one (:data:`FINAL_WINDOWS`).

Training with ``forecast_calibration=False`` skips both (about 30 s of a CartPole GAN's 2,000 steps, 75 s of an
ensemble's 3,000; one thread); its model forecasts with correlation 0 and spread 1 until
:func:`calibrate_saved_model` is run on it. The model-based loop does that: only its last iteration's model is
calibrated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from simgan.checkpoint import load_model, load_model_files, update_model_json
from simgan.forecasting import forecast
from simgan.metrics import episode_windows
from simgan.world_model import WorldModel

CANDIDATES = (0.0, 0.5, 0.9, 1.0)
SPREADS = (0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0)
TARGET_COVERAGE = 0.8
# Coverage this close to the target at spread 1 keeps the model's own one-step spread.
TOLERANCE = 0.03
# Held-out windows of a model's final calibration (a window's states share one error, so 32 windows move the
# measured coverage by about 3 points from seed to seed; 256 by about 1). Checkpoints along training use fewer.
FINAL_WINDOWS = 256


def band_coverage(
    model: WorldModel,
    batch: Any,
    rho: float,
    *,
    spread: float = 1.0,
    horizon: int = 15,
    windows: int = 32,
    samples: int = 64,
    seed: int = 0,
) -> float | None:
    """Share of real states (per step and dimension) inside the forecast's 10-90 % band along held-out windows.

    ``batch``: a :class:`simgan.data.TransitionBatch` of whole episodes (a dataset's validation split); ``rho`` and
    ``spread``: the forecast's ``noise_correlation`` and ``noise_spread``. Returns None when the batch holds no
    ``horizon``-step window.
    """
    rows = episode_windows(batch, horizon, windows, seed)  # W x H
    if len(rows) == 0:
        return None
    result = forecast(
        model,
        batch.obs[rows[:, 0]],
        actions=batch.action[rows],
        horizon=horizon,
        num_samples=samples,
        seed=seed,
        noise_correlation=rho,
        noise_spread=spread,
        compute_realism=False,
    )
    low, high = result.quantiles((0.1, 0.9))  # W x H x obs_dim each
    real = batch.next_obs[rows]  # W x H x obs_dim
    valid = np.isfinite(low) & np.isfinite(high)
    inside = (real >= low) & (real <= high) & valid
    return float(inside.sum() / max(int(valid.sum()), 1))


def calibrate_forecast_noise(
    model: WorldModel,
    batch: Any,
    *,
    candidates: Sequence[float] = CANDIDATES,
    spreads: Sequence[float] = SPREADS,
    horizon: int = 15,
    windows: int = FINAL_WINDOWS,
    samples: int = 64,
    seed: int = 0,
) -> tuple[float, float, dict[str, float]]:
    """(rho, spread, coverages): the forecast noise whose band coverage on ``batch`` is closest to 80 %.

    First the correlations ``candidates`` at spread 1 (ties: the smaller rho). That rho stays; its spread stays 1
    when its coverage is within :data:`TOLERANCE` of the target, when the model takes no spread (it has no
    ``noise_spread``) or when ``spreads`` holds no other value. Otherwise the spreads on the side that moves
    coverage towards the target are tried nearest-to-1 first, up to the first that reaches the target, and the
    closest to 80 % wins (ties: the spread nearer 1). The correlation shapes how errors compound over the horizon,
    the spread scales them, so one correlation is searched at a time.

    ``coverages`` maps ``"rho"`` (spread 1) and ``"rho spread s"`` to the coverage measured. With no usable window
    (episodes shorter than ``horizon``) the answer is (0, 1, {}).
    """

    def cover(rho: float, spread: float) -> float | None:
        return band_coverage(
            model, batch, rho, spread=spread, horizon=horizon, windows=windows, samples=samples, seed=seed
        )

    table: dict[str, float] = {}
    for rho in sorted(float(c) for c in candidates):
        value = cover(rho, 1.0)
        if value is None:
            return 0.0, 1.0, {}
        table[str(rho)] = value
    rho = float(min(table, key=lambda k: (abs(table[k] - TARGET_COVERAGE), float(k))))
    measured = {1.0: table[str(rho)]}
    if abs(measured[1.0] - TARGET_COVERAGE) > TOLERANCE and hasattr(model, "noise_spread"):
        wider = measured[1.0] < TARGET_COVERAGE
        for spread in sorted(
            (float(s) for s in spreads if (s > 1.0) == wider and s != 1.0), reverse=not wider
        ):
            measured[spread] = table[f"{rho} spread {spread:g}"] = cover(rho, spread)  # type: ignore[assignment]
            if (measured[spread] >= TARGET_COVERAGE) == wider:
                break
    spread = min(measured, key=lambda s: (abs(measured[s] - TARGET_COVERAGE), abs(math.log(s))))
    return rho, spread, table


def calibrate_saved_model(
    directory: str | Path, batch: Any, *, seed: int = 0, device: Any = "cpu"
) -> WorldModel:
    """Calibrate the forecast noise of the saved model in ``directory`` in full and record it in its ``model.json``
    (``config.noise_correlation``, ``config.noise_spread``, ``metrics.forecast_band_coverage``).

    Args:
        directory: a model directory (GAN or ensemble).
        batch: held-out transitions (the validation episodes of the model's training data).
        seed: seed of the calibration's windows and noise.
        device: where the model is loaded.

    Returns:
        the model, loaded on ``device``, with that calibration set.
    """
    model = load_model(directory, device=device)
    model.noise_correlation, model.noise_spread, coverage = calibrate_forecast_noise(model, batch, seed=seed)
    update_model_json(
        directory,
        config={"noise_correlation": model.noise_correlation, "noise_spread": model.noise_spread},
        metrics={"forecast_band_coverage": coverage},
    )
    return model


def is_forecast_calibrated(directory: str | Path) -> bool:
    """Whether the saved model in ``directory`` has a forecast-noise calibration recorded in its ``model.json``."""
    return "forecast_band_coverage" in load_model_files(directory).metrics


__all__ = [
    "CANDIDATES",
    "FINAL_WINDOWS",
    "SPREADS",
    "TOLERANCE",
    "band_coverage",
    "calibrate_forecast_noise",
    "calibrate_saved_model",
    "is_forecast_calibrated",
]
