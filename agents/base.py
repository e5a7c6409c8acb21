"""What every agent shares: the ``Policy`` protocol, action/observation plumbing, vector-env helpers, loading.

Conventions:
    obs      (obs_dim,) for one observation or B x obs_dim for a batch (numpy or torch)
    action   (act_dim,) / B x act_dim float32 for Box spaces, () / (B,) int64 for Discrete, always inside the
             action space's bounds; a policy returns the batch shape it was given
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from agents.serialization import AgentFiles, check_spaces, load_agent_files, save_agent_files

# algo name -> "module:Class"; the class has ``from_files(files: AgentFiles, device) -> Policy``.
AGENT_CLASSES: dict[str, str] = {
    "sac": "agents.sac:SACAgent",
    "ppo": "agents.ppo:PPOAgent",
    "random": "agents.random:RandomPolicy",
}


@runtime_checkable
class Policy(Protocol):
    """Anything that maps observations to valid actions.

    ``act`` takes one observation (obs_dim,) or a batch B x obs_dim and returns actions of the matching batch
    shape, inside the action space. ``policy(obs_batch)`` is the same as ``policy.act(obs_batch)``, so a policy
    can be handed to anything that accepts a plain ``obs -> action`` callable (collection, forecasting).

    A policy that draws random actions should also be a :class:`SeededPolicy` (``seed`` and ``reseed``): all of
    this package's agents are. That is a protocol of its own, not two more members of this one, so that a policy
    written against ``Policy`` (or one with no randomness to reseed) stays a ``Policy``.
    """

    observation_space: gym.Space
    action_space: gym.Space

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray: ...

    def __call__(self, obs: Any) -> np.ndarray: ...


@runtime_checkable
class SeededPolicy(Policy, Protocol):
    """A :class:`Policy` whose action sampling is one seeded random stream that can be restarted.

    ``seed`` is the seed that stream last started from (the constructor's seed, then the last ``reseed``'s).
    ``reseed(seed)`` restarts the stream from ``seed``: the same seed gives the same stochastic actions again,
    however many the policy drew before, and ``reseed`` with the constructor's seed replays the actions drawn
    since construction. Weights and trained state are unchanged (so is a saved config, except that of
    ``RandomPolicy``, whose whole config is its seed).
    """

    @property
    def seed(self) -> int: ...

    def reseed(self, seed: int) -> None: ...


class BasePolicy:
    """Shared plumbing: spaces, batching, clipping to bounds, ``__call__``.

    Subclasses implement ``_act_batch(obs: B x obs_dim float32 tensor, deterministic) -> B x ... tensor``.
    """

    algo: str = "base"

    def __init__(
        self, observation_space: gym.Space, action_space: gym.Space, device: str | torch.device = "cpu"
    ):
        if not isinstance(action_space, (gym.spaces.Box, gym.spaces.Discrete)):
            raise ValueError(f"expected a Box or Discrete action space, got {action_space}")
        self.observation_space = observation_space
        self.action_space = action_space
        self.device = torch.device(device)

    @property
    def is_discrete(self) -> bool:
        return isinstance(self.action_space, gym.spaces.Discrete)

    def act(self, obs: Any, deterministic: bool = False) -> np.ndarray:
        """Actions for one observation (obs_dim,) or a batch (B x obs_dim), as numpy, inside the action space."""
        obs_t, batched = obs_to_tensor(obs, self.observation_space, self.device)
        with torch.no_grad():
            actions = self._act_batch(obs_t, deterministic)
        actions = finalize_actions(actions.detach().cpu().numpy(), self.action_space)
        return actions if batched else actions[0]

    def __call__(self, obs: Any) -> np.ndarray:
        return self.act(obs, deterministic=False)

    def _act_batch(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        raise NotImplementedError

    def check_spaces(self, observation_space: gym.Space | None, action_space: gym.Space | None) -> None:
        """Raise :class:`SpaceMismatchError` when the given spaces are not the ones this agent was built for."""
        check_spaces(self.observation_space, self.action_space, observation_space, action_space)


class NetworkAgent(BasePolicy):
    """A policy made of networks and a config dataclass (SAC, PPO): seeded action sampling and its save format.

    Subclasses set ``config`` (a dataclass with a ``seed`` field) and ``generator`` (the action-sampling
    generator, seeded from ``config.seed``) in ``__init__``, and implement ``state_tensors``; their
    ``from_files`` rebuild the agent with :meth:`config_from` and :meth:`load_module`.
    """

    config: Any
    generator: torch.Generator

    @property
    def seed(self) -> int:
        """The seed action sampling last started from: ``config.seed``, or the last :meth:`reseed`'s."""
        return self.generator.initial_seed()

    def reseed(self, seed: int) -> None:
        """Restart action sampling from ``seed`` (weights and ``config`` unchanged; see ``SeededPolicy``)."""
        self.generator.manual_seed(int(seed))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the agent needs to act and to resume training, by name (``<module>.<state key>``)."""
        raise NotImplementedError

    def save(self, directory: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
        """Write the agent to ``directory`` (safetensors + agent.json, atomically); reload with ``load_agent``."""
        return save_agent_files(
            directory,
            algo=self.algo,
            config=dataclasses.asdict(self.config),
            observation_space=self.observation_space,
            action_space=self.action_space,
            tensors=self.state_tensors(),
            metadata=metadata,
        )

    @staticmethod
    def config_from(files: AgentFiles, config_class: type) -> Any:
        """``config_class`` from a saved config; keys it no longer has are left out."""
        known = {f.name for f in dataclasses.fields(config_class)}
        return config_class(**{k: v for k, v in files.config.items() if k in known})

    @staticmethod
    def load_module(module: torch.nn.Module, files: AgentFiles, name: str) -> None:
        """Load ``module`` from the saved tensors named ``<name>.<state key>`` (strict: all keys, no others)."""
        prefix = name + "."
        module.load_state_dict(
            {k[len(prefix) :]: v for k, v in files.tensors.items() if k.startswith(prefix)}, strict=True
        )


def obs_to_tensor(obs: Any, observation_space: gym.Space, device: torch.device) -> tuple[torch.Tensor, bool]:
    """Turn one observation or a batch (numpy, list or torch) into a B x obs_dim float32 tensor.

    Returns:
        (B x obs_dim tensor on ``device``, whether the input was a batch)
    """
    obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
    obs_shape = tuple(observation_space.shape or ())
    if tuple(obs_t.shape) == obs_shape:
        return obs_t.reshape(1, -1), False
    if obs_t.ndim == len(obs_shape) + 1 and tuple(obs_t.shape[1:]) == obs_shape:
        return obs_t.reshape(obs_t.shape[0], -1), True
    raise ValueError(
        f"observation: expected shape {obs_shape} or (B, *{obs_shape}), got {tuple(obs_t.shape)}"
    )


def finalize_actions(actions: np.ndarray, action_space: gym.Space) -> np.ndarray:
    """Make a batch of raw actions valid: clip Box actions to the bounds, cast Discrete ones to int64."""
    if isinstance(action_space, gym.spaces.Discrete):
        actions = np.asarray(actions).reshape(-1).astype(np.int64)
        return np.clip(actions, action_space.start, action_space.start + action_space.n - 1)
    actions = np.asarray(actions, dtype=np.float64).reshape(-1, *action_space.shape)
    return np.clip(actions, action_space.low, action_space.high).astype(action_space.dtype)


# ---------------------------------------------------------------------------------------------------------------
# vector envs: autoreset modes, torch-mode envs, episode statistics


def as_vector_env(env: gym.Env | VectorEnv) -> VectorEnv:
    """A VectorEnv as is; a single ``gymnasium.Env`` wrapped as a 1-env ``SyncVectorEnv`` (next-step autoreset)."""
    if isinstance(env, VectorEnv):
        return env
    if isinstance(env, gym.Env):
        return gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=AutoresetMode.NEXT_STEP)
    raise TypeError(f"expected a gymnasium.Env or gymnasium.vector.VectorEnv, got {type(env).__name__}")


def autoreset_mode(env: VectorEnv) -> AutoresetMode:
    """The env's autoreset mode (``metadata["autoreset_mode"]``, gymnasium's default NEXT_STEP when absent).

    Raises:
        ValueError: for DISABLED, which the training loops do not support.
    """
    mode = AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))
    if mode == AutoresetMode.DISABLED:
        raise ValueError("vector env autoreset mode: expected NextStep or SameStep, got Disabled")
    return mode


def to_numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array or a (possibly CUDA) torch tensor."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def like_env(actions: np.ndarray | torch.Tensor, env_obs: Any) -> Any:
    """Actions in the array type the env speaks: a torch tensor on the obs' device when the env returned
    torch observations ("torch mode"), numpy otherwise."""
    if isinstance(env_obs, torch.Tensor):
        return torch.as_tensor(actions, device=env_obs.device)
    return to_numpy(actions)


def real_next_obs(next_obs: torch.Tensor, infos: dict[str, Any]) -> torch.Tensor:
    """SAME_STEP autoreset: ``next_obs`` (num_envs x obs_dim) with the rows of sub-envs whose episode just
    ended replaced by their true final observation from ``infos["final_obs"]`` (unchanged when there is none).

    ``infos["final_obs"]`` may be gymnasium's object array of per-env observations or a num_envs x obs_dim
    array/tensor (torch-mode envs); ``infos["_final_obs"]`` masks the sub-envs that finished.
    """
    if "final_obs" not in infos:
        return next_obs
    mask = to_numpy(infos.get("_final_obs", np.ones(len(next_obs), dtype=bool))).astype(bool)
    out = next_obs.clone()
    final = infos["final_obs"]
    for i in np.flatnonzero(mask):
        out[i] = torch.as_tensor(np.asarray(to_numpy(final[i]), dtype=np.float32), device=out.device)
    return out


@dataclass
class EpisodeTracker:
    """Per-sub-env returns and lengths of running episodes; completed ones are appended to ``returns``."""

    num_envs: int
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._ret = np.zeros(self.num_envs, dtype=np.float64)
        self._len = np.zeros(self.num_envs, dtype=np.int64)

    def update(self, reward: np.ndarray, done: np.ndarray, valid: np.ndarray) -> list[tuple[float, int]]:
        """Add one vector step (``valid`` False on next-step-autoreset reset steps). Returns finished episodes."""
        self._ret += np.where(valid, reward, 0.0)
        self._len += valid.astype(np.int64)
        finished = []
        for i in np.flatnonzero(done & valid):
            finished.append((float(self._ret[i]), int(self._len[i])))
            self._ret[i], self._len[i] = 0.0, 0
        self.returns.extend(r for r, _ in finished)
        self.lengths.extend(n for _, n in finished)
        return finished


@dataclass
class TrainResult:
    """What a training run returns: the agent and its learning curve."""

    agent: Any
    episode_returns: list[float]
    episode_steps: list[int]  # global env step (transitions) at which each episode ended
    losses: list[dict[str, float]]
    replay_buffer: Any = None  # SAC: the final replay buffer (for inspection; not saved with the agent)


def hparams_table(config: dict[str, Any]) -> str:
    """Hyperparameters as a markdown table (logged once to TensorBoard as text)."""
    rows = "\n".join(f"|{key}|{value}|" for key, value in sorted(config.items()))
    return "|param|value|\n|-|-|\n" + rows


def load_agent(
    directory: str | os.PathLike,
    observation_space: gym.Space | None = None,
    action_space: gym.Space | None = None,
    device: str | torch.device = "cpu",
) -> Any:
    """Rebuild a saved agent from its directory alone (safetensors + JSON; never unpickles).

    Args:
        directory: a directory written by ``agent.save(directory)``.
        observation_space: if given, must equal the space the agent was trained for.
        action_space: if given, must equal the space the agent was trained for.
        device: where the networks live.

    Raises:
        AgentLoadError: missing/tampered files, unknown algo or version.
        SpaceMismatchError: "agent was trained for observation space X, got Y".
    """
    from agents.serialization import AgentLoadError

    files = load_agent_files(directory)
    if files.algo not in AGENT_CLASSES:
        raise AgentLoadError(f"{directory}: expected algo in {sorted(AGENT_CLASSES)}, got {files.algo!r}")
    check_spaces(files.observation_space, files.action_space, observation_space, action_space)
    module_name, class_name = AGENT_CLASSES[files.algo].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        return cls.from_files(files, device=device)
    except (KeyError, RuntimeError, TypeError) as exc:
        raise AgentLoadError(f"{directory}: weights do not fit a {files.algo} agent ({exc})") from exc
