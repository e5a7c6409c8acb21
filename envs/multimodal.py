"""Stochastic benchmark envs whose next-state distribution is known and multimodal.

A Gaussian dynamics model puts one bump per (s, a) and therefore averages the modes of these envs; a
conditional generative model can sample each mode. Both envs can

* jump to any observation with ``set_state(obs)`` (the observation *is* the full state), and
* draw many true next states for one (s, a) at once with ``sample_next_states(obs, action, n, rng)``,

which the conditional fidelity metrics (:mod:`simgan.metrics`), the benchmark figures and forecast calibration
use. ``step`` and ``sample_next_states`` share one vectorised transition function, so they agree exactly.

``simgan/KickedPendulum-v0``
    Pendulum-v1's dynamics (same constants, reward and observation ``[cos th, sin th, thdot]``), plus a kick:
    each step adds ``+kick`` or ``-kick`` (probability ``kick_probability`` for ``+``) to the angular velocity
    before it is clipped to ``[-8, 8]``. Given (s, a) the next state takes exactly two values.

``simgan/ForkingPointMass-v0``
    A kinematic point mass in the plane, observation ``[x, y]``. The action (a 2-D velocity command in
    ``[-1, 1]^2``) moves it by ``move_scale * action``; then it forks: it is displaced by ``fork_distance`` in
    one of ``len(branch_probabilities)`` fixed directions (evenly spaced angles, the first pointing up), chosen
    with ``branch_probabilities``, plus small isotropic Gaussian jitter ``jitter``. Reward is
    ``-||pos|| - 0.1 ||action||^2`` at the current state (deterministic given (s, a)); the episode terminates
    when the mass leaves the square ``[-1, 1]^2`` (so termination is stochastic near the edge).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np


class MultimodalEnvError(ValueError):
    """Bad input to a multimodal env (wrong state or action shape, invalid parameters)."""


def _as_vector(value: Any, size: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.shape != (size,):
        raise MultimodalEnvError(f"{name}: expected {size} numbers, got shape {np.shape(value)}")
    if not np.all(np.isfinite(arr)):
        raise MultimodalEnvError(f"{name}: expected finite numbers, got {arr.tolist()}")
    return arr


# ---------------------------------------------------------------------------------------------------------------
# Kicked pendulum
# ---------------------------------------------------------------------------------------------------------------


class KickedPendulum(gym.Env):
    """Pendulum-v1 with a random +-``kick`` to the angular velocity every step (two modes per (s, a))."""

    metadata = {"render_modes": []}  # noqa: RUF012

    max_speed = 8.0
    max_torque = 2.0
    dt = 0.05
    g = 10.0
    m = 1.0
    length = 1.0

    def __init__(self, kick: float = 1.0, kick_probability: float = 0.5) -> None:
        if not kick > 0:
            raise MultimodalEnvError(f"kick: expected a positive number, got {kick}")
        if not 0.0 <= kick_probability <= 1.0:
            raise MultimodalEnvError(f"kick_probability: expected a value in [0, 1], got {kick_probability}")
        self.kick = float(kick)
        self.kick_probability = float(kick_probability)
        high = np.array([1.0, 1.0, self.max_speed], dtype=np.float32)
        self.observation_space = gym.spaces.Box(low=-high, high=high, dtype=np.float32)
        self.action_space = gym.spaces.Box(-self.max_torque, self.max_torque, shape=(1,), dtype=np.float32)
        self._th = 0.0
        self._thdot = 0.0

    # -- transition function, vectorised over rows --------------------------------------------------------------
    def _transition(
        self, th: np.ndarray, thdot: np.ndarray, u: np.ndarray, signs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(th, thdot, torque, kick sign +-1), all N -> (new th, new thdot, reward), all N."""
        u = np.clip(u, -self.max_torque, self.max_torque)
        angle = ((th + np.pi) % (2 * np.pi)) - np.pi
        reward = -(angle**2 + 0.1 * thdot**2 + 0.001 * u**2)
        accel = 3 * self.g / (2 * self.length) * np.sin(th) + 3.0 / (self.m * self.length**2) * u
        new_thdot = np.clip(thdot + accel * self.dt + signs * self.kick, -self.max_speed, self.max_speed)
        return th + new_thdot * self.dt, new_thdot, reward

    def _draw_signs(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return np.where(rng.random(n) < self.kick_probability, 1.0, -1.0)

    @staticmethod
    def _observe(th: np.ndarray, thdot: np.ndarray) -> np.ndarray:
        return np.stack([np.cos(th), np.sin(th), thdot], axis=-1).astype(np.float32)

    # -- gymnasium API ----------------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._th = float(self.np_random.uniform(-np.pi, np.pi))
        self._thdot = float(self.np_random.uniform(-1.0, 1.0))
        return self._get_obs(), {}

    def step(self, action):
        u = _as_vector(action, 1, "action")
        signs = self._draw_signs(1, self.np_random)
        th, thdot, reward = self._transition(np.array([self._th]), np.array([self._thdot]), u, signs)
        self._th, self._thdot = float(th[0]), float(thdot[0])
        return self._get_obs(), float(reward[0]), False, False, {"kick": float(signs[0] * self.kick)}

    def _get_obs(self) -> np.ndarray:
        return self._observe(np.array(self._th), np.array(self._thdot))

    # -- state access for conditional metrics -------------------------------------------------------------------------
    def set_state(self, obs: Sequence[float] | np.ndarray) -> None:
        """Jump to the state behind observation ``[cos th, sin th, thdot]``."""
        cos_th, sin_th, thdot = _as_vector(obs, 3, "obs")
        self._th = float(np.arctan2(sin_th, cos_th))
        self._thdot = float(np.clip(thdot, -self.max_speed, self.max_speed))

    def sample_next_states(
        self,
        obs: Sequence[float] | np.ndarray,
        action: Sequence[float] | np.ndarray,
        n: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """``n`` independent true next observations (n x 3 float32) for one (obs, action)."""
        cos_th, sin_th, thdot = _as_vector(obs, 3, "obs")
        u = _as_vector(action, 1, "action")
        th = np.full(n, np.arctan2(sin_th, cos_th))
        new_th, new_thdot, _ = self._transition(
            th, np.full(n, thdot), np.full(n, u[0]), self._draw_signs(n, rng)
        )
        return self._observe(new_th, new_thdot)

    def modes(self, obs: Sequence[float] | np.ndarray, action: Sequence[float] | np.ndarray) -> np.ndarray:
        """The two possible next observations (kick +, kick -), 2 x 3 float32."""
        cos_th, sin_th, thdot = _as_vector(obs, 3, "obs")
        u = _as_vector(action, 1, "action")
        th = np.full(2, np.arctan2(sin_th, cos_th))
        new_th, new_thdot, _ = self._transition(
            th, np.full(2, thdot), np.full(2, u[0]), np.array([1.0, -1.0])
        )
        return self._observe(new_th, new_thdot)


# ---------------------------------------------------------------------------------------------------------------
# Forking point mass
# ---------------------------------------------------------------------------------------------------------------


class ForkingPointMass(gym.Env):
    """A 2-D point mass whose every step forks into one of a few fixed directions (multimodal next state)."""

    metadata = {"render_modes": []}  # noqa: RUF012

    bound = 1.0  # the episode terminates when |x| or |y| exceeds this
    start_range = 0.5  # initial position uniform in [-start_range, start_range]^2

    def __init__(
        self,
        branch_probabilities: Sequence[float] = (0.5, 0.3, 0.2),
        fork_distance: float = 0.15,
        move_scale: float = 0.1,
        jitter: float = 0.01,
    ) -> None:
        probs = np.asarray(branch_probabilities, dtype=np.float64)
        if probs.ndim != 1 or len(probs) < 2 or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
            raise MultimodalEnvError(
                f"branch_probabilities: expected >= 2 non-negative numbers summing to 1, got {list(probs)}"
            )
        for name, value in (("fork_distance", fork_distance), ("move_scale", move_scale)):
            if not value > 0:
                raise MultimodalEnvError(f"{name}: expected a positive number, got {value}")
        if not jitter >= 0:
            raise MultimodalEnvError(f"jitter: expected a non-negative number, got {jitter}")
        self.branch_probabilities = probs
        self.fork_distance = float(fork_distance)
        self.move_scale = float(move_scale)
        self.jitter = float(jitter)
        angles = np.pi / 2 + 2 * np.pi * np.arange(len(probs)) / len(probs)
        self.directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)  # branches x 2
        # Positions stay within bound + one step, so this box always contains the observation.
        self.observation_space = gym.spaces.Box(-2.0, 2.0, shape=(2,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._pos = np.zeros(2)

    def _transition(
        self, pos: np.ndarray, action: np.ndarray, branch: np.ndarray, jitter: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(pos N x 2, action N x 2, branch index N, standard-normal jitter N x 2) -> (next pos, reward, done)."""
        action = np.clip(action, -1.0, 1.0)
        reward = -np.linalg.norm(pos, axis=1) - 0.1 * np.sum(action**2, axis=1)
        moved = (
            pos
            + self.move_scale * action
            + self.fork_distance * self.directions[branch]
            + self.jitter * jitter
        )
        moved = np.clip(moved, self.observation_space.low, self.observation_space.high)
        terminated = np.any(np.abs(moved) > self.bound, axis=1)
        return moved, reward, terminated

    def _draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        branch = rng.choice(len(self.branch_probabilities), size=n, p=self.branch_probabilities)
        return branch, rng.standard_normal((n, 2))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-self.start_range, self.start_range, size=2)
        return self._pos.astype(np.float32), {}

    def step(self, action):
        act = _as_vector(action, 2, "action")
        branch, jitter = self._draw(1, self.np_random)
        pos, reward, terminated = self._transition(self._pos[None], act[None], branch, jitter)
        self._pos = pos[0]
        return (
            self._pos.astype(np.float32),
            float(reward[0]),
            bool(terminated[0]),
            False,
            {"branch": int(branch[0])},
        )

    def set_state(self, obs: Sequence[float] | np.ndarray) -> None:
        """Jump to position ``obs = [x, y]``."""
        self._pos = _as_vector(obs, 2, "obs")

    def sample_next_states(
        self,
        obs: Sequence[float] | np.ndarray,
        action: Sequence[float] | np.ndarray,
        n: int,
        rng: np.random.Generator,
    ) -> np.ndarray:
        """``n`` independent true next observations (n x 2 float32) for one (obs, action)."""
        pos = np.broadcast_to(_as_vector(obs, 2, "obs"), (n, 2))
        act = np.broadcast_to(_as_vector(action, 2, "action"), (n, 2))
        branch, jitter = self._draw(n, rng)
        return self._transition(pos, act, branch, jitter)[0].astype(np.float32)

    def modes(self, obs: Sequence[float] | np.ndarray, action: Sequence[float] | np.ndarray) -> np.ndarray:
        """The centre of each branch's next position (branches x 2 float32), jitter left out."""
        k = len(self.branch_probabilities)
        pos = np.broadcast_to(_as_vector(obs, 2, "obs"), (k, 2))
        act = np.broadcast_to(_as_vector(action, 2, "action"), (k, 2))
        return self._transition(pos, act, np.arange(k), np.zeros((k, 2)))[0].astype(np.float32)
