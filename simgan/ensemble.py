"""The Gaussian-ensemble baseline (PETS / MBPO, mbrl-lib style): what users run today, for honest comparisons.

An ensemble of M MLPs (default 7 members, 4 x 200 SiLU), each predicting a diagonal Gaussian over the normalised
target ``(s' - s, r)`` plus a termination logit. All members run as one batched computation: layer weights are
M x in x out tensors applied with ``torch.baddbmm``. Training follows PETS: every member sees its own bootstrap
resample of the training split, the loss is the Gaussian NLL (plus BCE for termination), and the log-variance is
softplus-bounded between learned ``min_logvar`` / ``max_logvar`` (with a small penalty pulling the bounds
together). After training, the ``elites`` members with the lowest validation MSE are kept for prediction.
This module holds the model and its config; the training loop, :func:`train_ensemble`, is in
:mod:`simgan.ensemble_training`.

WorldModel interface (see :mod:`simgan.world_model`), T = obs_dim + 1 target dimensions:

* ``sample``: ``noise`` is B x (T + 1) standard normal. Column T picks the elite member (through the normal CDF,
  so it is uniform over elites), columns 0..T-1 draw the Gaussian sample: ``target = mu + sigma * noise[:, :T]``.
  ``terminated = p > 0.5`` with p the chosen member's termination probability (as the GAN does).
* ``mean``: the mean over elites of the members' means (the model's conditional mean).
* ``realism``: the log-density of the transition under the elite *mixture* (an equal-weight mixture of the
  elites' Gaussians). Member disagreement (epistemic uncertainty) widens the mixture, so a transition in a
  region the members disagree about is judged less sharply; the density is then calibrated to [0, 1] as the
  fraction of real validation transitions with a lower log-density.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from simgan import workspace
from simgan.checkpoint import CheckpointError, ModelFiles, save_model, stored_forecast_noise
from simgan.config import check_hidden_sizes
from simgan.dataset_format import TransitionBatch
from simgan.errors import SimganError
from simgan.world_model import (
    CONSTANT_COLUMN_STD,
    CalibratedRealism,
    ModelInfo,
    SpaceClamp,
    encode_action,
    realism_from_scores,
    repeat_counts,
    transition_tensors,
)


class EnsembleError(SimganError, ValueError):
    """Bad input to the ensemble (shapes, configuration)."""


@dataclass
class EnsembleConfig:
    """Hyperparameters of :func:`train_ensemble` (defaults follow mbrl-lib's MBPO configs)."""

    members: int = field(default=7, metadata={"help": "ensemble members, each trained on its own bootstrap"})
    elites: int = field(default=5, metadata={"help": "members kept for prediction (lowest validation MSE)"})
    hidden: tuple[int, ...] = field(
        default=(200, 200, 200, 200), metadata={"help": "hidden layer widths (SiLU)"}
    )
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    weight_decay: float = field(default=5e-5, metadata={"help": "L2 weight decay on the layer weights"})
    batch_size: int = field(default=256, metadata={"help": "transitions per member per optimiser step"})
    steps: int = field(
        default=20000, metadata={"help": "maximum optimiser steps (early stopping may end sooner)"}
    )
    eval_every: int = field(default=250, metadata={"help": "optimiser steps between validation passes"})
    patience: int = field(
        default=8, metadata={"help": "validation passes without improvement before stopping"}
    )
    improvement_threshold: float = field(
        default=0.01,
        metadata={"help": "relative drop of a member's validation MSE that counts as improvement"},
    )
    max_validation: int = field(
        default=20000, metadata={"help": "validation transitions used (seeded subsample)"}
    )
    holdout_fraction: float = field(
        default=0.1,
        metadata={"help": "share of training transitions held out when the dataset has no validation"},
    )
    logvar_bound_weight: float = field(default=0.01, metadata={"help": "penalty on max_logvar - min_logvar"})
    seed: int = field(default=0, metadata={"help": "seed of initialisation, bootstraps and batches"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda or cuda:N"})
    forecast_calibration: bool = field(
        default=True,
        metadata={"help": "calibrate the forecast noise (correlation, spread) on the validation episodes"},
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})

    def __post_init__(self) -> None:
        if self.members < 1 or not 1 <= self.elites <= self.members:
            raise EnsembleError(
                f"elites: expected 1 <= elites <= members ({self.members}), got {self.elites}"
            )
        for name in ("batch_size", "steps", "eval_every", "patience"):
            if getattr(self, name) < 1:
                raise EnsembleError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        try:
            check_hidden_sizes("hidden", tuple(self.hidden))
        except ValueError as error:
            raise EnsembleError(str(error)) from None
        self.hidden = tuple(self.hidden)


class GaussianEnsemble(CalibratedRealism, nn.Module):
    """A bootstrapped ensemble of probabilistic MLPs; implements :class:`simgan.world_model.WorldModel`."""

    def __init__(self, info: ModelInfo, config: EnsembleConfig) -> None:
        super().__init__()
        self.info, self.config = info, config
        obs_dim, in_dim = info.obs_dim, info.obs_dim + info.action_input_dim
        self.target_dim = obs_dim + 1
        self.noise_dim = self.target_dim + 1
        sizes = [in_dim, *config.hidden, 2 * self.target_dim + 1]
        m = config.members
        self.weights = nn.ParameterList(
            nn.Parameter(torch.zeros(m, a, b)) for a, b in itertools.pairwise(sizes)
        )
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(m, 1, b)) for b in sizes[1:])
        self.max_logvar = nn.Parameter(torch.full((self.target_dim,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((self.target_dim,), -10.0))
        for name, dim in (("input", in_dim), ("target", self.target_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))
        self.register_buffer("elite_index", torch.arange(config.elites))
        self.register_buffer("realism_reference", torch.zeros(0))
        self.space_clamp = SpaceClamp(info.observation_space)  # samples stay where the env's states can be
        # How forecasts draw noise (simgan.forecast_calibration; set by training): its step-to-step correlation
        # and a factor on the members' standard deviation.
        self.noise_correlation = 0.0
        self.noise_spread = 1.0

    @property
    def device(self) -> torch.device:
        return self.input_mean.device

    # ---- setup -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> None:
        """Truncated-normal weights (std 1 / (2 sqrt(fan_in)), as mbrl-lib), zero biases; seeded."""
        for weight, bias in zip(self.weights, self.biases):
            std = 1.0 / (2.0 * math.sqrt(weight.shape[1]))
            values = torch.randn(weight.shape, generator=generator).clamp_(-2.0, 2.0) * std
            weight.copy_(values)
            bias.zero_()

    @torch.no_grad()
    def fit_normalizer(self, batch: TransitionBatch) -> None:
        """Input and target statistics from the training split (one-hot actions stay unscaled)."""
        inputs = torch.cat(
            [
                torch.as_tensor(batch.obs),
                encode_action(torch.as_tensor(batch.action), self.info.action_space),
            ],
            1,
        ).double()
        targets = torch.cat(
            [torch.as_tensor(batch.next_obs - batch.obs), torch.as_tensor(batch.reward)[:, None]], 1
        ).double()
        for name, values in (("input", inputs), ("target", targets)):
            mean, std = values.mean(0), values.std(0)
            std = torch.where(std < CONSTANT_COLUMN_STD, torch.ones_like(std), std)
            getattr(self, f"{name}_mean").copy_(mean.float())
            getattr(self, f"{name}_std").copy_(std.float())
        if self.info.is_discrete:  # a one-hot column is an indicator: keep it 0/1
            self.input_mean[self.info.obs_dim :] = 0.0
            self.input_std[self.info.obs_dim :] = 1.0

    # ---- tensors in, tensors out -----------------------------------------------------------------------------
    def normalized_inputs(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Raw obs B x O and action (B x act_dim, or B ints) -> normalised inputs B x (O + A)."""
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if obs.dim() != 2 or obs.shape[1] != self.info.obs_dim:
            raise EnsembleError(f"obs: expected shape B x {self.info.obs_dim}, got {tuple(obs.shape)}")
        action_input = encode_action(torch.as_tensor(action, device=self.device), self.info.action_space)
        if action_input.shape != (obs.shape[0], self.info.action_input_dim):
            raise EnsembleError(
                f"action: expected {obs.shape[0]} actions of width {self.info.action_input_dim}, "
                f"got shape {tuple(torch.as_tensor(action).shape)}"
            )
        return (torch.cat([obs, action_input], 1) - self.input_mean) / self.input_std

    def normalized_targets(
        self, obs: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """B x T: the normalised (next_obs - obs, reward)."""
        target = torch.cat([next_obs - obs, reward.reshape(-1, 1)], 1)
        return (target - self.target_mean) / self.target_std

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalised inputs (B x I, or M x B x I: one batch per member) -> every member's prediction.

        Returns:
            mean M x B x T, bounded log-variance M x B x T, termination logit M x B.
        """
        h = inputs.expand(len(self.weights[0]), *inputs.shape[-2:]) if inputs.dim() == 2 else inputs
        last = len(self.weights) - 1
        # With no gradient recorded, SiLU works in place and, on the CPU, large hidden activations go to scratch
        # buffers (simgan.workspace; the same values, no fresh allocation per layer), as in gan_networks.MLP.
        widest = max(weight.shape[-1] for weight in self.weights[:-1])
        inference, reuse = not torch.is_grad_enabled(), workspace.wanted(h, h.shape[0] * h.shape[1] * widest)
        low = workspace.lower_precision(h) if reuse else None  # autocast: the hidden layers in bfloat16
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            if reuse and i < last:
                if low is not None:
                    h, weight, bias = h.to(low), weight.to(low), bias.to(low)
                out = workspace.scratch(i % 2, (*h.shape[:2], weight.shape[-1]), h)
                h = torch.baddbmm(bias, h, weight, out=out)  # M x B x out
            else:
                h = torch.baddbmm(bias, h, weight)
            if i < last:
                h = F.silu(h, inplace=inference)
        mean, raw_logvar, logit = h.split([self.target_dim, self.target_dim, 1], dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar, logit.squeeze(-1)

    def _untarget(self, obs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = target * self.target_std + self.target_mean
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        return obs + raw[:, :-1], raw[:, -1]

    def _draw(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        noise: torch.Tensor | None,
        generator: torch.Generator | None,
        repeats: torch.Tensor | None = None,
        spread: float = 1.0,
    ) -> tuple[torch.Tensor, ...]:
        """One ensemble pass and draw: (next_obs, reward, terminated, target B x T, mean, logvar M x B x T,
        obs B x O as a float32 tensor).

        ``next_obs`` is clamped into the observation space; ``target`` is the draw before that clamp. With
        ``repeats`` (G ints summing to B), ``obs`` and ``action`` hold G rows and row g stands for ``repeats[g]``
        consecutive rows: the members run once per distinct row (:meth:`sample_repeated`). ``spread`` multiplies the
        members' standard deviation (forecasts' calibrated ``noise_spread``; the elite is picked as before).
        """
        inputs = self.normalized_inputs(obs, action)
        mean, logvar, logit = self.forward(inputs)
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        if repeats is not None:
            obs = obs.repeat_interleave(repeats, dim=0)
            mean, logvar, logit = (t.repeat_interleave(repeats, dim=1) for t in (mean, logvar, logit))
        batch = obs.shape[0]
        if noise is None:
            noise = torch.randn(batch, self.noise_dim, generator=generator, device=self.device)
        noise = torch.as_tensor(noise, dtype=torch.float32, device=self.device)
        if noise.shape != (batch, self.noise_dim):
            raise EnsembleError(f"noise: expected shape {(batch, self.noise_dim)}, got {tuple(noise.shape)}")
        # normal CDF of the last column -> uniform in (0, 1) -> one elite per row
        uniform = 0.5 * (1.0 + torch.erf(noise[:, -1] / math.sqrt(2.0)))
        n_elites = len(self.elite_index)
        member = self.elite_index[(uniform * n_elites).long().clamp_(0, n_elites - 1)]
        rows = torch.arange(batch, device=self.device)
        std = torch.exp(0.5 * logvar[member, rows])
        target = mean[member, rows] + (std if spread == 1.0 else spread * std) * noise[:, : self.target_dim]
        next_obs, reward = self._untarget(obs, target)
        return self.space_clamp(next_obs), reward, logit[member, rows] > 0.0, target, mean, logvar, obs

    def _outputs(self, drawn: tuple[torch.Tensor, ...], realism: bool) -> tuple[torch.Tensor, ...]:
        """A :meth:`_draw` as the interface returns it: (next_obs, reward, terminated[, realism])."""
        next_obs, reward, terminated, target, mean, logvar, obs = drawn
        if not realism:
            return next_obs, reward, terminated
        if self.space_clamp.bounded:  # the realism is that of the clamped transition, the one returned
            target = self.normalized_targets(obs, next_obs, reward)
        return (
            next_obs,
            reward,
            terminated,
            realism_from_scores(self.realism_reference, self._mixture_log_density(target, mean, logvar)),
        )

    # ---- the WorldModel interface ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        spread: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sampled step: (next_obs B x O, reward B, terminated B bool); all randomness comes from ``noise``.
        ``spread`` multiplies the members' standard deviation (forecasts' ``noise_spread``)."""
        return self._outputs(self._draw(obs, action, noise, generator, spread=spread), realism=False)

    @torch.no_grad()
    def sample_with_realism(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        spread: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sample` plus the :meth:`realism` of the sampled transitions, from the same ensemble pass."""
        return self._outputs(self._draw(obs, action, noise, generator, spread=spread), realism=True)

    @torch.no_grad()
    def sample_repeated(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        repeats: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        realism: bool = False,
        spread: float = 1.0,
    ) -> tuple[torch.Tensor, ...]:
        """:meth:`sample` (or with ``realism``, :meth:`sample_with_realism`) of ``obs`` and ``action`` repeated
        ``repeats`` times each (``repeat_interleave``), with the members run once per distinct row
        (:func:`simgan.world_model.sample_repeated`). Equal to sampling the repeated rows up to float rounding."""
        repeats = repeat_counts(repeats, len(obs), self.device, EnsembleError)
        return self._outputs(self._draw(obs, action, noise, generator, repeats, spread), realism)

    @torch.no_grad()
    def mean(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The elites' average prediction: (E[next_obs] B x O, E[reward] B, P(terminated) B)."""
        mean, _, logit = self.forward(self.normalized_inputs(obs, action))
        next_obs, reward = self._untarget(obs, mean[self.elite_index].mean(0))
        return self.space_clamp(next_obs), reward, torch.sigmoid(logit[self.elite_index]).mean(0)

    @torch.no_grad()
    def log_density(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """Log-density (normalised units) of each transition under the equal-weight elite mixture, B floats."""
        inputs = self.normalized_inputs(obs, action)
        obs, next_obs, reward = transition_tensors(obs, next_obs, reward, self.device, EnsembleError)
        target = self.normalized_targets(obs, next_obs, reward)
        mean, logvar, _ = self.forward(inputs)
        return self._mixture_log_density(target, mean, logvar)

    def _mixture_log_density(
        self, target: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor
    ) -> torch.Tensor:
        """Log-density of normalised targets (B x T) under the elites of every member's (M x B x T) Gaussians."""
        mean, logvar = mean[self.elite_index], logvar[self.elite_index]  # K x B x T
        per_member = -0.5 * (
            ((target - mean) ** 2) * torch.exp(-logvar) + logvar + math.log(2 * math.pi)
        ).sum(-1)
        return torch.logsumexp(per_member, dim=0) - math.log(len(self.elite_index))

    realism_score = log_density  # what realism is calibrated on (CalibratedRealism)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def save(self, directory: str | Path, metrics: dict[str, Any] | None = None) -> None:
        """Write a model directory (``kind="ensemble"``) loadable with :func:`simgan.checkpoint.load_model`."""
        config = asdict(self.config)
        config["hidden"] = list(self.config.hidden)
        tensors = {name: t.detach() for name, t in self.state_dict().items()}
        save_model(
            directory,
            kind="ensemble",
            config={
                "ensemble": config,
                "noise_correlation": self.noise_correlation,
                "noise_spread": self.noise_spread,
            },
            info=self.info,
            tensors=tensors,
            metrics=metrics,
        )

    @classmethod
    def from_checkpoint(cls, files: ModelFiles, device: torch.device | str = "cpu") -> GaussianEnsemble:
        """Rebuild from a model directory's contents (see :func:`simgan.checkpoint.load_model`)."""
        try:
            config = EnsembleConfig(**files.config["ensemble"])
        except (KeyError, TypeError, SimganError) as exc:
            raise CheckpointError(f"model.json: cannot read the ensemble's config ({exc})") from exc
        model = cls(files.info, config)
        model.noise_correlation, model.noise_spread = stored_forecast_noise(files)
        tensors = dict(files.tensors)
        model.realism_reference = torch.empty_like(tensors.get("realism_reference", torch.zeros(0)))
        try:
            model.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"weights: do not match the stored ensemble architecture: {exc}") from exc
        return model.to(device).eval()


__all__ = ["EnsembleConfig", "EnsembleError", "GaussianEnsemble"]
