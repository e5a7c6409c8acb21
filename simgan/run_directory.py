"""The run directory of a training run: checks before anything is written, and everything ``--resume`` reads back.

Layout of a run directory ``out/`` (each model directory as described in :mod:`simgan.checkpoint`)::

    model.json, weights-*.safetensors  the best checkpoint (validation energy score of generated transitions)
    generated_vs_real.png              the best checkpoint's samples at fixed validation (s, a)
    last/                              the latest checkpoint plus ``train_state.pt`` (optimiser states, every RNG
                                       state, the loop's counters, training-only nets such as the InfoGAN
                                       term's classifier): the resume point
    tb/                                TensorBoard

:func:`simgan.training.train` writes it; the CLI checks ``--out`` here before the (slow) dataset load.
"""

from __future__ import annotations

import random
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from simgan.checkpoint import load_model_files, load_train_state, save_train_state
from simgan.errors import SimganError
from simgan.train_config import TrainConfig

if TYPE_CHECKING:
    from simgan.data import Dataset
    from simgan.data_parallel import DistContext
    from simgan.models import ConditionalGAN

LAST_DIR = "last"
FIGURE_FILE = "generated_vs_real.png"


class RunDirectoryError(SimganError):
    """The output directory cannot be used as asked (not empty without resume/overwrite, nothing to resume)."""


def check_run_directory(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Raise :class:`RunDirectoryError` if ``out`` cannot be used as asked; touches nothing."""
    if resume and overwrite:
        raise RunDirectoryError("resume / overwrite: expected at most one of them, got both")
    if resume:
        if not (out / LAST_DIR / "train_state.pt").is_file():
            raise RunDirectoryError(
                f"{out}: --resume expected {out / LAST_DIR / 'train_state.pt'}, found nothing"
            )
        return
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out}: expected a directory, got a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunDirectoryError(
                f"{out}: expected an empty or new directory, got a non-empty one (pass --resume or --overwrite)"
            )
        if not ((out / "model.json").exists() or (out / LAST_DIR).exists() or (out / "tb").exists()):
            raise RunDirectoryError(
                f"{out}: --overwrite refused, the directory does not look like a simgan run"
            )


def prepare_run_directory(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check ``out`` (see :func:`check_run_directory`); with ``overwrite``, delete the old run first."""
    check_run_directory(out, resume=resume, overwrite=overwrite)
    if overwrite and out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def saved_config(out: Path) -> TrainConfig:
    """The config a run in ``out`` was trained with (from ``out/last/model.json``)."""
    return TrainConfig.from_json(load_model_files(Path(out) / LAST_DIR).config["train"])


def resume_config(out: Path, config: TrainConfig | None) -> TrainConfig:
    """The saved run's config; a given ``config`` may change the budget and device, never the architecture."""
    saved = saved_config(out)
    if config is None:
        return saved
    if config.model_config() != saved.model_config():
        raise RunDirectoryError(
            f"{out}: resume expected the saved architecture {saved.model_config()}, got {config.model_config()}"
        )
    if saved.mean_ema > 0 and config.mean_ema == 0:
        warnings.warn(  # stacklevel 3: resume_config <- train <- the caller of train
            f"{out}: the run was trained with mean_ema={saved.mean_ema} and resumes with mean_ema=0: training goes "
            "on from the averaged heads, and the trained copy saved with the run is not used",
            stacklevel=3,
        )
    return config


def save_resume_point(
    out: Path,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    rng: torch.Generator,
    counters: dict[str, Any],
    *,
    modules: dict[str, torch.nn.Module] | None = None,
) -> None:
    """Write ``out/last/train_state.pt``: what a resumed run restores besides the model's weights.

    Write the checkpoint in ``out/last/`` first: :func:`check_run_directory` takes this file as the sign that
    there is a run to resume.
    """
    save_train_state(
        out / LAST_DIR,
        {
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "rng": _rng_states(rng),
            "counters": dict(counters),
            "modules": {name: m.state_dict() for name, m in (modules or {}).items()},  # training-only nets
        },
    )


def restore_resume_point(
    out: Path,
    model: ConditionalGAN,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
    rng: torch.Generator,
    *,
    dataset: Dataset,
    seed: int,
    dist: DistContext,
    device: torch.device,
    modules: dict[str, torch.nn.Module] | None = None,
) -> dict[str, Any]:
    """Load ``out/last/`` into a freshly built model, its optimisers, the batch RNG and the training-only
    ``modules`` (by name); return the saved counters.

    Rank 0 gets back every RNG state it saved (so a resumed run matches a straight one bit for bit); only rank 0's
    states are saved, so other ranks reseed their batch RNG from ``seed``, their rank and the saved step.

    Raises:
        RunDirectoryError: ``dataset`` is not the dataset the run was trained on, or a saved module does not fit.
    """
    files = load_model_files(out / LAST_DIR)
    info = model.info
    if files.info.dataset_sha256 != info.dataset_sha256:
        raise RunDirectoryError(
            f"{out}: resume expected the dataset the run was trained on (manifest sha256 "
            f"{files.info.dataset_sha256[:16]}...), got {dataset.path} ({info.dataset_sha256[:16]}...)"
        )
    model.load_tensors({name: t.to(device) for name, t in files.tensors.items()})
    saved = load_train_state(out / LAST_DIR)
    for name, module in (modules or {}).items():  # training-only nets (an empty module for a run without one)
        try:
            module.load_state_dict(saved.get("modules", {}).get(name, {}))
        except RuntimeError as exc:
            raise RunDirectoryError(
                f"{out / LAST_DIR}: the saved {name} does not match the run's config ({exc})"
            ) from None
    opt_g.load_state_dict(saved["opt_g"])
    opt_d.load_state_dict(saved["opt_d"])
    if dist.is_writer:
        _restore_rng_states(rng, saved["rng"])
    else:  # only rank 0's RNG states are saved; the others draw fresh batches after a resume
        rng.manual_seed(seed + dist.rank + dist.world_size * saved["counters"]["step"])
    return saved["counters"]


def _rng_states(rng: torch.Generator) -> dict[str, Any]:
    """The batch RNG's and the global torch / numpy / Python RNG states, as tensors and primitives only."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "batch_rng": rng.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }


def _restore_rng_states(rng: torch.Generator, states: dict[str, Any]) -> None:
    rng.set_state(states["batch_rng"])
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
