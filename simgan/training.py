"""Training the conditional GAN world model: one loop, top to bottom.

    model = simgan.train(dataset, out="runs/pendulum", config=TrainConfig(steps=4000))

Each step: ``n_critic`` discriminator updates (real residual ``(target - mu) / scale`` against generated
``f(s, a, z)``), then one generator update (mean head: MSE, with an overshoot past an observation bound that the
real next state lies on counted as no error; termination BCE; residual: adversarial loss plus the zero-mean penalty
over K noise draws per condition). The optimiser trains a copy of the mean and termination heads; the model keeps
the moving average of its weights (``mean_ema``). Every ``eval_every`` steps the model is scored on held-out
validation transitions; the checkpoint with the best *energy score of generated transitions* (a proper scoring
rule, never a GAN loss) is written to ``out/``, and the full training state to ``out/last/`` for ``--resume``.

The same loop runs data-parallel: given a :class:`DistContext` (``simgan.distributed`` builds one inside each Ray
Train worker), every rank samples its batches from its own slice of the data (batch RNG seeded ``seed + rank``),
gradients are averaged across ranks before clipping, the residual scale's EMA uses the batch RMS averaged over
ranks, and rank 0 alone evaluates and writes checkpoints and TensorBoard. Without one, nothing changes.

Validation scoring lives in :mod:`simgan.training_eval`; the run directory's checks and the resume point in
:mod:`simgan.run_directory`.
"""

from __future__ import annotations

import copy
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simgan import losses
from simgan.checkpoint import load_model, save_model
from simgan.data import Dataset
from simgan.data_parallel import SINGLE_PROCESS, DistContext, fit_normalizer, model_info
from simgan.dataset_format import TransitionBatch
from simgan.device import resolve_device
from simgan.errors import SimganError
from simgan.forecast_calibration import calibrate_noise_correlation
from simgan.fsutil import atomic_write_bytes
from simgan.models import ConditionalGAN, Generator, mlp
from simgan.run_directory import (
    FIGURE_FILE,
    LAST_DIR,
    RunDirectoryError,
    prepare_run_directory,
    restore_resume_point,
    resume_config,
    save_resume_point,
)
from simgan.train_config import DEFAULT_STEPS, TrainConfig
from simgan.training_eval import Evaluator, update_alarms


class TrainingDivergedError(SimganError):
    """A loss or gradient became non-finite; training stopped and nothing non-finite was saved."""


def train(
    dataset: Dataset,
    out: str | Path,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    dist: DistContext = SINGLE_PROCESS,
) -> ConditionalGAN:
    """Train a conditional GAN world model on ``dataset``'s training split; returns the best model (eval mode).

    Writes ``out/`` (best checkpoint, chosen on the validation energy score of generated transitions),
    ``out/last/`` (latest model + ``train_state.pt`` for ``resume``) and ``out/tb/`` (TensorBoard).

    Under data-parallel training (``dist.world_size > 1``), ``dataset`` holds this rank's training rows and the
    validation rows of all ranks; only rank 0 touches ``out/`` (ranks > 0 read ``out/last/`` to resume and return
    their in-memory model, which equals rank 0's latest weights, not the best checkpoint).

    Raises:
        RunDirectoryError: ``out`` is not empty and neither ``resume`` nor ``overwrite`` was given.
        TrainingDivergedError: a loss or gradient became non-finite.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm.auto import tqdm

    out = Path(out)
    if dist.is_writer:
        prepare_run_directory(out, resume=resume, overwrite=overwrite)
    config = resume_config(out, config) if resume else (config or TrainConfig())
    if len(dataset.validation) == 0:
        raise SimganError(
            f"{dataset.path}: expected validation episodes, got none (use validation_fraction > 0)"
        )
    device = dist.device or resolve_device(config.device)

    # ---- model, data on the device, optimisers --------------------------------------------------------------
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    info = model_info(dataset, dist)
    model = ConditionalGAN(info, config.model_config())
    fit_normalizer(model, dataset.train, info, dist)
    model.to(device).train()
    dist.broadcast_parameters(model)  # same seed, same init; this makes it certain
    gen, disc = model.generator, model.discriminator

    # N x (O + A) conditions, N x T normalised targets, N termination flags
    train_cond, train_target, train_done = _training_tensors(model, dataset.train, device)
    num_train, target_dim = train_target.shape
    # N x T bounds of each row's target (the observation space), or None: see _bounded_mean
    bounds = (
        model.target_bounds(torch.as_tensor(dataset.train.obs, device=device)) if config.clamp_mean else None
    )
    # the same step count on every rank: --epochs counts passes of the global batch over all ranks' rows
    total_steps = config.total_steps(
        round(float(dist.reduce(torch.tensor(float(num_train)), "sum")) / dist.world_size)
    )
    batch, k = config.batch_size, config.samples_per_condition

    # the regression heads the optimiser trains; with mean_ema > 0 the model keeps their moving average
    heads = _trained_heads(gen, config)
    mean_params = heads.parameters_of_regression()  # mean head + termination head
    classifier = _component_classifier(gen.noise_components, config, train_cond.shape[1] + target_dim).to(
        device
    )
    dist.broadcast_parameters(classifier)
    residual_params = [*gen.residual_net.parameters(), *classifier.parameters()]
    disc_params = list(disc.parameters())
    opt_g, opt_d = _optimizers(config, mean_params, residual_params, disc_params)
    rng = torch.Generator(device=device).manual_seed(config.seed + dist.rank)
    evaluator = Evaluator(model, dataset.validation, config, device) if dist.is_writer else None

    # ---- counters; on resume, weights, optimisers, RNG states and counters from out/last/ --------------------
    state: dict[str, Any] = {
        "step": 0,
        "best_score": math.inf,
        "best_step": -1,
        "evals_since_best": 0,
        "elapsed": 0.0,
        "time_to_best": 0.0,
        "domination_evals": 0,
        "collapse_evals": 0,
        "alarms": [],
    }
    if resume:
        state.update(
            restore_resume_point(
                out,
                model,
                opt_g,
                opt_d,
                rng,
                dataset=dataset,
                seed=config.seed,
                dist=dist,
                device=device,
                modules=_training_modules(classifier, heads, gen),
            )
        )
    writer = (
        SummaryWriter(str(out / "tb"), purge_step=state["step"] if resume else None)
        if dist.is_writer
        else None
    )
    if writer is not None and not resume:
        writer.add_text(
            "hyperparameters",
            hparams_table(
                {
                    **config.to_json(),
                    "device": str(device),
                    "num_train": num_train,
                    "total_steps": total_steps,
                    **({"world_size": dist.world_size} if dist.distributed else {}),
                }
            ),
        )

    # ---- the loop ------------------------------------------------------------------------------------------
    started = time.perf_counter() - state["elapsed"]
    bar = tqdm(
        range(state["step"], total_steps),
        initial=state["step"],
        total=total_steps,
        desc="train",
        disable=not (progress and dist.is_writer),
        dynamic_ncols=True,
    )
    for step in bar:
        _set_learning_rates(opt_g, opt_d, config, step)
        # ---- discriminator: real residual (target - mu) / scale vs generated f(s, a, z) -------------------
        disc.requires_grad_(True)
        for _ in range(config.n_critic):
            idx = torch.randint(num_train, (batch,), generator=rng, device=device)
            cond, target = train_cond[idx], train_target[idx]  # B x (O + A), B x T
            with torch.no_grad():
                _, mean = _bounded_mean(gen.mean(cond), target, bounds, idx)  # B x T
                real = (target - mean) / gen.residual_scale  # B x T
                fake = gen.residual(cond, torch.randn(batch, config.noise_dim, generator=rng, device=device))
            d_real, d_fake = disc(cond, real), disc(cond, fake)  # B, B
            d_adv = losses.discriminator_loss(config.loss, d_real, d_fake)
            d_loss = d_adv
            if config.loss == "wgan-gp":
                penalty = losses.gradient_penalty(lambda x, c=cond: disc(c, x), real, fake, generator=rng)
                d_loss = d_adv + config.gp_lambda * penalty
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            dist.average_gradients(disc_params)
            d_grad = _grad_norm(disc_params, config.max_grad_norm)
            _check_finite(step, discriminator_loss=d_loss, discriminator_grad_norm=d_grad)
            opt_d.step()

        # ---- generator: mean head by regression, termination head by BCE, residual adversarially + zero mean -
        disc.requires_grad_(False)
        idx = torch.randint(num_train, (batch,), generator=rng, device=device)
        cond, target, done = train_cond[idx], train_target[idx], train_done[idx]
        regressed, mean = _bounded_mean(heads.mean(cond), target, bounds, idx)  # B x T each
        mse = F.mse_loss(regressed, target)
        # termination from the real target
        bce = F.binary_cross_entropy_with_logits(heads.termination_logit(cond, target), done)
        cond_k = cond.repeat_interleave(k, dim=0)  # BK x (O + A)
        noise = torch.randn(batch * k, config.noise_dim, generator=rng, device=device)
        residual = gen.residual(cond_k, noise)  # BK x T
        g_adv = losses.generator_loss(config.loss, disc(cond_k, residual))
        zero_mean = losses.unbiased_mean_square(residual.view(batch, k, target_dim))
        g_loss = mse + bce + g_adv + config.mean_penalty * zero_mean
        if len(classifier):  # InfoGAN: which component drew this residual? (cross-entropy, bounded by log K)
            info = F.cross_entropy(classifier(torch.cat([cond_k, residual], dim=-1)), gen.component(noise))
            g_loss = g_loss + config.info_weight * info
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        dist.average_gradients(mean_params + residual_params)
        mean_grad = _grad_norm(mean_params, config.max_grad_norm)
        residual_grad = _grad_norm(residual_params, config.max_grad_norm)
        _check_finite(step, generator_loss=g_loss, mean_grad_norm=mean_grad, residual_grad_norm=residual_grad)
        opt_g.step()
        if heads is not gen:
            _average_heads(gen, heads, config.mean_ema, step)

        # ---- residual scale: EMA of the real residual's RMS per target dimension ------------------------------
        with torch.no_grad():
            if heads is not gen:  # real residuals are measured from the model's (averaged) mean
                _, mean = _bounded_mean(gen.mean(cond), target, bounds, idx)
            rms = dist.average((target - mean).pow(2).mean(dim=0)).sqrt()  # T, over all ranks' batches
            new_scale = config.scale_momentum * gen.residual_scale + (1 - config.scale_momentum) * rms
            gen.residual_scale.copy_(new_scale.clamp_min(1e-3))
        done_steps = step + 1

        # ---- logging -------------------------------------------------------------------------------------------
        if writer is not None and (done_steps % config.log_every == 0 or done_steps == total_steps):
            scalars = {
                "losses/d_loss": d_loss,
                "losses/d_adversarial": d_adv,
                "losses/g_loss": g_loss,
                "losses/g_adversarial": g_adv,
                "losses/mean_mse": mse,
                "losses/termination_bce": bce,
                "losses/zero_mean_penalty": zero_mean,
                **({"losses/info_cross_entropy": info} if len(classifier) else {}),
                "charts/d_real": losses.discriminator_probabilities(config.loss, d_real).mean(),
                "charts/d_fake": losses.discriminator_probabilities(config.loss, d_fake).mean(),
                "charts/grad_norm_d": d_grad,
                "charts/grad_norm_mean": mean_grad,
                "charts/grad_norm_residual": residual_grad,
                "charts/residual_scale": gen.residual_scale.mean(),
                "charts/lr_mean": opt_g.param_groups[0]["lr"],
                "charts/lr_g": opt_g.param_groups[1]["lr"],
                "charts/lr_d": opt_d.param_groups[0]["lr"],
            }
            if config.loss in losses.BCE_LOSSES:
                scalars["charts/jsd_estimate"] = losses.jsd_estimate(d_adv)
            for tag, value in scalars.items():
                writer.add_scalar(tag, float(torch.as_tensor(value).detach()), done_steps)
            bar.set_postfix(
                d=f"{d_loss.item():.3f}",
                g=f"{g_adv.item():.3f}",
                mse=f"{mse.item():.2e}",
                best=f"{state['best_score']:.4f}",
            )

        # ---- evaluation, best checkpoint, resumable state -------------------------------------------------------
        if done_steps % config.eval_every == 0 or done_steps == total_steps:
            stop = False
            if evaluator is not None:  # rank 0
                metrics = evaluator.evaluate(writer, done_steps)
                state["step"] = done_steps
                state["elapsed"] = time.perf_counter() - started
                update_alarms(state, metrics, config, writer, done_steps)
                calibration = _calibrate(model, dataset.validation, config.seed)  # for both checkpoints below
                if metrics["energy_score"] < state["best_score"]:
                    state.update(
                        best_score=metrics["energy_score"],
                        best_step=done_steps,
                        evals_since_best=0,
                        time_to_best=state["elapsed"],
                    )
                    _save_checkpoint(out, model, config, {**_final_metrics(metrics, state), **calibration})
                    if evaluator.figure_png is not None:  # the best model's samples, for people to look at
                        atomic_write_bytes(out / FIGURE_FILE, evaluator.figure_png)
                else:
                    state["evals_since_best"] += 1
                writer.add_scalar("eval/best_energy_score", state["best_score"], done_steps)
                stop = 0 < config.early_stop_evals <= state["evals_since_best"]
                _save_checkpoint(
                    out / LAST_DIR, model, config, {**_final_metrics(metrics, state), **calibration}
                )
                save_resume_point(
                    out, opt_g, opt_d, rng, state, modules=_training_modules(classifier, heads, gen)
                )
            if dist.broadcast_flag(stop):
                break
    bar.close()
    if writer is None:
        return model.eval()
    writer.close()
    return load_model(out, device=device)  # type: ignore[return-value]


def _component_classifier(components: int, config: TrainConfig, in_dim: int) -> torch.nn.Sequential:
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


def _trained_heads(gen: Generator, config: TrainConfig) -> Generator:
    """The generator whose mean and termination heads the optimiser trains (training only).

    With ``mean_ema > 0`` it is a copy, and the model's own heads are the exponential moving average of the
    copy's weights (:func:`_average_heads`, Polyak averaging). The averaged weights predict more precisely than
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


def _average_heads(gen: Generator, heads: Generator, decay: float, step: int) -> None:
    """``gen``'s regression weights move towards ``heads``' by ``1 - decay``, with the decay warmed up as
    ``(1 + step) / (10 + step)`` so that the random initial weights are forgotten within the first steps."""
    weight = 1.0 - min(decay, (1.0 + step) / (10.0 + step))
    with torch.no_grad():
        for averaged, trained in zip(
            gen.parameters_of_regression(), heads.parameters_of_regression(), strict=True
        ):
            averaged.lerp_(trained, weight)


def _training_modules(
    classifier: torch.nn.Module, heads: Generator, gen: Generator
) -> dict[str, torch.nn.Module]:
    """The training-only nets saved with the resume point: the InfoGAN classifier and the trained heads."""
    return {"component_classifier": classifier, **({"trained_heads": heads} if heads is not gen else {})}


def _training_tensors(
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


def _bounded_mean(
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


def _optimizers(
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


def _set_learning_rates(
    opt_g: torch.optim.Optimizer, opt_d: torch.optim.Optimizer, config: TrainConfig, step: int
) -> None:
    """Halve every learning rate each ``lr_half_life`` steps (if > 0).

    A function of the step alone, so a resumed run matches a straight one.
    """
    if config.lr_half_life > 0:
        groups = [*opt_g.param_groups, *opt_d.param_groups]  # mean head, residual net, discriminator
        for group, base_lr in zip(groups, [config.lr_mean, config.lr_g, config.lr_d]):
            group["lr"] = base_lr * 0.5 ** (step / config.lr_half_life)


def _grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm > 0 else math.inf)


def _check_finite(step: int, **values: torch.Tensor) -> None:
    for name, value in values.items():
        if not bool(torch.isfinite(value).all()):
            raise TrainingDivergedError(
                f"step {step}: {name} is {float(value.detach())}; training stopped (lower the learning rates, or try "
                "--loss wgan-gp / --spectral-norm). No checkpoint with non-finite weights was written."
            )


def _calibrate(model: ConditionalGAN, validation: TransitionBatch, seed: int) -> dict[str, Any]:
    """Set the realism reference and forecast noise correlation of the model as it is now; once per evaluation.

    Returns:
        the metrics the calibration adds to a checkpoint.
    """
    model.calibrate_realism(validation)
    model.noise_correlation, coverage = calibrate_noise_correlation(model, validation, seed=seed)
    return {"forecast_band_coverage": coverage}


def _save_checkpoint(
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
        },
        info=model.info,
        tensors=model.state_tensors(),
        metrics=metrics,
    )


def _final_metrics(metrics: dict[str, float], state: dict[str, Any]) -> dict[str, Any]:
    return {
        **metrics,
        "step": state["step"],
        "best_step": state["best_step"],
        "best_energy_score": state["best_score"],
        "time_to_best_s": state["time_to_best"],
        "elapsed_s": state["elapsed"],
        "alarms": list(state["alarms"]),
    }


def hparams_table(values: dict[str, Any]) -> str:
    """A markdown table of hyperparameters (TensorBoard renders it as a table)."""
    lines = ["| parameter | value |", "| --- | --- |"]
    lines += [f"| {name} | {value} |" for name, value in values.items()]
    return "\n".join(lines)


__all__ = [
    "DEFAULT_STEPS",
    "FIGURE_FILE",
    "LAST_DIR",
    "DistContext",
    "Evaluator",
    "RunDirectoryError",
    "TrainConfig",
    "TrainingDivergedError",
    "train",
]
