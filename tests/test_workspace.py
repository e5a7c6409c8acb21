"""Scratch buffers for no-grad forward passes: the same values as the plain path, no aliasing, per thread."""

from __future__ import annotations

import threading

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_models import make_info
from torch import nn

from simgan import workspace
from simgan.ensemble import EnsembleConfig, GaussianEnsemble
from simgan.gan_networks import ACTIVATIONS, MLP, mlp


@pytest.fixture(autouse=True)
def scratch_at_every_size(monkeypatch):
    """These tests check the scratch path on small nets and batches, so it is taken at every size here."""
    monkeypatch.setattr(workspace, "MIN_ELEMENTS", 0)


def _net(seed: int = 0, spectral_norm: bool = False, activation: str = "silu") -> MLP:
    torch.manual_seed(seed)
    return mlp(5, (64, 48, 64), 4, spectral_norm=spectral_norm, activation=activation).eval()


def _ensemble() -> GaussianEnsemble:
    """A small seeded ensemble (3 members, 2 x 32) on a 3-dimensional state with 2-dimensional Box actions."""
    model = GaussianEnsemble(
        make_info(gym.spaces.Box(-2.0, 2.0, (2,), np.float32)),
        EnsembleConfig(members=3, elites=2, hidden=(32, 32)),
    )
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model


def _plain(net: MLP, x: torch.Tensor) -> torch.Tensor:
    """The forward pass without scratch buffers or in-place activations: nn.Sequential's, with grad on."""
    with torch.enable_grad():
        return nn.Sequential.forward(net, x).detach()


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_no_grad_forward_equals_the_plain_forward_bit_for_bit(activation: str) -> None:
    workspace.release()
    for spectral_norm in (False, True):
        net = _net(spectral_norm=spectral_norm, activation=activation)
        assert sum(isinstance(m, ACTIVATIONS[activation]) for m in net) == 3
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
    assert not workspace.wanted(torch.zeros(1, requires_grad=True), 10)  # grad is on outside no_grad
    with torch.no_grad():
        assert workspace.wanted(torch.zeros(1), 10)


def test_only_activations_of_min_elements_or_more_take_scratch_buffers(monkeypatch) -> None:
    """Below MIN_ELEMENTS a fresh activation is cheaper; the MLP and the ensemble size their widest hidden layer."""
    monkeypatch.undo()  # the default threshold
    assert workspace.MIN_ELEMENTS == 1 << 17
    net = _net()  # hidden widths 64, 48, 64
    assert net.widest_hidden == 64
    with torch.no_grad():
        assert not workspace.wanted(torch.zeros(1), workspace.MIN_ELEMENTS - 1)
        assert workspace.wanted(torch.zeros(1), workspace.MIN_ELEMENTS)
        workspace.release()
        for rows, scratch_used in (
            (workspace.MIN_ELEMENTS // 64 - 1, False),
            (workspace.MIN_ELEMENTS // 64, True),
        ):
            x = torch.randn(rows, 5, generator=torch.Generator().manual_seed(rows))
            assert torch.equal(net(x), _plain(net, x))
            assert bool(getattr(workspace._local, "buffers", {})) == scratch_used, rows
        workspace.release()
        ensemble = _ensemble()  # 3 members x 32 units
        ensemble(torch.randn(workspace.MIN_ELEMENTS // 96 - 1, 5))
        assert not getattr(workspace._local, "buffers", {})
        ensemble(torch.randn(workspace.MIN_ELEMENTS // 96 + 1, 5))
        assert workspace._local.buffers


def test_ensemble_forward_is_the_same_with_and_without_grad() -> None:
    model = _ensemble()
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


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_autocast_runs_the_hidden_layers_in_bfloat16_like_the_plain_forward(activation: str) -> None:
    # Autocast skips calls with out=, so the scratch path must cast for itself: without that its hidden layers
    # stayed float32 and precision="bfloat16" only cast the last layer (slower than float32, not faster).
    net = _net(activation=activation)
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.enable_grad():
            plain = nn.Sequential.forward(net, x).detach()
        with torch.inference_mode():
            fast = net(x)
    assert plain.dtype == fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast, plain)  # bfloat16's tolerance: the same casts, kernels may round apart
    with torch.no_grad():
        full = net(x)
    assert full.dtype == torch.float32 and not torch.equal(fast.float(), full)
    assert workspace.lower_precision(x) is None


def test_ensemble_forward_under_autocast_is_the_plain_forward() -> None:
    model = _ensemble()
    inputs = torch.randn(500, 5, generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            fast = model(inputs)
        plain = [t.detach() for t in model(inputs)]
    with torch.no_grad():
        full = model(inputs)
    for got, want, f32 in zip(fast, plain, full):
        torch.testing.assert_close(got, want)
        assert not torch.equal(got.float(), f32)


def test_at_precision_autocasts_only_the_model_and_keeps_its_interface() -> None:
    from simgan.world_model import AtPrecision, at_precision

    model = _ensemble()
    assert at_precision(model, "float32") is model
    half = at_precision(model, "bfloat16")
    assert isinstance(half, AtPrecision) and half.info is model.info and half.noise_dim == model.noise_dim
    obs, action = torch.randn(64, 3), torch.rand(64, 2) * 4 - 2
    noise = torch.randn(64, model.noise_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got, want = half.sample(obs, action, noise=noise), model.sample(obs, action, noise=noise)
    assert [t.dtype for t in got] == [t.dtype for t in want] == [torch.float32, torch.float32, torch.bool]
    assert not torch.equal(got[0], want[0])
    torch.testing.assert_close(got[0], want[0], rtol=0.05, atol=0.05)
    assert not torch.is_autocast_enabled("cpu")  # the caller's arithmetic stays float32
    assert isinstance(half.to("cpu"), AtPrecision)
    # an optional method is offered only where the model has it (an MLP has no sample_repeated)
    assert not hasattr(at_precision(_net(), "bfloat16"), "sample_repeated")
    with pytest.raises(ValueError, match="precision: expected one of"):
        at_precision(model, "float16")


def test_at_precision_copies_and_unpickles() -> None:
    import copy
    import pickle

    from simgan.world_model import AtPrecision

    half = AtPrecision(_net(), "bfloat16")
    for clone in (copy.copy(half), pickle.loads(pickle.dumps(half))):
        assert isinstance(clone, AtPrecision) and clone.precision == "bfloat16"
