"""The conditional GAN's networks: its architecture config, the MLP they are built from, the normaliser, the
generator (mean head, residual generator, termination head) and the discriminator.

:class:`simgan.models.ConditionalGAN` puts them together into a world model; its module docstring says how
each part is trained.

Shapes: B = batch, O = obs_dim, A = action input width (act_dim, or n for one-hot Discrete), T = O + 1 (the
target: normalised delta and reward), Z = noise_dim.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from simgan import workspace
from simgan.config import Activation, check_activation, check_hidden_sizes
from simgan.dataset_format import TransitionBatch
from simgan.world_model import CONSTANT_COLUMN_STD, ModelInfo

_INV_SQRT2 = 0.7071067811865476

# The hidden layers' activation of the GAN's networks (ModelConfig.activation): its module, and the function a
# no-grad forward pass applies in place. SiLU is smooth, which the regression-precise mean heads of deterministic
# dynamics rely on; ReLU costs almost nothing on the CPU, where bfloat16 SiLU is ~20 % of a large batch's step, and
# hardswish, x * relu6(x + 3) / 6 (SiLU's piecewise-quadratic stand-in), about half of SiLU.
ACTIVATIONS: dict[str, type[nn.Module]] = {"silu": nn.SiLU, "relu": nn.ReLU, "hardswish": nn.Hardswish}
_IN_PLACE = {nn.SiLU: nn.functional.silu, nn.ReLU: nn.functional.relu, nn.Hardswish: nn.functional.hardswish}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a :class:`simgan.models.ConditionalGAN` (stored in ``model.json``; rebuilt from it on
    load)."""

    # The defaults are what `simgan train` builds (TrainConfig's; a test keeps the two equal).
    noise_dim: int = 8
    # K > 0: a uniform K-way discrete latent read off z[:, 0] (see Generator.residual)
    noise_components: int = 16
    mean_hidden: tuple[int, ...] = (256, 256, 256)
    residual_hidden: tuple[int, ...] = (128, 128)
    disc_hidden: tuple[int, ...] = (128, 128)
    # () : no termination net; the logit is the mean head's last output (models saved before it existed)
    termination_hidden: tuple[int, ...] = (64, 64)
    spectral_norm: bool = False
    loss: str = "hinge"  # how the discriminator's scores are read (logits or critic scores)
    # True: the mean head's output is the mean before the observation space's clip; samples are clipped, the
    # mean is not (False: models saved before it, whose mean is clipped before the residual is added)
    mean_before_clip: bool = True
    activation: Activation = "silu"  # of every hidden layer (ACTIVATIONS)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelConfig:
        values = dict(data)
        values.setdefault("noise_components", 0)  # models saved before the discrete latent existed
        values.setdefault("termination_hidden", [])  # ... and before the termination head had its own net
        # ... and before the mean head predicted the mean before the clip
        values.setdefault("mean_before_clip", False)
        values.setdefault("activation", "silu")  # ... and before the activation could be chosen
        for key in ("mean_hidden", "residual_hidden", "disc_hidden", "termination_hidden"):
            values[key] = tuple(int(h) for h in values[key])
        return cls(**values)

    def __post_init__(self) -> None:
        for name in ("mean_hidden", "residual_hidden", "disc_hidden", "termination_hidden"):
            check_hidden_sizes(name, tuple(getattr(self, name)), allow_empty=name == "termination_hidden")
        check_activation(self.activation)


def mlp(
    in_dim: int,
    hidden: tuple[int, ...],
    out_dim: int,
    *,
    spectral_norm: bool = False,
    activation: Activation = "silu",
) -> MLP:
    """An MLP: in_dim -> hidden... -> out_dim (linear output) with ``activation`` (:data:`ACTIVATIONS`) after
    each hidden layer, optionally spectrally normalised."""
    check_activation(activation)
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden, out_dim]
    for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        linear = nn.Linear(d_in, d_out)
        if spectral_norm:
            linear = nn.utils.parametrizations.spectral_norm(linear)
        layers.append(linear)
        if i < len(dims) - 2:
            layers.append(ACTIVATIONS[activation]())
    return MLP(*layers)


class MLP(nn.Sequential):
    """Linear, activation, ..., Linear (built by :func:`mlp`; state-dict keys as ``nn.Sequential``'s).

    With no gradient recorded (sampling, evaluation) a forward pass applies the activation in place and, on the
    CPU, writes large hidden activations into this thread's scratch buffers (:mod:`simgan.workspace`) instead of
    fresh tensors: the same kernels and the same values, without the allocation and page faults of a new B x width
    activation per layer. Under ``torch.autocast`` (``precision="bfloat16"``) those layers run in its dtype, as
    ``nn.Sequential``'s would. With gradients it is ``nn.Sequential``'s forward.
    """

    @property
    def widest_hidden(self) -> int:
        """The widest hidden layer (0 without one), worked out once."""
        widest = self.__dict__.get("_widest_hidden")
        if widest is None:
            widths = [m.out_features for m in self if isinstance(m, nn.Linear)][:-1]
            widest = self.__dict__["_widest_hidden"] = max(widths, default=0)
        return widest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.dim() != 2:
            return super().forward(x)
        reuse = workspace.wanted(x, x.shape[0] * self.widest_hidden)
        low = workspace.lower_precision(x) if reuse else None  # autocast: the hidden layers in bfloat16
        last = len(self) - 1
        slot = 0
        for i, layer in enumerate(self):
            if not isinstance(layer, nn.Linear):
                x = _IN_PLACE[type(layer)](x, inplace=True)  # x is the fresh output of the Linear before it
            elif i == last or not reuse or layer.bias is None:
                x = nn.functional.linear(x, layer.weight, layer.bias)  # autocast casts (out= is not cast)
            else:
                weight, bias = layer.weight, layer.bias
                if low is not None:
                    x, weight, bias = x.to(low), weight.to(low), bias.to(low)
                out = workspace.scratch(slot, (x.shape[0], weight.shape[0]), x)
                x, slot = torch.addmm(bias, x, weight.t(), out=out), 1 - slot
        return x


class Normalizer(nn.Module):
    """Per-dimension affine normalisation of observations, Box actions, state deltas and rewards.

    Fitted on the training split only and stored (as buffers) with the model.
    """

    def __init__(self, obs_dim: int, action_dim: int) -> None:
        super().__init__()
        for name, dim in (("obs", obs_dim), ("action", action_dim), ("delta", obs_dim), ("reward", 1)):
            self.register_buffer(f"{name}_mean", torch.zeros(dim))
            self.register_buffer(f"{name}_std", torch.ones(dim))

    @staticmethod
    def columns(batch: TransitionBatch, info: ModelInfo) -> dict[str, np.ndarray]:
        """The float64 columns (n x D each) the statistics are fitted on; Discrete one-hot actions have none."""
        columns = {
            "obs": batch.obs.astype(np.float64),
            "delta": (batch.next_obs.astype(np.float64) - batch.obs.astype(np.float64)),
            "reward": batch.reward.astype(np.float64).reshape(-1, 1),
        }
        if not info.is_discrete:
            columns["action"] = batch.action.astype(np.float64).reshape(len(batch), -1)
        return columns

    @torch.no_grad()
    def set_statistics(self, name: str, mean: np.ndarray, std: np.ndarray) -> None:
        """Store one column group's mean and std (D each); constant columns (CartPole's reward) stay unscaled."""
        std = np.where(std < CONSTANT_COLUMN_STD, 1.0, std)
        getattr(self, f"{name}_mean").copy_(torch.as_tensor(mean, dtype=torch.float32))
        getattr(self, f"{name}_std").copy_(torch.as_tensor(std, dtype=torch.float32))

    def fit(self, batch: TransitionBatch, info: ModelInfo) -> Normalizer:
        """Set the statistics from a training batch (Discrete one-hot actions stay unnormalised)."""
        for name, values in self.columns(batch, info).items():
            self.set_statistics(name, values.mean(axis=0), values.std(axis=0))
        return self

    def condition(self, obs: torch.Tensor, action_input: torch.Tensor) -> torch.Tensor:
        """B x (O + A): normalised observation and action input."""
        return torch.cat(
            [(obs - self.obs_mean) / self.obs_std, (action_input - self.action_mean) / self.action_std],
            dim=-1,
        )

    def target(self, obs: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor) -> torch.Tensor:
        """B x T: the normalised (next_obs - obs, reward)."""
        delta = (next_obs - obs - self.delta_mean) / self.delta_std
        reward_n = (reward.reshape(-1, 1) - self.reward_mean) / self.reward_std
        return torch.cat([delta, reward_n], dim=-1)

    def target_bounds(
        self, obs: torch.Tensor, low: torch.Tensor, high: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The observation bounds ``low``/``high`` (O) as bounds on the normalised target from ``obs``: B x T each.

        The reward column is unbounded (-inf, inf), as is any dimension whose bound is infinite.
        """
        unbounded = torch.full((obs.shape[0], 1), torch.inf, device=obs.device)
        return (
            torch.cat([(low - obs - self.delta_mean) / self.delta_std, -unbounded], dim=-1),
            torch.cat([(high - obs - self.delta_mean) / self.delta_std, unbounded], dim=-1),
        )

    def untarget(self, obs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inverse of :meth:`target`: (next_obs B x O, reward B)."""
        obs_dim = obs.shape[-1]
        next_obs = obs + target[:, :obs_dim] * self.delta_std + self.delta_mean
        reward = target[:, obs_dim] * self.reward_std[0] + self.reward_mean[0]
        return next_obs, reward


class Generator(nn.Module):
    """(normalised obs, action input, z) -> (normalised delta B x O, normalised reward B, termination logit B)."""

    def __init__(self, obs_dim: int, action_dim: int, config: ModelConfig) -> None:
        super().__init__()
        cond_dim, target_dim = obs_dim + action_dim, obs_dim + 1
        self.obs_dim, self.target_dim = obs_dim, target_dim
        own_termination = bool(config.termination_hidden)
        # older models: the termination logit is the mean head's last output
        act = config.activation
        self.mean_net = mlp(
            cond_dim, config.mean_hidden, target_dim + (0 if own_termination else 1), activation=act
        )
        self.noise_components = config.noise_components
        self.residual_net = mlp(
            cond_dim + config.noise_dim + config.noise_components,
            config.residual_hidden,
            target_dim,
            activation=act,
        )
        self.register_buffer("residual_scale", torch.ones(target_dim))
        self.termination_net = (
            mlp(cond_dim + target_dim, config.termination_hidden, 1, activation=act)
            if own_termination
            else None
        )

    def mean(self, cond: torch.Tensor) -> torch.Tensor:
        """cond B x (O + A) -> target mean B x T."""
        return self.mean_net(cond)[:, : self.target_dim]

    def termination_logit(self, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logit of p(terminated | s, a, s'), B: ``target`` B x T is the transition's normalised (delta, reward),
        the real one in training and the generated one when sampling."""
        if self.termination_net is None:  # a model saved before the termination net: one more mean-head pass
            return self.mean_net(cond)[:, -1]
        return self.termination_net(torch.cat([cond, target], dim=-1)).squeeze(-1)

    def parameters_of_regression(self) -> list[nn.Parameter]:
        """The mean head's and the termination head's parameters (trained by MSE and BCE, at ``lr_mean``)."""
        heads = [self.mean_net] + ([self.termination_net] if self.termination_net is not None else [])
        return [p for head in heads for p in head.parameters()]

    def residual(self, cond: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """cond B x (O + A), noise B x Z -> the residual in units of ``residual_scale``, B x T.

        With ``noise_components = K > 0`` the net also sees ``one_hot(floor(K * Phi(z_0)))``: a discrete latent,
        uniform over K components, that is a function of the standard-normal noise (so the noise interface and
        its reproducibility stay as they are). A continuous map of Gaussian noise can only reach disconnected
        modes (a +kick and a -kick) by stretching across the gap between them, which leaves mass there; with a
        discrete input the net can send whole components to each mode, and ignore them on unimodal dynamics.
        """
        inputs = [cond, noise]
        if self.noise_components:
            component = self.component(noise)  # B
            inputs.append(
                torch.nn.functional.one_hot(component, self.noise_components).to(noise.dtype)
            )  # B x K
        return self.residual_net(torch.cat(inputs, dim=-1))

    def component(self, noise: torch.Tensor) -> torch.Tensor:
        """noise B x Z -> the discrete latent's component ``floor(K * Phi(z_0))``, B int64 in [0, K)."""
        k = self.noise_components
        uniform = 0.5 * (1.0 + torch.erf(noise[:, 0] * _INV_SQRT2))  # B, Phi(z_0) ~ U(0, 1)
        return (uniform * k).long().clamp_(0, k - 1)

    def bounded(
        self, mean: torch.Tensor, residual: torch.Tensor, low: torch.Tensor, high: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The generated target ``mean + scale * residual`` clamped to ``[low, high]`` (B x T each, from
        :meth:`Normalizer.target_bounds`), and the residual that clamped target amounts to (what the
        discriminator judges for the realism of a sample). Where nothing is clamped both are exactly the
        unclamped values.
        """
        target = mean + self.residual_scale * residual
        clamped = torch.clamp(target, low, high)
        return clamped, residual + (clamped - target) / self.residual_scale

    def forward(
        self, obs_n: torch.Tensor, action_input: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cond = torch.cat([obs_n, action_input], dim=-1)
        target = self.mean(cond) + self.residual_scale * self.residual(cond, noise)
        return target[:, : self.obs_dim], target[:, self.obs_dim], self.termination_logit(cond, target)


class Discriminator(nn.Module):
    """Critic conditioned on (s, a): (cond B x (O + A), judged residual B x T) -> B scores (logits or critic)."""

    def __init__(self, obs_dim: int, action_dim: int, config: ModelConfig) -> None:
        super().__init__()
        self.net = mlp(
            2 * obs_dim + action_dim + 1,
            config.disc_hidden,
            1,
            spectral_norm=config.spectral_norm,
            activation=config.activation,
        )

    def forward(self, cond: torch.Tensor, judged: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([cond, judged], dim=-1)).squeeze(-1)


__all__ = [
    "MLP",
    "Discriminator",
    "Generator",
    "ModelConfig",
    "Normalizer",
    "mlp",
]
