"""Model directories: weights, config, normaliser, spaces and provenance, written atomically, loaded safely.

Layout of a model directory (``RUN/``)::

    model.json                       written last: format version, model kind, JSON config, ModelInfo,
                                     the weights file's name and sha256, validation metrics
    weights-<sha256[:16]>.safetensors  every tensor of the model (normaliser and ModelInfo arrays included)
    train_state.pt                   optional: optimiser/RNG/step for --resume (plain tensors, weights_only)

The weights file is content-addressed: a new checkpoint writes its weights under a new name first, then swaps
``model.json`` (temp file + ``os.replace``), then deletes the old weights. A process killed at any point leaves
``model.json`` pointing at a complete weights file. Nothing here unpickles code: weights are safetensors, and
``train_state.pt`` is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from simgan.errors import SimganError
from simgan.fsutil import atomic_write_bytes, atomic_write_json, sha256_bytes
from simgan.world_model import ModelInfo, WorldModel, noise_setting_problem

CHECKPOINT_VERSION = 1
MODEL_JSON = "model.json"
TRAIN_STATE = "train_state.pt"
_INFO_PREFIX = "info."

# model kind -> "module:Class"; the class has ``from_checkpoint(files: ModelFiles, device) -> WorldModel``.
MODEL_KINDS: dict[str, str] = {
    "gan": "simgan.models:ConditionalGAN",
    "ensemble": "simgan.ensemble:GaussianEnsemble",
}


class CheckpointError(SimganError):
    """A model directory is missing, truncated, tampered with, or of an unknown version or kind."""


@dataclass(frozen=True)
class ModelFiles:
    """Everything a model directory holds, as plain data."""

    kind: str
    config: dict[str, Any]
    info: ModelInfo
    tensors: dict[str, torch.Tensor]
    metrics: dict[str, Any]
    weights_file: str = ""  # the verified weights file's name
    simgan_version: str = "?"  # the simgan that wrote the directory


def save_model(
    directory: str | Path,
    *,
    kind: str,
    config: dict[str, Any],
    info: ModelInfo,
    tensors: dict[str, torch.Tensor],
    metrics: dict[str, Any] | None = None,
) -> None:
    """Write a model directory atomically. Refuses non-finite weights (nothing is written then)."""
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"model kind: expected one of {sorted(MODEL_KINDS)}, got {kind!r}")
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"refusing to save a checkpoint: tensor {name!r} holds non-finite values")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    for name, arr in info.arrays().items():
        payload[_INFO_PREFIX + name] = torch.from_numpy(np.ascontiguousarray(arr))
    data = safetensors_save(payload)
    digest = sha256_bytes(data)
    weights_name = f"weights-{digest[:16]}.safetensors"
    atomic_write_bytes(directory / weights_name, data)
    atomic_write_json(
        directory / MODEL_JSON,
        {
            "format_version": CHECKPOINT_VERSION,
            "simgan_version": _simgan_version(),
            "kind": kind,
            "config": config,
            "info": info.to_json(),
            "weights": {"file": weights_name, "sha256": digest},
            "metrics": metrics or {},
        },
    )
    for old in directory.glob("weights-*.safetensors"):
        if old.name != weights_name:
            old.unlink(missing_ok=True)


def update_model_json(
    directory: str | Path, *, config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None
) -> None:
    """Set fields of a saved model's ``config`` and ``metrics`` (e.g. a calibration made after it was written).

    The directory is verified first (:func:`load_model_files`); ``model.json`` is rewritten atomically and the
    weights are not touched.
    """
    load_model_files(directory)
    path = Path(directory) / MODEL_JSON
    meta = json.loads(path.read_text())
    meta["config"].update(config or {})
    meta["metrics"] = {**meta.get("metrics", {}), **(metrics or {})}
    atomic_write_json(path, meta)


def load_model_files(directory: str | Path) -> ModelFiles:
    """Read and verify a model directory without building a model."""
    directory = Path(directory)
    meta_path = directory / MODEL_JSON
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: missing; expected a model directory written by `simgan train`")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{meta_path}: not valid JSON ({exc})") from exc
    if meta.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{meta_path}: checkpoint format version {meta.get('format_version')!r}, this simgan reads "
            f"version {CHECKPOINT_VERSION}"
        )
    kind = meta.get("kind")
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{meta_path}: model kind: expected one of {sorted(MODEL_KINDS)}, got {kind!r}")
    weights_path = directory / meta["weights"]["file"]
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: weights file named in {MODEL_JSON} is missing")
    data = weights_path.read_bytes()
    digest = sha256_bytes(data)
    if digest != meta["weights"]["sha256"]:
        raise CheckpointError(
            f"{weights_path}: checksum mismatch, expected sha256 {meta['weights']['sha256']}, got {digest}; "
            "the file is truncated or was modified"
        )
    try:
        tensors = safetensors_load(data)
    except Exception as exc:
        raise CheckpointError(f"{weights_path}: cannot parse safetensors ({exc})") from exc
    info_arrays = {
        k[len(_INFO_PREFIX) :]: v.numpy() for k, v in tensors.items() if k.startswith(_INFO_PREFIX)
    }
    tensors = {k: v for k, v in tensors.items() if not k.startswith(_INFO_PREFIX)}
    info = ModelInfo.from_json(meta["info"], info_arrays)
    return ModelFiles(
        kind=kind,
        config=meta["config"],
        info=info,
        tensors=tensors,
        metrics=meta.get("metrics", {}),
        weights_file=weights_path.name,
        simgan_version=str(meta.get("simgan_version", "?")),
    )


def stored_forecast_noise(files: ModelFiles) -> tuple[float, float]:
    """(noise_correlation, noise_spread): how forecasts draw this model's noise, as saved in ``model.json``.

    ``config.noise_correlation`` is a number in [0, 1] and ``config.noise_spread`` one in (0, MAX_NOISE_SPREAD];
    0 and 1 when absent, as in models saved before they existed. A bad value raises :class:`CheckpointError`
    naming the field.
    """
    rho = files.config.get("noise_correlation", 0.0)
    spread = files.config.get("noise_spread", 1.0)
    for name, value in (("noise_correlation", rho), ("noise_spread", spread)):
        if problem := noise_setting_problem(name, value):
            raise CheckpointError(f"{MODEL_JSON}: config.{problem}")
    return float(rho), float(spread)


def load_model(directory: str | Path, device: str | torch.device = "auto") -> WorldModel:
    """Rebuild a model (GAN or ensemble) from its directory alone, on any device."""
    from simgan.device import resolve_device

    files = load_model_files(directory)
    module_name, class_name = MODEL_KINDS[files.kind].split(":")
    model_class = getattr(importlib.import_module(module_name), class_name)
    return model_class.from_checkpoint(files, resolve_device(device))


def save_train_state(directory: str | Path, state: dict[str, Any]) -> None:
    """Optimiser state dicts, RNG states and counters for ``--resume``; tensors and primitives only."""
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(Path(directory) / TRAIN_STATE, buffer.getvalue())


def load_train_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / TRAIN_STATE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; nothing to resume from")
    try:
        # weights_only=True: a pickle that would run code is refused, never executed.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: refused or unreadable ({type(exc).__name__}: {exc})") from exc


def _simgan_version() -> str:
    from simgan import __version__

    return __version__


def _widths(hidden: Any) -> str:
    return "-".join(str(int(h)) for h in hidden) or "none"


def _space(space: Any) -> str:
    if hasattr(space, "n"):
        return f"Discrete({int(space.n)})"
    return f"Box({', '.join(str(d) for d in space.shape)},) {space.dtype}"


def _budget(train: dict[str, Any]) -> str:
    epochs = train.get("epochs")
    return f"{epochs} epochs" if epochs is not None else f"{train.get('steps', '?')} steps"


def _reward_values(info: ModelInfo) -> str:
    values = info.reward_values
    if values is None:
        return (
            "continuous in the training data"
            if info.reward_values_recorded
            else "values not recorded (saved before simgan recorded them)"
        )
    shown = ", ".join(f"{v:g}" for v in values.tolist())
    return (
        f"{len(values)} distinct value{'s' if len(values) > 1 else ''} in the training data: {shown} "
        "(a learned env rounds to them with reward_values='data', `--round-reward`)"
    )


def summarize_model(directory: str | Path) -> str:
    """A human-readable summary of a model directory (``simgan info``): what it models, its architecture and
    size, how it was trained, its validation metrics and forecast noise. Reads and verifies the files; builds
    nothing."""
    files = load_model_files(directory)
    info, config, metrics = files.info, files.config, files.metrics
    parameters = sum(t.numel() for t in files.tensors.values() if t.is_floating_point())
    rho, spread = stored_forecast_noise(files)
    kwargs = f" {json.dumps(info.env_kwargs)}" if info.env_kwargs else ""
    limit = f"; episodes up to {info.max_episode_steps:,} steps" if info.max_episode_steps else ""
    lines = [
        f"model        {directory} ({'conditional GAN' if files.kind == 'gan' else 'Gaussian ensemble'}, "
        f"simgan {files.simgan_version}, checkpoint format v{CHECKPOINT_VERSION})",
        f"env          {info.env_id}{kwargs}; observations {_space(info.observation_space)}, actions "
        f"{_space(info.action_space)}{limit}",
        f"trained on   the dataset whose manifest has sha256 {info.dataset_sha256[:16]}... (`simgan info DATA`)",
        f"reward       {_reward_values(info)}",
        f"size         {parameters:,} numbers (weights, normaliser statistics) in {files.weights_file} "
        "(checksum verified)",
    ]
    if files.kind == "gan":
        model, train = config["model"], config.get("train", {})
        components = model.get("noise_components", 0)
        lines += [
            f"architecture mean head {_widths(model['mean_hidden'])}, residual {_widths(model['residual_hidden'])}, "
            f"discriminator {_widths(model['disc_hidden'])}, termination "
            f"{_widths(model.get('termination_hidden', []))}; {model.get('activation', 'silu')}; noise "
            f"{model['noise_dim']}{f' + {components} components' if components else ''}; {model['loss']} loss",
            f"training     {_budget(train)}, batch {train.get('batch_size', '?')}, "
            f"seed {train.get('seed', '?')}; best at step {metrics.get('best_step', '?')} (energy score "
            f"{metrics.get('best_energy_score', float('nan')):.4g}) after {metrics.get('time_to_best_s', 0.0):.1f} s",
        ]
        if "next_obs_mse_mean" in metrics:
            lines.append(
                f"validation   next-obs MSE {metrics['next_obs_mse_mean']:.3g} (mean), "
                f"{metrics['next_obs_mse_sample']:.3g} (sample), {metrics['next_obs_mse_identity']:.3g} (copying "
                f"obs); reward MSE {metrics['reward_mse_mean']:.3g}; termination accuracy "
                f"{metrics['termination_accuracy']:.3f}, F1 {metrics['termination_f1']:.3f}"
            )
        alarms = metrics.get("alarms") or []
        lines.append(f"alarms       {'; '.join(str(a) for a in alarms) if alarms else 'none'}")
    else:
        ens = config["ensemble"]
        lines += [
            f"architecture {ens['members']} members ({ens['elites']} elites), each {_widths(ens['hidden'])}",
            f"training     {metrics.get('steps', ens.get('steps', '?'))} steps, batch {ens.get('batch_size', '?')}, "
            f"seed {ens.get('seed', '?')}; {metrics.get('train_transitions', 0):,} train / "
            f"{metrics.get('validation_transitions', 0):,} validation transitions, "
            f"{metrics.get('train_seconds', 0.0):.1f} s",
        ]
        if "val_mse_elites" in metrics:
            lines.append(f"validation   elites' MSE {metrics['val_mse_elites']:.3g} (normalised targets)")
    lines.append(f"forecast     noise correlation {rho:g}, spread {spread:g} (as `simgan forecast` draws it)")
    return "\n".join(lines)
