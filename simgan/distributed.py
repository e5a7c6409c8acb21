"""Ray at the edge of training: data-parallel training on Ray Train.

    simgan.distributed.train_distributed("data/pendulum", "runs/pendulum", TrainConfig(), num_workers=4)

Training runs the one loop of :func:`simgan.training.train` in ``num_workers`` Ray Train workers
(``TorchTrainer``; gloo on CPU, NCCL on GPU). Per-worker data path: every worker reads the manifest and then only
its own shards (``shards[rank::W]``, checksums verified); the workers exchange episode ids to compute the same
episode split as a single process, then all-gather the validation rows (identical on every rank) and all-reduce
the normaliser's moments and the state bounds. Each rank samples ``batch_size`` rows of its own slice per step, so
one step sees ``W * batch_size`` conditions. Rank 0 evaluates and writes ``out/`` (the same atomic checkpoint
format as single-process training) and TensorBoard. ``--data`` and ``--out`` must therefore be paths every node
sees (shared storage on a multi-node cluster).

Learned-env work split over Ray actors (``run_shards``, ``sharded_rollouts``, ``sharded_forecast``) lives in
:mod:`simgan.shards`; ``sharded_rollouts`` and ``sharded_forecast`` are also importable from here, where the
README has always shown them.

``ray.remote`` / ``TorchTrainer`` wiring lives here, in :mod:`simgan.shards` and in :mod:`simgan.collection` only.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simgan.collection import connect_ray
from simgan.data import Dataset, check_episode_consistency, load_shard_slice, shard_slice, split_episodes
from simgan.data_parallel import DistContext
from simgan.dataset_format import TransitionBatch, read_manifest
from simgan.errors import SimganError
from simgan.run_directory import LAST_DIR, prepare_run_directory
from simgan.shards import sharded_forecast, sharded_rollouts  # noqa: F401 (re-exported, as in the README)
from simgan.train_config import TrainConfig
from simgan.training import train

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
