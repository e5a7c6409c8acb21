"""Fidelity metrics: how close a world model's transitions are to the real ones.

Sample-based distances (pure functions on torch tensors, N x D and M x D):

* :func:`mmd2_rbf` -- unbiased MMD^2 with an RBF kernel whose bandwidth is the median pairwise distance;
* :func:`sliced_wasserstein` -- sliced Wasserstein-1 over seeded random unit projections;
* :func:`energy_distance` -- squared energy distance ``2 E|X-Y| - E|X-X'| - E|Y-Y'|`` (V-statistic, >= 0);
* :func:`wasserstein_1d` -- exact W1 between two 1-D empirical distributions (column by column).

Prediction and classification errors: :func:`mean_squared_error`, :func:`termination_scores` (accuracy, F1).

Model-level evaluation (needs a :class:`simgan.world_model.WorldModel`):

* :func:`one_step_metrics` -- on held-out transitions: one model sample per real (s, a), distances between
  the generated and real *transitions*, mean-prediction error, reward error, termination accuracy / F1;
* :func:`rollout_errors` -- k-step open-loop rollouts along held-out episodes, fed the real actions;
* :func:`conditional_metrics` -- for envs whose state can be set (``sample_next_states``): many model samples
  at one (s, a) against many real samples at the same (s, a);
* :func:`evaluate_model` -- all of the above on a dataset's validation episodes, as one flat dict.

The one-step distances compare joint vectors ``[obs, action, next_obs - obs, reward]``, every column
standardised with the real validation data's mean and std. The (s, a) part is shared by both sets, so any
difference comes from the predicted transition, and matching the joint means matching p(s', r | s, a) on the
data's (s, a) distribution (comparing next states alone would only compare marginals).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from simgan.world_model import CONSTANT_COLUMN_STD, WorldModel, encode_action

HORIZONS = (1, 5, 10, 25)


# ---------------------------------------------------------------------------------------------------------------
# Distances between samples
# ---------------------------------------------------------------------------------------------------------------


def _as_2d(x: torch.Tensor | np.ndarray, name: str) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float64)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2 or len(t) < 2:
        raise ValueError(f"{name}: expected an N x D array with N >= 2, got shape {tuple(t.shape)}")
    return t


def _check_pair(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    xt, yt = _as_2d(x, "x"), _as_2d(y, "y")
    if xt.shape[1] != yt.shape[1]:
        raise ValueError(f"x and y: expected the same number of columns, got {xt.shape[1]} and {yt.shape[1]}")
    return xt, yt.to(xt.device)


def median_bandwidth(x: torch.Tensor, y: torch.Tensor) -> float:
    """Median pairwise Euclidean distance of the pooled samples (off-diagonal), the RBF bandwidth heuristic."""
    pooled = torch.cat([x, y])
    dist = torch.cdist(pooled, pooled)
    off_diagonal = dist[~torch.eye(len(pooled), dtype=torch.bool, device=dist.device)]
    median = float(off_diagonal.median())
    return median if median > 0 else 1.0


def mmd2_rbf(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, bandwidth: float | None = None
) -> float:
    """Unbiased MMD^2 between samples x (N x D) and y (M x D), kernel ``exp(-|a - b|^2 / (2 bandwidth^2))``.

    Args:
        x: N x D samples (N >= 2).
        y: M x D samples (M >= 2).
        bandwidth: the RBF length scale; default: the median pairwise distance of the pooled samples.

    Returns:
        The unbiased estimate (can be slightly negative when the distributions are equal).
    """
    x, y = _check_pair(x, y)
    sigma = median_bandwidth(x, y) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise ValueError(f"bandwidth: expected a positive number, got {bandwidth}")
    gamma = 1.0 / (2.0 * sigma**2)
    k_xx = torch.exp(-gamma * torch.cdist(x, x) ** 2)
    k_yy = torch.exp(-gamma * torch.cdist(y, y) ** 2)
    k_xy = torch.exp(-gamma * torch.cdist(x, y) ** 2)
    n, m = len(x), len(y)
    term_xx = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
    term_yy = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return float(term_xx + term_yy - 2.0 * k_xy.mean())


def wasserstein_1d(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Exact Wasserstein-1 between 1-D empirical distributions, column by column.

    Args:
        x: N x D (or N) samples; y: M x D (or M) samples.

    Returns:
        D distances: ``integral |F_x(t) - F_y(t)| dt`` for each column.
    """
    x, y = _check_pair(x, y)
    xs = torch.sort(x.T.contiguous(), dim=1).values  # D x N
    ys = torch.sort(y.T.contiguous(), dim=1).values  # D x M
    grid = torch.sort(torch.cat([xs, ys], dim=1), dim=1).values  # D x (N + M)
    cdf_x = torch.searchsorted(xs, grid[:, :-1].contiguous(), right=True).to(x.dtype) / xs.shape[1]
    cdf_y = torch.searchsorted(ys, grid[:, :-1].contiguous(), right=True).to(y.dtype) / ys.shape[1]
    return torch.sum(torch.abs(cdf_x - cdf_y) * torch.diff(grid, dim=1), dim=1)


def sliced_wasserstein(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, n_projections: int = 128, seed: int = 0
) -> float:
    """Sliced Wasserstein-1: the mean W1 of the samples projected onto random unit directions.

    The directions are drawn from a ``torch.Generator`` seeded with ``seed``, so equal inputs give equal numbers.
    """
    x, y = _check_pair(x, y)
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64)
    directions = directions / directions.norm(dim=0, keepdim=True)
    return float(wasserstein_1d(x @ directions.to(x.device), y @ directions.to(y.device)).mean())


def energy_distance(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic: >= 0, 0 iff equal samples)."""
    x, y = _check_pair(x, y)
    return float(2.0 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def distribution_distances(
    generated: torch.Tensor | np.ndarray, real: torch.Tensor | np.ndarray, *, seed: int = 0
) -> dict[str, float]:
    """MMD^2, sliced W1 and energy distance between two sample sets (N x D and M x D)."""
    return {
        "mmd2": mmd2_rbf(generated, real),
        "sliced_w1": sliced_wasserstein(generated, real, seed=seed),
        "energy": energy_distance(generated, real),
    }


# ---------------------------------------------------------------------------------------------------------------
# Prediction and classification errors
# ---------------------------------------------------------------------------------------------------------------


def mean_squared_error(prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> float:
    """Mean over rows and columns of the squared difference."""
    p = torch.as_tensor(prediction, dtype=torch.float64)
    t = torch.as_tensor(target, dtype=torch.float64)
    if p.shape != t.shape:
        raise ValueError(
            f"prediction and target: expected equal shapes, got {tuple(p.shape)} and {tuple(t.shape)}"
        )
    return float(torch.mean((p - t) ** 2))


def termination_scores(
    predicted: torch.Tensor | np.ndarray, actual: torch.Tensor | np.ndarray
) -> dict[str, float]:
    """Accuracy and F1 of predicted termination flags (positive class: terminated).

    F1 is 1.0 when neither side has a single termination (perfect agreement on "never terminates").
    """
    p = torch.as_tensor(predicted).reshape(-1).bool()
    a = torch.as_tensor(actual).reshape(-1).bool()
    if p.shape != a.shape:
        raise ValueError(f"predicted and actual: expected equal lengths, got {len(p)} and {len(a)}")
    tp = int((p & a).sum())
    fp = int((p & ~a).sum())
    fn = int((~p & a).sum())
    f1 = 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return {"accuracy": float((p == a).float().mean()), "f1": f1}


# ---------------------------------------------------------------------------------------------------------------
# Model-level metrics
# ---------------------------------------------------------------------------------------------------------------


def predict_mean(
    model: WorldModel,
    obs: torch.Tensor,
    action: torch.Tensor,
    *,
    n_samples: int = 16,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's conditional mean (next_obs B x obs_dim, reward B): ``model.mean`` if it has one (the ensemble),
    else the average of ``n_samples`` samples."""
    if hasattr(model, "mean"):
        next_obs, reward, _ = model.mean(obs, action)
        return next_obs, reward
    total_obs, total_reward = torch.zeros_like(obs), torch.zeros(len(obs), device=obs.device)
    for _ in range(n_samples):
        next_obs, reward, _ = model.sample(obs, action, generator=generator)
        total_obs += next_obs
        total_reward += reward
    return total_obs / n_samples, total_reward / n_samples


def _transition_features(
    model_info: Any, obs: torch.Tensor, action: torch.Tensor, next_obs: torch.Tensor, reward: torch.Tensor
) -> torch.Tensor:
    """B x (2 obs_dim + act_dim + 1): ``[obs, action, next_obs - obs, reward]``."""
    act = encode_action(action, model_info.action_space)
    return torch.cat([obs, act, next_obs - obs, reward[:, None]], dim=1).to(torch.float64)


def _subsample(n: int, limit: int, seed: int) -> np.ndarray:
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


@torch.no_grad()
def one_step_metrics(
    model: WorldModel, batch: Any, *, max_samples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """One-step metrics on real transitions (a :class:`simgan.data.TransitionBatch`, typically validation).

    Returns a flat dict: ``mmd2``, ``sliced_w1``, ``energy`` (standardised joint transitions, see the module
    docstring), ``w1/dim{i}`` (next-state change per dimension, raw units), ``mean_error`` (MSE of the model's
    conditional mean next state), ``reward_error`` (MSE of its mean reward), ``sample_error`` (MSE of one
    sample), ``termination_accuracy`` / ``termination_f1`` (one sample), and ``copy_error``, the MSE of the
    trivial "next = current" predictor, as a scale.
    """
    device = model.device
    rows = _subsample(len(batch), max_samples, seed)
    obs = torch.as_tensor(batch.obs[rows], device=device)
    action = torch.as_tensor(batch.action[rows], device=device)
    real_next = torch.as_tensor(batch.next_obs[rows], device=device)
    real_reward = torch.as_tensor(batch.reward[rows], device=device, dtype=torch.float32)
    real_done = torch.as_tensor(batch.terminated[rows], device=device)
    generator = torch.Generator(device=device).manual_seed(seed)

    next_obs, reward, terminated = model.sample(obs, action, generator=generator)
    mean_next, mean_reward = predict_mean(model, obs, action, generator=generator)

    real = _transition_features(model.info, obs, action, real_next, real_reward)
    fake = _transition_features(model.info, obs, action, next_obs, reward)
    centre, std = real.mean(dim=0), real.std(dim=0)
    # A constant column (CartPole's reward of 1) stays in raw units: dividing by its ~0 std would turn float
    # noise of 1e-4 in a generated reward into hundreds of standard deviations.
    scale = torch.where(std < CONSTANT_COLUMN_STD, torch.ones_like(std), std)
    out = distribution_distances((fake - centre) / scale, (real - centre) / scale, seed=seed)
    w1 = wasserstein_1d(next_obs - obs, real_next - obs)
    out.update({f"w1/dim{i}": float(v) for i, v in enumerate(w1)})
    scores = termination_scores(terminated, real_done)
    out.update(
        {
            "mean_error": mean_squared_error(mean_next, real_next),
            "reward_error": mean_squared_error(mean_reward, real_reward),
            "sample_error": mean_squared_error(next_obs, real_next),
            "copy_error": mean_squared_error(obs, real_next),
            "termination_accuracy": scores["accuracy"],
            "termination_f1": scores["f1"],
        }
    )
    return out


def episode_windows(batch: Any, k: int, max_windows: int, seed: int) -> np.ndarray:
    """Row indices W x k of contiguous k-step stretches lying inside one episode."""
    episode = batch.episode
    # start row i is valid when rows i .. i+k-1 belong to one episode (rows are sorted by episode, then step)
    same = np.ones(len(episode), dtype=bool)
    if k > 1:
        if len(episode) < k:
            return np.zeros((0, k), dtype=np.int64)
        same = np.zeros(len(episode), dtype=bool)
        same[: len(episode) - k + 1] = episode[k - 1 :] == episode[: len(episode) - k + 1]
        # contiguous steps (a sorted episode could still lack rows if a dataset was filtered)
        same[: len(episode) - k + 1] &= batch.step[k - 1 :] - batch.step[: len(episode) - k + 1] == k - 1
    starts = np.flatnonzero(same)
    starts = starts[_subsample(len(starts), max_windows, seed)]
    return starts[:, None] + np.arange(k)[None, :]


@torch.no_grad()
def rollout_errors(
    model: WorldModel,
    batch: Any,
    *,
    horizons: Sequence[int] = HORIZONS,
    max_windows: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Open-loop k-step rollout error along real episodes.

    From real states s_t, the model is stepped k times with the real actions a_t .. a_{t+k-1} (one sampled
    trajectory per start; the model's own termination flags are ignored), and its k-th state is compared to
    the real s_{t+k}. Windows lie inside one episode (``batch`` must be sorted by episode and step).

    Returns:
        ``rollout_mse/k{k}``: MSE over windows and state dimensions, and ``rollout_windows/k{k}``: the count.
    """
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    out: dict[str, float] = {}
    for k in horizons:
        windows = episode_windows(batch, k, max_windows, seed)
        out[f"rollout_windows/k{k}"] = float(len(windows))
        if len(windows) == 0:
            out[f"rollout_mse/k{k}"] = float("nan")
            continue
        state = torch.as_tensor(batch.obs[windows[:, 0]], device=device)
        for j in range(k):
            action = torch.as_tensor(batch.action[windows[:, j]], device=device)
            state, _, _ = model.sample(state, action, generator=generator)
        target = torch.as_tensor(batch.next_obs[windows[:, -1]], device=device)
        out[f"rollout_mse/k{k}"] = mean_squared_error(state, target)
    return out


@torch.no_grad()
def conditional_metrics(
    model: WorldModel,
    env: Any,
    obs: np.ndarray,
    action: np.ndarray,
    *,
    n_samples: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Many model samples at one (s, a) against many true samples at the same (s, a), averaged over points.

    Args:
        model: the world model.
        env: an env (unwrapped) with ``sample_next_states(obs, action, n, rng) -> n x obs_dim``.
        obs: P x obs_dim conditioning states.
        action: P x act_dim (or P) actions.
        n_samples: samples per point from each side.

    Returns:
        ``cond_mmd2``, ``cond_sliced_w1``, ``cond_energy`` (raw next-state units) averaged over the P points.
    """
    if not hasattr(env, "sample_next_states"):
        raise TypeError(
            f"env: expected an env with sample_next_states(obs, action, n, rng), got {type(env).__name__}"
        )
    device = model.device
    rng = np.random.default_rng(seed)
    generator = torch.Generator(device=device).manual_seed(seed)
    totals: dict[str, float] = {}
    for i in range(len(obs)):
        real = env.sample_next_states(obs[i], action[i], n_samples, rng)
        obs_rows = torch.as_tensor(
            np.repeat(obs[i][None], n_samples, axis=0), device=device, dtype=torch.float32
        )
        act_rows = torch.as_tensor(np.repeat(np.asarray(action)[i : i + 1], n_samples, axis=0), device=device)
        fake, _, _ = model.sample(obs_rows, act_rows, generator=generator)
        for name, value in distribution_distances(fake.cpu(), real, seed=seed + i).items():
            totals[f"cond_{name}"] = totals.get(f"cond_{name}", 0.0) + value / len(obs)
    return totals


def evaluate_model(
    model: WorldModel,
    dataset: Any,
    *,
    max_samples: int = 2000,
    horizons: Sequence[int] = HORIZONS,
    max_windows: int = 500,
    conditional_points: int = 128,
    conditional_samples: int = 500,
    seed: int = 0,
) -> dict[str, float]:
    """Every fidelity metric on a dataset's validation episodes (its training split if it has none).

    Conditional metrics are added when the dataset's env (built with :func:`envs.make_env`) can sample next
    states for a given (s, a); their points are a seeded random sample of ``conditional_points`` validation
    transitions. A few points make a noisy average: a point where the true next state is one exact value (a
    kicked pendulum whose kicks both land on its speed limit) scores near the MMD^2's maximum for any spread at
    all, and with 8 points one such point set a whole seed's value. 128 (the default) cost about 7 s per model on
    2 CPU cores for the kicked pendulum.

    Returns:
        A flat dict of floats; keys as in :func:`one_step_metrics`, :func:`rollout_errors` and
        :func:`conditional_metrics`.
    """
    batch = dataset.validation if len(dataset.validation) else dataset.train
    results = one_step_metrics(model, batch, max_samples=max_samples, seed=seed)
    results.update(rollout_errors(model, batch, horizons=horizons, max_windows=max_windows, seed=seed))
    env = _settable_env(dataset.env_id, dataset.env_kwargs)
    if env is not None and conditional_points > 0:
        rows = _subsample(len(batch), conditional_points, seed + 1)
        results.update(
            conditional_metrics(
                model, env, batch.obs[rows], batch.action[rows], n_samples=conditional_samples, seed=seed
            )
        )
    return results


def _settable_env(env_id: str, env_kwargs: dict[str, Any]) -> Any | None:
    """The unwrapped env if it offers ``sample_next_states`` (simgan's multimodal envs), else None."""
    from envs import make_env

    try:
        env = make_env(env_id, env_kwargs).unwrapped
    except Exception:  # an env that cannot be built here (e.g. a missing optional dependency)
        return None
    return env if hasattr(env, "sample_next_states") else None
