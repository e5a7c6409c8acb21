"""The conditional GAN world model: a regression mean head plus an adversarially learned residual.

    G(s, a, z) = mu(s, a) + scale * f(s, a, z)          (in normalised (delta s, reward) units)

* ``mu`` (the mean head) is trained by MSE regression on the normalised target ``(s' - s, r)``, so it is the
  conditional mean, as precise as regression. Where the observation space has bounds (Pendulum's speed limit)
  the model clamps each sample ``mu + scale * f`` into it, as the env clips its state, and ``mu`` is the mean
  *before* that clip: it is regressed as the average of its clipped samples (``mean_before_clip``; see
  :func:`simgan.training_parts.clipped_sample_mean`). So a multimodal step at a bound keeps the shape the env
  gives it: a kicked pendulum at its speed limit lands both kicks on the limit, which a clamped mean plus an
  unchanged +-kick residual cannot. Models saved before it clamp the mean instead
  (:meth:`ConditionalGAN.bounded_mean`).
* ``p(terminated | s, a, s')`` (the termination head, a small MLP of its own) is trained with BCE on real
  transitions and, when sampling, reads the *generated* transition, so an episode ends where the sampled next
  state is terminal (``terminated = p > 0.5``). It used to be one more output of the mean head; the termination
  loss then dominated the shared layers' gradients once the regression error was small, and the mean head of
  CartPole-v1 was 25x less precise (see ``ModelConfig.termination_hidden``).
* ``f`` (the residual generator) is trained adversarially: the discriminator, conditioned on (s, a), judges the
  real residual ``(target - mu.detach()) / scale`` against ``f(s, a, z)``; a penalty on the (unbiased) squared
  mean of ``f`` over several z per (s, a) keeps ``E_z[f] = 0``, hence ``E_z[G] = mu``. On deterministic dynamics
  the real residual is mu's small error, so samples stay within regression precision; on multimodal dynamics
  (a kick of +k or -k) ``f`` has to produce both modes.
* ``scale`` (a buffer, one value per target dimension) tracks the RMS of the real residual during training, so
  the residual generator and the discriminator always work at unit scale, however precise the mean head is.

Its networks (ModelConfig, MLP, Normalizer, Generator, Discriminator) live in :mod:`simgan.gan_networks`.

Shapes: B = batch, O = obs_dim, A = action input width (act_dim, or n for one-hot Discrete), T = O + 1 (the
target: normalised delta and reward), Z = noise_dim.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from simgan.checkpoint import ModelFiles, stored_forecast_noise
from simgan.errors import SimganError
from simgan.gan_networks import Discriminator, Generator, ModelConfig, Normalizer
from simgan.world_model import (
    CalibratedRealism,
    ModelInfo,
    SpaceClamp,
    encode_action,
    realism_from_scores,
    repeat_counts,
    transition_tensors,
)


class ModelShapeError(SimganError, ValueError):
    """Inputs whose shapes or sizes do not match the model."""


class ConditionalGAN(CalibratedRealism, nn.Module):
    """The conditional GAN as a :class:`simgan.world_model.WorldModel` (raw, unnormalised tensors in and out)."""

    kind = "gan"

    def __init__(self, info: ModelInfo, config: ModelConfig) -> None:
        super().__init__()
        self.info = info
        self.config = config
        self.noise_dim = config.noise_dim
        obs_dim, action_dim = info.obs_dim, info.action_input_dim
        self.normalizer = Normalizer(obs_dim, action_dim)
        self.generator = Generator(obs_dim, action_dim, config)
        self.discriminator = Discriminator(obs_dim, action_dim, config)
        # Sorted discriminator scores of real validation transitions: realism = the fraction scoring lower.
        self.register_buffer("realism_reference", torch.zeros(0))
        # How forecasts draw noise (simgan.forecast_calibration; set by training): its step-to-step correlation
        # and a factor on the residual's spread.
        self.noise_correlation = 0.0
        self.noise_spread = 1.0
        self.space_clamp = SpaceClamp(info.observation_space)

    @property
    def device(self) -> torch.device:
        return self.normalizer.obs_mean.device

    # ---- inputs ----------------------------------------------------------------------------------------------
    def condition(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Raw obs B x O and action (B x act_dim, or B ints) -> normalised condition B x (O + A)."""
        obs = torch.as_tensor(obs, device=self.device)
        if obs.dim() != 2 or obs.shape[1] != self.info.obs_dim:
            raise ModelShapeError(f"obs: expected shape B x {self.info.obs_dim}, got {tuple(obs.shape)}")
        action = torch.as_tensor(action, device=self.device)
        action_input = encode_action(action, self.info.action_space)
        if action_input.shape != (obs.shape[0], self.info.action_input_dim):
            raise ModelShapeError(
                f"action: expected {obs.shape[0]} actions of width {self.info.action_input_dim}, "
                f"got shape {tuple(action.shape)}"
            )
        return self.normalizer.condition(obs.to(torch.float32), action_input)

    def _noise(
        self, batch: int, noise: torch.Tensor | None, generator: torch.Generator | None
    ) -> torch.Tensor:
        if noise is None:
            return torch.randn(batch, self.noise_dim, generator=generator, device=self.device)
        noise = torch.as_tensor(noise, dtype=torch.float32, device=self.device)
        if noise.shape != (batch, self.noise_dim):
            raise ModelShapeError(
                f"noise: expected shape {(batch, self.noise_dim)}, got {tuple(noise.shape)}"
            )
        return noise

    # ---- the WorldModel interface ----------------------------------------------------------------------------
    def _generate(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        noise: torch.Tensor | None,
        generator: torch.Generator | None,
        repeats: torch.Tensor | None = None,
        spread: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One generator pass: (next_obs B x O, reward B, terminated B, cond B x (O + A), residual B x T).

        ``spread`` multiplies the generated residual (forecasts' calibrated ``noise_spread``; 1: the trained
        one-step distribution); the residual returned, and judged, is the widened one.

        Next states are clamped into the observation space (:class:`simgan.world_model.SpaceClamp`); the
        residual returned is the one the clamped transition amounts to, which is what the discriminator judges.
        With ``repeats`` (G ints summing to B), ``obs`` and ``action`` hold G rows and row g stands for
        ``repeats[g]`` consecutive rows: the mean head runs once per distinct row (:meth:`sample_repeated`).
        """
        cond = self.condition(obs, action)
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        mean, bounds = self.bounded_mean(cond, obs)
        if repeats is not None:
            cond, obs, mean = (t.repeat_interleave(repeats, dim=0) for t in (cond, obs, mean))
            if bounds is not None:
                bounds = (
                    bounds[0].repeat_interleave(repeats, dim=0),
                    bounds[1].repeat_interleave(repeats, dim=0),
                )
        z = self._noise(cond.shape[0], noise, generator)
        residual = self.generator.residual(cond, z)
        if spread != 1.0:
            residual = residual * spread
        if bounds is not None:
            target, residual = self.generator.bounded(mean, residual, *bounds)
        else:
            target = mean + self.generator.residual_scale * residual
        next_obs, reward = self.normalizer.untarget(obs, target)
        terminated = self.generator.termination_logit(cond, target) > 0.0
        return self.space_clamp(next_obs), reward, terminated, cond, residual

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
        ``spread`` widens (> 1) or narrows the sampled residual around the mean (forecasts' ``noise_spread``)."""
        return self._outputs(self._generate(obs, action, noise, generator, spread=spread), realism=False)

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
        """:meth:`sample` plus the :meth:`realism` of the sampled transitions, with the mean head run once.

        The discriminator judges ``(target - mu) / scale``; for a generated transition that is exactly the
        residual the generator produced, so no second mean-head pass is needed.
        """
        return self._outputs(self._generate(obs, action, noise, generator, spread=spread), realism=True)

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
        ``repeats`` times each (``repeat_interleave``), with the mean head run once per distinct row: the first
        step of N futures from the same state and plan (:func:`simgan.world_model.sample_repeated`). Equal to
        sampling the repeated rows up to float rounding (the matmuls see fewer rows)."""
        repeats = repeat_counts(repeats, len(obs), self.device, ModelShapeError)
        return self._outputs(self._generate(obs, action, noise, generator, repeats, spread), realism)

    def _outputs(self, generated: tuple[torch.Tensor, ...], realism: bool) -> tuple[torch.Tensor, ...]:
        """A :meth:`_generate` as the interface returns it: (next_obs, reward, terminated[, realism]); the realism
        judges the residual the generator produced (see :meth:`sample_with_realism`)."""
        next_obs, reward, terminated, cond, residual = generated
        if not realism:
            return next_obs, reward, terminated
        return (
            next_obs,
            reward,
            terminated,
            realism_from_scores(self.realism_reference, self._judge(cond, residual)),
        )

    @torch.no_grad()
    def mean(
        self, obs: torch.Tensor, action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The mean head's prediction: (E[next_obs] B x O, E[reward] B, P(terminated) B at that mean transition).

        With ``mean_before_clip`` the head's output clamped into the observation space: exact for deterministic
        dynamics; where a multimodal step straddles a bound, the clipped samples' average lies inside it.
        """
        cond = self.condition(obs, action)
        obs = torch.as_tensor(obs, dtype=torch.float32, device=self.device)
        mean, bounds = self.bounded_mean(cond, obs)
        if bounds is not None:  # a no-op for models that clamp the mean itself
            mean = torch.clamp(mean, *bounds)
        next_obs, reward = self.normalizer.untarget(obs, mean)
        return self.space_clamp(next_obs), reward, torch.sigmoid(self.generator.termination_logit(cond, mean))

    def judged_residual(
        self, cond: torch.Tensor, obs: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """What the discriminator sees of a real transition: (target - mu) / scale, B x T."""
        target = self.normalizer.target(obs, next_obs, reward)
        with torch.no_grad():
            mean, _ = self.bounded_mean(cond, obs)
        return (target - mean) / self.generator.residual_scale

    def bounded_mean(
        self, cond: torch.Tensor, obs: torch.Tensor
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
        """The mean (B x T) that samples are generated around, ``mean + scale * residual``, and the target bounds
        (two B x T, :meth:`Normalizer.target_bounds`) or None when the space has no finite bound.

        With ``config.mean_before_clip`` (models trained since it) that is the mean head's own output, the mean
        before the env's clip, which may lie beyond a bound: each sample is clamped instead, as the env clamps
        its state, so both kicks of a kicked pendulum at its speed limit land on the limit. Models saved before
        it clamp the mean itself (their training let it overshoot a bound where the real next state lies on it).
        """
        mean = self.generator.mean(cond)
        bounds = self.target_bounds(obs)
        if bounds is None or self.config.mean_before_clip:
            return mean, bounds
        return torch.clamp(mean, *bounds), bounds

    def target_bounds(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The observation space's bounds on the normalised target from raw ``obs`` (B x O): two B x T tensors
        (:meth:`Normalizer.target_bounds`), or None when the space has no finite bound."""
        if not self.space_clamp.bounded:
            return None
        return self.normalizer.target_bounds(obs, *self.space_clamp.bounds(obs.device))

    def _judge(self, cond: torch.Tensor, judged: torch.Tensor) -> torch.Tensor:
        """Raw discriminator scores (B) of judged residuals, with spectral norm in eval mode."""
        if not self.discriminator.training:  # sampling: already in eval mode (switching costs ~60 us a call)
            return self.discriminator(cond, judged)
        self.discriminator.eval()  # spectral norm: no power iteration outside training
        scores = self.discriminator(cond, judged)
        self.discriminator.train()
        return scores

    @torch.no_grad()
    def score(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """Raw discriminator scores of transitions, B (higher = more real)."""
        cond = self.condition(obs, action)
        obs, next_obs, reward = transition_tensors(obs, next_obs, reward, self.device, ModelShapeError)
        return self._judge(cond, self.judged_residual(cond, obs, next_obs, reward))

    realism_score = score  # what realism is calibrated on (CalibratedRealism)

    # ---- checkpoints -----------------------------------------------------------------------------------------
    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the model (weights, normaliser, residual scale, realism reference) for ``save_model``."""
        return {name: t.detach() for name, t in self.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Inverse of :meth:`state_tensors` (raises :class:`SimganError` on missing or unexpected tensors)."""
        tensors = dict(tensors)
        if "realism_reference" in tensors:
            self.realism_reference = torch.empty_like(tensors["realism_reference"], device=self.device)
        try:
            self.load_state_dict(tensors, strict=True)
        except RuntimeError as exc:
            raise SimganError(f"model tensors do not match the stored architecture: {exc}") from exc

    @classmethod
    def from_checkpoint(cls, files: ModelFiles, device: torch.device | str = "cpu") -> ConditionalGAN:
        """Rebuild from a model directory's contents (see :func:`simgan.checkpoint.load_model`)."""
        from simgan.checkpoint import CheckpointError

        try:
            config = ModelConfig.from_json(files.config["model"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"model.json: cannot read the GAN's model config ({exc})") from exc
        model = cls(files.info, config)
        model.noise_correlation, model.noise_spread = stored_forecast_noise(files)
        try:
            model.load_tensors(files.tensors)
        except SimganError as exc:
            raise CheckpointError(f"weights: {exc}") from exc
        return model.to(device).eval()

    def to(self, *args: Any, **kwargs: Any) -> ConditionalGAN:  # type: ignore[override]
        return super().to(*args, **kwargs)


__all__ = [
    "ConditionalGAN",
    "ModelConfig",
    "ModelShapeError",
]
