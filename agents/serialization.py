"""Agent directories: safetensors weights + ``agent.json``, written atomically, read without unpickling.

Layout of an agent directory (``DIR/``)::

    agent.json              written last: format version, algo, JSON config, observation/action spaces,
                            the weights file's name and sha256, free-form metadata
    weights.safetensors     every tensor of the agent (networks, normalisers, entropy temperature)

``agents`` must not import ``simgan``, so this module carries its own tiny space <-> JSON serialiser (the same
format as ``simgan.spaces``) and its own atomic writer (temp file in the same directory + ``os.replace``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

AGENT_FORMAT_VERSION = 1
AGENT_JSON = "agent.json"
WEIGHTS_FILE = "weights.safetensors"


class AgentLoadError(ValueError):
    """An agent directory is missing, truncated, tampered with, or of an unknown version or algo."""


class SpaceMismatchError(ValueError):
    """An agent was asked to act in an env whose spaces differ from the ones it was trained for."""


# ---------------------------------------------------------------------------------------------------------------
# spaces <-> JSON


def _encode_bound(values: np.ndarray) -> list:
    # JSON has no infinity: non-finite bounds become the strings "inf" / "-inf".
    return [
        v if math.isfinite(v) else ("inf" if v > 0 else "-inf")
        for v in values.astype(np.float64).ravel().tolist()
    ]


def space_to_dict(space: gym.Space) -> dict[str, Any]:
    """Serialise a Box or Discrete space to a JSON-able dict (inverse: :func:`space_from_dict`)."""
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _encode_bound(space.low),
            "high": _encode_bound(space.high),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    raise ValueError(f"expected a Box or Discrete space, got {type(space).__name__}: {space}")


def space_from_dict(spec: dict[str, Any]) -> gym.Space:
    """Rebuild a gymnasium space from :func:`space_to_dict`'s output."""
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "Box":
        shape = tuple(int(s) for s in spec["shape"])
        dtype = np.dtype(spec["dtype"])
        low = np.array([float(v) for v in spec["low"]], dtype=np.float64).reshape(shape).astype(dtype)
        high = np.array([float(v) for v in spec["high"]], dtype=np.float64).reshape(shape).astype(dtype)
        return gym.spaces.Box(low=low, high=high, dtype=dtype)
    if kind == "Discrete":
        return gym.spaces.Discrete(int(spec["n"]), start=int(spec.get("start", 0)))
    raise ValueError(f"expected a serialised space of type 'Box' or 'Discrete', got {kind!r}")


def spaces_match(a: gym.Space, b: gym.Space) -> bool:
    """True when two Box/Discrete spaces have the same type, shape, dtype and bounds."""
    if isinstance(a, gym.spaces.Box) and isinstance(b, gym.spaces.Box):
        return (
            a.shape == b.shape
            and a.dtype == b.dtype
            and np.array_equal(a.low, b.low, equal_nan=True)
            and np.array_equal(a.high, b.high, equal_nan=True)
        )
    if isinstance(a, gym.spaces.Discrete) and isinstance(b, gym.spaces.Discrete):
        return int(a.n) == int(b.n) and int(a.start) == int(b.start)
    return False


def check_spaces(
    trained_observation_space: gym.Space,
    trained_action_space: gym.Space,
    observation_space: gym.Space | None,
    action_space: gym.Space | None,
    what: str = "agent",
) -> None:
    """Raise :class:`SpaceMismatchError` when a given space differs from the one the agent was trained for
    (``what`` names it in the message: "<what> was trained for observation space X, got Y")."""
    for kind, trained, given in (
        ("observation", trained_observation_space, observation_space),
        ("action", trained_action_space, action_space),
    ):
        if given is not None and not spaces_match(trained, given):
            raise SpaceMismatchError(f"{what} was trained for {kind} space {trained}, got {given}")


# ---------------------------------------------------------------------------------------------------------------
# files


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@dataclass(frozen=True)
class AgentFiles:
    """Everything an agent directory holds, as plain data."""

    algo: str
    config: dict[str, Any]
    observation_space: gym.Space
    action_space: gym.Space
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]


def save_agent_files(
    directory: str | os.PathLike,
    *,
    algo: str,
    config: dict[str, Any],
    observation_space: gym.Space,
    action_space: gym.Space,
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write ``weights.safetensors`` then ``agent.json`` (each atomically). Refuses non-finite weights.

    Returns:
        The agent directory.
    """
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ValueError(f"refusing to save agent: tensor {name!r} holds non-finite values")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {name: t.detach().to("cpu").contiguous().clone() for name, t in tensors.items()}
    weights = safetensors_save(payload)
    _atomic_write_bytes(directory / WEIGHTS_FILE, weights)
    spec = {
        "format_version": AGENT_FORMAT_VERSION,
        "algo": algo,
        "config": config,
        "observation_space": space_to_dict(observation_space),
        "action_space": space_to_dict(action_space),
        "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(weights).hexdigest()},
        "metadata": metadata or {},
    }
    _atomic_write_bytes(directory / AGENT_JSON, (json.dumps(spec, indent=2, sort_keys=True) + "\n").encode())
    return directory


def load_agent_files(directory: str | os.PathLike) -> AgentFiles:
    """Read and verify an agent directory (JSON + sha256-checked safetensors; nothing is unpickled)."""
    directory = Path(directory)
    json_path = directory / AGENT_JSON
    if not json_path.is_file():
        raise AgentLoadError(
            f"expected an agent directory with {AGENT_JSON}, got {str(directory)!r} (no such file)"
        )
    try:
        spec = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AgentLoadError(f"{json_path}: expected valid JSON, got a corrupt file ({exc})") from exc
    if not isinstance(spec, dict):
        raise AgentLoadError(f"{json_path}: expected a JSON object, got {type(spec).__name__}")
    version = spec.get("format_version")
    if version != AGENT_FORMAT_VERSION:
        raise AgentLoadError(f"{json_path}: expected format_version {AGENT_FORMAT_VERSION}, got {version!r}")
    try:
        algo = str(spec["algo"])
        config = dict(spec["config"])
        observation_space = space_from_dict(spec["observation_space"])
        action_space = space_from_dict(spec["action_space"])
        weights_name = str(spec["weights"]["file"])
        weights_sha = str(spec["weights"]["sha256"])
    except (KeyError, TypeError, ValueError) as exc:
        raise AgentLoadError(f"{json_path}: missing or malformed field ({exc!r})") from exc
    weights_path = directory / weights_name
    if Path(weights_name).name != weights_name or not weights_path.is_file():
        raise AgentLoadError(
            f"{directory}: expected weights file {weights_name!r} next to {AGENT_JSON}, it is missing"
        )
    data = weights_path.read_bytes()
    actual_sha = hashlib.sha256(data).hexdigest()
    if actual_sha != weights_sha:
        raise AgentLoadError(
            f"{weights_path}: expected sha256 {weights_sha[:16]}..., got {actual_sha[:16]}... "
            "(the file was modified or truncated)"
        )
    try:
        tensors = safetensors_load(data)
    except (SafetensorError, ValueError) as exc:
        # e.g. a pickle under a matching sha256: refused, never unpickled
        raise AgentLoadError(f"{weights_path}: not a valid safetensors file ({exc})") from exc
    return AgentFiles(
        algo=algo,
        config=config,
        observation_space=observation_space,
        action_space=action_space,
        tensors=tensors,
        metadata=dict(spec.get("metadata") or {}),
    )
