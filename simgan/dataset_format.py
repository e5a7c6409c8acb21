"""The dataset format: the contract between collection and everything that learns from rollouts.

A dataset is a directory::

    data/pendulum/
      manifest.json                  written last; its presence marks a complete dataset
      shard-w000-c00000.npz          one shard per (worker, chunk): whole episodes, numpy arrays, no pickle
      shard-w001-c00000.npz
      ...

Each shard holds, per transition (N rows): ``obs`` (N x obs_dim float32), ``action`` (N x act_dim float32 for
Box spaces, N int64 for Discrete), ``next_obs`` (N x obs_dim float32), ``reward`` (N float32), ``terminated``
(N bool), ``truncated`` (N bool), ``episode`` (N int64, a global episode id), ``step`` (N int64, the index of
the transition within its episode). Within an episode ``obs[t + 1] == next_obs[t]``; ``next_obs`` at an episode's
end is the true final observation, never an autoreset observation. In memory, a shard is a :class:`TransitionBatch`.

Shards are zip files written byte-for-byte deterministically (fixed timestamps, stored uncompressed), so the
same seed gives the same bytes. ``manifest.json`` records the format version, the env, the spaces, the array
schema and, for every shard, its file name, row count and sha256. This module writes and reads single shards and
the manifest; :func:`simgan.data.load_dataset` reads a whole dataset and verifies all of it.

This module depends on numpy (and the standard library) only.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simgan.errors import SimganError
from simgan.fsutil import atomic_write_bytes, atomic_write_json, sha256_bytes

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
FIELDS = ("obs", "action", "next_obs", "reward", "terminated", "truncated", "episode", "step")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # fixed timestamp: identical data gives identical bytes
REQUIRED_MANIFEST_KEYS = (
    "format_version",
    "env_id",
    "env_kwargs",
    "observation_space",
    "action_space",
    "arrays",
    "num_transitions",
    "num_episodes",
    "seed",
    "shards",
)


class DatasetError(SimganError):
    """Base class for every problem with a dataset on disk."""


class ManifestError(DatasetError):
    """manifest.json is missing, unreadable, or lacks required fields."""


class FormatVersionError(DatasetError):
    """The dataset was written in a format version this simgan cannot read."""


class ShardMissingError(DatasetError):
    """A shard listed in the manifest is not on disk."""


class ShardCorruptedError(DatasetError):
    """A shard's bytes do not match the checksum in the manifest, or it cannot be parsed."""


class SchemaError(DatasetError):
    """Arrays have the wrong names, dtypes or shapes, or transitions are inconsistent."""


@dataclass(frozen=True)
class TransitionBatch:
    """A batch of transitions, one row each. Shapes: obs/next_obs N x obs_dim, action N x act_dim or N."""

    obs: np.ndarray
    action: np.ndarray
    next_obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    episode: np.ndarray
    step: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.obs)
        for name in FIELDS:
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray):
                raise SchemaError(f"field {name!r}: expected a numpy array, got {type(arr).__name__}")
            if len(arr) != n:
                raise SchemaError(f"field {name!r}: expected {n} rows (as obs), got {len(arr)}")
        if self.obs.ndim != 2 or self.next_obs.shape != self.obs.shape:
            raise SchemaError(
                f"obs and next_obs: expected equal 2-D shapes (N x obs_dim), got {self.obs.shape} and "
                f"{self.next_obs.shape}"
            )
        for name in ("reward", "terminated", "truncated", "episode", "step"):
            if getattr(self, name).ndim != 1:
                raise SchemaError(f"field {name!r}: expected shape (N,), got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.obs)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in FIELDS}

    def select(self, index: np.ndarray | slice) -> TransitionBatch:
        """Rows by boolean mask, integer index array or slice."""
        return TransitionBatch(**{name: arr[index] for name, arr in self.arrays().items()})

    @classmethod
    def concatenate(cls, batches: Sequence[TransitionBatch]) -> TransitionBatch:
        if not batches:
            raise ValueError("concatenate: expected at least one TransitionBatch, got none")
        return cls(**{name: np.concatenate([getattr(b, name) for b in batches]) for name in FIELDS})


def array_schema(batch: TransitionBatch) -> dict[str, dict[str, Any]]:
    """The manifest's description of each array: dtype and per-row shape."""
    return {
        name: {"dtype": str(arr.dtype), "shape": list(arr.shape[1:])} for name, arr in batch.arrays().items()
    }


# ---------------------------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------------------------


def encode_shard(batch: TransitionBatch) -> bytes:
    """Serialise a batch to npz bytes, deterministically (same arrays -> same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, arr in batch.arrays().items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def decode_shard(data: bytes, *, source: str = "<bytes>") -> TransitionBatch:
    """Parse npz bytes written by :func:`encode_shard`. Never unpickles."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [name for name in FIELDS if name not in npz.files]
            if missing:
                raise SchemaError(f"{source}: expected arrays {list(FIELDS)}, missing {missing}")
            arrays = {name: npz[name] for name in FIELDS}
    except DatasetError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, ValueError from a damaged header, ...
        raise ShardCorruptedError(f"{source}: cannot parse shard ({type(exc).__name__}: {exc})") from exc
    return TransitionBatch(**arrays)


def write_shard(directory: str | Path, name: str, batch: TransitionBatch) -> dict[str, Any]:
    """Write one shard atomically and return its manifest entry ``{file, count, sha256}``."""
    data = encode_shard(batch)
    atomic_write_bytes(Path(directory) / name, data)
    return {"file": name, "count": len(batch), "sha256": sha256_bytes(data)}


def read_shard(path: str | Path, entry: dict[str, Any], schema: dict[str, dict[str, Any]]) -> TransitionBatch:
    """Read and verify one shard against its manifest entry (checksum, row count) and the array schema."""
    path = Path(path)
    if not path.is_file():
        raise ShardMissingError(f"{path}: shard listed in {MANIFEST_NAME} is missing")
    data = path.read_bytes()
    digest = sha256_bytes(data)
    if digest != entry["sha256"]:
        raise ShardCorruptedError(
            f"{path}: checksum mismatch, expected sha256 {entry['sha256']}, got {digest} "
            f"({len(data)} bytes); the file is truncated or damaged"
        )
    batch = decode_shard(data, source=str(path))
    if len(batch) != entry["count"]:
        raise SchemaError(f"{path}: expected {entry['count']} transitions, got {len(batch)}")
    check_schema(batch, schema, source=str(path))
    return batch


def check_schema(batch: TransitionBatch, schema: dict[str, dict[str, Any]], *, source: str) -> None:
    for name, arr in batch.arrays().items():
        want = schema.get(name)
        if want is None:
            raise SchemaError(f"{source}: array {name!r} is not described in the manifest's schema")
        if str(arr.dtype) != want["dtype"] or list(arr.shape[1:]) != list(want["shape"]):
            raise SchemaError(
                f"{source}: array {name!r} expected dtype {want['dtype']} and row shape {tuple(want['shape'])}, "
                f"got dtype {arr.dtype} and row shape {arr.shape[1:]}"
            )


# ---------------------------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------------------------


def write_manifest(directory: str | Path, manifest: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"refusing to write a manifest without required keys {missing}")
    atomic_write_json(Path(directory) / MANIFEST_NAME, manifest)


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{path}: no manifest. Expected a dataset directory written by `simgan collect`; an interrupted "
            "collection has shards but no manifest: finish it with `simgan collect ... --resume`"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise FormatVersionError(
            f"{path}: dataset format version {version!r}, this simgan reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_MANIFEST_KEYS if k not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing required keys {missing}")
    return manifest


__all__ = [
    "FIELDS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "REQUIRED_MANIFEST_KEYS",
    "DatasetError",
    "FormatVersionError",
    "ManifestError",
    "SchemaError",
    "ShardCorruptedError",
    "ShardMissingError",
    "TransitionBatch",
    "array_schema",
    "check_schema",
    "decode_shard",
    "encode_shard",
    "read_manifest",
    "read_shard",
    "write_manifest",
    "write_shard",
]
