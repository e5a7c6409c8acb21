"""Learned-env work split over Ray actors: one module-level task per shard, results gathered in shard order.

    rollouts = simgan.shards.sharded_rollouts("runs/pendulum-gan", num_shards=2, envs_per_shard=512, horizon=50,
                                              policy=lambda obs: -obs[:, :1])

:func:`run_shards` runs one module-level task per shard (each builds its env / model / agent from paths inside its
actor) and returns the results in shard order; ``workers=False`` runs the same tasks one after another in this
process, without Ray. :func:`sharded_rollouts` steps ``SimVectorEnv`` shards; :func:`sharded_forecast` splits the
futures of :func:`simgan.forecast` (``simgan forecast --shards S``); ``simgan agent eval --shards S`` splits the
episodes of ``agents.evaluate_policy`` (its task lives in :mod:`simgan.cli.agent`: the library never imports
``agents``). Data-parallel training is the other Ray module, :mod:`simgan.distributed`.

``ray.remote`` wiring lives here, in :mod:`simgan.distributed` and in :mod:`simgan.collection` only.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from simgan.collection import connect_ray
from simgan.errors import SimganError

# ---------------------------------------------------------------------------------------------------------------
# Running one task per shard
# ---------------------------------------------------------------------------------------------------------------


class ShardError(SimganError):
    """A shard's Ray actor died before it returned its result."""


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` items in ``parts`` contiguous shares that differ by at most one, the larger ones first."""
    return [total // parts + (k < total % parts) for k in range(parts)]


class _ShardRunner:
    """A Ray actor that runs one shard's task: a module-level function, so Ray ships it by reference."""

    def run(self, task: Callable[..., Any], kwargs: dict[str, Any]) -> Any:
        return task(**kwargs)


def run_shards(
    task: Callable[..., Any],
    shard_kwargs: list[dict[str, Any]],
    *,
    workers: bool = True,
    address: str | None = None,
    gpus_per_shard: float = 0.0,
) -> list[Any]:
    """Run ``task(**shard_kwargs[k])`` for every shard k, one Ray actor each; results in shard order.

    The task builds what it needs (env, model, agent) inside its actor from paths and plain values in its
    kwargs: no torch module crosses Ray. A task's exception is raised here as itself (same type and message as in
    one process); an actor that dies raises :class:`ShardError`.

    Args:
        task: a module-level function (importable on every node).
        shard_kwargs: one kwargs dict per shard.
        workers: run the shards as Ray actors (else one after another in this process, no Ray).
        address: Ray cluster (else ``RAY_ADDRESS``, else an embedded local cluster).
        gpus_per_shard: GPUs each actor reserves (1.0: one shard per GPU; 0: Ray hides the GPUs from it).
    """
    if not shard_kwargs:
        raise ValueError("shard_kwargs: expected at least one shard, got none")
    if not workers:
        return [task(**kwargs) for kwargs in shard_kwargs]
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    started = connect_ray(address)
    try:
        resources = ray.cluster_resources()
        # every actor must fit at once: each holds its resources until all results are in
        gpus = float(resources.get("GPU", 0))
        if gpus < gpus_per_shard * len(shard_kwargs):
            raise ShardError(
                f"{len(shard_kwargs)} shards x {gpus_per_shard:g} GPU: expected a cluster with at least "
                f"{gpus_per_shard * len(shard_kwargs):g} GPUs, got {gpus:g}"
            )
        cpus = min(1.0, float(resources.get("CPU", 1.0)) / len(shard_kwargs))
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus_per_shard)(_ShardRunner)
        actors = [remote.remote() for _ in shard_kwargs]
        try:
            refs = [actor.run.remote(task, kwargs) for actor, kwargs in zip(actors, shard_kwargs)]
            results = []
            for k, ref in enumerate(refs):
                try:
                    results.append(ray.get(ref))
                except RayTaskError as exc:
                    cause = exc.cause if isinstance(exc.cause, Exception) else exc
                    raise cause from None
                except RayActorError as exc:
                    lines = [line for line in str(exc).splitlines() if line.strip()]
                    raise ShardError(
                        f"shard {k} of {len(refs)}: its Ray actor died ({lines[0] if lines else 'no cause given'})"
                    ) from None
        finally:
            for actor in actors:
                ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
    return results


# ---------------------------------------------------------------------------------------------------------------
# Learned-env rollouts
# ---------------------------------------------------------------------------------------------------------------

ROLLOUT_KEYS = ("obs", "actions", "rewards", "terminated", "truncated")


class SimRolloutShard:
    """One shard: a :class:`simgan.SimVectorEnv` of ``num_envs`` sub-envs over a model directory (a plain class;
    :func:`sharded_rollouts` runs it in-process or as a Ray actor)."""

    def __init__(self, model_dir: str, num_envs: int, seed: int, device: str, policy: Any = None) -> None:
        from simgan.sim_vector_env import SimVectorEnv

        self.envs = SimVectorEnv(model_dir, num_envs, device=device, seed=seed)
        self.seed, self.policy = seed, policy

    def rollout(self, horizon: int, actions: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``horizon`` steps from a reset seeded ``seed``; actions from ``actions`` (B x H x ...) or the policy.

        Returns:
            ``obs`` B x (H + 1) x O, ``actions`` B x H x ..., ``rewards``, ``terminated``, ``truncated`` B x H
            (the vector env's stream: a sub-env that ended restarts on the next step, gymnasium's next-step
            autoreset).
        """
        obs, _ = self.envs.reset(seed=self.seed)
        steps: dict[str, list[np.ndarray]] = {key: [] for key in ROLLOUT_KEYS}
        steps["obs"].append(obs)
        for t in range(horizon):
            action = actions[:, t] if actions is not None else np.asarray(self.policy(obs))
            obs, reward, terminated, truncated, _ = self.envs.step(action)
            for key, value in zip(ROLLOUT_KEYS, (obs, action, reward, terminated, truncated)):
                steps[key].append(np.asarray(value))
        return {key: np.stack(values, axis=1) for key, values in steps.items()}


def _rollout_shard(
    model_dir: str,
    num_envs: int,
    seed: int,
    device: str,
    policy: Any,
    horizon: int,
    actions: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """One shard's rollout (a module-level task for :func:`run_shards`)."""
    return SimRolloutShard(model_dir, num_envs, seed, device, policy).rollout(horizon, actions)


def sharded_rollouts(
    model_dir: str | Path,
    *,
    num_shards: int,
    envs_per_shard: int,
    horizon: int,
    policy: Any = None,
    actions: np.ndarray | None = None,
    seed: int = 0,
    workers: bool = True,
    address: str | None = None,
    device: str = "cpu",
    gpus_per_shard: float = 0.0,
) -> dict[str, np.ndarray]:
    """Roll out ``num_shards`` learned-env shards (Ray actors, one per GPU or CPU) and gather their rollouts.

    Shard ``k`` holds ``envs_per_shard`` sub-envs seeded ``seed + k``; its rows come ``k``-th in the result, so
    the result does not depend on where the shards ran (``workers=False`` runs them one after another here).

    Args:
        model_dir: a model directory every node sees.
        num_shards, envs_per_shard, horizon: S, B, H.
        policy: picklable callable ``obs (B x O) -> actions (B x ...)``; or
        actions: open-loop actions, (S * B) x H x action shape.
        seed: base seed.
        workers: run the shards as Ray actors (else in this process, no Ray).
        address: Ray cluster (else ``RAY_ADDRESS``, else an embedded local cluster).
        device: where each shard simulates ("cpu", "cuda", "auto").
        gpus_per_shard: GPUs each actor reserves (1.0: one shard per GPU).

    Returns:
        As :meth:`SimRolloutShard.rollout`, with S * B rows.
    """
    for name, value in (("num_shards", num_shards), ("envs_per_shard", envs_per_shard), ("horizon", horizon)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if (policy is None) == (actions is None):
        raise ValueError(
            "policy / actions: expected exactly one of them, got " + ("both" if policy else "neither")
        )
    rows = num_shards * envs_per_shard
    if actions is not None:
        actions = np.asarray(actions)
        if actions.shape[:2] != (rows, horizon):
            raise ValueError(
                f"actions: expected shape ({rows}, {horizon}, ...) for {num_shards} shards x {envs_per_shard} "
                f"envs x horizon {horizon}, got {actions.shape}"
            )
    parts = [
        None if actions is None else actions[k * envs_per_shard : (k + 1) * envs_per_shard]
        for k in range(num_shards)
    ]
    shard_kwargs = [
        {
            "model_dir": str(model_dir),
            "num_envs": envs_per_shard,
            "seed": seed + k,
            "device": device,
            "policy": policy,
            "horizon": horizon,
            "actions": part,
        }
        for k, part in enumerate(parts)
    ]
    results = run_shards(
        _rollout_shard, shard_kwargs, workers=workers, address=address, gpus_per_shard=gpus_per_shard
    )
    return {key: np.concatenate([r[key] for r in results]) for key in ROLLOUT_KEYS}


# ---------------------------------------------------------------------------------------------------------------
# Forecasting shards
# ---------------------------------------------------------------------------------------------------------------


def sharded_forecast(
    model_dir: str | Path,
    states: np.ndarray,
    *,
    num_shards: int,
    horizon: int,
    num_samples: int,
    policy: Callable[[Any, int], Callable[[np.ndarray], np.ndarray]] | None = None,
    seed: int = 0,
    noise_correlation: float | None = None,
    noise_spread: float | None = None,
    compute_realism: bool = True,
    max_memory: int | None = None,
    device: str = "cpu",
    workers: bool = True,
    address: str | None = None,
    gpus_per_shard: float = 0.0,
) -> Any:
    """:func:`simgan.forecast` with the ``num_samples`` futures of each start state split over Ray actors.

    Shard k loads the model from ``model_dir`` and runs ``forecast`` on its share (``split_evenly``: the first
    ``num_samples % num_shards`` shards take one more) with ``seed + k``; the shares are joined in shard order
    along the sample axis (:meth:`Forecast.concatenate`). So shard 0's futures are those of an in-process
    ``forecast`` with ``seed`` and shard 0's sample count, and ``num_shards=1`` equals the in-process forecast.

    Args:
        model_dir: a model directory every node sees.
        states: obs_dim or B x obs_dim start states.
        num_shards, horizon, num_samples: S, H and N (all shards together; N >= S).
        policy: None (uniform random actions, seeded), or a picklable factory ``(model, k) -> policy`` that shard
            k calls with its loaded model (e.g. ``functools.partial`` of a function that loads a saved agent there
            and gives its action sampling a stream of its own for k > 0).
        seed, noise_correlation, noise_spread, compute_realism, max_memory: as for :func:`simgan.forecast`, per
            shard (``max_memory``: bytes; ``noise_correlation`` / ``noise_spread`` None: the stored model's
            calibrated values).
        device: where each shard simulates.
        workers, address, gpus_per_shard: as for :func:`run_shards`.

    Returns:
        A :class:`simgan.forecasting.Forecast` with N futures per start state.
    """
    from simgan.forecasting import DEFAULT_MAX_MEMORY, Forecast, ForecastError

    for name, value in (("num_shards", num_shards), ("num_samples", num_samples)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ForecastError(f"{name}: expected a positive integer, got {value!r}")
    if num_samples < num_shards:
        raise ForecastError(
            f"num_samples: expected at least one future per shard ({num_shards}), got {num_samples}"
        )
    common = {
        "model_dir": str(Path(model_dir).resolve()),  # absolute: actors may start elsewhere
        "states": np.asarray(states, np.float32),
        "policy": policy,
        "horizon": horizon,
        "noise_correlation": noise_correlation,
        "noise_spread": noise_spread,
        "compute_realism": compute_realism,
        "max_memory": DEFAULT_MAX_MEMORY if max_memory is None else max_memory,
        "device": device,
    }
    shard_kwargs = [
        {**common, "num_samples": count, "seed": seed + k, "shard": k}
        for k, count in enumerate(split_evenly(num_samples, num_shards))
    ]
    parts = run_shards(
        _forecast_shard, shard_kwargs, workers=workers, address=address, gpus_per_shard=gpus_per_shard
    )
    return Forecast.concatenate(parts)


def _forecast_shard(
    model_dir: str,
    states: np.ndarray,
    policy: Callable[[Any, int], Callable[[np.ndarray], np.ndarray]] | None,
    shard: int,
    **forecast_kwargs: Any,
) -> Any:
    """One forecasting shard: the model (and the policy, if any) built here, then the one ``forecast``."""
    from simgan.checkpoint import load_model
    from simgan.forecasting import forecast

    device = forecast_kwargs.pop("device")
    model = load_model(model_dir, device=device)
    return forecast(model, states, policy=None if policy is None else policy(model, shard), **forecast_kwargs)
