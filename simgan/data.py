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
end is the true final observation, never an autoreset observation.

Shards are zip files written byte-for-byte deterministically (fixed timestamps, stored uncompressed), so the
same seed gives the same bytes. ``manifest.json`` records the format version, the env, the spaces, the array
schema and, for every shard, its file name, row count and sha256. :func:`load_dataset` verifies all of it.

This module depends on numpy (and the standard library) only.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
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


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


def split_episodes(episode_ids: np.ndarray, validation_fraction: float, seed: int = 0) -> np.ndarray:
    """Deterministically choose validation episodes. Returns the sorted validation episode ids.

    Depends only on the set of episode ids, the fraction and the seed, never on row order.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction: expected a value in [0, 1), got {validation_fraction}")
    unique = np.unique(episode_ids)
    if validation_fraction == 0.0 or len(unique) < 2:
        return unique[:0]
    n_val = max(1, round(validation_fraction * len(unique)))
    n_val = min(n_val, len(unique) - 1)  # always keep at least one training episode
    chosen = np.random.default_rng(seed).permutation(len(unique))[:n_val]
    return np.sort(unique[chosen])


def check_episode_consistency(batch: TransitionBatch, *, source: str) -> None:
    """Verify per-episode invariants: steps count up by one and ``obs[t + 1] == next_obs[t]``.

    Expects rows sorted by (episode, step).
    """
    same_episode = batch.episode[1:] == batch.episode[:-1]
    bad_step = same_episode & (batch.step[1:] != batch.step[:-1] + 1)
    if bad_step.any():
        i = int(np.flatnonzero(bad_step)[0])
        raise SchemaError(
            f"{source}: episode {batch.episode[i]}: expected step {batch.step[i] + 1} after step {batch.step[i]}, "
            f"got {batch.step[i + 1]} (missing or duplicated transitions)"
        )
    chained = np.all(batch.obs[1:] == batch.next_obs[:-1], axis=1)
    bad_chain = same_episode & ~chained
    if bad_chain.any():
        i = int(np.flatnonzero(bad_chain)[0])
        raise SchemaError(
            f"{source}: episode {batch.episode[i]} step {batch.step[i + 1]}: obs does not equal the previous "
            "transition's next_obs"
        )
    ended = batch.terminated[:-1] | batch.truncated[:-1]
    if (same_episode & ended).any():
        i = int(np.flatnonzero(same_episode & ended)[0])
        raise SchemaError(
            f"{source}: episode {batch.episode[i]} continues after it ended at step {batch.step[i]}"
        )


@dataclass(frozen=True)
class Dataset:
    """A verified dataset: all transitions (sorted by episode, then step), the manifest, and a split by episode."""

    path: Path
    manifest: dict[str, Any]
    transitions: TransitionBatch
    validation_episodes: np.ndarray  # sorted episode ids held out for validation

    def __len__(self) -> int:
        return len(self.transitions)

    @property
    def env_id(self) -> str:
        return self.manifest["env_id"]

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return dict(self.manifest["env_kwargs"])

    @property
    def obs_dim(self) -> int:
        return int(self.transitions.obs.shape[1])

    @property
    def is_discrete(self) -> bool:
        return self.manifest["action_space"]["type"] == "Discrete"

    @property
    def observation_space(self):
        """The source env's observation space as a gymnasium space (rebuilt from the manifest)."""
        from simgan.spaces import space_from_dict  # gymnasium stays out of the numpy-only format code

        return space_from_dict(self.manifest["observation_space"])

    @property
    def action_space(self):
        from simgan.spaces import space_from_dict

        return space_from_dict(self.manifest["action_space"])

    @cached_property
    def is_validation(self) -> np.ndarray:
        """Boolean mask over rows: True for transitions of validation episodes."""
        return np.isin(self.transitions.episode, self.validation_episodes)

    @property
    def train(self) -> TransitionBatch:
        return self.transitions.select(~self.is_validation)

    @property
    def validation(self) -> TransitionBatch:
        return self.transitions.select(self.is_validation)

    @property
    def num_episodes(self) -> int:
        return len(np.unique(self.transitions.episode))

    def initial_states(self) -> np.ndarray:
        """First observations of every episode (N_episodes x obs_dim)."""
        return self.transitions.obs[self.transitions.step == 0]

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode, in episode-id order."""
        _, inverse = np.unique(self.transitions.episode, return_inverse=True)
        return np.bincount(inverse, weights=self.transitions.reward.astype(np.float64))

    def episode_lengths(self) -> np.ndarray:
        return np.unique(self.transitions.episode, return_counts=True)[1]


def load_dataset(
    directory: str | Path, *, validation_fraction: float = 0.1, split_seed: int = 0, verify: bool = True
) -> Dataset:
    """Load and verify a dataset directory.

    Verifies the format version, every shard's checksum, row count and array schema, and (with ``verify``) the
    per-episode invariants. Raises a subclass of :class:`DatasetError` naming the file and what was expected.

    Args:
        directory: a directory written by ``simgan collect``.
        validation_fraction: share of *episodes* held out for validation.
        split_seed: seed of the deterministic episode split.
        verify: check per-episode consistency (steps contiguous, obs chained to the previous next_obs).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ManifestError(
            f"{directory}: expected a dataset directory, got {'a file' if directory.exists() else 'nothing'}"
        )
    manifest = read_manifest(directory)
    schema = manifest["arrays"]
    if set(schema) != set(FIELDS):
        raise SchemaError(
            f"{directory / MANIFEST_NAME}: expected arrays {sorted(FIELDS)}, got {sorted(schema)}"
        )
    if not manifest["shards"]:
        raise ManifestError(f"{directory / MANIFEST_NAME}: lists no shards")
    batches = [read_shard(directory / entry["file"], entry, schema) for entry in manifest["shards"]]
    transitions = TransitionBatch.concatenate(batches)
    if len(transitions) != manifest["num_transitions"]:
        raise SchemaError(
            f"{directory / MANIFEST_NAME}: expected {manifest['num_transitions']} transitions, shards hold "
            f"{len(transitions)}"
        )
    order = np.lexsort((transitions.step, transitions.episode))
    transitions = transitions.select(order)
    if verify:
        check_episode_consistency(transitions, source=str(directory))
    validation = split_episodes(transitions.episode, validation_fraction, split_seed)
    return Dataset(path=directory, manifest=manifest, transitions=transitions, validation_episodes=validation)


def shard_slice(manifest: dict[str, Any], rank: int, world_size: int) -> list[dict[str, Any]]:
    """The manifest entries of the shards worker ``rank`` of ``world_size`` reads: every ``world_size``-th one.

    Raises:
        DatasetError: fewer shards than workers (some worker would get no data).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank / world_size: expected 0 <= rank < world_size, got {rank} / {world_size}")
    shards = manifest["shards"]
    if len(shards) < world_size:
        raise DatasetError(
            f"expected at least {world_size} shards (one per training worker), got {len(shards)}; collect with "
            "more --workers or a smaller --chunk-steps, or train with fewer workers"
        )
    return shards[rank::world_size]


def load_shard_slice(
    directory: str | Path, rank: int, world_size: int
) -> tuple[dict[str, Any], TransitionBatch]:
    """Read and verify only worker ``rank``'s shards (see :func:`shard_slice`); rows sorted by (episode, step).

    Each shard is checked like in :func:`load_dataset` (checksum, row count, schema); episode consistency is not,
    since an episode may continue in a shard another worker reads.

    Returns:
        The manifest and this worker's transitions.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    schema = manifest["arrays"]
    batches = [read_shard(directory / e["file"], e, schema) for e in shard_slice(manifest, rank, world_size)]
    transitions = TransitionBatch.concatenate(batches)
    return manifest, transitions.select(np.lexsort((transitions.step, transitions.episode)))


def summarize(dataset: Dataset) -> str:
    """A human-readable summary: counts, return statistics and per-dimension ranges."""
    t = dataset.transitions
    m = dataset.manifest
    returns = dataset.episode_returns()
    lengths = dataset.episode_lengths()
    lines = [
        f"dataset      {dataset.path}",
        f"env          {m['env_id']} {json.dumps(m['env_kwargs']) if m['env_kwargs'] else ''}".rstrip(),
        f"transitions  {len(t):,} in {len(m['shards'])} shards (format v{m['format_version']}, seed {m['seed']})",
        f"episodes     {len(returns):,} ({int(t.terminated.sum()):,} terminated, {int(t.truncated.sum()):,} truncated);"
        f" validation {len(dataset.validation_episodes):,}",
        f"length       mean {lengths.mean():.1f}  min {lengths.min()}  max {lengths.max()}",
        f"return       mean {returns.mean():.3f}  std {returns.std():.3f}  min {returns.min():.3f}  max {returns.max():.3f}",
        f"reward       mean {t.reward.mean():.4f}  min {t.reward.min():.4f}  max {t.reward.max():.4f}",
        "",
        f"{'obs dim':>8} {'min':>12} {'max':>12} {'mean':>12} {'std':>12}",
    ]
    for d in range(t.obs.shape[1]):
        col = t.obs[:, d]
        lines.append(f"{d:>8} {col.min():>12.4f} {col.max():>12.4f} {col.mean():>12.4f} {col.std():>12.4f}")
    if t.action.ndim == 2:
        lines.append("")
        lines.append(f"{'act dim':>8} {'min':>12} {'max':>12} {'mean':>12} {'std':>12}")
        for d in range(t.action.shape[1]):
            col = t.action[:, d]
            lines.append(
                f"{d:>8} {col.min():>12.4f} {col.max():>12.4f} {col.mean():>12.4f} {col.std():>12.4f}"
            )
    else:
        counts = np.bincount(t.action)
        lines.append("")
        lines.append("actions      " + "  ".join(f"{a}: {c:,}" for a, c in enumerate(counts)))
    return "\n".join(lines)


def iter_shard_files(directory: str | Path) -> Iterable[Path]:
    """Shard files present on disk (complete ones only: temp files never match)."""
    return sorted(Path(directory).glob("shard-*.npz"))


__all__ = [
    "FIELDS",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Dataset",
    "DatasetError",
    "FormatVersionError",
    "ManifestError",
    "SchemaError",
    "ShardCorruptedError",
    "ShardMissingError",
    "TransitionBatch",
    "array_schema",
    "check_episode_consistency",
    "decode_shard",
    "encode_shard",
    "load_dataset",
    "load_shard_slice",
    "read_manifest",
    "read_shard",
    "shard_slice",
    "split_episodes",
    "summarize",
    "write_manifest",
    "write_shard",
]
