"""Policy evaluation: the same code for a real env and a learned one, a single env or a vector env."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from agents.base import autoreset_mode, like_env, to_numpy


@dataclass(frozen=True)
class EvalResult:
    """Undiscounted returns and lengths of complete episodes, and how they ended.

    ``endings`` counts the episodes that ended ``"terminated"`` and ``"truncated"``, and for every boolean flag
    an env set in the info of an episode's last step, the episodes that ended with it: a learned env's
    ``"out_of_support"`` or ``"unrealistic"`` say that episodes were cut short where the model is unchecked, so
    their returns are too. Episodes cut by ``max_steps`` count in neither.
    """

    mean_return: float
    std_return: float
    returns: list[float]
    lengths: list[int]
    endings: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        text = f"mean return {self.mean_return:.2f} ± {self.std_return:.2f} over {len(self.returns)} episodes"
        text += f" (mean length {np.mean(self.lengths):.1f}"
        ends = [k for k in ("terminated", "truncated") if k in self.endings]
        ends += sorted(k for k in self.endings if k not in ("terminated", "truncated"))
        if ends:
            text += "; ended: " + ", ".join(f"{self.endings[k]} {k}" for k in ends)
        return text + ")"


def _policy_fn(policy: Any, deterministic: bool) -> Callable[[np.ndarray], Any]:
    """``obs batch -> action batch`` for a Policy (``act(obs, deterministic)``) or a plain callable."""
    if hasattr(policy, "act"):
        return lambda obs: policy.act(obs, deterministic=deterministic)
    if callable(policy):
        return policy
    raise TypeError(f"expected a Policy or a callable obs -> action, got {type(policy).__name__}")


def _result(returns: list[float], lengths: list[int], endings: Counter) -> EvalResult:
    return EvalResult(
        float(np.mean(returns)), float(np.std(returns)), returns, lengths, dict(sorted(endings.items()))
    )


def combine_results(parts: Sequence[EvalResult]) -> EvalResult:
    """One result from evaluations of disjoint sets of episodes (e.g. shards), their episodes in ``parts`` order."""
    endings: Counter = Counter()
    for part in parts:
        endings.update(part.endings)
    returns = [value for part in parts for value in part.returns]
    lengths = [value for part in parts for value in part.lengths]
    return _result(returns, lengths, endings)


_NOT_FLAGS = ("terminated", "truncated")  # info keys some wrappers copy the step's own outcome into


def _end(terminated: bool, truncated: bool) -> list[str]:
    return ["terminated"] if terminated else ["truncated"] if truncated else []


def _info_flags(info: dict[str, Any]) -> list[str]:
    """The boolean flags set in a single env's step info."""
    return [
        key
        for key, value in info.items()
        if not key.startswith("_") and key not in _NOT_FLAGS and isinstance(value, (bool, np.bool_)) and value
    ]


def _vector_info_flags(info: dict[str, Any]) -> dict[str, np.ndarray]:
    """The boolean flags of a vector env's step info: key -> num_envs bools, False where gymnasium's ``_key``
    mask says a sub-env did not set the key. Other entries (numbers, observations, dicts) are left out."""
    flags = {}
    for key, value in info.items():
        if key.startswith("_") or key in _NOT_FLAGS:
            continue
        value = to_numpy(value)
        if value.ndim != 1 or value.dtype != np.bool_:
            continue
        mask = info.get(f"_{key}")
        flags[key] = value if mask is None else value & to_numpy(mask).astype(bool)
    return flags


def evaluate_policy(
    policy: Any,
    env: gym.Env | VectorEnv,
    episodes: int = 10,
    seed: int = 0,
    deterministic: bool = True,
    max_steps: int | None = None,
) -> EvalResult:
    """Run ``episodes`` complete episodes and report their returns.

    Args:
        policy: a :class:`~agents.base.Policy` or any callable mapping an obs batch (B x obs_dim) to actions.
        env: a ``gymnasium.Env`` (episode i is reset with ``seed + i``) or a ``VectorEnv`` (reset once with
            ``seed``; sub-env i contributes a fixed share of the episodes, so short episodes are not
            over-represented). Torch-mode vector envs are fine: observations are converted for the policy
            and actions are sent back as tensors.
        episodes: how many episodes to average.
        seed: base seed of the resets.
        deterministic: use the policy's mode (passed to ``policy.act``).
        max_steps: safety cap on steps per episode (None: rely on the env's own time limit).

    Returns:
        EvalResult(mean_return, std_return, returns, lengths, endings).
    """
    if episodes < 1:
        raise ValueError(f"episodes: expected >= 1, got {episodes}")
    act = _policy_fn(policy, deterministic)
    if isinstance(env, VectorEnv):
        return _evaluate_vector(act, policy, env, episodes, seed, max_steps)
    returns, lengths, endings = [], [], Counter()
    for episode in range(episodes):
        if hasattr(policy, "reset"):
            policy.reset()  # planners (MPC) drop their warm start between episodes
        obs, _ = env.reset(seed=seed + episode)
        total, steps, done = 0.0, 0, False
        while not done:
            action = to_numpy(act(to_numpy(obs)[None]))[0]
            obs, reward, terminated, truncated, info = env.step(action)
            total += float(reward)
            steps += 1
            ended = bool(terminated or truncated)
            if ended:
                endings.update(_end(bool(terminated), bool(truncated)) + _info_flags(info))
            done = ended or (max_steps is not None and steps >= max_steps)
        returns.append(total)
        lengths.append(steps)
    return _result(returns, lengths, endings)


def _evaluate_vector(
    act: Callable, policy: Any, env: VectorEnv, episodes: int, seed: int, max_steps: int | None
) -> EvalResult:
    mode = autoreset_mode(env)
    n = env.num_envs
    quota = np.array([(episodes + i) // n for i in range(n)])  # sums to `episodes`
    returns, lengths, endings = [], [], Counter()
    running_return, running_length = np.zeros(n), np.zeros(n, dtype=np.int64)
    needs_reset = np.zeros(n, dtype=bool)
    if hasattr(policy, "reset"):
        policy.reset()
    obs, _ = env.reset(seed=seed)
    while len(returns) < episodes:
        actions = act(to_numpy(obs))
        obs_next, reward, terminated, truncated, info = env.step(like_env(actions, obs))
        valid = ~needs_reset if mode == AutoresetMode.NEXT_STEP else np.ones(n, dtype=bool)
        running_return += np.where(valid, to_numpy(reward).astype(np.float64), 0.0)
        running_length += valid
        terminated, truncated = to_numpy(terminated).astype(bool), to_numpy(truncated).astype(bool)
        env_done = terminated | truncated
        done = env_done
        if max_steps is not None:
            done = env_done | (running_length >= max_steps)  # the env keeps running; scoring cuts the episode
        flags = None  # the step's info flags, read once if a counted episode ended in the env
        for i in np.flatnonzero(done & valid):
            if quota[i] > 0:
                quota[i] -= 1
                returns.append(float(running_return[i]))
                lengths.append(int(running_length[i]))
                if env_done[i]:
                    if flags is None:
                        # SAME_STEP: info is the new episode's reset info, the last step's is final_info
                        final = info.get("final_info", info) if mode == AutoresetMode.SAME_STEP else info
                        flags = _vector_info_flags(final)
                    names = [key for key, values in flags.items() if values[i]]
                    endings.update(_end(terminated[i], truncated[i]) + names)
            running_return[i], running_length[i] = 0.0, 0
        needs_reset = env_done if mode == AutoresetMode.NEXT_STEP else np.zeros(n, dtype=bool)
        obs = obs_next
    return _result(returns, lengths, endings)
