"""The CUDA paths, where a GPU is present (skipped otherwise): a model trained on the CPU runs on the GPU with the
CPU's results, the learned env's torch mode keeps its tensors on the GPU, and training runs there."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_configs import TINY_GAN

import simgan
from simgan.checkpoint import load_model
from simgan.training import train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda")
    data = simgan.collect("Pendulum-v1", steps=1000, workers=0, out=root / "data", seed=0, progress=False)
    train(data, root / "gan", TINY_GAN, progress=False)
    return data, root / "gan"


def test_a_cpu_model_samples_the_same_on_the_gpu(trained) -> None:
    data, run = trained
    cpu, gpu = load_model(run, device="cpu"), load_model(run, device="cuda")
    assert load_model(run, device="auto").device.type == "cuda"  # --device auto picks the GPU
    obs = torch.as_tensor(data.validation.obs)
    action = torch.as_tensor(data.validation.action)
    noise = torch.randn(len(obs), cpu.noise_dim, generator=torch.Generator().manual_seed(0))
    for spread in (1.0, 1.5):
        a = cpu.sample_with_realism(obs, action, noise=noise, spread=spread)
        b = gpu.sample_with_realism(obs.cuda(), action.cuda(), noise=noise.cuda(), spread=spread)
        assert b[0].device.type == "cuda"
        np.testing.assert_allclose(b[0].cpu().numpy(), a[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(b[1].cpu().numpy(), a[1].numpy(), atol=1e-4)


def test_forecasts_on_the_gpu_match_the_cpu_given_the_same_noise(trained) -> None:
    data, run = trained
    states = data.validation.obs[:3]
    noise = np.random.default_rng(0).standard_normal((3, 8, 5, load_model(run).noise_dim)).astype(np.float32)
    out = [
        simgan.forecast(load_model(run, device=d), states, horizon=5, num_samples=8, noise=noise, seed=0)
        for d in ("cpu", "cuda")
    ]
    np.testing.assert_allclose(out[1].observations, out[0].observations, atol=1e-3)


def test_the_torch_mode_vector_env_stays_on_the_gpu(trained) -> None:
    _, run = trained
    envs = simgan.SimVectorEnv(load_model(run, device="cuda"), num_envs=4096, device="cuda", torch_mode=True)
    obs, _ = envs.reset(seed=0)
    assert isinstance(obs, torch.Tensor) and obs.device.type == "cuda"
    for _ in range(5):
        action = torch.rand(4096, 1, device="cuda") * 4 - 2
        obs, reward, terminated, truncated, _ = envs.step(action)
        assert {t.device.type for t in (obs, reward, terminated, truncated)} == {"cuda"}
        assert bool(torch.isfinite(obs).all()) and bool(torch.isfinite(reward).all())
    envs.close()


def test_a_compiled_vector_env_on_the_gpu_follows_the_eager_one(trained) -> None:
    _, run = trained
    model = load_model(run, device="cuda")
    runs = []
    for compile_ in (False, True):
        envs = simgan.SimVectorEnv(model, num_envs=256, device="cuda", torch_mode=True, compile=compile_)
        obs, _ = envs.reset(seed=0)
        trajectory = [obs]
        for t in range(6):
            action = torch.full((256, 1), float(np.sin(t)), device="cuda")
            trajectory.append(envs.step(action)[0])
        runs.append(torch.stack(trajectory).cpu().numpy())
    np.testing.assert_allclose(runs[1], runs[0], atol=1e-4)


def test_training_runs_on_the_gpu(trained, tmp_path) -> None:
    data, _ = trained
    import dataclasses

    model = train(data, tmp_path / "gpu", dataclasses.replace(TINY_GAN, device="cuda"), progress=False)
    assert model.device.type == "cuda"
    assert load_model(tmp_path / "gpu", device="cpu").noise_spread > 0


def test_bfloat16_on_the_gpu_is_close_to_float32(trained) -> None:
    data, run = trained
    gpu = load_model(run, device="cuda")
    obs = torch.as_tensor(data.validation.obs).cuda()
    action = torch.as_tensor(data.validation.action).cuda()
    noise = torch.randn(
        len(obs), gpu.noise_dim, device="cuda", generator=torch.Generator("cuda").manual_seed(0)
    )
    full = gpu.sample(obs, action, noise=noise)
    half = simgan.at_precision(gpu, "bfloat16").sample(obs, action, noise=noise)
    assert half[0].device.type == "cuda" and half[0].dtype == torch.float32
    np.testing.assert_allclose(half[0].cpu().numpy(), full[0].cpu().numpy(), atol=0.05)
    envs = simgan.SimVectorEnv(gpu, num_envs=1024, device="cuda", torch_mode=True, precision="bfloat16")
    obs, _ = envs.reset(seed=0)
    obs, reward, *_ = envs.step(torch.zeros(1024, 1, device="cuda"))
    assert obs.dtype == reward.dtype == torch.float32 and bool(torch.isfinite(obs).all())
