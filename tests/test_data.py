"""The dataset format: shard round trips, deterministic bytes, the episode split, typed errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from simgan.data import load_dataset, split_episodes, summarize
from simgan.dataset_format import (
    FIELDS,
    FORMAT_VERSION,
    MANIFEST_NAME,
    FormatVersionError,
    ManifestError,
    SchemaError,
    ShardCorruptedError,
    ShardMissingError,
    TransitionBatch,
    array_schema,
    decode_shard,
    encode_shard,
    write_manifest,
    write_shard,
)


def make_episodes(
    episode_ids: list[int], length: int = 5, obs_dim: int = 3, seed: int = 0
) -> TransitionBatch:
    """Consistent episodes: obs chained to the previous next_obs, the last step terminated."""
    rng = np.random.default_rng(seed)
    parts = []
    for e in episode_ids:
        states = rng.standard_normal((length + 1, obs_dim)).astype(np.float32)
        parts.append(
            TransitionBatch(
                obs=states[:-1],
                action=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                next_obs=states[1:],
                reward=rng.standard_normal(length).astype(np.float32),
                terminated=np.arange(length) == length - 1,
                truncated=np.zeros(length, bool),
                episode=np.full(length, e, np.int64),
                step=np.arange(length, dtype=np.int64),
            )
        )
    return TransitionBatch.concatenate(parts)


def write_dataset(directory: Path, batches: list[TransitionBatch]) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    entries = [write_shard(directory, f"shard-w000-c{i:05d}.npz", b) for i, b in enumerate(batches)]
    box = {"type": "Box", "shape": [3], "dtype": "float32", "low": ["-inf"] * 3, "high": ["inf"] * 3}
    manifest = {
        "format_version": FORMAT_VERSION,
        "env_id": "Test-v0",
        "env_kwargs": {},
        "observation_space": box,
        "action_space": {"type": "Box", "shape": [2], "dtype": "float32", "low": [-1, -1], "high": [1, 1]},
        "arrays": array_schema(batches[0]),
        "num_transitions": sum(len(b) for b in batches),
        "num_episodes": len(np.unique(np.concatenate([b.episode for b in batches]))),
        "seed": 0,
        "shards": entries,
    }
    write_manifest(directory, manifest)
    return manifest


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    write_dataset(tmp_path / "ds", [make_episodes([0, 1, 2], seed=1), make_episodes([3, 4], seed=2)])
    return tmp_path / "ds"


def test_shard_round_trip_and_deterministic_bytes() -> None:
    batch = make_episodes([7, 8])
    data = encode_shard(batch)
    assert encode_shard(make_episodes([7, 8])) == data  # same arrays -> same bytes
    decoded = decode_shard(data)
    for name in FIELDS:
        np.testing.assert_array_equal(getattr(decoded, name), getattr(batch, name))
        assert getattr(decoded, name).dtype == getattr(batch, name).dtype


def test_load_dataset_returns_sorted_verified_transitions(dataset_dir: Path) -> None:
    ds = load_dataset(dataset_dir)
    assert len(ds) == 25 and ds.num_episodes == 5
    assert np.all(np.diff(ds.transitions.episode) >= 0)
    np.testing.assert_array_equal(ds.episode_lengths(), [5] * 5)
    assert ds.initial_states().shape == (5, 3)
    assert ds.observation_space.shape == (3,)


def test_split_by_episode_is_deterministic_and_disjoint(dataset_dir: Path) -> None:
    a = load_dataset(dataset_dir, validation_fraction=0.4, split_seed=3)
    b = load_dataset(dataset_dir, validation_fraction=0.4, split_seed=3)
    np.testing.assert_array_equal(a.validation_episodes, b.validation_episodes)
    assert len(a.validation_episodes) == 2
    train_eps, val_eps = set(np.unique(a.train.episode)), set(np.unique(a.validation.episode))
    assert train_eps.isdisjoint(val_eps) and train_eps | val_eps == {0, 1, 2, 3, 4}
    assert len(a.train) + len(a.validation) == len(a)
    # the split depends on the set of ids only, not on row order
    ids = np.array([4, 4, 0, 1, 3, 2, 2])
    np.testing.assert_array_equal(split_episodes(ids, 0.4, 3), split_episodes(np.sort(ids), 0.4, 3))


def test_truncated_shard_raises_corrupted_naming_file(dataset_dir: Path) -> None:
    shard = dataset_dir / "shard-w000-c00001.npz"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ShardCorruptedError, match=r"shard-w000-c00001\.npz.*checksum mismatch"):
        load_dataset(dataset_dir)


def test_flipped_byte_raises_corrupted(dataset_dir: Path) -> None:
    shard = dataset_dir / "shard-w000-c00000.npz"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ShardCorruptedError, match=r"shard-w000-c00000\.npz.*expected sha256"):
        load_dataset(dataset_dir)


def test_unparseable_bytes_raise_corrupted_naming_source() -> None:
    with pytest.raises(ShardCorruptedError, match=r"bad\.npz: cannot parse"):
        decode_shard(b"not a zip file", source="bad.npz")


def test_missing_shard(dataset_dir: Path) -> None:
    (dataset_dir / "shard-w000-c00001.npz").unlink()
    with pytest.raises(ShardMissingError, match=r"shard-w000-c00001\.npz.*missing"):
        load_dataset(dataset_dir)


def test_missing_manifest_points_to_resume(dataset_dir: Path) -> None:
    (dataset_dir / MANIFEST_NAME).unlink()
    with pytest.raises(ManifestError, match="--resume"):
        load_dataset(dataset_dir)


def test_wrong_format_version(dataset_dir: Path) -> None:
    manifest = json.loads((dataset_dir / MANIFEST_NAME).read_text())
    manifest["format_version"] = FORMAT_VERSION + 1
    (dataset_dir / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(FormatVersionError, match=rf"manifest\.json.*version {FORMAT_VERSION + 1}"):
        load_dataset(dataset_dir)


def test_mismatched_shapes_raise_schema_error(tmp_path: Path) -> None:
    good = make_episodes([0, 1])
    wide = make_episodes([2], obs_dim=4)
    manifest = write_dataset(tmp_path / "ds", [good, good])
    # replace the second shard by one with 4-D observations, keeping the manifest's checksum consistent
    entry = write_shard(tmp_path / "ds", "shard-w000-c00001.npz", wide)
    manifest["shards"][1] = entry
    manifest["num_transitions"] = len(good) + len(wide)
    write_manifest(tmp_path / "ds", manifest)
    with pytest.raises(
        SchemaError, match=r"shard-w000-c00001\.npz: array 'obs' expected dtype float32 and row shape \(3,\)"
    ):
        load_dataset(tmp_path / "ds")


def test_inconsistent_episode_raises_schema_error(tmp_path: Path) -> None:
    batch = make_episodes([0, 1])
    broken = batch.next_obs.copy()
    broken[2] += 1.0  # obs[3] no longer equals next_obs[2]
    write_dataset(tmp_path / "ds", [TransitionBatch(**{**batch.arrays(), "next_obs": broken})])
    with pytest.raises(
        SchemaError, match="episode 0 step 3: obs does not equal the previous transition's next_obs"
    ):
        load_dataset(tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds", verify=False)  # the check can be skipped explicitly
    assert len(ds) == 10


def test_duplicated_transitions_raise_schema_error(tmp_path: Path) -> None:
    batch = make_episodes([0])
    write_dataset(tmp_path / "ds", [batch, batch])
    with pytest.raises(SchemaError, match="episode 0: expected step 1 after step 0, got 0"):
        load_dataset(tmp_path / "ds")


def test_summarize(dataset_dir: Path) -> None:
    ds = load_dataset(dataset_dir)
    text = summarize(ds)
    assert "transitions  25 in 2 shards" in text
    assert "episodes     5 (5 terminated, 0 truncated)" in text
    assert f"mean {ds.episode_returns().mean():.3f}" in text
    assert len([line for line in text.splitlines() if line.strip().startswith(("0 ", "1 ", "2 "))]) == 5
