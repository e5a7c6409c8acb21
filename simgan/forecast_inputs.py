"""Checks of forecast requests: states, action plans, policy outputs and sizes, each failing with a
:class:`ForecastError` that says what was expected and what was given (used by :mod:`simgan.forecasting`)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from simgan.errors import SimganError
from simgan.world_model import noise_setting_problem


class ForecastError(SimganError, ValueError):
    """A forecast request that cannot be served (bad states, plan, policy output, sizes)."""


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ForecastError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_states(states: Any, obs_dim: int) -> np.ndarray:
    arr = np.asarray(states, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != obs_dim or len(arr) == 0:
        raise ForecastError(f"states: expected shape ({obs_dim},) or (B, {obs_dim}), got {np.shape(states)}")
    if not np.isfinite(arr).all():
        raise ForecastError("states: expected finite values, got NaN or inf")
    return arr


def check_plan(actions: Any, batch: int, horizon: int, space: gym.Space) -> np.ndarray:
    discrete = isinstance(space, gym.spaces.Discrete)
    per_step = () if discrete else tuple(space.shape)
    arr = np.asarray(actions)
    shared = (horizon, *per_step)
    if arr.shape == shared:
        arr = np.broadcast_to(arr, (batch, *shared))
    if arr.shape != (batch, *shared):
        raise ForecastError(
            f"actions: expected shape {shared} or {(batch, *shared)}, got {np.shape(actions)}"
        )
    return check_actions(arr, space, "actions")


def check_policy_output(action: Any, rows: int, space: gym.Space) -> np.ndarray:
    per_step = () if isinstance(space, gym.spaces.Discrete) else tuple(space.shape)
    arr = np.asarray(action)
    if arr.shape != (rows, *per_step):
        raise ForecastError(f"policy returned actions of shape {arr.shape}, expected {(rows, *per_step)}")
    return check_actions(arr, space, "policy actions")


def check_actions(arr: np.ndarray, space: gym.Space, what: str) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        if not np.issubdtype(arr.dtype, np.integer):
            raise ForecastError(f"{what}: expected integer actions for {space}, got dtype {arr.dtype}")
        lo, hi = int(space.start), int(space.start + space.n - 1)
        if arr.min() < lo or arr.max() > hi:
            raise ForecastError(f"{what}: expected values in [{lo}, {hi}], got [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int64)
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise ForecastError(f"{what}: expected finite values, got NaN or inf")
    if (arr < space.low - 1e-6).any() or (arr > space.high + 1e-6).any():
        raise ForecastError(
            f"{what}: expected values within the action bounds [{space.low.tolist()}, {space.high.tolist()}], "
            f"got range [{arr.min():.4g}, {arr.max():.4g}]"
        )
    return arr


def check_correlation(rho: Any) -> float:
    if problem := noise_setting_problem("noise_correlation", rho):
        raise ForecastError(problem)
    return float(rho)


def check_spread(spread: Any, model: Any) -> float:
    """A forecast's noise_spread: a number in (0, MAX_NOISE_SPREAD], and other than 1 only for a model that
    offers it (one with a ``noise_spread`` attribute; see :mod:`simgan.world_model`)."""
    if problem := noise_setting_problem("noise_spread", spread):
        raise ForecastError(problem)
    if float(spread) != 1.0 and not hasattr(model, "noise_spread"):
        raise ForecastError(
            f"noise_spread: expected 1 for a {type(model).__name__}, which takes no spread (a model with a "
            f"noise_spread attribute does), got {spread!r}"
        )
    return float(spread)


def chunk_rows(max_memory: int, horizon: int, obs_dim: int, act_shape: tuple, noise_dim: int) -> int:
    """Branches advanced per model step so that a chunk's working set stays within ``max_memory`` bytes."""
    if isinstance(max_memory, bool) or not isinstance(max_memory, (int, np.integer)) or max_memory <= 0:
        raise ForecastError(f"max_memory: expected a positive number of bytes, got {max_memory!r}")
    # Working set per row and step: model activations dominate (a few KB per row for 256-wide MLPs).
    act_dim = int(np.prod(act_shape)) if act_shape else 1
    per_row = 4 * (8 * obs_dim + 2 * act_dim + noise_dim + 4 * 256 + 8)
    return max(1, min(1 << 20, int(max_memory // per_row)))
