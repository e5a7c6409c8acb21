"""GAN checkpoints: round trip through load_model, tampering and truncation detected, pickles refused."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from tiny_configs import TINY_GAN

import simgan
from simgan.checkpoint import CheckpointError, load_model, load_train_state
from simgan.models import ConditionalGAN
from simgan.training import train


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks on a shared 2-core machine: one intra-op thread is much faster than two contending."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return simgan.collect(
        "Pendulum-v1", steps=1000, workers=0, out=tmp_path_factory.mktemp("data"), seed=0, progress=False
    )


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "gan"
    train(dataset, out, TINY_GAN, progress=False)
    return out


def weights_file(run: Path) -> Path:
    return run / json.loads((run / "model.json").read_text())["weights"]["file"]


def test_round_trip_gives_identical_outputs(dataset, run_dir: Path) -> None:
    first, second = load_model(run_dir, device="cpu"), load_model(run_dir, device="cpu")
    assert isinstance(first, ConditionalGAN)
    assert first.info.env_id == "Pendulum-v1" and first.info.obs_dim == 3
    val = dataset.validation
    obs, action = torch.as_tensor(val.obs), torch.as_tensor(val.action)
    noise = torch.randn(len(val), first.noise_dim, generator=torch.Generator().manual_seed(0))
    for a, b in zip(first.sample(obs, action, noise=noise), second.sample(obs, action, noise=noise)):
        assert torch.equal(a, b)
    next_obs, reward = torch.as_tensor(val.next_obs), torch.as_tensor(val.reward)
    assert torch.equal(
        first.realism(obs, action, next_obs, reward), second.realism(obs, action, next_obs, reward)
    )
    # All state survived: every tensor equal, normaliser and realism reference included.
    for name, tensor in first.state_tensors().items():
        assert torch.equal(tensor, second.state_tensors()[name]), name
    assert first.realism_reference.numel() == len(val)
    metrics = json.loads((run_dir / "model.json").read_text())["metrics"]
    assert {"energy_score", "next_obs_mse_mean", "next_obs_mse_sample", "best_step", "alarms"} <= set(metrics)


def test_truncated_weights_name_the_file(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = weights_file(copy)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=path.name):
        load_model(copy, device="cpu")


def test_tampered_weights_name_the_file(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    path = weights_file(copy)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{path.name}.*checksum mismatch"):
        load_model(copy, device="cpu")


def test_update_model_json_sets_fields_and_refuses_a_broken_directory(run_dir: Path, tmp_path: Path) -> None:
    """The post-training calibration rewrites config and metrics only; a directory that fails verification is
    refused before anything is written."""
    import shutil

    from simgan.checkpoint import update_model_json

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    before = json.loads((copy / "model.json").read_text())
    update_model_json(copy, config={"noise_spread": 1.25}, metrics={"forecast_band_coverage": {"1.0": 0.8}})
    after = json.loads((copy / "model.json").read_text())
    assert after["config"] == {**before["config"], "noise_spread": 1.25}
    assert after["metrics"] == {**before["metrics"], "forecast_band_coverage": {"1.0": 0.8}}
    assert after["weights"] == before["weights"]
    assert load_model(copy, device="cpu").noise_spread == 1.25
    path = weights_file(copy)
    path.write_bytes(path.read_bytes()[:100])
    saved = (copy / "model.json").read_bytes()
    with pytest.raises(CheckpointError, match=path.name):
        update_model_json(copy, config={"noise_spread": 2.0})
    assert (copy / "model.json").read_bytes() == saved


def test_missing_model_config_is_a_checkpoint_error(run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    meta = json.loads((copy / "model.json").read_text())
    del meta["config"]["model"]
    (copy / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="model config"):
        load_model(copy, device="cpu")


class _Exploit:
    """Unpickling this would create a marker file (it must never happen)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_train_state_is_refused_and_not_executed(dataset, run_dir: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    marker = tmp_path / "pwned"
    (copy / "last" / "train_state.pt").write_bytes(pickle.dumps({"opt_g": _Exploit(marker)}))
    with pytest.raises(CheckpointError, match=r"train_state\.pt"):
        load_train_state(copy / "last")
    with pytest.raises(CheckpointError, match=r"train_state\.pt"):
        train(dataset, copy, TINY_GAN, resume=True, progress=False)
    assert not marker.exists()


def test_info_summarises_a_model_directory(dataset, run_dir: Path, tmp_path: Path) -> None:
    """`simgan info` on a model directory (GAN and ensemble): what it models, its size, its training and the
    dataset it came from, named by the same manifest hash `simgan info DATA` prints."""
    from simgan.checkpoint import summarize_model
    from simgan.data import summarize
    from simgan.ensemble_training import EnsembleConfig, train_ensemble

    gan = summarize_model(run_dir)
    manifest_line = next(line for line in summarize(dataset).splitlines() if line.startswith("manifest"))
    digest = manifest_line.split()[2]  # "manifest     sha256 0123456789abcdef... (...)"
    assert digest.endswith("...") and f"has sha256 {digest}" in gan
    model = load_model(run_dir)
    count = sum(t.numel() for t in model.state_dict().values() if t.is_floating_point())
    assert f"{count:,} numbers" in gan and f"in {weights_file(run_dir).name} (checksum verified)" in gan
    assert "conditional GAN" in gan and "observations Box(3,) float32, actions Box(1,) float32" in gan
    assert f"mean head {'-'.join(map(str, TINY_GAN.mean_hidden))}" in gan
    assert f"training     {TINY_GAN.steps} steps, batch {TINY_GAN.batch_size}, seed {TINY_GAN.seed}" in gan
    assert "validation   next-obs MSE" in gan and "alarms       none" in gan

    out = tmp_path / "ens"
    config = EnsembleConfig(members=2, elites=1, hidden=(16, 16), steps=20, seed=4, progress=False)
    train_ensemble(dataset, out=out, config=config)
    ens = summarize_model(out)
    assert "Gaussian ensemble" in ens and "2 members (1 elites), each 16-16" in ens
    assert "20 steps, batch 256, seed 4" in ens and "elites' MSE" in ens and f"has sha256 {digest}" in ens

    with pytest.raises(CheckpointError, match="missing; expected a model directory"):
        summarize_model(tmp_path)


def test_info_cli_tells_a_model_directory_from_a_dataset(dataset, run_dir: Path, capsys) -> None:
    from simgan.cli import main

    assert main(["info", str(run_dir)]) == 0
    assert capsys.readouterr().out.startswith(f"model        {run_dir} (conditional GAN")
    assert main(["info", str(dataset.path)]) == 0
    assert capsys.readouterr().out.startswith(f"dataset      {dataset.path}")
