"""The training configuration (stdlib only, so building the CLI parser does not import torch).

:class:`TrainConfig` is re-exported by :mod:`simgan.training`; defaults were chosen by measurement on Pendulum-v1,
CartPole-v1 and the multimodal benchmark envs (see the training report).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal

from simgan.config import Activation, check_activation, check_hidden_sizes

if TYPE_CHECKING:
    from simgan.models import ModelConfig

DEFAULT_STEPS = 4000
LOSSES = ("minimax", "nonsaturating", "wgan-gp", "hinge")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (the CLI's flags are built from these fields)."""

    loss: Literal["minimax", "nonsaturating", "wgan-gp", "hinge"] = field(
        default="hinge", metadata={"help": "adversarial loss of the residual generator"}
    )
    steps: int | None = field(
        default=None, metadata={"help": f"generator steps (default {DEFAULT_STEPS} unless --epochs)"}
    )
    epochs: float | None = field(
        default=None, metadata={"help": "passes over the training split instead of --steps"}
    )
    batch_size: int = field(default=256, metadata={"help": "conditions (s, a) per step"})
    samples_per_condition: int = field(
        default=4, metadata={"help": "noise draws per condition (zero-mean penalty)"}
    )
    lr_mean: float = field(
        # 2e-3: the head was still improving 6-8 % per 250 steps at 1e-3's end (README: the learning-rate study)
        default=2e-3,
        metadata={"help": "Adam learning rate of the mean head (regression)"},
    )
    lr_g: float = field(default=5e-4, metadata={"help": "Adam learning rate of the residual generator"})
    lr_d: float = field(default=5e-4, metadata={"help": "Adam learning rate of the discriminator"})
    lr_half_life: float = field(
        default=2000.0,
        metadata={"help": "steps over which every learning rate halves (exponential decay; 0: constant)"},
    )
    n_critic: int = field(default=3, metadata={"help": "discriminator updates per generator update"})
    gp_lambda: float = field(default=10.0, metadata={"help": "gradient-penalty weight (wgan-gp)"})
    mean_penalty: float = field(
        default=1.0, metadata={"help": "weight of the zero-mean penalty on the residual"}
    )
    scale_momentum: float = field(default=0.99, metadata={"help": "EMA momentum of the residual scale"})
    max_grad_norm: float = field(default=100.0, metadata={"help": "gradient clipping norm (0: off)"})
    noise_dim: int = field(default=8, metadata={"help": "noise dimension of the generator"})
    noise_components: int = field(
        default=16,
        metadata={
            "help": "K-way discrete latent of the residual generator, for multimodal dynamics (0: off)"
        },
    )
    clamp_mean: bool = field(
        default=True,
        metadata={
            "help": "regress the mean head as the model uses it, clamped into the observation space: where the "
            "real next state lies on a bound (Pendulum's speed limit) an overshoot is no error (off: plain MSE, "
            "as runs saved before it)"
        },
    )
    mean_before_clip: bool = field(
        default=True,
        metadata={
            "help": "where the observation space clips the next state (Pendulum's speed limit), the mean head "
            "predicts the mean before the clip and the model clips each sample, mean + residual, as the env "
            "clips its state; the mean head is regressed so that its clipped samples average to the data. Off: "
            "the model clips the mean, and a residual that does not shrink at the bound overshoots it (a kicked "
            "pendulum at its speed limit). No effect without clamp_mean"
        },
    )
    mean_ema: float = field(
        default=0.995,
        metadata={
            "help": "the model keeps an exponential moving average (this decay) of the mean and termination heads' "
            "trained weights, which is more precise than the last step's weights (0: the trained weights "
            "themselves, as runs saved before it)"
        },
    )
    info_weight: float = field(
        default=0.0,
        metadata={
            "help": "weight of an InfoGAN term: a classifier must tell the discrete component from the sample, "
            "pushing components onto separate modes (0: off, the default; no effect without noise components)"
        },
    )
    mean_hidden: tuple[int, ...] = field(default=(256, 256, 256), metadata={"help": "mean head hidden sizes"})
    residual_hidden: tuple[int, ...] = field(
        default=(128, 128), metadata={"help": "residual generator hidden sizes"}
    )
    disc_hidden: tuple[int, ...] = field(default=(128, 128), metadata={"help": "discriminator hidden sizes"})
    termination_hidden: tuple[int, ...] = field(
        default=(64, 64), metadata={"help": "hidden sizes of the termination head p(done | s, a, s')"}
    )
    spectral_norm: bool = field(
        default=False, metadata={"help": "spectral normalisation in the discriminator"}
    )
    activation: Activation = field(
        default="silu",
        metadata={
            "help": "hidden-layer activation of every GAN network: silu (smooth; the precise choice for "
            "deterministic dynamics), or hardswish or relu (cheaper: a faster learned env on CPUs, measure its "
            "fidelity first)"
        },
    )
    eval_every: int = field(default=250, metadata={"help": "steps between validation evaluations"})
    eval_size: int = field(default=2048, metadata={"help": "validation transitions scored per evaluation"})
    early_stop_evals: int = field(
        default=0, metadata={"help": "stop after this many evaluations without a new best (0: never)"}
    )
    alarm_evals: int = field(
        default=5, metadata={"help": "consecutive evaluations before domination / collapse is reported"}
    )
    figures: bool = field(
        default=True, metadata={"help": "log a generated-vs-real figure at each evaluation"}
    )
    forecast_calibration: bool = field(
        default=True,
        metadata={
            "help": "calibrate the forecast noise (correlation, spread) on the validation episodes at each "
            "checkpoint and after training; --no-forecast-calibration saves that time when the model will not "
            "forecast (forecasts then use correlation 0 and spread 1)"
        },
    )
    log_every: int = field(default=50, metadata={"help": "steps between TensorBoard scalar logs"})
    validation_fraction: float = field(
        default=0.1, metadata={"help": "share of episodes held out (CLI loading)"}
    )
    seed: int = field(default=0, metadata={"help": "seed of initialisation, batches and noise"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})

    def __post_init__(self) -> None:
        if self.steps is not None and self.epochs is not None:
            raise ValueError(
                f"steps / epochs: expected at most one, got steps={self.steps} and epochs={self.epochs}"
            )
        for name in ("batch_size", "n_critic", "eval_every", "log_every", "noise_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a positive integer, got {getattr(self, name)}")
        if self.noise_components < 0 or self.noise_components == 1:
            raise ValueError(f"noise_components: expected 0 (off) or >= 2, got {self.noise_components}")
        if not self.info_weight >= 0:
            raise ValueError(f"info_weight: expected a number >= 0, got {self.info_weight}")
        if not 0.0 <= self.mean_ema < 1.0:
            raise ValueError(f"mean_ema: expected a decay in [0, 1), got {self.mean_ema}")
        if self.samples_per_condition < 2:
            raise ValueError(f"samples_per_condition: expected >= 2, got {self.samples_per_condition}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss: expected one of {list(LOSSES)}, got {self.loss!r}")
        check_activation(self.activation)
        for name in ("mean_hidden", "residual_hidden", "disc_hidden", "termination_hidden"):
            check_hidden_sizes(name, getattr(self, name), allow_empty=name == "termination_hidden")

    def total_steps(self, num_train: int) -> int:
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * num_train / self.batch_size))
        return DEFAULT_STEPS if self.steps is None else self.steps

    def model_config(self) -> ModelConfig:
        from simgan.models import ModelConfig

        return ModelConfig(
            noise_dim=self.noise_dim,
            noise_components=self.noise_components,
            mean_hidden=tuple(self.mean_hidden),
            residual_hidden=tuple(self.residual_hidden),
            disc_hidden=tuple(self.disc_hidden),
            termination_hidden=tuple(self.termination_hidden),
            spectral_norm=self.spectral_norm,
            loss=self.loss,
            mean_before_clip=self.mean_before_clip and self.clamp_mean,
            activation=self.activation,
        )

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = dict(data)
        # runs saved before these existed were built without them (as ModelConfig.from_json reads their models)
        values.setdefault("noise_components", 0)
        values.setdefault("termination_hidden", [])
        values.setdefault("info_weight", 0.0)
        values.setdefault("clamp_mean", False)
        values.setdefault("mean_before_clip", False)
        values.setdefault("mean_ema", 0.0)
        values.setdefault("activation", "silu")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})
