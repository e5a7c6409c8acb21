"""Forecasting: from given states, roll N sampled futures per state through a learned model.

    forecast = simgan.forecast(model, states, policy=agent, horizon=50, num_samples=1000, seed=0)
    forecast.quantiles()                 # Q x B x H x obs_dim, over the branches still alive at each step
    forecast.termination_probability()   # B x H: P(terminated by step t)
    forecast.returns                     # B x N

All B x N branches advance together in one batched model step (in chunks bounded by ``max_memory``), on the
model's device. A branch that terminates stops: later steps repeat its final state, add no reward, and are left
out of every per-step statistic (``alive`` marks the live steps).

Fan charts and printable summaries (``fan_chart``, ``summary_table``, ``dumps_summary``) are in
:mod:`simgan.forecast_report`, which imports this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch

from simgan.forecast_inputs import (
    ForecastError,
    check_correlation,
    check_plan,
    check_policy_output,
    check_positive_int,
    check_spread,
    check_states,
    chunk_rows,
)
from simgan.fsutil import atomic_write_bytes, atomic_write_json
from simgan.world_model import WorldModel, sample_kwargs, sample_repeated

DEFAULT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
DEFAULT_MAX_MEMORY = 512 * 2**20  # bytes of forecast output (and model work) held at once

PolicyFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Forecast:
    """N sampled futures from each of B start states over H steps.

    Attributes:
        start_states: B x obs_dim.
        observations: B x N x H x obs_dim, the state after each step (frozen after termination).
        actions: B x N x H x act_dim (Box) or B x N x H (Discrete).
        rewards: B x N x H (0 after termination).
        terminated: B x N x H, True at the step where a branch terminated.
        alive: B x N x H, True where the branch was live when the step was taken.
        realism: B x N x H, the model's calibrated realism score of each step (NaN where not alive or not
            computed).
        noise_correlation: the rho the model noise was carried over steps with (0: independent steps; see
            :func:`forecast`); 0 when noise was fixed by the caller, and for files saved before it was recorded.
        noise_spread: the factor the model's sampled deviation from its mean was scaled by (1: the model's one-step
            spread, and for files saved before it was recorded).
    """

    start_states: np.ndarray
    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    alive: np.ndarray
    realism: np.ndarray
    noise_correlation: float = 0.0
    noise_spread: float = 1.0

    ARRAYS: ClassVar[tuple[str, ...]] = (
        "start_states",
        "observations",
        "actions",
        "rewards",
        "terminated",
        "alive",
        "realism",
    )

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, N, H)."""
        return self.rewards.shape  # type: ignore[return-value]

    @property
    def returns(self) -> np.ndarray:
        """B x N undiscounted returns of each branch."""
        return self.rewards.sum(axis=2)

    def live_counts(self) -> np.ndarray:
        """B x H: how many branches were live at each step."""
        return self.alive.sum(axis=1)

    def termination_probability(self) -> np.ndarray:
        """B x H: share of branches that have terminated by (and including) step t."""
        return np.cumsum(self.terminated, axis=2).clip(max=1).mean(axis=1)

    def quantiles(self, q: tuple[float, ...] = DEFAULT_QUANTILES) -> np.ndarray:
        """Q x B x H x obs_dim per-step quantiles over live branches (NaN where no branch is live)."""
        masked = np.where(self.alive[..., None], self.observations, np.nan)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices once every branch ended
                return np.nanquantile(masked, q, axis=1)

    def realism_flags(self, threshold: float) -> np.ndarray:
        """B x N: True for branches with any live step judged less realistic than ``threshold``."""
        return np.nan_to_num(self.realism, nan=1.0).__lt__(threshold).any(axis=2)

    def summary(self) -> dict[str, Any]:
        """JSON-able summary: return distribution, termination and live counts per start state."""
        returns = self.returns
        q = np.quantile(returns, DEFAULT_QUANTILES, axis=1)
        per_state = []
        for b in range(self.shape[0]):
            per_state.append(
                {
                    "start_state": self.start_states[b].tolist(),
                    "return_mean": float(returns[b].mean()),
                    "return_std": float(returns[b].std()),
                    "return_quantiles": {str(p): float(v) for p, v in zip(DEFAULT_QUANTILES, q[:, b])},
                    "termination_probability_final": float(self.termination_probability()[b, -1]),
                    "live_final": int(self.live_counts()[b, -1]),
                    "realism_mean": float(np.nanmean(self.realism[b]))
                    if np.isfinite(self.realism[b]).any()
                    else None,
                }
            )
        batch, samples, horizon = self.shape
        return {
            "num_states": batch,
            "num_samples": samples,
            "horizon": horizon,
            "noise_correlation": self.noise_correlation,
            "noise_spread": self.noise_spread,
            "states": per_state,
        }

    def save(self, directory: str | Path) -> None:
        """Write ``forecast.npz`` (all arrays, no pickle) and ``forecast.json`` (summary) atomically."""
        import io

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        arrays = {k: getattr(self, k) for k in self.ARRAYS}
        np.savez(
            buffer,
            **arrays,
            noise_correlation=np.float64(self.noise_correlation),
            noise_spread=np.float64(self.noise_spread),
        )
        atomic_write_bytes(directory / "forecast.npz", buffer.getvalue())
        atomic_write_json(directory / "forecast.json", self.summary())

    @classmethod
    def concatenate(cls, parts: list[Forecast]) -> Forecast:
        """Join forecasts of the same start states and horizon along the sample axis (N: the parts' N summed,
        in order), e.g. the shards of :func:`simgan.shards.sharded_forecast`."""
        if not parts:
            raise ForecastError("concatenate: expected at least one forecast, got none")
        first = parts[0]
        for part in parts[1:]:
            if part.shape[::2] != first.shape[::2]:
                raise ForecastError(
                    f"concatenate: expected forecasts of the same (B, H), got {part.shape[::2]} and "
                    f"{first.shape[::2]}"
                )
            if not np.array_equal(part.start_states, first.start_states):
                raise ForecastError(
                    "concatenate: expected forecasts of the same start states, got different ones"
                )
            for name in ("noise_correlation", "noise_spread"):
                if getattr(part, name) != getattr(first, name):
                    raise ForecastError(
                        f"concatenate: expected forecasts of the same {name.replace('_', ' ')}, got "
                        f"{getattr(part, name)} and {getattr(first, name)}"
                    )
        arrays = {
            name: np.concatenate([getattr(part, name) for part in parts], axis=1)
            for name in cls.ARRAYS
            if name != "start_states"
        }
        return cls(
            start_states=first.start_states,
            noise_correlation=first.noise_correlation,
            noise_spread=first.noise_spread,
            **arrays,
        )

    @classmethod
    def load(cls, directory: str | Path) -> Forecast:
        with np.load(Path(directory) / "forecast.npz", allow_pickle=False) as npz:
            rho = float(npz["noise_correlation"]) if "noise_correlation" in npz.files else 0.0
            spread = float(npz["noise_spread"]) if "noise_spread" in npz.files else 1.0
            return cls(**{k: npz[k] for k in cls.ARRAYS}, noise_correlation=rho, noise_spread=spread)


def forecast(
    model: WorldModel,
    states: np.ndarray,
    *,
    policy: PolicyFn | None = None,
    actions: np.ndarray | None = None,
    horizon: int,
    num_samples: int,
    seed: int = 0,
    noise: np.ndarray | None = None,
    noise_correlation: float | None = None,
    noise_spread: float | None = None,
    compute_realism: bool = True,
    max_memory: int = DEFAULT_MAX_MEMORY,
    progress: bool = False,
) -> Forecast:
    """Sample ``num_samples`` futures of ``horizon`` steps from each start state.

    Args:
        model: a WorldModel (``simgan.load_model(RUN)``).
        states: obs_dim or B x obs_dim start states.
        policy: callable ``obs_batch (M x obs_dim) -> action_batch`` (e.g. a saved agent); closed loop.
        actions: an open-loop plan, H x act_dim (shared by all states) or B x H x act_dim (H or B x H for
            Discrete actions). With neither ``policy`` nor ``actions``, actions are uniform random (seeded).
        horizon: H > 0 steps.
        num_samples: N > 0 branches per state.
        seed: seeds the model noise and the random policy; same seed (and ``max_memory``) -> same forecast.
        noise: optional fixed model noise, broadcastable to B x N x H x noise_dim.
        noise_correlation: rho in [0, 1], the AR(1) correlation of each branch's model noise from step to step
            (``z_t = rho z_{t-1} + sqrt(1 - rho^2) eps_t``: every step's noise stays standard normal). 0: independent
            steps; 1: one draw per branch (PETS's TS-infinity). Default: the model's ``noise_correlation``,
            calibrated on held-out episodes when it was trained (see :mod:`simgan.forecast_calibration`), else 0.
        noise_spread: a factor (> 0) on each step's sampled deviation from the model's mean: the GAN's residual,
            the ensemble's standard deviation. Default: the model's ``noise_spread``, calibrated with the
            correlation (1 when the model has none, or when ``noise`` is given: the model's one-step spread).
        compute_realism: score every step's realism (``model.sample_with_realism``: the GAN's critic on top of
            the sampling pass).
        max_memory: bound in bytes on the working set; larger requests are processed in chunks of branches.
        progress: show a progress bar over chunks.

    Returns:
        A :class:`Forecast`.
    """
    space = model.info.action_space
    obs_dim = model.info.obs_dim
    start = check_states(states, obs_dim)
    batch = len(start)
    horizon = check_positive_int(horizon, "horizon")
    num_samples = check_positive_int(num_samples, "num_samples")
    if policy is not None and actions is not None:
        raise ForecastError("give either a policy (closed loop) or an actions plan (open loop), not both")
    plan = None if actions is None else check_plan(actions, batch, horizon, space)
    if noise is not None and noise_correlation not in (None, 0.0):
        raise ForecastError(
            f"noise / noise_correlation: a fixed noise array fixes every step; got noise_correlation="
            f"{noise_correlation!r} as well"
        )
    rho = check_correlation(
        getattr(model, "noise_correlation", 0.0) if noise_correlation is None else noise_correlation
    )
    if noise_spread is None:
        noise_spread = 1.0 if noise is not None else getattr(model, "noise_spread", 1.0)
    spread = check_spread(noise_spread, model)
    fixed_noise = None
    if noise is not None:
        try:
            fixed_noise = np.broadcast_to(
                np.asarray(noise, np.float32), (batch, num_samples, horizon, model.noise_dim)
            )
        except ValueError as exc:
            raise ForecastError(
                f"noise: expected an array broadcastable to {(batch, num_samples, horizon, model.noise_dim)}, "
                f"got shape {np.shape(noise)}"
            ) from exc

    act_shape = () if isinstance(space, gym.spaces.Discrete) else tuple(space.shape)
    out = _allocate(batch, num_samples, horizon, obs_dim, act_shape, space)
    rows_per_chunk = chunk_rows(max_memory, horizon, obs_dim, act_shape, model.noise_dim)
    total_rows = batch * num_samples
    device = model.device
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    chunks = range(0, total_rows, rows_per_chunk)
    if progress:
        from tqdm.auto import tqdm

        chunks = tqdm(chunks, desc="forecast", unit="chunk")

    # Row r of a chunk is branch (r // N, r % N): contiguous rows are a slice of the B*N branches, so every
    # step writes its results into flat views of the outputs with one slice assignment per array.
    flat = {k: v.reshape(total_rows, horizon, *v.shape[3:]) for k, v in out.items()}
    for lo in chunks:
        hi = min(lo + rows_per_chunk, total_rows)
        rows = np.arange(lo, hi)
        b_idx, n_idx = rows // num_samples, rows % num_samples  # branch (b, n) of each row
        obs = torch.as_tensor(start[b_idx], device=device)  # M x obs_dim
        groups, counts = np.unique(b_idx, return_counts=True)  # the chunk's start states and their row counts
        repeats = torch.as_tensor(counts, device=device)
        live = torch.ones(len(rows), dtype=torch.bool, device=device)
        z = None  # the rows' AR(1) noise (rho > 0)
        for t in range(horizon):
            # ---- actions for this step: plan, policy, or uniform random ---------------------------------------
            if plan is not None:
                action_np = plan[b_idx, t]
            elif policy is not None:
                action_np = check_policy_output(policy(obs.cpu().numpy()), len(rows), space)
            else:
                action_np = _random_actions(space, len(rows), rng)
            action = torch.as_tensor(action_np, device=device)
            if fixed_noise is not None:
                step_noise = torch.as_tensor(fixed_noise[b_idx, n_idx, t], device=device)
            elif rho > 0.0:
                eps = torch.randn(len(rows), model.noise_dim, generator=generator, device=device)
                z = eps if z is None else rho * z + math.sqrt(1.0 - rho * rho) * eps
                step_noise = z
            else:
                step_noise = None  # the model draws it from the same generator
            # ---- one batched model step for all M rows --------------------------------------------------------
            # At t = 0 under a plan, each start state's N rows share their (state, action): the model's
            # deterministic part runs once per start state (sample_repeated).
            first = t == 0 and plan is not None
            with torch.inference_mode():
                next_obs, reward, terminated, score = _model_step(
                    model,
                    torch.as_tensor(start[groups], device=device) if first else obs,
                    torch.as_tensor(plan[groups, 0], device=device) if first else action,
                    repeats if first else None,
                    step_noise,
                    generator,
                    compute_realism,
                    spread,
                )
            next_obs = torch.where(live[:, None], next_obs, obs)  # ended branches keep their final state
            flat["alive"][lo:hi, t] = live.cpu().numpy()
            flat["observations"][lo:hi, t] = next_obs.cpu().numpy()
            flat["actions"][lo:hi, t] = action_np
            flat["rewards"][lo:hi, t] = torch.where(live, reward, 0.0).cpu().numpy()
            flat["terminated"][lo:hi, t] = (live & terminated).cpu().numpy()
            if score is not None:
                flat["realism"][lo:hi, t] = torch.where(live, score, torch.nan).cpu().numpy()
            live = live & ~terminated
            obs = next_obs
    used = 0.0 if fixed_noise is not None else rho  # fixed noise: the caller chose every step's draw
    return Forecast(start_states=start, **out, noise_correlation=used, noise_spread=spread)


# -----------------------------------------------------------------------------------------------------------------
# Helpers (the input checks are in simgan.forecast_inputs)
# -----------------------------------------------------------------------------------------------------------------


def _model_step(
    model: WorldModel,
    obs: torch.Tensor,
    action: torch.Tensor,
    repeats: torch.Tensor | None,
    noise: torch.Tensor | None,
    generator: torch.Generator,
    realism: bool,
    spread: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(next_obs, reward, terminated, realism or None) of one step; with ``repeats``, ``obs``/``action`` row g
    stands for ``repeats[g]`` rows (:func:`simgan.world_model.sample_repeated`). ``spread`` other than 1 reaches
    only models that take it (:func:`simgan.forecast_inputs.check_spread`)."""
    kwargs = sample_kwargs(noise, generator, spread)
    if repeats is not None:
        out = sample_repeated(model, obs, action, repeats, realism=realism, **kwargs)
    elif realism:
        out = model.sample_with_realism(obs, action, **kwargs)
    else:
        out = model.sample(obs, action, **kwargs)
    return (*out, None) if len(out) == 3 else out


def _random_actions(space: gym.Space, rows: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.start, space.start + space.n, size=rows, dtype=np.int64)
    return rng.uniform(space.low, space.high, size=(rows, *space.shape)).astype(np.float32)


def _allocate(
    batch: int, samples: int, horizon: int, obs_dim: int, act_shape: tuple, space: gym.Space
) -> dict:
    act_dtype = np.int64 if isinstance(space, gym.spaces.Discrete) else np.float32
    return {
        "observations": np.zeros((batch, samples, horizon, obs_dim), np.float32),
        "actions": np.zeros((batch, samples, horizon, *act_shape), act_dtype),
        "rewards": np.zeros((batch, samples, horizon), np.float32),
        "terminated": np.zeros((batch, samples, horizon), bool),
        "alive": np.zeros((batch, samples, horizon), bool),
        "realism": np.full((batch, samples, horizon), np.nan, np.float32),
    }
