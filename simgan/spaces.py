"""Gymnasium spaces <-> JSON-able dicts, and the checks for the spaces simgan supports.

Datasets and checkpoints store spaces as plain JSON so they can be rebuilt without pickle.
Supported: Box observations; Box or Discrete actions.
"""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np


class UnsupportedSpaceError(ValueError):
    """A space simgan cannot model (e.g. Dict observations, MultiDiscrete actions)."""


def _encode_bound(values: np.ndarray) -> list:
    # JSON has no infinity: write non-finite bounds as the strings "inf" / "-inf".
    return [
        v if math.isfinite(v) else ("inf" if v > 0 else "-inf")
        for v in values.astype(np.float64).ravel().tolist()
    ]


def _decode_bound(values: list, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    return np.array([float(v) for v in values], dtype=np.float64).reshape(shape).astype(dtype)


def space_to_dict(space: gym.Space) -> dict[str, Any]:
    """Serialise a Box or Discrete space to a JSON-able dict (see :func:`space_from_dict`)."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _encode_bound(space.low),
            "high": _encode_bound(space.high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise UnsupportedSpaceError(f"expected a Box or Discrete space, got {type(space).__name__}: {space}")


def space_from_dict(spec: dict[str, Any]) -> gym.Space:
    """Rebuild a gymnasium space from :func:`space_to_dict`'s output."""
    kind = spec.get("type")
    if kind == "Box":
        shape = tuple(spec["shape"])
        dtype = np.dtype(spec["dtype"])
        return gym.spaces.Box(
            low=_decode_bound(spec["low"], shape, dtype),
            high=_decode_bound(spec["high"], shape, dtype),
            dtype=dtype,
        )
    if kind == "Discrete":
        return gym.spaces.Discrete(int(spec["n"]), start=int(spec.get("start", 0)))
    raise UnsupportedSpaceError(f"expected a serialised space of type 'Box' or 'Discrete', got {kind!r}")


def check_supported(observation_space: gym.Space, action_space: gym.Space, *, env_id: str = "env") -> None:
    """Raise :class:`UnsupportedSpaceError` unless observations are a flat Box and actions a Box or Discrete."""
    if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
        raise UnsupportedSpaceError(
            f"{env_id}: expected a 1-D Box observation space, got {observation_space}"
            " (flatten it with gymnasium.wrappers.FlattenObservation)"
        )
    if isinstance(action_space, gym.spaces.Box):
        if len(action_space.shape) != 1:
            raise UnsupportedSpaceError(f"{env_id}: expected a 1-D Box action space, got {action_space}")
        if not (np.all(np.isfinite(action_space.low)) and np.all(np.isfinite(action_space.high))):
            raise UnsupportedSpaceError(f"{env_id}: expected a bounded Box action space, got {action_space}")
    elif not isinstance(action_space, gym.spaces.Discrete):
        raise UnsupportedSpaceError(f"{env_id}: expected a Box or Discrete action space, got {action_space}")


def action_dim(action_space: gym.Space) -> int:
    """Width of the model's action input: act_dim for Box, n (one-hot) for Discrete."""
    if isinstance(action_space, gym.spaces.Discrete):
        return int(action_space.n)
    return math.prod(action_space.shape)  # not np.prod: torch.compile traces this (a learned env's step)
