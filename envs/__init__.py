"""Environment construction and simgan's own benchmark environments.

``make_env(env_id, **kwargs)`` is how every part of simgan builds a real env: it registers simgan's envs first
(so ids like ``simgan/KickedPendulum-v0`` work in Ray worker processes too) and turns an unknown id into an
error with gymnasium's "did you mean" suggestion.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

_REGISTERED = False


def register_envs() -> None:
    """Register simgan's envs with gymnasium (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    _REGISTERED = True
    # Each entry: id -> "module:Class". Modules are imported only when the env is made.
    for env_id, entry_point, max_steps in ENV_SPECS:
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point, max_episode_steps=max_steps)


# (id, entry point, max_episode_steps). Benchmark envs add themselves here.
ENV_SPECS: list[tuple[str, str, int | None]] = [
    # Test-only: dies (os._exit) once at a chosen step, to prove collection survives worker crashes.
    ("simgan/CrashOnce-v0", "envs.testing:CrashOncePendulum", 200),
    ("simgan/KickedPendulum-v0", "envs.multimodal:KickedPendulum", 200),
    ("simgan/ForkingPointMass-v0", "envs.multimodal:ForkingPointMass", 100),
]


def make_env(env_id: str, env_kwargs: dict[str, Any] | None = None, **make_kwargs: Any) -> gym.Env:
    """``gymnasium.make`` with simgan's envs registered. Unknown ids raise ``gymnasium.error.Error``
    subclasses whose message includes gymnasium's "did you mean" suggestion."""
    register_envs()
    return gym.make(env_id, **(env_kwargs or {}), **make_kwargs)


def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of an id (raises gymnasium's NameNotFound / VersionNotFound with suggestions).

    An id ``"module:EnvName-v0"`` imports ``module`` first, as ``gymnasium.make`` does, so a user's env that
    registers itself when its module is imported works by that id everywhere (Ray workers import it too).
    """
    register_envs()
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:  # one line at the CLI, as an unknown id is
            raise gym.error.Error(
                f"{env_id}: expected an importable module before ':' that registers {name}, got {exc}"
            ) from exc
    return gym.spec(name)
