"""Ray at the edge of training and simulation: data-parallel training on Ray Train, sharded learned-env work.

    simgan.distributed.train_distributed("data/pendulum", "runs/pendulum", TrainConfig(), num_workers=4)

Training runs the one loop of :func:`simgan.training.train` in ``num_workers`` Ray Train workers
(``TorchTrainer``; gloo on CPU, NCCL on GPU). Per-worker data path: every worker reads the manifest and then only
its own shards (``shards[rank::W]``, checksums verified); the workers exchange episode ids to compute the same
episode split as a single process, then all-gather the validation rows (identical on every rank) and all-reduce
the normaliser's moments and the state bounds. Each rank samples ``batch_size`` rows of its own slice per step, so
one step sees ``W * batch_size`` conditions. Rank 0 evaluates and writes ``out/`` (the same atomic checkpoint
format as single-process training) and TensorBoard. ``--data`` and ``--out`` must therefore be paths every node
sees (shared storage on a multi-node cluster).

Learned-env work splits over Ray actors the same way everywhere: :func:`run_shards` runs one module-level task
per shard (each builds its env / model / agent from paths inside its actor) and returns the results in shard
order. :func:`sharded_rollouts` steps ``SimVectorEnv`` shards; :func:`sharded_forecast` splits the futures of
:func:`simgan.forecast` (``simgan forecast --shards S``); ``simgan agent eval --shards S`` splits the episodes
of ``agents.evaluate_policy`` (its task lives in :mod:`simgan.cli.agent`: the library never imports ``agents``).

``ray.remote`` / ``TorchTrainer`` wiring lives here and in :mod:`simgan.collection` only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgan.collection import connect_ray
from simgan.data import (
    Dataset,
    TransitionBatch,
    check_episode_consistency,
    load_shard_slice,
    read_manifest,
    shard_slice,
    split_episodes,
)
from simgan.data_parallel import DistContext
from simgan.errors import SimganError
from simgan.train_config import TrainConfig
from simgan.training import LAST_DIR, prepare_run_directory, train

# Test hook: "RANK:N" makes worker RANK exit abruptly at its N-th gradient all-reduce of a fresh (not resumed) run.
FAULT_ENV = "SIMGAN_TEST_KILL_WORKER"
RUN_RECORD = "distributed.json"


class DistributedTrainingError(SimganError):
    """Data-parallel training failed (a worker died or raised); the message says what is left on disk."""


# ---------------------------------------------------------------------------------------------------------------
# Data-parallel training
# ---------------------------------------------------------------------------------------------------------------


def train_distributed(
    data: str | Path,
    out: str | Path,
    config: TrainConfig,
    *,
    num_workers: int,
    use_gpu: bool = False,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    max_failures: int = 0,
) -> dict[str, Any]:
    """Train the conditional GAN on ``num_workers`` Ray Train workers; returns the run record (also ``out/distributed.json``).

    Args:
        data: dataset directory (on storage every node sees).
        out: run directory, as for :func:`simgan.training.train` (on storage every node sees).
        config: the training configuration (``batch_size`` is per worker).
        num_workers: Ray Train workers (one process each; one GPU each with ``use_gpu``).
        use_gpu: NCCL on one GPU per worker instead of gloo on CPU.
        address: Ray cluster to connect to; else ``RAY_ADDRESS``; else an embedded local cluster.
        resume: continue the run in ``out`` from ``out/last/``.
        overwrite: replace an existing run in ``out``.
        max_failures: times Ray Train restarts the worker group after a worker dies; a restart resumes from the
            last checkpoint in ``out/last/`` (0: fail at once with :class:`DistributedTrainingError`).

    Returns:
        ``{"world_size", "backend", "steps", "resumed_from_step", "seconds", "transitions_per_second", "workers":
        [{rank, node_id, hostname, rows, shards}, ...]}`` (``seconds``: this attempt's ``train`` call; transitions
        counted as ``steps x batch_size x world_size`` generator-step conditions); the model itself is in ``out``.
    """
    for name, value, minimum in (("num_workers", num_workers, 1), ("max_failures", max_failures, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    data, out = Path(data).resolve(), Path(out).resolve()  # absolute: workers may start elsewhere
    shard_slice(read_manifest(data), 0, num_workers)  # enough shards? (before Ray starts)
    prepare_run_directory(out, resume=resume, overwrite=overwrite)
    (out / RUN_RECORD).unlink(missing_ok=True)

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = connect_ray(address, num_cpus=max(num_workers, os.cpu_count() or 1))
    storage = tempfile.mkdtemp(prefix="simgan-ray-train-")
    try:
        resources = ray.cluster_resources()
        for kind in ("CPU", "GPU") if use_gpu else ("CPU",):
            if float(resources.get(kind, 0)) < num_workers:
                raise DistributedTrainingError(
                    f"--num-workers {num_workers}: expected a cluster with at least {num_workers} {kind}s, got "
                    f"{float(resources.get(kind, 0)):g}"
                )
        trainer = TorchTrainer(
            _train_worker,
            train_loop_config={
                "data": str(data),
                "out": str(out),
                "config": config.to_json(),
                "use_gpu": use_gpu,
                "fault": os.environ.get(FAULT_ENV, ""),
            },
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": 1}
            ),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=RunConfig(
                name=f"simgan-train-{int(time.time())}",
                storage_path=storage,
                failure_config=FailureConfig(max_failures=max_failures),
            ),
        )
        try:
            trainer.fit()
        except Exception as exc:  # ray.train.TrainingFailedError and its kinds
            raise DistributedTrainingError(_failure_message(out, num_workers, max_failures, exc)) from None
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        if started:
            ray.shutdown()
    return json.loads((out / RUN_RECORD).read_text())


def _failure_message(out: Path, num_workers: int, max_failures: int, exc: BaseException) -> str:
    last = out / LAST_DIR / "train_state.pt"
    if last.is_file():
        left = f"the last complete checkpoint is in {out / LAST_DIR} (continue with --resume)"
    else:
        left = "no checkpoint was written yet"
    return (
        f"training on {num_workers} Ray workers failed after {max_failures} restart(s): "
        f"{_failure_cause(str(exc))}; {left}"
    )


def _failure_cause(text: str) -> str:
    """One line per rank from Ray Train's error ("[Rank N Error Snippet]:" blocks with tracebacks)."""
    blocks = re.split(r"\[Rank (\d+) Error Snippet\]:", text)
    if len(blocks) < 3:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return lines[-1][:200] if lines else "unknown error"
    causes = []
    for rank, body in zip(blocks[1::2], blocks[2::2]):
        lines = [line.strip() for line in body.splitlines() if line.strip()]
        died = [line for line in lines if "died" in line]
        raised = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line)]
        line = (died or raised or lines or ["unknown error"])[-1 if raised and not died else 0]
        causes.append(f"rank {rank}: {line[:160]}")
    return "; ".join(causes)


def _train_worker(loop_config: dict[str, Any]) -> None:
    """The body of one Ray Train worker: its data slice, the shared training loop, then the run record (rank 0)."""
    import ray.train
    import torch

    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if loop_config["use_gpu"] else None
    config = TrainConfig.from_json(loop_config["config"])
    out = Path(loop_config["out"])
    probe = DistContext(rank, world_size, device)
    # A fresh run starts from an empty `out`: last/ exists only for --resume, or after a restart (FailureConfig),
    # which then continues from the last checkpoint rank 0 wrote.
    resume = probe.broadcast_flag((out / LAST_DIR / "train_state.pt").is_file())
    fault = loop_config["fault"].split(":") if loop_config["fault"] and not resume else None
    dist = (
        _FaultyContext(rank, world_size, device, fail_at=int(fault[1]))
        if fault is not None and int(fault[0]) == rank
        else probe
    )
    dataset, shards = _dataset_slice(Path(loop_config["data"]), config.validation_fraction, dist)
    resumed_from = json.loads((out / LAST_DIR / "model.json").read_text())["metrics"]["step"] if resume else 0

    started = time.perf_counter()
    train(dataset, out, config, resume=resume, overwrite=not resume, progress=False, dist=dist)
    seconds = time.perf_counter() - started
    node = ray.get_runtime_context().get_node_id()
    workers = dist.gather(
        {
            "rank": rank,
            "node_id": node,
            "hostname": socket.gethostname(),
            "rows": len(dataset.train),
            "shards": shards,
        }
    )
    if dist.is_writer:
        from simgan.fsutil import atomic_write_json

        steps = json.loads((out / LAST_DIR / "model.json").read_text())["metrics"]["step"]
        atomic_write_json(
            out / RUN_RECORD,
            {
                "world_size": world_size,
                "backend": torch.distributed.get_backend() if world_size > 1 else "none",
                "steps": steps,
                "resumed_from_step": resumed_from,
                "seconds": seconds,
                "transitions_per_second": (steps - resumed_from) * config.batch_size * world_size / seconds,
                "workers": workers,
            },
        )
    ray.train.report({"rank": rank})


def _dataset_slice(
    directory: Path, validation_fraction: float, dist: DistContext
) -> tuple[Dataset, list[str]]:
    """This rank's training rows plus every rank's validation rows (the single-process episode split), and the
    names of this rank's shards."""
    manifest, local = load_shard_slice(directory, dist.rank, dist.world_size)
    episodes = np.unique(np.concatenate(dist.gather(np.unique(local.episode))))
    validation_episodes = split_episodes(episodes, validation_fraction)
    is_validation = np.isin(local.episode, validation_episodes)
    gathered = dist.gather(local.select(is_validation).arrays())
    validation = TransitionBatch.concatenate([TransitionBatch(**arrays) for arrays in gathered])
    validation = validation.select(np.lexsort((validation.step, validation.episode)))
    check_episode_consistency(validation, source=str(directory))
    transitions = TransitionBatch.concatenate([local.select(~is_validation), validation])
    shards = [entry["file"] for entry in manifest["shards"][dist.rank :: dist.world_size]]
    return Dataset(directory, manifest, transitions, validation_episodes), shards


@dataclass(frozen=True)
class _FaultyContext(DistContext):
    """A :class:`DistContext` whose process dies abruptly at its ``fail_at``-th gradient all-reduce (tests)."""

    fail_at: int = 0
    calls: list[int] = field(default_factory=list)

    def average_gradients(self, parameters: list[Any]) -> None:
        self.calls.append(1)
        if len(self.calls) >= self.fail_at:
            os._exit(1)  # no cleanup, no exception: what a killed process looks like to its peers
        super().average_gradients(parameters)


# ---------------------------------------------------------------------------------------------------------------
# Learned-env rollouts sharded over Ray actors
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
# Work split over Ray actors: agent evaluation and forecasting shards
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


def sharded_forecast(
    model_dir: str | Path,
    states: np.ndarray,
    *,
    num_shards: int,
    horizon: int,
    num_samples: int,
    policy: Callable[[Any, int], Callable[[np.ndarray], np.ndarray]] | None = None,
    seed: int = 0,
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
        seed, compute_realism, max_memory: as for :func:`simgan.forecast`, per shard (``max_memory``: bytes).
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
