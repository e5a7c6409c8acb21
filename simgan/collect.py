"""Rollout collection: a plain :class:`RolloutWorker` that steps envs, and a driver that fans it out on Ray.

    collect(env_id, steps=N, workers=W, out=DIR)
      ├─ workers=0: one RolloutWorker in this process
      └─ workers=W: W Ray actors (ray.remote is applied here and nowhere else), each with a share of the budget
    each worker returns whole episodes in chunks -> driver writes shard-w{worker}-c{chunk}.npz atomically as they
    arrive -> manifest.json last

Determinism: worker ``i`` gets ``steps // W`` transitions (+1 for the first ``steps % W`` workers), its envs and
policy RNG are seeded from ``SeedSequence(seed + i).spawn(K + 1)`` (child ``j < K`` seeds sub-env ``j``'s first
reset, child ``K`` seeds the action RNG), and its episode ids are ``i * 1_000_000_000 + local_index`` (local
indices count episodes in the order they start, sub-envs in index order). A worker's output is therefore a pure
function of (env, seed, worker index, budget, K, policy, chunk size): a restarted actor asked for chunk ``k``
re-simulates and discards chunks ``< k``; ``resume=True`` keeps the shards on disk and does the same.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simgan.data import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Dataset,
    TransitionBatch,
    array_schema,
    decode_shard,
    load_dataset,
    write_manifest,
    write_shard,
)
from simgan.errors import SimganError
from simgan.fsutil import TMP_PREFIX, atomic_write_json, remove_temp_files, sha256_bytes

# obs batch (K x obs_dim float32) -> actions (K x act_dim for Box, K for Discrete)
Policy = Callable[[np.ndarray], np.ndarray]

EPISODE_ID_STRIDE = 1_000_000_000  # global episode id = worker_index * stride + local episode index
PARAMS_NAME = "collect.json"
MAX_RESTARTS = 3  # Ray restarts of a dead worker actor (and retries of the call it was running)


class CollectError(SimganError):
    """A collection could not run or finish (bad output directory, mismatched resume, dead worker)."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything that determines one worker's output (sent to the Ray actor; JSON-able except ``policy``)."""

    env_id: str
    env_kwargs: dict[str, Any]
    worker_index: int
    budget: int  # transitions this worker produces
    seed: int  # base seed; the worker uses seed + worker_index
    envs_per_worker: int
    chunk_steps: int
    epsilon: float
    action_noise: float


# ---------------------------------------------------------------------------------------------------------------
# Actions
# ---------------------------------------------------------------------------------------------------------------


class ActionSampler:
    """Turns a policy plus epsilon/noise mixing into validated action batches for K envs."""

    def __init__(
        self,
        action_space: Any,
        num_envs: int,
        policy: Policy | None,
        rng: np.random.Generator,
        epsilon: float = 0.0,
        action_noise: float = 0.0,
    ) -> None:
        import gymnasium as gym

        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        self.num_envs = num_envs
        self.policy = policy
        self.rng = rng
        self.epsilon = epsilon
        self.action_noise = action_noise
        if self.discrete:
            self.start, self.n = int(action_space.start), int(action_space.n)
            self.shape: tuple[int, ...] = (num_envs,)
        else:
            self.low = action_space.low.astype(np.float32)
            self.high = action_space.high.astype(np.float32)
            self.shape = (num_envs, *action_space.shape)

    def uniform(self) -> np.ndarray:
        """K uniformly random actions (float32 K x act_dim, or int64 K)."""
        if self.discrete:
            return self.rng.integers(self.start, self.start + self.n, size=self.num_envs, dtype=np.int64)
        u = self.rng.random(self.shape)
        return np.minimum(self.low + (self.high - self.low) * u, self.high).astype(np.float32)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.policy is None:
            return self.uniform()
        actions = self.validate(self.policy(obs))
        if self.action_noise > 0.0 and not self.discrete:
            noise = self.rng.standard_normal(self.shape) * (self.action_noise * (self.high - self.low))
            actions = np.clip(actions + noise, self.low, self.high).astype(np.float32)
        if self.epsilon > 0.0:
            explore = self.rng.random(self.num_envs) < self.epsilon
            actions = np.where(explore.reshape(-1, *([1] * (actions.ndim - 1))), self.uniform(), actions)
        return actions

    def validate(self, actions: Any) -> np.ndarray:
        """Check a policy's output; returns it as float32 (Box) or int64 (Discrete). Raises ValueError."""
        actions = np.asarray(actions)
        if actions.shape != self.shape:
            raise ValueError(f"policy returned actions of shape {actions.shape}, expected {self.shape}")
        if self.discrete:
            if not np.issubdtype(actions.dtype, np.integer):
                raise ValueError(
                    f"policy returned actions of dtype {actions.dtype}, expected an integer dtype"
                )
            bad = (actions < self.start) | (actions >= self.start + self.n)
            if bad.any():
                raise ValueError(
                    f"policy returned action {actions[bad][0]}, expected an integer in "
                    f"[{self.start}, {self.start + self.n - 1}]"
                )
            return actions.astype(np.int64)
        if not (np.issubdtype(actions.dtype, np.floating) or np.issubdtype(actions.dtype, np.integer)):
            raise ValueError(f"policy returned actions of dtype {actions.dtype}, expected a float dtype")
        actions = actions.astype(np.float32)
        if not np.all(np.isfinite(actions)):
            raise ValueError("policy returned non-finite actions (nan or inf), expected finite values")
        bad = (actions < self.low) | (actions > self.high)
        if bad.any():
            row, col = (int(i[0]) for i in np.nonzero(bad))
            raise ValueError(
                f"policy returned action[{row}, {col}] = {actions[row, col]}, expected a value within the action "
                f"space bounds [{self.low[col]}, {self.high[col]}]"
            )
        return actions


# ---------------------------------------------------------------------------------------------------------------
# The worker
# ---------------------------------------------------------------------------------------------------------------


class _Buffer:
    """Growable, pre-allocated transition rows, in stepping order (rows of K envs interleaved)."""

    def __init__(
        self, obs_dim: int, action_shape: tuple[int, ...], action_dtype: type, capacity: int
    ) -> None:
        self.size = 0
        self.arrays = {
            "obs": np.empty((capacity, obs_dim), np.float32),
            "action": np.empty((capacity, *action_shape), action_dtype),
            "next_obs": np.empty((capacity, obs_dim), np.float32),
            "reward": np.empty(capacity, np.float32),
            "terminated": np.empty(capacity, bool),
            "truncated": np.empty(capacity, bool),
            "episode": np.empty(capacity, np.int64),
            "step": np.empty(capacity, np.int64),
        }

    def reserve(self, rows: int) -> None:
        capacity = len(self.arrays["obs"])
        if self.size + rows > capacity:
            new = max(2 * capacity, self.size + rows)
            for name, arr in self.arrays.items():
                grown = np.empty((new, *arr.shape[1:]), arr.dtype)
                grown[: self.size] = arr[: self.size]
                self.arrays[name] = grown

    def take(self, mask: np.ndarray) -> TransitionBatch:
        """Remove the rows where ``mask`` is True (sorted by episode, then step) and return them."""
        rows = {name: arr[: self.size] for name, arr in self.arrays.items()}
        order = np.flatnonzero(mask)
        order = order[np.lexsort((rows["step"][order], rows["episode"][order]))]
        batch = TransitionBatch(**{name: arr[order].copy() for name, arr in rows.items()})
        keep = np.flatnonzero(~mask)
        for arr in self.arrays.values():
            arr[: len(keep)] = arr[keep]
        self.size = len(keep)
        return batch


class RolloutWorker:
    """Steps K envs with a policy and returns whole episodes in chunks.

    Plain Python; :func:`collect` runs it in-process (workers=0) or wraps it with ``ray.remote``.

    Args:
        config: env, budget, seeding and chunking of this worker.
        policy: ``obs (K x obs_dim float32) -> actions``; None for uniform random actions.
    """

    def __init__(self, config: WorkerConfig, policy: Policy | None = None) -> None:
        from envs import make_env

        self.config = config
        k = config.envs_per_worker
        self.envs = [make_env(config.env_id, config.env_kwargs) for _ in range(k)]
        children = np.random.SeedSequence(config.seed + config.worker_index).spawn(k + 1)
        space = self.envs[0].action_space
        self.sampler = ActionSampler(
            space, k, policy, np.random.default_rng(children[k]), config.epsilon, config.action_noise
        )
        obs_dim = int(self.envs[0].observation_space.shape[0])
        action_shape = () if self.sampler.discrete else tuple(space.shape)
        action_dtype = np.int64 if self.sampler.discrete else np.float32
        self.buffer = _Buffer(obs_dim, action_shape, action_dtype, capacity=config.chunk_steps + 64 * k)
        self.obs = np.empty((k, obs_dim), np.float32)
        self.episode = np.empty(k, np.int64)
        self.episode_step = np.zeros(k, np.int64)
        self.next_local_episode = 0
        for j, env in enumerate(self.envs):
            self.obs[j] = env.reset(seed=int(children[j].generate_state(1)[0]))[0]
            self._start_episode(j)
        self.finished: list[int] = []  # episode ids completed since the last chunk
        self.finished_rows = 0
        self.steps_done = 0
        self.next_chunk = 0

    def _start_episode(self, j: int) -> None:
        self.episode[j] = self.config.worker_index * EPISODE_ID_STRIDE + self.next_local_episode
        self.episode_step[j] = 0
        self.next_local_episode += 1

    def collect_chunk(self, chunk_index: int) -> tuple[TransitionBatch | None, bool]:
        """Return chunk ``chunk_index`` and whether it is this worker's last one.

        A fresh (e.g. restarted) worker asked for chunk k re-simulates and discards chunks < k first. Asking
        past the last chunk returns ``(None, True)``.
        """
        if chunk_index < self.next_chunk:
            raise RuntimeError(f"chunk {chunk_index} was already produced (next is {self.next_chunk})")
        while True:
            if self.steps_done >= self.config.budget:
                return None, True
            batch, last = self._next_chunk()
            self.next_chunk += 1
            if self.next_chunk - 1 == chunk_index:
                return batch, last

    def _next_chunk(self) -> tuple[TransitionBatch, bool]:
        budget, chunk_steps = self.config.budget, self.config.chunk_steps
        while self.steps_done < budget and self.finished_rows < chunk_steps:
            self._step_round(min(len(self.envs), budget - self.steps_done))
        if self.steps_done >= budget:
            return self._final_chunk(), True
        done = np.isin(self.buffer.arrays["episode"][: self.buffer.size], np.asarray(self.finished, np.int64))
        self.finished, self.finished_rows = [], 0
        return self.buffer.take(done), False

    def _step_round(self, n: int) -> None:
        """Step the first ``n`` envs once (n < K only in a worker's last round)."""
        actions = self.sampler(self.obs)
        buf = self.buffer
        buf.reserve(n)
        a = buf.arrays
        base = buf.size
        rows = slice(base, base + n)
        a["obs"][rows] = self.obs[:n]
        a["action"][rows] = actions[:n]
        a["episode"][rows] = self.episode[:n]
        a["step"][rows] = self.episode_step[:n]
        next_obs, reward, terminated, truncated = a["next_obs"], a["reward"], a["terminated"], a["truncated"]
        for j in range(n):
            o, r, te, tr, _ = self.envs[j].step(actions[j])
            next_obs[base + j] = o
            reward[base + j] = r
            terminated[base + j] = te
            truncated[base + j] = tr
        buf.size += n
        self.steps_done += n
        self.episode_step[:n] += 1
        self.obs[:n] = next_obs[rows]
        ended = np.flatnonzero(terminated[rows] | truncated[rows])
        for j in ended:
            self.finished.append(int(self.episode[j]))
            self.finished_rows += int(self.episode_step[j])
            self.obs[j] = self.envs[j].reset()[0]
            self._start_episode(j)

    def _final_chunk(self) -> TransitionBatch:
        """Everything left, with each episode still in progress cut here and marked truncated."""
        a, size = self.buffer.arrays, self.buffer.size
        episodes = a["episode"][:size]
        in_progress = np.setdiff1d(episodes, np.asarray(self.finished, np.int64))
        # the last row of each in-progress episode (rows are in stepping order)
        reversed_episodes = episodes[::-1]
        _, first_in_reversed = np.unique(reversed_episodes, return_index=True)
        last_rows = size - 1 - first_in_reversed
        last_rows = last_rows[np.isin(episodes[last_rows], in_progress)]
        a["truncated"][last_rows] = True
        self.finished, self.finished_rows = [], 0
        return self.buffer.take(np.ones(size, bool))

    def close(self) -> None:
        for env in self.envs:
            env.close()


# ---------------------------------------------------------------------------------------------------------------
# The driver
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
    if isinstance(policy, str):
        return policy
    name = getattr(policy, "__qualname__", type(policy).__qualname__)
    return f"callable:{getattr(policy, '__module__', '?')}.{name}"


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
        epsilon: probability of replacing a policy action by a uniform random one.
        action_noise: Gaussian noise std as a fraction of the action range (Box only), clipped to the bounds.
        address: Ray cluster address; else ``RAY_ADDRESS``; else an already initialised Ray; else an embedded
            local cluster (loopback, no dashboard) that is shut down afterwards.
        resume: keep the complete shards of an interrupted run with the same parameters and finish it.
        overwrite: replace a previous dataset (only simgan's own files; refuses other files).
        chunk_steps: minimum transitions per shard (except each worker's last); default from the budget.
        progress: show a tqdm progress bar.

    Returns:
        The verified dataset (:func:`simgan.data.load_dataset`).
    """
    import gymnasium as gym

    from envs import env_spec, make_env
    from simgan import __version__
    from simgan.spaces import check_supported, space_to_dict

    # ---- validate everything before touching the disk -------------------------------------------------------
    for name, value, minimum in (("steps", steps, 1), ("workers", workers, 0), ("seed", seed, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon: expected a probability in [0, 1], got {epsilon}")
    if not (np.isfinite(action_noise) and action_noise >= 0.0):
        raise ValueError(f"action_noise: expected a finite value >= 0, got {action_noise}")
    if isinstance(policy, str) and policy != "random":
        raise ValueError(
            f"policy: expected 'random' or a callable obs_batch -> action_batch, got {policy!r} "
            "(saved-agent policies are not supported yet)"
        )
    if not isinstance(policy, str) and not callable(policy):
        raise ValueError(f"policy: expected 'random' or a callable, got {type(policy).__name__}")
    env_kwargs = dict(env_kwargs or {})
    spec = env_spec(env_id)  # unknown ids raise gymnasium's NameNotFound with "did you mean"
    probe = make_env(env_id, env_kwargs)
    try:
        check_supported(probe.observation_space, probe.action_space, env_id=env_id)
        k = default_envs_per_worker(spec) if envs_per_worker is None else envs_per_worker
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ValueError(f"envs_per_worker: expected an integer >= 1, got {k!r}")
        if action_noise > 0 and isinstance(probe.action_space, gym.spaces.Discrete):
            raise ValueError("action_noise: applies to Box action spaces only, got a Discrete action space")
        callable_policy = None if isinstance(policy, str) else policy
        if callable_policy is not None:  # one probe call, so a broken policy fails before anything is written
            first_obs = np.asarray(probe.reset(seed=seed)[0], np.float32)
            sampler = ActionSampler(probe.action_space, k, callable_policy, np.random.default_rng(0))
            sampler.validate(callable_policy(np.repeat(first_obs[None], k, axis=0)))
        observation_space, action_space = probe.observation_space, probe.action_space
    finally:
        probe.close()
    budgets = split_budget(steps, workers)
    chunk = default_chunk_steps(budgets[0]) if chunk_steps is None else chunk_steps
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk_steps: expected an integer >= 1, got {chunk!r}")
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
    shards: dict[tuple[int, int], dict[str, Any]] = {}
    start_chunks: list[int | None] = []  # next chunk per worker; None when the worker already finished
    for c in configs:
        entries, finished = _existing_chunks(out, c.worker_index, c.budget)
        shards.update({(c.worker_index, i): e for i, e in enumerate(entries)})
        start_chunks.append(None if finished else len(entries))
    bar = _ProgressBar(steps, sum(e["count"] for e in shards.values()), enabled=progress)
    try:
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
    out: Path, shards: dict, worker: int, chunk: int, batch: TransitionBatch, bar: _ProgressBar
) -> None:
    entry = write_shard(out, shard_name(worker, chunk), batch)
    shards[(worker, chunk)] = {**entry, "_episodes": len(np.unique(batch.episode))}
    bar.update(batch)


def _run_local(configs, start_chunks, policy, out, shards, bar, address) -> None:
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


def _run_ray(configs, start_chunks, policy, out, shards, bar, address) -> None:
    """W Ray actors, two chunk requests in flight per actor so a worker never waits for the driver."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    started_here = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            # An embedded single-node cluster, no dashboard. Ray (2.60) offers no loopback-only binding: it
            # resolves 127.0.0.1 to the node's IP and relies on its token authentication instead.
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
        started_here = True
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
                submit(c.worker_index)
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
