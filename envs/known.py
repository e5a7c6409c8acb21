"""Known reward and termination functions of standard envs, for learned envs that need not learn them.

PETS-style model-based RL (and mbrl-lib's ``reward_fns`` / ``termination_fns``) hands the planner the task's
own reward and termination and learns only the dynamics. A learned env can do the same:
``SimEnv(model, reward_fn="known", termination_fn="known")`` looks the model's source env up here.

Each function is batched, torch in and torch out, with the signature of ``SimEnv``'s ``reward_fn``:
``(obs B x D, action, next_obs B x D) -> B`` (floats for a reward, bools for a termination); actions are
B x act_dim floats for a Box space and B longs for a Discrete one. Every function here is the env's own
formula rewritten over observations, and ``tests/test_known.py`` checks it against the real env step for step.

Only envs whose reward and termination are functions of (obs, action, next_obs) are listed: a MuJoCo
locomotion reward needs the body's x position, which its observation leaves out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

TransitionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class UnknownFunctionsError(ValueError):
    """No known reward / termination for this env id, or its env kwargs change them."""


@dataclass(frozen=True)
class KnownFunctions:
    """The reward and termination of one env id. ``neutral_kwargs``: env kwargs that change neither."""

    reward: TransitionFn
    termination: TransitionFn
    neutral_kwargs: frozenset[str] = frozenset()


def _never(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return torch.zeros(next_obs.shape[0], dtype=torch.bool, device=next_obs.device)


def _pendulum_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    # Pendulum-v1 pays for the state the step starts from: -(theta^2 + 0.1 thdot^2 + 0.001 u^2), u clipped
    # to the max torque 2, theta normalised to [-pi, pi) (atan2 already is, up to its end point).
    theta = torch.atan2(obs[:, 1], obs[:, 0])
    torque = action.reshape(obs.shape[0], -1)[:, 0].clamp(-2.0, 2.0)
    return -(theta**2 + 0.1 * obs[:, 2] ** 2 + 0.001 * torque**2)


_CARTPOLE_X = 2.4
_CARTPOLE_THETA = 12 * 2 * math.pi / 360


def _cartpole_termination(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return (next_obs[:, 0].abs() > _CARTPOLE_X) | (next_obs[:, 2].abs() > _CARTPOLE_THETA)


def _one(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    # CartPole-v1 and InvertedPendulum-v4 pay 1 for every step, the one that ends the episode included.
    return torch.ones(next_obs.shape[0], dtype=torch.float32, device=next_obs.device)


def _acrobot_termination(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    # -cos(theta1) - cos(theta1 + theta2) > 1: the tip above the bar; obs = cos t1, sin t1, cos t2, sin t2, ...
    cos1, sin1, cos2, sin2 = next_obs[:, 0], next_obs[:, 1], next_obs[:, 2], next_obs[:, 3]
    return -cos1 - (cos2 * cos1 - sin2 * sin1) > 1.0


def _acrobot_reward(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return torch.where(_acrobot_termination(obs, action, next_obs), 0.0, -1.0)


def _mountain_car_termination(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    return (next_obs[:, 0] >= 0.5) & (next_obs[:, 1] >= 0.0)


def _minus_one(obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor) -> torch.Tensor:
    return torch.full((next_obs.shape[0],), -1.0, device=next_obs.device)


def _continuous_mountain_car_termination(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    return (next_obs[:, 0] >= 0.45) & (next_obs[:, 1] >= 0.0)


def _continuous_mountain_car_reward(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    # 100 for reaching the flag, minus 0.1 u^2 every step (u as given, not clipped)
    goal = _continuous_mountain_car_termination(obs, action, next_obs)
    power = action.reshape(obs.shape[0], -1)[:, 0]
    return torch.where(goal, 100.0, 0.0) - 0.1 * power**2


def _inverted_pendulum_termination(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    return ~torch.isfinite(next_obs).all(dim=1) | (next_obs[:, 1].abs() > 0.2)


def _inverted_pendulum_v5_reward(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    # v5 pays 1 while the pole is up and 0 for the step that ends the episode (v4 paid 1 for that one too)
    return (~_inverted_pendulum_termination(obs, action, next_obs)).to(torch.float32)


def _forking_point_mass_reward(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    # pays for the position the step starts from and the action, clipped to [-1, 1]
    return -torch.linalg.vector_norm(obs, dim=1) - 0.1 * (action.clamp(-1.0, 1.0) ** 2).sum(dim=1)


def _forking_point_mass_termination(
    obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor
) -> torch.Tensor:
    return (next_obs.abs() > 1.0).any(dim=1)


_MUJOCO_NEUTRAL = frozenset(
    {"reset_noise_scale", "render_mode", "width", "height", "camera_id", "camera_name"}
)

KNOWN: dict[str, KnownFunctions] = {
    "Pendulum-v1": KnownFunctions(_pendulum_reward, _never, frozenset({"g", "render_mode"})),
    "CartPole-v1": KnownFunctions(_one, _cartpole_termination, frozenset({"render_mode"})),
    "Acrobot-v1": KnownFunctions(_acrobot_reward, _acrobot_termination, frozenset({"render_mode"})),
    "MountainCar-v0": KnownFunctions(_minus_one, _mountain_car_termination, frozenset({"render_mode"})),
    "MountainCarContinuous-v0": KnownFunctions(
        _continuous_mountain_car_reward, _continuous_mountain_car_termination, frozenset({"render_mode"})
    ),
    "InvertedPendulum-v4": KnownFunctions(_one, _inverted_pendulum_termination, _MUJOCO_NEUTRAL),
    "InvertedPendulum-v5": KnownFunctions(
        _inverted_pendulum_v5_reward, _inverted_pendulum_termination, _MUJOCO_NEUTRAL
    ),
    # simgan's own benchmark envs (envs/multimodal.py): their kwargs shape the dynamics' modes only
    "simgan/KickedPendulum-v0": KnownFunctions(
        _pendulum_reward, _never, frozenset({"kick", "kick_probability"})
    ),
    "simgan/ForkingPointMass-v0": KnownFunctions(
        _forking_point_mass_reward,
        _forking_point_mass_termination,
        frozenset({"branch_probabilities", "fork_distance", "move_scale", "jitter"}),
    ),
}


def known_functions(env_id: str, env_kwargs: Mapping[str, Any] | None = None) -> KnownFunctions:
    """The known reward and termination of ``env_id`` made with ``env_kwargs``.

    Raises :class:`UnknownFunctionsError` for an id not listed in :data:`KNOWN`, or for env kwargs that may
    change the reward or termination (CartPole's ``sutton_barto_reward``, a MuJoCo ``xml_file``, ...).
    """
    if env_id not in KNOWN:
        raise UnknownFunctionsError(
            f"known reward/termination: expected one of the env ids {sorted(KNOWN)}, got {env_id!r} "
            "(use the learned reward and termination, or pass your own functions)"
        )
    functions = KNOWN[env_id]
    changed = sorted(set(env_kwargs or {}) - functions.neutral_kwargs)
    if changed:
        raise UnknownFunctionsError(
            f"known reward/termination of {env_id}: expected env kwargs among "
            f"{sorted(functions.neutral_kwargs) or 'none'} (they change neither), got {changed}"
        )
    return functions
