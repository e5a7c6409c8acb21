"""Rollout collection: fan :class:`~simgan.rollout.RolloutWorker` out on Ray and write a verified dataset.

    collect(env_id, steps=N, workers=W, out=DIR)
      ├─ workers=0: one RolloutWorker in this process, no Ray
      └─ workers=W: W Ray actors (``ray.remote`` is applied here and nowhere else), each with a share of the budget
    each worker returns whole episodes in chunks -> the driver writes shard-w{worker:03d}-c{chunk:05d}.npz
    atomically as they arrive -> manifest.json last (its presence marks a complete dataset)

Worker ``i`` gets ``steps // W`` transitions (+1 for the first ``steps % W`` workers); its output is a pure function
of (env, seed, worker index, budget, K, policy, chunk size), see :mod:`simgan.rollout`. Fault tolerance rests on
that: Ray restarts a dead actor and retries its call, and the fresh actor re-simulates the chunks before the one
asked for; ``resume=True`` keeps the complete shards on disk and asks each worker only for the chunks after them.
Nothing carries a timestamp, so the same seed and worker count give byte-identical datasets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from simgan.data import Dataset, load_dataset
from simgan.dataset_format import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    TransitionBatch,
    array_schema,
    decode_shard,
    write_manifest,
    write_shard,
)
from simgan.errors import SimganError
from simgan.fsutil import TMP_PREFIX, atomic_write_json, remove_temp_files, sha256_bytes
from simgan.rollout import (
    CHUNKS_IN_FLIGHT,
    EPISODE_ID_STRIDE,
    ActionSampler,
    Policy,
    RolloutWorker,
    WorkerConfig,
)

PARAMS_NAME = "collect.json"  # run parameters, written first; --resume checks them
Shards = dict[tuple[int, int], dict[str, Any]]  # (worker, chunk) -> manifest entry (+ "_episodes")
MAX_RESTARTS = 3  # Ray restarts of a dead worker actor (and retries of the call it was running)


class CollectError(SimganError):
    """A collection could not run or finish (bad output directory, mismatched resume, dead worker)."""


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def split_budget(steps: int, workers: int) -> list[int]:
    """Transitions per worker: ``steps // workers``, plus one for the first ``steps % workers`` workers."""
    n = max(workers, 1)
    return [steps // n + (1 if i < steps % n else 0) for i in range(n)]


def default_envs_per_worker(spec: Any) -> int:
    """8 sub-envs for cheap (classic-control-like) envs, 1 for MuJoCo, whose step dominates the policy call."""
    entry = str(getattr(spec, "entry_point", ""))
    return 1 if "mujoco" in entry else 8


def default_chunk_steps(budget: int) -> int:
    """Large enough that Ray's per-call overhead is negligible, small enough for a useful progress bar."""
    return int(min(50_000, max(2_000, budget // 8)))


def shard_name(worker: int, chunk: int) -> str:
    return f"shard-w{worker:03d}-c{chunk:05d}.npz"


def describe_policy(policy: str | Policy) -> str:
    """The manifest's (and the resume check's) name for a policy; deterministic, never a memory address.

    Functions are named by module and qualified name; callable objects by their ``repr`` when their class defines
    one (e.g. ``SavedAgentPolicy('runs/sac')``), else by their class.
    """
    if isinstance(policy, str):
        return policy
    if hasattr(policy, "__qualname__"):  # a function, lambda or class
        return f"callable:{policy.__module__}.{policy.__qualname__}"
    cls = type(policy)
    if cls.__repr__ is not object.__repr__:
        return f"callable:{policy!r}"
    return f"callable:{cls.__module__}.{cls.__qualname__}"


def _is_own_file(path: Path) -> bool:
    name = path.name
    return path.is_file() and (
        name in (MANIFEST_NAME, PARAMS_NAME)
        or name.startswith(TMP_PREFIX)
        or (name.startswith("shard-") and name.endswith(".npz"))
    )


def prepare_output(out: Path, params: dict[str, Any], *, resume: bool, overwrite: bool) -> None:
    """Check (and for ``overwrite`` clear) the output directory. Raises CollectError, touching nothing."""
    if resume and overwrite:
        raise CollectError("resume and overwrite: expected at most one of them")
    if out.exists() and not out.is_dir():
        raise CollectError(f"{out}: expected a directory (or nothing), got a file")
    entries = sorted(out.iterdir()) if out.is_dir() else []
    if not entries:
        return
    if overwrite:
        foreign = [p.name for p in entries if not _is_own_file(p)]
        if foreign:
            raise CollectError(
                f"{out}: refusing to overwrite a directory that holds files simgan did not write: {foreign[:5]}"
            )
        for p in entries:
            p.unlink()
        return
    if not resume:
        raise CollectError(
            f"{out}: output directory is not empty; pass --resume to finish an interrupted collection or "
            "--overwrite to replace it"
        )
    stored_path = out / PARAMS_NAME
    if not stored_path.is_file():
        raise CollectError(f"{out}: cannot resume, expected {PARAMS_NAME} (written when a collection starts)")
    stored = json.loads(stored_path.read_text())
    diff = {k: (stored.get(k), v) for k, v in params.items() if stored.get(k) != v}
    if diff:
        detail = ", ".join(f"{k}: stored {a!r}, requested {b!r}" for k, (a, b) in sorted(diff.items()))
        raise CollectError(f"{out}: cannot resume, the run parameters differ ({detail})")
    remove_temp_files(out)


def _existing_chunks(out: Path, worker: int, budget: int) -> tuple[list[dict[str, Any]], bool]:
    """Manifest entries of this worker's contiguous complete shards on disk, and whether it has finished."""
    entries, total, chunk = [], 0, 0
    while (path := out / shard_name(worker, chunk)).is_file():
        data = path.read_bytes()
        batch = decode_shard(data, source=str(path))
        entries.append(
            {
                "file": path.name,
                "count": len(batch),
                "sha256": sha256_bytes(data),
                "_episodes": len(np.unique(batch.episode)),
            }
        )
        total += entries[-1]["count"]
        chunk += 1
    return entries, total >= budget


def _unwrap_ray_error(exc: BaseException) -> BaseException:
    """RayTaskError wraps the worker's exception; give the user the original (e.g. a policy ValueError)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, Exception) else exc


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")


def _validate(
    env_id: str,
    steps: int,
    workers: int,
    seed: int,
    policy: str | Policy,
    envs_per_worker: int | None,
    env_kwargs: dict[str, Any],
    epsilon: float,
    action_noise: float,
) -> tuple[Any, Any, Any, int]:
    """Check every argument (and the policy, on one observation batch) before anything touches the disk.

    Returns:
        (env spec, observation space, action space, envs per worker K).
    """
    import gymnasium as gym

    from envs import env_spec, make_env
    from simgan.spaces import check_supported

    _check_int("steps", steps, 1)
    _check_int("workers", workers, 0)
    _check_int("seed", seed, 0)
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon: expected a probability in [0, 1], got {epsilon}")
    if not (np.isfinite(action_noise) and action_noise >= 0.0):
        raise ValueError(f"action_noise: expected a finite value >= 0, got {action_noise}")
    if isinstance(policy, str) and policy != "random":
        raise ValueError(
            f"policy: expected 'random' or a callable obs_batch -> action_batch, got {policy!r} (to collect with "
            "a saved agent, pass it as a callable; `simgan collect --policy DIR` does that for agent directories)"
        )
    if not isinstance(policy, str) and not callable(policy):
        raise ValueError(f"policy: expected 'random' or a callable, got {type(policy).__name__}")
    try:
        json.dumps(env_kwargs, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"env_kwargs: expected JSON-serialisable values (they go into the manifest): {exc}"
        ) from None
    spec = env_spec(env_id)  # unknown ids raise gymnasium's NameNotFound with "did you mean"
    k = default_envs_per_worker(spec) if envs_per_worker is None else envs_per_worker
    _check_int("envs_per_worker", k, 1)
    probe = make_env(env_id, env_kwargs)
    try:
        check_supported(probe.observation_space, probe.action_space, env_id=env_id)
        if action_noise > 0 and isinstance(probe.action_space, gym.spaces.Discrete):
            raise ValueError("action_noise: applies to Box action spaces only, got a Discrete action space")
        if not isinstance(policy, str):  # one probe call, so a broken policy fails before anything is written
            first_obs = np.asarray(probe.reset(seed=seed)[0], np.float32)
            sampler = ActionSampler(probe.action_space, k, policy, np.random.default_rng(0))
            sampler.validate(policy(np.repeat(first_obs[None], k, axis=0)))
        return spec, probe.observation_space, probe.action_space, int(k)
    finally:
        probe.close()


def collect(
    env_id: str,
    *,
    steps: int,
    out: str | os.PathLike,
    workers: int = 0,
    seed: int = 0,
    policy: str | Policy = "random",
    envs_per_worker: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    epsilon: float = 0.0,
    action_noise: float = 0.0,
    address: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    chunk_steps: int | None = None,
    progress: bool = True,
) -> Dataset:
    """Collect ``steps`` transitions of ``env_id`` into the dataset directory ``out`` and load it.

    Args:
        env_id: a registered gymnasium id (Box observations, Box or Discrete actions).
        steps: total transitions (env steps) to collect.
        out: dataset directory; must be empty or absent unless ``resume`` / ``overwrite``.
        workers: 0 runs in this process; N >= 1 runs N Ray actors.
        seed: base seed; worker i uses ``seed + i`` (see the module docstring).
        policy: ``"random"`` or a callable ``obs (K x obs_dim float32) -> actions (K x act_dim or K)``.
        envs_per_worker: sub-envs per worker (K); default 8, or 1 for MuJoCo envs.
        env_kwargs: keyword arguments for ``gymnasium.make``.
        epsilon: probability of replacing a callable policy's action by a uniform random one.
        action_noise: Gaussian noise added to a callable policy's actions, std as a fraction of the action range
            (Box only), clipped to the bounds.
        address: Ray cluster to connect to; else ``RAY_ADDRESS``; else an embedded local cluster (no dashboard,
            ``num_cpus = os.cpu_count()``). Either is disconnected / shut down afterwards. If this process has
            already initialised Ray, that connection is used as it is and left open.
        resume: keep the complete shards of an interrupted run with the same parameters and finish it.
        overwrite: replace a previous dataset (only simgan's own files; refuses other files).
        chunk_steps: minimum transitions per shard (except each worker's last); default from the budget.
        progress: show a tqdm progress bar.

    Returns:
        The verified dataset (:func:`simgan.data.load_dataset`).
    """
    import gymnasium as gym

    from simgan import __version__
    from simgan.spaces import space_to_dict

    env_kwargs = dict(env_kwargs or {})
    spec, observation_space, action_space, k = _validate(
        env_id, steps, workers, seed, policy, envs_per_worker, env_kwargs, epsilon, action_noise
    )
    callable_policy = None if isinstance(policy, str) else policy
    budgets = split_budget(steps, workers)
    chunk = default_chunk_steps(budgets[0]) if chunk_steps is None else chunk_steps
    _check_int("chunk_steps", chunk, 1)
    params = {
        "format_version": FORMAT_VERSION,
        "env_id": env_id,
        "env_kwargs": env_kwargs,
        "steps": int(steps),
        "workers": int(workers),
        "seed": int(seed),
        "policy": describe_policy(policy),
        "envs_per_worker": int(k),
        "chunk_steps": int(chunk),
        "epsilon": float(epsilon),
        "action_noise": float(action_noise),
    }
    out = Path(out)
    prepare_output(out, params, resume=resume, overwrite=overwrite)
    if resume and (out / MANIFEST_NAME).is_file():
        return load_dataset(out)  # already complete

    # ---- run ---------------------------------------------------------------------------------------------------
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PARAMS_NAME, params)
    configs = [
        WorkerConfig(
            env_id, env_kwargs, i, b, int(seed), int(k), int(chunk), float(epsilon), float(action_noise)
        )
        for i, b in enumerate(budgets)
    ]
    shards: Shards = {}
    start_chunks: list[int | None] = []  # next chunk per worker; None when the worker already finished
    for c in configs:
        entries, finished = _existing_chunks(out, c.worker_index, c.budget)
        shards.update({(c.worker_index, i): e for i, e in enumerate(entries)})
        start_chunks.append(None if finished else len(entries))
    bar = _ProgressBar(steps, sum(e["count"] for e in shards.values()), enabled=progress)
    try:
        if any(start is not None for start in start_chunks):  # else only the manifest was missing
            runner = _run_local if workers == 0 else _run_ray
            runner(configs, start_chunks, callable_policy, out, shards, bar, address)
    finally:
        bar.close()

    # ---- manifest last -------------------------------------------------------------------------------------------
    entries = [shards[key] for key in sorted(shards)]
    for c in configs:
        got = sum(e["count"] for (w, _), e in shards.items() if w == c.worker_index)
        if got != c.budget:
            raise CollectError(f"worker {c.worker_index}: expected {c.budget} transitions, got {got}")
    # episodes never span shards (workers return whole episodes), so per-shard counts add up
    num_episodes = sum(e.pop("_episodes") for e in entries)
    first = decode_shard((out / entries[0]["file"]).read_bytes(), source=entries[0]["file"])
    manifest = {
        **params,
        "simgan_version": __version__,
        "gymnasium_version": gym.__version__,
        "observation_space": space_to_dict(observation_space),
        "action_space": space_to_dict(action_space),
        "arrays": array_schema(first),
        "num_transitions": int(steps),
        "num_episodes": int(num_episodes),
        "steps_requested": int(steps),
        "max_episode_steps": spec.max_episode_steps,
        "shards": entries,
    }
    del manifest["steps"]
    write_manifest(out, manifest)
    return load_dataset(out)


class _ProgressBar:
    """tqdm over transitions, with the episode count and steps/s."""

    def __init__(self, total: int, initial: int, *, enabled: bool) -> None:
        from tqdm.auto import tqdm

        self.episodes = 0
        self.bar = tqdm(
            total=total, initial=initial, unit="step", desc="collect", disable=not enabled, dynamic_ncols=True
        )

    def update(self, batch: TransitionBatch) -> None:
        self.episodes += int((batch.terminated | batch.truncated).sum())
        self.bar.set_postfix(episodes=self.episodes, refresh=False)
        self.bar.update(len(batch))

    def close(self) -> None:
        self.bar.close()


def _write(
    out: Path, shards: Shards, worker: int, chunk: int, batch: TransitionBatch, bar: _ProgressBar
) -> None:
    entry = write_shard(out, shard_name(worker, chunk), batch)
    shards[(worker, chunk)] = {**entry, "_episodes": len(np.unique(batch.episode))}
    bar.update(batch)


def connect_ray(address: str | None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` (else ``RAY_ADDRESS``), or start an embedded local cluster; True if started here.

    Args:
        address: ``host:port`` of a running cluster's head (``ray start --head``), or None.
        num_cpus: CPUs of an embedded cluster (default: this machine's).
    """
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": always a new cluster of our own, never one that happens to run on this machine. Ray (2.60)
        # offers no loopback-only binding: it relies on its token authentication instead.
        ray.init(
            address="local", num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=False
        )
    return True


def _run_local(
    configs: list[WorkerConfig],
    start_chunks: list[int | None],
    policy: Policy | None,
    out: Path,
    shards: Shards,
    bar: _ProgressBar,
    address: str | None,
) -> None:
    """workers=0: one RolloutWorker in this process."""
    (config,), (chunk,) = configs, start_chunks
    if chunk is None:
        return
    worker = RolloutWorker(config, policy)
    try:
        last = False
        while not last:
            batch, last = worker.collect_chunk(chunk)
            if batch is not None:
                _write(out, shards, config.worker_index, chunk, batch, bar)
            chunk += 1
    finally:
        worker.close()


def _run_ray(
    configs: list[WorkerConfig],
    start_chunks: list[int | None],
    policy: Policy | None,
    out: Path,
    shards: Shards,
    bar: _ProgressBar,
    address: str | None,
) -> None:
    """W Ray actors, CHUNKS_IN_FLIGHT requests queued per actor so a worker never waits for the driver."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    started_here = connect_ray(address)
    actors: dict[int, Any] = {}
    try:
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        remote_worker = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)(RolloutWorker)
        # more workers than CPUs share them (fractional CPUs), rather than waiting forever for a free one
        per_worker = min(1.0, cpus / len(configs))
        pending: dict[Any, tuple[int, int]] = {}  # object ref -> (worker, chunk)
        next_chunk: dict[int, int] = {}

        def submit(worker: int) -> None:
            pending[actors[worker].collect_chunk.remote(next_chunk[worker])] = (worker, next_chunk[worker])
            next_chunk[worker] += 1

        for c, start in zip(configs, start_chunks):
            if start is not None:
                actors[c.worker_index] = remote_worker.options(num_cpus=per_worker).remote(c, policy)
                next_chunk[c.worker_index] = start
                for _ in range(CHUNKS_IN_FLIGHT):
                    submit(c.worker_index)
        finished: set[int] = set()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            worker, chunk = pending.pop(ready[0])
            try:
                batch, last = ray.get(ready[0])
            except RayTaskError as exc:
                raise _unwrap_ray_error(exc) from None
            except RayActorError as exc:
                raise CollectError(f"worker {worker} died more than {MAX_RESTARTS} times: {exc}") from None
            if batch is not None:
                _write(out, shards, worker, chunk, batch, bar)
            if last:
                finished.add(worker)
            elif worker not in finished:
                submit(worker)
    finally:
        for actor in actors.values():
            ray.kill(actor, no_restart=True)
        if started_here:
            ray.shutdown()


__all__ = [
    "EPISODE_ID_STRIDE",
    "CollectError",
    "RolloutWorker",
    "WorkerConfig",
    "collect",
    "connect_ray",
    "split_budget",
]
