"""The interface every learned dynamics model offers, so downstream code does not care which model it runs.

Both the conditional GAN (:mod:`simgan.models`) and the Gaussian-ensemble baseline implement
:class:`WorldModel`. The learned env, forecasting, metrics and agents use only this interface.

Conventions (all tensors batched, on ``model.device``):
    obs       B x obs_dim float32 (raw, unnormalised observations)
    action    B x act_dim float32 for Box action spaces; B int64 for Discrete
    noise     B x noise_dim float32, standard normal; *all* randomness of one model step comes from it, so the
              same (obs, action, noise) always gives the same transition (reproducible branching)
    next_obs  B x obs_dim float32;  reward B float32;  terminated B bool
    realism   B float32 in [0, 1]: calibrated so that on real held-out transitions it is roughly uniform
              (the fraction of real validation transitions that scored lower). A threshold of 0.01 therefore
              flags transitions less plausible than 99 % of real ones, whatever the model type.

Optional, for forecasts (:mod:`simgan.forecast_calibration`): ``noise_correlation`` (float in [0, 1]), how a
branch's noise carries over from step to step (models without it forecast with independent noise per step), and
``noise_spread`` (float > 0), a factor on the sampled deviation from the mean. A model with ``noise_spread`` takes
a ``spread`` keyword in ``sample``, ``sample_with_realism`` and ``sample_repeated`` (1: its trained one-step
distribution); models without it forecast with their one-step spread.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch

from simgan.errors import SimganError
from simgan.spaces import action_dim, space_from_dict, space_to_dict

if TYPE_CHECKING:
    from simgan.dataset_format import TransitionBatch

# A data column whose std is below this is constant (CartPole's reward of 1): every model's normaliser and the
# metrics leave such columns in raw units instead of dividing float noise by a tiny std.
CONSTANT_COLUMN_STD = 1e-6
# A reward column with at most this many distinct values (and at least DISCRETE_REWARD_MIN_REPEATS transitions per
# value) is discrete: CartPole's 1, InvertedPendulum's 1 / 0, Acrobot's -1 / 0. The model records the values, and
# a learned env can round its learned reward to them (``reward_values="data"``).
MAX_DISCRETE_REWARDS = 16
DISCRETE_REWARD_MIN_REPEATS = 10
# A model's noise_spread above this is refused (model.json, forecasts): a typo, not a calibration.
MAX_NOISE_SPREAD = 10.0


def noise_setting_problem(name: str, value: Any) -> str | None:
    """Why ``value`` is not a valid ``noise_correlation`` (a number in [0, 1]) or ``noise_spread`` (one in
    (0, MAX_NOISE_SPREAD]), as ``"NAME: expected ..., got VALUE"``; None when it is valid. Forecast arguments and
    ``model.json`` are checked by this one rule (each raises its own error type)."""
    if name == "noise_correlation":
        low, high, low_open, expected = 0.0, 1.0, False, "[0, 1]"
    elif name == "noise_spread":
        low, high, low_open, expected = 0.0, MAX_NOISE_SPREAD, True, f"(0, {MAX_NOISE_SPREAD:g}]"
    else:
        raise ValueError(f"name: expected 'noise_correlation' or 'noise_spread', got {name!r}")
    number = not isinstance(value, bool) and isinstance(value, (int, float, np.floating))
    if number and (low < float(value) if low_open else low <= float(value)) and float(value) <= high:
        return None
    return f"{name}: expected a number in {expected}, got {value!r}"


@dataclass(frozen=True)
class ModelInfo:
    """What a model knows about the env and data it was trained on (stored with every checkpoint)."""

    env_id: str
    env_kwargs: dict[str, Any]
    observation_space: gym.spaces.Box
    action_space: gym.spaces.Box | gym.spaces.Discrete
    max_episode_steps: int | None
    initial_states: np.ndarray  # N x obs_dim: first observations of the training episodes
    state_low: np.ndarray  # obs_dim: per-dimension minimum seen in the training data (obs and next_obs)
    state_high: np.ndarray  # obs_dim: per-dimension maximum seen in the training data
    dataset_sha256: str  # sha256 of the dataset's manifest.json
    # the distinct values of the training data's reward, ascending, when it takes only a few (discrete_values);
    # None for a continuous reward, and for models saved before simgan recorded them (reward_values_recorded False)
    reward_values: np.ndarray | None = None
    reward_values_recorded: bool = True

    @property
    def obs_dim(self) -> int:
        return int(self.observation_space.shape[0])

    @property
    def action_input_dim(self) -> int:
        return action_dim(self.action_space)

    @property
    def is_discrete(self) -> bool:
        return isinstance(self.action_space, gym.spaces.Discrete)

    @classmethod
    def from_dataset(cls, dataset) -> ModelInfo:
        """Build from a :class:`simgan.data.Dataset` using its *training* split only."""
        from simgan.fsutil import sha256_file

        train = dataset.train
        states = np.concatenate([train.obs, train.next_obs])
        return cls(
            env_id=dataset.env_id,
            env_kwargs=dataset.env_kwargs,
            observation_space=dataset.observation_space,
            action_space=dataset.action_space,
            max_episode_steps=dataset.manifest.get("max_episode_steps"),
            initial_states=train.obs[train.step == 0].astype(np.float32),
            state_low=states.min(axis=0).astype(np.float32),
            state_high=states.max(axis=0).astype(np.float32),
            dataset_sha256=sha256_file(dataset.path / "manifest.json"),
            reward_values=discrete_values(train.reward),
        )

    def to_json(self) -> dict[str, Any]:
        """The JSON part (arrays go to :meth:`arrays`)."""
        return {
            "env_id": self.env_id,
            "env_kwargs": self.env_kwargs,
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            "max_episode_steps": self.max_episode_steps,
            "dataset_sha256": self.dataset_sha256,
            "reward_values": None if self.reward_values is None else [float(v) for v in self.reward_values],
        }

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "initial_states": self.initial_states,
            "state_low": self.state_low,
            "state_high": self.state_high,
        }

    @classmethod
    def from_json(cls, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> ModelInfo:
        return cls(
            env_id=meta["env_id"],
            env_kwargs=dict(meta["env_kwargs"]),
            observation_space=space_from_dict(meta["observation_space"]),
            action_space=space_from_dict(meta["action_space"]),
            max_episode_steps=meta["max_episode_steps"],
            initial_states=np.asarray(arrays["initial_states"], dtype=np.float32),
            state_low=np.asarray(arrays["state_low"], dtype=np.float32),
            state_high=np.asarray(arrays["state_high"], dtype=np.float32),
            dataset_sha256=meta["dataset_sha256"],
            reward_values=(
                None
                if meta.get("reward_values") is None
                else np.asarray(meta["reward_values"], dtype=np.float32)
            ),
            reward_values_recorded="reward_values" in meta,  # absent: saved before simgan recorded them
        )


def discrete_values(values: np.ndarray) -> np.ndarray | None:
    """The distinct values of ``values`` (ascending, float32) when there are at most ``MAX_DISCRETE_REWARDS`` of
    them and each is backed by ``DISCRETE_REWARD_MIN_REPEATS`` entries on average; else None (a continuous column,
    or too few entries to tell)."""
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if len(values) == 0 or not np.all(np.isfinite(values)):
        return None
    distinct = np.unique(values)
    if len(distinct) > MAX_DISCRETE_REWARDS or len(values) < DISCRETE_REWARD_MIN_REPEATS * len(distinct):
        return None
    return distinct


@runtime_checkable
class WorldModel(Protocol):
    """A learned p(s', r, done | s, a). See the module docstring for shapes and conventions."""

    info: ModelInfo
    noise_dim: int

    @property
    def device(self) -> torch.device: ...

    def sample(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One step for a batch: returns (next_obs B x obs_dim, reward B, terminated B bool).

        ``noise`` (B x noise_dim, standard normal) fixes the sample; otherwise it is drawn with ``generator``.
        """
        ...

    def realism(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """Calibrated plausibility of each transition, B floats in [0, 1] (higher = more realistic)."""
        ...

    def sample_with_realism(
        self,
        obs: torch.Tensor,
        action: torch.Tensor,
        *,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`sample` and the :meth:`realism` of what it sampled: (next_obs, reward, terminated, realism).

        Equal to ``realism(obs, action, *sample(...)[:2])`` up to float rounding, but the models compute it from
        the same forward pass (the learned env and forecasts call this on every step).
        """
        ...

    def to(self, device: torch.device | str) -> WorldModel: ...


# Precisions a model can run at: float32 (exact), bfloat16 (matmuls under torch.autocast; see AtPrecision)
PRECISIONS = ("float32", "bfloat16")


class AtPrecision:
    """A world model whose forward passes run under ``torch.autocast`` in bfloat16; outputs come back float32.

    The learned env runs its model through this with ``precision="bfloat16"``, and ``simgan evaluate --precision``
    scores a model the same way, so the fidelity a lower precision costs is measured where it is used. Only the
    model's own calls are autocast, never the caller's arithmetic (metrics, the env's checks). Much faster on
    CPUs with AVX512-BF16 or AMX and on GPUs; slower elsewhere. bfloat16 keeps about 3 significant digits.
    Everything else (``info``, ``device``, ``noise_dim``, ...) is the wrapped model's, and an optional method
    (``mean``, ``sample_repeated``) is offered only where the wrapped model has it.
    """

    _AUTOCAST = frozenset({"sample", "sample_with_realism", "realism", "sample_repeated", "mean", "score"})

    def __init__(self, model: WorldModel, precision: str) -> None:
        if precision not in PRECISIONS[1:]:
            raise ValueError(f"precision: expected one of {PRECISIONS[1:]}, got {precision!r}")
        self.model, self.precision = model, precision

    def __getattr__(self, name: str) -> Any:
        if name in ("model", "precision"):  # not set yet (copy, unpickling): no recursion into self.model
            raise AttributeError(name)
        attr = getattr(self.model, name)
        return functools.partial(self._run, attr) if name in self._AUTOCAST else attr

    def _run(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with torch.autocast(self.model.device.type, dtype=getattr(torch, self.precision)):
            out = method(*args, **kwargs)
        as_float32 = lambda t: t.float() if t.is_floating_point() else t  # noqa: E731
        return as_float32(out) if isinstance(out, torch.Tensor) else tuple(as_float32(t) for t in out)

    def to(self, device: torch.device | str) -> AtPrecision:
        return AtPrecision(self.model.to(device), self.precision)


def at_precision(model: WorldModel, precision: str) -> WorldModel:
    """``model`` itself for ``"float32"``, else the model run at ``precision`` (:class:`AtPrecision`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return model if precision == "float32" else AtPrecision(model, precision)


def sample_kwargs(
    noise: torch.Tensor | None, generator: torch.Generator | None, spread: float = 1.0
) -> dict[str, Any]:
    """Keyword arguments of a model's ``sample`` calls: ``spread`` only when it is not 1, so models without a
    ``noise_spread`` (which take no ``spread``) are called as before."""
    kwargs: dict[str, Any] = {"noise": noise, "generator": generator}
    if spread != 1.0:
        kwargs["spread"] = spread
    return kwargs


def sample_repeated(
    model: WorldModel,
    obs: torch.Tensor,
    action: torch.Tensor,
    repeats: torch.Tensor,
    *,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    realism: bool = False,
    spread: float = 1.0,
) -> tuple[torch.Tensor, ...]:
    """``model.sample`` (or with ``realism``, ``sample_with_realism``) of G rows of ``obs`` and ``action``, row g
    repeated ``repeats[g]`` times (``repeat_interleave``; B = ``repeats.sum()`` rows out, ``noise`` B x noise_dim).

    N futures from one state under one plan share their first (state, action): models that offer
    ``sample_repeated`` (the GAN and the ensemble) run their deterministic part (the mean head, the members) once
    per distinct row, which equals sampling the repeated rows up to float rounding. Other models sample the
    repeated rows. ``spread`` other than 1 is passed on (models with ``noise_spread``; see the module docstring).
    """
    kwargs = sample_kwargs(noise, generator, spread)
    own = getattr(model, "sample_repeated", None)
    if own is not None:
        return own(obs, action, repeats, realism=realism, **kwargs)
    obs, action = (torch.as_tensor(t).repeat_interleave(repeats, dim=0) for t in (obs, action))
    if realism:
        return model.sample_with_realism(obs, action, **kwargs)
    return model.sample(obs, action, **kwargs)


class SpaceClamp:
    """Keeps next observations inside the observation space's bounds, as the real env does.

    A real env never returns a state outside its observation space (Pendulum clips its angular velocity to
    +-8), so a model's sample should not either. Without this a model has to learn, from the data alone, that
    two kicks of a pendulum at its speed limit land on the same clipped state. Infinite bounds (most MuJoCo
    dimensions) leave a dimension untouched, and a space without finite bounds is not touched at all, so such
    models give bit for bit what they gave before.
    """

    def __init__(self, space: gym.spaces.Box) -> None:
        self.low = np.asarray(space.low, dtype=np.float32).reshape(-1)
        self.high = np.asarray(space.high, dtype=np.float32).reshape(-1)
        self.bounded = bool(np.isfinite(self.low).any() or np.isfinite(self.high).any())
        self._tensors: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def bounds(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(low O, high O) float32 tensors on ``device`` (made once per device)."""
        if device not in self._tensors:
            self._tensors[device] = (
                torch.as_tensor(self.low, device=device),
                torch.as_tensor(self.high, device=device),
            )
        return self._tensors[device]

    def __call__(self, next_obs: torch.Tensor) -> torch.Tensor:
        """B x O next observations clamped into the bounds (the same tensor when the space is unbounded)."""
        if not self.bounded:
            return next_obs
        low, high = self.bounds(next_obs.device)
        return torch.clamp(next_obs, low, high)


def realism_from_scores(reference: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Scores (B, higher = more real) -> realism in [0, 1]: the fraction of the sorted ``reference`` (the scores of
    real validation transitions) below each one."""
    if reference.numel() == 0:
        raise SimganError("realism: this model has no calibration scores (train it with validation data)")
    index = torch.searchsorted(reference, scores.to(reference.dtype).contiguous(), right=False)
    return index.to(torch.float32) / reference.numel()


class CalibratedRealism:
    """``realism`` and ``calibrate_realism`` for a model that scores transitions (``realism_score``, B floats,
    higher = more real: the GAN's discriminator, the ensemble's log-density) and keeps the sorted scores of real
    validation transitions in a ``realism_reference`` buffer."""

    realism_reference: torch.Tensor

    def realism_score(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def realism(
        self, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor
    ) -> torch.Tensor:
        """Calibrated realism, B floats in [0, 1]: the fraction of real validation transitions scoring lower."""
        return realism_from_scores(self.realism_reference, self.realism_score(obs, action, next_obs, reward))

    @torch.no_grad()
    def calibrate_realism(self, batch: TransitionBatch, chunk: int = 8192) -> None:
        """Store the sorted scores of real (validation) transitions as the realism reference."""
        scores = [
            self.realism_score(
                torch.as_tensor(batch.obs[i : i + chunk]),
                torch.as_tensor(batch.action[i : i + chunk]),
                torch.as_tensor(batch.next_obs[i : i + chunk]),
                torch.as_tensor(batch.reward[i : i + chunk]),
            )
            for i in range(0, len(batch), chunk)
        ]
        self.realism_reference = torch.sort(torch.cat(scores)).values


def encode_action(action: torch.Tensor, action_space: gym.Space) -> torch.Tensor:
    """Model input for actions: B x act_dim floats (Box) or B x n one-hot (Discrete, from B integer actions)."""
    if isinstance(action_space, gym.spaces.Discrete):
        index = action.reshape(-1).long() - int(action_space.start)
        return torch.nn.functional.one_hot(index, int(action_space.n)).to(torch.float32)
    return action.reshape(action.shape[0], -1).to(torch.float32)


def transition_tensors(
    obs: torch.Tensor,
    next_obs: torch.Tensor,
    reward: torch.Tensor,
    device: torch.device,
    error: type[Exception] = ValueError,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(obs, next_obs, reward) as float32 tensors on ``device``, checked to describe the same B transitions.

    Raises ``error`` ("expected ..., got ...") when next_obs is not shaped like obs or reward has not B values.
    """
    obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
    next_obs = torch.as_tensor(next_obs, dtype=torch.float32, device=device)
    if next_obs.shape != obs.shape:
        raise error(f"next_obs: expected shape {tuple(obs.shape)}, got {tuple(next_obs.shape)}")
    reward = torch.as_tensor(reward, dtype=torch.float32, device=device).reshape(-1)
    if reward.shape[0] != obs.shape[0]:
        raise error(f"reward: expected {obs.shape[0]} values, got shape {tuple(reward.shape)}")
    return obs, next_obs, reward


def repeat_counts(
    repeats: torch.Tensor, rows: int, device: torch.device, error: type[Exception] = ValueError
) -> torch.Tensor:
    """``repeats`` of :func:`sample_repeated` as an int64 tensor on ``device``: one count >= 0 per row of the ``rows``
    (state, action) rows. Raises ``error`` ("expected ..., got ...") otherwise."""
    counts = torch.as_tensor(repeats, device=device)
    if counts.dim() != 1 or counts.shape[0] != rows or counts.is_floating_point() or bool((counts < 0).any()):
        raise error(
            f"repeats: expected {rows} non-negative integer counts (one per row of obs), got "
            f"{counts.dtype} of shape {tuple(counts.shape)}"
        )
    return counts.long()
