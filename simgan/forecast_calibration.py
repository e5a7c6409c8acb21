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

:func:`calibrate_noise_correlation` picks rho from a grid: for each candidate it forecasts open-loop along
held-out episode windows (the episodes' own actions) and measures how often the real states fall inside the
10-90 % band; the candidate closest to 80 % wins. Training runs it on the validation episodes and stores rho
with the model (``model.noise_correlation``), so ``simgan.forecast`` uses it by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from simgan.forecasting import forecast
from simgan.metrics import episode_windows
from simgan.world_model import WorldModel

CANDIDATES = (0.0, 0.5, 0.9, 1.0)
TARGET_COVERAGE = 0.8


def band_coverage(
    model: WorldModel,
    batch: Any,
    rho: float,
    *,
    horizon: int = 15,
    windows: int = 32,
    samples: int = 64,
    seed: int = 0,
) -> float | None:
    """Share of real states (per step and dimension) inside the forecast's 10-90 % band along held-out windows.

    ``batch``: a :class:`simgan.data.TransitionBatch` of whole episodes (a dataset's validation split). Returns
    None when it holds no ``horizon``-step window.
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
        compute_realism=False,
    )
    low, high = result.quantiles((0.1, 0.9))  # W x H x obs_dim each
    real = batch.next_obs[rows]  # W x H x obs_dim
    valid = np.isfinite(low) & np.isfinite(high)
    inside = (real >= low) & (real <= high) & valid
    return float(inside.sum() / max(int(valid.sum()), 1))


def calibrate_noise_correlation(
    model: WorldModel,
    batch: Any,
    *,
    candidates: Sequence[float] = CANDIDATES,
    horizon: int = 15,
    windows: int = 32,
    samples: int = 64,
    seed: int = 0,
) -> tuple[float, dict[str, float]]:
    """(rho, {str(candidate): coverage}): the candidate whose band coverage is closest to 80 % (ties: smaller rho).

    With no usable window (episodes shorter than ``horizon``) the answer is rho = 0 and an empty table.
    """
    coverages: dict[str, float] = {}
    for rho in sorted(float(c) for c in candidates):
        cover = band_coverage(model, batch, rho, horizon=horizon, windows=windows, samples=samples, seed=seed)
        if cover is None:
            return 0.0, {}
        coverages[str(rho)] = cover
    best = min(coverages, key=lambda k: (abs(coverages[k] - TARGET_COVERAGE), float(k)))
    return float(best), coverages


__all__ = ["CANDIDATES", "band_coverage", "calibrate_noise_correlation"]
