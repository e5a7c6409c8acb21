"""Scoring the GAN world model during training, on held-out validation transitions.

:class:`Evaluator` computes the validation metrics (the energy score of generated transitions chooses the best
checkpoint) with fixed rows and fixed noise, so the same model gets the same numbers in every run, and logs them
under ``eval/`` with a generated-vs-real figure. :func:`update_alarms` turns them into the training-health alarms
(discriminator domination, mode collapse) that :func:`simgan.training.train` counts and warns about.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
import torch

from simgan import losses
from simgan.dataset_format import TransitionBatch
from simgan.metrics import termination_scores
from simgan.models import ConditionalGAN
from simgan.train_config import TrainConfig


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
        mean = gen.mean(cond)  # M x T
        scale = gen.residual_scale
        residuals = [gen.residual(cond, noise) for noise in self.noise]  # 2 x (M x T), in units of scale
        samples = torch.stack([mean + scale * r for r in residuals], dim=1)  # M x 2 x T
        next_mean, reward_mean = norm.untarget(self.obs, mean)
        next_sample, _ = norm.untarget(self.obs, samples[:, 0])
        d_real = model.discriminator(cond, (target - mean) / scale)  # M
        d_fake = model.discriminator(cond, residuals[0])  # M
        rows = slice(0, self.MMD_ROWS)
        predicted, done = gen.termination_logit(cond, samples[:, 0]) > 0, self.done  # as the sim decides
        true_pos = float((predicted & done).sum())
        scores = termination_scores(predicted, done)  # F1 1.0 where neither side terminates
        metrics = {
            "energy_score": float(losses.energy_score(samples, target)),
            "next_obs_mse_sample": float((next_sample - self.next_obs).pow(2).mean()),
            "next_obs_mse_mean": float((next_mean - self.next_obs).pow(2).mean()),
            "next_obs_mse_identity": float((self.obs - self.next_obs).pow(2).mean()),
            "reward_mse_mean": float((reward_mean - self.reward).pow(2).mean()),
            "mmd2": float(
                losses.rbf_mmd2(torch.cat([cond, target], 1)[rows], torch.cat([cond, samples[:, 0]], 1)[rows])
            ),
            "termination_accuracy": scores["accuracy"],
            "termination_f1": scores["f1"],
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


def update_alarms(
    state: dict[str, Any], metrics: dict[str, float], config: TrainConfig, writer, step: int
) -> None:
    """Count evaluations of discriminator domination and mode collapse; warn once each when they persist.

    Called by :func:`simgan.training.train` itself: the warning names the line that called ``train``.
    """
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
            warnings.warn(  # stacklevel 3: update_alarms <- train <- the caller of train
                f"step {step}: {message} for {count} evaluations", RuntimeWarning, stacklevel=3
            )
