"""Saved policies as the CLI loads them: an agent directory (``agents.load_agent``) or a CEM-MPC planner.

A planner has no weights of its own: it is its settings and the world model it plans in. ``simgan loop --algo
mpc`` saves one per iteration as ``mpc.json``::

    {"format": 1, "algo": "mpc", "model": "../model",
     "planner": {"horizon": 20, "population": 100, "particles": 1, "iterations": 5, "elites": 10, ...}}

``model`` is the model directory relative to the planner's own directory, so a run directory can be moved or read
from anywhere. A planner that plans with its env's known reward or termination (``simgan loop --known-reward``)
also stores ``"env": {"reward_fn": "known"}`` (and/or ``termination_fn``; ``"reward_values": "data"`` for
``--round-reward``). :func:`load_policy` rebuilds either
kind, spaces checked, so every command that takes a saved policy (``simgan collect``, ``forecast`` and ``simulate
--policy``, ``simgan agent eval --agent``, the loop's collection and resume) takes a planner too.

Here and not in the library: the library never imports ``agents`` (see ``ARCHITECTURE.md``).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

from simgan.errors import SimganError

MPC_JSON = "mpc.json"
PLANNER_FORMAT = 1
PLANNER_KEYS = (
    "horizon",
    "population",
    "particles",
    "iterations",
    "elites",
    "alpha",
    "init_std",
    "termination_penalty",
    "seed",
)


class PlannerLoadError(SimganError):
    """A planner directory whose ``mpc.json`` is unreadable, of an unknown format, or names no model."""


def planner_settings(horizon: int, population: int, seed: int, **more: Any) -> dict[str, Any]:
    """Every setting of an ``agents.MPCPolicy``: the given ones over its defaults, except elites: a tenth of the
    population. A saved planner stores them all, so it plans the same if those defaults change."""
    from agents import MPCPolicy

    parameters = inspect.signature(MPCPolicy.__init__).parameters
    defaults = {key: parameters[key].default for key in PLANNER_KEYS}
    settings = {
        **defaults,
        "elites": max(1, population // 10),
        "horizon": horizon,
        "population": population,
        "seed": seed,
        **more,
    }
    unknown = sorted(set(settings) - set(PLANNER_KEYS))
    if unknown:
        raise PlannerLoadError(f"planner settings: expected keys among {list(PLANNER_KEYS)}, got {unknown}")
    return settings


def build_planner(
    model: Any, settings: dict[str, Any], device: Any = "cpu", sim_kwargs: dict[str, str] | None = None
) -> Any:
    """An ``agents.MPCPolicy`` planning in ``model`` (a loaded world model or a model directory) through a learned
    env of population x particles sub-envs (torch mode: the plan's tensors never leave the device). ``sim_kwargs``:
    the learned env's ``reward_fn`` / ``termination_fn`` ("known") and ``reward_values`` ("data"), if any."""
    from agents import MPCPolicy
    from simgan.sim_vector_env import SimVectorEnv

    env = SimVectorEnv(
        model,
        settings["population"] * settings["particles"],
        device=device,
        compute_realism=False,
        seed=settings["seed"],
        torch_mode=True,
        **(sim_kwargs or {}),
    )
    return MPCPolicy(env, env.single_action_space, **settings)


def save_planner(
    directory: str | os.PathLike,
    model_dir: str | os.PathLike,
    settings: dict[str, Any],
    sim_kwargs: dict[str, str] | None = None,
) -> None:
    """Write ``directory/mpc.json`` (atomically): the planner's settings, its model (relative to ``directory``)
    and, if any, its learned env's known functions and reward rounding."""
    from simgan.fsutil import atomic_write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = os.path.relpath(Path(model_dir).resolve(), directory.resolve())
    stored = {"format": PLANNER_FORMAT, "algo": "mpc", "model": model, "planner": dict(settings)}
    if sim_kwargs:
        stored["env"] = dict(sim_kwargs)
    atomic_write_json(directory / MPC_JSON, stored)


def is_planner(directory: str | os.PathLike) -> bool:
    return (Path(directory) / MPC_JSON).is_file()


def read_planner(directory: str | os.PathLike) -> tuple[Path, dict[str, Any], dict[str, str]]:
    """(model directory, settings, learned-env keyword arguments) of a saved planner.

    Files written before the format had a number (``model_dir``: a path as given when it was saved, and three
    settings) are read too.
    """
    path = Path(directory) / MPC_JSON
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PlannerLoadError(
            f"{path}: expected a planner written by `simgan loop --algo mpc` ({exc})"
        ) from exc
    if (
        not isinstance(stored, dict)
        or stored.get("algo") != "mpc"
        or not isinstance(stored.get("planner"), dict)
    ):
        raise PlannerLoadError(f"{path}: expected a JSON object with algo 'mpc' and planner settings")
    if "format" not in stored:  # before the format had a number
        model = Path(str(stored.get("model_dir")))
        try:
            settings = planner_settings(**stored["planner"])
        except TypeError as exc:  # horizon, population or seed missing
            raise PlannerLoadError(f"{path}: planner settings incomplete ({exc})") from exc
    elif stored["format"] == PLANNER_FORMAT:
        model, settings = Path(directory) / str(stored.get("model")), dict(stored["planner"])
        missing = sorted(set(PLANNER_KEYS) - set(settings))
        if missing:
            raise PlannerLoadError(f"{path}: planner settings lack {missing}")
        planner_settings(**settings)  # refuses unknown keys
    else:
        raise PlannerLoadError(f"{path}: expected planner format {PLANNER_FORMAT}, got {stored['format']!r}")
    from simgan.sim_batch import LEARNED_ENV_SETTINGS

    env = stored.get("env", {})
    if not isinstance(env, dict) or any(LEARNED_ENV_SETTINGS.get(k) != v for k, v in env.items()):
        raise PlannerLoadError(f"{path}: expected env settings among {LEARNED_ENV_SETTINGS}, got {env!r}")
    if not (model / "model.json").is_file():
        raise PlannerLoadError(
            f"{path}: expected the planner's model directory at {model}, found no model there"
        )
    return model, settings, env


def load_planner(
    directory: str | os.PathLike,
    observation_space: Any = None,
    action_space: Any = None,
    device: Any = "cpu",
) -> Any:
    """The saved planner in ``directory`` as an ``agents.MPCPolicy`` over its model; the given spaces must be the
    model's (``agents.SpaceMismatchError`` otherwise, as for an agent)."""
    from agents.serialization import check_spaces
    from simgan.checkpoint import load_model

    model_dir, settings, sim_kwargs = read_planner(directory)
    model = load_model(model_dir, device=device)
    what = f"{directory}: the planner's model ({model_dir})"
    check_spaces(model.info.observation_space, model.info.action_space, observation_space, action_space, what)
    return build_planner(model, settings, device=device, sim_kwargs=sim_kwargs)


def load_policy(
    directory: str | os.PathLike,
    observation_space: Any = None,
    action_space: Any = None,
    device: Any = "cpu",
) -> Any:
    """A saved agent (``agent.json``) or a saved planner (``mpc.json``), spaces checked."""
    if is_planner(directory):
        return load_planner(directory, observation_space, action_space, device=device)
    from agents import load_agent

    return load_agent(directory, observation_space, action_space, device=device)
