"""The model-based loop (MBPO / Dyna style): collect real data, fit a world model, improve an agent inside it.

    iteration i (directory DIR/iter-{i:03d}/):
      1. collect  real transitions with the current agent (iteration 0: uniform random) -> data/
                  (``collect_envs`` sub-envs per worker, default 1: episodes run to their natural end
                  instead of being cut at the budget / sub-envs, so late-episode states reach the model)
      2. merge    every iteration's data so far into one dataset                       -> union/  (i > 0)
      3. train    a world model (conditional GAN or Gaussian ensemble) from scratch    -> model/
      4. improve  the agent inside the learned env: MBPO's branched rollouts, i.e. many sub-envs of a
                  SimVectorEnv started at real states of the data and rolled ``rollout_horizon`` steps
      5. save     the agent                                                             -> agent/
      6. evaluate it in the real env (``eval_episodes`` episodes)                       -> done.json (written last)
    After the last iteration (or an early stop) its model's forecast noise is calibrated (``model.json``); the
    iterations' models skip that step, since the loop itself never forecasts.
    DIR/progress.csv (rewritten atomically from the done.json records) and DIR/tb/: real return against real
    env steps (x axis), plus the agent's own curves under DIR/tb/agent-XXX/.

The library never imports ``agents``: the agent reaches the loop through the small :class:`LoopAgent` protocol,
which the CLI (``simgan/cli/loop.py``) implements with SAC / PPO / CEM-MPC. The loop hands the agent a
:class:`SimContext` (the model, the real start states, a factory for learned vector envs) and a real env to be
evaluated in, and receives a collection policy back as a plain ``obs_batch -> action_batch`` callable that must
be picklable for Ray (e.g. one that loads the saved agent lazily in the worker).

Real env steps count only the collected transitions (evaluation episodes are not counted, as in MBPO's plots).
``resume=True`` continues after the last iteration whose ``done.json`` exists; a half-finished iteration is
discarded and redone. Every stage is seeded from ``seed`` and the iteration index (same seed and worker
count: same datasets; CPU training is deterministic too).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from simgan.data import Dataset, load_dataset
from simgan.dataset_format import TransitionBatch, write_manifest, write_shard
from simgan.errors import SimganError
from simgan.fsutil import atomic_write_bytes, atomic_write_json

PARAMS_NAME = "loop.json"
DONE_NAME = "done.json"
PROGRESS_NAME = "progress.csv"
EPISODE_OFFSET = 10**13  # merged datasets: source k's episode ids are shifted by k * EPISODE_OFFSET
CSV_COLUMNS = (
    "iteration",
    "real_steps",
    "eval_return_mean",
    "eval_return_std",
    "sim_return_mean",
    "model_seconds",
    "agent_seconds",
    "wall_seconds",
)

Policy = Callable[[np.ndarray], np.ndarray]


class LoopError(SimganError):
    """The loop cannot run or resume (bad output directory, mismatched parameters)."""


@dataclass(frozen=True)
class LoopConfig:
    """What defines a loop run (stored in ``DIR/loop.json``; ``--resume`` checks it)."""

    env_id: str = field(metadata={"help": "real gymnasium env id, e.g. Pendulum-v1"})
    iterations: int = field(default=5, metadata={"help": "collect -> train model -> improve agent rounds"})
    model: Literal["gan", "ensemble"] = field(default="gan", metadata={"help": "world model: gan | ensemble"})
    real_steps_per_iter: int = field(
        default=1000, metadata={"help": "real env steps collected per iteration"}
    )
    initial_steps: int | None = field(
        default=None, metadata={"help": "random-policy steps of iteration 0; None: --real-steps-per-iter"}
    )
    model_steps: int | None = field(
        default=None,
        metadata={"help": "world-model optimiser steps per iteration; None: the model's own default"},
    )
    rollout_horizon: int = field(
        default=25, metadata={"help": "branched rollout length k in the learned env"}
    )
    sim_envs: int = field(default=32, metadata={"help": "parallel learned sub-envs the agent trains in"})
    agent_steps_per_iter: int = field(
        default=12_000, metadata={"help": "simulated transitions the agent trains on per iteration"}
    )
    eval_episodes: int = field(default=10, metadata={"help": "real episodes per evaluation"})
    workers: int = field(default=1, metadata={"help": "Ray collection workers (0: in this process, no Ray)"})
    collect_envs: int = field(
        default=1,
        metadata={
            "help": "real sub-envs per collection worker; each runs real_steps_per_iter / (workers x this) steps, "
            "so more cut episodes short (1: episodes run to their natural end)"
        },
    )
    halt_unknown: bool = field(
        default=False,
        metadata={
            "help": "learned-env steps that leave the data's support end as terminated, not truncated "
            "(MOReL's pessimistic HALT: the agent learns to stay where the model is known; for rewards > 0)"
        },
    )
    known_reward: bool = field(
        default=False,
        metadata={
            "help": "the learned env pays the real env's own reward (envs.known) instead of the learned one; "
            "the model still learns it"
        },
    )
    known_termination: bool = field(
        default=False,
        metadata={"help": "the learned env ends episodes by the real env's own termination (envs.known)"},
    )
    round_reward: bool = field(
        default=False,
        metadata={
            "help": "the learned env rounds the learned reward to the few values the data's reward took "
            "(reward_values='data': CartPole's 1, InvertedPendulum's 0 and 1); for discrete rewards only"
        },
    )
    seed: int = field(default=0, metadata={"help": "base seed (collection, model, agent, evaluation)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})

    def __post_init__(self) -> None:
        for name in (
            "iterations",
            "real_steps_per_iter",
            "rollout_horizon",
            "sim_envs",
            "agent_steps_per_iter",
            "collect_envs",
        ):
            if getattr(self, name) < 1:
                raise LoopError(f"{name}: expected an integer >= 1, got {getattr(self, name)}")
        for name in ("initial_steps", "model_steps"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LoopError(f"{name}: expected an integer >= 1 or None, got {value}")
        if self.eval_episodes < 1 or self.workers < 0 or self.seed < 0:
            raise LoopError(
                f"eval_episodes >= 1, workers >= 0, seed >= 0: got {self.eval_episodes}, {self.workers}, "
                f"{self.seed}"
            )
        for name in ("halt_unknown", "known_reward", "known_termination", "round_reward"):
            if not isinstance(getattr(self, name), bool):
                raise LoopError(f"{name}: expected a bool, got {getattr(self, name)!r}")
        try:
            self.learned_env_kwargs()  # round_reward with known_reward is refused
        except ValueError as exc:
            raise LoopError(str(exc)) from exc
        if self.known_reward or self.known_termination:
            from envs.known import UnknownFunctionsError, known_functions

            try:
                known_functions(self.env_id)
            except UnknownFunctionsError as exc:
                raise LoopError(str(exc)) from exc
        if self.model not in ("gan", "ensemble"):
            raise LoopError(f"model: expected 'gan' or 'ensemble', got {self.model!r}")

    def learned_env_kwargs(self) -> dict[str, str]:
        """The learned env's ``reward_fn`` / ``termination_fn`` ("known") and ``reward_values`` ("data")
        keyword arguments for this run."""
        from simgan.sim_batch import learned_env_kwargs

        return learned_env_kwargs(self.known_reward, self.known_termination, self.round_reward)

    def seed_of(self, iteration: int) -> int:
        """The seed of everything ``iteration`` draws: its collection, its model (training and calibration) and its
        agent's training."""
        return self.seed * 1000 + iteration

    def steps_of(self, iteration: int) -> int:
        """Real env steps collected in ``iteration``."""
        if iteration == 0 and self.initial_steps is not None:
            return self.initial_steps
        return self.real_steps_per_iter


@dataclass
class SimContext:
    """What the agent may use to improve itself in iteration ``iteration``.

    Attributes:
        model: the freshly trained world model (on ``device``).
        model_dir: its directory.
        start_states: N x obs_dim real observations of all data so far (branched-rollout start states).
        config: the loop's configuration (``sim_envs``, ``rollout_horizon``, ``agent_steps_per_iter``).
        iteration: 0-based iteration index.
        seed: a seed for this iteration's agent training.
        log_dir: a TensorBoard directory for the agent's own curves.
    """

    model: Any
    model_dir: Path
    start_states: np.ndarray
    config: LoopConfig
    iteration: int
    seed: int
    log_dir: Path

    def make_env(self, num_envs: int, *, branched: bool = True, max_episode_steps: int | None = None) -> Any:
        """A learned :class:`~simgan.sim_vector_env.SimVectorEnv` over ``model``.

        Args:
            num_envs: sub-envs B.
            branched: start sub-envs at uniformly drawn real states of the data and truncate after
                ``rollout_horizon`` steps (MBPO); False: the dataset's episode start states and the real
                env's time limit (full episodes, e.g. for evaluation or for planners).
            max_episode_steps: overrides the truncation limit.
        """
        from simgan.sim_vector_env import SimVectorEnv

        if branched and max_episode_steps is None:
            max_episode_steps = self.config.rollout_horizon
        return SimVectorEnv(
            self.model,
            num_envs,
            initial_states=self.start_states if branched else "dataset",
            max_episode_steps=max_episode_steps,
            compute_realism=False,
            halt_unknown=self.config.halt_unknown,
            seed=self.seed,
            **self.config.learned_env_kwargs(),
        )


class LoopAgent(Protocol):
    """The agent side of the loop (implemented in the CLI with ``agents``; the library never imports them)."""

    def collection_policy(self, agent_dir: Path) -> Policy | None:
        """A picklable ``obs (K x obs_dim) -> actions`` callable for real-data collection from the agent saved in
        ``agent_dir`` (None: uniform random actions)."""
        ...

    def improve(self, context: SimContext) -> dict[str, float]:
        """Train (or re-plan) inside the learned env; returns scalars to log under ``agent/``."""
        ...

    def evaluate(self, env: Any, episodes: int, seed: int) -> tuple[float, float]:
        """(mean, std) undiscounted return over ``episodes`` episodes of ``env`` (deterministic actions)."""
        ...

    def save(self, directory: Path) -> None:
        """Write the agent to ``directory`` (``restore`` must read it back)."""
        ...

    def restore(self, directory: Path) -> None:
        """Load the agent saved by ``save`` (``--resume``)."""
        ...


# ---------------------------------------------------------------------------------------------------------------
# Datasets: the union of every iteration's data
# ---------------------------------------------------------------------------------------------------------------


def merge_datasets(sources: list[Dataset], out: str | Path, *, validation_fraction: float = 0.1) -> Dataset:
    """Write the union of ``sources`` as one verified dataset in ``out`` (one shard per source) and load it.

    Episode ids of source k are shifted by ``k * EPISODE_OFFSET`` so they stay unique. All sources must come
    from the same env with the same spaces.

    Raises:
        LoopError: no sources, or sources from different envs / spaces.
    """
    if not sources:
        raise LoopError("merge_datasets: expected at least one dataset, got none")
    first = sources[0].manifest
    keys = ("env_id", "env_kwargs", "observation_space", "action_space", "arrays")
    for ds in sources[1:]:
        diff = [k for k in keys if ds.manifest.get(k) != first.get(k)]
        if diff:
            raise LoopError(f"merge_datasets: {ds.path} differs from {sources[0].path} in {diff}")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    entries = []
    for k, ds in enumerate(sources):
        t = ds.transitions
        shifted = TransitionBatch(**{**t.arrays(), "episode": t.episode + np.int64(k * EPISODE_OFFSET)})
        entries.append(write_shard(out, f"shard-s{k:03d}.npz", shifted))
    manifest = {
        **first,
        "policy": "merged",
        "merged_from": [str(ds.path) for ds in sources],
        "num_transitions": int(sum(len(ds) for ds in sources)),
        "num_episodes": int(sum(ds.num_episodes for ds in sources)),
        "steps_requested": int(sum(len(ds) for ds in sources)),
        "shards": entries,
    }
    write_manifest(out, manifest)
    return load_dataset(out, validation_fraction=validation_fraction)


# ---------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------


def iteration_dir(out: Path, iteration: int) -> Path:
    return out / f"iter-{iteration:03d}"


def training_data_dir(out: Path, iteration: int) -> Path:
    """The dataset ``iteration``'s model trains on: its own collection at iteration 0, else the union so far."""
    return iteration_dir(out, iteration) / ("union" if iteration else "data")


def finished_iterations(out: Path) -> list[dict[str, Any]]:
    """The ``done.json`` records of the contiguous finished iterations 0, 1, ..., in order."""
    records, i = [], 0
    while (path := iteration_dir(out, i) / DONE_NAME).is_file():
        records.append(json.loads(path.read_text()))
        i += 1
    return records


def _prepare(
    out: Path, config: LoopConfig, agent_params: dict[str, Any], resume: bool
) -> list[dict[str, Any]]:
    """Check the output directory; returns the finished iterations to continue from (resume)."""
    params = {k: v for k, v in asdict(config).items() if k not in ("iterations", "device", "workers")}
    params.update({f"agent.{k}": v for k, v in agent_params.items()})
    if out.exists() and not out.is_dir():
        raise LoopError(f"{out}: expected a directory (or nothing), got a file")
    if out.is_dir() and any(out.iterdir()):
        if not resume:
            raise LoopError(
                f"{out}: output directory is not empty; pass --resume to continue the loop run in it"
            )
        stored_path = out / PARAMS_NAME
        if not stored_path.is_file():
            raise LoopError(f"{out}: cannot resume, expected {PARAMS_NAME} (written when a loop run starts)")
        # a parameter added after the run started is stored as its default (what the run did)
        stored = {**{f.name: f.default for f in fields(LoopConfig)}, **json.loads(stored_path.read_text())}
        # agent settings are stored only where they are not the default: one stored but not requested differs too
        keys = sorted(set(params) | {k for k in stored if k.startswith("agent.")})
        diff = {k: (stored.get(k), params.get(k)) for k in keys if stored.get(k) != params.get(k)}
        if diff:
            detail = ", ".join(f"{k}: stored {a!r}, requested {b!r}" for k, (a, b) in sorted(diff.items()))
            raise LoopError(f"{out}: cannot resume, the loop parameters differ ({detail})")
        return finished_iterations(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / PARAMS_NAME, params)
    return []


def write_progress(out: Path, records: list[dict[str, Any]]) -> None:
    """Rewrite ``progress.csv`` atomically from the iteration records."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: record.get(k, "") for k in CSV_COLUMNS})
    atomic_write_bytes(out / PROGRESS_NAME, buffer.getvalue().encode())


def _train_model(dataset: Dataset, out: Path, config: LoopConfig, iteration: int, progress: bool) -> Any:
    """Train the world model of this iteration from scratch (seeded by iteration)."""
    seed = config.seed_of(iteration)
    if config.model == "ensemble":
        from simgan.ensemble import EnsembleConfig
        from simgan.ensemble_training import train_ensemble

        values: dict[str, Any] = {
            "seed": seed,
            "device": config.device,
            "progress": progress,
            "forecast_calibration": False,
        }
        if config.model_steps is not None:
            values["steps"] = config.model_steps
        return train_ensemble(dataset, out=out, config=EnsembleConfig(**values))
    from simgan.train_config import TrainConfig
    from simgan.training import train

    train_config = TrainConfig(
        steps=config.model_steps, figures=False, forecast_calibration=False, seed=seed, device=config.device
    )
    return train(dataset, out, train_config, overwrite=True, progress=progress)


def _calibrate_last_model(out: Path, iteration: int, config: LoopConfig, log: Callable[[str], None]) -> None:
    """Calibrate the forecast noise of the last iteration's model, the one users forecast with.

    The iterations train their models without it (the loop never forecasts; it took 30-75 s of each iteration's
    model time on CartPole); a run stopped during this step does it again when resumed.
    """
    from simgan.device import resolve_device
    from simgan.forecast_calibration import calibrate_saved_model, is_forecast_calibrated

    it_dir = iteration_dir(out, iteration)
    model_dir = it_dir / "model"
    if is_forecast_calibrated(model_dir):
        return
    dataset = load_dataset(training_data_dir(out, iteration))
    model = calibrate_saved_model(
        model_dir,
        dataset.validation,
        seed=config.seed_of(iteration),
        device=resolve_device(config.device),
    )
    log(
        f"forecast noise of {model_dir}: correlation {model.noise_correlation:g}, "
        f"spread {model.noise_spread:g} (calibrated on its validation episodes)"
    )


def check_discrete_reward(dataset: Dataset, iteration: int) -> None:
    """``round_reward`` needs a reward that takes a few values in the data (before a model is trained on it)."""
    from simgan.world_model import MAX_DISCRETE_REWARDS, discrete_values

    rewards = dataset.train.reward
    if discrete_values(rewards) is None:
        raise LoopError(
            f"round_reward: expected the data's reward to take a few values (at most {MAX_DISCRETE_REWARDS}), got "
            f"{len(np.unique(rewards)):,} distinct values in iteration {iteration}'s {len(rewards):,} training "
            "transitions; leave round_reward off for a continuous reward"
        )


def run_loop(
    config: LoopConfig,
    agent: LoopAgent,
    out: str | Path,
    *,
    resume: bool = False,
    address: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_at_return: float | None = None,
    agent_params: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) the model-based loop; see the module docstring for what one iteration does.

    Args:
        config: the run's parameters.
        agent: the agent side (:class:`LoopAgent`).
        out: run directory (``loop.json``, ``iter-XXX/``, ``progress.csv``, ``tb/``).
        resume: continue after the last finished iteration (the parameters except ``iterations``, ``device`` and
            ``workers`` must match the stored ones).
        address: Ray cluster address (else ``RAY_ADDRESS``, else an embedded local cluster for ``workers >= 1``).
        progress: progress bars of collection and training.
        log: where one-line iteration summaries go.
        stop_at_return: stop early once the mean real return reaches this value (benchmarks); a resumed run
            whose finished iterations already reached it runs no more.
        agent_params: JSON-able description of the agent (algorithm, hyperparameters), stored in ``loop.json``
            and checked on resume like the config.

    Returns:
        The records of all finished iterations (one dict per row of ``progress.csv``).
    """
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from envs import make_env
    from simgan.collection import collect

    out = Path(out)
    records = _prepare(out, config, dict(agent_params or {}), resume)
    start = len(records)
    reached = stop_at_return is not None and any(r["eval_return_mean"] >= stop_at_return for r in records)
    end = start if reached else config.iterations
    if start:
        agent.restore(iteration_dir(out, start - 1) / "agent")
        log(f"resuming after iteration {start - 1} ({records[-1]['real_steps']} real steps)")
    stale = iteration_dir(out, start)
    if stale.exists():
        shutil.rmtree(stale)  # a half-finished iteration: redo it from scratch
    write_progress(out, records)
    purge = records[-1]["real_steps"] + 1 if records else None
    writer = SummaryWriter(str(out / "tb"), purge_step=purge)
    ray_started = _maybe_init_ray(config.workers, address)
    try:
        for i in range(start, end):
            t0 = time.perf_counter()
            it_dir = iteration_dir(out, i)
            it_dir.mkdir(parents=True)
            torch.manual_seed(config.seed_of(i))

            # ---- 1. collect real data with the current agent (iteration 0: random) ---------------------------
            policy = agent.collection_policy(iteration_dir(out, i - 1) / "agent") if i > 0 else None
            collect(
                config.env_id,
                steps=config.steps_of(i),
                out=it_dir / "data",
                workers=config.workers,
                envs_per_worker=config.collect_envs,
                seed=config.seed_of(i),
                policy="random" if policy is None else policy,
                address=address,
                progress=progress,
            )
            sources = [load_dataset(iteration_dir(out, j) / "data") for j in range(i + 1)]
            dataset = sources[0] if i == 0 else merge_datasets(sources, training_data_dir(out, i))
            real_steps = int(sum(len(ds) for ds in sources))
            if config.round_reward:
                check_discrete_reward(dataset, i)

            # ---- 2. world model ------------------------------------------------------------------------------
            t1 = time.perf_counter()
            model = _train_model(dataset, it_dir / "model", config, i, progress)
            t2 = time.perf_counter()

            # ---- 3. the agent improves inside the learned env (branched rollouts from real states) ----------
            context = SimContext(
                model=model,
                model_dir=it_dir / "model",
                start_states=np.ascontiguousarray(dataset.transitions.obs, dtype=np.float32),
                config=config,
                iteration=i,
                seed=config.seed_of(i),
                log_dir=out / "tb" / f"agent-{i:03d}",
            )
            agent_scalars = agent.improve(context)
            agent.save(it_dir / "agent")
            t3 = time.perf_counter()

            # ---- 4. evaluate in the real env (and, for reference, in the learned one) ------------------------
            real_env = make_env(config.env_id)
            try:
                mean, std = agent.evaluate(real_env, config.eval_episodes, seed=10_000 + config.seed_of(i))
            finally:
                real_env.close()
            sim_mean, _ = agent.evaluate(
                context.make_env(config.eval_episodes, branched=False), config.eval_episodes, seed=i
            )
            record = {
                "iteration": i,
                "real_steps": real_steps,
                "eval_return_mean": mean,
                "eval_return_std": std,
                "sim_return_mean": sim_mean,
                "model_seconds": round(t2 - t1, 3),
                "agent_seconds": round(t3 - t2, 3),
                "wall_seconds": round(time.perf_counter() - t0, 3),
                "agent": agent_scalars,
            }
            atomic_write_json(it_dir / DONE_NAME, record)  # last: marks the iteration finished
            records.append(record)
            write_progress(out, records)
            _log_tensorboard(writer, record)
            log(
                f"iteration {i}: {real_steps} real steps, real return {mean:.1f} ± {std:.1f} "
                f"(learned env {sim_mean:.1f}), model {t2 - t1:.0f}s, agent {t3 - t2:.0f}s"
            )
            if stop_at_return is not None and mean >= stop_at_return:
                log(f"stopping: real return {mean:.1f} >= {stop_at_return}")
                break
        if records:
            _calibrate_last_model(out, records[-1]["iteration"], config, log)
    finally:
        writer.close()
        if ray_started:
            import ray

            ray.shutdown()
    return records


def _log_tensorboard(writer: Any, record: dict[str, Any]) -> None:
    step = record["real_steps"]
    writer.add_scalar("eval/real_return", record["eval_return_mean"], step)
    writer.add_scalar("eval/real_return_std", record["eval_return_std"], step)
    writer.add_scalar("eval/sim_return", record["sim_return_mean"], step)
    writer.add_scalar("charts/iteration", record["iteration"], step)
    writer.add_scalar("charts/model_seconds", record["model_seconds"], step)
    writer.add_scalar("charts/agent_seconds", record["agent_seconds"], step)
    for name, value in record.get("agent", {}).items():
        writer.add_scalar(f"agent/{name}", value, step)
    writer.flush()


def _maybe_init_ray(workers: int, address: str | None) -> bool:
    """Start (or connect to) Ray once for all iterations, so each collection does not pay Ray's start-up."""
    if workers == 0:
        return False
    from simgan.collection import connect_ray

    return connect_ray(address)


__all__ = [
    "CSV_COLUMNS",
    "LoopAgent",
    "LoopConfig",
    "LoopError",
    "SimContext",
    "finished_iterations",
    "merge_datasets",
    "run_loop",
    "write_progress",
]
