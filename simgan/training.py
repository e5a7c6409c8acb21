"""Training the conditional GAN world model: one loop, top to bottom.

    model = simgan.train(dataset, out="runs/pendulum", config=TrainConfig(steps=4000))

Each step: ``n_critic`` discriminator updates (real residual ``(target - mu) / scale`` against generated
``f(s, a, z)``), then one generator update (mean head: MSE + termination BCE; residual: adversarial loss plus the
zero-mean penalty over K noise draws per condition). Every ``eval_every`` steps the model is scored on held-out
validation transitions; the checkpoint with the best *energy score of generated transitions* (a proper scoring
rule, never a GAN loss) is written to ``out/``, and the full training state to ``out/last/`` for ``--resume``.

The same loop runs data-parallel: given a :class:`DistContext` (``simgan.distributed`` builds one inside each Ray
Train worker), every rank samples its batches from its own slice of the data (batch RNG seeded ``seed + rank``),
gradients are averaged across ranks before clipping, the residual scale's EMA uses the batch RMS averaged over
ranks, and rank 0 alone evaluates and writes checkpoints and TensorBoard. Without one, nothing changes.
"""

from __future__ import annotations

import io
import math
import random
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from simgan import losses
from simgan.checkpoint import load_model_files, load_train_state, save_model, save_train_state
from simgan.data import Dataset, TransitionBatch
from simgan.data_parallel import SINGLE_PROCESS, DistContext, fit_normalizer, model_info
from simgan.device import resolve_device
from simgan.errors import SimganError
from simgan.forecast_calibration import calibrate_noise_correlation
from simgan.fsutil import atomic_write_bytes
from simgan.models import ConditionalGAN
from simgan.train_config import DEFAULT_STEPS, TrainConfig

LAST_DIR = "last"
FIGURE_FILE = "generated_vs_real.png"


class TrainingDivergedError(SimganError):
    """A loss or gradient became non-finite; training stopped and nothing non-finite was saved."""


class RunDirectoryError(SimganError):
    """The output directory cannot be used as asked (not empty without resume/overwrite, nothing to resume)."""


def check_run_directory(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Raise :class:`RunDirectoryError` if ``out`` cannot be used as asked; touches nothing."""
    if resume and overwrite:
        raise RunDirectoryError("resume / overwrite: expected at most one of them, got both")
    if resume:
        if not (out / LAST_DIR / "train_state.pt").is_file():
            raise RunDirectoryError(
                f"{out}: --resume expected {out / LAST_DIR / 'train_state.pt'}, found nothing"
            )
        return
    if out.exists() and not out.is_dir():
        raise RunDirectoryError(f"{out}: expected a directory, got a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunDirectoryError(
                f"{out}: expected an empty or new directory, got a non-empty one (pass --resume or --overwrite)"
            )
        if not ((out / "model.json").exists() or (out / LAST_DIR).exists() or (out / "tb").exists()):
            raise RunDirectoryError(
                f"{out}: --overwrite refused, the directory does not look like a simgan run"
            )


def prepare_run_directory(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Check ``out`` (see :func:`check_run_directory`); with ``overwrite``, delete the old run first."""
    check_run_directory(out, resume=resume, overwrite=overwrite)
    if overwrite and out.is_dir() and any(out.iterdir()):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def saved_config(out: Path) -> TrainConfig:
    """The config a run in ``out`` was trained with (from ``out/last/model.json``)."""
    return TrainConfig.from_json(load_model_files(Path(out) / LAST_DIR).config["train"])


def _resume_config(out: Path, config: TrainConfig | None) -> TrainConfig:
    """The saved run's config; a given ``config`` may change the budget and device, never the architecture."""
    saved = saved_config(out)
    if config is None:
        return saved
    if config.model_config() != saved.model_config():
        raise RunDirectoryError(
            f"{out}: resume expected the saved architecture {saved.model_config()}, got {config.model_config()}"
        )
    return config


def _grad_norm(parameters: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    return torch.nn.utils.clip_grad_norm_(parameters, max_norm if max_norm > 0 else math.inf)


def _check_finite(step: int, **values: torch.Tensor) -> None:
    for name, value in values.items():
        if not bool(torch.isfinite(value).all()):
            raise TrainingDivergedError(
                f"step {step}: {name} is {float(value)}; training stopped (lower the learning rates, or try "
                "--loss wgan-gp / --spectral-norm). No checkpoint with non-finite weights was written."
            )


def _rng_states(rng: torch.Generator) -> dict[str, Any]:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "batch_rng": rng.get_state(),
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": pos,
            "has_gauss": has_gauss,
            "cached": cached,
        },
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }


def _restore_rng_states(rng: torch.Generator, states: dict[str, Any]) -> None:
    rng.set_state(states["batch_rng"])
    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = states["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


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
    config = _resume_config(out, config) if resume else (config or TrainConfig())
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
    gen, disc, norm = model.generator, model.discriminator, model.normalizer

    train_split = dataset.train
    obs = torch.as_tensor(train_split.obs, device=device)
    with torch.no_grad():
        train_cond = model.condition(obs, torch.as_tensor(train_split.action, device=device))  # N x (O + A)
        train_target = norm.target(
            obs,
            torch.as_tensor(train_split.next_obs, device=device),
            torch.as_tensor(train_split.reward, device=device),
        )  # N x T
    train_done = torch.as_tensor(train_split.terminated, dtype=torch.float32, device=device)  # N
    num_train, target_dim = train_target.shape
    # the same step count on every rank: --epochs counts passes of the global batch over all ranks' rows
    total_steps = config.total_steps(
        round(float(dist.reduce(torch.tensor(float(num_train)), "sum")) / dist.world_size)
    )
    batch, k = config.batch_size, config.samples_per_condition

    mean_params = list(gen.mean_net.parameters())
    residual_params = list(gen.residual_net.parameters())
    disc_params = list(disc.parameters())
    opt_g = torch.optim.Adam(
        [
            {"params": mean_params, "lr": config.lr_mean},
            {"params": residual_params, "lr": config.lr_g, "betas": (0.5, 0.9)},
        ]
    )
    opt_d = torch.optim.Adam(disc_params, lr=config.lr_d, betas=(0.5, 0.9))
    rng = torch.Generator(device=device).manual_seed(config.seed + dist.rank)
    evaluator = Evaluator(model, dataset.validation, config, device) if dist.is_writer else None

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
        files = load_model_files(out / LAST_DIR)
        if files.info.dataset_sha256 != info.dataset_sha256:
            raise RunDirectoryError(
                f"{out}: resume expected the dataset the run was trained on (manifest sha256 "
                f"{files.info.dataset_sha256[:16]}...), got {dataset.path} ({info.dataset_sha256[:16]}...)"
            )
        model.load_tensors({name: t.to(device) for name, t in files.tensors.items()})
        saved = load_train_state(out / LAST_DIR)
        opt_g.load_state_dict(saved["opt_g"])
        opt_d.load_state_dict(saved["opt_d"])
        if dist.is_writer:
            _restore_rng_states(rng, saved["rng"])
        else:  # only rank 0's RNG states are saved; the others draw fresh batches after a resume
            rng.manual_seed(config.seed + dist.rank + dist.world_size * saved["counters"]["step"])
        state.update(saved["counters"])
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

    def calibrate() -> dict[str, Any]:
        """Realism reference and forecast noise correlation of the model as it is now (once per evaluation)."""
        model.calibrate_realism(dataset.validation)
        model.noise_correlation, coverage = calibrate_noise_correlation(
            model, dataset.validation, seed=config.seed
        )
        return {"forecast_band_coverage": coverage}

    def save_checkpoint(directory: Path, metrics: dict[str, Any]) -> None:
        save_model(
            directory,
            kind="gan",
            config={
                "model": model.config.to_json(),
                "train": config.to_json(),
                "noise_correlation": model.noise_correlation,
            },
            info=info,
            tensors=model.state_tensors(),
            metrics=metrics,
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
    base_lrs = list(
        zip([*opt_g.param_groups, *opt_d.param_groups], [config.lr_mean, config.lr_g, config.lr_d])
    )
    for step in bar:
        # ---- learning rates: a function of the step alone (so a resumed run matches a straight one) ----------
        if config.lr_half_life > 0:
            for group, base_lr in base_lrs:
                group["lr"] = base_lr * 0.5 ** (step / config.lr_half_life)
        # ---- discriminator: real residual (target - mu) / scale vs generated f(s, a, z) -------------------
        disc.requires_grad_(True)
        for _ in range(config.n_critic):
            idx = torch.randint(num_train, (batch,), generator=rng, device=device)
            cond, target = train_cond[idx], train_target[idx]  # B x (O + A), B x T
            with torch.no_grad():
                mean, _ = gen.mean(cond)  # B x T
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

        # ---- generator: mean head by regression + BCE, residual by the adversarial loss + zero mean ----------
        disc.requires_grad_(False)
        idx = torch.randint(num_train, (batch,), generator=rng, device=device)
        cond, target, done = train_cond[idx], train_target[idx], train_done[idx]
        mean, logit = gen.mean(cond)  # B x T, B
        mse = F.mse_loss(mean, target)
        bce = F.binary_cross_entropy_with_logits(logit, done)
        cond_k = cond.repeat_interleave(k, dim=0)  # BK x (O + A)
        residual = gen.residual(
            cond_k, torch.randn(batch * k, config.noise_dim, generator=rng, device=device)
        )  # BK x T
        g_adv = losses.generator_loss(config.loss, disc(cond_k, residual))
        zero_mean = losses.unbiased_mean_square(residual.view(batch, k, target_dim))
        g_loss = mse + bce + g_adv + config.mean_penalty * zero_mean
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        dist.average_gradients(mean_params + residual_params)
        mean_grad = _grad_norm(mean_params, config.max_grad_norm)
        residual_grad = _grad_norm(residual_params, config.max_grad_norm)
        _check_finite(step, generator_loss=g_loss, mean_grad_norm=mean_grad, residual_grad_norm=residual_grad)
        opt_g.step()

        # ---- residual scale: EMA of the real residual's RMS per target dimension ------------------------------
        with torch.no_grad():
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
                _update_alarms(state, metrics, config, writer, done_steps)
                calibration = calibrate()  # both checkpoints below hold this same model state
                if metrics["energy_score"] < state["best_score"]:
                    state.update(
                        best_score=metrics["energy_score"],
                        best_step=done_steps,
                        evals_since_best=0,
                        time_to_best=state["elapsed"],
                    )
                    save_checkpoint(out, {**_final_metrics(metrics, state), **calibration})
                    if evaluator.figure_png is not None:  # the best model's samples, for people to look at
                        atomic_write_bytes(out / FIGURE_FILE, evaluator.figure_png)
                else:
                    state["evals_since_best"] += 1
                writer.add_scalar("eval/best_energy_score", state["best_score"], done_steps)
                stop = 0 < config.early_stop_evals <= state["evals_since_best"]
                if stop:
                    total_steps = done_steps
                save_checkpoint(out / LAST_DIR, {**_final_metrics(metrics, state), **calibration})
                save_train_state(
                    out / LAST_DIR,
                    {
                        "opt_g": opt_g.state_dict(),
                        "opt_d": opt_d.state_dict(),
                        "rng": _rng_states(rng),
                        "counters": dict(state),
                    },
                )
            if dist.broadcast_flag(stop):
                break
    bar.close()
    if writer is None:
        return model.eval()
    writer.close()
    from simgan.checkpoint import load_model

    return load_model(out, device=device)  # type: ignore[return-value]


def _update_alarms(
    state: dict[str, Any], metrics: dict[str, float], config: TrainConfig, writer, step: int
) -> None:
    """Count evaluations of discriminator domination and mode collapse; warn once each when they persist."""
    dominated = metrics["d_accuracy"] > 0.99
    collapsed = metrics["residual_std"] < 0.05
    state["domination_evals"] = state["domination_evals"] + 1 if dominated else 0
    state["collapse_evals"] = state["collapse_evals"] + 1 if collapsed else 0
    writer.add_scalar("charts/discriminator_domination", float(dominated), step)
    writer.add_scalar("charts/mode_collapse", float(collapsed), step)
    for name, count, message in (
        (
            "discriminator_domination",
            state["domination_evals"],
            "the discriminator separates real from generated transitions almost perfectly (D accuracy > 0.99)",
        ),
        (
            "mode_collapse",
            state["collapse_evals"],
            "the generated spread at fixed (s, a) collapsed (residual std < 5 % of the real residual's)",
        ),
    ):
        if count >= config.alarm_evals and name not in state["alarms"]:
            state["alarms"] = [*state["alarms"], name]
            warnings.warn(f"step {step}: {message} for {count} evaluations", RuntimeWarning, stacklevel=3)


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


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


class Evaluator:
    """Scores the model on a fixed subset of validation transitions with fixed noise (same numbers every run)."""

    FIGURE_CONDITIONS = 4
    SPREAD_CONDITIONS = 16
    SPREAD_SAMPLES = 32
    MMD_ROWS = 1024

    def __init__(
        self, model: ConditionalGAN, validation: TransitionBatch, config: TrainConfig, device: torch.device
    ):
        self.model, self.config = model, config
        self.figure_png: bytes | None = None  # the latest generated-vs-real figure, PNG bytes
        pick = np.sort(np.random.default_rng(config.seed).permutation(len(validation))[: config.eval_size])
        rows = validation.select(pick)
        self.obs = torch.as_tensor(rows.obs, device=device)  # M x O
        self.action = torch.as_tensor(rows.action, device=device)  # M x act_dim, or M
        self.next_obs = torch.as_tensor(rows.next_obs, device=device)  # M x O
        self.reward = torch.as_tensor(rows.reward, device=device)  # M
        self.done = torch.as_tensor(rows.terminated, device=device)  # M bool
        g = torch.Generator(device=device).manual_seed(config.seed + 1)
        self.noise = torch.randn(2, len(rows), config.noise_dim, generator=g, device=device)  # 2 x M x Z
        self.fixed = torch.linspace(0, len(rows) - 1, self.SPREAD_CONDITIONS, device=device).long()  # S
        self.fixed_noise = torch.randn(
            self.SPREAD_CONDITIONS * self.SPREAD_SAMPLES, config.noise_dim, generator=g, device=device
        )

    @torch.no_grad()
    def evaluate(self, writer, step: int) -> dict[str, float]:
        """Compute the validation metrics, log them under ``eval/`` (plus a figure) and return them."""
        model, gen, norm = self.model, self.model.generator, self.model.normalizer
        model.eval()
        cond = model.condition(self.obs, self.action)  # M x (O + A)
        target = norm.target(self.obs, self.next_obs, self.reward)  # M x T
        mean, logit = gen.mean(cond)  # M x T, M
        scale = gen.residual_scale
        residuals = [gen.residual(cond, noise) for noise in self.noise]  # 2 x (M x T), in units of scale
        samples = torch.stack([mean + scale * r for r in residuals], dim=1)  # M x 2 x T
        next_mean, reward_mean = norm.untarget(self.obs, mean)
        next_sample, _ = norm.untarget(self.obs, samples[:, 0])
        d_real = model.discriminator(cond, (target - mean) / scale)  # M
        d_fake = model.discriminator(cond, residuals[0])  # M
        rows = slice(0, self.MMD_ROWS)
        predicted, done = logit > 0, self.done
        true_pos = float((predicted & done).sum())
        metrics = {
            "energy_score": float(losses.energy_score(samples, target)),
            "next_obs_mse_sample": float((next_sample - self.next_obs).pow(2).mean()),
            "next_obs_mse_mean": float((next_mean - self.next_obs).pow(2).mean()),
            "next_obs_mse_identity": float((self.obs - self.next_obs).pow(2).mean()),
            "reward_mse_mean": float((reward_mean - self.reward).pow(2).mean()),
            "mmd2": float(
                losses.rbf_mmd2(torch.cat([cond, target], 1)[rows], torch.cat([cond, samples[:, 0]], 1)[rows])
            ),
            "termination_accuracy": float((predicted == done).float().mean()),
            "termination_f1": 2 * true_pos / max(1.0, float(predicted.sum() + done.sum())),
            "termination_recall": true_pos / float(done.sum()) if bool(done.any()) else math.nan,
            "d_accuracy": float((d_real > d_fake).float().mean()),
            "d_real": float(losses.discriminator_probabilities(self.config.loss, d_real).mean()),
            "d_fake": float(losses.discriminator_probabilities(self.config.loss, d_fake).mean()),
            "residual_std": float(self._spread(cond)),
        }
        for name, value in metrics.items():
            writer.add_scalar(f"eval/{name}", value, step)
        if self.config.figures:
            figure = self._figure(cond, mean)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=110)
            self.figure_png = buffer.getvalue()
            writer.add_figure("eval/generated_vs_real", figure, step)  # closes the figure
        model.train()
        return metrics

    def _spread(self, cond: torch.Tensor) -> torch.Tensor:
        """Mean std of the residual over noise at fixed (s, a), in units of the real residual's RMS (~1 if healthy)."""
        fixed_cond = cond[self.fixed].repeat_interleave(self.SPREAD_SAMPLES, dim=0)  # S*K x (O + A)
        residual = self.model.generator.residual(fixed_cond, self.fixed_noise)
        return residual.view(self.SPREAD_CONDITIONS, self.SPREAD_SAMPLES, -1).std(dim=1).mean()

    def _figure(self, cond: torch.Tensor, mean: torch.Tensor):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        gen, norm = self.model.generator, self.model.normalizer
        obs_dim = self.obs.shape[1]
        # x, y columns of [next_obs, reward]: the two state dimensions that change the most per step
        top = torch.argsort(norm.delta_std, descending=True)[:2].sort().values.tolist()
        dims = (top[0], top[1]) if obs_dim > 1 else (0, obs_dim)
        fig, axes = plt.subplots(1, self.FIGURE_CONDITIONS, figsize=(3.2 * self.FIGURE_CONDITIONS, 3.0))
        for ax, row in zip(axes, self.fixed[:: self.SPREAD_CONDITIONS // self.FIGURE_CONDITIONS].tolist()):
            noise = self.fixed_noise[: self.SPREAD_SAMPLES]
            c = cond[row : row + 1].expand(self.SPREAD_SAMPLES, -1)
            obs = self.obs[row : row + 1].expand(self.SPREAD_SAMPLES, -1)
            generated = norm.untarget(obs, mean[row : row + 1] + gen.residual_scale * gen.residual(c, noise))
            real = torch.cat([self.next_obs[row], self.reward[row : row + 1]])
            mean_obs, mean_reward = norm.untarget(obs[:1], mean[row : row + 1])
            predicted = torch.cat([mean_obs[0], mean_reward])
            points = torch.cat([generated[0], generated[1][:, None]], dim=1).cpu()
            ax.scatter(points[:, dims[0]], points[:, dims[1]], s=8, alpha=0.5, label="generated")
            ax.scatter([float(real[dims[0]])], [float(real[dims[1]])], marker="*", s=120, c="k", label="real")
            ax.scatter(
                [float(predicted[dims[0]])],
                [float(predicted[dims[1]])],
                marker="x",
                s=60,
                c="r",
                label="mean head",
            )
            ax.set_title(f"validation row {row}", fontsize=9)
            ax.set_xlabel(f"next_obs[{dims[0]}]")
            ax.set_ylabel(f"next_obs[{dims[1]}]" if dims[1] < obs_dim else "reward")
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        return fig


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
