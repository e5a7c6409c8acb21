"""Soft Actor-Critic for continuous (Box) actions, CleanRL ``sac_continuous_action.py`` style.

Twin Q networks with Polyak-averaged targets, a tanh-squashed Gaussian actor scaled to the action bounds, and
automatic entropy tuning. :func:`train_sac` is the whole training loop, top to bottom. It trains on a single
``gymnasium.Env`` or on a ``gymnasium.vector.VectorEnv`` with any number of sub-envs (e.g. thousands of envs of a
learned simulator): every valid transition of every sub-env goes into the replay buffer and
``updates_per_step`` gradient updates are made per collected transition.

Autoreset (gymnasium 1.x): in NEXT_STEP mode the step after a sub-env's episode ended is its reset step, whose
"transition" (final obs -> first obs) is skipped; in SAME_STEP mode the true final observation is read from
``infos["final_obs"]``. Only ``terminated`` cuts the bootstrap; truncated transitions keep their real next obs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.vector import AutoresetMode
from torch import nn
from tqdm.auto import tqdm

from agents.base import (
    EpisodeTracker,
    NetworkAgent,
    TrainResult,
    as_vector_env,
    autoreset_mode,
    hparams_table,
    like_env,
    real_next_obs,
    to_numpy,
)
from agents.serialization import AgentFiles

LOG_STD_MAX = 2.0
LOG_STD_MIN = -5.0


@dataclass
class SACConfig:
    total_steps: int = field(
        default=5000, metadata={"help": "env transitions to collect (summed over sub-envs)"}
    )
    buffer_size: int = field(default=1_000_000, metadata={"help": "replay buffer capacity (transitions)"})
    gamma: float = field(default=0.99, metadata={"help": "discount factor"})
    tau: float = field(default=0.005, metadata={"help": "target network Polyak coefficient"})
    batch_size: int = field(default=256, metadata={"help": "replay minibatch size"})
    learning_starts: int = field(
        default=1000, metadata={"help": "transitions of uniform random actions first"}
    )
    policy_lr: float = field(default=3e-4, metadata={"help": "actor learning rate"})
    q_lr: float = field(default=1e-3, metadata={"help": "critic learning rate"})
    policy_frequency: int = field(
        default=2, metadata={"help": "delayed actor: every N critic updates, N actor (and alpha) updates"}
    )
    target_network_frequency: int = field(
        default=1, metadata={"help": "critic updates between target updates"}
    )
    alpha: float = field(default=0.2, metadata={"help": "entropy temperature (initial value when autotune)"})
    autotune: bool = field(default=True, metadata={"help": "learn alpha towards entropy -act_dim"})
    hidden_size: int = field(default=256, metadata={"help": "width of the 2 hidden layers of every network"})
    updates_per_step: float = field(
        default=1.0,
        metadata={"help": "gradient updates per collected transition (lower it for many sub-envs)"},
    )
    seed: int = field(default=1, metadata={"help": "seeds networks, env resets, exploration and minibatches"})
    log_every: int = field(default=100, metadata={"help": "gradient updates between loss logs"})


# ---------------------------------------------------------------------------------------------------------------
# networks


class SoftQNetwork(nn.Module):
    """Q(s, a): B x obs_dim, B x act_dim -> B."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(obs_dim + act_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, action], dim=1)).squeeze(-1)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy, rescaled from [-1, 1] to the action bounds."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: int, low: np.ndarray, high: np.ndarray):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(obs_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.mean = nn.Linear(hidden, act_dim)
        self.log_std = nn.Linear(hidden, act_dim)
        self.register_buffer("action_scale", torch.as_tensor((high - low) / 2.0, dtype=torch.float32))
        self.register_buffer("action_bias", torch.as_tensor((high + low) / 2.0, dtype=torch.float32))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.trunk(obs)
        log_std = torch.tanh(self.log_std(hidden))
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (
            log_std + 1
        )  # in [LOG_STD_MIN, LOG_STD_MAX]
        return self.mean(hidden), log_std

    def sample(
        self, obs: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reparameterised sample.

        Returns:
            action B x act_dim (in bounds), log_prob B, deterministic (mean) action B x act_dim
        """
        mean, log_std = self(obs)
        std = log_std.exp()
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        x_t = mean + std * noise
        y_t = torch.tanh(x_t)
        action = y_t * self.action_scale + self.action_bias
        log_prob = torch.distributions.Normal(mean, std).log_prob(x_t)
        # Change of variables for the tanh squash and the affine rescale.
        log_prob = log_prob - torch.log(self.action_scale * (1 - y_t.pow(2)) + 1e-6)
        return action, log_prob.sum(1), torch.tanh(mean) * self.action_scale + self.action_bias


def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging: target <- tau * source + (1 - tau) * target, parameter by parameter."""
    with torch.no_grad():
        for t_param, s_param in zip(target.parameters(), source.parameters(), strict=True):
            t_param.mul_(1.0 - tau).add_(s_param, alpha=tau)


# ---------------------------------------------------------------------------------------------------------------
# agent


class SACAgent(NetworkAgent):
    """A SAC policy with its critics (so training can resume from a saved agent)."""

    algo = "sac"

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        config: SACConfig | None = None,
        device: str | torch.device = "cpu",
    ):
        super().__init__(observation_space, action_space, device)
        if not isinstance(action_space, gym.spaces.Box) or len(action_space.shape) != 1:
            raise ValueError(f"SAC: expected a 1-D Box action space, got {action_space}")
        if not isinstance(observation_space, gym.spaces.Box):
            raise ValueError(f"SAC: expected a Box observation space, got {observation_space}")
        self.config = config or SACConfig()
        obs_dim, act_dim = int(np.prod(observation_space.shape)), int(action_space.shape[0])
        hidden = self.config.hidden_size
        # Initialise from the seed without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.actor = Actor(obs_dim, act_dim, hidden, action_space.low, action_space.high)
            self.qf1 = SoftQNetwork(obs_dim, act_dim, hidden)
            self.qf2 = SoftQNetwork(obs_dim, act_dim, hidden)
        self.qf1_target = SoftQNetwork(obs_dim, act_dim, hidden)
        self.qf2_target = SoftQNetwork(obs_dim, act_dim, hidden)
        self.qf1_target.load_state_dict(self.qf1.state_dict())
        self.qf2_target.load_state_dict(self.qf2.state_dict())
        self.log_alpha = torch.tensor(float(np.log(self.config.alpha)), device=self.device)
        for net in self.networks().values():
            net.to(self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(self.config.seed)

    def networks(self) -> dict[str, nn.Module]:
        return {
            "actor": self.actor,
            "qf1": self.qf1,
            "qf2": self.qf2,
            "qf1_target": self.qf1_target,
            "qf2_target": self.qf2_target,
        }

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.exp())

    def _act_batch(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        action, _, mean_action = self.actor.sample(obs, self.generator)
        return mean_action if deterministic else action

    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {
            f"{name}.{k}": v for name, net in self.networks().items() for k, v in net.state_dict().items()
        }
        tensors["log_alpha"] = self.log_alpha.detach().reshape(1)
        return tensors

    @classmethod
    def from_files(cls, files: AgentFiles, device: str | torch.device = "cpu") -> SACAgent:
        agent = cls(
            files.observation_space, files.action_space, cls.config_from(files, SACConfig), device=device
        )
        for name, net in agent.networks().items():
            cls.load_module(net, files, name)
        agent.log_alpha = files.tensors["log_alpha"].reshape(()).to(agent.device)
        return agent


@dataclass
class SACOptimizers:
    """Optimiser state of one training run (not saved with the agent)."""

    q_optimizer: torch.optim.Optimizer
    actor_optimizer: torch.optim.Optimizer
    alpha_optimizer: torch.optim.Optimizer | None
    log_alpha: torch.Tensor  # the learnable temperature (a leaf tensor when autotuning)
    target_entropy: float
    num_updates: int = 0

    @classmethod
    def create(cls, agent: SACAgent) -> SACOptimizers:
        cfg = agent.config
        q_params = list(agent.qf1.parameters()) + list(agent.qf2.parameters())
        log_alpha = agent.log_alpha.detach().clone().requires_grad_(cfg.autotune)
        return cls(
            q_optimizer=torch.optim.Adam(q_params, lr=cfg.q_lr),
            actor_optimizer=torch.optim.Adam(agent.actor.parameters(), lr=cfg.policy_lr),
            alpha_optimizer=torch.optim.Adam([log_alpha], lr=cfg.q_lr) if cfg.autotune else None,
            log_alpha=log_alpha,
            target_entropy=-float(np.prod(agent.action_space.shape)),
        )


@dataclass
class ReplayBuffer:
    """A ring buffer of transitions as tensors on the agent's device."""

    capacity: int
    obs_dim: int
    act_dim: int
    device: torch.device

    def __post_init__(self) -> None:
        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(self.capacity, *shape, dtype=torch.float32, device=self.device)

        self.obs, self.next_obs = zeros(self.obs_dim), zeros(self.obs_dim)
        self.actions, self.rewards, self.terminated = zeros(self.act_dim), zeros(), zeros()
        self.position, self.size = 0, 0

    def add(self, obs, actions, rewards, next_obs, terminated) -> None:
        """Append a batch: N x obs_dim, N x act_dim, N, N x obs_dim, N (tensors on ``device``)."""
        n = len(obs)
        index = (self.position + torch.arange(n, device=self.device)) % self.capacity
        self.obs[index], self.actions[index], self.rewards[index] = obs, actions, rewards
        self.next_obs[index], self.terminated[index] = next_obs, terminated.float()
        self.position = (self.position + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        index = torch.randint(0, self.size, (batch_size,), generator=generator, device=self.device)
        return {
            "obs": self.obs[index],
            "actions": self.actions[index],
            "rewards": self.rewards[index],
            "next_obs": self.next_obs[index],
            "terminated": self.terminated[index],
        }


def sac_update(
    agent: SACAgent, opt: SACOptimizers, batch: dict[str, torch.Tensor], generator: torch.Generator
) -> dict[str, float]:
    """One critic update (+ delayed actor/alpha updates, + target update) on a minibatch.

    Args:
        batch: obs B x obs_dim, actions B x act_dim, rewards B, next_obs B x obs_dim, terminated B (0./1.).

    Returns:
        The losses of this update (``losses/...`` tags without the prefix).
    """
    cfg = agent.config
    alpha = opt.log_alpha.exp().detach()
    with torch.no_grad():
        next_actions, next_log_pi, _ = agent.actor.sample(batch["next_obs"], generator)
        min_q_next = torch.min(
            agent.qf1_target(batch["next_obs"], next_actions),
            agent.qf2_target(batch["next_obs"], next_actions),
        )
        target_q = batch["rewards"] + (1.0 - batch["terminated"]) * cfg.gamma * (
            min_q_next - alpha * next_log_pi
        )

    qf1_values = agent.qf1(batch["obs"], batch["actions"])
    qf2_values = agent.qf2(batch["obs"], batch["actions"])
    qf1_loss, qf2_loss = F.mse_loss(qf1_values, target_q), F.mse_loss(qf2_values, target_q)
    qf_loss = qf1_loss + qf2_loss
    opt.q_optimizer.zero_grad()
    qf_loss.backward()
    opt.q_optimizer.step()
    opt.num_updates += 1
    losses = {"qf1_loss": qf1_loss.item(), "qf2_loss": qf2_loss.item(), "qf_loss": qf_loss.item() / 2.0}
    losses["qf1_values"] = qf1_values.mean().item()

    if opt.num_updates % cfg.policy_frequency == 0:
        # TD3-style delayed update, compensated by doing policy_frequency actor updates at once.
        for _ in range(cfg.policy_frequency):
            actions, log_pi, _ = agent.actor.sample(batch["obs"], generator)
            min_q = torch.min(agent.qf1(batch["obs"], actions), agent.qf2(batch["obs"], actions))
            actor_loss = (alpha * log_pi - min_q).mean()
            opt.actor_optimizer.zero_grad()
            actor_loss.backward()
            opt.actor_optimizer.step()
            losses["actor_loss"] = actor_loss.item()
            if opt.alpha_optimizer is not None:
                with torch.no_grad():
                    _, log_pi, _ = agent.actor.sample(batch["obs"], generator)
                alpha_loss = (-opt.log_alpha.exp() * (log_pi + opt.target_entropy)).mean()
                opt.alpha_optimizer.zero_grad()
                alpha_loss.backward()
                opt.alpha_optimizer.step()
                alpha = opt.log_alpha.exp().detach()
                losses["alpha_loss"] = alpha_loss.item()
        agent.log_alpha = opt.log_alpha.detach().clone()
    losses["alpha"] = float(alpha)

    if opt.num_updates % cfg.target_network_frequency == 0:
        soft_update(agent.qf1_target, agent.qf1, cfg.tau)
        soft_update(agent.qf2_target, agent.qf2, cfg.tau)
    return losses


# ---------------------------------------------------------------------------------------------------------------
# the training loop


def train_sac(
    env: gym.Env | gym.vector.VectorEnv,
    config: SACConfig | None = None,
    *,
    agent: SACAgent | None = None,
    device: str | torch.device = "cpu",
    log_dir: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[SACAgent, int], None] | None = None,
) -> TrainResult:
    """Train SAC on ``env`` for ``config.total_steps`` transitions.

    Args:
        env: a single env or a VectorEnv (numpy or torch observations); it is reset with ``config.seed``.
        config: hyperparameters (``agent.config`` when continuing an agent, else defaults).
        agent: continue training this agent (its spaces must match the env's); a new one is built otherwise.
        device: where networks and the replay buffer live (ignored when ``agent`` is given).
        log_dir: TensorBoard directory (``charts/``, ``losses/`` and a hyperparameter table), or None.
        progress: show a tqdm progress bar.
        callback: called as ``callback(agent, env_steps)`` after every step of the (vector) env and the updates it
            paid for, ``env_steps`` counting transitions so far; e.g. to score snapshots. It must not change the
            agent.
    """
    envs = as_vector_env(env)
    mode = autoreset_mode(envs)
    obs_space, act_space = envs.single_observation_space, envs.single_action_space
    if agent is None:
        agent = SACAgent(obs_space, act_space, config, device=device)
    else:
        agent.check_spaces(obs_space, act_space)
        if config is not None:
            agent.config = config
    cfg = agent.config
    device = agent.device
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    opt = SACOptimizers.create(agent)
    obs_dim, act_dim = int(np.prod(obs_space.shape)), int(act_space.shape[0])
    buffer = ReplayBuffer(min(cfg.buffer_size, max(cfg.total_steps, 1)), obs_dim, act_dim, device)
    low = torch.as_tensor(act_space.low, dtype=torch.float32, device=device)
    high = torch.as_tensor(act_space.high, dtype=torch.float32, device=device)
    writer = None
    if log_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(log_dir))
        writer.add_text(
            "hyperparameters", hparams_table({**dataclasses.asdict(cfg), "num_envs": envs.num_envs})
        )

    tracker = EpisodeTracker(envs.num_envs)
    result = TrainResult(
        agent=agent, episode_returns=tracker.returns, episode_steps=[], losses=[], replay_buffer=buffer
    )
    obs, _ = envs.reset(seed=cfg.seed)
    needs_reset = np.zeros(envs.num_envs, dtype=bool)  # NEXT_STEP: these sub-envs reset on the next step
    global_step, update_credit, start = 0, 0.0, time.perf_counter()
    bar = tqdm(total=cfg.total_steps, desc="sac", unit="step", disable=not progress, dynamic_ncols=True)
    while global_step < cfg.total_steps:
        # ---- act: uniform random before learning_starts, then the stochastic policy --------------------------
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device).reshape(envs.num_envs, obs_dim)
        if global_step < cfg.learning_starts:
            actions = low + (high - low) * torch.rand(
                envs.num_envs, act_dim, generator=generator, device=device
            )
        else:
            with torch.no_grad():
                actions, _, _ = agent.actor.sample(obs_t, generator)
        actions = torch.max(torch.min(actions, high), low)  # num_envs x act_dim

        # ---- step all sub-envs ----------------------------------------------------------------------------------
        next_obs, rewards, terminations, truncations, infos = envs.step(like_env(actions, obs))
        rewards_np, term_np = to_numpy(rewards).astype(np.float64), to_numpy(terminations).astype(bool)
        done_np = term_np | to_numpy(truncations).astype(bool)
        valid = ~needs_reset if mode == AutoresetMode.NEXT_STEP else np.ones(envs.num_envs, dtype=bool)
        next_obs_t = torch.as_tensor(next_obs, dtype=torch.float32, device=device).reshape(
            envs.num_envs, obs_dim
        )
        if mode == AutoresetMode.SAME_STEP:
            next_obs_t = real_next_obs(next_obs_t, infos)

        # ---- store the valid transitions (skip next-step-autoreset reset steps) ---------------------------------
        keep = torch.as_tensor(valid, device=device)
        buffer.add(
            obs_t[keep],
            actions[keep],
            torch.as_tensor(rewards_np, dtype=torch.float32, device=device)[keep],
            next_obs_t[keep],
            torch.as_tensor(term_np, device=device)[keep],
        )
        n_new = int(valid.sum())
        global_step += n_new
        for episode_return, episode_length in tracker.update(rewards_np, done_np, valid):
            result.episode_steps.append(global_step)
            if writer is not None:
                writer.add_scalar("charts/episodic_return", episode_return, global_step)
                writer.add_scalar("charts/episodic_length", episode_length, global_step)
        needs_reset = done_np
        obs = next_obs

        # ---- learn: updates_per_step gradient updates per new transition ----------------------------------------
        if global_step >= cfg.learning_starts and buffer.size >= cfg.batch_size:
            update_credit += n_new * cfg.updates_per_step
            while update_credit >= 1.0:
                update_credit -= 1.0
                losses = sac_update(agent, opt, buffer.sample(cfg.batch_size, generator), generator)
                if opt.num_updates % cfg.log_every == 0:
                    result.losses.append({"step": float(global_step), **losses})
                    if writer is not None:
                        for name, value in losses.items():
                            writer.add_scalar(f"losses/{name}", value, global_step)
                        sps = global_step / max(time.perf_counter() - start, 1e-9)
                        writer.add_scalar("charts/SPS", sps, global_step)
        if callback is not None:
            callback(agent, global_step)
        if bar.n + n_new > bar.total:  # the last step of all sub-envs overshoots total_steps by < num_envs
            bar.total = bar.n + n_new
        bar.update(n_new)
        if tracker.returns and n_new:
            bar.set_postfix(ret=f"{np.mean(tracker.returns[-10:]):.1f}", refresh=False)
    bar.close()
    if writer is not None:
        writer.close()
    return result
