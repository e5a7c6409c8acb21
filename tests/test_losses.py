"""GAN losses against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from simgan import losses


def test_discriminator_at_one_half_gives_2_log_2_and_zero_jsd() -> None:
    zeros = torch.zeros(5)  # logit 0 -> D = 1/2
    for loss in ("minimax", "nonsaturating"):
        d_loss = losses.discriminator_loss(loss, zeros, zeros)
        assert float(d_loss) == pytest.approx(2 * math.log(2))
        assert losses.jsd_estimate(d_loss) == pytest.approx(0.0, abs=1e-7)


def test_perfect_discriminator_gives_jsd_log_2() -> None:
    real, fake = torch.full((4,), 50.0), torch.full((4,), -50.0)  # D(real) ~ 1, D(fake) ~ 0
    d_loss = losses.discriminator_loss("minimax", real, fake)
    assert float(d_loss) == pytest.approx(0.0, abs=1e-12)
    assert losses.jsd_estimate(d_loss) == pytest.approx(math.log(2))


def test_bce_losses_by_hand() -> None:
    real, fake = torch.tensor([math.log(3.0)]), torch.tensor([0.0])  # D(real) = 3/4, D(fake) = 1/2
    expected_d = -math.log(0.75) - math.log(0.5)
    assert float(losses.discriminator_loss("nonsaturating", real, fake)) == pytest.approx(expected_d)
    fake = torch.tensor([-math.log(3.0)])  # D(fake) = 1/4
    assert float(losses.generator_loss("minimax", fake)) == pytest.approx(math.log(0.75))
    assert float(losses.generator_loss("nonsaturating", fake)) == pytest.approx(-math.log(0.25))


def test_wgan_and_hinge_by_hand() -> None:
    real, fake = torch.tensor([2.0, 0.0]), torch.tensor([-0.5, 1.5])
    assert float(losses.discriminator_loss("wgan-gp", real, fake)) == pytest.approx(0.5 - 1.0)
    assert float(losses.generator_loss("wgan-gp", fake)) == pytest.approx(-0.5)
    # hinge: mean(relu(1 - real)) = (0 + 1) / 2; mean(relu(1 + fake)) = (0.5 + 2.5) / 2
    assert float(losses.discriminator_loss("hinge", real, fake)) == pytest.approx(0.5 + 1.5)
    assert float(losses.generator_loss("hinge", fake)) == pytest.approx(-0.5)


def test_unknown_loss_names_the_choices() -> None:
    with pytest.raises(ValueError, match="expected one of"):
        losses.discriminator_loss("lsgan", torch.zeros(1), torch.zeros(1))


@pytest.mark.parametrize("slope_norm", [1.0, 3.0, 0.25])
def test_gradient_penalty_of_a_linear_critic(slope_norm: float) -> None:
    # C(x) = w . x has gradient w everywhere, so the penalty is (||w|| - 1)^2 exactly.
    w = torch.tensor([3.0, 4.0]) / 5.0 * slope_norm
    real, fake = torch.randn(16, 2), torch.randn(16, 2)
    penalty = losses.gradient_penalty(lambda x: x @ w, real, fake, generator=torch.Generator().manual_seed(0))
    assert float(penalty) == pytest.approx((slope_norm - 1.0) ** 2, abs=1e-6)


def test_gradient_penalty_is_differentiable_in_the_critic() -> None:
    w = torch.tensor([2.0, 0.0], requires_grad=True)
    penalty = losses.gradient_penalty(lambda x: x @ w, torch.randn(8, 2), torch.randn(8, 2))
    penalty.backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = [2, 0]
    assert torch.allclose(w.grad, torch.tensor([2.0, 0.0]))


def test_unbiased_mean_square() -> None:
    # Two samples per condition: the estimate is f_1 . f_2.
    samples = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])  # 1 x 2 x 2
    assert float(losses.unbiased_mean_square(samples)) == pytest.approx(3.0 - 2.0)
    # Zero-mean noise with a large spread: the estimate stays near 0 (the biased one would be ~ var / K).
    noise = 5.0 * torch.randn(4096, 4, 3, generator=torch.Generator().manual_seed(0))
    assert abs(float(losses.unbiased_mean_square(noise))) < 0.5
    assert float(noise.mean(dim=1).pow(2).sum(-1).mean()) > 15.0
    with pytest.raises(ValueError, match="K >= 2"):
        losses.unbiased_mean_square(torch.zeros(3, 1, 2))


def test_energy_score_by_hand() -> None:
    samples = torch.tensor([[[0.0], [2.0]]])  # one condition, samples 0 and 2
    observed = torch.tensor([[1.0]])
    # E|X - y| = 1, E|X - X'| over i != j = 2  ->  1 - 0.5 * 2 = 0
    assert float(losses.energy_score(samples, observed)) == pytest.approx(0.0)
    point = torch.tensor([[[1.0], [1.0]]])
    assert float(losses.energy_score(point, torch.tensor([[4.0]]))) == pytest.approx(3.0)


def test_rbf_mmd2() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 2, generator=g), torch.randn(400, 2, generator=g)
    assert abs(float(losses.rbf_mmd2(x, y))) < 0.01
    assert float(losses.rbf_mmd2(x, y + 3.0)) > 0.3
    # Hand value: two identical points each side, bandwidth 1, distance 1: k_xx = k_yy = 1, k_xy = exp(-1/2).
    a, b = torch.tensor([[0.0], [0.0]]), torch.tensor([[1.0], [1.0]])
    expected = 1.0 + 1.0 - 2.0 * math.exp(-0.5)
    assert float(losses.rbf_mmd2(a, b, bandwidth=1.0)) == pytest.approx(expected)
