"""The rollout worker: K envs stepped in lockstep by a policy, returning whole episodes in chunks (no Ray here).

:func:`simgan.collection.collect` runs a :class:`RolloutWorker` in-process (workers=0) or wraps it with
``ray.remote``. A worker's output is a pure function of its :class:`WorkerConfig` and policy:

- seeding: ``SeedSequence(seed + worker_index).spawn(K + 1)``; child ``j < K`` seeds sub-env ``j``'s first reset
  (``int(child.generate_state(1)[0])``), child ``K`` seeds the action RNG (uniform actions, epsilon, noise);
- episode ids: ``worker_index * EPISODE_ID_STRIDE + local_index``, local indices counting episodes in the order
  they start (sub-envs in index order);
- budget: exactly ``budget`` env steps; in the last round only the first ``budget % K`` sub-envs step. Episodes
  still running when the budget is spent are kept, their last transition marked ``truncated``;
- chunks: a chunk is emitted once the finished episodes hold ``>= chunk_steps`` transitions; the last chunk
  holds everything left. A fresh worker asked for chunk ``k`` re-simulates and discards chunks ``< k``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from simgan.dataset_format import TransitionBatch

# obs batch (K x obs_dim float32) -> actions (K x act_dim for Box, K for Discrete)
Policy = Callable[[np.ndarray], np.ndarray]

EPISODE_ID_STRIDE = 1_000_000_000  # global episode id = worker_index * stride + local episode index
# Chunk requests the driver keeps queued per worker (so a worker never waits for the driver); also how many
# chunks a fast-forwarding worker keeps, since Ray may deliver retried requests out of order.
CHUNKS_IN_FLIGHT = 2
# Rounds of uniformly random Box actions drawn per numpy call by a worker without a policy.
UNIFORM_BLOCK = 256


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
        self._block, self._block_next = np.empty((0,)), 0  # pre-drawn rounds of random Box actions

    def uniform(self, rounds: int | None = None) -> np.ndarray:
        """K uniformly random actions (float32 K x act_dim, or int64 K); with ``rounds`` (Box spaces only), that
        many rounds of them in one numpy call (rounds x K x act_dim): the same numbers as ``rounds`` calls, since
        each float64 takes one draw of the generator in order."""
        if self.discrete:
            return self.rng.integers(self.start, self.start + self.n, size=self.num_envs, dtype=np.int64)
        u = self.rng.random(self.shape if rounds is None else (rounds, *self.shape))
        return np.minimum(self.low + (self.high - self.low) * u, self.high).astype(np.float32)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        if self.policy is None:
            if self.discrete:  # bounded integers are not draw-for-draw the same in blocks: one call per round
                return self.uniform()
            # Random Box actions come UNIFORM_BLOCK rounds per numpy call: on a MuJoCo env with one sub-env
            # the per-round call cost 10 % of the worker's time. Nothing else draws from this generator here.
            if self._block_next == len(self._block):
                self._block, self._block_next = self.uniform(UNIFORM_BLOCK), 0
            self._block_next += 1
            return self._block[self._block_next - 1]
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
        self.config = config
        self.policy = policy
        self.envs: list[Any] = []
        self._start()

    def _start(self) -> None:
        """(Re)build the envs and the RNGs and reset everything to the state before chunk 0."""
        from envs import make_env

        config, k = self.config, self.config.envs_per_worker
        self.close()
        self.envs = [make_env(config.env_id, config.env_kwargs) for _ in range(k)]
        children = np.random.SeedSequence(config.seed + config.worker_index).spawn(k + 1)
        space = self.envs[0].action_space
        self.sampler = ActionSampler(
            space, k, self.policy, np.random.default_rng(children[k]), config.epsilon, config.action_noise
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
        self.skipped: dict[int, tuple[TransitionBatch, bool]] = {}  # chunks passed over while fast-forwarding

    def _start_episode(self, j: int) -> None:
        self.episode[j] = self.config.worker_index * EPISODE_ID_STRIDE + self.next_local_episode
        self.episode_step[j] = 0
        self.next_local_episode += 1

    def collect_chunk(self, chunk_index: int) -> tuple[TransitionBatch | None, bool]:
        """Return chunk ``chunk_index`` and whether it is this worker's last one.

        Chunks are produced in order. A fresh (e.g. restarted) worker asked for chunk k re-simulates the chunks
        before it, keeping the last few in case their requests arrive next (Ray does not guarantee the order of
        retried calls); a request for an earlier chunk that was not kept restarts the simulation from scratch.
        Asking past the last chunk returns ``(None, True)``.
        """
        if chunk_index in self.skipped:
            return self.skipped.pop(chunk_index)
        if chunk_index < self.next_chunk:
            self._start()
        while self.steps_done < self.config.budget:
            result, index = self._next_chunk(), self.next_chunk
            self.next_chunk += 1
            if index == chunk_index:
                return result
            self.skipped[index] = result
            self.skipped.pop(index - CHUNKS_IN_FLIGHT, None)
        return None, True

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
        envs, ended = self.envs, []
        for j in range(n):
            o, r, te, tr, _ = envs[j].step(actions[j])
            next_obs[base + j] = o
            reward[base + j] = r
            terminated[base + j] = te
            truncated[base + j] = tr
            if te or tr:
                ended.append(j)
        buf.size += n
        self.steps_done += n
        self.episode_step[:n] += 1
        self.obs[:n] = next_obs[rows]
        for j in ended:  # next_obs keeps the true final observation; the env starts a new episode
            self.finished.append(int(self.episode[j]))
            self.finished_rows += int(self.episode_step[j])
            self.obs[j] = envs[j].reset()[0]
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
