"""Scratch buffers for no-grad forward passes: the same values as the plain path, no aliasing, per thread."""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np
import torch
from test_models import make_info
from torch import nn

from simgan import workspace
from simgan.ensemble import EnsembleConfig, GaussianEnsemble
from simgan.gan_networks import MLP, mlp


def _net(seed: int = 0, spectral_norm: bool = False) -> MLP:
    torch.manual_seed(seed)
    return mlp(5, (64, 48, 64), 4, spectral_norm=spectral_norm).eval()


def _plain(net: MLP, x: torch.Tensor) -> torch.Tensor:
    """The forward pass without scratch buffers or in-place SiLU: nn.Sequential's, with grad on."""
    with torch.enable_grad():
        return nn.Sequential.forward(net, x).detach()


def test_no_grad_forward_equals_the_plain_forward_bit_for_bit() -> None:
    workspace.release()
    for spectral_norm in (False, True):
        net = _net(spectral_norm=spectral_norm)
        # a large batch first, then smaller ones that use a prefix of the grown buffers, then a larger one again
        for rows in (300, 7, 1, 120, 500):
            x = torch.randn(rows, 5, generator=torch.Generator().manual_seed(rows))
            with torch.inference_mode():
                fast = net(x)
            assert torch.equal(fast, _plain(net, x)), (spectral_norm, rows)
            with torch.no_grad():  # buffers made in inference mode cannot be written outside it
                assert torch.equal(net(x), fast)


def test_outputs_are_not_overwritten_by_later_calls() -> None:
    net = _net()
    x1, x2 = torch.randn(200, 5), torch.randn(200, 5)
    with torch.no_grad():
        first = net(x1)
        kept = first.clone()
        net(x2)
        net(torch.randn(1000, 5))
    assert torch.equal(first, kept)
    assert torch.equal(x1, x1.clone())  # the input is not written either
    expected = _plain(net, x1)
    assert torch.equal(first, expected)


def test_gradients_are_unchanged() -> None:
    net = _net().train()
    x = torch.randn(64, 5)
    loss = net(x).square().sum()
    loss.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    nn.Sequential.forward(net, x).square().sum().backward()
    for got, want in zip(grads, (p.grad for p in net.parameters())):
        assert torch.equal(got, want)


def test_threads_do_not_share_buffers() -> None:
    net = _net()
    inputs = [torch.randn(2000, 5, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    expected = [_plain(net, x) for x in inputs]
    results: dict[int, list[bool]] = {}

    def work(i: int) -> None:
        with torch.no_grad():
            results[i] = [torch.equal(net(inputs[i]), expected[i]) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(all(ok) for ok in results.values()) and len(results) == 4


def test_scratch_grows_and_keeps_the_two_slots_apart() -> None:
    workspace.release()
    like = torch.zeros(1)
    a = workspace.scratch(0, (10, 4), like)
    b = workspace.scratch(1, (10, 4), like)
    assert a.data_ptr() != b.data_ptr() and a.shape == (10, 4) and a.is_contiguous()
    assert workspace.scratch(0, (3, 4), like).data_ptr() == a.data_ptr()  # a prefix of the same buffer
    grown = workspace.scratch(0, (100, 4), like)
    assert grown.numel() == 400
    assert workspace.scratch(0, (2, 2), torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
    assert not workspace.wanted(torch.zeros(1, requires_grad=True))  # grad is on outside no_grad
    with torch.no_grad():
        assert workspace.wanted(torch.zeros(1))


def test_ensemble_forward_is_the_same_with_and_without_grad() -> None:
    info = make_info(gym.spaces.Box(-2.0, 2.0, (2,), np.float32))
    model = GaussianEnsemble(info, EnsembleConfig(members=3, elites=2, hidden=(32, 32)))
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for bias in model.biases:
            bias.normal_(generator=torch.Generator().manual_seed(1))
    inputs = torch.randn(500, 5)
    with torch.no_grad():
        fast = model(inputs)
        model(torch.randn(40, 5))  # reuses the buffers
    plain = [t.detach() for t in model(inputs)]
    for got, want in zip(fast, plain):
        assert torch.equal(got, want)
