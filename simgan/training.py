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
:mod:`simgan.run_directory`; the pieces the loop is built from (optimisers, trained heads, checkpoints) in
:mod:`simgan.training_parts`.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simgan import losses
from simgan.checkpoint import load_model
from simgan.data import Dataset
from simgan.data_parallel import SINGLE_PROCESS, DistContext, fit_normalizer, model_info
from simgan.device import resolve_device
from simgan.errors import SimganError
from simgan.forecast_calibration import calibrate_saved_model
from simgan.fsutil import atomic_write_bytes
from simgan.models import ConditionalGAN
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
from simgan.training_parts import (
    TrainingDivergedError,
    average_heads,
    bounded_mean,
    calibrate,
    check_finite,
    clipped_sample_mean,
    component_classifier,
    final_metrics,
    grad_norm,
    optimizers,
    save_checkpoint,
    set_learning_rates,
    trained_heads,
    training_modules,
    training_tensors,
)


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
    train_cond, train_target, train_done = training_tensors(model, dataset.train, device)
    num_train, target_dim = train_target.shape
    # N x T bounds of each row's target (the observation space), or None: see bounded_mean
    bounds = (
        model.target_bounds(torch.as_tensor(dataset.train.obs, device=device)) if config.clamp_mean else None
    )
    # the mean head predicts the mean before the clip, and samples are clamped (clipped_sample_mean)
    before_clip = bounds is not None and model.config.mean_before_clip

    def residual_origin(mean: torch.Tensor, target: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The mean (B x T) residuals are measured from, as the model samples around it (bounded_mean)."""
        return mean if before_clip else bounded_mean(mean, target, bounds, idx)[1]

    def clamped_residual(mean: torch.Tensor, residual: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The residual (R x T, R a multiple of B) the clamped sample amounts to, as the model judges it; with the
        mean clamped instead (models before mean_before_clip) the residual itself."""
        if not before_clip:
            return residual
        repeat = residual.shape[0] // mean.shape[0]
        low, high = (b[idx].repeat_interleave(repeat, dim=0) for b in bounds)
        return gen.bounded(mean.repeat_interleave(repeat, dim=0), residual, low, high)[1]

    # the same step count on every rank: --epochs counts passes of the global batch over all ranks' rows
    total_steps = config.total_steps(
        round(float(dist.reduce(torch.tensor(float(num_train)), "sum")) / dist.world_size)
    )
    batch, k = config.batch_size, config.samples_per_condition

    # the regression heads the optimiser trains; with mean_ema > 0 the model keeps their moving average
    heads = trained_heads(gen, config)
    mean_params = heads.parameters_of_regression()  # mean head + termination head
    classifier = component_classifier(gen.noise_components, config, train_cond.shape[1] + target_dim).to(
        device
    )
    dist.broadcast_parameters(classifier)
    residual_params = [*gen.residual_net.parameters(), *classifier.parameters()]
    disc_params = list(disc.parameters())
    opt_g, opt_d = optimizers(config, mean_params, residual_params, disc_params)
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
                modules=training_modules(classifier, heads, gen),
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
        set_learning_rates(opt_g, opt_d, config, step)
        # ---- discriminator: real residual (target - mu) / scale vs generated f(s, a, z) -------------------
        disc.requires_grad_(True)
        for _ in range(config.n_critic):
            idx = torch.randint(num_train, (batch,), generator=rng, device=device)
            cond, target = train_cond[idx], train_target[idx]  # B x (O + A), B x T
            with torch.no_grad():
                mean = residual_origin(gen.mean(cond), target, idx)  # B x T
                real = (target - mean) / gen.residual_scale  # B x T
                fake = gen.residual(cond, torch.randn(batch, config.noise_dim, generator=rng, device=device))
                fake = clamped_residual(mean, fake, idx)
            d_real, d_fake = disc(cond, real), disc(cond, fake)  # B, B
            d_adv = losses.discriminator_loss(config.loss, d_real, d_fake)
            d_loss = d_adv
            if config.loss == "wgan-gp":
                penalty = losses.gradient_penalty(lambda x, c=cond: disc(c, x), real, fake, generator=rng)
                d_loss = d_adv + config.gp_lambda * penalty
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            dist.average_gradients(disc_params)
            d_grad = grad_norm(disc_params, config.max_grad_norm)
            check_finite(step, discriminator_loss=d_loss, discriminator_grad_norm=d_grad)
            opt_d.step()

        # ---- generator: mean head by regression, termination head by BCE, residual adversarially + zero mean -
        disc.requires_grad_(False)
        idx = torch.randint(num_train, (batch,), generator=rng, device=device)
        cond, target, done = train_cond[idx], train_target[idx], train_done[idx]
        cond_k = cond.repeat_interleave(k, dim=0)  # BK x (O + A)
        noise = torch.randn(batch * k, config.noise_dim, generator=rng, device=device)
        residual = gen.residual(cond_k, noise)  # BK x T
        if before_clip:
            mean = heads.mean(cond)  # B x T
            row_bounds = (bounds[0][idx], bounds[1][idx])
            regressed = clipped_sample_mean(
                mean, residual.detach().view(batch, k, target_dim), gen.residual_scale, row_bounds
            )
            mean = mean.detach()
        else:
            regressed, mean = bounded_mean(heads.mean(cond), target, bounds, idx)  # B x T each
        mse = F.mse_loss(regressed, target)
        # termination from the real target
        bce = F.binary_cross_entropy_with_logits(heads.termination_logit(cond, target), done)
        g_adv = losses.generator_loss(config.loss, disc(cond_k, clamped_residual(mean, residual, idx)))
        zero_mean = losses.unbiased_mean_square(residual.view(batch, k, target_dim))
        g_loss = mse + bce + g_adv + config.mean_penalty * zero_mean
        if len(classifier):  # InfoGAN: which component drew this residual? (cross-entropy, bounded by log K)
            info = F.cross_entropy(classifier(torch.cat([cond_k, residual], dim=-1)), gen.component(noise))
            g_loss = g_loss + config.info_weight * info
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        dist.average_gradients(mean_params + residual_params)
        mean_grad = grad_norm(mean_params, config.max_grad_norm)
        residual_grad = grad_norm(residual_params, config.max_grad_norm)
        check_finite(step, generator_loss=g_loss, mean_grad_norm=mean_grad, residual_grad_norm=residual_grad)
        opt_g.step()
        if heads is not gen:
            average_heads(gen, heads, config.mean_ema, step)

        # ---- residual scale: EMA of the real residual's RMS per target dimension ------------------------------
        with torch.no_grad():
            if heads is not gen:  # real residuals are measured from the model's (averaged) mean
                mean = residual_origin(gen.mean(cond), target, idx)
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
            postfix = {"d": f"{d_loss.item():.3f}", "g": f"{g_adv.item():.3f}", "mse": f"{mse.item():.2e}"}
            if math.isfinite(state["best_score"]):  # none before the first evaluation
                postfix["best"] = f"{state['best_score']:.4f}"
            bar.set_postfix(postfix)

        # ---- evaluation, best checkpoint, resumable state -------------------------------------------------------
        if done_steps % config.eval_every == 0 or done_steps == total_steps:
            stop = False
            if evaluator is not None:  # rank 0
                metrics = evaluator.evaluate(writer, done_steps)
                state["step"] = done_steps
                state["elapsed"] = time.perf_counter() - started
                update_alarms(state, metrics, config, writer, done_steps)
                # for both checkpoints below
                calibration = calibrate(
                    model, dataset.validation, config.seed, forecast=config.forecast_calibration
                )
                if metrics["energy_score"] < state["best_score"]:
                    state.update(
                        best_score=metrics["energy_score"],
                        best_step=done_steps,
                        evals_since_best=0,
                        time_to_best=state["elapsed"],
                    )
                    save_checkpoint(out, model, config, {**final_metrics(metrics, state), **calibration})
                    if evaluator.figure_png is not None:  # the best model's samples, for people to look at
                        atomic_write_bytes(out / FIGURE_FILE, evaluator.figure_png)
                else:
                    state["evals_since_best"] += 1
                writer.add_scalar("eval/best_energy_score", state["best_score"], done_steps)
                stop = 0 < config.early_stop_evals <= state["evals_since_best"]
                save_checkpoint(
                    out / LAST_DIR, model, config, {**final_metrics(metrics, state), **calibration}
                )
                save_resume_point(
                    out, opt_g, opt_d, rng, state, modules=training_modules(classifier, heads, gen)
                )
            if dist.broadcast_flag(stop):
                break
    bar.close()
    if writer is None:
        return model.eval()
    writer.close()
    if not config.forecast_calibration:
        return load_model(out, device=device)  # type: ignore[return-value]
    return calibrate_saved_model(out, dataset.validation, seed=config.seed, device=device)  # type: ignore[return-value]


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
