"""The pieces :func:`simgan.training.train` is built from: the training-only nets (InfoGAN classifier, trained heads
and their moving average), the training tensors, the bounded mean, optimisers and their schedule, gradient checks,
calibration and checkpoints.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from simgan.checkpoint import save_model
from simgan.dataset_format import TransitionBatch
from simgan.errors import SimganError
from simgan.forecast_calibration import calibrate_forecast_noise
from simgan.gan_networks import Generator, mlp
from simgan.models import ConditionalGAN
from simgan.train_config import TrainConfig

# Held-out windows of the forecast-noise calibration at every evaluation (the last one: calibrate_saved_model).
CHECKPOINT_WINDOWS = 32


class TrainingDivergedError(SimganError):
    """A loss or gradient became non-finite; training stopped and nothing non-finite was saved."""


def component_classifier(components: int, config: TrainConfig, in_dim: int) -> torch.nn.Sequential:
    """Q(component | s, a, residual), the InfoGAN term's classifier (training only; not part of the model).

    Without it the generator can reach both modes of a bimodal transition through its continuous noise, every
    discrete component spanning both, and a smooth map of the noise leaves mass between the modes. Rewarding the
    generator for residuals from which Q can tell the component (cross-entropy, weight ``info_weight``) pushes
    components onto separate modes, but it can also hide the component in details Q sees and D does not care
    about. Measured (bench_fidelity, 3 seeds, weight 1): KickedPendulum conditional MMD^2 ratio 1.30 -> 1.16,
    ForkingPointMass 0.37 -> 0.46; so it is off by default. An empty ``Sequential`` (no parameters) when off.
    """
    if not (config.info_weight > 0 and components):
        return torch.nn.Sequential()
    return mlp(in_dim, (64, 64), components)  # in: (s, a) condition and residual


def trained_heads(gen: Generator, config: TrainConfig) -> Generator:
    """The generator whose mean and termination heads the optimiser trains (training only).

    With ``mean_ema > 0`` it is a copy, and the model's own heads are the exponential moving average of the
    copy's weights (:func:`average_heads`, Polyak averaging). The averaged weights predict more precisely than
    the last step's: one step's weights carry the noise of the last few minibatches, which the average cancels,
    as an ensemble's mean cancels its members' errors. On CartPole's mean head alone (4,000 steps, validation
    MSE) the average was 1.3-2.3x more precise than the trained weights over the last 1,500 steps. The residual
    net, the discriminator and the residual scale all work against the model's averaged mean.
    With ``mean_ema == 0`` it is ``gen`` itself, as in runs saved before the average existed.
    """
    if config.mean_ema <= 0:
        return gen
    heads = copy.deepcopy(gen)
    heads.residual_net = None  # only the regression heads are trained through this copy
    return heads


def average_heads(gen: Generator, heads: Generator, decay: float, step: int) -> None:
    """``gen``'s regression weights move towards ``heads``' by ``1 - decay``, with the decay warmed up as
    ``(1 + step) / (10 + step)`` so that the random initial weights are forgotten within the first steps."""
    weight = 1.0 - min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for averaged, trained in zip(
            gen.parameters_of_regression(), heads.parameters_of_regression(), strict=True
        ):
            averaged.lerp_(trained, weight)


def training_modules(
    classifier: torch.nn.Module, heads: Generator, gen: Generator
) -> dict[str, torch.nn.Module]:
    """The training-only nets saved with the resume point: the InfoGAN classifier and the trained heads."""
    return {"component_classifier": classifier, **({"trained_heads": heads} if heads is not gen else {})}


def training_tensors(
    model: ConditionalGAN, split: TransitionBatch, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training rows on ``device`` as the loop uses them.

    Returns:
        conditions ``N x (O + A)``, normalised targets ``N x T`` and termination flags ``N`` (float).
    """
    obs = torch.as_tensor(split.obs, device=device)
    with torch.no_grad():
        cond = model.condition(obs, torch.as_tensor(split.action, device=device))  # N x (O + A)
        target = model.normalizer.target(
            obs,
            torch.as_tensor(split.next_obs, device=device),
            torch.as_tensor(split.reward, device=device),
        )  # N x T
    done = torch.as_tensor(split.terminated, dtype=torch.float32, device=device)  # N
    return cond, target, done


def bounded_mean(
    mean: torch.Tensor,
    target: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
    idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean head's output (B x T) for its regression loss, and as the model uses it (for residuals).

    The model clamps its mean into the observation space (``ConditionalGAN.bounded_mean``; ``bounds[i][idx]``
    are these rows' bounds). In the regression loss the clamp applies only where the real next state lies on a
    bound (Pendulum at its speed limit): an overshoot there is no error, so the mean head need not learn the
    clip's kink. Those rows (0.6 % of Pendulum's, with 400x the squared error of the rest) dominated its MSE and
    cost it precision everywhere else. Elsewhere the raw output keeps its gradient even outside the bounds.
    Without bounds both are ``mean`` itself.
    """
    if bounds is None:
        return mean, mean
    low, high = bounds[0][idx], bounds[1][idx]
    clamped = torch.clamp(mean, low, high)
    return torch.where((target <= low) | (target >= high), clamped, mean), clamped


def clipped_sample_mean(
    mean: torch.Tensor,
    residual: torch.Tensor,
    scale: torch.Tensor,
    bounds: tuple[torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """What the mean head's regression compares with the target under ``mean_before_clip``: the average of the
    model's clamped samples at each row, ``E_z[clamp(mu + scale * f)]``, with ``mu``'s gradient passed straight
    through (B x T).

    ``mean`` B x T is the head's output ``mu``; ``residual`` (B x K x T) the generator's K residuals per row,
    ``bounds`` two B x T target bounds. The clip's correction ``mean_K[clamp(mu + s f) - (mu + s f)]`` is a
    constant to the gradient: where no sample is clipped it is 0 and this is plain MSE on ``mu`` (every row of an
    unbounded env, nearly every row of Pendulum); where samples are clipped the head is pulled until their
    average matches the data, which puts ``mu`` beyond the bound when all of a row's mass lies on it. An
    overshoot where the target lies on the bound is then no error, as with the clamped regression before it.
    """
    low, high = bounds[0].unsqueeze(1), bounds[1].unsqueeze(1)  # B x 1 x T
    with torch.no_grad():
        raw = mean.unsqueeze(1) + scale * residual  # B x K x T
        correction = (torch.clamp(raw, low, high) - raw).mean(dim=1)  # B x T
    return mean + correction


def optimizers(
    config: TrainConfig,
    mean_params: list[torch.nn.Parameter],
    residual_params: list[torch.nn.Parameter],
    disc_params: list[torch.nn.Parameter],
) -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """Adam for the generator (param groups: mean head, residual net) and for the discriminator.

    The GAN parts use betas (0.5, 0.9); the mean head, a plain regression, keeps Adam's defaults.
    """
    opt_g = torch.optim.Adam(
        [
            {"params": mean_params, "lr": config.lr_mean},
            {"params": residual_params, "lr": config.lr_g, "betas": (0.5, 0.9)},
        ]
    )
    opt_d = torch.optim.Adam(disc_params, lr=config.lr_d, betas=(0.5, 0.9))
    return opt_g, opt_d


def set_learning_rates(
    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, config: TrainConfig, step: int
) -> None:
    """Halve every learning rate each ``lr_half_life`` steps (if > 0).

    A function of the step alone, so a resumed run matches a straight one.
    """
    if config.lr_half_life > 0:
        groups = [*opt_g.param_groups, *opt_d.param_groups]  # mean head, residual net, discriminator
        for group, base_lr in zip(groups, [config.lr_mean, config.lr_g, config.lr_d]):
            group["lr"] = base_lr * 0.5 ** (step / config.lr_half_life)


def grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm > 0 else math.inf)


def check_finite(step: int, **values: torch.Tensor) -> None:
    for name, value in values.items():
        if not bool(torch.isfinite(value).all()):
            raise TrainingDivergedError(
                f"step {step}: {name} is {float(value.detach())}; training stopped (lower the learning rates, or try "
                "--loss wgan-gp / --spectral-norm). No checkpoint with non-finite weights was written."
            )


def calibrate(
    model: ConditionalGAN, validation: TransitionBatch, seed: int, *, forecast: bool = True
) -> dict[str, Any]:
    """Set the realism reference and (``forecast``) the forecast noise correlation of the model as it is now; once
    per evaluation.

    A quick pass (32 windows, spread 1): the model training returns gets the full one
    (:func:`simgan.forecast_calibration.calibrate_saved_model`).

    Returns:
        the metrics the calibration adds to a checkpoint.
    """
    model.calibrate_realism(validation)
    if not forecast:
        return {}
    model.noise_correlation, model.noise_spread, coverage = calibrate_forecast_noise(
        model, validation, spreads=(1.0,), windows=CHECKPOINT_WINDOWS, seed=seed
    )
    return {"forecast_band_coverage": coverage}


def save_checkpoint(
    directory: Path, model: ConditionalGAN, config: TrainConfig, metrics: dict[str, Any]
) -> None:
    """Write ``model`` as it is now; its config records ``config``, which ``--resume`` reads back."""
    save_model(
        directory,
        kind="gan",
        config={
            "model": model.config.to_json(),
            "train": config.to_json(),
            "noise_correlation": model.noise_correlation,
            "noise_spread": model.noise_spread,
        },
        info=model.info,
        tensors=model.state_tensors(),
        metrics=metrics,
    )


def final_metrics(metrics: dict[str, float], state: dict[str, Any]) -> dict[str, Any]:
    return {
        **metrics,
        "step": state["step"],
        "best_step": state["best_step"],
        "best_energy_score": state["best_score"],
        "time_to_best_s": state["time_to_best"],
        "elapsed_s": state["elapsed"],
        "alarms": list(state["alarms"]),
    }
