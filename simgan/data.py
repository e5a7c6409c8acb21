"""Loading a dataset directory: verification, the split by episode, per-worker shard slices and a summary.

The on-disk format (shards, ``manifest.json``, :class:`TransitionBatch`, the typed errors) is defined in
:mod:`simgan.dataset_format`; :func:`load_dataset` reads every shard listed in the manifest through it and verifies
the whole: format version, checksums, row counts, array schema and per-episode invariants. The format's public
names are re-exported here, so ``from simgan.data import TransitionBatch`` keeps working.

This module depends on numpy (and the standard library) only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from simgan.dataset_format import (  # noqa: F401 (re-exported: the format stays importable from simgan.data)
    FIELDS,
    FORMAT_VERSION,
    MANIFEST_NAME,
    REQUIRED_MANIFEST_KEYS,
    DatasetError,
    FormatVersionError,
    ManifestError,
    SchemaError,
    ShardCorruptedError,
    ShardMissingError,
    TransitionBatch,
    array_schema,
    check_schema,
    decode_shard,
    encode_shard,
    read_manifest,
    read_shard,
    write_manifest,
    write_shard,
)
from simgan.fsutil import sha256_file

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


def _short_of_limit(t: TransitionBatch, limit: int | None) -> str:
    """The summary's note on truncated episodes that ended before the time limit (the collection's budget cuts
    each sub-env's last episode; an env may also truncate by itself), or "" where none did."""
    short = int((t.truncated & (t.step + 1 < limit)).sum()) if limit else 0
    return f", {short:,} of those short of the {limit:,}-step limit" if short else ""


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
        f"manifest     sha256 {sha256_file(dataset.path / MANIFEST_NAME)[:16]}... (models trained on it name this)",
        f"episodes     {len(returns):,} ({int(t.terminated.sum()):,} terminated, {int(t.truncated.sum()):,} truncated"
        f"{_short_of_limit(t, m.get('max_episode_steps'))}); validation {len(dataset.validation_episodes):,}",
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
