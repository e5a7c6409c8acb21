"""GAN losses as pure functions of discriminator outputs (see ``THEORY.md``).

Every function takes raw discriminator outputs: *logits* for the BCE losses (``minimax``, ``nonsaturating``),
where D(x) = sigmoid(logit), and unbounded *critic scores* for ``wgan-gp`` and ``hinge``. Losses are means over
the batch and unscaled, so with D = 1/2 everywhere the minimax discriminator loss is 2 log 2 and
:func:`jsd_estimate` gives 0.

    d_loss = discriminator_loss("nonsaturating", d_real, d_fake)          # B_real, B_fake -> scalar
    g_loss = generator_loss("nonsaturating", d_fake)                      # B_fake -> scalar
    d_loss = d_loss + gp_lambda * gradient_penalty(critic, real, fake)    # wgan-gp only
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

LossName = Literal["minimax", "nonsaturating", "wgan-gp", "hinge"]
LOSSES: tuple[str, ...] = ("minimax", "nonsaturating", "wgan-gp", "hinge")
BCE_LOSSES: tuple[str, ...] = ("minimax", "nonsaturating")


def _check(loss: str) -> None:
    if loss not in LOSSES:
        raise ValueError(f"loss: expected one of {list(LOSSES)}, got {loss!r}")


def discriminator_loss(loss: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's (critic's) loss, to be minimised.

    Args:
        loss: ``minimax | nonsaturating | wgan-gp | hinge`` (both BCE losses share the same D loss).
        real: logits / critic scores of real transitions, any shape (B_real).
        fake: logits / critic scores of generated transitions, any shape (B_fake).

    Returns:
        A scalar. BCE: ``-E[log D(real)] - E[log(1 - D(fake))]``; WGAN: ``E[C(fake)] - E[C(real)]`` (add the
        gradient penalty separately); hinge: ``E[relu(1 - C(real))] + E[relu(1 + C(fake))]``.
    """
    _check(loss)
    if loss in BCE_LOSSES:
        # -log sigmoid(x) = softplus(-x);  -log(1 - sigmoid(x)) = softplus(x)  (numerically stable forms)
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if loss == "wgan-gp":
        return fake.mean() - real.mean()
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def generator_loss(loss: str, fake: torch.Tensor) -> torch.Tensor:
    """The generator's adversarial loss, to be minimised.

    Args:
        loss: ``minimax | nonsaturating | wgan-gp | hinge``.
        fake: logits / critic scores of generated transitions, any shape.

    Returns:
        A scalar. minimax: ``E[log(1 - D(fake))]`` (saturates when D rejects fakes confidently);
        nonsaturating: ``-E[log D(fake)]``; wgan-gp and hinge: ``-E[C(fake)]``.
    """
    _check(loss)
    if loss == "minimax":
        return -F.softplus(fake).mean()  # log(1 - sigmoid(x)) = -softplus(x)
    if loss == "nonsaturating":
        return F.softplus(-fake).mean()
    return -fake.mean()


def gradient_penalty(
    critic: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """WGAN-GP's penalty ``E[(||grad_x C(x_hat)|| - 1)^2]`` on random interpolates of real and fake samples.

    Args:
        critic: maps B x D judged inputs to B scores (the condition is bound inside, e.g. a lambda over the
            batch's (obs, action)).
        real: B x D real samples.
        fake: B x D generated samples (paired row by row with ``real``).
        generator: the source of the interpolation weights (for reproducibility).

    Returns:
        A scalar, differentiable with respect to the critic's parameters (unweighted; multiply by lambda).
    """
    if real.shape != fake.shape:
        raise ValueError(
            f"gradient_penalty: expected real and fake of equal shape, got {tuple(real.shape)} and {tuple(fake.shape)}"
        )
    alpha = torch.rand(real.shape[0], 1, generator=generator, device=real.device, dtype=real.dtype)
    x_hat = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return ((grad.norm(2, dim=1) - 1.0) ** 2).mean()


def jsd_estimate(d_loss: float | torch.Tensor) -> float:
    """Jensen-Shannon divergence estimate from the (unscaled) BCE discriminator loss: ``(log 4 - L_D) / 2``.

    0 when D cannot tell real from generated (D = 1/2 everywhere), log 2 when it separates them perfectly.
    Meaningful only for the BCE losses and a near-optimal D.
    """
    return (math.log(4.0) - float(torch.as_tensor(d_loss).detach())) / 2.0


def discriminator_probabilities(loss: str, scores: torch.Tensor) -> torch.Tensor:
    """D(x) in [0, 1] for the BCE losses (sigmoid of the logits); raw scores otherwise."""
    _check(loss)
    return torch.sigmoid(scores) if loss in BCE_LOSSES else scores


def unbiased_mean_square(samples: torch.Tensor) -> torch.Tensor:
    """Unbiased estimate of ``||E_z[f]||^2`` per condition from K samples, averaged over conditions.

    ``||mean_k f_k||^2`` is biased upwards by ``tr Var(f) / K``, so penalising it would also shrink the spread
    of the samples (and with it a multimodal distribution). The average of ``f_i . f_j`` over pairs i != j has
    expectation exactly ``||E f||^2``: it constrains the mean only.

    Args:
        samples: B x K x D (K >= 2 samples for each of B conditions).

    Returns:
        A scalar (it can be negative for a single batch; its expectation is >= 0).
    """
    k = samples.shape[1]
    if samples.dim() != 3 or k < 2:
        raise ValueError(
            f"unbiased_mean_square: expected B x K x D with K >= 2, got shape {tuple(samples.shape)}"
        )
    total = samples.sum(dim=1)  # B x D
    pair_sum = total.pow(2).sum(-1) - samples.pow(2).sum(dim=(1, 2))  # sum over i != j of f_i . f_j, B
    return (pair_sum / (k * (k - 1))).mean()


def energy_score(samples: torch.Tensor, observed: torch.Tensor) -> torch.Tensor:
    """The energy score ``E||X - y|| - E||X - X'|| / 2`` of sampled predictions (lower is better).

    A strictly proper scoring rule: it rewards precision on deterministic targets (then it is the mean distance)
    and the right spread on stochastic ones, so it picks the best checkpoint without favouring mode collapse.

    Args:
        samples: B x K x D (K >= 2 model samples per condition).
        observed: B x D (the real outcome of each condition).

    Returns:
        A scalar, the mean over the B conditions.
    """
    k = samples.shape[1]
    if samples.dim() != 3 or k < 2 or observed.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(
            f"energy_score: expected samples B x K x D (K >= 2) and observed B x D, got {tuple(samples.shape)} "
            f"and {tuple(observed.shape)}"
        )
    to_observed = (samples - observed.unsqueeze(1)).norm(dim=-1).mean(dim=1)  # B
    pairwise = torch.cdist(samples, samples).sum(dim=(1, 2)) / (k * (k - 1))  # B, mean over i != j
    return (to_observed - 0.5 * pairwise).mean()


def rbf_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    """Unbiased squared maximum mean discrepancy with an RBF kernel ``exp(-||a - b||^2 / (2 h^2))``.

    Args:
        x: N x D samples of one distribution; y: M x D samples of the other (N, M >= 2).
        bandwidth: h; default: the median pairwise distance of the pooled samples (median heuristic).

    Returns:
        A scalar (can be slightly negative when the distributions are equal).
    """
    pooled = torch.cat([x, y])
    distances = torch.cdist(pooled, pooled).pow(2)  # (N + M) x (N + M)
    if bandwidth is None:
        off_diagonal = distances[~torch.eye(len(pooled), dtype=torch.bool, device=pooled.device)]
        bandwidth = float(off_diagonal.median().clamp_min(1e-12).sqrt())
    kernel = torch.exp(-distances / (2.0 * bandwidth**2))
    n, m = len(x), len(y)
    k_xx, k_yy, k_xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    return (
        (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
        + (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        - 2.0 * k_xy.mean()
    )
