"""simgan: learned, batched, GPU-ready simulators for reinforcement learning.

    collect (Ray workers) -> dataset dir -> train (conditional GAN) -> model dir -> SimEnv / SimVectorEnv
                                                                                 -> forecast, agents

Public names are imported lazily, so ``import simgan`` is cheap and pulls in Ray or torch only when used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "Dataset": "simgan.data",
    "TransitionBatch": "simgan.dataset_format",
    "load_dataset": "simgan.data",
    "DatasetError": "simgan.dataset_format",
    "SimganError": "simgan.errors",
    "collect": "simgan.collection",
    "WorldModel": "simgan.world_model",
    "ModelInfo": "simgan.world_model",
    "at_precision": "simgan.world_model",
    "train": "simgan.training",
    "TrainConfig": "simgan.training",
    "load_model": "simgan.checkpoint",
    "ConditionalGAN": "simgan.models",
    "GaussianEnsemble": "simgan.ensemble",
    "EnsembleConfig": "simgan.ensemble",
    "train_ensemble": "simgan.ensemble_training",
    "evaluate_model": "simgan.metrics",
    "SimEnv": "simgan.sim_env",
    "SimVectorEnv": "simgan.sim_vector_env",
    "forecast": "simgan.forecasting",
    "Forecast": "simgan.forecasting",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'simgan' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


def _register_sim_env() -> None:
    """Register ``simgan/Sim-v0`` (string entry points: nothing heavy is imported here; idempotent)."""
    import gymnasium as gym

    if "simgan/Sim-v0" not in gym.registry:
        gym.register(
            id="simgan/Sim-v0",
            entry_point="simgan.sim_env:SimEnv",
            vector_entry_point="simgan.sim_vector_env:SimVectorEnv",
        )


_register_sim_env()
